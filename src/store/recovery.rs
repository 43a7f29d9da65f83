//! Opening an existing store: finding the chain head and the next sequence from the end
//! of the last segment, and cutting off a line torn by a crash.
//!
//! A line without its `\n` was being written when the process died; it was never
//! acknowledged, so it is cut off and reported. The last complete record must still
//! link to the one before it (in the same or the previous segment); if it does not, the
//! store refuses to open rather than extend a chain it cannot vouch for.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::error::{Result, StoreError};
use super::layout::{self, Access, CHECKPOINTS_FILE, SegmentEntry};
use super::record::{self, ChainHash, GENESIS};
use super::segment::{OpenSegment, Wrap};
use super::tail::{Tail, read_tail};

/// What opening the store found; the collector records it (a torn line is an event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The store directory did not exist and was created.
    pub created: bool,
    /// The sequence of the last stored record (0: none yet).
    pub last_sequence: u64,
    /// Number of segment files.
    pub segments: usize,
    /// The segment appends continue in (`None` until the first record).
    pub segment: Option<PathBuf>,
    /// A torn last line that was cut off.
    pub torn: Option<TornLine>,
    /// Bytes of a torn last line cut off `checkpoints.jsonl`.
    pub torn_checkpoint_bytes: u64,
    /// The sequence of the last checkpoint (0: none).
    pub last_checkpoint: u64,
}

/// A partial line found at the end of the last segment and cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornLine {
    pub segment: PathBuf,
    /// Where the partial line started (the segment's new length).
    pub offset: u64,
    pub bytes: u64,
}

/// The writer's starting point.
pub(crate) struct Head {
    pub next_sequence: u64,
    pub hash: ChainHash,
    /// Name of the segment that holds the last record.
    pub segment_name: Option<String>,
    pub current: Option<OpenSegment>,
}

fn corrupt(path: &Path, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// A complete stored line, checked on its own.
struct Link {
    sequence: u64,
    prev: ChainHash,
    hash: ChainHash,
}

fn decode(path: &Path, line: &[u8]) -> Result<Link> {
    let unsealed = record::unseal(line).map_err(|e| corrupt(path, e))?;
    if !unsealed.hash_matches() {
        return Err(corrupt(path, "the last record does not match its hash"));
    }
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| corrupt(path, format!("the last record is not JSON: {e}")))?;
    let sequence = record::sequence_of(&value)
        .ok_or_else(|| corrupt(path, "the last record has no event.sequence"))?;
    Ok(Link {
        sequence,
        prev: unsealed.prev,
        hash: unsealed.hash,
    })
}

fn check_link(path: &Path, before: &Link, after: &Link) -> Result<()> {
    if after.prev != before.hash || after.sequence != before.sequence + 1 {
        return Err(corrupt(
            path,
            format!(
                "record {} does not follow record {} in the chain",
                after.sequence, before.sequence
            ),
        ));
    }
    Ok(())
}

fn read_segment_tail(path: &Path, file: &File) -> Result<Tail> {
    let len = file
        .metadata()
        .map_err(|e| StoreError::io("read", path, e))?
        .len();
    read_tail(file, len, 2).map_err(|e| StoreError::io("read", path, e))
}

/// The last record of a closed segment and, when it is there, the one before it.
fn last_link(segment: &SegmentEntry) -> Result<Option<Link>> {
    let path = &segment.path;
    let file = File::open(path).map_err(|e| StoreError::io("open", path, e))?;
    let tail = read_segment_tail(path, &file)?;
    if tail.torn > 0 {
        return Err(corrupt(
            path,
            "a closed segment ends with an incomplete line",
        ));
    }
    let links = tail
        .lines
        .iter()
        .map(|line| decode(path, line))
        .collect::<Result<Vec<_>>>()?;
    if let [before, after] = links.as_slice() {
        check_link(path, before, after)?;
    }
    Ok(links.into_iter().last())
}

