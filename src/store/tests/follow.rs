//! Following a live store: what the forwarder reads is what the store holds, across a
//! rotation, and the head it waits on moves with each batch and checkpoint.

use std::time::Duration;

use super::*;
use crate::store::{Follower, Reader, last_record, read_checkpoints, store_id};

#[test]
fn the_follower_reads_every_stored_line_as_stored_across_rotations() {
    let temp = tempfile::tempdir().unwrap();
    let mut config = config(temp.path());
    config.segment_max_bytes = 400; // a few records per segment
    let dir = config.dir.clone();
    let (store, _) = open(config).unwrap();
    let head = store.watch_head();
    append_n(&store, 5);
    assert_eq!(head.borrow().sequence, 5);
    let mut follower = Follower::new(&dir, 1);
    let mut followed = follower.read(3, 100, 1 << 20).unwrap();
    assert_eq!(followed.len(), 3, "never past the given head");
    append_n(&store, 20);
    followed.extend(follower.read(u64::MAX, 100, 1 << 20).unwrap());
    let id = store.store_id();
    store.shutdown_blocking().unwrap();
    assert!(
        segments(&dir).len() > 2,
        "the records span several segments"
    );

    let stored: Vec<(u64, Vec<u8>)> = Reader::open(&dir)
        .unwrap()
        .map(|r| r.unwrap())
        .map(|r| (r.sequence, r.raw.into_bytes()))
        .collect();
    let followed: Vec<(u64, Vec<u8>)> =
        followed.into_iter().map(|r| (r.sequence, r.line)).collect();
    assert_eq!(followed, stored);
    assert_eq!(last_record(&dir).unwrap().unwrap().sequence, 25);
    assert_eq!(store_id(&dir).unwrap(), id);
    assert_eq!(mode(&dir.join(layout::STORE_ID_FILE)), 0o400);

    let (checkpoints, offset) = read_checkpoints(&dir, 0).unwrap();
    assert_eq!(
        checkpoints.last().unwrap().sequence,
        25,
        "the final checkpoint"
    );
    assert_eq!(
        offset,
        fs::metadata(dir.join(CHECKPOINTS_FILE)).unwrap().len()
    );
    assert!(read_checkpoints(&dir, offset).unwrap().0.is_empty());
}

#[test]
fn the_head_moves_with_checkpoints_and_closes_with_the_writer() {
    let temp = tempfile::tempdir().unwrap();
    let mut config = config(temp.path());
    config.checkpoint_interval = Duration::from_millis(50);
    let (store, _) = open(config).unwrap();
    let mut head = store.watch_head();
    append_n(&store, 2);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        while head.borrow_and_update().checkpointed < 2 {
            tokio::time::timeout(Duration::from_secs(10), head.changed())
                .await
                .unwrap()
                .unwrap();
        }
    });
    store.shutdown_blocking().unwrap();
    assert!(
        runtime.block_on(head.changed()).is_err(),
        "closed with the writer"
    );
}

#[test]
fn an_old_store_without_an_identity_gets_one_when_opened() {
    let temp = tempfile::tempdir().unwrap();
    let dir = fill(config(temp.path()), 2);
    fs::remove_file(dir.join(layout::STORE_ID_FILE)).unwrap();
    assert!(store_id(&dir).is_err());
    let (store, _) = open(StoreConfig::new(&dir)).unwrap();
    assert_eq!(store_id(&dir).unwrap(), store.store_id());
    store.shutdown_blocking().unwrap();
}
