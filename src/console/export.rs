//! A session downloaded as a notebook that an auditor can verify offline: the console's
//! download, `jupyter-audit export` and `jupyter-audit verify-export`.
//!
//! # What an export is
//! One `.ipynb` file: the notebook exactly as `jupyter-audit replay` writes it (built by
//! the same code, [`replay::notebook_of`]), whose `metadata.jupyter_audit.export` holds
//! the proof ([`Proof`]):
//! - `format`: `"jupyter-audit export v1"`; `store_id`, `session_id`, `user_id` (the OS
//!   account whose records these are), `outputs` (whether outputs were exported);
//! - `records`: every record the notebook is built from, in store order, as
//!   `{"sequence": N, "line": "<the stored line>"}`; the line is what `log --json`
//!   prints, chain fields included. Its hash is recomputed as the store does
//!   (`src/store/record.rs`): cut the fixed-length suffix
//!   `,"chain":{"prev":"<64 hex>","hash":"<64 hex>"}` off before the final `}`, and
//!   `hash = SHA-256(prev as 32 bytes || the rest)`;
//! - `checkpoint`: the first signed checkpoint at or after the session's last record,
//!   field for field as in `checkpoints.jsonl`, with its `key_id` (the first 16 hex digits
//!   of the SHA-256 of the public key). It signs
//!   `jupyter-audit checkpoint v1\n{sequence}\n{chain_hash}\n{time}\n` with Ed25519.
//!
//! Each cell already names its request record (`metadata.jupyter_audit.sequence`).
//! Why one file and not a zip of notebook and proof: a browser downloads it as it is,
//! Jupyter opens it as it is (nbformat allows any metadata), and the proof cannot get
//! separated from the notebook it proves.
//!
//! An export without outputs (a reviewer without `custom:jupyter-audit:read-outputs`)
//! carries only the records that hold no kernel output (requests, `execute_input`, and
//! the proxy's own events: start, end, interrupts, refusals, gaps), and its notebook is
//! what replay makes of exactly those: the code and execution counts, no outputs, no
//! reply status. Output records (and replies, which carry error messages) are left out
//! of the proof too, since their bytes are the outputs.
//!
//! # What an offline verifier can prove, and what it cannot
//! A record's hash covers the previous record's hash and its own bytes. So:
//! - Each record's hash is recomputed from its bytes, and where two exported records are
//!   neighbours in the store (sequence N and N+1) the link between them is checked.
//! - The checkpoint's signature is checked with the store's public key alone.
//! - When the checkpoint's sequence is the session's last record (a session that ended
//!   while no one else wrote, or was exported after the next checkpoint only), its
//!   signed chain hash is that record's hash: the run of neighbouring records ending
//!   there is authenticated — they are in the signed store exactly as exported, and no
//!   record in that run was added, removed or changed.
//! - Whether the export begins with the session's `session_start` and ends with its
//!   `session_end`: an authenticated run says nothing of records of the session before
//!   or after it (an export cut short under an earlier checkpoint, or a session still
//!   running), so without them the verifier says the session may go beyond the export.
//! - A link that crosses records of other sessions (interleaved users, or the output
//!   records an export without outputs leaves out) cannot be checked without those
//!   records' bytes; SHA-256 offers no way to skip them, and putting them in the export
//!   would hand out other users' data. Records before such a gap are consistent (hash and
//!   neighbour links) but not authenticated offline, and the verifier says so; what lies
//!   in a gap (another session's record, or a record of this session that was left out)
//!   is not known offline. Checking those parts needs the store (below);
//!   `verify-export --strict` fails when anything is left unproven.
//! - The notebook is rebuilt from the exported records with replay's code and compared
//!   with the file: cells (code, outputs, execution counts, cell metadata) and notebook
//!   metadata, except what does not come from the records (`state` and `end_reason` of a
//!   session without a recorded end, which depend on whether its process ran at export
//!   time; `store`, the path it was read from; `generator`).
//!
//! With the store at hand (`verify-export --store DIR`), [`check_against_store`] closes
//! what offline checks leave open: each exported line is the store's line at its
//! sequence, the chain from the first exported record through the records not exported
//! recomputes to the checkpoint's signed hash, and the store holds no record of the
//! session up to the export's last one that the export should carry and does not; it
//! says how many records of the session the store holds after the export's last.

use std::io::Write;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::index::SessionRow;
use crate::audit::events::Action;
use crate::postgres::PostgresError;
use crate::postgres::connect::{PostgresOptions, PostgresTarget};
use crate::postgres::review::ReviewReader;
use crate::review::ReviewError;
use crate::review::fields;
use crate::review::filter::Filter;
use crate::review::replay;
use crate::review::sessions::{Liveness, LocalProcesses, SessionKey};
use crate::review::source::{Prefilter, RecordSource};
use crate::store::{self, Checkpoint, StoreError, StoredRecord, record};

/// The `format` of the proof this module writes and reads.
pub const FORMAT: &str = "jupyter-audit export v1";
/// The MIME type of an exported notebook.
pub const CONTENT_TYPE: &str = "application/x-ipynb+json";
/// Where the proof sits in the notebook's metadata (under `jupyter_audit`).
const PROOF_KEY: &str = "export";
/// Keys of the notebook's `metadata.jupyter_audit` that do not come from the records.
const NOT_FROM_RECORDS: [&str; 3] = [PROOF_KEY, "store", "generator"];
/// Keys that come from whether the proxy ran at export time, for a session without a
/// recorded end.
const FROM_LIVENESS: [&str; 2] = ["state", "end_reason"];

/// The proof in `metadata.jupyter_audit.export` (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proof {
    pub format: String,
    pub store_id: String,
    pub session_id: String,
    /// The OS account (uid) that sent the session's records.
    pub user_id: String,
    /// Whether the export carries outputs.
    pub outputs: bool,
    /// The records the notebook is built from, in store order.
    pub records: Vec<ProvenRecord>,
    /// The first signed checkpoint at or after the last of them.
    pub checkpoint: Checkpoint,
}

/// One record of the proof.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvenRecord {
    pub sequence: u64,
    /// The stored line, chain fields included (what `log --json` prints).
    pub line: String,
}

/// A downloadable export.
#[derive(Debug, Clone)]
pub struct Export {
    pub file_name: String,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

/// Why a session could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Review(#[from] ReviewError),
    #[error("cannot read the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(
        "the session's last record (sequence {last}) is not covered by a signed checkpoint \
         yet; the collector signs one within its checkpoint interval: try again then"
    )]
    NotCovered { last: u64 },
    #[error("cannot read the export {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether records of `action` hold no kernel output (what an export without outputs
/// keeps): the code sent to the kernel and the proxy's own events.
pub fn holds_no_output(action: &str) -> bool {
    matches!(action, "execute_request" | "execute_input")
        || matches!(
            Action::from_name(action),
            Some(
                Action::SessionStart
                    | Action::SessionEnd
                    | Action::ParentExited
                    | Action::Interrupt
                    | Action::Signal
                    | Action::ExecutionRefused
                    | Action::AuditBypassed
                    | Action::AuditGap
            )
        )
}

/// The export of the session `session_id` of the store at `store`, with or without its
/// outputs, for the console's download (blocking: it reads the store).
pub fn export_session(
    store: &Path,
    session_id: &str,
    outputs: bool,
) -> Result<Export, ExportError> {
    let mut warnings = Vec::new();
    let result = export(store, session_id, None, outputs, &mut warnings);
    log_warnings(&warnings);
    result
}

