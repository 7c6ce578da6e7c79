//! Logging (JSON or human-readable, via `tracing`) and Prometheus metrics (via `metrics` and
//! `metrics-exporter-prometheus`).
//!
//! Metric names (all prefixed `voxmachina_`):
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `webhooks_total` | counter | `event`, `outcome` | webhook deliveries by result |
//! | `accept_latency_seconds` | histogram | `outcome` | webhook received → `/accept` answered |
//! | `active_calls` | gauge | | calls with a running monitor on this instance |
//! | `calls_ended_total` | counter | `state`, `reason` | calls that reached a final state |
//! | `escalations_total` | counter | `trigger`, `outcome` | escalations by trigger and result |
//! | `sideband_reconnects_total` | counter | `result` | reconnect attempts after abnormal drops |
//! | `sideband_errors_total` | counter | `code` | `error` events received on sideband |
//! | `store_errors_total` | counter | `op` | store failures (the call goes on) |
//! | `store_pending_writes` | gauge | | call records, events and transcript lines held in memory while store writes fail, retried with backoff ([`crate::store::resilient`]) |
//! | `store_dropped_total` | counter | `kind` | held writes dropped: `transcript`/`event` beyond `[store] write_queue_per_call`/`write_queue_total`, `refused` when the store refused a held write for good |
//! | `tool_calls_total` | counter | `tool`, `outcome` | tool calls by the model (`outcome`: see [`crate::tools::Outcome::as_str`]; `tool` is `unknown` for names the profile lacks) |
//! | `tool_duration_seconds` | histogram | `tool` | tool run time, argument check to output |
//! | `call_summaries_total` | counter | `source` | summaries stored: `model` or `transcript` |
//! | `sms_followups_total` | counter | `status` | SMS follow-ups: `sent`, `skipped`, `opted_out`, `failed` |
//! | `call_cost_micros_total` | counter | `model`, `currency` | estimated model cost of ended calls, millionths |
//! | `leases_total` | counter | `event` | call monitor leases: `acquired`, `taken_over`, `renewed`, `lost`, `released` ([`crate::calls::lease`]) |
//! | `budget_exceeded_total` | counter | `budget` | calls ended by a per-call budget ([`crate::calls::budget`]) |
//! | `budget_dropped_total` | counter | `budget` | caller or model input dropped by a per-call budget |
//! | `monitors_aborted_total` | counter | | monitors that ended without finishing (shutdown abort, panic); their registry entry, capacity and lease were released |
//! | `accepts_reconciled_total` | counter | `outcome` | records stuck in `accepting` reconciled: `attached` (live call, monitor started) or `missed` (sideband 404) |
//! | `handover_tokens_total` | counter | `event` | handover tokens: `minted`, `mint_failed` (controller); `redeemed`, `expired`, `redeem_failed` (where they are redeemed: the Connect Lambda, `demo --connect`) |
//! | `handovers_total` | counter | `action`, `outcome` | finished hand-offs by escalation action (`refer`, `connect_refer`, `twilio_dial`) and outcome (`transferred`, `transfer_failed`, `abandoned`) |
//! | `escalation_crm_total` | counter | `outcome` | HubSpot work on escalation: `ok`, `failed`, `skipped` (no caller number), `late` (not done when the call ended) |
//! | `http_connections` | gauge | | HTTP connections open (the `[http] max_connections` slots in use by request connections) |
//! | `http_connections_refused_total` | counter | `reason` | connections answered 503 and closed: `max_connections` |
//! | `http_timeouts_total` | counter | `phase` | connections closed by a limit: `header` (request head too slow), `idle` (keep-alive idle) |
//! | `http_accept_errors_total` | counter | | `accept()` failures that pause accepting (file descriptors or memory exhausted) |
//! | `build_info` | gauge | `version` | always 1 |

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Metric name constants, so call sites cannot drift from the table above.
pub mod names {
    /// Counter: webhook deliveries by `event` and `outcome`.
    pub const WEBHOOKS: &str = "voxmachina_webhooks_total";
    /// Histogram (seconds): time from webhook receipt to the `/accept` answer.
    pub const ACCEPT_LATENCY: &str = "voxmachina_accept_latency_seconds";
    /// Gauge: calls with a running monitor.
    pub const ACTIVE_CALLS: &str = "voxmachina_active_calls";
    /// Counter: calls that reached a final state, by `state` and `reason`.
    pub const CALLS_ENDED: &str = "voxmachina_calls_ended_total";
    /// Counter: escalations by `trigger` and `outcome`.
    pub const ESCALATIONS: &str = "voxmachina_escalations_total";
    /// Counter: sideband reconnect attempts by `result`.
    pub const SIDEBAND_RECONNECTS: &str = "voxmachina_sideband_reconnects_total";
    /// Counter: `error` events from the sideband by `code`.
    pub const SIDEBAND_ERRORS: &str = "voxmachina_sideband_errors_total";
    /// Counter: store failures by `op`.
    pub const STORE_ERRORS: &str = "voxmachina_store_errors_total";
    /// Gauge: call records, events and transcript lines held in memory because store writes
    /// failed ([`crate::store::resilient`]).
    pub const STORE_PENDING: &str = "voxmachina_store_pending_writes";
    /// Counter: held writes dropped, by `kind` (`transcript`, `event` over the bound; `refused`
    /// when the store refused a held write for good).
    pub const STORE_DROPPED: &str = "voxmachina_store_dropped_total";
    /// Counter: tool calls by `tool` and `outcome`.
    pub const TOOL_CALLS: &str = "voxmachina_tool_calls_total";
    /// Histogram (seconds): tool run time by `tool`.
    pub const TOOL_DURATION: &str = "voxmachina_tool_duration_seconds";
    /// Counter: call summaries stored by `source`.
    pub const CALL_SUMMARIES: &str = "voxmachina_call_summaries_total";
    /// Counter: SMS follow-ups by `status`.
    pub const SMS_FOLLOWUPS: &str = "voxmachina_sms_followups_total";
    /// Counter: estimated model cost in millionths of the currency, by `model` and `currency`.
    pub const CALL_COST_MICROS: &str = "voxmachina_call_cost_micros_total";
    /// Counter: call monitor lease events by `event` ([`crate::calls::lease::events`]).
    pub const LEASES: &str = "voxmachina_leases_total";
    /// Counter: calls ended because a per-call budget was exceeded, by `budget`
    /// ([`crate::calls::budget::Budget::as_str`]).
    pub const BUDGET_EXCEEDED: &str = "voxmachina_budget_exceeded_total";
    /// Counter: caller or model input dropped by a per-call budget, by `budget`.
    pub const BUDGET_DROPPED: &str = "voxmachina_budget_dropped_total";
    /// Counter: monitors that ended without finishing (aborted at shutdown, panicked); their
    /// registry entry, capacity count and lease were released by the drop guard.
    pub const MONITORS_ABORTED: &str = "voxmachina_monitors_aborted_total";
    /// Counter: `accepting` records found stuck past the accept budget and reconciled, by
    /// `outcome` (`attached`, `missed`).
    pub const ACCEPTS_RECONCILED: &str = "voxmachina_accepts_reconciled_total";
    /// Counter: handover tokens by `event` (`minted`, `mint_failed`, `redeemed`, `expired`,
    /// `redeem_failed`).
    pub const HANDOVER_TOKENS: &str = "voxmachina_handover_tokens_total";
    /// Counter: finished hand-offs by `action` and `outcome`.
    pub const HANDOVERS: &str = "voxmachina_handovers_total";
    /// Counter: HubSpot work on escalation by `outcome`.
    pub const ESCALATION_CRM: &str = "voxmachina_escalation_crm_total";
    /// Gauge: open HTTP connections ([`crate::http::server`]).
    pub const HTTP_CONNECTIONS: &str = "voxmachina_http_connections";
    /// Counter: connections refused by `reason` (`max_connections`).
    pub const HTTP_CONNECTIONS_REFUSED: &str = "voxmachina_http_connections_refused_total";
    /// Counter: connections closed by a limit, by `phase` (`header`, `idle`).
    pub const HTTP_TIMEOUTS: &str = "voxmachina_http_timeouts_total";
    /// Counter: `accept()` failures that pause accepting.
    pub const HTTP_ACCEPT_ERRORS: &str = "voxmachina_http_accept_errors_total";
    /// Gauge: build information.
    pub const BUILD_INFO: &str = "voxmachina_build_info";
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle (later calls return
/// the same handle, so several servers in one test process share it).
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::ACCEPT_LATENCY.to_string()),
                    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
                )
                .expect("static buckets are valid")
                .set_buckets_for_metric(
                    Matcher::Full(names::TOOL_DURATION.to_string()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ],
                )
                .expect("static buckets are valid")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// Log targets of dependencies that, above `INFO`, print request or handshake bytes with
