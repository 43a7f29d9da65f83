//! The proxy's client against the real collector server and store, in one process.

use std::time::Duration;

use serde_json::json;

use super::client::{AuditClient, AuditError};
use super::server;
use crate::audit::{Record, RecordBuilder, SessionContext, SizePolicy, event_record};
use crate::store::{self, Reader, StoreConfig};

fn context() -> SessionContext {
    SessionContext {
        session_id: "session-1".into(),
        kernel_id: Some("kernel-1".into()),
        kernel_name: Some("python3".into()),
    }
}

fn recorder() -> Box<RecordBuilder> {
    Box::new(RecordBuilder::new(context(), SizePolicy::default()))
}

fn execute_request(code: &str) -> Record {
    let mut fields = serde_json::Map::new();
    fields.insert("code".into(), json!(code));
    event_record(&context(), "execute_request", fields)
}

/// Starts a collector on `socket`; returns a sender that stops it.
fn start_collector(
    dir: &std::path::Path,
    socket: &std::path::Path,
) -> (store::StoreHandle, tokio::sync::oneshot::Sender<()>) {
    let (handle, _) = store::open(StoreConfig::new(dir.join("store"))).expect("store opens");
    let listener = server::bind(socket, 0o600).expect("socket binds");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = handle.clone();
    tokio::spawn(async move {
        server::serve(listener, serving, async {
            let _ = stopped.await;
        })
        .await;
    });
    (handle, stop)
}

/// A collector on a store in a temporary directory, and a client connected to it.
struct Running {
    dir: tempfile::TempDir,
    store: store::StoreHandle,
    client: AuditClient,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn running() -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("collector.sock");
    let (store, _stop) = start_collector(dir.path(), &socket);
    let (client, _) = AuditClient::spawn(socket, context(), recorder());
    Running {
        dir,
        store,
        client,
        _stop,
    }
}

impl Running {
    /// Closes the store and reads back what it holds.
    async fn stored(self) -> Vec<serde_json::Value> {
        self.store.shutdown().await.expect("closed");
        stored(self.dir.path())
    }
}

fn stored(dir: &std::path::Path) -> Vec<serde_json::Value> {
    Reader::open(&dir.join("store"))
        .expect("readable")
        .map(|record| record.expect("valid record").value)
        .collect()
}

#[tokio::test]
async fn durable_records_are_stored_in_order_with_the_senders_identity() {
    let collector = running();
    let client = &collector.client;
    client.record(execute_request("first"));
    let sequence = client
        .submit_durable(execute_request("second"))
        .wait(Duration::from_secs(10))
        .await
        .expect("stored");
    assert_eq!(sequence, 2);
    client
        .flush(Duration::from_secs(10))
        .await
        .expect("flushed");
    let records = collector.stored().await;
    let codes: Vec<_> = records
        .iter()
        .map(|record| record["jupyter"]["code"].clone())
        .collect();
    assert_eq!(codes, [json!("first"), json!("second")]);
    let uid = nix::unistd::getuid().as_raw().to_string();
    assert!(
        records
            .iter()
            .all(|record| record["user"]["id"] == json!(uid))
    );
    assert!(
        records
            .iter()
            .all(|record| record["process"]["pid"] == json!(std::process::id()))
    );
}

#[tokio::test]
async fn without_a_collector_durable_fails_at_once_and_the_record_is_stored_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("collector.sock");
    let (client, _) = AuditClient::spawn(socket.clone(), context(), recorder());
    let refused = client
        .submit_durable(execute_request("while the collector was down"))
        .wait(Duration::from_secs(10))
        .await;
    assert!(
        matches!(refused, Err(AuditError::Unavailable(_))),
        "{refused:?}"
    );

    let (store, _stop) = start_collector(dir.path(), &socket);
    // The next durable record reconnects at once instead of waiting for a retry.
    client
        .submit_durable(execute_request("after it came back"))
        .wait(Duration::from_secs(10))
        .await
        .expect("stored once the collector is back");
    store.shutdown().await.expect("closed");

    let records = stored(dir.path());
    assert_eq!(
        records[0]["jupyter"]["code"],
        "while the collector was down"
    );
    assert_eq!(records[0]["jupyter"]["write_ahead_failed"], true);
    assert_eq!(records[1]["jupyter"]["code"], "after it came back");
    assert!(records[1]["jupyter"].get("write_ahead_failed").is_none());
}

