//! The proxy's auditing: every relayed message is observed, requests that can run
//! code are recorded before the kernel sees them, and lifecycle events are recorded.
//!
//! Records are built off the relay path, in one task that sees observations in the
//! order the relays saw them; only write-ahead requests make a relay wait.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::audit::events::AuditEvent;
use crate::audit::{
    Direction, Observation, ParsedMessage, RecordBuilder, SessionContext, SizePolicy,
};
use crate::collector::client::{AuditClient, AuditError, Ticket};
use crate::collector::protocol::MAX_FRAME_BYTES;
use crate::config::OnAuditFailure;
use crate::connection::Channel;
use crate::wire::WireMessage;

/// How long a request may wait for its record to be on disk before it is refused.
pub(crate) const WRITE_AHEAD_PATIENCE: Duration = Duration::from_secs(5);
/// Observations waiting to become records.
const JOB_CAPACITY: usize = 4096;
/// Memory that observed messages may hold until the collector has their records. Past
/// it, relaying waits for the collector (output is slowed, never lost from the record)
/// while it is connected; while it is away, records past it are counted in a gap.
const BUDGET_BYTES: usize = 32 * 1024 * 1024;
/// The most a relay waits for room before the record is counted as lost.
const BUDGET_PATIENCE: Duration = Duration::from_secs(30);
/// What any message costs in the budget besides its bytes.
const MESSAGE_OVERHEAD: usize = 512;

enum Job {
    Observe(Observation, OwnedSemaphorePermit),
    WriteAhead(Observation, oneshot::Sender<Ticket>),
    Event(String, Map<String, Value>),
    /// Answered once every job before it has been handed to the client.
    Flush(oneshot::Sender<()>),
}

/// Handle used by the relays; cheap to clone.
#[derive(Clone)]
pub(crate) struct Auditor {
    jobs: mpsc::Sender<Job>,
    client: AuditClient,
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
    pub(crate) fn start(
        client: AuditClient,
        context: SessionContext,
        size: SizePolicy,
        policy: OnAuditFailure,
    ) -> Arc<Self> {
        let (jobs, mut pending) = mpsc::channel(JOB_CAPACITY);
        let task_client = client.clone();
        tokio::spawn(async move {
            let mut builder = RecordBuilder::new(context, size);
            while let Some(job) = pending.recv().await {
                match job {
                    Job::Observe(observation, room) => {
                        if let Some(record) = builder.message(observation) {
                            task_client.record_holding(record, Some(room));
                        }
                    }
                    Job::WriteAhead(observation, ticket) => {
                        let record = builder
                            .message(observation)
                            .unwrap_or_else(|| builder.event("unknown", Map::new()));
                        let _ = ticket.send(task_client.submit_durable(record));
                    }
                    Job::Event(action, fields) => {
                        task_client.record(builder.event(&action, fields))
                    }
                    Job::Flush(reached) => {
                        let _ = reached.send(());
                    }
                }
            }
        });
        Arc::new(Self {
            jobs,
            client,
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
        let job = Job::Observe(
            Observation {
                channel,
                direction,
                message: message.clone(),
                parsed,
            },
            room,
        );
        if self.jobs.send(job).await.is_err() {
            self.client.count_lost(1);
        }
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
        let (ticket, ticketed) = oneshot::channel();
        let job = Job::WriteAhead(
            Observation {
                channel,
                direction: Direction::FromFrontend,
                message: message.clone(),
                parsed: Some(parsed),
            },
            ticket,
        );
        let queued = tokio::time::timeout(WRITE_AHEAD_PATIENCE, self.jobs.send(job));
        match queued.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(AuditError::Stopped),
            Err(_) => return Err(AuditError::Timeout(WRITE_AHEAD_PATIENCE)),
        }
        let ticket = ticketed.await.map_err(|_| AuditError::Stopped)?;
        ticket.wait(WRITE_AHEAD_PATIENCE).await
    }

    /// Records a lifecycle event (session start and end, interrupt, refusal, …).
    pub(crate) fn event(&self, event: &impl AuditEvent) {
        let action = event.action().as_str().to_owned();
        if self
            .jobs
            .try_send(Job::Event(action, event.fields()))
            .is_err()
        {
            self.client.count_lost(1);
        }
    }

    /// Waits until everything recorded so far is stored, or `patience` runs out.
    pub(crate) async fn flush(&self, patience: Duration) -> Result<(), AuditError> {
        // Through the job queue first, so every earlier observation is submitted.
        let (reached, reached_marker) = oneshot::channel();
        let queued = tokio::time::timeout(patience, self.jobs.send(Job::Flush(reached)));
        if !matches!(queued.await, Ok(Ok(()))) {
            return Err(AuditError::Timeout(patience));
        }
        reached_marker.await.map_err(|_| AuditError::Stopped)?;
        self.client.flush(patience).await.map(|_| ())
    }
}
