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
use super::fields::SenderKind;
use super::hub::{Attestation, HubAttestor, HubIdentity};
use super::incoming::{SenderFrame, SenderRecord, Slot};
use super::limits::{ConnectionSlot, Fairness, Limits, Room};
use super::protocol::{FromCollector, PROTOCOL_VERSION, ProtocolError, ToCollector, write_frame};
use super::sessions::SessionTable;
use super::unattested::{IdentityNotes, identity_event, store_identity_record};
use crate::audit::{Record, now_rfc3339};
use crate::path_safety::{self, PathCheckError, PathRole};
use crate::store::record::{self, Part, Prepared};
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
/// The OS accounts whose connections are the review console's (`--console-user`):
/// exempt from the Hub-identity policy (their identity is the account), and limited to
/// review records ([`SenderKind::Console`]).
#[derive(Debug, Clone, Default)]
pub struct ConsoleAccounts(Arc<[u32]>);

impl ConsoleAccounts {
    pub fn new(uids: impl IntoIterator<Item = u32>) -> Self {
        Self(uids.into_iter().collect())
    }

    /// What a connection from `uid` is.
    pub fn kind_of(&self, uid: u32) -> SenderKind {
        if self.0.contains(&uid) {
            SenderKind::Console
        } else {
            SenderKind::Kernel
        }
    }
}

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
    #[error("JupyterHub identity: {0}")]
    Hub(#[from] super::hub::HubError),
}

/// Who is on the other end of a connection: the OS account, as the kernel says
/// (SO_PEERCRED), and the JupyterHub user, when the Hub vouched for the connection's
/// token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub user_name: Option<String>,
    pub hub: Option<HubIdentity>,
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
        None,
        ConsoleAccounts::default(),
        shutdown,
    )
    .await
}

