//! A segment file that fails or stalls on command, to test the writer's failure paths.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::store::segment::{SegmentFile, Wrap};

/// What the next operations on segment files do. Counters count calls on every file.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Write calls so far.
    pub writes: AtomicU64,
    /// The write with this number (1-based) fails with ENOSPC; 0: none.
    pub fail_write: AtomicU64,
    /// A failing write first writes half of its bytes.
    pub partial: AtomicBool,
    /// Data syncs fail with EIO.
    pub fail_sync: AtomicBool,
    /// Truncations fail with EIO.
    pub fail_truncate: AtomicBool,
    /// Data syncs started so far.
    pub syncs: AtomicU64,
    /// While set, a data sync waits (the batch stays in flight).
    pub hold_sync: AtomicBool,
    /// Every data sync takes this long, like a real disk.
    pub sync_delay: AtomicU64,
}

impl Faults {
    pub fn wrap(self: &Arc<Self>) -> Wrap {
        let faults = Arc::clone(self);
        Arc::new(move |file| {
            Box::new(Flaky {
                file,
                faults: Arc::clone(&faults),
            })
        })
    }
}

struct Flaky {
    file: File,
    faults: Arc<Faults>,
}

impl SegmentFile for Flaky {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let number = self.faults.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.faults.fail_write.load(Ordering::SeqCst) == number {
            if self.faults.partial.load(Ordering::SeqCst) {
                io::Write::write_all(&mut self.file, &bytes[..bytes.len() / 2])?;
            }
            return Err(io::Error::from_raw_os_error(nix::libc::ENOSPC));
        }
        io::Write::write_all(&mut self.file, bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        while self.faults.hold_sync.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let delay = self.faults.sync_delay.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(nix::libc::EIO));
        }
        self.file.sync_data()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        if self.faults.fail_truncate.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(nix::libc::EIO));
        }
        self.file.set_len(len)
    }
}
