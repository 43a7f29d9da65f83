//! `jupyter-audit install`: write a kernelspec that runs an existing kernel behind the proxy.
//!
//! # What is written
//! The audited `kernel.json` starts from the template in `kernelspec/kernel.json.in`
//! (see `kernelspec/README.md`): `argv` becomes
//! `[PROXY, "kernel", "-f", "{connection_file}", "--", ORIGINAL_ARGV...]`, the display name
//! gets an ` (audited)` suffix unless `--display-name` is given, and every other key of the
//! original spec (`language`, `env`, `interrupt_mode`, `kernel_protocol_version`, all of
//! `metadata`, unknown keys) is kept unchanged. `metadata.jupyter_audit` records what is
//! wrapped: `wrapped_argv`, `wrapped_spec` (the directory it came from) and `version`.
//! All other files of the spec directory (logos, `kernel.js`, subdirectories) are copied.
//!
//! Two deliberate differences from a plain copy:
//! - a bare `python`/`python3`/`python3.X` as the kernel's `argv[0]` is one that Jupyter
//!   replaces by its own `sys.executable`; behind the proxy it no longer would, so it is
//!   resolved to `<prefix>/bin/<name>` of the prefix the spec lives in, else of the active
//!   Python. `wrapped_argv` keeps the original, so a later re-wrap resolves it again.
//! - `metadata.supported_encryption` (CurveZMQ) is removed, because the proxy does not
//!   implement CURVE; it is kept in `metadata.jupyter_audit.removed_metadata`.
//!
//! # Finding SPEC
//! A SPEC containing `/` is a directory holding `kernel.json` (a path to the `kernel.json`
//! itself is accepted too). Otherwise it is a kernel name, matched case-insensitively like
//! Jupyter does, in `kernels/` under: `$JUPYTER_PATH` entries, then the user data dir
//! (`$JUPYTER_DATA_DIR`, else `$XDG_DATA_HOME/jupyter`, else `~/.local/share/jupyter`) and
//! the Python prefix (`$VIRTUAL_ENV`, else `python3`'s `sys.prefix`, skipped if that fails)
//! `/share/jupyter` — user first, unless Jupyter would prefer the environment
//! (`$JUPYTER_PREFER_ENV_PATH`, or an active virtualenv / non-base conda env we can write
//! to, as in jupyter_core) — then `/usr/local/share/jupyter` and `/usr/share/jupyter`.
//! First match wins. A name found nowhere falls back to a directory of that name in the
//! current directory; failing that, the error lists every directory searched.
//!
//! # Where it goes
//! `--user`: user data dir; `--sys-prefix`: Python prefix `/share/jupyter`; `--prefix P`:
//! `P/share/jupyter`; none: `/usr/local/share/jupyter` (Jupyter's system default); always
//! `+ /kernels/NAME`. NAME is lowercased and must match Jupyter's `[a-z0-9._-]+`.
//! The spec is assembled in a hidden sibling directory and renamed into place.
//!
//! An existing destination is an error (remove it with `jupyter kernelspec remove NAME`
//! or choose another `--name`), except when it is itself an audited spec wrapping the same
//! kernelspec: then it is refreshed, so running the same `install` twice is harmless.
//! A destination equal to the source is an error that points to `--replace`.
//!
//! # `--replace`
//! Rewrites SPEC's own `kernel.json` in place (temp file in the same directory, fsync,
//! rename; mode and, where permitted, owner are kept). The display name is unchanged unless
//! `--display-name` is given. It cannot be combined with `--name`, `--user`, `--sys-prefix`
//! or `--prefix`.
//!
//! # Never twice
//! A spec is already audited when it has `metadata.jupyter_audit.wrapped_argv`, or when its
//! `argv[1]` is `kernel` and `argv[0]` is a `jupyter-audit` binary (then the original argv is
//! what follows `--`). Wrapping or replacing such a spec wraps the original argv again (only
//! the proxy path and version are refreshed); if nothing changes, nothing is written.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::cli::InstallArgs;

/// The template every audited `kernel.json` is built from.
pub const TEMPLATE: &str = include_str!("../kernelspec/kernel.json.in");

/// Key under `metadata` that marks an audited kernelspec.
pub const METADATA_KEY: &str = "jupyter_audit";

/// Metadata keys of the wrapped spec that the audited spec must not announce.
const REMOVED_METADATA: &[&str] = &["supported_encryption"];

