//! The embedded store: one SQLite file in WAL mode.
//!
//! # Layout
//! Schema version 5 (kept in `PRAGMA user_version`; [`SqliteStore::open`] migrates older files
//! and refuses newer ones; version 2 added `calls.after_call`, version 3 `handover_tokens`,
//! version 4 `calls.media`, version 5 `calls.twilio_call_sid`, version 6 `call_leases`):
//!
//! ```sql
//! calls(call_id TEXT PRIMARY KEY, api TEXT, state TEXT, profile TEXT, caller TEXT NULL,
//!       dialed TEXT NULL, sip_call_id TEXT NULL, webhook_id TEXT, created_at INTEGER,
//!       accepted_at INTEGER NULL, ended_at INTEGER NULL, end_reason TEXT NULL,
//!       escalation TEXT NULL  -- JSON EscalationSummary
//!       usage TEXT            -- JSON Usage
//!       after_call TEXT NULL  -- JSON AfterCall (v2; NULL = default)
//!       media TEXT NULL       -- JSON MediaInfo (Twilio Media Streams calls; v4)
//!       twilio_call_sid TEXT NULL -- parent CallSid of SIP calls dialed in by Twilio (v5)
//! )
//! transcript_lines(id INTEGER PRIMARY KEY AUTOINCREMENT, call_id, speaker, text, at, item_id NULL)
//!       + UNIQUE (call_id, speaker, item_id) WHERE item_id IS NOT NULL
//! call_events(id INTEGER PRIMARY KEY AUTOINCREMENT, call_id, at, kind, detail TEXT -- JSON)
//! webhooks(webhook_id TEXT PRIMARY KEY, received_at INTEGER, expires_at INTEGER)
//! handover_tokens(token TEXT PRIMARY KEY, caller_number TEXT NULL, minted_at INTEGER,
//!       expires_at INTEGER, payload TEXT -- JSON HandoverPayload, or StreamGrant for the
//!       `vst_…` Media Streams tokens, caller_number NULL)
//!       + INDEX (caller_number, minted_at) WHERE caller_number IS NOT NULL
//! call_leases(call_id TEXT PRIMARY KEY, owner TEXT, expires_at INTEGER)   -- v5
//! ```
//!
//! Call leases: acquiring is an upsert whose `DO UPDATE ... WHERE` only fires when the stored
//! lease has expired or belongs to the same owner; renewing and releasing are single
//! statements conditional on the owner, so the writer thread makes each one atomic. Expired
//! leases of calls that are no longer live are removed by [`Store::purge`].
//!
//! Handover tokens: minting is an upsert that only replaces an *expired* row (so a live token
//! is never overwritten), redemption is one `DELETE ... WHERE expires_at > now RETURNING`
//! statement on the single writer connection (atomic, single use). Expired tokens are removed
//! by [`Store::purge`] (not counted in [`PurgeStats`]).
//!
//! # Timestamps
//! Every timestamp column holds integer Unix **milliseconds** (UTC). Sub-millisecond precision
//! is dropped on write (floored), so a record written with a nanosecond timestamp reads back
//! truncated to the millisecond. The `at` of an escalation lives inside the JSON column and keeps
//! chrono's RFC 3339 form (nanoseconds).
//!
//! # Concurrency
//! rusqlite is blocking. Writes go to one dedicated writer thread that owns the read-write
//! connection (SQLite allows one writer anyway, and serialising here avoids `SQLITE_BUSY` between
//! our own connections). The writer **group-commits**: it takes every write waiting in its queue
//! (up to [`GROUP_COMMIT_MAX`]), runs each inside its own `SAVEPOINT` (a failing write rolls back
//! alone), commits them in one transaction, and only then answers each caller. Under concurrency
//! this turns many small commits into one; a lone write costs the same as before. Reads use a
//! small pool of read-only connections on [`tokio::task::spawn_blocking`], which WAL lets run
//! alongside the writer.
//!
//! # Checkpoints
//! SQLite's automatic checkpoint runs on the connection that commits, right after the commit:
//! on our single writer that meant every write queued behind a checkpoint (copy the WAL's pages
//! into the database file and `fsync` both) waited for it, 8-10 ms every ~1 000 WAL frames,
//! which at 1 000 calls/s was every ~40 ms and the whole webhook latency tail (see
//! `docs/performance.md`). So the writer runs with `wal_autocheckpoint=0`, and a
//! `sqlite-checkpoint` thread with its own connection runs `wal_checkpoint(PASSIVE)` (which
//! never blocks the writer) at most every [`CHECKPOINT_SPACING`] after commits. A passive
//! checkpoint cannot rewind the WAL while commits keep arriving, so once the WAL holds
//! [`WAL_RESTART_FRAMES`] frames the thread runs one `wal_checkpoint(RESTART)` (`restart`):
//! having flushed the files to disk first, without any lock, it waits for the writer's current
//! batch, copies the few frames the passive passes have not, and lets the next write start the
//! WAL from its beginning; `journal_size_limit` then trims the file. The WAL thus stays under
//! ~[`WAL_RESTART_FRAMES`] pages, and the writer waits only for those short restarts (1-2 ms).
//! A connection that finds a lock held retries every 100 µs at first (`busy_wait`), not in
//! SQLite's 1, 2, 5 ms `busy_timeout` steps, so it waits about as long as the lock is held. Checkpoints follow <https://www.sqlite.org/wal.html#ckpt> and
//! <https://www.sqlite.org/c3ref/wal_checkpoint_v2.html>.
//!
//! Transcript lines and events carry no foreign key to `calls`: like a distributed backend, the
//! store accepts lines and events for a call it has no record of.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, Row, TransactionBehavior, params};

use super::tokens::{self, HandoverPayload, StreamGrant};
use super::{
    CallQuery, CreateOutcome, Lease, Page, PurgeStats, Store, StoreError, TakeoverCandidate,
    api_name, lease_ttl_ms, page_limit, page_of, page_position, parse_api, parse_speaker,
};
use crate::calls::record::{
    AfterCall, CallEvent, CallRecord, CallState, EscalationSummary, MediaInfo, TranscriptLine,
    Usage,
};

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 6;

/// Most records [`Store::list_calls`] returns, whatever the query's `limit`.
pub const LIST_LIMIT_CAP: usize = 1000;

/// How long a connection waits on a lock held by another connection or process before failing
/// with `SQLITE_BUSY` (surfaced as [`StoreError::Backend`]); see [`busy_wait`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between the first [`BUSY_FINE_TRIES`] retries of a lock in [`busy_wait`].
const BUSY_FINE_PAUSE: Duration = Duration::from_micros(100);

/// Retries [`busy_wait`] makes at [`BUSY_FINE_PAUSE`] (10 ms in all) before pausing 1 ms.
const BUSY_FINE_TRIES: i32 = 100;

/// Most writes committed in one transaction by the writer thread.
pub const GROUP_COMMIT_MAX: usize = 256;

