//! Which process a session's records come from: each `jupyter.session_id` is bound to
//! the process that wrote its first record, and records for it from any other process
//! are refused.
//!
//! A proxy writes every record of its session from one process, for as long as it runs,
//! over as many connections as it needs (it reconnects after a collector restart). Code
//! in the kernel runs as the same user and knows the session id, so the uid alone does
//! not tell the proxy from its kernel; the process does. An owner is the uid, the pid and
//! the process's start time (`/proc/<pid>/stat`), so that a new process that reuses a
//! dead proxy's pid is not its owner either; bindings made before the machine's last
//! boot (`/proc/sys/kernel/random/boot_id`) belong to nobody alive.
//!
//! # On disk
//! `<store>/sessions.jsonl` holds one line per binding, `{"session": <first 8 bytes of
//! the SHA-256 of the id, hex>, "uid", "pid", "start"}`, and a `{"boot": <boot id>}` line
//! whenever the collector starts on a new boot. A binding is on disk (fdatasync) before
//! the first record of its session is handed to the store, and the file is read back
//! before the collector accepts a connection: a forger cannot claim a live session in
//! the moments after a restart before its proxy has reconnected. A torn last line (a
//! crash while writing it) is dropped: its record was never stored. On start the file is
//! rewritten when it holds many more lines than bindings.
//!
//! # Bounds
//! In memory a binding is a 64-bit key and 32 bytes. At most [`MAX_BINDINGS`] are kept
//! (about 45 MiB); beyond that the oldest bindings whose process is gone are forgotten
//! (a record claiming a forgotten session binds it anew, to its sender). One uid may
//! own at most [`MAX_OPEN_PER_UID`] sessions whose processes still run; its next new
//! session is refused, so that one user cannot fill the table with live bindings.
//! Where the collector cannot see the sender's process (another pid namespace, `/proc`
//! mounted with `hidepid`), an owner is its uid and pid only, and such bindings are the
//! first forgotten.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::server::PeerIdentity;
use crate::store::{self, StoreError};

/// Bindings kept in memory.
pub const MAX_BINDINGS: usize = 1 << 19;
/// Sessions of one uid whose owning processes still run.
pub const MAX_OPEN_PER_UID: usize = 4096;
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// Least time between two searches for room on behalf of one uid: a search reads
/// `/proc` for many bindings, and a sender at its limit must not make it run per record.
const PRUNE_PAUSE: Duration = Duration::from_secs(5);

/// The process a session belongs to. `pid` and `start` are 0 when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (field 22 of
    /// `/proc/<pid>/stat`).
    pub start: u64,
    /// The JupyterHub user the connection was attested as ([`hub_key`]), 0 for none.
    /// Where every kernel runs as one uid in containers the collector cannot see (pid
    /// 0), this is what keeps one user's kernel from writing another's session.
    pub hub: u64,
}

/// A Hub user name as [`Owner::hub`] keeps it: the first 8 bytes of its SHA-256 (never
/// 0, which means no Hub user).
pub fn hub_key(name: &str) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).max(1)
}

impl Owner {
    /// The owner a connection speaks for: its peer credentials and the start time of
    /// that process.
    pub async fn of(identity: &PeerIdentity) -> Owner {
        let pid = identity
            .pid
            .and_then(|pid| u32::try_from(pid).ok())
            .unwrap_or(0);
        let start = if pid == 0 {
            0
        } else {
            tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
                .await
                .ok()
                .and_then(|stat| start_time(&stat))
                .unwrap_or(0)
        };
        Owner {
            uid: identity.uid,
            pid,
            start,
            hub: identity.hub.as_ref().map_or(0, |hub| hub_key(&hub.name)),
        }
    }

