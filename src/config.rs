//! The admin config file (`/etc/jupyter-audit/config.toml`) and how it combines with
//! the kernelspec's command line: the file wins, because a kernelspec may be one the
//! notebook user wrote. Nothing is read from the user's environment or home.
//!
//! The collector reads the same file for its fairness limits (`[limits]`) and where to
//! forward its store (`[forward]`), the JupyterHub it asks who runs each kernel
//! (`[hub]`) and the review console's accounts (`[console]`); there its command line
//! wins, since the administrator writes both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::audit::SizePolicy;
use crate::collector::hub::HubPolicy;
use crate::collector::limits::{InvalidLimit, Limits};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/jupyter-audit/config.toml";

/// The policy when the collector cannot take a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnAuditFailure {
    /// Refuse the request; the user gets an error saying why (fail-closed).
    Block,
    /// Run it anyway and write an audit gap record once the collector is back.
    Allow,
}

impl OnAuditFailure {
    /// The name the config file and the proxy's `--on-audit-failure` use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Allow => "allow",
        }
    }
}

/// The proxy's audit options from its own command line (the kernelspec's argv), before
/// the admin config file overrides them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelAuditOptions {
    /// The admin config file to read.
    pub config: PathBuf,
    /// The collector's socket.
    pub socket: Option<PathBuf>,
    /// None: not given (the file's, else block).
    pub on_audit_failure: Option<OnAuditFailure>,
    pub text_cap_bytes: Option<usize>,
    pub keep_binary: bool,
    /// Run unaudited, unless the config file names a collector.
    pub no_audit: bool,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub collector: CollectorSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub forward: ForwardSection,
    #[serde(default)]
    pub hub: HubSection,
    #[serde(default)]
    pub console: ConsoleSection,
}

/// The review console's OS accounts (`[console]`): the collector takes review records
/// from them only, and nothing else from them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    #[serde(default)]
    pub users: Vec<String>,
}

/// Where the collector asks JupyterHub whose kernel a connection is (`[hub]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// The Hub's API root, e.g. `http://hub:8081/hub/api`.
    pub api_url: Option<String>,
    /// The CA that signed the Hub's certificate.
    pub ca_file: Option<PathBuf>,
    /// The collector's certificate and key, for a Hub that asks for one (internal_ssl).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `required` (the default once `api_url` is set) or `preferred`.
    pub identity: Option<HubPolicy>,
    /// How long a verified token is accepted while the Hub cannot be reached.
    pub cache_max_age_secs: Option<u64>,
}

/// Where the collector forwards its store (`[forward]`). A password never goes here or
/// on the command line: `password_file` names a file that holds it (or libpq's
/// PGPASSFILE, where supported).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ForwardSection {
    /// The PostgreSQL server (a libpq URL or key=value string, without a password).
    pub postgres_url: Option<String>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CollectorSection {
    pub socket: Option<PathBuf>,
    pub on_audit_failure: Option<OnAuditFailure>,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    pub text_cap_bytes: Option<usize>,
    pub keep_binary: Option<bool>,
}

/// The collector's fairness limits; unset ones keep their defaults ([`Limits::default`]).
/// Sizes are in bytes, times in seconds.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_connections_per_user: Option<usize>,
    pub max_connections: Option<usize>,
    pub hello_timeout_secs: Option<u64>,
    /// 0: never.
    pub idle_timeout_secs: Option<u64>,
    pub frame_timeout_secs: Option<u64>,
    pub in_flight_bytes_per_user: Option<u64>,
    pub in_flight_bytes: Option<u64>,
    /// 0: unlimited.
    pub storage_rate_bytes_per_sec: Option<u64>,
    pub storage_burst_bytes: Option<u64>,
    pub storage_share_bytes: Option<u64>,
    pub storage_share_window_secs: Option<u64>,
    pub disk_reserve_bytes: Option<u64>,
    pub disk_reserve_percent: Option<u8>,
}

