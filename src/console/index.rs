//! The console's index of a store: an SQLite file beside it (a path the caller chooses,
//! e.g. `<state>/console-index.sqlite`) with one row per session (what `sessions --json`
//! tells), one row per cell (an `execute_request` and what answered it), and a full-text
//! index over the cells' code, so that the pages answer without reading the store.
//!
//! The store stays the source of truth: the index can be deleted at any time and is
//! rebuilt from the store. [`Index::catch_up`] reads the records after the last one it
//! indexed with the store's [`Follower`], and starts over when the store is another one
//! (its `store_id`), when the record it stopped at is no longer the same (its chain hash),
//! or when the index was made by another version of this schema.
//!
//! Sessions and their counts follow [`crate::review::sessions`]: a session is one
//! `jupyter.session_id` sent by one OS uid; cells are `execute_request`s (resent
//! duplicates not counted, refused ones apart); errors are requests answered by an
//! `error` output or an `execute_reply` with status `error`. Whether a session without
//! `session_end` still runs is asked of a [`Liveness`] at each catch-up.
//!
//! Code search uses FTS5's trigram tokenizer: a query matches code that contains it as
//! a substring (case-insensitively), which is what a reviewer looking for `read_csv(`
//! or a host name expects; queries shorter than three characters cannot be searched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use crate::audit::events::Action;
use crate::review::fields;
use crate::review::log::end_description;
use crate::review::sessions::{Liveness, SessionKey, SessionState};
use crate::store::{self, Follower, StoreError};

mod record;
use record::LeanRecord;

/// Changes whenever the tables or what goes into them change: an index of another
/// version is rebuilt.
const SCHEMA_VERSION: &str = "4";

/// Records read and indexed at a time (the lines of a batch are held in memory).
const BATCH_RECORDS: usize = 20_000;
const BATCH_BYTES: usize = 32 << 20;
/// Records indexed in one transaction (several batches): the code search's index is
/// written at each commit, and fewer, larger writes merge less.
const TRANSACTION_RECORDS: usize = 100_000;
/// Memory FTS5 may hold for the code search's pending writes before it writes them
/// (its default is 1 MiB): with [`TRANSACTION_RECORDS`], one write per transaction.
const SEARCH_HASH_BYTES: usize = 8 << 20;

/// Shortest code search (the trigram tokenizer needs three characters).
pub const MIN_SEARCH_CHARS: usize = 3;

/// Why the index could not be read or brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create the index {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the store: {0}")]
    Store(#[from] StoreError),
    #[error("record {sequence} of the store is not a JSON object: {detail}")]
    Record { sequence: u64, detail: String },
    #[error("a code search needs at least {MIN_SEARCH_CHARS} characters")]
    SearchTooShort,
    #[error("cannot read the forwarded records: {0}")]
    Forwarded(String),
}

type Result<T, E = IndexError> = std::result::Result<T, E>;

/// What one [`Index::catch_up`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Records indexed by this call.
    pub records: u64,
    /// The last sequence indexed now.
    pub last_sequence: u64,
    /// Whether the index was started over (another store, a changed record, a new schema).
    pub rebuilt: bool,
    /// From forwarded stores: the records they hold, summed (what `last_sequence` reaches
    /// once caught up).
    pub stored: Option<u64>,
}

/// One session as the sessions page lists it (the facts of `sessions --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionRow {
    /// The index's number for the session (for links and paging).
    pub id: i64,
    /// The forwarded store it was recorded in (its id), when read from PostgreSQL;
    /// empty for the store directory's own sessions.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub store: String,
    pub session_id: String,
    pub user: Option<String>,
    pub verified_by: Option<String>,
    /// The OS uid that sent its records.
    pub user_id: String,
    pub host: Option<String>,
    pub kernel_id: Option<String>,
    pub kernel_name: Option<String>,
    pub notebook: Option<String>,
    pub hub_user: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub state: SessionState,
    pub end_reason: Option<String>,
    pub cells: u64,
    pub errors: u64,
    pub refused: u64,
    pub records: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub last_record: Option<String>,
    pub proxy_pid: Option<u32>,
    /// The latest review mark on its `session_id` (`reviewed`, `flagged`), if any.
    pub mark: Option<String>,
}

/// Where the next page of sessions starts (after the last row of this one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SessionCursor {
    pub start_ms: i64,
    pub id: i64,
}

/// Which sessions a reviewer may see: all (an unfiltered grant), or only those of the
/// Hub users a filtered grant names (`!user=`, or members of a `!group=`). A session
/// whose user only the OS account vouches for (`verified_by` peercred) is nobody's Hub
/// user: a filtered grant does not show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Visibility {
    #[default]
    All,
    /// These Hub users' sessions (sorted, no duplicates; may be empty).
    HubUsers(Vec<String>),
}

impl Visibility {
    /// Whether `row` may be shown.
    pub fn allows(&self, row: &SessionRow) -> bool {
        match self {
            Self::All => true,
            Self::HubUsers(users) => {
                row.verified_by.as_deref() == Some(VERIFIED_BY_HUB)
                    && row
                        .user
                        .as_ref()
                        .is_some_and(|user| users.binary_search(user).is_ok())
            }
        }
    }

    /// The SQL condition (` AND ...`) on the sessions table `alias` (`""` or `"s."`),
    /// binding the users after `values`.
    fn clause(&self, alias: &str, values: &mut Vec<rusqlite::types::Value>) -> String {
        let Self::HubUsers(users) = self else {
            return String::new();
        };
        if users.is_empty() {
            return " AND 0".to_owned();
        }
        let mut places = Vec::with_capacity(users.len());
        for user in users {
            values.push(user.clone().into());
            places.push(format!("?{}", values.len()));
        }
        format!(
            " AND {alias}verified_by = '{VERIFIED_BY_HUB}' AND {alias}user IN ({})",
            places.join(", ")
        )
    }
}

/// `user.verified_by` of a session whose user the Hub vouched for.
const VERIFIED_BY_HUB: &str = "jupyterhub";

/// Which sessions the sessions page shows; newest start first.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    /// `user.name` exactly.
    pub user: Option<String>,
    /// Sessions that started at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Sessions that started before this time.
    pub until: Option<OffsetDateTime>,
    /// Part of the notebook path.
    pub notebook: Option<String>,
    /// The kernel name exactly.
    pub kernel: Option<String>,
    pub with_errors: bool,
    pub with_refused: bool,
    pub ended_abnormally: bool,
    /// Sessions whose proxy runs now (no end recorded, the proxy alive).
    pub running: bool,
    /// By their latest review mark.
    pub mark: Option<MarkFilter>,
    /// The cursor of the previous page's last row.
    pub after: Option<SessionCursor>,
    pub limit: usize,
    /// Only the sessions the reviewer may see.
    pub visible: Visibility,
}

/// Which review marks the sessions page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkFilter {
    Reviewed,
    Flagged,
    Unmarked,
}

/// A reviewer's mark on a session (a `review_mark` record).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MarkRow {
    pub sequence: u64,
    pub session_id: String,
    pub reviewer: String,
    pub mark: String,
    pub note: Option<String>,
    pub time: Option<String>,
}

/// The actions kept in `store_events`: what the health page counts and lists (the
/// collector's and the proxies' reports of trouble, collectors starting and stopping) and
/// what a session page shows between its cells (interrupts, signals, gaps).
pub const HEALTH_ACTIONS: &[&str] = &[
    "message_rejected",
    "rejections_suppressed",
    "audit_gap",
    "collector_start",
    "collector_stop",
    "record_refused",
    "refusals_suppressed",
    "forged_record",
    "identity_refused",
    "limit_exceeded",
    "forward_conflict",
    "audit_bypassed",
    "interrupt",
    "signal",
];

/// One record the health page tells about.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreEvent {
    pub sequence: u64,
    pub action: String,
    pub time: Option<String>,
    pub host: Option<String>,
    pub pid: Option<u64>,
    pub summary: String,
    /// The session it happened in, when one.
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    /// The forwarded store that recorded it (empty: the store directory).
    pub store: String,
}

/// A page of sessions and where the next one starts (None: this is the last).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionPage {
    pub sessions: Vec<SessionRow>,
    pub next: Option<SessionCursor>,
}

/// One cell of a session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellRow {
    pub id: i64,
    pub session: i64,
    pub msg_id: String,
    pub execution_count: Option<u64>,
    pub code: Option<String>,
    /// `ok`, `error`, `aborted`… as the reply said, `refused`, or None without a reply.
    pub status: Option<String>,
    /// Whether an `error` output or an error reply answered it.
    pub failed: bool,
    pub refused: bool,
    pub duration_ms: Option<f64>,
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// `@timestamp` of its request.
    pub requested_at: Option<String>,
    /// The whole code's length in characters (`code` holds at most
    /// [`CODE_SHOWN_CHARS`] of them).
    pub code_chars: u64,
}

/// A cell whose code matched a search, with its session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    pub cell: CellRow,
    pub session_id: String,
    pub user: Option<String>,
    pub notebook: Option<String>,
}

/// The index, opened for catching up and for the pages' queries.
pub struct Index {
    path: PathBuf,
    connection: Connection,
    /// The store followed by the last catch-up and where it stopped: finding the place
    /// again would read its segment from the start.
    follower: Option<(PathBuf, Follower)>,
    /// Whether this process checked that the index still describes the forwarded stores.
    forwarded_checked: bool,
}

/// Forwarded records read per transaction of [`Index::catch_up_forwarded`].
const FORWARDED_BATCH: usize = 5_000;

/// One forwarded record: its store's sequence and the stored line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedRow {
    pub sequence: u64,
    pub line: String,
}

