//! Command-line interface: the clap definitions of every subcommand.
//!
//! This module only describes arguments; `main.rs` dispatches them to the modules
//! that do the work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// An audit trail for Jupyter kernels that the notebook user cannot switch off.
#[derive(Debug, Parser)]
#[command(name = "jupyter-audit", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the audited kernel proxy (this is what a kernelspec launches).
    Kernel(KernelArgs),
    /// Write a kernelspec that runs an existing kernel behind the proxy.
    Install(InstallArgs),
    /// Check a store's chain and checkpoint; exit 0 when intact, 1 when tampered.
    Verify(VerifyArgs),
    /// Run the collector daemon: owns the store, takes records from proxies.
    Collector(CollectorArgs),
    /// Print the store's checkpoint verification (public) key, to keep elsewhere.
    ExportKey(ExportKeyArgs),
    /// List the records of a store that match filters (a table, or the stored lines).
    Log(LogArgs),
    /// List the sessions of a store: user, notebook, kernel, start, end, cells, errors.
    Sessions(SessionsArgs),
    /// Rebuild a session as a notebook (.ipynb) of what ran and what it displayed.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct CollectorArgs {
    /// The store directory (created if missing; owned by the collector's user).
    #[arg(long)]
    pub store: PathBuf,

    /// The Unix socket proxies connect to.
    #[arg(long)]
    pub socket: PathBuf,

    /// Permissions of the socket (octal). Anyone who can connect can only add records
    /// under their own verified identity.
    #[arg(long, default_value = "666", value_parser = parse_octal)]
    pub socket_mode: u32,

    /// A group allowed to read the store (reviewers and auditors).
    #[arg(long)]
    pub reviewers_group: Option<String>,

    /// Close a segment once it is this large (bytes).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub segment_max_bytes: u64,

    /// Close a segment once it is this old (seconds).
    #[arg(long, default_value_t = 24 * 3600)]
    pub segment_max_age_secs: u64,

    /// Write a signed checkpoint this often when records were added (seconds).
    #[arg(long, default_value_t = 60)]
    pub checkpoint_interval_secs: u64,

    /// The admin config file; its [limits] section sets the fairness limits (the flags
    /// below override it). A missing file is an empty one.
    #[arg(long, default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    #[command(flatten)]
    pub limits: LimitArgs,
}

/// What one user (the uid of the connecting process) may take of the collector. Each
/// flag overrides the same setting in the config file's [limits] section; README
/// "Known limits" gives the defaults and why.
#[derive(Debug, Args)]
#[command(next_help_heading = "Fairness limits (per user: per uid of the connecting process)")]
pub struct LimitArgs {
    /// Connections one user may hold at once; the excess is closed at once [default: 128].
    #[arg(long, value_name = "N")]
    pub max_connections_per_user: Option<usize>,

    /// Connections in all [default: the descriptor limit, raised to its hard limit at
    /// start, less 128].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Seconds a new connection may take to say hello [default: 10].
    #[arg(long, value_name = "SECS")]
    pub hello_timeout_secs: Option<u64>,

    /// Close a connection that sends nothing this long; 0: never [default: 3600].
    #[arg(long, value_name = "SECS")]
    pub idle_timeout_secs: Option<u64>,

    /// Cut a connection whose frame, once admitted, does not arrive within this many
    /// seconds [default: 30].
    #[arg(long, value_name = "SECS")]
    pub frame_timeout_secs: Option<u64>,

    /// Bytes of one user's records in memory or waiting for the disk; at least 64 MiB,
    /// the largest frame [default: 100663296 = 96 MiB].
    #[arg(long, value_name = "BYTES")]
    pub in_flight_bytes_per_user: Option<u64>,

    /// Bytes of everyone's records in memory or waiting for the disk
    /// [default: 1073741824 = 1 GiB].
    #[arg(long, value_name = "BYTES")]
    pub in_flight_bytes: Option<u64>,

