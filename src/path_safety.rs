//! Path safety: refusing a path that another user could swap for something else, before
//! the collector creates, binds or writes anything there.
//!
//! A path is safe when it is not itself a symbolic link and every directory leading to
//! it is owned by root or this process's user and not writable by others (unless sticky,
//! like /tmp). Checked once, the whole way down, later use of the path is race-free:
//! nobody else can change any step of it. The store (its directory and entries) and the
//! collector (its socket) use these checks; a refusal names the [`PathRole`] of the path
//! and the [`Problem`] found.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a checked path is for; refusals name it ("refusing unsafe store path: …").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRole {
    /// The store directory and the files in it.
    Store,
    /// The collector's Unix socket.
    Socket,
    /// What an audited kernel runs: the proxy binary and its kernelspec.
    AuditedKernel,
}

impl fmt::Display for PathRole {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::Store => "store",
            Self::Socket => "socket",
            Self::AuditedKernel => "audited kernel",
        })
    }
}

/// Why a path is unsafe; each says which path and how someone else could use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The path given is a symbolic link.
    GivenPathIsLink { path: PathBuf },
    /// One of the entries that make up the store is a symbolic link (it would make the
    /// collector write or sign wherever it points).
    EntryIsLink { path: PathBuf },
    /// Owned by someone other than root and this user; what the path is (a directory,
    /// a symbolic link, a socket) tells what they could do with it.
    OwnedByOther {
        path: PathBuf,
        uid: u32,
        kind: EntryKind,
    },
    /// A directory others may write to without the sticky bit.
    WritableByOthers { dir: PathBuf, mode: u32 },
    /// Expected a directory.
    NotADirectory { path: PathBuf },
}

/// What an entry found on the way is, for the wording of [`Problem::OwnedByOther`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    SymbolicLink,
    Socket,
    File,
}

impl EntryKind {
    fn of(metadata: &fs::Metadata) -> Self {
        use std::os::unix::fs::FileTypeExt;
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            Self::SymbolicLink
        } else if file_type.is_dir() {
            Self::Directory
        } else if file_type.is_socket() {
            Self::Socket
        } else {
            Self::File
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GivenPathIsLink { path } => write!(
                formatter,
                "{} is a symbolic link (it could point anywhere; give the real path)",
                path.display()
            ),
            Self::EntryIsLink { path } => {
                write!(formatter, "{} is a symbolic link", path.display())
            }
            Self::OwnedByOther { path, uid, kind } => {
                let (article, why) = match kind {
                    EntryKind::Directory => ("", ", who could replace what is in it"),
                    EntryKind::SymbolicLink => ("a symbolic link ", ""),
                    EntryKind::Socket => ("a socket ", ""),
                    EntryKind::File => ("", ""),
                };
                write!(
                    formatter,
                    "{} is {article}owned by user {uid}{why}",
                    path.display()
                )
            }
            Self::WritableByOthers { dir, mode } => write!(
                formatter,
                "{} is writable by others (mode {mode:o}) and has no sticky bit, so anyone \
                 could replace what is in it",
                dir.display()
            ),
            Self::NotADirectory { path } => {
                write!(formatter, "{} is not a directory", path.display())
            }
        }
    }
}

/// A path refused: what it is for, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing unsafe {role} path: {problem}")]
pub struct UnsafePath {
    pub role: PathRole,
    pub problem: Problem,
}

/// Why a path could not be accepted: it is unsafe, or it could not be inspected.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PathCheckError {
    #[error(transparent)]
    Unsafe(#[from] UnsafePath),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
}

impl PathCheckError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }
}

type Result<T, E = PathCheckError> = std::result::Result<T, E>;

fn unsafe_path(role: PathRole, problem: Problem) -> PathCheckError {
    PathCheckError::Unsafe(UnsafePath { role, problem })
}

/// Refuses `path` (described by `metadata`, not followed if a link) unless root or this
/// process's user owns it.
pub fn check_owner(role: PathRole, path: &Path, metadata: &fs::Metadata) -> Result<()> {
    let uid = metadata.uid();
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    Err(unsafe_path(
        role,
        Problem::OwnedByOther {
            path: path.to_owned(),
            uid,
            kind: EntryKind::of(metadata),
        },
    ))
}

