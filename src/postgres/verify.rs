//! `verify --postgres`: every forwarded store checked from the bytes in the database.
//!
//! For each store (or the one asked for), its rows are streamed in sequence order and
//! its chain recomputed from each `line`: the line's bytes must hash to its own chain
//! suffix, its `prev` must be the hash of the row before, its `event.sequence` must be
//! the row's, the `prev`/`hash` columns must be the line's, and the sequences must run
//! without gaps. Then every forwarded checkpoint's signature must hold (the key the store
//! registered, or `--key STORE_ID=FILE` kept elsewhere: a registered key that differs
//! from it is reported), the chain hash at its sequence must be the signed one, and the
//! newest checkpoint's sequence must be present (else the newest records were dropped).
//!
//! Retention: a store whose oldest rows were removed starts at a checkpoint. A first row
//! at sequence s > 1 is accepted when a validly signed checkpoint at s - 1 has that row's
//! `prev` as its chain hash; that is how a month is dropped without breaking `verify`
//! (delete the rows up to a checkpoint's sequence, keep the checkpoint). Removing the
//! oldest rows up to a checkpoint therefore cannot be told from retention; any other
//! removal can. Records newer than the newest forwarded checkpoint are chained but
//! signed by nothing yet: dropping them cannot be proven here, and the report says so.
//!
//! Unlike a store's `verify`, the walk does not stop at the first problem: it names each
//! one (up to [`MAX_FINDINGS`] per store) and goes on.

use std::fmt;
use std::path::PathBuf;

use ed25519_dalek::VerifyingKey;
use uuid::Uuid;

use super::PostgresError;
use super::connect::{PostgresOptions, PostgresTarget};
use super::review::{ChainRow, ForwardedCheckpoint, ReviewReader, StoreSelection};
use crate::store::record::{self, ChainHash, GENESIS};
use crate::store::{self, Checkpoint, ProblemKind};

/// Problems named per store; more are counted.
pub const MAX_FINDINGS: usize = 20;

/// What to check.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub postgres: PostgresOptions,
    /// One store; all when `None`.
    pub store_id: Option<Uuid>,
    /// Public keys kept outside the database, per store (hex files, as exported).
    pub keys: Vec<(Uuid, PathBuf)>,
}

/// Why `verify --postgres` could not check.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    Key(#[from] store::StoreError),
    #[error("no forwarded store {0} in the database")]
    NoSuchStore(Uuid),
    #[error("--key names store {0}, which is not in the database")]
    KeyForUnknownStore(Uuid),
}

/// One problem of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The row's sequence, when the problem is at a row.
    pub sequence: Option<u64>,
    pub kind: FindingKind,
}

/// What is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindingKind {
    /// One of the store's own problem kinds (edit, deletion, truncation, signature…).
    Chain(ProblemKind),
    /// The row's `prev`/`hash` columns are not the line's chain fields.
    ColumnsDiffer,
    /// The line says another sequence than its row: rows were moved or swapped.
    SequenceDiffers { in_line: Option<u64> },
    /// The oldest rows are gone and no signed checkpoint anchors the first one left.
    StartsWithoutCheckpoint { first: u64 },
    /// The key registered in the database is not the one given with `--key`.
    KeyDiffers { registered: String, given: String },
    /// The registered key cannot be used (and no `--key` was given).
    BadRegisteredKey,
    /// A signed checkpoint's own record is not in the database (it was deleted).
    CheckpointRecordMissing { sequence: u64 },
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Chain(kind) => write!(f, "{kind}"),
            Self::ColumnsDiffer => write!(
                f,
                "the row's prev/hash columns are not the chain fields of its line"
            ),
            Self::SequenceDiffers {
                in_line: Some(found),
            } => write!(
                f,
                "records reordered: the line is record {found}, stored in another row"
            ),
            Self::SequenceDiffers { in_line: None } => {
                write!(f, "the line has no readable event.sequence")
            }
            Self::StartsWithoutCheckpoint { first } => write!(
                f,
                "records 1 to {} deleted: the first row left is {first} and no signed checkpoint at {} anchors it",
                first - 1,
                first - 1
            ),
            Self::KeyDiffers { registered, given } => write!(
                f,
                "the public key registered in the database ({registered}) is not the one given with --key ({given})"
            ),
            Self::CheckpointRecordMissing { sequence } => write!(
                f,
                "the signed checkpoint at sequence {sequence} proves that record {sequence} existed, and it is not in the database"
            ),
            Self::BadRegisteredKey => write!(
                f,
                "the public key registered in the database is not an Ed25519 key: checkpoints cannot be checked (give --key)"
            ),
        }
    }
}

