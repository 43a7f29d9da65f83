//! The collector daemon: accepts proxies on a Unix socket, stamps every record with
//! the sender's verified identity, and acknowledges each record, in order, once the
//! store has it on disk.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use tokio::io::BufWriter;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::admission::{Admission, Verdict};
use super::limits::{ConnectionSlot, Fairness, Limits, Room};
use super::protocol::{FromCollector, PROTOCOL_VERSION, ProtocolError, ToCollector, write_frame};
use super::sessions::SessionTable;
use crate::audit::{Record, now_rfc3339};
use crate::path_safety::{self, PathCheckError, PathRole};
use crate::store::{StoreError, StoreHandle};
use crate::sync::lock;

/// Top-level keys only the collector and the store may set.
const RESERVED_KEYS: &[&str] = &[
    "@timestamp",
    "user",
    "group",
    "process",
    "host",
    "chain",
    "collector",
];
/// Records of one connection waiting for their acknowledgement.
const ACKS_IN_FLIGHT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    SocketPath(#[from] PathCheckError),
}

/// Who is on the other end of a connection, as the kernel says (SO_PEERCRED).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub user_name: Option<String>,
}

/// Binds the collector's socket, replacing a stale one, with `mode` permissions.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, CollectorError> {
    let listen_error = |source| CollectorError::Listen {
        path: path.to_owned(),
        source,
    };
    // Refuses a socket path someone else could redirect (a link, an unsafe directory).
    match path_safety::check_location(PathRole::Socket, path)? {
        Some(metadata) if metadata.file_type().is_socket() => {
            // A socket another user left there: theirs to remove, and maybe a trap.
            path_safety::check_owner(PathRole::Socket, path, &metadata)?;
            std::fs::remove_file(path).map_err(listen_error)?
        }
        Some(_) => {
            return Err(CollectorError::NotASocket {
                path: path.to_owned(),
            });
        }
        None => {}
    }
    let listener = UnixListener::bind(path).map_err(listen_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(listen_error)?;
    Ok(listener)
}

/// Serves connections until `shutdown` resolves, with the default limits and no disk
/// limits.
pub async fn serve(
    listener: UnixListener,
    store: StoreHandle,
    shutdown: impl std::future::Future<Output = ()>,
) {
    serve_fairly(
        listener,
        store,
        Fairness::new(Limits::default(), None),
        shutdown,
    )
    .await
}

/// Serves connections until `shutdown` resolves, each within its user's share.
pub async fn serve_fairly(
    listener: UnixListener,
    store: StoreHandle,
    fairness: Arc<Fairness>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let host = host_name();
    let names = UserNames::default();
    tokio::pin!(shutdown);
    // Before the first connection: a forger must not claim a session whose proxy has
    // not reconnected yet. Meanwhile a stop request is heard (and its signal handler set).
    let sessions = tokio::select! {
        biased;
        () = &mut shutdown => return,
        sessions = SessionTable::load(store.dir()) => sessions,
    };
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            (stream, _) = crate::sync::accept_retrying("collector socket", || listener.accept()) => {
                {
                    // Over its user's (or the global) cap, closed at once and counted.
                    let Some(slot) = admit(&fairness, &stream) else { continue };
                    let store = store.clone();
                    let host = host.clone();
                    let names = names.clone();
                    let sessions = sessions.clone();
                    tokio::spawn(async move {
                        match serve_connection(stream, slot, store, host, names, sessions).await {
                            Ok(()) => {}
                            // A proxy killed mid-session; its records so far are stored.
                            Err(ProtocolError::Io(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                                tracing::info!(%error, "proxy connection reset");
                            }
                            Err(error) => tracing::warn!(%error, "proxy connection ended with an error"),
                        }
                    });
                }
            }
        }
    }
}

/// The connection's place within its user's share; None when it is to be closed.
fn admit(fairness: &Arc<Fairness>, stream: &UnixStream) -> Option<ConnectionSlot> {
    match stream.peer_cred() {
        Ok(credentials) => fairness.admit_connection(credentials.uid()),
        Err(error) => {
            tracing::warn!(%error, "no peer credentials; connection closed");
            None
        }
    }
}

