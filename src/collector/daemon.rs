//! Running the collector: open the store, listen, serve until SIGTERM or SIGINT, then
//! close the store with a final checkpoint. The collector records its own start (with
//! what recovery found) and stop, under its own identity.

use std::path::PathBuf;

use serde_json::{Map, Value, json};
use tokio::signal::unix::{SignalKind, signal};

use super::server::{self, CollectorError, PeerIdentity};
use crate::audit::Record;
use crate::store::{self, Recovery, StoreConfig, StoreHandle};

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub store: StoreConfig,
    pub socket: PathBuf,
    pub socket_mode: u32,
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
    crate::store::layout::check_location("socket", &config.socket)?;
    let store_config = config.store.clone();
    let opened = tokio::task::spawn_blocking(move || store::open(store_config))
        .await
        .map_err(|error| CollectorError::Listen {
            path: config.store.dir.clone(),
            source: std::io::Error::other(error),
        })??;
    let (store, recovery) = opened;
    let listener = server::bind(&config.socket, config.socket_mode)?;
    record_own(&store, "collector_start", start_fields(&config, &recovery)).await;
    tracing::info!(socket = %config.socket.display(), store = %config.store.dir.display(), "collector listening");

    let shutdown = async {
        let (Ok(mut terminate), Ok(mut interrupt)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    server::serve(listener, store.clone(), shutdown).await;
    tracing::info!("collector stopping");
    let _ = std::fs::remove_file(&config.socket);
    record_own(&store, "collector_stop", Map::new()).await;
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
    Ok(())
}

fn start_fields(config: &DaemonConfig, recovery: &Recovery) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert(
        "store".into(),
        json!(config.store.dir.display().to_string()),
    );
    fields.insert("socket".into(), json!(config.socket.display().to_string()));
    fields.insert("last_sequence".into(), json!(recovery.last_sequence));
    fields.insert("store_created".into(), json!(recovery.created));
    if let Some(torn) = &recovery.torn {
        fields.insert(
            "torn_record".into(),
            json!({
                "segment": torn.segment.display().to_string(),
                "offset": torn.offset,
                "bytes": torn.bytes,
            }),
        );
    }
    fields.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    fields
}

/// Stores a record about the collector itself, stamped with the collector's identity.
async fn record_own(store: &StoreHandle, action: &str, fields: Map<String, Value>) {
    let uid = nix::unistd::getuid().as_raw();
    let identity = PeerIdentity {
        uid,
        gid: nix::unistd::getgid().as_raw(),
        pid: i32::try_from(std::process::id()).ok(),
        user_name: nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|user| user.name),
    };
    let host = nix::unistd::gethostname()
        .ok()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut record = Record::new();
    record.insert(
        "event".into(),
        json!({ "action": action, "kind": "event", "created": crate::audit::now_rfc3339() }),
    );
    let stored = match server::stamp(record, &identity, &host) {
        Ok(mut record) => {
            // Only the collector itself writes a `collector` object (stamp drops any).
            record.insert("collector".into(), Value::Object(fields));
            store
                .append(record)
                .await
                .map(|_| ())
                .map_err(|error| error.to_string())
        }
        Err(reason) => Err(reason),
    };
    if let Err(error) = stored {
        tracing::error!(%error, action, "cannot record the collector's own event");
    }
}