/// Where [`Index::catch_up_forwarded`] reads from: stores forwarded to a central trail
/// (PostgreSQL), each a store id and records by sequence. Errors are said as text (the
/// index does not know the source's error types).
pub trait ForwardedRecords {
    /// Every store and its last sequence.
    fn stores(&mut self) -> Result<Vec<(String, u64)>, IndexError>;
    /// At most `limit` records of `store` after sequence `after`, in sequence order.
    fn after(
        &mut self,
        store: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ForwardedRow>, IndexError>;
    /// The line of `store` at `sequence`, if there is one.
    fn line_at(&mut self, store: &str, sequence: u64) -> Result<Option<String>, IndexError>;
}

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    store TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    user TEXT, verified_by TEXT, host TEXT, kernel_id TEXT, kernel_name TEXT,
    notebook TEXT, hub_user TEXT,
    start TEXT, start_ms INTEGER NOT NULL, has_start INTEGER NOT NULL,
    end TEXT, ended INTEGER NOT NULL, end_reason TEXT, state TEXT NOT NULL,
    cells INTEGER NOT NULL, errors INTEGER NOT NULL, refused INTEGER NOT NULL,
    records INTEGER NOT NULL, first_sequence INTEGER NOT NULL, last_sequence INTEGER NOT NULL,
    last_record TEXT, proxy_pid INTEGER,
    UNIQUE (store, session_id, user_id)
);
CREATE INDEX sessions_by_start ON sessions (start_ms, id);
CREATE INDEX sessions_by_user ON sessions (user, start_ms, id);
CREATE INDEX sessions_open ON sessions (id) WHERE ended = 0;
CREATE TABLE cells (
    id INTEGER PRIMARY KEY,
    session INTEGER NOT NULL,
    msg_id TEXT NOT NULL,
    requests INTEGER NOT NULL,
    execution_count INTEGER, code TEXT, status TEXT,
    failed INTEGER NOT NULL, refused INTEGER NOT NULL, duration_ms REAL,
    first_sequence INTEGER NOT NULL, last_sequence INTEGER NOT NULL, requested_at TEXT,
    UNIQUE (session, msg_id)
);
CREATE INDEX cells_in_order ON cells (session, first_sequence);
CREATE TABLE marks (
    store TEXT NOT NULL, sequence INTEGER NOT NULL,
    session_id TEXT NOT NULL, reviewer TEXT NOT NULL, mark TEXT NOT NULL,
    note TEXT, time TEXT,
    PRIMARY KEY (store, sequence)
);
CREATE INDEX marks_by_session ON marks (session_id, time, sequence);
CREATE TABLE store_events (
    store TEXT NOT NULL, sequence INTEGER NOT NULL, action TEXT NOT NULL, time TEXT,
    host TEXT, pid INTEGER, summary TEXT, session_id TEXT, user_id TEXT,
    PRIMARY KEY (store, sequence)
);
CREATE INDEX store_events_by_action ON store_events (action, time);
CREATE TABLE sources (
    store TEXT PRIMARY KEY, last_sequence INTEGER NOT NULL, last_hash TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX store_events_by_session ON store_events (session_id, sequence)
    WHERE session_id IS NOT NULL;
CREATE VIRTUAL TABLE code_search USING fts5 (
    code, content = 'cells', content_rowid = 'id', tokenize = 'trigram'
);
";

/// A session while a batch is indexed.
#[derive(Debug, Clone)]
struct OpenSession {
    id: Option<i64>,
    key: SessionKey,
    user: Option<String>,
    verified_by: Option<String>,
    host: Option<String>,
    kernel_id: Option<String>,
    kernel_name: Option<String>,
    notebook: Option<String>,
    hub_user: Option<String>,
    start: Option<String>,
    start_ms: i64,
    has_start: bool,
    end: Option<String>,
    ended: bool,
    end_reason: Option<String>,
    records: u64,
    first_sequence: u64,
    last_sequence: u64,
    last_record: Option<String>,
    proxy_pid: Option<u32>,
}

/// A cell while a batch is indexed.
#[derive(Debug, Clone)]
struct Cell {
    id: Option<i64>,
    requests: u64,
    execution_count: Option<u64>,
    code: Option<String>,
    code_is_new: bool,
    status: Option<String>,
    failed: bool,
    refused: bool,
    duration_ms: Option<f64>,
    first_sequence: u64,
    last_sequence: u64,
    requested_at: Option<String>,
}

impl Cell {
    fn new(sequence: u64) -> Self {
        Cell {
            id: None,
            requests: 0,
            execution_count: None,
            code: None,
            code_is_new: false,
            status: None,
            failed: false,
            refused: false,
            duration_ms: None,
            first_sequence: sequence,
            last_sequence: sequence,
            requested_at: None,
        }
    }
}

fn millis(time: OffsetDateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn owned(text: Option<&str>) -> Option<String> {
    text.map(str::to_owned)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}

fn state_name(state: SessionState) -> &'static str {
    state.as_str()
}

fn parse_state(text: &str) -> SessionState {
    match text {
        "ended" => SessionState::Ended,
        "ended abnormally" => SessionState::EndedAbnormally,
        "running" => SessionState::Running,
        _ => SessionState::NoEndRecorded,
    }
}

/// The records of one batch, gathered in memory and written at its end.
#[derive(Default)]
struct Batch {
    /// The store the batch's records come from (empty: the store directory).
    store: String,
    sessions: HashMap<SessionKey, OpenSession>,
    /// Session key → request msg_id → cell.
    cells: HashMap<SessionKey, HashMap<String, Cell>>,
    marks: Vec<MarkRow>,
    events: Vec<StoreEvent>,
}

impl Index {
    /// Opens (or creates) the index at `path`; it is empty until
    /// [`catch_up`](Self::catch_up). A new index is readable by its owner alone (it holds
    /// the code that ran, as the store does; SQLite gives its journal files the same mode).
    pub fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Err(error) = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            && error.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(IndexError::Create {
                path: path.to_path_buf(),
                source: error,
            });
        }
        let connection = Connection::open(path).map_err(|source| IndexError::Sqlite {
            path: path.to_path_buf(),
            source,
        })?;
        let index = Index {
            path: path.to_path_buf(),
            connection,
            follower: None,
            forwarded_checked: false,
        };
        index.configure()?;
        Ok(index)
    }

    /// Opens an existing index for the pages' queries only: several can read while one
    /// [`open`](Self::open)ed index catches up (WAL mode). It cannot catch up itself.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        use rusqlite::OpenFlags;
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| IndexError::Sqlite {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Index {
            path: path.to_path_buf(),
            connection,
            follower: None,
            forwarded_checked: false,
        })
    }

    fn sqlite(&self) -> impl Fn(rusqlite::Error) -> IndexError + '_ {
        |source| IndexError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn configure(&self) -> Result<()> {
        // The index can always be rebuilt from the store: its last transactions are not
        // worth an fsync each (NORMAL in WAL mode syncs at checkpoints only), but a crash
        // must not leave it corrupt (OFF could), since nothing would tell.
        self.connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                 PRAGMA temp_store = MEMORY; PRAGMA cache_size = -32000;",
            )
            .map_err(self.sqlite())?;
        let has_meta: bool = self
            .connection
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map_err(self.sqlite())?
            > 0;
        if !has_meta {
            self.create()?;
        }
        Ok(())
    }

    fn create(&self) -> Result<()> {
        self.connection
            .execute_batch(&format!(
                "BEGIN; {SCHEMA} INSERT INTO meta VALUES ('schema', '{SCHEMA_VERSION}'); \
                 INSERT INTO code_search (code_search, rank) VALUES ('hashsize', {SEARCH_HASH_BYTES}); \
                 COMMIT;"
            ))
            .map_err(self.sqlite())
    }

    /// Empties the index: drops every table and makes them again.
    fn reset(&self) -> Result<()> {
        self.connection
            .execute_batch(
                "BEGIN; DROP TABLE IF EXISTS code_search; DROP TABLE IF EXISTS cells; \
                 DROP TABLE IF EXISTS marks; DROP TABLE IF EXISTS store_events; \
                 DROP TABLE IF EXISTS sessions; DROP TABLE IF EXISTS sources; \
                 DROP TABLE IF EXISTS meta; COMMIT; VACUUM;",
            )
            .map_err(self.sqlite())?;
        self.create()
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        self.connection
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(self.sqlite())
    }

    /// The last sequence indexed (0: none).
    pub fn last_sequence(&self) -> Result<u64> {
        Ok(self
            .meta("last_sequence")?
            .and_then(|text| text.parse().ok())
            .unwrap_or(0))
    }

    /// Whether what the index holds still describes the store at `store_dir`.
    fn still_valid(&self, store_dir: &Path, store_id: &str) -> Result<bool> {
        if self.meta("schema")?.as_deref() != Some(SCHEMA_VERSION) || self.meta("source")?.is_some()
        {
            return Ok(false);
        }
        match self.meta("store_id")? {
            Some(known) if known == store_id => {}
            Some(_) => return Ok(false),
            None => return Ok(self.last_sequence()? == 0),
        }
        let last = self.last_sequence()?;
        if last == 0 {
            return Ok(true);
        }
        let mut follower = Follower::new(store_dir, last);
        let Some(record) = follower.read(last, 1, 1 << 20)?.into_iter().next() else {
            return Ok(false);
        };
        Ok(chain_hash_of(&record.line).is_some_and(|hash| {
            self.meta("last_hash")
                .ok()
                .flatten()
                .is_some_and(|known| known == hash)
        }))
    }

    /// Indexes the records of the store at `store_dir` that came since the last call
    /// (all of them the first time, or when the index no longer describes this store),
    /// then asks `liveness` about the sessions that have no end.
    pub fn catch_up(&mut self, store_dir: &Path, liveness: &dyn Liveness) -> Result<CatchUp> {
        let store_id = store::store_id(store_dir)?.to_string();
        let mut outcome = CatchUp::default();
        let last = self.last_sequence()?;
        let kept = match self.follower.take() {
            Some((dir, follower))
                if dir == store_dir
                    && follower.next_sequence() == last + 1
                    && self.meta("store_id")?.as_deref() == Some(store_id.as_str()) =>
            {
                Some(follower)
            }
            _ => None,
        };
        let mut follower = match kept {
            Some(follower) => follower,
            None => {
                if !self.still_valid(store_dir, &store_id)? {
                    tracing::info!(index = %self.path.display(), "the index does not describe this store (any more): rebuilding it");
                    self.reset()?;
                    outcome.rebuilt = true;
                }
                Follower::new(store_dir, self.last_sequence()? + 1)
            }
        };
        let mut done = false;
        while !done {
            let transaction =
                self.connection
                    .transaction()
                    .map_err(|source| IndexError::Sqlite {
                        path: self.path.clone(),
                        source,
                    })?;
            let sqlite = |source| IndexError::Sqlite {
                path: self.path.clone(),
                source,
            };
            let mut indexed = 0;
            let mut last_indexed = None;
            while indexed < TRANSACTION_RECORDS {
                let records = follower.read(u64::MAX, BATCH_RECORDS, BATCH_BYTES)?;
                let Some(last) = records.last() else {
                    done = true;
                    break;
                };
                last_indexed = Some((last.sequence, chain_hash_of(&last.line).unwrap_or_default()));
                let mut batch = Batch::default();
                for record in &records {
                    index_record(
                        &mut batch,
                        &transaction,
                        &self.path,
                        record.sequence,
                        &record.line,
                    )?;
                }
                batch.write(&transaction).map_err(sqlite)?;
                indexed += records.len();
            }
            // Nothing read: the transaction is dropped (rolled back) with nothing in it.
            let Some((last_sequence, last_hash)) = last_indexed else {
                break;
            };
            transaction
                .execute(
                    "INSERT OR REPLACE INTO meta VALUES ('last_sequence', ?1), ('last_hash', ?2), ('store_id', ?3)",
                    params![last_sequence.to_string(), last_hash, store_id],
                )
                .map_err(sqlite)?;
            transaction.commit().map_err(sqlite)?;
            outcome.records += indexed as u64;
        }
        self.follower = Some((store_dir.to_path_buf(), follower));
        self.refresh_open_sessions(liveness)?;
        outcome.last_sequence = self.last_sequence()?;
        Ok(outcome)
    }

    /// Indexes the records `source` forwarded since the last call, store by store (all
    /// of them the first time, or when the index no longer describes what it holds: made
    /// from a store directory, by another schema, or a record it stopped at is not the
    /// same any more), then asks `liveness` about the sessions that have no end.
    /// [`CatchUp::last_sequence`] is then the number of records indexed, summed over the
    /// stores (their sequences start at 1 and have no holes).
    pub fn catch_up_forwarded(
        &mut self,
        source: &mut dyn ForwardedRecords,
        liveness: &dyn Liveness,
    ) -> Result<CatchUp> {
        let mut outcome = CatchUp::default();
        if !self.forwarded_checked {
            if !self.still_valid_forwarded(source)? {
                tracing::info!(index = %self.path.display(), "the index does not describe these forwarded stores (any more): rebuilding it");
                self.reset()?;
                self.connection
                    .execute(
                        "INSERT OR REPLACE INTO meta VALUES ('source', 'forwarded')",
                        [],
                    )
                    .map_err(self.sqlite())?;
                outcome.rebuilt = true;
            }
            self.forwarded_checked = true;
        }
        let stores = source.stores()?;
        outcome.stored = Some(stores.iter().map(|(_, last)| last).sum());
        for (store, stored) in stores {
            let mut last = self.source_sequence(&store)?;
            while last < stored {
                let rows = source.after(&store, last, FORWARDED_BATCH)?;
                let Some(final_row) = rows.last() else {
                    break;
                };
                let last_sequence = final_row.sequence;
                let last_hash = chain_hash_of(final_row.line.as_bytes()).unwrap_or_default();
                let path = self.path.clone();
                let sqlite = |source| IndexError::Sqlite {
                    path: path.clone(),
                    source,
                };
                let transaction = self.connection.transaction().map_err(sqlite)?;
                let mut batch = Batch {
                    store: store.clone(),
                    ..Batch::default()
                };
                for row in &rows {
                    index_record(
                        &mut batch,
                        &transaction,
                        &path,
                        row.sequence,
                        row.line.as_bytes(),
                    )?;
                }
                batch.write(&transaction).map_err(sqlite)?;
                transaction
                    .execute(
                        "INSERT OR REPLACE INTO sources VALUES (?1, ?2, ?3)",
                        params![store, to_i64(last_sequence), last_hash],
                    )
                    .map_err(sqlite)?;
                transaction.commit().map_err(sqlite)?;
                outcome.records += rows.len() as u64;
                last = last_sequence;
            }
        }
        self.refresh_open_sessions(liveness)?;
        outcome.last_sequence = self.forwarded_count()?;
        Ok(outcome)
    }

    /// The last sequence of `store` indexed (0: none).
    fn source_sequence(&self, store: &str) -> Result<u64> {
        Ok(self
            .connection
            .query_row(
                "SELECT last_sequence FROM sources WHERE store = ?1",
                [store],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map_err(self.sqlite())?
            .map_or(0, to_u64))
    }

    /// The records indexed from forwarded stores (the sum of their last sequences).
    pub fn forwarded_count(&self) -> Result<u64> {
        self.connection
            .query_row(
                "SELECT coalesce(sum(last_sequence), 0) FROM sources",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map(to_u64)
            .map_err(self.sqlite())
    }

    /// Whether the index holds forwarded stores' records, of this schema, each store's
    /// last one still the same.
    fn still_valid_forwarded(&self, source: &mut dyn ForwardedRecords) -> Result<bool> {
        if self.meta("schema")?.as_deref() != Some(SCHEMA_VERSION) {
            return Ok(false);
        }
        if self.meta("source")?.as_deref() != Some("forwarded") {
            // Only an empty index may become one of forwarded stores.
            return Ok(false);
        }
        let known: Vec<(String, i64, String)> = {
            let mut statement = self
                .connection
                .prepare("SELECT store, last_sequence, last_hash FROM sources")
                .map_err(self.sqlite())?;
            statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .map_err(self.sqlite())?
                .collect::<Result<_, _>>()
                .map_err(self.sqlite())?
        };
        for (store, sequence, hash) in known {
            let line = source.line_at(&store, to_u64(sequence))?;
            if line
                .as_deref()
                .and_then(|line| chain_hash_of(line.as_bytes()))
                != Some(hash)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Decides the state of the sessions without `session_end` again (their proxy may
    /// have gone since).
    fn refresh_open_sessions(&mut self, liveness: &dyn Liveness) -> Result<()> {
        let path = self.path.clone();
        let sqlite = |source| IndexError::Sqlite {
            path: path.clone(),
            source,
        };
        let transaction = self.connection.transaction().map_err(sqlite)?;
        {
            /// What decides the state of a session without end, and what it says now.
            struct Open {
                id: i64,
                host: Option<String>,
                pid: Option<u32>,
                has_start: bool,
                start_ms: i64,
                state: String,
                reason: Option<String>,
            }
            let mut select = transaction
                .prepare(
                    "SELECT id, host, proxy_pid, has_start, start_ms, state, end_reason \
                     FROM sessions WHERE ended = 0",
                )
                .map_err(sqlite)?;
            let open: Vec<Open> = select
                .query_map([], |row| {
                    Ok(Open {
                        id: row.get(0)?,
                        host: row.get(1)?,
                        pid: row.get(2)?,
                        has_start: row.get(3)?,
                        start_ms: row.get(4)?,
                        state: row.get(5)?,
                        reason: row.get(6)?,
                    })
                })
                .map_err(sqlite)?
                .collect::<Result<_, _>>()
                .map_err(sqlite)?;
            let mut update = transaction
                .prepare("UPDATE sessions SET state = ?2, end_reason = ?3 WHERE id = ?1")
                .map_err(sqlite)?;
            for session in open {
                let started = session
                    .has_start
                    .then(|| {
                        OffsetDateTime::from_unix_timestamp_nanos(
                            i128::from(session.start_ms) * 1_000_000,
                        )
                        .ok()
                    })
                    .flatten();
                let alive = match (&session.host, session.pid) {
                    (Some(host), Some(pid)) => liveness.alive(host, pid, started),
                    _ => None,
                };
                let (state, reason) = open_state(alive, session.has_start);
                if state.as_str() != session.state || reason != session.reason.as_deref() {
                    update
                        .execute(params![session.id, state_name(state), reason])
                        .map_err(sqlite)?;
                }
            }
        }
        transaction.commit().map_err(sqlite)
    }

    /// One page of sessions, newest start first.
    pub fn sessions(&self, query: &SessionQuery) -> Result<SessionPage> {
        let mut sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE 1");
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        let mut bind = |sql: &mut String, clause: &str, value: rusqlite::types::Value| {
            values.push(value);
            sql.push_str(&clause.replace('?', &format!("?{}", values.len())));
        };
        if let Some(user) = &query.user {
            bind(&mut sql, " AND user = ?", user.clone().into());
        }
        let visible = query.visible.clause("", &mut values);
        sql.push_str(&visible);
        let mut bind = |sql: &mut String, clause: &str, value: rusqlite::types::Value| {
            values.push(value);
            sql.push_str(&clause.replace('?', &format!("?{}", values.len())));
        };
        if let Some(since) = query.since {
            bind(&mut sql, " AND start_ms >= ?", millis(since).into());
        }
        if let Some(until) = query.until {
            bind(&mut sql, " AND start_ms < ?", millis(until).into());
        }
        if let Some(notebook) = &query.notebook {
            bind(
                &mut sql,
                " AND instr(notebook, ?) > 0",
                notebook.clone().into(),
            );
        }
        if let Some(kernel) = &query.kernel {
            bind(&mut sql, " AND kernel_name = ?", kernel.clone().into());
        }
        if query.with_errors {
            sql.push_str(" AND errors > 0");
        }
        if query.with_refused {
            sql.push_str(" AND refused > 0");
        }
        if query.ended_abnormally {
            sql.push_str(" AND state = 'ended abnormally'");
        }
        if query.running {
            sql.push_str(" AND ended = 0 AND state = 'running'");
        }
        match query.mark {
            Some(MarkFilter::Reviewed) => sql.push_str(&format!(" AND {LATEST_MARK} = 'reviewed'")),
            Some(MarkFilter::Flagged) => sql.push_str(&format!(" AND {LATEST_MARK} = 'flagged'")),
            Some(MarkFilter::Unmarked) => sql.push_str(&format!(" AND {LATEST_MARK} IS NULL")),
            None => {}
        }
        if let Some(after) = query.after {
            bind(&mut sql, " AND (start_ms, id) < (?", after.start_ms.into());
            bind(&mut sql, ", ?)", after.id.into());
        }
        let limit = query.limit.max(1);
        // One more than the page tells whether there is a next page.
        bind(
            &mut sql,
            " ORDER BY start_ms DESC, id DESC LIMIT ?",
            to_i64(limit as u64 + 1).into(),
        );
        let mut statement = self
            .connection
            .prepare_cached(&sql)
            .map_err(self.sqlite())?;
        let mut rows: Vec<(SessionRow, i64)> = statement
            .query_map(rusqlite::params_from_iter(values), session_row)
            .map_err(self.sqlite())?
            .collect::<Result<_, _>>()
            .map_err(self.sqlite())?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = match rows.last() {
            Some((row, start_ms)) if more => Some(SessionCursor {
                start_ms: *start_ms,
                id: row.id,
            }),
            _ => None,
        };
        Ok(SessionPage {
            sessions: rows.into_iter().map(|(row, _)| row).collect(),
            next,
        })
    }

    /// One session by the index's number for it.
    pub fn session(&self, id: i64) -> Result<Option<SessionRow>> {
        self.connection
            .prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"
            ))
            .map_err(self.sqlite())?
            .query_row([id], session_row)
            .optional()
            .map(|row| row.map(|(row, _)| row))
            .map_err(self.sqlite())
    }

    /// The sessions whose `jupyter.session_id` is `session_id` (one per OS uid that sent
    /// records under it).
    pub fn sessions_by_id(&self, session_id: &str) -> Result<Vec<SessionRow>> {
        let mut statement = self
            .connection
            .prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?1 ORDER BY id"
            ))
            .map_err(self.sqlite())?;
        statement
            .query_map([session_id], session_row)
            .map_err(self.sqlite())?
            .map(|row| row.map(|(row, _)| row))
            .collect::<Result<_, _>>()
            .map_err(self.sqlite())
    }

    /// The cells of a session in the order they were recorded (refused ones included,
    /// outputs without a recorded request too).
    pub fn cells(&self, session: i64) -> Result<Vec<CellRow>> {
        self.cells_after(session, 0, u32::MAX)
    }

    /// At most `limit` cells of a session that start after the record `after`, in
    /// record order (a session page at a time).
    pub fn cells_after(&self, session: i64, after: u64, limit: u32) -> Result<Vec<CellRow>> {
        let mut statement = self
            .connection
            .prepare_cached(&format!(
                "SELECT {} FROM cells WHERE session = ?1 AND first_sequence > ?2 \
                 ORDER BY first_sequence LIMIT ?3",
                cell_columns("cells")
            ))
            .map_err(self.sqlite())?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        statement
            .query_map(rusqlite::params![session, after, limit], cell_row)
            .map_err(self.sqlite())?
            .collect::<Result<_, _>>()
            .map_err(self.sqlite())
    }

    /// How many records of each [`HEALTH_ACTIONS`] action the store holds.
    pub fn event_counts(&self) -> Result<Vec<(String, u64)>> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT action, count(*) FROM store_events GROUP BY action ORDER BY action",
            )
            .map_err(self.sqlite())?;
        statement
            .query_map([], |row| Ok((row.get(0)?, to_u64(row.get(1)?))))
            .map_err(self.sqlite())?
            .collect::<Result<_, _>>()
            .map_err(self.sqlite())
    }

    /// The newest records (at most `limit`) of the given health actions.
    pub fn events(&self, actions: &[&str], limit: usize) -> Result<Vec<StoreEvent>> {
        let placeholders = (1..=actions.len())
            .map(|n| format!("?{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM store_events \
             WHERE action IN ({placeholders}) ORDER BY time DESC, sequence DESC LIMIT {limit}"
        );
        let mut statement = self.connection.prepare(&sql).map_err(self.sqlite())?;
        statement
            .query_map(rusqlite::params_from_iter(actions.iter()), store_event)
            .map_err(self.sqlite())?
            .collect::<Result<_, _>>()
            .map_err(self.sqlite())
    }

    /// The `store_events` of one session (interrupts, signals, gaps, …), in record order.
    pub fn session_events(
        &self,
        store: &str,
        session_id: &str,
        user_id: &str,
    ) -> Result<Vec<StoreEvent>> {
        let mut statement = self
            .connection
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM store_events WHERE session_id = ?1 \
                 AND coalesce(user_id, '') = ?2 AND store = ?3 ORDER BY sequence"
            ))
            .map_err(self.sqlite())?;
        statement
            .query_map([session_id, user_id, store], store_event)
            .map_err(self.sqlite())?
            .collect::<Result<_, _>>()
            .map_err(self.sqlite())
    }

    /// The review marks on sessions with this `session_id`, oldest first.
    pub fn marks(&self, session_id: &str) -> Result<Vec<MarkRow>> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT sequence, session_id, reviewer, mark, note, time FROM marks \
                 WHERE session_id = ?1 ORDER BY sequence",
            )
            .map_err(self.sqlite())?;
        statement
            .query_map([session_id], |row| {
                Ok(MarkRow {
                    sequence: to_u64(row.get(0)?),
                    session_id: row.get(1)?,
                    reviewer: row.get(2)?,
                    mark: row.get(3)?,
                    note: row.get(4)?,
                    time: row.get(5)?,
                })
            })
            .map_err(self.sqlite())?
            .collect::<Result<_, _>>()
            .map_err(self.sqlite())
    }

    /// The newest cells (at most `limit`) whose code contains `text`, with their
    /// sessions; `before`: the id of the last hit of the previous page.
    pub fn search_code(
        &self,
        text: &str,
        before: Option<i64>,
        limit: usize,
        visible: &Visibility,
    ) -> Result<Vec<SearchHit>> {
        if text.chars().count() < MIN_SEARCH_CHARS {
            return Err(IndexError::SearchTooShort);
        }
        // One FTS5 string: the text matches as it is, operators and all.
        let phrase = format!("\"{}\"", text.replace('"', "\"\""));
        let columns = cell_columns("c");
        let mut values: Vec<rusqlite::types::Value> = vec![
            phrase.into(),
            before.unwrap_or(i64::MAX).into(),
            to_i64(limit as u64).into(),
        ];
        // Under a filtered grant the hits are filtered before the limit, so that a page
        // is full whenever there are more visible hits.
        let hits = match visible {
            Visibility::All => "SELECT rowid FROM code_search WHERE code_search MATCH ?1 \
                                AND rowid < ?2 ORDER BY rowid DESC LIMIT ?3"
                .to_owned(),
            Visibility::HubUsers(_) => format!(
                "SELECT code_search.rowid AS rowid FROM code_search \
                 JOIN cells AS fc ON fc.id = code_search.rowid \
                 JOIN sessions AS s ON s.id = fc.session \
                 WHERE code_search MATCH ?1 AND code_search.rowid < ?2{} \
                 ORDER BY code_search.rowid DESC LIMIT ?3",
                visible.clause("s.", &mut values)
            ),
        };
        let sql = format!(
            "SELECT {columns}, s.session_id, s.user, s.notebook
             FROM ({hits}) AS hit
             JOIN cells AS c ON c.id = hit.rowid JOIN sessions AS s ON s.id = c.session
             ORDER BY c.id DESC"
        );
        let mut statement = self
            .connection
            .prepare_cached(&sql)
            .map_err(self.sqlite())?;
        statement
            .query_map(rusqlite::params_from_iter(values), |row| {
                Ok(SearchHit {
                    cell: cell_row(row)?,
                    session_id: row.get(CELL_COLUMN_COUNT)?,
                    user: row.get(CELL_COLUMN_COUNT + 1)?,
                    notebook: row.get(CELL_COLUMN_COUNT + 2)?,
                })
            })
            .map_err(self.sqlite())?
            .collect::<Result<_, _>>()
            .map_err(self.sqlite())
    }
}