#[tokio::test]
async fn a_sender_cannot_claim_another_identity() {
    let collector = running();
    let client = &collector.client;
    let mut forged = execute_request("x");
    forged.insert("user".into(), json!({"id": "0", "name": "root"}));
    forged.insert("chain".into(), json!({"prev": "0", "hash": "0"}));
    let refused = client
        .submit_durable(forged)
        .wait(Duration::from_secs(10))
        .await;
    assert!(
        matches!(&refused, Err(AuditError::NotStored(error)) if error.contains("user")),
        "{refused:?}"
    );
    client
        .submit_durable(execute_request("y"))
        .wait(Duration::from_secs(10))
        .await
        .expect("stored");
    let records = collector.stored().await;
    let uid = json!(nix::unistd::getuid().as_raw().to_string());
    // The refusal is on the record, under the sender's verified identity.
    assert_eq!(records[0]["event"]["action"], "record_refused");
    assert_eq!(records[0]["user"]["id"], uid);
    assert_eq!(
        records[0]["collector"]["refused"]["fields"],
        json!(["chain", "user"])
    );
    assert_eq!(records[1]["jupyter"]["code"], "y");
    assert_eq!(records[1]["user"]["id"], uid);
    assert_eq!(records.len(), 2);
}

#[tokio::test]
async fn a_write_ahead_too_large_to_send_is_refused_and_not_stored() {
    let collector = running();
    let client = &collector.client;
    let huge = "x".repeat(super::protocol::MAX_FRAME_BYTES + 1);
    let refused = client
        .submit_durable(execute_request(&huge))
        .wait(Duration::from_secs(30))
        .await;
    assert!(
        matches!(refused, Err(AuditError::TooLarge { .. })),
        "{refused:?}"
    );
    client
        .submit_durable(execute_request("after"))
        .wait(Duration::from_secs(30))
        .await
        .expect("stored");
    let codes: Vec<_> = collector
        .stored()
        .await
        .into_iter()
        .map(|record| record["jupyter"]["code"].clone())
        .collect();
    assert_eq!(codes, vec![json!("after")], "no stub, nothing shortened");
}

#[tokio::test]
async fn records_the_collector_refuses_are_counted_in_an_audit_gap() {
    let collector = running();
    let client = &collector.client;
    let mut refused = execute_request("x");
    refused.insert("labels".into(), json!({"not": "a sender field"}));
    client.record(refused);
    // The first flush sends the record the collector refuses; the gap is reported at the next.
    client
        .flush(Duration::from_secs(30))
        .await
        .expect("flushed");
    client
        .flush(Duration::from_secs(30))
        .await
        .expect("flushed");
    let records = collector.stored().await;
    let gap = records
        .iter()
        .find(|record| record["event"]["action"] == "audit_gap")
        .expect("an audit_gap record");
    assert_eq!(gap["jupyter"]["lost_records"], 1);
    assert!(
        gap["jupyter"]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("refused")),
        "{gap}"
    );
}

#[tokio::test]
async fn a_record_too_large_to_send_is_kept_as_a_stub_and_does_not_block_the_rest() {
    let collector = running();
    let client = &collector.client;
    let huge = "x".repeat(super::protocol::MAX_FRAME_BYTES + 1);
    client.record(execute_request(&huge));
    client
        .submit_durable(execute_request("after"))
        .wait(Duration::from_secs(30))
        .await
        .expect("stored");
    let records = collector.stored().await;
    assert_eq!(records[0]["event"]["action"], "execute_request");
    assert!(
        records[0]["jupyter"]["record_too_large"]
            .as_u64()
            .is_some_and(|size| size > super::protocol::MAX_FRAME_BYTES as u64)
    );
    assert!(records[0]["jupyter"].get("code").is_none());
    assert_eq!(records[1]["jupyter"]["code"], "after");
}
