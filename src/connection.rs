//! Connection files: reading the one Jupyter wrote for the frontend side, and writing
//! the private one the real kernel is started with (over the [`KernelTransport`] chosen).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::wire::{SignatureScheme, Signer, WireError};

/// The five channels of a Jupyter kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Shell,
    Control,
    Stdin,
    Iopub,
    Heartbeat,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Self::Shell,
        Self::Control,
        Self::Stdin,
        Self::Iopub,
        Self::Heartbeat,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Shell => "shell",
            Self::Control => "control",
            Self::Stdin => "stdin",
            Self::Iopub => "iopub",
            Self::Heartbeat => "hb",
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Ipc,
}

/// How the proxy reaches the real kernel (the transport of its private connection file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelTransport {
    /// Unix sockets in a private 0700 runtime directory (default).
    Ipc,
    /// TCP on 127.0.0.1 (for kernels that do not support ipc).
    Tcp,
}

impl KernelTransport {
    /// The value of the proxy's `--kernel-transport` flag.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ipc => "ipc",
            Self::Tcp => "tcp",
        }
    }
}

/// The contents of a Jupyter connection file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    #[serde(default = "default_transport")]
    pub transport: Transport,
    pub ip: String,
    pub shell_port: u16,
    pub iopub_port: u16,
    pub stdin_port: u16,
    pub control_port: u16,
    pub hb_port: u16,
    #[serde(default)]
    pub key: String,
    #[serde(default = "default_scheme")]
    pub signature_scheme: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_name: Option<String>,
}

fn default_transport() -> Transport {
    Transport::Tcp
}

fn default_scheme() -> String {
    SignatureScheme::Sha256.name().to_owned()
}

impl std::fmt::Debug for ConnectionInfo {
    // The key is a secret: never let it reach a log line.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ConnectionInfo")
            .field("transport", &self.transport)
            .field("ip", &self.ip)
            .field("shell_port", &self.shell_port)
            .field("iopub_port", &self.iopub_port)
            .field("stdin_port", &self.stdin_port)
            .field("control_port", &self.control_port)
            .field("hb_port", &self.hb_port)
            .field("key", &"<redacted>")
            .field("signature_scheme", &self.signature_scheme)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("cannot read connection file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connection file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("connection file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write connection file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ConnectionInfo {
    pub fn read(path: &Path) -> Result<Self, ConnectionError> {
        let text = std::fs::read(path).map_err(|source| ConnectionError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|error| match error {
            ParseError::Json(source) => ConnectionError::Parse {
                path: path.to_owned(),
                source,
            },
            ParseError::Invalid(reason) => ConnectionError::Invalid {
                path: path.to_owned(),
                reason,
            },
        })
    }

    /// Parses and checks the text of a connection file: the entry point for anything
    /// that reads one (and for the fuzzer).
    pub fn parse(text: &[u8]) -> Result<Self, ParseError> {
        let info: Self = serde_json::from_slice(text).map_err(ParseError::Json)?;
        info.signature_scheme()
            .map_err(|error| ParseError::Invalid(error.to_string()))?;
        for channel in Channel::ALL {
            if info.port(channel) == 0 {
                return Err(ParseError::Invalid(format!(
                    "{channel}_port is 0; ports must be set"
                )));
            }
        }
        if info.ip.is_empty() {
            return Err(ParseError::Invalid("ip is empty".into()));
        }
        Ok(info)
    }

    /// Writes the file readable by its owner only (it holds the key).
    pub fn write(&self, path: &Path) -> Result<(), ConnectionError> {
        let error = |source| ConnectionError::Write {
            path: path.to_owned(),
            source,
        };
        let json = serde_json::to_vec_pretty(self)
            .map_err(|source| error(std::io::Error::other(source)))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(error)?;
        file.write_all(&json).map_err(error)?;
        file.sync_all().map_err(error)
    }

    pub fn signature_scheme(&self) -> Result<SignatureScheme, WireError> {
        SignatureScheme::parse(&self.signature_scheme)
    }

    /// A signer for messages on this connection.
    pub fn signer(&self) -> Result<Signer, WireError> {
        Ok(Signer::new(self.key.as_bytes(), self.signature_scheme()?))
    }

    pub fn port(&self, channel: Channel) -> u16 {
        match channel {
            Channel::Shell => self.shell_port,
            Channel::Control => self.control_port,
            Channel::Stdin => self.stdin_port,
            Channel::Iopub => self.iopub_port,
            Channel::Heartbeat => self.hb_port,
        }
    }

    /// The ZeroMQ endpoint of a channel, as Jupyter spells it.
    pub fn endpoint(&self, channel: Channel) -> String {
        let port = self.port(channel);
        match self.transport {
            Transport::Tcp => {
                // ZeroMQ's wildcard is `*`; the socket layer wants an address.
                let ip = if self.ip == "*" { "0.0.0.0" } else { &self.ip };
                format!("tcp://{ip}:{port}")
            }
            Transport::Ipc => format!("ipc://{}-{port}", self.ip),
        }
    }
}

/// Why the text of a connection file was refused ([`ConnectionError`] adds the path).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Json(serde_json::Error),
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    const JUPYTER_WRITTEN: &str = r#"{
      "shell_port": 50001, "iopub_port": 50002, "stdin_port": 50003,
      "control_port": 50004, "hb_port": 50005, "ip": "127.0.0.1",
      "key": "a0436f6c-1916-498b-8eb9-e81ab9368e84", "transport": "tcp",
      "signature_scheme": "hmac-sha256", "kernel_name": "python3",
      "jupyter_session": "/home/u/nb.ipynb"
    }"#;

