//! The writer thread: group commit, rotation, checkpoints.
//!
//! The thread takes the first queued append, drains whatever else is queued (up to
//! [`MAX_BATCH_RECORDS`] records or [`MAX_BATCH_BYTES`] bytes), numbers and chains the
//! records, writes them with one write, syncs once and only then acknowledges each
//! append with its sequence. A batch without an urgent record (one somebody waits for)
//! waits up to [`NON_URGENT_LINGER`] for more, so that a cell's outputs and the next
//! cell's write-ahead share one fsync instead of queueing behind each other's. If the
//! write or the sync fails, every append of the batch gets the error, the segment is cut back, and the chain head and next sequence stay
//! where they were. If cutting back fails, the writer refuses all further appends.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use nix::fcntl::Flock;
use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};

use super::checkpoint::{self, Checkpoint};
use super::config::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS, NON_URGENT_LINGER, StoreConfig};
use super::error::{Result, StoreError};
use super::layout::Access;
use super::record::{self, ChainHash};
use super::recovery::Head;
use super::segment::{OpenSegment, Wrap};

/// What the handles send to the writer thread.
pub(crate) enum Command {
    Append(Append),
    Shutdown(oneshot::Sender<Result<()>>),
}

pub(crate) struct Append {
    pub record: record::Prepared,
    /// Somebody waits for this record: sync without lingering.
    pub urgent: bool,
    pub reply: oneshot::Sender<Result<u64>>,
    /// Held until the append is answered: bounds the number of queued appends.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// The answer to a shutdown request.
pub(crate) struct ShutdownAnswer {
    reply: oneshot::Sender<Result<()>>,
    outcome: Result<()>,
}

impl ShutdownAnswer {
    pub fn send(self) {
        let _ = self.reply.send(self.outcome);
    }
}

/// Counters shared with the handles.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub records: AtomicU64,
    pub batches: AtomicU64,
    pub failed_batches: AtomicU64,
    pub checkpoints: AtomicU64,
    pub segments_created: AtomicU64,
}

/// How far the store is durable: the last record on disk and the last checkpoint. The
/// writer publishes it after each batch and checkpoint (the forwarder waits on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoredHead {
    /// The sequence of the last record on disk (0: none).
    pub sequence: u64,
    /// The sequence the last checkpoint covers (0: none).
    pub checkpointed: u64,
}

/// An append that made it into a batch, waiting for the batch to be on disk.
struct Waiter {
    sequence: u64,
    reply: oneshot::Sender<Result<u64>>,
    _permit: Option<OwnedSemaphorePermit>,
}

pub(crate) struct Writer {
    pub dir: PathBuf,
    pub config: StoreConfig,
    pub access: Access,
    pub key: SigningKey,
    pub wrap: Wrap,
    pub head: Head,
    /// The sequence the last checkpoint covers.
    pub checkpointed: u64,
    pub last_checkpoint: Instant,
    pub failed: Option<String>,
    pub counters: Arc<Counters>,
    /// Where the durable head is published.
    pub head_watch: watch::Sender<StoredHead>,
    /// Held for the writer's lifetime: one writer per store.
    pub _lock: Flock<File>,
}

impl Writer {
    fn last_sequence(&self) -> u64 {
        self.head.next_sequence - 1
    }

    fn checkpoint_pending(&self) -> bool {
        self.last_sequence() != self.checkpointed
    }

    fn publish_head(&self) {
        self.head_watch.send_replace(StoredHead {
            sequence: self.last_sequence(),
            checkpointed: self.checkpointed,
        });
    }

