//! `jupyter-audit install`: write a kernelspec that runs an existing kernel behind the proxy.
//!
//! # What is written
//! The audited `kernel.json` starts from the template in `kernelspec/kernel.json.in`
//! (see `kernelspec/README.md`): `argv` becomes
//! `[PROXY, "kernel", PROXY_FLAGS..., "-f", "{connection_file}", "--", ORIGINAL_ARGV...]`,
//! where PROXY_FLAGS are `--socket PATH`, `--on-audit-failure block|allow` and
//! `--config FILE` as given to `install` (each optional; see "Proxy flags"), the display name
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
//! # Proxy flags
//! `--socket`, `--on-audit-failure`, `--config` and `--kernel-transport` are written (paths
//! made absolute) into the argv, and so is each `--proxy-flag --name[=value]` (any other
//! flag of `jupyter-audit kernel`, checked against the proxy's own parser by `main`). Re-installing an audited spec (`--replace`, the same `--name` again, or
//! wrapping an audited spec under a new name) starts from the flags that spec already has
//! (for an existing destination: the destination's): a flag given again is replaced in
//! place, a flag not given is kept, so a re-run that only refreshes the binary path does
//! not drop the socket. Flags added to the argv by hand are kept too. To drop a flag,
//! remove the spec and install it again (or edit its `kernel.json`). When the result names
//! no collector and the admin config file sets none, `install` warns: such a kernel
//! refuses to start ("no audit collector configured").
//!
//! # Never twice
//! A spec is already audited when it has `metadata.jupyter_audit.wrapped_argv`, or when its
//! `argv[1]` is `kernel` and `argv[0]` is a `jupyter-audit` binary (then the original argv is
//! what follows `--`). Wrapping or replacing such a spec wraps the original argv again (only
//! the proxy path, proxy flags and version are refreshed); if nothing changes, nothing is
//! written.

mod flags;
mod replaceable;
mod search;
mod spec;
#[cfg(test)]
mod test_support;
mod wrap;
mod write;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::{ConfigFile, DEFAULT_CONFIG_PATH, OnAuditFailure};
use crate::connection::KernelTransport;

pub use flags::{AuditFlags, check_extra_flag, flag_value, is_unaudited, proxy_flags};
pub use search::{SearchEnv, resolve_spec_dir, split_path_list, user_data_dir};
pub use spec::{METADATA_KEY, SourceSpec, parse_spec, read_spec, unwrap_spec};
pub use wrap::{DisplayName, TEMPLATE, build_wrapped_spec, is_bare_python, resolve_interpreter};
pub use write::{
    copy_resources, destination_dir, is_valid_kernel_name, replace_spec_file, write_new_spec,
};

use wrap::is_executable_file;

const KERNEL_JSON: &str = "kernel.json";

/// What `install` is asked to do (the flags of `jupyter-audit install`; see the module
/// doc for each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallOptions {
    /// The kernelspec to wrap: a kernel name or a directory holding kernel.json.
    pub wrap: String,
    /// The new kernelspec's name; not with `replace`.
    pub name: Option<String>,
    /// None: the original's with " (audited)", or unchanged with `replace`.
    pub display_name: Option<String>,
    /// Rewrite the wrapped kernelspec in place.
    pub replace: bool,
    /// Install into the user's Jupyter data dir.
    pub user: bool,
    /// Install into the active Python environment's prefix.
    pub sys_prefix: bool,
    /// Install into PREFIX/share/jupyter/kernels.
    pub prefix: Option<PathBuf>,
    /// The jupyter-audit binary the kernelspec runs; None: this one.
    pub proxy_path: Option<PathBuf>,
    /// The proxy's `--socket`; None: keep the spec's.
    pub socket: Option<PathBuf>,
    /// The proxy's `--on-audit-failure`; None: keep the spec's.
    pub on_audit_failure: Option<OnAuditFailure>,
    /// The proxy's `--config`; None: keep the spec's.
    pub config: Option<PathBuf>,
    /// The proxy's `--kernel-transport`; None: keep the spec's.
    pub kernel_transport: Option<KernelTransport>,
    /// Other proxy flags, each `--name` or `--name=value`; they replace the spec's.
    pub proxy_flags: Vec<String>,
}

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

