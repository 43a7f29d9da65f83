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
    let free_heap = FreeHeapGauge::find();
    let mut seen = LARGE_BUFFERS.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(TRIM_INTERVAL);
        let now = LARGE_BUFFERS.load(Ordering::Relaxed);
        let quiet = now == seen;
        seen = now;
        if !quiet {
            continue;
        }
        if free_heap.free_bytes() > KEEP_FREE_BYTES {
            // SAFETY: malloc_trim takes the allocator's own locks.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// Reads how much memory the allocator holds free in its heaps.
///
/// `mallinfo2` (glibc 2.33) is looked up when the thread starts rather than linked, so
/// that the binary runs on glibc 2.28 (manylinux_2_28: RHEL 8, Ubuntu 20.04, Debian 11);
/// there the older `mallinfo` stands in.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[derive(Debug, Clone, Copy)]
enum FreeHeapGauge {
    /// glibc 2.33 and newer: `mallinfo2`, whose fields are `size_t`.
    Exact(unsafe extern "C" fn() -> libc::mallinfo2),
    /// Older glibc: `mallinfo`, whose `int` fields hold the figure modulo 4 GiB.
    Wrapping,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
impl FreeHeapGauge {
    /// `mallinfo2` if the C library has it, resolved the way the dynamic linker would
    /// have bound a direct call (an interposed allocator's own comes first).
    fn find() -> Self {
        // SAFETY: dlsym only looks a name up; RTLD_DEFAULT searches the global scope,
        // and the name is a NUL-terminated literal.
        let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"mallinfo2".as_ptr()) };
        if symbol.is_null() {
            return Self::Wrapping;
        }
        // SAFETY: the symbol is glibc's `struct mallinfo2 mallinfo2(void)`, which
        // libc::mallinfo2 mirrors; a function's address converts to a function pointer.
        let mallinfo2 = unsafe {
            std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn() -> libc::mallinfo2>(
                symbol,
            )
        };
        Self::Exact(mallinfo2)
    }

    /// Bytes free in the heaps (`fordblks`).
    fn free_bytes(self) -> usize {
        match self {
            // SAFETY: mallinfo2 takes no arguments and the allocator's own locks.
            Self::Exact(mallinfo2) => unsafe { mallinfo2() }.fordblks,
            // SAFETY: as above, for mallinfo.
            Self::Wrapping => bytes_from_wrapped_int(unsafe { libc::mallinfo() }.fordblks),
        }
    }
}

/// `mallinfo` stores a `size_t` figure in an `int`: read back as unsigned, it is exact
/// below 4 GiB (instead of negative from 2 GiB), and only its remainder above. The
/// relay's heap stays far below that (its peak RSS is bounded in the suite); at worst a
/// wrapped figure postpones one trim until the heap changes.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bytes_from_wrapped_int(field: libc::c_int) -> usize {
    // The bit pattern is the figure modulo 2^32; u32 to usize is lossless on 64-bit
    // and 32-bit alike.
    field as u32 as usize
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn mallinfo2_is_found_at_run_time_on_this_glibc() {
        // The build and test machines run glibc 2.33 or newer.
        assert!(matches!(FreeHeapGauge::find(), FreeHeapGauge::Exact(_)));
    }

    #[test]
    fn both_gauges_see_freed_memory() {
        // 4 MiB in chunks below glibc's default mmap threshold (128 KiB) come from a
        // heap; a guard allocated after them keeps them from sitting at the heap's top,
        // which free could give back, so once freed they are free heap memory.
        let chunks: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 64 * 1024]).collect();
        let guard = vec![2u8; 64 * 1024];
        drop(std::hint::black_box(chunks));
        let exact = FreeHeapGauge::find().free_bytes();
        let wrapping = FreeHeapGauge::Wrapping.free_bytes();
        drop(guard);
        // Tests run on several threads, each possibly in its own arena: compare loosely.
        assert!(exact >= 4 * 1024 * 1024, "mallinfo2 free bytes: {exact}");
        assert!(
            wrapping >= 4 * 1024 * 1024,
            "mallinfo free bytes: {wrapping}"
        );
    }

    #[test]
    fn int_figures_past_2_gib_read_as_unsigned() {
        assert_eq!(bytes_from_wrapped_int(5), 5);
        assert_eq!(bytes_from_wrapped_int(i32::MAX), 2_147_483_647);
        // 3 GiB stored in an int reads back as -1 GiB.
        assert_eq!(bytes_from_wrapped_int(-(1 << 30)), 3 << 30);
        assert_eq!(bytes_from_wrapped_int(-1), 4_294_967_295);
    }
}