const DISPLAY_SUFFIX: &str = " (audited)";
const KERNEL_JSON: &str = "kernel.json";
const MAX_COPY_DEPTH: usize = 32;

/// Why `install` failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelspecError {
    #[error(
        "no kernelspec named '{spec}' found; searched (in this order):\n{}\n\
         pass a directory containing kernel.json to wrap a kernelspec elsewhere",
        list_dirs(searched)
    )]
    SpecNotFound {
        spec: String,
        searched: Vec<PathBuf>,
    },

    #[error("{} is not a kernelspec directory: it has no kernel.json", dir.display())]
    NotASpecDir { dir: PathBuf },

    #[error(
        "invalid kernel name '{name}': use only ASCII letters, digits, '.', '_' and '-' \
         (Jupyter lowercases it)"
    )]
    InvalidName { name: String },

    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },

    #[error("{} is not valid JSON: {error}", path.display())]
    InvalidJson {
        path: PathBuf,
        error: serde_json::Error,
    },

    #[error("{} is not a usable kernelspec: {reason}", path.display())]
    InvalidSpec { path: PathBuf, reason: String },

    #[error(
        "{} already exists; remove it first (jupyter kernelspec remove {name}), choose \
         another --name, or use --replace to audit a kernelspec in place",
        dest.display()
    )]
    DestinationExists { dest: PathBuf, name: String },

    #[error(
        "the destination {} is the kernelspec being wrapped; use --replace to audit it in \
         place, or choose another --name",
        dest.display()
    )]
    DestinationIsSource { dest: PathBuf },

    #[error("permission denied writing {}: {hint}", path.display())]
    PermissionDenied { path: PathBuf, hint: String },

    #[error("cannot write {}: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },

    #[error(
        "cannot determine the Python prefix for --sys-prefix: $VIRTUAL_ENV is not set and \
         `python3 -c 'import sys; print(sys.prefix)'` failed; use --prefix instead"
    )]
    NoPythonPrefix,

    #[error("cannot determine the Jupyter user data directory: set $JUPYTER_DATA_DIR or $HOME")]
    NoUserDataDir,

    #[error("cannot determine the path of the jupyter-audit binary ({error}); use --proxy-path")]
    ProxyPath { error: io::Error },

    #[error("{0}")]
    ConflictingOptions(String),

    #[error("the built-in kernelspec template is broken: {0}")]
    Template(String),
}

fn list_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "  (no directories)".to_owned();
    }
    dirs.iter()
        .map(|d| {
            let missing = if d.is_dir() { "" } else { " (does not exist)" };
            format!("  {}{missing}", d.display())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

type Result<T> = std::result::Result<T, KernelspecError>;

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

/// Whether `name` is a valid kernelspec name for Jupyter (`^[a-z0-9._-]+$`, any case).
pub fn is_valid_kernel_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name != "."
        && name != ".."
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

/// Read and parse `DIR/kernel.json`; it must be a JSON object.
pub fn read_spec(dir: &Path) -> Result<Map<String, Value>> {
    let path = dir.join(KERNEL_JSON);
    let text = fs::read_to_string(&path).map_err(|error| KernelspecError::Read {
        path: path.clone(),
        error,
    })?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(KernelspecError::InvalidSpec {
            path,
            reason: "kernel.json is not a JSON object".to_owned(),
        }),
        Err(error) => Err(KernelspecError::InvalidJson { path, error }),
    }
}

/// A kernelspec as it was before any auditing: what gets wrapped.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSpec {
    /// The original spec: original `argv`, `metadata` without `jupyter_audit` (with any
    /// removed keys restored), everything else as found.
    pub spec: Map<String, Value>,
    /// The original kernel command line.
    pub argv: Vec<String>,
    /// Directory of the original kernelspec.
    pub wrapped_spec: PathBuf,
    /// Whether the spec read was already audited.
    pub was_audited: bool,
}

fn string_array(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn is_proxy_argv(argv: &[String]) -> bool {
    argv.len() >= 2
        && argv[1] == "kernel"
        && Path::new(&argv[0])
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("jupyter-audit"))
}

