//! Checking a store: the whole chain, segment by segment, then a signed checkpoint.
//!
//! Every line must be a stored record whose bytes hash to its `chain.hash`, whose
//! `chain.prev` is the previous record's hash and whose `event.sequence` is one more
//! than the previous; each segment's name must announce the sequence that follows the
//! previous segment. Then the checkpoint's signature must hold, the store must reach
//! the checkpoint's sequence and the chain hash there must be the signed one. The walk
//! stops at the first problem, which the report names with file, line and sequence.
//! Nothing is loaded whole: segments are streamed line by line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::checkpoint::{self, Checkpoint};
use super::error::{Result, StoreError};
use super::keys;
use super::layout::{self, CHECKPOINTS_FILE, PUBLIC_KEY_FILE, SegmentEntry};
use super::lines::SegmentLines;
use super::record::{self, ChainHash, GENESIS};
use super::report::{CheckpointUsed, Location, Problem, ProblemKind, VerifyReport};

/// Just the sequence of a record (the rest of the line is checked to be JSON and skipped).
#[derive(Deserialize)]
struct Probe {
    event: ProbeEvent,
}

#[derive(Deserialize)]
struct ProbeEvent {
    sequence: u64,
}

fn probe_sequence(line: &[u8]) -> Result<u64, String> {
    serde_json::from_slice::<Probe>(line)
        .map(|p| p.event.sequence)
        .map_err(|e| e.to_string())
}

/// The state of the walk along the chain.
struct Walk<'a> {
    segments: &'a [SegmentEntry],
    expected: u64,
    head: ChainHash,
    records: u64,
    segments_done: usize,
    last: Option<Location>,
    /// The sequence of the checkpoint, and the chain hash found there.
    checkpoint_sequence: Option<u64>,
    at_checkpoint: Option<(ChainHash, Option<Location>)>,
}

fn at(segment: &Path, line: u64, sequence: Option<u64>) -> Location {
    Location {
        segment: segment.to_path_buf(),
        line,
        sequence,
    }
}

fn problem(location: Location, kind: ProblemKind) -> Option<Problem> {
    Some(Problem {
        location: Some(location),
        kind,
    })
}

fn read_error(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::io("read", path, error)
}

impl Walk<'_> {
    /// Walks every segment; returns the first problem.
    fn run(&mut self) -> Result<Option<Problem>> {
        if self.checkpoint_sequence == Some(0) {
            self.at_checkpoint = Some((GENESIS, None));
        }
        for (index, entry) in self.segments.iter().enumerate() {
            if entry.first != self.expected {
                let location = at(&entry.path, 1, Some(entry.first));
                let (expected, found) = (self.expected, entry.first);
                let kind = if found > expected {
                    ProblemKind::SegmentRemoved { expected, found }
                } else {
                    ProblemKind::SegmentOutOfOrder { expected, found }
                };
                return Ok(problem(location, kind));
            }
            let mut lines =
                SegmentLines::open(&entry.path).map_err(|e| read_error(&entry.path, e))?;
            let last_segment = index + 1 == self.segments.len();
            if let Some(found) = self.segment(&mut lines, index, last_segment)? {
                return Ok(Some(found));
            }
            self.segments_done += 1;
        }
        Ok(None)
    }

    fn segment(
        &mut self,
        lines: &mut SegmentLines,
        index: usize,
        last_segment: bool,
    ) -> Result<Option<Problem>> {
        let path = lines.path().to_path_buf();
        while let Some(line) = lines.next() {
            let line = line.map_err(|(_, e)| read_error(&path, e))?;
            let expected = self.expected;
            let here = |sequence| at(&path, line.number, sequence);
            if !line.complete {
                let kind = ProblemKind::Torn {
                    bytes: line.bytes.len(),
                    last_segment,
                };
                return Ok(problem(here(Some(expected)), kind));
            }
            let unsealed = match record::unseal(&line.bytes) {
                Ok(unsealed) => unsealed,
                Err(detail) => {
                    let sequence = probe_sequence(&line.bytes).ok();
                    let detail = detail.to_owned();
                    return Ok(problem(here(sequence), ProblemKind::Malformed { detail }));
                }
            };
            if !unsealed.hash_matches() {
                let sequence = probe_sequence(&line.bytes).ok().or(Some(expected));
                return Ok(problem(here(sequence), ProblemKind::Changed));
            }
            let sequence = match probe_sequence(&line.bytes) {
                Ok(sequence) => sequence,
                Err(detail) => {
                    let kind = ProblemKind::Malformed {
                        detail: format!("no readable event.sequence: {detail}"),
                    };
                    return Ok(problem(here(None), kind));
                }
            };
            if sequence < expected {
                let kind = ProblemKind::SequenceBack {
                    previous: expected - 1,
                };
                return Ok(problem(here(Some(sequence)), kind));
            }
            if sequence > expected {
                let missing_at = find_later(expected..sequence, lines, &self.segments[index + 1..]);
                let kind = match missing_at {
                    Some(found) => ProblemKind::Reordered {
                        expected,
                        missing_at: Some(found),
                    },
                    None => ProblemKind::Deleted {
                        first: expected,
                        last: sequence - 1,
                    },
                };
                return Ok(problem(here(Some(sequence)), kind));
            }
            if unsealed.prev != self.head {
                let previous = self.last.clone();
                return Ok(problem(
                    here(Some(sequence)),
                    ProblemKind::ChainBroken { previous },
                ));
            }
            self.head = unsealed.hash;
            self.records += 1;
            self.expected += 1;
            self.last = Some(here(Some(sequence)));
            if self.checkpoint_sequence == Some(sequence) {
                self.at_checkpoint = Some((self.head, self.last.clone()));
            }
        }
        Ok(None)
    }
}

