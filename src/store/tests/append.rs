//! Appending, reopening, rotation, group commit, checkpoints, permissions, reading.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use super::faults::Faults;
use super::*;
use crate::store::handle::open_with;
use crate::store::layout::{KEYS_DIR, PUBLIC_KEY_FILE, SIGNING_KEY_FILE};
use crate::store::{
    Checkpoint, ReadErrorKind, Reader, StoreError, export_public_key, read_public_key, verify,
};

#[test]
fn reopening_continues_the_chain_and_the_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, recovery) = open(config(tmp.path())).unwrap();
    assert!(recovery.created);
    assert_eq!(recovery.last_sequence, 0);
    assert_eq!(append_n(&store, 3), [1, 2, 3]);
    store.shutdown_blocking().unwrap();

    let (store, recovery) = open(config(tmp.path())).unwrap();
    assert!(!recovery.created);
    assert_eq!(recovery.last_sequence, 3);
    assert_eq!(recovery.torn, None);
    assert_eq!(recovery.last_checkpoint, 3);
    assert_eq!(append_n(&store, 2), [4, 5]);
    store.shutdown_blocking().unwrap();

    let dir = tmp.path().join("store");
    assert_eq!(segments(&dir).len(), 1);
    let report = verify(&dir, None, None).unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!((report.records, report.last_sequence), (5, 5));
    assert_eq!(report.checkpoint.as_ref().map(|c| c.sequence), Some(5));
}

#[test]
fn a_torn_last_line_is_cut_off_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fill(config(tmp.path()), 3);
    let last = segment(&dir, 1);
    let clean_len = fs::metadata(&last).unwrap().len();
    let mut file = fs::OpenOptions::new().append(true).open(&last).unwrap();
    let partial = b"{\"@timestamp\":\"2024";
    file.write_all(partial).unwrap();

    let (store, recovery) = open(config(tmp.path())).unwrap();
    let torn = recovery.torn.expect("torn line reported");
    assert_eq!(
        (torn.segment, torn.offset, torn.bytes),
        (last.clone(), clean_len, partial.len() as u64)
    );
    assert_eq!(recovery.last_sequence, 3);
    assert_eq!(fs::metadata(&last).unwrap().len(), clean_len);
    assert_eq!(append_n(&store, 1), [4]);
    store.shutdown_blocking().unwrap();
    assert!(verify(&dir, None, None).unwrap().is_intact());
}

#[test]
fn a_segment_that_is_all_torn_continues_from_the_previous_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_max_bytes = 1;
    let dir = fill(cfg.clone(), 2);
    // A crash right after rotation, in the middle of the first write of segment 3.
    fs::write(segment(&dir, 3), b"{\"partial").unwrap();
    let (store, recovery) = open(cfg).unwrap();
    assert_eq!(recovery.torn.map(|t| t.bytes), Some(9));
    assert_eq!(recovery.last_sequence, 2);
    assert_eq!(append_n(&store, 1), [3]);
    store.shutdown_blocking().unwrap();
    assert!(verify(&dir, None, None).unwrap().is_intact());
}

#[test]
fn rotation_by_size_closes_segments_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_max_bytes = 1;
    let dir = fill(cfg.clone(), 3);
    let files = segments(&dir);
    assert_eq!(
        files,
        [segment(&dir, 1), segment(&dir, 2), segment(&dir, 3)]
    );
    assert_eq!(mode(&files[0]), 0o400);
    assert_eq!(mode(&files[1]), 0o400);
    assert_eq!(mode(&files[2]), 0o600);
    // A checkpoint at each rotation and at shutdown.
    let sequences: Vec<u64> = checkpoint_lines(&dir)
        .iter()
        .map(|l| serde_json::from_str::<Checkpoint>(l).unwrap().sequence)
        .collect();
    assert_eq!(sequences, [1, 2, 3]);
    let report = verify(&dir, None, None).unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.segments, 3);
}

#[test]
fn rotation_by_age() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_max_age = Duration::from_millis(150);
    let (store, _) = open(cfg).unwrap();
    append_n(&store, 2);
    let dir = store.dir().to_path_buf();
    assert_eq!(segments(&dir).len(), 1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(store.append_blocking(rec(3)).unwrap(), 3);
    store.shutdown_blocking().unwrap();
    assert_eq!(segments(&dir), [segment(&dir, 1), segment(&dir, 3)]);
    assert_eq!(mode(&segment(&dir, 1)), 0o400);
}

#[test]
fn concurrent_appends_share_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    // Like a real disk: a sync takes a while, so appends queue up behind it.
    faults.sync_delay.store(500, Ordering::SeqCst);
    let (store, _) = open_with(config(tmp.path()), faults.wrap()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|n| store.append_blocking(rec(n)).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let store = store.clone();
            runtime.spawn(async move {
                let mut sequences = Vec::new();
                for n in 0..18 {
                    sequences.push(store.append(rec(n)).await.unwrap());
                }
                sequences
            })
        })
        .collect();
    let mut all: Vec<u64> = Vec::new();
    for thread in threads {
        all.extend(thread.join().unwrap());
    }
    for task in tasks {
        all.extend(runtime.block_on(task).unwrap());
    }
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), 2000);
    assert_eq!(distinct, (1..=2000).collect());
    let stats = store.stats();
    assert_eq!(stats.records, 2000);
    assert_eq!(stats.batches, faults.syncs.load(Ordering::SeqCst));
    assert!(stats.batches * 5 < stats.records, "{stats:?}");
    store.shutdown_blocking().unwrap();
    let report = verify(&tmp.path().join("store"), None, None).unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.records, 2000);
}

