//! Reading and verifying a store someone may have damaged: `verify` must report what is
//! wrong, never panic, and the reader must go on line by line.
//!
//! Input: a store image, sections separated by 0xff (never in UTF-8 text):
//! `checkpoints.jsonl` 0xff `checkpoint.pub` 0xff `FIRST\nsegment lines` 0xff …, where
//! FIRST is the sequence the segment's file name announces. Seeds are real stores.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use jupyter_audit::store::layout::segment_name;
use jupyter_audit::store::{Reader, read_checkpoint, verify};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

fn write_store(dir: &Path, data: &[u8]) -> std::io::Result<()> {
    let segments = dir.join("segments");
    if segments.exists() {
        std::fs::remove_dir_all(&segments)?;
    }
    std::fs::create_dir(&segments)?;
    let mut sections = data.split(|&b| b == 0xff);
    std::fs::write(
        dir.join("checkpoints.jsonl"),
        sections.next().unwrap_or_default(),
    )?;
    std::fs::write(
        dir.join("checkpoint.pub"),
        sections.next().unwrap_or_default(),
    )?;
    for section in sections {
        let (first, lines) = match section.iter().position(|&b| b == b'\n') {
            Some(at) => (&section[..at], &section[at + 1..]),
            None => (section, &[][..]),
        };
        let Some(first) = std::str::from_utf8(first).ok().and_then(|f| f.parse().ok()) else {
            continue;
        };
        std::fs::write(segments.join(segment_name(first)), lines)?;
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    write_store(dir, data).expect("the scratch store is writable");

    let _ = read_checkpoint(&dir.join("checkpoints.jsonl"));
    let report = verify(dir, None, None);
    let read: Vec<_> = Reader::open(dir).expect("segments/ is there").collect();

    if let Ok(report) = report {
        let _ = report.to_string();
        if report.problem.is_none() {
            // An intact chain is one the reader takes line by line, numbered 1..=n.
            assert_eq!(read.len() as u64, report.records);
            for (index, record) in read.iter().enumerate() {
                let record = record.as_ref().expect("an intact store reads cleanly");
                assert_eq!(record.sequence, index as u64 + 1);
            }
            assert_eq!(report.last_sequence, report.records);
        }
    }
});
