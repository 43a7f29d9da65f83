//! The proxy's auditing: every relayed message is observed, requests that can run
//! code are recorded before the kernel sees them, and lifecycle events are recorded.
//!
//! Records are built off the relay path, in the collector client's task, which sees
//! observations in the order the relays saw them (one queue from relay to collector);
//! only write-ahead requests make a relay wait, under one deadline.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Map;
use tokio::sync::Semaphore;

use crate::audit::events::AuditEvent;
use crate::audit::{
    Direction, Observation, ParsedMessage, Record, RecordBuilder, SessionContext, record_event,
};
use crate::collector::client::{AuditClient, AuditError, Recorder};
use crate::collector::protocol::MAX_FRAME_BYTES;
use crate::config::OnAuditFailure;
use crate::connection::Channel;
use crate::wire::WireMessage;

/// How long a request may wait for its record to be on disk before it is refused.
pub(crate) const WRITE_AHEAD_PATIENCE: Duration = Duration::from_secs(5);
/// Memory that observed messages may hold until the collector has their records. Past
/// it, relaying waits for the collector (output is slowed, never lost from the record)
/// while it is connected; while it is away, records past it are counted in a gap.
const BUDGET_BYTES: usize = 32 * 1024 * 1024;
/// The most a relay waits for room before the record is counted as lost.
const BUDGET_PATIENCE: Duration = Duration::from_secs(30);
/// What any message costs in the budget besides its bytes.
const MESSAGE_OVERHEAD: usize = 512;

/// The proxy's records of relayed messages, made in the collector client's task.
impl Recorder for RecordBuilder {
    fn observed(&mut self, observation: Observation) -> Option<Record> {
        self.message(observation)
    }

    fn write_ahead(&mut self, observation: Observation) -> Record {
        self.message(observation)
            .unwrap_or_else(|| self.event("unknown", Map::new()))
    }
}

/// Handle used by the relays; cheap to clone.
#[derive(Clone)]
pub(crate) struct Auditor {
    client: AuditClient,
    context: SessionContext,
    budget: Arc<Semaphore>,
    pub policy: OnAuditFailure,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Auditor")
            .field("policy", &self.policy)
            .finish()
    }
}