    /// Whether the process still runs (blocking: reads `/proc`).
    fn liveness(&self) -> Liveness {
        if self.pid == 0 || self.start == 0 {
            // Never seen: a vanished /proc entry may only be hidden from us.
            return Liveness::Unknown;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => match start_time(&stat) {
                Some(start) if start == self.start => Liveness::Alive,
                Some(_) => Liveness::Gone,
                None => Liveness::Unknown,
            },
            Err(error) if error.kind() == io::ErrorKind::NotFound => Liveness::Gone,
            Err(_) => Liveness::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Alive,
    Gone,
    Unknown,
}

/// The start time (field 22) of a `/proc/<pid>/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn start_time(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name: field 22 is the 20th.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// The table's key for a session id: the sender chooses the id, so only a digest of it
/// is kept (bounded size, whatever was sent).
fn key_of(session_id: &str) -> u64 {
    let digest = Sha256::digest(session_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The answer to a claim.
#[derive(Debug)]
pub enum Claim {
    /// The session is this owner's, and the binding is on disk.
    Granted,
    /// The session belongs to another process.
    Forged { owner: Owner },
    /// The session is new but its sender may not open another one.
    Refused(String),
    /// The binding could not be written; the record must not be stored now (retry).
    Unavailable(StoreError),
}

#[derive(Debug, Clone, Copy)]
struct Binding {
    owner: Owner,
    /// Order of binding, oldest first (for forgetting).
    order: u64,
    /// The owner is gone: the binding matches nobody.
    ended: bool,
    /// On disk.
    durable: bool,
}

#[derive(Debug, Default)]
struct State {
    bindings: HashMap<u64, Binding>,
    /// Bindings not known to have ended, per uid.
    open_per_uid: HashMap<u32, usize>,
    next_order: u64,
    /// When room was last searched for on behalf of each uid.
    pruned_for: HashMap<u32, Instant>,
}

impl State {
    fn insert(&mut self, key: u64, owner: Owner, ended: bool, durable: bool) {
        let order = self.next_order;
        self.next_order += 1;
        let binding = Binding {
            owner,
            order,
            ended,
            durable,
        };
        if let Some(old) = self.bindings.insert(key, binding) {
            self.forget_open(&old);
        }
        if !ended {
            *self.open_per_uid.entry(owner.uid).or_default() += 1;
        }
    }

    fn forget_open(&mut self, binding: &Binding) {
        if binding.ended {
            return;
        }
        if let Some(count) = self.open_per_uid.get_mut(&binding.owner.uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.open_per_uid.remove(&binding.owner.uid);
            }
        }
    }

    fn remove(&mut self, key: u64) {
        if let Some(old) = self.bindings.remove(&key) {
            self.forget_open(&old);
        }
    }

    fn mark_ended(&mut self, key: u64) {
        if let Some(binding) = self.bindings.get(&key).copied()
            && !binding.ended
        {
            self.forget_open(&binding);
            if let Some(binding) = self.bindings.get_mut(&key) {
                binding.ended = true;
            }
        }
    }

    fn open_of(&self, uid: u32) -> usize {
        self.open_per_uid.get(&uid).copied().unwrap_or(0)
    }
}

/// The session bindings of one store, shared by all connections.
#[derive(Debug, Clone)]
pub struct SessionTable(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The bindings file; locked only in blocking threads.
    log: Mutex<Option<BindingLog>>,
    /// Binding lines waiting to be written: whoever holds the file next writes all of
    /// them with one sync (group commit), so sessions that start together do not wait
    /// for one sync each.
    queue: Mutex<BindingQueue>,
    /// Why the bindings could not be read: every claim is then refused (retry).
    unavailable: Option<String>,
    path: PathBuf,
    limits: Limits,
}

/// Lines waiting for the bindings file, and the ticket of the last one queued.
#[derive(Debug, Default)]
struct BindingQueue {
    lines: Vec<u8>,
    last_ticket: u64,
}

/// The table's bounds (constants but in tests).
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_bindings: usize,
    max_open_per_uid: usize,
    prune_pause: Duration,
}

const LIMITS: Limits = Limits {
    max_bindings: MAX_BINDINGS,
    max_open_per_uid: MAX_OPEN_PER_UID,
    prune_pause: PRUNE_PAUSE,
};

impl SessionTable {
    /// Reads the bindings of the store in `dir` (creating the file if needed).
    pub async fn load(dir: &Path) -> SessionTable {
        Self::load_with(dir, LIMITS).await
    }

    async fn load_with(dir: &Path, limits: Limits) -> SessionTable {
        let dir = dir.to_owned();
        let path = store::sessions_file(&dir);
        let loaded = tokio::task::spawn_blocking(move || load(&dir, limits.max_bindings))
            .await
            .unwrap_or_else(|error| Err(io::Error::other(error)));
        let (state, log, unavailable) = match loaded {
            Ok((state, log)) => {
                tracing::info!(bindings = state.bindings.len(), "session bindings loaded");
                (state, Some(log), None)
            }
            Err(error) => {
                let reason = format!(
                    "cannot read the session bindings {}: {error}",
                    path.display()
                );
                tracing::error!("{reason}; every proxy record is refused until this is fixed");
                (State::default(), None, Some(reason))
            }
        };
        SessionTable(Arc::new(Shared {
            state: Mutex::new(state),
            log: Mutex::new(log),
            queue: Mutex::default(),
            unavailable,
            path,
            limits,
        }))
    }

    /// Claims `session_id` for `owner`: granted when it is the owner's already or new
    /// (then written to disk before this returns).
    pub async fn claim(&self, session_id: &str, owner: Owner) -> Claim {
        if let Some(reason) = &self.0.unavailable {
            return Claim::Unavailable(StoreError::io(
                "read the session bindings",
                &self.0.path,
                io::Error::other(reason.clone()),
            ));
        }
        let key = key_of(session_id);
        let mut pruned = false;
        loop {
            match self.try_bind(key, owner, pruned) {
                Bind::Known => return Claim::Granted,
                Bind::Forged(owner) => return Claim::Forged { owner },
                Bind::Persist => return self.persist(key, owner).await,
                Bind::Full(reason) if pruned || !self.may_prune(owner.uid) => {
                    return Claim::Refused(reason);
                }
                Bind::Full(_) => {
                    let shared = Arc::clone(&self.0);
                    let _ = tokio::task::spawn_blocking(move || shared.prune(owner.uid)).await;
                    pruned = true;
                }
            }
        }
    }

    /// Whether room may be searched for on behalf of `uid` now (see [`PRUNE_PAUSE`]).
    fn may_prune(&self, uid: u32) -> bool {
        let mut state = self.0.state();
        let now = Instant::now();
        match state.pruned_for.get(&uid) {
            Some(last) if now.duration_since(*last) < self.0.limits.prune_pause => false,
            _ => {
                state.pruned_for.insert(uid, now);
                true
            }
        }
    }

    fn try_bind(&self, key: u64, owner: Owner, pruned: bool) -> Bind {
        let mut state = self.0.state();
        match state.bindings.get(&key) {
            Some(binding) if binding.owner == owner && !binding.ended => {
                if binding.durable {
                    Bind::Known
                } else {
                    Bind::Persist
                }
            }
            Some(binding) => Bind::Forged(binding.owner),
            None => {
                if state.open_of(owner.uid) >= self.0.limits.max_open_per_uid {
                    return Bind::Full(format!(
                        "uid {} already has {} sessions whose processes still run",
                        owner.uid, self.0.limits.max_open_per_uid
                    ));
                }
                if state.bindings.len() >= self.0.limits.max_bindings {
                    if pruned {
                        tracing::error!(
                            bindings = state.bindings.len(),
                            "the session table is full of running sessions; new sessions are refused"
                        );
                    }
                    return Bind::Full(format!(
                        "the collector's table of {} sessions is full",
                        self.0.limits.max_bindings
                    ));
                }
                state.insert(key, owner, false, false);
                Bind::Persist
            }
        }
    }

    async fn persist(&self, key: u64, owner: Owner) -> Claim {
        let shared = Arc::clone(&self.0);
        let line = serde_json::to_vec(&binding_line(key, owner, false));
        let written = tokio::task::spawn_blocking(move || {
            let mut line = line.map_err(io::Error::other)?;
            line.push(b'\n');
            let ticket = {
                let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                queue.lines.extend_from_slice(&line);
                queue.last_ticket += 1;
                queue.last_ticket
            };
            let mut log = shared.log.lock().unwrap_or_else(|p| p.into_inner());
            let Some(log) = log.as_mut() else {
                return Err(io::Error::other("the bindings file is not open"));
            };
            log.commit(ticket, || {
                let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                (std::mem::take(&mut queue.lines), queue.last_ticket)
            })
        })
        .await
        .unwrap_or_else(|error| Err(io::Error::other(error)));
        match written {
            Ok(()) => {
                let mut state = self.0.state();
                match state.bindings.get_mut(&key) {
                    Some(binding) if binding.owner == owner => {
                        binding.durable = true;
                        Claim::Granted
                    }
                    // Forgotten meanwhile (pruned as unknown): the line on disk still
                    // names this owner, so the binding stands.
                    None => {
                        state.insert(key, owner, false, true);
                        Claim::Granted
                    }
                    Some(binding) => Claim::Forged {
                        owner: binding.owner,
                    },
                }
            }
            Err(error) => {
                tracing::error!(%error, path = %self.0.path.display(), "cannot write a session binding");
                Claim::Unavailable(StoreError::io(
                    "write a session binding to",
                    &self.0.path,
                    error,
                ))
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.state().bindings.len()
    }
}

enum Bind {
    Known,
    Forged(Owner),
    Persist,
    Full(String),
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room (blocking: reads `/proc`): bindings whose process is gone are marked
    /// ended; if `uid` is still at its limit its bindings of unknown liveness are
    /// forgotten, oldest first; if the table is full, the oldest ended bindings go, then
    /// those of unknown liveness. The checks run without the lock held.
    fn prune(&self, uid: u32) {
        let (whole_table, candidates): (bool, Vec<(u64, Owner, u64)>) = {
            let state = self.state();
            let whole_table = state.bindings.len() >= self.limits.max_bindings;
            let candidates = state
                .bindings
                .iter()
                .filter(|(_, b)| !b.ended && (whole_table || b.owner.uid == uid))
                .map(|(key, b)| (*key, b.owner, b.order))
                .collect();
            (whole_table, candidates)
        };
        let mut unknown = Vec::new();
        let mut gone = Vec::new();
        for (key, owner, order) in candidates {
            match owner.liveness() {
                Liveness::Alive => {}
                Liveness::Gone => gone.push((order, key)),
                Liveness::Unknown => unknown.push((order, key, owner.uid)),
            }
        }
        unknown.sort_unstable();
        let mut state = self.state();
        // Only bindings still as they were checked: one may have been replaced meanwhile.
        let unchanged = |state: &State, order: u64, key: u64| {
            state.bindings.get(&key).is_some_and(|b| b.order == order)
        };
        for (order, key) in &gone {
            if unchanged(&state, *order, *key) {
                state.mark_ended(*key);
            }
        }
        let low_water = self.limits.max_open_per_uid - self.limits.max_open_per_uid / 8;
        for (order, key, owner_uid) in &unknown {
            if *owner_uid == uid
                && state.open_of(uid) > low_water
                && unchanged(&state, *order, *key)
            {
                state.remove(*key);
            }
        }
        let mut forgotten = 0usize;
        if whole_table {
            let target = self.limits.max_bindings - self.limits.max_bindings / 8;
            let ended = ended_oldest_first(&state);
            let unknown_keys = unknown.iter().map(|(order, key, _)| (*order, *key));
            for (order, key) in ended.into_iter().chain(unknown_keys) {
                if state.bindings.len() <= target {
                    break;
                }
                if unchanged(&state, order, key) {
                    state.remove(key);
                    forgotten += 1;
                }
            }
        }
        tracing::info!(
            uid,
            ended = gone.len(),
            forgotten,
            bindings = state.bindings.len(),
            "session bindings pruned"
        );
    }
}

/// One line of the bindings file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Binding {
        session: String,
        uid: u32,
        pid: u32,
        start: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        hub: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ended: bool,
    },
    Boot {
        boot: String,
    },
}

/// The open bindings file.
#[derive(Debug)]
struct BindingLog {
    file: File,
    /// Bytes of whole lines: a failed append is cut back to this, so that the next
    /// line does not continue a partial one.
    length: u64,
    /// Every line queued up to this ticket has been taken from the queue and written
    /// (or failed); up to `synced`, written and synced.
    taken: u64,
    synced: u64,
    /// Tickets of recent batches that failed, `(after, through]`.
    failed: std::collections::VecDeque<(u64, u64)>,
}

/// Failed batches remembered: waiters are blocked on the file's lock, so they learn
/// their batch's fate long before this many more batches have failed.
const FAILED_BATCHES_REMEMBERED: usize = 64;

impl BindingLog {
    fn new(file: File) -> io::Result<Self> {
        let length = file.metadata()?.len();
        Ok(BindingLog {
            file,
            length,
            taken: 0,
            synced: 0,
            failed: std::collections::VecDeque::new(),
        })
    }

    /// Makes the line with `ticket` durable: it may be already (a batch written by an
    /// earlier holder of the file), else this writes every queued line (`take`) and
    /// syncs once.
    fn commit(&mut self, ticket: u64, take: impl FnOnce() -> (Vec<u8>, u64)) -> io::Result<()> {
        if let Some(failed) = self
            .failed
            .iter()
            .find(|(after, through)| ticket > *after && ticket <= *through)
        {
            return Err(io::Error::other(format!(
                "the batch of session bindings through {} could not be written",
                failed.1
            )));
        }
        if ticket <= self.synced {
            return Ok(());
        }
        let (lines, through) = take();
        let after = self.taken;
        self.taken = through;
        match self.append_bytes(&lines) {
            Ok(()) => {
                self.synced = through;
                Ok(())
            }
            Err(error) => {
                if self.failed.len() == FAILED_BATCHES_REMEMBERED {
                    self.failed.pop_front();
                }
                self.failed.push_back((after, through));
                Err(error)
            }
        }
    }

    fn append_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        let written = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.length += bytes.len() as u64;
                Ok(())
            }
            Err(error) => {
                if let Err(cut) = self.file.set_len(self.length) {
                    tracing::error!(%cut, "cannot cut a failed session binding back");
                }
                Err(error)
            }
        }
    }
}

