//! `jupyter-audit log`: the records that match a query, as a table for people or, with
//! `--json`, as the stored lines themselves (byte for byte, one per line) for programs.
//!
//! The table has one row per record: time (`@timestamp`, UTC), `event.sequence`, the
//! verified user, the first 8 characters of the session id, the action, and a one-line
//! summary (a cell's first line of code, a stream's first line, `ename: evalue`, …).
//! Anything shown in the table is shortened and has control characters escaped, so a
//! record cannot rewrite the reviewer's terminal; `--json` is never changed.

use std::io::{self, BufWriter, Write};

use serde_json::Value;

use super::filter::Filter;
use super::scan::Scan;
use super::source::{Prefilter, RecordSource};
use super::{ReviewError, fields};
use crate::audit::KeptBytes;
use crate::audit::events::{self, Action};
use crate::store::StoredRecord;

/// Longest summary in the table (characters).
const SUMMARY_WIDTH: usize = 120;
const USER_WIDTH: usize = 12;
const ACTION_WIDTH: usize = 20;
/// Characters of the session id the table shows.
pub const SHORT_ID: usize = 8;

/// What `log` lists, and how.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Where the records are.
    pub source: RecordSource,
    pub filter: Filter,
    /// The stored lines themselves instead of the table.
    pub json: bool,
}

/// Runs `log` on stdout and stderr.
pub fn run(args: &LogOptions) -> Result<(), ReviewError> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    run_with(args, &mut out, &mut io::stderr())?;
    out.flush().map_err(ReviewError::Output)
}

/// Runs `log`, writing the listing to `out` and warnings to `warnings`.
pub fn run_with(
    args: &LogOptions,
    out: &mut dyn Write,
    warnings: &mut dyn Write,
) -> Result<(), ReviewError> {
    let filter = &args.filter;
    if let RecordSource::Store(dir) = &args.source {
        // A store that cannot be opened is an error before any output.
        Scan::open(dir)?;
    }
    if !args.json {
        writeln!(out, "{}", header()).map_err(ReviewError::Output)?;
    }
    let report = args
        .source
        .scan(filter, Prefilter::Records, warnings, |record| {
            if !filter.matches(&record.raw, &record.value) {
                return Ok(());
            }
            let written = if args.json {
                out.write_all(record.raw.as_bytes())
                    .and_then(|()| out.write_all(b"\n"))
            } else {
                writeln!(out, "{}", row(&record))
            };
            written.map_err(ReviewError::Output)
        })?;
    report.into_result()
}

fn header() -> String {
    format!(
        "{:<23}  {:>7}  {:<USER_WIDTH$}  {:<SHORT_ID$}  {:<ACTION_WIDTH$}  SUMMARY",
        "TIME (UTC)", "SEQ", "USER", "SESSION", "ACTION"
    )
}

/// One table row.
pub fn row(record: &StoredRecord) -> String {
    let value = &record.value;
    let user = fields::for_terminal(fields::user(value).unwrap_or("-"), USER_WIDTH);
    let session = fields::jupyter(value, "session_id")
        .map(|id| fields::for_terminal(&id.chars().take(SHORT_ID).collect::<String>(), 64))
        .unwrap_or_else(|| "-".into());
    let action = fields::for_terminal(fields::action(value), 64);
    let summary = fields::for_terminal(&summary(value), SUMMARY_WIDTH);
    let line = format!(
        "{:<23}  {:>7}  {user:<USER_WIDTH$}  {session:<SHORT_ID$}  {action:<ACTION_WIDTH$}  {summary}",
        fields::for_terminal(&fields::display_timestamp(value), 40),
        record.sequence,
    );
    line.trim_end().to_owned()
}

/// The first line of a stored text, with ` …` when more lines follow.
fn first_line_of(value: Option<&Value>) -> String {
    let Some(text) = value.and_then(fields::stored_text) else {
        return String::new();
    };
    let (line, more) = fields::first_line(&text);
    if more {
        format!("{line} …")
    } else {
        line.to_owned()
    }
}

