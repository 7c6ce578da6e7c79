//! Calls: the stored call record ([`record`]), the registry of monitored calls ([`registry`]) and
//! the per-call sideband monitor ([`monitor`]).

pub mod after_call;
pub mod lease;
pub mod link;
pub mod monitor;
pub(crate) mod persist;
pub mod record;
pub mod registry;
