//! Running the collector: open the store, listen, serve until SIGTERM or SIGINT, then
//! close the store with a final checkpoint. With a PostgreSQL target, a forwarder task
//! ships the store there in the background (it never delays the proxies, and a server
//! that is down neither stops nor delays the start); at stop it gets
//! [`FORWARD_DRAIN`] to forward what is left. The collector records its own start (with
//! what recovery found and the limits in force), the limits users exceeded
//! (`limit_exceeded`, see [`super::limits`]) and its stop, under its own identity.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};

use super::disk::DiskSpace;
use super::hub::{HubAttestor, HubOptions};
use super::limits::{self, Fairness, LimitReport, Limits};
use super::server::{self, CollectorError, PeerIdentity};
use crate::audit::Record;
use crate::audit::events::{
    AuditEvent, CollectorStart, CollectorStop, ForwardConflict, HubSettings, TornRecord,
};
use crate::path_safety::{self, PathRole};
use crate::postgres::connect::PostgresTarget;
use crate::postgres::forward::{ForwardOptions, Forwarder, Stopped};
use crate::store::{self, StoreConfig, StoreHandle};

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub store: StoreConfig,
    pub socket: PathBuf,
    pub socket_mode: u32,
    /// `max_connections` 0: derived from the descriptor limit at start.
    pub limits: Limits,
    /// Forward the store to this PostgreSQL server.
    pub forward: Option<PostgresTarget>,
    /// Ask this JupyterHub whose kernel each connection is.
    pub hub: Option<HubOptions>,
    /// The review console's OS accounts (`--console-user`): the only senders of review
    /// records, and senders of nothing else.
    pub console_users: Vec<ConsoleUser>,
}

/// An OS account named as the review console's, resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleUser {
    pub name: String,
    pub uid: u32,
}

/// Resolves a user name to its uid (`--console-user`).
pub fn console_user(name: &str) -> Result<ConsoleUser, String> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(ConsoleUser {
            name: name.to_owned(),
            uid: user.uid.as_raw(),
        }),
        Ok(None) => Err(format!("no user named {name:?}")),
        Err(error) => Err(format!("cannot look up user {name:?}: {error}")),
    }
}

/// How long a stopping collector keeps forwarding what is stored before it exits.
pub const FORWARD_DRAIN: Duration = Duration::from_secs(5);

/// How often the Hub-verified tokens are saved when they changed.
const HUB_TOKENS_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Takes back the Hub-verified tokens a previous run saved.
async fn restore_hub_tokens(hub: &HubAttestor, store: &StoreHandle) {
    let reading = store.clone();
    match tokio::task::spawn_blocking(move || reading.read_hub_tokens()).await {
        Ok(Ok(Some(saved))) => {
            let restored = hub.restore_tokens(&saved);
            tracing::info!(restored, "Hub-verified tokens of the previous run restored");
        }
        Ok(Ok(None)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "cannot read the saved Hub tokens"),
        Err(error) => tracing::warn!(%error, "cannot read the saved Hub tokens"),
    }
}

/// Saves the Hub-verified tokens if they changed.
async fn save_hub_tokens(hub: &HubAttestor, store: &StoreHandle) {
    let Some(saved) = hub.tokens_to_save() else {
        return;
    };
    let writing = store.clone();
    match tokio::task::spawn_blocking(move || writing.write_hub_tokens(&saved)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "cannot save the Hub-verified tokens"),
        Err(error) => tracing::warn!(%error, "cannot save the Hub-verified tokens"),
    }
}

