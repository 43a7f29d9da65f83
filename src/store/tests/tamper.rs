//! `verify` on an intact store, and on each kind of tampering: the first problem is
//! named with its segment, line and sequence.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde_json::{Map, Value, json};
use tempfile::TempDir;

use super::*;
use crate::store::layout::PUBLIC_KEY_FILE;
use crate::store::record::{self, GENESIS};
use crate::store::{Checkpoint, Location, Problem, ProblemKind, export_public_key, verify};

/// Ten records in segments starting at 1, 4, 7 and 10, with a checkpoint at 10.
fn store() -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_max_bytes = 800;
    let dir = fill(cfg, 10);
    let firsts: Vec<PathBuf> = [1, 4, 7, 10].iter().map(|&f| segment(&dir, f)).collect();
    assert_eq!(segments(&dir), firsts);
    (tmp, dir)
}

fn problem_of(dir: &Path) -> Problem {
    let report = verify(dir, None, None).unwrap();
    report
        .problem
        .clone()
        .unwrap_or_else(|| panic!("not caught: {report}"))
}

fn at(dir: &Path, first: u64, line: u64, sequence: u64) -> Option<Location> {
    Some(Location {
        segment: segment(dir, first),
        line,
        sequence: Some(sequence),
    })
}

fn first_line_of_report(dir: &Path) -> String {
    verify(dir, None, None)
        .unwrap()
        .to_string()
        .lines()
        .next()
        .unwrap()
        .to_owned()
}

/// The record stored in `line`, without its chain fields.
fn body(line: &str) -> Map<String, Value> {
    let unsealed = record::unseal(line.as_bytes()).unwrap();
    serde_json::from_slice(&unsealed.body).unwrap()
}

fn sealed_text(record: Map<String, Value>, sequence: u64, prev: &[u8; 32]) -> (String, [u8; 32]) {
    let sealed = record::seal(record, sequence, prev).unwrap();
    let text = String::from_utf8(sealed.line).unwrap();
    (text.trim_end().to_owned(), sealed.hash)
}

#[test]
fn an_intact_store_verifies() {
    let (_tmp, dir) = store();
    let report = verify(&dir, None, None).unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(
        (report.records, report.segments, report.last_sequence),
        (10, 4, 10)
    );
    let text = report.to_string();
    assert!(
        text.starts_with("intact: 10 records in 4 segments, last sequence 10, checkpoint at "),
        "{text}"
    );
    assert!(text.contains("stronger check"), "{text}");
}

#[test]
fn a_changed_byte() {
    let (_tmp, dir) = store();
    let path = segment(&dir, 4);
    let mut content = lines(&path);
    content[1] = content[1].replacen("\"test\"", "\"tesT\"", 1);
    write_lines(&path, &content);
    let problem = problem_of(&dir);
    assert_eq!(problem.location, at(&dir, 4, 2, 5));
    assert_eq!(problem.kind, ProblemKind::Changed);
    assert_eq!(
        first_line_of_report(&dir),
        "TAMPERED: segments/00000000000000000004.jsonl:2 (sequence 5): record changed: its bytes do not match its chain hash"
    );
}

#[test]
fn a_deleted_record() {
    let (_tmp, dir) = store();
    let path = segment(&dir, 4);
    let mut content = lines(&path);
    content.remove(1);
    write_lines(&path, &content);
    let problem = problem_of(&dir);
    assert_eq!(problem.location, at(&dir, 4, 2, 6));
    assert_eq!(problem.kind, ProblemKind::Deleted { first: 5, last: 5 });
}

#[test]
fn two_swapped_records() {
    let (_tmp, dir) = store();
    let path = segment(&dir, 4);
    let mut content = lines(&path);
    content.swap(0, 1);
    write_lines(&path, &content);
    let problem = problem_of(&dir);
    assert_eq!(problem.location, at(&dir, 4, 1, 5));
    assert_eq!(
        problem.kind,
        ProblemKind::Reordered {
            expected: 4,
            missing_at: at(&dir, 4, 2, 4)
        }
    );
    assert!(
        first_line_of_report(&dir).ends_with("(found at segments/00000000000000000004.jsonl:2)")
    );
}

