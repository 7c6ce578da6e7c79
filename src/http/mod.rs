//! The HTTP surface: webhook, health, metrics and the admin API.
