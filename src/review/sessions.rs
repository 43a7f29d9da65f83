//! `jupyter-audit sessions`: one line per session (one proxy run): who, which notebook
//! and kernel, when it started and ended, how many cells ran, failed or were refused.
//!
//! A session is the records with one `jupyter.session_id` *and* one verified `user.id`:
//! the session id is written by the sender, so records that another user sent under the
//! same id make a session of their own instead of mixing into this one.
//!
//! With filters, a session is listed when at least one of its records matches them
//! (`--since` lists the sessions with activity since then, `--action error` those with
//! an error); its counts are always over all its records.
//!
//! - cells: `execute_request`s, not counting refused ones and records the proxy sent twice
//!   after a reconnection (`jupyter.resent`);
//! - errors: requests that produced an `error` output or an `execute_reply` with status
//!   `error`;
//! - refused: requests refused because they could not be recorded first.
//!
//! The end is the time of `session_end`. A session without one is `running` while its
//! proxy process (same host, same pid, started before the session) is alive, and
//! `ended abnormally` once it is gone (the proxy was killed: SIGKILL leaves no record);
//! on another host this cannot be known (`no end recorded`). A `session_end` that reports
//! a kernel killed by a signal, a non-zero exit code, or a launcher that went away
//! (`orphaned`) is `ended abnormally` too.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufWriter, Write};

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::filter::Filter;
use super::log::{SHORT_ID, end_description};
use super::source::{Prefilter, RecordSource};
use super::{ReviewError, fields};
use crate::audit::events::{self, Action};
use crate::store::StoredRecord;

/// How a session ended, as far as the store tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SessionState {
    #[serde(rename = "ended")]
    Ended,
    #[serde(rename = "ended abnormally")]
    EndedAbnormally,
    #[serde(rename = "running")]
    Running,
    /// No `session_end`, and whether the proxy still runs cannot be checked here.
    #[serde(rename = "no end recorded")]
    NoEndRecorded,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ended => "ended",
            Self::EndedAbnormally => "ended abnormally",
            Self::Running => "running",
            Self::NoEndRecorded => "no end recorded",
        }
    }
}

/// Sessions are told apart by their id and the verified user who sent the records.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub session_id: String,
    pub user_id: String,
}

impl SessionKey {
    /// The session a record belongs to; None for records outside sessions (the
    /// collector's own, and the review console's: their `jupyter.session_id` is the
    /// console process's, not a kernel's).
    pub fn of(value: &Value) -> Option<Self> {
        if Action::from_name(fields::action(value)).is_some_and(Action::is_review) {
            return None;
        }
        Some(SessionKey {
            session_id: fields::jupyter(value, "session_id")?.to_owned(),
            user_id: fields::os_user_id(value).unwrap_or_default().to_owned(),
        })
    }
}

/// What `sessions` shows of one session (and `--json` prints).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Session {
    pub session_id: String,
    pub user: Option<String>,
    /// How the collector established `user` (`jupyterhub`, `peercred`), `mixed` when
    /// the session's records differ (a reconnection the Hub did not vouch for).
    pub verified_by: Option<String>,
    pub user_id: String,
    pub host: Option<String>,
    pub kernel_id: Option<String>,
    pub kernel_name: Option<String>,
    /// `JPY_SESSION_NAME` as the proxy saw it (set by jupyter_server).
    pub notebook: Option<String>,
    pub hub_user: Option<String>,
    /// `@timestamp` of `session_start`, else of the session's first record.
    pub start: Option<String>,
    /// `@timestamp` of `session_end`.
    pub end: Option<String>,
    pub state: SessionState,
    /// Why the state is not a plain `ended`.
    pub end_reason: Option<String>,
    pub cells: u64,
    pub errors: u64,
    pub refused: u64,
    pub records: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// `@timestamp` of its last record.
    pub last_record: Option<String>,
    /// The proxy's pid (the collector's peer credentials of `session_start`).
    pub proxy_pid: Option<u32>,
}