/// Where a record with a sequence in `wanted` appears in the rest of the store, if
/// anywhere (to tell reordered records from deleted ones).
fn find_later(
    wanted: std::ops::Range<u64>,
    lines: &mut SegmentLines,
    rest: &[SegmentEntry],
) -> Option<Location> {
    let scan = |lines: &mut SegmentLines| {
        let path = lines.path().to_path_buf();
        lines.map_while(|l| l.ok()).find_map(|line| {
            probe_sequence(&line.bytes)
                .ok()
                .filter(|s| wanted.contains(s))
                .map(|s| at(&path, line.number, Some(s)))
        })
    };
    scan(lines).or_else(|| {
        rest.iter()
            .filter_map(|entry| SegmentLines::open(&entry.path).ok())
            .find_map(|mut lines| scan(&mut lines))
    })
}

/// Checks the store at `dir` against a checkpoint: `checkpoint` is a file holding one
/// checkpoint or a `checkpoints.jsonl` (its last line is used), default the store's own
/// `checkpoints.jsonl`; `public_key` is a file with the hex public key, default the
/// store's `checkpoint.pub`. An `Err` means the check could not be done (unreadable
/// files, bad arguments); damage is reported in the [`VerifyReport`].
pub fn verify(
    dir: &Path,
    checkpoint: Option<&Path>,
    public_key: Option<&Path>,
) -> Result<VerifyReport> {
    let segments_dir = dir.join(layout::SEGMENTS_DIR);
    // metadata(), not is_dir(): a reader without permission must be told so, not that
    // the store has no segments.
    let no_segments = || {
        let missing =
            std::io::Error::new(std::io::ErrorKind::NotFound, "no segments/ directory in it");
        StoreError::io("open store", dir, missing)
    };
    match std::fs::metadata(&segments_dir) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => return Err(no_segments()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(no_segments()),
        Err(error) => return Err(StoreError::io("open store", &segments_dir, error)),
    }
    let checkpoint_file: PathBuf =
        checkpoint.map_or_else(|| dir.join(CHECKPOINTS_FILE), Path::to_path_buf);
    let found: Option<Checkpoint> = checkpoint::read_last(&checkpoint_file)?;
    if checkpoint.is_some() && found.is_none() {
        return Err(StoreError::Checkpoint {
            path: checkpoint_file,
            detail: "no checkpoint in it".into(),
        });
    }
    let key_file = public_key.map_or_else(|| dir.join(PUBLIC_KEY_FILE), Path::to_path_buf);
    let key = match &found {
        Some(_) => Some(keys::read_public_key(&key_file)?),
        None => None,
    };

    let segments = layout::list_segments(dir)?;
    let mut walk = Walk {
        segments: &segments,
        expected: 1,
        head: GENESIS,
        records: 0,
        segments_done: 0,
        last: None,
        checkpoint_sequence: found.as_ref().map(|c| c.sequence),
        at_checkpoint: None,
    };
    let mut problem = walk.run()?;
    if let (None, Some(checkpoint), Some(key)) = (&problem, &found, &key) {
        problem = check_checkpoint(checkpoint, key, &walk);
    }
    tracing::debug!(
        records = walk.records,
        intact = problem.is_none(),
        "store verified"
    );
    Ok(VerifyReport {
        dir: dir.to_path_buf(),
        records: walk.records,
        segments: walk.segments_done,
        last_sequence: walk.expected - 1,
        checkpoint: found.map(|c| CheckpointUsed {
            file: checkpoint_file,
            sequence: c.sequence,
            time: c.time,
            external_checkpoint: checkpoint.is_some(),
            external_key: public_key.is_some(),
        }),
        problem,
    })
}

/// The checkpoint's own problems, once the chain itself holds together.
fn check_checkpoint(
    checkpoint: &Checkpoint,
    key: &ed25519_dalek::VerifyingKey,
    walk: &Walk<'_>,
) -> Option<Problem> {
    if let Err(detail) = checkpoint.check_signature(key) {
        return Some(Problem {
            location: None,
            kind: ProblemKind::BadSignature { detail },
        });
    }
    let last = walk.expected - 1;
    match &walk.at_checkpoint {
        None => Some(Problem {
            location: walk.last.clone(),
            kind: ProblemKind::Truncated {
                last,
                checkpoint: checkpoint.sequence,
            },
        }),
        Some((hash, location)) if checkpoint.chain_hash_bytes() != Some(*hash) => Some(Problem {
            location: location.clone(),
            kind: ProblemKind::CheckpointMismatch {
                sequence: checkpoint.sequence,
            },
        }),
        Some(_) => None,
    }
}
