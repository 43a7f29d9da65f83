//! A ZMTP 3.0 server (NULL mechanism) for the sockets frontends connect to: ROUTER for
//! shell, control, stdin and heartbeat, and a publisher for iopub.
//!
//! The frontend side is where untrusted bytes arrive, so it is served here rather than
//! by the general-purpose ZeroMQ library used towards the kernel: message sizes are
//! checked from frame headers before anything is allocated, every peer has its own
//! bounded outgoing queue, and a slow subscriber never holds up the others.

mod codec;
mod connection;
mod publisher;
mod router;

use std::sync::atomic::{AtomicU32, Ordering};

use bytes::{BufMut, Bytes, BytesMut};

pub(super) use connection::Listener;
pub use publisher::{Publisher, Subscription};
pub(super) use router::spawn_router;

pub(super) use publisher::spawn_publisher;

/// A routing id for a peer that did not choose one: a zero byte and a counter, as
/// ZeroMQ does, so it cannot collide with identities peers choose (those may not
/// start with a zero byte).
fn generated_identity() -> Bytes {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let mut id = BytesMut::with_capacity(5);
    id.put_u8(0);
    id.put_u32(NEXT.fetch_add(1, Ordering::Relaxed));
    id.freeze()
}

/// The Jupyter msg_id and msg_type in the frames that arrived before an oversized
/// message was cut off, when the header was among them; for the diagnostic only.
fn header_of(head: &[Bytes]) -> Option<crate::wire::Header> {
    let delimiter = head
        .iter()
        .position(|frame| frame.as_ref() == crate::wire::DELIMITER)?;
    let header = head.get(delimiter + 2)?;
    serde_json::from_slice::<crate::wire::Header>(header).ok()
}

#[cfg(test)]
mod tests;
