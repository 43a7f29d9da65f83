//! The proxy ⇄ collector protocol over a Unix socket: frames of a 4-byte big-endian
//! length and a JSON body. The proxy says hello, then sends records, each with an id;
//! the collector answers hello and acknowledges every record, in order, once it is on
//! disk (or says why it is not).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::audit::Record;

pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame either side accepts. Records are already capped by the size
/// policy; this only stops a hostile peer from making the other allocate.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToCollector {
    Hello {
        version: u32,
        /// The kernel's JupyterHub API token, for the collector to ask the Hub whose
        /// it is (see [`super::hub`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hub_token: Option<HubToken>,
    },
    Record {
        id: u64,
        record: Record,
        /// Someone waits for this record (a write-ahead): the store syncs it at once
        /// instead of letting it wait a moment for company.
        #[serde(default, skip_serializing_if = "is_false")]
        urgent: bool,
    },
}

/// A JupyterHub API token: a secret. It is only ever sent to the collector and by the
/// collector to the Hub; its `Debug` hides it, so no log line can carry it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HubToken(String);

impl HubToken {
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// The token from the environment the kernel was started with, if any.
    pub fn from_environment() -> Option<Self> {
        std::env::var("JUPYTERHUB_API_TOKEN")
            .ok()
            .filter(|token| !token.is_empty())
            .map(Self)
    }

    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for HubToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("HubToken(<hidden>)")
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// A record frame written from a borrowed record (the same bytes as
/// `ToCollector::Record`), so sending never copies a record.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "record")]
pub struct RecordFrame<'a> {
    pub id: u64,
    pub record: &'a Record,
    #[serde(skip_serializing_if = "is_false")]
    pub urgent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromCollector {
    Hello {
        version: u32,
    },
    /// In place of `hello`: the connection is not accepted (its identity could not be
    /// established as the collector's policy requires), and is closed.
    Refused {
        reason: String,
    },
    /// The record with this id is on disk with this sequence number.
    Ack {
        id: u64,
        sequence: u64,
    },
    /// The record with this id was not stored.
    /// `retry`: the failure is the store's (a write error, a shutdown), not the
    /// record's, so sending it again may work.
    Nack {
        id: u64,
        error: String,
        #[serde(default)]
        retry: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME_BYTES} bytes")]
    Oversized(usize),
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("the collector refused this kernel: {0}")]
    Refused(String),
}

pub async fn write_frame<W, T>(writer: &mut W, frame: &T) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = serde_json::to_vec(frame)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError::Oversized(body.len()));
    }
    let length = u32::try_from(body.len()).map_err(|_| ProtocolError::Oversized(body.len()))?;
    writer.write_all(&length.to_be_bytes()).await?;
    writer.write_all(&body).await?;
    Ok(())
}

/// Reads one frame; None when the peer closed the connection between frames.
pub async fn read_frame<R, T>(reader: &mut R) -> Result<Option<T>, ProtocolError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    match read_frame_length(reader).await? {
        Some(length) => read_frame_body(reader, length).await.map(Some),
        None => Ok(None),
    }
}

/// Reads a frame's length (at most [`MAX_FRAME_BYTES`]); None when the peer closed the
/// connection between frames. Nothing is allocated yet, so the caller can first wait
/// for room for the body.
pub async fn read_frame_length<R>(reader: &mut R) -> Result<Option<usize>, ProtocolError>
where
    R: AsyncRead + Unpin,
{
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(ProtocolError::Oversized(length));
    }
    Ok(Some(length))
}

/// Reads and parses the body of a frame whose length [`read_frame_length`] gave.
pub async fn read_frame_body<R, T>(reader: &mut R, length: usize) -> Result<T, ProtocolError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let body = read_frame_bytes(reader, length).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// Reads the body of a frame whose length [`read_frame_length`] gave, unparsed.
pub async fn read_frame_bytes<R>(reader: &mut R, length: usize) -> Result<Vec<u8>, ProtocolError>
where
    R: AsyncRead + Unpin,
{
    crate::memory::large_buffer_received(length);
    let mut body = vec![0u8; length];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::UnexpectedEof => ProtocolError::Truncated,
            _ => ProtocolError::Io(error),
        })?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut record = Record::new();
        record.insert(
            "event".into(),
            serde_json::json!({"action": "execute_request"}),
        );
        let sent = ToCollector::Record {
            id: 7,
            record,
            urgent: true,
        };
        write_frame(&mut client, &sent).await.expect("written");
        let received: Option<ToCollector> = read_frame(&mut server).await.expect("read");
        assert_eq!(received, Some(sent));
        drop(client);
        let end: Option<ToCollector> = read_frame(&mut server).await.expect("clean end");
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn a_borrowed_record_frame_reads_as_a_record() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut record = Record::new();
        record.insert("event".into(), serde_json::json!({"action": "stream"}));
        write_frame(
            &mut client,
            &RecordFrame {
                id: 3,
                record: &record,
                urgent: false,
            },
        )
        .await
        .expect("written");
        let received: Option<ToCollector> = read_frame(&mut server).await.expect("read");
        assert_eq!(
            received,
            Some(ToCollector::Record {
                id: 3,
                record,
                urgent: false
            })
        );
    }

    #[tokio::test]
    async fn hostile_frames_are_errors_not_allocations() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(&u32::MAX.to_be_bytes())
            .await
            .expect("written");
        let result: Result<Option<ToCollector>, _> = read_frame(&mut server).await;
        assert!(matches!(result, Err(ProtocolError::Oversized(_))));

        let (mut client, mut server) = tokio::io::duplex(1024);
        write_frame(&mut client, &serde_json::json!({"type": "launch_missiles"}))
            .await
            .expect("written");
        let result: Result<Option<ToCollector>, _> = read_frame(&mut server).await;
        assert!(matches!(result, Err(ProtocolError::Malformed(_))));

        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(&10u32.to_be_bytes())
            .await
            .expect("written");
        client.write_all(b"{\"ty").await.expect("written");
        drop(client);
        let result: Result<Option<ToCollector>, _> = read_frame(&mut server).await;
        assert!(matches!(result, Err(ProtocolError::Truncated)));
    }
}
