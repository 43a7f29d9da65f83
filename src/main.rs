//! The `jupyter-audit` binary: parses the command line and runs a subcommand.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use jupyter_audit::cli::{Cli, Command, KernelArgs};
use jupyter_audit::proxy::{self, ProxyConfig};
use jupyter_audit::{kernelspec, launcher};

fn main() {
    init_tracing();
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        eprintln!("jupyter-audit: {}", describe(&error));
        std::process::exit(1);
    }
}

/// One line: the error and those of its causes that add something new.
fn describe(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Kernel(args) => run_kernel(args),
        Command::Install(args) => {
            let dir = kernelspec::install(&args)?;
            println!("{}", dir.display());
            Ok(())
        }
    }
}

/// Diagnostics go to stderr, which Jupyter shows in its log and `jupyter console` in
/// the user's terminal: quiet unless something is wrong; RUST_LOG asks for more.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,zeromq=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn run_kernel(args: KernelArgs) -> anyhow::Result<()> {
    let config = ProxyConfig {
        connection_file: args.connection_file,
        kernel_transport: args.kernel_transport,
        max_message_bytes: args.max_message_bytes,
        runtime_dir: args.runtime_dir,
        kernel_argv: args.argv,
    };
    // The kernel is spawned from the thread that runs block_on (this one), which
    // lives as long as the process: its parent-death signal is tied to that thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let status = runtime.block_on(proxy::run(config))?;
    runtime.shutdown_background();
    launcher::exit_like(status)
}
