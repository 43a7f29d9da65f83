//! The store's error type: what went wrong, on which file, with the OS error kept.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::path_safety::{PathCheckError, UnsafePath};

/// Everything that can go wrong when opening, appending to, reading or verifying a store.
///
/// OS errors are kept (behind an `Arc`, because one failed batch hands the same error
/// to every append that was waiting on it); [`StoreError::raw_os_error`] gets at them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A file operation outside the append path failed (creating the layout, reading,
    /// setting permissions, writing a checkpoint).
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// Writing or syncing a batch failed: none of its records is stored (the segment was
    /// cut back to its length before the batch).
    #[error("audit records not stored: cannot {action} {}: {source}", segment.display())]
    Write {
        action: &'static str,
        segment: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// A failed batch could not be cut back; the store takes no more records until it is
    /// opened again (recovery on open repairs the segment).
    #[error("the audit store must be restarted: {reason}")]
    Failed { reason: String },
    /// The writer has stopped (shutdown, or every handle was dropped).
    #[error("the audit store is shut down")]
    Closed,
    /// Another process (another collector) has the store open.
    #[error("the store {} is in use by another process", dir.display())]
    Locked { dir: PathBuf },
    /// The store or the collector's socket is somewhere another user could swap it or
    /// what leads to it (a symbolic link, a directory others can write to without the
    /// sticky bit, a directory owned by another user); the collector refuses to start.
    #[error(transparent)]
    UnsafePath(#[from] UnsafePath),
    /// The record cannot be stored as given (a bug in the caller, not a disk problem).
    #[error("invalid audit record: {0}")]
    InvalidRecord(String),
    /// The collector refused the record under a fairness limit (the sender is over its
    /// storage share while the disk is low); sending it again does not help.
    #[error("refused by the collector: {0}")]
    Refused(String),
    /// On open, the end of the store does not hold together; the store refuses to
    /// extend a chain it cannot vouch for.
    #[error("the store is damaged at {}: {detail} (run `jupyter-audit verify`)", path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// A key file is missing, unreadable or malformed.
    #[error("bad key file {}: {detail}", path.display())]
    Key { path: PathBuf, detail: String },
    /// A checkpoint file cannot be used (not JSON, missing fields, empty).
    #[error("bad checkpoint file {}: {detail}", path.display())]
    Checkpoint { path: PathBuf, detail: String },
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// The OS error number behind this error, when there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            StoreError::Io { source, .. } | StoreError::Write { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

impl From<PathCheckError> for StoreError {
    fn from(error: PathCheckError) -> Self {
        match error {
            PathCheckError::Unsafe(refusal) => StoreError::UnsafePath(refusal),
            PathCheckError::Io {
                action,
                path,
                source,
            } => StoreError::Io {
                action,
                path,
                source,
            },
        }
    }
}

/// Shorthand used across the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
