//! Command-line interface: the clap definitions of every subcommand, and their
//! conversion into the plain option structs of the modules that do the work.
//!
//! This is a module of the binary, not of the library: the library never sees clap's
//! structs. `main.rs` dispatches the converted options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use jupyter_audit::config::{
    DEFAULT_CONFIG_PATH, KernelAuditOptions, LimitsSection, OnAuditFailure,
};
use jupyter_audit::connection::KernelTransport;
use jupyter_audit::console::export::{ExportOptions, PublicKeySource, VerifyExportOptions};
use jupyter_audit::kernelspec::InstallOptions;
use jupyter_audit::postgres::connect::PostgresOptions;
use jupyter_audit::postgres::review::StoreSelection;
use jupyter_audit::postgres::schema::InitOptions;
use jupyter_audit::postgres::status::StatusOptions;
use jupyter_audit::review::filter::{self, Filter};
use jupyter_audit::review::log::LogOptions;
use jupyter_audit::review::replay::ReplayOptions;
use jupyter_audit::review::sessions::SessionsOptions;
use jupyter_audit::review::source::RecordSource;

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
    Collector(Box<CollectorArgs>),
    /// Print the store's checkpoint verification (public) key, to keep elsewhere.
    ExportKey(ExportKeyArgs),
    /// List the records of a store that match filters (a table, or the stored lines).
    Log(LogArgs),
    /// List the sessions of a store: user, notebook, kernel, start, end, cells, errors.
    Sessions(SessionsArgs),
    /// Rebuild a session as a notebook (.ipynb) of what ran and what it displayed.
    Replay(ReplayArgs),
    /// Write a session as a notebook (what `replay` writes) that carries its proof: the
    /// records it is built from, with their chain hashes, and the signed checkpoint that
    /// covers them, for `verify-export` to check offline.
    Export(ExportArgs),
    /// Check an export offline with the store's public key: the notebook against its
    /// records, their hashes and links, the checkpoint's signature. Exit 0 when no check
    /// failed, 1 when one did (or, with --strict, when something is left unproven), 2 when
    /// it cannot check.
    VerifyExport(VerifyExportArgs),
    /// Run the review console, a web application, as a JupyterHub service (it reads the
    /// JUPYTERHUB_* environment the Hub gives a service).
    Serve(ServeArgs),
    /// Show how far a store is stored, checkpointed and forwarded to PostgreSQL (lag).
    Status(StatusArgs),
    /// The central trail in PostgreSQL.
    #[command(subcommand)]
    Postgres(PostgresCommand),
    /// Print the shell completion script for bash, zsh or fish on standard output.
    Completions(CompletionsArgs),
    /// Write the man pages (jupyter-audit.1 and one per subcommand) into a directory; for
    /// packagers (scripts/build-deb.sh).
    #[command(hide = true)]
    Manpages(ManpagesArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell the script is for.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManpagesArgs {
    /// The directory to write the pages into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum PostgresCommand {
    /// Create the roles, tables, indexes, grants and triggers of the central trail (run by
    /// a database admin, who owns them; running it again changes nothing).
    Init(PostgresInitArgs),
}

#[derive(Debug, Args)]
pub struct PostgresInitArgs {
    /// The server, as libpq takes it: `postgresql://admin@host/db?sslmode=verify-full&sslrootcert=ca.pem`
    /// or `host=… user=… dbname=…`. Never with a password in it.
    #[arg(long, required_unless_present = "print")]
    pub url: Option<String>,

    /// A file that holds the password alone (default: PGPASSFILE or ~/.pgpass).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    /// The role the collectors forward as: INSERT and SELECT (created if missing).
    #[arg(long, value_name = "ROLE")]
    pub writer: String,

    /// The role reviewers read as: SELECT (created if missing).
    #[arg(long, value_name = "ROLE")]
    pub reader: String,

    /// Print the SQL instead of running it (no connection).
    #[arg(long)]
    pub print: bool,
}

/// `--hub-identity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HubIdentityPolicy {
    Required,
    Preferred,
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

    /// Write a signed checkpoint this often when records were added (seconds)
    /// [default: 60; 1 when forwarding to PostgreSQL].
    #[arg(long, value_name = "SECS", conflicts_with = "checkpoint_interval_ms")]
    pub checkpoint_interval_secs: Option<u64>,

    /// The same in milliseconds.
    #[arg(long, value_name = "MS")]
    pub checkpoint_interval_ms: Option<u64>,

    /// Forward the store to this PostgreSQL server (a libpq URL or key=value string,
    /// without a password; also `postgres_url` in the config file's [forward]). Proxies
    /// never wait for it: records are forwarded from the store in the background.
    #[arg(long, value_name = "URL")]
    pub forward_postgres: Option<String>,

    /// A file that holds the PostgreSQL password (never give it on the command line;
    /// also `password_file` in [forward]).
    #[arg(long, value_name = "FILE")]
    pub postgres_password_file: Option<PathBuf>,

    /// Ask this JupyterHub (its API root, e.g. http://hub:8081/hub/api) who owns the
    /// API token each kernel presents, and record that Hub user as `user` (the OS
    /// account stays in `process.user`). Also `api_url` in the config file's [hub].
    #[arg(long, value_name = "URL")]
    pub hub_api_url: Option<String>,

    /// PEM file of the CA that signed the Hub's certificate; also `ca_file` in [hub].
    #[arg(long, value_name = "PEM")]
    pub hub_ca_file: Option<PathBuf>,

    /// The collector's certificate (PEM) for a Hub that asks for one (internal_ssl:
    /// signed by a CA in the Hub's trust bundle); also `client_cert` in [hub].
    #[arg(long, value_name = "PEM", requires = "hub_client_key")]
    pub hub_client_cert: Option<PathBuf>,

    /// Its private key (PEM, readable by the collector's user only); also
    /// `client_key` in [hub].
    #[arg(long, value_name = "PEM", requires = "hub_client_cert")]
    pub hub_client_key: Option<PathBuf>,

    /// A kernel whose token the Hub does not vouch for: refused (its cells do not run)
    /// or accepted under its OS account, marked unverified [default: required]; also
    /// `identity` in [hub].
    #[arg(long, value_enum, value_name = "POLICY")]
    pub hub_identity: Option<HubIdentityPolicy>,

    /// How long a token the Hub verified is accepted while the Hub cannot be reached
    /// (seconds) [default: 86400]; also `cache_max_age_secs` in [hub].
    #[arg(long, value_name = "SECS")]
    pub hub_cache_max_age_secs: Option<u64>,

    /// An OS account whose connections are the review console's (`jupyter-audit serve`):
    /// they may write review records (review_access, review_mark) and nothing else,
    /// and no one else may write those; the Hub is not asked about them. Repeatable;
    /// also `users` in the config file's [console] (the flags replace it).
    #[arg(long, value_name = "NAME")]
    pub console_user: Vec<String>,

    /// The admin config file; its [limits] section sets the fairness limits, its
    /// [forward] section the PostgreSQL target and its [hub] section the JupyterHub
    /// (the flags override them). A missing file is an empty one.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
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

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The store directory (read access is enough).
    #[arg(
        long,
        required_unless_present = "postgres",
        conflicts_with = "postgres"
    )]
    pub store: Option<PathBuf>,

    /// Review the records forwarded to this PostgreSQL server instead, every store the
    /// collectors forward there (libpq URL, without a password; the reader role is enough).
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,

    /// The file that holds the PostgreSQL password.
    #[arg(long, value_name = "FILE", conflicts_with = "store")]
    pub postgres_password_file: Option<PathBuf>,

    /// The collector's socket, where every view is put on the record before it is
    /// shown (the collector names this console's OS account with --console-user).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_COLLECTOR_SOCKET)]
    pub collector_socket: PathBuf,

    /// The console's index of the store (an SQLite file it writes; rebuilt from the store
    /// when deleted) [default: $STATE_DIRECTORY, else $XDG_STATE_HOME/jupyter-audit, else
    /// ~/.local/state/jupyter-audit, /console-index-<store id>.sqlite; with --postgres,
    /// console-index-pg-<database>-<hash of the URL>.sqlite].
    #[arg(long)]
    pub index: Option<PathBuf>,
}

