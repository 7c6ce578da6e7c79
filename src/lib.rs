//! voxmachina: a controller that puts an AI voice agent on real phone lines.
//!
//! A caller dials a number on a SIP trunk pointed at OpenAI's SIP ingress. OpenAI sends us a signed
//! `realtime.call.incoming` webhook; we verify it ([`webhook`]), pick a prompt profile from disk
//! ([`prompts`]), accept or reject the call through OpenAI's call-control REST API ([`openai`]),
//! attach a per-call monitor to the call's sideband WebSocket ([`calls`]), store transcripts
//! ([`store`]) and hand the caller to a human when asked ([`escalation`]). Calls can also arrive
//! (or be placed) through Twilio Programmable Voice: [`bridge`] connects Twilio Media Streams to
//! an OpenAI Realtime WebSocket session through the [`media`] transcoding core.
//!
//! Each concern lives in its own module; `main.rs` only parses the command line.

pub mod app;
pub mod bridge;
pub mod calls;
pub mod cli;
pub mod config;
pub mod escalation;
pub mod http;
pub mod hubspot;
pub mod media;
pub mod openai;
pub mod private_fs;
pub mod prompts;
pub mod sip;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod tools;
pub mod twilio;
pub mod webhook;
