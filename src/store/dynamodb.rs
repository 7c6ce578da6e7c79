//! The distributed store: DynamoDB tables shared by any number of controller instances.
//!
//! Every guard against duplicates is a conditional write evaluated by DynamoDB against the
//! latest committed item (DynamoDB `PutItem`/`DeleteItem` `ConditionExpression`, consistent reads:
//! <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_PutItem.html>), so
//! instances need no coordination of their own. Expiry is checked by every read and condition
//! (`expires_ms` against the caller's `now`); DynamoDB TTL only cleans up, lazily
//! (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ttl-expired-items.html>).
//!
//! # Tables and keys
//! Six tables, named `{prefix}_{name}` (prefix from `[store.dynamodb] table_prefix`, default
//! `voxmachina`), all `PAY_PER_REQUEST`. `S` = string, `N` = number. Timestamps are Unix
//! **milliseconds** (`N`), like the SQLite store, except the TTL attributes (`expires_at`,
//! Unix **seconds**, rounded up, as DynamoDB TTL requires).
//!
//! | table | key | indexes | TTL |
//! |---|---|---|---|
//! | `{prefix}_calls` | `call_id` S (hash) | GSI `by_created`: `list_pk` S (hash, always `"CALL"`), `created_key` S (range); GSI `by_state`: `state` S (hash), `created_key` S (range); both project ALL | — |
//! | `{prefix}_transcripts` | `call_id` S (hash), `sk` S (range) | LSI `by_seq`: `call_id`, `seq` N (range), ALL | — |
//! | `{prefix}_events` | `call_id` S (hash), `seq` N (range) | — | — |
//! | `{prefix}_webhooks` | `webhook_id` S (hash) | — | `expires_at` |
//! | `{prefix}_tokens` | `pk` S (hash) = the token | GSI `by_caller`: `caller_key` S (hash), `minted_at` N (range), ALL | `expires_at` |
//! | `{prefix}_leases` | `call_id` S (hash) | — | `expires_at` |
//!
//! **Calls.** One item per call: the [`CallRecord`] fields (`escalation` and `usage` as JSON
//! strings, absent options omitted) plus two index attributes: `list_pk = "CALL"` and
//! `created_key = "{created_at as 20 digits}#{call_id}"` (the millisecond timestamp with its
//! sign bit flipped, so string order is time order, negatives included). `list_calls` queries
//! `by_created` (or `by_state` when filtering by state) newest first with `created_key <
//! "{before as 20 digits}"`; `live_calls` queries `by_state` once per live state. The constant
//! `list_pk` partition puts every call in one GSI partition: fine at our scale (a GSI partition
//! takes ~1000 writes/s, far above any call rate a phone line produces); a busier deployment
//! would shard it by day. GSI reads are eventually consistent: a call created a moment
//! ago may be missing from `list_calls`/`live_calls` for a fraction of a second; `get_call` is
//! strongly consistent.
//!
//! **Transcripts.** Append order comes from a per-call counter item (`sk = "#seq"`, attribute
//! `last_seq`) bumped atomically with `UpdateItem ADD`; the line is then written with that
//! `seq`. A line with an `item_id` is keyed `sk = "i#{speaker}#{item_id}"` and written with
//! `attribute_not_exists(sk)`, so a replay is one failed conditional put (and a skipped `seq`);
//! a line without `item_id` is keyed `sk = "n#{seq:020}"`. Reads query the `by_seq` LSI with a
//! consistent read (LSIs allow it), which also leaves out the counter item (it has no `seq`).
//! Concurrent appends are ordered by when they took their `seq`.
//!
//! **Events.** Same counter scheme, kept at `seq = 0`; events are keyed by their `seq` (1, 2, ...).
//!
//! **Webhooks.** `received_at`, `expires_ms` (logic) and `expires_at` (TTL). Claiming is
//! `PutItem` with `attribute_not_exists(webhook_id) OR expires_ms <= :now`.
//!
//! **Tokens.** The [`HandoverPayload`] fields as flat attributes (absent options omitted;
//! `created_at` as an RFC 3339 string, exact to the nanosecond), plus `minted_at`,
//! `expires_ms`, `expires_at` (TTL) and, when the caller number is not empty, `caller_key` (the
//! number, so the `by_caller` GSI is sparse). Minting is `PutItem` with
//! `attribute_not_exists(pk) OR expires_ms <= :now`; redeeming is `DeleteItem` with
//! `attribute_exists(pk) AND expires_ms > :now` and `ReturnValues=ALL_OLD`. Media
//! Streams tokens (`vst_…`, [`tokens::is_stream_token`]) share the table and both conditions;
//! their item is `kind = "stream"`, `grant` (the [`StreamGrant`] as a JSON string),
//! `minted_at`, `expires_ms`, `expires_at`, and no `caller_key` (so the GSI never holds them).
//!
//! **Leases.** One item per monitored call: `owner` (instance id), `expires_ms` (logic) and
//! `expires_at` (TTL). Acquiring is `PutItem` with `attribute_not_exists(call_id) OR owner =
//! :owner OR expires_ms <= :now`; renewing is `UpdateItem SET expires_ms` with `owner = :owner
//! AND expires_ms > :now`; releasing is `DeleteItem` with `owner = :owner`. Listing is a
//! consistent `Scan` (the table holds one small item per live call). Leases live in their own
//! table because [`Store::update_call`] replaces the whole call item.
//!
//! Create the tables with `voxmachina dynamodb create-tables` ([`DynamoStore::create_tables`]);
//! `README.md` lists the same schema for CloudFormation or the AWS CLI.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, GlobalSecondaryIndex,
    IndexStatus, KeySchemaElement, KeyType, LocalSecondaryIndex, Projection, ProjectionType,
    ReturnValue, ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableDescription,
    TableStatus, TimeToLiveSpecification, TimeToLiveStatus, WriteRequest,
};
use chrono::{DateTime, SecondsFormat, Utc};

use super::tokens::{self, HandoverPayload, StreamGrant};
use super::{
    CallQuery, CreateOutcome, Lease, Page, PurgeStats, Store, StoreError, api_name, lease_ttl_ms,
    page_limit, page_of, page_position, parse_api, parse_speaker,
};
use crate::calls::record::{
    AfterCall, CallEvent, CallRecord, CallState, EscalationSummary, TranscriptLine, Usage,
};
use crate::config::DynamoDbConfig;

/// Most records [`Store::list_calls`] returns, whatever the query's `limit` (as SQLite).
pub const LIST_LIMIT_CAP: usize = 1000;

/// The `kind` attribute of a Media Streams token item (handover token items have none).
pub const STREAM_TOKEN_KIND: &str = "stream";

/// The constant partition value of the `by_created` GSI (`list_pk`).
pub const LIST_PK: &str = "CALL";

/// Name of the TTL attribute on the webhooks and tokens tables (Unix seconds).
pub const TTL_ATTRIBUTE: &str = "expires_at";

/// How long [`DynamoStore::create_tables`] waits for tables and indexes to become `ACTIVE`
/// when the caller does not say.
pub const DEFAULT_CREATE_TIMEOUT: Duration = Duration::from_secs(300);

/// The sort key of the transcript counter item.
const SEQ_COUNTER_SK: &str = "#seq";

/// Items per `BatchWriteItem` (the API's maximum).
const BATCH_WRITE_MAX: usize = 25;

type Item = HashMap<String, AttributeValue>;

