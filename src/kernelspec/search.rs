//! Where kernelspecs live: the Jupyter data and `kernels` directories of this process's
//! environment ([`SearchEnv`]) and finding the directory of SPEC in them.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{KERNEL_JSON, KernelspecError, Result};

/// Everything from the process environment that decides where kernelspecs are searched
/// and installed. Tests build it by hand instead of mutating the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchEnv {
    /// `$JUPYTER_PATH` entries (data dirs, without `/kernels`).
    pub jupyter_path: Vec<PathBuf>,
    /// The Jupyter user data dir, if it can be determined.
    pub user_data_dir: Option<PathBuf>,
    /// The active Python prefix, if any.
    pub python_prefix: Option<PathBuf>,
    /// Search the Python prefix before the user data dir (as jupyter_core does in venvs).
    pub prefer_env: bool,
    /// System-wide data dirs; the first is the default install location.
    pub system_dirs: Vec<PathBuf>,
}

impl SearchEnv {
    /// Read the search configuration from the environment of this process (may run
    /// `python3` once to find its prefix).
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let jupyter_path = var("JUPYTER_PATH")
            .map(|v| split_path_list(&v.to_string_lossy()))
            .unwrap_or_default();
        let user_data_dir = user_data_dir(
            var("JUPYTER_DATA_DIR").map(PathBuf::from),
            var("XDG_DATA_HOME").map(PathBuf::from),
            home_dir(),
        );
        let (python_prefix, is_venv) = match var("VIRTUAL_ENV") {
            Some(v) => (Some(PathBuf::from(v)), true),
            None => match query_python_prefix() {
                Some((prefix, base)) => {
                    let is_venv = prefix != base;
                    (Some(prefix), is_venv)
                }
                None => (None, false),
            },
        };
        let prefer_env = match std::env::var("JUPYTER_PREFER_ENV_PATH") {
            Ok(v) => env_flag(&v),
            Err(_) => python_prefix.as_deref().is_some_and(|prefix| {
                let conda_env = match (var("CONDA_PREFIX"), std::env::var("CONDA_DEFAULT_ENV")) {
                    (Some(conda), default_env) => {
                        prefix.starts_with(conda)
                            && default_env.as_deref().unwrap_or("base") != "base"
                    }
                    (None, _) => false,
                };
                (is_venv || conda_env) && is_writable(prefix)
            }),
        };
        SearchEnv {
            jupyter_path,
            user_data_dir,
            python_prefix,
            prefer_env,
            system_dirs: vec![
                PathBuf::from("/usr/local/share/jupyter"),
                PathBuf::from("/usr/share/jupyter"),
            ],
        }
    }

    /// Jupyter data dirs in search order (duplicates removed).
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        let user: Vec<PathBuf> = self.user_data_dir.iter().cloned().collect();
        let env: Vec<PathBuf> = self
            .python_prefix
            .iter()
            .map(|p| p.join("share").join("jupyter"))
            .collect();
        let (first, second) = if self.prefer_env {
            (env, user)
        } else {
            (user, env)
        };
        let mut out: Vec<PathBuf> = Vec::new();
        for dir in self
            .jupyter_path
            .iter()
            .cloned()
            .chain(first)
            .chain(second)
            .chain(self.system_dirs.iter().cloned())
        {
            if !out.contains(&dir) {
                out.push(dir);
            }
        }
        out
    }

    /// The `kernels` directories searched for a kernel name, in order.
    pub fn kernel_dirs(&self) -> Vec<PathBuf> {
        self.data_dirs()
            .into_iter()
            .map(|d| d.join("kernels"))
            .collect()
    }
}

/// Split a `:`-separated path list, dropping empty entries and trailing slashes.
pub fn split_path_list(value: &str) -> Vec<PathBuf> {
    value
        .split(':')
        .map(|s| s.trim_end_matches('/'))
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// jupyter_core's `envset`: anything but a "false" spelling counts as set.
fn env_flag(value: &str) -> bool {
    !matches!(
        value.to_ascii_lowercase().as_str(),
        "no" | "n" | "false" | "off" | "0" | "0.0"
    )
}

/// The Jupyter user data dir, like jupyter_core's `jupyter_data_dir()` on Linux.
pub fn user_data_dir(
    jupyter_data_dir: Option<PathBuf>,
    xdg_data_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Option<PathBuf> {
    jupyter_data_dir
        .or_else(|| xdg_data_home.map(|x| x.join("jupyter")))
        .or_else(|| home.map(|h| h.join(".local").join("share").join("jupyter")))
}

fn home_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home));
    }
    match nix::unistd::User::from_uid(nix::unistd::getuid()) {
        Ok(Some(user)) => Some(user.dir),
        _ => None,
    }
}

fn is_writable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// `sys.prefix` and `sys.base_prefix` of `python3` on PATH, or None if it cannot run.
fn query_python_prefix() -> Option<(PathBuf, PathBuf)> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import sys; print(sys.prefix); print(sys.base_prefix)",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let output = match output {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            tracing::debug!(status = %o.status, "python3 failed; skipping the Python prefix");
            return None;
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot run python3; skipping the Python prefix");
            return None;
        }
    };
    let text = String::from_utf8(output.stdout).ok()?;
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let prefix = PathBuf::from(lines.next()?);
    let base = lines
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| prefix.clone());
    Some((prefix, base))
}