/// A queued write: runs on the writer connection, returns the reply to send once the batch's
/// commit outcome is known (`None` = committed, `Some(e)` = the commit failed).
type Job = Box<dyn FnOnce(&mut Connection) -> Reply + Send>;
type Reply = Box<dyn FnOnce(Option<StoreError>) + Send>;

/// Least time between two checkpoint passes of the `sqlite-checkpoint` thread (see the module
/// docs): passes are cheap when little was written, so this only coalesces bursts of commits.
pub const CHECKPOINT_SPACING: Duration = Duration::from_millis(10);

/// WAL size, in frames (one page each, 4 KiB by default), at which the checkpoint thread runs a
/// `RESTART` checkpoint so the next write rewinds the WAL (64 MiB of pages). Each restart
/// holds the writer for a few milliseconds; at 1 000 calls/s this is about twice a second.
pub const WAL_RESTART_FRAMES: i64 = 16_384;

/// Size the WAL file is truncated back to after it was rewound, bytes (`journal_size_limit`).
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// Read-only connections kept next to the writer.
const READERS: usize = 2;

/// Migrations, indexed by the version they upgrade *from*: `MIGRATIONS[v]` takes a file at
/// `user_version = v` to `v + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: initial schema.
    "
    CREATE TABLE calls (
        call_id     TEXT PRIMARY KEY NOT NULL,
        api         TEXT NOT NULL,
        state       TEXT NOT NULL,
        profile     TEXT NOT NULL,
        caller      TEXT,
        dialed      TEXT,
        sip_call_id TEXT,
        webhook_id  TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        accepted_at INTEGER,
        ended_at    INTEGER,
        end_reason  TEXT,
        escalation  TEXT,
        usage       TEXT NOT NULL
    );
    CREATE INDEX calls_by_created ON calls (created_at, call_id);
    CREATE INDEX calls_by_state_created ON calls (state, created_at, call_id);

    CREATE TABLE transcript_lines (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL,
        speaker TEXT NOT NULL,
        text    TEXT NOT NULL,
        at      INTEGER NOT NULL,
        item_id TEXT
    );
    CREATE INDEX transcript_lines_by_call ON transcript_lines (call_id, id);
    CREATE UNIQUE INDEX transcript_lines_replay
        ON transcript_lines (call_id, speaker, item_id) WHERE item_id IS NOT NULL;

    CREATE TABLE call_events (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL,
        at      INTEGER NOT NULL,
        kind    TEXT NOT NULL,
        detail  TEXT NOT NULL
    );
    CREATE INDEX call_events_by_call ON call_events (call_id, id);

    CREATE TABLE webhooks (
        webhook_id  TEXT PRIMARY KEY NOT NULL,
        received_at INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    CREATE INDEX webhooks_by_expiry ON webhooks (expires_at);
    ",
    // 1 -> 2 (tools / after-call work): tool counts, summary, extracted values, cost estimate and
    // SMS follow-up of a call, as one JSON column. Older rows read as the default (NULL).
    "
    ALTER TABLE calls ADD COLUMN after_call TEXT;
    ",
    // 2 -> 3: handover tokens.
    "
    CREATE TABLE handover_tokens (
        token         TEXT PRIMARY KEY NOT NULL,
        caller_number TEXT,
        minted_at     INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        payload       TEXT NOT NULL
    );
    CREATE INDEX handover_tokens_by_caller
        ON handover_tokens (caller_number, minted_at) WHERE caller_number IS NOT NULL;
    CREATE INDEX handover_tokens_by_expiry ON handover_tokens (expires_at);
    ",
    // 3 -> 4: the Twilio Media Streams details of bridged calls (JSON MediaInfo, nullable).
    "ALTER TABLE calls ADD COLUMN media TEXT;",
    // 4 -> 5: the parent Twilio CallSid of SIP calls dialed in through Twilio (twilio_dial).
    "ALTER TABLE calls ADD COLUMN twilio_call_sid TEXT;",
    // 5 -> 6: call monitor leases (several controllers on one store; `crate::calls::lease`).
    "
    CREATE TABLE call_leases (
        call_id    TEXT PRIMARY KEY NOT NULL,
        owner      TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    ",
];

const CALL_COLUMNS: &str = "call_id, api, state, profile, caller, dialed, sip_call_id, \
     webhook_id, created_at, accepted_at, ended_at, end_reason, escalation, usage, after_call, \
     media, twilio_call_sid";

/// SQLite implementation of [`super::Store`]: one database file in WAL mode.
///
/// Cloning is cheap (an [`Arc`]); clones share the connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: std::sync::mpsc::Sender<Job>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, creating its parent directory,
    /// and brings the schema up to [`SCHEMA_VERSION`].
    ///
    /// Sets `journal_mode=WAL`, `synchronous=NORMAL`, `foreign_keys=ON` and a 5 s
    /// `busy_timeout` on every connection. Blocking: call it before serving, or from
    /// `spawn_blocking`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the directory or file cannot be created or opened, a pragma
    /// or migration fails, or the file's `user_version` is newer than this build understands.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, WAL_RESTART_FRAMES, true)
    }

    /// [`SqliteStore::open`], then limits the database to `max_mb` MiB (`[store]
    /// sqlite_max_size_mb`; 0 = no limit) with `PRAGMA max_page_count` on the writer
    /// connection (<https://www.sqlite.org/pragma.html#pragma_max_page_count>): a write that
    /// needs a page beyond it fails with `SQLITE_FULL`, as on a full disk. A file already larger
    /// cannot grow (SQLite keeps the limit at least at the current size).
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub async fn open_limited(path: &Path, max_mb: u64) -> Result<SqliteStore, StoreError> {
        let owned = path.to_path_buf();
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&owned))
            .await
            .map_err(|e| StoreError::Backend(format!("store task: {e}")))??;
        if max_mb > 0 {
            store
                .write(move |conn| {
                    let page: i64 = conn
                        .query_row("PRAGMA page_size", [], |r| r.get(0))
                        .map_err(backend)?;
                    let pages = i64::try_from(max_mb.saturating_mul(1 << 20)).unwrap_or(i64::MAX)
                        / page.max(512);
                    conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .map_err(backend)
                })
                .await?;
        }
        Ok(store)
    }

    /// [`SqliteStore::open`] with the WAL size that triggers a `RESTART` checkpoint, and
    /// whether the files are flushed to disk before it (see `restart`).
    fn open_with(
        path: &Path,
        wal_restart_frames: i64,
        flush_before_restart: bool,
    ) -> Result<SqliteStore, StoreError> {
        // The database file (and its missing directories, 0700) is created 0600 before SQLite
        // opens it; SQLite gives its -wal and -shm the database file's mode. All three are set
        // to 0600 once they exist.
        drop(crate::private_fs::open_private_append(path).map_err(|e| {
            StoreError::Backend(format!("create database file {}: {e}", path.display()))
        })?);
        let mut writer = Connection::open(path).map_err(backend)?;
        configure(&writer)?;
        let mode: String = writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "journal_mode WAL refused (got {mode}) for {}",
                path.display()
            )));
        }
        migrate(&mut writer)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            crate::private_fs::restrict_file(Path::new(&p)).map_err(|e| {
                StoreError::Backend(format!("chmod 0600 {}: {e}", Path::new(&p).display()))
            })?;
        }

        let readers = (0..READERS)
            .map(|_| {
                let conn = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX
                        | OpenFlags::SQLITE_OPEN_URI,
                )
                .map_err(backend)?;
                configure(&conn)?;
                Ok(Mutex::new(conn))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;

        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(backend)?;
        writer
            .pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(backend)?;
        let checkpointer = Connection::open(path).map_err(backend)?;
        configure(&checkpointer)?;

        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let (nudge, nudged) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn({
                let mut wal = path.as_os_str().to_owned();
                wal.push("-wal");
                let restart_at = RestartAt {
                    frames: wal_restart_frames,
                    flush_first: flush_before_restart,
                };
                move || checkpoint_loop(checkpointer, Path::new(&wal), nudged, restart_at)
            })
            .map_err(|e| StoreError::Backend(format!("start checkpoint thread: {e}")))?;
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx, nudge))
            .map_err(|e| StoreError::Backend(format!("start writer thread: {e}")))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: tx,
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        })
    }

    /// The database file this store was opened on.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// [`Store::mint_token`] with the candidate tokens given: tries each of the first
    /// [`tokens::MINT_ATTEMPTS`] candidates in turn and returns the first one that was free (or
    /// held only an expired token). [`Store::mint_token`] passes
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
        let json = to_json(payload)?;
        self.mint_row(
            payload.caller_number.clone(),
            json,
            (ttl, now),
            candidates,
            tokens::is_token,
        )
        .await
    }

    /// The conditional insert shared by handover and stream tokens: a row `(token,
    /// caller_number, minted_at, expires_at, payload)` under the first of the first
    /// [`tokens::MINT_ATTEMPTS`] candidates that is free or holds only an expired token.
    async fn mint_row(
        &self,
        caller: Option<String>,
        json: String,
        (ttl, now): (chrono::Duration, DateTime<Utc>),
        candidates: impl IntoIterator<Item = String>,
        shape: fn(&str) -> bool,
    ) -> Result<String, StoreError> {
        let expires_at = ms(tokens::expiry(now, ttl)?);
        let candidates: Vec<String> = candidates.into_iter().take(tokens::MINT_ATTEMPTS).collect();
        if let Some(bad) = candidates.iter().find(|t| !shape(t)) {
            return Err(StoreError::Invalid(format!("not a token: {bad:?}")));
        }
        let now = ms(now);
        self.write(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "INSERT INTO handover_tokens
                        (token, caller_number, minted_at, expires_at, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (token) DO UPDATE
                        SET caller_number = excluded.caller_number,
                            minted_at = excluded.minted_at,
                            expires_at = excluded.expires_at,
                            payload = excluded.payload
                        WHERE handover_tokens.expires_at <= excluded.minted_at",
                )
                .map_err(backend)?;
            let tried = candidates.len();
            for token in candidates {
                let changed = stmt
                    .execute(params![token, caller, now, expires_at, json])
                    .map_err(backend)?;
                if changed == 1 {
                    return Ok(token);
                }
            }
            Err(StoreError::Backend(format!(
                "no free token after {tried} attempts"
            )))
        })
        .await
    }

    /// The conditional delete shared by handover and stream tokens: removes the live row of
    /// `token` and returns its payload JSON (`None`: unknown, redeemed or expired).
    async fn redeem_row(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let token = token.to_string();
        let now = ms(now);
        self.write(move |conn| {
            // One statement: the check and the delete cannot be separated, and the writer
            // mutex serialises redemptions anyway.
            conn.prepare_cached(
                "DELETE FROM handover_tokens WHERE token = ?1 AND expires_at > ?2
                 RETURNING payload",
            )
            .and_then(|mut s| {
                let mut rows = s.query(params![token, now])?;
                rows.next()?.map(|r| r.get(0)).transpose()
            })
            .map_err(backend)
        })
        .await
    }

    /// Queues `f` for the writer thread and waits until its batch is committed.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, StoreError>>();
        let job: Job = Box::new(move |conn| {
            let _ = run_cached(conn, "SAVEPOINT job");
            let result = f(conn);
            if result.is_err() {
                let _ = run_cached(conn, "ROLLBACK TO job");
            }
            let _ = run_cached(conn, "RELEASE job");
            Box::new(move |commit_error: Option<StoreError>| {
                let _ = tx.send(match (result, commit_error) {
                    (Ok(_), Some(e)) => Err(e),
                    (r, _) => r,
                });
            })
        });
        self.inner
            .writer
            .send(job)
            .map_err(|_| StoreError::Backend("store writer thread stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("store writer thread stopped".into()))?
    }

    /// Runs `f` on a reader connection on the blocking pool: the first idle one, else the next
    /// in turn.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let idle = inner.readers.iter().find_map(|m| m.try_lock().ok());
            let conn = match idle {
                Some(conn) => conn,
                None => {
                    let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
                    lock(&inner.readers[i])
                }
            };
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task: {e}")))?
    }
}

