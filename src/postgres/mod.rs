//! The central trail in PostgreSQL: where every collector's store is forwarded, checked
//! and reviewed across hosts.
//!
//! - [`connect`]: the server a URL names, its password (a file, never the command line),
//!   TLS with rustls, and one connection.
//! - [`schema`]: the tables, indexes, roles, grants and triggers `postgres init` creates
//!   (the contract between the forwarder and the readers).
//! - [`columns`]: the columns reviewers filter on, taken out of a stored line.
//! - [`review`]: forwarded records read back for `log`, `sessions` and `replay`.
//! - [`verify`]: `verify --postgres`, every forwarded store's chain and checkpoints.
//! - [`forward`]: the collector's forwarder (store files → PostgreSQL), its state file.
//! - [`status`]: `status`: stored, checkpointed, forwarded, and the lag, from the files.
//!
//! The local store stays the write-ahead point: proxies never wait for PostgreSQL. A
//! forwarder task of the collector ships the store's lines, byte for byte with their chain
//! hashes, its signed checkpoints and its public key; reviewers read them back with the
//! same filters and output as from a store directory, and `verify --postgres` recomputes
//! every store's chain there.

pub mod columns;
pub mod connect;
pub mod forward;
pub mod review;
pub mod schema;
pub mod status;
pub mod verify;

/// Why talking to PostgreSQL failed.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The URL or its options cannot be used (the text says why; it never holds a password).
    #[error("PostgreSQL URL: {0}")]
    Url(String),
    #[error("cannot read the PostgreSQL password file {}: {source}", path.display())]
    PasswordFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS for PostgreSQL: {0}")]
    Tls(String),
    #[error("cannot connect to PostgreSQL at {target}: {}", describe(source))]
    Connect {
        /// The server, without credentials.
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL {doing}: {}", describe(source))]
    Query {
        doing: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database is not set up for jupyter-audit (run `jupyter-audit postgres init`).
    #[error("the database is not ready for jupyter-audit: {0} (run `jupyter-audit postgres init`)")]
    NotInitialised(String),
}

/// An error with the server's own message when it has one (tokio-postgres shows only
/// "db error"): the message and its SQLSTATE, never the detail (which may quote row data).
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "{} {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

impl PostgresError {
    /// A query error, with what was being done.
    pub fn query(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Query { doing, source }
    }
}