    /// Bytes per second one user may store in the long run; faster writers are slowed;
    /// 0: unlimited [default: 33554432 = 32 MiB/s].
    #[arg(long, value_name = "BYTES")]
    pub storage_rate_bytes_per_sec: Option<u64>,

    /// Bytes one user may store at full speed before its rate applies
    /// [default: 536870912 = 512 MiB].
    #[arg(long, value_name = "BYTES")]
    pub storage_burst_bytes: Option<u64>,

    /// A user that stored more than this within the share window is refused while the
    /// disk is below its reserve [default: 1073741824 = 1 GiB].
    #[arg(long, value_name = "BYTES")]
    pub storage_share_bytes: Option<u64>,

    /// The window of the storage share, in seconds (sliding) [default: 3600].
    #[arg(long, value_name = "SECS")]
    pub storage_share_window_secs: Option<u64>,

    /// Free space on the store's filesystem kept for users within their share: the
    /// larger of this (at most a tenth of the filesystem) and --disk-reserve-percent
    /// [default: 1073741824 = 1 GiB].
    #[arg(long, value_name = "BYTES")]
    pub disk_reserve_bytes: Option<u64>,

    /// The disk reserve as a percentage of the filesystem [default: 2].
    #[arg(long, value_name = "PERCENT")]
    pub disk_reserve_percent: Option<u8>,
}

#[derive(Debug, Args)]
pub struct ExportKeyArgs {
    /// The store directory.
    #[arg(long)]
    pub store: PathBuf,
}

fn parse_octal(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|error| format!("not an octal mode: {error}"))
}

/// How the proxy reaches the real kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelTransport {
    /// Unix sockets in a private 0700 runtime directory (default).
    Ipc,
    /// TCP on 127.0.0.1 (for kernels that do not support ipc).
    Tcp,
}

#[derive(Debug, Args)]
pub struct KernelArgs {
    /// The connection file Jupyter wrote for this kernel (frontend side).
    #[arg(short = 'f', long = "connection-file")]
    pub connection_file: PathBuf,

    /// Transport between the proxy and the real kernel.
    #[arg(long, value_enum, default_value_t = KernelTransport::Ipc)]
    pub kernel_transport: KernelTransport,

    /// Largest accepted message from a frontend, in bytes (all frames together).
    /// Larger messages are rejected with a diagnostic and never reach the kernel.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Where the private runtime directory (connection file and ipc sockets of the
    /// real kernel) is created. Defaults to $XDG_RUNTIME_DIR or the system temp dir.
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,

    /// Unix socket of the audit collector. The admin config file, when it sets one,
    /// takes precedence.
    #[arg(long)]
    pub socket: Option<PathBuf>,

    /// What happens when a request cannot be recorded before it runs: `block` refuses
    /// it (the default), `allow` runs it and records an audit gap.
    #[arg(long, value_enum)]
    pub on_audit_failure: Option<OnAuditFailure>,

    /// Text outputs longer than this (bytes) keep only head and tail, size and SHA-256.
    #[arg(long)]
    pub text_cap_bytes: Option<usize>,

    /// Keep binary outputs (images) in full, not only their SHA-256 and size.
    #[arg(long)]
    pub keep_binary: bool,

    /// The admin config file. Its settings override the command line, so a kernelspec
    /// cannot weaken them.
    #[arg(long, default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Relay without auditing (refused when the admin config names a collector).
    #[arg(long)]
    pub no_audit: bool,

    /// The real kernel's command line; `{connection_file}` is replaced by the path of
    /// the proxy's private connection file.
    #[arg(last = true, required = true, num_args = 1..)]
    pub argv: Vec<String>,
}