/// The collector's socket where the README's systemd unit puts it.
pub const DEFAULT_COLLECTOR_SOCKET: &str = "/run/jupyter-audit/collector.sock";

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The store directory (read access is enough).
    #[arg(long)]
    pub store: PathBuf,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl From<&StatusArgs> for StatusOptions {
    fn from(args: &StatusArgs) -> Self {
        StatusOptions {
            store: args.store.clone(),
        }
    }
}

fn parse_octal(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|error| format!("not an octal mode: {error}"))
}

/// How the proxy reaches the real kernel: [`KernelTransport`] as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelTransportArg {
    /// Unix sockets in a private 0700 runtime directory (default).
    Ipc,
    /// TCP on 127.0.0.1 (for kernels that do not support ipc).
    Tcp,
}

impl From<KernelTransportArg> for KernelTransport {
    fn from(arg: KernelTransportArg) -> Self {
        match arg {
            KernelTransportArg::Ipc => KernelTransport::Ipc,
            KernelTransportArg::Tcp => KernelTransport::Tcp,
        }
    }
}

#[derive(Debug, Args)]
pub struct KernelArgs {
    /// The connection file Jupyter wrote for this kernel (frontend side).
    #[arg(short = 'f', long = "connection-file")]
    pub connection_file: PathBuf,