/// The export of the session of a row of the console's index (its session id, user id
/// and sequence range): what the session page's download calls.
pub fn export_row(store: &Path, row: &SessionRow, outputs: bool) -> Result<Export, ExportError> {
    let key = SessionKey {
        session_id: row.session_id.clone(),
        user_id: row.user_id.clone(),
    };
    export_session_within(store, &key, row.first_sequence..=row.last_sequence, outputs)
}

/// The export of the session `key` whose records lie within `sequences` (as the
/// console's index knows them): only the segments that hold them are read, so an export
/// from a large store takes the time its session takes. Records of the session after the
/// range (a session still running) are not in it.
pub fn export_session_within(
    store: &Path,
    key: &SessionKey,
    sequences: RangeInclusive<u64>,
    outputs: bool,
) -> Result<Export, ExportError> {
    let mut warnings = Vec::new();
    let result = session_records_within(store, key, &sequences, &mut warnings)
        .and_then(|records| assemble(store, key.clone(), records, outputs));
    log_warnings(&warnings);
    result
}

/// The records of the session `key` within `sequences`, in store order.
fn session_records_within(
    store_dir: &Path,
    key: &SessionKey,
    sequences: &RangeInclusive<u64>,
    warnings: &mut dyn Write,
) -> Result<Vec<StoredRecord>, ExportError> {
    let reader = store::Reader::open(store_dir)?.starting_at(*sequences.start());
    let last_segment = reader.segments().last().map(|entry| entry.path.clone());
    let mut records: Vec<StoredRecord> = Vec::new();
    let mut unreadable = 0;
    for item in reader {
        let record = match item {
            Ok(record) => record,
            Err(error) => {
                let in_progress = matches!(error.kind, store::ReadErrorKind::Torn { .. })
                    && Some(&error.segment) == last_segment.as_ref();
                if !in_progress {
                    unreadable += 1;
                }
                let _ = writeln!(warnings, "jupyter-audit: warning: {error}: skipped");
                continue;
            }
        };
        if record.sequence > *sequences.end() {
            break;
        }
        if record.sequence >= *sequences.start()
            && SessionKey::of(&record.value).as_ref() == Some(key)
        {
            records.push(record);
        }
    }
    if unreadable > 0 {
        return Err(ReviewError::Unreadable { count: unreadable }.into());
    }
    if records.is_empty() {
        return Err(ReviewError::NoSession(key.session_id.clone()).into());
    }
    Ok(records)
}

/// The export of the session of a row of the console's index over PostgreSQL: its
/// records read by store id, sequence range and session id (the primary key and the
/// session index `postgres init` makes), covered by the store's forwarded checkpoints,
/// so that `verify-export --public-key` checks it as an export from the store itself.
pub fn export_forwarded(
    options: &PostgresOptions,
    row: &SessionRow,
    outputs: bool,
) -> Result<Export, ExportError> {
    let key = SessionKey {
        session_id: row.session_id.clone(),
        user_id: row.user_id.clone(),
    };
    let store_id = uuid::Uuid::parse_str(&row.store)
        .map_err(|_| ReviewError::NoSession(row.session_id.clone()))?;
    let mut reader = ReviewReader::connect(&PostgresTarget::new(options)?)?;
    let mut records: Vec<StoredRecord> = Vec::new();
    let mut unreadable = 0;
    let first = i64::try_from(row.first_sequence).unwrap_or(i64::MAX);
    let last = i64::try_from(row.last_sequence).unwrap_or(i64::MAX);
    reader.for_each_line_between::<ExportError>(
        store_id,
        first,
        last,
        Some(&row.session_id),
        |line| {
            let sequence = u64::try_from(line.sequence).unwrap_or_default();
            match store::parse_line(line.line.into_bytes()) {
                Ok((raw, value, _)) => {
                    if SessionKey::of(&value).as_ref() == Some(&key) {
                        records.push(StoredRecord {
                            segment: PathBuf::from(format!("postgresql:{store_id}")),
                            line: sequence,
                            sequence,
                            raw,
                            value,
                        });
                    }
                }
                Err(kind) => {
                    unreadable += 1;
                    tracing::warn!(%store_id, sequence, %kind, "an unreadable forwarded record");
                }
            }
            Ok(())
        },
    )?;
    if unreadable > 0 {
        return Err(ReviewError::Unreadable { count: unreadable }.into());
    }
    if records.is_empty() {
        return Err(ReviewError::NoSession(key.session_id.clone()).into());
    }
    let checkpoints = reader
        .checkpoints(store_id)?
        .into_iter()
        .map(|forwarded| Checkpoint {
            sequence: u64::try_from(forwarded.sequence).unwrap_or_default(),
            chain_hash: forwarded.chain_hash,
            segment: forwarded.segment,
            time: forwarded.time,
            key_id: forwarded.key_id,
            signature: forwarded.signature,
        })
        .collect();
    let label = format!("postgresql: {} store {store_id}", options.url);
    assemble_from(
        &store_id.to_string(),
        checkpoints,
        &label,
        key,
        records,
        outputs,
    )
}

fn log_warnings(warnings: &[u8]) {
    if !warnings.is_empty() {
        tracing::warn!(
            warnings = %String::from_utf8_lossy(warnings).trim_end(),
            "reading the store for an export"
        );
    }
}

/// The export of the one session that `session` (its id, or the start of it; an exact
/// id wins over longer ids it starts) and `user` (name or uid) select; unreadable lines
/// of the store are warned about on `warnings` and fail the export.
pub fn export(
    store_dir: &Path,
    session: &str,
    user: Option<&str>,
    outputs: bool,
    warnings: &mut dyn Write,
) -> Result<Export, ExportError> {
    let (key, records) = session_records(store_dir, session, user, warnings)?;
    assemble(store_dir, key, records, outputs)
}

/// The export of `records`, all of the session `key`, in store order.
fn assemble(
    store_dir: &Path,
    key: SessionKey,
    records: Vec<StoredRecord>,
    outputs: bool,
) -> Result<Export, ExportError> {
    let (checkpoints, _) = store::read_checkpoints(store_dir, 0)?;
    let store_id = store::store_id(store_dir)?.to_string();
    let label = RecordSource::Store(store_dir.to_path_buf()).label();
    assemble_from(&store_id, checkpoints, &label, key, records, outputs)
}

/// The export of `records`, all of the session `key`, in the order of the store
/// `store_id` whose signed `checkpoints` they are covered by; `label` names where they
/// were read (the notebook's metadata).
fn assemble_from(
    store_id: &str,
    checkpoints: Vec<Checkpoint>,
    label: &str,
    key: SessionKey,
    records: Vec<StoredRecord>,
    outputs: bool,
) -> Result<Export, ExportError> {
    let session = key.session_id.as_str();
    let last = records
        .last()
        .map(|record| record.sequence)
        .ok_or_else(|| ReviewError::NoSession(session.to_owned()))?;
    let checkpoint = checkpoints
        .into_iter()
        .find(|checkpoint| checkpoint.sequence >= last)
        .ok_or(ExportError::NotCovered { last })?;
    let included: Vec<&StoredRecord> = records
        .iter()
        .filter(|record| outputs || holds_no_output(fields::action(&record.value)))
        .collect();
    let mut notebook =
        replay::notebook_of(included.iter().copied(), label, &LocalProcesses::default())
            .ok_or_else(|| ReviewError::NoSession(session.to_owned()))?;
    let proof = Proof {
        format: FORMAT.to_owned(),
        store_id: store_id.to_owned(),
        session_id: key.session_id.clone(),
        user_id: key.user_id.clone(),
        outputs,
        records: included
            .iter()
            .map(|record| ProvenRecord {
                sequence: record.sequence,
                line: record.raw.clone(),
            })
            .collect(),
        checkpoint,
    };
    let proof = serde_json::to_value(&proof)
        .map_err(|error| ReviewError::Output(std::io::Error::other(error)))?;
    if let Some(Value::Object(audit)) = notebook.pointer_mut("/metadata/jupyter_audit") {
        audit.insert(PROOF_KEY.into(), proof);
    }
    Ok(Export {
        file_name: file_name(&key.session_id, outputs),
        content_type: CONTENT_TYPE,
        bytes: replay::to_json(&notebook)?,
    })
}

