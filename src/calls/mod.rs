//! Calls: the stored call record and the per-call sideband monitor.

pub mod record;