/// The state of a session without `session_end`, as [`crate::review::sessions`] says it.
fn open_state(alive: Option<bool>, has_start: bool) -> (SessionState, Option<&'static str>) {
    match alive {
        Some(true) => (SessionState::Running, None),
        Some(false) => (
            SessionState::EndedAbnormally,
            Some("no session_end: the proxy is gone (killed?)"),
        ),
        None if has_start => (
            SessionState::NoEndRecorded,
            Some("no session_end, and its proxy runs on another host"),
        ),
        None => (
            SessionState::NoEndRecorded,
            Some("neither session_start nor session_end recorded"),
        ),
    }
}

/// Takes the stored `line` of record `sequence` into `batch`: most records through
/// [`LeanRecord`] alone; those that need more fields (marks, health events, a session's
/// start and end), and a line the lean parse cannot read, through a [`SlimRecord`] too.
fn index_record(
    batch: &mut Batch,
    transaction: &Transaction<'_>,
    path: &Path,
    sequence: u64,
    line: &[u8],
) -> Result<()> {
    let sqlite = |source| IndexError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let lean = serde_json::from_slice::<LeanRecord<'_>>(line).ok();
    if let Some(lean) = &lean
        && !needs_whole_record(lean.action())
    {
        return batch.add(transaction, sequence, lean, None).map_err(sqlite);
    }
    let unreadable = |e: serde_json::Error| IndexError::Record {
        sequence,
        detail: e.to_string(),
    };
    // A health event's summary reads its own fields (`collector.*`, or `jupyter.*` beyond
    // what sessions need): those records are few and small, so they are read whole.
    let value = if lean.is_some_and(|lean| HEALTH_ACTIONS.contains(&lean.action())) {
        serde_json::from_slice::<Value>(line).map_err(unreadable)?
    } else {
        let SlimRecord(value) = serde_json::from_slice(line).map_err(unreadable)?;
        value
    };
    batch
        .add(
            transaction,
            sequence,
            &LeanRecord::of_value(&value),
            Some(&value),
        )
        .map_err(sqlite)
}

