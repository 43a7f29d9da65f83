//! Free space on the store's filesystem, as the collector's fairness limits see it.
//!
//! `statvfs` is sampled a few times a second off the async threads. Every record the
//! collector accepts for the store is counted at once, and counted as settled when the
//! store has answered for it; the estimate is the last sample less everything accepted
//! and not yet settled when the sample was taken (the sample cannot show it). So a flood
//! is counted before it is on disk, however far the store lags behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often free space is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// Space on a filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeSpace {
    /// What an unprivileged writer (the collector) may still use.
    pub available: u64,
    /// The filesystem's size.
    pub total: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    space: FreeSpace,
    /// The settled-bytes counter just before the sample was taken: whatever was settled
    /// by then is in the sample.
    settled_before: u64,
}

/// The estimate of free space on the filesystem of one directory.
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    sample: Mutex<Option<Sample>>,
    accepted: AtomicU64,
    settled: AtomicU64,
}

impl DiskSpace {
    /// Watches the filesystem of `dir`; no estimate until the first sample.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            sample: Mutex::new(None),
            accepted: AtomicU64::new(0),
            settled: AtomicU64::new(0),
        }
    }

    /// A filesystem that always has `space` (less what is accepted): for tests.
    #[cfg(test)]
    pub fn fixed(space: FreeSpace) -> Self {
        Self {
            dir: PathBuf::new(),
            sample: Mutex::new(Some(Sample {
                space,
                settled_before: 0,
            })),
            accepted: AtomicU64::new(0),
            settled: AtomicU64::new(0),
        }
    }

    /// Takes a sample now. Blocking (a system call on the store's filesystem): call it
    /// from a blocking thread.
    pub fn sample_blocking(&self) -> Result<FreeSpace, nix::Error> {
        let settled_before = self.settled.load(Ordering::Acquire);
        let stats = nix::sys::statvfs::statvfs(&self.dir)?;
        // The libc types are u64 here, and u32 on some 32-bit systems.
        let unit = stats.fragment_size() as u64;
        let space = FreeSpace {
            available: (stats.blocks_available() as u64).saturating_mul(unit),
            total: (stats.blocks() as u64).saturating_mul(unit),
        };
        *crate::sync::lock(&self.sample) = Some(Sample {
            space,
            settled_before,
        });
        Ok(space)
    }

    /// Samples every [`SAMPLE_INTERVAL`] for as long as the future runs.
    pub async fn watch(self: Arc<Self>) {
        let mut failed = false;
        loop {
            let disk = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || disk.sample_blocking()).await {
                Ok(Ok(_)) => failed = false,
                Ok(Err(error)) if !failed => {
                    failed = true;
                    tracing::warn!(%error, dir = %self.dir.display(), "cannot read the store's free space");
                }
                _ => {}
            }
            tokio::time::sleep(SAMPLE_INTERVAL).await;
        }
    }

    /// Counts `bytes` the collector has accepted for the store.
    pub fn accepted(&self, bytes: u64) {
        self.accepted.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Counts `bytes` accepted earlier that the store has now answered for (written,
    /// or failed).
    pub fn settled(&self, bytes: u64) {
        self.settled.fetch_add(bytes, Ordering::AcqRel);
    }

    /// The free space now: the last sample less what was accepted and not settled when
    /// it was taken, and what was accepted since. None before the first sample.
    pub fn free(&self) -> Option<FreeSpace> {
        let sample = (*crate::sync::lock(&self.sample))?;
        let since = self
            .accepted
            .load(Ordering::Acquire)
            .saturating_sub(sample.settled_before);
        Some(FreeSpace {
            available: sample.space.available.saturating_sub(since),
            total: sample.space.total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_bytes_count_until_a_sample_after_they_settled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = DiskSpace::new(dir.path());
        assert_eq!(disk.free(), None, "no estimate before a sample");
        let sampled = disk.sample_blocking().expect("statvfs");
        assert!(sampled.total >= sampled.available && sampled.total > 0);
        disk.accepted(4096);
        let free = disk.free().expect("estimate");
        assert_eq!(free.available, sampled.available.saturating_sub(4096));
        // Not settled yet: a new sample cannot show it, so it still counts.
        let resampled = disk.sample_blocking().expect("statvfs");
        assert_eq!(
            disk.free().expect("estimate").available,
            resampled.available.saturating_sub(4096)
        );
        // Settled (on disk, or failed): the next sample shows whatever it took.
        disk.settled(4096);
        let resampled = disk.sample_blocking().expect("statvfs");
        assert_eq!(disk.free().expect("estimate"), resampled);
    }
}
