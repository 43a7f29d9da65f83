//! Following a store as it grows: its complete lines from a given sequence on, and its
//! checkpoints from a given place in `checkpoints.jsonl` on, read from the files (the
//! forwarder's way in; it never sits on the proxies' path).
//!
//! A line is handed out once it ends with its `\n`: a line still being written (or torn
//! by a crash) is left for later. The caller also says up to which sequence to read (the
//! store's durable head), so that bytes of a batch that failed to sync, and were cut back
//! off the segment, are never taken for records.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::checkpoint::Checkpoint;
use super::error::{Result, StoreError};
use super::layout::{self, CHECKPOINTS_FILE};
use super::tail::read_tail;

/// One stored line and its sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowedRecord {
    pub sequence: u64,
    /// The stored line, without its `\n`.
    pub line: Vec<u8>,
}

/// The segment being read and how far.
struct Position {
    first: u64,
    path: PathBuf,
    file: File,
    /// Where the line of `Follower::next` starts.
    offset: u64,
}

/// Reads the records of a store in sequence order, keeping its place between reads.
pub struct Follower {
    dir: PathBuf,
    next: u64,
    position: Option<Position>,
}

/// The first read of a segment; a longer line makes it grow.
const FIRST_READ: usize = 256 * 1024;

fn corrupt(path: &Path, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Up to `len` bytes of `file` from `offset` (fewer at its end).
fn read_at_most(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buffer.truncate(filled);
    Ok(buffer)
}

impl Follower {
    /// A follower whose first record will be `from` (1 for the whole store).
    pub fn new(dir: &Path, from: u64) -> Self {
        Follower {
            dir: dir.to_path_buf(),
            next: from.max(1),
            position: None,
        }
    }

    /// The sequence of the next record it will hand out.
    pub fn next_sequence(&self) -> u64 {
        self.next
    }

    /// Opens the segment that holds record `self.next` and finds its line. `None`: the
    /// store has no such record yet.
    fn locate(&self) -> Result<Option<Position>> {
        let segments = layout::list_segments(&self.dir)?;
        let Some(index) = segments.iter().rposition(|s| s.first <= self.next) else {
            return Ok(None);
        };
        let entry = &segments[index];
        let file = File::open(&entry.path).map_err(|e| StoreError::io("open", &entry.path, e))?;
        let mut reader = BufReader::with_capacity(FIRST_READ, &file);
        let mut offset = 0u64;
        let mut skipped = 0u64;
        let mut line = Vec::new();
        while skipped < self.next - entry.first {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| StoreError::io("read", &entry.path, e))?;
            if read == 0 || line.last() != Some(&b'\n') {
                if index + 1 < segments.len() {
                    return Err(corrupt(
                        &entry.path,
                        format!("record {} is missing", entry.first + skipped),
                    ));
                }
                return Ok(None);
            }
            offset += read as u64;
            skipped += 1;
        }
        Ok(Some(Position {
            first: entry.first,
            path: entry.path.clone(),
            file,
            offset,
        }))
    }

    /// The complete records from the next one on, up to sequence `until`, at most
    /// `max_records` of them and about `max_bytes` (at least one record when one is
    /// there). Empty when there is nothing new yet.
    /// An error found after some records were read comes with the next call, so that
    /// those records are not lost.
    pub fn read(
        &mut self,
        until: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<FollowedRecord>> {
        let mut out = Vec::new();
        match self.read_into(&mut out, until, max_records, max_bytes) {
            Err(error) if out.is_empty() => Err(error),
            _ => Ok(out),
        }
    }

    fn read_into(
        &mut self,
        out: &mut Vec<FollowedRecord>,
        until: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<()> {
        let mut bytes = 0usize;
        while self.next <= until && out.len() < max_records && bytes < max_bytes {
            if self.position.is_none() {
                self.position = self.locate()?;
                if self.position.is_none() {
                    break;
                }
            }
            let Some(position) = self.position.as_mut() else {
                break;
            };
            let mut want = FIRST_READ.max(max_bytes.saturating_sub(bytes).min(8 << 20));
            let chunk = loop {
                let chunk = read_at_most(&position.file, position.offset, want)
                    .map_err(|e| StoreError::io("read", &position.path, e))?;
                if chunk.len() == want && !chunk.contains(&b'\n') {
                    want = want.saturating_mul(2);
                    continue;
                }
                break chunk;
            };
            let mut taken = 0usize;
            for line in chunk.split_inclusive(|&b| b == b'\n') {
                if line.last() != Some(&b'\n')
                    || self.next > until
                    || out.len() >= max_records
                    || (bytes >= max_bytes && !out.is_empty())
                {
                    break;
                }
                taken += line.len();
                bytes += line.len();
                out.push(FollowedRecord {
                    sequence: self.next,
                    line: line[..line.len() - 1].to_vec(),
                });
                self.next += 1;
            }
            position.offset += taken as u64;
            if taken == 0 {
                // Nothing complete here: the rest is in the next segment, if it is there.
                let next_first = self.next;
                let segments = layout::list_segments(&self.dir)?;
                let Some(next) = segments.iter().find(|s| s.first > position.first) else {
                    break;
                };
                if !chunk.is_empty() {
                    return Err(corrupt(
                        &position.path,
                        "a segment followed by another ends with an incomplete line",
                    ));
                }
                if next.first != next_first {
                    return Err(corrupt(
                        &next.path,
                        format!(
                            "the segment starts at record {} but record {next_first} comes next",
                            next.first
                        ),
                    ));
                }
                self.position = None;
            }
        }
        Ok(())
    }
}

/// The last complete record of the store at `dir`, if it has one.
pub fn last_record(dir: &Path) -> Result<Option<FollowedRecord>> {
    for segment in layout::list_segments(dir)?.iter().rev() {
        let file =
            File::open(&segment.path).map_err(|e| StoreError::io("open", &segment.path, e))?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io("read", &segment.path, e))?
            .len();
        let tail =
            read_tail(&file, len, 1).map_err(|e| StoreError::io("read", &segment.path, e))?;
        if let Some(line) = tail.lines.into_iter().last() {
            let value: serde_json::Value = serde_json::from_slice(&line)
                .map_err(|e| corrupt(&segment.path, format!("the last record is not JSON: {e}")))?;
            let sequence = super::record::sequence_of(&value)
                .ok_or_else(|| corrupt(&segment.path, "the last record has no event.sequence"))?;
            return Ok(Some(FollowedRecord { sequence, line }));
        }
    }
    Ok(None)
}

/// The checkpoints of the store at `dir` whose lines start at or after byte `offset` of
/// `checkpoints.jsonl`, complete lines only; returns them with the offset after them.
pub fn read_checkpoints(dir: &Path, offset: u64) -> Result<(Vec<Checkpoint>, u64)> {
    let path = dir.join(CHECKPOINTS_FILE);
    let Some(mut file) = layout::open_optional(&path)? else {
        return Ok((Vec::new(), offset));
    };
    let mut bytes = Vec::new();
    {
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(offset))
            .and_then(|_| file.read_to_end(&mut bytes))
            .map_err(|e| StoreError::io("read", &path, e))?;
    }
    let mut checkpoints = Vec::new();
    let mut taken = 0u64;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if line.last() != Some(&b'\n') {
            break;
        }
        taken += line.len() as u64;
        let checkpoint: Checkpoint =
            serde_json::from_slice(&line[..line.len() - 1]).map_err(|e| {
                StoreError::Checkpoint {
                    path: path.clone(),
                    detail: format!("at byte {}: {e}", offset + taken - line.len() as u64),
                }
            })?;
        checkpoints.push(checkpoint);
    }
    Ok((checkpoints, offset + taken))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn segment(dir: &Path, first: u64, lines: &[&str], tail: &str) {
        let path = dir.join("segments").join(layout::segment_name(first));
        let mut text = String::new();
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(tail);
        std::fs::write(path, text).unwrap();
    }

    fn sequences(records: &[FollowedRecord]) -> Vec<u64> {
        records.iter().map(|r| r.sequence).collect()
    }

    #[test]
    fn follows_across_segments_and_leaves_an_incomplete_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("segments")).unwrap();
        segment(dir.path(), 1, &["a1", "a2"], "");
        segment(dir.path(), 3, &["b3"], "b4-in-prog");
        let mut follower = Follower::new(dir.path(), 1);
        let read = follower.read(u64::MAX, 100, 1 << 20).unwrap();
        assert_eq!(sequences(&read), [1, 2, 3]);
        assert_eq!(read[2].line, b"b3");
        assert!(follower.read(u64::MAX, 100, 1 << 20).unwrap().is_empty());
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("segments").join(layout::segment_name(3)))
            .unwrap();
        file.write_all(b"ress\nb5\n").unwrap();
        let read = follower.read(4, 100, 1 << 20).unwrap();
        assert_eq!(
            read,
            [FollowedRecord {
                sequence: 4,
                line: b"b4-in-progress".to_vec()
            }]
        );
        assert_eq!(
            sequences(&follower.read(u64::MAX, 100, 1 << 20).unwrap()),
            [5]
        );

        let mut middle = Follower::new(dir.path(), 2);
        assert_eq!(
            sequences(&middle.read(u64::MAX, 2, 1 << 20).unwrap()),
            [2, 3]
        );
        assert_eq!(
            sequences(&middle.read(u64::MAX, 2, 1 << 20).unwrap()),
            [4, 5]
        );
        let mut ahead = Follower::new(dir.path(), 9);
        assert!(ahead.read(u64::MAX, 2, 1 << 20).unwrap().is_empty());
    }

    #[test]
    fn a_segment_that_does_not_continue_the_sequence_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("segments")).unwrap();
        segment(dir.path(), 1, &["a1"], "");
        segment(dir.path(), 5, &["b5"], "");
        let mut follower = Follower::new(dir.path(), 1);
        assert_eq!(
            sequences(&follower.read(u64::MAX, 10, 1 << 20).unwrap()),
            [1]
        );
        assert!(follower.read(u64::MAX, 10, 1 << 20).is_err());
    }
}