/// What a record says, in one line (not yet made safe for a terminal).
pub fn summary(value: &Value) -> String {
    let field = |key: &str| fields::at(value, &["jupyter", key]);
    let action = fields::action(value);
    let mut summary = match Action::from_name(action) {
        Some(event) => event_summary(event, value),
        None => message_summary(action, value),
    };
    if field("content_error").is_some() {
        summary.push_str(" (content not JSON)");
    }
    if field("write_ahead_failed") == Some(&Value::Bool(true)) {
        summary.push_str(" (stored late: write-ahead failed)");
    }
    if field("resent") == Some(&Value::Bool(true)) {
        summary.push_str(" (resent)");
    }
    summary.trim().to_owned()
}

/// What a record of an event that is not a message says.
fn event_summary(action: Action, value: &Value) -> String {
    match action {
        Action::SessionStart => session_start(value),
        Action::SessionEnd => end_description(value).unwrap_or_else(|| "ended normally".into()),
        Action::Interrupt | Action::Signal => fields::event::<events::SignalPassed>(value).signal,
        Action::ExecutionRefused | Action::AuditBypassed => {
            let refused: events::RequestUnrecorded = fields::event(value);
            format!(
                "{} {}: {}",
                refused.refused_msg_type, refused.msg_id, refused.reason
            )
        }
        Action::MessageRejected => {
            let rejected: events::MessageRejected = fields::event(value);
            let what = rejected.rejected_msg_type.as_deref().unwrap_or("message");
            match &rejected.sender {
                Some(sender) => format!(
                    "{what} on {} from {}: {}",
                    rejected.channel,
                    sender_of(value, sender),
                    rejected.reason
                ),
                None => format!(
                    "{what} from {} on {}: {}",
                    rejected.from, rejected.channel, rejected.reason
                ),
            }
        }
        Action::RejectionsSuppressed => {
            let counted: events::RejectionsSuppressed = fields::event(value);
            let reasons: Vec<String> = counted
                .reasons
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect();
            let mut line = format!(
                "{} more from {} on {} ({})",
                counted.rejected_count,
                counted.from,
                counted.channel,
                reasons.join(", ")
            );
            for (n, sender) in counted.senders.iter().enumerate() {
                line.push_str(if n == 0 { "; senders " } else { "; " });
                line.push_str(&sender_of(value, sender));
            }
            if counted.more_senders {
                line.push_str("; more senders");
            }
            line
        }
        Action::AuditGap => {
            let gap: events::AuditGap = fields::event(value);
            format!(
                "{} records lost since {}: {}",
                gap.lost_records, gap.gap_since, gap.reason
            )
        }
        Action::CollectorStart => {
            let start: events::CollectorStart = fields::event(value);
            let store = if start.store.is_empty() {
                "?"
            } else {
                &start.store
            };
            let mut line = format!("store {store}, last sequence {}", start.last_sequence);
            if start.torn_record.is_some() {
                line.push_str(", cut a torn record");
            }
            line
        }
        Action::ForwardConflict => {
            let conflict: events::ForwardConflict = fields::event(value);
            format!(
                "{} row {}: {}",
                conflict.table, conflict.row_sequence, conflict.reason
            )
        }
        Action::IdentityRefused | Action::IdentityUnverified => {
            let unattested: events::IdentityUnattested = fields::event(value);
            format!(
                "{} (hub_identity {}): {}",
                unattested.reason, unattested.policy, unattested.detail
            )
        }
        Action::ReviewAccess => {
            let refused =
                fields::at(value, &["event", "outcome"]).and_then(Value::as_str) == Some("failure");
            review_access(&fields::event(value), refused)
        }
        Action::ReviewMark => {
            let mark: events::ReviewMark = fields::event(value);
            let mut line = format!(
                "{} marked session {} {}",
                mark.reviewer.name, mark.session_id, mark.mark
            );
            if !mark.note.is_empty() {
                line.push_str(&format!(": {}", mark.note));
            }
            line
        }
        Action::ParentExited
        | Action::CollectorStop
        | Action::LimitExceeded
        | Action::ForgedRecord
        | Action::RecordRefused
        | Action::RefusalsSuppressed => String::new(),
    }
}

