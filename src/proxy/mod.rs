//! The relay between frontends and the real kernel: binds the frontend side, starts
//! the kernel behind a private connection, waits until it answers, then relays all
//! five channels until the kernel exits.
//!
//! [`run`] reads as the session goes: set-up here; the relays in `requests` (shell,
//! control, stdin), `iopub` and `heartbeat`; what they accept in `accept` and what
//! they reject in `rejections`; the kernel's lifetime (signals, parent, end of the
//! session) in `lifecycle`; the audit in `audit`.

mod accept;
mod audit;
mod heartbeat;
mod iopub;
mod lifecycle;
mod refusal;
mod rejections;
mod requests;
mod runtime;
mod startup;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use self::audit::Auditor;
use self::lifecycle::{Signals, Supervisor};
use self::runtime::PrivateRuntime;
use self::startup::Activity;
use crate::audit::events::AuditEvent;
use crate::audit::{RecordBuilder, SessionContext};
use crate::collector::client::AuditClient;
use crate::collector::protocol::HubToken;
use crate::config::AuditSettings;
use crate::connection::Channel;
use crate::connection::KernelTransport;
use crate::connection::{ConnectionError, ConnectionInfo};
use crate::launcher::{self, LaunchError};
use crate::transport::{self, FrontendLinks, TransportError};
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

/// What every relay task shares: the two keys, the replay guard, the auditor, the
/// rejection limiter and the directory of frontend connections.
#[derive(Debug)]
pub(crate) struct Relay {
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

impl Relay {
    /// The relay of one session, with its auditor (and collector client) started when
    /// the session is audited.
    fn new(
        config: &ProxyConfig,
        frontend_info: &ConnectionInfo,
        runtime: &PrivateRuntime,
        peers: transport::PeerDirectory,
    ) -> Result<Self, ProxyError> {
        let session = uuid::Uuid::new_v4().to_string();
        let auditor = config.audit.as_ref().map(|settings| {
            let context = SessionContext {
                session_id: session.clone(),
                kernel_id: lifecycle::kernel_id(&config.connection_file),
                kernel_name: frontend_info.kernel_name.clone(),
            };
            let recorder = RecordBuilder::new(context.clone(), settings.size);
            // The Hub's token for this user's server, inherited from the server: the
            // collector asks the Hub whose it is (the user can only present their own).
            let (client, _) = AuditClient::spawn_presenting(
                settings.socket.clone(),
                HubToken::from_environment(),
                context.clone(),
                Box::new(recorder),
            );
            Auditor::new(client, context, settings.on_failure)
        });
        Ok(Self {
            frontend: frontend_info.signer()?,
            kernel: runtime.info().signer()?,
            check_kernel_signatures: config.kernel_transport == KernelTransport::Tcp,
            replay: Mutex::new(ReplayGuard::default()),
            max_message_bytes: config.max_message_bytes,
            session,
            auditor,
            rejections: rejections::RejectionLimiter::default(),
            peers,
        })
    }

    /// Puts a lifecycle event on the record, when the session is audited.
    fn record(&self, event: &impl AuditEvent) {
        if let Some(auditor) = &self.auditor {
            auditor.event(event);
        }
    }
}

/// Runs the proxy until the kernel exits; returns the kernel's exit status.
pub async fn run(config: ProxyConfig) -> Result<ExitStatus, ProxyError> {
    launcher::shield_proxy_from_kernel();
    let frontend_info = ConnectionInfo::read(&config.connection_file)?;
    let signals = Signals::install()?;
    let FrontendLinks {
        shell,
        control,
        stdin,
        iopub,
        heartbeat,
        oversized,
        peers,
    } = transport::bind_frontend(&frontend_info, config.max_message_bytes).await?;
    let frontend = FrontendChannels {
        shell,
        control,
        stdin,
        iopub,
        heartbeat,
    };
    tracing::info!(connection_file = %config.connection_file.display(), "frontend sockets bound");
    let runtime = PrivateRuntime::create(
        config.runtime_dir.as_deref(),
        config.kernel_transport,
        frontend_info.kernel_name.clone(),
    )?;
    tracing::debug!(dir = %runtime.dir().display(), "private runtime directory created");
    let relay = Arc::new(Relay::new(&config, &frontend_info, &runtime, peers)?);
    let reporting = rejections::spawn_reports(oversized, relay.clone());

    let mut supervisor = Supervisor::start_kernel(&config, &runtime, relay.clone(), signals)?;
    let activity = Arc::new(Activity::default());
    let relaying = start_relaying(frontend, &runtime, relay.clone(), activity.clone());
    let ended = supervisor.watch(relaying).await?;
    lifecycle::finish(&relay, &ended, &activity, reporting).await;
    Ok(ended.status)
}

/// The frontend sockets the relays serve.
struct FrontendChannels {
    shell: transport::Link,
    control: transport::Link,
    stdin: transport::Link,
    iopub: transport::Publisher,
    heartbeat: transport::Link,
}

/// Connects to the kernel, waits until it is ready, then starts the relay of every
/// channel; returns their tasks.
async fn start_relaying(
    frontend: FrontendChannels,
    runtime: &PrivateRuntime,
    relay: Arc<Relay>,
    activity: Arc<Activity>,
) -> Result<Vec<JoinHandle<()>>, ProxyError> {
    let identity = bytes::Bytes::from(format!("jupyter-audit-{}", std::process::id()));
    let mut upstream =
        transport::connect_kernel(runtime.info(), identity, STARTUP_PATIENCE).await?;
    let heartbeat = heartbeat::spawn(frontend.heartbeat, upstream.heartbeat);
    let welcome = iopub::spawn_welcomes(
        frontend.iopub.subscriptions,
        frontend.iopub.direct,
        relay.clone(),
    );
    startup::wait_until_ready(
        &mut upstream.shell,
        &mut upstream.iopub,
        &relay,
        STARTUP_PATIENCE,
    )
    .await?;
    // The kernel has read its connection file; nobody else needs the key in it.
    runtime.forget_connection_file();
    tracing::info!("kernel ready, relaying");
    let publish = frontend.iopub.publish;
    let request_relay = |channel, frontend, kernel| {
        requests::spawn(
            channel,
            frontend,
            kernel,
            relay.clone(),
            activity.clone(),
            publish.clone(),
        )
    };
    Ok(vec![
        heartbeat,
        welcome,
        request_relay(Channel::Shell, frontend.shell, upstream.shell),
        request_relay(Channel::Control, frontend.control, upstream.control),
        request_relay(Channel::Stdin, frontend.stdin, upstream.stdin),
        iopub::spawn_relay(
            upstream.iopub,
            publish.clone(),
            relay.clone(),
            activity.clone(),
        ),
    ])
}