/// Refuses a directory that someone else could use to swap what is in it: owned by
/// another user, or writable by group or others without the sticky bit.
pub fn check_directory(role: PathRole, dir: &Path, metadata: &fs::Metadata) -> Result<()> {
    check_owner(role, dir, metadata)?;
    let mode = metadata.mode();
    // Sticky (like /tmp): others may add entries but not rename or remove ours.
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(unsafe_path(
            role,
            Problem::WritableByOthers {
                dir: dir.to_owned(),
                mode: mode & 0o7777,
            },
        ));
    }
    Ok(())
}

/// Checks that nobody but this user and root can swap `path` for something else, now or
/// later: `path` itself is not a symbolic link, and every directory leading to it (after
/// resolving links, each link itself owned by root or this user) passes
/// [`check_directory`]. Returns what `path` is now (`None`: it does not exist yet).
pub fn check_location(role: PathRole, path: &Path) -> Result<Option<fs::Metadata>> {
    let absolute = std::path::absolute(path).map_err(|e| PathCheckError::io("resolve", path, e))?;
    let own = match fs::symlink_metadata(&absolute) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            return Err(unsafe_path(
                role,
                Problem::GivenPathIsLink { path: absolute },
            ));
        }
        Ok(metadata) => Some(metadata),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(PathCheckError::io("inspect", &absolute, e)),
    };
    // Links on the way (e.g. /var/run -> /run) are fine if they belong to root or us.
    let mut prefix = PathBuf::new();
    let parent = absolute.parent().unwrap_or(Path::new("/"));
    for component in parent.components() {
        prefix.push(component);
        match fs::symlink_metadata(&prefix) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                check_owner(role, &prefix, &metadata)?;
            }
            Ok(_) => {}
            // Missing directories are created by the collector, as its own.
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(PathCheckError::io("inspect", &prefix, e)),
        }
    }
    let mut existing = parent;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let real =
        fs::canonicalize(existing).map_err(|e| PathCheckError::io("resolve", existing, e))?;
    for dir in real.ancestors() {
        let metadata = fs::metadata(dir).map_err(|e| PathCheckError::io("inspect", dir, e))?;
        check_directory(role, dir, &metadata)?;
    }
    Ok(own)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn refusal<T: fmt::Debug>(result: Result<T>) -> String {
        match result {
            Err(error @ PathCheckError::Unsafe(_)) => error.to_string(),
            other => panic!("expected an unsafe path refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_path_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("store");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let message = refusal(check_location(PathRole::Store, &link));
        assert!(
            message.starts_with("refusing unsafe store path: ")
                && message.contains(&format!("{} is a symbolic link", link.display())),
            "{message}"
        );
        // A dangling link is refused too: bind() would follow it.
        let dangling = dir.path().join("c.sock");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let message = refusal(check_location(PathRole::Socket, &dangling));
        assert!(
            message.starts_with("refusing unsafe socket path: "),
            "{message}"
        );
    }

    #[test]
    fn a_directory_others_can_write_is_refused_unless_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        let store = shared.join("a").join("store");
        let message = refusal(check_location(PathRole::Store, &store));
        assert!(
            message.contains(&format!(
                "{} is writable by others (mode 777)",
                shared.display()
            )),
            "{message}"
        );
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(check_location(PathRole::Store, &store).unwrap().is_none());
    }

    #[test]
    fn refusals_say_what_the_foreign_entry_is() {
        let owned = |kind| Problem::OwnedByOther {
            path: PathBuf::from("/run/x"),
            uid: 65534,
            kind,
        };
        let refused = |role, kind| UnsafePath {
            role,
            problem: owned(kind),
        };
        assert_eq!(
            refused(PathRole::Socket, EntryKind::Socket).to_string(),
            "refusing unsafe socket path: /run/x is a socket owned by user 65534"
        );
        assert_eq!(
            refused(PathRole::Store, EntryKind::Directory).to_string(),
            "refusing unsafe store path: /run/x is owned by user 65534, who could replace \
             what is in it"
        );
        assert_eq!(
            owned(EntryKind::SymbolicLink).to_string(),
            "/run/x is a symbolic link owned by user 65534"
        );
        assert_eq!(
            owned(EntryKind::File).to_string(),
            "/run/x is owned by user 65534"
        );
    }
}
