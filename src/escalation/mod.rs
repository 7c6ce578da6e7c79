//! Escalation to a human: triggers (caller phrases, the `transfer_to_human` tool, a DTMF key, the
//! operator API) and the SIP REFER hand-off with outcome tracking.

pub mod phrases;