/// Serves connections until `shutdown` resolves, each within its user's share; with
/// `hub`, each under the JupyterHub identity of the token it presents (but the review
/// console's, from one of `console`).
pub async fn serve_fairly(
    listener: UnixListener,
    store: StoreHandle,
    fairness: Arc<Fairness>,
    hub: Option<Arc<HubAttestor>>,
    console: ConsoleAccounts,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let identity_notes = IdentityNotes::default();
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
                    let hub = hub.clone();
                    let identity_notes = identity_notes.clone();
                    let console = console.clone();
                    tokio::spawn(async move {
                        let peer = Peer { names, hub, identity_notes, console };
                        match serve_connection(stream, slot, store, host, peer, sessions).await {
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

/// What the collector knows of who may connect: uid names, and the Hub.
struct Peer {
    names: UserNames,
    hub: Option<Arc<HubAttestor>>,
    identity_notes: IdentityNotes,
    console: ConsoleAccounts,
}

async fn serve_connection(
    stream: UnixStream,
    slot: ConnectionSlot,
    store: StoreHandle,
    host: String,
    peer: Peer,
    sessions: SessionTable,
) -> Result<(), ProtocolError> {
    let credentials = stream.peer_cred()?;
    let mut identity = PeerIdentity {
        uid: credentials.uid(),
        gid: credentials.gid(),
        pid: credentials.pid(),
        user_name: peer.names.lookup(credentials.uid()).await,
        hub: None,
    };
    let (mut reader, writer) = stream.into_split();
    let mut writer = BufWriter::new(writer);
    // Said nothing (valid) in time: counted and reported by the slot.
    let hub_token = match slot.read_hello::<_, ToCollector>(&mut reader).await? {
        Some(ToCollector::Hello {
            version: PROTOCOL_VERSION,
            hub_token,
        }) => hub_token,
        Some(other) => {
            tracing::warn!(uid = identity.uid, frame = ?other, "connection did not start with a supported hello");
            return Ok(());
        }
        None => return Ok(()),
    };
    let kind = peer.console.kind_of(identity.uid);
    if kind == SenderKind::Console {
        // The console's identity is its OS account; the Hub is not asked (a token it
        // sent anyway is dropped unread).
        drop(hub_token);
    } else if let Some(hub) = &peer.hub {
        let attested = hub.attest(hub_token.as_ref()).await;
        drop(hub_token);
        let (unverified, refused) = match attested {
            Attestation::Verified(hub_identity) => {
                identity.hub = Some(hub_identity);
                (None, false)
            }
            Attestation::Unverified(unverified) => (Some(unverified), false),
            Attestation::Refused(unverified) => (Some(unverified), true),
        };
        if let Some(unverified) = unverified {
            tracing::warn!(uid = identity.uid, pid = ?identity.pid, refused, reason = unverified.reason.as_str(), detail = %unverified.detail, "no Hub identity for a connection");
            if peer
                .identity_notes
                .worth_recording(&identity, unverified.reason)
            {
                let event = identity_event(hub.policy(), &unverified, refused);
                store_identity_record(&store, &identity, &host, &event).await;
            }
            if refused {
                let refusal = FromCollector::Refused {
                    reason: format!(
                        "this collector requires a JupyterHub identity, and {}",
                        unverified.detail
                    ),
                };
                write_frame(&mut writer, &refusal).await?;
                tokio::io::AsyncWriteExt::flush(&mut writer).await?;
                return Ok(());
            }
        }
    }
    write_frame(
        &mut writer,
        &FromCollector::Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .await?;
    tokio::io::AsyncWriteExt::flush(&mut writer).await?;
    tracing::debug!(uid = identity.uid, pid = ?identity.pid, ?kind, "sender connected");
    let mut admission = Admission::of_kind(&identity, kind, &host, &store, &sessions).await;
    let stamped = Stamped::of(&identity, &host);

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
            Ok(Some((SenderFrame::Record { id, record, urgent }, mut room))) => {
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
                        Verdict::Accept(record) => match stamp_sender_as(&record, &stamped) {
                            Ok(record) => store.submit_prepared(record, urgent).await,
                            Err(reason) => refused(StoreError::InvalidRecord(reason)),
                        },
                        Verdict::Refuse(error) => refused(error),
                    },
                };
                if in_flight.send((id, stored, room)).await.is_err() {
                    break Ok(());
                }
            }
            Ok(Some((SenderFrame::Hello { .. }, _))) => {}
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
    let stamped = Stamped::of(identity, host);
    record.insert("@timestamp".into(), json!(now_rfc3339()));
    record.insert("user".into(), stamped.user);
    record.insert("group".into(), stamped.group);
    record.insert("process".into(), stamped.process);
    record.insert("host".into(), stamped.host);
    Ok(record)
}

/// The fields the collector sets from what it verified of the sender, shared by
/// [`stamp`] and [`stamp_sender`]. A connection's identity is fixed once its hello is
/// answered, so a connection builds these once, not per record.
#[derive(Debug, Clone)]
pub struct Stamped {
    user: Value,
    group: Value,
    process: Value,
    host: Value,
}

impl Stamped {
    pub fn of(identity: &PeerIdentity, host: &str) -> Self {
        // The OS account, always: under `process.user`, and as `user` itself when no
        // Hub vouched for the connection.
        let mut account = Map::new();
        account.insert("id".into(), json!(identity.uid.to_string()));
        if let Some(name) = &identity.user_name {
            account.insert("name".into(), json!(name));
        }
        let user = match &identity.hub {
            Some(hub) => hub_user(hub),
            None => {
                let mut user = account.clone();
                user.insert("verified_by".into(), json!(VERIFIED_BY_PEERCRED));
                Value::Object(user)
            }
        };
        let mut process = Map::new();
        if let Some(pid) = identity.pid {
            process.insert("pid".into(), json!(pid));
        }
        process.insert("user".into(), Value::Object(account));
        Stamped {
            user,
            group: json!({ "id": identity.gid.to_string() }),
            process: Value::Object(process),
            host: json!({ "name": host }),
        }
    }
}

/// `user.verified_by` of a record whose user is the OS account (SO_PEERCRED).
pub const VERIFIED_BY_PEERCRED: &str = "peercred";
/// `user.verified_by` of a record whose user JupyterHub named.
pub const VERIFIED_BY_JUPYTERHUB: &str = "jupyterhub";

/// The `user` object of a connection the Hub vouched for: the person, and what the Hub
/// said of them (what the token could read).
fn hub_user(hub: &HubIdentity) -> Value {
    let mut user = Map::new();
    user.insert("name".into(), json!(hub.name));
    user.insert("verified_by".into(), json!(VERIFIED_BY_JUPYTERHUB));
    if let Some(roles) = &hub.roles {
        user.insert("roles".into(), json!(roles));
    }
    let mut details = Map::new();
    if let Some(groups) = &hub.groups {
        details.insert("groups".into(), json!(groups));
    }
    if let Some(admin) = hub.admin {
        details.insert("admin".into(), json!(admin));
    }
    if let Some(server) = &hub.server {
        details.insert("server".into(), json!(server));
    }
    if let Some(token_id) = &hub.token_id {
        details.insert("token_id".into(), json!(token_id));
    }
    user.insert("hub".into(), Value::Object(details));
    Value::Object(user)
}

/// A sender's record as stored, assembled from its parts without re-encoding its
/// `jupyter` values: [`stamp`]'s fields around them, keys in the same order. Only for a
/// record [`fields::check`](super::fields::check) has passed.
pub fn stamp_sender(
    record: &SenderRecord,
    identity: &PeerIdentity,
    host: &str,
) -> Result<Prepared, String> {
    stamp_sender_as(record, &Stamped::of(identity, host))
}

/// [`stamp_sender`] with the connection's fields made already.
pub fn stamp_sender_as(record: &SenderRecord, stamped: &Stamped) -> Result<Prepared, String> {
    let (Slot::Object(event), Slot::Object(jupyter)) = (&record.event, &record.jupyter) else {
        return Err("the record has no event or no jupyter object".into());
    };
    if !event.get("action").is_some_and(Value::is_string) {
        return Err("the record has no event.action".into());
    }
    let ingested = json!(now_rfc3339());
    let mut event_parts: Vec<(&str, Part)> = event
        .iter()
        .filter(|(key, _)| *key != "sequence" && *key != "ingested")
        .map(|(key, value)| (key.as_str(), Part::Value(value)))
        .collect();
    event_parts.push(("ingested", Part::Value(&ingested)));
    let jupyter_parts = jupyter
        .iter()
        .map(|(key, value)| (key.as_str(), Part::Raw(value.get())))
        .collect();
    let timestamp = json!(now_rfc3339());
    let mut parts = vec![
        ("@timestamp", Part::Value(&timestamp)),
        ("event", Part::Object(event_parts)),
        ("jupyter", Part::Object(jupyter_parts)),
        ("user", Part::Value(&stamped.user)),
        ("group", Part::Value(&stamped.group)),
        ("host", Part::Value(&stamped.host)),
        ("process", Part::Value(&stamped.process)),
    ];
    // The review console's records only (fields::check refuses one from anyone else).
    if let Slot::Object(review) = &record.review {
        let review_parts = review
            .iter()
            .map(|(key, value)| (key.as_str(), Part::Value(value)))
            .collect();
        parts.push(("review", Part::Object(review_parts)));
    }
    record::prepare_parts(parts)
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
            hub: None,
        }
    }

    fn sender(value: Value) -> SenderRecord {
        SenderRecord::parse(&value.to_string()).expect("an object")
    }

    /// The stored line's body for a sender's record, as the store would seal it.
    fn stored_body(record: &SenderRecord) -> Vec<u8> {
        stored_body_as(record, &identity())
    }

    fn stored_body_as(record: &SenderRecord, identity: &PeerIdentity) -> Vec<u8> {
        let prepared = stamp_sender(record, identity, "audit-host").expect("valid");
        let mut line = Vec::new();
        record::seal_into(&prepared, 1, &record::GENESIS, &mut line);
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        let unsealed = record::unseal(&line[..line.len() - 1]).expect("a stored line");
        assert!(unsealed.hash_matches());
        unsealed.body
    }

    fn stored(record: &SenderRecord) -> Value {
        serde_json::from_slice(&stored_body(record)).expect("JSON")
    }

    #[test]
    fn identity_comes_from_the_collector_not_the_sender() {
        let forged = sender(json!({
            "event": {"action": "execute_request", "sequence": 99},
            "user": {"name": "root", "id": "0"},
            "host": {"name": "forged"},
            "chain": {"prev": "00", "hash": "00"},
            "@timestamp": "1970-01-01T00:00:00Z",
            "jupyter": {"session_id": "s", "claimed_username": "root", "code": "1"}
        }));
        // A sender's record with the collector's fields is refused, not cleaned up.
        let refused = super::super::fields::check(&forged).expect_err("refused");
        for field in ["@timestamp", "chain", "host", "user", "event.sequence"] {
            assert!(refused.fields.iter().any(|f| f == field), "{refused:?}");
        }
        let record = sender(json!({
            "event": {"action": "execute_request"},
            "jupyter": {"session_id": "s", "claimed_username": "root", "code": "1"}
        }));
        super::super::fields::check(&record).expect("a sender's fields only");
        let stamped = stored(&record);
        assert_eq!(
            stamped["user"],
            json!({"id": "1000", "name": "alice", "verified_by": "peercred"})
        );
        assert_eq!(stamped["host"]["name"], "audit-host");
        assert_eq!(
            stamped["process"],
            json!({"pid": 42, "user": {"id": "1000", "name": "alice"}})
        );
        assert_eq!(stamped["event"]["sequence"], 1);
        assert!(stamped["event"]["ingested"].is_string());
        assert!(stamped["@timestamp"].is_string());
        assert_eq!(
            stamped["jupyter"]["claimed_username"], "root",
            "the claim is kept as a claim"
        );
    }

    #[test]
    fn a_hub_user_is_the_user_and_the_os_account_stays_in_process() {
        let mut attested = identity();
        attested.user_name = Some("jovyan".into());
        attested.hub = Some(HubIdentity {
            name: "alice".into(),
            roles: Some(vec!["user".into()]),
            groups: Some(vec!["lab".into()]),
            admin: Some(false),
            server: Some(String::new()),
            token_id: Some("a3".into()),
        });
        let record = sender(json!({
            "event": {"action": "execute_request"},
            "jupyter": {"session_id": "s", "code": "1"}
        }));
        let stamped: Value =
            serde_json::from_slice(&stored_body_as(&record, &attested)).expect("JSON");
        assert_eq!(
            stamped["user"],
            json!({"name": "alice", "verified_by": "jupyterhub", "roles": ["user"],
                   "hub": {"groups": ["lab"], "admin": false, "server": "", "token_id": "a3"}})
        );
        assert_eq!(
            stamped["process"]["user"],
            json!({"id": "1000", "name": "jovyan"})
        );
    }

    #[test]
    fn records_without_an_action_are_refused() {
        let record: Record = serde_json::from_value(json!({"jupyter": {}})).expect("object");
        assert!(stamp(record, &identity(), "h").is_err());
        let record: Record =
            serde_json::from_value(json!({"event": {"action": 5}})).expect("object");
        assert!(stamp(record, &identity(), "h").is_err());
        for value in [
            json!({"jupyter": {}}),
            json!({"event": {"action": 5}, "jupyter": {}}),
            json!({"event": {"action": "x"}, "jupyter": 3}),
        ] {
            assert!(stamp_sender(&sender(value), &identity(), "h").is_err());
        }
    }

    #[test]
    fn a_proxys_record_is_stored_with_the_bytes_it_had_before() {
        // What the store wrote when it re-encoded every record: the same line, but for
        // the two times the collector takes.
        let value = json!({
            "event": {"action": "stream", "created": "2024-05-01T12:00:00.123Z",
                      "kind": "event", "outcome": "success"},
            "jupyter": {"session_id": "s1", "msg_id": "m", "name": "stdout",
                        "text": "line\n\u{1b}[31mred\u{1b}[0m é \"q\" \\ \u{1F600}\n",
                        "data": {"b": [1, 2.5, -0.0, 1e300, null, true], "a": {}},
                        "request": {"header": {"msg_id": "x", "date": "t"}}}
        });
        let before: Record = serde_json::from_value(value.clone()).expect("object");
        let before = stamp(before, &identity(), "audit-host").expect("stamped");
        let mut line = Vec::new();
        let prepared = record::prepare(before.clone()).expect("prepared");
        record::seal_into(&prepared, 1, &record::GENESIS, &mut line);
        let before_body = record::unseal(&line[..line.len() - 1]).expect("line").body;
        let after_body = stored_body(&sender(value));
        let after: Value = serde_json::from_slice(&after_body).expect("JSON");
        let mut expected = String::from_utf8(before_body).expect("UTF-8");
        for (was, is) in [
            (&before["@timestamp"], &after["@timestamp"]),
            (&before["event"]["ingested"], &after["event"]["ingested"]),
        ] {
            expected = expected.replacen(&was.to_string(), &is.to_string(), 1);
        }
        assert_eq!(String::from_utf8(after_body).expect("UTF-8"), expected);
    }

    #[test]
    fn keys_sent_twice_where_the_collector_looks_are_refused() {
        for (text, field) in [
            (
                r#"{"event":{"action":"stream"},"jupyter":{"session_id":"a","session_id":"b"}}"#,
                "jupyter.session_id",
            ),
            (
                r#"{"event":{"action":"stream","action":"collector_start"},"jupyter":{"session_id":"a"}}"#,
                "event.action",
            ),
            (
                r#"{"event":{"action":"stream"},"jupyter":{"session_id":"a"},"jupyter":{"session_id":"b"}}"#,
                "jupyter",
            ),
        ] {
            let record = SenderRecord::parse(text).expect("JSON");
            let refused = super::super::fields::check(&record).expect_err(text);
            assert_eq!(refused.fields, [field], "{text}");
            assert!(refused.reason.contains("more than once"), "{refused:?}");
        }
    }

    #[test]
    fn a_key_sent_twice_inside_a_value_is_stored_once_as_readers_read_it() {
        // Deeper down the collector checks nothing, so a duplicate there is the
        // sender's own content; it is stored as serde_json and Python read it (the last
        // one), and the auditor's line holds that one only, as before.
        let text = r#"{"event":{"action":"execute_request"},"jupyter":{"session_id":"s","request":{"content":{"code":"print(1)","code":"import os; os.remove('x')"}}}}"#;
        let record = SenderRecord::parse(text).expect("JSON");
        super::super::fields::check(&record).expect("accepted");
        let body = String::from_utf8(stored_body(&record)).expect("UTF-8");
        assert_eq!(body.matches("\"code\"").count(), 1, "{body}");
        let stored: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            stored["jupyter"]["request"]["content"]["code"],
            "import os; os.remove('x')"
        );
    }

    #[test]
    fn a_value_over_several_lines_is_stored_on_one() {
        let text = "{\"event\":{\"action\":\"stream\"},\"jupyter\":{\"session_id\":\"s\",\r\n\"data\":\n[1,\n{\"a\" :\t2}]}}";
        let record = SenderRecord::parse(text).expect("JSON");
        let stored = stored(&record);
        assert_eq!(stored["jupyter"]["data"], json!([1, {"a": 2}]));
    }

    #[test]
    fn what_a_reader_cannot_parse_is_not_taken() {
        for text in [
            r#"{"event":{"action":"stream"},"jupyter":{"session_id":"s","text":"\ud800"}}"#,
            r#"{"event":{"action":"stream"},"jupyter":{"session_id":"s","n":[1e400]}}"#,
            r#"{"event":{"action":"stream"},"jupyter":{"session_id":"s","text":"a"#,
            r#"{"event":{"action":"stream"},"jupyter":{"session_id":"s","n":01}}"#,
        ] {
            assert!(SenderRecord::parse(text).is_err(), "{text}");
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
        }
    }
}