/// Warn when a kernel started from a spec with these proxy flags would refuse to start
/// because no collector is configured (neither `--socket` nor the admin config file).
fn warn_if_no_collector(proxy_flags: &[String]) {
    if flag_value(proxy_flags, flags::SOCKET).is_some() || is_unaudited(proxy_flags) {
        return;
    }
    let config = flag_value(proxy_flags, flags::CONFIG).unwrap_or(DEFAULT_CONFIG_PATH);
    let configured =
        ConfigFile::load(Path::new(config)).is_ok_and(|file| file.collector.socket.is_some());
    if !configured {
        tracing::warn!(
            config,
            "the kernelspec names no audit collector and the admin config file sets no \
             collector.socket: the kernel will refuse to start until one of them does \
             (install again with --socket PATH)"
        );
    }
}

/// Run `jupyter-audit install`; returns the directory of the written kernelspec.
pub fn install(args: &InstallOptions) -> Result<PathBuf> {
    let proxy = proxy_path(args.proxy_path.as_deref())?;
    if !is_executable_file(&proxy) {
        tracing::warn!(proxy = %proxy.display(), "the proxy path is not an executable file");
    }
    install_with(args, &SearchEnv::from_process(), &proxy)
}

/// `install` with the environment and proxy path given explicitly.
pub fn install_with(args: &InstallOptions, env: &SearchEnv, proxy: &Path) -> Result<PathBuf> {
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
    let given = AuditFlags::from_args(args)?;

    if args.replace {
        let display = match &args.display_name {
            Some(d) => DisplayName::Given(d.clone()),
            None => DisplayName::Keep,
        };
        let flags = given.apply(&source.proxy_flags);
        warn_if_no_collector(&flags);
        let spec = build_wrapped_spec(&source, proxy, &flags, &display, &spec_dir, python_prefix)?;
        if !replace_spec_file(&spec_dir, &spec)? {
            tracing::info!(spec = %spec_dir.display(), "already audited and up to date");
        }
        replaceable::warn_if_others_can_replace(proxy, &spec_dir);
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

    // An audited spec of the same kernel at the destination is refreshed, and its proxy
    // flags are the ones kept; otherwise those of SPEC (when it is audited itself).
    let mut base_flags = &source.proxy_flags;
    let existing;
    if dest.exists() {
        if fs::canonicalize(&dest).is_ok_and(|d| d == spec_dir) {
            return Err(KernelspecError::DestinationIsSource { dest });
        }
        existing = read_spec(&dest)
            .ok()
            .and_then(|existing| unwrap_spec(existing, &dest).ok())
            .filter(|existing| {
                existing.was_audited && existing.wrapped_spec == source.wrapped_spec
            });
        let Some(existing) = &existing else {
            return Err(KernelspecError::DestinationExists { dest, name });
        };
        tracing::info!(dest = %dest.display(), "refreshing an audited kernelspec of the same kernel");
        base_flags = &existing.proxy_flags;
    }
    let flags = given.apply(base_flags);
    warn_if_no_collector(&flags);
    let spec = build_wrapped_spec(&source, proxy, &flags, &display, &spec_dir, python_prefix)?;
    write_new_spec(&spec_dir, &dest, &spec)?;
    replaceable::warn_if_others_can_replace(proxy, &dest);
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::test_support::{args, env_with, ipykernel_spec, write_spec};
    use super::*;
    use serde_json::{Value, json};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn read(dir: &Path) -> Value {
        Value::Object(read_spec(dir).expect("read spec"))
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

    fn argv_of(dir: &Path) -> Vec<String> {
        serde_json::from_value(read(dir)["argv"].clone()).expect("argv")
    }

    #[test]
    fn audit_flags_are_written_and_kept_on_reinstall_unless_given_again() {
        let tmp = tempfile::tempdir().expect("tmp");
        let env = env_with(tmp.path());
        let src = tmp.path().join("sys1/kernels/py");
        write_spec(&src, &ipykernel_spec());
        let kernel = [
            "python",
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
        ];
        let proxy_argv = |proxy: &str, flags: &[&str]| -> Vec<String> {
            [proxy, "kernel"]
                .iter()
                .chain(flags)
                .chain(&["-f", "{connection_file}", "--"])
                .chain(&kernel)
                .map(|s| (*s).to_owned())
                .collect()
        };

        let mut a = args("py");
        a.replace = true;
        a.socket = Some(PathBuf::from("/run/jupyter-audit/collector.sock"));
        a.on_audit_failure = Some(OnAuditFailure::Block);
        install_with(&a, &env, Path::new("/bin/jupyter-audit")).expect("replace");
        let block = [
            "--socket",
            "/run/jupyter-audit/collector.sock",
            "--on-audit-failure",
            "block",
        ];
        assert_eq!(argv_of(&src), proxy_argv("/bin/jupyter-audit", &block));
        assert_eq!(
            read(&src)["metadata"][METADATA_KEY]["wrapped_argv"],
            json!(kernel)
        );

        // A re-run that only refreshes the binary keeps the flags.
        let mut b = args("py");
        b.replace = true;
        install_with(&b, &env, Path::new("/usr/bin/jupyter-audit")).expect("refresh");
        assert_eq!(argv_of(&src), proxy_argv("/usr/bin/jupyter-audit", &block));

        // Flags given again replace the old values in place; a relative path is made
        // absolute (the kernel starts in the server's directory, not this one).
        b.on_audit_failure = Some(OnAuditFailure::Allow);
        b.config = Some(PathBuf::from("conf/ja.toml"));
        install_with(&b, &env, Path::new("/usr/bin/jupyter-audit")).expect("policy");
        let config = std::path::absolute("conf/ja.toml").expect("absolute");
        let config = config.to_string_lossy();
        let allow = [
            "--socket",
            "/run/jupyter-audit/collector.sock",
            "--on-audit-failure",
            "allow",
            "--config",
            &config,
        ];
        assert_eq!(argv_of(&src), proxy_argv("/usr/bin/jupyter-audit", &allow));

        // Wrapping the audited spec under a new name carries its flags over.
        let mut c = args("py");
        c.name = Some("copy".to_owned());
        c.user = true;
        let copy = install_with(&c, &env, Path::new("/p/jupyter-audit")).expect("copy");
        assert_eq!(argv_of(&copy), proxy_argv("/p/jupyter-audit", &allow));

        // Refreshing that copy keeps its own flags, not the source's.
        c.socket = Some(PathBuf::from("/run/other.sock"));
        install_with(&c, &env, Path::new("/p/jupyter-audit")).expect("copy socket");
        let mut other = allow;
        other[1] = "/run/other.sock";
        assert_eq!(argv_of(&copy), proxy_argv("/p/jupyter-audit", &other));
        c.socket = None;
        install_with(&c, &env, Path::new("/q/jupyter-audit")).expect("copy refresh");
        assert_eq!(argv_of(&copy), proxy_argv("/q/jupyter-audit", &other));

        // A plain spec wrapped without flags gets none (the proxy then needs the admin
        // config file).
        let plain = tmp.path().join("sys1/kernels/plain");
        write_spec(&plain, &ipykernel_spec());
        let mut d = args("plain");
        d.name = Some("plain-audited".to_owned());
        d.user = true;
        let out = install_with(&d, &env, Path::new("/bin/jupyter-audit")).expect("plain");
        assert_eq!(argv_of(&out), proxy_argv("/bin/jupyter-audit", &[]));
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