/// The table names for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableNames {
    /// `{prefix}_calls`: call records.
    pub calls: String,
    /// `{prefix}_transcripts`: transcript lines and their counters.
    pub transcripts: String,
    /// `{prefix}_events`: call events and their counters.
    pub events: String,
    /// `{prefix}_webhooks`: `webhook-id` dedupe entries (TTL).
    pub webhooks: String,
    /// `{prefix}_tokens`: handover tokens (TTL).
    pub tokens: String,
    /// `{prefix}_leases`: call monitor leases (TTL).
    pub leases: String,
}

impl TableNames {
    /// The names for `prefix`, e.g. `voxmachina_calls`.
    pub fn new(prefix: &str) -> Self {
        Self {
            calls: format!("{prefix}_calls"),
            transcripts: format!("{prefix}_transcripts"),
            events: format!("{prefix}_events"),
            webhooks: format!("{prefix}_webhooks"),
            tokens: format!("{prefix}_tokens"),
            leases: format!("{prefix}_leases"),
        }
    }

    /// All six names, in creation order.
    pub fn all(&self) -> [&str; 6] {
        [
            &self.calls,
            &self.transcripts,
            &self.events,
            &self.webhooks,
            &self.tokens,
            &self.leases,
        ]
    }
}

/// What [`DynamoStore::create_tables`] did to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSetup {
    /// Table name.
    pub table: String,
    /// `true` when this run created it, `false` when it already existed (with the right keys).
    pub created: bool,
    /// The TTL attribute, when the table has TTL: enabled by this run or already on.
    pub ttl_attribute: Option<String>,
}

/// DynamoDB implementation of [`Store`]. Cloning is cheap (the SDK client is shared).
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    tables: Arc<TableNames>,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

impl DynamoStore {
    /// A store over `client` using the tables named by `table_prefix`. Sends nothing.
    pub fn new(client: Client, table_prefix: &str) -> Self {
        Self {
            client,
            tables: Arc::new(TableNames::new(table_prefix)),
        }
    }

