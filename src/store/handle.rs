//! Opening a store and the handle the collector appends through.
//!
//! [`open`] is blocking (it creates the layout, takes the store's lock, loads the key and
//! recovers); call it before starting the async runtime or from `spawn_blocking`. The
//! returned [`StoreHandle`] is cheap to clone; each append goes to the writer thread and
//! resolves once its record is on disk.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, oneshot, watch};
use uuid::Uuid;

use super::config::StoreConfig;
use super::error::{Result, StoreError};
use super::identity;
use super::keys;
use super::layout::{self, Access, CHECKPOINTS_FILE, SEGMENTS_DIR};
use super::record;
use super::recovery::{self, Recovery};
use super::segment::{self, Wrap};
use super::writer::{Append, Command, Counters, StoredHead, Writer};
use crate::path_safety::{self, PathRole};

/// A running store. Clones share one writer thread; when the last clone is dropped the
/// writer writes a final checkpoint and stops. Prefer [`StoreHandle::shutdown`], which
/// waits for that checkpoint and reports whether it was written.
#[derive(Clone)]
pub struct StoreHandle {
    commands: mpsc::Sender<Command>,
    permits: Arc<Semaphore>,
    max_pending: usize,
    counters: Arc<Counters>,
    dir: Arc<PathBuf>,
    store_id: Uuid,
    head: watch::Receiver<StoredHead>,
    access: Access,
}

/// Counts since the store was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Records acknowledged.
    pub records: u64,
    /// Batches written (each with one write and one sync).
    pub batches: u64,
    /// Batches that failed (all their appends got the error).
    pub failed_batches: u64,
    pub checkpoints: u64,
    pub segments_created: u64,
}

/// Opens (creating if needed) the store in `config.dir` and starts its writer thread.
pub fn open(config: StoreConfig) -> Result<(StoreHandle, Recovery)> {
    open_with(config, segment::plain())
}

fn lock(dir: &Path) -> Result<Flock<File>> {
    let handle = File::open(dir).map_err(|e| StoreError::io("open", dir, e))?;
    Flock::lock(handle, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            StoreError::Locked {
                dir: dir.to_path_buf(),
            }
        } else {
            StoreError::io("lock", dir, errno.into())
        }
    })
}

/// [`open`], with the segment files wrapped by `wrap` (tests inject failures this way).
pub(crate) fn open_with(config: StoreConfig, wrap: Wrap) -> Result<(StoreHandle, Recovery)> {
    let dir = config.dir.clone();
    let access = Access {
        reviewers_gid: config.reviewers_gid,
    };
    path_safety::check_location(PathRole::Store, &dir)?;
    layout::check_store_entries(&dir)?;
    let created = layout::ensure_dir(&dir, access.dir_mode())?;
    access.apply(&dir, access.dir_mode())?;
    if created && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        layout::sync_dir(parent)?;
    }
    let store_lock = lock(&dir)?;
    let segments_dir = dir.join(SEGMENTS_DIR);
    if layout::ensure_dir(&segments_dir, access.dir_mode())? {
        layout::sync_dir(&dir)?;
    }
    access.apply(&segments_dir, access.dir_mode())?;
    let key = keys::load_or_create(&dir, access)?;
    let store_id = identity::load_or_create(&dir, access)?;
    let (head, recovery) = recovery::recover(&dir, access, &wrap, created)?;
    // Closed segments stay read-only, for the owner and the reviewers' group as now set.
    for closed in layout::list_segments(&dir)?
        .iter()
        .filter(|s| Some(&s.path) != recovery.segment.as_ref())
    {
        access.apply(&closed.path, access.sealed_mode())?;
    }
    let checkpoints = dir.join(CHECKPOINTS_FILE);
    if checkpoints.exists() {
        access.apply(&checkpoints, access.writable_mode())?;
    }
    if let Some(torn) = &recovery.torn {
        tracing::warn!(segment = %torn.segment.display(), bytes = torn.bytes, "store recovered from a torn write");
    }
    tracing::info!(
        dir = %dir.display(),
        last_sequence = recovery.last_sequence,
        %store_id,
        segments = recovery.segments,
        "audit store open"
    );

    let counters = Arc::new(Counters::default());
    let max_pending = config.max_pending.max(1);
    let (head_watch, stored_head) = watch::channel(StoredHead {
        sequence: recovery.last_sequence,
        checkpointed: recovery.last_checkpoint,
    });
    let writer = Writer {
        dir: dir.clone(),
        access,
        key,
        wrap,
        head,
        checkpointed: recovery.last_checkpoint,
        last_checkpoint: Instant::now(),
        failed: None,
        counters: Arc::clone(&counters),
        head_watch,
        _lock: store_lock,
        config,
    };
    let (commands, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("audit-store-writer".into())
        .spawn(move || {
            if let Some(answer) = writer.run(receiver) {
                answer.send();
            }
        })
        .map_err(|e| StoreError::io("start the writer thread for", &dir, e))?;
    let handle = StoreHandle {
        commands,
        permits: Arc::new(Semaphore::new(max_pending)),
        max_pending,
        counters,
        dir: Arc::new(dir),
        store_id,
        head: stored_head,
        access,
    };
    Ok((handle, recovery))
}

