//! Putting a spec on disk: the kernel name and destination directory, copying the
//! resources, writing a new spec directory, and replacing `kernel.json` in place.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::{InstallOptions, KERNEL_JSON, KernelspecError, Result, SearchEnv};

const MAX_COPY_DEPTH: usize = 32;

/// Whether `name` is a valid kernelspec name for Jupyter (`^[a-z0-9._-]+$`, any case).
pub fn is_valid_kernel_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name != "."
        && name != ".."
}

fn to_json_text(spec: &Map<String, Value>) -> Result<String> {
    serde_json::to_string_pretty(spec)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| KernelspecError::Template(e.to_string()))
}

fn io_error(path: &Path, source: io::Error, hint: &str) -> KernelspecError {
    if source.kind() == io::ErrorKind::PermissionDenied
        || source.raw_os_error() == Some(nix::libc::EROFS)
    {
        KernelspecError::PermissionDenied {
            path: path.to_path_buf(),
            hint: hint.to_owned(),
        }
    } else {
        KernelspecError::Write {
            path: path.to_path_buf(),
            error: source,
        }
    }
}

/// The directory `install` writes to when not replacing.
pub fn destination_dir(args: &InstallOptions, env: &SearchEnv, name: &str) -> Result<PathBuf> {
    let base = if args.user {
        env.user_data_dir
            .clone()
            .ok_or(KernelspecError::NoUserDataDir)?
    } else if args.sys_prefix {
        env.python_prefix
            .as_ref()
            .ok_or(KernelspecError::NoPythonPrefix)?
            .join("share")
            .join("jupyter")
    } else if let Some(prefix) = &args.prefix {
        prefix.join("share").join("jupyter")
    } else {
        env.system_dirs
            .first()
            .cloned()
            .unwrap_or_else(|| PathBuf::from("/usr/local/share/jupyter"))
    };
    Ok(base.join("kernels").join(name))
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Copy everything in `src` except a top-level `kernel.json` into `dst` (which exists).
pub fn copy_resources(src: &Path, dst: &Path) -> Result<()> {
    copy_dir(src, dst, 0, true)
}

fn copy_dir(src: &Path, dst: &Path, depth: usize, top: bool) -> Result<()> {
    if depth > MAX_COPY_DEPTH {
        tracing::warn!(dir = %src.display(), "not copied: directories nested too deep");
        return Ok(());
    }
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |error| KernelspecError::Read { path, error }
    };
    for entry in fs::read_dir(src).map_err(read_err(src))? {
        let entry = entry.map_err(read_err(src))?;
        let name = entry.file_name();
        if top && name == KERNEL_JSON {
            continue;
        }
        let from = entry.path();
        let to = dst.join(&name);
        // Follow symlinks: the copy must not depend on the source directory.
        let meta = match fs::metadata(&from) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(file = %from.display(), error = %e, "not copied");
                continue;
            }
        };
        if meta.is_dir() {
            fs::create_dir(&to).map_err(|e| io_error(&to, e, "cannot create directory"))?;
            copy_dir(&from, &to, depth + 1, false)?;
        } else if meta.is_file() {
            fs::copy(&from, &to).map_err(|e| io_error(&to, e, "cannot copy file"))?;
        } else {
            tracing::warn!(file = %from.display(), "not copied: not a regular file");
        }
    }
    Ok(())
}

/// Write a new kernelspec directory `dest` (resources from `src_dir`, then `kernel.json`),
/// assembled next to it and renamed into place. If `dest` exists it is replaced.
pub fn write_new_spec(src_dir: &Path, dest: &Path, spec: &Map<String, Value>) -> Result<()> {
    let hint = "run as a user who may write there (often root), or install with --user or \
                --prefix";
    let parent = dest.parent().ok_or_else(|| KernelspecError::Write {
        path: dest.to_path_buf(),
        error: io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"),
    })?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    fs::create_dir_all(parent).map_err(|e| io_error(parent, e, hint))?;
    let text = to_json_text(spec)?;

    let staging = parent.join(format!(".{name}.jupyter-audit-new-{}", unique_suffix()));
    fs::create_dir(&staging).map_err(|e| io_error(&staging, e, hint))?;
    let result = (|| {
        copy_resources(src_dir, &staging)?;
        let kernel_json = staging.join(KERNEL_JSON);
        fs::write(&kernel_json, &text).map_err(|e| io_error(&kernel_json, e, hint))?;
        if dest.exists() {
            let old = parent.join(format!(".{name}.jupyter-audit-old-{}", unique_suffix()));
            fs::rename(dest, &old).map_err(|e| io_error(dest, e, hint))?;
            if let Err(e) = fs::rename(&staging, dest) {
                // Put the old one back; report the original failure.
                let _ = fs::rename(&old, dest);
                return Err(io_error(dest, e, hint));
            }
            if let Err(e) = fs::remove_dir_all(&old) {
                tracing::warn!(dir = %old.display(), error = %e, "cannot remove the old kernelspec");
            }
        } else {
            fs::rename(&staging, dest).map_err(|e| io_error(dest, e, hint))?;
        }
        Ok(())
    })();
    if result.is_err() && staging.exists() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// Atomically rewrite `DIR/kernel.json` with `spec`, keeping its mode (and owner where
/// permitted). Returns false if the content was already identical (nothing written).
pub fn replace_spec_file(dir: &Path, spec: &Map<String, Value>) -> Result<bool> {
    let hint = "run as the owner of the kernelspec (often root), or install an audited copy \
                with --name and --user";
    let path = dir.join(KERNEL_JSON);
    let text = to_json_text(spec)?;
    let old_meta = fs::metadata(&path).map_err(|error| KernelspecError::Read {
        path: path.clone(),
        error,
    })?;
    if fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    let mode = old_meta.permissions().mode() & 0o7777;
    let tmp = dir.join(format!(
        ".kernel.json.jupyter-audit-{}.tmp",
        unique_suffix()
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| io_error(&tmp, e, hint))?;
        file.write_all(text.as_bytes())
            .map_err(|e| io_error(&tmp, e, hint))?;
        // The umask may have narrowed the mode at creation.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io_error(&tmp, e, hint))?;
        if let Err(e) = std::os::unix::fs::fchown(&file, Some(old_meta.uid()), Some(old_meta.gid()))
        {
            tracing::debug!(error = %e, "cannot keep the owner of kernel.json");
        }
        file.sync_all().map_err(|e| io_error(&tmp, e, hint))?;
        fs::rename(&tmp, &path).map_err(|e| io_error(&path, e, hint))?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(true)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernelspec::test_support::{args, env_with};

    #[test]
    fn destinations() {
        let env = env_with(Path::new("/r"));
        let mut a = args("x");
        assert_eq!(
            destination_dir(&a, &env, "n").expect("sys"),
            Path::new("/r/sys1/kernels/n")
        );
        a.user = true;
        assert_eq!(
            destination_dir(&a, &env, "n").expect("user"),
            Path::new("/r/user/kernels/n")
        );
        a.user = false;
        a.sys_prefix = true;
        assert_eq!(
            destination_dir(&a, &env, "n").expect("env"),
            Path::new("/r/env/share/jupyter/kernels/n")
        );
        let no_python = SearchEnv {
            python_prefix: None,
            ..env.clone()
        };
        assert!(matches!(
            destination_dir(&a, &no_python, "n"),
            Err(KernelspecError::NoPythonPrefix)
        ));
    }
}