fn binding_line(key: u64, owner: Owner, ended: bool) -> Line {
    Line::Binding {
        session: format!("{key:016x}"),
        uid: owner.uid,
        pid: owner.pid,
        start: owner.start,
        hub: owner.hub,
        ended,
    }
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn write_line(file: &mut File, line: &Line) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(line).map_err(io::Error::other)?;
    bytes.push(b'\n');
    file.write_all(&bytes)
}

fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    options
}

fn current_boot() -> String {
    std::fs::read_to_string(BOOT_ID)
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}

/// Reads the bindings file in `dir` (blocking); returns the table and the file, open for
/// appending, with the current boot marked.
fn load(dir: &Path, max_bindings: usize) -> io::Result<(State, BindingLog)> {
    let path = store::sessions_file(dir);
    let boot = current_boot();
    let mut file = open_options()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)?;
    let mut state = State::default();
    let mut lines = 0usize;
    let mut last_boot: Option<String> = None;
    let mut good_length = 0u64;
    {
        let mut reader = BufReader::new(&file);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            let read = reader.read_until(b'\n', &mut buffer)?;
            if read == 0 {
                break;
            }
            if buffer.last() != Some(&b'\n') {
                // A torn last line: its record was never handed to the store.
                tracing::warn!(path = %path.display(), bytes = read, "torn last session binding dropped");
                break;
            }
            lines += 1;
            match serde_json::from_slice::<Line>(&buffer) {
                Ok(Line::Boot { boot }) => last_boot = Some(boot),
                Ok(Line::Binding {
                    session,
                    uid,
                    pid,
                    start,
                    hub,
                    ended,
                }) => {
                    let key = u64::from_str_radix(&session, 16).map_err(|_| {
                        io::Error::other(format!("line {lines}: bad session key {session:?}"))
                    })?;
                    let previous_boot = last_boot.as_deref().is_some_and(|b| b != boot);
                    let owner = Owner {
                        uid,
                        pid,
                        start,
                        hub,
                    };
                    state.insert(key, owner, ended || previous_boot, true);
                    if state.bindings.len() > 2 * max_bindings {
                        forget_oldest_ended(&mut state, max_bindings);
                    }
                }
                Err(error) => {
                    return Err(io::Error::other(format!(
                        "line {lines} is not a session binding: {error}"
                    )));
                }
            }
            good_length += read as u64;
        }
    }
    if good_length < file.metadata()?.len() {
        file.set_len(good_length)?;
    }
    if state.bindings.len() > max_bindings {
        forget_oldest_ended(&mut state, max_bindings);
    }
    if lines > 2 * state.bindings.len() + 1024 {
        file = rewrite(dir, &state, &boot)?;
    } else if last_boot.as_deref() != Some(boot.as_str()) {
        write_line(&mut file, &Line::Boot { boot })?;
        file.sync_data()?;
    }
    File::open(dir)?.sync_all()?;
    Ok((state, BindingLog::new(file)?))
}

