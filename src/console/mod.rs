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
//!   review marks), caught up incrementally from the store or from the stores forwarded
//!   to PostgreSQL, which stay the source of truth; [`pool`]: its writer and the pages'
//!   read-only connections; [`source`]: where records are read (a store directory or
//!   PostgreSQL).
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
pub mod source;
pub mod tls;
pub mod trail;

use std::path::PathBuf;

pub use auth::{SCOPE_READ, SCOPE_READ_OUTPUTS};
pub use server::serve;
pub use source::ConsoleSource;

/// What `serve` is given on its command line; the rest comes from the Hub's environment.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// What the console reads: a store directory (read access is enough) or PostgreSQL
    /// (the reader role is enough).
    pub source: ConsoleSource,
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
/// `console-index-<store id>.sqlite` (`path-<hash of its path>` before the store has an
/// id); one per database for PostgreSQL: `console-index-pg-<database>-<hash of the URL>.sqlite`.
pub fn default_index_path(source: &ConsoleSource) -> Result<PathBuf, ConsoleError> {
    use sha2::Digest;
    let name = match source {
        ConsoleSource::Store(store) => match crate::store::store_id(store) {
            Ok(id) => id.to_string(),
            // A store the collector has not made yet has no id: name the file after its path.
            Err(_) => {
                let path = std::path::absolute(store).unwrap_or_else(|_| store.to_path_buf());
                let digest = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
                format!("path-{}", &hex::encode(digest)[..16])
            }
        },
        ConsoleSource::Postgres(options) => {
            let digest = sha2::Sha256::digest(options.url.as_bytes());
            format!(
                "pg-{}-{}",
                database_name(&options.url),
                &hex::encode(digest)[..12]
            )
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
                path: PathBuf::from(source.label()),
                reason: "no state directory or home: give --index FILE".into(),
            });
        };
        home.join(".local/state/jupyter-audit")
    };
    Ok(directory.join(format!("console-index-{name}.sqlite")))
}

/// The database a PostgreSQL URL names (the path after the host), as a file name part:
/// letters, digits, `-` and `_` only.
fn database_name(url: &str) -> String {
    // A key=value connection string (`host=… dbname=audit`).
    if !url.contains("://") {
        let database = url
            .split_whitespace()
            .find_map(|pair| pair.strip_prefix("dbname="))
            .unwrap_or_default();
        return file_name_part(database);
    }
    let without_query = url.split(['?', '#']).next().unwrap_or_default();
    let after_scheme = without_query
        .split_once("://")
        .map_or(without_query, |(_, rest)| rest);
    let database = after_scheme
        .split_once('/')
        .map_or("", |(_, path)| path)
        .rsplit('/')
        .next()
        .unwrap_or_default();
    file_name_part(database)
}

/// `text` with letters, digits, `-` and `_` only (at most 40), or `postgres` if none.
fn file_name_part(text: &str) -> String {
    let safe: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(40)
        .collect();
    if safe.is_empty() {
        "postgres".to_owned()
    } else {
        safe
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0} is not set: run `serve` as a JupyterHub service (c.JupyterHub.services)")]
    MissingEnvironment(&'static str),
    #[error("{name} is not usable: {reason}")]
    BadEnvironment { name: &'static str, reason: String },
    #[error("the store {0} is not a directory")]
    Store(PathBuf),
    #[error(transparent)]
    Postgres(#[from] crate::postgres::PostgresError),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_of_postgres_is_named_after_its_database() {
        assert_eq!(
            database_name("postgresql://reader@db.example:5432/audit?sslmode=require"),
            "audit"
        );
        assert_eq!(
            database_name("postgresql:///trail?host=/run/postgresql"),
            "trail"
        );
        assert_eq!(database_name("postgresql://db.example"), "postgres");
        assert_eq!(database_name("postgresql://h/../x y"), "xy");
        assert_eq!(
            database_name("host=/run/pg port=5432 user=r dbname=trail"),
            "trail"
        );
    }
}
