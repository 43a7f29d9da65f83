//! `status`: how far a store is stored, checkpointed and forwarded, read from the store's
//! files alone (a reviewer with read access can run it; the collector need not run).
//!
//! Last stored and last checkpoint come from the segments and `checkpoints.jsonl`; how
//! far forwarding got comes from `forwarding.json`, which the forwarder rewrites about
//! every second; the lag is the records between the two, and the age of the oldest one
//! PostgreSQL does not have.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::columns::RecordColumns;
use super::forward::{ForwardedCheckpoint, ForwardedRecord, ForwardingError, ForwardingState};
use crate::store::{self, Follower, StoreError};

/// What `status` reads.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    pub store: PathBuf,
}

/// A record or checkpoint: its sequence and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Point {
    pub sequence: u64,
    pub time: Option<String>,
}

/// The status of one store (what `status --json` prints).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreStatus {
    pub store: String,
    pub store_id: Option<String>,
    pub last_stored: Option<Point>,
    pub last_checkpoint: Option<Point>,
    /// None: this store is not forwarded (no `forwarding.json`).
    pub forwarding: Option<ForwardingStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForwardingStatus {
    pub target: String,
    /// When the forwarder last wrote its state.
    pub updated: String,
    pub last_forwarded: Option<ForwardedRecord>,
    pub last_forwarded_checkpoint: Option<ForwardedCheckpoint>,
    /// Stored records not (known to be) in PostgreSQL.
    pub lag_records: u64,
    /// How old the oldest of them is (0 when there are none).
    pub lag_seconds: f64,
    pub last_error: Option<ForwardingError>,
    /// Why forwarding stopped for good (a fork), if it did.
    pub stopped: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{} is not a store (no segments directory)", .0.display())]
    NotAStore(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a forwarding state: {detail}", path.display())]
    BadState { path: PathBuf, detail: String },
}

fn time_of(line: &[u8]) -> Option<String> {
    RecordColumns::of_line(line).ok()?.time
}

/// Reads the status of the store at `options.store`.
pub fn read(options: &StatusOptions) -> Result<StoreStatus, StatusError> {
    let dir = options.store.as_path();
    if !store::segments_dir(dir).is_dir() {
        return Err(StatusError::NotAStore(dir.to_path_buf()));
    }
    let last_stored = store::last_record(dir)?.map(|record| Point {
        sequence: record.sequence,
        time: time_of(&record.line),
    });
    let last_checkpoint = store::read_checkpoint(&dir.join("checkpoints.jsonl"))?.map(|c| Point {
        sequence: c.sequence,
        time: Some(c.time),
    });
    let forwarding = read_state(dir)?.map(|state| {
        let stored = last_stored.as_ref().map_or(0, |p| p.sequence);
        let forwarded = state.last_forwarded.as_ref().map_or(0, |r| r.sequence);
        let lag_records = stored.saturating_sub(forwarded);
        let lag_seconds = if lag_records > 0 {
            oldest_age(dir, forwarded + 1)
        } else {
            0.0
        };
        ForwardingStatus {
            target: state.target,
            updated: state.updated,
            last_forwarded: state.last_forwarded,
            last_forwarded_checkpoint: state.last_forwarded_checkpoint,
            lag_records,
            lag_seconds,
            last_error: state.last_error,
            stopped: state.stopped,
        }
    });
    Ok(StoreStatus {
        store: dir.display().to_string(),
        store_id: store::store_id(dir).ok().map(|id| id.to_string()),
        last_stored,
        last_checkpoint,
        forwarding,
    })
}

/// Seconds since the `@timestamp` of record `sequence` (0 when it cannot be read).
fn oldest_age(dir: &Path, sequence: u64) -> f64 {
    Follower::new(dir, sequence)
        .read(sequence, 1, 64 << 20)
        .ok()
        .and_then(|records| records.into_iter().next())
        .and_then(|record| super::forward::record_age(&record.line))
        .map_or(0.0, |age| age.as_secs_f64())
}

fn read_state(dir: &Path) -> Result<Option<ForwardingState>, StatusError> {
    let path = store::forwarding_file(dir);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StatusError::State { path, source }),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| StatusError::BadState {
            path,
            detail: e.to_string(),
        })
}

