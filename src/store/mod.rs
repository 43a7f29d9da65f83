//! The tamper-evident store: append-only segments of JSON lines on a SHA-256 chain,
//! written with group commit and fsync, with Ed25519-signed checkpoints.
//!
//! # On disk
//! `<store>/segments/<first sequence, 20 digits>.jsonl` hold one record per line. The
//! store numbers each record (`event.sequence`, from 1, across segments) and chains it:
//! the line is the compact JSON `B` of the record with `,"chain":{"prev":…,"hash":…}`
//! spliced in before its final `}`, where `hash = SHA-256(prev || B)` and `prev` is the
//! previous record's hash (zeros for the first); see [`record`]. Segments rotate by size
//! and age; a closed segment is synced and made read-only. `checkpoints.jsonl` gets a
//! signed checkpoint (sequence, chain hash, time) every `checkpoint_interval` when records
//! were added, at every rotation and at shutdown. `store_id` holds the store's UUID
//! ([`store_id`]), made with it. Layout and modes: [`layout`].
//!
//! # Why Ed25519 for checkpoints
//! A verifier needs only the public key (`checkpoint.pub`, or exported with
//! [`export_public_key`]), and having it does not allow making checkpoints. With an
//! HMAC, every verifier would hold the secret and could sign a rewritten store. The
//! signing key (`keys/checkpoint.key`) is readable by the collector's user alone.
//!
//! # What a checkpoint proves
//! Editing, deleting or reordering records, or removing a segment, breaks the chain.
//! Rewriting the whole chain from some record on, or cutting off its tail, keeps it
//! consistent; a checkpoint catches both up to its sequence. Records after the last
//! checkpoint are chained but covered by no signature yet. The strongest check uses a
//! checkpoint and public key copied to where the store's writers cannot reach.
//!
//! # Using it
//! The collector calls [`open`] (blocking), appends through the [`StoreHandle`] (each
//! append resolves once its record is on disk, after one shared fsync per batch), and
//! calls [`StoreHandle::shutdown`] at exit. The forwarder follows the files with
//! [`Follower`] and [`read_checkpoints`], woken by [`StoreHandle::watch_head`]. Reviewers read with [`Reader`] and check with
//! [`verify()`]; neither needs the signing key or writes anything.

mod checkpoint;
mod config;
mod error;
mod follow;
mod handle;
mod identity;
mod keys;
pub mod layout;
mod lines;
mod reader;
pub mod record;
mod recovery;
mod report;
mod segment;
mod tail;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

pub use checkpoint::{Checkpoint, read_last as read_checkpoint, signed_message};
pub use config::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS, StoreConfig};
pub use error::StoreError;
pub use follow::{FollowedRecord, Follower, last_record, read_checkpoints};
pub use handle::{StoreHandle, StoreStats, open};
pub use identity::store_id;
pub use keys::{export_public_key, key_id, read_public_key};
pub use layout::{
    forwarding_file, public_key_file, segments_dir, sessions_file, sessions_rewrite_file,
};
pub(crate) use reader::parse_line;
pub use reader::{ReadError, ReadErrorKind, Reader, StoredRecord};
pub use recovery::{Recovery, TornLine};
pub use report::{CheckpointUsed, Location, Problem, ProblemKind, VerifyReport};
pub use verify::verify;
pub use writer::StoredHead;
