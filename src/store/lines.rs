//! Streaming the lines of one segment file, one at a time, with their numbers.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

/// One line of a segment, without its `\n`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Line {
    /// 1-based line number.
    pub number: u64,
    pub bytes: Vec<u8>,
    /// `false` for a last line that has no `\n` (a torn write).
    pub complete: bool,
}

/// The lines of one segment file, read as they are needed.
pub(crate) struct SegmentLines {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    number: u64,
}

impl SegmentLines {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        Ok(SegmentLines {
            path: path.to_path_buf(),
            reader: Some(BufReader::with_capacity(256 * 1024, file)),
            number: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for SegmentLines {
    /// The line, or a read error at that line number (after which iteration ends).
    type Item = Result<Line, (u64, io::Error)>;

    fn next(&mut self) -> Option<Self::Item> {
        let reader = self.reader.as_mut()?;
        let mut bytes = Vec::new();
        self.number += 1;
        match reader.read_until(b'\n', &mut bytes) {
            Ok(0) => {
                self.reader = None;
                None
            }
            Ok(_) => {
                let complete = bytes.last() == Some(&b'\n');
                if complete {
                    bytes.pop();
                } else {
                    self.reader = None;
                }
                Some(Ok(Line {
                    number: self.number,
                    bytes,
                    complete,
                }))
            }
            Err(error) => {
                self.reader = None;
                Some(Err((self.number, error)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_lines_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, b"a\n\nbc\ntorn").unwrap();
        let lines: Vec<Line> = SegmentLines::open(&path)
            .unwrap()
            .map(|l| l.unwrap())
            .collect();
        let expect = |number, bytes: &[u8], complete| Line {
            number,
            bytes: bytes.to_vec(),
            complete,
        };
        assert_eq!(
            lines,
            [
                expect(1, b"a", true),
                expect(2, b"", true),
                expect(3, b"bc", true),
                expect(4, b"torn", false)
            ]
        );
    }
}