/// The verdict on one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreVerdict {
    pub store_id: Uuid,
    pub host: String,
    pub records: u64,
    pub first_sequence: Option<u64>,
    pub last_sequence: Option<u64>,
    /// Checkpoints whose signature and chain hash were checked against a row.
    pub checkpoints_checked: u64,
    /// The newest forwarded checkpoint: sequence and time.
    pub newest_checkpoint: Option<(u64, String)>,
    /// The first row continues the chain at this signed checkpoint (older rows removed).
    pub starts_at_checkpoint: Option<u64>,
    /// Whether the key came from `--key`.
    pub external_key: bool,
    pub findings: Vec<Finding>,
    /// Problems beyond [`MAX_FINDINGS`].
    pub more_findings: u64,
}

impl StoreVerdict {
    /// A verdict on a store with nothing checked yet.
    fn new(store_id: Uuid, host: String, external_key: bool) -> Self {
        Self {
            store_id,
            host,
            records: 0,
            first_sequence: None,
            last_sequence: None,
            checkpoints_checked: 0,
            newest_checkpoint: None,
            starts_at_checkpoint: None,
            external_key,
            findings: Vec::new(),
            more_findings: 0,
        }
    }

    pub fn is_intact(&self) -> bool {
        self.findings.is_empty()
    }

    fn find(&mut self, sequence: Option<u64>, kind: FindingKind) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(Finding { sequence, kind });
        } else {
            self.more_findings += 1;
        }
    }
}

/// The outcome of `verify --postgres`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresVerifyReport {
    pub stores: Vec<StoreVerdict>,
}

impl PostgresVerifyReport {
    pub fn is_intact(&self) -> bool {
        self.stores.iter().all(StoreVerdict::is_intact)
    }
}

/// Checks the stores `options` selects.
pub fn verify(options: &VerifyOptions) -> Result<PostgresVerifyReport, VerifyError> {
    let target = PostgresTarget::new(&options.postgres)?;
    let mut reader = ReviewReader::connect(&target)?;
    let selection = StoreSelection {
        store_id: options.store_id,
        host: None,
    };
    let stores = reader.stores(&selection)?;
    if let (Some(id), true) = (options.store_id, stores.is_empty()) {
        return Err(VerifyError::NoSuchStore(id));
    }
    for (id, _) in &options.keys {
        if !stores.iter().any(|store| store.store_id == *id) && options.store_id.is_none() {
            return Err(VerifyError::KeyForUnknownStore(*id));
        }
    }
    let mut verdicts = Vec::new();
    for forwarded in stores {
        let given = match options
            .keys
            .iter()
            .find(|(id, _)| *id == forwarded.store_id)
        {
            Some((_, file)) => Some(store::read_public_key(file)?),
            None => None,
        };
        let mut verdict =
            StoreVerdict::new(forwarded.store_id, forwarded.host.clone(), given.is_some());
        let registered = parse_key(&forwarded.public_key);
        let key = match (given, registered) {
            (Some(given), registered) => {
                if registered != Some(given) {
                    verdict.find(
                        None,
                        FindingKind::KeyDiffers {
                            registered: forwarded.public_key.clone(),
                            given: hex::encode(given.as_bytes()),
                        },
                    );
                }
                Some(given)
            }
            (None, Some(registered)) => Some(registered),
            (None, None) => {
                verdict.find(None, FindingKind::BadRegisteredKey);
                None
            }
        };
        let checkpoints = reader.checkpoints(forwarded.store_id)?;
        let mut walk = Walk::new(verdict, checkpoints, key.as_ref());
        reader.for_each_chain_row(forwarded.store_id, |row| {
            walk.row(row);
            Ok::<(), PostgresError>(())
        })?;
        verdicts.push(walk.finish());
    }
    Ok(PostgresVerifyReport { stores: verdicts })
}