/// The bookkeeping of one session while the store is read.
#[derive(Debug)]
struct Tracker {
    session: Session,
    has_start: bool,
    started: Option<OffsetDateTime>,
    ended: bool,
    /// execute_request msg_id → how many (not resent) records asked for it.
    executions: HashMap<String, u64>,
    refused: HashSet<String>,
    failed: HashSet<String>,
    /// (action, msg_id) of every record, to recognise resent duplicates.
    seen: HashSet<(String, String)>,
    matched: bool,
    /// How many sessions were met before this one (records come in review order).
    order: usize,
}

/// Whether a proxy process still runs: Some(alive) when it can be checked.
pub trait Liveness {
    fn alive(&self, host: &str, pid: u32, started: Option<OffsetDateTime>) -> Option<bool>;
}

/// Checks processes of this machine (Linux `/proc`, else `kill(pid, 0)`).
#[derive(Debug, Clone)]
pub struct LocalProcesses {
    hostname: Option<String>,
}

impl Default for LocalProcesses {
    fn default() -> Self {
        Self {
            hostname: nix::unistd::gethostname()
                .ok()
                .map(|name| name.to_string_lossy().into_owned()),
        }
    }
}

impl Liveness for LocalProcesses {
    fn alive(&self, host: &str, pid: u32, started: Option<OffsetDateTime>) -> Option<bool> {
        if self.hostname.as_deref() != Some(host) {
            return None;
        }
        let raw_pid = i32::try_from(pid).ok()?;
        match proc_state(pid) {
            // A zombie waiting for its parent has ended.
            Some(ProcState::Zombie) => Some(false),
            // A process started after the session did is a later one with the same pid.
            Some(ProcState::Started(since_epoch)) => Some(match started {
                Some(started) => since_epoch <= started.unix_timestamp() + 2,
                None => true,
            }),
            // No /proc entry we can read (not Linux, or hidepid): ask the kernel whether
            // the pid exists at all.
            None => {
                use nix::errno::Errno;
                let probe = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw_pid), None);
                Some(matches!(probe, Ok(()) | Err(Errno::EPERM)))
            }
        }
    }
}

enum ProcState {
    Zombie,
    /// Start time, seconds since the epoch.
    Started(i64),
}

/// A process's state and start time from `/proc`, when it can be read there.
fn proc_state(pid: u32) -> Option<ProcState> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses, may contain anything): state is field 3,
    // starttime (clock ticks after boot) field 22.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_ascii_whitespace().collect();
    if matches!(fields.first(), Some(&"Z" | &"X")) {
        return Some(ProcState::Zombie);
    }
    let ticks: i64 = fields.get(19)?.parse().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)?;
    let boot: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(ProcState::Started(boot + ticks / per_second))
}

/// Builds the sessions of a store from its records.
#[derive(Debug, Default)]
pub struct SessionIndex {
    trackers: HashMap<SessionKey, Tracker>,
}

fn owned(text: Option<&str>) -> Option<String> {
    text.map(str::to_owned)
}

impl SessionIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record; `matched` says whether it matches the query (a session is listed
    /// when one of its records does).
    pub fn add(&mut self, record: &StoredRecord, matched: bool) {
        let value = &record.value;
        let Some(key) = SessionKey::of(value) else {
            return;
        };
        let order = self.trackers.len();
        let tracker = self.trackers.entry(key.clone()).or_insert_with(|| Tracker {
            session: Session {
                session_id: key.session_id.clone(),
                user: None,
                verified_by: None,
                user_id: key.user_id.clone(),
                host: None,
                kernel_id: None,
                kernel_name: None,
                notebook: None,
                hub_user: None,
                start: None,
                end: None,
                state: SessionState::NoEndRecorded,
                end_reason: None,
                cells: 0,
                errors: 0,
                refused: 0,
                records: 0,
                first_sequence: record.sequence,
                last_sequence: record.sequence,
                last_record: None,
                proxy_pid: None,
            },
            has_start: false,
            started: None,
            ended: false,
            executions: HashMap::new(),
            refused: HashSet::new(),
            failed: HashSet::new(),
            seen: HashSet::new(),
            matched: false,
            order,
        });
        tracker.add(record);
        tracker.matched |= matched;
    }

    /// The sessions whose records matched, in the order they started, with their state
    /// decided by `liveness` when they have no end.
    pub fn finish(self, liveness: &dyn Liveness) -> Vec<Session> {
        let mut trackers: Vec<Tracker> = self
            .trackers
            .into_values()
            .filter(|tracker| tracker.matched)
            .collect();
        // The order of their first records: by sequence in one store, by time across
        // stores.
        trackers.sort_by_key(|tracker| tracker.order);
        trackers
            .into_iter()
            .map(|tracker| tracker.finish(liveness))
            .collect()
    }

    /// The one session of `key`, whether or not its records matched.
    pub fn take(&mut self, key: &SessionKey, liveness: &dyn Liveness) -> Option<Session> {
        Some(self.trackers.remove(key)?.finish(liveness))
    }
}

