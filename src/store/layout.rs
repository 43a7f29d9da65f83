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
//!   sessions.jsonl              0600: which process owns each session (the collector's
//!                               session bindings; sessions.jsonl.new while rewritten)
//!   store_id                    0400 (0440): the store's UUID, made with the store
//!   forwarding.json             0600 (0640): how far forwarding to PostgreSQL got (for
//!                               `status`; forwarding.json.new while rewritten)
//!   hub-tokens.json             0600, owner only: the Hub API tokens the Hub vouched
//!                               for, by SHA-256, so that a restarted collector knows
//!                               them while the Hub is down (hub-tokens.json.new while
//!                               rewritten)
//! ```
//!
//! Before anything is created, the directory and these entries are checked with
//! [`crate::path_safety`]: no symbolic links, nothing another user owns or can swap.

use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::{Result, StoreError};
use crate::path_safety::{self, PathRole, Problem, UnsafePath};

pub(super) const SEGMENTS_DIR: &str = "segments";
pub(super) const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
pub(super) const PUBLIC_KEY_FILE: &str = "checkpoint.pub";
pub(super) const KEYS_DIR: &str = "keys";
pub(super) const SIGNING_KEY_FILE: &str = "checkpoint.key";
pub(super) const SESSIONS_FILE: &str = "sessions.jsonl";
pub(super) const SESSIONS_REWRITE_FILE: &str = "sessions.jsonl.new";
pub(super) const STORE_ID_FILE: &str = "store_id";
pub(super) const FORWARDING_FILE: &str = "forwarding.json";
pub(super) const FORWARDING_REWRITE_FILE: &str = "forwarding.json.new";
pub(super) const HUB_TOKENS_FILE: &str = "hub-tokens.json";
pub(super) const HUB_TOKENS_REWRITE_FILE: &str = "hub-tokens.json.new";
const SEGMENT_SUFFIX: &str = ".jsonl";
const SEQUENCE_DIGITS: usize = 20;

/// The directory of the segments of the store at `dir` (every store has it from its
/// first open: a directory without it is not a store).
pub fn segments_dir(dir: &Path) -> PathBuf {
    dir.join(SEGMENTS_DIR)
}

/// The store's checkpoint verification (public) key, hex text: all a verifier needs.
pub fn public_key_file(dir: &Path) -> PathBuf {
    dir.join(PUBLIC_KEY_FILE)
}

/// The collector's session bindings (which process owns each session) in the store at
/// `dir`; the store checks it like its own files but never reads it.
pub fn sessions_file(dir: &Path) -> PathBuf {
    dir.join(SESSIONS_FILE)
}

/// The session bindings while the collector rewrites them (renamed over
/// [`sessions_file`]).
pub fn sessions_rewrite_file(dir: &Path) -> PathBuf {
    dir.join(SESSIONS_REWRITE_FILE)
}

/// The forwarder's state in the store at `dir` (how far forwarding got), which
/// `status` reads.
pub fn forwarding_file(dir: &Path) -> PathBuf {
    dir.join(FORWARDING_FILE)
}

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

/// Refuses an existing store directory that another user owns or others can write, and
/// symbolic links or foreign files among the store's own entries (a link in the store
/// would make the collector write or sign wherever it points).
pub(crate) fn check_store_entries(dir: &Path) -> Result<()> {
    const ROLE: PathRole = PathRole::Store;
    let metadata = match fs::symlink_metadata(dir) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("inspect", dir, e)),
    };
    let refuse = |problem| {
        StoreError::from(UnsafePath {
            role: ROLE,
            problem,
        })
    };
    if !metadata.is_dir() {
        return Err(refuse(Problem::NotADirectory {
            path: dir.to_owned(),
        }));
    }
    path_safety::check_directory(ROLE, dir, &metadata)?;
    let segments = dir.join(SEGMENTS_DIR);
    let keys = dir.join(KEYS_DIR);
    let mut entries = vec![
        segments.clone(),
        keys.clone(),
        dir.join(CHECKPOINTS_FILE),
        dir.join(PUBLIC_KEY_FILE),
        keys.join(SIGNING_KEY_FILE),
        dir.join(SESSIONS_FILE),
        dir.join(SESSIONS_REWRITE_FILE),
        dir.join(STORE_ID_FILE),
        dir.join(FORWARDING_FILE),
        dir.join(FORWARDING_REWRITE_FILE),
        dir.join(HUB_TOKENS_FILE),
        dir.join(HUB_TOKENS_REWRITE_FILE),
    ];
    if let Ok(listing) = fs::read_dir(&segments)
        && fs::symlink_metadata(&segments).is_ok_and(|m| m.is_dir())
    {
        for entry in listing {
            entries.push(
                entry
                    .map_err(|e| StoreError::io("list", &segments, e))?
                    .path(),
            );
        }
    }
    for entry in entries {
        let metadata = match fs::symlink_metadata(&entry) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io("inspect", &entry, e)),
        };
        if metadata.file_type().is_symlink() {
            return Err(refuse(Problem::EntryIsLink { path: entry }));
        }
        path_safety::check_owner(ROLE, &entry, &metadata)?;
    }
    Ok(())
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

    fn refusal(result: Result<impl std::fmt::Debug>) -> String {
        match result {
            Err(error @ StoreError::UnsafePath(_)) => error.to_string(),
            other => panic!("expected an unsafe path refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_store_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("own");
        fs::create_dir(&own).unwrap();
        set_mode(&own, 0o770).unwrap();
        let message = refusal(check_store_entries(&own));
        assert!(message.contains("writable by others"), "{message}");
    }

    #[test]
    fn symlinks_among_the_store_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        fs::create_dir_all(store.join(SEGMENTS_DIR)).unwrap();
        set_mode(&store, 0o700).unwrap();
        check_store_entries(&store).unwrap();
        let elsewhere = dir.path().join("elsewhere.jsonl");
        fs::write(&elsewhere, b"").unwrap();
        std::os::unix::fs::symlink(&elsewhere, store.join(SEGMENTS_DIR).join(segment_name(1)))
            .unwrap();
        let message = refusal(check_store_entries(&store));
        assert!(
            message.starts_with("refusing unsafe store path: ")
                && message.contains("symbolic link"),
            "{message}"
        );
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