/// A file name made of the session id's safe characters.
fn file_name(session_id: &str, outputs: bool) -> String {
    let safe: String = session_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(64)
        .collect();
    let suffix = if outputs { "" } else { "-no-outputs" };
    format!("jupyter-audit-{safe}{suffix}.ipynb")
}

/// The records of the one session selected (as replay selects it, except that an exact
/// id wins), in store order.
fn session_records(
    store_dir: &Path,
    session: &str,
    user: Option<&str>,
    warnings: &mut dyn Write,
) -> Result<(SessionKey, Vec<StoredRecord>), ExportError> {
    let source = RecordSource::Store(store_dir.to_path_buf());
    let filter = Filter {
        session: Some(session.to_owned()),
        user: user.map(str::to_owned),
        ..Filter::default()
    };
    let mut records: Vec<(SessionKey, StoredRecord)> = Vec::new();
    let report = source.scan(&filter, Prefilter::Sessions, warnings, |record| {
        let Some(key) = SessionKey::of(&record.value) else {
            return Ok(());
        };
        if !key.session_id.starts_with(session) {
            return Ok(());
        }
        if let Some(user) = user
            && fields::str_at(&record.value, &["user", "name"]) != Some(user)
            && key.user_id != user
        {
            return Ok(());
        }
        records.push((key, record));
        Ok(())
    })?;
    report.into_result()?;
    if records.iter().any(|(key, _)| key.session_id == session) {
        records.retain(|(key, _)| key.session_id == session);
    }
    let mut keys: Vec<&SessionKey> = records.iter().map(|(key, _)| key).collect();
    keys.sort();
    keys.dedup();
    let key = match keys.as_slice() {
        [] => return Err(ReviewError::NoSession(session.to_owned()).into()),
        [key] => (*key).clone(),
        several => {
            let list: Vec<String> = several
                .iter()
                .map(|key| format!("{} (uid {})", key.session_id, key.user_id))
                .collect();
            return Err(ReviewError::AmbiguousSession {
                prefix: session.to_owned(),
                matches: list.join(", "),
            }
            .into());
        }
    };
    let records = records.into_iter().map(|(_, record)| record).collect();
    Ok((key, records))
}

/// What `export` is asked for.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub store: PathBuf,
    /// The session id, or the start of it.
    pub session: String,
    /// The session's user (name or id), when several users' sessions share the id.
    pub user: Option<String>,
    pub outputs: bool,
    /// The file to write (`-`: stdout).
    pub output: PathBuf,
}

/// Runs `export`: writes the notebook with its proof (mode 0600, through a rename).
pub fn run_export(options: &ExportOptions) -> Result<(), ExportError> {
    let export = export(
        &options.store,
        &options.session,
        options.user.as_deref(),
        options.outputs,
        &mut std::io::stderr(),
    )?;
    if options.output == Path::new("-") {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&export.bytes)
            .and_then(|()| stdout.flush())
            .map_err(ReviewError::Output)?;
    } else {
        replay::write_file(&options.output, &export.bytes)?;
    }
    Ok(())
}

/// The result of one check of `verify-export`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Verified(String),
    Failed(String),
    /// Cannot be decided from the export and the public key alone.
    Unproven(String),
}

/// What `verify-export` found, check by check.
#[derive(Debug, Clone, Default)]
pub struct ExportReport {
    /// What the export claims to be (session, user, records, checkpoint).
    pub subject: String,
    pub outcomes: Vec<Outcome>,
}

impl ExportReport {
    /// No check failed.
    pub fn passed(&self) -> bool {
        !self
            .outcomes
            .iter()
            .any(|outcome| matches!(outcome, Outcome::Failed(_)))
    }

    /// No check failed and nothing was left unproven.
    pub fn fully_proven(&self) -> bool {
        self.passed()
            && !self
                .outcomes
                .iter()
                .any(|outcome| matches!(outcome, Outcome::Unproven(_)))
    }

    fn verified(&mut self, text: impl Into<String>) {
        self.outcomes.push(Outcome::Verified(text.into()));
    }

    fn failed(&mut self, text: impl Into<String>) {
        self.outcomes.push(Outcome::Failed(text.into()));
    }

    fn unproven(&mut self, text: impl Into<String>) {
        self.outcomes.push(Outcome::Unproven(text.into()));
    }
}

impl std::fmt::Display for ExportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.subject.is_empty() {
            writeln!(f, "{}", self.subject)?;
        }
        for outcome in &self.outcomes {
            match outcome {
                Outcome::Verified(text) => writeln!(f, "verified: {text}")?,
                Outcome::Failed(text) => writeln!(f, "FAILED: {text}")?,
                Outcome::Unproven(text) => writeln!(f, "not verifiable offline: {text}")?,
            }
        }
        let verdict = if !self.passed() {
            "the export FAILED verification: it is not what the store signed"
        } else if self.fully_proven() {
            "the export is verified: every record and the notebook are what the store signed"
        } else {
            "no check failed; the parts above marked not verifiable offline are not proven"
        };
        writeln!(f, "{verdict}")
    }
}

/// Liveness for rebuilding offline: nothing can be checked.
struct Offline;

impl Liveness for Offline {
    fn alive(&self, _: &str, _: u32, _: Option<OffsetDateTime>) -> Option<bool> {
        None
    }
}

/// One exported record, checked.
struct Checked {
    sequence: u64,
    prev: record::ChainHash,
    hash: record::ChainHash,
}

/// Verifies the export `bytes` with the store's public key `key` (and, when known, the
/// store's id): see the module doc for what is and is not proven.
pub fn verify_export(bytes: &[u8], key: &VerifyingKey, store_id: Option<&str>) -> ExportReport {
    let mut report = ExportReport::default();
    let notebook: Value = match serde_json::from_slice(bytes) {
        Ok(notebook) => notebook,
        Err(error) => {
            report.failed(format!("the file is not JSON: {error}"));
            return report;
        }
    };
    let proof = match notebook
        .pointer(&format!("/metadata/jupyter_audit/{PROOF_KEY}"))
        .map(|proof| serde_json::from_value::<Proof>(proof.clone()))
    {
        Some(Ok(proof)) => proof,
        Some(Err(error)) => {
            report.failed(format!(
                "metadata.jupyter_audit.export is not a proof: {error}"
            ));
            return report;
        }
        None => {
            report.failed("no proof: the notebook has no metadata.jupyter_audit.export");
            return report;
        }
    };
    if proof.format != FORMAT {
        report.failed(format!(
            "the proof's format is {:?}, not {FORMAT:?}",
            proof.format
        ));
        return report;
    }
    report.subject = format!(
        "export of session {} (uid {}) of store {}: {} record(s), {}; checkpoint at sequence {} ({})",
        proof.session_id,
        proof.user_id,
        proof.store_id,
        proof.records.len(),
        if proof.outputs {
            "with outputs"
        } else {
            "without outputs"
        },
        proof.checkpoint.sequence,
        proof.checkpoint.time,
    );
    check_signature(&proof, key, store_id, &mut report);
    let Some((checked, records)) = check_records(&proof, &mut report) else {
        return report;
    };
    check_chain(&proof, &checked, &mut report);
    check_ends(&records, &mut report);
    check_notebook(&notebook, &records, &mut report);
    report
}