/// Resolves a group name to its gid.
pub fn group_id(name: &str) -> Result<u32, String> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("no group named {name:?}")),
        Err(error) => Err(format!("cannot look up group {name:?}: {error}")),
    }
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: DaemonConfig) -> Result<(), CollectorError> {
    // Before anything is created: an unsafe socket path must not leave a new store behind.
    path_safety::check_location(PathRole::Socket, &config.socket)?;
    // Handlers first: a stop request while the store opens ends the collector cleanly
    // once it serves, instead of killing it mid-start.
    let stop_signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    // A Hub setting that cannot work (a bad URL or CA file) stops the start, before
    // any kernel is refused for it.
    let hub = config
        .hub
        .as_ref()
        .map(HubAttestor::new)
        .transpose()?
        .map(Arc::new);
    let store_config = config.store.clone();
    let opened = tokio::task::spawn_blocking(move || store::open(store_config))
        .await
        .map_err(|error| CollectorError::Listen {
            path: config.store.dir.clone(),
            source: std::io::Error::other(error),
        })??;
    let (store, recovery) = opened;
    let listener = server::bind(&config.socket, config.socket_mode)?;
    let (fairness, descriptors) = fairness(&config).await;
    let start = CollectorStart {
        store: config.store.dir.display().to_string(),
        socket: config.socket.display().to_string(),
        last_sequence: recovery.last_sequence,
        store_created: recovery.created,
        torn_record: recovery.torn.as_ref().map(|torn| TornRecord {
            segment: torn.segment.display().to_string(),
            offset: torn.offset,
            bytes: torn.bytes,
        }),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        limits: fairness.limits().fields(),
        descriptor_limit: descriptors,
        hub: config.hub.as_ref().map(|hub| HubSettings {
            api_url: hub.api_url.clone(),
            identity: hub.policy.name().to_owned(),
            cache_max_age_secs: hub.cache_max_age.as_secs(),
            client_certificate: hub.client_identity.is_some(),
        }),
        console_users: config
            .console_users
            .iter()
            .map(|user| user.name.clone())
            .collect(),
    };
    record_own(&store, &start).await;
    tracing::info!(socket = %config.socket.display(), store = %config.store.dir.display(), "collector listening");
    let reporting = tokio::spawn(report_limits(store.clone(), Arc::clone(&fairness)));
    // Before the first connection: a kernel reconnecting while the Hub is down is known.
    if let Some(hub) = &hub {
        restore_hub_tokens(hub, &store).await;
    }
    let saving_tokens = hub.clone().map(|hub| {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HUB_TOKENS_SAVE_INTERVAL).await;
                save_hub_tokens(&hub, &store).await;
            }
        })
    });
    let forwarding = config.forward.clone().map(|target| {
        let forwarder = Forwarder::new(
            ForwardOptions {
                target,
                host: server::host_name(),
            },
            store.clone(),
        );
        tokio::spawn(forward(forwarder, store.clone()))
    });

    let shutdown = async {
        let (Ok(mut terminate), Ok(mut interrupt)) = stop_signals else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    if let Some(hub) = &config.hub {
        tracing::info!(api = %hub.api_url, policy = hub.policy.name(), "kernels are identified by JupyterHub");
    }
    server::serve_fairly(
        listener,
        store.clone(),
        Arc::clone(&fairness),
        hub.clone(),
        server::ConsoleAccounts::new(config.console_users.iter().map(|user| user.uid)),
        shutdown,
    )
    .await;
    tracing::info!("collector stopping");
    let _ = std::fs::remove_file(&config.socket);
    reporting.abort();
    if let (Some(saving), Some(hub)) = (saving_tokens, &hub) {
        saving.abort();
        save_hub_tokens(hub, &store).await;
    }
    write_reports(&store, fairness.due_reports(true)).await;
    record_own(&store, &CollectorStop {}).await;
    let stats = store.stats();
    tracing::info!(
        records = stats.records,
        batches = stats.batches,
        failed_batches = stats.failed_batches,
        checkpoints = stats.checkpoints,
        segments_created = stats.segments_created,
        "collector stopped"
    );
    store.shutdown().await?;
    if let Some(mut forwarding) = forwarding {
        // The writer has stopped: the forwarder sends the rest (the final checkpoint
        // included) and ends, unless PostgreSQL is out of reach for longer than this.
        if tokio::time::timeout(FORWARD_DRAIN, &mut forwarding)
            .await
            .is_err()
        {
            forwarding.abort();
            tracing::warn!(
                drain_secs = FORWARD_DRAIN.as_secs(),
                "stopping before everything stored reached PostgreSQL; the next start forwards the rest"
            );
        }
    }
    Ok(())
}