/// The writer thread: group-commits queued jobs until every [`SqliteStore`] clone is dropped,
/// nudging the checkpoint thread after each commit.
fn writer_loop(
    mut conn: Connection,
    rx: std::sync::mpsc::Receiver<Job>,
    nudge: std::sync::mpsc::SyncSender<()>,
) {
    while let Ok(first) = rx.recv() {
        let began = run_cached(&conn, "BEGIN IMMEDIATE");
        // SQLite may roll the whole transaction back on SQLITE_FULL, SQLITE_IOERR, SQLITE_BUSY
        // or SQLITE_NOMEM (<https://www.sqlite.org/lang_transaction.html>, "Response To Errors
        // Within A Transaction"): then every job of the batch so far is lost, and the batch
        // must fail as a whole (and take no more jobs) instead of answering them committed.
        let rolled_back = |conn: &Connection| began.is_ok() && conn.is_autocommit();
        let mut replies = Vec::with_capacity(16);
        replies.push(first(&mut conn));
        while replies.len() < GROUP_COMMIT_MAX && !rolled_back(&conn) {
            match rx.try_recv() {
                Ok(job) => replies.push(job(&mut conn)),
                Err(_) => break,
            }
        }
        let lost = rolled_back(&conn);
        let error = if lost {
            Some(StoreError::Backend(
                "the write batch was rolled back by SQLite after an error (database or disk full?)"
                    .into(),
            ))
        } else {
            let outcome = began.and_then(|()| run_cached(&conn, "COMMIT"));
            outcome.err().map(|e| {
                let _ = run_cached(&conn, "ROLLBACK");
                backend(e)
            })
        };
        for reply in replies {
            reply(error.clone());
        }
        if error.is_none() {
            // Full means a nudge is already pending; the checkpoint thread will see this commit.
            let _ = nudge.try_send(());
        }
    }
}

