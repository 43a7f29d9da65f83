//! What `verify` found, in a form for programs (the types) and for people (`Display`).

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a problem is: a segment file, a 1-based line and the sequence found there (or
/// expected there, when the line does not say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub segment: PathBuf,
    pub line: u64,
    pub sequence: Option<u64>,
}

/// The first problem found; the store is intact when there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `None` for problems of the checkpoint itself.
    pub location: Option<Location>,
    pub kind: ProblemKind,
}

/// Every kind of damage `verify` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// The record's bytes do not hash to its `chain.hash`.
    Changed,
    /// Records `first..=last` are missing (and not found further on).
    Deleted { first: u64, last: u64 },
    /// A record comes before one that should precede it; `missing_at` is where the
    /// expected record was found further on.
    Reordered {
        expected: u64,
        missing_at: Option<Location>,
    },
    /// The sequence does not advance (a repeated or moved-back record).
    SequenceBack { previous: u64 },
    /// `chain.prev` is not the hash of the record before (which was rewritten with its
    /// hash recomputed, or records were removed and renumbered).
    ChainBroken { previous: Option<Location> },
    /// A segment's name says it starts after where the previous one ended: the
    /// segments in between are gone.
    SegmentRemoved { expected: u64, found: u64 },
    /// A segment's name says it starts at or before where the previous one ended.
    SegmentOutOfOrder { expected: u64, found: u64 },
    /// The line is not a stored record.
    Malformed { detail: String },
    /// The last line has no newline: a write cut short, or a truncated file.
    Torn { bytes: usize, last_segment: bool },
    /// The store ends before the sequence the checkpoint covers.
    Truncated { last: u64, checkpoint: u64 },
    /// The chain hash at the checkpoint's sequence is not the signed one.
    CheckpointMismatch { sequence: u64 },
    /// The checkpoint's signature does not hold.
    BadSignature { detail: String },
}

/// The checkpoint the store was checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointUsed {
    pub file: PathBuf,
    pub sequence: u64,
    pub time: String,
    /// Whether the checkpoint and the key came from outside the store.
    pub external_checkpoint: bool,
    pub external_key: bool,
}

/// The outcome of [`verify`](super::verify()).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub dir: PathBuf,
    /// Records checked (up to the first problem).
    pub records: u64,
    /// Segments checked (up to the first problem).
    pub segments: usize,
    /// The last sequence checked.
    pub last_sequence: u64,
    pub checkpoint: Option<CheckpointUsed>,
    pub problem: Option<Problem>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }

    fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.dir)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    fn show_location(&self, at: &Location) -> String {
        format!("{}:{}", self.show(&at.segment), at.line)
    }
}

fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::Changed => {
                write!(f, "record changed: its bytes do not match its chain hash")
            }
            ProblemKind::Deleted { first, last } if first == last => {
                write!(f, "record {first} deleted")
            }
            ProblemKind::Deleted { first, last } => write!(f, "records {first} to {last} deleted"),
            ProblemKind::Reordered { expected, .. } => {
                write!(f, "records reordered: record {expected} should come first")
            }
            ProblemKind::SequenceBack { previous } => write!(
                f,
                "records reordered or repeated: the sequence goes back after {previous}"
            ),
            ProblemKind::ChainBroken { .. } => write!(
                f,
                "chain broken: chain.prev is not the hash of the previous record (rewritten with a recomputed hash, or records removed and renumbered)"
            ),
            ProblemKind::SegmentRemoved { expected, found } if *expected == 1 => write!(
                f,
                "segment(s) removed: the store begins at sequence {found}, not 1"
            ),
            ProblemKind::SegmentRemoved { expected, found } => write!(
                f,
                "segment(s) removed: records {expected} to {} are missing before this segment",
                found - 1
            ),
            ProblemKind::SegmentOutOfOrder { expected, found } => write!(
                f,
                "segment out of order: it starts at sequence {found}, but {expected} was expected"
            ),
            ProblemKind::Malformed { detail } => write!(f, "malformed line: {detail}"),
            ProblemKind::Torn {
                bytes,
                last_segment,
            } => {
                write!(f, "torn last line: {bytes} bytes without a newline")?;
                if *last_segment {
                    write!(
                        f,
                        " (a write in progress or cut short by a crash; the collector cuts it off when it starts)"
                    )?;
                }
                Ok(())
            }
            ProblemKind::Truncated { last, checkpoint } => write!(
                f,
                "truncated: the store ends at sequence {last}, but the checkpoint covers up to {checkpoint}"
            ),
            ProblemKind::CheckpointMismatch { sequence } => write!(
                f,
                "the chain hash at sequence {sequence} is not the one the checkpoint signed: records up to {sequence} were rewritten"
            ),
            ProblemKind::BadSignature { detail } => write!(f, "bad checkpoint signature: {detail}"),
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            None => {
                write!(
                    f,
                    "intact: {} in {}, last sequence {}",
                    plural(self.records, "record"),
                    plural(self.segments as u64, "segment"),
                    self.last_sequence
                )?;
                match &self.checkpoint {
                    Some(c) => writeln!(f, ", checkpoint at {} (sequence {})", c.time, c.sequence)?,
                    None => writeln!(f, ", no checkpoint")?,
                }
            }
            Some(problem) => {
                write!(f, "TAMPERED: ")?;
                match &problem.location {
                    Some(at) => {
                        write!(f, "{}", self.show_location(at))?;
                        if let Some(sequence) = at.sequence {
                            write!(f, " (sequence {sequence})")?;
                        }
                        write!(f, ": ")?;
                    }
                    None => {
                        if let Some(c) = &self.checkpoint {
                            write!(f, "checkpoint {}: ", c.file.display())?;
                        }
                    }
                }
                write!(f, "{}", problem.kind)?;
                match &problem.kind {
                    ProblemKind::Reordered {
                        missing_at: Some(at),
                        ..
                    } => write!(f, " (found at {})", self.show_location(at))?,
                    ProblemKind::ChainBroken { previous: Some(at) } => {
                        write!(f, " (previous record at {})", self.show_location(at))?
                    }
                    _ => {}
                }
                writeln!(f)?;
                writeln!(f, "{} checked before it", plural(self.records, "record"))?;
            }
        }
        match &self.checkpoint {
            None => writeln!(
                f,
                "note: no checkpoint, so a truncated tail cannot be detected; keep exported checkpoints (checkpoints.jsonl) and the public key (checkpoint.pub) elsewhere"
            )?,
            Some(c) => {
                if self.is_intact() && self.last_sequence > c.sequence {
                    writeln!(
                        f,
                        "note: records {} to {} are chained but not yet covered by a checkpoint",
                        c.sequence + 1,
                        self.last_sequence
                    )?;
                }
                if !c.external_checkpoint || !c.external_key {
                    writeln!(
                        f,
                        "note: checked against the store's own {}; a checkpoint and public key exported and kept where the store's writers cannot reach are the stronger check (--checkpoint, --key)",
                        match (c.external_checkpoint, c.external_key) {
                            (false, false) => "checkpoints.jsonl and checkpoint.pub",
                            (false, true) => "checkpoints.jsonl",
                            _ => "checkpoint.pub",
                        }
                    )?;
                }
            }
        }
        Ok(())
    }
}
