//! Records another process writes for a session, through the real admission and store:
//! refused, on the record under the sender's identity, and a flood kept small.

use serde_json::{Value, json};

use super::admission::{Admission, Verdict};
use super::incoming::SenderRecord;
use super::refusals::RECORDED_PER_WINDOW;
use super::server::{PeerIdentity, stamp_sender};
use super::sessions::SessionTable;
use crate::store::{self, Reader, StoreConfig, StoreError, StoreHandle};

fn identity(pid: u32) -> PeerIdentity {
    PeerIdentity {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        pid: i32::try_from(pid).ok(),
        user_name: None,
        hub: None,
    }
}

fn refusal_of(session: &str, msg_id: &str) -> SenderRecord {
    let value = json!({
        "event": {"action": "execution_refused", "kind": "event"},
        "jupyter": {"session_id": session, "msg_id": msg_id, "refused_msg_type": "execute_request",
                    "channel": "shell", "reason": "forged"}
    });
    SenderRecord::parse(&value.to_string()).expect("an object")
}

async fn store_accepted(store: &StoreHandle, identity: &PeerIdentity, verdict: Verdict) {
    match verdict {
        Verdict::Accept(record) => {
            let record = stamp_sender(&record, identity, "h").expect("stamped");
            let stored = store.submit_prepared(record, true).await;
            stored.await.expect("answered").expect("stored");
        }
        Verdict::Refuse(error) => panic!("refused: {error}"),
    }
}

fn stored(dir: &std::path::Path) -> Vec<Value> {
    Reader::open(dir)
        .expect("readable")
        .map(|record| record.expect("valid record").value)
        .collect()
}

#[tokio::test]
async fn another_process_of_the_same_user_cannot_write_into_a_session() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("store");
    let (store, _) = store::open(StoreConfig::new(&dir)).expect("store opens");
    let sessions = SessionTable::load(&dir).await;
    // The proxy: this process. The forger: another process of the same user (pid 1
    // stands in; only its pid and start time differ).
    let proxy = identity(std::process::id());
    let forger = identity(1);
    let mut from_proxy = Admission::new(&proxy, "h", &store, &sessions).await;
    let mut from_forger = Admission::new(&forger, "h", &store, &sessions).await;

    let verdict = from_proxy.admit(refusal_of("s1", "m0")).await;
    store_accepted(&store, &proxy, verdict).await;
    match from_forger.admit(refusal_of("s1", "m1")).await {
        Verdict::Refuse(StoreError::InvalidRecord(error)) => {
            assert!(
                error.contains("s1") && error.contains("another process"),
                "{error}"
            );
        }
        other => panic!("not refused: {other:?}"),
    }
    // A flood from the forger is answered in full and recorded in part.
    for n in 0..100 {
        let verdict = from_forger.admit(refusal_of("s1", &format!("f{n}"))).await;
        assert!(matches!(
            verdict,
            Verdict::Refuse(StoreError::InvalidRecord(_))
        ));
    }
    from_forger.finish().await;
    // The proxy carries on.
    let verdict = from_proxy.admit(refusal_of("s1", "m2")).await;
    store_accepted(&store, &proxy, verdict).await;
    store.shutdown().await.expect("closed");

    let records = stored(&dir);
    let in_session: Vec<_> = records
        .iter()
        .filter(|r| r["jupyter"]["session_id"] == "s1")
        .map(|r| r["jupyter"]["msg_id"].clone())
        .collect();
    assert_eq!(in_session, [json!("m0"), json!("m2")]);
    let traces: Vec<_> = records
        .iter()
        .filter(|r| r["event"]["action"] == "forged_record")
        .collect();
    assert_eq!(traces.len(), RECORDED_PER_WINDOW as usize);
    let first = traces[0];
    assert_eq!(first["process"]["pid"], 1, "{first}");
    assert_eq!(first["collector"]["refused"]["session_id"], "s1");
    assert_eq!(first["collector"]["refused"]["msg_id"], "m1");
    assert_eq!(first["collector"]["refused"]["action"], "execution_refused");
    assert_eq!(
        first["collector"]["session_owner"]["pid"],
        json!(std::process::id())
    );
    assert!(first.get("jupyter").is_none());
    let summaries: Vec<_> = records
        .iter()
        .filter(|r| r["event"]["action"] == "refusals_suppressed")
        .collect();
    assert_eq!(summaries.len(), 1);
    assert_eq!(
        summaries[0]["collector"]["suppressed"]["forged_record"],
        json!(101 - RECORDED_PER_WINDOW)
    );
    assert_eq!(summaries[0]["process"]["pid"], 1);
}

