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

    /// The real kernel's command line; `{connection_file}` is replaced by the path of
    /// the proxy's private connection file.
    #[arg(last = true, required = true, num_args = 1..)]
    pub argv: Vec<String>,
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
}
