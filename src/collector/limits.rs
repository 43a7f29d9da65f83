//! The collector's fairness limits: how much of the collector one user may take, so
//! that one user cannot halt the others. A user is the peer's uid (SO_PEERCRED).
//!
//! - Connections: at most `max_connections_per_user` at once per uid, and
//!   `max_connections` in all (below the descriptor limit); the excess is closed at
//!   once. A connection must say hello within `hello_timeout`; one that sends nothing
//!   for `idle_timeout` is closed (the proxy reconnects by itself when it has a record).
//! - Memory: a frame's bytes are read into memory only once they fit the uid's
//!   in-flight budget and the global one, and stay counted until the store has the
//!   record. Once admitted, the body must arrive within `frame_timeout`, or the
//!   connection is cut (a slow or stalled sender holds its own budget only). Parsed,
//!   JSON takes more room than its bytes (up to 32 times for an array of small
//!   numbers): a frame whose parse would take more than a per-user budget is refused
//!   without being parsed, and large parses take turns within one such budget.
//! - Storage rate: a uid that stores faster than `storage_rate` for longer than its
//!   burst is slowed: none of its connections is read until it is back within its rate.
//!   The proxy passes this on as back-pressure to the kernel's output; nothing is lost.
//! - Disk: while the store's filesystem has less free space than the reserve, a uid
//!   that stored more than its share (`storage_share_bytes` over the last
//!   `storage_share_window`) is refused, without retry, urgent or not (the sender sets
//!   that flag). The reserve is for users within their share: all of their records go
//!   in until the disk is full. (Refusing their outputs to keep room for write-ahead
//!   would lose records on a stale sample the moment space comes back, where a full
//!   disk makes the proxy keep them and send them again.)
//!
//! Root and the collector's own uid get no exemption: the collector's own records do
//! not come through the socket, and a root process is one more user here.
//!
//! Every refusal and cut is counted per uid and limit; [`Fairness::due_reports`] hands
//! the counts out at most once per uid and limit every [`REPORT_INTERVAL`], for the
//! log and a `limit_exceeded` record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncRead;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
// Tokio's clock, so that tests with paused time see the rate and window move.
use tokio::time::Instant;

use super::disk::DiskSpace;
use super::incoming::{SenderFrame, SenderRecord};
use super::protocol::{
    MAX_FRAME_BYTES, ProtocolError, read_frame_body, read_frame_bytes, read_frame_length,
};
use crate::audit::events::{LimitExceeded, LimitPeer};
use crate::sync::lock;

const MIB: u64 = 1024 * 1024;
/// The largest hello frame (a real one is about 30 bytes).
pub const HELLO_MAX_BYTES: usize = 4096;
/// At most one report per uid and limit this often.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Descriptors kept for everything but connections: the store's files, the runtime,
/// name lookups.
pub const DESCRIPTOR_RESERVE: u64 = 128;
/// What a record costs on disk besides its frame (stamped identity, sequence, chain).
const RECORD_OVERHEAD: u64 = 512;
/// Memory one parsed JSON value takes beyond its text: serde_json's `Value` (32 bytes)
/// in a vector that may have doubled, or a map entry. Measured: an array of 30 million
/// zeros took 1.8 GB.
const PARSED_VALUE_BYTES: u64 = 64;
/// Parses estimated below this share no budget (their memory is brief and small).
const SMALL_PARSE_BYTES: u64 = 1024 * 1024;

/// The limits, as configured. [`Limits::default`] is sized for a host of about 500
/// users; README "Known limits" explains each figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Connections one uid may hold at once.
    pub max_connections_per_user: usize,
    /// Connections in all; `0`: the descriptor limit less [`DESCRIPTOR_RESERVE`].
    pub max_connections: usize,
    /// How long a new connection may take to say hello.
    pub hello_timeout: Duration,
    /// A connection that sends nothing this long is closed; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// How long the body of an admitted frame may take to arrive.
    pub frame_timeout: Duration,
    /// Bytes of one uid's frames in memory or waiting for the store.
    pub in_flight_bytes_per_user: u64,
    /// Bytes of everyone's frames in memory or waiting for the store.
    pub in_flight_bytes: u64,
    /// Bytes per second one uid may store in the long run; `0`: unlimited.
    pub storage_rate_bytes_per_sec: u64,
    /// Bytes one uid may store at once above its rate.
    pub storage_burst_bytes: u64,
    /// What one uid may store within `storage_share_window` and still count as within
    /// its share when the disk is low.
    pub storage_share_bytes: u64,
    pub storage_share_window: Duration,
    /// Free space kept for users within their share: the larger of these two, the
    /// bytes counting up to a tenth of the filesystem (so that the default does not
    /// take a small store's whole disk).
    pub disk_reserve_bytes: u64,
    pub disk_reserve_percent: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections_per_user: 128,
            max_connections: 0,
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(3600)),
            frame_timeout: Duration::from_secs(30),
            in_flight_bytes_per_user: 96 * MIB,
            in_flight_bytes: 1024 * MIB,
            storage_rate_bytes_per_sec: 32 * MIB,
            storage_burst_bytes: 512 * MIB,
            storage_share_bytes: 1024 * MIB,
            storage_share_window: Duration::from_secs(3600),
            disk_reserve_bytes: 1024 * MIB,
            disk_reserve_percent: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid limit: {0}")]
pub struct InvalidLimit(String);

