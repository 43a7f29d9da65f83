//! Free space on the store's filesystem, as the collector's fairness limits see it.
//!
//! `statvfs` is sampled a few times a second off the async threads; between samples,
//! every record the collector accepts is taken off the last sample, so a flood that
//! arrives between two samples is counted before it is on disk. (Records accepted but
//! not yet written when a sample is taken are counted by neither: the estimate can be
//! high by what the store has queued at that moment, which the in-flight budget bounds.)

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
    /// The accepted-bytes counter just before the sample was taken.
    accepted_before: u64,
}

/// The estimate of free space on the filesystem of one directory.
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    sample: Mutex<Option<Sample>>,
    accepted: AtomicU64,
}

impl DiskSpace {
    /// Watches the filesystem of `dir`; no estimate until the first sample.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            sample: Mutex::new(None),
            accepted: AtomicU64::new(0),
        }
    }

    /// A filesystem that always has `space` (less what is accepted): for tests.
    #[cfg(test)]
    pub fn fixed(space: FreeSpace) -> Self {
        Self {
            dir: PathBuf::new(),
            sample: Mutex::new(Some(Sample {
                space,
                accepted_before: 0,
            })),
            accepted: AtomicU64::new(0),
        }
    }

    /// Takes a sample now. Blocking (a system call on the store's filesystem): call it
    /// from a blocking thread.
    pub fn sample_blocking(&self) -> Result<FreeSpace, nix::Error> {
        let accepted_before = self.accepted.load(Ordering::Relaxed);
        let stats = nix::sys::statvfs::statvfs(&self.dir)?;
        // The libc types are u64 here, and u32 on some 32-bit systems.
        let unit = stats.fragment_size() as u64;
        let space = FreeSpace {
            available: (stats.blocks_available() as u64).saturating_mul(unit),
            total: (stats.blocks() as u64).saturating_mul(unit),
        };
        *self
            .sample
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Sample {
            space,
            accepted_before,
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
        self.accepted.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The free space now: the last sample less what was accepted since. None before
    /// the first sample.
    pub fn free(&self) -> Option<FreeSpace> {
        let sample = (*self
            .sample
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))?;
        let since = self
            .accepted
            .load(Ordering::Relaxed)
            .saturating_sub(sample.accepted_before);
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
    fn accepted_bytes_count_until_the_next_sample() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = DiskSpace::new(dir.path());
        assert_eq!(disk.free(), None, "no estimate before a sample");
        let sampled = disk.sample_blocking().expect("statvfs");
        assert!(sampled.total >= sampled.available && sampled.total > 0);
        disk.accepted(4096);
        let free = disk.free().expect("estimate");
        assert_eq!(free.available, sampled.available.saturating_sub(4096));
        // A new sample starts from what the filesystem says (nothing was written).
        let resampled = disk.sample_blocking().expect("statvfs");
        assert_eq!(disk.free().expect("estimate"), resampled);
    }
}
