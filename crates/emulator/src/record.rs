//! Contract recording: every REST request body and every WebSocket client event an emulator
//! receives, appended as one JSON line to a file, so that an outside checker (the contract
//! tests under `tests/contract/`, which validate them against the official `openai` Python SDK
//! types) sees exactly what the controller sent.
//!
//! Off by default. It is turned on per emulator with [`crate::Emulator::record_to`] /
//! [`crate::live::LiveEmulator::record_to`], or for every emulator of a process by
//! the environment variable `VOXMACHINA_EMULATOR_RECORD=<file>` read at start. When off, a
//! message costs one relaxed atomic load.
//!
//! Line shape (UTF-8 JSON, one per line):
//! `{"api":"realtime"|"live","channel":"rest"|"sideband"|"model_session"|"attach",
//!   "method":"POST"|null,"path":"/v1/...","status":200|null,"body":<JSON or null>}`.
//! `body` is the parsed JSON, `null` for an empty body, or the raw text as a JSON string when
//! it was not JSON (the checker reports that as a failure). WebSocket events have `method`
//! and `status` `null` and `path` set to the upgrade path.

use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

/// The environment variable naming a file every emulator of the process appends to.
pub const RECORD_ENV: &str = "VOXMACHINA_EMULATOR_RECORD";

/// Appends received messages to a JSON-lines file (see the module docs).
#[derive(Debug, Default)]
pub struct Recorder {
    on: AtomicBool,
    file: Mutex<Option<std::fs::File>>,
}

/// One received message, as recorded.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// `"realtime"` or `"live"`.
    pub api: &'a str,
    /// `"rest"`, `"sideband"` (SIP call monitor), `"model_session"` (Realtime WebSocket of the
    /// media bridge) or `"attach"` (GPT-Live attach sideband).
    pub channel: &'a str,
    /// HTTP method (REST only).
    pub method: Option<&'a str>,
    /// Request path, or the WebSocket's upgrade path.
    pub path: &'a str,
    /// The status the emulator answered (REST only).
    pub status: Option<u16>,
}

impl Recorder {
    /// A recorder that writes to `$VOXMACHINA_EMULATOR_RECORD` when it is set (a file that
    /// cannot be opened is logged and recording stays off: the emulator still serves).
    pub fn from_env() -> Self {
        let r = Self::default();
        if let Some(path) = std::env::var_os(RECORD_ENV).filter(|p| !p.is_empty()) {
            if let Err(e) = r.record_to(Path::new(&path)) {
                tracing::warn!(target: "voxmachina::emulator", "{RECORD_ENV}: {e}");
            }
        }
        r
    }

    /// Appends from now on to `path` (created with its parent directories if missing).
    ///
    /// # Errors
    /// When the directory or file cannot be created or opened.
    pub fn record_to(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
        self.on.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Whether messages are being recorded.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Appends one line for `msg` with `body`. Write errors are logged, never returned: a
    /// recording failure must not change what the emulator answers.
    pub fn record(&self, msg: Received<'_>, body: &Value) {
        if !self.is_on() {
            return;
        }
        let line = json!({
            "api": msg.api,
            "channel": msg.channel,
            "method": msg.method,
            "path": msg.path,
            "status": msg.status,
            "body": body,
        });
        let mut text = line.to_string();
        text.push('\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = guard.as_mut() {
            if let Err(e) = f.write_all(text.as_bytes()) {
                tracing::warn!(target: "voxmachina::emulator", "recording: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_one_line_per_message_only_when_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/rec.jsonl");
        let r = Recorder::default();
        let msg = Received {
            api: "live",
            channel: "rest",
            method: Some("POST"),
            path: "/v1/live/sessions/live_1/accept",
            status: Some(200),
        };
        r.record(msg, &json!({"a": 1}));
        assert!(!path.exists());
        r.record_to(&path).unwrap();
        r.record(msg, &json!({"session": {"type": "live"}}));
        r.record(msg, &Value::Null);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["body"]["session"]["type"], "live");
        assert_eq!(lines[0]["path"], "/v1/live/sessions/live_1/accept");
        assert_eq!(lines[0]["status"], 200);
        assert_eq!(lines[1]["body"], Value::Null);
    }
}
