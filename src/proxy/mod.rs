//! The relay between frontends and the real kernel: binds the frontend side, starts
//! the kernel behind a private connection, waits until it answers, then relays all
//! five channels until the kernel exits.

mod audit;
mod heartbeat;
mod iopub;
mod refusal;
mod rejections;
mod requests;
mod runtime;
mod startup;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

use self::audit::Auditor;
use crate::audit::events::{self, AuditEvent};
use crate::audit::{RecordBuilder, SessionContext};
use crate::collector::client::AuditClient;
use crate::config::AuditSettings;
use crate::connection::Channel;
use crate::connection::KernelTransport;
use crate::connection::{ConnectionError, ConnectionInfo};
use crate::launcher::{self, KernelProcess, LaunchError};
use crate::transport::{self, TransportError};
use crate::wire::{ReplayGuard, Signer, WireError};

pub use runtime::RuntimeError;

/// How long the kernel may take to bind its sockets and answer.
const STARTUP_PATIENCE: Duration = Duration::from_secs(120);

/// Everything the proxy needs to run.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub connection_file: PathBuf,
    pub kernel_transport: KernelTransport,
    pub max_message_bytes: usize,
    pub runtime_dir: Option<PathBuf>,
    pub kernel_argv: Vec<String>,
    /// Where records go; None relays without auditing.
    pub audit: Option<AuditSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("connection file: {0}")]
    Signature(#[from] WireError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("waiting for the kernel process failed: {0}")]
    Wait(std::io::Error),
    #[error("the kernel did not become ready within {0:?}")]
    StartupTimeout(Duration),
}

/// What both relay directions share.
#[derive(Debug)]
pub(crate) struct Sides {
    /// Signs and checks messages with the frontend's key (Jupyter's connection file).
    pub frontend: Signer,
    /// Signs and checks messages with the real kernel's private key.
    pub kernel: Signer,
    /// Whether the kernel's messages are checked against its private key: only when its
    /// sockets are loopback ports, which another local user could bind first. Over ipc
    /// (the default) they are in a 0700 directory that only this account can reach,
    /// and this account's code can read the key from the kernel anyway: a check would
    /// cost an HMAC pass over every output and protect nothing.
    pub check_kernel_signatures: bool,
    /// Signatures already used by frontends, on any channel (one session, one history).
    pub replay: Mutex<ReplayGuard>,
    pub max_message_bytes: usize,
    /// The session id of messages the proxy writes itself, and of the audit session.
    pub session: String,
    pub auditor: Option<Arc<Auditor>>,
    /// Which rejected messages get a record of their own (the rest are counted).
    pub rejections: rejections::RejectionLimiter,
    /// Frontend connections by routing id: who sent a rejected message.
    pub peers: transport::PeerDirectory,
}