/// What a reviewer looked at, in one line: who, which page, and what on it; or, for a
/// `refused` page (outcome failure), who was refused what.
fn review_access(access: &events::ReviewAccess, refused: bool) -> String {
    let session = access.session_id.as_deref().unwrap_or("?");
    let query = access.query.as_deref().unwrap_or_default();
    let mut line = match access.view.as_str() {
        "sessions" if query.is_empty() => "viewed the sessions list".to_owned(),
        "sessions" => format!("viewed the sessions list {query:?}"),
        "timeline" => format!(
            "viewed the timeline of {}",
            access.user.as_deref().unwrap_or("?")
        ),
        "session" => format!("viewed session {session}"),
        "output" => format!(
            "viewed output #{} of session {session}",
            access.sequence.unwrap_or_default()
        ),
        "search" => format!("searched {query:?}"),
        "download" => format!("downloaded session {session}"),
        "health" => "viewed the store's health".to_owned(),
        "running" => "viewed the running sessions".to_owned(),
        other => format!("viewed {other}"),
    };
    match (access.view.as_str(), access.outputs) {
        ("session" | "download", Some(true)) => line.push_str(" with outputs"),
        ("session" | "download", Some(false)) => line.push_str(" without outputs"),
        _ => {}
    }
    if refused {
        format!(
            "{} was REFUSED (lacks the console scope): {line}",
            access.reviewer.name
        )
    } else {
        format!("{} {line}", access.reviewer.name)
    }
}

/// What a record of a Jupyter message says.
fn message_summary(msg_type: &str, value: &Value) -> String {
    let field = |key: &str| fields::at(value, &["jupyter", key]);
    let text = |key: &str| fields::jupyter(value, key).unwrap_or_default();
    let number = |key: &str| field(key).and_then(Value::as_i64);
    match msg_type {
        "execute_request" => {
            let mut line = first_line_of(field("code"));
            if field("silent") == Some(&Value::Bool(true)) {
                line.insert_str(0, "(silent) ");
            }
            line
        }
        "execute_input" => match number("execution_count") {
            Some(count) => format!("[{count}] {}", first_line_of(field("code"))),
            None => first_line_of(field("code")),
        },
        "execute_reply" => execute_reply(value),
        "stream" => format!("{}: {}", text("stream"), first_line_of(field("text"))),
        "display_data" | "execute_result" | "update_display_data" => mime_bundle(field("data")),
        "error" => format!("{}: {}", text("ename"), first_line_of(field("evalue"))),
        "clear_output" if field("wait") == Some(&Value::Bool(true)) => "wait".into(),
        "input_request" => {
            let prompt = first_line_of(field("prompt"));
            if field("password") == Some(&Value::Bool(true)) {
                format!("{prompt:?} (password)")
            } else {
                format!("{prompt:?}")
            }
        }
        "input_reply" if field("value_dropped") == Some(&Value::Bool(true)) => {
            "(value not kept)".into()
        }
        "input_reply" => format!("{:?}", first_line_of(field("value"))),
        "comm_open" => format!("{} {}", text("target_name"), text("comm_id")),
        "comm_msg" | "comm_close" => {
            let method = fields::str_at(value, &["jupyter", "data", "method"]);
            format!("{} {}", text("comm_id"), method.unwrap_or_default())
        }
        "shutdown_request"
            if field("content").and_then(|c| c.get("restart")) == Some(&Value::Bool(true)) =>
        {
            "restart".into()
        }
        "shutdown_request" => String::new(),
        reply if reply.ends_with("_reply") => text("status").to_owned(),
        _ => field("content")
            .filter(|content| !content.as_object().is_some_and(|c| c.is_empty()))
            .map(Value::to_string)
            .unwrap_or_default(),
    }
}

