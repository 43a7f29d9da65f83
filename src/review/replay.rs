//! `jupyter-audit replay`: a session rebuilt as an nbformat 4.5 notebook of what ran, in
//! the order it ran, with the outputs as a frontend displayed them.
//!
//! - One code cell per `execute_request` (silent ones too), in the order they were
//!   recorded: `source` is the code, `execution_count` comes from `execute_input` (else
//!   `execute_reply`), the cell id is the frontend's `cellId` when it is a valid nbformat
//!   id not used yet in this notebook (a cell run twice appears twice), else
//!   `audit-<sequence>`. `metadata.jupyter_audit` keeps the request's msg_id, sequence,
//!   time, reply status and duration.
//! - Outputs are the records whose `parent_msg_id` is that request, applied like a
//!   frontend does: consecutive stream outputs of the same name are merged;
//!   `clear_output` clears the cell at once, or with `wait` just before its next output;
//!   `update_display_data` replaces the data of every output shown with that
//!   `display_id`, in whichever cell it is.
//! - What the size policy did not keep is said, not invented: a binary MIME type kept as
//!   SHA-256 and size becomes a `text/plain` line `<image/png: N bytes, sha256 …, not
//!   kept>` (the base64 is used when the store kept it), a shortened text comes back as
//!   head, `… [N bytes omitted, sha256 …] …`, tail.
//! - A request refused because it could not be recorded is a cell with an error output
//!   `ExecutionRefused`, so the attempt is visible (its code too, once the proxy could
//!   store it late).
//! - Records the proxy sent twice after a reconnection (`jupyter.resent`) count once.
//!
//! The notebook's metadata has the kernelspec name, the language when the kernel's
//! command line makes it plain, and `jupyter_audit`: session, user, host, start and end,
//! the store and the range of sequences the notebook was built from.
//!
//! `-o FILE` is written through a temporary file renamed into place, readable by its
//! owner only (mode 0600: it holds audit data); `-o -` writes to stdout.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::filter::Filter;
use super::scan::ScanReport;
use super::sessions::{Liveness, LocalProcesses, Session, SessionIndex, SessionKey};
use super::source::{Prefilter, RecordSource};
use super::{ReviewError, fields};
use crate::audit::events::{self, Action};
use crate::audit::{InvalidBase64, KeptBytes};
use crate::store::StoredRecord;

/// The ename of the error output shown for a refused execution.
pub const REFUSED_ENAME: &str = "ExecutionRefused";

/// One output of a cell, with the display id it can be updated by.
#[derive(Debug, Clone)]
struct Output {
    value: Map<String, Value>,
    display_id: Option<String>,
}

#[derive(Debug, Clone)]
struct Cell {
    id: String,
    source: String,
    execution_count: Option<u64>,
    outputs: Vec<Output>,
    /// `clear_output(wait=True)` seen: clear before the next output.
    clear_pending: bool,
    metadata: Map<String, Value>,
    /// Made for a refusal before (or without) its request's record.
    placeholder: bool,
}

impl Cell {
    fn audit(&mut self) -> &mut Map<String, Value> {
        let entry = self
            .metadata
            .entry("jupyter_audit")
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        match entry {
            Value::Object(map) => map,
            _ => unreachable!("made an object above"),
        }
    }

    /// Adds an output the way a frontend's output area does.
    fn push(&mut self, output: Output) {
        if self.clear_pending {
            self.outputs.clear();
            self.clear_pending = false;
        }
        if output.value.get("output_type") == Some(&json!("stream"))
            && let Some(last) = self.outputs.last_mut()
            && last.value.get("output_type") == Some(&json!("stream"))
            && last.value.get("name") == output.value.get("name")
        {
            let more = output.value.get("text").and_then(Value::as_str);
            if let (Some(Value::String(text)), Some(more)) = (last.value.get_mut("text"), more) {
                text.push_str(more);
                return;
            }
        }
        self.outputs.push(output);
    }
}

/// Builds the notebook of one session from its records, in store order.
#[derive(Debug, Default)]
pub struct NotebookBuilder {
    cells: Vec<Cell>,
    /// execute_request msg_id → its cell.
    by_request: HashMap<String, usize>,
    /// display_id → the cells that showed it.
    displays: HashMap<String, BTreeSet<usize>>,
    used_ids: HashSet<String>,
    /// (action, msg_id) of every record, to recognise resent duplicates.
    seen: HashSet<(String, String)>,
    language: Option<&'static str>,
    kernel_name: Option<String>,
    /// Outputs whose parent is not an execution of this session (widget callbacks, …).
    unattached_outputs: u64,
}