/// The checkpoint thread (see the module docs): after commits, a passive checkpoint at most
/// every [`CHECKPOINT_SPACING`], and a WAL rewind ([`restart`]) when the WAL reached
/// `restart_at.frames` ([`WAL_RESTART_FRAMES`]). Ends when the writer thread does.
fn checkpoint_loop(
    conn: Connection,
    wal: &Path,
    nudged: std::sync::mpsc::Receiver<()>,
    restart_at: RestartAt,
) {
    while nudged.recv().is_ok() {
        match checkpoint(&conn, "PASSIVE") {
            Ok((_, log, _)) if log >= restart_at.frames => {
                restart(&conn, restart_at.flush_first.then_some(wal))
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "SQLite checkpoint failed"),
        }
        std::thread::sleep(CHECKPOINT_SPACING);
    }
}

/// When the checkpoint thread rewinds the WAL ([`checkpoint_loop`]).
#[derive(Debug, Clone, Copy)]
struct RestartAt {
    /// WAL size, in frames, that triggers a rewind ([`WAL_RESTART_FRAMES`]).
    frames: i64,
    /// Whether [`flush_to_disk`] runs before each rewind (always, except in a test that needs
    /// rewinds to keep pace with a burst of writes whatever the disk's speed).
    flush_first: bool,
}

/// Rewinds the WAL with a `RESTART` checkpoint, which holds the write lock while it copies the
/// frames not yet copied and `fsync`s the WAL and the database file. With `flush` (the WAL's
/// path) those `fsync`s are made cheap first, without the lock: [`flush_to_disk`], then a
/// passive pass for the frames committed meanwhile. The writer then waits 1-2 ms for a restart
/// instead of 3-8 ms at 1 000 calls/s (`docs/performance.md`); the WAL grows meanwhile by what
/// is committed during the flush.
fn restart(conn: &Connection, flush: Option<&Path>) {
    if let Some(wal) = flush {
        if let Err(e) = flush_to_disk(conn, wal) {
            tracing::debug!(error = %e, "flushing the SQLite files before a WAL restart failed");
        }
        // The frames committed during the flush, copied without the lock too.
        if let Err(e) = checkpoint(conn, "PASSIVE") {
            tracing::warn!(error = %e, "SQLite checkpoint failed");
        }
    }
    if let Err(e) = checkpoint(conn, "RESTART") {
        tracing::warn!(error = %e, "SQLite WAL restart checkpoint failed");
    }
}

/// Writes the dirty pages of the WAL file and of the database file to disk: `fsync` of the WAL
/// through a descriptor of our own (SQLite holds no locks on it), and of the database file
/// through the checkpoint connection's own handle (`SQLITE_FCNTL_FILE_POINTER`, then the VFS's
/// `xSync`; <https://www.sqlite.org/c3ref/c_fcntl_begin_atomic_write.html>). The database file
/// is never opened here: closing any descriptor of it would drop the POSIX locks SQLite's
/// connections in this process hold on it (<https://www.sqlite.org/howtocorrupt.html>, 2.2).
fn flush_to_disk(conn: &Connection, wal: &Path) -> std::io::Result<()> {
    std::fs::File::open(wal)?.sync_data()?;
    let rc = sync_database_file(conn);
    if rc == rusqlite::ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "sync of the database file: SQLite error {rc}"
        )))
    }
}

/// `xSync(SQLITE_SYNC_NORMAL)` on the main database file of `conn`, through SQLite's public VFS
/// interface (`sqlite3_file_control` + `sqlite3_io_methods`). Returns an SQLite result code.
fn sync_database_file(conn: &Connection) -> std::os::raw::c_int {
    use rusqlite::ffi;
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `conn` is a live connection used only on this thread; SQLITE_FCNTL_FILE_POINTER
    // writes one `sqlite3_file*` (owned by SQLite, valid while the connection is open) into
    // `file`; we call that file's own `xSync` and keep no pointer past this function.
    unsafe {
        let rc = ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast(),
        );
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        if file.is_null() || (*file).pMethods.is_null() {
            return ffi::SQLITE_OK; // not opened yet: nothing written through it
        }
        match (*(*file).pMethods).xSync {
            Some(x_sync) => x_sync(file, ffi::SQLITE_SYNC_NORMAL),
            None => ffi::SQLITE_OK,
        }
    }
}

/// `PRAGMA wal_checkpoint(mode)`: (busy, frames in the WAL, frames checkpointed).
fn checkpoint(conn: &Connection, mode: &str) -> Result<(i64, i64, i64), StoreError> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .map_err(backend)
}

/// Runs one parameterless statement through the connection's statement cache (the writer runs
/// `SAVEPOINT`/`RELEASE`/`BEGIN`/`COMMIT` thousands of times a second; parsing them each time
/// showed in profiles).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Locks `m`, recovering from poisoning: a panic mid-operation leaves no open transaction
/// (rusqlite rolls back on drop), so the connection stays usable.
fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The busy handler of every connection (`sqlite3_busy_handler`,
/// <https://www.sqlite.org/c3ref/busy_handler.html>): called with the number of retries so far
/// when a lock is held elsewhere; returns whether to retry, after pausing [`busy_pause`].
/// SQLite's own `busy_timeout` handler sleeps 1, 2, 5, 10 ... ms, so a writer that found the
/// lock taken by a `RESTART` checkpoint lasting 0.5 ms slept 3 or 8 ms, and every write queued
/// behind it waited as long (`docs/performance.md`).
fn busy_wait(retries: i32) -> bool {
    match busy_pause(retries) {
        Some(pause) => {
            std::thread::sleep(pause);
            true
        }
        None => false,
    }
}

/// The pause before retry number `retries` (from 0) of a busy lock: [`BUSY_FINE_PAUSE`] for the
/// first [`BUSY_FINE_TRIES`], then 1 ms; `None` (give up with `SQLITE_BUSY`) once the pauses
/// add up to [`BUSY_TIMEOUT`].
fn busy_pause(retries: i32) -> Option<Duration> {
    let fine = BUSY_FINE_PAUSE * BUSY_FINE_TRIES as u32;
    let coarse_tries = BUSY_TIMEOUT.saturating_sub(fine).as_millis() as i32;
    if retries < 0 {
        None
    } else if retries < BUSY_FINE_TRIES {
        Some(BUSY_FINE_PAUSE)
    } else if retries < BUSY_FINE_TRIES + coarse_tries {
        Some(Duration::from_millis(1))
    } else {
        None
    }
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_handler(Some(busy_wait)).map_err(backend)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(backend)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(backend)?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is newer than this build's {SCHEMA_VERSION}"
        )));
    }
    if version < 0 {
        return Err(StoreError::Corrupt(format!(
            "database schema version {version}"
        )));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Backend(format!("migration {from} -> {}: {e}", from + 1)))?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(backend)?;
    tx.commit().map_err(backend)
}

