//! A failed write fails its whole batch and nothing else; a failed cut-back stops the
//! store until it is reopened.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::faults::Faults;
use super::*;
use crate::store::handle::open_with;
use crate::store::{StoreError, verify};

fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_failed_write_fails_every_append_of_its_batch_and_the_chain_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    faults.fail_write.store(2, Ordering::SeqCst);
    faults.partial.store(true, Ordering::SeqCst);
    faults.hold_sync.store(true, Ordering::SeqCst);
    let (store, _) = open_with(config(tmp.path()), faults.wrap()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();

    // The first batch is held in its sync while ten more appends queue up behind it.
    let first = {
        let store = store.clone();
        runtime.spawn(async move { store.append(rec(0)).await })
    };
    wait_for("the first sync", || {
        faults.syncs.load(Ordering::SeqCst) == 1
    });
    let queued: Vec<_> = (1..=10)
        .map(|n| {
            let store = store.clone();
            runtime.spawn(async move { store.append(rec(n)).await })
        })
        .collect();
    wait_for("ten queued appends", || store.queued() == 11);
    faults.hold_sync.store(false, Ordering::SeqCst);

    assert_eq!(runtime.block_on(first).unwrap().unwrap(), 1);
    for append in queued {
        let error = runtime.block_on(append).unwrap().unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Write {
                    action: "write",
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(error.raw_os_error(), Some(nix::libc::ENOSPC));
    }
    let stats = store.stats();
    assert_eq!((stats.batches, stats.failed_batches), (1, 1));

    // The next batch continues the chain where the last good one ended.
    assert_eq!(store.append_blocking(rec(11)).unwrap(), 2);
    store.shutdown_blocking().unwrap();
    let dir = tmp.path().join("store");
    assert_eq!(lines(&segment(&dir, 1)).len(), 2);
    let report = verify(&dir, None, None).unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.last_sequence, 2);
}

#[test]
fn a_failed_cut_back_stops_the_store_until_it_is_reopened() {
    let tmp = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let (store, _) = open_with(config(tmp.path()), faults.wrap()).unwrap();
    assert_eq!(append_n(&store, 2), [1, 2]);
    faults.fail_write.store(3, Ordering::SeqCst);
    faults.partial.store(true, Ordering::SeqCst);
    faults.fail_truncate.store(true, Ordering::SeqCst);
    let error = store.append_blocking(rec(3)).unwrap_err();
    assert!(matches!(error, StoreError::Write { .. }), "{error}");
    let error = store.append_blocking(rec(4)).unwrap_err();
    assert!(matches!(error, StoreError::Failed { .. }), "{error}");
    assert!(error.to_string().contains("must be restarted"), "{error}");
    store.shutdown_blocking().unwrap();

    // Recovery cuts the half-written line off and the chain continues.
    let (store, recovery) = open(config(tmp.path())).unwrap();
    assert!(recovery.torn.is_some_and(|t| t.bytes > 0));
    assert_eq!(store.append_blocking(rec(5)).unwrap(), 3);
    store.shutdown_blocking().unwrap();
    let report = verify(&tmp.path().join("store"), None, None).unwrap();
    assert!(report.is_intact(), "{report}");
}

#[test]
fn a_failed_sync_fails_the_batch_and_its_bytes_are_cut_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let faults = Arc::new(Faults::default());
    let (store, _) = open_with(config(tmp.path()), faults.wrap()).unwrap();
    append_n(&store, 1);
    let len = std::fs::metadata(segment(&dir, 1)).unwrap().len();
    faults.fail_sync.store(true, Ordering::SeqCst);
    let error = store.append_blocking(rec(2)).unwrap_err();
    assert!(
        matches!(error, StoreError::Write { action: "sync", .. }),
        "{error}"
    );
    assert_eq!(error.raw_os_error(), Some(nix::libc::EIO));
    assert_eq!(std::fs::metadata(segment(&dir, 1)).unwrap().len(), len);
    faults.fail_sync.store(false, Ordering::SeqCst);
    assert_eq!(store.append_blocking(rec(3)).unwrap(), 2);
    store.shutdown_blocking().unwrap();
    assert!(verify(&dir, None, None).unwrap().is_intact());
}