fn parse_key(text: &str) -> Option<VerifyingKey> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// A checkpoint whose signature held.
struct Signed {
    sequence: u64,
    chain_hash: Option<ChainHash>,
}

/// The walk along one store's rows.
struct Walk {
    verdict: StoreVerdict,
    /// Signed checkpoints not yet reached, oldest first.
    checkpoints: std::vec::IntoIter<Signed>,
    next_checkpoint: Option<Signed>,
    /// The sequence the next row should have.
    expected: Option<u64>,
    /// The chain hash the next row's prev should be (unknown after a gap).
    head: Option<ChainHash>,
    /// The first checkpoint at or after the first row, used to anchor it.
    anchors: Vec<(u64, Option<ChainHash>)>,
}

impl Walk {
    fn new(
        mut verdict: StoreVerdict,
        checkpoints: Vec<ForwardedCheckpoint>,
        key: Option<&VerifyingKey>,
    ) -> Self {
        verdict.newest_checkpoint = checkpoints.last().map(|c| {
            (
                u64::try_from(c.sequence).unwrap_or_default(),
                c.time.clone(),
            )
        });
        let mut signed = Vec::with_capacity(checkpoints.len());
        for forwarded in checkpoints {
            let sequence = u64::try_from(forwarded.sequence).unwrap_or_default();
            let checkpoint = Checkpoint {
                sequence,
                chain_hash: forwarded.chain_hash,
                segment: forwarded.segment,
                time: forwarded.time,
                key_id: forwarded.key_id,
                signature: forwarded.signature,
            };
            let Some(key) = key else { continue };
            match checkpoint.check_signature(key) {
                Ok(()) => signed.push(Signed {
                    sequence,
                    chain_hash: checkpoint.chain_hash_bytes(),
                }),
                Err(detail) => verdict.find(
                    Some(sequence),
                    FindingKind::Chain(ProblemKind::BadSignature { detail }),
                ),
            }
        }
        let anchors = signed.iter().map(|s| (s.sequence, s.chain_hash)).collect();
        let mut checkpoints = signed.into_iter();
        let next_checkpoint = checkpoints.next();
        Walk {
            verdict,
            checkpoints,
            next_checkpoint,
            expected: None,
            head: None,
            anchors,
        }
    }

    fn row(&mut self, row: ChainRow) {
        let Ok(sequence) = u64::try_from(row.sequence) else {
            return;
        };
        let at = Some(sequence);
        match self.expected {
            None => self.first_row(sequence),
            Some(expected) if sequence > expected => {
                self.verdict.find(
                    at,
                    FindingKind::Chain(ProblemKind::Deleted {
                        first: expected,
                        last: sequence - 1,
                    }),
                );
                // The link across a gap cannot be checked.
                self.head = None;
            }
            Some(_) => {}
        }
        self.verdict.records += 1;
        self.verdict.last_sequence = Some(sequence);
        self.expected = Some(sequence + 1);

        let unsealed = match record::unseal(row.line.as_bytes()) {
            Ok(unsealed) => unsealed,
            Err(detail) => {
                let detail = detail.to_owned();
                self.verdict
                    .find(at, FindingKind::Chain(ProblemKind::Malformed { detail }));
                self.head = <ChainHash>::try_from(row.hash.as_slice()).ok();
                self.pass_checkpoints(sequence, None);
                return;
            }
        };
        let in_line = sequence_in(&unsealed.body);
        if in_line != Some(sequence) {
            self.verdict
                .find(at, FindingKind::SequenceDiffers { in_line });
        }
        let computed = record::chain_hash(&unsealed.prev, &unsealed.body);
        if computed != unsealed.hash {
            self.verdict
                .find(at, FindingKind::Chain(ProblemKind::Changed));
        }
        if row.prev != unsealed.prev || row.hash != unsealed.hash {
            self.verdict.find(at, FindingKind::ColumnsDiffer);
        }
        if let Some(head) = self.head
            && head != unsealed.prev
        {
            self.verdict.find(
                at,
                FindingKind::Chain(ProblemKind::ChainBroken { previous: None }),
            );
        }
        self.head = Some(unsealed.hash);
        self.pass_checkpoints(sequence, Some(computed));
    }