/// Runs the proxy until the kernel exits; returns the kernel's exit status.
pub async fn run(config: ProxyConfig) -> Result<ExitStatus, ProxyError> {
    launcher::shield_proxy_from_kernel();
    let frontend_info = ConnectionInfo::read(&config.connection_file)?;
    let mut signals = Signals::install()?;
    let links = transport::bind_frontend(&frontend_info, config.max_message_bytes).await?;
    tracing::info!(connection_file = %config.connection_file.display(), "frontend sockets bound");

    let runtime = runtime::PrivateRuntime::create(
        config.runtime_dir.as_deref(),
        config.kernel_transport,
        frontend_info.kernel_name.clone(),
    )?;
    tracing::debug!(dir = %runtime.dir().display(), "private runtime directory created");
    let session = uuid::Uuid::new_v4().to_string();
    let auditor = config.audit.as_ref().map(|settings| {
        let context = SessionContext {
            session_id: session.clone(),
            kernel_id: kernel_id(&config.connection_file),
            kernel_name: frontend_info.kernel_name.clone(),
        };
        let recorder = RecordBuilder::new(context.clone(), settings.size);
        let (client, _) =
            AuditClient::spawn(settings.socket.clone(), context.clone(), Box::new(recorder));
        Auditor::new(client, context, settings.on_failure)
    });
    let sides = Arc::new(Sides {
        frontend: frontend_info.signer()?,
        kernel: runtime.info().signer()?,
        check_kernel_signatures: config.kernel_transport == KernelTransport::Tcp,
        replay: Mutex::new(ReplayGuard::default()),
        max_message_bytes: config.max_message_bytes,
        session,
        auditor,
        rejections: rejections::RejectionLimiter::default(),
        peers: links.peers.clone(),
    });
    let reporting = spawn_rejection_reports(links.oversized, sides.clone());

    let argv = launcher::substitute_connection_file(
        &config.kernel_argv,
        &config.connection_file,
        runtime.connection_file(),
    );
    let mut kernel = KernelProcess::spawn(&argv)?;
    let kernel_pid = kernel.pid();
    tracing::info!(pid = kernel_pid, program = %argv[0], "kernel started");
    kernel
        .pass_interrupts_at_once()
        .map_err(ProxyError::Signals)?;
    record(&sides, &session_start(&config, &argv, kernel_pid));

    let identity = bytes::Bytes::from(format!("jupyter-audit-{}", std::process::id()));
    let activity = Arc::new(startup::Activity::default());
    let relay = async {
        let mut upstream =
            transport::connect_kernel(runtime.info(), identity, STARTUP_PATIENCE).await?;
        let heartbeat = heartbeat::spawn(links.heartbeat, upstream.heartbeat);
        let welcome =
            iopub::spawn_welcomes(links.iopub.subscriptions, links.iopub.direct, sides.clone());
        startup::wait_until_ready(
            &mut upstream.shell,
            &mut upstream.iopub,
            &sides,
            STARTUP_PATIENCE,
        )
        .await?;
        // The kernel has read its connection file; nobody else needs the key in it.
        runtime.forget_connection_file();
        tracing::info!("kernel ready, relaying");
        let publish = links.iopub.publish;
        let tasks = vec![
            heartbeat,
            welcome,
            requests::spawn(
                Channel::Shell,
                links.shell,
                upstream.shell,
                sides.clone(),
                activity.clone(),
                publish.clone(),
            ),
            requests::spawn(
                Channel::Control,
                links.control,
                upstream.control,
                sides.clone(),
                activity.clone(),
                publish.clone(),
            ),
            requests::spawn(
                Channel::Stdin,
                links.stdin,
                upstream.stdin,
                sides.clone(),
                activity.clone(),
                publish.clone(),
            ),
            iopub::spawn_relay(upstream.iopub, publish, sides.clone(), activity.clone()),
        ];
        Ok::<_, ProxyError>(tasks)
    };

    tokio::pin!(relay);
    let parent_exited = async {
        match launcher::watched_parent() {
            Some(parent) => launcher::parent_exited(parent).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(parent_exited);
    let mut orphaned = false;
    let mut tasks = None;
    let status = loop {
        tokio::select! {
            started = &mut relay, if tasks.is_none() => match started {
                Ok(started) => tasks = Some(started),
                Err(error) => {
                    // Without a working relay the kernel is unreachable: take it down too.
                    kernel.signal_group(Signal::SIGKILL);
                    return Err(error);
                }
            },
            status = kernel.wait() => break status.map_err(ProxyError::Wait)?,
            () = &mut parent_exited, if !orphaned => {
                orphaned = true;
                tracing::warn!(pid = kernel_pid, "the process that started the kernel is gone; stopping the kernel");
                record(&sides, &events::ParentExited {});
                kernel.signal_group(Signal::SIGKILL);
            }
            signal = signals.next() => {
                tracing::info!(?signal, pid = kernel_pid, "passing signal to the kernel");
                record(&sides, &events::SignalPassed { signal: signal.as_str().to_owned() });
                // SIGINT was passed on by the signal handler already.
                if signal != Signal::SIGINT {
                    kernel.signal_group(signal);
                }
            }
        }
    };
    tracing::info!(pid = kernel_pid, %status, "kernel exited");
    // Let replies and outputs the kernel sent just before exiting reach the frontends.
    activity
        .wait_for_quiet(Duration::from_millis(150), Duration::from_secs(2))
        .await;
    for task in tasks.into_iter().flatten() {
        task.abort();
    }
    reporting.abort();
    // Rejections counted in windows that are still open are on the record too.
    for summary in sides.rejections.drain() {
        requests::record_suppressed(&summary, &sides).await;
    }
    if let Some(auditor) = &sides.auditor {
        auditor.event(&session_end(status, orphaned));
        if let Err(error) = auditor.flush(Duration::from_secs(3)).await {
            tracing::error!(%error, "the end of the session could not be recorded");
        }
    }
    Ok(status)
}

/// Reports messages the frontend server skipped for their size, and closes windows of
/// rate-limited rejections once they are over, so their counts reach the record while
/// the session runs.
fn spawn_rejection_reports(
    mut oversized: tokio::sync::mpsc::Receiver<transport::Oversized>,
    sides: Arc<Sides>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(rejections::WINDOW);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        loop {
            tokio::select! {
                notice = oversized.recv(), if open => {
                    let Some(notice) = notice else {
                        open = false;
                        continue;
                    };
                    requests::Rejection {
                        from: "frontend",
                        error: WireError::Oversized {
                            size: usize::try_from(notice.size).unwrap_or(usize::MAX),
                            limit: notice.limit,
                        }
                        .into(),
                        msg_id: notice.msg_id,
                        msg_type: notice.msg_type,
                        sender: sides.peers.find(notice.channel, &notice.routing_id),
                    }
                    .report(notice.channel, &sides)
                    .await;
                }
                _ = ticks.tick() => {
                    for summary in sides.rejections.expired(std::time::Instant::now()) {
                        requests::record_suppressed(&summary, &sides).await;
                    }
                }
            }
        }
    })
}

fn record(sides: &Sides, event: &impl AuditEvent) {
    if let Some(auditor) = &sides.auditor {
        auditor.event(event);
    }
}

/// Jupyter names connection files `kernel-<kernel id>.json`.
fn kernel_id(connection_file: &Path) -> Option<String> {
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
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, ProxyError> {
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
