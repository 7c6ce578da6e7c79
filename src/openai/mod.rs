//! OpenAI: Realtime call control over REST ([`call_control`]) and the per-call sideband
//! WebSocket ([`sideband`]). Base URLs come from config so EU hosts and local emulators work.

pub mod call_control;
pub mod sideband;

pub use call_control::{CallControl, CallControlError};
