//! Where the console reads records: a store directory, or the central trail in
//! PostgreSQL (every store the collectors forward there, each told apart by its store id).
//!
//! The pages never read records themselves: the index ([`super::index`]) answers them,
//! and what the index keeps no copy of (outputs, a session's records for the download)
//! is read here, by store, sequence range and session. From a store directory the store
//! id is empty (there is one store); from PostgreSQL it is the forwarded store's id, and
//! every read uses the primary key `(store_id, sequence)` that `postgres init` creates.
//! The console needs only the reader role (SELECT).

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::index::{ForwardedRecords, ForwardedRow, IndexError};
use crate::postgres::PostgresError;
use crate::postgres::connect::{PostgresOptions, PostgresTarget};
use crate::postgres::review::ReviewReader;
use crate::store::{Follower, StoreError};

/// Records read from a store directory per read.
const READ_RECORDS: usize = 4_096;
const READ_BYTES: usize = 8 << 20;

/// The records the console reviews.
#[derive(Debug, Clone)]
pub enum ConsoleSource {
    /// A store directory (read access is enough).
    Store(PathBuf),
    /// Every store forwarded to this database.
    Postgres(PostgresOptions),
}

/// Why records could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error("{0:?} is not a forwarded store's id")]
    StoreId(String),
}

impl ConsoleSource {
    /// The store directory, when the console reads one.
    pub fn store_dir(&self) -> Option<&Path> {
        match self {
            Self::Store(dir) => Some(dir),
            Self::Postgres(_) => None,
        }
    }

    /// For pages and logs: the store's path or the server's URL (which never holds a
    /// password: those come from a file).
    pub fn label(&self) -> String {
        match self {
            Self::Store(dir) => dir.display().to_string(),
            Self::Postgres(options) => format!("postgresql: {}", options.url),
        }
    }

    /// Calls `each` with the records of `store` from `first` to `last` (inclusive), in
    /// sequence order; from PostgreSQL only those of `session_id` (a store directory
    /// hands them all: the caller checks).
    pub fn for_each_between(
        &self,
        store: &str,
        first: u64,
        last: u64,
        session_id: &str,
        mut each: impl FnMut(u64, &[u8]),
    ) -> Result<(), SourceError> {
        match self {
            Self::Store(dir) => {
                let mut follower = Follower::new(dir, first);
                while follower.next_sequence() <= last {
                    let records = follower.read(last, READ_RECORDS, READ_BYTES)?;
                    if records.is_empty() {
                        break;
                    }
                    for record in records {
                        each(record.sequence, &record.line);
                    }
                }
                Ok(())
            }
            Self::Postgres(options) => {
                let store_id = parse_store_id(store)?;
                let mut reader = ReviewReader::connect(&PostgresTarget::new(options)?)?;
                reader.for_each_line_between::<SourceError>(
                    store_id,
                    to_i64(first),
                    to_i64(last),
                    Some(session_id),
                    |row| {
                        each(to_u64(row.sequence), row.line.as_bytes());
                        Ok(())
                    },
                )
            }
        }
    }

    /// The record of `store` at `sequence`, if there is one.
    pub fn record_at(&self, store: &str, sequence: u64) -> Result<Option<Vec<u8>>, SourceError> {
        match self {
            Self::Store(dir) => {
                let mut follower = Follower::new(dir, sequence);
                Ok(follower
                    .read(sequence, 1, READ_BYTES)?
                    .into_iter()
                    .next()
                    .filter(|record| record.sequence == sequence)
                    .map(|record| record.line))
            }
            Self::Postgres(options) => {
                let store_id = parse_store_id(store)?;
                let mut reader = ReviewReader::connect(&PostgresTarget::new(options)?)?;
                Ok(reader
                    .line_at(store_id, to_i64(sequence))?
                    .map(String::into_bytes))
            }
        }
    }
}

fn parse_store_id(store: &str) -> Result<Uuid, SourceError> {
    Uuid::parse_str(store).map_err(|_| SourceError::StoreId(store.to_owned()))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}

/// The index's view of PostgreSQL: one connection, kept between catch-ups and made
/// again after an error.
pub struct PostgresRecords {
    options: PostgresOptions,
    reader: Option<ReviewReader>,
}

impl PostgresRecords {
    pub fn new(options: PostgresOptions) -> Self {
        PostgresRecords {
            options,
            reader: None,
        }
    }

    /// Runs `read` on the connection (made if there is none); drops it on an error so
    /// that the next call connects again.
    fn with_reader<T>(
        &mut self,
        read: impl FnOnce(&mut ReviewReader) -> Result<T, PostgresError>,
    ) -> Result<T, IndexError> {
        let reader = match self.reader.take() {
            Some(reader) => reader,
            None => PostgresTarget::new(&self.options)
                .and_then(|target| ReviewReader::connect(&target))
                .map_err(|error| IndexError::Forwarded(error.to_string()))?,
        };
        let mut reader = reader;
        match read(&mut reader) {
            Ok(value) => {
                self.reader = Some(reader);
                Ok(value)
            }
            Err(error) => Err(IndexError::Forwarded(error.to_string())),
        }
    }
}

impl ForwardedRecords for PostgresRecords {
    fn stores(&mut self) -> Result<Vec<(String, u64)>, IndexError> {
        let stores = self.with_reader(ReviewReader::last_sequences)?;
        Ok(stores
            .into_iter()
            .map(|(id, last)| (id.to_string(), to_u64(last)))
            .collect())
    }

    fn after(
        &mut self,
        store: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ForwardedRow>, IndexError> {
        let store_id = Uuid::parse_str(store)
            .map_err(|_| IndexError::Forwarded(format!("{store:?} is not a store id")))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.with_reader(|reader| reader.lines_after(store_id, to_i64(after), limit))?;
        Ok(rows
            .into_iter()
            .map(|row| ForwardedRow {
                sequence: to_u64(row.sequence),
                line: row.line,
            })
            .collect())
    }

    fn line_at(&mut self, store: &str, sequence: u64) -> Result<Option<String>, IndexError> {
        let store_id = Uuid::parse_str(store)
            .map_err(|_| IndexError::Forwarded(format!("{store:?} is not a store id")))?;
        self.with_reader(|reader| reader.line_at(store_id, to_i64(sequence)))
    }
}
