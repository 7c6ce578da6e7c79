//! The driver's clock and the profile's declared tools running as jobs.

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::time::Instant;
use tracing::{Instrument, warn};

use super::Monitor;
use crate::calls::machine::{Input, Millis};
use crate::tools::{self, CallInfo, ToolResult};

/// The driver's clock: Unix milliseconds at the start plus monotonic time since.
pub(super) struct Clock {
    base_ms: u64,
    start: Instant,
}

impl Clock {
    pub(super) fn new() -> Clock {
        let base_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
        Clock {
            base_ms,
            start: Instant::now(),
        }
    }

    pub(super) fn now(&self) -> Millis {
        self.base_ms + u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }

    pub(super) fn instant(&self, at: Millis) -> Instant {
        self.start + Duration::from_millis(at.saturating_sub(self.base_ms).min(u64::MAX / 4))
    }
}

/// What a tool task hands back to the monitor.
pub(super) struct ToolDone {
    fc_id: String,
    name: String,
    result: ToolResult,
    elapsed: Duration,
}

impl Monitor {
    /// A tool task finished (or failed): its input for the machine.
    pub(super) fn tool_joined(
        &mut self,
        joined: Result<(tokio::task::Id, ToolDone), tokio::task::JoinError>,
    ) -> Option<Input> {
        let (fc_id, name, result, elapsed) = match joined {
            Ok((id, done)) => {
                self.job_ids.remove(&id);
                (done.fc_id, done.name, done.result, done.elapsed)
            }
            Err(e) => {
                warn!(error = %e, "tool task failed");
                let (fc_id, name) = self.job_ids.remove(&e.id())?;
                let result = ToolResult::error(
                    tools::Outcome::Failed,
                    "tool_failed",
                    "The tool failed. Apologise and help the caller another way.",
                    Some(e.to_string()),
                );
                (fc_id, name, result, Duration::ZERO)
            }
        };
        Some(Input::ToolFinished {
            fc_id,
            name,
            result,
            elapsed_us: micros(elapsed),
        })
    }

    /// Runs a declared tool on its own task; its result comes back through `jobs`.
    pub(super) fn spawn_tool(&mut self, fc_id: String, name: &str, args: Value) {
        let profile = self.machine.setup().profile.clone();
        let Some(def) = profile.tools.get(name).cloned() else {
            return;
        };
        let services = self.ctx.tools.clone();
        let r = self.machine.record();
        let call = CallInfo {
            call_id: r.call_id.clone(),
            caller: r.caller.clone(),
            dialed: r.dialed.clone(),
        };
        let base_url = profile.tools_base_url.clone();
        let fc = fc_id.clone();
        let handle = self.jobs.spawn(
            async move {
                let started = std::time::Instant::now();
                let result =
                    tools::execute(&def, &args, &call, base_url.as_deref(), &services).await;
                ToolDone {
                    fc_id: fc,
                    name: def.name.clone(),
                    result,
                    elapsed: started.elapsed(),
                }
            }
            .in_current_span(),
        );
        self.job_ids.insert(handle.id(), (fc_id, name.to_string()));
    }
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