fn check_signature(
    proof: &Proof,
    key: &VerifyingKey,
    store_id: Option<&str>,
    report: &mut ExportReport,
) {
    match proof.checkpoint.check_signature(key) {
        Ok(()) => report.verified(format!(
            "the checkpoint (sequence {}, chain hash {}, {}) is signed by the store's key {}",
            proof.checkpoint.sequence,
            proof.checkpoint.chain_hash,
            proof.checkpoint.time,
            store::key_id(key)
        )),
        Err(error) => report.failed(format!("the checkpoint's signature: {error}")),
    }
    if let Some(store_id) = store_id {
        if store_id == proof.store_id {
            report.verified(format!("the export names this store ({store_id})"));
        } else {
            report.failed(format!(
                "the export names store {}, not this store ({store_id})",
                proof.store_id
            ));
        }
    }
}

/// Checks every record on its own: its hash, sequence, session and kind. Returns them
/// (None when there are none to go on with).
fn check_records(
    proof: &Proof,
    report: &mut ExportReport,
) -> Option<(Vec<Checked>, Vec<StoredRecord>)> {
    let expected = SessionKey {
        session_id: proof.session_id.clone(),
        user_id: proof.user_id.clone(),
    };
    let mut checked = Vec::new();
    let mut records = Vec::new();
    let mut problems = 0;
    for (index, proven) in proof.records.iter().enumerate() {
        let sequence = proven.sequence;
        let mut problem = |text: String| {
            problems += 1;
            report.failed(format!("record {sequence}: {text}"));
        };
        let unsealed = match record::unseal(proven.line.as_bytes()) {
            Ok(unsealed) => unsealed,
            Err(error) => {
                problem(error.to_owned());
                continue;
            }
        };
        if !unsealed.hash_matches() {
            problem("its chain hash is not SHA-256(prev || record): the record was changed".into());
            continue;
        }
        let (raw, value, stored_sequence) =
            match store::parse_line(proven.line.clone().into_bytes()) {
                Ok(parsed) => parsed,
                Err(error) => {
                    problem(error.to_string());
                    continue;
                }
            };
        if stored_sequence != sequence {
            problem(format!("the record says it is sequence {stored_sequence}"));
            continue;
        }
        if SessionKey::of(&value).as_ref() != Some(&expected) {
            problem("it is not a record of this session and user".into());
            continue;
        }
        if !proof.outputs && !holds_no_output(fields::action(&value)) {
            problem(format!(
                "a {} record in an export that says it has no outputs",
                fields::action(&value)
            ));
            continue;
        }
        if let Some(before) = checked.last().map(|c: &Checked| c.sequence)
            && sequence <= before
        {
            problem(format!("out of order (after {before})"));
            continue;
        }
        checked.push(Checked {
            sequence,
            prev: unsealed.prev,
            hash: unsealed.hash,
        });
        records.push(StoredRecord {
            segment: PathBuf::from("export"),
            line: u64::try_from(index + 1).unwrap_or(u64::MAX),
            sequence,
            raw,
            value,
        });
    }
    if checked.is_empty() {
        report.failed("the export holds no usable record");
        return None;
    }
    if problems == 0 {
        report.verified(format!(
            "{} record(s): each one's chain hash is SHA-256 of the previous hash and its bytes, \
             and each is of this session and user",
            checked.len()
        ));
    }
    Some((checked, records))
}

/// Checks the links between neighbouring records and to the checkpoint, and says which
/// runs of records the checkpoint authenticates.
fn check_chain(proof: &Proof, checked: &[Checked], report: &mut ExportReport) {
    // Runs of records that are neighbours in the store: (first index, last index).
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut broken = 0;
    for (index, record) in checked.iter().enumerate() {
        let linked = index > 0 && checked[index - 1].sequence + 1 == record.sequence;
        if linked && record.prev != checked[index - 1].hash {
            broken += 1;
            report.failed(format!(
                "record {} does not follow record {}: its chain.prev is not that record's hash",
                record.sequence,
                checked[index - 1].sequence
            ));
        }
        match runs.last_mut() {
            Some(run) if linked => run.1 = index,
            _ => runs.push((index, index)),
        }
    }
    if let Some(first) = checked.first()
        && first.sequence == 1
        && first.prev != record::GENESIS
    {
        broken += 1;
        report.failed("record 1 does not start the chain (its chain.prev is not zeros)");
    }
    if broken == 0 {
        report.verified(format!(
            "the links between records that are neighbours in the store ({} run(s) of \
             consecutive sequences)",
            runs.len()
        ));
    }
    let Some(last) = checked.last() else {
        return;
    };
    let checkpoint = &proof.checkpoint;
    let tail = runs.last().map(|run| run.0).unwrap_or_default();
    let authenticated_from = if checkpoint.sequence < last.sequence {
        report.failed(format!(
            "the checkpoint (sequence {}) is before the last record ({})",
            checkpoint.sequence, last.sequence
        ));
        None
    } else if checkpoint.sequence == last.sequence {
        if checkpoint.chain_hash_bytes() == Some(last.hash) {
            report.verified(format!(
                "the checkpoint signs the hash of record {}: records {}..={} are in the signed \
                 store exactly as exported, none of them added, removed or changed",
                last.sequence, checked[tail].sequence, last.sequence
            ));
            Some(tail)
        } else {
            report.failed(format!(
                "the checkpoint at sequence {} signs another chain hash than record {}'s",
                checkpoint.sequence, last.sequence
            ));
            None
        }
    } else {
        report.unproven(format!(
            "the link from record {} to the checkpoint at sequence {} crosses {} record(s) \
             that are not in the export (other sessions'{}): it can be checked only against \
             the store",
            last.sequence,
            checkpoint.sequence,
            checkpoint.sequence - last.sequence,
            if proof.outputs {
                ""
            } else {
                ", or left-out outputs"
            },
        ));
        None
    };
    let unauthenticated_end = authenticated_from.unwrap_or(checked.len());
    if unauthenticated_end > 0 {
        let hidden: u64 = runs
            .windows(2)
            .filter(|pair| pair[1].0 <= unauthenticated_end)
            .map(|pair| checked[pair[1].0].sequence - checked[pair[0].1].sequence - 1)
            .sum();
        report.unproven(format!(
            "records {}..={} ({} of them) are consistent but not authenticated by the \
             checkpoint: their chain reaches it only through {} record(s) not in the export{}",
            checked[0].sequence,
            checked[unauthenticated_end - 1].sequence,
            unauthenticated_end,
            hidden
                + if authenticated_from.is_none() {
                    checkpoint.sequence.saturating_sub(last.sequence)
                } else {
                    0
                },
            if authenticated_from.is_some() {
                ""
            } else {
                " and after the last record"
            },
        ));
    }
}

