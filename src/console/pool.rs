//! The console's use of the index: one writer that catches it up from the store (at
//! start, then about every second, in a blocking task), and a few read-only connections
//! the pages query in `spawn_blocking` (rusqlite blocks). Pages never wait for a
//! catch-up: SQLite's WAL lets them read while it writes, so the first catch-up of a big
//! store shows as "indexing N of M records" instead of a page that does not come.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::index::{Index, IndexError};
use super::source::{ConsoleSource, PostgresRecords};
use crate::review::sessions::LocalProcesses;
use crate::store;

/// Read-only connections: pages run at most this many queries at once.
const READERS: usize = 3;
/// How often the writer looks for new records.
const CATCH_UP_EVERY: Duration = Duration::from_secs(1);

/// How far the index is.
#[derive(Debug, Default)]
pub struct Progress {
    /// The first catch-up has finished: the index describes the store.
    pub ready: AtomicBool,
    /// The store's last sequence when last looked at.
    pub stored: AtomicU64,
    /// The last sequence the writer committed.
    pub indexed: AtomicU64,
    /// Unix seconds of the last finished catch-up.
    pub caught_up_at: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// Why a page's query could not run.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("the query task failed: {0}")]
    Task(String),
}

/// The read-only connections and the writer's progress.
pub struct IndexPool {
    readers: Mutex<Vec<Index>>,
    permits: Semaphore,
    pub progress: Arc<Progress>,
    pub path: PathBuf,
}

impl IndexPool {
    /// Opens the index at `path` (made if new), starts its writer on `store`, and opens
    /// the pages' connections. Call inside the runtime.
    pub fn start(source: &ConsoleSource, path: &Path) -> Result<Arc<Self>, IndexError> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|source| IndexError::Create {
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
        let writer = Index::open(path)?;
        let readers = (0..READERS)
            .map(|_| Index::open_read_only(path))
            .collect::<Result<Vec<_>, _>>()?;
        let progress = Arc::new(Progress::default());
        let indexed = match source {
            ConsoleSource::Store(_) => writer.last_sequence()?,
            ConsoleSource::Postgres(_) => writer.forwarded_count()?,
        };
        progress.indexed.store(indexed, Ordering::Relaxed);
        let records = match source {
            ConsoleSource::Store(dir) => Records::Store(dir.clone()),
            ConsoleSource::Postgres(options) => {
                Records::Postgres(Box::new(PostgresRecords::new(options.clone())))
            }
        };
        tokio::spawn(catch_up_forever(writer, records, progress.clone()));
        Ok(Arc::new(IndexPool {
            readers: Mutex::new(readers),
            permits: Semaphore::new(READERS),
            progress,
            path: path.to_path_buf(),
        }))
    }

    /// Runs `query` on a read-only connection in a blocking task.
    pub async fn query<T, F>(self: &Arc<Self>, query: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: FnOnce(&Index) -> Result<T, IndexError> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|error| QueryError::Task(error.to_string()))?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let reader = pool
                .readers
                .lock()
                .map_err(|_| QueryError::Task("a query panicked".into()))?
                .pop()
                .ok_or_else(|| QueryError::Task("no free connection".into()))?;
            let answer = query(&reader);
            if let Ok(mut readers) = pool.readers.lock() {
                readers.push(reader);
            }
            answer.map_err(QueryError::from)
        })
        .await
        .map_err(|error| QueryError::Task(error.to_string()))?
    }
}

/// What the writer catches up from.
enum Records {
    Store(PathBuf),
    Postgres(Box<PostgresRecords>),
}

async fn catch_up_forever(mut writer: Index, mut records: Records, progress: Arc<Progress>) {
    let liveness = LocalProcesses::default();
    loop {
        let shared = progress.clone();
        let liveness = liveness.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let outcome = match &mut records {
                Records::Store(dir) => {
                    if let Ok(Some(last)) = store::last_record(dir) {
                        shared.stored.store(last.sequence, Ordering::Relaxed);
                    }
                    writer.catch_up(dir, &liveness)
                }
                Records::Postgres(postgres) => {
                    writer.catch_up_forwarded(postgres.as_mut(), &liveness)
                }
            };
            (writer, records, outcome)
        })
        .await;
        let Ok((returned, returned_records, outcome)) = joined else {
            tracing::error!("the index writer panicked; the pages show the index as it is");
            return;
        };
        writer = returned;
        records = returned_records;
        match outcome {
            Ok(done) => {
                if let Some(stored) = done.stored {
                    progress.stored.store(stored, Ordering::Relaxed);
                }
                if done.records > 0 || done.rebuilt {
                    tracing::debug!(
                        records = done.records,
                        last = done.last_sequence,
                        rebuilt = done.rebuilt,
                        "index caught up"
                    );
                }
                progress
                    .indexed
                    .store(done.last_sequence, Ordering::Relaxed);
                progress.ready.store(true, Ordering::Relaxed);
                progress.caught_up_at.store(
                    time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64,
                    Ordering::Relaxed,
                );
                if let Ok(mut error) = progress.last_error.lock() {
                    *error = None;
                }
            }
            Err(error) => {
                let text = error.to_string();
                if let Ok(mut last) = progress.last_error.lock() {
                    // Said once, not every second while it lasts.
                    if last.as_deref() != Some(text.as_str()) {
                        tracing::warn!(%error, "cannot catch the index up; trying again every second");
                    }
                    *last = Some(text);
                }
            }
        }
        tokio::time::sleep(CATCH_UP_EVERY).await;
    }
}