/// Whether [`Batch::add`] reads more of a record of `action` than a [`LeanRecord`] holds.
fn needs_whole_record(action: &str) -> bool {
    action == REVIEW_MARK
        || HEALTH_ACTIONS.contains(&action)
        || matches!(
            Action::from_name(action),
            Some(Action::SessionStart | Action::SessionEnd)
        )
}

/// Whether the index reads this top-level field of a record. The others (the chain)
/// are skipped while parsing, as are the `jupyter.*` fields it does not read (the
/// message as it came, outputs' data): most of a record's bytes.
fn is_used_field(key: &str) -> bool {
    matches!(
        key,
        "@timestamp" | "event" | "host" | "jupyter" | "process" | "user" | "review"
    )
}

/// Whether the index reads this `jupyter.*` field (those of `session_start` and
/// `session_end` included).
fn is_used_jupyter_field(key: &str) -> bool {
    matches!(
        key,
        "session_id"
            | "kernel_id"
            | "kernel_name"
            | "msg_id"
            | "parent_msg_id"
            | "resent"
            | "code"
            | "execution_count"
            | "status"
            | "duration_ms"
            | "notebook_path"
            | "hub_user"
            | "exit_code"
            | "exit_signal"
            | "orphaned"
    )
}

/// A record with only the fields the index reads ([`is_used_field`], [`is_used_jupyter_field`]).
struct SlimRecord(Value);

/// The `jupyter` object of a [`SlimRecord`].
struct SlimJupyter(serde_json::Map<String, Value>);

impl<'de> serde::Deserialize<'de> for SlimRecord {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = SlimRecord;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a record (a JSON object)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SlimRecord, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if !is_used_field(&key) {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    }
                    let value = if key == "jupyter" {
                        Value::Object(map.next_value::<SlimJupyter>()?.0)
                    } else {
                        map.next_value::<Value>()?
                    };
                    out.insert(key.into_owned(), value);
                }
                Ok(SlimRecord(Value::Object(out)))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

