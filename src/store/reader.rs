//! Reading a store for review: every record of every segment, in order, streamed.
//!
//! [`Reader`] never needs the signing key and never writes. It does not check the chain
//! (that is [`verify`](super::verify())); it yields each record with where it was found,
//! or an error naming the file and line, and goes on with the next line. On a store that
//! is being written, the last line of the last segment may be a write in progress: it
//! comes as [`ReadErrorKind::Torn`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::error::Result;
use super::layout::{self, SegmentEntry};
use super::lines::SegmentLines;
use super::record;

/// One record as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub segment: PathBuf,
    /// 1-based line number in the segment.
    pub line: u64,
    pub sequence: u64,
    /// The stored line without its `\n` (what `log --json` prints).
    pub raw: String,
    pub value: Value,
}

#[cfg(test)]
impl StoredRecord {
    /// A record as if read from line `sequence` of a segment, for tests of the tools
    /// that read stores.
    pub(crate) fn synthetic(sequence: u64, value: Value) -> Self {
        Self {
            segment: PathBuf::from("segment"),
            line: sequence,
            sequence,
            raw: value.to_string(),
            value,
        }
    }
}

/// A line that could not be read as a record.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}:{line}: {kind}", segment.display())]
pub struct ReadError {
    pub segment: PathBuf,
    /// 1-based line number (0: the segment could not be opened).
    pub line: u64,
    pub kind: ReadErrorKind,
}

/// What is wrong with a line.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadErrorKind {
    #[error("cannot read: {0}")]
    Io(Arc<io::Error>),
    #[error("incomplete last line ({bytes} bytes without a newline)")]
    Torn { bytes: usize },
    #[error("not UTF-8")]
    NotUtf8,
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("no event.sequence")]
    NoSequence,
}

/// The records of a store, oldest first.
pub struct Reader {
    segments: Vec<SegmentEntry>,
    next_segment: usize,
    current: Option<SegmentLines>,
}

impl Reader {
    /// A reader over the segments of the store at `dir` as they are now.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Reader {
            segments: layout::list_segments(dir)?,
            next_segment: 0,
            current: None,
        })
    }

    /// Leaves out the segments that end before `sequence` (by their names): a reader
    /// for a range of sequences reads from the segment that holds its first.
    pub fn starting_at(mut self, sequence: u64) -> Self {
        let skip = self
            .segments
            .iter()
            .rposition(|entry| entry.first <= sequence)
            .unwrap_or(0);
        self.next_segment = self.next_segment.max(skip);
        self
    }

    /// The segments this reader goes through, in order.
    pub fn segments(&self) -> &[SegmentEntry] {
        &self.segments
    }
}

/// Parses one complete stored line.
pub(crate) fn parse_line(bytes: Vec<u8>) -> Result<(String, Value, u64), ReadErrorKind> {
    let raw = String::from_utf8(bytes).map_err(|_| ReadErrorKind::NotUtf8)?;
    let value: Value =
        serde_json::from_str(&raw).map_err(|e| ReadErrorKind::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(ReadErrorKind::NotJson("not an object".into()));
    }
    let sequence = record::sequence_of(&value).ok_or(ReadErrorKind::NoSequence)?;
    Ok((raw, value, sequence))
}

impl Iterator for Reader {
    type Item = Result<StoredRecord, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let Some(lines) = self.current.as_mut() else {
                let entry = self.segments.get(self.next_segment)?;
                self.next_segment += 1;
                match SegmentLines::open(&entry.path) {
                    Ok(lines) => self.current = Some(lines),
                    Err(e) => {
                        return Some(Err(ReadError {
                            segment: entry.path.clone(),
                            line: 0,
                            kind: ReadErrorKind::Io(Arc::new(e)),
                        }));
                    }
                }
                continue;
            };
            let segment = lines.path().to_path_buf();
            let line = match lines.next() {
                None => {
                    self.current = None;
                    continue;
                }
                Some(Err((line, e))) => {
                    return Some(Err(ReadError {
                        segment,
                        line,
                        kind: ReadErrorKind::Io(Arc::new(e)),
                    }));
                }
                Some(Ok(line)) => line,
            };
            let error = |kind| ReadError {
                segment: segment.clone(),
                line: line.number,
                kind,
            };
            if !line.complete {
                return Some(Err(error(ReadErrorKind::Torn {
                    bytes: line.bytes.len(),
                })));
            }
            return Some(match parse_line(line.bytes) {
                Ok((raw, value, sequence)) => Ok(StoredRecord {
                    segment: segment.clone(),
                    line: line.number,
                    sequence,
                    raw,
                    value,
                }),
                Err(kind) => Err(error(kind)),
            });
        }
    }
}