impl StoreHandle {
    /// Stores `record` (a JSON object without `event.sequence` and chain fields) and
    /// returns its sequence once it is on disk.
    ///
    /// An error means the record is not acknowledged. If the future is dropped after
    /// the record was queued, the record may still be stored.
    pub async fn append(&self, record: Map<String, Value>) -> Result<u64> {
        let record = record::prepare(record).map_err(StoreError::InvalidRecord)?;
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        self.send(Append {
            record,
            urgent: true,
            reply,
            permit: Some(permit),
        })?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `record` and returns at once with the promise of its sequence, so that
    /// one caller's records are stored in the order it submitted them while their
    /// acknowledgements are awaited concurrently. Waits only for a free place in the
    /// queue.
    /// `urgent`: someone waits for this record, so it is synced without lingering for
    /// more records to share the fsync with.
    pub async fn submit(
        &self,
        record: Map<String, Value>,
        urgent: bool,
    ) -> oneshot::Receiver<Result<u64>> {
        match record::prepare(record) {
            Ok(prepared) => self.submit_prepared(prepared, urgent).await,
            Err(reason) => {
                let (reply, answer) = oneshot::channel();
                let _ = reply.send(Err(StoreError::InvalidRecord(reason)));
                answer
            }
        }
    }

    /// [`submit`](Self::submit) for a record already assembled as its body
    /// ([`record::prepare_parts`]), so that raw JSON parts are written as they came.
    pub async fn submit_prepared(
        &self,
        record: record::Prepared,
        urgent: bool,
    ) -> oneshot::Receiver<Result<u64>> {
        let (reply, answer) = oneshot::channel();
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            let _ = reply.send(Err(StoreError::Closed));
            return answer;
        };
        // A failed send drops the append and with it `reply`: the answer reads as closed.
        let _ = self.send(Append {
            record,
            urgent,
            reply,
            permit: Some(permit),
        });
        answer
    }

    /// [`append`](Self::append) for threads outside the async runtime (it must not be
    /// called from async code). It does not wait for a free place in the queue.
    pub fn append_blocking(&self, record: Map<String, Value>) -> Result<u64> {
        let record = record::prepare(record).map_err(StoreError::InvalidRecord)?;
        let (reply, answer) = oneshot::channel();
        self.send(Append {
            record,
            urgent: true,
            reply,
            permit: None,
        })?;
        answer.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    fn send(&self, append: Append) -> Result<()> {
        self.commands
            .send(Command::Append(append))
            .map_err(|_| StoreError::Closed)
    }

    /// Stops the writer after the appends queued before this call: writes a final
    /// checkpoint and reports whether it was written. Appends still queued or made
    /// through other clones afterwards get [`StoreError::Closed`].
    pub async fn shutdown(self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).is_err() {
            return Ok(());
        }
        answer.await.unwrap_or(Ok(()))
    }

    /// [`shutdown`](Self::shutdown) outside async code.
    pub fn shutdown_blocking(self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).is_err() {
            return Ok(());
        }
        answer.blocking_recv().unwrap_or(Ok(()))
    }

    /// Counts since the store was opened.
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            records: c.records.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            segments_created: c.segments_created.load(Ordering::Relaxed),
        }
    }

    /// Appends made with [`append`](Self::append) that are queued or being written.
    pub fn queued(&self) -> usize {
        self.max_pending - self.permits.available_permits()
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store's identity (see [`store_id`](super::store_id)).
    pub fn store_id(&self) -> Uuid {
        self.store_id
    }

    /// Replaces the forwarder's state file ([`forwarding_file`](super::forwarding_file))
    /// with `text`, readable like the segments. Blocking. Not synced: it is a report for
    /// `status`, rewritten every few seconds, not part of the trail.
    pub fn write_forwarding_state(&self, text: &[u8]) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let temp = self.dir.join(layout::FORWARDING_REWRITE_FILE);
        let mode = self.access.writable_mode();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)
            .map_err(|e| StoreError::io("create", &temp, e))?;
        file.write_all(text)
            .map_err(|e| StoreError::io("write", &temp, e))?;
        self.access.apply(&temp, mode)?;
        let path = self.dir.join(layout::FORWARDING_FILE);
        std::fs::rename(&temp, &path).map_err(|e| StoreError::io("rename into place", &path, e))
    }

    /// The collector's cache of Hub-verified tokens (`hub-tokens.json`), if it has one.
    /// Blocking.
    pub fn read_hub_tokens(&self) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(layout::HUB_TOKENS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(StoreError::io("read", &path, error)),
        }
    }

    /// Replaces the collector's cache of Hub-verified tokens with `text`, owner only.
    /// Blocking; not synced (losing it costs a question to the Hub, nothing else).
    pub fn write_hub_tokens(&self, text: &[u8]) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let temp = self.dir.join(layout::HUB_TOKENS_REWRITE_FILE);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(|e| StoreError::io("create", &temp, e))?;
        file.write_all(text)
            .map_err(|e| StoreError::io("write", &temp, e))?;
        let path = self.dir.join(layout::HUB_TOKENS_FILE);
        std::fs::rename(&temp, &path).map_err(|e| StoreError::io("rename into place", &path, e))
    }

    /// The durable head, updated after every batch and checkpoint; the sender goes away
    /// when the writer stops.
    pub fn watch_head(&self) -> watch::Receiver<StoredHead> {
        self.head.clone()
    }
}
