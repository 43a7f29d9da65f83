//! The proxy's side of the collector connection.
//!
//! One task owns the connection and keeps every record until the collector has
//! acknowledged it: records sent when the connection breaks are sent again after
//! reconnecting (marked `jupyter.resent`, since the collector may have stored them
//! already), and a record that could not even be queued is counted and reported in an
//! `audit_gap` record once the collector is back. Durable submissions (write-ahead)
//! fail at once while the collector is unreachable, so the proxy can refuse to run
//! code instead of waiting.
//!
//! The same task turns what the relays observed into records (through a [`Recorder`]):
//! a relayed message crosses one queue between its relay and the collector, and a
//! write-ahead request waits once, under one deadline, for its record to be on disk.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::protocol::{
    FromCollector, HubToken, MAX_FRAME_BYTES, PROTOCOL_VERSION, ProtocolError, RecordFrame,
    ToCollector, read_frame, write_frame,
};
use crate::audit::events::AuditGap;
use crate::audit::{Observation, Record, SessionContext, record_event};

/// Records waiting for the client task (beyond this, records are counted as lost).
const QUEUE_CAPACITY: usize = 4096;
/// Records kept unacknowledged or unsent while the collector is away.
const MAX_PENDING: usize = 65_536;
/// Longest pause between reconnection attempts.
const MAX_RETRY: Duration = Duration::from_secs(2);
/// Frames serialised ahead of the socket. Below this, the task takes the next
/// submission while the collector reads what is already written (so building a record
/// runs beside the collector's work); above it, it waits for the socket.
const OUTGOING_BYTES: usize = 4 * 1024 * 1024;
/// Pause before connecting again after the collector refused the connection (its
/// identity could not be established): the answer changes only when the Hub does.
const REFUSED_RETRY: Duration = Duration::from_secs(15);
/// Records lost while connected (refused by the collector) are reported in an
/// `audit_gap` at most this often, and at every flush: a gap record refused in turn is
/// counted in the next one, so refusals cannot feed a loop.
const GAP_REPORT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("collector unavailable: {0}")]
    Unavailable(String),
    /// The collector refused this kernel's connection (it could not establish the
    /// identity it requires).
    #[error("{0}")]
    Refused(String),
    #[error("the collector did not store the record: {0}")]
    NotStored(String),
    #[error("the collector did not confirm the record within {0:?}")]
    Timeout(Duration),
    #[error("the audit client has stopped")]
    Stopped,
    /// The request's record would not fit one frame to the collector; a record is never
    /// shortened for what the kernel would act on, so the request is refused.
    #[error(
        "the request is too large to be put on the audit record ({size} bytes; a record may have {limit} bytes)"
    )]
    TooLarge { size: usize, limit: usize },
}

/// Turns what the relays observed into records, in the client task, in the order the
/// relays observed them.
pub trait Recorder: Send + 'static {
    /// The record of a relayed message, or None for messages not worth one.
    fn observed(&mut self, observation: Observation) -> Option<Record>;
    /// The record of a request that must be on disk before the kernel sees it.
    fn write_ahead(&mut self, observation: Observation) -> Record;
}

enum Submission {
    /// A record, and the room it holds in its sender's memory budget until stored.
    Record(Record, Option<OwnedSemaphorePermit>),
    /// A relayed message, and the room it holds until its record is stored.
    Observed(Observation, OwnedSemaphorePermit),
    Durable(Record, oneshot::Sender<Result<u64, AuditError>>),
    /// A request whose record must be stored before the kernel sees it.
    WriteAhead(Observation, oneshot::Sender<Result<u64, AuditError>>),
    /// Answered once every record submitted before it is stored.
    Flush(oneshot::Sender<Result<u64, AuditError>>),
}

/// Handle to the client task.
#[derive(Debug, Clone)]
pub struct AuditClient {
    submissions: mpsc::Sender<Submission>,
    lost: Arc<AtomicU64>,
    connected: Arc<AtomicBool>,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Record(..) => "Record",
            Self::Observed(..) => "Observed",
            Self::Durable(..) => "Durable",
            Self::WriteAhead(..) => "WriteAhead",
            Self::Flush(_) => "Flush",
        })
    }
}