impl Tracker {
    fn add(&mut self, record: &StoredRecord) {
        let value = &record.value;
        let session = &mut self.session;
        let text = |key: &str| fields::jupyter(value, key);
        session.records += 1;
        session.first_sequence = session.first_sequence.min(record.sequence);
        session.last_sequence = session.last_sequence.max(record.sequence);
        let timestamp = fields::str_at(value, &["@timestamp"]);
        session.last_record = owned(timestamp);
        if session.start.is_none() {
            session.start = owned(timestamp);
        }
        if session.user.is_none() {
            session.user = owned(fields::str_at(value, &["user", "name"]));
        }
        // Records from before Hub attestation have no verified_by: peer credentials.
        let verified_by = fields::str_at(value, &["user", "verified_by"]).unwrap_or("peercred");
        match &session.verified_by {
            None => session.verified_by = Some(verified_by.to_owned()),
            Some(known) if known != verified_by && known != "mixed" => {
                session.verified_by = Some("mixed".to_owned());
            }
            Some(_) => {}
        }
        if session.host.is_none() {
            session.host = owned(fields::str_at(value, &["host", "name"]));
        }
        if session.kernel_id.is_none() {
            session.kernel_id = owned(text("kernel_id"));
        }
        if session.kernel_name.is_none() {
            session.kernel_name = owned(text("kernel_name"));
        }

        let action = fields::action(value);
        let msg_id = text("msg_id");
        if let Some(msg_id) = msg_id {
            let first = self.seen.insert((action.to_owned(), msg_id.to_owned()));
            let resent = fields::at(value, &["jupyter", "resent"]) == Some(&Value::Bool(true));
            if resent && !first {
                return;
            }
        }
        match (Action::from_name(action), action) {
            (Some(Action::SessionStart), _) if !self.has_start => {
                let start: events::SessionStart = fields::event(value);
                self.has_start = true;
                session.start = owned(timestamp);
                self.started = fields::timestamp(value);
                session.host = owned(fields::str_at(value, &["host", "name"]));
                session.notebook = start.notebook_path;
                session.hub_user = start.hub_user;
                session.proxy_pid = fields::at(value, &["process", "pid"])
                    .and_then(Value::as_u64)
                    .and_then(|pid| u32::try_from(pid).ok());
            }
            (Some(Action::SessionEnd), _) => {
                self.ended = true;
                session.end = owned(timestamp);
                session.end_reason = end_description(value);
                session.state = if session.end_reason.is_some() {
                    SessionState::EndedAbnormally
                } else {
                    SessionState::Ended
                };
            }
            (Some(Action::ExecutionRefused), _) => {
                if let Some(msg_id) = msg_id {
                    self.refused.insert(msg_id.to_owned());
                }
            }
            (Some(_), _) => {}
            (None, "execute_request") => {
                if let Some(msg_id) = msg_id {
                    *self.executions.entry(msg_id.to_owned()).or_default() += 1;
                }
            }
            (None, "error") => {
                if let Some(parent) = text("parent_msg_id") {
                    self.failed.insert(parent.to_owned());
                }
            }
            (None, "execute_reply") if text("status") == Some("error") => {
                if let Some(parent) = text("parent_msg_id") {
                    self.failed.insert(parent.to_owned());
                }
            }
            _ => {}
        }
    }