/// The policy when the collector cannot take a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnAuditFailure {
    /// Refuse the request; the user gets an error saying why (fail-closed).
    Block,
    /// Run it anyway and write an audit gap record once the collector is back.
    Allow,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The kernelspec to wrap: a kernel name (searched in the Jupyter data path) or a
    /// directory containing kernel.json.
    #[arg(long)]
    pub wrap: String,

    /// Name of the new kernelspec (directory name). Not needed with --replace.
    #[arg(long, required_unless_present = "replace")]
    pub name: Option<String>,

    /// Display name of the new kernelspec (default: "<original> (audited)").
    #[arg(long)]
    pub display_name: Option<String>,

    /// Rewrite the wrapped kernelspec in place so users get the audited kernel under the
    /// name they already know. Running it again on an audited spec changes nothing.
    #[arg(long)]
    pub replace: bool,

    /// Install for the current user (Jupyter data dir).
    #[arg(long, conflicts_with_all = ["sys_prefix", "prefix"])]
    pub user: bool,

    /// Install into the active Python environment's prefix.
    #[arg(long, conflicts_with = "prefix")]
    pub sys_prefix: bool,

    /// Install into PREFIX/share/jupyter/kernels.
    #[arg(long)]
    pub prefix: Option<PathBuf>,

    /// Path of the jupyter-audit binary the kernelspec runs (default: this binary).
    #[arg(long)]
    pub proxy_path: Option<PathBuf>,

    /// Unix socket of the audit collector, written into the kernelspec's argv as the
    /// proxy's --socket. Re-installing an audited spec keeps its value unless given again.
    #[arg(long)]
    pub socket: Option<PathBuf>,

    /// The proxy's --on-audit-failure written into the kernelspec's argv (the proxy's
    /// default is block). Kept on re-install unless given again.
    #[arg(long, value_enum)]
    pub on_audit_failure: Option<OnAuditFailure>,

    /// The admin config file the proxy reads (its --config; the proxy's default is
    /// /etc/jupyter-audit/config.toml). Kept on re-install unless given again.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The store directory.
    #[arg(long)]
    pub store: PathBuf,

    /// A checkpoint kept outside the store: a file with one checkpoint, or a copy of
    /// checkpoints.jsonl (its last line is used). Default: the store's own.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,

    /// The public key kept outside the store (hex, as exported). Default: the store's
    /// checkpoint.pub.
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// The filters of `log` and `sessions`; every filter given must match.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Records of this user: `user.name` or `user.id`, as the collector verified it.
    #[arg(long, value_name = "U")]
    pub user: Option<String>,

    /// Records of the sessions whose id starts with S.
    #[arg(long, value_name = "S")]
    pub session: Option<String>,

    /// Records of the kernels whose id starts with K.
    #[arg(long, value_name = "K")]
    pub kernel: Option<String>,

    /// Records at or after T: RFC 3339 (2024-05-01T12:00:00Z) or a date (2024-05-01, UTC).
    #[arg(long, value_name = "T", value_parser = crate::review::filter::parse_since)]
    pub since: Option<time::OffsetDateTime>,

    /// Records at or before T: RFC 3339, or a date (up to its end, UTC).
    #[arg(long, value_name = "T", value_parser = crate::review::filter::parse_until)]
    pub until: Option<time::OffsetDateTime>,

    /// Records whose event.action is A (execute_request, stream, error, session_start,
    /// …); may be given more than once.
    #[arg(long, value_name = "A")]
    pub action: Vec<String>,

    /// Records whose stored line (compact JSON) matches this regular expression.
    #[arg(long, value_name = "REGEX", value_parser = crate::review::filter::parse_regex)]
    pub grep: Option<regex::Regex>,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// The store directory (read only).
    #[arg(long)]
    pub store: PathBuf,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// Print each record exactly as stored, one per line, instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// The store directory (read only).
    #[arg(long)]
    pub store: PathBuf,

    /// Sessions with at least one record that matches these.
    #[command(flatten)]
    pub filter: FilterArgs,

    /// One JSON object per session instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The store directory (read only).
    #[arg(long)]
    pub store: PathBuf,

    /// The session: its id, or the start of it (as `sessions` shows it).
    #[arg(long, value_name = "S")]
    pub session: String,

    /// The session's user (name or id), when several users' sessions share the id.
    #[arg(long, value_name = "U")]
    pub user: Option<String>,

    /// The notebook to write (`-`: stdout).
    #[arg(short = 'o', long = "output", value_name = "FILE.ipynb")]
    pub output: PathBuf,
}
