//! How the process holds memory: large buffers are reused while output flows, and
//! whatever the allocator keeps free is handed back to the system shortly after.
//!
//! Kernel output passes through in buffers of up to megabytes, allocated on one thread
//! and freed on another. Had every large buffer its own mapping (a low mmap threshold),
//! each message would cost page faults and zeroing of fresh pages: a third of the
//! proxy's CPU on 1 MB writes. Left to glibc's defaults, the freed memory stays in its
//! heaps and the process grows with output volume. So large buffers come from the heaps
//! (a high, fixed mmap threshold), the code that receives them says so
//! ([`large_buffer_received`]), and a background thread returns free heap memory to the
//! system (`malloc_trim`) once no large buffer came for a while: output keeps reusing
//! its pages, a quiet process is small again within a second.
//!
//! One of the two modules allowed `unsafe` (with [`crate::launcher`]): glibc's allocator
//! controls are C functions.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(all(target_os = "linux", target_env = "gnu"))]
use std::time::Duration;

/// Messages at least this big count as large buffers.
const LARGE_BUFFER_BYTES: usize = 256 * 1024;

/// Large buffers received so far; the trimming thread waits for it to stand still.
static LARGE_BUFFERS: AtomicU64 = AtomicU64::new(0);

/// Notes a received message of `bytes`: large ones postpone trimming, whose pages
/// the next ones would have to fault in again.
pub fn large_buffer_received(bytes: usize) {
    if bytes >= LARGE_BUFFER_BYTES {
        LARGE_BUFFERS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Buffers up to this size come from the heaps; above it, from their own mapping.
/// glibc's maximum on 64-bit.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = 32 * 1024 * 1024;
/// Free memory at the top of a heap that glibc itself gives back on free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD_BYTES: libc::c_int = 64 * 1024 * 1024;
/// How often the free heap memory is looked at.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_INTERVAL: Duration = Duration::from_millis(250);
/// Free heap memory above this goes back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEEP_FREE_BYTES: usize = 2 * 1024 * 1024;

/// Who the process is, as far as memory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The proxy: one heap, so that trimming reaches all of it and the process stays
    /// small between outputs.
    Relay,
    /// The collector and the other commands: glibc's per-thread heaps (for throughput
    /// when many connections allocate at once), whose tops shrink on free as usual.
    Service,
}

/// Sets the allocator up and starts the trimming thread. Call once, first thing in
/// `main`, before other threads exist.
pub fn keep_memory_bounded(profile: Profile) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes an allocator setting; no other thread exists yet.
        // In the relay, glibc does not give the top of its heap back on every large
        // free either: the trimming thread does, when the process is quiet.
        // malloc_trim can shrink the top of the main heap only, hence a single heap;
        // the threads' small allocations come from their own caches anyway.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
            if profile == Profile::Relay {
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
        }
        let started = std::thread::Builder::new()
            .name("memory-trim".into())
            .spawn(trim_when_free_memory_piles_up);
        if let Err(error) = started {
            tracing::warn!(%error, "cannot start the memory trimming thread");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = profile;
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_when_free_memory_piles_up() {
    let mut seen = LARGE_BUFFERS.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(TRIM_INTERVAL);
        let now = LARGE_BUFFERS.load(Ordering::Relaxed);
        let quiet = now == seen;
        seen = now;
        if !quiet {
            continue;
        }
        // SAFETY: mallinfo2 and malloc_trim take the allocator's own locks.
        let free_bytes = unsafe { libc::mallinfo2() }.fordblks;
        if free_bytes > KEEP_FREE_BYTES {
            // SAFETY: as above.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}
