//! Reaching the PostgreSQL server a URL names.
//!
//! The URL is libpq's (`postgresql://user@host:port/db?host=/run/postgresql`, or
//! `host=… user=… dbname=…`). A password never comes from the URL or the command line:
//! it is read from `password_file` (the password alone) when given.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::PostgresError;

/// A server to connect to, with its credentials resolved.
#[derive(Clone)]
pub struct PostgresTarget {
    config: tokio_postgres::Config,
    /// The URL as given, for messages (it holds no password).
    shown: String,
}

impl std::fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTarget")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

/// How to reach the server: its URL and where the password is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostgresOptions {
    pub url: String,
    /// A file that holds the password (alone, one line).
    pub password_file: Option<PathBuf>,
}

impl PostgresTarget {
    /// Parses `options.url` and reads the password file.
    pub fn new(options: &PostgresOptions) -> Result<Self, PostgresError> {
        let mut config = tokio_postgres::Config::from_str(&options.url)
            .map_err(|e| PostgresError::Url(e.to_string()))?;
        if config.get_password().is_some() {
            return Err(PostgresError::Url(
                "the URL holds a password; keep it in a password file instead".into(),
            ));
        }
        if let Some(path) = &options.password_file {
            config.password(read_password(path)?);
        }
        if config.get_application_name().is_none() {
            config.application_name("jupyter-audit");
        }
        Ok(PostgresTarget {
            config,
            shown: options.url.clone(),
        })
    }

    /// The URL, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Opens one connection; its I/O runs in a task of the current runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, PostgresError> {
        let (client, connection) =
            self.config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|source| PostgresError::Connect {
                    target: self.shown.clone(),
                    source,
                })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }
}

/// The password in `path`: its first line, without the line end.
fn read_password(path: &Path) -> Result<String, PostgresError> {
    let text = std::fs::read_to_string(path).map_err(|source| PostgresError::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}