    fn finish(self, liveness: &dyn Liveness) -> Session {
        let mut session = self.session;
        session.cells = self
            .executions
            .iter()
            .filter(|(msg_id, _)| !self.refused.contains(*msg_id))
            .map(|(_, count)| count)
            .sum();
        session.refused = self.refused.len() as u64;
        session.errors = self.failed.len() as u64;
        if !self.ended {
            let alive = match (&session.host, session.proxy_pid) {
                (Some(host), Some(pid)) => liveness.alive(host, pid, self.started),
                _ => None,
            };
            (session.state, session.end_reason) = match alive {
                Some(true) => (SessionState::Running, None),
                Some(false) => (
                    SessionState::EndedAbnormally,
                    Some("no session_end: the proxy is gone (killed?)".into()),
                ),
                None => (
                    SessionState::NoEndRecorded,
                    Some(if self.has_start {
                        "no session_end, and its proxy runs on another host".into()
                    } else {
                        "neither session_start nor session_end recorded".into()
                    }),
                ),
            };
        }
        session
    }
}

/// What `sessions` lists, and how.
#[derive(Debug, Clone)]
pub struct SessionsOptions {
    /// Where the records are.
    pub source: RecordSource,
    /// Sessions with at least one record that matches it.
    pub filter: Filter,
    /// One JSON object per session instead of the table.
    pub json: bool,
}

/// Runs `sessions` on stdout and stderr.
pub fn run(args: &SessionsOptions) -> Result<(), ReviewError> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    run_with(
        args,
        &LocalProcesses::default(),
        &mut out,
        &mut io::stderr(),
    )?;
    out.flush().map_err(ReviewError::Output)
}

/// Runs `sessions`, writing the listing to `out` and warnings to `warnings`.
pub fn run_with(
    args: &SessionsOptions,
    liveness: &dyn Liveness,
    out: &mut dyn Write,
    warnings: &mut dyn Write,
) -> Result<(), ReviewError> {
    let filter = &args.filter;
    let mut index = SessionIndex::new();
    let report = args
        .source
        .scan(filter, Prefilter::Sessions, warnings, |record| {
            let matched = filter.matches(&record.raw, &record.value);
            index.add(&record, matched);
            Ok(())
        })?;
    let sessions = index.finish(liveness);
    if args.json {
        for session in &sessions {
            let line = serde_json::to_string(session).map_err(io::Error::from);
            line.and_then(|line| writeln!(out, "{line}"))
                .map_err(ReviewError::Output)?;
        }
    } else {
        write_table(&sessions, out).map_err(ReviewError::Output)?;
    }
    report.into_result()
}

/// A time for the table: to the second, UTC.
fn short_time(text: Option<&str>) -> String {
    match text.and_then(fields::parse_rfc3339) {
        Some(time) => fields::display_time(time)
            .rsplit_once('.')
            .map(|(seconds, _)| seconds.to_owned())
            .unwrap_or_default(),
        None => text.unwrap_or("-").to_owned(),
    }
}

/// What the END column says.
fn end_cell(session: &Session) -> String {
    match (session.state, &session.end) {
        (SessionState::Ended, Some(end)) => short_time(Some(end)),
        (SessionState::EndedAbnormally, Some(end)) => {
            format!("{} ended abnormally", short_time(Some(end)))
        }
        (state, _) => state.as_str().to_owned(),
    }
}

