//! Shared test support: the controller harness and reusable suites.
#![allow(dead_code)]

pub mod dynamodb;
pub mod harness;
pub mod store_conformance;
