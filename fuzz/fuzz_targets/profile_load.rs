//! Profile loading from TOML text (`prompts/*.toml`): TOML syntax and shape, and every
//! validation rule of `ProfileSet::load` (names, defaults, `[match]`, `[session]`,
//! `[escalation]`, `[reject]` with opening hours and time zones, `[[tools]]` with JSON Schemas
//! and templates, `[after_call]` with regexes and SMS templates), then what a call does with a
//! loaded profile.
//!
//! Input: the TOML text of one profile file, validated next to a fixed valid default profile
//! (so the fuzzed one may be a non-default profile with `[match]` rules). Instructions files
//! are not read from disk: every one exists and says the same sentence.
//!
//! Properties:
//! - nothing panics, whatever the text (the loader reports problems, never crashes);
//! - every problem names one of the two files (or the directory), has a message, and its line
//!   (when given) is inside the file;
//! - a set that loads has exactly one default, finds each profile by name, chooses a profile
//!   for any call, and builds the Realtime and Live `/accept` bodies and the session tools as
//!   JSON objects; every tool's argument check refuses non-JSON and answers for `{}`.
#![no_main]

use std::path::Path;

use chrono::TimeZone as _;
use libfuzzer_sys::fuzz_target;
use voxmachina::prompts::ProfileSet;
use voxmachina::sip::{CallParties, SipHeader};

const DIR: &str = "/fuzz-profiles";

const DEFAULT: &str = r#"
name = "main"
default = true
"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = Path::new(DIR);
    let fuzzed = dir.join("x.toml");
    let files = vec![
        (dir.join("main.toml"), DEFAULT.to_string()),
        (fuzzed.clone(), text.to_string()),
    ];
    let set = match ProfileSet::from_texts(dir, files, &|_| Ok("Help the caller.".into())) {
        Ok(set) => set,
        Err(errors) => {
            assert!(!errors.0.is_empty());
            let lines = text.split('\n').count();
            for e in &errors.0 {
                assert!(!e.message.is_empty());
                assert!(e.file == fuzzed || e.file == dir.join("main.toml") || e.file == dir);
                if let Some(line) = e.line {
                    assert!(line >= 1);
                    if e.file == fuzzed {
                        assert!(line <= lines, "line {line} of {lines}: {e}");
                    }
                }
            }
            let _ = errors.to_string();
            return;
        }
    };
    assert!((1..=2).contains(&set.len()));
    assert!(set.default_profile().is_default);
    assert_eq!(set.iter().filter(|p| p.is_default).count(), 1);
    let headers = vec![
        SipHeader::new("From", "\"Alice\" <sip:+14155550123@example.com>;tag=1"),
        SipHeader::new("To", "<sip:+18005550100@sip.example.com>"),
        SipHeader::new("X-Queue", "vip"),
    ];
    let parties = CallParties::from_headers(&headers);
    let chosen = set.select(&parties, &headers);
    assert!(set.get(&chosen.name).is_some());
    let now = chrono::Utc
        .with_ymd_and_hms(2026, 12, 3, 9, 0, 0)
        .single()
        .expect("a time");
    for p in set.iter() {
        assert!(std::ptr::eq(
            set.get(&p.name).expect("by name").as_ref(),
            p.as_ref()
        ));
        let _ = p.admission(&parties, now, 3);
        assert!(p.realtime_session().is_object());
        assert!(p.live_session().is_object());
        for tool in p.tools.iter() {
            assert!(tool.session_tool().is_object());
            assert!(tool.check_arguments("not json").is_err());
            let _ = tool.check_arguments("{}");
        }
    }
});