fn write_table(sessions: &[Session], out: &mut dyn Write) -> io::Result<()> {
    let rows: Vec<[String; 10]> = sessions
        .iter()
        .map(|session| {
            let safe = |text: Option<&str>, max| fields::for_terminal(text.unwrap_or("-"), max);
            [
                safe(
                    Some(
                        &session
                            .session_id
                            .chars()
                            .take(SHORT_ID)
                            .collect::<String>(),
                    ),
                    64,
                ),
                safe(session.user.as_deref().or(Some(&session.user_id)), 16),
                fields::for_terminal_keep_end(session.notebook.as_deref().unwrap_or("-"), 60),
                safe(session.kernel_name.as_deref(), 24),
                short_time(session.start.as_deref()),
                end_cell(session),
                session.cells.to_string(),
                session.errors.to_string(),
                session.refused.to_string(),
                safe(session.end_reason.as_deref(), 80),
            ]
        })
        .collect();
    let titles = [
        "SESSION",
        "USER",
        "NOTEBOOK",
        "KERNEL",
        "START (UTC)",
        "END",
        "CELLS",
        "ERRORS",
        "REFUSED",
        "NOTE",
    ];
    let mut widths = titles.map(|title| title.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let numeric = |column: usize| (6..9).contains(&column);
    let line = |cells: &[&str]| {
        let mut line = String::new();
        for (column, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            let pad = width.saturating_sub(cell.chars().count());
            if numeric(column) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        line.trim_end().to_owned()
    };
    writeln!(out, "{}", line(&titles))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;

    struct Fixed(Option<bool>);

    impl Liveness for Fixed {
        fn alive(&self, _: &str, _: u32, _: Option<OffsetDateTime>) -> Option<bool> {
            self.0
        }
    }

    fn stored(sequence: u64, value: Value) -> StoredRecord {
        StoredRecord::synthetic(sequence, value)
    }

    fn record(sequence: u64, session: &str, action: &str, jupyter: Value) -> StoredRecord {
        let mut fields =
            json!({"session_id": session, "kernel_id": "k1", "kernel_name": "python3"});
        if let (Some(fields), Some(extra)) = (fields.as_object_mut(), jupyter.as_object()) {
            fields.extend(extra.clone());
        }
        stored(
            sequence,
            json!({
                "@timestamp": format!("2024-05-01T12:00:{:02}Z", sequence % 60),
                "event": {"action": action, "sequence": sequence},
                "user": {"id": "1000", "name": "alice"},
                "host": {"name": "h"},
                "process": {"pid": 4242},
                "jupyter": fields,
            }),
        )
    }

    fn one_session() -> Vec<StoredRecord> {
        vec![
            record(
                1,
                "s1",
                "session_start",
                json!({"notebook_path": "work/a.ipynb"}),
            ),
            record(
                2,
                "s1",
                "execute_request",
                json!({"msg_id": "r1", "code": "1"}),
            ),
            record(
                3,
                "s1",
                "execute_reply",
                json!({"msg_id": "p1", "parent_msg_id": "r1", "status": "ok"}),
            ),
            record(
                4,
                "s1",
                "execute_request",
                json!({"msg_id": "r2", "code": "1/0"}),
            ),
            record(
                5,
                "s1",
                "error",
                json!({"msg_id": "e2", "parent_msg_id": "r2", "ename": "ZeroDivisionError"}),
            ),
            record(
                6,
                "s1",
                "execute_reply",
                json!({"msg_id": "p2", "parent_msg_id": "r2", "status": "error"}),
            ),
            // Sent again after a reconnection: counted once.
            record(
                7,
                "s1",
                "execute_request",
                json!({"msg_id": "r2", "code": "1/0", "resent": true}),
            ),
            record(
                8,
                "s1",
                "execute_request",
                json!({"msg_id": "r3", "code": "2", "write_ahead_failed": true}),
            ),
            record(
                9,
                "s1",
                "execution_refused",
                json!({"msg_id": "r3", "refused_msg_type": "execute_request"}),
            ),
        ]
    }

    fn build(records: &[StoredRecord], liveness: Option<bool>) -> Vec<Session> {
        let mut index = SessionIndex::new();
        for record in records {
            index.add(record, true);
        }
        index.finish(&Fixed(liveness))
    }

    #[test]
    fn counts_cells_errors_and_refusals() {
        let mut records = one_session();
        records.push(record(
            10,
            "s1",
            "session_end",
            json!({"exit_code": 0, "exit_signal": null, "orphaned": false}),
        ));
        let sessions = build(&records, None);
        assert_eq!(sessions.len(), 1);
        let session = &sessions[0];
        assert_eq!(session.user.as_deref(), Some("alice"));
        assert_eq!(session.notebook.as_deref(), Some("work/a.ipynb"));
        assert_eq!(session.kernel_name.as_deref(), Some("python3"));
        assert_eq!(session.start.as_deref(), Some("2024-05-01T12:00:01Z"));
        assert_eq!(session.end.as_deref(), Some("2024-05-01T12:00:10Z"));
        assert_eq!(session.state, SessionState::Ended);
        assert_eq!((session.cells, session.errors, session.refused), (2, 1, 1));
        assert_eq!((session.first_sequence, session.last_sequence), (1, 10));
        assert_eq!(session.proxy_pid, Some(4242));
    }

    #[test]
    fn a_missing_end_is_running_or_abnormal_by_the_proxy_process() {
        let records = one_session();
        assert_eq!(build(&records, Some(true))[0].state, SessionState::Running);
        let gone = &build(&records, Some(false))[0];
        assert_eq!(gone.state, SessionState::EndedAbnormally);
        assert!(
            gone.end_reason
                .as_deref()
                .is_some_and(|r| r.contains("gone"))
        );
        assert_eq!(build(&records, None)[0].state, SessionState::NoEndRecorded);
    }

    #[test]
    fn a_killed_kernel_or_lost_launcher_is_abnormal() {
        let mut records = one_session();
        records.push(record(
            10,
            "s1",
            "session_end",
            json!({"exit_code": null, "exit_signal": 9, "orphaned": true}),
        ));
        let session = &build(&records, Some(true))[0];
        assert_eq!(session.state, SessionState::EndedAbnormally);
        assert!(
            session
                .end_reason
                .as_deref()
                .is_some_and(|r| r.contains("SIGKILL"))
        );
    }

    #[test]
    fn another_users_records_under_the_same_id_are_another_session() {
        let mut records = one_session();
        let mut forged = record(
            10,
            "s1",
            "execute_request",
            json!({"msg_id": "x", "code": "evil"}),
        );
        forged.value["user"] = json!({"id": "1001", "name": "mallory"});
        records.push(forged);
        let sessions = build(&records, None);
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[0].cells, 2);
        assert_eq!(sessions[1].user.as_deref(), Some("mallory"));
        assert_eq!(sessions[1].cells, 1);
    }

    #[test]
    fn only_sessions_with_a_matching_record_are_listed() {
        let mut index = SessionIndex::new();
        for record in one_session() {
            index.add(&record, false);
        }
        index.add(
            &record(20, "s2", "execute_request", json!({"msg_id": "z"})),
            true,
        );
        let collector = stored(
            21,
            json!({"event": {"action": "collector_start", "sequence": 21}, "collector": {}}),
        );
        index.add(&collector, true);
        let sessions = index.finish(&Fixed(None));
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].session_id, "s2");
    }

    #[test]
    fn table_has_a_line_per_session() {
        let mut out = Vec::new();
        write_table(&build(&one_session(), Some(false)), &mut out).expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("SESSION  USER   NOTEBOOK"), "{text}");
        assert!(
            lines[1].starts_with("s1       alice  work/a.ipynb  python3"),
            "{text}"
        );
        assert!(
            lines[1].contains("2024-05-01 12:00:01  ended abnormally"),
            "{text}"
        );
    }

    #[test]
    fn this_process_is_alive_and_a_dead_pid_is_not() {
        let local = LocalProcesses::default();
        let host = local.hostname.clone().expect("hostname");
        let me = std::process::id();
        assert_eq!(local.alive(&host, me, None), Some(true));
        assert_eq!(
            local.alive(&host, me, Some(OffsetDateTime::now_utc())),
            Some(true)
        );
        // Started long after the session: the pid was reused.
        let long_ago = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(local.alive(&host, me, Some(long_ago)), Some(false));
        assert_eq!(local.alive("another-host", me, None), None);
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("reaped");
        assert_eq!(local.alive(&host, pid, None), Some(false));

        // Exited but not reaped yet: gone too.
        let mut zombie = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = zombie.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !matches!(proc_state(pid), Some(ProcState::Zombie))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(local.alive(&host, pid, None), Some(false));
        zombie.wait().expect("reaped");
    }
}