    /// Transport between the proxy and the real kernel.
    #[arg(long, value_enum, default_value_t = KernelTransportArg::Ipc)]
    pub kernel_transport: KernelTransportArg,

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
    pub on_audit_failure: Option<OnAuditFailureArg>,

    /// Text outputs longer than this (bytes) keep only head and tail, size and SHA-256.
    #[arg(long)]
    pub text_cap_bytes: Option<usize>,

    /// Keep binary outputs (images) in full, not only their SHA-256 and size.
    #[arg(long)]
    pub keep_binary: bool,

    /// The admin config file. Its settings override the command line, so a kernelspec
    /// cannot weaken them.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Relay without auditing (refused when the admin config names a collector).
    #[arg(long)]
    pub no_audit: bool,

    /// The real kernel's command line; `{connection_file}` is replaced by the path of
    /// the proxy's private connection file.
    #[arg(last = true, required = true, num_args = 1..)]
    pub argv: Vec<String>,
}

/// The policy when the collector cannot take a record: [`OnAuditFailure`] as a flag
/// value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnAuditFailureArg {
    /// Refuse the request; the user gets an error saying why (fail-closed).
    Block,
    /// Run it anyway and write an audit gap record once the collector is back.
    Allow,
}

impl From<OnAuditFailureArg> for OnAuditFailure {
    fn from(arg: OnAuditFailureArg) -> Self {
        match arg {
            OnAuditFailureArg::Block => OnAuditFailure::Block,
            OnAuditFailureArg::Allow => OnAuditFailure::Allow,
        }
    }
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
    pub on_audit_failure: Option<OnAuditFailureArg>,

    /// The admin config file the proxy reads (its --config; the proxy's default is
    /// /etc/jupyter-audit/config.toml). Kept on re-install unless given again.
    #[arg(long)]
    pub config: Option<PathBuf>,

    /// The proxy's --kernel-transport written into the kernelspec's argv (the proxy's
    /// default is ipc, which every tested kernel accepts). Kept on re-install unless given again.
    #[arg(long, value_enum)]
    pub kernel_transport: Option<KernelTransportArg>,