    /// Serves appends until shutdown or until every handle is gone. Returns the answer
    /// owed to a shutdown request, to be sent once the writer (and the store's lock) is
    /// dropped, so the store can be opened again as soon as `shutdown` returns.
    pub fn run(mut self, commands: Receiver<Command>) -> Option<ShutdownAnswer> {
        loop {
            let due = self
                .last_checkpoint
                .checked_add(self.config.checkpoint_interval)
                .filter(|_| self.checkpoint_pending());
            let received = if let Some(due) = due {
                match commands.recv_timeout(due.saturating_duration_since(Instant::now())) {
                    Ok(command) => Some(command),
                    Err(RecvTimeoutError::Timeout) => {
                        self.checkpoint_or_log("interval");
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => None,
                }
            } else {
                commands.recv().ok()
            };
            let control = match received {
                Some(Command::Append(first)) => self.batch(first, &commands),
                Some(shutdown) => Some(shutdown),
                None => {
                    self.checkpoint_or_log("shutdown");
                    break;
                }
            };
            if let Some(Command::Shutdown(reply)) = control {
                let outcome = self.checkpoint("shutdown");
                while let Ok(command) = commands.try_recv() {
                    match command {
                        Command::Append(append) => {
                            let _ = append.reply.send(Err(StoreError::Closed));
                        }
                        Command::Shutdown(other) => {
                            let _ = other.send(Ok(()));
                        }
                    }
                }
                tracing::debug!(dir = %self.dir.display(), "store writer stopped");
                return Some(ShutdownAnswer { reply, outcome });
            }
            if self.checkpoint_pending()
                && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval
            {
                self.checkpoint_or_log("interval");
            }
        }
        tracing::debug!(dir = %self.dir.display(), "store writer stopped");
        None
    }

    /// Collects a batch starting with `first`, writes it and answers every append in it.
    /// Returns a shutdown found while draining the queue.
    fn batch(&mut self, first: Append, commands: &Receiver<Command>) -> Option<Command> {
        let mut waiters: Vec<Waiter> = Vec::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut sequence = self.head.next_sequence;
        let mut hash: ChainHash = self.head.hash;
        let mut control = None;
        let mut urgent = false;
        let linger_until = Instant::now() + NON_URGENT_LINGER;
        let mut next = Some(first);
        while let Some(append) = next.take() {
            urgent |= append.urgent;
            hash = record::seal_into(&append.record, sequence, &hash, &mut bytes);
            waiters.push(Waiter {
                sequence,
                reply: append.reply,
                _permit: append.permit,
            });
            sequence += 1;
            if waiters.len() >= MAX_BATCH_RECORDS || bytes.len() >= MAX_BATCH_BYTES {
                break;
            }
            // Whatever is queued joins the batch; without an urgent record, so does
            // whatever comes before the linger ends.
            let wait = if urgent {
                Duration::ZERO
            } else {
                linger_until.saturating_duration_since(Instant::now())
            };
            match commands.recv_timeout(wait) {
                Ok(Command::Append(append)) => next = Some(append),
                Ok(other) => control = Some(other),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
        }
        if waiters.is_empty() {
            return control;
        }
        match self.write(&bytes) {
            Ok(segment_name) => {
                self.head.next_sequence = sequence;
                self.head.hash = hash;
                self.head.segment_name = Some(segment_name);
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .records
                    .fetch_add(waiters.len() as u64, Ordering::Relaxed);
                self.publish_head();
                for waiter in waiters {
                    let _ = waiter.reply.send(Ok(waiter.sequence));
                }
            }
            Err(error) => {
                self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, records = waiters.len(), "audit batch not stored");
                for waiter in waiters {
                    let _ = waiter.reply.send(Err(error.clone()));
                }
            }
        }
        control
    }

    /// Puts `bytes` durably at the end of the current segment (rotating or creating it
    /// first when needed); returns the segment's name.
    fn write(&mut self, bytes: &[u8]) -> Result<String> {
        if let Some(reason) = &self.failed {
            return Err(StoreError::Failed {
                reason: reason.clone(),
            });
        }
        self.rotate_if_due(bytes.len() as u64)?;
        let segment = match &mut self.head.current {
            Some(segment) => segment,
            None => {
                let created = OpenSegment::create(
                    &self.dir,
                    self.head.next_sequence,
                    self.access,
                    &self.wrap,
                )?;
                self.counters
                    .segments_created
                    .fetch_add(1, Ordering::Relaxed);
                self.head.current.insert(created)
            }
        };
        match segment.append(bytes) {
            Ok(()) => Ok(segment.name.clone()),
            Err(failure) => {
                let error = StoreError::Write {
                    action: failure.action,
                    segment: segment.path.clone(),
                    source: Arc::new(failure.source),
                };
                if let Err(rollback) = failure.rollback {
                    let reason = format!(
                        "a failed write could not be cut back from {}: {rollback}",
                        segment.path.display()
                    );
                    tracing::error!(%reason, "audit store stopped taking records");
                    self.failed = Some(reason);
                }
                Err(error)
            }
        }
    }

    /// Closes the current segment when it is too big for `incoming` more bytes or too
    /// old, and writes a checkpoint for it.
    fn rotate_if_due(&mut self, incoming: u64) -> Result<()> {
        let Some(segment) = &mut self.head.current else {
            return Ok(());
        };
        if segment.len == 0 {
            return Ok(());
        }
        let too_big = segment.len.saturating_add(incoming) > self.config.segment_max_bytes;
        let too_old = segment.age() >= self.config.segment_max_age;
        if !too_big && !too_old {
            return Ok(());
        }
        segment.close(self.access)?;
        tracing::info!(segment = %segment.path.display(), too_big, too_old, "segment rotated");
        self.head.current = None;
        self.checkpoint_or_log("rotation");
        Ok(())
    }

    /// Signs and appends a checkpoint of the chain head, if records came since the last.
    fn checkpoint(&mut self, why: &'static str) -> Result<()> {
        if !self.checkpoint_pending() {
            return Ok(());
        }
        let Some(segment) = &self.head.segment_name else {
            return Ok(());
        };
        let sequence = self.last_sequence();
        let checkpoint = Checkpoint::sign(&self.key, sequence, &self.head.hash, segment);
        checkpoint::append(&self.dir, self.access, &checkpoint)?;
        self.checkpointed = sequence;
        self.last_checkpoint = Instant::now();
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.publish_head();
        tracing::debug!(sequence, why, "checkpoint written");
        Ok(())
    }

    /// A checkpoint whose failure is only logged (the records themselves are stored).
    fn checkpoint_or_log(&mut self, why: &'static str) {
        if let Err(error) = self.checkpoint(why) {
            tracing::error!(%error, "cannot write a checkpoint; retrying at the next interval");
            self.last_checkpoint = Instant::now();
        }
    }
}