impl<'de> serde::Deserialize<'de> for SlimJupyter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = SlimJupyter;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the jupyter object of a record")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SlimJupyter, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if is_used_jupyter_field(&key) {
                        out.insert(key.into_owned(), map.next_value::<Value>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(SlimJupyter(out))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

const EVENT_COLUMNS: &str =
    "sequence, action, time, host, pid, summary, session_id, user_id, store";

fn store_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoreEvent> {
    Ok(StoreEvent {
        sequence: to_u64(row.get(0)?),
        action: row.get(1)?,
        time: row.get(2)?,
        host: row.get(3)?,
        pid: row.get::<_, Option<i64>>(4)?.map(to_u64),
        summary: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
        session_id: row.get(6)?,
        user_id: row.get(7)?,
        store: row.get(8)?,
    })
}

/// The action of the console's records of a reviewer's mark.
pub const REVIEW_MARK: &str = "review_mark";

/// A `review_mark` record as a mark (`review.session_id`, `review.mark`, …).
fn mark_of(sequence: u64, value: &Value) -> Option<MarkRow> {
    let review = |path: &[&str]| {
        let mut full = vec!["review"];
        full.extend_from_slice(path);
        fields::str_at(value, &full).map(str::to_owned)
    };
    let mark = review(&["mark"]).filter(|mark| matches!(mark.as_str(), "reviewed" | "flagged"))?;
    Some(MarkRow {
        sequence,
        session_id: review(&["session_id"])?,
        reviewer: review(&["reviewer", "name"]).unwrap_or_default(),
        mark,
        note: review(&["note"]).filter(|note| !note.is_empty()),
        time: fields::str_at(value, &["@timestamp"]).map(str::to_owned),
    })
}

/// `chain.hash` of a stored line.
fn chain_hash_of(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Chain {
        hash: String,
    }
    #[derive(serde::Deserialize)]
    struct Line {
        chain: Chain,
    }
    serde_json::from_slice::<Line>(line)
        .ok()
        .map(|line| line.chain.hash)
}

/// The latest mark of a session row's `session_id`.
const LATEST_MARK: &str = "(SELECT mark FROM marks WHERE marks.session_id = sessions.session_id \
    ORDER BY marks.time DESC, marks.sequence DESC LIMIT 1)";

const SESSION_COLUMNS: &str = "id, session_id, user, verified_by, user_id, host, kernel_id, \
    kernel_name, notebook, hub_user, start, end, state, end_reason, cells, errors, refused, \
    records, first_sequence, last_sequence, last_record, proxy_pid, start_ms, \
    (SELECT mark FROM marks WHERE marks.session_id = sessions.session_id \
    ORDER BY marks.time DESC, marks.sequence DESC LIMIT 1), store";

fn session_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(SessionRow, i64)> {
    Ok((
        SessionRow {
            id: row.get(0)?,
            session_id: row.get(1)?,
            user: row.get(2)?,
            verified_by: row.get(3)?,
            user_id: row.get(4)?,
            host: row.get(5)?,
            kernel_id: row.get(6)?,
            kernel_name: row.get(7)?,
            notebook: row.get(8)?,
            hub_user: row.get(9)?,
            start: row.get(10)?,
            end: row.get(11)?,
            state: parse_state(&row.get::<_, String>(12)?),
            end_reason: row.get(13)?,
            cells: to_u64(row.get(14)?),
            errors: to_u64(row.get(15)?),
            refused: to_u64(row.get(16)?),
            records: to_u64(row.get(17)?),
            first_sequence: to_u64(row.get(18)?),
            last_sequence: to_u64(row.get(19)?),
            last_record: row.get(20)?,
            proxy_pid: row.get(21)?,
            mark: row.get(23)?,
            store: row.get(24)?,
        },
        row.get(22)?,
    ))
}

/// The most of a cell's code a page reads (characters); the length says how much more
/// there is. A notebook user's cell can be tens of megabytes: pages must not be.
pub const CODE_SHOWN_CHARS: u64 = 65_536;

/// The columns of a [`CellRow`], of the table named `table` (an alias, or `cells`).
fn cell_columns(table: &str) -> String {
    format!(
        "{table}.id, {table}.session, {table}.msg_id, {table}.execution_count, \
         substr({table}.code, 1, {CODE_SHOWN_CHARS}), {table}.status, {table}.failed, \
         {table}.refused, {table}.duration_ms, {table}.first_sequence, {table}.last_sequence, \
         {table}.requested_at, length({table}.code)"
    )
}
const CELL_COLUMN_COUNT: usize = 13;

fn cell_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CellRow> {
    Ok(CellRow {
        id: row.get(0)?,
        session: row.get(1)?,
        msg_id: row.get(2)?,
        execution_count: row.get::<_, Option<i64>>(3)?.map(to_u64),
        code: row.get(4)?,
        status: row.get(5)?,
        failed: row.get(6)?,
        refused: row.get(7)?,
        duration_ms: row.get(8)?,
        first_sequence: to_u64(row.get(9)?),
        last_sequence: to_u64(row.get(10)?),
        requested_at: row.get(11)?,
        code_chars: row.get::<_, Option<i64>>(12)?.map_or(0, to_u64),
    })
}

impl Batch {
    /// The session of `key`, from this batch or the index, or a new one.
    fn session(
        &mut self,
        transaction: &Transaction<'_>,
        key: &SessionKey,
        sequence: u64,
    ) -> rusqlite::Result<&mut OpenSession> {
        // Looked up before inserting: most records find their session, and the key is
        // cloned only for a new one.
        if !self.sessions.contains_key(key) {
            let known = load_session(transaction, &self.store, key)?;
            self.sessions.insert(
                key.clone(),
                known.unwrap_or_else(|| OpenSession::new(key, sequence)),
            );
        }
        self.sessions
            .get_mut(key)
            .ok_or(rusqlite::Error::QueryReturnedNoRows)
    }

    /// The cell of request `msg_id` in session `key`, from this batch or the index; a
    /// new one when `create`.
    fn cell(
        &mut self,
        transaction: &Transaction<'_>,
        key: &SessionKey,
        session_id: Option<i64>,
        msg_id: &str,
        sequence: u64,
        create: bool,
    ) -> rusqlite::Result<Option<&mut Cell>> {
        if !self.cells.contains_key(key) {
            self.cells.insert(key.clone(), HashMap::new());
        }
        let Some(cells) = self.cells.get_mut(key) else {
            return Ok(None);
        };
        if !cells.contains_key(msg_id) {
            let known = match session_id {
                Some(session) => load_cell(transaction, session, msg_id)?,
                None => None,
            };
            match known {
                Some(cell) => cells.insert(msg_id.to_owned(), cell),
                None if create => cells.insert(msg_id.to_owned(), Cell::new(sequence)),
                None => return Ok(None),
            };
        }
        let Some(cell) = cells.get_mut(msg_id) else {
            return Ok(None);
        };
        cell.first_sequence = cell.first_sequence.min(sequence);
        cell.last_sequence = cell.last_sequence.max(sequence);
        Ok(Some(cell))
    }

    /// Takes one record into the batch: `record`, and `whole` for the records that
    /// [`needs_whole_record`] names.
    fn add(
        &mut self,
        transaction: &Transaction<'_>,
        sequence: u64,
        record: &LeanRecord<'_>,
        whole: Option<&Value>,
    ) -> rusqlite::Result<()> {
        let action = record.action();
        if action == REVIEW_MARK {
            if let Some(mark) = whole.and_then(|value| mark_of(sequence, value)) {
                self.marks.push(mark);
            }
            return Ok(());
        }
        if let Some(value) = whole
            && HEALTH_ACTIONS.contains(&action)
        {
            self.events.push(StoreEvent {
                sequence,
                action: action.to_owned(),
                time: owned(record.timestamp.as_str()),
                host: owned(record.host.0.name.as_str()),
                pid: record.process.0.pid.as_u64(),
                summary: crate::review::log::summary(value),
                session_id: owned(record.jupyter.0.session_id.as_str()),
                user_id: owned(record.os_user_id()),
                store: self.store.clone(),
            });
        }
        let Some(key) = record.session_key() else {
            return Ok(());
        };
        let timestamp = record.timestamp.as_str();
        let jupyter = &record.jupyter.0;
        let host = record.host.0.name.as_str();
        let session = self.session(transaction, &key, sequence)?;
        session.records += 1;
        session.first_sequence = session.first_sequence.min(sequence);
        session.last_sequence = session.last_sequence.max(sequence);
        match (&mut session.last_record, timestamp) {
            // The string of the previous record is reused: most records change it.
            (Some(last), Some(timestamp)) => {
                last.clear();
                last.push_str(timestamp);
            }
            (last, timestamp) => *last = owned(timestamp),
        }
        if session.start.is_none() {
            session.start = owned(timestamp);
            session.start_ms = timestamp.and_then(fields::parse_rfc3339).map_or(0, millis);
        }
        if session.user.is_none() {
            session.user = owned(record.user.0.name.as_str());
        }
        let verified_by = record.user.0.verified_by.as_str().unwrap_or("peercred");
        match &session.verified_by {
            None => session.verified_by = Some(verified_by.to_owned()),
            Some(known) if known != verified_by && known != "mixed" => {
                session.verified_by = Some("mixed".to_owned());
            }
            Some(_) => {}
        }
        if session.host.is_none() {
            session.host = owned(host);
        }
        if session.kernel_id.is_none() {
            session.kernel_id = owned(jupyter.kernel_id.as_str());
        }
        if session.kernel_name.is_none() {
            session.kernel_name = owned(jupyter.kernel_name.as_str());
        }
        let session_id = session.id;
        let code = || {
            jupyter
                .code
                .as_ref()
                .and_then(fields::stored_text)
                .map(std::borrow::Cow::into_owned)
        };
        match (Action::from_name(action), action) {
            (Some(Action::SessionStart), _) if !session.has_start => {
                let start: crate::audit::events::SessionStart =
                    whole.map(fields::event).unwrap_or_default();
                session.has_start = true;
                session.start = owned(timestamp);
                session.start_ms = timestamp.and_then(fields::parse_rfc3339).map_or(0, millis);
                session.host = owned(host);
                session.notebook = start.notebook_path;
                session.hub_user = start.hub_user;
                session.proxy_pid = record
                    .process
                    .0
                    .pid
                    .as_u64()
                    .and_then(|pid| u32::try_from(pid).ok());
            }
            (Some(Action::SessionEnd), _) => {
                session.ended = true;
                session.end = owned(timestamp);
                session.end_reason = whole.and_then(end_description);
            }
            (Some(Action::ExecutionRefused), _) => {
                if let Some(msg_id) = jupyter.msg_id.as_str() {
                    let code = code();
                    let Some(cell) =
                        self.cell(transaction, &key, session_id, msg_id, sequence, true)?
                    else {
                        return Ok(());
                    };
                    cell.refused = true;
                    cell.status = Some("refused".to_owned());
                    if cell.code.is_none() && code.is_some() {
                        cell.code = code;
                        cell.code_is_new = true;
                    }
                }
            }
            (Some(_), _) => {}
            (None, "execute_request") => {
                if let Some(msg_id) = jupyter.msg_id.as_str() {
                    let Some(cell) =
                        self.cell(transaction, &key, session_id, msg_id, sequence, true)?
                    else {
                        return Ok(());
                    };
                    // The proxy sends a request again after a reconnection: one cell.
                    if jupyter.resent.is_true() && cell.requests > 0 {
                        return Ok(());
                    }
                    cell.requests += 1;
                    if cell.requested_at.is_none() {
                        cell.requested_at = owned(timestamp);
                    }
                    if cell.code.is_none()
                        && let Some(code) = code()
                    {
                        cell.code = Some(code);
                        cell.code_is_new = true;
                    }
                }
            }
            (None, "execute_input") => {
                if let (Some(parent), Some(count)) = (
                    jupyter.parent_msg_id.as_str(),
                    jupyter.execution_count.as_u64(),
                ) {
                    let Some(cell) =
                        self.cell(transaction, &key, session_id, parent, sequence, true)?
                    else {
                        return Ok(());
                    };
                    cell.execution_count = Some(count);
                }
            }
            (None, "execute_reply") => {
                if let Some(parent) = jupyter.parent_msg_id.as_str() {
                    let count = jupyter.execution_count.as_u64();
                    let duration = jupyter.duration_ms.as_f64();
                    let status = jupyter.status.as_str().map(str::to_owned);
                    let Some(cell) =
                        self.cell(transaction, &key, session_id, parent, sequence, true)?
                    else {
                        return Ok(());
                    };
                    if cell.execution_count.is_none() {
                        cell.execution_count = count;
                    }
                    if status.as_deref() == Some("error") {
                        cell.failed = true;
                    }
                    if !cell.refused {
                        cell.status = status.or(cell.status.take());
                    }
                    cell.duration_ms = duration.or(cell.duration_ms);
                }
            }
            (None, "error") => {
                if let Some(parent) = jupyter.parent_msg_id.as_str() {
                    let Some(cell) =
                        self.cell(transaction, &key, session_id, parent, sequence, true)?
                    else {
                        return Ok(());
                    };
                    cell.failed = true;
                }
            }
            (None, _) => {
                // Any other output of a request makes it last longer.
                if let Some(parent) = jupyter.parent_msg_id.as_str() {
                    self.cell(transaction, &key, session_id, parent, sequence, false)?;
                }
            }
        }
        Ok(())
    }

    /// Writes the batch's sessions and cells, and the counts of the sessions it touched.
    fn write(self, transaction: &Transaction<'_>) -> rusqlite::Result<()> {
        {
            let mut insert = transaction.prepare_cached(
                "INSERT OR REPLACE INTO marks (sequence, session_id, reviewer, mark, note, time, \
                 store) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut event = transaction.prepare_cached(
                "INSERT OR REPLACE INTO store_events (sequence, action, time, host, pid, summary, \
                 session_id, user_id, store) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for row in &self.events {
                event.execute(params![
                    to_i64(row.sequence),
                    row.action,
                    row.time,
                    row.host,
                    row.pid.map(to_i64),
                    row.summary,
                    row.session_id,
                    row.user_id,
                    self.store,
                ])?;
            }
            for mark in &self.marks {
                insert.execute(params![
                    to_i64(mark.sequence),
                    mark.session_id,
                    mark.reviewer,
                    mark.mark,
                    mark.note,
                    mark.time,
                    self.store,
                ])?;
            }
        }
        let mut ids: HashMap<SessionKey, i64> = HashMap::with_capacity(self.sessions.len());
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO sessions (session_id, user_id, user, verified_by, host, kernel_id, \
                 kernel_name, notebook, hub_user, start, start_ms, has_start, end, ended, \
                 end_reason, state, cells, errors, refused, records, first_sequence, \
                 last_sequence, last_record, proxy_pid, store) VALUES (?1, ?2, ?3, ?4, ?5, ?6, \
                 ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, 0, 0, 0, ?17, ?18, ?19, ?20, \
                 ?21, ?22)",
            )?;
            let mut update = transaction.prepare_cached(
                "UPDATE sessions SET user = ?2, verified_by = ?3, host = ?4, kernel_id = ?5, \
                 kernel_name = ?6, notebook = ?7, hub_user = ?8, start = ?9, start_ms = ?10, \
                 has_start = ?11, end = ?12, ended = ?13, end_reason = ?14, state = ?15, \
                 records = ?16, first_sequence = ?17, last_sequence = ?18, last_record = ?19, \
                 proxy_pid = ?20 WHERE id = ?1",
            )?;
            // In the order of their first records, so that ids follow the store.
            let mut sessions: Vec<OpenSession> = self.sessions.into_values().collect();
            sessions.sort_unstable_by_key(|session| session.first_sequence);
            for session in sessions {
                let state = match (session.ended, session.end_reason.is_some()) {
                    (true, false) => SessionState::Ended,
                    (true, true) => SessionState::EndedAbnormally,
                    // Decided by the liveness check at the end of the catch-up.
                    (false, _) => SessionState::NoEndRecorded,
                };
                let (records, first, last) = (
                    to_i64(session.records),
                    to_i64(session.first_sequence),
                    to_i64(session.last_sequence),
                );
                // The facts both statements write, in their parameters' order.
                let facts: [&dyn rusqlite::ToSql; 19] = [
                    &session.user,
                    &session.verified_by,
                    &session.host,
                    &session.kernel_id,
                    &session.kernel_name,
                    &session.notebook,
                    &session.hub_user,
                    &session.start,
                    &session.start_ms,
                    &session.has_start,
                    &session.end,
                    &session.ended,
                    &session.end_reason,
                    &state_name(state),
                    &records,
                    &first,
                    &last,
                    &session.last_record,
                    &session.proxy_pid,
                ];
                match session.id {
                    Some(id) => {
                        let row: &dyn rusqlite::ToSql = &id;
                        update.execute(rusqlite::params_from_iter(
                            std::iter::once(row).chain(facts),
                        ))?;
                        ids.insert(session.key, id);
                    }
                    None => {
                        let key: [&dyn rusqlite::ToSql; 2] =
                            [&session.key.session_id, &session.key.user_id];
                        let store: &dyn rusqlite::ToSql = &self.store;
                        insert.execute(rusqlite::params_from_iter(
                            key.into_iter().chain(facts).chain(std::iter::once(store)),
                        ))?;
                        ids.insert(session.key, transaction.last_insert_rowid());
                    }
                }
            }
        }
        let mut insert = transaction.prepare_cached(
            "INSERT INTO cells (session, msg_id, requests, execution_count, code, status, \
             failed, refused, duration_ms, first_sequence, last_sequence, requested_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        let mut update = transaction.prepare_cached(
            "UPDATE cells SET requests = ?2, execution_count = ?3, code = ?4, status = ?5, \
             failed = ?6, refused = ?7, duration_ms = ?8, first_sequence = ?9, \
             last_sequence = ?10, requested_at = ?11 WHERE id = ?1",
        )?;
        let mut search =
            transaction.prepare_cached("INSERT INTO code_search (rowid, code) VALUES (?1, ?2)")?;
        let mut cells: Vec<((SessionKey, String), Cell)> = self
            .cells
            .into_iter()
            .flat_map(|(key, cells)| {
                cells
                    .into_iter()
                    .map(move |(msg_id, cell)| ((key.clone(), msg_id), cell))
            })
            .collect();
        cells.sort_unstable_by_key(|(_, cell)| cell.first_sequence);
        for ((key, msg_id), cell) in cells {
            let Some(&session) = ids.get(&key) else {
                continue;
            };
            let count = cell.execution_count.map(to_i64);
            let id = match cell.id {
                Some(id) => {
                    update.execute(params![
                        id,
                        to_i64(cell.requests),
                        count,
                        cell.code,
                        cell.status,
                        cell.failed,
                        cell.refused,
                        cell.duration_ms,
                        to_i64(cell.first_sequence),
                        to_i64(cell.last_sequence),
                        cell.requested_at,
                    ])?;
                    id
                }
                None => {
                    insert.execute(params![
                        session,
                        msg_id,
                        to_i64(cell.requests),
                        count,
                        cell.code,
                        cell.status,
                        cell.failed,
                        cell.refused,
                        cell.duration_ms,
                        to_i64(cell.first_sequence),
                        to_i64(cell.last_sequence),
                        cell.requested_at,
                    ])?;
                    transaction.last_insert_rowid()
                }
            };
            if cell.code_is_new
                && let Some(code) = &cell.code
            {
                search.execute(params![id, code])?;
            }
        }
        let mut counts = transaction.prepare_cached(
            "UPDATE sessions SET (cells, errors, refused) = (SELECT \
             coalesce(sum(CASE WHEN refused THEN 0 ELSE requests END), 0), \
             coalesce(sum(failed), 0), \
             coalesce(sum(refused), 0) FROM cells WHERE session = ?1) WHERE id = ?1",
        )?;
        for id in ids.values() {
            counts.execute([id])?;
        }
        Ok(())
    }
}