    /// Any other flag of `jupyter-audit kernel`, as one token `--name` or `--name=value`
    /// (e.g. --proxy-flag=--keep-binary); repeatable. Checked against the proxy's flags,
    /// written into the argv, and on re-install it replaces the spec's value of that flag.
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    pub proxy_flag: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The store directory.
    #[arg(
        long,
        required_unless_present = "postgres",
        conflicts_with = "postgres"
    )]
    pub store: Option<PathBuf>,

    /// Check every store forwarded to this PostgreSQL server instead (libpq URL, without
    /// a password).
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,

    /// The file that holds the PostgreSQL password.
    #[arg(long, value_name = "FILE", conflicts_with = "store")]
    pub postgres_password_file: Option<PathBuf>,

    /// With --postgres: check this store only.
    #[arg(long, value_name = "ID", conflicts_with = "store")]
    pub store_id: Option<uuid::Uuid>,

    /// A checkpoint kept outside the store: a file with one checkpoint, or a copy of
    /// checkpoints.jsonl (its last line is used). Default: the store's own.
    #[arg(long, conflicts_with = "postgres")]
    pub checkpoint: Option<PathBuf>,

    /// The public key kept outside the store (hex, as exported). Default: the store's
    /// checkpoint.pub. With --postgres: STORE_ID=FILE, once per store (default: the key
    /// the store registered in the database).
    #[arg(long, value_name = "[STORE_ID=]FILE", value_parser = parse_key_arg)]
    pub key: Vec<KeyArg>,
}

/// `--key [STORE_ID=]FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyArg {
    pub store_id: Option<uuid::Uuid>,
    pub file: PathBuf,
}

fn parse_key_arg(text: &str) -> Result<KeyArg, String> {
    if let Some((id, file)) = text.split_once('=')
        && let Ok(store_id) = uuid::Uuid::parse_str(id)
    {
        return Ok(KeyArg {
            store_id: Some(store_id),
            file: PathBuf::from(file),
        });
    }
    Ok(KeyArg {
        store_id: None,
        file: PathBuf::from(text),
    })
}

/// Where `log`, `sessions` and `replay` read records: a store, or PostgreSQL.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// The store directory (read only).
    #[arg(
        long,
        required_unless_present = "postgres",
        conflicts_with = "postgres"
    )]
    pub store: Option<PathBuf>,

    /// Read the records forwarded to this PostgreSQL server instead, across all stores
    /// (libpq URL, without a password).
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,

    /// The file that holds the PostgreSQL password.
    #[arg(long, value_name = "FILE", conflicts_with = "store")]
    pub postgres_password_file: Option<PathBuf>,

    /// With --postgres: the records of this store only.
    #[arg(long, value_name = "ID", conflicts_with = "store")]
    pub store_id: Option<uuid::Uuid>,

    /// With --postgres: the records of the stores of this host only.
    #[arg(long, value_name = "NAME", conflicts_with = "store")]
    pub host: Option<String>,
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
    #[arg(long, value_name = "T", value_parser = filter::parse_since)]
    pub since: Option<time::OffsetDateTime>,

    /// Records at or before T: RFC 3339, or a date (up to its end, UTC).
    #[arg(long, value_name = "T", value_parser = filter::parse_until)]
    pub until: Option<time::OffsetDateTime>,

    /// Records whose event.action is A (execute_request, stream, error, session_start,
    /// …); may be given more than once.
    #[arg(long, value_name = "A")]
    pub action: Vec<String>,

    /// Records whose stored line (compact JSON) matches this regular expression.
    #[arg(long, value_name = "REGEX", value_parser = filter::parse_regex)]
    pub grep: Option<regex::Regex>,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// Print each record exactly as stored, one per line, instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Sessions with at least one record that matches these.
    #[command(flatten)]
    pub filter: FilterArgs,

    /// One JSON object per session instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub source: SourceArgs,

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

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The store directory.
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,

    /// The session: its id, or the start of it (as `sessions` shows it).
    #[arg(long, value_name = "S")]
    pub session: String,

    /// The session's user (name or id), when several users' sessions share the id.
    #[arg(long, value_name = "U")]
    pub user: Option<String>,

    /// Leave the outputs out (of the notebook and of the proof): code and counts only.
    #[arg(long)]
    pub no_outputs: bool,

    /// The file to write (`-`: stdout).
    #[arg(short = 'o', long = "out", value_name = "FILE.ipynb")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("key").required(true).args(["public_key", "store"])))]
