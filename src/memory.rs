//! How the process holds memory: large buffers are reused while output flows, and
//! whatever the allocator keeps free is handed back to the system shortly after.
//!
//! Kernel output passes through in buffers of up to megabytes, allocated on one thread
//! and freed on another. Had every large buffer its own mapping (a low mmap threshold),
//! each message would cost page faults and zeroing of fresh pages: a third of the
//! proxy's CPU on 1 MB writes. Left to glibc's defaults, the freed memory stays in its
//! heaps and the process grows with output volume. So large buffers come from the heaps
//! (a high, fixed mmap threshold), and a background thread returns free heap memory to
//! the system (`malloc_trim`) when there is enough of it: a burst reuses its pages, a
//! quiet process is small again within a second.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
use std::time::Duration;

/// Buffers up to this size come from the heaps; above it, from their own mapping.
/// glibc's maximum on 64-bit.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = 32 * 1024 * 1024;
/// How often the free heap memory is looked at.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_INTERVAL: Duration = Duration::from_millis(500);
/// Free heap memory above this goes back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEEP_FREE_BYTES: usize = 2 * 1024 * 1024;

/// Sets the allocator up and starts the trimming thread. Call once, first thing in
/// `main`, before other threads exist.
pub fn keep_memory_bounded() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes an allocator setting; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        }
        let started = std::thread::Builder::new()
            .name("memory-trim".into())
            .spawn(trim_when_free_memory_piles_up);
        if let Err(error) = started {
            tracing::warn!(%error, "cannot start the memory trimming thread");
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_when_free_memory_piles_up() {
    loop {
        std::thread::sleep(TRIM_INTERVAL);
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
