//! The forwarder: a task of the collector that ships its store to PostgreSQL.
//!
//! It follows the store's own files ([`store::Follower`], `checkpoints.jsonl`), never the
//! proxies' path: a record is acknowledged once it is on the local disk, and PostgreSQL
//! being slow or down never holds a cell up. Every record goes in sequence order with
//! its stored line byte for byte, its chain fields and the review columns; every signed
//! checkpoint goes in the same transaction as the records it covers, or after; and the
//! store's row in `stores` (its id, host and public key) goes first.
//!
//! At least once, idempotent: rows are keyed by (store_id, sequence) and inserted with
//! `ON CONFLICT DO NOTHING`. After any error, and at start, it asks PostgreSQL where it
//! stopped (the store's highest sequence there), checks that the row there has the local
//! hash, and goes on from the next record. A row with the same key and another hash, a
//! batch whose first record does not link to the row before it, or PostgreSQL holding
//! more than the store, is a fork: forwarding of the store stops, loudly, and the
//! collector records `forward_conflict`. Errors back off (0.2 s doubling to 10 s).
//!
//! How far it got goes to the store's `forwarding.json` (read by `status`) and, while
//! it lags, to the log.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::PostgresError;
use super::columns::RecordColumns;
use super::connect::PostgresTarget;
use crate::store::{self, Checkpoint, FollowedRecord, Follower, StoreHandle, StoredHead};

/// Records read and sent in one transaction, at most.
pub const BATCH_RECORDS: usize = 4096;
/// Bytes of stored lines in one transaction, about (a larger single record goes alone).
const BATCH_BYTES: usize = 8 << 20;
/// How often the files are looked at when the store's writer has said nothing (the
/// checkpoints file, and a missed wake-up).
const POLL: Duration = Duration::from_millis(200);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest wait for a connection to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one batch's transaction; then the connection is dropped and made
/// again (a lost commit is found out on resume).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the state file is rewritten while something changes.
const STATE_INTERVAL: Duration = Duration::from_secs(1);
/// How often a lag is logged.
const LAG_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Where and what to forward.
pub struct ForwardOptions {
    pub target: PostgresTarget,
    /// The host name that goes into `stores.host`.
    pub host: String,
}

/// A row in PostgreSQL that contradicts the local store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    /// `records`, `checkpoints` or `stores`.
    pub table: &'static str,
    /// The sequence of the row (0 for `stores`).
    pub sequence: u64,
    /// What the local store holds there (a hash, or the public key).
    pub local: String,
    /// What PostgreSQL holds there (empty when it holds nothing).
    pub remote: String,
    pub reason: String,
}

impl std::fmt::Display for Fork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (table {}, sequence {}: the store has {}, PostgreSQL has {})",
            self.reason,
            self.table,
            self.sequence,
            self.local,
            if self.remote.is_empty() {
                "nothing"
            } else {
                &self.remote
            }
        )
    }
}

/// Why a forwarding session ended.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error("reading the store: {0}")]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Local(String),
    #[error("fork: {0}")]
    Fork(Fork),
}

/// How the forwarder ended.
#[derive(Debug)]
pub enum Stopped {
    /// The store closed and everything in it was forwarded.
    Done,
    /// A fork: forwarding stopped for good (until the collector starts again).
    Fork(Fork),
}