    /// The first row: sequence 1 from genesis, or later from a signed checkpoint.
    fn first_row(&mut self, sequence: u64) {
        self.verdict.first_sequence = Some(sequence);
        if sequence <= 1 {
            self.head = Some(GENESIS);
            return;
        }
        let anchor = self
            .anchors
            .iter()
            .find(|(at, _)| *at == sequence - 1)
            .map(|(_, hash)| *hash);
        match anchor {
            Some(hash) => {
                // The row's prev is compared with it like any link.
                self.head = hash;
                self.verdict.starts_at_checkpoint = Some(sequence - 1);
                if hash.is_none() {
                    self.verdict.find(
                        Some(sequence - 1),
                        FindingKind::Chain(ProblemKind::CheckpointMismatch {
                            sequence: sequence - 1,
                        }),
                    );
                }
            }
            None => {
                self.verdict.find(
                    Some(sequence),
                    FindingKind::StartsWithoutCheckpoint { first: sequence },
                );
                self.head = None;
            }
        }
    }

    /// Checks the checkpoints up to `sequence` (whose recomputed hash is `computed`).
    fn pass_checkpoints(&mut self, sequence: u64, computed: Option<ChainHash>) {
        while let Some(checkpoint) = self.next_checkpoint.take() {
            if checkpoint.sequence > sequence {
                self.next_checkpoint = Some(checkpoint);
                return;
            }
            if checkpoint.sequence == sequence {
                self.verdict.checkpoints_checked += 1;
                if computed.is_none() || checkpoint.chain_hash != computed {
                    self.verdict.find(
                        Some(sequence),
                        FindingKind::Chain(ProblemKind::CheckpointMismatch { sequence }),
                    );
                }
            }
            // Checkpoints before the first row (retention) have no row to be checked
            // against; one inside a gap is the signed proof of what was deleted.
            if checkpoint.sequence < sequence
                && self
                    .verdict
                    .first_sequence
                    .is_some_and(|first| checkpoint.sequence >= first)
            {
                self.verdict.find(
                    Some(checkpoint.sequence),
                    FindingKind::CheckpointRecordMissing {
                        sequence: checkpoint.sequence,
                    },
                );
            }
            self.next_checkpoint = self.checkpoints.next();
        }
    }

    fn finish(mut self) -> StoreVerdict {
        let last = self.verdict.last_sequence.unwrap_or(0);
        if let Some((newest, _)) = &self.verdict.newest_checkpoint
            && *newest > last
        {
            let kind = ProblemKind::Truncated {
                last,
                checkpoint: *newest,
            };
            self.verdict.find(None, FindingKind::Chain(kind));
        }
        self.verdict
    }
}

/// `event.sequence` of a line's body.
fn sequence_in(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Probe {
        event: Event,
    }
    #[derive(serde::Deserialize)]
    struct Event {
        sequence: u64,
    }
    serde_json::from_slice::<Probe>(body)
        .ok()
        .map(|p| p.event.sequence)
}

fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