impl Auditor {
    /// `client` makes the records of observed messages (its [`Recorder`]) and sends them.
    pub(crate) fn new(
        client: AuditClient,
        context: SessionContext,
        policy: OnAuditFailure,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            context,
            budget: Arc::new(Semaphore::new(BUDGET_BYTES)),
            policy,
        })
    }

    /// Records a message. Waits only when the records not yet stored hold more than
    /// the memory budget while the collector is connected.
    pub(crate) async fn observe(
        &self,
        channel: Channel,
        direction: Direction,
        message: &WireMessage,
        parsed: Option<ParsedMessage>,
    ) {
        let cost = (message.size() + MESSAGE_OVERHEAD).min(BUDGET_BYTES);
        let cost = u32::try_from(cost).unwrap_or(u32::MAX);
        let room = if self.client.is_connected() {
            let waiting = Arc::clone(&self.budget).acquire_many_owned(cost);
            tokio::time::timeout(BUDGET_PATIENCE, waiting)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            Arc::clone(&self.budget).try_acquire_many_owned(cost).ok()
        };
        let Some(room) = room else {
            self.client.count_lost(1);
            return;
        };
        let observation = Observation {
            channel,
            direction,
            message: message.clone(),
            parsed,
        };
        self.client.observe(observation, room).await;
    }

    /// Records a frontend request, whole, and waits until it is on disk. A request
    /// whose record cannot be one frame to the collector is refused: a record holds all
    /// of what the kernel would act on, or the kernel does not get it.
    pub(crate) async fn write_ahead(
        &self,
        channel: Channel,
        message: &WireMessage,
        parsed: ParsedMessage,
    ) -> Result<u64, AuditError> {
        // Every byte of the JSON parts goes into the record, and buffers as base64: a
        // request larger than the frame in these terms cannot fit, whatever its escaping.
        let buffers: usize = message.buffers.iter().map(|buffer| buffer.len()).sum();
        let least_record_size = message.size() - buffers + buffers / 3 * 4;
        if least_record_size > MAX_FRAME_BYTES {
            return Err(AuditError::TooLarge {
                size: least_record_size,
                limit: MAX_FRAME_BYTES,
            });
        }
        let observation = Observation {
            channel,
            direction: Direction::FromFrontend,
            message: message.clone(),
            parsed: Some(parsed),
        };
        self.client
            .write_ahead(observation, WRITE_AHEAD_PATIENCE)
            .await
    }

    /// Records a lifecycle event (session start and end, interrupt, refusal, …).
    pub(crate) fn event(&self, event: &impl AuditEvent) {
        self.client.record(record_event(&self.context, event));
    }

    /// Waits until everything recorded so far is stored, or `patience` runs out.
    pub(crate) async fn flush(&self, patience: Duration) -> Result<(), AuditError> {
        // One queue: every earlier observation and event is ahead of the flush.
        self.client.flush(patience).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::net::UnixListener;
    use tokio::time::Instant;

    use super::*;
    use crate::audit::SizePolicy;
    use crate::collector::protocol::{
        FromCollector, PROTOCOL_VERSION, ToCollector, read_frame, write_frame,
    };
    use crate::wire::compose;

    fn context() -> SessionContext {
        SessionContext {
            session_id: "session-1".into(),
            ..SessionContext::default()
        }
    }

    /// What a test collector does with record frames once it has answered the hello;
    /// it never acknowledges one.
    enum Takes {
        Nothing,
        Frames,
        /// Nothing until `after`, then every frame, passed on as JSON.
        FramesLater {
            after: Duration,
            frames: tokio::sync::mpsc::UnboundedSender<serde_json::Value>,
        },
    }

    fn silent_collector(dir: &std::path::Path, takes: Takes) -> std::path::PathBuf {
        let socket = dir.join("collector.sock");
        let listener = UnixListener::bind(&socket).expect("binds");
        tokio::spawn(async move {
            // Kept open: the connection stays up, silent.
            let (mut readers, mut writers) = (Vec::new(), Vec::new());
            while let Ok((stream, _)) = listener.accept().await {
                let (mut read, mut write) = stream.into_split();
                let Ok(Some(ToCollector::Hello { .. })) = read_frame(&mut read).await else {
                    continue;
                };
                let hello = FromCollector::Hello {
                    version: PROTOCOL_VERSION,
                };
                write_frame(&mut write, &hello).await.expect("hello");
                tokio::io::AsyncWriteExt::flush(&mut write)
                    .await
                    .expect("flushed");
                let (after, frames) = match &takes {
                    Takes::Nothing => {
                        readers.push(read);
                        writers.push(write);
                        continue;
                    }
                    Takes::Frames => (Duration::ZERO, None),
                    Takes::FramesLater { after, frames } => (*after, Some(frames.clone())),
                };
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    while let Ok(Some(frame)) = read_frame::<_, serde_json::Value>(&mut read).await
                    {
                        if let Some(frames) = &frames {
                            let _ = frames.send(frame);
                        }
                    }
                });
                writers.push(write);
            }
        });
        socket
    }

    fn auditor(socket: std::path::PathBuf) -> Arc<Auditor> {
        let recorder = RecordBuilder::new(context(), SizePolicy::default());
        let (client, _) = AuditClient::spawn(socket, context(), Box::new(recorder));
        Auditor::new(client, context(), OnAuditFailure::Block)
    }

    fn execute_request(code: &str) -> (WireMessage, ParsedMessage) {
        let message = compose(
            vec![Bytes::from_static(b"client")],
            "execute_request",
            "s",
            &serde_json::json!({ "code": code }),
        );
        let parsed = ParsedMessage::read(&message).expect("readable");
        (message, parsed)
    }

    /// Waits until the client is connected (the first write-ahead then goes to the
    /// silent collector rather than failing as unreachable).
    async fn connected(auditor: &Auditor) {
        while !auditor.client.is_connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Writes ahead one request, checks that it is refused for want of an
    /// acknowledgement, and gives how long the refusal took.
    async fn refused_write_ahead(auditor: &Auditor) -> Duration {
        let (message, parsed) = execute_request("1");
        let started = Instant::now();
        let outcome = auditor.write_ahead(Channel::Shell, &message, parsed).await;
        assert_eq!(outcome, Err(AuditError::Timeout(WRITE_AHEAD_PATIENCE)));
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_ahead_the_collector_never_acknowledges_is_refused_after_one_patience() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auditor = auditor(silent_collector(dir.path(), Takes::Frames));
        connected(&auditor).await;
        let waited = refused_write_ahead(&auditor).await;
        assert!(
            waited >= WRITE_AHEAD_PATIENCE && waited < WRITE_AHEAD_PATIENCE * 2,
            "one deadline, not one per hand-off: waited {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_ahead_behind_a_full_queue_is_refused_after_one_patience() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The collector takes nothing: the client blocks on its socket, its queue fills.
        let auditor = auditor(silent_collector(dir.path(), Takes::Nothing));
        connected(&auditor).await;
        let big = "x".repeat(4 * 1024 * 1024);
        let (message, _) = execute_request(&big);
        auditor
            .observe(Channel::Shell, Direction::FromKernel, &message, None)
            .await;
        for _ in 0..5000 {
            auditor.event(&crate::audit::events::ParentExited::default());
        }
        let waited = refused_write_ahead(&auditor).await;
        assert!(
            waited <= WRITE_AHEAD_PATIENCE,
            "queueing and acknowledgement share one deadline: waited {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_ahead_given_up_while_queued_is_stored_marked_as_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (frames, mut received) = tokio::sync::mpsc::unbounded_channel();
        let takes = Takes::FramesLater {
            after: WRITE_AHEAD_PATIENCE * 2,
            frames,
        };
        let auditor = auditor(silent_collector(dir.path(), takes));
        connected(&auditor).await;
        // Output ahead (8 MiB, twice what the client writes ahead) keeps the client
        // writing to a collector that does not read yet; the request is queued behind
        // it and its wait runs out there.
        let text = "x".repeat(1024 * 1024);
        for _ in 0..8 {
            let output = compose(
                vec![],
                "stream",
                "s",
                &serde_json::json!({ "name": "stdout", "text": text }),
            );
            auditor
                .observe(Channel::Iopub, Direction::FromKernel, &output, None)
                .await;
        }
        let (message, parsed) = execute_request("queued_request_marker");
        let outcome = auditor.write_ahead(Channel::Shell, &message, parsed).await;
        assert_eq!(outcome, Err(AuditError::Timeout(WRITE_AHEAD_PATIENCE)));
        // Once the collector reads, the request's record arrives, marked as late: a
        // reviewer must not take it for a request recorded before it ran.
        loop {
            let frame = received.recv().await.expect("the request's record arrives");
            let text = frame.to_string();
            if text.contains("queued_request_marker") {
                assert!(
                    text.contains("\"write_ahead_failed\":true"),
                    "not marked: {}",
                    &text[..text.len().min(400)]
                );
                break;
            }
        }
    }
}
