//! The review console (`jupyter-audit serve`): a web application that runs as a
//! JupyterHub service, where people the Hub grants the console's custom scopes read the
//! trail.
//!
//! - [`auth`], [`server`]: the service's side of the Hub: where it listens and under which
//!   prefix (from the environment the Hub gives every service), login with the Hub and the
//!   HTTP server with its security headers. For now one page says who is signed in with
//!   which scopes; the pages over the index come next (docs/console-notes.md).
//! - [`export`]: a session as a notebook with the proof an auditor verifies offline (the
//!   download, `export`, `verify-export`).
//! - [`index`]: a rebuildable SQLite index beside the store (sessions, cells, code search),
//!   caught up incrementally from the store, which stays the source of truth.

pub mod auth;
pub mod export;
pub mod index;
pub mod server;
pub mod trail;

use std::path::PathBuf;

pub use auth::{SCOPE_READ, SCOPE_READ_OUTPUTS};
pub use server::serve;

/// What `serve` is given on its command line; the rest comes from the Hub's environment.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The store directory the console reads (read access is enough).
    pub store: PathBuf,
    /// The collector's socket: every view is on the record before it is shown.
    pub collector_socket: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0} is not set: run `serve` as a JupyterHub service (c.JupyterHub.services)")]
    MissingEnvironment(&'static str),
    #[error("{name} is not usable: {reason}")]
    BadEnvironment { name: &'static str, reason: String },
    #[error("the store {0} is not a directory")]
    Store(PathBuf),
    #[error("cannot build the HTTP client for the Hub: {0}")]
    HttpClient(String),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("the server stopped: {0}")]
    Server(std::io::Error),
}