impl fmt::Display for StoreVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = match (self.first_sequence, self.last_sequence) {
            (Some(first), Some(last)) => format!(", sequences {first} to {last}"),
            _ => String::new(),
        };
        let newest = match &self.newest_checkpoint {
            Some((sequence, time)) => {
                format!(", newest checkpoint at {time} (sequence {sequence})")
            }
            None => ", no checkpoint".into(),
        };
        write!(f, "store {} (host {}): ", self.store_id, self.host)?;
        if self.is_intact() {
            writeln!(
                f,
                "intact: {}{range}, {} checked{newest}",
                plural(self.records, "record"),
                plural(self.checkpoints_checked, "checkpoint"),
            )?;
        } else {
            writeln!(
                f,
                "TAMPERED: {} read{range}{newest}",
                plural(self.records, "record")
            )?;
            for finding in &self.findings {
                match finding.sequence {
                    Some(sequence) => writeln!(f, "  sequence {sequence}: {}", finding.kind)?,
                    None => writeln!(f, "  {}", finding.kind)?,
                }
            }
            if self.more_findings > 0 {
                writeln!(f, "  … and {} more problem(s)", self.more_findings)?;
            }
        }
        if let Some(anchor) = self.starts_at_checkpoint {
            writeln!(
                f,
                "  note: records 1 to {anchor} are not in the database; the first row continues the chain signed at checkpoint {anchor} (older records removed for retention, or deleted: the two cannot be told apart)"
            )?;
        }
        let last = self.last_sequence.unwrap_or(0);
        match &self.newest_checkpoint {
            Some((newest, _)) if last > *newest => {
                let what = if last == newest + 1 {
                    format!("record {last} is")
                } else {
                    format!("records {} to {last} are", newest + 1)
                };
                writeln!(
                    f,
                    "  note: {what} newer than the last forwarded checkpoint: a change or deletion there cannot be proven from here"
                )?
            }
            None if last > 0 => writeln!(
                f,
                "  note: no checkpoint was forwarded: deleting the newest records, or rewriting the whole chain, cannot be proven from here"
            )?,
            _ => {}
        }
        if !self.external_key {
            writeln!(
                f,
                "  note: checked with the public key the store registered in the database; a key exported with `jupyter-audit export-key` and kept elsewhere is the stronger check (--key {}=FILE)",
                self.store_id
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for PostgresVerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for store in &self.stores {
            write!(f, "{store}")?;
        }
        let tampered = self.stores.iter().filter(|s| !s.is_intact()).count();
        if self.stores.is_empty() {
            writeln!(f, "no forwarded store in the database")
        } else if tampered == 0 {
            writeln!(
                f,
                "intact: {} checked",
                plural(self.stores.len() as u64, "store")
            )
        } else {
            writeln!(
                f,
                "TAMPERED: {} of {}",
                tampered,
                plural(self.stores.len() as u64, "store")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::json;

    use super::*;

    /// A chain of `count` stored lines and checkpoints signed at `signed_at`.
    fn store(
        count: u64,
        signed_at: &[u64],
    ) -> (Vec<ChainRow>, Vec<ForwardedCheckpoint>, VerifyingKey) {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut prev = GENESIS;
        let mut rows = Vec::new();
        let mut checkpoints = Vec::new();
        for sequence in 1..=count {
            let value = json!({"event": {"action": "stream"}, "jupyter": {"text": format!("line {sequence}")}});
            let serde_json::Value::Object(map) = value else {
                unreachable!()
            };
            let sealed = record::seal(map, sequence, &prev).expect("sealed");
            let line =
                String::from_utf8(sealed.line[..sealed.line.len() - 1].to_vec()).expect("utf8");
            rows.push(ChainRow {
                sequence: sequence as i64,
                line,
                prev: prev.to_vec(),
                hash: sealed.hash.to_vec(),
            });
            prev = sealed.hash;
            if signed_at.contains(&sequence) {
                let chain_hash = hex::encode(prev);
                let time = format!("2026-01-01T00:00:{:02}Z", sequence % 60);
                let message = store::signed_message(sequence, &chain_hash, &time);
                let signature = key.sign(message.as_bytes());
                use base64::Engine;
                checkpoints.push(ForwardedCheckpoint {
                    sequence: sequence as i64,
                    chain_hash,
                    time,
                    segment: "s".into(),
                    key_id: store::key_id(&key.verifying_key()),
                    signature: base64::engine::general_purpose::STANDARD
                        .encode(signature.to_bytes()),
                });
            }
        }
        (rows, checkpoints, key.verifying_key())
    }

    fn check(
        rows: Vec<ChainRow>,
        checkpoints: Vec<ForwardedCheckpoint>,
        key: &VerifyingKey,
    ) -> StoreVerdict {
        let verdict = StoreVerdict::new(Uuid::nil(), "h".into(), false);
        let mut walk = Walk::new(verdict, checkpoints, Some(key));
        for row in rows {
            walk.row(row);
        }
        walk.finish()
    }

    fn kinds(verdict: &StoreVerdict) -> Vec<(Option<u64>, FindingKind)> {
        verdict
            .findings
            .iter()
            .map(|f| (f.sequence, f.kind.clone()))
            .collect()
    }

    #[test]
    fn an_untouched_store_is_intact_and_says_what_no_checkpoint_covers() {
        let (rows, checkpoints, key) = store(10, &[4, 8]);
        let verdict = check(rows, checkpoints, &key);
        assert!(verdict.is_intact(), "{verdict}");
        assert_eq!(verdict.checkpoints_checked, 2);
        assert!(
            verdict
                .to_string()
                .contains("records 9 to 10 are newer than the last forwarded checkpoint"),
            "{verdict}"
        );
    }

    #[test]
    fn an_edited_line_is_a_changed_record_and_breaks_its_checkpoint() {
        let (mut rows, checkpoints, key) = store(10, &[4, 8]);
        rows[3].line = rows[3].line.replace("line 4", "line X");
        let verdict = check(rows, checkpoints, &key);
        assert_eq!(
            kinds(&verdict),
            [
                (Some(4), FindingKind::Chain(ProblemKind::Changed)),
                (
                    Some(4),
                    FindingKind::Chain(ProblemKind::CheckpointMismatch { sequence: 4 })
                ),
            ]
        );
    }

    #[test]
    fn a_deleted_row_is_a_gap_and_dropped_newest_rows_are_truncation() {
        let (mut rows, checkpoints, key) = store(10, &[4, 8]);
        rows.remove(5);
        let verdict = check(rows.clone(), checkpoints.clone(), &key);
        assert_eq!(
            kinds(&verdict),
            [(
                Some(7),
                FindingKind::Chain(ProblemKind::Deleted { first: 6, last: 6 })
            )]
        );
        rows.truncate(6);
        let verdict = check(rows, checkpoints, &key);
        assert!(
            kinds(&verdict).contains(&(
                None,
                FindingKind::Chain(ProblemKind::Truncated {
                    last: 7,
                    checkpoint: 8
                })
            )),
            "{verdict}"
        );
    }

    #[test]
    fn records_deleted_under_a_checkpoint_are_proven_missing_by_its_signature() {
        let (mut rows, checkpoints, key) = store(10, &[4, 8]);
        rows.drain(2..4);
        let verdict = check(rows, checkpoints, &key);
        assert_eq!(
            kinds(&verdict),
            [
                (
                    Some(5),
                    FindingKind::Chain(ProblemKind::Deleted { first: 3, last: 4 })
                ),
                (
                    Some(4),
                    FindingKind::CheckpointRecordMissing { sequence: 4 }
                ),
            ]
        );
    }

    #[test]
    fn dropping_the_oldest_rows_up_to_a_checkpoint_is_retention_and_elsewhere_deletion() {
        let (rows, checkpoints, key) = store(10, &[4, 8]);
        let verdict = check(rows[4..].to_vec(), checkpoints.clone(), &key);
        assert!(verdict.is_intact(), "{verdict}");
        assert_eq!(verdict.starts_at_checkpoint, Some(4));
        let verdict = check(rows[3..].to_vec(), checkpoints, &key);
        assert_eq!(
            kinds(&verdict),
            [(Some(4), FindingKind::StartsWithoutCheckpoint { first: 4 })]
        );
    }

    #[test]
    fn swapped_lines_and_rewritten_columns_are_named() {
        let (mut rows, checkpoints, key) = store(6, &[6]);
        let (a, b) = (rows[1].line.clone(), rows[2].line.clone());
        rows[1].line = b;
        rows[2].line = a;
        rows[4].hash = vec![0; 32];
        let verdict = check(rows, checkpoints, &key);
        let found = kinds(&verdict);
        assert!(
            found.contains(&(Some(2), FindingKind::SequenceDiffers { in_line: Some(3) })),
            "{verdict}"
        );
        assert!(
            found.contains(&(Some(5), FindingKind::ColumnsDiffer)),
            "{verdict}"
        );
    }
}
