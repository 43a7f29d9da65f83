//! The Jupyter wire format: how one message is laid out in ZeroMQ frames, how it is
//! signed, and how replayed signatures are caught.
//!
//! `[routing ids…, "<IDS|MSG>", hex HMAC, header, parent_header, metadata, content, buffers…]`
//!
//! The proxy parses only what it needs from the header (msg_id, msg_type) and keeps the
//! four signed JSON frames as the exact bytes it received, so re-signing for the other
//! side never changes what the kernel or the frontend sees.

mod compose;
mod message;
mod replay;
mod signer;

pub use compose::{JUPYTER_PROTOCOL_VERSION, compose, compose_reply};
pub use message::{DELIMITER, Header, WireMessage};
pub use replay::ReplayGuard;
pub use signer::{SignatureScheme, Signer};

/// Why a multipart message was not accepted as a Jupyter message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message has no frames")]
    Empty,
    #[error("no <IDS|MSG> delimiter frame")]
    MissingDelimiter,
    #[error("{0} frames after the delimiter, at least 5 needed (signature and 4 JSON parts)")]
    TooFewFrames(usize),
    #[error("message of {size} bytes is over the limit of {limit} bytes")]
    Oversized { size: usize, limit: usize },
    #[error("header is not valid JSON: {0}")]
    BadHeader(String),
    #[error("missing signature")]
    MissingSignature,
    #[error("signature does not match")]
    BadSignature,
    #[error("signature was already used (replayed message)")]
    Replayed,
    /// Jupyter writes signatures in lowercase hex and refuses any other spelling.
    #[error("signature is not lowercase hex as Jupyter writes it")]
    NonCanonicalSignature,
    #[error("unsupported signature scheme {0:?}")]
    UnsupportedScheme(String),
}