#[test]
fn a_repeated_record() {
    let (_tmp, dir) = store();
    let path = segment(&dir, 4);
    let mut content = lines(&path);
    content.insert(1, content[0].clone());
    write_lines(&path, &content);
    let problem = problem_of(&dir);
    assert_eq!(problem.location, at(&dir, 4, 2, 4));
    assert_eq!(problem.kind, ProblemKind::SequenceBack { previous: 4 });
}

#[test]
fn a_deleted_middle_segment() {
    let (_tmp, dir) = store();
    fs::remove_file(segment(&dir, 4)).unwrap();
    let problem = problem_of(&dir);
    assert_eq!(problem.location, at(&dir, 7, 1, 7));
    assert_eq!(
        problem.kind,
        ProblemKind::SegmentRemoved {
            expected: 4,
            found: 7
        }
    );
    assert!(first_line_of_report(&dir).contains("records 4 to 6 are missing"));
}

#[test]
fn a_deleted_first_segment() {
    let (_tmp, dir) = store();
    fs::remove_file(segment(&dir, 1)).unwrap();
    let problem = problem_of(&dir);
    assert_eq!(
        problem.kind,
        ProblemKind::SegmentRemoved {
            expected: 1,
            found: 4
        }
    );
    assert!(first_line_of_report(&dir).contains("the store begins at sequence 4"));
}

#[test]
fn a_tail_truncated_before_the_last_checkpoint() {
    let (_tmp, dir) = store();
    fs::remove_file(segment(&dir, 10)).unwrap();
    let path = segment(&dir, 7);
    let mut content = lines(&path);
    content.pop();
    write_lines(&path, &content);
    let problem = problem_of(&dir);
    assert_eq!(problem.location, at(&dir, 7, 2, 8));
    assert_eq!(
        problem.kind,
        ProblemKind::Truncated {
            last: 8,
            checkpoint: 10
        }
    );
}

#[test]
fn a_torn_last_line() {
    let (_tmp, dir) = store();
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(segment(&dir, 10))
        .unwrap();
    file.write_all(b"{\"event\":").unwrap();
    let problem = problem_of(&dir);
    assert_eq!(problem.location, at(&dir, 10, 2, 11));
    assert_eq!(
        problem.kind,
        ProblemKind::Torn {
            bytes: 9,
            last_segment: true
        }
    );
}

#[test]
fn a_malformed_line() {
    let (_tmp, dir) = store();
    let path = segment(&dir, 7);
    let mut content = lines(&path);
    content[2] = "{\"hello\":1}".into();
    write_lines(&path, &content);
    let problem = problem_of(&dir);
    assert!(
        matches!(problem.kind, ProblemKind::Malformed { .. }),
        "{problem:?}"
    );
    assert_eq!(
        problem.location.map(|l| (l.line, l.sequence)),
        Some((3, None))
    );
}

#[test]
fn a_record_rewritten_with_its_own_hash_recomputed() {
    let (_tmp, dir) = store();
    let path = segment(&dir, 4);
    let mut content = lines(&path);
    let prev = record::unseal(content[0].as_bytes()).unwrap().hash;
    let mut changed = body(&content[1]);
    changed.insert("n".into(), json!(999));
    content[1] = sealed_text(changed, 5, &prev).0;
    write_lines(&path, &content);
    let problem = problem_of(&dir);
    assert_eq!(problem.location, at(&dir, 4, 3, 6));
    assert_eq!(
        problem.kind,
        ProblemKind::ChainBroken {
            previous: at(&dir, 4, 2, 5)
        }
    );
}

#[test]
fn a_whole_chain_rewritten_from_a_record_on() {
    let (_tmp, dir) = store();
    let mut prev = GENESIS;
    for path in segments(&dir) {
        let mut content = lines(&path);
        for line in content.iter_mut() {
            let mut record = body(line);
            let sequence = record["event"]["sequence"].as_u64().unwrap();
            if sequence == 5 {
                record.insert("n".into(), json!(999));
            }
            let (text, hash) = sealed_text(record, sequence, &prev);
            *line = text;
            prev = hash;
        }
        write_lines(&path, &content);
    }
    let problem = problem_of(&dir);
    assert_eq!(problem.location, at(&dir, 10, 1, 10));
    assert_eq!(
        problem.kind,
        ProblemKind::CheckpointMismatch { sequence: 10 }
    );
}