/// `Authorization` headers, API keys or tokens: `tungstenite` logs the whole client handshake
/// request (with the sideband's `Authorization: Bearer` header) at `TRACE`; `hyper`, `h2`,
/// `reqwest`, `rustls` and the AWS SDK (`aws_sigv4` logs the canonical request with the session
/// token) log wire-level detail at `DEBUG`/`TRACE`. Matched as a target prefix (`hyper` also
/// covers `hyper_util`).
pub const WIRE_TARGETS: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "h2",
    "reqwest",
    "rustls",
    "aws_sigv4",
    "aws_smithy",
    "aws_runtime",
    "aws_config",
    "aws_sdk",
];

/// True when an event or span of `target` at `level` may be logged: anything at `INFO` or
/// above, and anything of a target outside [`WIRE_TARGETS`]. Applied on top of `RUST_LOG` and
/// `[logging] level`, whatever they say, so no log level prints credentials from the wire.
pub fn wire_target_allowed(target: &str, level: &tracing::Level) -> bool {
    *level <= tracing::Level::INFO || !WIRE_TARGETS.iter().any(|t| target.starts_with(t))
}

/// Initialises the global `tracing` subscriber. `RUST_LOG` wins over `cfg.level`, except that
/// the dependency targets of [`WIRE_TARGETS`] never log below `INFO`
/// ([`wire_target_allowed`]). Safe to call more than once (later calls are ignored).
pub fn init_logging(cfg: &LoggingConfig) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let wire = tracing_subscriber::filter::filter_fn(|meta| {
        wire_target_allowed(meta.target(), meta.level())
    });
    let json = match cfg.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(wire);
    let _ = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
}

/// Masks the middle of a phone number for logs: `+14155550123` → `+1415***0123`. Short values
/// are masked entirely.
pub fn mask_number(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    if chars.len() < 8 {
        return "***".into();
    }
    let head: String = chars[..5].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_numbers() {
        assert_eq!(mask_number("+14155550123"), "+1415***0123");
        assert_eq!(mask_number("+1234"), "***");
    }

    #[test]
    fn wire_targets_are_capped_at_info() {
        use tracing::Level;
        for target in [
            "tungstenite::handshake::client",
            "hyper_util::client::legacy",
            "h2::codec",
            "reqwest::connect",
            "aws_sigv4::http_request::sign",
        ] {
            assert!(!wire_target_allowed(target, &Level::TRACE), "{target}");
            assert!(!wire_target_allowed(target, &Level::DEBUG), "{target}");
            assert!(wire_target_allowed(target, &Level::INFO), "{target}");
            assert!(wire_target_allowed(target, &Level::WARN), "{target}");
        }
        assert!(wire_target_allowed("voxmachina::calls", &Level::TRACE));
    }

    #[test]
    fn metrics_render_build_info() {
        let h = metrics_handle();
        assert!(h.render().contains("voxmachina_build_info"));
    }
}