/// Maps a rusqlite error: value-conversion failures are [`StoreError::Corrupt`], everything
/// else [`StoreError::Backend`].
fn backend(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt(e.to_string()),
        other => StoreError::Backend(other.to_string()),
    }
}

/// Integer Unix milliseconds (floored).
fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64, what: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(v)
        .ok_or_else(|| StoreError::Corrupt(format!("{what}: timestamp {v} ms out of range")))
}

fn parse_state(s: &str) -> Result<CallState, StoreError> {
    CallState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown call state {s:?}")))
}

/// Every [`CallState`] ([`CallState::ALL`]; `as_str` is an exhaustive match, so a new state
/// must be named there too).
const ALL_STATES: [CallState; 10] = CallState::ALL;

/// `'a', 'b', ...`: the stored names of the states matching `pred`, as SQL literals (state
/// names are fixed snake_case identifiers, so inlining them is safe).
fn state_list(pred: impl Fn(CallState) -> bool) -> String {
    ALL_STATES
        .iter()
        .filter(|s| pred(**s))
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encode json: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// The column values of a [`CallRecord`], in [`CALL_COLUMNS`] order, owned so they can move to
/// the blocking pool.
struct CallRow {
    call_id: String,
    api: &'static str,
    state: &'static str,
    profile: String,
    caller: Option<String>,
    dialed: Option<String>,
    sip_call_id: Option<String>,
    webhook_id: String,
    created_at: i64,
    accepted_at: Option<i64>,
    ended_at: Option<i64>,
    end_reason: Option<String>,
    escalation: Option<String>,
    usage: String,
    after_call: Option<String>,
    media: Option<String>,
    twilio_call_sid: Option<String>,
}

impl CallRow {
    fn encode(r: &CallRecord) -> Result<Self, StoreError> {
        Ok(Self {
            call_id: r.call_id.clone(),
            api: api_name(r.api),
            state: r.state.as_str(),
            profile: r.profile.clone(),
            caller: r.caller.clone(),
            dialed: r.dialed.clone(),
            sip_call_id: r.sip_call_id.clone(),
            webhook_id: r.webhook_id.clone(),
            created_at: ms(r.created_at),
            accepted_at: r.accepted_at.map(ms),
            ended_at: r.ended_at.map(ms),
            end_reason: r.end_reason.clone(),
            escalation: r.escalation.as_ref().map(to_json).transpose()?,
            usage: to_json(&r.usage)?,
            after_call: (r.after_call != AfterCall::default())
                .then(|| to_json(&r.after_call))
                .transpose()?,
            media: r.media.as_ref().map(to_json).transpose()?,
            twilio_call_sid: r.twilio_call_sid.clone(),
        })
    }
}

fn decode_call(row: &Row<'_>) -> Result<CallRecord, StoreError> {
    let call_id: String = row.get(0).map_err(backend)?;
    let api: String = row.get(1).map_err(backend)?;
    let state: String = row.get(2).map_err(backend)?;
    let escalation: Option<String> = row.get(12).map_err(backend)?;
    let usage: String = row.get(13).map_err(backend)?;
    let after_call: Option<String> = row.get(14).map_err(backend)?;
    let media: Option<String> = row.get(15).map_err(backend)?;
    let created_at: i64 = row.get(8).map_err(backend)?;
    let accepted_at: Option<i64> = row.get(9).map_err(backend)?;
    let ended_at: Option<i64> = row.get(10).map_err(backend)?;
    Ok(CallRecord {
        api: parse_api(&api)?,
        state: parse_state(&state)?,
        profile: row.get(3).map_err(backend)?,
        caller: row.get(4).map_err(backend)?,
        dialed: row.get(5).map_err(backend)?,
        sip_call_id: row.get(6).map_err(backend)?,
        webhook_id: row.get(7).map_err(backend)?,
        created_at: from_ms(created_at, "created_at")?,
        accepted_at: accepted_at.map(|v| from_ms(v, "accepted_at")).transpose()?,
        ended_at: ended_at.map(|v| from_ms(v, "ended_at")).transpose()?,
        end_reason: row.get(11).map_err(backend)?,
        escalation: escalation
            .map(|s| from_json::<EscalationSummary>(&s, "escalation"))
            .transpose()?,
        usage: from_json::<Usage>(&usage, "usage")?,
        after_call: after_call
            .map(|s| from_json::<AfterCall>(&s, "after_call"))
            .transpose()?
            .unwrap_or_default(),
        media: media
            .map(|s| from_json::<MediaInfo>(&s, "media"))
            .transpose()?,
        twilio_call_sid: row.get(16).map_err(backend)?,
        call_id,
    })
}

/// Runs `sql` (selecting [`CALL_COLUMNS`]) and decodes every row.
fn query_calls(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<CallRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let mut rows = stmt.query(params).map_err(backend)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        out.push(decode_call(row)?);
    }
    Ok(out)
}

fn get_call_on(conn: &Connection, call_id: &str) -> Result<Option<CallRecord>, StoreError> {
    let sql = format!("SELECT {CALL_COLUMNS} FROM calls WHERE call_id = ?1");
    Ok(query_calls(conn, &sql, [call_id])?.into_iter().next())
}

/// Transcript lines of `call_id` with row id > `after`, in append order, at most `limit`
/// (`-1`: all), each with its row id.
fn transcript_rows(
    conn: &Connection,
    call_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<(u64, TranscriptLine)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, speaker, text, at, item_id FROM transcript_lines
             WHERE call_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )
        .map_err(backend)?;
    let mut rows = stmt
        .query(params![call_id, after, limit])
        .map_err(backend)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        let pos: i64 = row.get(0).map_err(backend)?;
        let speaker: String = row.get(1).map_err(backend)?;
        let at: i64 = row.get(3).map_err(backend)?;
        out.push((
            pos.unsigned_abs(),
            TranscriptLine {
                call_id: call_id.to_string(),
                speaker: parse_speaker(&speaker)?,
                text: row.get(2).map_err(backend)?,
                at: from_ms(at, "transcript at")?,
                item_id: row.get(4).map_err(backend)?,
            },
        ));
    }
    Ok(out)
}