impl LimitsSection {
    /// These settings, and `fallback`'s where these have none.
    pub fn or(self, fallback: &LimitsSection) -> LimitsSection {
        LimitsSection {
            max_connections_per_user: self
                .max_connections_per_user
                .or(fallback.max_connections_per_user),
            max_connections: self.max_connections.or(fallback.max_connections),
            hello_timeout_secs: self.hello_timeout_secs.or(fallback.hello_timeout_secs),
            idle_timeout_secs: self.idle_timeout_secs.or(fallback.idle_timeout_secs),
            frame_timeout_secs: self.frame_timeout_secs.or(fallback.frame_timeout_secs),
            in_flight_bytes_per_user: self
                .in_flight_bytes_per_user
                .or(fallback.in_flight_bytes_per_user),
            in_flight_bytes: self.in_flight_bytes.or(fallback.in_flight_bytes),
            storage_rate_bytes_per_sec: self
                .storage_rate_bytes_per_sec
                .or(fallback.storage_rate_bytes_per_sec),
            storage_burst_bytes: self.storage_burst_bytes.or(fallback.storage_burst_bytes),
            storage_share_bytes: self.storage_share_bytes.or(fallback.storage_share_bytes),
            storage_share_window_secs: self
                .storage_share_window_secs
                .or(fallback.storage_share_window_secs),
            disk_reserve_bytes: self.disk_reserve_bytes.or(fallback.disk_reserve_bytes),
            disk_reserve_percent: self.disk_reserve_percent.or(fallback.disk_reserve_percent),
        }
    }

    /// The limits: these settings over the defaults, checked.
    pub fn resolve(&self) -> Result<Limits, InvalidLimit> {
        let defaults = Limits::default();
        let secs = Duration::from_secs;
        let limits = Limits {
            max_connections_per_user: self
                .max_connections_per_user
                .unwrap_or(defaults.max_connections_per_user),
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            hello_timeout: self.hello_timeout_secs.map_or(defaults.hello_timeout, secs),
            idle_timeout: match self.idle_timeout_secs {
                Some(0) => None,
                Some(idle) => Some(secs(idle)),
                None => defaults.idle_timeout,
            },
            frame_timeout: self.frame_timeout_secs.map_or(defaults.frame_timeout, secs),
            in_flight_bytes_per_user: self
                .in_flight_bytes_per_user
                .unwrap_or(defaults.in_flight_bytes_per_user),
            in_flight_bytes: self.in_flight_bytes.unwrap_or(defaults.in_flight_bytes),
            storage_rate_bytes_per_sec: self
                .storage_rate_bytes_per_sec
                .unwrap_or(defaults.storage_rate_bytes_per_sec),
            storage_burst_bytes: self
                .storage_burst_bytes
                .unwrap_or(defaults.storage_burst_bytes),
            storage_share_bytes: self
                .storage_share_bytes
                .unwrap_or(defaults.storage_share_bytes),
            storage_share_window: self
                .storage_share_window_secs
                .map_or(defaults.storage_share_window, secs),
            disk_reserve_bytes: self
                .disk_reserve_bytes
                .unwrap_or(defaults.disk_reserve_bytes),
            disk_reserve_percent: self
                .disk_reserve_percent
                .unwrap_or(defaults.disk_reserve_percent),
        };
        limits.check()?;
        Ok(limits)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error(
        "no audit collector configured: set collector.socket in {path} or pass --socket in the kernelspec \
         (--no-audit runs the kernel unaudited)"
    )]
    NoCollector { path: PathBuf },
}

/// Where records go and what happens when they cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub socket: PathBuf,
    pub on_failure: OnAuditFailure,
    pub size: SizePolicy,
}

impl ConfigFile {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }
}

/// The audit settings of a proxy run, or None when it runs unaudited (`--no-audit`
/// and no collector in the config file).
pub fn audit_settings(args: &KernelAuditOptions) -> Result<Option<AuditSettings>, ConfigError> {
    let file = ConfigFile::load(&args.config)?;
    resolve(&file, args)
}

