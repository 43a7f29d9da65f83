//! The collector's side of the proxy ⇄ collector protocol: whatever a local process
//! writes to the socket is read frame by frame, each record's fields are checked (only
//! sender fields pass), each record is stamped with the verified identity and turned
//! into the line the store would write.
//! Input: the bytes a peer sends on one connection.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use jupyter_audit::collector::fields;
use jupyter_audit::collector::protocol::{ToCollector, read_frame};
use jupyter_audit::collector::server::{PeerIdentity, stamp};
use jupyter_audit::store::record::{GENESIS, prepare, seal_into, sequence_of, unseal};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Runs a future that never waits: reading from a byte slice is always ready.
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("reading from memory does not wait"),
    }
}

fuzz_target!(|data: &[u8]| {
    let identity = PeerIdentity {
        uid: 1000,
        gid: 100,
        pid: Some(4242),
        user_name: Some("alice".into()),
    };
    let mut reader = data;
    for sequence in 1..=64u64 {
        let frame = match ready(read_frame::<_, ToCollector>(&mut reader)) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return,
        };
        let ToCollector::Record { record, .. } = frame else {
            continue;
        };
        let sender_fields_only = fields::check(&record).is_ok();
        let Ok(stamped) = stamp(record, &identity, "audit-host") else {
            continue;
        };
        // The sender cannot choose who it is.
        assert_eq!(stamped["user"]["id"], "1000");
        assert_eq!(stamped["user"]["name"], "alice");
        assert_eq!(stamped["host"]["name"], "audit-host");
        assert!(stamped.get("chain").is_none());
        if sender_fields_only {
            // What the collector stores of a sender: its event and jupyter, and the
            // collector's stamp; nothing a SIEM could merge with the identity.
            const STORED: &[&str] = &[
                "event",
                "jupyter",
                "@timestamp",
                "user",
                "group",
                "process",
                "host",
            ];
            assert!(stamped.keys().all(|key| STORED.contains(&key.as_str())));
        }

        // Every record the collector accepts becomes a line that `verify` and the
        // reader accept.
        let prepared = prepare(stamped.clone()).expect("a stamped record can be stored");
        let mut line = Vec::new();
        let hash = seal_into(&prepared, sequence, &GENESIS, &mut line);
        assert_eq!(line.pop(), Some(b'\n'));
        assert!(!line.contains(&b'\n'), "a stored record spans lines");
        let unsealed = unseal(&line).expect("the stored line unseals");
        assert!(unsealed.hash_matches());
        assert_eq!(unsealed.hash, hash);
        assert_eq!(unsealed.prev, GENESIS);
        let value: Value = serde_json::from_slice(&line).expect("the stored line is JSON");
        assert_eq!(sequence_of(&value), Some(sequence));
        // What the reader gets back is the stamped record, plus its sequence and chain.
        let Value::Object(mut stored) = value else {
            panic!("the stored line is not an object");
        };
        assert!(stored.remove("chain").is_some());
        if let Some(Value::Object(event)) = stored.get_mut("event") {
            event.remove("sequence");
        }
        assert_eq!(
            stored, stamped,
            "the stored record differs from the stamped one"
        );
    }
});
