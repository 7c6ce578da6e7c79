//! Calls: the stored call record ([`record`]), the registry of monitored calls ([`registry`]),
//! the per-call state machine ([`machine`]) and its driver, the sideband monitor ([`monitor`]) and the call leases that give each call exactly
//! one monitor across instances ([`lease`]).

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