impl AuditClient {
    /// Starts the client task for the collector listening on `socket`; `recorder` makes
    /// the records of observed messages.
    pub fn spawn(
        socket: PathBuf,
        context: SessionContext,
        recorder: Box<dyn Recorder>,
    ) -> (Self, JoinHandle<()>) {
        Self::spawn_presenting(socket, None, context, recorder)
    }

    /// [`spawn`](Self::spawn), presenting `hub_token` to the collector at every
    /// connection (for it to ask JupyterHub whose kernel this is).
    pub fn spawn_presenting(
        socket: PathBuf,
        hub_token: Option<HubToken>,
        context: SessionContext,
        recorder: Box<dyn Recorder>,
    ) -> (Self, JoinHandle<()>) {
        let (submissions, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let lost = Arc::new(AtomicU64::new(0));
        let connected = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(
            ClientTask {
                connected: connected.clone(),
                socket,
                hub_token,
                context,
                recorder,
                submissions: receiver,
                lost: lost.clone(),
                pending: VecDeque::new(),
                flushes: VecDeque::new(),
                next_id: 1,
                connection: None,
                last_error: "not connected yet".into(),
                refused: false,
                retry_at: Instant::now(),
                retry_delay: Duration::from_millis(50),
                gap: None,
                last_gap_report: Instant::now(),
                reconnect_grace: false,
            }
            .run(),
        );
        (
            Self {
                submissions,
                lost,
                connected,
            },
            task,
        )
    }

    /// Queues a record without waiting. If the queue is full the record is lost, and
    /// counted: the count goes on the record as an `audit_gap`.
    pub fn record(&self, record: Record) {
        self.record_holding(record, None);
    }

    /// [`record`](Self::record), holding `room` (the sender's memory budget) until the
    /// collector has the record.
    pub fn record_holding(&self, record: Record, room: Option<OwnedSemaphorePermit>) {
        if self
            .submissions
            .try_send(Submission::Record(record, room))
            .is_err()
        {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a relayed message to be recorded, waiting for room in the queue; if the
    /// task has stopped the record is counted as lost.
    pub async fn observe(&self, observation: Observation, room: OwnedSemaphorePermit) {
        let submission = Submission::Observed(observation, room);
        if self.submissions.send(submission).await.is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a request that must be on disk before the caller goes on: the record's
    /// sequence number once stored, or why not. `patience` bounds the whole wait, for
    /// room in the queue and for the collector's acknowledgement together.
    pub async fn write_ahead(
        &self,
        observation: Observation,
        patience: Duration,
    ) -> Result<u64, AuditError> {
        let (ack, acked) = oneshot::channel();
        let stored = async {
            self.submissions
                .send(Submission::WriteAhead(observation, ack))
                .await
                .map_err(|_| AuditError::Stopped)?;
            acked.await.map_err(|_| AuditError::Stopped)?
        };
        tokio::time::timeout(patience, stored)
            .await
            .unwrap_or(Err(AuditError::Timeout(patience)))
    }

    /// Whether the collector connection is up (records are then stored soon).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Counts records lost before they reached the client (reported as a gap).
    pub fn count_lost(&self, count: u64) {
        self.lost.fetch_add(count, Ordering::Relaxed);
    }

    /// Queues a record that must be on disk before the caller goes on; the ticket
    /// says when it is, or why it is not. Queued in order with every other record.
    pub fn submit_durable(&self, record: Record) -> Ticket {
        let (ack, acked) = oneshot::channel();
        match self.submissions.try_send(Submission::Durable(record, ack)) {
            Ok(()) => Ticket(Ok(acked)),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                Ticket(Err(AuditError::Unavailable(
                    "the proxy's audit queue is full".into(),
                )))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Ticket(Err(AuditError::Stopped)),
        }
    }

    /// Waits until everything queued so far is stored, or `patience` runs out.
    pub async fn flush(&self, patience: Duration) -> Result<u64, AuditError> {
        let (ack, acked) = oneshot::channel();
        let queued = tokio::time::timeout(patience, self.submissions.send(Submission::Flush(ack)));
        match queued.await {
            Ok(Ok(())) => Ticket(Ok(acked)).wait(patience).await,
            Ok(Err(_)) => Err(AuditError::Stopped),
            Err(_) => Err(AuditError::Timeout(patience)),
        }
    }
}

/// The promise of a durable record: resolves once the record is on disk.
#[derive(Debug)]
pub struct Ticket(Result<oneshot::Receiver<Result<u64, AuditError>>, AuditError>);

impl Ticket {
    /// The record's sequence number once stored; an error if it was not, or not
    /// within `patience`.
    pub async fn wait(self, patience: Duration) -> Result<u64, AuditError> {
        let acked = self.0?;
        match tokio::time::timeout(patience, acked).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(AuditError::Stopped),
            Err(_) => Err(AuditError::Timeout(patience)),
        }
    }
}

/// Someone waiting for every record up to `last_id` to be stored.
struct FlushWaiter {
    last_id: u64,
    done: oneshot::Sender<Result<u64, AuditError>>,
}

struct Pending {
    id: u64,
    record: Record,
    ack: Option<oneshot::Sender<Result<u64, AuditError>>>,
    written: bool,
    /// A write-ahead record too large to send: its request was refused, it is dropped.
    refused: bool,
    /// Released when the record is stored (or given up).
    _room: Option<OwnedSemaphorePermit>,
}

struct Connection {
    writer: OwnedWriteHalf,
    /// Frames not yet written to the socket. The task writes them as the socket takes
    /// them, never waiting on the socket while there is other work.
    outgoing: BytesMut,
    /// Read by the client task itself (no task in between): acknowledgements are
    /// taken from `received` as their frames complete.
    reader: OwnedReadHalf,
    received: BytesMut,
}

/// What happened on the collector connection.
enum ConnectionEvent {
    Answer(Option<Result<FromCollector, ProtocolError>>),
    Wrote(std::io::Result<usize>),
}

impl Connection {
    /// The next answer from the collector, or some of `outgoing` written. Cancel-safe
    /// (what was read stays in `received`, what was not written in `outgoing`), so it
    /// can race the submissions.
    async fn next_event(&mut self) -> ConnectionEvent {
        let Self {
            writer,
            outgoing,
            reader,
            received,
        } = self;
        tokio::select! {
            answer = answer(reader, received) => ConnectionEvent::Answer(answer),
            written = writer.write_buf(outgoing), if !outgoing.is_empty() => {
                ConnectionEvent::Wrote(written)
            }
        }
    }
}

/// The next answer from the collector; cancel-safe.
async fn answer(
    reader: &mut OwnedReadHalf,
    received: &mut BytesMut,
) -> Option<Result<FromCollector, ProtocolError>> {
    loop {
        if let Some(answer) = complete_answer(received) {
            return Some(answer);
        }
        match reader.read_buf(received).await {
            Ok(0) if received.is_empty() => return None,
            Ok(0) => return Some(Err(ProtocolError::Truncated)),
            Ok(_) => {}
            Err(error) => return Some(Err(error.into())),
        }
    }
}

/// An answer whose frame has fully arrived, taken off `received`.
fn complete_answer(received: &mut BytesMut) -> Option<Result<FromCollector, ProtocolError>> {
    let length: [u8; 4] = received.get(..4)?.try_into().ok()?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_FRAME_BYTES {
        return Some(Err(ProtocolError::Oversized(length)));
    }
    if received.len() < 4 + length {
        received.reserve(4 + length - received.len());
        return None;
    }
    let frame = received.split_to(4 + length);
    Some(serde_json::from_slice(&frame[4..]).map_err(Into::into))
}

struct Gap {
    lost: u64,
    since: String,
    reason: String,
}

struct ClientTask {
    connected: Arc<AtomicBool>,
    socket: PathBuf,
    hub_token: Option<HubToken>,
    context: SessionContext,
    recorder: Box<dyn Recorder>,
    submissions: mpsc::Receiver<Submission>,
    lost: Arc<AtomicU64>,
    pending: VecDeque<Pending>,
    flushes: VecDeque<FlushWaiter>,
    next_id: u64,
    connection: Option<Connection>,
    last_error: String,
    /// `last_error` is the collector's refusal of this kernel, not an outage.
    refused: bool,
    retry_at: Instant,
    retry_delay: Duration,
    gap: Option<Gap>,
    last_gap_report: Instant,
    /// The connection has stored records, so when it breaks (the collector closing an
    /// idle connection, say) one reconnection is tried at once before anyone waiting
    /// for a durable record is told it failed.
    reconnect_grace: bool,
}

impl ClientTask {
    async fn run(mut self) {
        loop {
            if self.connection.is_none() && Instant::now() >= self.retry_at {
                self.connect().await;
            }
            let connected = self.connection.is_some();
            let room = self
                .connection
                .as_ref()
                .is_none_or(|connection| connection.outgoing.len() < OUTGOING_BYTES);
            tokio::select! {
                submission = self.submissions.recv(), if room => match submission {
                    Some(submission) => self.submit(submission).await,
                    None => break,
                },
                event = async {
                    match self.connection.as_mut() {
                        Some(connection) => connection.next_event().await,
                        None => std::future::pending().await,
                    }
                }, if connected => match event {
                    ConnectionEvent::Answer(ack) => self.acknowledge(ack),
                    ConnectionEvent::Wrote(Ok(0)) => {
                        self.disconnected("the collector closed the connection".into())
                    }
                    ConnectionEvent::Wrote(Ok(_)) => {
                        self.release_outgoing();
                        self.write_unwritten();
                    }
                    ConnectionEvent::Wrote(Err(error)) => self.disconnected(error.to_string()),
                },
                () = tokio::time::sleep_until(self.retry_at), if !connected => {}
            }
            if self.gap.is_some()
                && self.connection.is_some()
                && self.last_gap_report.elapsed() >= GAP_REPORT_INTERVAL
            {
                self.report_gap().await;
            }
        }
    }

    async fn connect(&mut self) {
        let opened = open(&self.socket, self.hub_token.as_ref());
        match tokio::time::timeout(Duration::from_secs(2), opened).await {
            Ok(Ok(connection)) => {
                tracing::info!(socket = %self.socket.display(), "connected to the audit collector");
                self.connection = Some(connection);
                self.connected.store(true, Ordering::Relaxed);
                self.retry_delay = Duration::from_millis(50);
                self.resend_pending().await;
                self.report_gap().await;
            }
            Ok(Err(error @ ProtocolError::Refused(_))) => self.refused(error.to_string()),
            Ok(Err(error)) => self.disconnected(error.to_string()),
            Err(_) => self.disconnected("connection attempt timed out".into()),
        }
    }

    /// What those waiting for the collector are told while it is away.
    fn unavailable(&self) -> AuditError {
        if self.refused {
            AuditError::Refused(self.last_error.clone())
        } else {
            AuditError::Unavailable(self.last_error.clone())
        }
    }

    /// The collector would not have this connection (no identity it accepts): tried
    /// again after a pause, or at once when someone needs it.
    fn refused(&mut self, reason: String) {
        self.lost_connection(reason, true);
        self.retry_at = Instant::now() + REFUSED_RETRY;
    }

    fn disconnected(&mut self, reason: String) {
        self.lost_connection(reason, false);
    }

    fn lost_connection(&mut self, reason: String, refused: bool) {
        self.refused = refused;
        self.connected.store(false, Ordering::Relaxed);
        if self.connection.take().is_some() || self.last_error != reason {
            tracing::warn!(socket = %self.socket.display(), %reason, "audit collector unavailable");
        }
        self.last_error = reason;
        if std::mem::take(&mut self.reconnect_grace) {
            // Whoever waits keeps waiting: the records go again on the new connection,
            // and only if that fails are they told.
            self.retry_at = Instant::now();
            return;
        }
        self.retry_at = Instant::now() + self.retry_delay;
        self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY);
        // Whoever waits for a durable record is told now; the record itself stays and
        // is stored once the collector is back.
        let unavailable = self.unavailable();
        for pending in &mut self.pending {
            if let Some(ack) = pending.ack.take() {
                let _ = ack.send(Err(unavailable.clone()));
                mark_write_ahead_failed(&mut pending.record);
            }
        }
        for waiter in self.flushes.drain(..) {
            let _ = waiter.done.send(Err(unavailable.clone()));
        }
    }

    async fn submit(&mut self, submission: Submission) {
        let lost_in_queue = self.lost.swap(0, Ordering::Relaxed);
        if lost_in_queue > 0 {
            self.note_lost(lost_in_queue, "the proxy's audit queue was full".into());
        }
        match submission {
            Submission::Record(record, room) => self.enqueue(record, None, room).await,
            Submission::Observed(observation, room) => {
                if let Some(record) = self.recorder.observed(observation) {
                    self.enqueue(record, None, Some(room)).await;
                }
            }
            Submission::Durable(record, ack) => self.enqueue_durable(record, ack).await,
            Submission::WriteAhead(observation, ack) => {
                let record = self.recorder.write_ahead(observation);
                self.enqueue_durable(record, ack).await;
            }
            Submission::Flush(done) => {
                if self.connection.is_some() {
                    self.report_gap().await;
                }
                if self.connection.is_none() && !self.pending.is_empty() {
                    let _ = done.send(Err(self.unavailable()));
                    return;
                }
                self.flushes.push_back(FlushWaiter {
                    last_id: self.next_id - 1,
                    done,
                });
                self.release_flushes();
            }
        }
    }

    /// Queues a record someone waits for: refused at once while the collector cannot
    /// be reached, and stored once it is back, marked as late.
    async fn enqueue_durable(
        &mut self,
        mut record: Record,
        ack: oneshot::Sender<Result<u64, AuditError>>,
    ) {
        if ack.is_closed() {
            // Whoever waited gave up (its deadline ran out while the record was queued)
            // and refused the request, or ran it under the allow policy: the record is
            // stored, marked as late.
            mark_write_ahead_failed(&mut record);
            self.enqueue(record, None, None).await;
            return;
        }
        if self.connection.is_none() {
            // The collector may be back already: try now rather than refuse.
            self.connect().await;
        }
        if self.connection.is_some() {
            self.enqueue(record, Some(ack), None).await;
        } else {
            let _ = ack.send(Err(self.unavailable()));
            mark_write_ahead_failed(&mut record);
            self.enqueue(record, None, None).await;
        }
    }

    /// Adds a record to the pending list and writes it when connected.
    async fn enqueue(
        &mut self,
        record: Record,
        ack: Option<oneshot::Sender<Result<u64, AuditError>>>,
        room: Option<OwnedSemaphorePermit>,
    ) {
        if self.pending.len() >= MAX_PENDING {
            self.note_lost(
                1,
                format!("the collector was unavailable: {}", self.last_error),
            );
            if let Some(ack) = ack {
                let _ = ack.send(Err(self.unavailable()));
            }
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back(Pending {
            id,
            record,
            ack,
            written: false,
            refused: false,
            _room: room,
        });
        if self.connection.is_some() {
            self.write_unwritten();
        }
    }

    fn note_lost(&mut self, count: u64, reason: String) {
        let gap = self.gap.get_or_insert_with(|| Gap {
            lost: 0,
            since: crate::audit::now_rfc3339(),
            reason,
        });
        gap.lost += count;
    }

    async fn report_gap(&mut self) {
        self.last_gap_report = Instant::now();
        if let Some(gap) = self.gap.take() {
            let gap = AuditGap {
                lost_records: gap.lost,
                gap_since: gap.since,
                reason: gap.reason,
            };
            let record = record_event(&self.context, &gap);
            self.enqueue(record, None, None).await;
        }
    }

    async fn resend_pending(&mut self) {
        for pending in &mut self.pending {
            if pending.written {
                pending.written = false;
                if let Some(Value::Object(jupyter)) = pending.record.get_mut("jupyter") {
                    jupyter.insert("resent".into(), json!(true));
                }
            }
        }
        self.write_unwritten();
    }

    /// Gives a drained outgoing buffer's memory back: written bytes leave the buffer,
    /// not its allocation, so a large output's frames would otherwise stay allocated
    /// while the kernel is idle.
    fn release_outgoing(&mut self) {
        if let Some(connection) = self.connection.as_mut()
            && connection.outgoing.is_empty()
        {
            connection.outgoing = BytesMut::new();
        }
    }

    /// Serialises unwritten records into the connection's outgoing buffer, in order,
    /// while it has room; the task writes them as the socket takes them.
    fn write_unwritten(&mut self) {
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        let mut result = Ok(());
        let mut refused = false;
        // Records are written in order, so the unwritten ones are the tail of the list.
        let first_unwritten = self.pending.partition_point(|pending| pending.written);
        for pending in self.pending.range_mut(first_unwritten..) {
            if connection.outgoing.len() >= OUTGOING_BYTES {
                break;
            }
            result = encode_record(&mut connection.outgoing, pending);
            if let Err(ProtocolError::Oversized(size)) = result {
                // Nothing was written. A write-ahead record is never shortened: its
                // request is refused and the record dropped (the refusal is recorded).
                // Any other record too large to send would block every record after
                // it, so its place is kept by a stub that says so.
                if let Some(ack) = pending.ack.take() {
                    let _ = ack.send(Err(AuditError::TooLarge {
                        size,
                        limit: MAX_FRAME_BYTES,
                    }));
                    pending.refused = true;
                    refused = true;
                    result = Ok(());
                    continue;
                }
                pending.record = too_large_stub(&pending.record, size);
                result = encode_record(&mut connection.outgoing, pending);
            }
            if result.is_err() {
                break;
            }
            pending.written = true;
        }
        if refused {
            self.pending.retain(|pending| !pending.refused);
            self.release_flushes();
        }
        if let Err(error) = result {
            self.disconnected(error.to_string());
        }
    }

    fn acknowledge(&mut self, ack: Option<Result<FromCollector, ProtocolError>>) {
        let (id, outcome) = match ack {
            Some(Ok(FromCollector::Ack { id, sequence })) => {
                self.reconnect_grace = true;
                (id, Ok(sequence))
            }
            Some(Ok(FromCollector::Nack {
                id,
                error,
                retry: true,
            })) => {
                // The store could not take it (a write error, a shutdown): keep it, and
                // this record and everything after it go again on a new connection.
                return self.disconnected(format!(
                    "the collector could not store a record (id {id}): {error}"
                ));
            }
            Some(Ok(FromCollector::Nack {
                id,
                error,
                retry: false,
            })) => (id, Err(AuditError::NotStored(error))),
            Some(Ok(FromCollector::Hello { .. })) => return,
            Some(Ok(FromCollector::Refused { reason })) => {
                return self.refused(ProtocolError::Refused(reason).to_string());
            }
            Some(Err(error)) => return self.disconnected(error.to_string()),
            None => return self.disconnected("the collector closed the connection".into()),
        };
        // Acknowledgements come in order; anything before `id` was acknowledged too.
        while let Some(front) = self.pending.front() {
            if front.id > id {
                break;
            }
            let Some(done) = self.pending.pop_front() else {
                break;
            };
            let awaited = done.ack.is_some();
            if let Some(ack) = done.ack {
                let _ = ack.send(if done.id == id {
                    outcome.clone()
                } else {
                    Ok(0)
                });
            }
            if done.id == id {
                if let Err(error) = &outcome {
                    tracing::error!(%error, "the collector refused a record");
                    // Nobody waits for it (an output): it is lost, and says so. (A
                    // refused write-ahead record refuses its request instead.)
                    if !awaited {
                        self.note_lost(1, format!("the collector refused records: {error}"));
                    }
                }
                break;
            }
        }
        self.release_flushes();
    }

    /// Answers the flush waiters that have nothing left before them.
    fn release_flushes(&mut self) {
        let oldest_pending = self.pending.front().map_or(u64::MAX, |front| front.id);
        while self
            .flushes
            .front()
            .is_some_and(|waiter| waiter.last_id < oldest_pending)
        {
            if let Some(waiter) = self.flushes.pop_front() {
                let _ = waiter.done.send(Ok(waiter.last_id));
            }
        }
    }
}

/// Appends a record's frame to `outgoing`; nothing when it is over the frame limit.
fn encode_record(outgoing: &mut BytesMut, pending: &Pending) -> Result<(), ProtocolError> {
    let frame = RecordFrame {
        id: pending.id,
        record: &pending.record,
        urgent: pending.ack.is_some(),
    };
    // Serialised in place, behind room for its length.
    let start = outgoing.len();
    outgoing.put_u32(0);
    let serialised = serde_json::to_writer((&mut *outgoing).writer(), &frame);
    let size = outgoing.len() - start - 4;
    let length = match (serialised, u32::try_from(size)) {
        (Ok(()), Ok(length)) if size <= MAX_FRAME_BYTES => length,
        (Err(error), _) => {
            outgoing.truncate(start);
            return Err(error.into());
        }
        _ => {
            outgoing.truncate(start);
            return Err(ProtocolError::Oversized(size));
        }
    };
    outgoing[start..start + 4].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

/// Marks a record whose write-ahead failed: it is stored late, after the request was
/// refused (block) or ran anyway (allow).
fn mark_write_ahead_failed(record: &mut Record) {
    if let Some(Value::Object(jupyter)) = record.get_mut("jupyter") {
        jupyter.insert("write_ahead_failed".into(), json!(true));
    }
}

/// What is kept of a record too large for the protocol: its action, time and ids.
fn too_large_stub(record: &Record, size: usize) -> Record {
    let mut stub = Record::new();
    if let Some(event) = record.get("event") {
        stub.insert("event".into(), event.clone());
    }
    let mut jupyter = serde_json::Map::new();
    if let Some(Value::Object(fields)) = record.get("jupyter") {
        for key in [
            "session_id",
            "kernel_id",
            "kernel_name",
            "msg_id",
            "parent_msg_id",
            "channel",
            "from",
        ] {
            if let Some(value) = fields.get(key) {
                jupyter.insert(key.into(), value.clone());
            }
        }
    }
    jupyter.insert("record_too_large".into(), json!(size));
    stub.insert("jupyter".into(), Value::Object(jupyter));
    stub
}

async fn open(
    socket: &std::path::Path,
    hub_token: Option<&HubToken>,
) -> Result<Connection, ProtocolError> {
    let stream = UnixStream::connect(socket).await?;
    let (mut read, mut writer) = stream.into_split();
    write_frame(
        &mut writer,
        &ToCollector::Hello {
            version: PROTOCOL_VERSION,
            hub_token: hub_token.cloned(),
        },
    )
    .await?;
    writer.flush().await?;
    match read_frame::<_, FromCollector>(&mut read).await? {
        Some(FromCollector::Hello { version }) if version == PROTOCOL_VERSION => {}
        Some(FromCollector::Refused { reason }) => return Err(ProtocolError::Refused(reason)),
        Some(other) => {
            return Err(ProtocolError::Io(std::io::Error::other(format!(
                "unexpected answer to hello: {other:?}"
            ))));
        }
        None => return Err(ProtocolError::Truncated),
    }
    Ok(Connection {
        writer,
        outgoing: BytesMut::new(),
        reader: read,
        received: BytesMut::with_capacity(4096),
    })
}