/// Runs the forwarder; a fork it finds goes on the record (`forward_conflict`).
async fn forward(forwarder: Forwarder, store: StoreHandle) {
    let store_id = store.store_id().to_string();
    let target = forwarder.target().to_owned();
    if let Stopped::Fork(fork) = forwarder.run().await {
        let conflict = ForwardConflict {
            store_id,
            target,
            table: fork.table.to_owned(),
            row_sequence: fork.sequence,
            local: fork.local,
            remote: fork.remote,
            reason: fork.reason,
        };
        record_own(&store, &conflict).await;
    }
}

/// The fairness limits in force: the descriptor limit raised to its hard limit, the
/// connection cap below it, free space watched on the store's filesystem. Returns them
/// with the descriptor limit.
async fn fairness(config: &DaemonConfig) -> (Arc<Fairness>, u64) {
    let descriptors = match limits::raise_descriptor_limit() {
        Ok(soft) => soft,
        Err((soft, error)) => {
            tracing::warn!(%error, soft, "cannot raise the descriptor limit to its hard limit");
            soft
        }
    };
    let mut settings = config.limits.clone();
    let configured = settings.max_connections;
    settings.max_connections = limits::connection_cap(descriptors, configured);
    if configured != 0 && settings.max_connections < configured {
        tracing::warn!(
            configured,
            descriptors,
            "max_connections lowered to fit the descriptor limit"
        );
    }
    tracing::info!(
        descriptors,
        max_connections = settings.max_connections,
        max_connections_per_user = settings.max_connections_per_user,
        "descriptor limit"
    );
    let disk = Arc::new(DiskSpace::new(&config.store.dir));
    let sampling = Arc::clone(&disk);
    if let Ok(Err(error)) = tokio::task::spawn_blocking(move || sampling.sample_blocking()).await {
        tracing::warn!(%error, "cannot read the store's free space");
    }
    // Stops with the runtime.
    tokio::spawn(Arc::clone(&disk).watch());
    (Fairness::new(settings, Some(disk)), descriptors)
}

/// Records what users exceeded, as it becomes due (once per user and limit every
/// [`limits::REPORT_INTERVAL`]).
async fn report_limits(store: StoreHandle, fairness: Arc<Fairness>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticks.tick().await;
        write_reports(&store, fairness.due_reports(false)).await;
    }
}

async fn write_reports(store: &StoreHandle, reports: Vec<LimitReport>) {
    for report in reports {
        let uid = report.uid;
        let name = server::user_name(uid).await;
        tracing::warn!(
            uid,
            user = name.as_deref().unwrap_or(""),
            limit = report.limit.name(),
            count = report.count,
            bytes = report.bytes,
            "{}",
            report.reason
        );
        record_own(store, &report.event(name)).await;
    }
}

/// Stores a record about the collector itself, stamped with the collector's identity.
async fn record_own(store: &StoreHandle, event: &impl AuditEvent) {
    let header = event.header();
    let uid = nix::unistd::getuid().as_raw();
    let identity = PeerIdentity {
        uid,
        gid: nix::unistd::getgid().as_raw(),
        pid: i32::try_from(std::process::id()).ok(),
        user_name: server::user_name(uid).await,
        hub: None,
    };
    let host = server::host_name();
    let mut record = Record::new();
    record.insert("event".into(), header.to_value());
    let stored = match server::stamp(record, &identity, &host) {
        Ok(mut record) => {
            // Only the collector itself writes a `collector` object (stamp drops any).
            record.insert("collector".into(), Value::Object(event.fields()));
            store
                .append(record)
                .await
                .map(|_| ())
                .map_err(|error| error.to_string())
        }
        Err(reason) => Err(reason),
    };
    if let Err(error) = stored {
        tracing::error!(%error, action = header.action, "cannot record the collector's own event");
    }
}