fn forged_checkpoint(dir: &Path, sequence: u64, key_id_of: Option<&str>) -> Checkpoint {
    let forger = SigningKey::from_bytes(&[9; 32]);
    let path = segment(dir, 7);
    let hash = record::unseal(lines(&path).last().unwrap().as_bytes())
        .unwrap()
        .hash;
    let mut checkpoint = Checkpoint::sign(&forger, sequence, &hash, "x");
    if let Some(id) = key_id_of {
        checkpoint.key_id = id.to_owned();
    }
    checkpoint
}

fn append_checkpoint(dir: &Path, checkpoint: &Checkpoint) {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(dir.join(CHECKPOINTS_FILE))
        .unwrap();
    writeln!(file, "{}", serde_json::to_string(checkpoint).unwrap()).unwrap();
}

#[test]
fn a_forged_checkpoint() {
    let (_tmp, dir) = store();
    let genuine: Checkpoint = serde_json::from_str(checkpoint_lines(&dir).last().unwrap()).unwrap();
    let forged = forged_checkpoint(&dir, 9, Some(&genuine.key_id));
    append_checkpoint(&dir, &forged);
    let problem = problem_of(&dir);
    assert_eq!(problem.location, None);
    assert!(
        matches!(&problem.kind, ProblemKind::BadSignature { detail } if detail.contains("does not verify")),
        "{problem:?}"
    );
    assert!(first_line_of_report(&dir).starts_with("TAMPERED: checkpoint "));
}

#[test]
fn a_replaced_public_key_is_caught_by_the_exported_one() {
    let (tmp, dir) = store();
    let exported = tmp.path().join("exported.pub");
    fs::write(&exported, export_public_key(&dir).unwrap()).unwrap();
    // Someone who can write the store cuts the tail and signs a new checkpoint with a
    // key of their own, which they also put in place of checkpoint.pub.
    fs::remove_file(segment(&dir, 10)).unwrap();
    let forged = forged_checkpoint(&dir, 9, None);
    append_checkpoint(&dir, &forged);
    let forger = SigningKey::from_bytes(&[9; 32]).verifying_key();
    let pub_path = dir.join(PUBLIC_KEY_FILE);
    fs::remove_file(&pub_path).unwrap();
    fs::write(&pub_path, hex::encode(forger.as_bytes())).unwrap();

    assert!(verify(&dir, None, None).unwrap().is_intact());
    let report = verify(&dir, None, Some(&exported)).unwrap();
    let problem = report
        .problem
        .clone()
        .expect("caught with the exported key");
    assert!(
        matches!(problem.kind, ProblemKind::BadSignature { .. }),
        "{report}"
    );
}

#[test]
fn an_exported_checkpoint_catches_a_cut_that_the_store_hides() {
    let (tmp, dir) = store();
    let exported = tmp.path().join("checkpoint.json");
    let genuine: Value = serde_json::from_str(checkpoint_lines(&dir).last().unwrap()).unwrap();
    fs::write(&exported, serde_json::to_string_pretty(&genuine).unwrap()).unwrap();
    let key = tmp.path().join("key.pub");
    fs::write(&key, export_public_key(&dir).unwrap()).unwrap();

    let report = verify(&dir, Some(&exported), Some(&key)).unwrap();
    assert!(report.is_intact(), "{report}");
    assert!(!report.to_string().contains("stronger check"), "{report}");

    // Cutting the last segment and the store's own checkpoints hides the cut from a
    // check against the store alone; not from the exported checkpoint.
    fs::remove_file(segment(&dir, 10)).unwrap();
    fs::write(dir.join(CHECKPOINTS_FILE), "").unwrap();
    assert!(verify(&dir, None, None).unwrap().is_intact());
    let report = verify(&dir, Some(&exported), Some(&key)).unwrap();
    assert_eq!(
        report.problem.map(|p| p.kind),
        Some(ProblemKind::Truncated {
            last: 9,
            checkpoint: 10
        })
    );
}

#[test]
fn unreadable_inputs_are_errors_not_verdicts() {
    let (tmp, dir) = store();
    assert!(verify(&tmp.path().join("missing"), None, None).is_err());
    assert!(verify(tmp.path(), None, None).is_err(), "not a store");
    let empty = tmp.path().join("empty.json");
    fs::write(&empty, "").unwrap();
    assert!(verify(&dir, Some(&empty), None).is_err());
    assert!(verify(&dir, None, Some(&tmp.path().join("no.pub"))).is_err());
}