/// How far forwarding got, as `forwarding.json` holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForwardingState {
    pub store_id: String,
    /// The server (its URL as given; it never holds a password).
    pub target: String,
    /// When this state was written (RFC 3339).
    pub updated: String,
    /// The last record on the local disk, as the forwarder last saw it.
    pub last_stored_sequence: u64,
    pub last_forwarded: Option<ForwardedRecord>,
    pub last_forwarded_checkpoint: Option<ForwardedCheckpoint>,
    pub last_error: Option<ForwardingError>,
    /// Set when forwarding stopped for good (a fork), with why.
    pub stopped: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForwardedRecord {
    pub sequence: u64,
    /// The record's `@timestamp`.
    pub time: Option<String>,
    /// When its transaction committed.
    pub forwarded_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForwardedCheckpoint {
    pub sequence: u64,
    /// The checkpoint's signed time.
    pub time: String,
    pub forwarded_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForwardingError {
    pub message: String,
    pub at: String,
}

fn now_text() -> String {
    crate::audit::now_rfc3339()
}

/// Longest review column, in bytes. The fields are the senders' (a notebook user can
/// send a session or message id of megabytes), and a btree index entry holds at most
/// 2704 bytes: a longer value would fail the batch's INSERT on every retry and stop
/// forwarding for good. The line keeps the whole value; the column is for filtering.
pub const COLUMN_MAX_BYTES: usize = 1024;

/// A text column's copy of a value: PostgreSQL text cannot hold NUL, and an index entry
/// cannot hold a long value (cut at a character boundary to [`COLUMN_MAX_BYTES`]).
fn column_text(text: Option<String>) -> Option<String> {
    text.map(|mut t| {
        if t.len() > COLUMN_MAX_BYTES {
            let mut end = COLUMN_MAX_BYTES;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t.truncate(end);
        }
        if t.contains('\0') {
            t.replace('\0', "\u{FFFD}")
        } else {
            t
        }
    })
}

fn parse_time(text: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// The rows of one batch of records, as arrays for `UNNEST`.
#[derive(Default)]
struct RecordRows {
    sequence: Vec<i64>,
    time: Vec<Option<SystemTime>>,
    action: Vec<String>,
    user_name: Vec<Option<String>>,
    user_id: Vec<Option<String>>,
    session_id: Vec<Option<String>>,
    kernel_id: Vec<Option<String>>,
    msg_id: Vec<Option<String>>,
    parent_msg_id: Vec<Option<String>>,
    line: Vec<String>,
    prev: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
    /// `@timestamp` of the last record.
    last_time: Option<String>,
}

fn to_i64(sequence: u64) -> Result<i64, Failure> {
    i64::try_from(sequence).map_err(|_| Failure::Local(format!("sequence {sequence} too large")))
}

impl RecordRows {
    /// The rows of `records`, which must continue the chain from `prev` (the hash of
    /// the record before the first). Returns the hash of the last.
    fn build(
        records: Vec<FollowedRecord>,
        mut prev: Option<[u8; 32]>,
    ) -> Result<(Self, [u8; 32]), Failure> {
        let mut rows = RecordRows::default();
        let mut last = [0u8; 32];
        for record in records {
            let sequence = record.sequence;
            let unsealed = store::record::unseal(&record.line)
                .map_err(|e| Failure::Local(format!("record {sequence}: {e}")))?;
            if let Some(expected) = prev
                && unsealed.prev != expected
            {
                return Err(Failure::Local(format!(
                    "record {sequence} does not link to the record before it in the store (run `jupyter-audit verify`)"
                )));
            }
            let columns = RecordColumns::of_line(&record.line)
                .map_err(|e| Failure::Local(format!("record {sequence}: {e}")))?;
            let line = String::from_utf8(record.line)
                .map_err(|_| Failure::Local(format!("record {sequence} is not UTF-8")))?;
            rows.sequence.push(to_i64(sequence)?);
            rows.time.push(columns.time.as_deref().and_then(parse_time));
            rows.last_time = columns.time;
            rows.action
                .push(column_text(Some(columns.action)).unwrap_or_default());
            rows.user_name.push(column_text(columns.user_name));
            rows.user_id.push(column_text(columns.user_id));
            rows.session_id.push(column_text(columns.session_id));
            rows.kernel_id.push(column_text(columns.kernel_id));
            rows.msg_id.push(column_text(columns.msg_id));
            rows.parent_msg_id.push(column_text(columns.parent_msg_id));
            rows.line.push(line);
            rows.prev.push(unsealed.prev.to_vec());
            rows.hash.push(unsealed.hash.to_vec());
            prev = Some(unsealed.hash);
            last = unsealed.hash;
        }
        Ok((rows, last))
    }
}

const INSERT_RECORDS: &str = "INSERT INTO jupyter_audit.records \
    (store_id, sequence, time, action, user_name, user_id, session_id, kernel_id, msg_id, \
     parent_msg_id, line, prev, hash) \
    SELECT $1, r.* FROM UNNEST($2::bigint[], $3::timestamptz[], $4::text[], $5::text[], \
     $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bytea[], \
     $13::bytea[]) AS r(sequence, time, action, user_name, user_id, session_id, kernel_id, \
     msg_id, parent_msg_id, line, prev, hash) \
    ON CONFLICT (store_id, sequence) DO NOTHING";

const INSERT_CHECKPOINTS: &str = "INSERT INTO jupyter_audit.checkpoints \
    (store_id, sequence, chain_hash, time, segment, key_id, signature) \
    SELECT $1, c.* FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
     $7::text[]) AS c(sequence, chain_hash, time, segment, key_id, signature) \
    ON CONFLICT (store_id, sequence) DO NOTHING";

const RECORD_HASHES: &str = "SELECT sequence, hash FROM jupyter_audit.records \
    WHERE store_id = $1 AND sequence = ANY($2::bigint[])";

const CHECKPOINT_HASHES: &str = "SELECT sequence, chain_hash FROM jupyter_audit.checkpoints \
    WHERE store_id = $1 AND sequence = ANY($2::bigint[])";

/// One connection's prepared statements.
struct Statements {
    insert_records: Statement,
    insert_checkpoints: Statement,
    record_hashes: Statement,
    checkpoint_hashes: Statement,
}

/// The forwarder of one store.
pub struct Forwarder {
    options: ForwardOptions,
    store: StoreHandle,
    store_id: Uuid,
    state: ForwardingState,
    state_dirty: bool,
    state_written: Instant,
    lag_logged: Instant,
    /// The store's writer has stopped: forward what is left, then end.
    closing: bool,
}

/// The position of one session in the store.
struct Cursor {
    follower: Follower,
    /// The hash of the record before `follower`'s next one (None before the first).
    prev: Option<[u8; 32]>,
    /// Where unread checkpoints start in `checkpoints.jsonl`.
    checkpoint_offset: u64,
    /// Checkpoints read but not yet forwarded (they wait for their records).
    checkpoints: Vec<Checkpoint>,
    /// The highest checkpoint sequence in PostgreSQL.
    checkpoint_forwarded: u64,
}

impl Forwarder {
    pub fn new(options: ForwardOptions, store: StoreHandle) -> Self {
        let store_id = store.store_id();
        let state = ForwardingState {
            store_id: store_id.to_string(),
            target: options.target.shown().to_owned(),
            ..ForwardingState::default()
        };
        Forwarder {
            options,
            store,
            store_id,
            state,
            state_dirty: true,
            // The first state is written at once.
            state_written: Instant::now()
                .checked_sub(STATE_INTERVAL)
                .unwrap_or_else(Instant::now),
            lag_logged: Instant::now(),
            closing: false,
        }
    }

    /// The server, for messages.
    pub fn target(&self) -> &str {
        self.options.target.shown()
    }

    /// Forwards until the store's writer stops and all it stored is in PostgreSQL, or
    /// until a fork. Errors are retried with back-off; the caller bounds how long it
    /// waits for the end after the store closed.
    pub async fn run(mut self) -> Stopped {
        let mut head = self.store.watch_head();
        let mut backoff = FIRST_BACKOFF;
        tracing::info!(target = self.options.target.shown(), store_id = %self.store_id, "forwarding to PostgreSQL");
        loop {
            let progress_before = self.state.last_forwarded.as_ref().map(|r| r.sequence);
            match self.session(&mut head).await {
                Ok(()) => {
                    self.write_state(true).await;
                    tracing::info!(store_id = %self.store_id, "forwarding done: everything stored is in PostgreSQL");
                    return Stopped::Done;
                }
                Err(Failure::Fork(fork)) => {
                    tracing::error!(
                        store_id = %self.store_id,
                        table = fork.table,
                        sequence = fork.sequence,
                        local = %fork.local,
                        remote = %fork.remote,
                        "FORWARDING STOPPED: PostgreSQL holds a different trail for this store (a fork): {}",
                        fork.reason
                    );
                    self.state.stopped = Some(format!("fork: {fork}"));
                    self.note_error(&format!("fork: {fork}"));
                    self.write_state(true).await;
                    return Stopped::Fork(fork);
                }
                Err(error) => {
                    let progress_after = self.state.last_forwarded.as_ref().map(|r| r.sequence);
                    if progress_after != progress_before {
                        backoff = FIRST_BACKOFF;
                    }
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "forwarding to PostgreSQL failed; retrying");
                    self.note_error(&error.to_string());
                    self.state.last_stored_sequence = head.borrow().sequence;
                    self.write_state(true).await;
                    self.log_lag(&head, false).await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    if head.has_changed().is_err() {
                        self.closing = true;
                    }
                }
            }
        }
    }

    fn note_error(&mut self, message: &str) {
        self.state.last_error = Some(ForwardingError {
            message: message.to_owned(),
            at: now_text(),
        });
        self.state_dirty = true;
    }

    /// Writes `forwarding.json` if something changed (at most once per
    /// [`STATE_INTERVAL`] unless `now`).
    async fn write_state(&mut self, now: bool) {
        if !self.state_dirty || (!now && self.state_written.elapsed() < STATE_INTERVAL) {
            return;
        }
        self.state.updated = now_text();
        let Ok(text) = serde_json::to_vec_pretty(&self.state) else {
            return;
        };
        let store = self.store.clone();
        let written =
            tokio::task::spawn_blocking(move || store.write_forwarding_state(&text)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot write the forwarding state"),
            Err(error) => tracing::warn!(%error, "cannot write the forwarding state"),
        }
        self.state_dirty = false;
        self.state_written = Instant::now();
    }

    /// Logs how far behind forwarding is (records, and the age of the oldest record not
    /// in PostgreSQL), every [`LAG_LOG_INTERVAL`].
    async fn log_lag(&mut self, head: &watch::Receiver<StoredHead>, force: bool) {
        if !force && self.lag_logged.elapsed() < LAG_LOG_INTERVAL {
            return;
        }
        self.lag_logged = Instant::now();
        let stored = head.borrow().sequence;
        let forwarded = self.state.last_forwarded.as_ref().map_or(0, |r| r.sequence);
        if stored <= forwarded {
            return;
        }
        let dir = self.store.dir().to_path_buf();
        let seconds = oldest_unforwarded_age(dir, forwarded + 1).await;
        tracing::info!(
            lag_records = stored - forwarded,
            lag_seconds = seconds.map(|s| s.as_secs_f64()),
            last_stored = stored,
            last_forwarded = forwarded,
            "forwarding lag"
        );
    }

    async fn connect(&self) -> Result<Client, Failure> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.options.target.connect()).await {
            Ok(connected) => Ok(connected?),
            Err(_) => Err(Failure::Local(format!(
                "no connection to PostgreSQL at {} within {} s",
                self.options.target.shown(),
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// One connection: register the store, find where PostgreSQL stopped, then forward
    /// as records come. `Ok` once the store closed and everything was forwarded.
    async fn session(&mut self, head: &mut watch::Receiver<StoredHead>) -> Result<(), Failure> {
        let mut client = self.connect().await?;
        // Commits need not wait for PostgreSQL's WAL flush. Safe here: a crash of the
        // server loses at most its last few hundred milliseconds of commits, as a whole
        // suffix (the WAL is in order, and each store's batches commit in sequence
        // order), so PostgreSQL still holds a prefix of every store's chain; the crash
        // breaks this connection, and the forwarder resumes from what PostgreSQL says it
        // holds and sends the lost records again from the store, which keeps everything.
        // A clean stop or a lost connection loses nothing. It spares a flush per batch,
        // which is most of a batch's cost once forwarding keeps up (one small batch and a
        // checkpoint a second per store).
        client
            .batch_execute("SET synchronous_commit = off")
            .await
            .map_err(PostgresError::query("set synchronous_commit"))?;
        let statements = Statements {
            insert_records: prepare(&client, INSERT_RECORDS).await?,
            insert_checkpoints: prepare(&client, INSERT_CHECKPOINTS).await?,
            record_hashes: prepare(&client, RECORD_HASHES).await?,
            checkpoint_hashes: prepare(&client, CHECKPOINT_HASHES).await?,
        };
        self.register(&client).await?;
        let mut cursor = self.resume(&client, head).await?;
        if self.state.last_error.is_some() {
            tracing::info!(
                from = cursor.follower.next_sequence(),
                "forwarding to PostgreSQL resumed"
            );
        }
        loop {
            let stored = head.borrow_and_update().sequence;
            self.state.last_stored_sequence = stored;
            let dir = self.store.dir().to_path_buf();
            let (follower, read) = {
                let mut follower = cursor.follower;
                tokio::task::spawn_blocking(move || {
                    let read = follower.read(stored, BATCH_RECORDS, BATCH_BYTES);
                    (follower, read)
                })
                .await
                .map_err(|e| Failure::Local(format!("the store reader failed: {e}")))?
            };
            cursor.follower = follower;
            let records = read?;
            let offset = cursor.checkpoint_offset;
            let (checkpoints, offset) =
                tokio::task::spawn_blocking(move || store::read_checkpoints(&dir, offset))
                    .await
                    .map_err(|e| Failure::Local(format!("the store reader failed: {e}")))??;
            cursor.checkpoint_offset = offset;
            cursor.checkpoints.extend(
                checkpoints
                    .into_iter()
                    .filter(|c| c.sequence > cursor.checkpoint_forwarded),
            );
            let forwarded_until = cursor.follower.next_sequence() - 1;
            let covered = cursor
                .checkpoints
                .iter()
                .take_while(|c| c.sequence <= forwarded_until)
                .count();
            self.write_state(false).await;
            self.log_lag(head, false).await;
            if records.is_empty() && covered == 0 {
                if self.closing {
                    if cursor.follower.next_sequence() > head.borrow().sequence {
                        return Ok(());
                    }
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                tokio::select! {
                    changed = head.changed() => {
                        if changed.is_err() {
                            // The writer stopped: one more look at the files, then end.
                            self.closing = true;
                        }
                    }
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            let covered: Vec<Checkpoint> = cursor.checkpoints.drain(..covered).collect();
            let sent = self.send(&mut client, &statements, &mut cursor, records, covered);
            match tokio::time::timeout(SEND_TIMEOUT, sent).await {
                Ok(sent) => sent?,
                Err(_) => {
                    return Err(Failure::Local(format!(
                        "PostgreSQL did not answer a batch within {} s",
                        SEND_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }

    /// Inserts the store's row, or checks that the row there names the same key.
    async fn register(&mut self, client: &Client) -> Result<(), Failure> {
        let dir = self.store.dir().to_path_buf();
        let public_key = tokio::task::spawn_blocking(move || store::export_public_key(&dir))
            .await
            .map_err(|e| Failure::Local(format!("reading the public key failed: {e}")))??;
        let key_id = key_id_of(&public_key)?;
        client
            .execute(
                "INSERT INTO jupyter_audit.stores (store_id, host, public_key, key_id) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (store_id) DO NOTHING",
                &[&self.store_id, &self.options.host, &public_key, &key_id],
            )
            .await
            .map_err(PostgresError::query("register the store"))?;
        let row = client
            .query_one(
                "SELECT public_key FROM jupyter_audit.stores WHERE store_id = $1",
                &[&self.store_id],
            )
            .await
            .map_err(PostgresError::query("read the store's row"))?;
        let remote: String = row.get(0);
        if remote != public_key {
            return Err(Failure::Fork(Fork {
                table: "stores",
                sequence: 0,
                local: public_key,
                remote,
                reason: "another public key is registered for this store id".into(),
            }));
        }
        Ok(())
    }

    /// Where PostgreSQL stopped: checks the last row there against the store and
    /// returns the position after it.
    async fn resume(
        &mut self,
        client: &Client,
        head: &watch::Receiver<StoredHead>,
    ) -> Result<Cursor, Failure> {
        let row = client
            .query_one(
                "SELECT max(sequence) FROM jupyter_audit.records WHERE store_id = $1",
                &[&self.store_id],
            )
            .await
            .map_err(PostgresError::query("find where forwarding stopped"))?;
        let last: u64 = row
            .get::<_, Option<i64>>(0)
            .map_or(0, |s| u64::try_from(s).unwrap_or(0));
        let stored = head.borrow().sequence;
        let mut prev = None;
        if last > 0 {
            if last > stored {
                return Err(Failure::Fork(Fork {
                    table: "records",
                    sequence: last,
                    local: format!("records up to {stored}"),
                    remote: format!("records up to {last}"),
                    reason: "PostgreSQL holds records past the end of the store".into(),
                }));
            }
            let dir = self.store.dir().to_path_buf();
            let local = tokio::task::spawn_blocking(move || {
                Follower::new(&dir, last).read(last, 1, BATCH_BYTES)
            })
            .await
            .map_err(|e| Failure::Local(format!("the store reader failed: {e}")))??;
            let Some(record) = local.into_iter().next() else {
                return Err(Failure::Local(format!("record {last} is not in the store")));
            };
            let local_hash = store::record::unseal(&record.line)
                .map_err(|e| Failure::Local(format!("record {last}: {e}")))?
                .hash;
            let remote = self.remote_record_hashes(client, &[to_i64(last)?]).await?;
            let remote_hash = remote.first().map(|(_, h)| h.clone()).unwrap_or_default();
            if remote_hash != local_hash {
                return Err(record_fork(last, &local_hash, &remote_hash));
            }
            prev = Some(local_hash);
            self.note_forwarded(
                last,
                RecordColumns::of_line(&record.line)
                    .ok()
                    .and_then(|c| c.time),
            );
        }
        let row = client
            .query_one(
                "SELECT max(sequence) FROM jupyter_audit.checkpoints WHERE store_id = $1",
                &[&self.store_id],
            )
            .await
            .map_err(PostgresError::query("find the last forwarded checkpoint"))?;
        let checkpoint_forwarded: u64 = row
            .get::<_, Option<i64>>(0)
            .map_or(0, |s| u64::try_from(s).unwrap_or(0));
        if checkpoint_forwarded > 0 {
            self.check_forwarded_checkpoint(client, checkpoint_forwarded)
                .await?;
        }
        Ok(Cursor {
            follower: Follower::new(self.store.dir(), last + 1),
            prev,
            checkpoint_offset: 0,
            checkpoints: Vec::new(),
            checkpoint_forwarded,
        })
    }

    /// The newest checkpoint in PostgreSQL must be one of the store's, as signed.
    async fn check_forwarded_checkpoint(
        &self,
        client: &Client,
        sequence: u64,
    ) -> Result<(), Failure> {
        let rows = client
            .query(
                CHECKPOINT_HASHES,
                &[&self.store_id, &vec![to_i64(sequence)?]],
            )
            .await
            .map_err(PostgresError::query("read the last forwarded checkpoint"))?;
        let remote: String = rows.first().map(|r| r.get(1)).unwrap_or_default();
        let dir = self.store.dir().to_path_buf();
        let (local, _) = tokio::task::spawn_blocking(move || store::read_checkpoints(&dir, 0))
            .await
            .map_err(|e| Failure::Local(format!("the store reader failed: {e}")))??;
        let local = local
            .into_iter()
            .find(|c| c.sequence == sequence)
            .map(|c| c.chain_hash)
            .unwrap_or_default();
        if local != remote {
            return Err(Failure::Fork(Fork {
                table: "checkpoints",
                sequence,
                local: if local.is_empty() {
                    "no checkpoint there".into()
                } else {
                    local
                },
                remote,
                reason: "the newest forwarded checkpoint is not the store's".into(),
            }));
        }
        Ok(())
    }

    fn note_forwarded(&mut self, sequence: u64, time: Option<String>) {
        self.state.last_forwarded = Some(ForwardedRecord {
            sequence,
            time,
            forwarded_at: now_text(),
        });
        self.state_dirty = true;
    }

    async fn remote_record_hashes(
        &self,
        client: &Client,
        sequences: &[i64],
    ) -> Result<Vec<(i64, Vec<u8>)>, Failure> {
        let rows = client
            .query(RECORD_HASHES, &[&self.store_id, &sequences])
            .await
            .map_err(PostgresError::query("read forwarded hashes"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// One transaction: `records`, then the checkpoints they (or earlier ones) cover.
    async fn send(
        &mut self,
        client: &mut Client,
        statements: &Statements,
        cursor: &mut Cursor,
        records: Vec<FollowedRecord>,
        checkpoints: Vec<Checkpoint>,
    ) -> Result<(), Failure> {
        let first = records.first().map(|r| r.sequence);
        let count = records.len();
        let (rows, last_hash) = RecordRows::build(records, cursor.prev)?;
        let tx = client
            .transaction()
            .await
            .map_err(PostgresError::query("begin"))?;
        if let Some(first) = first {
            // The batch must hang on the row before it: a changed newest row is a fork
            // even when every new key is free.
            if let (Some(prev), true) = (cursor.prev, first > 1) {
                let before = tx
                    .query(
                        &statements.record_hashes,
                        &[&self.store_id, &vec![to_i64(first - 1)?]],
                    )
                    .await
                    .map_err(PostgresError::query("read the last forwarded hash"))?;
                let remote: Vec<u8> = before.first().map(|r| r.get(1)).unwrap_or_default();
                if remote != prev {
                    return Err(record_fork(first - 1, &prev, &remote));
                }
            }
            let inserted = tx
                .execute(
                    &statements.insert_records,
                    &[
                        &self.store_id,
                        &rows.sequence,
                        &rows.time,
                        &rows.action,
                        &rows.user_name,
                        &rows.user_id,
                        &rows.session_id,
                        &rows.kernel_id,
                        &rows.msg_id,
                        &rows.parent_msg_id,
                        &rows.line,
                        &rows.prev,
                        &rows.hash,
                    ],
                )
                .await
                .map_err(PostgresError::query("insert records"))?;
            if inserted < count as u64 {
                // Rows already there (a retry after a lost commit): they must be these.
                let remote = tx
                    .query(&statements.record_hashes, &[&self.store_id, &rows.sequence])
                    .await
                    .map_err(PostgresError::query("read forwarded hashes"))?;
                for row in &remote {
                    let sequence: i64 = row.get(0);
                    let hash: Vec<u8> = row.get(1);
                    let index = rows.sequence.iter().position(|s| *s == sequence);
                    if let Some(index) = index
                        && rows.hash[index] != hash
                    {
                        let local: [u8; 32] =
                            rows.hash[index].as_slice().try_into().unwrap_or([0; 32]);
                        return Err(record_fork(sequence as u64, &local, &hash));
                    }
                }
            }
        }
        if !checkpoints.is_empty() {
            let sequences = checkpoints
                .iter()
                .map(|c| to_i64(c.sequence))
                .collect::<Result<Vec<_>, _>>()?;
            let column = |f: fn(&Checkpoint) -> &String| -> Vec<&str> {
                checkpoints.iter().map(|c| f(c).as_str()).collect()
            };
            let inserted = tx
                .execute(
                    &statements.insert_checkpoints,
                    &[
                        &self.store_id,
                        &sequences,
                        &column(|c| &c.chain_hash),
                        &column(|c| &c.time),
                        &column(|c| &c.segment),
                        &column(|c| &c.key_id),
                        &column(|c| &c.signature),
                    ],
                )
                .await
                .map_err(PostgresError::query("insert checkpoints"))?;
            if inserted < checkpoints.len() as u64 {
                let remote = tx
                    .query(&statements.checkpoint_hashes, &[&self.store_id, &sequences])
                    .await
                    .map_err(PostgresError::query("read forwarded checkpoints"))?;
                for row in &remote {
                    let sequence: i64 = row.get(0);
                    let chain_hash: String = row.get(1);
                    if let Some(local) = checkpoints.iter().find(|c| c.sequence as i64 == sequence)
                        && local.chain_hash != chain_hash
                    {
                        return Err(Failure::Fork(Fork {
                            table: "checkpoints",
                            sequence: sequence as u64,
                            local: local.chain_hash.clone(),
                            remote: chain_hash,
                            reason: "a forwarded checkpoint has another chain hash".into(),
                        }));
                    }
                }
            }
        }
        tx.commit().await.map_err(PostgresError::query("commit"))?;
        if let Some(last) = rows.sequence.last() {
            cursor.prev = Some(last_hash);
            self.note_forwarded(*last as u64, rows.last_time);
        }
        if let Some(checkpoint) = checkpoints.last() {
            cursor.checkpoint_forwarded = checkpoint.sequence;
            self.state.last_forwarded_checkpoint = Some(ForwardedCheckpoint {
                sequence: checkpoint.sequence,
                time: checkpoint.time.clone(),
                forwarded_at: now_text(),
            });
            self.state_dirty = true;
        }
        if self.state.last_error.is_some() {
            self.state.last_error = None;
            self.state_dirty = true;
        }
        Ok(())
    }
}

fn record_fork(sequence: u64, local: &[u8; 32], remote: &[u8]) -> Failure {
    Failure::Fork(Fork {
        table: "records",
        sequence,
        local: hex::encode(local),
        remote: hex::encode(remote),
        reason: "a forwarded record has another hash".into(),
    })
}

async fn prepare(client: &Client, sql: &str) -> Result<Statement, Failure> {
    client.prepare(sql).await.map_err(|source| {
        if source.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
            || source.code() == Some(&tokio_postgres::error::SqlState::INVALID_SCHEMA_NAME)
        {
            Failure::Postgres(PostgresError::NotInitialised(source.to_string()))
        } else {
            Failure::Postgres(PostgresError::Query {
                doing: "prepare statements",
                source,
            })
        }
    })
}

fn key_id_of(public_key_hex: &str) -> Result<String, Failure> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(public_key_hex, &mut bytes)
        .map_err(|_| Failure::Local("the store's public key is not hex".into()))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .map_err(|_| Failure::Local("the store's public key is not an Ed25519 key".into()))?;
    Ok(store::key_id(&key))
}

/// How old the record `sequence` of the store in `dir` is (its `@timestamp` to now).
pub async fn oldest_unforwarded_age(dir: PathBuf, sequence: u64) -> Option<Duration> {
    let record = tokio::task::spawn_blocking(move || {
        Follower::new(&dir, sequence).read(sequence, 1, BATCH_BYTES)
    })
    .await
    .ok()?
    .ok()?
    .into_iter()
    .next()?;
    record_age(&record.line)
}

/// The age of a stored line's `@timestamp`.
pub fn record_age(line: &[u8]) -> Option<Duration> {
    let time = RecordColumns::of_line(line).ok()?.time?;
    SystemTime::now().duration_since(parse_time(&time)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{GENESIS, seal};
    use serde_json::json;

    fn stored(sequence: u64, prev: &[u8; 32], user: &str) -> (FollowedRecord, [u8; 32]) {
        let record = json!({
            "@timestamp": "2026-01-01T00:00:00.25Z",
            "event": {"action": "stream"},
            "user": {"name": user},
        });
        let serde_json::Value::Object(map) = record else {
            unreachable!()
        };
        let sealed = seal(map, sequence, prev).unwrap();
        let line = sealed.line[..sealed.line.len() - 1].to_vec();
        (FollowedRecord { sequence, line }, sealed.hash)
    }

    #[test]
    fn rows_carry_the_line_and_its_chain_and_columns_without_nul() {
        let (first, first_hash) = stored(1, &GENESIS, "a\u{0}b");
        let (second, second_hash) = stored(2, &first_hash, "c");
        let line = String::from_utf8(second.line.clone()).unwrap();
        let (rows, last) = RecordRows::build(vec![first, second], None).unwrap();
        assert_eq!(last, second_hash);
        assert_eq!(rows.sequence, [1, 2]);
        assert_eq!(rows.line[1], line);
        assert_eq!(rows.prev[1], first_hash.to_vec());
        assert_eq!(rows.hash[0], first_hash.to_vec());
        assert_eq!(rows.user_name[0].as_deref(), Some("a\u{FFFD}b"));
        assert!(line.contains("a\\u0000b") || !line.contains('\0'));
        assert_eq!(rows.action, ["stream", "stream"]);
        assert!(rows.time[0].is_some());
        assert_eq!(rows.last_time.as_deref(), Some("2026-01-01T00:00:00.25Z"));
    }

    #[test]
    fn long_review_fields_are_cut_at_a_character_boundary_and_the_line_keeps_them() {
        let long = format!("a{}", "é".repeat(COLUMN_MAX_BYTES));
        let (record, _) = stored(1, &GENESIS, &long);
        let line = String::from_utf8(record.line.clone()).unwrap();
        let (rows, _) = RecordRows::build(vec![record], None).unwrap();
        let column = rows.user_name[0].as_deref().unwrap();
        assert!(column.len() <= COLUMN_MAX_BYTES && column.len() >= COLUMN_MAX_BYTES - 1);
        assert!(long.starts_with(column));
        assert_eq!(rows.line[0], line);
        assert!(line.contains(&long));
    }

    #[test]
    fn a_batch_that_does_not_continue_the_chain_is_refused() {
        let (first, first_hash) = stored(1, &GENESIS, "a");
        let (second, _) = stored(2, &first_hash, "b");
        assert!(RecordRows::build(vec![second.clone()], Some([9; 32])).is_err());
        assert!(RecordRows::build(vec![second.clone()], Some(first_hash)).is_ok());
        assert!(RecordRows::build(vec![second, first], None).is_err());
    }

    #[test]
    fn state_reads_back_and_a_fork_says_both_sides() {
        let state = ForwardingState {
            store_id: "s".into(),
            last_forwarded: Some(ForwardedRecord {
                sequence: 3,
                time: None,
                forwarded_at: "t".into(),
            }),
            ..ForwardingState::default()
        };
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(
            serde_json::from_str::<ForwardingState>(&text).unwrap(),
            state
        );
        let fork = Fork {
            table: "records",
            sequence: 7,
            local: "aa".into(),
            remote: String::new(),
            reason: "r".into(),
        };
        assert_eq!(
            fork.to_string(),
            "r (table records, sequence 7: the store has aa, PostgreSQL has nothing)"
        );
    }
}
