//! Where the store lives and when it rotates segments and writes checkpoints.

use std::path::PathBuf;
use std::time::Duration;

/// Largest number of records written and synced together in one group commit.
pub const MAX_BATCH_RECORDS: usize = 4096;
/// Largest size of one group commit in bytes (a single larger record is written alone).
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// How long a batch of records nobody waits for (outputs) may wait for more records,
/// such as the next write-ahead, to share one fsync. An urgent record ends the wait.
pub const NON_URGENT_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// How a store is opened. [`StoreConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The store directory (created if missing).
    pub dir: PathBuf,
    /// A segment that has reached this size is closed before the next batch (default 64 MiB).
    pub segment_max_bytes: u64,
    /// A segment this old is closed before the next batch (default 24 h).
    pub segment_max_age: Duration,
    /// A signed checkpoint is written this often when records were added (default 60 s),
    /// and also at every rotation and at shutdown.
    pub checkpoint_interval: Duration,
    /// The group that may read the store (reviewers); `None`: only the owner.
    pub reviewers_gid: Option<u32>,
    /// Most appends queued for the writer at once; further `append` calls wait.
    pub max_pending: usize,
}

impl StoreConfig {
    /// The defaults for a store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            dir: dir.into(),
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age: Duration::from_secs(24 * 60 * 60),
            checkpoint_interval: Duration::from_secs(60),
            reviewers_gid: None,
            max_pending: 16 * 1024,
        }
    }
}