/// Events of `call_id` with row id > `after`, in append order, at most `limit` (`-1`: all),
/// each with its row id.
fn event_rows(
    conn: &Connection,
    call_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<(u64, CallEvent)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, at, kind, detail FROM call_events
             WHERE call_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )
        .map_err(backend)?;
    let mut rows = stmt
        .query(params![call_id, after, limit])
        .map_err(backend)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        let pos: i64 = row.get(0).map_err(backend)?;
        let at: i64 = row.get(1).map_err(backend)?;
        let detail: String = row.get(3).map_err(backend)?;
        out.push((
            pos.unsigned_abs(),
            CallEvent {
                call_id: call_id.to_string(),
                at: from_ms(at, "event at")?,
                kind: row.get(2).map_err(backend)?,
                detail: from_json(&detail, "event detail")?,
            },
        ));
    }
    Ok(out)
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            let one: i64 = conn
                .query_row("SELECT 1", [], |r| r.get(0))
                .map_err(backend)?;
            if one == 1 {
                Ok(())
            } else {
                Err(StoreError::Backend(format!("SELECT 1 returned {one}")))
            }
        })
        .await
    }

    async fn claim_webhook(
        &self,
        webhook_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let id = webhook_id.to_string();
        let (now, expires_at) = (ms(now), ms(expires_at));
        self.write(move |conn| {
            // Inserts a new entry, or takes over one that has expired by `now`; a live entry
            // makes the statement change nothing.
            let changed = conn
                .prepare_cached(
                    "INSERT INTO webhooks (webhook_id, received_at, expires_at)
                     VALUES (?1, ?2, ?3)
                     ON CONFLICT (webhook_id) DO UPDATE
                        SET received_at = excluded.received_at,
                            expires_at = excluded.expires_at
                        WHERE webhooks.expires_at <= excluded.received_at",
                )
                .and_then(|mut s| s.execute(params![id, now, expires_at]))
                .map_err(backend)?;
            Ok(changed == 1)
        })
        .await
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
        let id = webhook_id.to_string();
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM webhooks WHERE webhook_id = ?1")
                .and_then(|mut s| s.execute([id]))
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn create_call(&self, record: &CallRecord) -> Result<CreateOutcome, StoreError> {
        let row = CallRow::encode(record)?;
        self.write(move |conn| {
            let sql = format!(
                "INSERT INTO calls ({CALL_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
                 ON CONFLICT (call_id) DO NOTHING"
            );
            let inserted = conn
                .prepare_cached(&sql)
                .and_then(|mut s| {
                    s.execute(params![
                        row.call_id,
                        row.api,
                        row.state,
                        row.profile,
                        row.caller,
                        row.dialed,
                        row.sip_call_id,
                        row.webhook_id,
                        row.created_at,
                        row.accepted_at,
                        row.ended_at,
                        row.end_reason,
                        row.escalation,
                        row.usage,
                        row.after_call,
                        row.media,
                        row.twilio_call_sid,
                    ])
                })
                .map_err(backend)?;
            if inserted == 1 {
                return Ok(CreateOutcome::Created);
            }
            // Still holding the writer: no one can delete the row between the two statements.
            match get_call_on(conn, &row.call_id)? {
                Some(existing) => Ok(CreateOutcome::Exists(Box::new(existing))),
                None => Err(StoreError::Backend(format!(
                    "insert of call {} ignored but no row found",
                    row.call_id
                ))),
            }
        })
        .await
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
        let id = call_id.to_string();
        let from: Vec<&'static str> = from.iter().map(|s| s.as_str()).collect();
        self.write(move |conn| {
            let placeholders = (0..from.len())
                .map(|i| format!("?{}", i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "UPDATE calls SET state = ?1 WHERE call_id = ?2 AND state IN ({placeholders})"
            );
            let to_name = to.as_str();
            let mut values: Vec<&dyn rusqlite::ToSql> = vec![&to_name, &id];
            values.extend(from.iter().map(|s| s as &dyn rusqlite::ToSql));
            let changed = conn
                .prepare_cached(&sql)
                .and_then(|mut s| s.execute(values.as_slice()))
                .map_err(backend)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn update_call(&self, record: &CallRecord) -> Result<(), StoreError> {
        let row = CallRow::encode(record)?;
        self.write(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE calls SET api = ?2, state = ?3, profile = ?4, caller = ?5,
                        dialed = ?6, sip_call_id = ?7, webhook_id = ?8, created_at = ?9,
                        accepted_at = ?10, ended_at = ?11, end_reason = ?12, escalation = ?13,
                        usage = ?14, after_call = ?15, media = ?16,
                        twilio_call_sid = ?17
                     WHERE call_id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        row.call_id,
                        row.api,
                        row.state,
                        row.profile,
                        row.caller,
                        row.dialed,
                        row.sip_call_id,
                        row.webhook_id,
                        row.created_at,
                        row.accepted_at,
                        row.ended_at,
                        row.end_reason,
                        row.escalation,
                        row.usage,
                        row.after_call,
                        row.media,
                        row.twilio_call_sid,
                    ])
                })
                .map_err(backend)?;
            if changed == 0 {
                Err(StoreError::NoSuchCall(row.call_id))
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn get_call(&self, call_id: &str) -> Result<Option<CallRecord>, StoreError> {
        let id = call_id.to_string();
        self.read(move |conn| get_call_on(conn, &id)).await
    }

    async fn list_calls(&self, query: &CallQuery) -> Result<Vec<CallRecord>, StoreError> {
        let state = query.state.map(CallState::as_str);
        let before = query.before.map(ms);
        let limit = query.limit.min(LIST_LIMIT_CAP) as i64;
        self.read(move |conn| {
            // One statement per filter combination, so each can use its index.
            let order = "ORDER BY created_at DESC, call_id DESC LIMIT ?1";
            match (state, before) {
                (None, None) => query_calls(
                    conn,
                    &format!("SELECT {CALL_COLUMNS} FROM calls {order}"),
                    params![limit],
                ),
                (Some(state), None) => query_calls(
                    conn,
                    &format!("SELECT {CALL_COLUMNS} FROM calls WHERE state = ?2 {order}"),
                    params![limit, state],
                ),
                (None, Some(before)) => query_calls(
                    conn,
                    &format!("SELECT {CALL_COLUMNS} FROM calls WHERE created_at < ?2 {order}"),
                    params![limit, before],
                ),
                (Some(state), Some(before)) => query_calls(
                    conn,
                    &format!(
                        "SELECT {CALL_COLUMNS} FROM calls \
                         WHERE state = ?2 AND created_at < ?3 {order}"
                    ),
                    params![limit, state, before],
                ),
            }
        })
        .await
    }

    async fn live_calls(&self) -> Result<Vec<CallRecord>, StoreError> {
        self.read(|conn| {
            let sql = format!(
                "SELECT {CALL_COLUMNS} FROM calls WHERE state IN ({})
                 ORDER BY created_at ASC, call_id ASC",
                state_list(CallState::is_live)
            );
            query_calls(conn, &sql, [])
        })
        .await
    }

    async fn append_transcript(&self, line: &TranscriptLine) -> Result<(), StoreError> {
        let call_id = line.call_id.clone();
        let speaker = line.speaker.as_str();
        let text = line.text.clone();
        let at = ms(line.at);
        let item_id = line.item_id.clone();
        self.write(move |conn| {
            // DO NOTHING only on the replay index (the one uniqueness constraint); other
            // constraint failures still surface.
            conn.prepare_cached(
                "INSERT INTO transcript_lines (call_id, speaker, text, at, item_id)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![call_id, speaker, text, at, item_id]))
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn transcript(&self, call_id: &str) -> Result<Vec<TranscriptLine>, StoreError> {
        let id = call_id.to_string();
        let rows = self
            .read(move |conn| transcript_rows(conn, &id, 0, -1))
            .await?;
        Ok(rows.into_iter().map(|(_, line)| line).collect())
    }

    async fn transcript_page(
        &self,
        call_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<TranscriptLine>, StoreError> {
        let id = call_id.to_string();
        let limit = page_limit(limit);
        let after = page_position(after);
        let rows = self
            .read(move |conn| transcript_rows(conn, &id, after, limit as i64 + 1))
            .await?;
        Ok(page_of(rows, limit, false))
    }

    async fn append_event(&self, event: &CallEvent) -> Result<(), StoreError> {
        let call_id = event.call_id.clone();
        let at = ms(event.at);
        let kind = event.kind.clone();
        let detail = to_json(&event.detail)?;
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO call_events (call_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![call_id, at, kind, detail]))
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn events(&self, call_id: &str) -> Result<Vec<CallEvent>, StoreError> {
        let id = call_id.to_string();
        let rows = self.read(move |conn| event_rows(conn, &id, 0, -1)).await?;
        Ok(rows.into_iter().map(|(_, event)| event).collect())
    }

    async fn events_page(
        &self,
        call_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<CallEvent>, StoreError> {
        let id = call_id.to_string();
        let limit = page_limit(limit);
        let after = page_position(after);
        let rows = self
            .read(move |conn| event_rows(conn, &id, after, limit as i64 + 1))
            .await?;
        Ok(page_of(rows, limit, false))
    }

    async fn purge(
        &self,
        now: DateTime<Utc>,
        calls_before: DateTime<Utc>,
    ) -> Result<PurgeStats, StoreError> {
        let (now, before) = (ms(now), ms(calls_before));
        self.write(move |conn| {
            let finals = state_list(CallState::is_final);
            let doomed =
                format!("SELECT call_id FROM calls WHERE state IN ({finals}) AND created_at < ?1");
            let tx = conn.savepoint().map_err(backend)?;
            let webhooks = tx
                .execute("DELETE FROM webhooks WHERE expires_at <= ?1", [now])
                .map_err(backend)?;
            tx.execute("DELETE FROM handover_tokens WHERE expires_at <= ?1", [now])
                .map_err(backend)?;
            let live = state_list(CallState::is_live);
            tx.execute(
                &format!(
                    "DELETE FROM call_leases WHERE expires_at <= ?1 AND call_id NOT IN
                        (SELECT call_id FROM calls WHERE state IN ({live}))"
                ),
                [now],
            )
            .map_err(backend)?;
            tx.execute(
                &format!("DELETE FROM transcript_lines WHERE call_id IN ({doomed})"),
                [before],
            )
            .map_err(backend)?;
            tx.execute(
                &format!("DELETE FROM call_events WHERE call_id IN ({doomed})"),
                [before],
            )
            .map_err(backend)?;
            let calls = tx
                .execute(
                    &format!("DELETE FROM calls WHERE state IN ({finals}) AND created_at < ?1"),
                    [before],
                )
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(PurgeStats {
                webhooks: webhooks as u64,
                calls: calls as u64,
            })
        })
        .await
    }

    async fn acquire_lease(
        &self,
        call_id: &str,
        owner: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let expires = ms(now) + lease_ttl_ms(ttl)?;
        let (id, owner, now) = (call_id.to_string(), owner.to_string(), ms(now));
        self.write(move |conn| {
            let changed = conn
                .prepare_cached(
                    "INSERT INTO call_leases (call_id, owner, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (call_id) DO UPDATE
                        SET owner = excluded.owner, expires_at = excluded.expires_at
                        WHERE call_leases.owner = excluded.owner
                           OR call_leases.expires_at <= ?4",
                )
                .and_then(|mut s| s.execute(params![id, owner, expires, now]))
                .map_err(backend)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn renew_lease(
        &self,
        call_id: &str,
        owner: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // One statement for one lease or a batch: see `renew_leases`.
        self.renew_leases(&[call_id.to_string()], owner, ttl, now)
            .await
            .pop()
            .expect("one answer per lease")
    }

    async fn renew_leases(
        &self,
        call_ids: &[String],
        owner: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Vec<Result<bool, StoreError>> {
        let expires = match lease_ttl_ms(ttl) {
            Ok(t) => ms(now) + t,
            Err(e) => return call_ids.iter().map(|_| Err(e.clone())).collect(),
        };
        // One transaction for the batch: the keeper sends at most
        // `crate::calls::lease::RENEW_BATCH` leases per call, so it stays well under a
        // millisecond of writer time.
        let (ids, owner, now) = (call_ids.to_vec(), owner.to_string(), ms(now));
        let n = ids.len();
        let done = self
            .write(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "UPDATE call_leases SET expires_at = ?3
                         WHERE call_id = ?1 AND owner = ?2 AND expires_at > ?4",
                    )
                    .map_err(backend)?;
                ids.iter()
                    .map(|id| {
                        stmt.execute(params![id, owner, expires, now])
                            .map(|changed| changed == 1)
                            .map_err(backend)
                    })
                    .collect::<Result<Vec<bool>, StoreError>>()
            })
            .await;
        match done {
            Ok(renewed) => renewed.into_iter().map(Ok).collect(),
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    async fn takeover_candidates(
        &self,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
        reclaim_owner: Option<&str>,
    ) -> Result<Vec<TakeoverCandidate>, StoreError> {
        let (now, ttl) = (ms(now), ttl.num_milliseconds());
        let owner = reclaim_owner.map(str::to_string);
        self.read(move |conn| {
            // `free_to_take` in SQL: live calls (state index) joined with their lease (primary
            // key); only the matches are decoded, and no call record at all.
            let sql = format!(
                "SELECT c.call_id, l.owner, l.expires_at
                 FROM calls c LEFT JOIN call_leases l ON l.call_id = c.call_id
                 WHERE c.state IN ({})
                   AND ((l.call_id IS NULL AND COALESCE(c.accepted_at, c.created_at) + ?2 <= ?1)
                        OR l.expires_at <= ?1
                        OR l.owner = ?3)
                 ORDER BY c.created_at ASC, c.call_id ASC",
                state_list(CallState::is_live)
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = stmt
                .query_map(params![now, ttl, owner], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (call_id, owner, expires) = row.map_err(backend)?;
                let lease = match (owner, expires) {
                    (Some(owner), Some(expires)) => Some(Lease {
                        call_id: call_id.clone(),
                        owner,
                        expires_at: from_ms(expires, "lease expires_at")?,
                    }),
                    _ => None,
                };
                out.push(TakeoverCandidate { call_id, lease });
            }
            Ok(out)
        })
        .await
    }

    async fn release_lease(&self, call_id: &str, owner: &str) -> Result<bool, StoreError> {
        let (id, owner) = (call_id.to_string(), owner.to_string());
        self.write(move |conn| {
            let changed = conn
                .prepare_cached("DELETE FROM call_leases WHERE call_id = ?1 AND owner = ?2")
                .and_then(|mut s| s.execute(params![id, owner]))
                .map_err(backend)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT call_id, owner, expires_at FROM call_leases")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (call_id, owner, expires) = row.map_err(backend)?;
                out.push(Lease {
                    call_id,
                    owner,
                    expires_at: from_ms(expires, "lease expires_at")?,
                });
            }
            Ok(out)
        })
        .await
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
        self.redeem_row(token, now)
            .await?
            .map(|p| from_json(&p, "handover payload"))
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
        let token = token.to_string();
        let now = ms(now);
        self.read(move |conn| {
            let payload: Option<String> = conn
                .prepare_cached(
                    "SELECT payload FROM handover_tokens WHERE token = ?1 AND expires_at > ?2",
                )
                .and_then(|mut s| {
                    let mut rows = s.query(params![token, now])?;
                    rows.next()?.map(|r| r.get(0)).transpose()
                })
                .map_err(backend)?;
            payload
                .map(|p| from_json(&p, "handover payload"))
                .transpose()
        })
        .await
    }

    async fn latest_handover_for_caller(
        &self,
        caller_number: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, HandoverPayload)>, StoreError> {
        let caller = caller_number.to_string();
        let now = ms(now);
        self.read(move |conn| {
            let found: Option<(String, String)> = conn
                .prepare_cached(
                    "SELECT token, payload FROM handover_tokens
                     WHERE caller_number = ?1 AND expires_at > ?2
                     ORDER BY minted_at DESC, rowid DESC LIMIT 1",
                )
                .and_then(|mut s| {
                    let mut rows = s.query(params![caller, now])?;
                    rows.next()?.map(|r| Ok((r.get(0)?, r.get(1)?))).transpose()
                })
                .map_err(backend)?;
            found
                .map(|(token, p)| Ok((token, from_json(&p, "handover payload")?)))
                .transpose()
        })
        .await
    }

    async fn mint_stream_token(
        &self,
        grant: &StreamGrant,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        let json = to_json(grant)?;
        self.mint_row(
            None,
            json,
            (ttl, now),
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
        self.redeem_row(token, now)
            .await?
            .map(|p| from_json(&p, "stream grant"))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: usize) -> TranscriptLine {
        TranscriptLine {
            call_id: format!("rtc_{}", i % 97),
            speaker: crate::calls::record::Speaker::Caller,
            text: format!("line {i} {}", "x".repeat(200)),
            at: Utc::now(),
            item_id: None,
        }
    }

    /// The writer never checkpoints (autocheckpoint off), so without the checkpoint thread's
    /// passes and restarts the WAL would hold every frame written: thousands of one-line
    /// commits reach tens of MiB. With a restart every 256 frames it stays a few MiB, and every
    /// line is still there. (The flush before each restart is off here: how long it takes
    /// depends on the disk, and the WAL grows meanwhile; `flush_to_disk` has its own test.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoint_thread_keeps_the_wal_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let store = SqliteStore::open_with(&path, 256, false).unwrap();
        let autockpt: i64 = store
            .write(|c| {
                c.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
                    .map_err(backend)
            })
            .await
            .unwrap();
        assert_eq!(autockpt, 0, "the writer must not checkpoint itself");
        let n = 6000;
        for i in 0..n {
            store.append_transcript(&line(i)).await.unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("wal.db-wal"))
            .unwrap()
            .len();
        assert!(
            wal < 16 << 20,
            "WAL grew to {wal} bytes: restarts are not happening"
        );
        let mut stored = 0;
        for c in 0..97 {
            stored += store.transcript(&format!("rtc_{c}")).await.unwrap().len();
        }
        assert_eq!(stored, n);
    }

    /// The flush before a WAL restart goes through SQLite's own handle of the database file:
    /// it succeeds on a connection in WAL mode with data written, and the connection (and its
    /// locks) stay usable afterwards.
    #[test]
    fn flush_to_disk_syncs_through_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flush.db");
        let store = SqliteStore::open(&path).unwrap();
        drop(store);
        let conn = Connection::open(&path).unwrap();
        configure(&conn).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        assert_eq!(sync_database_file(&conn), rusqlite::ffi::SQLITE_OK);
        flush_to_disk(&conn, Path::new(&wal)).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2); COMMIT;")
            .unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        assert!(flush_to_disk(&conn, &dir.path().join("missing-wal")).is_err());
    }

    /// Many leases renewed in one call (more than the keeper's batches): every answer belongs
    /// to its own lease, in order.
    #[tokio::test]
    async fn renew_leases_answers_in_order_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("leases.db")).unwrap();
        let t = Utc::now();
        let ttl = chrono::Duration::seconds(15);
        let n = crate::calls::lease::RENEW_BATCH * 2 + 7;
        let ids: Vec<String> = (0..n).map(|i| format!("rtc_lease_{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            // Every third lease belongs to another instance.
            let owner = if i % 3 == 0 { "b" } else { "a" };
            assert!(store.acquire_lease(id, owner, ttl, t).await.unwrap());
        }
        let answers: Vec<bool> = store
            .renew_leases(&ids, "a", ttl, t + chrono::Duration::seconds(10))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let expected: Vec<bool> = (0..n).map(|i| i % 3 != 0).collect();
        assert_eq!(answers, expected);
        let renewed = store
            .leases()
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.expires_at > t + ttl)
            .count();
        assert_eq!(renewed, expected.iter().filter(|&&r| r).count());
    }

    /// The busy handler's pauses: fine ones first, and they add up to [`BUSY_TIMEOUT`] before
    /// it gives up.
    #[test]
    fn busy_pauses_are_fine_first_and_add_up_to_the_timeout() {
        assert_eq!(busy_pause(0), Some(BUSY_FINE_PAUSE));
        assert_eq!(busy_pause(BUSY_FINE_TRIES - 1), Some(BUSY_FINE_PAUSE));
        assert_eq!(busy_pause(BUSY_FINE_TRIES), Some(Duration::from_millis(1)));
        let total: Duration = (0..).map_while(busy_pause).sum();
        assert_eq!(total, BUSY_TIMEOUT);
        assert_eq!(busy_pause(i32::MAX), None);
    }

    /// A write that finds the database locked by another connection (an operator's `sqlite3`
    /// shell, a checkpoint) waits for the lock instead of failing, and lands once it is free.
    #[tokio::test]
    async fn a_write_waits_for_a_lock_held_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let store = SqliteStore::open(&path).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let write = tokio::spawn({
            let store = store.clone();
            async move { store.append_transcript(&line(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!write.is_finished(), "the write went through a held lock");
        other.execute_batch("COMMIT").unwrap();
        write.await.unwrap().unwrap();
        assert_eq!(store.transcript("rtc_1").await.unwrap().len(), 1);
    }
}