/// A rejected message's `jupyter.sender` (`127.0.0.1:40312 uid 1001 (mallory)`), and
/// whether it is the proxy's user, whose name the record's `user.*` is.
fn sender_of(record: &Value, sender: &events::Sender) -> String {
    let mut line = match (&sender.address, sender.transport.as_str()) {
        (Some(address), _) => address.clone(),
        (None, "") => "?".to_owned(),
        (None, transport) => transport.to_owned(),
    };
    if let Some(uid) = sender.uid {
        line.push_str(&format!(" uid {uid}"));
    }
    if let Some(name) = &sender.user_name {
        line.push_str(&format!(" ({name})"));
    }
    if let Some(pid) = sender.pid {
        line.push_str(&format!(" pid {pid}"));
    }
    if !sender.local {
        line.push_str(" (another host)");
    }
    let proxy_uid = fields::os_user_id(record).and_then(|id| id.parse::<u32>().ok());
    line.push_str(match sender.uid {
        Some(uid) if Some(uid) == proxy_uid => ", the proxy's user",
        Some(_) => ", not the proxy's user",
        None => ", not necessarily the proxy's user",
    });
    line
}

fn execute_reply(value: &Value) -> String {
    let field = |key: &str| fields::at(value, &["jupyter", key]);
    let mut line = fields::jupyter(value, "status").unwrap_or("?").to_owned();
    if let Some(count) = field("execution_count").and_then(Value::as_i64) {
        line.push_str(&format!(" [{count}]"));
    }
    if let Some(ename) = fields::jupyter(value, "ename") {
        line.push_str(&format!(" {ename}: {}", first_line_of(field("evalue"))));
    }
    if let Some(duration) = field("duration_ms").and_then(Value::as_f64) {
        line.push_str(&format!(" ({duration:.1} ms)"));
    }
    line
}

/// The first line of `text/plain` (else of another text), then the other MIME types.
fn mime_bundle(data: Option<&Value>) -> String {
    let Some(bundle) = data.and_then(Value::as_object) else {
        return String::new();
    };
    let shown = ["text/plain", "text/markdown", "text/html"]
        .into_iter()
        .find(|mime| bundle.get(*mime).and_then(fields::stored_text).is_some());
    let mut line = shown
        .map(|mime| first_line_of(bundle.get(mime)))
        .unwrap_or_default();
    let others: Vec<String> = bundle
        .iter()
        .filter(|(mime, _)| Some(mime.as_str()) != shown)
        .map(|(mime, kept)| match KeptBytes::read(kept) {
            Some(bytes) => format!("{mime} {} bytes", bytes.size),
            None => mime.clone(),
        })
        .collect();
    if !others.is_empty() {
        line.push_str(&format!(" [{}]", others.join(", ")));
    }
    line
}

fn session_start(value: &Value) -> String {
    let start: events::SessionStart = fields::event(value);
    let mut parts = Vec::new();
    if let Some(path) = &start.notebook_path {
        parts.push(format!("notebook {path}"));
    }
    if let Some(name) = fields::jupyter(value, "kernel_name") {
        parts.push(format!("kernel {name}"));
    }
    if let Some(hub_user) = &start.hub_user {
        parts.push(format!("hub user {hub_user}"));
    }
    if start.kernel_pid != 0 {
        parts.push(format!("kernel pid {}", start.kernel_pid));
    }
    parts.join(", ")
}