    #[test]
    fn reads_what_jupyter_writes() {
        let info = ConnectionInfo::parse(JUPYTER_WRITTEN.as_bytes()).expect("valid");
        assert_eq!(info.endpoint(Channel::Shell), "tcp://127.0.0.1:50001");
        assert_eq!(info.endpoint(Channel::Heartbeat), "tcp://127.0.0.1:50005");
        assert_eq!(info.signature_scheme(), Ok(SignatureScheme::Sha256));
        assert!(info.signer().expect("scheme known").is_signing());
    }

    #[test]
    fn ipc_endpoints_use_path_dash_port() {
        let mut info = ConnectionInfo::parse(JUPYTER_WRITTEN.as_bytes()).expect("valid");
        info.transport = Transport::Ipc;
        info.ip = "/run/user/1000/kernel-x".into();
        info.iopub_port = 2;
        assert_eq!(
            info.endpoint(Channel::Iopub),
            "ipc:///run/user/1000/kernel-x-2"
        );
    }

    #[test]
    fn rejects_unknown_scheme_zero_ports_and_bad_json() {
        let unknown = JUPYTER_WRITTEN.replace("hmac-sha256", "rot13");
        assert!(matches!(
            ConnectionInfo::parse(unknown.as_bytes()),
            Err(ParseError::Invalid(_))
        ));
        let zero = JUPYTER_WRITTEN.replace("50003", "0");
        assert!(matches!(
            ConnectionInfo::parse(zero.as_bytes()),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            ConnectionInfo::parse(b"{"),
            Err(ParseError::Json(_))
        ));
        assert!(matches!(
            ConnectionInfo::parse(b"{\"ip\": \"x\"}"),
            Err(ParseError::Json(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let info = ConnectionInfo::parse(JUPYTER_WRITTEN.as_bytes()).expect("valid");
        assert!(!format!("{info:?}").contains("a0436f6c"));
    }

    #[test]
    fn written_file_is_private_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kernel.json");
        let info = ConnectionInfo::parse(JUPYTER_WRITTEN.as_bytes()).expect("valid");
        info.write(&path).expect("written");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ConnectionInfo::read(&path).expect("reads back"), info);
    }
}