fn point(point: &Option<Point>) -> String {
    match point {
        Some(Point { sequence, time }) => {
            format!("#{sequence} at {}", time.as_deref().unwrap_or("?"))
        }
        None => "none".into(),
    }
}

impl fmt::Display for StoreStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "store            {}", self.store)?;
        writeln!(
            f,
            "store id         {}",
            self.store_id.as_deref().unwrap_or("none yet")
        )?;
        writeln!(f, "last stored      {}", point(&self.last_stored))?;
        writeln!(f, "last checkpoint  {}", point(&self.last_checkpoint))?;
        let Some(forwarding) = &self.forwarding else {
            return writeln!(f, "forwarding       not forwarded (no forwarding state)");
        };
        writeln!(
            f,
            "forwarding       to {} (state written {})",
            forwarding.target, forwarding.updated
        )?;
        match &forwarding.last_forwarded {
            Some(record) => writeln!(
                f,
                "last forwarded   #{} at {} (forwarded {})",
                record.sequence,
                record.time.as_deref().unwrap_or("?"),
                record.forwarded_at
            )?,
            None => writeln!(f, "last forwarded   none")?,
        }
        match &forwarding.last_forwarded_checkpoint {
            Some(checkpoint) => writeln!(
                f,
                "last forwarded checkpoint #{} at {} (forwarded {})",
                checkpoint.sequence, checkpoint.time, checkpoint.forwarded_at
            )?,
            None => writeln!(f, "last forwarded checkpoint none")?,
        }
        writeln!(
            f,
            "lag              {} records, {:.1} s",
            forwarding.lag_records, forwarding.lag_seconds
        )?;
        if let Some(error) = &forwarding.last_error {
            writeln!(f, "last error       {} ({})", error.message, error.at)?;
        }
        if let Some(stopped) = &forwarding.stopped {
            writeln!(f, "STOPPED          {stopped}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_segments_is_not_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let options = StatusOptions {
            store: dir.path().to_path_buf(),
        };
        assert!(matches!(read(&options), Err(StatusError::NotAStore(_))));
    }

    #[test]
    fn lag_is_what_is_stored_past_the_forwarded_record() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("segments")).unwrap();
        let line = |n: u64| {
            format!(
                "{{\"@timestamp\":\"2020-01-01T00:00:0{n}Z\",\"event\":{{\"action\":\"x\",\"sequence\":{n}}}}}\n"
            )
        };
        std::fs::write(
            dir.path()
                .join("segments")
                .join("00000000000000000001.jsonl"),
            (1..=3).map(line).collect::<String>(),
        )
        .unwrap();
        let state = ForwardingState {
            target: "host=db".into(),
            last_forwarded: Some(ForwardedRecord {
                sequence: 1,
                time: Some("2020-01-01T00:00:01Z".into()),
                forwarded_at: "2020-01-01T00:00:02Z".into(),
            }),
            ..ForwardingState::default()
        };
        std::fs::write(
            store::forwarding_file(dir.path()),
            serde_json::to_vec(&state).unwrap(),
        )
        .unwrap();
        let status = read(&StatusOptions {
            store: dir.path().to_path_buf(),
        })
        .unwrap();
        assert_eq!(status.last_stored.as_ref().unwrap().sequence, 3);
        let forwarding = status.forwarding.as_ref().unwrap();
        assert_eq!(forwarding.lag_records, 2);
        // The oldest unforwarded record is from 2020.
        assert!(
            forwarding.lag_seconds > 86400.0,
            "{}",
            forwarding.lag_seconds
        );
        let text = status.to_string();
        assert!(text.contains("lag              2 records"), "{text}");
    }
}