#[tokio::test]
async fn a_binding_outlives_the_collector() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("store");
    let proxy = identity(std::process::id());
    let forger = identity(1);
    {
        let (store, _) = store::open(StoreConfig::new(&dir)).expect("store opens");
        let sessions = SessionTable::load(&dir).await;
        let mut from_proxy = Admission::new(&proxy, "h", &store, &sessions).await;
        let verdict = from_proxy.admit(refusal_of("s1", "m0")).await;
        store_accepted(&store, &proxy, verdict).await;
        store.shutdown().await.expect("closed");
    }
    let (store, _) = store::open(StoreConfig::new(&dir)).expect("store opens again");
    let sessions = SessionTable::load(&dir).await;
    // The forger comes first after the restart, before the proxy reconnects.
    let mut from_forger = Admission::new(&forger, "h", &store, &sessions).await;
    assert!(matches!(
        from_forger.admit(refusal_of("s1", "m1")).await,
        Verdict::Refuse(StoreError::InvalidRecord(_))
    ));
    let mut from_proxy = Admission::new(&proxy, "h", &store, &sessions).await;
    let verdict = from_proxy.admit(refusal_of("s1", "m2")).await;
    store_accepted(&store, &proxy, verdict).await;
    store.shutdown().await.expect("closed");
    // The store opens with the bindings file in it (layout checks accept it).
    store::open(StoreConfig::new(&dir)).expect("store opens with its bindings");
}

/// Kernels in containers the collector cannot see into: one uid for everyone, no pid.
fn attested(name: &str) -> PeerIdentity {
    PeerIdentity {
        pid: None,
        hub: Some(super::hub::HubIdentity {
            name: name.into(),
            roles: None,
            groups: None,
            admin: None,
            server: Some(String::new()),
            token_id: None,
        }),
        ..identity(0)
    }
}

#[tokio::test]
async fn one_hub_user_cannot_write_into_another_users_session_under_one_uid() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("store");
    let (store, _) = store::open(StoreConfig::new(&dir)).expect("store opens");
    let sessions = SessionTable::load(&dir).await;
    let (alice, bob) = (attested("alice"), attested("bob"));
    let mut from_alice = Admission::new(&alice, "h", &store, &sessions).await;
    let mut from_bob = Admission::new(&bob, "h", &store, &sessions).await;
    let mut unattested = Admission::new(&identity(0), "h", &store, &sessions).await;

    let verdict = from_alice.admit(refusal_of("s-alice", "a0")).await;
    store_accepted(&store, &alice, verdict).await;
    for (forger, msg_id) in [(&mut from_bob, "b1"), (&mut unattested, "u1")] {
        match forger.admit(refusal_of("s-alice", msg_id)).await {
            Verdict::Refuse(StoreError::InvalidRecord(error)) => {
                assert!(error.contains("s-alice"), "{error}");
            }
            other => panic!("not refused: {other:?}"),
        }
    }
    // Another connection of alice's (a reconnecting proxy) may go on.
    let mut alice_again = Admission::new(&alice, "h", &store, &sessions).await;
    let verdict = alice_again.admit(refusal_of("s-alice", "a1")).await;
    store_accepted(&store, &alice, verdict).await;
    store.shutdown().await.expect("closed");

    let in_session: Vec<_> = stored(&dir)
        .into_iter()
        .filter(|r| r["jupyter"]["session_id"] == "s-alice")
        .map(|r| (r["jupyter"]["msg_id"].clone(), r["user"]["name"].clone()))
        .collect();
    assert_eq!(
        in_session,
        [(json!("a0"), json!("alice")), (json!("a1"), json!("alice"))]
    );
    // And the binding survives a restart of the collector.
    let sessions = SessionTable::load(&dir).await;
    let (store, _) = store::open(StoreConfig::new(&dir)).expect("store opens");
    let mut from_bob = Admission::new(&bob, "h", &store, &sessions).await;
    assert!(matches!(
        from_bob.admit(refusal_of("s-alice", "b2")).await,
        Verdict::Refuse(StoreError::InvalidRecord(_))
    ));
    store.shutdown().await.expect("closed");
}