/// Whether `id` is a valid nbformat 4.5 cell id.
pub fn valid_cell_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The language of a kernel, when its command line makes it plain.
fn language_of(argv: &[String]) -> Option<&'static str> {
    let words: Vec<String> = argv.iter().map(|word| word.to_ascii_lowercase()).collect();
    let has = |needle: &str| words.iter().any(|word| word.contains(needle));
    if has("ipykernel") {
        Some("python")
    } else if has("irkernel") {
        Some("R")
    } else if has("ijulia") {
        Some("julia")
    } else if has("evcxr") {
        Some("rust")
    } else {
        None
    }
}

/// A MIME bundle as stored, turned back into one nbformat accepts.
pub fn mime_bundle(stored: Option<&Value>) -> Map<String, Value> {
    let mut bundle = Map::new();
    let entries = match stored {
        Some(Value::Object(entries)) => entries,
        Some(other) => {
            let text = fields::stored_text(other)
                .map(|text| text.into_owned())
                .unwrap_or_else(|| other.to_string());
            bundle.insert("text/plain".into(), Value::String(text));
            return bundle;
        }
        None => return bundle,
    };
    let mut placeholders = Vec::new();
    for (mime, kept) in entries {
        let is_json = mime == "application/json" || mime.ends_with("+json");
        if let Some(text) = fields::stored_text(kept) {
            bundle.insert(mime.clone(), Value::String(text.into_owned()));
            continue;
        }
        if let Some(InvalidBase64 { invalid_base64 }) = InvalidBase64::read(kept) {
            let text = fields::kept_text(invalid_base64).into_owned();
            bundle.insert(mime.clone(), Value::String(text));
            continue;
        }
        if let (Some(bytes), false) = (KeptBytes::read(kept), is_json) {
            match bytes.base64 {
                Some(base64) => {
                    bundle.insert(mime.clone(), Value::String(base64));
                }
                None => placeholders.push(format!(
                    "<{mime}: {} bytes, sha256 {}, not kept>",
                    bytes.size, bytes.sha256
                )),
            }
            continue;
        }
        // JSON MIME types may hold any JSON; every other type must be text.
        let value = if is_json {
            kept.clone()
        } else {
            Value::String(kept.to_string())
        };
        bundle.insert(mime.clone(), value);
    }
    if !placeholders.is_empty() {
        if let Some(Value::String(plain)) = bundle.get("text/plain") {
            placeholders.push(plain.clone());
        }
        bundle.insert("text/plain".into(), Value::String(placeholders.join("\n")));
    }
    bundle
}