    /// Builds a client from the AWS default chain (credentials: environment, shared profile,
    /// web identity, ECS/EC2 roles; region: `config.region`, else `AWS_REGION`/profile) with
    /// `config.endpoint_url` when set. Sends nothing; see [`DynamoStore::check_tables`].
    ///
    /// # Errors
    /// [`StoreError::Invalid`] when no region is configured anywhere.
    pub async fn connect(config: &DynamoDbConfig) -> Result<Self, StoreError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(StoreError::Invalid(
                "no AWS region: set store.dynamodb.region or AWS_REGION".into(),
            ));
        }
        Ok(Self::new(Client::new(&sdk), &config.table_prefix))
    }

    /// A client for a local engine (moto, dynalite, DynamoDB Local) at `endpoint_url`, with
    /// fixed dummy credentials and `region`, reading no environment or profile
    /// (`aws_sdk_dynamodb::Config::builder` with `endpoint_url`, no `aws-config`). For tests and
    /// benchmarks. The SDK's stalled-stream protection (a connection moving under 1 B/s for its
    /// 5 s grace fails the request) is off: a local engine such as moto is one Python process
    /// that pauses under a loaded test machine, which is not a network stall. For the same
    /// reason requests are retried up to 8 times (the SDK's standard retry, which counts a
    /// reset connection as transient): moto's single-process server resets connections when
    /// dozens arrive at once, as the store conformance cases' concurrent claims do.
    pub fn local_client(endpoint_url: &str, region: &str) -> Client {
        use aws_sdk_dynamodb::config::retry::RetryConfig;
        use aws_sdk_dynamodb::config::{
            BehaviorVersion, Credentials, Region, StalledStreamProtectionConfig,
        };
        let conf = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .credentials_provider(Credentials::new(
                "local",
                "local",
                None,
                None,
                "voxmachina-local",
            ))
            .endpoint_url(endpoint_url)
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(8)
                    .with_initial_backoff(std::time::Duration::from_millis(20)),
            )
            .build();
        Client::from_conf(conf)
    }

    /// The table names this store uses.
    pub fn tables(&self) -> &TableNames {
        &self.tables
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the six tables (`PAY_PER_REQUEST`, keys and indexes as in the module docs),
    /// waits until they and their indexes are `ACTIVE` (at most `timeout` in all), and enables
    /// TTL on `expires_at` for webhooks, tokens and leases. Idempotent: an existing table with the
    /// expected keys and indexes is kept, and TTL already enabled on `expires_at` is fine.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when a call fails, an existing table has other keys or lacks an
    /// index, TTL is enabled on another attribute, or the wait times out.
    pub async fn create_tables(&self, timeout: Duration) -> Result<Vec<TableSetup>, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        for spec in table_specs(&self.tables) {
            let created = match self.describe(&spec.name).await? {
                Some(existing) => {
                    spec.verify(&existing)?;
                    false
                }
                None => {
                    match spec.create(&self.client).send().await {
                        Ok(_) => true,
                        // Someone else created it since we looked.
                        Err(e)
                            if e.as_service_error()
                                .is_some_and(|s| s.is_resource_in_use_exception()) =>
                        {
                            false
                        }
                        Err(e) => return Err(sdk_err("CreateTable", &spec.name, e)),
                    }
                }
            };
            let table = self.wait_active(&spec.name, deadline).await?;
            if !created {
                spec.verify(&table)?;
            }
            let ttl_attribute = if spec.ttl {
                self.enable_ttl(&spec.name).await?;
                Some(TTL_ATTRIBUTE.to_string())
            } else {
                None
            };
            out.push(TableSetup {
                table: spec.name.clone(),
                created,
                ttl_attribute,
            });
        }
        Ok(out)
    }

    /// Checks that every table exists with the expected keys and indexes (used when the
    /// controller starts with `backend = "dynamodb"`).
    ///
    /// # Errors
    /// [`StoreError::Backend`] naming the first missing or mismatched table, with a hint to run
    /// `voxmachina dynamodb create-tables`.
    pub async fn check_tables(&self) -> Result<(), StoreError> {
        for spec in table_specs(&self.tables) {
            match self.describe(&spec.name).await? {
                Some(table) => spec.verify(&table)?,
                None => {
                    return Err(StoreError::Backend(format!(
                        "DynamoDB table {} does not exist; run `voxmachina dynamodb create-tables`",
                        spec.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Deletes the six tables, ignoring ones that do not exist (for tests and teardown).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when a `DeleteTable` call fails otherwise.
    pub async fn delete_tables(&self) -> Result<(), StoreError> {
        for name in self.tables.all() {
            match self.client.delete_table().table_name(name).send().await {
                Ok(_) => {}
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_not_found_exception()) => {}
                Err(e) => return Err(sdk_err("DeleteTable", name, e)),
            }
        }
        Ok(())
    }

    /// [`Store::mint_token`] with the candidate tokens given: tries each of the first
    /// [`tokens::MINT_ATTEMPTS`] candidates with a conditional `PutItem` and returns the first
    /// that was free (or held only an expired token). [`Store::mint_token`] passes
    /// [`tokens::random_candidates`]; tests pass chosen values to exercise collisions.
    ///
    /// # Errors
    /// As [`Store::mint_token`]; also [`StoreError::Invalid`] for a candidate that is not a
    /// token ([`tokens::is_token`]).
    pub async fn mint_token_from(
        &self,
        payload: &HandoverPayload,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
        candidates: impl IntoIterator<Item = String>,
    ) -> Result<String, StoreError> {
        let expires = tokens::expiry(now, ttl)?;
        let base = token_item(payload, now, expires);
        self.put_token(base, now, candidates, tokens::is_token)
            .await
    }

    /// The conditional `PutItem` shared by handover and stream tokens: `base` (every attribute
    /// but `pk`) under the first of the first [`tokens::MINT_ATTEMPTS`] candidates that is free
    /// or holds only an expired token.
    async fn put_token(
        &self,
        base: Item,
        now: DateTime<Utc>,
        candidates: impl IntoIterator<Item = String>,
        shape: fn(&str) -> bool,
    ) -> Result<String, StoreError> {
        let mut tried = 0;
        for token in candidates.into_iter().take(tokens::MINT_ATTEMPTS) {
            if !shape(&token) {
                return Err(StoreError::Invalid(format!("not a token: {token:?}")));
            }
            tried += 1;
            let mut item = base.clone();
            item.insert("pk".into(), s(&token));
            let put = self
                .client
                .put_item()
                .table_name(&self.tables.tokens)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(#pk) OR #exp <= :now")
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_names("#exp", "expires_ms")
                .expression_attribute_values(":now", n(ms(now)))
                .send()
                .await;
            match put {
                Ok(_) => return Ok(token),
                Err(e) if is_ccf(&e) => continue,
                Err(e) => return Err(sdk_err("PutItem", &self.tables.tokens, e)),
            }
        }
        Err(StoreError::Backend(format!(
            "no free token after {tried} attempts"
        )))
    }

    /// The conditional `DeleteItem` shared by handover and stream tokens: removes the live item
    /// of `token` and returns it (`None`: unknown, redeemed or expired).
    async fn delete_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Item>, StoreError> {
        let del = self
            .client
            .delete_item()
            .table_name(&self.tables.tokens)
            .key("pk", s(token))
            .condition_expression("attribute_exists(#pk) AND #exp > :now")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#exp", "expires_ms")
            .expression_attribute_values(":now", n(ms(now)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match del {
            Ok(out) => Ok(out.attributes),
            // Unknown, already redeemed or expired: all the same to the caller.
            Err(e) if is_ccf(&e) => Ok(None),
            Err(e) => Err(sdk_err("DeleteItem", &self.tables.tokens, e)),
        }
    }

    async fn describe(&self, table: &str) -> Result<Option<TableDescription>, StoreError> {
        match self.client.describe_table().table_name(table).send().await {
            Ok(out) => Ok(out.table),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(sdk_err("DescribeTable", table, e)),
        }
    }

    /// Polls `DescribeTable` until the table and all its GSIs are `ACTIVE`.
    async fn wait_active(
        &self,
        table: &str,
        deadline: tokio::time::Instant,
    ) -> Result<TableDescription, StoreError> {
        let mut delay = Duration::from_millis(100);
        loop {
            if let Some(desc) = self.describe(table).await? {
                let table_active = desc.table_status() == Some(&TableStatus::Active);
                let indexes_active = desc
                    .global_secondary_indexes()
                    .iter()
                    .all(|g| g.index_status().is_none_or(|s| *s == IndexStatus::Active));
                if table_active && indexes_active {
                    return Ok(desc);
                }
            }
            if tokio::time::Instant::now() + delay > deadline {
                return Err(StoreError::Backend(format!(
                    "DynamoDB table {table} not ACTIVE before the timeout"
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Enables TTL on [`TTL_ATTRIBUTE`] unless it is already enabled (or being enabled).
    async fn enable_ttl(&self, table: &str) -> Result<(), StoreError> {
        let current = self
            .client
            .describe_time_to_live()
            .table_name(table)
            .send()
            .await
            .map_err(|e| sdk_err("DescribeTimeToLive", table, e))?;
        if let Some(desc) = current.time_to_live_description() {
            let on = matches!(
                desc.time_to_live_status(),
                Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
            );
            match desc.attribute_name() {
                Some(TTL_ATTRIBUTE) if on => return Ok(()),
                Some(other) if on => {
                    return Err(StoreError::Backend(format!(
                        "table {table} has TTL on {other:?}, expected {TTL_ATTRIBUTE:?}"
                    )));
                }
                _ => {}
            }
        }
        let spec = TimeToLiveSpecification::builder()
            .attribute_name(TTL_ATTRIBUTE)
            .enabled(true)
            .build()
            .map_err(|e| StoreError::Backend(format!("TTL specification: {e}")))?;
        match self
            .client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(spec)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Enabled concurrently (AWS answers ValidationException "TimeToLive is already
            // enabled").
            Err(e)
                if e.as_service_error()
                    .and_then(|s| s.message())
                    .is_some_and(|m| m.contains("already enabled")) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_err("UpdateTimeToLive", table, e)),
        }
    }

    /// Atomically bumps the counter item at `key` in `table` and returns the new value (1, 2,
    /// ...).
    async fn next_seq(&self, table: &str, key: Item) -> Result<i64, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(table)
            .set_key(Some(key))
            .update_expression("ADD #last :one")
            .expression_attribute_names("#last", "last_seq")
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| sdk_err("UpdateItem", table, e))?;
        let attrs = out.attributes.unwrap_or_default();
        get_n(&attrs, "last_seq")
    }

    /// One query of partition `call_id` in `table` (or its LSI `index`) for `seq > after`, at
    /// most `limit + 1` items in `seq` order, consistent; and whether DynamoDB stopped early
    /// (`LastEvaluatedKey`, e.g. the 1 MB page cap), so more may follow.
    async fn query_page(
        &self,
        table: &str,
        index: Option<&str>,
        call_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Item>, bool), StoreError> {
        let out = self
            .client
            .query()
            .table_name(table)
            .set_index_name(index.map(str::to_string))
            .key_condition_expression("#pk = :pk AND #seq > :after")
            .expression_attribute_names("#pk", "call_id")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_values(":pk", s(call_id))
            .expression_attribute_values(":after", n(page_position(after)))
            .limit(i32::try_from(limit + 1).unwrap_or(i32::MAX))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err("Query", table, e))?;
        let more = out.last_evaluated_key.is_some();
        Ok((out.items.unwrap_or_default(), more))
    }

    /// Every item of partition `call_id` in `table`, keys only (`key_names`), consistent.
    async fn partition_keys(
        &self,
        table: &str,
        call_id: &str,
        key_names: [&str; 2],
    ) -> Result<Vec<Item>, StoreError> {
        self.client
            .query()
            .table_name(table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", "call_id")
            .expression_attribute_names("#sk", key_names[1])
            .expression_attribute_values(":pk", s(call_id))
            .projection_expression("#pk, #sk")
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_err("Query", table, e))
    }

    /// Deletes the items with `keys` from `table` (`BatchWriteItem`, retrying unprocessed
    /// items a few times).
    async fn delete_keys(&self, table: &str, keys: Vec<Item>) -> Result<(), StoreError> {
        for chunk in keys.chunks(BATCH_WRITE_MAX) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|key| {
                    let delete = DeleteRequest::builder()
                        .set_key(Some(key.clone()))
                        .build()
                        .map_err(|e| StoreError::Backend(format!("DeleteRequest: {e}")))?;
                    Ok(WriteRequest::builder().delete_request(delete).build())
                })
                .collect::<Result<_, StoreError>>()?;
            let mut attempt = 0u32;
            while !requests.is_empty() {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(table, requests)
                    .send()
                    .await
                    .map_err(|e| sdk_err("BatchWriteItem", table, e))?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(table))
                    .unwrap_or_default();
                attempt += 1;
                if !requests.is_empty() {
                    if attempt >= 8 {
                        return Err(StoreError::Backend(format!(
                            "BatchWriteItem on {table}: {} deletes still unprocessed",
                            requests.len()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
            }
        }
        Ok(())
    }

    /// Call records from one GSI query: `index` partition `pk_name = pk_value`, optionally
    /// `created_key < before`, in `forward` order, at most `limit`.
    async fn query_calls(
        &self,
        index: &str,
        pk_name: &str,
        pk_value: &str,
        before: Option<DateTime<Utc>>,
        forward: bool,
        limit: usize,
    ) -> Result<Vec<CallRecord>, StoreError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.tables.calls)
            .index_name(index)
            .expression_attribute_names("#pk", pk_name)
            .expression_attribute_values(":pk", s(pk_value))
            .scan_index_forward(forward);
        q = match before {
            Some(before) => q
                .key_condition_expression("#pk = :pk AND #ck < :before")
                .expression_attribute_names("#ck", "created_key")
                .expression_attribute_values(":before", s(time_key(ms(before)))),
            None => q.key_condition_expression("#pk = :pk"),
        };
        let page = i32::try_from(limit.clamp(1, LIST_LIMIT_CAP)).unwrap_or(1000);
        let mut items = q.into_paginator().page_size(page).items().send();
        let mut out = Vec::new();
        while out.len() < limit {
            match items.next().await {
                Some(Ok(item)) => out.push(decode_call(&item)?),
                Some(Err(e)) => return Err(sdk_err("Query", &self.tables.calls, e)),
                None => break,
            }
        }
        Ok(out)
    }

    async fn get_token_item(&self, token: &str) -> Result<Option<Item>, StoreError> {
        self.client
            .get_item()
            .table_name(&self.tables.tokens)
            .key("pk", s(token))
            .consistent_read(true)
            .send()
            .await
            .map(|out| out.item)
            .map_err(|e| sdk_err("GetItem", &self.tables.tokens, e))
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn ping(&self) -> Result<(), StoreError> {
        // A data-plane read of a key that never exists: cheap, and fails when the table or the
        // credentials are gone.
        self.client
            .get_item()
            .table_name(&self.tables.calls)
            .key("call_id", s("__voxmachina_ping__"))
            .projection_expression("call_id")
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_err("GetItem", &self.tables.calls, e))
    }

    async fn claim_webhook(
        &self,
        webhook_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let expires = ms(expires_at);
        let put = self
            .client
            .put_item()
            .table_name(&self.tables.webhooks)
            .item("webhook_id", s(webhook_id))
            .item("received_at", n(ms(now)))
            .item("expires_ms", n(expires))
            .item(TTL_ATTRIBUTE, n(ttl_secs(expires)))
            .condition_expression("attribute_not_exists(#id) OR #exp <= :now")
            .expression_attribute_names("#id", "webhook_id")
            .expression_attribute_names("#exp", "expires_ms")
            .expression_attribute_values(":now", n(ms(now)))
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) if is_ccf(&e) => Ok(false),
            Err(e) => Err(sdk_err("PutItem", &self.tables.webhooks, e)),
        }
    }

    async fn claim_sms_window(
        &self,
        number: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.claim_webhook(&super::sms_window_key(number), now, until)
            .await
    }

    async fn release_webhook(&self, webhook_id: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.tables.webhooks)
            .key("webhook_id", s(webhook_id))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_err("DeleteItem", &self.tables.webhooks, e))
    }

    async fn create_call(&self, record: &CallRecord) -> Result<CreateOutcome, StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.tables.calls)
            .set_item(Some(encode_call(record)?))
            .condition_expression("attribute_not_exists(#id)")
            .expression_attribute_names("#id", "call_id")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match put {
            Ok(_) => Ok(CreateOutcome::Created),
            Err(e) if is_ccf(&e) => {
                // The engine returns the existing item with the failure (AWS, moto, DynamoDB
                // Local); dynalite ignores ReturnValuesOnConditionCheckFailure, so fall back to
                // a consistent read.
                let old = e.as_service_error().and_then(|s| match s {
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => {
                        c.item().cloned()
                    }
                    _ => None,
                });
                let existing = match old {
                    Some(item) => Some(decode_call(&item)?),
                    None => self.get_call(&record.call_id).await?,
                };
                match existing {
                    Some(existing) => Ok(CreateOutcome::Exists(Box::new(existing))),
                    None => Err(StoreError::Backend(format!(
                        "create of call {} refused but no record found",
                        record.call_id
                    ))),
                }
            }
            Err(e) => Err(sdk_err("PutItem", &self.tables.calls, e)),
        }
    }

    async fn transition_call(
        &self,
        call_id: &str,
        from: &[CallState],
        to: CallState,
    ) -> Result<bool, StoreError> {
        if from.is_empty() {
            return Ok(false);
        }
        let placeholders: Vec<String> = (0..from.len()).map(|i| format!(":f{i}")).collect();
        let mut update = self
            .client
            .update_item()
            .table_name(&self.tables.calls)
            .key("call_id", s(call_id))
            .update_expression("SET #state = :to")
            .condition_expression(format!(
                "attribute_exists(#id) AND #state IN ({})",
                placeholders.join(", ")
            ))
            .expression_attribute_names("#id", "call_id")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":to", s(to.as_str()));
        for (p, state) in placeholders.iter().zip(from) {
            update = update.expression_attribute_values(p, s(state.as_str()));
        }
        match update.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_ccf(&e) => Ok(false),
            Err(e) => Err(sdk_err("UpdateItem", &self.tables.calls, e)),
        }
    }

    async fn update_call(&self, record: &CallRecord) -> Result<(), StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.tables.calls)
            .set_item(Some(encode_call(record)?))
            .condition_expression("attribute_exists(#id)")
            .expression_attribute_names("#id", "call_id")
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e) if is_ccf(&e) => Err(StoreError::NoSuchCall(record.call_id.clone())),
            Err(e) => Err(sdk_err("PutItem", &self.tables.calls, e)),
        }
    }

    async fn get_call(&self, call_id: &str) -> Result<Option<CallRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.calls)
            .key("call_id", s(call_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err("GetItem", &self.tables.calls, e))?;
        out.item.as_ref().map(decode_call).transpose()
    }

    async fn list_calls(&self, query: &CallQuery) -> Result<Vec<CallRecord>, StoreError> {
        let limit = query.limit.min(LIST_LIMIT_CAP);
        if limit == 0 {
            return Ok(Vec::new());
        }
        match query.state {
            None => {
                self.query_calls("by_created", "list_pk", LIST_PK, query.before, false, limit)
                    .await
            }
            Some(state) => {
                self.query_calls(
                    "by_state",
                    "state",
                    state.as_str(),
                    query.before,
                    false,
                    limit,
                )
                .await
            }
        }
    }

    async fn live_calls(&self) -> Result<Vec<CallRecord>, StoreError> {
        let mut out = Vec::new();
        for state in ALL_STATES.into_iter().filter(|s| s.is_live()) {
            out.extend(
                self.query_calls("by_state", "state", state.as_str(), None, true, usize::MAX)
                    .await?,
            );
        }
        out.sort_by(|a, b| (ms(a.created_at), &a.call_id).cmp(&(ms(b.created_at), &b.call_id)));
        Ok(out)
    }

    async fn append_transcript(&self, line: &TranscriptLine) -> Result<(), StoreError> {
        let table = &self.tables.transcripts;
        let mut counter = Item::new();
        counter.insert("call_id".into(), s(&line.call_id));
        counter.insert("sk".into(), s(SEQ_COUNTER_SK));
        let seq = self.next_seq(table, counter).await?;
        let sk = match &line.item_id {
            Some(item_id) => format!("i#{}#{item_id}", line.speaker.as_str()),
            None => format!("n#{seq:020}"),
        };
        let mut put = self
            .client
            .put_item()
            .table_name(table)
            .item("call_id", s(&line.call_id))
            .item("sk", s(sk))
            .item("seq", n(seq))
            .item("speaker", s(line.speaker.as_str()))
            .item("text", s(&line.text))
            .item("at", n(ms(line.at)));
        if let Some(item_id) = &line.item_id {
            put = put.item("item_id", s(item_id));
        }
        let put = put
            .condition_expression("attribute_not_exists(#sk)")
            .expression_attribute_names("#sk", "sk")
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            // A replay of (call_id, speaker, item_id): keep the first line.
            Err(e) if is_ccf(&e) => Ok(()),
            Err(e) => Err(sdk_err("PutItem", table, e)),
        }
    }

    async fn transcript(&self, call_id: &str) -> Result<Vec<TranscriptLine>, StoreError> {
        let table = &self.tables.transcripts;
        let items: Vec<Item> = self
            .client
            .query()
            .table_name(table)
            .index_name("by_seq")
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", "call_id")
            .expression_attribute_values(":pk", s(call_id))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_err("Query", table, e))?;
        items
            .iter()
            .filter(|item| item.contains_key("seq"))
            .map(|item| transcript_line(item).map(|(_, line)| line))
            .collect()
    }

    async fn transcript_page(
        &self,
        call_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<TranscriptLine>, StoreError> {
        let table = &self.tables.transcripts;
        let limit = page_limit(limit);
        let (items, more) = self
            .query_page(table, Some("by_seq"), call_id, after, limit)
            .await?;
        let rows = items
            .iter()
            .map(transcript_line)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page_of(rows, limit, more))
    }

    async fn append_event(&self, event: &CallEvent) -> Result<(), StoreError> {
        let table = &self.tables.events;
        let mut counter = Item::new();
        counter.insert("call_id".into(), s(&event.call_id));
        counter.insert("seq".into(), n(0));
        let seq = self.next_seq(table, counter).await?;
        self.client
            .put_item()
            .table_name(table)
            .item("call_id", s(&event.call_id))
            .item("seq", n(seq))
            .item("at", n(ms(event.at)))
            .item("kind", s(&event.kind))
            .item("detail", s(to_json(&event.detail)?))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_err("PutItem", table, e))
    }

    async fn events(&self, call_id: &str) -> Result<Vec<CallEvent>, StoreError> {
        let table = &self.tables.events;
        let items: Vec<Item> = self
            .client
            .query()
            .table_name(table)
            .key_condition_expression("#pk = :pk AND #seq > :zero")
            .expression_attribute_names("#pk", "call_id")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_values(":pk", s(call_id))
            .expression_attribute_values(":zero", n(0))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_err("Query", table, e))?;
        items
            .iter()
            .map(|item| call_event(item).map(|(_, e)| e))
            .collect()
    }

    async fn events_page(
        &self,
        call_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<CallEvent>, StoreError> {
        let table = &self.tables.events;
        let limit = page_limit(limit);
        // `seq` 0 is the counter item: `> after` with after >= 0 never returns it.
        let (items, more) = self.query_page(table, None, call_id, after, limit).await?;
        let rows = items
            .iter()
            .map(call_event)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page_of(rows, limit, more))
    }

    async fn purge(
        &self,
        now: DateTime<Utc>,
        calls_before: DateTime<Utc>,
    ) -> Result<PurgeStats, StoreError> {
        let mut stats = PurgeStats::default();

        // Webhook entries: a consistent scan for expired ones, each deleted only if still
        // expired (a concurrent re-claim is kept).
        let table = &self.tables.webhooks;
        let expired: Vec<Item> = self
            .client
            .scan()
            .table_name(table)
            .filter_expression("#exp <= :now")
            .projection_expression("#id")
            .expression_attribute_names("#exp", "expires_ms")
            .expression_attribute_names("#id", "webhook_id")
            .expression_attribute_values(":now", n(ms(now)))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_err("Scan", table, e))?;
        for item in expired {
            let id = get_s(&item, "webhook_id")?;
            let del = self
                .client
                .delete_item()
                .table_name(table)
                .key("webhook_id", s(&id))
                .condition_expression("#exp <= :now")
                .expression_attribute_names("#exp", "expires_ms")
                .expression_attribute_values(":now", n(ms(now)))
                .send()
                .await;
            match del {
                Ok(_) => stats.webhooks += 1,
                Err(e) if is_ccf(&e) => {}
                Err(e) => return Err(sdk_err("DeleteItem", table, e)),
            }
        }

        // Final calls created before the cutoff: one by_state query per final state. Lines and
        // events go first, so an interrupted purge leaves the call to be found next time.
        let finals: Vec<CallState> = ALL_STATES.into_iter().filter(|s| s.is_final()).collect();
        for state in &finals {
            let doomed = self
                .query_calls(
                    "by_state",
                    "state",
                    state.as_str(),
                    Some(calls_before),
                    true,
                    usize::MAX,
                )
                .await?;
            for call in doomed {
                let lines = self
                    .partition_keys(&self.tables.transcripts, &call.call_id, ["call_id", "sk"])
                    .await?;
                self.delete_keys(&self.tables.transcripts, lines).await?;
                let events = self
                    .partition_keys(&self.tables.events, &call.call_id, ["call_id", "seq"])
                    .await?;
                self.delete_keys(&self.tables.events, events).await?;

                let placeholders: Vec<String> =
                    (0..finals.len()).map(|i| format!(":f{i}")).collect();
                let mut del = self
                    .client
                    .delete_item()
                    .table_name(&self.tables.calls)
                    .key("call_id", s(&call.call_id))
                    .condition_expression(format!(
                        "#state IN ({}) AND #created < :before",
                        placeholders.join(", ")
                    ))
                    .expression_attribute_names("#state", "state")
                    .expression_attribute_names("#created", "created_at")
                    .expression_attribute_values(":before", n(ms(calls_before)));
                for (p, f) in placeholders.iter().zip(&finals) {
                    del = del.expression_attribute_values(p, s(f.as_str()));
                }
                match del.send().await {
                    Ok(_) => stats.calls += 1,
                    Err(e) if is_ccf(&e) => {}
                    Err(e) => return Err(sdk_err("DeleteItem", &self.tables.calls, e)),
                }
            }
        }
        Ok(stats)
    }

    async fn acquire_lease(
        &self,
        call_id: &str,
        owner: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let expires = ms(now) + lease_ttl_ms(ttl)?;
        let table = &self.tables.leases;
        let put = self
            .client
            .put_item()
            .table_name(table)
            .item("call_id", s(call_id))
            .item("owner", s(owner))
            .item("expires_ms", n(expires))
            .item(TTL_ATTRIBUTE, n(ttl_secs(expires)))
            .condition_expression("attribute_not_exists(#id) OR #owner = :owner OR #exp <= :now")
            .expression_attribute_names("#id", "call_id")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#exp", "expires_ms")
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":now", n(ms(now)))
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) if is_ccf(&e) => Ok(false),
            Err(e) => Err(sdk_err("PutItem", table, e)),
        }
    }

    async fn renew_lease(
        &self,
        call_id: &str,
        owner: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let expires = ms(now) + lease_ttl_ms(ttl)?;
        let table = &self.tables.leases;
        let update = self
            .client
            .update_item()
            .table_name(table)
            .key("call_id", s(call_id))
            .update_expression("SET #exp = :exp, #ttl = :ttl")
            .condition_expression("#owner = :owner AND #exp > :now")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#exp", "expires_ms")
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":now", n(ms(now)))
            .expression_attribute_values(":exp", n(expires))
            .expression_attribute_values(":ttl", n(ttl_secs(expires)))
            .send()
            .await;
        match update {
            Ok(_) => Ok(true),
            Err(e) if is_ccf(&e) => Ok(false),
            Err(e) => Err(sdk_err("UpdateItem", table, e)),
        }
    }

    async fn release_lease(&self, call_id: &str, owner: &str) -> Result<bool, StoreError> {
        let table = &self.tables.leases;
        let del = self
            .client
            .delete_item()
            .table_name(table)
            .key("call_id", s(call_id))
            .condition_expression("#owner = :owner")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        match del {
            Ok(_) => Ok(true),
            Err(e) if is_ccf(&e) => Ok(false),
            Err(e) => Err(sdk_err("DeleteItem", table, e)),
        }
    }

    async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let table = &self.tables.leases;
        let items: Vec<Item> = self
            .client
            .scan()
            .table_name(table)
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_err("Scan", table, e))?;
        items
            .iter()
            .map(|item| {
                Ok(Lease {
                    call_id: get_s(item, "call_id")?,
                    owner: get_s(item, "owner")?,
                    expires_at: from_ms(get_n(item, "expires_ms")?, "lease expires_ms")?,
                })
            })
            .collect()
    }

    async fn mint_token(
        &self,
        payload: &HandoverPayload,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        self.mint_token_from(payload, ttl, now, tokens::random_candidates())
            .await
    }

    async fn redeem_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<HandoverPayload>, StoreError> {
        if !tokens::is_token(token) {
            return Ok(None);
        }
        self.delete_token(token, now)
            .await?
            .as_ref()
            .map(decode_payload)
            .transpose()
    }

    async fn peek_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<HandoverPayload>, StoreError> {
        if !tokens::is_token(token) {
            return Ok(None);
        }
        match self.get_token_item(token).await? {
            Some(item) if get_n(&item, "expires_ms")? > ms(now) => decode_payload(&item).map(Some),
            _ => Ok(None),
        }
    }

    async fn latest_handover_for_caller(
        &self,
        caller_number: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, HandoverPayload)>, StoreError> {
        if caller_number.is_empty() {
            return Ok(None);
        }
        let table = &self.tables.tokens;
        let mut items = self
            .client
            .query()
            .table_name(table)
            .index_name("by_caller")
            .key_condition_expression("#ck = :c")
            .filter_expression("#exp > :now")
            .expression_attribute_names("#ck", "caller_key")
            .expression_attribute_names("#exp", "expires_ms")
            .expression_attribute_values(":c", s(caller_number))
            .expression_attribute_values(":now", n(ms(now)))
            .scan_index_forward(false)
            .into_paginator()
            .page_size(10)
            .items()
            .send();
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| sdk_err("Query", table, e))?;
            let token = get_s(&item, "pk")?;
            // The GSI lags the table: confirm the token is still there (not redeemed) and live.
            if let Some(payload) = self.peek_token(&token, now).await? {
                return Ok(Some((token, payload)));
            }
        }
        Ok(None)
    }

    async fn mint_stream_token(
        &self,
        grant: &StreamGrant,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        let expires = ms(tokens::expiry(now, ttl)?);
        let mut base = Item::new();
        base.insert("kind".into(), s(STREAM_TOKEN_KIND));
        base.insert("grant".into(), s(to_json(grant)?));
        base.insert("minted_at".into(), n(ms(now)));
        base.insert("expires_ms".into(), n(expires));
        base.insert(TTL_ATTRIBUTE.into(), n(ttl_secs(expires)));
        self.put_token(
            base,
            now,
            tokens::random_stream_candidates(),
            tokens::is_stream_token,
        )
        .await
    }

    async fn redeem_stream_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<StreamGrant>, StoreError> {
        if !tokens::is_stream_token(token) {
            return Ok(None);
        }
        match self.delete_token(token, now).await? {
            Some(item) => from_json(&get_s(&item, "grant")?, "stream grant").map(Some),
            None => Ok(None),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Table specifications

/// One table's key schema and indexes, used to create it and to check an existing one.
struct TableSpec {
    name: String,
    /// `(attribute, type)` of every key attribute of the table and its indexes.
    attributes: Vec<(&'static str, ScalarAttributeType)>,
    hash: &'static str,
    range: Option<&'static str>,
    /// `(name, hash, range)`.
    gsis: Vec<(&'static str, &'static str, &'static str)>,
    /// `(name, range)`; the hash key is the table's.
    lsis: Vec<(&'static str, &'static str)>,
    ttl: bool,
}

fn table_specs(t: &TableNames) -> Vec<TableSpec> {
    use ScalarAttributeType::{N, S};
    vec![
        TableSpec {
            name: t.calls.clone(),
            attributes: vec![
                ("call_id", S),
                ("list_pk", S),
                ("created_key", S),
                ("state", S),
            ],
            hash: "call_id",
            range: None,
            gsis: vec![
                ("by_created", "list_pk", "created_key"),
                ("by_state", "state", "created_key"),
            ],
            lsis: vec![],
            ttl: false,
        },
        TableSpec {
            name: t.transcripts.clone(),
            attributes: vec![("call_id", S), ("sk", S), ("seq", N)],
            hash: "call_id",
            range: Some("sk"),
            gsis: vec![],
            lsis: vec![("by_seq", "seq")],
            ttl: false,
        },
        TableSpec {
            name: t.events.clone(),
            attributes: vec![("call_id", S), ("seq", N)],
            hash: "call_id",
            range: Some("seq"),
            gsis: vec![],
            lsis: vec![],
            ttl: false,
        },
        TableSpec {
            name: t.webhooks.clone(),
            attributes: vec![("webhook_id", S)],
            hash: "webhook_id",
            range: None,
            gsis: vec![],
            lsis: vec![],
            ttl: true,
        },
        TableSpec {
            name: t.tokens.clone(),
            attributes: vec![("pk", S), ("caller_key", S), ("minted_at", N)],
            hash: "pk",
            range: None,
            gsis: vec![("by_caller", "caller_key", "minted_at")],
            lsis: vec![],
            ttl: true,
        },
        TableSpec {
            name: t.leases.clone(),
            attributes: vec![("call_id", S)],
            hash: "call_id",
            range: None,
            gsis: vec![],
            lsis: vec![],
            ttl: true,
        },
    ]
}

fn key_schema(hash: &str, range: Option<&str>) -> Vec<KeySchemaElement> {
    let mut keys = vec![
        KeySchemaElement::builder()
            .attribute_name(hash)
            .key_type(KeyType::Hash)
            .build()
            .expect("attribute name and key type are set"),
    ];
    if let Some(range) = range {
        keys.push(
            KeySchemaElement::builder()
                .attribute_name(range)
                .key_type(KeyType::Range)
                .build()
                .expect("attribute name and key type are set"),
        );
    }
    keys
}

fn projection_all() -> Projection {
    Projection::builder()
        .projection_type(ProjectionType::All)
        .build()
}

impl TableSpec {
    fn create(
        &self,
        client: &Client,
    ) -> aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder {
        let mut req = client
            .create_table()
            .table_name(&self.name)
            .billing_mode(BillingMode::PayPerRequest)
            .set_key_schema(Some(key_schema(self.hash, self.range)));
        for (name, ty) in &self.attributes {
            req = req.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(*name)
                    .attribute_type(ty.clone())
                    .build()
                    .expect("attribute name and type are set"),
            );
        }
        for (name, hash, range) in &self.gsis {
            req = req.global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(*name)
                    .set_key_schema(Some(key_schema(hash, Some(range))))
                    .projection(projection_all())
                    .build()
                    .expect("index name and key schema are set"),
            );
        }
        for (name, range) in &self.lsis {
            req = req.local_secondary_indexes(
                LocalSecondaryIndex::builder()
                    .index_name(*name)
                    .set_key_schema(Some(key_schema(self.hash, Some(range))))
                    .projection(projection_all())
                    .build()
                    .expect("index name, key schema and projection are set"),
            );
        }
        req
    }

    /// Checks an existing table's key schema and that every index exists with its keys.
    fn verify(&self, table: &TableDescription) -> Result<(), StoreError> {
        let render = |keys: &[KeySchemaElement]| {
            keys.iter()
                .map(|k| format!("{}:{}", k.attribute_name(), k.key_type().as_str()))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mismatch = |what: String| {
            Err(StoreError::Backend(format!(
                "DynamoDB table {} exists but {what}; delete it or use another table_prefix",
                self.name
            )))
        };
        let want = render(&key_schema(self.hash, self.range));
        let have = render(table.key_schema());
        if want != have {
            return mismatch(format!("has key schema [{have}], expected [{want}]"));
        }
        for (name, hash, range) in &self.gsis {
            let want = render(&key_schema(hash, Some(range)));
            match table
                .global_secondary_indexes()
                .iter()
                .find(|g| g.index_name() == Some(*name))
            {
                Some(g) if render(g.key_schema()) == want => {}
                Some(g) => {
                    return mismatch(format!(
                        "its index {name} has keys [{}], expected [{want}]",
                        render(g.key_schema())
                    ));
                }
                None => return mismatch(format!("lacks the global secondary index {name}")),
            }
        }
        for (name, range) in &self.lsis {
            let want = render(&key_schema(self.hash, Some(range)));
            match table
                .local_secondary_indexes()
                .iter()
                .find(|l| l.index_name() == Some(*name))
            {
                Some(l) if render(l.key_schema()) == want => {}
                Some(l) => {
                    return mismatch(format!(
                        "its index {name} has keys [{}], expected [{want}]",
                        render(l.key_schema())
                    ));
                }
                None => return mismatch(format!("lacks the local secondary index {name}")),
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Every [`CallState`] ([`CallState::ALL`]).
const ALL_STATES: [CallState; 10] = CallState::ALL;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Integer Unix milliseconds (floored), as the SQLite store.
fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Unix seconds for the TTL attribute: `expires_ms` rounded up, so TTL never removes an entry
/// before its logical expiry.
fn ttl_secs(expires_ms: i64) -> i64 {
    expires_ms.div_euclid(1000) + i64::from(expires_ms.rem_euclid(1000) > 0)
}

/// A millisecond timestamp as 20 digits whose string order is numeric order (sign bit flipped).
fn time_key(ms: i64) -> String {
    format!("{:020}", (ms as u64) ^ (1 << 63))
}

fn from_ms(v: i64, what: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(v)
        .ok_or_else(|| StoreError::Corrupt(format!("{what}: timestamp {v} ms out of range")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encode json: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(v: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(v).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn get_opt_s(item: &Item, name: &str) -> Result<Option<String>, StoreError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
        Some(other) => Err(StoreError::Corrupt(format!(
            "attribute {name}: expected a string, got {other:?}"
        ))),
    }
}

fn get_s(item: &Item, name: &str) -> Result<String, StoreError> {
    get_opt_s(item, name)?
        .ok_or_else(|| StoreError::Corrupt(format!("attribute {name} is missing")))
}

fn get_opt_n(item: &Item, name: &str) -> Result<Option<i64>, StoreError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("attribute {name}: {v:?} is not an integer"))),
        Some(other) => Err(StoreError::Corrupt(format!(
            "attribute {name}: expected a number, got {other:?}"
        ))),
    }
}

/// A transcript item and its `seq`.
fn transcript_line(item: &Item) -> Result<(u64, TranscriptLine), StoreError> {
    Ok((
        get_n(item, "seq")?.unsigned_abs(),
        TranscriptLine {
            call_id: get_s(item, "call_id")?,
            speaker: parse_speaker(&get_s(item, "speaker")?)?,
            text: get_s(item, "text")?,
            at: from_ms(get_n(item, "at")?, "transcript at")?,
            item_id: get_opt_s(item, "item_id")?,
        },
    ))
}

/// An event item and its `seq`.
fn call_event(item: &Item) -> Result<(u64, CallEvent), StoreError> {
    Ok((
        get_n(item, "seq")?.unsigned_abs(),
        CallEvent {
            call_id: get_s(item, "call_id")?,
            at: from_ms(get_n(item, "at")?, "event at")?,
            kind: get_s(item, "kind")?,
            detail: from_json(&get_s(item, "detail")?, "event detail")?,
        },
    ))
}

fn get_n(item: &Item, name: &str) -> Result<i64, StoreError> {
    get_opt_n(item, name)?
        .ok_or_else(|| StoreError::Corrupt(format!("attribute {name} is missing")))
}

fn put_opt(item: &mut Item, name: &str, v: Option<AttributeValue>) {
    if let Some(v) = v {
        item.insert(name.to_string(), v);
    }
}

fn encode_call(r: &CallRecord) -> Result<Item, StoreError> {
    let created = ms(r.created_at);
    let mut item = Item::new();
    item.insert("call_id".into(), s(&r.call_id));
    item.insert("api".into(), s(api_name(r.api)));
    item.insert("state".into(), s(r.state.as_str()));
    item.insert("profile".into(), s(&r.profile));
    put_opt(&mut item, "caller", r.caller.as_deref().map(s));
    put_opt(&mut item, "dialed", r.dialed.as_deref().map(s));
    put_opt(&mut item, "sip_call_id", r.sip_call_id.as_deref().map(s));
    item.insert("webhook_id".into(), s(&r.webhook_id));
    item.insert("created_at".into(), n(created));
    put_opt(&mut item, "accepted_at", r.accepted_at.map(|t| n(ms(t))));
    put_opt(&mut item, "ended_at", r.ended_at.map(|t| n(ms(t))));
    put_opt(&mut item, "end_reason", r.end_reason.as_deref().map(s));
    put_opt(
        &mut item,
        "escalation",
        r.escalation.as_ref().map(to_json).transpose()?.map(s),
    );
    item.insert("usage".into(), s(to_json(&r.usage)?));
    item.insert("after_call".into(), s(to_json(&r.after_call)?));
    put_opt(
        &mut item,
        "media",
        r.media.as_ref().map(to_json).transpose()?.map(s),
    );
    put_opt(
        &mut item,
        "twilio_call_sid",
        r.twilio_call_sid.as_deref().map(s),
    );
    item.insert("list_pk".into(), s(LIST_PK));
    item.insert(
        "created_key".into(),
        s(format!("{}#{}", time_key(created), r.call_id)),
    );
    Ok(item)
}

fn decode_call(item: &Item) -> Result<CallRecord, StoreError> {
    let state = get_s(item, "state")?;
    Ok(CallRecord {
        call_id: get_s(item, "call_id")?,
        api: parse_api(&get_s(item, "api")?)?,
        state: CallState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown call state {state:?}")))?,
        profile: get_s(item, "profile")?,
        caller: get_opt_s(item, "caller")?,
        dialed: get_opt_s(item, "dialed")?,
        sip_call_id: get_opt_s(item, "sip_call_id")?,
        webhook_id: get_s(item, "webhook_id")?,
        created_at: from_ms(get_n(item, "created_at")?, "created_at")?,
        accepted_at: get_opt_n(item, "accepted_at")?
            .map(|v| from_ms(v, "accepted_at"))
            .transpose()?,
        ended_at: get_opt_n(item, "ended_at")?
            .map(|v| from_ms(v, "ended_at"))
            .transpose()?,
        end_reason: get_opt_s(item, "end_reason")?,
        escalation: get_opt_s(item, "escalation")?
            .map(|v| from_json::<EscalationSummary>(&v, "escalation"))
            .transpose()?,
        usage: from_json::<Usage>(&get_s(item, "usage")?, "usage")?,
        // Absent in items written before after-call work existed: the default.
        after_call: get_opt_s(item, "after_call")?
            .map(|v| from_json::<AfterCall>(&v, "after_call"))
            .transpose()?
            .unwrap_or_default(),
        // Twilio Media Streams calls only.
        media: get_opt_s(item, "media")?
            .map(|v| from_json::<crate::calls::record::MediaInfo>(&v, "media"))
            .transpose()?,
        // SIP calls dialed in through Twilio only.
        twilio_call_sid: get_opt_s(item, "twilio_call_sid")?,
    })
}

/// The token item without its key (`pk`).
fn token_item(p: &HandoverPayload, now: DateTime<Utc>, expires: DateTime<Utc>) -> Item {
    let mut item = Item::new();
    item.insert("call_id".into(), s(&p.call_id));
    put_opt(
        &mut item,
        "caller_number",
        p.caller_number.as_deref().map(s),
    );
    put_opt(
        &mut item,
        "caller_key",
        p.caller_number.as_deref().filter(|c| !c.is_empty()).map(s),
    );
    put_opt(
        &mut item,
        "hubspot_contact_id",
        p.hubspot_contact_id.as_deref().map(s),
    );
    put_opt(
        &mut item,
        "hubspot_ticket_id",
        p.hubspot_ticket_id.as_deref().map(s),
    );
    item.insert("summary".into(), s(&p.summary));
    put_opt(&mut item, "intent", p.intent.as_deref().map(s));
    put_opt(&mut item, "priority", p.priority.as_deref().map(s));
    item.insert("escalation_reason".into(), s(&p.escalation_reason));
    put_opt(
        &mut item,
        "route_to_queue",
        p.route_to_queue.as_deref().map(s),
    );
    item.insert(
        "created_at".into(),
        s(p.created_at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    );
    item.insert("minted_at".into(), n(ms(now)));
    item.insert("expires_ms".into(), n(ms(expires)));
    item.insert(TTL_ATTRIBUTE.into(), n(ttl_secs(ms(expires))));
    item
}

fn decode_payload(item: &Item) -> Result<HandoverPayload, StoreError> {
    let created = get_s(item, "created_at")?;
    Ok(HandoverPayload {
        call_id: get_s(item, "call_id")?,
        caller_number: get_opt_s(item, "caller_number")?,
        hubspot_contact_id: get_opt_s(item, "hubspot_contact_id")?,
        hubspot_ticket_id: get_opt_s(item, "hubspot_ticket_id")?,
        summary: get_s(item, "summary")?,
        intent: get_opt_s(item, "intent")?,
        priority: get_opt_s(item, "priority")?,
        escalation_reason: get_s(item, "escalation_reason")?,
        route_to_queue: get_opt_s(item, "route_to_queue")?,
        created_at: DateTime::parse_from_rfc3339(&created)
            .map_err(|e| StoreError::Corrupt(format!("token created_at {created:?}: {e}")))?
            .with_timezone(&Utc),
    })
}

// ---------------------------------------------------------------------------------------------
// Errors

/// True for a `ConditionalCheckFailedException` of any operation.
fn is_ccf<E, R>(e: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    e.as_service_error()
        .is_some_and(|s| s.code() == Some("ConditionalCheckFailedException"))
}

/// An SDK error as [`StoreError::Backend`], with the operation, the table and the whole error
/// chain (`DisplayErrorContext`).
fn sdk_err<E, R>(op: &str, table: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Backend(format!(
        "DynamoDB {op} on {table}: {}",
        DisplayErrorContext(&e)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_keys_sort_like_times() {
        let times = [
            i64::MIN,
            -86_400_000,
            -1,
            0,
            1,
            999,
            1_000,
            1_893_456_000_000,
            i64::MAX,
        ];
        let keys: Vec<String> = times.iter().map(|t| time_key(*t)).collect();
        assert!(keys.iter().all(|k| k.len() == 20), "{keys:?}");
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "string order is time order");
        // `created_key < time_key(before)` is exactly `created_at < before`.
        let ck = |t: i64, id: &str| format!("{}#{id}", time_key(t));
        assert!(ck(999, "zzz") < time_key(1_000));
        assert!(ck(1_000, "") > time_key(1_000));
        assert!(ck(1_000, "a") < ck(1_000, "b"));
    }

    #[test]
    fn ttl_seconds_round_up() {
        assert_eq!(ttl_secs(1_000), 1);
        assert_eq!(ttl_secs(1_001), 2);
        assert_eq!(ttl_secs(0), 0);
        assert_eq!(ttl_secs(-1), 0);
        assert_eq!(ttl_secs(-1_000), -1);
        assert_eq!(ttl_secs(1_735_689_600_000), 1_735_689_600);
    }

    #[test]
    fn token_items_round_trip_and_omit_absent_options() {
        let created = DateTime::from_timestamp(1_900_000_000, 123_456_789).unwrap();
        let full = HandoverPayload {
            call_id: "rtc_1".into(),
            caller_number: Some("+14155550123".into()),
            hubspot_contact_id: Some("501".into()),
            hubspot_ticket_id: Some("9001".into()),
            summary: "Invoice question".into(),
            intent: Some("billing".into()),
            priority: Some("high".into()),
            escalation_reason: "caller asked for a person".into(),
            route_to_queue: Some("billing".into()),
            created_at: created,
        };
        let expires = created + chrono::Duration::milliseconds(600_001);
        let item = token_item(&full, created, expires);
        assert_eq!(decode_payload(&item).unwrap(), full);
        assert_eq!(item["caller_key"], s("+14155550123"));
        assert_eq!(item["expires_ms"], n(ms(expires)));
        assert_eq!(item[TTL_ATTRIBUTE], n(1_900_000_601));

        let bare = HandoverPayload {
            caller_number: Some(String::new()),
            hubspot_contact_id: None,
            hubspot_ticket_id: None,
            intent: None,
            priority: None,
            route_to_queue: None,
            ..full
        };
        let item = token_item(&bare, created, expires);
        assert_eq!(decode_payload(&item).unwrap(), bare);
        for absent in [
            "caller_key",
            "hubspot_contact_id",
            "intent",
            "route_to_queue",
        ] {
            assert!(!item.contains_key(absent), "{absent}");
        }
    }

    #[test]
    fn undecodable_items_are_corrupt() {
        let mut item = encode_call(&CallRecord::new(
            "rtc_x",
            crate::calls::record::Api::Realtime,
            "wh",
            DateTime::from_timestamp_millis(0).unwrap(),
        ))
        .unwrap();
        assert!(decode_call(&item).is_ok());
        item.insert("state".into(), s("dancing"));
        assert!(matches!(decode_call(&item), Err(StoreError::Corrupt(_))));
        item.insert("state".into(), s("active"));
        item.insert("created_at".into(), s("yesterday"));
        assert!(matches!(decode_call(&item), Err(StoreError::Corrupt(_))));
        item.insert("created_at".into(), n(0));
        item.remove("usage");
        assert!(matches!(decode_call(&item), Err(StoreError::Corrupt(_))));
    }
}