/// Cuts a torn line off `checkpoints.jsonl`; returns the bytes cut and the sequence of
/// the last checkpoint.
fn recover_checkpoints(dir: &Path) -> Result<(u64, u64)> {
    let path = dir.join(CHECKPOINTS_FILE);
    let Some(file) = layout::open_optional(&path)? else {
        return Ok((0, 0));
    };
    let len = file
        .metadata()
        .map_err(|e| StoreError::io("read", &path, e))?
        .len();
    let tail = read_tail(&file, len, 1).map_err(|e| StoreError::io("read", &path, e))?;
    if tail.torn > 0 {
        tracing::warn!(file = %path.display(), bytes = tail.torn, "cutting off a torn checkpoint line");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(tail.complete_len).and_then(|()| f.sync_all()))
            .map_err(|e| StoreError::io("truncate", &path, e))?;
    }
    let last = tail
        .lines
        .last()
        .and_then(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .and_then(|v| v.get("sequence").and_then(|s| s.as_u64()))
        .unwrap_or(0);
    Ok((tail.torn, last))
}

/// Finds the head of the store at `dir` and opens its last segment for appending.
pub(crate) fn recover(
    dir: &Path,
    access: Access,
    wrap: &Wrap,
    created: bool,
) -> Result<(Head, Recovery)> {
    let segments = layout::list_segments(dir)?;
    let (torn_checkpoint_bytes, last_checkpoint) = recover_checkpoints(dir)?;
    let mut recovery = Recovery {
        created,
        last_sequence: 0,
        segments: segments.len(),
        segment: None,
        torn: None,
        torn_checkpoint_bytes,
        last_checkpoint,
    };
    let Some((last, earlier)) = segments.split_last() else {
        let head = Head {
            next_sequence: 1,
            hash: GENESIS,
            segment_name: None,
            current: None,
        };
        return Ok((head, recovery));
    };
    let path = &last.path;
    access.apply(path, access.writable_mode())?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io("open", path, e))?;
    let tail = read_segment_tail(path, &file)?;
    if tail.torn > 0 {
        tracing::warn!(
            segment = %path.display(),
            offset = tail.complete_len,
            bytes = tail.torn,
            "cutting off a torn last line (a write that was never acknowledged)"
        );
        file.set_len(tail.complete_len)
            .and_then(|()| file.sync_all())
            .map_err(|e| StoreError::io("truncate", path, e))?;
        recovery.torn = Some(TornLine {
            segment: path.clone(),
            offset: tail.complete_len,
            bytes: tail.torn,
        });
    }
    drop(file);

    let mut links = tail
        .lines
        .iter()
        .map(|line| decode(path, line))
        .collect::<Result<Vec<_>>>()?;
    // The record before this segment's first record lives in the previous segment.
    if tail.from_start && links.len() < 2 {
        let before = match earlier.last() {
            Some(previous) => last_link(previous)?,
            None => None,
        };
        let before = before.unwrap_or(Link {
            sequence: 0,
            prev: GENESIS,
            hash: GENESIS,
        });
        if links.is_empty() && last.first != before.sequence + 1 {
            return Err(corrupt(
                path,
                format!(
                    "an empty segment named for sequence {} after sequence {}",
                    last.first, before.sequence
                ),
            ));
        }
        if let Some(first) = links.first()
            && first.sequence != last.first
        {
            return Err(corrupt(
                path,
                format!(
                    "the segment's first record is {}, its name says {}",
                    first.sequence, last.first
                ),
            ));
        }
        links.insert(0, before);
    }
    if let [.., before, after] = links.as_slice() {
        check_link(path, before, after)?;
    }
    let (next_sequence, hash, segment_name) = match (links.last(), tail.lines.is_empty()) {
        (Some(head), false) => (
            head.sequence + 1,
            head.hash,
            Some(layout::segment_name(last.first)),
        ),
        (Some(head), true) => (
            head.sequence + 1,
            head.hash,
            earlier.last().map(|s| layout::segment_name(s.first)),
        ),
        (None, _) => (1, GENESIS, None),
    };
    let current = OpenSegment::reopen(path, last.first, tail.complete_len, access, wrap)?;
    recovery.last_sequence = next_sequence - 1;
    recovery.segment = Some(path.clone());
    let head = Head {
        next_sequence,
        hash,
        segment_name,
        current: Some(current),
    };
    Ok((head, recovery))
}
