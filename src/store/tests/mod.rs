//! Tests of the store as a whole: appends, recovery, rotation, group commit, failures,
//! permissions, checkpoints, reading, and `verify` against each kind of tampering.

mod append;
mod failures;
mod faults;
mod follow;
mod tamper;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::layout::{self, CHECKPOINTS_FILE, SEGMENTS_DIR};
use super::{StoreConfig, StoreHandle, open};

/// A small record numbered `n`.
pub(super) fn rec(n: u64) -> Map<String, Value> {
    match json!({"@timestamp": "2024-05-01T12:00:00Z", "event": {"action": "test"}, "n": n}) {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

pub(super) fn config(dir: &Path) -> StoreConfig {
    StoreConfig::new(dir.join("store"))
}

/// Opens a store with `config`, appends `count` records one by one, shuts it down.
pub(super) fn fill(config: StoreConfig, count: u64) -> PathBuf {
    let dir = config.dir.clone();
    let (store, _) = open(config).unwrap();
    append_n(&store, count);
    store.shutdown_blocking().unwrap();
    dir
}

/// Appends `count` records one by one and checks their sequences follow each other.
pub(super) fn append_n(store: &StoreHandle, count: u64) -> Vec<u64> {
    let sequences: Vec<u64> = (0..count)
        .map(|n| store.append_blocking(rec(n)).unwrap())
        .collect();
    for pair in sequences.windows(2) {
        assert_eq!(pair[1], pair[0] + 1);
    }
    sequences
}

pub(super) fn segments(dir: &Path) -> Vec<PathBuf> {
    layout::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect()
}

pub(super) fn segment(dir: &Path, first: u64) -> PathBuf {
    dir.join(SEGMENTS_DIR).join(layout::segment_name(first))
}

pub(super) fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

pub(super) fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Rewrites a file (closed segments are read-only; their owner can still change that).
pub(super) fn write_lines(path: &Path, lines: &[String]) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    let mut text = lines.join("\n");
    if !lines.is_empty() {
        text.push('\n');
    }
    fs::write(path, text).unwrap();
}

pub(super) fn checkpoint_lines(dir: &Path) -> Vec<String> {
    match fs::read_to_string(dir.join(CHECKPOINTS_FILE)) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}
