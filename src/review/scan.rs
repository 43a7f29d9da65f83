//! Going through a store for review: every readable record in order, with a warning
//! for each line that cannot be read.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::ReviewError;
use crate::store::{self, ReadErrorKind, Reader, StoredRecord};

/// What a pass over the store met besides records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanReport {
    /// Lines that could not be read (each got a warning). A write in progress at the
    /// very end of the store is not counted.
    pub unreadable: u64,
}

impl ScanReport {
    /// Ok when every line could be read.
    pub fn into_result(self) -> Result<(), ReviewError> {
        match self.unreadable {
            0 => Ok(()),
            count => Err(ReviewError::Unreadable { count }),
        }
    }
}

/// A store opened for one pass.
pub struct Scan {
    reader: Reader,
    last_segment: Option<PathBuf>,
}

impl Scan {
    /// Opens the store at `dir`; fails when it is not a readable store.
    pub fn open(dir: &Path) -> Result<Self, ReviewError> {
        // An existing directory without segments is not a store (an empty store has the
        // directory); any other problem is reported by the reader with its OS error.
        if let Err(error) = std::fs::metadata(store::segments_dir(dir))
            && error.kind() == std::io::ErrorKind::NotFound
            && dir.is_dir()
        {
            return Err(ReviewError::NotAStore(dir.to_path_buf()));
        }
        let reader = Reader::open(dir).map_err(|source| ReviewError::Store {
            dir: dir.to_path_buf(),
            source,
        })?;
        let last_segment = reader.segments().last().map(|entry| entry.path.clone());
        Ok(Scan {
            reader,
            last_segment,
        })
    }

    /// Calls `each` with every record, oldest first, and writes a warning to `warnings`
    /// for every line that is not a record. `each` may stop the pass by returning an
    /// error.
    pub fn run(
        self,
        warnings: &mut dyn Write,
        mut each: impl FnMut(StoredRecord) -> Result<(), ReviewError>,
    ) -> Result<ScanReport, ReviewError> {
        let mut report = ScanReport::default();
        for item in self.reader {
            match item {
                Ok(record) => each(record)?,
                Err(error) => {
                    let in_progress = matches!(error.kind, ReadErrorKind::Torn { .. })
                        && Some(&error.segment) == self.last_segment.as_ref();
                    let note = if in_progress {
                        "skipped (a write in progress?)"
                    } else {
                        report.unreadable += 1;
                        "skipped"
                    };
                    // Warnings are best effort: a closed stderr must not stop the review.
                    let _ = writeln!(warnings, "jupyter-audit: warning: {error}: {note}");
                }
            }
        }
        Ok(report)
    }
}

/// Opens the store at `dir` and goes through it (see [`Scan::run`]).
pub fn scan(
    dir: &Path,
    warnings: &mut dyn Write,
    each: impl FnMut(StoredRecord) -> Result<(), ReviewError>,
) -> Result<ScanReport, ReviewError> {
    Scan::open(dir)?.run(warnings, each)
}