impl NotebookBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one record of the session.
    pub fn add(&mut self, record: &StoredRecord) {
        let value = &record.value;
        let action = fields::action(value);
        if let Some(msg_id) = fields::jupyter(value, "msg_id") {
            let first = self.seen.insert((action.to_owned(), msg_id.to_owned()));
            let resent = fields::at(value, &["jupyter", "resent"]) == Some(&Value::Bool(true));
            if resent && !first {
                return;
            }
        }
        if self.kernel_name.is_none() {
            self.kernel_name = fields::jupyter(value, "kernel_name").map(str::to_owned);
        }
        let parent = fields::jupyter(value, "parent_msg_id").map(str::to_owned);
        let field = |key: &str| fields::at(value, &["jupyter", key]);
        if let Some(event) = Action::from_name(action) {
            self.event(event, record);
            return;
        }
        match action {
            "execute_request" => self.request(record),
            "execute_input" => {
                let count = field("execution_count").and_then(Value::as_u64);
                if let Some(cell) = self.cell_of(parent.as_deref())
                    && count.is_some()
                {
                    cell.execution_count = count;
                }
            }
            "execute_reply" => {
                if let Some(cell) = self.cell_of(parent.as_deref()) {
                    if cell.execution_count.is_none() {
                        cell.execution_count = field("execution_count").and_then(Value::as_u64);
                    }
                    for key in ["status", "duration_ms"] {
                        if let Some(kept) = field(key) {
                            cell.audit().insert(key.into(), kept.clone());
                        }
                    }
                }
            }
            "stream" => {
                let output = json!({
                    "output_type": "stream",
                    "name": field("stream").and_then(Value::as_str).unwrap_or("stdout"),
                    "text": field("text").and_then(fields::stored_text).unwrap_or_default(),
                });
                self.output(parent.as_deref(), output, None);
            }
            "display_data" | "execute_result" => {
                let mut output = json!({
                    "output_type": action,
                    "data": mime_bundle(field("data")),
                    "metadata": {},
                });
                if action == "execute_result" {
                    output["execution_count"] =
                        json!(field("execution_count").and_then(Value::as_u64));
                }
                let display_id = fields::jupyter(value, "display_id").map(str::to_owned);
                self.output(parent.as_deref(), output, display_id);
            }
            "error" => {
                let traceback: Vec<String> = field("traceback")
                    .and_then(fields::stored_text)
                    .map(|text| text.split('\n').map(str::to_owned).collect())
                    .unwrap_or_default();
                let output = json!({
                    "output_type": "error",
                    "ename": fields::jupyter(value, "ename").unwrap_or_default(),
                    "evalue": field("evalue").and_then(fields::stored_text).unwrap_or_default(),
                    "traceback": traceback,
                });
                self.output(parent.as_deref(), output, None);
            }
            "clear_output" => {
                let wait = field("wait") == Some(&Value::Bool(true));
                if let Some(cell) = self.cell_of(parent.as_deref()) {
                    if wait {
                        cell.clear_pending = true;
                    } else {
                        cell.outputs.clear();
                        cell.clear_pending = false;
                    }
                }
            }
            "update_display_data" => {
                if let Some(display_id) = fields::jupyter(value, "display_id") {
                    self.update(display_id, mime_bundle(field("data")));
                }
            }
            _ => {}
        }
    }

    /// Adds a record of an event that is not a message.
    fn event(&mut self, action: Action, record: &StoredRecord) {
        match action {
            Action::SessionStart => {
                let start: events::SessionStart = fields::event(&record.value);
                self.language = self.language.or(language_of(&start.kernel_argv));
            }
            Action::ExecutionRefused => {
                let refused: events::RequestUnrecorded = fields::event(&record.value);
                if refused.refused_msg_type == "execute_request" {
                    self.refused(record.sequence, refused);
                }
            }
            Action::AuditBypassed => {
                let bypassed: events::RequestUnrecorded = fields::event(&record.value);
                if let Some(cell) = self.cell_of(Some(&bypassed.msg_id)) {
                    cell.audit()
                        .insert(action.as_str().into(), Value::String(bypassed.reason));
                }
            }
            _ => {}
        }
    }

    fn cell_of(&mut self, request: Option<&str>) -> Option<&mut Cell> {
        let index = *self.by_request.get(request?)?;
        self.cells.get_mut(index)
    }

    fn new_id(&mut self, wanted: Option<&str>, sequence: u64) -> String {
        let mut id = match wanted {
            Some(id) if valid_cell_id(id) && !self.used_ids.contains(id) => id.to_owned(),
            _ => format!("audit-{sequence}"),
        };
        let mut suffix = 1;
        while self.used_ids.contains(&id) {
            id = format!("audit-{sequence}-{suffix}");
            suffix += 1;
        }
        self.used_ids.insert(id.clone());
        id
    }

    fn request(&mut self, record: &StoredRecord) {
        let value = &record.value;
        let field = |key: &str| fields::at(value, &["jupyter", key]);
        let source = field("code")
            .and_then(fields::stored_text)
            .map(|code| code.into_owned())
            .unwrap_or_default();
        let msg_id = fields::jupyter(value, "msg_id")
            .unwrap_or_default()
            .to_owned();
        let mut audit = Map::new();
        audit.insert("msg_id".into(), json!(msg_id));
        audit.insert("sequence".into(), json!(record.sequence));
        // The proxy's clock when the request arrived (the collector stores a request
        // late when write-ahead failed); the stored time otherwise.
        let requested = fields::str_at(value, &["event", "created"])
            .or_else(|| fields::str_at(value, &["@timestamp"]));
        if let Some(time) = requested {
            audit.insert("requested".into(), json!(time));
        }
        for key in ["cell_id", "write_ahead_failed", "content_error"] {
            if let Some(kept) = field(key).filter(|kept| !kept.is_null()) {
                audit.insert(key.into(), kept.clone());
            }
        }
        if field("silent") == Some(&Value::Bool(true)) {
            audit.insert("silent".into(), json!(true));
        }
        // A refusal recorded before its request: fill in the code.
        if let Some(&index) = self.by_request.get(&msg_id)
            && let Some(cell) = self.cells.get_mut(index)
            && cell.placeholder
        {
            cell.placeholder = false;
            cell.source = source;
            cell.audit().extend(audit);
            return;
        }
        let id = self.new_id(fields::jupyter(value, "cell_id"), record.sequence);
        self.by_request.insert(msg_id, self.cells.len());
        let mut metadata = Map::new();
        metadata.insert("jupyter_audit".into(), Value::Object(audit));
        self.cells.push(Cell {
            id,
            source,
            execution_count: None,
            outputs: Vec::new(),
            clear_pending: false,
            metadata,
            placeholder: false,
        });
    }

    fn refused(&mut self, sequence: u64, refused: events::RequestUnrecorded) {
        let reason = if refused.reason.is_empty() {
            "the audit log was unavailable"
        } else {
            &refused.reason
        };
        let msg_id = refused.msg_id;
        if !self.by_request.contains_key(&msg_id) {
            let id = self.new_id(None, sequence);
            self.by_request.insert(msg_id.clone(), self.cells.len());
            let mut metadata = Map::new();
            metadata.insert(
                "jupyter_audit".into(),
                json!({"msg_id": msg_id, "sequence": sequence}),
            );
            self.cells.push(Cell {
                id,
                source: "# jupyter-audit: the code of this refused request is not in the store"
                    .into(),
                execution_count: None,
                outputs: Vec::new(),
                clear_pending: false,
                metadata,
                placeholder: true,
            });
        }
        let evalue = format!("not run: it could not be recorded first ({reason})");
        let output = json!({
            "output_type": "error",
            "ename": REFUSED_ENAME,
            "evalue": evalue,
            "traceback": [format!("{REFUSED_ENAME}: {evalue}")],
        });
        if let Some(cell) = self.cell_of(Some(&msg_id)) {
            cell.audit().insert("refused".into(), json!(reason));
        }
        self.output(Some(&msg_id), output, None);
    }

    fn output(&mut self, parent: Option<&str>, output: Value, display_id: Option<String>) {
        let Some(&index) = parent.and_then(|parent| self.by_request.get(parent)) else {
            self.unattached_outputs += 1;
            return;
        };
        let Value::Object(value) = output else {
            return;
        };
        if let Some(display_id) = &display_id {
            self.displays
                .entry(display_id.clone())
                .or_default()
                .insert(index);
        }
        if let Some(cell) = self.cells.get_mut(index) {
            cell.push(Output { value, display_id });
        }
    }

    fn update(&mut self, display_id: &str, data: Map<String, Value>) {
        let Some(indices) = self.displays.get(display_id) else {
            return;
        };
        for &index in indices {
            let Some(cell) = self.cells.get_mut(index) else {
                continue;
            };
            for output in &mut cell.outputs {
                if output.display_id.as_deref() == Some(display_id) {
                    output
                        .value
                        .insert("data".into(), Value::Object(data.clone()));
                    output.value.insert("metadata".into(), json!({}));
                }
            }
        }
    }

    /// The notebook; `audit` goes into `metadata.jupyter_audit`.
    pub fn finish(self, audit: Map<String, Value>) -> Value {
        let cells: Vec<Value> = self
            .cells
            .into_iter()
            .map(|cell| {
                json!({
                    "id": cell.id,
                    "cell_type": "code",
                    "metadata": cell.metadata,
                    "source": cell.source,
                    "execution_count": cell.execution_count,
                    "outputs": cell.outputs.into_iter().map(|o| Value::Object(o.value)).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut metadata = Map::new();
        if let Some(name) = &self.kernel_name {
            let mut kernelspec = json!({"name": name, "display_name": name});
            if let Some(language) = self.language {
                kernelspec["language"] = json!(language);
            }
            metadata.insert("kernelspec".into(), kernelspec);
        }
        if let Some(language) = self.language {
            metadata.insert("language_info".into(), json!({"name": language}));
        }
        let mut audit = audit;
        if self.unattached_outputs > 0 {
            audit.insert(
                "outputs_without_cell".into(),
                json!(self.unattached_outputs),
            );
        }
        metadata.insert("jupyter_audit".into(), Value::Object(audit));
        json!({
            "cells": cells,
            "metadata": metadata,
            "nbformat": 4,
            "nbformat_minor": 5,
        })
    }
}

/// The notebook-level `jupyter_audit` metadata of a session.
fn session_metadata(session: &Session, store: &str) -> Map<String, Value> {
    #[derive(Serialize)]
    struct Audit<'a> {
        session_id: &'a str,
        kernel_id: &'a Option<String>,
        user: Value,
        host: &'a Option<String>,
        notebook_path: &'a Option<String>,
        start: &'a Option<String>,
        end: &'a Option<String>,
        state: &'static str,
        end_reason: &'a Option<String>,
        store: &'a str,
        sequence: Value,
        records: u64,
        generator: String,
    }
    let audit = Audit {
        session_id: &session.session_id,
        kernel_id: &session.kernel_id,
        // `id` is the OS account's uid; `name` the person, as `verified_by` says.
        user: json!({"id": session.user_id, "name": session.user,
                     "verified_by": session.verified_by}),
        host: &session.host,
        notebook_path: &session.notebook,
        start: &session.start,
        end: &session.end,
        state: session.state.as_str(),
        end_reason: &session.end_reason,
        store,
        sequence: json!({"first": session.first_sequence, "last": session.last_sequence}),
        records: session.records,
        generator: format!("jupyter-audit replay {}", env!("CARGO_PKG_VERSION")),
    };
    match serde_json::to_value(audit) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// Builds the notebook of the one session that `session` (a prefix of its id) and
/// `user` (name or id, optional) select, and says what the pass met besides records.
pub fn build(
    source: &RecordSource,
    session: &str,
    user: Option<&str>,
    liveness: &dyn Liveness,
    warnings: &mut dyn Write,
) -> Result<(Value, ScanReport), ReviewError> {
    let mut builders: HashMap<SessionKey, NotebookBuilder> = HashMap::new();
    let mut index = SessionIndex::new();
    let prefilter = Filter {
        session: Some(session.to_owned()),
        user: user.map(str::to_owned),
        ..Filter::default()
    };
    let report = source.scan(&prefilter, Prefilter::Sessions, warnings, |record| {
        let value = &record.value;
        let Some(key) = SessionKey::of(value) else {
            return Ok(());
        };
        if !key.session_id.starts_with(session) {
            return Ok(());
        }
        if let Some(user) = user
            && fields::str_at(value, &["user", "name"]) != Some(user)
            && key.user_id != user
        {
            return Ok(());
        }
        index.add(&record, true);
        builders.entry(key).or_default().add(&record);
        Ok(())
    })?;
    let mut keys: Vec<SessionKey> = builders.keys().cloned().collect();
    keys.sort();
    let key = match keys.as_slice() {
        [] => return Err(ReviewError::NoSession(session.to_owned())),
        [key] => key.clone(),
        several => {
            let list: Vec<String> = several
                .iter()
                .map(|key| format!("{} (uid {})", key.session_id, key.user_id))
                .collect();
            return Err(ReviewError::AmbiguousSession {
                prefix: session.to_owned(),
                matches: list.join(", "),
            });
        }
    };
    let summary = index
        .take(&key, liveness)
        .ok_or_else(|| ReviewError::NoSession(session.to_owned()))?;
    let builder = builders
        .remove(&key)
        .ok_or_else(|| ReviewError::NoSession(session.to_owned()))?;
    Ok((
        builder.finish(session_metadata(&summary, &source.label())),
        report,
    ))
}

/// The notebook of one session from records already picked out of the store (those of
/// one session and user, in store order), exactly as `replay` builds it from all of
/// them; `store` names where they came from. None when no record belongs to a session.
/// The console's export and `verify-export` build (and rebuild) notebooks with it.
pub fn notebook_of<'a>(
    records: impl IntoIterator<Item = &'a StoredRecord>,
    store: &str,
    liveness: &dyn Liveness,
) -> Option<Value> {
    let mut index = SessionIndex::new();
    let mut builder = NotebookBuilder::new();
    let mut key = None;
    for record in records {
        if key.is_none() {
            key = SessionKey::of(&record.value);
        }
        index.add(record, true);
        builder.add(record);
    }
    let summary = index.take(&key?, liveness)?;
    Some(builder.finish(session_metadata(&summary, store)))
}

/// Serialises a notebook the way nbformat writes one (one-space indent, final newline).
pub fn to_json(notebook: &Value) -> Result<Vec<u8>, ReviewError> {
    let mut bytes = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, formatter);
    notebook
        .serialize(&mut serializer)
        .map_err(|error| ReviewError::Output(io::Error::other(error)))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Which session `replay` rebuilds, and where the notebook goes.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Where the records are.
    pub source: RecordSource,
    /// The session id, or the start of it.
    pub session: String,
    /// The session's user (name or id), when several users' sessions share the id.
    pub user: Option<String>,
    /// The notebook to write (`-`: stdout).
    pub output: PathBuf,
}

/// Runs `replay`: writes the notebook to `-o FILE` (`-`: stdout).
pub fn run(args: &ReplayOptions) -> Result<(), ReviewError> {
    let (notebook, report) = build(
        &args.source,
        &args.session,
        args.user.as_deref(),
        &LocalProcesses::default(),
        &mut io::stderr(),
    )?;
    // The notebook is written even when some lines were unreadable; the error follows.
    let bytes = to_json(&notebook)?;
    if args.output == Path::new("-") {
        let mut stdout = io::stdout().lock();
        stdout
            .write_all(&bytes)
            .and_then(|()| stdout.flush())
            .map_err(ReviewError::Output)?;
    } else {
        write_file(&args.output, &bytes)?;
    }
    report.into_result()
}

/// Writes `bytes` to `path` through a temporary file renamed into place, so a reader
/// never sees half a notebook.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReviewError> {
    let failed = |source: io::Error| ReviewError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(&dir).map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.persist(path).map_err(|error| failed(error.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell as Counter;

    use super::*;

    /// Makes records of one session, numbered in the order they are made.
    struct Session {
        next: Counter<u64>,
    }

    impl Session {
        fn new() -> Self {
            Self {
                next: Counter::new(1),
            }
        }

        fn record(&self, action: &str, jupyter: Value) -> StoredRecord {
            let sequence = self.next.get();
            self.next.set(sequence + 1);
            let mut fields =
                json!({"session_id": "s1", "kernel_id": "k1", "kernel_name": "python3-audited"});
            if let (Some(fields), Some(extra)) = (fields.as_object_mut(), jupyter.as_object()) {
                fields.extend(extra.clone());
            }
            let value = json!({
                "@timestamp": "2024-05-01T12:00:00Z",
                "event": {"action": action, "sequence": sequence},
                "user": {"id": "1000", "name": "alice"},
                "host": {"name": "h"},
                "jupyter": fields,
            });
            StoredRecord::synthetic(sequence, value)
        }

        fn request(&self, msg_id: &str, code: &str) -> StoredRecord {
            self.record("execute_request", json!({"msg_id": msg_id, "code": code}))
        }

        fn output(&self, parent: &str, action: &str, jupyter: Value) -> StoredRecord {
            let mut fields =
                json!({"msg_id": format!("o{}", self.next.get()), "parent_msg_id": parent});
            if let (Some(fields), Some(extra)) = (fields.as_object_mut(), jupyter.as_object()) {
                fields.extend(extra.clone());
            }
            self.record(action, fields)
        }

        fn stream(&self, parent: &str, name: &str, text: &str) -> StoredRecord {
            self.output(parent, "stream", json!({"stream": name, "text": text}))
        }
    }

    fn notebook(records: &[StoredRecord]) -> Value {
        let mut builder = NotebookBuilder::new();
        for record in records {
            builder.add(record);
        }
        builder.finish(Map::new())
    }

    fn outputs(notebook: &Value, cell: usize) -> &Vec<Value> {
        notebook["cells"][cell]["outputs"]
            .as_array()
            .expect("outputs")
    }

    #[test]
    fn one_cell_per_request_with_code_count_and_kernel() {
        let s = Session::new();
        let records = [
            s.record(
                "session_start",
                json!({"kernel_argv": ["/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "x"]}),
            ),
            s.record(
                "execute_request",
                json!({"msg_id": "r1", "code": "x = 1\nx", "cell_id": "cell-1"}),
            ),
            s.output(
                "r1",
                "execute_input",
                json!({"code": "x = 1\nx", "execution_count": 3}),
            ),
            s.output(
                "r1",
                "execute_result",
                json!({"data": {"text/plain": "1"}, "execution_count": 3}),
            ),
            s.output(
                "r1",
                "execute_reply",
                json!({"status": "ok", "execution_count": 3, "duration_ms": 2.5}),
            ),
            s.request("r2", "print(2)"),
            s.output(
                "r2",
                "execute_reply",
                json!({"status": "ok", "execution_count": 4}),
            ),
        ];
        let nb = notebook(&records);
        assert_eq!(nb["nbformat"], 4);
        assert_eq!(nb["nbformat_minor"], 5);
        assert_eq!(
            nb["metadata"]["kernelspec"],
            json!({"name": "python3-audited", "display_name": "python3-audited", "language": "python"})
        );
        assert_eq!(nb["metadata"]["language_info"]["name"], "python");
        let cells = nb["cells"].as_array().expect("cells");
        assert_eq!(cells.len(), 2);
        assert_eq!(cells[0]["id"], "cell-1");
        assert_eq!(cells[0]["cell_type"], "code");
        assert_eq!(cells[0]["source"], "x = 1\nx");
        assert_eq!(cells[0]["execution_count"], 3);
        assert_eq!(cells[0]["metadata"]["jupyter_audit"]["msg_id"], "r1");
        assert_eq!(cells[0]["metadata"]["jupyter_audit"]["status"], "ok");
        assert_eq!(
            cells[0]["outputs"],
            json!([{"output_type": "execute_result", "execution_count": 3, "data": {"text/plain": "1"}, "metadata": {}}])
        );
        // No execute_input: the count comes from the reply.
        assert_eq!(cells[1]["execution_count"], 4);
        assert_eq!(cells[1]["id"], "audit-6");
    }

    #[test]
    fn streams_merge_while_the_name_stays_the_same() {
        let s = Session::new();
        let records = [
            s.request("r1", "…"),
            s.stream("r1", "stdout", "a"),
            s.stream("r1", "stdout", "b\n"),
            s.stream("r1", "stderr", "x\n"),
            s.stream("r1", "stdout", "c\n"),
        ];
        assert_eq!(
            outputs(&notebook(&records), 0),
            &vec![
                json!({"output_type": "stream", "name": "stdout", "text": "ab\n"}),
                json!({"output_type": "stream", "name": "stderr", "text": "x\n"}),
                json!({"output_type": "stream", "name": "stdout", "text": "c\n"}),
            ]
        );
    }

    #[test]
    fn clear_output_clears_at_once_or_before_the_next_output() {
        let s = Session::new();
        let records = [
            s.request("r1", "progress"),
            s.stream("r1", "stdout", "step 0\n"),
            s.output("r1", "clear_output", json!({"wait": true})),
            s.stream("r1", "stdout", "step 1\n"),
            s.output("r1", "clear_output", json!({"wait": true})),
            s.request("r2", "print('gone'); clear_output(); print('kept')"),
            s.stream("r2", "stdout", "gone\n"),
            s.output("r2", "clear_output", json!({"wait": false})),
            s.stream("r2", "stdout", "kept\n"),
        ];
        let nb = notebook(&records);
        // The last clear (wait) had no output after it: what was shown stays.
        assert_eq!(outputs(&nb, 0)[0]["text"], "step 1\n");
        assert_eq!(outputs(&nb, 0).len(), 1);
        assert_eq!(outputs(&nb, 1)[0]["text"], "kept\n");
        assert_eq!(outputs(&nb, 1).len(), 1);
    }

    #[test]
    fn display_updates_reach_the_display_in_any_cell() {
        let s = Session::new();
        let records = [
            s.request("r1", "h = display('first', display_id=True)"),
            s.output(
                "r1",
                "display_data",
                json!({"data": {"text/plain": "'first'"}, "display_id": "d1"}),
            ),
            s.output(
                "r1",
                "display_data",
                json!({"data": {"text/plain": "other"}, "display_id": "d2"}),
            ),
            s.request("r2", "h.update('second')"),
            s.output(
                "r2",
                "update_display_data",
                json!({"data": {"text/plain": "'second'"}, "display_id": "d1"}),
            ),
            s.stream("r2", "stdout", "updated\n"),
            s.output(
                "r2",
                "update_display_data",
                json!({"data": {"text/plain": "?"}, "display_id": "unknown"}),
            ),
        ];
        let nb = notebook(&records);
        assert_eq!(outputs(&nb, 0)[0]["data"]["text/plain"], "'second'");
        assert_eq!(outputs(&nb, 0)[1]["data"]["text/plain"], "other");
        assert_eq!(
            outputs(&nb, 1).len(),
            1,
            "an update is not an output of its own"
        );
    }

    #[test]
    fn what_was_not_kept_is_said_not_invented() {
        let s = Session::new();
        let hash = "ab".repeat(32);
        let records = [
            s.request("r1", "plot"),
            s.output(
                "r1",
                "display_data",
                json!({"data": {"image/png": {"sha256": hash, "size": 1779}, "text/plain": "<Figure>"}}),
            ),
            s.output(
                "r1",
                "display_data",
                json!({"data": {"image/jpeg": {"sha256": hash, "size": 3, "base64": "AAEC"}}}),
            ),
            s.output(
                "r1",
                "display_data",
                json!({"data": {"text/html": {"truncated": true, "size": 30, "sha256": hash, "head": "<p>", "tail": "</p>"}, "application/json": {"a": 1}}}),
            ),
            s.stream("r1", "stdout", ""),
        ];
        let nb = notebook(&records);
        let shown = outputs(&nb, 0);
        assert_eq!(
            shown[0]["data"],
            json!({"text/plain": format!("<image/png: 1779 bytes, sha256 {hash}, not kept>\n<Figure>")})
        );
        assert_eq!(shown[1]["data"], json!({"image/jpeg": "AAEC"}));
        assert_eq!(
            shown[2]["data"]["text/html"],
            format!("<p>\n… [23 bytes omitted, sha256 {hash}] …\n</p>")
        );
        assert_eq!(shown[2]["data"]["application/json"], json!({"a": 1}));
    }

    #[test]
    fn errors_keep_name_value_and_traceback_lines() {
        let s = Session::new();
        let records = [
            s.request("r1", "1/0"),
            s.output(
                "r1",
                "error",
                json!({"ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": "line 1\nline 2"}),
            ),
            s.output("r1", "execute_reply", json!({"status": "error", "execution_count": 1})),
        ];
        assert_eq!(
            outputs(&notebook(&records), 0),
            &vec![json!({
                "output_type": "error",
                "ename": "ZeroDivisionError",
                "evalue": "division by zero",
                "traceback": ["line 1", "line 2"],
            })]
        );
    }

    #[test]
    fn refused_executions_are_cells_with_an_error() {
        let s = Session::new();
        let records = [
            s.record(
                "execute_request",
                json!({"msg_id": "r1", "code": "print('never ran')", "write_ahead_failed": true}),
            ),
            s.record(
                "execution_refused",
                json!({"msg_id": "r1", "refused_msg_type": "execute_request", "reason": "collector unavailable: gone"}),
            ),
            // Refused, and its request never reached the store.
            s.record(
                "execution_refused",
                json!({"msg_id": "r2", "refused_msg_type": "execute_request", "reason": "collector unavailable: gone"}),
            ),
            // Other refused requests are not cells.
            s.record(
                "execution_refused",
                json!({"msg_id": "r3", "refused_msg_type": "comm_msg", "reason": "collector unavailable: gone"}),
            ),
        ];
        let nb = notebook(&records);
        let cells = nb["cells"].as_array().expect("cells");
        assert_eq!(cells.len(), 2);
        assert_eq!(cells[0]["source"], "print('never ran')");
        assert_eq!(cells[0]["execution_count"], Value::Null);
        let error = &outputs(&nb, 0)[0];
        assert_eq!(error["ename"], REFUSED_ENAME);
        assert!(
            error["evalue"]
                .as_str()
                .is_some_and(|e| e.contains("not run") && e.contains("collector unavailable"))
        );
        assert_eq!(
            cells[0]["metadata"]["jupyter_audit"]["refused"],
            "collector unavailable: gone"
        );
        assert!(
            cells[1]["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("# jupyter-audit"))
        );
        assert_eq!(outputs(&nb, 1)[0]["ename"], REFUSED_ENAME);
    }

    #[test]
    fn resent_records_count_once_and_reused_ids_do_not() {
        let s = Session::new();
        let mut resent_request = s.request("r1", "print(1)");
        resent_request.value["jupyter"]["resent"] = json!(true);
        let stream = s.stream("r1", "stdout", "1\n");
        let mut resent_stream = stream.clone();
        resent_stream.value["jupyter"]["resent"] = json!(true);
        let records = [
            s.request("r1", "print(1)"),
            stream,
            resent_request,
            resent_stream,
            // A client that reuses a msg_id is not hidden.
            s.request("r1", "print('again')"),
        ];
        let nb = notebook(&records);
        let cells = nb["cells"].as_array().expect("cells");
        assert_eq!(cells.len(), 2);
        assert_eq!(
            outputs(&nb, 0),
            &vec![json!({"output_type": "stream", "name": "stdout", "text": "1\n"})]
        );
        assert_eq!(cells[1]["source"], "print('again')");
    }

    #[test]
    fn cell_ids_are_valid_and_unique() {
        let s = Session::new();
        let records = [
            s.record(
                "execute_request",
                json!({"msg_id": "r1", "code": "1", "cell_id": "same"}),
            ),
            s.record(
                "execute_request",
                json!({"msg_id": "r2", "code": "1", "cell_id": "same"}),
            ),
            s.record(
                "execute_request",
                json!({"msg_id": "r3", "code": "1", "cell_id": "not valid!"}),
            ),
            s.record(
                "execute_request",
                json!({"msg_id": "r4", "code": "1", "cell_id": "x".repeat(65)}),
            ),
        ];
        let nb = notebook(&records);
        let ids: Vec<&str> = nb["cells"]
            .as_array()
            .expect("cells")
            .iter()
            .filter_map(|cell| cell["id"].as_str())
            .collect();
        assert_eq!(ids, ["same", "audit-2", "audit-3", "audit-4"]);
        assert!(ids.iter().all(|id| valid_cell_id(id)));
        assert_eq!(
            nb["cells"][2]["metadata"]["jupyter_audit"]["cell_id"],
            "not valid!"
        );
    }

    #[test]
    fn outputs_of_other_requests_are_counted_not_placed() {
        let s = Session::new();
        let records = [
            s.request("r1", "w = widget()"),
            s.stream("comm-msg-1", "stdout", "from a widget callback\n"),
        ];
        let nb = notebook(&records);
        assert!(outputs(&nb, 0).is_empty());
        assert_eq!(nb["metadata"]["jupyter_audit"]["outputs_without_cell"], 1);
        assert!(nb["metadata"].get("kernelspec").is_some());
        assert!(
            nb["metadata"].get("language_info").is_none(),
            "no argv, no language"
        );
    }

    #[test]
    fn notebook_is_written_like_nbformat_does() {
        let s = Session::new();
        let bytes = to_json(&notebook(&[s.request("r1", "1")])).expect("json");
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.starts_with("{\n \"cells\": [\n  {\n"), "{text}");
        assert!(text.ends_with("}\n"));
    }
}
