//! `POST /openai/webhook`: Standard Webhooks verification on the raw body, replay and duplicate
//! rejection, and routing of OpenAI's incoming-call events.

pub mod signature;
