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
pub(crate) const SESSIONS_FILE: &str = "sessions.jsonl";
pub(crate) const SESSIONS_REWRITE_FILE: &str = "sessions.jsonl.new";
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

fn unsafe_path(what: &'static str, detail: String) -> StoreError {
    StoreError::UnsafePath { what, detail }
}

/// Refuses `path` on the way to `what` unless root or this process's user owns it;
/// `kind` (`"a socket "`, or empty) and `why` complete the message.
pub(crate) fn check_owner(
    what: &'static str,
    path: &Path,
    metadata: &fs::Metadata,
    kind: &str,
    why: &str,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let uid = metadata.uid();
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    Err(unsafe_path(
        what,
        format!("{} is {kind}owned by user {uid}{why}", path.display()),
    ))
}

/// Refuses a directory on the way to `what` that someone else could use to swap it:
/// owned by another user, or writable by group or others without the sticky bit.
fn check_ancestor(what: &'static str, dir: &Path, metadata: &fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    check_owner(what, dir, metadata, "", ", who could replace what is in it")?;
    let mode = metadata.mode();
    // Sticky (like /tmp): others may add entries but not rename or remove ours.
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(unsafe_path(
            what,
            format!(
                "{} is writable by others (mode {:o}) and has no sticky bit, so anyone could replace what is in it",
                dir.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Checks that nobody but this user and root can swap `path` for something else, now or
/// later: `path` itself is not a symbolic link, and every directory leading to it (after
/// resolving links, each link itself owned by root or this user) is owned by root or this
/// user and not writable by others unless sticky. Checking the whole way down once is
/// what makes later use of the path race-free: nobody else can change any step of it.
/// Returns what `path` is now (`None`: it does not exist yet).
pub fn check_location(what: &'static str, path: &Path) -> Result<Option<fs::Metadata>> {
    let absolute = std::path::absolute(path).map_err(|e| StoreError::io("resolve", path, e))?;
    let own = match fs::symlink_metadata(&absolute) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            return Err(unsafe_path(
                what,
                format!(
                    "{} is a symbolic link (it could point anywhere; give the real path)",
                    absolute.display()
                ),
            ));
        }
        Ok(metadata) => Some(metadata),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(StoreError::io("inspect", &absolute, e)),
    };
    // Links on the way (e.g. /var/run -> /run) are fine if they belong to root or us.
    let mut prefix = PathBuf::new();
    let parent = absolute.parent().unwrap_or(Path::new("/"));
    for component in parent.components() {
        prefix.push(component);
        match fs::symlink_metadata(&prefix) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                check_owner(what, &prefix, &metadata, "a symbolic link ", "")?;
            }
            Ok(_) => {}
            // Missing directories are created by the collector, as its own.
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(StoreError::io("inspect", &prefix, e)),
        }
    }
    let mut existing = parent;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let real = fs::canonicalize(existing).map_err(|e| StoreError::io("resolve", existing, e))?;
    for dir in real.ancestors() {
        let metadata = fs::metadata(dir).map_err(|e| StoreError::io("inspect", dir, e))?;
        check_ancestor(what, dir, &metadata)?;
    }
    Ok(own)
}

/// Refuses an existing store directory that another user owns or others can write, and
/// symbolic links or foreign files among the store's own entries (a link in the store
/// would make the collector write or sign wherever it points).
pub(crate) fn check_store_entries(dir: &Path) -> Result<()> {
    const WHAT: &str = "store";
    let metadata = match fs::symlink_metadata(dir) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("inspect", dir, e)),
    };
    if !metadata.is_dir() {
        return Err(unsafe_path(
            WHAT,
            format!("{} is not a directory", dir.display()),
        ));
    }
    check_ancestor(WHAT, dir, &metadata)?;
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
            return Err(unsafe_path(
                WHAT,
                format!("{} is a symbolic link", entry.display()),
            ));
        }
        check_owner(WHAT, &entry, &metadata, "", "")?;
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
            Err(error @ StoreError::UnsafePath { .. }) => error.to_string(),
            other => panic!("expected an unsafe path refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_store_or_socket_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("store");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let message = refusal(check_location("store", &link));
        assert!(message.contains("symbolic link"), "{message}");
        // A dangling link is refused too: bind() would follow it.
        let dangling = dir.path().join("c.sock");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        refusal(check_location("socket", &dangling));
    }

    #[test]
    fn a_directory_others_can_write_is_refused_unless_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        set_mode(&shared, 0o777).unwrap();
        let store = shared.join("a").join("store");
        let message = refusal(check_location("store", &store));
        assert!(message.contains("writable by others"), "{message}");
        set_mode(&shared, 0o1777).unwrap();
        assert!(check_location("store", &store).unwrap().is_none());
        // A group-writable store directory of our own is refused as well.
        let own = dir.path().join("own");
        fs::create_dir(&own).unwrap();
        set_mode(&own, 0o770).unwrap();
        refusal(check_store_entries(&own));
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
        assert!(message.contains("symbolic link"), "{message}");
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
