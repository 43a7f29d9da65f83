//! The kernel's lifetime as the proxy watches it: started behind the private runtime,
//! signals passed on, the parent that launched the proxy watched, and the session's
//! start and end put on the record.

use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

use super::runtime::PrivateRuntime;
use super::startup::Activity;
use super::{ProxyConfig, ProxyError, Relay, rejections};
use crate::audit::events;
use crate::launcher::{self, KernelProcess};

/// How the session ended.
pub(super) struct Ended {
    pub status: ExitStatus,
    /// The process that launched the proxy went away first.
    pub orphaned: bool,
    /// The relay tasks, when the relay had started.
    pub tasks: Option<Vec<JoinHandle<()>>>,
}

/// Watches the kernel process until it exits.
pub(super) struct Supervisor {
    kernel: KernelProcess,
    kernel_pid: u32,
    signals: Signals,
    relay: Arc<Relay>,
}

impl Supervisor {
    /// Starts the kernel on the private connection file and records the session's start.
    pub(super) fn start_kernel(
        config: &ProxyConfig,
        runtime: &PrivateRuntime,
        relay: Arc<Relay>,
        signals: Signals,
    ) -> Result<Self, ProxyError> {
        let argv = launcher::substitute_connection_file(
            &config.kernel_argv,
            &config.connection_file,
            runtime.connection_file(),
        );
        let kernel = KernelProcess::spawn(&argv)?;
        let kernel_pid = kernel.pid();
        tracing::info!(pid = kernel_pid, program = %argv[0], "kernel started");
        kernel
            .pass_interrupts_at_once()
            .map_err(ProxyError::Signals)?;
        relay.record(&session_start(config, &argv, kernel_pid));
        Ok(Self {
            kernel,
            kernel_pid,
            signals,
            relay,
        })
    }

    /// Runs until the kernel exits, meanwhile starting the relay (`relaying`), passing
    /// signals on and stopping the kernel if the proxy's parent goes away. A relay that
    /// fails to start takes the kernel down: nobody could reach it.
    pub(super) async fn watch(
        &mut self,
        relaying: impl Future<Output = Result<Vec<JoinHandle<()>>, ProxyError>>,
    ) -> Result<Ended, ProxyError> {
        tokio::pin!(relaying);
        let parent_exited = async {
            match launcher::watched_parent() {
                Some(parent) => launcher::parent_exited(parent).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(parent_exited);
        let kernel_pid = self.kernel_pid;
        let mut orphaned = false;
        let mut tasks = None;
        let status = loop {
            tokio::select! {
                started = &mut relaying, if tasks.is_none() => match started {
                    Ok(started) => tasks = Some(started),
                    Err(error) => {
                        self.kernel.signal_group(Signal::SIGKILL);
                        return Err(error);
                    }
                },
                status = self.kernel.wait() => break status.map_err(ProxyError::Wait)?,
                () = &mut parent_exited, if !orphaned => {
                    orphaned = true;
                    tracing::warn!(pid = kernel_pid, "the process that started the kernel is gone; stopping the kernel");
                    self.relay.record(&events::ParentExited {});
                    self.kernel.signal_group(Signal::SIGKILL);
                }
                signal = self.signals.next() => {
                    tracing::info!(?signal, pid = kernel_pid, "passing signal to the kernel");
                    self.relay.record(&events::SignalPassed { signal: signal.as_str().to_owned() });
                    // SIGINT was passed on by the signal handler already.
                    if signal != Signal::SIGINT {
                        self.kernel.signal_group(signal);
                    }
                }
            }
        };
        tracing::info!(pid = kernel_pid, %status, "kernel exited");
        Ok(Ended {
            status,
            orphaned,
            tasks,
        })
    }
}

/// After the kernel exited: lets its last outputs through, stops the relays and the
/// rejection reports, puts the rejections still counted and the session's end on the
/// record, and waits (briefly) until the record is stored.
pub(super) async fn finish(
    relay: &Relay,
    ended: &Ended,
    activity: &Activity,
    reporting: JoinHandle<()>,
) {
    // Let replies and outputs the kernel sent just before exiting reach the frontends.
    activity
        .wait_for_quiet(Duration::from_millis(150), Duration::from_secs(2))
        .await;
    for task in ended.tasks.iter().flatten() {
        task.abort();
    }
    reporting.abort();
    // Rejections counted in windows that are still open are on the record too.
    for summary in relay.rejections.drain() {
        rejections::record_suppressed(&summary, relay).await;
    }
    if let Some(auditor) = &relay.auditor {
        auditor.event(&session_end(ended.status, ended.orphaned));
        if let Err(error) = auditor.flush(Duration::from_secs(3)).await {
            tracing::error!(%error, "the end of the session could not be recorded");
        }
    }
}

/// Jupyter names connection files `kernel-<kernel id>.json`.
pub(super) fn kernel_id(connection_file: &Path) -> Option<String> {
    let stem = connection_file.file_stem()?.to_string_lossy();
    Some(stem.strip_prefix("kernel-").unwrap_or(&stem).to_owned())
}

/// What is known about a session when it starts. The environment values are set by
/// Jupyter (and could be set by the user): context, not identity.
fn session_start(config: &ProxyConfig, argv: &[String], kernel_pid: u32) -> events::SessionStart {
    let env = |name: &str| std::env::var(name).ok();
    events::SessionStart {
        notebook_path: env("JPY_SESSION_NAME"),
        hub_user: env("JUPYTERHUB_USER"),
        hub_server_name: env("JUPYTERHUB_SERVER_NAME"),
        kernel_argv: argv.to_vec(),
        kernel_pid,
        proxy_pid: std::process::id(),
        proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
        connection_file: config.connection_file.display().to_string(),
    }
}

fn session_end(status: ExitStatus, orphaned: bool) -> events::SessionEnd {
    use std::os::unix::process::ExitStatusExt;
    events::SessionEnd {
        exit_code: status.code(),
        exit_signal: status.signal(),
        orphaned,
    }
}

/// The signals the proxy passes on to the kernel instead of dying of them.
pub(super) struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> Result<Self, ProxyError> {
        let make = |kind| signal(kind).map_err(ProxyError::Signals);
        Ok(Self {
            interrupt: make(SignalKind::interrupt())?,
            terminate: make(SignalKind::terminate())?,
            hangup: make(SignalKind::hangup())?,
        })
    }

    /// The next signal to pass on.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::SIGINT,
            _ = self.terminate.recv() => Signal::SIGTERM,
            _ = self.hangup.recv() => Signal::SIGHUP,
        }
    }
}