impl OpenSession {
    fn new(key: &SessionKey, sequence: u64) -> Self {
        OpenSession {
            id: None,
            key: key.clone(),
            user: None,
            verified_by: None,
            host: None,
            kernel_id: None,
            kernel_name: None,
            notebook: None,
            hub_user: None,
            start: None,
            start_ms: 0,
            has_start: false,
            end: None,
            ended: false,
            end_reason: None,
            records: 0,
            first_sequence: sequence,
            last_sequence: sequence,
            last_record: None,
            proxy_pid: None,
        }
    }
}

/// The indexed session of `key`, if there is one.
fn load_session(
    transaction: &Transaction<'_>,
    store: &str,
    key: &SessionKey,
) -> rusqlite::Result<Option<OpenSession>> {
    transaction
        .prepare_cached(
            "SELECT id, user, verified_by, host, kernel_id, kernel_name, notebook, \
             hub_user, start, start_ms, has_start, end, ended, end_reason, records, \
             first_sequence, last_sequence, last_record, proxy_pid \
             FROM sessions WHERE session_id = ?1 AND user_id = ?2 AND store = ?3",
        )?
        .query_row(params![key.session_id, key.user_id, store], |row| {
            Ok(OpenSession {
                id: row.get(0)?,
                key: key.clone(),
                user: row.get(1)?,
                verified_by: row.get(2)?,
                host: row.get(3)?,
                kernel_id: row.get(4)?,
                kernel_name: row.get(5)?,
                notebook: row.get(6)?,
                hub_user: row.get(7)?,
                start: row.get(8)?,
                start_ms: row.get(9)?,
                has_start: row.get(10)?,
                end: row.get(11)?,
                ended: row.get(12)?,
                end_reason: row.get(13)?,
                records: to_u64(row.get(14)?),
                first_sequence: to_u64(row.get(15)?),
                last_sequence: to_u64(row.get(16)?),
                last_record: row.get(17)?,
                proxy_pid: row.get(18)?,
            })
        })
        .optional()
}

