//! The store's files and directories, their names and their permissions.
//!
//! ```text
//! <store>/                      0700 (0750, group = reviewers)
//!   segments/                   same as the store directory
//!     00000000000000000001.jsonl  the open segment: 0600 (0640); closed: 0400 (0440)
//!   checkpoints.jsonl           0600 (0640)
//!   checkpoint.pub              0400 (0440)
//!   keys/                       0700, owner only
//!     checkpoint.key            0600, owner only
//! ```

use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::{Result, StoreError};

pub(crate) const SEGMENTS_DIR: &str = "segments";
pub(crate) const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
pub(crate) const PUBLIC_KEY_FILE: &str = "checkpoint.pub";
pub(crate) const KEYS_DIR: &str = "keys";
pub(crate) const SIGNING_KEY_FILE: &str = "checkpoint.key";
const SEGMENT_SUFFIX: &str = ".jsonl";
const SEQUENCE_DIGITS: usize = 20;

/// The file name of the segment whose first record has sequence `first`.
pub fn segment_name(first: u64) -> String {
    format!("{first:0width$}{SEGMENT_SUFFIX}", width = SEQUENCE_DIGITS)
}

/// The first sequence encoded in a segment file name, if `name` is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEQUENCE_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One segment file found in `segments/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEntry {
    /// The first sequence its name announces.
    pub first: u64,
    pub path: PathBuf,
}

/// The segments of the store at `dir`, in order. Other files in `segments/` are skipped
/// (with a debug message). A store without a `segments/` directory has no segments.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentEntry>> {
    let segments_dir = dir.join(SEGMENTS_DIR);
    let entries = match fs::read_dir(&segments_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound && dir.is_dir() => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("list", segments_dir, e)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", &segments_dir, e))?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_segment_name) {
            Some(first) => segments.push(SegmentEntry {
                first,
                path: entry.path(),
            }),
            None => tracing::debug!(file = %entry.path().display(), "not a segment; skipped"),
        }
    }
    segments.sort_by_key(|s| s.first);
    Ok(segments)
}

/// Who may read the store: the owner alone, or the owner and a reviewers' group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Access {
    pub reviewers_gid: Option<u32>,
}

impl Access {
    fn with_group(&self, owner_only: u32, with_group: u32) -> u32 {
        if self.reviewers_gid.is_some() {
            with_group
        } else {
            owner_only
        }
    }

    pub fn dir_mode(&self) -> u32 {
        self.with_group(0o700, 0o750)
    }

    pub fn writable_mode(&self) -> u32 {
        self.with_group(0o600, 0o640)
    }

    pub fn sealed_mode(&self) -> u32 {
        self.with_group(0o400, 0o440)
    }

    /// Sets `mode` on `path` and hands it to the reviewers' group, if there is one.
    pub fn apply(&self, path: &Path, mode: u32) -> Result<()> {
        if let Some(gid) = self.reviewers_gid {
            std::os::unix::fs::chown(path, None, Some(gid))
                .map_err(|e| StoreError::io("change the group of", path, e))?;
        }
        set_mode(path, mode)
    }
}

/// Sets the permission bits of `path`.
pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(|e| StoreError::io("set permissions of", path, e))
}

/// Creates `path` (and missing parents) as a directory; returns whether it was created.
pub(crate) fn ensure_dir(path: &Path, mode: u32) -> Result<bool> {
    if path.is_dir() {
        return Ok(false);
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| StoreError::io("create", path, e))?;
    Ok(true)
}

/// Makes the directory entries of `dir` durable (after creating or renaming a file in it).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("sync directory", dir, e))
}

/// Opens `path` for reading and tells whether it exists (for optional files).
pub(crate) fn open_optional(path: &Path) -> Result<Option<File>> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("open", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_as_numbers() {
        assert_eq!(segment_name(1), "00000000000000000001.jsonl");
        assert_eq!(segment_name(u64::MAX), "18446744073709551615.jsonl");
        assert_eq!(parse_segment_name(&segment_name(4242)), Some(4242));
        assert_eq!(parse_segment_name("1.jsonl"), None);
        assert_eq!(parse_segment_name("0000000000000000000x.jsonl"), None);
        assert_eq!(parse_segment_name("00000000000000000001.jsonl.bak"), None);
        assert_eq!(parse_segment_name("99999999999999999999.jsonl"), None);
    }

    #[test]
    fn listing_orders_segments_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let segments = dir.path().join(SEGMENTS_DIR);
        fs::create_dir(&segments).unwrap();
        for name in [segment_name(10), segment_name(2), "notes.txt".into()] {
            fs::write(segments.join(name), b"").unwrap();
        }
        let firsts: Vec<u64> = list_segments(dir.path())
            .unwrap()
            .iter()
            .map(|s| s.first)
            .collect();
        assert_eq!(firsts, [2, 10]);
    }
}
