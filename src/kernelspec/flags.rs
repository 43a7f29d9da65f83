//! The proxy flags an audited kernelspec carries between `kernel` and `-f`: where the
//! collector is (`--socket`), the policy (`--on-audit-failure`), the admin config file
//! (`--config`), the transport to the real kernel (`--kernel-transport`), any other proxy
//! flag passed with `--proxy-flag`, and how a re-install refreshes them.
//!
//! A re-install starts from the flags the audited spec already has and sets each flag
//! given to `install` again to its new value; flags not given again are kept, so a
//! `--replace` run that only refreshes the binary path does not remove the socket.
//! Flags written into a spec by hand are kept as well.
//!
//! A `--proxy-flag` is one token, `--name` (a switch) or `--name=value`; it replaces
//! every earlier `--name`, `--name=…` and, when it carries a value, `--name VALUE` of the
//! spec. The flags `install` has options for, and the connection file, are refused there.

use std::path::{Path, PathBuf};

use super::{InstallOptions, KernelspecError, Result};
use crate::config::OnAuditFailure;
use crate::connection::KernelTransport;

pub(super) const SOCKET: &str = "--socket";
const ON_AUDIT_FAILURE: &str = "--on-audit-failure";
pub(super) const CONFIG: &str = "--config";
const KERNEL_TRANSPORT: &str = "--kernel-transport";
const NO_AUDIT: &str = "--no-audit";

/// Proxy flags that `--proxy-flag` may not carry: `install` has an option for each, or
/// writes it itself (the connection file).
const OWN_FLAGS: [&str; 6] = [
    SOCKET,
    ON_AUDIT_FAILURE,
    CONFIG,
    KERNEL_TRANSPORT,
    "--connection-file",
    "-f",
];

/// The proxy flags given to `install`; `None` (or empty) means "not given" (keep what the
/// spec has).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFlags {
    pub socket: Option<PathBuf>,
    pub on_audit_failure: Option<OnAuditFailure>,
    pub config: Option<PathBuf>,
    pub kernel_transport: Option<KernelTransport>,
    /// Other proxy flags, each one token: `--name` or `--name=value`.
    pub extra: Vec<String>,
}

/// One flag to write: its name, the tokens written, and whether it takes a value (so
/// that an existing `--name VALUE` is replaced with its value).
struct GivenFlag {
    name: String,
    tokens: Vec<String>,
    takes_value: bool,
}

impl GivenFlag {
    fn with_value(name: &str, value: String) -> Self {
        Self {
            name: name.to_owned(),
            tokens: vec![name.to_owned(), value],
            takes_value: true,
        }
    }

    /// `--name` or `--name=value`, written as the single token it is.
    fn token(token: &str) -> Self {
        let (name, takes_value) = match token.split_once('=') {
            Some((name, _)) => (name, true),
            None => (token, false),
        };
        Self {
            name: name.to_owned(),
            tokens: vec![token.to_owned()],
            takes_value,
        }
    }
}

/// Checks a `--proxy-flag` value: one `--name[=value]` token that `install` does not
/// write itself.
pub fn check_extra_flag(token: &str) -> Result<()> {
    let name = token.split_once('=').map_or(token, |(name, _)| name);
    let refuse = |why: &str| {
        Err(KernelspecError::ConflictingOptions(format!(
            "--proxy-flag {token}: {why}"
        )))
    };
    if !name.starts_with("--") || name.len() < 3 {
        return refuse("give one proxy flag as --name or --name=value");
    }
    if OWN_FLAGS.contains(&name) {
        return refuse(&format!("use install's own {name} option"));
    }
    Ok(())
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
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
        for token in &args.proxy_flags {
            check_extra_flag(token)?;
        }
        Ok(Self {
            socket: args.socket.as_deref().map(absolute).transpose()?,
            on_audit_failure: args.on_audit_failure,
            config: args.config.as_deref().map(absolute).transpose()?,
            kernel_transport: args.kernel_transport,
            extra: args.proxy_flags.clone(),
        })
    }

    fn given(&self) -> Vec<GivenFlag> {
        let own = [
            (SOCKET, self.socket.as_deref().map(path_text)),
            (
                ON_AUDIT_FAILURE,
                self.on_audit_failure.map(|p| p.name().to_owned()),
            ),
            (CONFIG, self.config.as_deref().map(path_text)),
            (
                KERNEL_TRANSPORT,
                self.kernel_transport.map(|t| t.name().to_owned()),
            ),
        ];
        let mut out: Vec<GivenFlag> = own
            .into_iter()
            .filter_map(|(name, value)| value.map(|value| GivenFlag::with_value(name, value)))
            .collect();
        // The same flag given twice: the last one wins, as it would for the proxy.
        for (index, token) in self.extra.iter().enumerate() {
            let flag = GivenFlag::token(token);
            let later = self.extra[index + 1..]
                .iter()
                .any(|other| GivenFlag::token(other).name == flag.name);
            if !later {
                out.push(flag);
            }
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
            let matched = given.iter().position(|flag| {
                *arg == flag.name
                    || arg
                        .strip_prefix(flag.name.as_str())
                        .is_some_and(|r| r.starts_with('='))
            });
            let Some(index) = matched else {
                out.push(arg.clone());
                i += 1;
                continue;
            };
            // `--flag VALUE`, `--flag=VALUE` or a switch.
            let separate_value = *arg == given[index].name && given[index].takes_value;
            i += if separate_value { 2 } else { 1 };
            if !written[index] {
                written[index] = true;
                out.extend(given[index].tokens.iter().cloned());
            }
        }
        for (index, flag) in given.iter().enumerate() {
            if !written[index] {
                out.extend(flag.tokens.iter().cloned());
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
            ..AuditFlags::default()
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

    #[test]
    fn kernel_transport_and_other_proxy_flags_replace_their_earlier_values() {
        let existing = strings(&[
            "--socket",
            "/run/c.sock",
            "--kernel-transport",
            "ipc",
            "--text-cap-bytes",
            "100",
            "--keep-binary",
        ]);
        let given = AuditFlags {
            kernel_transport: Some(KernelTransport::Tcp),
            extra: strings(&[
                "--text-cap-bytes=200",
                "--keep-binary",
                "--max-message-bytes=1",
                "--max-message-bytes=2",
            ]),
            ..AuditFlags::default()
        };
        let out = given.apply(&existing);
        assert_eq!(
            out,
            strings(&[
                "--socket",
                "/run/c.sock",
                "--kernel-transport",
                "tcp",
                "--text-cap-bytes=200",
                "--keep-binary",
                "--max-message-bytes=2",
            ])
        );
        assert_eq!(given.apply(&out), out, "a re-run changes nothing");
        assert_eq!(flag_value(&out, KERNEL_TRANSPORT), Some("tcp"));
    }

    #[test]
    fn proxy_flags_that_install_writes_itself_are_refused() {
        for token in [
            "--socket=/x",
            "--kernel-transport=tcp",
            "--config",
            "-f",
            "--connection-file=x",
            "keep-binary",
            "--",
            "-k",
        ] {
            assert!(check_extra_flag(token).is_err(), "{token} accepted");
        }
        for token in [
            "--keep-binary",
            "--text-cap-bytes=5",
            "--runtime-dir=/run/ja",
        ] {
            assert!(check_extra_flag(token).is_ok(), "{token} refused");
        }
    }
}