/// The indexed cell of request `msg_id` in `session`, if there is one.
fn load_cell(
    transaction: &Transaction<'_>,
    session: i64,
    msg_id: &str,
) -> rusqlite::Result<Option<Cell>> {
    transaction
        .prepare_cached(
            "SELECT id, requests, execution_count, code, status, failed, refused, \
             duration_ms, first_sequence, last_sequence, requested_at \
             FROM cells WHERE session = ?1 AND msg_id = ?2",
        )?
        .query_row(params![session, msg_id], |row| {
            Ok(Cell {
                id: row.get(0)?,
                requests: to_u64(row.get(1)?),
                execution_count: row.get::<_, Option<i64>>(2)?.map(to_u64),
                code: row.get(3)?,
                code_is_new: false,
                status: row.get(4)?,
                failed: row.get(5)?,
                refused: row.get(6)?,
                duration_ms: row.get(7)?,
                first_sequence: to_u64(row.get(8)?),
                last_sequence: to_u64(row.get(9)?),
                requested_at: row.get(10)?,
            })
        })
        .optional()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::sessions::SessionIndex;
    use crate::store::{Reader, StoreConfig, StoreHandle};
    use serde_json::{Map, json};

    /// Whether every proxy is alive, as the test says.
    struct Fixed(Option<bool>);

    impl Liveness for Fixed {
        fn alive(&self, _: &str, _: u32, _: Option<OffsetDateTime>) -> Option<bool> {
            self.0
        }
    }

    fn record(
        session: &str,
        user: &str,
        second: u32,
        action: &str,
        jupyter: Value,
    ) -> Map<String, Value> {
        let time = format!("2026-05-01T12:{:02}:{:02}Z", second / 60, second % 60);
        let mut fields = jupyter;
        fields["session_id"] = json!(session);
        fields["kernel_name"] = json!("python3");
        fields["kernel_id"] = json!(format!("k-{session}"));
        let value = json!({
            "@timestamp": time,
            "event": {"action": action, "kind": "event"},
            "host": {"name": "node-1"},
            "jupyter": fields,
            "process": {"pid": 4242, "user": {"id": format!("uid-{user}")}},
            "user": {"name": user, "verified_by": "jupyterhub"},
        });
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    /// A session of `user` from `second` on: start, a cell that prints, a cell that
    /// fails, a refused request, and (when `end`) its end.
    fn session_records(
        session: &str,
        user: &str,
        second: u32,
        end: bool,
    ) -> Vec<Map<String, Value>> {
        let s = second;
        let mut records = vec![
            record(
                session,
                user,
                s,
                "session_start",
                json!({"notebook_path": format!("work/{session}.ipynb")}),
            ),
            record(
                session,
                user,
                s + 1,
                "execute_request",
                json!({"msg_id": format!("{session}-r1"), "code": "import pandas as pd\ndf = pd.read_csv('sales.csv')"}),
            ),
            record(
                session,
                user,
                s + 2,
                "execute_input",
                json!({"parent_msg_id": format!("{session}-r1"), "execution_count": 1}),
            ),
            record(
                session,
                user,
                s + 3,
                "stream",
                json!({"parent_msg_id": format!("{session}-r1"), "text": "ok\n"}),
            ),
            record(
                session,
                user,
                s + 4,
                "execute_reply",
                json!({"parent_msg_id": format!("{session}-r1"), "status": "ok", "execution_count": 1, "duration_ms": 12.5}),
            ),
            record(
                session,
                user,
                s + 5,
                "execute_request",
                json!({"msg_id": format!("{session}-r2"), "code": "clean(df)"}),
            ),
            // The proxy sent the request again after a reconnection: still one cell.
            record(
                session,
                user,
                s + 6,
                "execute_request",
                json!({"msg_id": format!("{session}-r2"), "code": "clean(df)", "resent": true}),
            ),
            record(
                session,
                user,
                s + 7,
                "error",
                json!({"parent_msg_id": format!("{session}-r2"), "ename": "KeyError"}),
            ),
            record(
                session,
                user,
                s + 8,
                "execute_reply",
                json!({"parent_msg_id": format!("{session}-r2"), "status": "error", "execution_count": 2}),
            ),
            record(
                session,
                user,
                s + 9,
                "execute_request",
                json!({"msg_id": format!("{session}-r3"), "code": "secret()"}),
            ),
            record(
                session,
                user,
                s + 10,
                "execution_refused",
                json!({"msg_id": format!("{session}-r3")}),
            ),
        ];
        if end {
            records.push(record(
                session,
                user,
                s + 11,
                "session_end",
                json!({"exit_code": 0, "exit_signal": null, "orphaned": false}),
            ));
        }
        records
    }

    fn append(store: &StoreHandle, records: Vec<Map<String, Value>>) {
        for record in records {
            store.append_blocking(record).unwrap();
        }
    }

    fn new_store(dir: &Path) -> StoreHandle {
        store::open(StoreConfig::new(dir)).unwrap().0
    }

    /// The sessions as `jupyter-audit sessions` finds them.
    fn reviewed_sessions(
        dir: &Path,
        liveness: &dyn Liveness,
    ) -> Vec<crate::review::sessions::Session> {
        let mut sessions = SessionIndex::new();
        for record in Reader::open(dir).unwrap() {
            sessions.add(&record.unwrap(), true);
        }
        sessions.finish(liveness)
    }

    /// A console record of a mark, as the trail writes it (no jupyter session of its own).
    fn mark_record(session: &str, mark: &str, note: &str) -> Map<String, Value> {
        let value = json!({
            "@timestamp": "2026-05-01T13:00:00Z",
            "event": {"action": "review_mark", "kind": "event", "outcome": "success"},
            "process": {"pid": 7, "user": {"id": "uid-console"}},
            "review": {"reviewer": {"name": "auditor", "scopes": ["custom:jupyter-audit:read"]},
                       "view": "mark", "session_id": session, "mark": mark, "note": note},
        });
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    /// Stores forwarded to a central trail, as PostgreSQL hands them to the index: each
    /// store id with its store directory's lines.
    struct Forwarded {
        stores: Vec<(String, PathBuf)>,
        /// How many `after` reads were made, to tell that a catch-up reads only what is new.
        reads: u64,
    }

    impl Forwarded {
        fn lines(&self, store: &str) -> Vec<ForwardedRow> {
            let dir = &self.stores.iter().find(|(id, _)| id == store).unwrap().1;
            Reader::open(dir)
                .unwrap()
                .map(|record| {
                    let record = record.unwrap();
                    ForwardedRow {
                        sequence: record.sequence,
                        line: record.raw,
                    }
                })
                .collect()
        }
    }

    impl ForwardedRecords for Forwarded {
        fn stores(&mut self) -> Result<Vec<(String, u64)>> {
            Ok(self
                .stores
                .iter()
                .map(|(id, _)| {
                    (
                        id.clone(),
                        self.lines(id).last().map_or(0, |row| row.sequence),
                    )
                })
                .collect())
        }
        fn after(&mut self, store: &str, after: u64, limit: usize) -> Result<Vec<ForwardedRow>> {
            self.reads += 1;
            Ok(self
                .lines(store)
                .into_iter()
                .filter(|row| row.sequence > after)
                .take(limit)
                .collect())
        }
        fn line_at(&mut self, store: &str, sequence: u64) -> Result<Option<String>> {
            Ok(self
                .lines(store)
                .into_iter()
                .find(|row| row.sequence == sequence)
                .map(|row| row.line))
        }
    }

    #[test]
    fn forwarded_stores_are_indexed_apart_and_incrementally() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
        let (store_a, store_b) = (new_store(&dir_a), new_store(&dir_b));
        // Two hosts, the same session id and uid, the same sequences: two sessions.
        append(&store_a, session_records("s1", "alice", 0, true));
        append(&store_b, session_records("s1", "alice", 50, false));
        append(&store_b, vec![mark_record("s1", "flagged", "two hosts")]);
        let mut gap = record("s1", "alice", 90, "audit_gap", json!({}));
        gap["jupyter"]["reason"] = json!("the collector was down");
        gap["jupyter"]["lost_records"] = json!(3);
        append(&store_b, vec![gap]);
        let (id_a, id_b) = (
            store::store_id(&dir_a).unwrap().to_string(),
            store::store_id(&dir_b).unwrap().to_string(),
        );
        let mut forwarded = Forwarded {
            stores: vec![(id_a.clone(), dir_a.clone()), (id_b.clone(), dir_b.clone())],
            reads: 0,
        };
        let path = tmp.path().join("index.sqlite");
        let mut index = Index::open(&path).unwrap();
        let done = index
            .catch_up_forwarded(&mut forwarded, &Fixed(None))
            .unwrap();
        let records_a = forwarded.lines(&id_a).len() as u64;
        let records_b = forwarded.lines(&id_b).len() as u64;
        assert_eq!(done.records, records_a + records_b);
        assert_eq!(done.last_sequence, records_a + records_b);
        assert_eq!(done.stored, Some(records_a + records_b));
        let mut sessions = all_sessions(&index);
        sessions.sort_by(|x, y| x.store.cmp(&y.store));
        let mut expected = vec![id_a.clone(), id_b.clone()];
        expected.sort();
        assert_eq!(
            sessions.iter().map(|s| s.store.clone()).collect::<Vec<_>>(),
            expected
        );
        let on_a = sessions.iter().find(|s| s.store == id_a).unwrap();
        let on_b = sessions.iter().find(|s| s.store == id_b).unwrap();
        assert_eq!(
            (on_a.session_id.as_str(), on_b.session_id.as_str()),
            ("s1", "s1")
        );
        assert_eq!(on_a.state, SessionState::Ended);
        assert_eq!(on_b.state, SessionState::NoEndRecorded);
        assert_eq!((on_a.cells, on_a.errors, on_a.refused), (2, 1, 1));
        assert_eq!(index.cells(on_b.id).unwrap().len(), 3);
        // The gap is told in its own store's session only.
        assert_eq!(
            index
                .session_events(&id_b, "s1", "uid-alice")
                .unwrap()
                .len(),
            1
        );
        assert!(
            index
                .session_events(&id_a, "s1", "uid-alice")
                .unwrap()
                .is_empty()
        );
        assert_eq!(on_b.mark.as_deref(), Some("flagged"));
        let hits = index
            .search_code("read_csv", None, 10, &Visibility::All)
            .unwrap();
        assert_eq!(hits.len(), 2);

        // Incremental: what came since, nothing read again.
        append(
            &store_b,
            vec![record(
                "s1",
                "alice",
                95,
                "session_end",
                json!({"exit_code": 0, "exit_signal": null, "orphaned": false}),
            )],
        );
        drop(index);
        let mut index = Index::open(&path).unwrap();
        let again = index
            .catch_up_forwarded(&mut forwarded, &Fixed(None))
            .unwrap();
        assert_eq!((again.records, again.rebuilt), (1, false));
        let on_b = index.session(on_b.id).unwrap().unwrap();
        assert_eq!(on_b.state, SessionState::Ended);
        // All of store b's records but the mark, and the end.
        assert_eq!(on_b.records, records_b - 1 + 1);

        // An index of a store directory is not taken for one of forwarded stores.
        let from_store = tmp.path().join("store-index.sqlite");
        let mut index = Index::open(&from_store).unwrap();
        index.catch_up(&dir_a, &Fixed(None)).unwrap();
        drop(index);
        let mut index = Index::open(&from_store).unwrap();
        assert!(
            index
                .catch_up_forwarded(&mut forwarded, &Fixed(None))
                .unwrap()
                .rebuilt
        );
        assert_eq!(all_sessions(&index).len(), 2);
    }

    #[test]
    fn review_marks_and_store_trouble_are_indexed_and_filter_the_sessions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let store = new_store(&dir);
        append(&store, session_records("s1", "alice", 0, true));
        append(&store, session_records("s2", "bob", 100, true));
        append(
            &store,
            vec![mark_record("s1", "flagged", "reads /etc/shadow")],
        );
        append(&store, vec![mark_record("s1", "reviewed", "")]);
        append(&store, vec![mark_record("s2", "bogus", "not a mark")]);
        let mut gap = record("s2", "bob", 200, "audit_gap", json!({}));
        gap["jupyter"]["reason"] = json!("the collector was down");
        gap["jupyter"]["lost_records"] = json!(3);
        append(&store, vec![gap]);
        let mut index = Index::open(&tmp.path().join("index.sqlite")).unwrap();
        index.catch_up(&dir, &Fixed(None)).unwrap();

        let marks = index.marks("s1").unwrap();
        let kinds: Vec<&str> = marks.iter().map(|mark| mark.mark.as_str()).collect();
        assert_eq!(kinds, ["flagged", "reviewed"]);
        assert_eq!(marks[0].reviewer, "auditor");
        assert_eq!(marks[0].note.as_deref(), Some("reads /etc/shadow"));
        assert!(
            index.marks("s2").unwrap().is_empty(),
            "an unknown mark is not one"
        );

        let with = |mark| {
            index
                .sessions(&SessionQuery {
                    mark: Some(mark),
                    limit: 10,
                    ..Default::default()
                })
                .unwrap()
                .sessions
                .into_iter()
                .map(|session| (session.session_id, session.mark))
                .collect::<Vec<_>>()
        };
        // The latest mark counts: s1 was flagged, then reviewed.
        assert_eq!(
            with(MarkFilter::Reviewed),
            [("s1".to_owned(), Some("reviewed".to_owned()))]
        );
        assert!(with(MarkFilter::Flagged).is_empty());
        assert_eq!(with(MarkFilter::Unmarked), [("s2".to_owned(), None)]);

        assert_eq!(index.event_counts().unwrap(), [("audit_gap".to_owned(), 1)]);
        let gaps = index.events(&["audit_gap"], 5).unwrap();
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].host.as_deref(), Some("node-1"));
        assert!(
            gaps[0].summary.starts_with("3 records lost")
                && gaps[0].summary.ends_with("the collector was down"),
            "the health page says what the event says: {}",
            gaps[0].summary
        );
        let in_session = index.session_events("", "s2", "uid-bob").unwrap();
        assert_eq!(in_session.len(), 1, "the gap is shown in its session");
        assert!(
            index
                .session_events("", "s2", "uid-alice")
                .unwrap()
                .is_empty()
        );
    }

    fn all_sessions(index: &Index) -> Vec<SessionRow> {
        let mut page = index
            .sessions(&SessionQuery {
                limit: 1000,
                ..Default::default()
            })
            .unwrap()
            .sessions;
        page.sort_by_key(|s| s.first_sequence);
        page
    }

    #[test]
    fn sessions_tell_what_the_sessions_command_tells_and_catch_up_is_incremental() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let store = new_store(&dir);
        append(&store, session_records("s1", "alice", 0, false));
        let mut index = Index::open(&tmp.path().join("index.sqlite")).unwrap();
        let first = index.catch_up(&dir, &Fixed(Some(true))).unwrap();
        assert_eq!(first.records, 11);
        assert!(!first.rebuilt);
        assert_eq!(all_sessions(&index)[0].state, SessionState::Running);

        // The session ends, another starts; the proxy of a session without end is gone.
        append(
            &store,
            vec![record(
                "s1",
                "alice",
                11,
                "session_end",
                json!({"exit_code": 0, "exit_signal": null, "orphaned": false}),
            )],
        );
        append(&store, session_records("s2", "bob", 100, false));
        let second = index.catch_up(&dir, &Fixed(Some(false))).unwrap();
        assert_eq!(second.records, 12, "only the new records are read");
        assert_eq!(second.last_sequence, index.last_sequence().unwrap());

        let same_as_reviewed = |index: &Index, liveness: &dyn Liveness| {
            let expected = reviewed_sessions(&dir, liveness);
            let indexed = all_sessions(index);
            assert_eq!(indexed.len(), expected.len());
            for (got, want) in indexed.iter().zip(&expected) {
                let mut got = serde_json::to_value(got).unwrap();
                got.as_object_mut().unwrap().remove("id");
                // Review marks are the console's, not the sessions command's.
                got.as_object_mut().unwrap().remove("mark");
                assert_eq!(got, serde_json::to_value(want).unwrap());
            }
            indexed
        };
        let indexed = same_as_reviewed(&index, &Fixed(Some(false)));
        assert_eq!(indexed.len(), 2);
        assert_eq!(
            (indexed[0].cells, indexed[0].errors, indexed[0].refused),
            (2, 1, 1)
        );
        assert_eq!(indexed[0].state, SessionState::Ended);
        assert_eq!(indexed[1].state, SessionState::EndedAbnormally);
        // Whether its proxy runs cannot be told (another host): said so, with why.
        append(
            &store,
            vec![record(
                "s2",
                "bob",
                120,
                "status",
                json!({"execution_state": "idle"}),
            )],
        );
        index.catch_up(&dir, &Fixed(None)).unwrap();
        let indexed = same_as_reviewed(&index, &Fixed(None));
        assert_eq!(indexed[1].state, SessionState::NoEndRecorded);
        store.shutdown_blocking().unwrap();
    }

    #[test]
    fn cells_come_in_order_with_code_counts_status_and_duration() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let store = new_store(&dir);
        let records = session_records("s1", "alice", 0, true);
        // Split the session over two catch-ups, in the middle of its second cell.
        let (early, late) = records.split_at(6);
        append(&store, early.to_vec());
        let mut index = Index::open(&tmp.path().join("index.sqlite")).unwrap();
        index.catch_up(&dir, &Fixed(None)).unwrap();
        append(&store, late.to_vec());
        index.catch_up(&dir, &Fixed(None)).unwrap();

        let session = &all_sessions(&index)[0];
        let cells = index.cells(session.id).unwrap();
        let summary: Vec<_> = cells
            .iter()
            .map(|c| {
                (
                    c.msg_id.as_str(),
                    c.execution_count,
                    c.status.as_deref(),
                    c.failed,
                    c.refused,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("s1-r1", Some(1), Some("ok"), false, false),
                ("s1-r2", Some(2), Some("error"), true, false),
                ("s1-r3", None, Some("refused"), false, true),
            ]
        );
        assert_eq!(
            cells[0].code.as_deref(),
            Some("import pandas as pd\ndf = pd.read_csv('sales.csv')")
        );
        assert_eq!(cells[0].duration_ms, Some(12.5));
        assert_eq!((cells[0].first_sequence, cells[0].last_sequence), (2, 5));
        assert_eq!(
            cells[1].last_sequence, 9,
            "the reply after the second catch-up belongs to it"
        );
        assert_eq!(session.cells, 2);
        store.shutdown_blocking().unwrap();
    }

    #[test]
    fn code_search_finds_substrings_with_their_sessions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let store = new_store(&dir);
        append(&store, session_records("s1", "alice", 0, true));
        append(
            &store,
            vec![record(
                "s2",
                "bob",
                50,
                "execute_request",
                json!({"msg_id": "b1", "code": "x = \"READ_CSV\" # quoted"}),
            )],
        );
        let mut index = Index::open(&tmp.path().join("index.sqlite")).unwrap();
        index.catch_up(&dir, &Fixed(None)).unwrap();

        let hits = index
            .search_code("read_csv(", None, 10, &Visibility::All)
            .unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].session_id, "s1");
        assert_eq!(hits[0].user.as_deref(), Some("alice"));
        assert_eq!(hits[0].cell.msg_id, "s1-r1");
        // Under a filtered grant, only the hits in its users' sessions, one page after
        // another.
        let bobs = Visibility::HubUsers(vec!["bob".into()]);
        let hits = index.search_code("read_csv", None, 1, &bobs).unwrap();
        assert_eq!(
            hits.iter()
                .map(|h| h.session_id.as_str())
                .collect::<Vec<_>>(),
            ["s2"]
        );
        assert!(
            index
                .search_code("read_csv", Some(hits[0].cell.id), 1, &bobs)
                .unwrap()
                .is_empty()
        );
        let alices = Visibility::HubUsers(vec!["alice".into()]);
        assert!(
            index
                .search_code("read_csv", None, 10, &alices)
                .unwrap()
                .iter()
                .all(|h| h.session_id == "s1")
        );
        // Case-insensitive, quotes taken literally, newest first, paged.
        let hits = index
            .search_code("read_csv", None, 10, &Visibility::All)
            .unwrap();
        assert_eq!(
            hits.iter()
                .map(|h| h.cell.msg_id.as_str())
                .collect::<Vec<_>>(),
            ["b1", "s1-r1"]
        );
        let rest = index
            .search_code("read_csv", Some(hits[0].cell.id), 10, &Visibility::All)
            .unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(
            index
                .search_code("\"READ_CSV\"", None, 10, &Visibility::All)
                .unwrap()
                .len(),
            1
        );
        assert!(
            index
                .search_code("nothing like this", None, 10, &Visibility::All)
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            index.search_code("df", None, 10, &Visibility::All),
            Err(IndexError::SearchTooShort)
        ));
        store.shutdown_blocking().unwrap();
    }

    #[test]
    fn sessions_page_filters_and_pages() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let store = new_store(&dir);
        for n in 0..5u32 {
            let user = if n % 2 == 0 { "alice" } else { "bob" };
            let mut records = session_records(&format!("s{n}"), user, n * 100, n != 4);
            if n == 1 {
                // No errors and nothing refused in this one.
                records.truncate(5);
                records.push(record(
                    "s1",
                    user,
                    199,
                    "session_end",
                    json!({"exit_code": null, "exit_signal": 9, "orphaned": false}),
                ));
            }
            append(&store, records);
        }
        let mut index = Index::open(&tmp.path().join("index.sqlite")).unwrap();
        index.catch_up(&dir, &Fixed(Some(true))).unwrap();

        let ids = |query: SessionQuery| -> Vec<String> {
            index
                .sessions(&query)
                .unwrap()
                .sessions
                .into_iter()
                .map(|s| s.session_id)
                .collect()
        };
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = index
                .sessions(&SessionQuery {
                    limit: 2,
                    after,
                    ..Default::default()
                })
                .unwrap();
            seen.extend(page.sessions.into_iter().map(|s| s.session_id));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ["s4", "s3", "s2", "s1", "s0"]);
        assert_eq!(
            ids(SessionQuery {
                user: Some("bob".into()),
                limit: 10,
                ..Default::default()
            }),
            ["s3", "s1"]
        );
        // A filtered grant: bob's sessions only, a page at a time, and nobody's for a
        // grant that names no one.
        let bobs = Visibility::HubUsers(vec!["bob".into()]);
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = index
                .sessions(&SessionQuery {
                    limit: 1,
                    after,
                    visible: bobs.clone(),
                    ..Default::default()
                })
                .unwrap();
            assert!(page.sessions.iter().all(|row| bobs.allows(row)));
            seen.extend(page.sessions.into_iter().map(|s| s.session_id));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ["s3", "s1"]);
        assert_eq!(
            ids(SessionQuery {
                with_errors: true,
                limit: 10,
                visible: Visibility::HubUsers(vec!["alice".into(), "bob".into()]),
                ..Default::default()
            }),
            ["s4", "s3", "s2", "s0"]
        );
        assert!(
            ids(SessionQuery {
                limit: 10,
                visible: Visibility::HubUsers(Vec::new()),
                ..Default::default()
            })
            .is_empty()
        );
        assert_eq!(
            ids(SessionQuery {
                with_errors: true,
                limit: 10,
                ..Default::default()
            }),
            ["s4", "s3", "s2", "s0"]
        );
        assert_eq!(
            ids(SessionQuery {
                ended_abnormally: true,
                limit: 10,
                ..Default::default()
            }),
            ["s1"]
        );
        assert_eq!(
            ids(SessionQuery {
                notebook: Some("s2.ipy".into()),
                limit: 10,
                ..Default::default()
            }),
            ["s2"]
        );
        assert_eq!(
            ids(SessionQuery {
                kernel: Some("R".into()),
                limit: 10,
                ..Default::default()
            }),
            Vec::<String>::new()
        );
        let since = OffsetDateTime::parse(
            "2026-05-01T12:03:20Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(
            ids(SessionQuery {
                since: Some(since),
                limit: 10,
                ..Default::default()
            }),
            ["s4", "s3", "s2"]
        );
        assert_eq!(
            ids(SessionQuery {
                until: Some(since),
                with_refused: true,
                limit: 10,
                ..Default::default()
            }),
            ["s0"]
        );
        store.shutdown_blocking().unwrap();
    }

    #[test]
    fn an_index_of_another_store_or_a_changed_record_is_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let first_dir = tmp.path().join("first");
        let other_dir = tmp.path().join("other");
        let first = new_store(&first_dir);
        append(&first, session_records("s1", "alice", 0, true));
        first.shutdown_blocking().unwrap();
        let other = new_store(&other_dir);
        append(&other, session_records("s9", "mallory", 0, true));
        other.shutdown_blocking().unwrap();

        let path = tmp.path().join("index.sqlite");
        let mut index = Index::open(&path).unwrap();
        index.catch_up(&first_dir, &Fixed(None)).unwrap();
        // It holds code: for its owner's eyes only, as the store's segments are.
        use std::os::unix::fs::PermissionsExt;
        for file in [path.clone(), tmp.path().join("index.sqlite-wal")] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", file.display());
        }
        let again = index.catch_up(&other_dir, &Fixed(None)).unwrap();
        assert!(again.rebuilt);
        let sessions = all_sessions(&index);
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].session_id, "s9");
        assert!(
            index
                .search_code("read_csv", None, 10, &Visibility::All)
                .unwrap()
                .len()
                == 1
        );

        // The same store id with its last indexed record rewritten: not the same store
        // any more as far as the index knows.
        drop(index);
        let segment = std::fs::read_dir(store::segments_dir(&other_dir))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut perms = std::fs::metadata(&segment).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&segment, perms).unwrap();
        let text = std::fs::read_to_string(&segment).unwrap();
        let last = text.lines().last().unwrap();
        let changed = text.replace(last, &last.replace("\"hash\":\"", "\"hash\":\"0"));
        std::fs::write(&segment, changed).unwrap();
        let mut index = Index::open(&path).unwrap();
        assert!(index.catch_up(&other_dir, &Fixed(None)).unwrap().rebuilt);
        // Pages read through their own connections while the index catches up.
        let reader = Index::open_read_only(&path).unwrap();
        assert_eq!(all_sessions(&reader)[0].session_id, "s9");
        assert!(matches!(
            Index::open_read_only(&tmp.path().join("missing.sqlite")),
            Err(IndexError::Sqlite { .. })
        ));
        // And an index left as it is is reopened without starting over.
        drop(index);
        let mut index = Index::open(&path).unwrap();
        let steady = index.catch_up(&other_dir, &Fixed(None)).unwrap();
        assert_eq!((steady.rebuilt, steady.records), (false, 0));
    }
}
