//! Who else could replace what an audited kernel runs: the proxy binary its kernelspec
//! names and the kernelspec itself. Whoever can swap either starts kernels off the record
//! (README, "Threat model"), so `install` warns when anyone but root and the installing
//! user could: a wheel installed into an environment the notebook user owns (the Docker
//! Stacks' /opt/conda), a group-writable shared prefix, a binary in someone's home.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::path_safety::{self, PathCheckError, PathRole};

/// Why someone other than root and this user could replace `path`, or `None` when
/// nobody could (or it cannot be inspected: `install` reports missing files itself).
/// Checks the entry (not followed), every directory above it, and, for a symbolic
/// link, the same for what it resolves to.
pub fn who_else_could_replace(path: &Path) -> Option<String> {
    let metadata = fs::symlink_metadata(path).ok()?;
    let problem = |error: PathCheckError| match error {
        PathCheckError::Unsafe(refusal) => Some(refusal.problem.to_string()),
        PathCheckError::Io { .. } => None,
    };
    if let Err(error) = path_safety::check_owner(PathRole::AuditedKernel, path, &metadata) {
        return problem(error);
    }
    if metadata.is_file() && metadata.mode() & 0o022 != 0 {
        return Some(format!(
            "{} is writable by group or others (mode {:o})",
            path.display(),
            metadata.mode() & 0o7777
        ));
    }
    for dir in path
        .ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
    {
        let Ok(dir_metadata) = fs::metadata(dir) else {
            continue;
        };
        if let Err(error) =
            path_safety::check_directory(PathRole::AuditedKernel, dir, &dir_metadata)
        {
            return problem(error);
        }
    }
    if metadata.is_symlink() {
        let target = fs::canonicalize(path).ok()?;
        return who_else_could_replace(&target);
    }
    None
}

/// Warns, naming the path and how, when someone else could replace the proxy binary or
/// the kernelspec an install just wrote.
pub fn warn_if_others_can_replace(proxy: &Path, spec_dir: &Path) {
    let kernel_json = spec_dir.join("kernel.json");
    for (what, path) in [
        ("proxy binary", proxy),
        ("kernelspec", kernel_json.as_path()),
    ] {
        if let Some(problem) = who_else_could_replace(path) {
            tracing::warn!(
                "the audited kernel's {what} {} can be replaced by someone other than root \
                 and you: {problem}. Whoever can replace it can start kernels off the record; \
                 install jupyter-audit and the kernelspec where only root can write (a \
                 root-owned environment, /usr/local, the Debian package)",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_group_writable_binary_or_directory_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        let binary = dir.path().join("jupyter-audit");
        fs::write(&binary, b"").expect("write");
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(who_else_could_replace(&binary), None);

        fs::set_permissions(&binary, fs::Permissions::from_mode(0o775)).expect("chmod");
        let problem = who_else_could_replace(&binary).expect("named");
        assert!(problem.contains("mode 775"), "{problem}");

        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).expect("chmod");
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).expect("mkdir");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o775)).expect("chmod");
        let inside = shared.join("jupyter-audit");
        fs::write(&inside, b"").expect("write");
        let problem = who_else_could_replace(&inside).expect("named");
        assert!(problem.contains("writable by others"), "{problem}");
    }

    #[test]
    fn a_link_is_checked_where_it_points() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        let open = dir.path().join("open");
        fs::create_dir(&open).expect("mkdir");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).expect("chmod");
        let real = open.join("jupyter-audit");
        fs::write(&real, b"").expect("write");
        let link = dir.path().join("jupyter-audit");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let problem = who_else_could_replace(&link).expect("named");
        assert!(problem.contains(&open.display().to_string()), "{problem}");
    }
}
