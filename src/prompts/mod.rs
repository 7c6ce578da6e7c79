//! Prompt profiles on disk: match rules, session settings, reject rules and instructions.
