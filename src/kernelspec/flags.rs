//! The proxy flags an audited kernelspec carries between `kernel` and `-f`: where the
//! collector is (`--socket`), the policy (`--on-audit-failure`) and the admin config file
//! (`--config`), and how a re-install refreshes them.
//!
//! A re-install starts from the flags the audited spec already has and sets each flag
//! given to `install` again to its new value; flags not given again are kept, so a
//! `--replace` run that only refreshes the binary path does not remove the socket.
//! Flags written into a spec by hand (e.g. `--kernel-transport tcp`) are kept as well.

use std::path::{Path, PathBuf};

use super::{InstallOptions, KernelspecError, Result};
use crate::config::OnAuditFailure;

pub(super) const SOCKET: &str = "--socket";
const ON_AUDIT_FAILURE: &str = "--on-audit-failure";
pub(super) const CONFIG: &str = "--config";
const NO_AUDIT: &str = "--no-audit";

/// The proxy flags given to `install`; `None` means "not given" (keep what the spec has).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFlags {
    pub socket: Option<PathBuf>,
    pub on_audit_failure: Option<OnAuditFailure>,
    pub config: Option<PathBuf>,
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|error| KernelspecError::Read {
        path: path.to_path_buf(),
        error,
    })
}

impl AuditFlags {
    /// The flags of `args`, with relative paths made absolute: the kernel is started
    /// from whatever directory the Jupyter server runs in.
    pub fn from_args(args: &InstallOptions) -> Result<Self> {
        Ok(Self {
            socket: args.socket.as_deref().map(absolute).transpose()?,
            on_audit_failure: args.on_audit_failure,
            config: args.config.as_deref().map(absolute).transpose()?,
        })
    }

    fn given(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(socket) = &self.socket {
            out.push((SOCKET, socket.to_string_lossy().into_owned()));
        }
        if let Some(policy) = self.on_audit_failure {
            out.push((ON_AUDIT_FAILURE, policy.name().to_owned()));
        }
        if let Some(config) = &self.config {
            out.push((CONFIG, config.to_string_lossy().into_owned()));
        }
        out
    }

    /// `existing` proxy flags with every flag given here set to its new value: in the
    /// place of its first occurrence (later ones dropped), else appended.
    pub fn apply(&self, existing: &[String]) -> Vec<String> {
        let given = self.given();
        let mut out = Vec::with_capacity(existing.len() + 2 * given.len());
        let mut written = vec![false; given.len()];
        let mut i = 0;
        while i < existing.len() {
            let arg = &existing[i];
            let matched = given.iter().position(|(flag, _)| {
                arg == flag || arg.strip_prefix(flag).is_some_and(|r| r.starts_with('='))
            });
            let Some(index) = matched else {
                out.push(arg.clone());
                i += 1;
                continue;
            };
            // `--flag VALUE` or `--flag=VALUE`.
            i += if arg == given[index].0 { 2 } else { 1 };
            if !written[index] {
                written[index] = true;
                out.extend([given[index].0.to_owned(), given[index].1.clone()]);
            }
        }
        for (index, (flag, value)) in given.iter().enumerate() {
            if !written[index] {
                out.extend([(*flag).to_owned(), value.clone()]);
            }
        }
        out
    }
}

/// The proxy flags of an audited spec's argv (`[PROXY, "kernel", FLAGS..., "--", KERNEL...]`):
/// everything between `kernel` and `--` except the connection file, which `install`
/// writes itself.
pub fn proxy_flags(argv: &[String]) -> Vec<String> {
    let Some(sep) = argv.iter().position(|a| a == "--") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut args = argv.get(2..sep).unwrap_or_default().iter();
    while let Some(arg) = args.next() {
        if arg == "-f" || arg == "--connection-file" {
            args.next();
        } else if !(arg.starts_with("--connection-file=")
            || (arg.starts_with("-f") && !arg.starts_with("--")))
        {
            out.push(arg.clone());
        }
    }
    out
}

/// The value of `flag` in proxy flags (the last one wins, as for the proxy), if any.
pub fn flag_value<'a>(flags: &'a [String], flag: &str) -> Option<&'a str> {
    let mut value = None;
    let mut iter = flags.iter();
    while let Some(arg) = iter.next() {
        if arg == flag {
            value = iter.next().map(String::as_str);
        } else if let Some(v) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            value = Some(v);
        }
    }
    value
}

/// Whether proxy flags run the kernel unaudited on purpose.
pub fn is_unaudited(flags: &[String]) -> bool {
    flags.iter().any(|a| a == NO_AUDIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flags_are_read_from_an_audited_argv_without_the_connection_file() {
        let argv = strings(&[
            "/bin/jupyter-audit",
            "kernel",
            "--socket",
            "/run/c.sock",
            "-f",
            "{connection_file}",
            "--kernel-transport",
            "tcp",
            "--connection-file={connection_file}",
            "-f{connection_file}",
            "--",
            "python",
            "--socket",
            "-f",
            "{connection_file}",
        ]);
        assert_eq!(
            proxy_flags(&argv),
            strings(&["--socket", "/run/c.sock", "--kernel-transport", "tcp"])
        );
        assert!(proxy_flags(&strings(&["/bin/jupyter-audit", "kernel", "x"])).is_empty());
    }

    #[test]
    fn given_flags_replace_existing_ones_and_the_rest_is_kept() {
        let existing = strings(&[
            "--socket",
            "/old.sock",
            "--kernel-transport",
            "tcp",
            "--on-audit-failure=allow",
            "--socket=/older.sock",
        ]);
        // Nothing given: everything kept as it is.
        assert_eq!(AuditFlags::default().apply(&existing), existing);

        let given = AuditFlags {
            socket: Some(PathBuf::from("/run/new.sock")),
            on_audit_failure: Some(OnAuditFailure::Block),
            config: Some(PathBuf::from("/etc/ja.toml")),
        };
        let out = given.apply(&existing);
        assert_eq!(
            out,
            strings(&[
                "--socket",
                "/run/new.sock",
                "--kernel-transport",
                "tcp",
                "--on-audit-failure",
                "block",
                "--config",
                "/etc/ja.toml",
            ])
        );
        // Applying the same flags again changes nothing (re-install writes nothing).
        assert_eq!(given.apply(&out), out);
        assert_eq!(flag_value(&out, SOCKET), Some("/run/new.sock"));
        assert_eq!(flag_value(&existing, SOCKET), Some("/older.sock"));
        assert_eq!(flag_value(&existing, CONFIG), None);

        let only_policy = AuditFlags {
            on_audit_failure: Some(OnAuditFailure::Allow),
            ..AuditFlags::default()
        };
        assert_eq!(
            only_policy.apply(&out),
            strings(&[
                "--socket",
                "/run/new.sock",
                "--kernel-transport",
                "tcp",
                "--on-audit-failure",
                "allow",
                "--config",
                "/etc/ja.toml",
            ])
        );
        assert!(!is_unaudited(&out) && is_unaudited(&strings(&["--no-audit"])));
    }
}
