//! Calls: the stored call record ([`record`]), the registry of monitored calls ([`registry`]),
//! the per-call state machine ([`machine`]) and its driver, the sideband monitor ([`monitor`]), the call leases that give each call exactly
//! one monitor across instances ([`lease`]), the services call handling shares ([`services`])
//! and reattaching calls after a restart or from a dead instance ([`takeover`]).

pub mod after_call;
pub mod budget;
pub mod lease;
pub mod link;
pub mod machine;
pub mod monitor;
pub mod outbound;
pub(crate) mod persist;
pub mod record;
pub mod registry;
pub mod services;
pub mod takeover;
