//! Opening the store the configuration names (`[store] backend`).

use std::sync::Arc;

use super::{DynamoStore, SqliteStore, Store, StoreError};
use crate::config::Config;

/// Opens the store named by `config.store.backend`: the SQLite file, or the DynamoDB tables of
/// `[store.dynamodb]` (which must exist: `voxmachina dynamodb create-tables`).
///
/// # Errors
/// [`StoreError`] when the backend cannot be opened: the SQLite file is unusable, no AWS region
/// is configured, a DynamoDB table is missing or has other keys, or the backend name is unknown.
pub async fn open(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    match config.store.backend.as_str() {
        "sqlite" => {
            let store = SqliteStore::open_limited(
                &config.store.sqlite_path,
                config.store.sqlite_max_size_mb,
            )
            .await?;
            Ok(Arc::new(store))
        }
        "dynamodb" => {
            let store = DynamoStore::connect(&config.store.dynamodb).await?;
            store.check_tables().await?;
            Ok(Arc::new(store))
        }
        other => Err(StoreError::Invalid(format!(
            "store.backend = {other:?}: supported backends are \"sqlite\" and \"dynamodb\""
        ))),
    }
}
