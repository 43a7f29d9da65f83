//! jupyter-audit: a Jupyter kernel proxy that keeps an audit trail.
//!
//! Modules, from the bytes on the wire up to the command line; each uses only modules
//! listed before it (README "Development"):
//! - [`sync`]: a poison-tolerant lock and an accept loop that backs off, shared.
//! - [`wire`]: the Jupyter message format (framing, HMAC signatures, replay detection).
//! - [`memory`]: the process's allocator policy (large buffers reused, free memory returned).
//! - [`connection`]: connection files (reading Jupyter's, writing the real kernel's).
//! - [`transport`]: the ZeroMQ sockets of the five channels; all socket code lives here.
//! - [`audit`]: audit records: what is recorded of each message, and the size policy.
//! - [`path_safety`]: refusing store and socket paths another user could swap.
//! - [`store`]: the tamper-evident store: chained segments, group commit, signed checkpoints, verify.
//! - [`postgres`]: the central trail in PostgreSQL: connection, schema, forwarding, review.
//! - [`collector`]: the collector daemon, its protocol, and the proxy's client for it.
//! - [`config`]: the admin config file and how it combines with the kernelspec's flags.
//! - [`launcher`]: starting, signalling and reaping the real kernel process.
//! - [`proxy`]: the relay between frontends and the real kernel.
//! - [`review`]: the reviewer's tools: `log`, `sessions` and `replay` over a store.
//! - [`console`]: the review console's index of a store (its pages come next).
//! - [`kernelspec`]: writing audited kernelspecs (`install`).
//! - [`console`]: the review console (`serve`), a JupyterHub service with login and scopes.
//!
//! The command line (`src/cli.rs`, clap) belongs to the binary (`src/main.rs`), which
//! turns its arguments into the plain options of these modules
//! ([`config::KernelAuditOptions`], [`kernelspec::InstallOptions`], [`review::log::LogOptions`],
//! …); nothing in the library depends on it.

pub mod audit;
pub mod collector;
pub mod config;
pub mod connection;
pub mod console;
pub mod kernelspec;
pub mod launcher;
pub mod memory;
pub mod path_safety;
pub mod postgres;
pub mod proxy;
pub mod review;
pub mod store;
pub mod sync;
pub mod transport;
pub mod wire;