/// Whether the export starts where the session started and ends where it ended: a run
/// of records the checkpoint authenticates says nothing of records of the session before
/// or after it.
fn check_ends(records: &[StoredRecord], report: &mut ExportReport) {
    fn action(record: Option<&StoredRecord>) -> &str {
        record.map_or("", |record| fields::action(&record.value))
    }
    if action(records.first()) == Action::SessionStart.as_str() {
        report.verified("the export starts with the session's session_start");
    } else {
        report.unproven(
            "the export does not start with a session_start: whether the session has \
             earlier records is not known offline",
        );
    }
    if action(records.last()) == Action::SessionEnd.as_str() {
        report.verified("the export ends with the session's session_end");
    } else {
        report.unproven(
            "the export does not end with a session_end (a session still running, or cut \
             short): later records of the session are not covered",
        );
    }
}

/// Rebuilds the notebook from the records with replay's code and compares.
fn check_notebook(notebook: &Value, records: &[StoredRecord], report: &mut ExportReport) {
    let Some(rebuilt) = replay::notebook_of(records, "", &Offline) else {
        report.failed("the records do not make a notebook");
        return;
    };
    let cells = notebook.get("cells").and_then(Value::as_array);
    let rebuilt_cells = rebuilt.get("cells").and_then(Value::as_array);
    let (Some(cells), Some(rebuilt_cells)) = (cells, rebuilt_cells) else {
        report.failed("the notebook has no cells list");
        return;
    };
    let mut same = true;
    if cells.len() != rebuilt_cells.len() {
        same = false;
        report.failed(format!(
            "the notebook has {} cell(s), the records make {}",
            cells.len(),
            rebuilt_cells.len()
        ));
    }
    for (index, (cell, expected)) in cells.iter().zip(rebuilt_cells).enumerate() {
        if cell == expected {
            continue;
        }
        same = false;
        let differing: Vec<&str> = ["source", "outputs", "execution_count", "id", "metadata"]
            .into_iter()
            .filter(|key| cell.get(key) != expected.get(key))
            .collect();
        report.failed(format!(
            "cell {} ({}): its {} differ from what the records say",
            index + 1,
            expected["id"].as_str().unwrap_or_default(),
            if differing.is_empty() {
                "fields".to_owned()
            } else {
                differing.join(", ")
            }
        ));
    }
    let ended = rebuilt
        .pointer("/metadata/jupyter_audit/end")
        .is_some_and(|end| !end.is_null());
    let rest = |notebook: &Value| {
        let mut rest = notebook.clone();
        if let Some(object) = rest.as_object_mut() {
            object.remove("cells");
        }
        if let Some(Value::Object(audit)) = rest.pointer_mut("/metadata/jupyter_audit") {
            for key in NOT_FROM_RECORDS {
                audit.remove(key);
            }
            if !ended {
                for key in FROM_LIVENESS {
                    audit.remove(key);
                }
            }
        }
        rest
    };
    let (given, expected) = (rest(notebook), rest(&rebuilt));
    if given != expected {
        same = false;
        report.failed(format!(
            "the notebook's metadata differs from what the records say: {}",
            differing_keys(&given, &expected).join(", ")
        ));
    }
    if same {
        report.verified(format!(
            "the notebook's {} cell(s) (code, outputs, execution counts) and its metadata are \
             what replay makes of the records",
            cells.len()
        ));
    }
}

/// The paths (`metadata.jupyter_audit.user`, …) where two JSON values differ, down to
/// the keys of `metadata.jupyter_audit`.
fn differing_keys(given: &Value, expected: &Value) -> Vec<String> {
    fn walk(path: &str, depth: usize, given: &Value, expected: &Value, out: &mut Vec<String>) {
        match (given, expected) {
            (Value::Object(a), Value::Object(b)) if depth < 3 => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for key in keys {
                    let (x, y) = (a.get(key), b.get(key));
                    if x != y {
                        let inner = format!("{path}.{key}");
                        walk(
                            &inner,
                            depth + 1,
                            x.unwrap_or(&Value::Null),
                            y.unwrap_or(&Value::Null),
                            out,
                        );
                    }
                }
            }
            _ => out.push(path.trim_start_matches('.').to_owned()),
        }
    }
    let mut out = Vec::new();
    walk("", 0, given, expected, &mut out);
    out
}

/// Where `verify-export` takes the store's public key from.
#[derive(Debug, Clone)]
pub enum PublicKeySource {
    /// A file of 64 hex digits (what `export-key` prints).
    File(PathBuf),
    /// The store's `checkpoint.pub` (and its id, to compare).
    Store(PathBuf),
}

/// What `verify-export` is asked for.
#[derive(Debug, Clone)]
pub struct VerifyExportOptions {
    pub file: PathBuf,
    pub key: PublicKeySource,
}

/// Runs `verify-export`: reads the file and the key, and verifies.
pub fn run_verify_export(options: &VerifyExportOptions) -> Result<ExportReport, ExportError> {
    let bytes = std::fs::read(&options.file).map_err(|source| ExportError::ReadFile {
        path: options.file.clone(),
        source,
    })?;
    let (key, store_id) = match &options.key {
        PublicKeySource::File(path) => (store::read_public_key(path)?, None),
        PublicKeySource::Store(dir) => (
            store::read_public_key(&store::public_key_file(dir))?,
            Some(store::store_id(dir)?.to_string()),
        ),
    };
    let mut report = verify_export(&bytes, &key, store_id.as_deref());
    if let PublicKeySource::Store(dir) = &options.key
        && report.passed()
        && let Some(proof) = read_proof(&bytes)
    {
        check_against_store(&proof, dir, &mut report)?;
    }
    Ok(report)
}

/// The proof of an export, if it has one that reads.
fn read_proof(bytes: &[u8]) -> Option<Proof> {
    let notebook: Value = serde_json::from_slice(bytes).ok()?;
    let proof = notebook.pointer(&format!("/metadata/jupyter_audit/{PROOF_KEY}"))?;
    serde_json::from_value(proof.clone()).ok()
}