pub struct VerifyExportArgs {
    /// The exported notebook.
    #[arg(value_name = "FILE.ipynb")]
    pub file: PathBuf,

    /// The store's public key (64 hex digits, as `export-key` prints it), kept where the
    /// store's writers cannot reach.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,

    /// Take the public key (checkpoint.pub) and the store id from this store directory.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// Fail (exit 1) also when part of the export cannot be proven offline.
    #[arg(long)]
    pub strict: bool,
}

impl From<ExportArgs> for ExportOptions {
    fn from(args: ExportArgs) -> Self {
        ExportOptions {
            store: args.store,
            session: args.session,
            user: args.user,
            outputs: !args.no_outputs,
            output: args.out,
        }
    }
}

impl From<&VerifyExportArgs> for VerifyExportOptions {
    fn from(args: &VerifyExportArgs) -> Self {
        let key = match (&args.public_key, &args.store) {
            (Some(file), _) => PublicKeySource::File(file.clone()),
            (None, Some(dir)) => PublicKeySource::Store(dir.clone()),
            // clap requires one of the two.
            (None, None) => PublicKeySource::File(PathBuf::new()),
        };
        VerifyExportOptions {
            file: args.file.clone(),
            key,
        }
    }
}

impl KernelArgs {
    /// The audit flags, for the admin config file to override.
    pub fn audit_options(&self) -> KernelAuditOptions {
        KernelAuditOptions {
            config: self.config.clone(),
            socket: self.socket.clone(),
            on_audit_failure: self.on_audit_failure.map(OnAuditFailure::from),
            text_cap_bytes: self.text_cap_bytes,
            keep_binary: self.keep_binary,
            no_audit: self.no_audit,
        }
    }
}

impl From<&LimitArgs> for LimitsSection {
    fn from(args: &LimitArgs) -> Self {
        LimitsSection {
            max_connections_per_user: args.max_connections_per_user,
            max_connections: args.max_connections,
            hello_timeout_secs: args.hello_timeout_secs,
            idle_timeout_secs: args.idle_timeout_secs,
            frame_timeout_secs: args.frame_timeout_secs,
            in_flight_bytes_per_user: args.in_flight_bytes_per_user,
            in_flight_bytes: args.in_flight_bytes,
            storage_rate_bytes_per_sec: args.storage_rate_bytes_per_sec,
            storage_burst_bytes: args.storage_burst_bytes,
            storage_share_bytes: args.storage_share_bytes,
            storage_share_window_secs: args.storage_share_window_secs,
            disk_reserve_bytes: args.disk_reserve_bytes,
            disk_reserve_percent: args.disk_reserve_percent,
        }
    }
}

impl From<InstallArgs> for InstallOptions {
    fn from(args: InstallArgs) -> Self {
        InstallOptions {
            wrap: args.wrap,
            name: args.name,
            display_name: args.display_name,
            replace: args.replace,
            user: args.user,
            sys_prefix: args.sys_prefix,
            prefix: args.prefix,
            proxy_path: args.proxy_path,
            socket: args.socket,
            on_audit_failure: args.on_audit_failure.map(OnAuditFailure::from),
            config: args.config,
            kernel_transport: args.kernel_transport.map(KernelTransport::from),
            proxy_flags: args.proxy_flag,
        }
    }
}

impl From<FilterArgs> for Filter {
    fn from(args: FilterArgs) -> Self {
        Filter {
            user: args.user,
            session: args.session,
            kernel: args.kernel,
            since: args.since,
            until: args.until,
            actions: args.action,
            grep: args.grep,
        }
    }
}

