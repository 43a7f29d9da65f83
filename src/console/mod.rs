//! The review console (`jupyter-audit serve`): a web application that runs as a
//! JupyterHub service, where people the Hub grants the console's custom scopes read the
//! trail.
//!
//! - [`auth`], [`server`]: the service's side of the Hub: where it listens and under which
//!   prefix (from the environment the Hub gives every service), login with the Hub and the
//!   HTTP server with its security headers.
//! - [`pages`]: the pages (sessions, a user's timeline, one session, code search, health,
//!   running now), [`render`]: code and outputs as safe HTML, [`outputs`]: outputs read
//!   from the store.
//! - [`export`]: a session as a notebook with the proof an auditor verifies offline (the
//!   download, `export`, `verify-export`).
//! - [`index`]: a rebuildable SQLite index beside the store (sessions, cells, code search,
//!   review marks), caught up incrementally from the store, which stays the source of
//!   truth; [`pool`]: its writer and the pages' read-only connections.
//! - [`trail`]: every view and mark on the record, before the page is shown.
//! - [`tls`]: https with the certificate the Hub gives its services under internal_ssl.

pub mod auth;
pub mod export;
pub mod index;
pub mod outputs;
pub mod pages;
pub mod pool;
pub mod render;
pub mod server;
pub mod tls;
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
    /// The index file; None: [`default_index_path`].
    pub index: Option<PathBuf>,
}

/// Where the index goes when `--index` is not given: the console's OS user cannot write
/// into the store, so into its own state directory: `$STATE_DIRECTORY` (systemd's
/// `StateDirectory=`), else `$XDG_STATE_HOME/jupyter-audit`, else
/// `~/.local/state/jupyter-audit` (the home from the password database when `HOME` is not
/// set, as for a Hub-managed service). One file per store:
/// `console-index-<store id>.sqlite` (`path-<hash of its path>` before the store has an id).
pub fn default_index_path(store: &std::path::Path) -> Result<PathBuf, ConsoleError> {
    // A store the collector has not made yet has no id: name the file after its path.
    let store_id = match crate::store::store_id(store) {
        Ok(id) => id.to_string(),
        Err(_) => {
            use sha2::Digest;
            let path = std::path::absolute(store).unwrap_or_else(|_| store.to_path_buf());
            let digest = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
            format!("path-{}", &hex::encode(digest)[..16])
        }
    };
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    let directory = if let Some(state) = non_empty("STATE_DIRECTORY") {
        // systemd may list several, separated by ':'.
        let first = state
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        PathBuf::from(first)
    } else if let Some(state) = non_empty("XDG_STATE_HOME") {
        PathBuf::from(state).join("jupyter-audit")
    } else {
        let home = non_empty("HOME").map(PathBuf::from).or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|user| user.dir)
        });
        let Some(home) = home else {
            return Err(ConsoleError::Index {
                path: store.to_path_buf(),
                reason: "no state directory or home: give --index FILE".into(),
            });
        };
        home.join(".local/state/jupyter-audit")
    };
    Ok(directory.join(format!("console-index-{store_id}.sqlite")))
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0} is not set: run `serve` as a JupyterHub service (c.JupyterHub.services)")]
    MissingEnvironment(&'static str),
    #[error("{name} is not usable: {reason}")]
    BadEnvironment { name: &'static str, reason: String },
    #[error("the store {0} is not a directory")]
    Store(PathBuf),
    #[error("the console index {}: {reason}", path.display())]
    Index { path: PathBuf, reason: String },
    #[error("the TLS file {} is not usable: {reason}", path.display())]
    Tls { path: PathBuf, reason: String },
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