impl Limits {
    /// Checks that the limits let every legitimate record through.
    pub fn check(&self) -> Result<(), InvalidLimit> {
        let max_frame = MAX_FRAME_BYTES as u64;
        let fail = |text: String| Err(InvalidLimit(text));
        if self.in_flight_bytes_per_user < max_frame {
            return fail(format!(
                "in_flight_bytes_per_user ({}) must hold the largest frame ({max_frame} bytes)",
                self.in_flight_bytes_per_user
            ));
        }
        if self.in_flight_bytes < self.in_flight_bytes_per_user {
            return fail(format!(
                "in_flight_bytes ({}) must be at least in_flight_bytes_per_user ({})",
                self.in_flight_bytes, self.in_flight_bytes_per_user
            ));
        }
        match usize::try_from(self.in_flight_bytes) {
            Ok(bytes) if bytes <= Semaphore::MAX_PERMITS => {}
            _ => {
                return fail(format!(
                    "in_flight_bytes ({}) is too large",
                    self.in_flight_bytes
                ));
            }
        }
        if self.max_connections_per_user == 0 {
            return fail("max_connections_per_user must be at least 1".into());
        }
        if self.hello_timeout.is_zero() || self.frame_timeout.is_zero() {
            return fail("hello_timeout and frame_timeout must be longer than 0 s".into());
        }
        if self.storage_share_window.is_zero() {
            return fail("storage_share_window must be longer than 0 s".into());
        }
        if self.disk_reserve_percent > 100 {
            return fail(format!(
                "disk_reserve_percent ({}) is over 100",
                self.disk_reserve_percent
            ));
        }
        Ok(())
    }

    /// The free space kept on a filesystem of `total` bytes.
    pub fn disk_reserve(&self, total: u64) -> u64 {
        let share = u128::from(total) * u128::from(self.disk_reserve_percent) / 100;
        let share = u64::try_from(share).unwrap_or(u64::MAX);
        self.disk_reserve_bytes.min(total / 10).max(share)
    }

    /// The limits as the collector_start record shows them.
    pub fn fields(&self) -> Value {
        json!({
            "max_connections_per_user": self.max_connections_per_user,
            "max_connections": self.max_connections,
            "hello_timeout_secs": self.hello_timeout.as_secs_f64(),
            "idle_timeout_secs": self.idle_timeout.map(|idle| idle.as_secs_f64()),
            "frame_timeout_secs": self.frame_timeout.as_secs_f64(),
            "in_flight_bytes_per_user": self.in_flight_bytes_per_user,
            "in_flight_bytes": self.in_flight_bytes,
            "storage_rate_bytes_per_sec": self.storage_rate_bytes_per_sec,
            "storage_burst_bytes": self.storage_burst_bytes,
            "storage_share_bytes": self.storage_share_bytes,
            "storage_share_window_secs": self.storage_share_window.as_secs_f64(),
            "disk_reserve_bytes": self.disk_reserve_bytes,
            "disk_reserve_percent": self.disk_reserve_percent,
        })
    }
}

/// Raises the soft limit on open descriptors to the hard limit; returns the new soft
/// limit (or the old one, with the error, when it cannot be raised).
pub fn raise_descriptor_limit() -> Result<u64, (u64, nix::Error)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|error| (0, error))?;
    if soft >= hard {
        return Ok(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Ok(hard),
        Err(error) => Err((soft, error)),
    }
}

/// The connection cap that leaves room for everything else under a descriptor limit.
pub fn connection_cap(descriptor_limit: u64, configured: usize) -> usize {
    let room = descriptor_limit.saturating_sub(DESCRIPTOR_RESERVE).max(1);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if configured == 0 {
        room
    } else {
        configured.min(room)
    }
}

/// What was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Limit {
    /// A connection past the cap on all connections (closed at once).
    Connections,
    /// A connection past the uid's cap (closed at once).
    ConnectionsPerUser,
    /// A connection that did not say hello in time, or said it wrong (closed).
    HelloTimeout,
    /// An admitted frame whose body did not arrive in time (connection cut).
    FrameTimeout,
    /// A record refused: the disk is below its reserve and the uid is over its share.
    StorageShare,
    /// A record refused unparsed: parsed, it would take more memory than a user's
    /// in-flight budget.
    RecordTooComplex,
}

impl Limit {
    /// The name on the record (`collector.limit`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::ConnectionsPerUser => "connections_per_user",
            Self::HelloTimeout => "hello_timeout",
            Self::FrameTimeout => "frame_timeout",
            Self::StorageShare => "storage_share",
            Self::RecordTooComplex => "record_too_complex",
        }
    }
}

