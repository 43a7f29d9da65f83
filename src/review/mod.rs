//! The reviewer's tools. They read a store directly (read permission on it is enough:
//! the collector's user, or its reviewers' group), stream it record by record, never
//! write to it, and work while the collector writes: an incomplete last line is a write
//! in progress and is skipped with a warning.
//!
//! - [`log`]: the records that match a query, as a table or as the stored lines.
//! - [`sessions`]: one line per session (proxy run).
//! - [`replay`]: a session rebuilt as an nbformat 4.5 notebook.
//! - [`filter`]: the query options `log` and `sessions` share.
//!
//! Exit status (see [`exit`]): 0 when all went well, 2 when the store cannot be read, the
//! session is not found, the output cannot be written, or some lines of the store could
//! not be read (what could be read is still shown; `verify` tells what is wrong).

pub mod fields;
pub mod filter;
pub mod log;
pub mod replay;
pub mod scan;
pub mod sessions;
pub mod source;

use std::io;
use std::path::PathBuf;

use crate::postgres::PostgresError;
use crate::store::StoreError;

/// Why a review command failed.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("cannot read the store {}: {source}", dir.display())]
    Store {
        dir: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error("{} is not a store (it has no segments directory)", .0.display())]
    NotAStore(PathBuf),
    #[error(
        "{count} line(s) of the store could not be read (see the warnings); \
         `jupyter-audit verify` checks the store"
    )]
    Unreadable { count: u64 },
    #[error("no session id starts with {0:?} (see `jupyter-audit sessions`)")]
    NoSession(String),
    #[error("{prefix:?} selects more than one session: {matches}; give more of the id, or --user")]
    AmbiguousSession { prefix: String, matches: String },
    #[error("cannot write the output: {0}")]
    Output(#[source] io::Error),
    #[error("cannot write {}: {source}", path.display())]
    WriteFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ReviewError {
    /// A reader of the output went away (`log | head`): not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Output(error) if error.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Ends the process the way the review commands do: 0 on success (or when the reader
/// of the output went away), else the error on stderr and 2.
pub fn exit(result: Result<(), ReviewError>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(error) if error.is_broken_pipe() => std::process::exit(0),
        Err(error) => {
            eprintln!("jupyter-audit: {error}");
            std::process::exit(2)
        }
    }
}
