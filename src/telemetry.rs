//! Logging setup (JSON or human-readable) and Prometheus metrics.
