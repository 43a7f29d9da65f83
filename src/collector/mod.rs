//! The collector: the daemon that owns the store, and the proxy's client for it.
//!
//! The collector runs as its own OS user. Every record reaches it over a Unix socket
//! whose peer credentials (uid, gid, pid, from the kernel) say who sent it; the
//! sender cannot claim another identity. With a Hub configured, the Hub names the
//! person behind each connection from the API token its kernel presents ([`hub`]).

pub mod admission;
pub mod client;
pub mod daemon;
pub mod disk;
pub mod fields;
pub mod hub;
pub mod incoming;
pub mod limits;
pub mod protocol;
pub mod refusals;
pub mod server;
pub mod sessions;
pub mod unattested;

pub use client::{AuditClient, AuditError, Recorder, Ticket};

#[cfg(test)]
mod console_tests;
#[cfg(test)]
mod forgery_tests;
#[cfg(test)]
mod tests;