/// The uid's long-run storage rate: a token bucket that may go into debt, so that any
/// frame can pass and the uid then waits until it has paid for it.
#[derive(Debug)]
struct RateBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl RateBucket {
    fn new(limits: &Limits, now: Instant) -> Self {
        Self {
            rate: limits.storage_rate_bytes_per_sec as f64,
            burst: limits.storage_burst_bytes as f64,
            tokens: limits.storage_burst_bytes as f64,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
    }

    fn charge(&mut self, bytes: u64, now: Instant) {
        if self.rate > 0.0 {
            self.refill(now);
            self.tokens -= bytes as f64;
        }
    }

    /// How long until the uid is within its rate again.
    fn wait(&mut self, now: Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        self.refill(now);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.rate <= 0.0 || {
            self.refill(now);
            self.tokens >= self.burst
        }
    }
}

/// Bytes stored by one uid over a sliding window: this window's count plus the share
/// of the previous window's that still falls within the last `window`.
#[derive(Debug)]
struct StoredVolume {
    window: Duration,
    started: Instant,
    current: u64,
    previous: u64,
}

impl StoredVolume {
    fn new(window: Duration, now: Instant) -> Self {
        Self {
            window,
            started: now,
            current: 0,
            previous: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= self.window * 2 {
            self.previous = 0;
            self.current = 0;
            self.started = now;
        } else if elapsed >= self.window {
            self.previous = self.current;
            self.current = 0;
            self.started += self.window;
        }
    }

    fn add(&mut self, bytes: u64, now: Instant) {
        self.roll(now);
        self.current = self.current.saturating_add(bytes);
    }

    fn total(&mut self, now: Instant) -> u64 {
        self.roll(now);
        let into =
            now.saturating_duration_since(self.started).as_secs_f64() / self.window.as_secs_f64();
        let previous = self.previous as f64 * (1.0 - into).clamp(0.0, 1.0);
        self.current.saturating_add(previous as u64)
    }
}

/// One uid's share of the collector.
#[derive(Debug)]
struct UserShare {
    connections: AtomicUsize,
    in_flight: Arc<Semaphore>,
    rate: Mutex<RateBucket>,
    volume: Mutex<StoredVolume>,
}

/// Refusals and cuts of one uid and limit since its last report.
#[derive(Debug, Clone)]
struct Tally {
    count: u64,
    bytes: u64,
    first_at: String,
    last_at: String,
}

#[derive(Debug, Default)]
struct Reports {
    pending: HashMap<(u32, Limit), Tally>,
    last_reported: HashMap<(u32, Limit), Instant>,
}

/// What one uid exceeded since its last report, for the log and the record.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitReport {
    pub uid: u32,
    pub limit: Limit,
    /// Connections closed or records refused.
    pub count: u64,
    /// Bytes of the frames refused or cut.
    pub bytes: u64,
    pub first_at: String,
    pub last_at: String,
    /// The limit's setting.
    pub setting: u64,
    /// What happened, in words.
    pub reason: String,
}

impl LimitReport {
    /// The `limit_exceeded` event; `user_name` is the name of `uid`.
    pub fn event(&self, user_name: Option<String>) -> LimitExceeded {
        LimitExceeded {
            limit: self.limit.name().to_owned(),
            peer: LimitPeer {
                user_id: self.uid.to_string(),
                user_name,
            },
            count: self.count,
            bytes: self.bytes,
            setting: self.setting,
            first_at: self.first_at.clone(),
            last_at: self.last_at.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// The collector's shared fairness state.
#[derive(Debug)]
pub struct Fairness {
    limits: Limits,
    users: Mutex<HashMap<u32, Arc<UserShare>>>,
    connections: AtomicUsize,
    in_flight: Arc<Semaphore>,
    /// Memory for parsing large frames, one user's in-flight budget for everyone.
    parsing: Arc<Semaphore>,
    disk: Option<Arc<DiskSpace>>,
    reports: Mutex<Reports>,
}

impl Fairness {
    /// `limits.max_connections` 0 means no cap on all connections (the daemon resolves
    /// it from the descriptor limit first); `disk` is the store's filesystem (None: no
    /// disk limits).
    pub fn new(limits: Limits, disk: Option<Arc<DiskSpace>>) -> Arc<Self> {
        let in_flight = usize::try_from(limits.in_flight_bytes)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            in_flight: Arc::new(Semaphore::new(in_flight)),
            parsing: Arc::new(Semaphore::new(per_user_permits(&limits))),
            limits,
            users: Mutex::default(),
            connections: AtomicUsize::new(0),
            disk,
            reports: Mutex::default(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// A place for a new connection of `uid`, or None (counted and reported) when the
    /// uid or everyone is at the cap: the caller closes the connection.
    pub fn admit_connection(self: &Arc<Self>, uid: u32) -> Option<ConnectionSlot> {
        let user = {
            let mut users = lock(&self.users);
            let user = Arc::clone(users.entry(uid).or_insert_with(|| self.new_user()));
            let total_cap = match self.limits.max_connections {
                0 => usize::MAX,
                cap => cap,
            };
            if self.connections.load(Ordering::Relaxed) >= total_cap {
                drop(users);
                self.note(uid, Limit::Connections, 0);
                return None;
            }
            if user.connections.load(Ordering::Relaxed) >= self.limits.max_connections_per_user {
                drop(users);
                self.note(uid, Limit::ConnectionsPerUser, 0);
                return None;
            }
            user.connections.fetch_add(1, Ordering::Relaxed);
            self.connections.fetch_add(1, Ordering::Relaxed);
            user
        };
        Some(ConnectionSlot {
            fairness: Arc::clone(self),
            user,
            uid,
        })
    }

    fn new_user(&self) -> Arc<UserShare> {
        let now = Instant::now();
        Arc::new(UserShare {
            connections: AtomicUsize::new(0),
            in_flight: Arc::new(Semaphore::new(per_user_permits(&self.limits))),
            rate: Mutex::new(RateBucket::new(&self.limits, now)),
            volume: Mutex::new(StoredVolume::new(self.limits.storage_share_window, now)),
        })
    }

    /// Counts one refusal or cut of `uid` for `limit`.
    fn note(&self, uid: u32, limit: Limit, bytes: u64) {
        let now = crate::audit::now_rfc3339();
        let mut reports = lock(&self.reports);
        let tally = reports
            .pending
            .entry((uid, limit))
            .or_insert_with(|| Tally {
                count: 0,
                bytes: 0,
                first_at: now.clone(),
                last_at: now.clone(),
            });
        tally.count += 1;
        tally.bytes = tally.bytes.saturating_add(bytes);
        tally.last_at = now;
    }

    /// The counts due for a report: those of each uid and limit not reported within the
    /// last [`REPORT_INTERVAL`], or all of them when `everything` (at shutdown). Also
    /// forgets users with nothing left to remember.
    pub fn due_reports(&self, everything: bool) -> Vec<LimitReport> {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut reports = lock(&self.reports);
            let Reports {
                pending,
                last_reported,
            } = &mut *reports;
            pending.retain(|&(uid, limit), tally| {
                let quiet = last_reported
                    .get(&(uid, limit))
                    .is_none_or(|at| now.saturating_duration_since(*at) >= REPORT_INTERVAL);
                if !(everything || quiet) {
                    return true;
                }
                last_reported.insert((uid, limit), now);
                due.push(self.report(uid, limit, tally));
                false
            });
            last_reported.retain(|_, at| now.saturating_duration_since(*at) < REPORT_INTERVAL);
        }
        self.forget_idle_users(now);
        due.sort_by_key(|report| (report.uid, report.limit));
        due
    }

    fn forget_idle_users(&self, now: Instant) {
        let per_user = per_user_permits(&self.limits);
        lock(&self.users).retain(|_, user| {
            user.connections.load(Ordering::Relaxed) > 0
                || user.in_flight.available_permits() < per_user
                || !lock(&user.rate).is_full(now)
                || lock(&user.volume).total(now) > 0
        });
    }

    fn report(&self, uid: u32, limit: Limit, tally: &Tally) -> LimitReport {
        let limits = &self.limits;
        let (setting, reason) = match limit {
            Limit::Connections => (
                limits.max_connections as u64,
                format!(
                    "the collector holds its maximum of {} connections; new connections are closed at once",
                    limits.max_connections
                ),
            ),
            Limit::ConnectionsPerUser => (
                limits.max_connections_per_user as u64,
                format!(
                    "more than {} connections at once from one user; the excess was closed at once",
                    limits.max_connections_per_user
                ),
            ),
            Limit::HelloTimeout => (
                limits.hello_timeout.as_secs(),
                format!(
                    "no valid hello within {} s of connecting; closed",
                    limits.hello_timeout.as_secs_f64()
                ),
            ),
            Limit::FrameTimeout => (
                limits.frame_timeout.as_secs(),
                format!(
                    "a frame's bytes did not arrive within {} s; the connection was cut",
                    limits.frame_timeout.as_secs_f64()
                ),
            ),
            Limit::StorageShare => (
                limits.storage_share_bytes,
                format!(
                    "records refused: the user stored more than its share of {} in {} s while the store's disk was below its reserve",
                    mib(limits.storage_share_bytes),
                    limits.storage_share_window.as_secs_f64()
                ),
            ),
            Limit::RecordTooComplex => (
                limits.in_flight_bytes_per_user,
                format!(
                    "records refused unparsed: parsed, each would take more than {} of memory",
                    mib(limits.in_flight_bytes_per_user)
                ),
            ),
        };
        LimitReport {
            uid,
            limit,
            count: tally.count,
            bytes: tally.bytes,
            first_at: tally.first_at.clone(),
            last_at: tally.last_at.clone(),
            setting,
            reason,
        }
    }
}

fn per_user_permits(limits: &Limits) -> usize {
    usize::try_from(limits.in_flight_bytes_per_user)
        .unwrap_or(Semaphore::MAX_PERMITS)
        .min(Semaphore::MAX_PERMITS)
}

/// About how much memory parsing `body` takes: its text, and every JSON value it
/// holds (values are counted by the separators and openings outside strings).
pub fn parse_cost(body: &[u8]) -> u64 {
    let mut values: u64 = 1;
    let mut at = 0;
    while let Some(&byte) = body.get(at) {
        at += 1;
        match byte {
            b'"' => {
                // Inside a string only its end and escapes matter: jump between them
                // (a megabyte of output text is one string).
                loop {
                    match memchr::memchr2(b'"', b'\\', body.get(at..).unwrap_or_default()) {
                        Some(offset) if body[at + offset] == b'\\' => at += offset + 2,
                        Some(offset) => {
                            at += offset + 1;
                            break;
                        }
                        None => {
                            at = body.len();
                            break;
                        }
                    }
                }
            }
            b',' | b':' | b'[' | b'{' => values += 1,
            _ => {}
        }
    }
    (body.len() as u64).saturating_add(values.saturating_mul(PARSED_VALUE_BYTES))
}

/// The id and urgency of a record frame, read without building its record.
#[derive(serde::Deserialize)]
struct FrameHead {
    id: u64,
    #[serde(default)]
    urgent: bool,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// A frame's room in the in-flight budgets (the uid's and the global one), given back
/// when dropped: keep it until the store has answered for the record.
#[derive(Debug)]
pub struct Room {
    bytes: usize,
    /// Bytes counted as accepted on the store's disk, settled when the room is given
    /// back (the store has answered).
    on_disk: Option<(Arc<DiskSpace>, u64)>,
    _user: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
    /// The room a large parse took (kept until the store answers, like the rest).
    _parsing: Option<OwnedSemaphorePermit>,
    /// Why the frame's record is refused unparsed.
    refusal: Option<String>,
}

impl Room {
    /// The frame's size.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if let Some((disk, bytes)) = self.on_disk.take() {
            disk.settled(bytes);
        }
    }
}

/// One admitted connection: its uid's share, released when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    fairness: Arc<Fairness>,
    user: Arc<UserShare>,
    uid: u32,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.user.connections.fetch_sub(1, Ordering::Relaxed);
        self.fairness.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionSlot {
    /// Reads the hello frame; None when the peer said nothing valid in time (counted
    /// and reported) or closed the connection.
    pub async fn read_hello<R, T>(&self, reader: &mut R) -> Result<Option<T>, ProtocolError>
    where
        R: AsyncRead + Unpin,
        T: serde::de::DeserializeOwned,
    {
        let hello = async {
            match read_frame_length(reader).await? {
                Some(length) if length <= HELLO_MAX_BYTES => {
                    read_frame_body(reader, length).await.map(Some)
                }
                Some(length) => Err(ProtocolError::Oversized(length)),
                None => Ok(None),
            }
        };
        match tokio::time::timeout(self.fairness.limits.hello_timeout, hello).await {
            Ok(Err(ProtocolError::Oversized(_))) | Err(_) => {
                self.fairness.note(self.uid, Limit::HelloTimeout, 0);
                Ok(None)
            }
            Ok(read) => read,
        }
    }

    /// Reads the next frame once the uid is within its storage rate and the frame fits
    /// the in-flight budgets. None when the peer closed the connection, was idle too
    /// long, or did not send an admitted frame in time (counted and reported): the
    /// caller closes the connection.
    pub async fn read_record<R>(
        &self,
        reader: &mut R,
    ) -> Result<Option<(SenderFrame, Room)>, ProtocolError>
    where
        R: AsyncRead + Unpin,
    {
        loop {
            let wait = lock(&self.user.rate).wait(Instant::now());
            if wait.is_zero() {
                break;
            }
            tokio::time::sleep(wait).await;
        }
        let length = match self.fairness.limits.idle_timeout {
            Some(idle) => match tokio::time::timeout(idle, read_frame_length(reader)).await {
                Ok(length) => length?,
                Err(_) => {
                    tracing::info!(uid = self.uid, "idle collector connection closed");
                    return Ok(None);
                }
            },
            None => read_frame_length(reader).await?,
        };
        let Some(length) = length else {
            return Ok(None);
        };
        let Some(mut room) = self.room(length).await else {
            return Ok(None);
        };
        let body = read_frame_bytes(reader, length);
        let body = match tokio::time::timeout(self.fairness.limits.frame_timeout, body).await {
            Ok(body) => body?,
            Err(_) => {
                self.fairness
                    .note(self.uid, Limit::FrameTimeout, length as u64);
                return Ok(None);
            }
        };
        // Every frame counts, stored or not, with what a record costs besides its bytes.
        lock(&self.user.rate).charge(length as u64 + RECORD_OVERHEAD, Instant::now());
        let cost = parse_cost(&body);
        if cost > self.fairness.limits.in_flight_bytes_per_user {
            // Refused on its id alone: admit_record says why.
            let head: FrameHead = serde_json::from_slice(&body)?;
            self.fairness
                .note(self.uid, Limit::RecordTooComplex, length as u64);
            room.refusal = Some(format!(
                "the record would take about {} of memory once parsed, more than {}",
                mib(cost),
                mib(self.fairness.limits.in_flight_bytes_per_user)
            ));
            let frame = SenderFrame::Record {
                id: head.id,
                record: SenderRecord::default(),
                urgent: head.urgent,
            };
            return Ok(Some((frame, room)));
        }
        if cost >= SMALL_PARSE_BYTES {
            let permits = u32::try_from(cost).unwrap_or(u32::MAX);
            room._parsing = Arc::clone(&self.fairness.parsing)
                .acquire_many_owned(permits)
                .await
                .ok();
        }
        let frame = serde_json::from_slice(&body)?;
        Ok(Some((frame, room)))
    }

    /// Waits until `length` bytes fit the uid's budget, then the global one.
    async fn room(&self, length: usize) -> Option<Room> {
        let permits = u32::try_from(length).ok()?;
        let user = Arc::clone(&self.user.in_flight)
            .acquire_many_owned(permits)
            .await
            .ok()?;
        let global = Arc::clone(&self.fairness.in_flight)
            .acquire_many_owned(permits)
            .await
            .ok()?;
        Some(Room {
            bytes: length,
            on_disk: None,
            _user: user,
            _global: global,
            _parsing: None,
            refusal: None,
        })
    }

    /// Whether the store may take a record of this frame: Err(why) when it was too
    /// complex to parse, or the disk is below its reserve and the uid is over its share
    /// (counted and reported).
    pub fn admit_record(&self, room: &mut Room) -> Result<(), String> {
        if let Some(refusal) = &room.refusal {
            return Err(refusal.clone());
        }
        let bytes = room.bytes() as u64 + RECORD_OVERHEAD;
        let now = Instant::now();
        let limits = &self.fairness.limits;
        if let Some(disk) = &self.fairness.disk {
            if let Some(free) = disk.free() {
                let reserve = limits.disk_reserve(free.total);
                if free.available < reserve {
                    let stored = lock(&self.user.volume).total(now);
                    if stored > limits.storage_share_bytes {
                        self.fairness.note(self.uid, Limit::StorageShare, bytes);
                        return Err(format!(
                            "uid {} is over its storage share ({} stored in the last {} s, share {}) \
                             while the store's disk is below its reserve ({} free, reserve {})",
                            self.uid,
                            mib(stored),
                            limits.storage_share_window.as_secs_f64(),
                            mib(limits.storage_share_bytes),
                            mib(free.available),
                            mib(reserve)
                        ));
                    }
                }
            }
            disk.accepted(bytes);
            if let Some((disk, earlier)) = room.on_disk.replace((Arc::clone(disk), bytes)) {
                disk.settled(earlier);
            }
        }
        lock(&self.user.volume).add(bytes, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::events::AuditEvent;
    use crate::collector::disk::FreeSpace;
    use crate::collector::protocol::{ToCollector, write_frame};
    use tokio::io::AsyncWriteExt;

    fn limits() -> Limits {
        Limits {
            max_connections: 1000,
            ..Limits::default()
        }
    }

    #[test]
    fn the_defaults_are_valid_and_let_the_largest_frame_through() {
        Limits::default().check().expect("valid defaults");
        let too_small = Limits {
            in_flight_bytes_per_user: MAX_FRAME_BYTES as u64 - 1,
            ..Limits::default()
        };
        assert!(too_small.check().is_err());
        let global_below_user = Limits {
            in_flight_bytes: 80 * MIB,
            ..Limits::default()
        };
        assert!(global_below_user.check().is_err());
    }

    #[test]
    fn the_disk_reserve_is_the_larger_of_bytes_and_percent() {
        let limits = Limits {
            disk_reserve_bytes: 10,
            disk_reserve_percent: 5,
            ..Limits::default()
        };
        assert_eq!(limits.disk_reserve(1000), 50);
        assert_eq!(limits.disk_reserve(100), 10);
        assert_eq!(
            limits.disk_reserve(50),
            5,
            "bytes up to a tenth of the disk"
        );
        let defaults = Limits::default();
        assert_eq!(defaults.disk_reserve(8 * MIB), 8 * MIB / 10);
        assert_eq!(defaults.disk_reserve(20 * 1024 * MIB), 1024 * MIB);
        assert_eq!(
            defaults.disk_reserve(1024 * 1024 * MIB),
            1024 * 1024 * MIB / 50
        );
    }

    #[test]
    fn the_connection_cap_leaves_room_for_the_store() {
        assert_eq!(connection_cap(1024, 0), 1024 - DESCRIPTOR_RESERVE as usize);
        assert_eq!(connection_cap(65536, 500), 500);
        assert_eq!(
            connection_cap(1024, 5000),
            1024 - DESCRIPTOR_RESERVE as usize
        );
        assert_eq!(connection_cap(10, 0), 1);
    }

    #[test]
    fn a_user_over_the_connection_cap_is_refused_and_others_are_not() {
        let fairness = Fairness::new(
            Limits {
                max_connections_per_user: 2,
                max_connections: 4,
                ..Limits::default()
            },
            None,
        );
        let first = fairness.admit_connection(1001).expect("first");
        let _second = fairness.admit_connection(1001).expect("second");
        assert!(
            fairness.admit_connection(1001).is_none(),
            "third of one user"
        );
        let _other = fairness.admit_connection(1002).expect("another user");
        drop(first);
        let _again = fairness.admit_connection(1001).expect("room again");
        let _fourth = fairness.admit_connection(1003).expect("fourth in all");
        assert!(fairness.admit_connection(1004).is_none(), "fifth in all");
        let reports = fairness.due_reports(false);
        let counted: Vec<_> = reports
            .iter()
            .map(|report| (report.uid, report.limit.name(), report.count))
            .collect();
        assert_eq!(
            counted,
            [(1001, "connections_per_user", 1), (1004, "connections", 1)]
        );
        let record = reports[0].event(Some("mallory".into())).fields();
        assert_eq!(record["peer"]["user_id"], "1001");
        assert_eq!(record["peer"]["user_name"], "mallory");
    }

    #[test]
    fn reports_come_at_most_once_per_interval_and_all_at_shutdown() {
        let fairness = Fairness::new(
            Limits {
                max_connections_per_user: 1,
                ..limits()
            },
            None,
        );
        let _held = fairness.admit_connection(7).expect("first");
        assert!(fairness.admit_connection(7).is_none());
        assert_eq!(fairness.due_reports(false).len(), 1);
        for _ in 0..100 {
            assert!(fairness.admit_connection(7).is_none());
        }
        assert!(
            fairness.due_reports(false).is_empty(),
            "reported within the interval"
        );
        let last = fairness.due_reports(true);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].count, 100, "nothing refused goes uncounted");
    }

    #[test]
    fn the_rate_bucket_lets_a_burst_through_then_asks_to_wait() {
        let start = Instant::now();
        let limits = Limits {
            storage_rate_bytes_per_sec: 1000,
            storage_burst_bytes: 5000,
            ..Limits::default()
        };
        let mut bucket = RateBucket::new(&limits, start);
        bucket.charge(5000, start);
        assert_eq!(bucket.wait(start), Duration::ZERO, "the burst is free");
        bucket.charge(2000, start);
        assert_eq!(
            bucket.wait(start),
            Duration::from_secs(2),
            "2000 bytes of debt"
        );
        let later = start + Duration::from_secs(2);
        assert_eq!(bucket.wait(later), Duration::ZERO);
        assert!(!bucket.is_full(later));
        assert!(bucket.is_full(later + Duration::from_secs(5)));
        let unlimited = Limits {
            storage_rate_bytes_per_sec: 0,
            ..Limits::default()
        };
        let mut free = RateBucket::new(&unlimited, start);
        free.charge(u64::MAX, start);
        assert_eq!(free.wait(start), Duration::ZERO);
    }

    #[test]
    fn stored_volume_slides_over_its_window() {
        let start = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut volume = StoredVolume::new(hour, start);
        volume.add(1000, start);
        assert_eq!(volume.total(start + hour / 2), 1000);
        // Half an hour into the next window, half of the previous one still counts.
        let later = start + hour + hour / 2;
        assert_eq!(volume.total(later), 500);
        volume.add(100, later);
        assert_eq!(volume.total(later), 600);
        assert_eq!(volume.total(start + hour * 4), 0);
    }

    fn record_frame(id: u64, text: &str, urgent: bool) -> ToCollector {
        let record = serde_json::from_value(json!({
            "event": {"action": "stream"},
            "jupyter": {"session_id": "s", "text": text}
        }))
        .expect("object");
        ToCollector::Record { id, record, urgent }
    }

    #[tokio::test]
    async fn a_frame_waits_for_its_users_budget_and_others_do_not() {
        let fairness = Fairness::new(
            Limits {
                in_flight_bytes_per_user: MAX_FRAME_BYTES as u64,
                ..limits()
            },
            None,
        );
        let attacker = fairness.admit_connection(1001).expect("slot");
        let attacker_two = fairness.admit_connection(1001).expect("slot");
        let victim = fairness.admit_connection(1002).expect("slot");

        // The attacker announces the largest frame and never sends it: its budget is
        // taken, nothing else of its fits, and nothing is allocated for the second.
        let (mut stalled_writer, mut stalled) = tokio::io::duplex(1 << 16);
        stalled_writer
            .write_all(&(MAX_FRAME_BYTES as u32).to_be_bytes())
            .await
            .expect("written");
        let stalling = tokio::spawn(async move {
            let read = attacker.read_record(&mut stalled).await;
            (read.map(|frame| frame.is_some()), attacker)
        });
        tokio::task::yield_now().await;
        let (mut second_writer, mut second) = tokio::io::duplex(1 << 16);
        write_frame(&mut second_writer, &record_frame(1, "x", false))
            .await
            .expect("written");
        let waiting = tokio::time::timeout(
            Duration::from_millis(200),
            attacker_two.read_record(&mut second),
        )
        .await;
        assert!(waiting.is_err(), "the attacker's second frame must wait");

        let (mut victim_writer, mut victim_reader) = tokio::io::duplex(1 << 16);
        write_frame(&mut victim_writer, &record_frame(1, "hello", true))
            .await
            .expect("written");
        let (frame, mut room) = victim
            .read_record(&mut victim_reader)
            .await
            .expect("read")
            .expect("a frame");
        assert!(matches!(frame, SenderFrame::Record { id: 1, .. }));
        victim.admit_record(&mut room).expect("admitted");
        drop(stalled_writer);
        let (outcome, _attacker) = stalling.await.expect("joined");
        assert!(
            matches!(outcome, Err(ProtocolError::Truncated)),
            "{outcome:?}"
        );
    }

    #[test]
    fn the_parse_cost_counts_values_outside_strings() {
        let values =
            |text: &str| (parse_cost(text.as_bytes()) - text.len() as u64) / PARSED_VALUE_BYTES;
        assert_eq!(values("0"), 1);
        assert_eq!(values("[0,0,0]"), 4);
        assert_eq!(values(r#"{"a":1,"b":[2]}"#), 6);
        assert_eq!(
            values(r#"["a,b:[{", "\",{"]"#),
            3,
            "separators in strings are text"
        );
        assert_eq!(values(r#"["a\",[\\", 1]"#), 3, "escaped quotes end nothing");
        assert_eq!(values("[\"unterminated\\"), 2);
    }

    #[tokio::test]
    async fn a_record_too_complex_to_parse_is_refused_unparsed() {
        let fairness = Fairness::new(
            Limits {
                in_flight_bytes_per_user: MAX_FRAME_BYTES as u64,
                ..limits()
            },
            None,
        );
        let slot = fairness.admit_connection(1001).expect("slot");
        // About 1.1 million numbers in 2.2 MB: more than 64 MiB once parsed.
        let numbers = vec![json!(0); 1_100_000];
        let record = serde_json::from_value(json!({
            "event": {"action": "execute_request"},
            "jupyter": {"session_id": "s", "user_expressions": numbers}
        }))
        .expect("object");
        let (mut writer, mut reader) = tokio::io::duplex(16 << 20);
        let frame = ToCollector::Record {
            id: 42,
            record,
            urgent: true,
        };
        write_frame(&mut writer, &frame).await.expect("written");
        let (read, mut room) = slot
            .read_record(&mut reader)
            .await
            .expect("read")
            .expect("frame");
        assert!(
            matches!(
                read,
                SenderFrame::Record {
                    id: 42,
                    urgent: true,
                    ..
                }
            ),
            "{read:?}"
        );
        let refusal = slot.admit_record(&mut room).expect_err("refused");
        assert!(refusal.contains("once parsed"), "{refusal}");
        let reports = fairness.due_reports(false);
        assert_eq!(reports[0].limit, Limit::RecordTooComplex);

        // A large record of text takes turns with other large parses, and passes.
        drop(room);
        let text = "t".repeat(8 << 20);
        write_frame(&mut writer, &record_frame(43, &text, false))
            .await
            .expect("written");
        let (read, mut room) = slot
            .read_record(&mut reader)
            .await
            .expect("read")
            .expect("frame");
        assert!(matches!(read, SenderFrame::Record { id: 43, .. }));
        slot.admit_record(&mut room).expect("admitted");
        assert!(
            fairness.parsing.available_permits() < per_user_permits(fairness.limits()),
            "a large parse holds room until the store answers"
        );
        drop(room);
        assert_eq!(
            fairness.parsing.available_permits(),
            per_user_permits(fairness.limits())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_frame_is_cut_at_its_deadline_and_reported() {
        let fairness = Fairness::new(limits(), None);
        let slot = fairness.admit_connection(1001).expect("slot");
        let (mut writer, mut reader) = tokio::io::duplex(1 << 16);
        writer
            .write_all(&1000u32.to_be_bytes())
            .await
            .expect("written");
        writer.write_all(&[b'x'; 999]).await.expect("written");
        let read = slot.read_record(&mut reader).await.expect("no error");
        assert!(read.is_none(), "cut");
        let reports = fairness.due_reports(false);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].limit, Limit::FrameTimeout);
        assert_eq!(reports[0].bytes, 1000);
        // The budget is free again.
        assert_eq!(
            fairness.in_flight.available_permits() as u64,
            fairness.limits.in_flight_bytes
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silence_after_connecting_closes_the_connection() {
        let fairness = Fairness::new(limits(), None);
        let slot = fairness.admit_connection(5).expect("slot");
        let (_writer, mut reader) = tokio::io::duplex(64);
        let hello: Option<ToCollector> = slot.read_hello(&mut reader).await.expect("no error");
        assert!(hello.is_none());
        assert_eq!(fairness.due_reports(false)[0].limit, Limit::HelloTimeout);
        let (mut writer, mut reader) = tokio::io::duplex(64);
        writer
            .write_all(&(HELLO_MAX_BYTES as u32 + 1).to_be_bytes())
            .await
            .expect("written");
        let hello: Option<ToCollector> = slot.read_hello(&mut reader).await.expect("no error");
        assert!(hello.is_none(), "an oversized hello is not read");
        // Idle after hello: closed after the idle timeout, without a report.
        let (_writer, mut reader) = tokio::io::duplex(64);
        assert!(
            slot.read_record(&mut reader)
                .await
                .expect("no error")
                .is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_over_its_rate_waits_for_it() {
        let fairness = Fairness::new(
            Limits {
                storage_rate_bytes_per_sec: 1000,
                storage_burst_bytes: 0,
                ..limits()
            },
            None,
        );
        let slot = fairness.admit_connection(5).expect("slot");
        let (mut writer, mut reader) = tokio::io::duplex(1 << 16);
        let frame = record_frame(1, &"y".repeat(1900), false);
        write_frame(&mut writer, &frame).await.expect("written");
        write_frame(&mut writer, &frame).await.expect("written");
        let started = tokio::time::Instant::now();
        slot.read_record(&mut reader)
            .await
            .expect("read")
            .expect("frame");
        assert!(
            started.elapsed() < Duration::from_millis(10),
            "the first is free"
        );
        slot.read_record(&mut reader)
            .await
            .expect("read")
            .expect("frame");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "the second waits for the first's bytes: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn below_the_reserve_only_the_user_over_its_share_is_refused() {
        let space = FreeSpace {
            available: 50 * MIB,
            total: 1000 * MIB,
        };
        let disk = Arc::new(DiskSpace::fixed(space));
        let fairness = Fairness::new(
            Limits {
                // 10 MiB above the reserve.
                disk_reserve_bytes: 40 * MIB,
                disk_reserve_percent: 0,
                storage_share_bytes: 2 * MIB,
                ..limits()
            },
            Some(Arc::clone(&disk)),
        );
        let flooder = fairness.admit_connection(1001).expect("slot");
        let victim = fairness.admit_connection(1002).expect("slot");
        let megabyte = "z".repeat(MIB as usize);
        let (mut writer, mut reader) = tokio::io::duplex(4 << 20);
        let mut refused = None;
        for id in 1..=40 {
            write_frame(&mut writer, &record_frame(id, &megabyte, id % 2 == 0))
                .await
                .expect("written");
            let (_, mut room) = flooder
                .read_record(&mut reader)
                .await
                .expect("read")
                .expect("frame");
            if let Err(why) = flooder.admit_record(&mut room) {
                refused = Some((id, why));
                break;
            }
        }
        let (id, why) = refused.expect("the flooder is refused");
        assert!(why.contains("storage share"), "{why}");
        assert!(
            id > 10,
            "accepted until the disk was below the reserve: {id}"
        );
        let free = disk.free().expect("estimate").available;
        assert!(free < space.available, "accepted bytes are counted");

        // The victim, within its share, still stores its output and its write-ahead.
        write_frame(&mut writer, &record_frame(1, "cell output", false))
            .await
            .expect("written");
        let (_, mut room) = victim
            .read_record(&mut reader)
            .await
            .expect("read")
            .expect("frame");
        victim.admit_record(&mut room).expect("within share");
        let reports = fairness.due_reports(false);
        assert_eq!(reports.len(), 1);
        assert_eq!(
            (reports[0].uid, reports[0].limit),
            (1001, Limit::StorageShare)
        );
        // Down to the last byte of the reserve.
        disk.accepted(disk.free().expect("estimate").available.saturating_sub(1));
        victim.admit_record(&mut room).expect("still within share");
    }
}
