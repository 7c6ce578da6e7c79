//! `POST /openai/webhook`: Standard Webhooks verification on the raw body ([`signature`]),
//! replay and duplicate rejection, and routing of OpenAI's incoming-call events ([`handler`]).

pub mod event;
pub mod handler;
pub mod signature;