#[test]
fn checkpoints_at_the_interval_only_when_records_came() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.checkpoint_interval = Duration::from_millis(50);
    let (store, _) = open(cfg).unwrap();
    let dir = store.dir().to_path_buf();
    append_n(&store, 2);
    let deadline = Instant::now() + Duration::from_secs(2);
    while checkpoint_lines(&dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let written = checkpoint_lines(&dir);
    assert_eq!(written.len(), 1);
    let checkpoint: Checkpoint = serde_json::from_str(&written[0]).unwrap();
    assert_eq!(checkpoint.sequence, 2);
    let key = read_public_key(&dir.join(PUBLIC_KEY_FILE)).unwrap();
    assert_eq!(checkpoint.check_signature(&key), Ok(()));
    assert_eq!(checkpoint.segment, crate::store::layout::segment_name(1));

    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(
        checkpoint_lines(&dir).len(),
        1,
        "nothing new, no checkpoint"
    );
    append_n(&store, 1);
    store.shutdown_blocking().unwrap();
    let last: Checkpoint = serde_json::from_str(checkpoint_lines(&dir).last().unwrap()).unwrap();
    assert_eq!(last.sequence, 3);
    assert_eq!(checkpoint_lines(&dir).len(), 2);
}

#[test]
fn permissions_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_max_bytes = 1;
    let dir = fill(cfg, 2);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(SEGMENTS_DIR)), 0o700);
    assert_eq!(mode(&segment(&dir, 1)), 0o400);
    assert_eq!(mode(&segment(&dir, 2)), 0o600);
    assert_eq!(mode(&dir.join(CHECKPOINTS_FILE)), 0o600);
    assert_eq!(mode(&dir.join(PUBLIC_KEY_FILE)), 0o400);
    assert_eq!(mode(&dir.join(KEYS_DIR)), 0o700);
    assert_eq!(mode(&dir.join(KEYS_DIR).join(SIGNING_KEY_FILE)), 0o600);
}

#[test]
fn permissions_with_a_reviewers_group() {
    let tmp = tempfile::tempdir().unwrap();
    let gid = nix::unistd::getegid().as_raw();
    let mut cfg = config(tmp.path());
    cfg.segment_max_bytes = 1;
    cfg.reviewers_gid = Some(gid);
    let dir = fill(cfg, 2);
    for (path, expected) in [
        (dir.clone(), 0o750),
        (dir.join(SEGMENTS_DIR), 0o750),
        (segment(&dir, 1), 0o440),
        (segment(&dir, 2), 0o640),
        (dir.join(CHECKPOINTS_FILE), 0o640),
        (dir.join(PUBLIC_KEY_FILE), 0o440),
    ] {
        assert_eq!(mode(&path), expected, "{}", path.display());
        assert_eq!(
            fs::metadata(&path).unwrap().gid(),
            gid,
            "{}",
            path.display()
        );
    }
    assert_eq!(mode(&dir.join(KEYS_DIR)), 0o700);
    assert_eq!(mode(&dir.join(KEYS_DIR).join(SIGNING_KEY_FILE)), 0o600);
}

#[test]
fn a_second_writer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(config(tmp.path())).unwrap();
    assert!(matches!(
        open(config(tmp.path())),
        Err(StoreError::Locked { .. })
    ));
    store.shutdown_blocking().unwrap();
    let (again, _) = open(config(tmp.path())).unwrap();
    again.shutdown_blocking().unwrap();
}

#[test]
fn invalid_records_are_refused_without_using_a_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(config(tmp.path())).unwrap();
    let mut bad = rec(1);
    bad.insert("event".into(), json!("not an object"));
    assert!(matches!(
        store.append_blocking(bad),
        Err(StoreError::InvalidRecord(_))
    ));
    let mut with_chain = rec(2);
    with_chain.insert("chain".into(), json!({"prev": "forged"}));
    assert_eq!(store.append_blocking(with_chain).unwrap(), 1);
    store.shutdown_blocking().unwrap();
    assert!(matches!(store_closed(tmp.path()), StoreError::Closed));
}

fn store_closed(tmp: &Path) -> StoreError {
    let (store, _) = open(config(tmp)).unwrap();
    let clone = store.clone();
    store.shutdown_blocking().unwrap();
    clone.append_blocking(rec(0)).unwrap_err()
}

#[test]
fn the_reader_streams_every_record_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_max_bytes = 500;
    let dir = fill(cfg, 7);
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(segments(&dir).last().unwrap())
        .unwrap();
    file.write_all(b"{\"torn").unwrap();

    let reader = Reader::open(&dir).unwrap();
    assert!(reader.segments().len() > 1);
    let items: Vec<_> = reader.collect();
    let records: Vec<_> = items.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        records.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    let first = records[0];
    assert_eq!((first.segment.clone(), first.line), (segment(&dir, 1), 1));
    assert_eq!(first.value["n"], 0);
    assert_eq!(first.value["event"]["sequence"], 1);
    assert_eq!(first.raw, lines(&segment(&dir, 1))[0]);
    let error = items.last().unwrap().as_ref().unwrap_err();
    assert!(
        matches!(error.kind, ReadErrorKind::Torn { bytes: 6 }),
        "{error}"
    );
}

#[test]
fn the_public_key_is_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fill(config(tmp.path()), 1);
    let exported = export_public_key(&dir).unwrap();
    assert_eq!(exported.len(), 64);
    assert_eq!(
        exported,
        fs::read_to_string(dir.join(PUBLIC_KEY_FILE))
            .unwrap()
            .trim()
    );
}
