//! The embedded store: one SQLite file in WAL mode.

/// SQLite implementation of [`super::Store`].
pub struct SqliteStore {}