/// Recover the original spec from `spec` (read from `dir`), undoing a previous audit.
pub fn unwrap_spec(mut spec: Map<String, Value>, dir: &Path) -> Result<SourceSpec> {
    let path = dir.join(KERNEL_JSON);
    let invalid = |reason: &str| KernelspecError::InvalidSpec {
        path: path.clone(),
        reason: reason.to_owned(),
    };
    let argv = spec
        .get("argv")
        .and_then(string_array)
        .ok_or_else(|| invalid("\"argv\" must be a list of strings"))?;
    if argv.is_empty() {
        return Err(invalid("\"argv\" is empty"));
    }

    let record = match spec.get_mut("metadata") {
        Some(Value::Object(metadata)) => metadata.remove(METADATA_KEY),
        Some(Value::Null) | None => None,
        Some(_) => return Err(invalid("\"metadata\" must be an object")),
    };
    if let Some(record) = record {
        let wrapped_argv = record
            .get("wrapped_argv")
            .and_then(string_array)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                invalid("metadata.jupyter_audit.wrapped_argv must be a non-empty list of strings")
            })?;
        let wrapped_spec = record
            .get("wrapped_spec")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.to_path_buf());
        if let Some(Value::Object(removed)) = record.get("removed_metadata")
            && let Some(Value::Object(metadata)) = spec.get_mut("metadata")
        {
            for (k, v) in removed {
                metadata.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        spec.insert("argv".to_owned(), string_list(&wrapped_argv));
        return Ok(SourceSpec {
            spec,
            argv: wrapped_argv,
            wrapped_spec,
            was_audited: true,
        });
    }

    if is_proxy_argv(&argv) {
        let sep = argv.iter().position(|a| a == "--").ok_or_else(|| {
            invalid("argv runs jupyter-audit but has no \"--\" before the kernel")
        })?;
        let original: Vec<String> = argv[sep + 1..].to_vec();
        if original.is_empty() {
            return Err(invalid(
                "argv runs jupyter-audit but no kernel follows \"--\"",
            ));
        }
        spec.insert("argv".to_owned(), string_list(&original));
        return Ok(SourceSpec {
            spec,
            argv: original,
            wrapped_spec: dir.to_path_buf(),
            was_audited: true,
        });
    }

    Ok(SourceSpec {
        spec,
        argv,
        wrapped_spec: dir.to_path_buf(),
        was_audited: false,
    })
}

fn string_list(items: &[String]) -> Value {
    Value::Array(items.iter().cloned().map(Value::String).collect())
}

/// How the display name of the audited spec is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisplayName {
    /// Use this one.
    Given(String),
    /// `"<original> (audited)"` (not doubled if already there).
    Suffixed,
    /// Keep the original.
    Keep,
}

