//! The collector's side of the proxy ⇄ collector protocol: whatever a local process
//! writes to the socket is read frame by frame, each record's fields are checked (only
//! sender fields pass), each record is stamped with the verified identity and assembled
//! into the line the store would write, its jupyter values spliced in as they came.
//! Input: the bytes a peer sends on one connection.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use jupyter_audit::collector::fields;
use jupyter_audit::collector::incoming::{SenderFrame, Slot};
use jupyter_audit::collector::protocol::read_frame;
use jupyter_audit::collector::server::{PeerIdentity, stamp_sender};
use jupyter_audit::store::record::{GENESIS, seal_into, sequence_of, unseal};
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
        hub: None,
    };
    let mut reader = data;
    for sequence in 1..=64u64 {
        let frame = match ready(read_frame::<_, SenderFrame>(&mut reader)) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return,
        };
        let SenderFrame::Record { record, .. } = frame else {
            continue;
        };
        // Only records of a sender's fields reach the store (keys sent twice where the
        // collector looks are refused too).
        if fields::check(&record).is_err() {
            continue;
        }
        let Ok(prepared) = stamp_sender(&record, &identity, "audit-host") else {
            continue;
        };
        // Every record the collector accepts becomes one line that `verify` and the
        // reader accept.
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
        // The sender cannot choose who it is.
        assert_eq!(value["user"]["id"], "1000");
        assert_eq!(value["user"]["name"], "alice");
        assert_eq!(value["host"]["name"], "audit-host");
        // What the collector stores of a sender: its event and jupyter, the collector's
        // stamp and the store's chain; nothing a SIEM could merge with the identity.
        const STORED: &[&str] = &[
            "event",
            "jupyter",
            "@timestamp",
            "user",
            "group",
            "process",
            "host",
            "chain",
        ];
        let Value::Object(stored) = &value else {
            panic!("the stored line is not an object");
        };
        assert!(stored.keys().all(|key| STORED.contains(&key.as_str())));
        // The sender's jupyter values are stored as a reader reads them in the frame.
        let Slot::Object(jupyter) = &record.jupyter else {
            panic!("a checked record has a jupyter object");
        };
        for (key, raw) in jupyter {
            let sent: Value = serde_json::from_str(raw.get()).expect("checked JSON");
            assert_eq!(stored["jupyter"][key], sent, "jupyter.{key} changed");
        }
    }
});