/// With the store at hand, what offline checks leave open: every exported line is the
/// store's line at its sequence, the chain from the first exported record through the
/// records not exported recomputes to the checkpoint's signed hash, and the store holds
/// no record of the session that the export should carry and does not. When that holds,
/// nothing is left unproven.
pub fn check_against_store(
    proof: &Proof,
    dir: &Path,
    report: &mut ExportReport,
) -> Result<(), ExportError> {
    let (Some(first), Some(end)) = (proof.records.first(), proof.checkpoint.chain_hash_bytes())
    else {
        return Ok(());
    };
    let first = first.sequence;
    let last = proof.records.last().map_or(first, |record| record.sequence);
    let expected = SessionKey {
        session_id: proof.session_id.clone(),
        user_id: proof.user_id.clone(),
    };
    let exported: std::collections::HashMap<u64, &str> = proof
        .records
        .iter()
        .map(|record| (record.sequence, record.line.as_str()))
        .collect();
    let before = report.outcomes.len();
    let mut previous: Option<(u64, record::ChainHash)> = None;
    let mut reached = false;
    let mut later = 0u64;
    for stored in store::Reader::open(dir)? {
        let stored = match stored {
            Ok(stored) => stored,
            Err(error) => {
                report.failed(format!("the store: {error}"));
                continue;
            }
        };
        let sequence = stored.sequence;
        let of_session = SessionKey::of(&stored.value).as_ref() == Some(&expected);
        let should_be_exported =
            of_session && (proof.outputs || holds_no_output(fields::action(&stored.value)));
        // After the last exported record: a running session goes on after its export.
        if should_be_exported && sequence > last {
            later += 1;
            continue;
        }
        match exported.get(&sequence) {
            Some(line) if *line != stored.raw => report.failed(format!(
                "record {sequence} is not the store's record at that sequence"
            )),
            None if should_be_exported => report.failed(format!(
                "the store holds record {sequence} of this session ({}), which the export leaves out",
                fields::action(&stored.value)
            )),
            _ => {}
        }
        if sequence < first || sequence > proof.checkpoint.sequence {
            continue;
        }
        let Ok(unsealed) = record::unseal(stored.raw.as_bytes()) else {
            report.failed(format!(
                "the store's record {sequence} is not a stored line"
            ));
            continue;
        };
        if !unsealed.hash_matches() {
            report.failed(format!(
                "the store's record {sequence} does not match its hash"
            ));
        }
        if let Some((at, hash)) = previous
            && (at + 1 != sequence || unsealed.prev != hash)
        {
            report.failed(format!(
                "the store's chain breaks between records {at} and {sequence}"
            ));
        }
        previous = Some((sequence, unsealed.hash));
        if sequence == proof.checkpoint.sequence {
            reached = true;
            if unsealed.hash != end {
                report.failed(format!(
                    "the store's chain hash at {sequence} is not the one the checkpoint signs"
                ));
            }
        }
    }
    if !reached {
        report.failed(format!(
            "the store does not reach the checkpoint's sequence {}",
            proof.checkpoint.sequence
        ));
    }
    if report.outcomes.len() == before {
        report
            .outcomes
            .retain(|outcome| !matches!(outcome, Outcome::Unproven(_)));
        report.verified(format!(
            "against the store: every exported record is the store's line at its sequence, \
             the chain from record {first} to the checkpoint at {} (through the records not \
             exported) recomputes to the signed hash, and the export leaves out no record of \
             the session it should carry",
            proof.checkpoint.sequence
        ));
        if later > 0 {
            report.unproven(format!(
                "the store holds {later} record(s) of the session after the export's last: \
                 the session went on after the export (or the export was cut short)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreConfig, StoreHandle};
    use serde_json::{Map, json};

    fn record(session: &str, user: &str, action: &str, jupyter: Value) -> Map<String, Value> {
        let mut fields = jupyter;
        fields["session_id"] = json!(session);
        fields["kernel_name"] = json!("python3");
        fields["kernel_id"] = json!(format!("k-{session}"));
        let value = json!({
            "@timestamp": "2026-05-01T12:00:00Z",
            "event": {"action": action, "kind": "event"},
            "host": {"name": "node-1"},
            "jupyter": fields,
            "process": {"pid": 4242, "user": {"id": format!("uid-{user}")}},
            "user": {"name": user, "verified_by": "jupyterhub"},
        });
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    /// A session: start, a cell that prints, a cell that fails, end.
    fn session(session: &str, user: &str) -> Vec<Map<String, Value>> {
        let r1 = format!("{session}-r1");
        let r2 = format!("{session}-r2");
        vec![
            record(session, user, "session_start", json!({})),
            record(
                session,
                user,
                "execute_request",
                json!({"msg_id": r1, "code": "print('total', 42)"}),
            ),
            record(
                session,
                user,
                "execute_input",
                json!({"parent_msg_id": r1, "code": "print('total', 42)", "execution_count": 1}),
            ),
            record(
                session,
                user,
                "stream",
                json!({"parent_msg_id": r1, "stream": "stdout", "text": "total 42\n"}),
            ),
            record(
                session,
                user,
                "execute_reply",
                json!({"parent_msg_id": r1, "status": "ok", "execution_count": 1}),
            ),
            record(
                session,
                user,
                "execute_request",
                json!({"msg_id": r2, "code": "1/0"}),
            ),
            record(
                session,
                user,
                "error",
                json!({"parent_msg_id": r2, "ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": "Traceback\nZeroDivisionError"}),
            ),
            record(
                session,
                user,
                "execute_reply",
                json!({"parent_msg_id": r2, "status": "error", "execution_count": 2, "evalue": "division by zero"}),
            ),
            record(
                session,
                user,
                "session_end",
                json!({"exit_code": 0, "exit_signal": null, "orphaned": false}),
            ),
        ]
    }

    fn append(store: &StoreHandle, records: Vec<Map<String, Value>>) {
        for record in records {
            store.append_blocking(record).unwrap();
        }
    }

    /// A store with alice's session alone, then bob's and carol's interleaved; closed
    /// (the shutdown signs a checkpoint at the last record).
    fn store() -> (tempfile::TempDir, PathBuf, VerifyingKey) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let store = store::open(StoreConfig::new(&dir)).unwrap().0;
        append(&store, session("alice-s", "alice"));
        // A checkpoint right at alice's last record, as the collector's timer makes one.
        store.shutdown_blocking().unwrap();
        let store = store::open(StoreConfig::new(&dir)).unwrap().0;
        for (bob, carol) in session("bob-s", "bob")
            .into_iter()
            .zip(session("carol-s", "carol"))
        {
            append(&store, vec![bob, carol]);
        }
        store.shutdown_blocking().unwrap();
        let key = store::read_public_key(&store::public_key_file(&dir)).unwrap();
        (tmp, dir, key)
    }

    fn exported(dir: &Path, session: &str, outputs: bool) -> Value {
        let export = export(dir, session, None, outputs, &mut Vec::new()).unwrap();
        serde_json::from_slice(&export.bytes).unwrap()
    }

    fn verify(notebook: &Value, key: &VerifyingKey) -> ExportReport {
        verify_export(&serde_json::to_vec(notebook).unwrap(), key, None)
    }

    fn failures(report: &ExportReport) -> Vec<String> {
        report
            .outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                Outcome::Failed(text) => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    fn assert_fails(report: &ExportReport, needle: &str) {
        let failed = failures(report);
        assert!(
            failed.iter().any(|text| text.contains(needle)),
            "expected a failure about {needle:?}, got:\n{report}"
        );
    }

    #[test]
    fn export_is_the_replayed_notebook_and_verifies_fully_when_the_checkpoint_is_at_its_end() {
        let (_tmp, dir, key) = store();
        let notebook = exported(&dir, "alice-s", true);
        let (replayed, _) = replay::build(
            &RecordSource::Store(dir.clone()),
            "alice-s",
            None,
            &LocalProcesses::default(),
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(notebook["cells"], replayed["cells"]);
        assert_eq!(notebook["cells"][0]["source"], "print('total', 42)");
        assert_eq!(notebook["cells"][0]["outputs"][0]["text"], "total 42\n");
        assert_eq!(
            notebook["cells"][1]["outputs"][0]["ename"],
            "ZeroDivisionError"
        );
        let proof = &notebook["metadata"]["jupyter_audit"]["export"];
        assert_eq!(proof["records"].as_array().unwrap().len(), 9);
        assert_eq!(proof["checkpoint"]["sequence"], 9);

        let report = verify(&notebook, &key);
        assert!(report.fully_proven(), "{report}");
        assert!(
            report
                .to_string()
                .contains("records 1..=9 are in the signed store")
        );
    }

    #[test]
    fn interleaved_sessions_verify_but_say_what_is_not_proven_offline() {
        let (_tmp, dir, key) = store();
        let notebook = exported(&dir, "bob-s", true);
        let proof = &notebook["metadata"]["jupyter_audit"]["export"];
        // Only bob's records: carol's stay out.
        let lines = proof["records"].as_array().unwrap();
        assert_eq!(lines.len(), 9);
        assert!(
            lines
                .iter()
                .all(|r| !r["line"].as_str().unwrap().contains("carol"))
        );
        let report = verify(&notebook, &key);
        assert!(report.passed(), "{report}");
        assert!(!report.fully_proven(), "{report}");
        // Carol's last record follows bob's: the checkpoint is one record later.
        assert!(
            report.to_string().contains("crosses 1 record(s)"),
            "{report}"
        );
    }

    #[test]
    fn without_outputs_neither_the_notebook_nor_the_proof_holds_an_output() {
        let (_tmp, dir, key) = store();
        let notebook = exported(&dir, "alice-s", false);
        for cell in notebook["cells"].as_array().unwrap() {
            assert_eq!(cell["outputs"], json!([]));
        }
        assert_eq!(notebook["cells"][1]["source"], "1/0");
        let text = serde_json::to_string(&notebook).unwrap();
        assert!(!text.contains("total 42"), "an output leaked: {text}");
        assert!(
            !text.contains("division by zero"),
            "an error leaked: {text}"
        );
        let report = verify(&notebook, &key);
        assert!(report.passed(), "{report}");
        // The left-out outputs are gaps in the chain.
        assert!(!report.fully_proven(), "{report}");
    }

    #[test]
    fn a_changed_cell_code_or_output_is_detected() {
        let (_tmp, dir, key) = store();
        let notebook = exported(&dir, "alice-s", true);

        let mut code = notebook.clone();
        code["cells"][0]["source"] = json!("print('harmless')");
        assert_fails(&verify(&code, &key), "cell 1 (audit-2): its source differ");

        let mut output = notebook.clone();
        output["cells"][0]["outputs"][0]["text"] = json!("total 41\n");
        assert_fails(&verify(&output, &key), "its outputs differ");

        let mut dropped = notebook.clone();
        dropped["cells"].as_array_mut().unwrap().remove(1);
        assert_fails(&verify(&dropped, &key), "the records make 2");

        let mut metadata = notebook;
        metadata["metadata"]["jupyter_audit"]["user"]["name"] = json!("mallory");
        assert_fails(&verify(&metadata, &key), "metadata.jupyter_audit.user");
    }

    fn lines(notebook: &mut Value) -> &mut Vec<Value> {
        notebook["metadata"]["jupyter_audit"]["export"]["records"]
            .as_array_mut()
            .unwrap()
    }

    #[test]
    fn a_changed_record_or_hash_is_detected_even_when_rehashed() {
        let (_tmp, dir, key) = store();
        let notebook = exported(&dir, "alice-s", true);
        let line = |notebook: &Value, index: usize| {
            notebook["metadata"]["jupyter_audit"]["export"]["records"][index]["line"]
                .as_str()
                .unwrap()
                .to_owned()
        };

        // The code changed in the record and in the cell alike.
        let mut record = notebook.clone();
        lines(&mut record)[1]["line"] = json!(line(&notebook, 1).replace("42", "41"));
        record["cells"][0]["source"] = json!("print('total', 41)");
        assert_fails(&verify(&record, &key), "record 2: its chain hash");

        // A forger who recomputes the hash breaks the link to the next record.
        let mut rehashed = record.clone();
        let unsealed = record::unseal(line(&notebook, 1).as_bytes()).unwrap();
        let body = String::from_utf8(unsealed.body)
            .unwrap()
            .replace("42", "41");
        let hash = record::chain_hash(&unsealed.prev, body.as_bytes());
        let forged = format!(
            "{},\"chain\":{{\"prev\":\"{}\",\"hash\":\"{}\"}}}}",
            &body[..body.len() - 1],
            hex::encode(unsealed.prev),
            hex::encode(hash)
        );
        lines(&mut rehashed)[1]["line"] = json!(forged);
        let report = verify(&rehashed, &key);
        assert_fails(&report, "record 3 does not follow record 2");

        // A changed hash.
        let mut hash_changed = notebook.clone();
        let original = line(&notebook, 8);
        let at = original.len() - 10;
        let flipped = if &original[at..at + 1] == "0" {
            "1"
        } else {
            "0"
        };
        lines(&mut hash_changed)[8]["line"] = json!(format!(
            "{}{flipped}{}",
            &original[..at],
            &original[at + 1..]
        ));
        assert_fails(&verify(&hash_changed, &key), "record 9: its chain hash");

        // A record of the session taken out of the proof (and its cell's output).
        let mut removed = notebook.clone();
        lines(&mut removed).remove(3);
        removed["cells"][0]["outputs"] = json!([]);
        removed["metadata"]["jupyter_audit"]["records"] = json!(8);
        let report = verify(&removed, &key);
        // Offline, the gap it leaves is not a failure: only what follows it is proven.
        assert!(report.passed(), "{report}");
        assert!(!report.fully_proven(), "{report}");
        assert!(
            report
                .to_string()
                .contains("records 5..=9 are in the signed store")
        );

        // Another session's record slipped in.
        let mut foreign = notebook;
        let bob = exported(&dir, "bob-s", true);
        lines(&mut foreign).push(bob["metadata"]["jupyter_audit"]["export"]["records"][0].clone());
        assert_fails(&verify(&foreign, &key), "not a record of this session");
    }

    #[test]
    fn a_forged_checkpoint_or_another_key_is_detected() {
        let (_tmp, dir, key) = store();
        let notebook = exported(&dir, "alice-s", true);
        let checkpoint = "/metadata/jupyter_audit/export/checkpoint";

        let mut signature = notebook.clone();
        let field = signature
            .pointer_mut(&format!("{checkpoint}/signature"))
            .unwrap();
        let mut text = field.as_str().unwrap().to_owned();
        let replaced = if text.starts_with('A') { "B" } else { "A" };
        text.replace_range(0..1, replaced);
        *field = json!(text);
        assert_fails(&verify(&signature, &key), "signature does not verify");

        let mut moved = notebook.clone();
        *moved.pointer_mut(&format!("{checkpoint}/time")).unwrap() = json!("2030-01-01T00:00:00Z");
        assert_fails(&verify(&moved, &key), "signature does not verify");

        let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
        assert_fails(&verify(&notebook, &other), "names key");

        let report = verify_export(
            &serde_json::to_vec(&notebook).unwrap(),
            &key,
            Some("00000000-0000-0000-0000-000000000000"),
        );
        assert_fails(&report, "not this store");
    }

    fn against_store(notebook: &Value, dir: &Path, key: &VerifyingKey) -> ExportReport {
        let bytes = serde_json::to_vec(notebook).unwrap();
        let mut report = verify_export(&bytes, key, None);
        check_against_store(&read_proof(&bytes).unwrap(), dir, &mut report).unwrap();
        report
    }

    #[test]
    fn with_the_store_what_offline_checks_leave_open_is_proven_or_caught() {
        let (_tmp, dir, key) = store();
        for outputs in [true, false] {
            let notebook = exported(&dir, "bob-s", outputs);
            assert!(!verify(&notebook, &key).fully_proven());
            let report = against_store(&notebook, &dir, &key);
            assert!(report.fully_proven(), "{report}");
            assert!(report.to_string().contains("against the store"), "{report}");
        }

        // A record of the session left out of the proof, with what it showed: consistent
        // offline, caught against the store.
        let mut removed = exported(&dir, "bob-s", true);
        lines(&mut removed).remove(3);
        removed["cells"][0]["outputs"] = json!([]);
        removed["metadata"]["jupyter_audit"]["records"] = json!(8);
        assert!(
            verify(&removed, &key).passed(),
            "{}",
            verify(&removed, &key)
        );
        assert_fails(
            &against_store(&removed, &dir, &key),
            "which the export leaves out",
        );

        // A record rewritten and rehashed, with its cell: offline only the broken link to
        // a neighbour could show it; the store does.
        let mut rewritten = exported(&dir, "bob-s", true);
        let line = rewritten["metadata"]["jupyter_audit"]["export"]["records"][1]["line"]
            .as_str()
            .unwrap()
            .to_owned();
        let unsealed = record::unseal(line.as_bytes()).unwrap();
        let body = String::from_utf8(unsealed.body)
            .unwrap()
            .replace("42", "41");
        let hash = record::chain_hash(&unsealed.prev, body.as_bytes());
        lines(&mut rewritten)[1]["line"] = json!(format!(
            "{},\"chain\":{{\"prev\":\"{}\",\"hash\":\"{}\"}}}}",
            &body[..body.len() - 1],
            hex::encode(unsealed.prev),
            hex::encode(hash)
        ));
        rewritten["cells"][0]["source"] = json!("print('total', 41)");
        assert!(
            verify(&rewritten, &key).passed(),
            "bob's records are not neighbours"
        );
        assert_fails(
            &against_store(&rewritten, &dir, &key),
            "is not the store's record at that sequence",
        );
    }

    #[test]
    fn the_consoles_range_export_reads_only_the_segments_of_the_session() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let config = StoreConfig {
            segment_max_bytes: 2000,
            ..StoreConfig::new(&dir)
        };
        let store = store::open(config).unwrap().0;
        append(&store, session("alice-s", "alice"));
        append(&store, session("bob-s", "bob"));
        store.shutdown_blocking().unwrap();

        let whole = export(&dir, "bob-s", None, true, &mut Vec::new()).unwrap();
        let notebook: Value = serde_json::from_slice(&whole.bytes).unwrap();
        let sequences: Vec<u64> = notebook["metadata"]["jupyter_audit"]["export"]["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|record| record["sequence"].as_u64().unwrap())
            .collect();
        let range = sequences[0]..=sequences[sequences.len() - 1];
        let bob = SessionKey {
            session_id: "bob-s".into(),
            user_id: "uid-bob".into(),
        };
        let within = export_session_within(&dir, &bob, range.clone(), true).unwrap();
        assert_eq!(within.bytes, whole.bytes);
        assert_eq!(within.file_name, "jupyter-audit-bob-s.ipynb");

        // Alice's first segment is not read at all: damaged, it fails a whole scan, not
        // the range export.
        let segments = crate::store::layout::list_segments(&dir).unwrap();
        assert!(segments.len() > 2, "{segments:?}");
        let first = &segments[0].path;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(first, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(first, "not a record\n").unwrap();
        assert!(export(&dir, "bob-s", None, true, &mut Vec::new()).is_err());
        let within = export_session_within(&dir, &bob, range.clone(), true).unwrap();
        assert_eq!(within.bytes, whole.bytes);
        let mallory = SessionKey {
            user_id: "uid-mallory".into(),
            ..bob
        };
        assert!(matches!(
            export_session_within(&dir, &mallory, range, true),
            Err(ExportError::Review(ReviewError::NoSession(_)))
        ));
    }

    #[test]
    fn a_running_session_verifies_whatever_its_state_was_at_export() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let store = store::open(StoreConfig::new(&dir)).unwrap().0;
        // This process, on this host: the exporter sees the proxy running.
        let host = nix::unistd::gethostname()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let now = OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let mut records = session("live-s", "alice");
        records.pop();
        for record in &mut records {
            record.insert("@timestamp".into(), json!(now));
            record.insert("host".into(), json!({"name": host}));
            record.insert(
                "process".into(),
                json!({"pid": std::process::id(), "user": {"id": "uid-alice"}}),
            );
        }
        append(&store, records);
        store.shutdown_blocking().unwrap();
        let key = store::read_public_key(&store::public_key_file(&dir)).unwrap();
        let notebook = exported(&dir, "live-s", true);
        assert_eq!(notebook["metadata"]["jupyter_audit"]["state"], "running");
        let report = verify(&notebook, &key);
        assert!(report.passed(), "{report}");
        // All of it is authenticated, but without a session_end nothing says it is all.
        let unproven: Vec<&Outcome> = report
            .outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Outcome::Unproven(_)))
            .collect();
        assert_eq!(unproven.len(), 1, "{report}");
        assert!(
            report
                .to_string()
                .contains("does not end with a session_end")
        );
    }

    #[test]
    fn an_export_cut_short_at_a_checkpoint_is_not_taken_for_the_whole_session() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let mut records = session("alice-s", "alice");
        let rest = records.split_off(5);
        let store = store::open(StoreConfig::new(&dir)).unwrap().0;
        append(&store, records);
        // A checkpoint in the middle of the session (as the timer makes them).
        store.shutdown_blocking().unwrap();
        let store = store::open(StoreConfig::new(&dir)).unwrap().0;
        append(&store, rest);
        store.shutdown_blocking().unwrap();
        let key = store::read_public_key(&store::public_key_file(&dir)).unwrap();

        // An exporter who leaves out the session's last cell: records 1..=5, under the
        // checkpoint signed at 5.
        let (session_key, mut all) =
            session_records(&dir, "alice-s", None, &mut Vec::new()).unwrap();
        all.truncate(5);
        let cut = assemble(&dir, session_key, all, true).unwrap();
        let cut: Value = serde_json::from_slice(&cut.bytes).unwrap();
        assert_eq!(cut["cells"].as_array().unwrap().len(), 1);
        let report = verify(&cut, &key);
        assert!(report.passed(), "{report}");
        assert!(!report.fully_proven(), "{report}");
        assert!(
            report
                .to_string()
                .contains("does not end with a session_end")
        );
        let report = against_store(&cut, &dir, &key);
        assert!(!report.fully_proven(), "{report}");
        assert!(
            report
                .to_string()
                .contains("4 record(s) of the session after")
        );
    }

    #[test]
    fn a_notebook_without_a_proof_fails() {
        let (_tmp, _dir, key) = store();
        let report = verify(&json!({"cells": [], "metadata": {}}), &key);
        assert_fails(&report, "no proof");
        assert!(!report.passed());
        assert_fails(&verify_export(b"not json", &key, None), "not JSON");
    }

    #[test]
    fn a_session_after_the_last_checkpoint_is_not_exported_yet() {
        let (_tmp, dir, _key) = store();
        // Re-opened and appended to, without the shutdown's checkpoint yet.
        let store = store::open(StoreConfig::new(&dir)).unwrap().0;
        append(&store, session("dave-s", "dave"));
        let error = export(&dir, "dave-s", None, true, &mut Vec::new()).unwrap_err();
        assert!(matches!(error, ExportError::NotCovered { .. }), "{error}");
        store.shutdown_blocking().unwrap();
        assert!(export(&dir, "dave-s", None, true, &mut Vec::new()).is_ok());
        assert_eq!(
            file_name("a/b..c", false),
            "jupyter-audit-abc-no-outputs.ipynb"
        );
    }
}