/// Whether `name` is an interpreter name that Jupyter replaces by `sys.executable`.
pub fn is_bare_python(name: &str) -> bool {
    match name.strip_prefix("python") {
        Some("") => true,
        Some(version) => {
            version.starts_with(|c: char| c.is_ascii_digit())
                && version.chars().all(|c| c.is_ascii_digit() || c == '.')
        }
        None => false,
    }
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The prefix a kernelspec directory lives in, if it is `<prefix>/share/jupyter/kernels/X`.
fn spec_prefix(spec_dir: &Path) -> Option<PathBuf> {
    let kernels = spec_dir.parent()?;
    let jupyter = kernels.parent()?;
    let share = jupyter.parent()?;
    (kernels.file_name()? == "kernels"
        && jupyter.file_name()? == "jupyter"
        && share.file_name()? == "share")
        .then(|| share.parent().map(Path::to_path_buf))
        .flatten()
}

/// Resolve a bare `python*` argv[0] to an absolute interpreter (see the module doc).
pub fn resolve_interpreter(
    argv0: &str,
    spec_dir: &Path,
    python_prefix: Option<&Path>,
) -> Option<PathBuf> {
    if !is_bare_python(argv0) {
        return None;
    }
    spec_prefix(spec_dir)
        .into_iter()
        .chain(python_prefix.map(Path::to_path_buf))
        .map(|prefix| prefix.join("bin").join(argv0))
        .find(|candidate| is_executable_file(candidate))
}

/// Fill the template: `@KEY@` strings are replaced by their value; inside an array a
/// placeholder whose value is an array is spliced in.
fn fill_template(template: &Value, values: &[(&str, Value)]) -> Value {
    let lookup = |s: &str| values.iter().find(|(k, _)| *k == s).map(|(_, v)| v);
    match template {
        Value::String(s) => lookup(s).cloned().unwrap_or_else(|| template.clone()),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item.as_str().and_then(lookup) {
                    Some(Value::Array(spliced)) => out.extend(spliced.iter().cloned()),
                    _ => out.push(fill_template(item, values)),
                }
            }
            Value::Array(out)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill_template(v, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Build the audited `kernel.json` for `source`.
///
/// `spec_dir` is where `source` was read from (for resolving a bare `python`);
/// `python_prefix` the active Python prefix.
pub fn build_wrapped_spec(
    source: &SourceSpec,
    proxy: &Path,
    display_name: &DisplayName,
    spec_dir: &Path,
    python_prefix: Option<&Path>,
) -> Result<Map<String, Value>> {
    let template: Value =
        serde_json::from_str(TEMPLATE).map_err(|e| KernelspecError::Template(e.to_string()))?;

    let original_display = source
        .spec
        .get("display_name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            spec_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "kernel".to_owned())
        });
    let display = match display_name {
        DisplayName::Given(name) => name.clone(),
        DisplayName::Keep => original_display,
        DisplayName::Suffixed if original_display.ends_with(DISPLAY_SUFFIX) => original_display,
        DisplayName::Suffixed => format!("{original_display}{DISPLAY_SUFFIX}"),
    };

    let mut run_argv = source.argv.clone();
    if let Some(first) = run_argv.first_mut() {
        if let Some(resolved) = resolve_interpreter(first, spec_dir, python_prefix) {
            tracing::info!(
                from = %first,
                to = %resolved.display(),
                "resolved the kernel's interpreter (Jupyter would substitute its own)"
            );
            *first = resolved.to_string_lossy().into_owned();
        } else if is_bare_python(first) {
            tracing::warn!(
                interpreter = %first,
                "cannot resolve the kernel's interpreter to an absolute path; it will be \
                 looked up on PATH when the kernel starts"
            );
        }
    }

    let filled = fill_template(
        &template,
        &[
            (
                "@PROXY@",
                Value::String(proxy.to_string_lossy().into_owned()),
            ),
            ("@WRAPPED_ARGV@", string_list(&run_argv)),
            ("@DISPLAY_NAME@", Value::String(display)),
            (
                "@VERSION@",
                Value::String(env!("CARGO_PKG_VERSION").to_owned()),
            ),
            (
                "@WRAPPED_SPEC@",
                Value::String(source.wrapped_spec.to_string_lossy().into_owned()),
            ),
        ],
    );
    let Value::Object(mut filled) = filled else {
        return Err(KernelspecError::Template("not a JSON object".to_owned()));
    };
    let mut record = match filled
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove(METADATA_KEY))
    {
        Some(Value::Object(record)) => record,
        _ => {
            return Err(KernelspecError::Template(
                "metadata.jupyter_audit is missing".to_owned(),
            ));
        }
    };
    // wrapped_argv records the original argv, not the resolved one.
    record.insert("wrapped_argv".to_owned(), string_list(&source.argv));

    let mut out = source.spec.clone();
    let mut metadata = match out.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut removed = Map::new();
    for key in REMOVED_METADATA {
        if let Some(v) = metadata.remove(*key) {
            tracing::info!(key, "removed from metadata: the proxy does not support it");
            removed.insert((*key).to_owned(), v);
        }
    }
    if !removed.is_empty() {
        record.insert("removed_metadata".to_owned(), Value::Object(removed));
    }
    metadata.insert(METADATA_KEY.to_owned(), Value::Object(record));
    // Template keys other than metadata (argv, display_name) override the original.
    filled.remove("metadata");
    for (k, v) in filled {
        out.insert(k, v);
    }
    out.insert("metadata".to_owned(), Value::Object(metadata));
    Ok(out)
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
pub fn destination_dir(args: &InstallArgs, env: &SearchEnv, name: &str) -> Result<PathBuf> {
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

/// The proxy path written into kernelspecs: `--proxy-path` (made absolute) or this binary.
pub fn proxy_path(explicit: Option<&Path>) -> Result<PathBuf> {
    match explicit {
        Some(p) if p.is_absolute() => Ok(p.to_path_buf()),
        Some(p) => std::path::absolute(p).map_err(|error| KernelspecError::ProxyPath { error }),
        None => std::env::current_exe()
            .and_then(fs::canonicalize)
            .map_err(|error| KernelspecError::ProxyPath { error }),
    }
}

/// Run `jupyter-audit install`; returns the directory of the written kernelspec.
pub fn install(args: &InstallArgs) -> Result<PathBuf> {
    let proxy = proxy_path(args.proxy_path.as_deref())?;
    if !is_executable_file(&proxy) {
        tracing::warn!(proxy = %proxy.display(), "the proxy path is not an executable file");
    }
    install_with(args, &SearchEnv::from_process(), &proxy)
}

/// `install` with the environment and proxy path given explicitly.
pub fn install_with(args: &InstallArgs, env: &SearchEnv, proxy: &Path) -> Result<PathBuf> {
    if args.replace {
        let mut conflicts = Vec::new();
        if args.name.is_some() {
            conflicts.push("--name");
        }
        if args.user {
            conflicts.push("--user");
        }
        if args.sys_prefix {
            conflicts.push("--sys-prefix");
        }
        if args.prefix.is_some() {
            conflicts.push("--prefix");
        }
        if !conflicts.is_empty() {
            return Err(KernelspecError::ConflictingOptions(format!(
                "--replace rewrites the kernelspec where it is; it cannot be combined with {}",
                conflicts.join(", ")
            )));
        }
    }

    let spec_dir = resolve_spec_dir(&args.wrap, &env.kernel_dirs())?;
    let spec_dir = fs::canonicalize(&spec_dir).map_err(|error| KernelspecError::Read {
        path: spec_dir.clone(),
        error,
    })?;
    let source = unwrap_spec(read_spec(&spec_dir)?, &spec_dir)?;
    if source.was_audited {
        tracing::info!(
            spec = %spec_dir.display(),
            "already audited; wrapping its original kernel command"
        );
    }
    let python_prefix = env.python_prefix.as_deref();

    if args.replace {
        let display = match &args.display_name {
            Some(d) => DisplayName::Given(d.clone()),
            None => DisplayName::Keep,
        };
        let spec = build_wrapped_spec(&source, proxy, &display, &spec_dir, python_prefix)?;
        if !replace_spec_file(&spec_dir, &spec)? {
            tracing::info!(spec = %spec_dir.display(), "already audited and up to date");
        }
        return Ok(spec_dir);
    }

    let name = args.name.as_deref().ok_or_else(|| {
        KernelspecError::ConflictingOptions("--name is required unless --replace".to_owned())
    })?;
    if !is_valid_kernel_name(name) {
        return Err(KernelspecError::InvalidName {
            name: name.to_owned(),
        });
    }
    let name = name.to_ascii_lowercase();
    let dest = destination_dir(args, env, &name)?;
    let display = match &args.display_name {
        Some(d) => DisplayName::Given(d.clone()),
        None => DisplayName::Suffixed,
    };
    let spec = build_wrapped_spec(&source, proxy, &display, &spec_dir, python_prefix)?;

    if dest.exists() {
        if fs::canonicalize(&dest).is_ok_and(|d| d == spec_dir) {
            return Err(KernelspecError::DestinationIsSource { dest });
        }
        let same_wrap = read_spec(&dest)
            .ok()
            .and_then(|existing| unwrap_spec(existing, &dest).ok())
            .is_some_and(|existing| {
                existing.was_audited && existing.wrapped_spec == source.wrapped_spec
            });
        if !same_wrap {
            return Err(KernelspecError::DestinationExists { dest, name });
        }
        tracing::info!(dest = %dest.display(), "refreshing an audited kernelspec of the same kernel");
    }
    write_new_spec(&spec_dir, &dest, &spec)?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_spec(dir: &Path, spec: &Value) {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(
            dir.join(KERNEL_JSON),
            serde_json::to_string(spec).expect("json"),
        )
        .expect("write");
    }

    fn ipykernel_spec() -> Value {
        json!({
            "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
            "interrupt_mode": "message",
            "env": {"FOO": "bar"},
            "kernel_protocol_version": "5.5",
            "metadata": {"debugger": true, "supported_encryption": ["curve"]},
            "x_custom": [1, 2]
        })
    }

    fn args(wrap: &str) -> InstallArgs {
        InstallArgs {
            wrap: wrap.to_owned(),
            name: None,
            display_name: None,
            replace: false,
            user: false,
            sys_prefix: false,
            prefix: None,
            proxy_path: None,
        }
    }

    fn env_with(root: &Path) -> SearchEnv {
        SearchEnv {
            jupyter_path: vec![root.join("jp1"), root.join("jp2")],
            user_data_dir: Some(root.join("user")),
            python_prefix: Some(root.join("env")),
            prefer_env: false,
            system_dirs: vec![root.join("sys1"), root.join("sys2")],
        }
    }

    fn read(dir: &Path) -> Value {
        Value::Object(read_spec(dir).expect("read spec"))
    }

    #[test]
    fn template_parses_and_has_placeholders() {
        let t: Value = serde_json::from_str(TEMPLATE).expect("template");
        assert_eq!(t["argv"][0], "@PROXY@");
        assert_eq!(t["argv"][3], "{connection_file}");
        assert!(t["metadata"][METADATA_KEY].is_object());
    }

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

    #[test]
    fn read_spec_errors() {
        let tmp = tempfile::tempdir().expect("tmp");
        assert!(matches!(
            read_spec(tmp.path()),
            Err(KernelspecError::Read { .. })
        ));
        fs::write(tmp.path().join(KERNEL_JSON), "{not json").expect("write");
        assert!(matches!(
            read_spec(tmp.path()),
            Err(KernelspecError::InvalidJson { .. })
        ));
        fs::write(tmp.path().join(KERNEL_JSON), "[1]").expect("write");
        assert!(matches!(
            read_spec(tmp.path()),
            Err(KernelspecError::InvalidSpec { .. })
        ));
        fs::write(tmp.path().join(KERNEL_JSON), r#"{"argv": [1]}"#).expect("write");
        let spec = read_spec(tmp.path()).expect("object");
        assert!(matches!(
            unwrap_spec(spec, tmp.path()),
            Err(KernelspecError::InvalidSpec { .. })
        ));
    }

    #[test]
    fn wrap_keeps_everything_and_records_original() {
        let dir = Path::new("/nowhere/kernels/py");
        let Value::Object(spec) = ipykernel_spec() else {
            unreachable!()
        };
        let source = unwrap_spec(spec, dir).expect("unwrap");
        assert!(!source.was_audited);
        let out = build_wrapped_spec(
            &source,
            Path::new("/bin/jupyter-audit"),
            &DisplayName::Suffixed,
            dir,
            None,
        )
        .expect("wrap");
        let out = Value::Object(out);
        assert_eq!(
            out["argv"],
            json!([
                "/bin/jupyter-audit",
                "kernel",
                "-f",
                "{connection_file}",
                "--",
                "python",
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}"
            ])
        );
        assert_eq!(out["display_name"], "Python 3 (ipykernel) (audited)");
        for key in [
            "language",
            "interrupt_mode",
            "env",
            "kernel_protocol_version",
            "x_custom",
        ] {
            assert_eq!(out[key], ipykernel_spec()[key], "{key}");
        }
        assert_eq!(out["metadata"]["debugger"], true);
        assert!(out["metadata"].get("supported_encryption").is_none());
        let rec = &out["metadata"][METADATA_KEY];
        assert_eq!(rec["wrapped_argv"], ipykernel_spec()["argv"]);
        assert_eq!(rec["wrapped_spec"], "/nowhere/kernels/py");
        assert_eq!(rec["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            rec["removed_metadata"]["supported_encryption"],
            json!(["curve"])
        );
    }

    #[test]
    fn unwrap_of_wrapped_gives_back_the_original() {
        let dir = Path::new("/k/py");
        let Value::Object(spec) = ipykernel_spec() else {
            unreachable!()
        };
        let source = unwrap_spec(spec.clone(), dir).expect("unwrap");
        let wrapped = build_wrapped_spec(
            &source,
            Path::new("/old/jupyter-audit"),
            &DisplayName::Keep,
            dir,
            None,
        )
        .expect("wrap");
        let again = unwrap_spec(wrapped, Path::new("/elsewhere")).expect("unwrap2");
        assert!(again.was_audited);
        assert_eq!(again.spec, spec);
        assert_eq!(again.wrapped_spec, dir);

        // A bare proxy command line without metadata is recognised too.
        let legacy = json!({
            "argv": ["/opt/bin/jupyter-audit", "kernel", "-f", "{connection_file}", "--", "k", "-f", "{connection_file}"],
            "display_name": "K"
        });
        let Value::Object(legacy) = legacy else {
            unreachable!()
        };
        let src = unwrap_spec(legacy, dir).expect("legacy");
        assert!(src.was_audited);
        assert_eq!(src.argv, ["k", "-f", "{connection_file}"]);
    }

    #[test]
    fn bare_python_is_resolved_in_the_spec_prefix() {
        assert!(
            is_bare_python("python") && is_bare_python("python3") && is_bare_python("python3.11")
        );
        assert!(
            !is_bare_python("python3-config")
                && !is_bare_python("/usr/bin/python")
                && !is_bare_python("pythonx")
        );

        let tmp = tempfile::tempdir().expect("tmp");
        let prefix = tmp.path().join("env");
        let spec_dir = prefix.join("share/jupyter/kernels/python3");
        fs::create_dir_all(prefix.join("bin")).expect("mkdir");
        let py = prefix.join("bin/python");
        fs::write(&py, "#!/bin/sh\n").expect("write");
        fs::set_permissions(&py, fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(
            resolve_interpreter("python", &spec_dir, None),
            Some(py.clone())
        );
        assert_eq!(resolve_interpreter("python3", &spec_dir, None), None);
        assert_eq!(
            resolve_interpreter("python", Path::new("/x/kernels/p"), Some(&prefix)),
            Some(py.clone())
        );
        assert_eq!(
            resolve_interpreter("/usr/bin/python", &spec_dir, Some(&prefix)),
            None
        );

        let Value::Object(spec) = ipykernel_spec() else {
            unreachable!()
        };
        let source = unwrap_spec(spec, &spec_dir).expect("unwrap");
        let out = build_wrapped_spec(
            &source,
            Path::new("/p"),
            &DisplayName::Keep,
            &spec_dir,
            None,
        )
        .expect("wrap");
        assert_eq!(out["argv"][5], json!(py.to_string_lossy()));
        assert_eq!(out["metadata"][METADATA_KEY]["wrapped_argv"][0], "python");
    }

    #[test]
    fn install_copies_resources_and_refuses_foreign_destination() {
        let tmp = tempfile::tempdir().expect("tmp");
        let env = env_with(tmp.path());
        let src = tmp.path().join("env/share/jupyter/kernels/python3");
        write_spec(&src, &ipykernel_spec());
        fs::write(src.join("logo-64x64.png"), b"png").expect("logo");
        fs::create_dir(src.join("sub")).expect("sub");
        fs::write(src.join("sub/kernel.js"), b"js").expect("js");

        let mut a = args("python3");
        a.name = Some("Audited-Py".to_owned());
        a.prefix = Some(tmp.path().join("out"));
        let dest = install_with(&a, &env, Path::new("/bin/jupyter-audit")).expect("install");
        assert_eq!(
            dest,
            tmp.path().join("out/share/jupyter/kernels/audited-py")
        );
        assert_eq!(fs::read(dest.join("logo-64x64.png")).expect("logo"), b"png");
        assert_eq!(fs::read(dest.join("sub/kernel.js")).expect("js"), b"js");
        let spec = read(&dest);
        assert_eq!(spec["argv"][0], "/bin/jupyter-audit");
        assert_eq!(
            spec["metadata"][METADATA_KEY]["wrapped_spec"],
            json!(fs::canonicalize(&src).expect("canon").to_string_lossy())
        );
        // No staging directories left behind.
        let leftovers: Vec<_> = fs::read_dir(dest.parent().expect("parent"))
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());

        // Same install again refreshes (same wrapped spec).
        let dest2 = install_with(&a, &env, Path::new("/new/jupyter-audit")).expect("again");
        assert_eq!(read(&dest2)["argv"][0], "/new/jupyter-audit");

        // Wrapping the audited copy into a new name wraps the original argv.
        let mut b = args(&dest.to_string_lossy());
        b.name = Some("twice".to_owned());
        b.user = true;
        let d3 = install_with(&b, &env, Path::new("/bin/jupyter-audit")).expect("rewrap");
        assert_eq!(d3, tmp.path().join("user/kernels/twice"));
        let spec3 = read(&d3);
        assert_eq!(spec3["argv"].as_array().map(Vec::len), Some(10));
        assert_eq!(
            spec3["metadata"][METADATA_KEY]["wrapped_argv"],
            ipykernel_spec()["argv"]
        );
        assert_eq!(spec3["display_name"], "Python 3 (ipykernel) (audited)");
        assert_eq!(
            spec3["metadata"][METADATA_KEY]["removed_metadata"]["supported_encryption"],
            json!(["curve"])
        );

        // A foreign spec at the destination is not overwritten.
        let foreign = tmp.path().join("user/kernels/taken");
        write_spec(&foreign, &json!({"argv": ["other"], "display_name": "O"}));
        let mut c = args("python3");
        c.name = Some("taken".to_owned());
        c.user = true;
        let err = install_with(&c, &env, Path::new("/p")).expect_err("exists");
        assert!(
            matches!(err, KernelspecError::DestinationExists { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("jupyter kernelspec remove taken"));
        assert_eq!(read(&foreign)["argv"], json!(["other"]));

        // Destination equal to the source.
        let mut d = args("python3");
        d.name = Some("python3".to_owned());
        d.sys_prefix = true;
        assert!(matches!(
            install_with(&d, &env, Path::new("/p")),
            Err(KernelspecError::DestinationIsSource { .. })
        ));

        let mut e = args("python3");
        e.name = Some("bad name".to_owned());
        assert!(matches!(
            install_with(&e, &env, Path::new("/p")),
            Err(KernelspecError::InvalidName { .. })
        ));
    }

    #[test]
    fn replace_twice_wraps_once_and_keeps_mode() {
        let tmp = tempfile::tempdir().expect("tmp");
        let env = env_with(tmp.path());
        let src = tmp.path().join("sys1/kernels/py");
        write_spec(&src, &ipykernel_spec());
        fs::set_permissions(src.join(KERNEL_JSON), fs::Permissions::from_mode(0o640))
            .expect("chmod");

        let mut a = args("py");
        a.replace = true;
        let dir = install_with(&a, &env, Path::new("/bin/jupyter-audit")).expect("replace");
        assert_eq!(dir, fs::canonicalize(&src).expect("canon"));
        let first = read(&src);
        assert_eq!(first["display_name"], "Python 3 (ipykernel)");
        assert_eq!(first["argv"][0], "/bin/jupyter-audit");
        let mode = fs::metadata(src.join(KERNEL_JSON))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);

        let before = fs::metadata(src.join(KERNEL_JSON)).expect("meta").ino();
        install_with(&a, &env, Path::new("/bin/jupyter-audit")).expect("replace again");
        let after = fs::metadata(src.join(KERNEL_JSON)).expect("meta").ino();
        assert_eq!(before, after, "unchanged spec must not be rewritten");
        assert_eq!(read(&src), first);

        install_with(&a, &env, Path::new("/usr/bin/jupyter-audit")).expect("new proxy");
        let third = read(&src);
        assert_eq!(third["argv"][0], "/usr/bin/jupyter-audit");
        assert_eq!(third["argv"].as_array().map(Vec::len), Some(10));
        assert_eq!(
            third["metadata"][METADATA_KEY]["wrapped_argv"],
            ipykernel_spec()["argv"]
        );

        a.display_name = Some("Audited Python".to_owned());
        install_with(&a, &env, Path::new("/usr/bin/jupyter-audit")).expect("rename");
        assert_eq!(read(&src)["display_name"], "Audited Python");

        let leftovers = fs::read_dir(&src)
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(leftovers, 0);

        a.user = true;
        assert!(matches!(
            install_with(&a, &env, Path::new("/p")),
            Err(KernelspecError::ConflictingOptions(_))
        ));
    }

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

    #[test]
    fn permission_denied_is_reported_as_such() {
        if nix::unistd::geteuid().is_root() {
            return; // root ignores directory permissions
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let env = env_with(tmp.path());
        let src = tmp.path().join("user/kernels/py");
        write_spec(&src, &ipykernel_spec());
        let locked = tmp.path().join("locked");
        fs::create_dir(&locked).expect("mkdir");
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).expect("chmod");
        let mut a = args("py");
        a.name = Some("n".to_owned());
        a.prefix = Some(locked.clone());
        let err = install_with(&a, &env, Path::new("/p")).expect_err("denied");
        assert!(
            matches!(err, KernelspecError::PermissionDenied { .. }),
            "{err}"
        );
        let _ = fs::set_permissions(&locked, fs::Permissions::from_mode(0o755));
    }
}
