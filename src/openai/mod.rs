//! OpenAI: Realtime call control over REST ([`call_control`]) and the per-call sideband
//! WebSocket ([`sideband`]); GPT-Live sessions ([`live`]). Base URLs come from config so EU hosts and local emulators work.

pub mod call_control;
pub mod live;
pub mod sideband;

pub use call_control::{CallControl, CallControlError};
