//! The open segment: appending a batch durably, cutting a failed batch back off, and
//! closing the segment read-only.
//!
//! File operations go through [`SegmentFile`] so tests can make a write, a sync or a
//! truncation fail.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::error::{Result, StoreError};
use super::layout::{self, Access};

/// The operations the writer needs on a segment file.
pub(crate) trait SegmentFile: Send {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes written data durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Makes data and metadata durable (fsync).
    fn sync_all(&mut self) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

impl SegmentFile for File {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        Write::write_all(self, bytes)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// Turns an opened segment file into what the writer uses (the file itself, or a test
/// double around it).
pub(crate) type Wrap = Arc<dyn Fn(File) -> Box<dyn SegmentFile> + Send + Sync>;

/// The plain file, for production.
pub(crate) fn plain() -> Wrap {
    Arc::new(|file| Box::new(file))
}

/// Why appending a batch failed, and whether the segment was cut back.
#[derive(Debug)]
pub(crate) struct AppendFailure {
    pub action: &'static str,
    pub source: io::Error,
    /// `Err` when the segment could not be cut back to its length before the batch.
    pub rollback: io::Result<()>,
}

/// The segment records are appended to.
pub(crate) struct OpenSegment {
    pub name: String,
    pub path: PathBuf,
    /// Length of the durable, acknowledged content.
    pub len: u64,
    born: SystemTime,
    file: Box<dyn SegmentFile>,
}

fn open_append(path: &Path, create: bool, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create_new(create)
        .mode(mode)
        .open(path)
}

impl OpenSegment {
    /// Creates the segment whose first record will be `first`, and makes its directory
    /// entry durable.
    pub fn create(dir: &Path, first: u64, access: Access, wrap: &Wrap) -> Result<Self> {
        let segments_dir = dir.join(layout::SEGMENTS_DIR);
        let name = layout::segment_name(first);
        let path = segments_dir.join(&name);
        let file = open_append(&path, true, access.writable_mode())
            .map_err(|e| StoreError::io("create segment", &path, e))?;
        access.apply(&path, access.writable_mode())?;
        layout::sync_dir(&segments_dir)?;
        tracing::debug!(segment = %path.display(), "segment created");
        Ok(OpenSegment {
            name,
            path,
            len: 0,
            born: SystemTime::now(),
            file: wrap(file),
        })
    }

    /// Opens an existing segment of `len` bytes to append to it (after recovery).
    pub fn reopen(path: &Path, first: u64, len: u64, access: Access, wrap: &Wrap) -> Result<Self> {
        access.apply(path, access.writable_mode())?;
        let file = open_append(path, false, access.writable_mode())
            .map_err(|e| StoreError::io("open segment", path, e))?;
        let born = file
            .metadata()
            .and_then(|m| m.created())
            .unwrap_or_else(|_| SystemTime::now());
        Ok(OpenSegment {
            name: layout::segment_name(first),
            path: path.to_path_buf(),
            len,
            born,
            file: wrap(file),
        })
    }

    /// How long ago the segment was created.
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.born)
            .unwrap_or(Duration::ZERO)
    }

    /// Writes `bytes` with one write and syncs once. On failure the segment is cut back
    /// to its previous length (and synced) so no unacknowledged byte stays.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), AppendFailure> {
        let outcome = match self.file.write_all(bytes) {
            Err(source) => Err(("write", source)),
            Ok(()) => self.file.sync_data().map_err(|source| ("sync", source)),
        };
        match outcome {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err((action, source)) => {
                let len = self.len;
                let rollback = self.file.set_len(len).and_then(|()| self.file.sync_all());
                Err(AppendFailure {
                    action,
                    source,
                    rollback,
                })
            }
        }
    }

    /// Syncs the segment and makes it read-only: it is never written again.
    pub fn close(&mut self, access: Access) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| StoreError::io("sync segment", &self.path, e))?;
        access.apply(&self.path, access.sealed_mode())?;
        tracing::debug!(segment = %self.path.display(), bytes = self.len, "segment closed");
        Ok(())
    }
}