fn resolve(
    file: &ConfigFile,
    args: &KernelAuditOptions,
) -> Result<Option<AuditSettings>, ConfigError> {
    let socket = file
        .collector
        .socket
        .clone()
        .or_else(|| args.socket.clone());
    let Some(socket) = socket else {
        if args.no_audit {
            return Ok(None);
        }
        return Err(ConfigError::NoCollector {
            path: args.config.clone(),
        });
    };
    let defaults = SizePolicy::default();
    Ok(Some(AuditSettings {
        socket,
        on_failure: file
            .collector
            .on_audit_failure
            .or(args.on_audit_failure)
            .unwrap_or(OnAuditFailure::Block),
        size: SizePolicy {
            text_cap: file
                .audit
                .text_cap_bytes
                .or(args.text_cap_bytes)
                .unwrap_or(defaults.text_cap),
            keep_binary: file.audit.keep_binary.unwrap_or(args.keep_binary),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernelspec that gives none of the audit flags.
    fn no_flags() -> KernelAuditOptions {
        KernelAuditOptions {
            config: PathBuf::from("/nonexistent/config.toml"),
            socket: None,
            on_audit_failure: None,
            text_cap_bytes: None,
            keep_binary: false,
            no_audit: false,
        }
    }

    fn file(text: &str) -> ConfigFile {
        toml::from_str(text).expect("valid config")
    }

    #[test]
    fn no_collector_anywhere_is_an_error_unless_explicitly_unaudited() {
        assert!(matches!(
            resolve(&ConfigFile::default(), &no_flags()),
            Err(ConfigError::NoCollector { .. })
        ));
        assert_eq!(
            resolve(
                &ConfigFile::default(),
                &KernelAuditOptions {
                    no_audit: true,
                    ..no_flags()
                }
            )
            .expect("ok"),
            None
        );
    }

    #[test]
    fn block_is_the_default() {
        let settings = resolve(
            &ConfigFile::default(),
            &KernelAuditOptions {
                socket: Some(PathBuf::from("/run/c.sock")),
                ..no_flags()
            },
        )
        .expect("ok")
        .expect("audited");
        assert_eq!(settings.on_failure, OnAuditFailure::Block);
        assert_eq!(settings.socket, PathBuf::from("/run/c.sock"));
    }

    #[test]
    fn the_admin_file_wins_over_the_kernelspec() {
        let admin = file(
            r#"
            [collector]
            socket = "/run/jupyter-audit/collector.sock"
            on_audit_failure = "block"
            [audit]
            text_cap_bytes = 4096
            "#,
        );
        let args = KernelAuditOptions {
            socket: Some(PathBuf::from("/tmp/mine.sock")),
            on_audit_failure: Some(OnAuditFailure::Allow),
            no_audit: true,
            text_cap_bytes: Some(1),
            ..no_flags()
        };
        let settings = resolve(&admin, &args)
            .expect("ok")
            .expect("audited despite --no-audit");
        assert_eq!(
            settings.socket,
            PathBuf::from("/run/jupyter-audit/collector.sock")
        );
        assert_eq!(settings.on_failure, OnAuditFailure::Block);
        assert_eq!(settings.size.text_cap, 4096);
    }

    #[test]
    fn collector_limits_come_from_the_flags_then_the_file_then_the_defaults() {
        let admin = file(
            r#"
            [limits]
            max_connections_per_user = 16
            idle_timeout_secs = 0
            disk_reserve_bytes = 4096
            "#,
        );
        let flags = LimitsSection {
            max_connections_per_user: Some(8),
            ..LimitsSection::default()
        };
        let limits = flags.or(&admin.limits).resolve().expect("valid");
        assert_eq!(limits.max_connections_per_user, 8, "the flag wins");
        assert_eq!(limits.idle_timeout, None, "0 is never");
        assert_eq!(limits.disk_reserve_bytes, 4096, "from the file");
        assert_eq!(
            limits.frame_timeout,
            Limits::default().frame_timeout,
            "a default"
        );
        let too_small = file("[limits]\nin_flight_bytes_per_user = 1024");
        assert!(too_small.limits.resolve().is_err());
        assert!(toml::from_str::<ConfigFile>("[limits]\nmax_conections = 1").is_err());
    }

    #[test]
    fn the_forward_section_names_a_server_and_a_password_file_only() {
        let admin = file(
            r#"
            [forward]
            postgres_url = "host=db dbname=audit user=writer"
            password_file = "/etc/jupyter-audit/pg-password"
            "#,
        );
        assert_eq!(
            admin.forward.postgres_url.as_deref(),
            Some("host=db dbname=audit user=writer")
        );
        assert_eq!(
            admin.forward.password_file,
            Some(PathBuf::from("/etc/jupyter-audit/pg-password"))
        );
        assert!(toml::from_str::<ConfigFile>("[forward]\npassword = \"x\"").is_err());
        assert_eq!(ConfigFile::default().forward, ForwardSection::default());
    }

    #[test]
    fn unknown_keys_are_refused_and_a_missing_file_is_empty() {
        assert!(toml::from_str::<ConfigFile>("[collector]\nsockett = \"x\"").is_err());
        assert_eq!(
            ConfigFile::load(Path::new("/nonexistent/config.toml")).expect("empty"),
            ConfigFile::default()
        );
    }

    #[test]
    fn the_console_section_names_the_consoles_accounts() {
        let named = file("[console]\nusers = [\"jupyter-audit-review\"]");
        assert_eq!(named.console.users, ["jupyter-audit-review"]);
        assert!(file("").console.users.is_empty());
        assert!(toml::from_str::<ConfigFile>("[console]\nuser = \"x\"").is_err());
    }

    /// The config file the Debian package installs as a conffile.
    const PACKAGED: &str = include_str!("../packaging/debian/config.toml");

    #[test]
    fn the_packaged_config_sets_nothing() {
        assert_eq!(file(PACKAGED), ConfigFile::default());
        // A section pasted from the README at its end does not clash with it.
        let pasted = file(&format!(
            "{PACKAGED}[hub]\napi_url = \"http://hub:8081/hub/api\"\n"
        ));
        assert_eq!(
            pasted.hub.api_url.as_deref(),
            Some("http://hub:8081/hub/api")
        );
    }

    /// Its commented-out values (all but the "e.g." examples) are the built-in defaults:
    /// uncommented with their section headers, they change nothing.
    #[test]
    fn the_packaged_config_shows_the_true_defaults() {
        let uncommented: String = PACKAGED
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(setting)
                    if setting.split_once(" = ").is_some_and(|(key, _)| {
                        !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    setting
                }
                Some(header) if header.starts_with('[') && header.ends_with(']') => header,
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let shown = file(&uncommented);
        assert_ne!(shown, ConfigFile::default(), "the defaults are shown");
        assert_eq!(
            shown.limits.resolve().expect("valid limits"),
            Limits::default()
        );
        let defaults = SizePolicy::default();
        assert_eq!(shown.audit.text_cap_bytes, Some(defaults.text_cap));
        assert_eq!(shown.audit.keep_binary, Some(defaults.keep_binary));
        assert_eq!(
            shown.collector.on_audit_failure,
            Some(OnAuditFailure::Block)
        );
        assert_eq!(shown.collector.socket, None);
        assert_eq!(shown.hub.identity, Some(HubPolicy::Required));
        assert_eq!(
            shown.hub.cache_max_age_secs.map(Duration::from_secs),
            Some(crate::collector::hub::HubOptions::DEFAULT_CACHE_MAX_AGE)
        );
        assert_eq!(shown.hub.api_url, None);
        assert_eq!(shown.forward, ForwardSection::default());
        assert_eq!(shown.console, ConsoleSection::default());
    }
}