/// The bindings known to have ended, as (order, key), oldest first.
fn ended_oldest_first(state: &State) -> Vec<(u64, u64)> {
    let mut ended: Vec<(u64, u64)> = state
        .bindings
        .iter()
        .filter(|(_, binding)| binding.ended)
        .map(|(key, binding)| (binding.order, *key))
        .collect();
    ended.sort_unstable();
    ended
}

/// Forgets the oldest bindings known to have ended until at most `max` are left (at
/// load, ended means from an earlier boot).
fn forget_oldest_ended(state: &mut State, max: usize) {
    let ended = ended_oldest_first(state);
    let excess = state.bindings.len().saturating_sub(max);
    for (_, key) in ended.into_iter().take(excess) {
        state.remove(key);
    }
}

/// Writes the bindings in `state` to a fresh file that replaces the old one; returns it
/// open for appending.
fn rewrite(dir: &Path, state: &State, boot: &str) -> io::Result<File> {
    let path = store::sessions_file(dir);
    let new_path = store::sessions_rewrite_file(dir);
    let mut new = open_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&new_path)?;
    write_line(
        &mut new,
        &Line::Boot {
            boot: boot.to_owned(),
        },
    )?;
    let mut bindings: Vec<(&u64, &Binding)> = state.bindings.iter().collect();
    bindings.sort_unstable_by_key(|(_, b)| b.order);
    let mut out = io::BufWriter::new(new);
    for (key, binding) in bindings {
        let mut bytes = serde_json::to_vec(&binding_line(*key, binding.owner, binding.ended))
            .map_err(io::Error::other)?;
        bytes.push(b'\n');
        out.write_all(&bytes)?;
    }
    let new = out.into_inner().map_err(|error| error.into_error())?;
    new.sync_all()?;
    std::fs::rename(&new_path, &path)?;
    tracing::info!(path = %path.display(), bindings = state.bindings.len(), "session bindings file rewritten");
    open_options().read(true).append(true).open(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: u32, pid: u32, start: u64) -> Owner {
        Owner {
            uid,
            pid,
            start,
            hub: 0,
        }
    }

    fn limits(max_bindings: usize, max_open_per_uid: usize) -> Limits {
        Limits {
            max_bindings,
            max_open_per_uid,
            prune_pause: Duration::ZERO,
        }
    }

    /// This test process, as a connection from it would be seen.
    async fn this_process() -> Owner {
        Owner::of(&PeerIdentity {
            uid: nix::unistd::getuid().as_raw(),
            gid: 0,
            pid: i32::try_from(std::process::id()).ok(),
            user_name: None,
            hub: None,
        })
        .await
    }

    #[test]
    fn the_start_time_is_read_after_the_command_name() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 200 18446744073709551615";
        assert_eq!(start_time(stat), Some(987654));
        assert_eq!(start_time("garbage"), None);
        assert_eq!(start_time("1 (x) S 1"), None);
    }

    #[tokio::test]
    async fn a_connection_knows_its_process_start() {
        let me = this_process().await;
        assert_eq!(me.pid, std::process::id());
        assert_ne!(me.start, 0, "/proc/self/stat gives a start time");
        assert_eq!(me.liveness(), Liveness::Alive);
        assert_eq!(
            owner(me.uid, me.pid, me.start + 1).liveness(),
            Liveness::Gone
        );
        assert_eq!(owner(me.uid, 0, 0).liveness(), Liveness::Unknown);
    }

    #[tokio::test]
    async fn the_first_writer_owns_the_session_and_others_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = SessionTable::load(dir.path()).await;
        let proxy = owner(1000, 10, 500);
        assert!(matches!(table.claim("s1", proxy).await, Claim::Granted));
        assert!(matches!(table.claim("s1", proxy).await, Claim::Granted));
        // The kernel: same user, another process.
        let kernel = owner(1000, 11, 501);
        assert!(
            matches!(table.claim("s1", kernel).await, Claim::Forged { owner } if owner == proxy)
        );
        // A process that reuses the proxy's pid later.
        let reused = owner(1000, 10, 900);
        assert!(matches!(
            table.claim("s1", reused).await,
            Claim::Forged { .. }
        ));
        // Another user.
        assert!(matches!(
            table.claim("s1", owner(1001, 10, 500)).await,
            Claim::Forged { .. }
        ));
        assert!(matches!(table.claim("s2", kernel).await, Claim::Granted));
    }

    #[tokio::test]
    async fn bindings_survive_a_restart_and_a_torn_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy = owner(1000, 10, 500);
        {
            let table = SessionTable::load(dir.path()).await;
            assert!(matches!(table.claim("s1", proxy).await, Claim::Granted));
        }
        let path = store::sessions_file(dir.path());
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(b"{\"session\":\"00").expect("torn");
        drop(file);

        let table = SessionTable::load(dir.path()).await;
        assert!(matches!(
            table.claim("s1", owner(1000, 11, 1)).await,
            Claim::Forged { .. }
        ));
        assert!(matches!(table.claim("s1", proxy).await, Claim::Granted));
        assert!(matches!(table.claim("s2", proxy).await, Claim::Granted));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.ends_with('\n') && !text.contains("\"00\n"), "{text}");
        assert_eq!(
            text.lines().filter(|l| l.contains("\"session\"")).count(),
            2,
            "{text}"
        );
        let mode = std::fs::metadata(&path).expect("stat").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sessions_that_start_together_are_all_bound_durably() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy = owner(1000, 10, 500);
        {
            let table = SessionTable::load(dir.path()).await;
            let claims: Vec<_> = (0..64)
                .map(|index| {
                    let table = table.clone();
                    tokio::spawn(async move { table.claim(&format!("s{index}"), proxy).await })
                })
                .collect();
            for claim in claims {
                assert!(matches!(claim.await.expect("joined"), Claim::Granted));
            }
        }
        let text = std::fs::read_to_string(store::sessions_file(dir.path())).expect("read");
        assert_eq!(
            text.lines().filter(|l| l.contains("\"session\"")).count(),
            64,
            "one line per session, written in batches"
        );
        let table = SessionTable::load(dir.path()).await;
        for index in 0..64 {
            assert!(matches!(
                table.claim(&format!("s{index}"), owner(1000, 11, 1)).await,
                Claim::Forged { .. }
            ));
        }
    }

    #[tokio::test]
    async fn bindings_of_an_earlier_boot_belong_to_nobody() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy = owner(1000, 10, 500);
        let lines = format!(
            "{}\n{}\n",
            serde_json::to_string(&Line::Boot {
                boot: "an-earlier-boot".into()
            })
            .expect("json"),
            serde_json::to_string(&binding_line(key_of("old"), proxy, false)).expect("json"),
        );
        std::fs::write(store::sessions_file(dir.path()), lines).expect("write");
        let table = SessionTable::load(dir.path()).await;
        // Same uid, pid and start time as before the reboot: still not the owner.
        assert!(matches!(
            table.claim("old", proxy).await,
            Claim::Forged { .. }
        ));
    }

    #[tokio::test]
    async fn a_damaged_bindings_file_refuses_every_claim_with_retry() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(store::sessions_file(dir.path()), "not json\n").expect("write");
        let table = SessionTable::load(dir.path()).await;
        assert!(matches!(
            table.claim("s1", owner(1000, 10, 500)).await,
            Claim::Unavailable(_)
        ));
    }

    #[tokio::test]
    async fn one_uid_cannot_hold_more_running_sessions_than_its_share() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = SessionTable::load_with(dir.path(), limits(100, 4)).await;
        let me = this_process().await;
        for n in 0..4 {
            assert!(matches!(
                table.claim(&format!("s{n}"), me).await,
                Claim::Granted
            ));
        }
        // All four still run (this process): the fifth is refused.
        assert!(matches!(table.claim("s4", me).await, Claim::Refused(_)));
        // Another uid is not affected.
        assert!(matches!(
            table.claim("t0", owner(me.uid + 1, 10, 5)).await,
            Claim::Granted
        ));
        // Sessions of processes that are gone do not count.
        let gone = owner(me.uid, me.pid, me.start + 1);
        let dir = tempfile::tempdir().expect("tempdir");
        let table = SessionTable::load_with(dir.path(), limits(100, 4)).await;
        for n in 0..10 {
            assert!(
                matches!(table.claim(&format!("g{n}"), gone).await, Claim::Granted),
                "{n}"
            );
        }
        assert!(
            matches!(table.claim("g0", me).await, Claim::Forged { .. }),
            "ended, still bound"
        );
    }

    #[tokio::test]
    async fn a_full_table_forgets_the_oldest_ended_sessions_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = SessionTable::load_with(dir.path(), limits(16, 16)).await;
        let me = this_process().await;
        let gone = owner(me.uid + 1, me.pid, me.start + 1);
        assert!(matches!(table.claim("live", me).await, Claim::Granted));
        for n in 0..40 {
            assert!(
                matches!(table.claim(&format!("g{n}"), gone).await, Claim::Granted),
                "{n}"
            );
        }
        assert!(table.len() <= 16, "{}", table.len());
        // The running session is never forgotten; the newest ended ones are kept.
        assert!(matches!(table.claim("live", me).await, Claim::Granted));
        assert!(matches!(table.claim("g39", me).await, Claim::Forged { .. }));
        // The oldest were forgotten: such a claim binds anew.
        assert!(matches!(table.claim("g0", me).await, Claim::Granted));
    }

    #[tokio::test]
    async fn a_long_bindings_file_is_rewritten_on_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store::sessions_file(dir.path());
        let mut text = String::new();
        // The same session bound again and again: one binding, many lines.
        for _ in 0..3000 {
            text += &serde_json::to_string(&binding_line(key_of("s"), owner(1, 2, 3), false))
                .expect("json");
            text.push('\n');
        }
        std::fs::write(&path, text).expect("write");
        let table = SessionTable::load(dir.path()).await;
        assert_eq!(table.len(), 1);
        let kept = std::fs::read_to_string(&path).expect("read");
        assert_eq!(kept.lines().count(), 2, "{kept}");
        assert!(!store::sessions_rewrite_file(dir.path()).exists());
        assert!(matches!(
            table.claim("s", owner(1, 2, 3)).await,
            Claim::Granted
        ));
        assert!(matches!(
            table.claim("t", owner(1, 2, 3)).await,
            Claim::Granted
        ));
        let after = std::fs::read_to_string(&path).expect("read");
        assert_eq!(after.lines().count(), 3, "{after}");
    }
}
