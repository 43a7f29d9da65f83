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

pub use codec::ZmtpError;
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

/// What a frontend's bytes decode to, for [`decode_frontend_bytes`].
#[derive(Debug, PartialEq, Eq)]
pub enum DecodedItem {
    Message(Vec<Bytes>),
    /// A command, with its properties when they parse (READY's form).
    Command {
        name: String,
        properties: Option<Vec<(String, Bytes)>>,
    },
    /// A message over the size limit, skipped: its announced size.
    Oversized {
        size: u64,
    },
}

/// Runs the frame decoder the frontend side uses over `pieces`, fed one after the other
/// as they might arrive from the network, with `limit` as the message size limit: what
/// came out, and the error that would close the connection, if any. `greeting`, when
/// given, is checked first as a peer's 64-byte greeting. This is the entry point for
/// fuzzing the first parser a frontend's bytes meet.
pub fn decode_frontend_bytes(
    greeting: Option<&[u8; 64]>,
    pieces: &[&[u8]],
    limit: usize,
) -> (Vec<DecodedItem>, Option<codec::ZmtpError>) {
    let mut items = Vec::new();
    if let Some(greeting) = greeting
        && let Err(error) = codec::check_greeting(greeting)
    {
        return (items, Some(error));
    }
    let mut decoder = codec::Decoder::new(limit);
    let mut buffer = BytesMut::new();
    for piece in pieces {
        buffer.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(codec::Incoming::Message(frames))) => {
                    items.push(DecodedItem::Message(frames))
                }
                Ok(Some(codec::Incoming::Command(command))) => items.push(DecodedItem::Command {
                    properties: command.properties().ok(),
                    name: command.name,
                }),
                Ok(Some(codec::Incoming::Oversized { size, .. })) => {
                    items.push(DecodedItem::Oversized { size })
                }
                Ok(None) => break,
                Err(error) => return (items, Some(error)),
            }
        }
    }
    (items, None)
}

#[cfg(test)]
mod tests;