/// Why a session ended abnormally, from its `session_end` record; None when it ended
/// normally (exit code 0, no signal, not orphaned).
pub fn end_description(value: &Value) -> Option<String> {
    let end: events::SessionEnd = fields::event(value);
    let mut reasons = Vec::new();
    if let Some(signal) = end.exit_signal {
        let name = nix::sys::signal::Signal::try_from(signal)
            .map(|signal| format!(" ({})", signal.as_str()))
            .unwrap_or_default();
        reasons.push(format!("kernel killed by signal {signal}{name}"));
    }
    if let Some(code) = end.exit_code
        && code != 0
    {
        reasons.push(format!("kernel exited with code {code}"));
    }
    if end.orphaned {
        reasons.push("the process that started it went away".into());
    }
    (!reasons.is_empty()).then(|| reasons.join(", "))
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;
    use crate::review::filter::{parse_regex, parse_since, parse_until};

    fn summary_of(action: &str, jupyter: Value) -> String {
        summary(&json!({"event": {"action": action}, "jupyter": jupyter}))
    }

    #[test]
    fn review_records_say_who_looked_at_what() {
        let reviewer = json!({"name": "auditor", "scopes": ["custom:jupyter-audit:read"]});
        let review = |action: &str, review: Value| {
            summary(&json!({"event": {"action": action},
                            "jupyter": {"session_id": "console-1"}, "review": review}))
        };
        assert_eq!(
            review(
                "review_access",
                json!({"reviewer": reviewer, "view": "output", "session_id": "s1",
                       "sequence": 42, "outputs": true})
            ),
            "auditor viewed output #42 of session s1"
        );
        assert_eq!(
            review(
                "review_access",
                json!({"reviewer": reviewer, "view": "search", "query": "os.remove"})
            ),
            "auditor searched \"os.remove\""
        );
        assert_eq!(
            summary(
                &json!({"event": {"action": "review_access", "outcome": "failure"},
                            "jupyter": {"session_id": "console-1"},
                            "review": {"reviewer": {"name": "plain", "scopes": []},
                                       "view": "sessions", "query": ""}})
            ),
            "plain was REFUSED (lacks the console scope): viewed the sessions list"
        );
        assert_eq!(
            review(
                "review_mark",
                json!({"reviewer": reviewer, "view": "mark", "session_id": "s1",
                       "mark": "reviewed", "note": "fine"})
            ),
            "auditor marked session s1 reviewed: fine"
        );
    }

    #[test]
    fn summaries_say_what_happened_in_one_line() {
        assert_eq!(
            summary_of(
                "execute_request",
                json!({"code": "import os\nos.listdir()"})
            ),
            "import os …"
        );
        assert_eq!(
            summary_of("execute_request", json!({"code": "x = 1\n"})),
            "x = 1"
        );
        assert_eq!(
            summary_of(
                "execute_input",
                json!({"code": "1+1", "execution_count": 4})
            ),
            "[4] 1+1"
        );
        assert_eq!(
            summary_of(
                "stream",
                json!({"stream": "stderr", "text": "oops\nmore\n"})
            ),
            "stderr: oops …"
        );
        assert_eq!(
            summary_of(
                "stream",
                json!({"stream": "stdout", "text": {"truncated": true, "size": 100, "sha256": "ff", "head": "00001 x", "tail": "99999"}})
            ),
            "stdout: 00001 x …"
        );
        assert_eq!(
            summary_of(
                "error",
                json!({"ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": "…"})
            ),
            "ZeroDivisionError: division by zero"
        );
        assert_eq!(
            summary_of(
                "execute_reply",
                json!({"status": "error", "execution_count": 3, "ename": "KeyError", "evalue": "'k'", "duration_ms": 1.25})
            ),
            "error [3] KeyError: 'k' (1.2 ms)"
        );
        assert_eq!(
            summary_of(
                "display_data",
                json!({"data": {"text/plain": "<Figure>", "image/png": {"sha256": "ab", "size": 1779}}})
            ),
            "<Figure> [image/png 1779 bytes]"
        );
        assert_eq!(
            summary_of(
                "input_request",
                json!({"prompt": "Password: ", "password": true})
            ),
            "\"Password: \" (password)"
        );
        assert_eq!(
            summary_of("input_reply", json!({"value_dropped": true})),
            "(value not kept)"
        );
        assert_eq!(
            summary_of(
                "execution_refused",
                json!({"refused_msg_type": "execute_request", "msg_id": "m1", "reason": "the audit collector is unavailable"})
            ),
            "execute_request m1: the audit collector is unavailable"
        );
        assert_eq!(
            summary_of(
                "message_rejected",
                json!({"rejected_msg_type": "execute_request", "from": "frontend", "channel": "shell", "reason": "signature does not match"})
            ),
            "execute_request from frontend on shell: signature does not match"
        );
        assert_eq!(
            summary_of("kernel_info_reply", json!({"status": "ok"})),
            "ok"
        );
        assert_eq!(
            summary_of(
                "execute_request",
                json!({"code": "1", "write_ahead_failed": true})
            ),
            "1 (stored late: write-ahead failed)"
        );
    }

    #[test]
    fn rejections_name_the_sender_and_whether_it_is_the_proxys_user() {
        let rejected = |sender: Value| {
            summary(&json!({
                "event": {"action": "message_rejected"},
                "user": {"id": "1000", "name": "alice"},
                "jupyter": {"rejected_msg_type": "execute_request", "from": "frontend",
                            "channel": "shell", "reason": "signature does not match",
                            "sender": sender}
            }))
        };
        assert_eq!(
            rejected(
                json!({"transport": "tcp", "address": "127.0.0.1:40312", "local": true,
                            "uid": 1001, "user_name": "mallory"})
            ),
            "execute_request on shell from 127.0.0.1:40312 uid 1001 (mallory), not the proxy's user: signature does not match"
        );
        assert_eq!(
            rejected(json!({"transport": "ipc", "local": true, "uid": 1000, "pid": 42})),
            "execute_request on shell from ipc uid 1000 pid 42, the proxy's user: signature does not match"
        );
        assert_eq!(
            rejected(json!({"transport": "tcp", "address": "192.0.2.7:1", "local": false})),
            "execute_request on shell from 192.0.2.7:1 (another host), not necessarily the proxy's user: signature does not match"
        );
        let summary = summary(&json!({
            "event": {"action": "rejections_suppressed"},
            "user": {"id": "1000"},
            "jupyter": {"from": "frontend", "channel": "shell", "rejected_count": 12,
                        "reasons": {"bad_signature": 10, "replayed": 2},
                        "senders": [{"transport": "tcp", "address": "127.0.0.1:2",
                                     "local": true, "uid": 1001}],
                        "more_senders": true}
        }));
        assert_eq!(
            summary,
            "12 more from frontend on shell (bad_signature 10, replayed 2); senders 127.0.0.1:2 uid 1001, not the proxy's user; more senders"
        );
    }

    #[test]
    fn session_end_says_why_it_was_abnormal() {
        let end = |jupyter: Value| json!({"event": {"action": "session_end"}, "jupyter": jupyter});
        assert_eq!(
            end_description(&end(
                json!({"exit_code": 0, "exit_signal": null, "orphaned": false})
            )),
            None
        );
        assert_eq!(
            end_description(&end(
                json!({"exit_code": null, "exit_signal": 9, "orphaned": true})
            ))
            .as_deref(),
            Some("kernel killed by signal 9 (SIGKILL), the process that started it went away")
        );
        assert_eq!(
            end_description(&end(json!({"exit_code": 1}))).as_deref(),
            Some("kernel exited with code 1")
        );
    }

    #[test]
    fn rows_are_one_safe_line() {
        let value = json!({
            "@timestamp": "2024-05-01T12:00:00.123Z",
            "event": {"action": "stream", "sequence": 42},
            "user": {"id": "1000", "name": "alice"},
            "jupyter": {"session_id": "0123456789abcdef", "stream": "stdout", "text": "\u{1b}]0;pwned\u{7}visible\nhidden"}
        });
        let record = StoredRecord::synthetic(42, value);
        let row = row(&record);
        assert_eq!(
            row,
            "2024-05-01 12:00:00.123       42  alice         01234567  stream                \
             stdout: \\u{1b}]0;pwned\\u{7}visible …"
        );
        assert!(!row.contains('\u{1b}') && !row.contains('\n'));
    }

    fn args(store: &std::path::Path, json: bool, filter: Filter) -> LogOptions {
        LogOptions {
            source: RecordSource::Store(store.to_owned()),
            filter,
            json,
        }
    }

    /// A store directory with one segment holding `lines` exactly.
    fn store_with(lines: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let segments = dir.path().join("segments");
        std::fs::create_dir(&segments).expect("segments dir");
        std::fs::write(segments.join(format!("{:020}.jsonl", 1)), lines).expect("segment");
        dir
    }

    fn line(sequence: u64, action: &str, user: &str) -> String {
        json!({
            "@timestamp": format!("2024-05-0{sequence}T12:00:00Z"),
            "event": {"action": action, "sequence": sequence},
            "user": {"id": "1000", "name": user},
            "jupyter": {"session_id": format!("session-{sequence}"), "code": "print( 'spaced' )"},
        })
        .to_string()
    }

    fn run_log(args: &LogOptions) -> (Result<(), ReviewError>, String, String) {
        let (mut out, mut warnings) = (Vec::new(), Vec::new());
        let result = run_with(args, &mut out, &mut warnings);
        let text = |bytes| String::from_utf8(bytes).expect("utf-8");
        (result, text(out), text(warnings))
    }

    #[test]
    fn json_is_the_stored_lines_and_a_torn_last_line_is_a_warning() {
        let stored = format!(
            "{}\n{}\n{}\n",
            line(1, "execute_request", "alice"),
            line(2, "stream", "bob"),
            line(3, "execute_request", "bob")
        );
        let store = store_with(&format!("{stored}{{\"event\":{{\"seq"));
        let (result, out, warnings) = run_log(&args(store.path(), true, Filter::default()));
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(out, stored, "byte for byte");
        assert!(warnings.contains("incomplete last line"), "{warnings}");
        assert!(warnings.contains("write in progress"), "{warnings}");

        let (_, out, _) = run_log(&args(
            store.path(),
            true,
            Filter {
                user: Some("bob".into()),
                actions: vec!["execute_request".into()],
                grep: Some(parse_regex("'spaced' \\)").expect("regex")),
                ..Filter::default()
            },
        ));
        assert_eq!(out, format!("{}\n", line(3, "execute_request", "bob")));
        let day = "2024-05-02";
        let (_, out, _) = run_log(&args(
            store.path(),
            true,
            Filter {
                since: Some(parse_since(day).expect("a date")),
                until: Some(parse_until(day).expect("a date")),
                ..Filter::default()
            },
        ));
        assert_eq!(out, format!("{}\n", line(2, "stream", "bob")));
        let (_, out, _) = run_log(&args(
            store.path(),
            true,
            Filter {
                session: Some("session-3".into()),
                ..Filter::default()
            },
        ));
        assert_eq!(out.lines().count(), 1);
    }

    #[test]
    fn the_table_has_a_header_and_a_row_per_record() {
        let store = store_with(&format!("{}\n", line(1, "execute_request", "alice")));
        let (result, out, warnings) = run_log(&args(store.path(), false, Filter::default()));
        assert!(
            result.is_ok() && warnings.is_empty(),
            "{result:?} {warnings}"
        );
        let rows: Vec<&str> = out.lines().collect();
        assert_eq!(rows.len(), 2, "{out}");
        assert!(rows[0].starts_with("TIME (UTC)"));
        assert!(
            rows[1].ends_with("execute_request       print( 'spaced' )"),
            "{out}"
        );
    }

    #[test]
    fn a_damaged_line_is_reported_and_the_rest_still_shown() {
        let store = store_with(&format!(
            "{}\nnot json\n{}\n",
            line(1, "execute_request", "alice"),
            line(3, "stream", "alice")
        ));
        let (result, out, warnings) = run_log(&args(store.path(), true, Filter::default()));
        assert!(
            matches!(result, Err(ReviewError::Unreadable { count: 1 })),
            "{result:?}"
        );
        assert_eq!(out.lines().count(), 2);
        assert!(warnings.contains(":2: not a JSON object"), "{warnings}");
    }

    #[test]
    fn a_missing_or_foreign_directory_is_an_error_before_any_output() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (result, out, _) = run_log(&args(dir.path(), false, Filter::default()));
        assert!(
            matches!(result, Err(ReviewError::NotAStore(_))),
            "{result:?}"
        );
        assert!(out.is_empty());
        let (result, _, _) = run_log(&args(&dir.path().join("missing"), false, Filter::default()));
        let error = result.expect_err("missing store");
        assert!(error.to_string().contains("No such file"), "{error}");
    }
}