/// This host's name, as every record carries it.
pub(super) fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The name of `uid` on this host, if it has one (looked up in a blocking thread: NSS
/// may ask a directory server).
pub(super) async fn user_name(uid: u32) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|user| user.name)
    })
    .await
    .ok()
    .flatten()
}

/// Cache of uid → user name (the lookup may consult NSS, which can be slow).
#[derive(Debug, Clone, Default)]
struct UserNames(Arc<Mutex<HashMap<u32, Option<String>>>>);

impl UserNames {
    async fn lookup(&self, uid: u32) -> Option<String> {
        if let Some(name) = lock(&self.0).get(&uid) {
            return name.clone();
        }
        let name = user_name(uid).await;
        lock(&self.0).insert(uid, name.clone());
        name
    }
}

async fn serve_connection(
    stream: UnixStream,
    slot: ConnectionSlot,
    store: StoreHandle,
    host: String,
    names: UserNames,
    sessions: SessionTable,
) -> Result<(), ProtocolError> {
    let credentials = stream.peer_cred()?;
    let identity = PeerIdentity {
        uid: credentials.uid(),
        gid: credentials.gid(),
        pid: credentials.pid(),
        user_name: names.lookup(credentials.uid()).await,
    };
    let (mut reader, writer) = stream.into_split();
    let mut writer = BufWriter::new(writer);
    // Said nothing (valid) in time: counted and reported by the slot.
    match slot.read_hello::<_, ToCollector>(&mut reader).await? {
        Some(ToCollector::Hello {
            version: PROTOCOL_VERSION,
        }) => {}
        Some(other) => {
            tracing::warn!(uid = identity.uid, frame = ?other, "connection did not start with a supported hello");
            return Ok(());
        }
        None => return Ok(()),
    }
    write_frame(
        &mut writer,
        &FromCollector::Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .await?;
    tokio::io::AsyncWriteExt::flush(&mut writer).await?;
    tracing::debug!(uid = identity.uid, pid = ?identity.pid, "proxy connected");
    let mut admission = Admission::new(&identity, &host, &store, &sessions).await;

    // Acknowledgements go out in the order records came in, as the store finishes them.
    // Each record's room in the in-flight budgets is given back once the store answers.
    let (in_flight, mut finished) =
        mpsc::channel::<(u64, oneshot::Receiver<Result<u64, StoreError>>, Room)>(ACKS_IN_FLIGHT);
    let acks = tokio::spawn(async move {
        while let Some((id, stored, room)) = finished.recv().await {
            let stored = stored.await;
            drop(room);
            let answer = match stored {
                Ok(Ok(sequence)) => FromCollector::Ack { id, sequence },
                Ok(Err(error)) => FromCollector::Nack {
                    id,
                    retry: !matches!(error, StoreError::InvalidRecord(_) | StoreError::Refused(_)),
                    error: error.to_string(),
                },
                Err(_) => FromCollector::Nack {
                    id,
                    error: "the store stopped".into(),
                    retry: true,
                },
            };
            let mut written = write_frame(&mut writer, &answer).await;
            if written.is_ok() && finished.is_empty() {
                written = tokio::io::AsyncWriteExt::flush(&mut writer)
                    .await
                    .map_err(Into::into);
            }
            if written.is_err() {
                break;
            }
        }
    });
    let result = loop {
        match slot.read_record(&mut reader).await {
            Ok(Some((ToCollector::Record { id, record, urgent }, mut room))) => {
                let refused = |error| {
                    let (rejected, stored) = oneshot::channel();
                    let _ = rejected.send(Err(error));
                    stored
                };
                // The user's share first (no parse of the record's sense for a user over
                // it), then whether this sender may write this session's records.
                let stored = match slot.admit_record(&mut room) {
                    Err(reason) => refused(StoreError::Refused(reason)),
                    Ok(()) => match admission.admit(record).await {
                        Verdict::Accept(record) => match stamp(record, &identity, &host) {
                            Ok(record) => store.submit(record, urgent).await,
                            Err(reason) => refused(StoreError::InvalidRecord(reason)),
                        },
                        Verdict::Refuse(error) => refused(error),
                    },
                };
                if in_flight.send((id, stored, room)).await.is_err() {
                    break Ok(());
                }
            }
            Ok(Some((ToCollector::Hello { .. }, _))) => {}
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    admission.finish().await;
    drop(in_flight);
    let _ = acks.await;
    result
}

/// The record as stored: its fields, with identity, time and host set by the collector.
/// A sender's record reaches this only once [`fields::check`](super::fields::check) has
/// found nothing of the collector's in it; the keys reserved to the collector are
/// dropped all the same.
pub fn stamp(mut record: Record, identity: &PeerIdentity, host: &str) -> Result<Record, String> {
    for key in RESERVED_KEYS {
        record.remove(*key);
    }
    let Some(Value::Object(event)) = record.get_mut("event") else {
        return Err("the record has no event object".into());
    };
    if !event.get("action").is_some_and(Value::is_string) {
        return Err("the record has no event.action".into());
    }
    event.remove("sequence");
    event.insert("ingested".into(), json!(now_rfc3339()));
    let mut user = Map::new();
    user.insert("id".into(), json!(identity.uid.to_string()));
    if let Some(name) = &identity.user_name {
        user.insert("name".into(), json!(name));
    }
    record.insert("@timestamp".into(), json!(now_rfc3339()));
    record.insert("user".into(), Value::Object(user));
    record.insert("group".into(), json!({ "id": identity.gid.to_string() }));
    if let Some(pid) = identity.pid {
        record.insert("process".into(), json!({ "pid": pid }));
    }
    record.insert("host".into(), json!({ "name": host }));
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> PeerIdentity {
        PeerIdentity {
            uid: 1000,
            gid: 1000,
            pid: Some(42),
            user_name: Some("alice".into()),
        }
    }

    #[test]
    fn identity_comes_from_the_collector_not_the_sender() {
        let forged: Record = serde_json::from_value(json!({
            "event": {"action": "execute_request", "sequence": 99},
            "user": {"name": "root", "id": "0"},
            "host": {"name": "forged"},
            "chain": {"prev": "00", "hash": "00"},
            "@timestamp": "1970-01-01T00:00:00Z",
            "jupyter": {"session_id": "s", "claimed_username": "root", "code": "1"}
        }))
        .expect("object");
        // A sender's record with the collector's fields is refused, not cleaned up.
        let refused = super::super::fields::check(&forged).expect_err("refused");
        for field in ["@timestamp", "chain", "host", "user", "event.sequence"] {
            assert!(refused.fields.iter().any(|f| f == field), "{refused:?}");
        }
        let record: Record = serde_json::from_value(json!({
            "event": {"action": "execute_request"},
            "jupyter": {"session_id": "s", "claimed_username": "root", "code": "1"}
        }))
        .expect("object");
        super::super::fields::check(&record).expect("a sender's fields only");
        let stamped = stamp(record, &identity(), "audit-host").expect("valid");
        assert_eq!(stamped["user"], json!({"id": "1000", "name": "alice"}));
        assert_eq!(stamped["host"]["name"], "audit-host");
        assert_eq!(stamped["process"]["pid"], 42);
        assert!(stamped.get("chain").is_none());
        assert!(stamped["event"].get("sequence").is_none());
        assert!(stamped["@timestamp"].is_string());
        assert_eq!(
            stamped["jupyter"]["claimed_username"], "root",
            "the claim is kept as a claim"
        );
    }

    #[test]
    fn records_without_an_action_are_refused() {
        let record: Record = serde_json::from_value(json!({"jupyter": {}})).expect("object");
        assert!(stamp(record, &identity(), "h").is_err());
        let record: Record =
            serde_json::from_value(json!({"event": {"action": 5}})).expect("object");
        assert!(stamp(record, &identity(), "h").is_err());
    }
}