fn is_spec_dir(dir: &Path) -> bool {
    dir.join(KERNEL_JSON).is_file()
}

/// Find the directory of SPEC: a path (if it contains `/`) or a kernel name searched in
/// `kernel_dirs` in order, case-insensitively.
pub fn resolve_spec_dir(spec: &str, kernel_dirs: &[PathBuf]) -> Result<PathBuf> {
    if spec.contains('/') || spec == "." || spec == ".." {
        let path = Path::new(spec);
        if path.file_name() == Some(OsStr::new(KERNEL_JSON)) && path.is_file() {
            let parent = path.parent().unwrap_or(Path::new("."));
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            return Ok(parent.to_path_buf());
        }
        if is_spec_dir(path) {
            return Ok(path.to_path_buf());
        }
        return Err(KernelspecError::NotASpecDir {
            dir: path.to_path_buf(),
        });
    }

    let wanted = spec.to_lowercase();
    for dir in kernel_dirs {
        if let Some(found) = find_in_kernel_dir(dir, &wanted) {
            tracing::debug!(spec, dir = %found.display(), "found kernelspec");
            return Ok(found);
        }
    }
    let local = Path::new(spec);
    if is_spec_dir(local) {
        tracing::info!(
            spec,
            "no kernelspec of that name; using the directory ./{spec}"
        );
        return Ok(local.to_path_buf());
    }
    Err(KernelspecError::SpecNotFound {
        spec: spec.to_owned(),
        searched: kernel_dirs.to_vec(),
    })
}

fn find_in_kernel_dir(dir: &Path, wanted_lowercase: &str) -> Option<PathBuf> {
    let exact = dir.join(wanted_lowercase);
    if is_spec_dir(&exact) {
        return Some(exact);
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot list kernel dir");
            }
            return None;
        }
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().to_lowercase() == wanted_lowercase)
        .map(|e| e.path())
        .filter(|p| is_spec_dir(p))
        .collect();
    names.sort();
    names.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernelspec::test_support::{env_with, write_spec};
    use serde_json::json;

    #[test]
    fn search_order_user_first_unless_env_preferred() {
        let root = Path::new("/r");
        let mut env = env_with(root);
        let names = |env: &SearchEnv| {
            env.kernel_dirs()
                .iter()
                .map(|d| d.strip_prefix(root).expect("prefix").display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&env),
            [
                "jp1/kernels",
                "jp2/kernels",
                "user/kernels",
                "env/share/jupyter/kernels",
                "sys1/kernels",
                "sys2/kernels"
            ]
        );
        env.prefer_env = true;
        assert_eq!(names(&env)[2], "env/share/jupyter/kernels");
        assert_eq!(names(&env)[3], "user/kernels");
        env.python_prefix = None;
        env.jupyter_path = vec![root.join("sys1")];
        assert_eq!(
            names(&env),
            ["sys1/kernels", "user/kernels", "sys2/kernels"]
        );
    }

    #[test]
    fn path_list_and_data_dir() {
        assert_eq!(
            split_path_list("/a/:/b::"),
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(
            user_data_dir(None, Some("/x".into()), Some("/h".into())),
            Some(PathBuf::from("/x/jupyter"))
        );
        assert_eq!(
            user_data_dir(None, None, Some("/h".into())),
            Some(PathBuf::from("/h/.local/share/jupyter"))
        );
        assert_eq!(
            user_data_dir(Some("/j".into()), Some("/x".into()), None),
            Some(PathBuf::from("/j"))
        );
        assert!(env_flag("1") && env_flag("yes") && !env_flag("Off") && !env_flag("0"));
    }

    #[test]
    fn resolve_first_match_case_insensitive() {
        let tmp = tempfile::tempdir().expect("tmp");
        let env = env_with(tmp.path());
        write_spec(
            &tmp.path().join("user/kernels/Python3"),
            &json!({"argv": ["a"]}),
        );
        write_spec(
            &tmp.path().join("sys1/kernels/python3"),
            &json!({"argv": ["b"]}),
        );
        let found = resolve_spec_dir("python3", &env.kernel_dirs()).expect("found");
        assert_eq!(found, tmp.path().join("user/kernels/Python3"));
        let found = resolve_spec_dir("PYTHON3", &env.kernel_dirs()).expect("found");
        assert_eq!(found, tmp.path().join("user/kernels/Python3"));
    }

    #[test]
    fn resolve_directory_and_errors() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("spec");
        write_spec(&dir, &json!({"argv": ["a"]}));
        let s = dir.to_string_lossy().into_owned();
        assert_eq!(resolve_spec_dir(&s, &[]).expect("dir"), dir);
        let kj = dir.join(KERNEL_JSON).to_string_lossy().into_owned();
        assert_eq!(resolve_spec_dir(&kj, &[]).expect("file"), dir);
        let missing = tmp.path().join("nope").to_string_lossy().into_owned();
        assert!(matches!(
            resolve_spec_dir(&missing, &[]),
            Err(KernelspecError::NotASpecDir { .. })
        ));

        let env = env_with(tmp.path());
        let err = resolve_spec_dir("no-such-kernel-xyz", &env.kernel_dirs()).expect_err("missing");
        let msg = err.to_string();
        assert!(msg.contains("no-such-kernel-xyz"), "{msg}");
        for d in env.kernel_dirs() {
            assert!(msg.contains(&d.display().to_string()), "{msg}");
        }
    }
}