impl From<SourceArgs> for RecordSource {
    fn from(args: SourceArgs) -> Self {
        match (args.store, args.postgres) {
            (Some(dir), _) => RecordSource::Store(dir),
            (None, url) => RecordSource::Postgres {
                options: PostgresOptions {
                    url: url.unwrap_or_default(),
                    password_file: args.postgres_password_file,
                },
                stores: StoreSelection {
                    store_id: args.store_id,
                    host: args.host,
                },
            },
        }
    }
}

impl From<LogArgs> for LogOptions {
    fn from(args: LogArgs) -> Self {
        LogOptions {
            source: args.source.into(),
            filter: args.filter.into(),
            json: args.json,
        }
    }
}

impl From<SessionsArgs> for SessionsOptions {
    fn from(args: SessionsArgs) -> Self {
        SessionsOptions {
            source: args.source.into(),
            filter: args.filter.into(),
            json: args.json,
        }
    }
}

impl From<ReplayArgs> for ReplayOptions {
    fn from(args: ReplayArgs) -> Self {
        ReplayOptions {
            source: args.source.into(),
            session: args.session,
            user: args.user,
            output: args.output,
        }
    }
}

impl From<PostgresInitArgs> for InitOptions {
    fn from(args: PostgresInitArgs) -> Self {
        InitOptions {
            server: PostgresOptions {
                url: args.url.unwrap_or_default(),
                password_file: args.password_file,
            },
            writer: args.writer,
            reader: args.reader,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(argv: &[&str]) -> Command {
        let argv = std::iter::once("jupyter-audit").chain(argv.iter().copied());
        Cli::try_parse_from(argv).expect("valid arguments").command
    }

    #[test]
    fn kernel_flags_become_the_audit_options_the_config_file_overrides() {
        let Command::Kernel(args) = command(&["kernel", "-f", "c.json", "--", "python"]) else {
            panic!("not kernel");
        };
        assert_eq!(
            args.audit_options().config,
            PathBuf::from(DEFAULT_CONFIG_PATH)
        );
        assert_eq!(
            KernelTransport::from(args.kernel_transport),
            KernelTransport::Ipc
        );
        let Command::Kernel(args) = command(&[
            "kernel",
            "-f",
            "c.json",
            "--kernel-transport",
            "tcp",
            "--socket",
            "/run/c.sock",
            "--on-audit-failure",
            "allow",
            "--text-cap-bytes",
            "1",
            "--keep-binary",
            "--no-audit",
            "--config",
            "/etc/ja.toml",
            "--",
            "python",
        ]) else {
            panic!("not kernel");
        };
        assert_eq!(
            KernelTransport::from(args.kernel_transport),
            KernelTransport::Tcp
        );
        assert_eq!(
            args.audit_options(),
            KernelAuditOptions {
                config: PathBuf::from("/etc/ja.toml"),
                socket: Some(PathBuf::from("/run/c.sock")),
                on_audit_failure: Some(OnAuditFailure::Allow),
                text_cap_bytes: Some(1),
                keep_binary: true,
                no_audit: true,
            }
        );
    }

    #[test]
    fn install_flags_become_install_options() {
        let Command::Install(args) = command(&[
            "install",
            "--wrap",
            "python3",
            "--replace",
            "--on-audit-failure",
            "block",
            "--socket",
            "/run/c.sock",
            "--kernel-transport",
            "tcp",
            "--proxy-flag",
            "--keep-binary",
            "--proxy-flag=--text-cap-bytes=9",
        ]) else {
            panic!("not install");
        };
        let options = InstallOptions::from(args);
        assert_eq!(
            options,
            InstallOptions {
                wrap: "python3".into(),
                replace: true,
                on_audit_failure: Some(OnAuditFailure::Block),
                socket: Some(PathBuf::from("/run/c.sock")),
                kernel_transport: Some(KernelTransport::Tcp),
                proxy_flags: vec!["--keep-binary".into(), "--text-cap-bytes=9".into()],
                ..InstallOptions::default()
            }
        );
    }

    #[test]
    fn log_filters_are_parsed_into_the_query() {
        let Command::Log(args) = command(&[
            "log",
            "--store",
            "/s",
            "--json",
            "--user",
            "bob",
            "--action",
            "stream",
            "--action",
            "error",
            "--since",
            "2024-05-02",
            "--until",
            "2024-05-02",
            "--grep",
            "a+",
        ]) else {
            panic!("not log");
        };
        let options = LogOptions::from(args);
        assert!(options.json);
        assert!(matches!(&options.source, RecordSource::Store(dir) if dir == &PathBuf::from("/s")));
        let query = options.filter;
        assert_eq!(query.user.as_deref(), Some("bob"));
        assert_eq!(query.actions, ["stream", "error"]);
        let day = |time: Option<time::OffsetDateTime>| time.map(|t| t.date().to_string());
        assert_eq!(day(query.since), Some("2024-05-02".into()));
        assert_eq!(day(query.until), Some("2024-05-02".into()));
        assert!(query.until > query.since, "the whole day");
        assert!(query.grep.is_some_and(|grep| grep.is_match("caab")));
    }

    #[test]
    fn review_reads_a_store_or_postgresql_but_not_both() {
        let postgres = |extra: &[&str]| {
            let mut argv = vec!["sessions", "--postgres", "host=/run/pg dbname=audit"];
            argv.extend_from_slice(extra);
            let argv = std::iter::once("jupyter-audit").chain(argv);
            Cli::try_parse_from(argv)
        };
        let Ok(Cli {
            command: Command::Sessions(args),
        }) = postgres(&[
            "--store-id",
            "6f1c2a3e-0000-4000-8000-000000000001",
            "--host",
            "h1",
        ])
        else {
            panic!("sessions --postgres");
        };
        let RecordSource::Postgres { options, stores } = SessionsOptions::from(args).source else {
            panic!("not postgres");
        };
        assert_eq!(options.url, "host=/run/pg dbname=audit");
        assert_eq!(stores.host.as_deref(), Some("h1"));
        assert!(stores.store_id.is_some());
        assert!(postgres(&["--store", "/s"]).is_err());
        let no_source = Cli::try_parse_from(["jupyter-audit", "log"]);
        assert!(no_source.is_err());
        let host_without_postgres =
            Cli::try_parse_from(["jupyter-audit", "log", "--store", "/s", "--host", "h"]);
        assert!(host_without_postgres.is_err());
        let Ok(Cli {
            command: Command::Verify(args),
        }) = Cli::try_parse_from([
            "jupyter-audit",
            "verify",
            "--postgres",
            "dbname=a",
            "--key",
            "6f1c2a3e-0000-4000-8000-000000000001=/keys/a.pub",
        ])
        else {
            panic!("verify --postgres");
        };
        assert!(args.key[0].store_id.is_some());
        assert_eq!(args.key[0].file, PathBuf::from("/keys/a.pub"));
    }

    #[test]
    fn postgres_init_needs_a_url_unless_it_only_prints() {
        let roles = ["--writer", "fwd", "--reader", "audit"];
        let Command::Postgres(PostgresCommand::Init(args)) =
            command(&[&["postgres", "init", "--print"][..], &roles].concat())
        else {
            panic!("not postgres init");
        };
        assert!(args.print && args.url.is_none());
        let without_url = [
            "jupyter-audit",
            "postgres",
            "init",
            "--writer",
            "w",
            "--reader",
            "r",
        ];
        assert!(Cli::try_parse_from(without_url).is_err());
        let Command::Postgres(PostgresCommand::Init(args)) = command(
            &[
                &[
                    "postgres",
                    "init",
                    "--url",
                    "host=h",
                    "--password-file",
                    "/p",
                ][..],
                &roles,
            ]
            .concat(),
        ) else {
            panic!("not postgres init");
        };
        let options = InitOptions::from(args);
        assert_eq!(options.server.url, "host=h");
        assert_eq!(options.server.password_file, Some(PathBuf::from("/p")));
        assert_eq!(
            (options.writer.as_str(), options.reader.as_str()),
            ("fwd", "audit")
        );
    }
}
