//! Shared test support: the controller harness and reusable suites.
#![allow(dead_code)]

pub mod dynamodb;
pub mod fake_hubspot;
pub mod fake_twilio;
pub mod harness;
pub mod serve;
pub mod store_conformance;
pub mod tool_server;
