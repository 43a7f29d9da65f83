//! Listening sockets (tcp or ipc), the handshake, and a peer's reading and writing
//! halves. The writing half is a task with a queue bounded in bytes: a peer that stops
//! reading loses its own messages (as a ZeroMQ PUB or ROUTER at its high-water mark
//! does) instead of holding up everyone else.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

use super::codec::{self, Command, Decoder, Incoming, ProtocolError};
use crate::transport::Frames;

/// How long a new peer may take to greet and say READY.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages one peer may have waiting to be written.
const PEER_QUEUE_MESSAGES: usize = 4096;
/// Bytes one peer may have waiting to be written.
const PEER_QUEUE_BYTES: usize = 32 * 1024 * 1024;

type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("connection closed during the handshake")]
    ClosedEarly,
}

/// A bound frontend socket.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub async fn bind_tcp(ip: &str, port: u16) -> std::io::Result<Self> {
        // ZeroMQ's wildcard is `*`; IPv6 literals need brackets.
        let address = match ip {
            "*" => format!("0.0.0.0:{port}"),
            ip if ip.contains(':') => format!("[{ip}]:{port}"),
            ip => format!("{ip}:{port}"),
        };
        Ok(Self::Tcp(TcpListener::bind(address).await?))
    }

    pub fn bind_unix(path: PathBuf) -> std::io::Result<Self> {
        // A socket file left by an earlier run (a restart on the same paths) blocks
        // the bind; ZeroMQ replaces it the same way.
        if let Err(error) = std::fs::remove_file(&path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            return Err(error);
        }
        let listener = UnixListener::bind(&path)?;
        Ok(Self::Unix(listener, path))
    }

    pub async fn accept(&self) -> std::io::Result<(ReadHalf, WriteHalf)> {
        match self {
            Self::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                let (read, write) = stream.into_split();
                Ok((Box::new(read), Box::new(write)))
            }
            Self::Unix(listener, _) => {
                let (stream, _) = listener.accept().await?;
                let (read, write) = stream.into_split();
                Ok((Box::new(read), Box::new(write)))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The receiving half of a connected peer.
pub(super) struct PeerReader {
    read: ReadHalf,
    buffer: BytesMut,
    decoder: Decoder,
}

impl PeerReader {
    /// The next message or command; None when the peer closed the connection.
    pub async fn next(&mut self) -> Result<Option<Incoming>, PeerError> {
        loop {
            if let Some(item) = self.decoder.decode(&mut self.buffer)? {
                return Ok(Some(item));
            }
            let wanted = self.decoder.wanted().clamp(8 * 1024, 4 * 1024 * 1024);
            self.buffer.reserve(wanted);
            if self.read.read_buf(&mut self.buffer).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// What the peer said in its READY command.
pub(super) struct PeerInfo {
    pub socket_type: String,
    pub identity: Option<Bytes>,
}

/// Greets a new peer, exchanges READY, and checks that its socket type fits.
pub(super) async fn handshake(
    read: ReadHalf,
    mut write: WriteHalf,
    own_type: &str,
    compatible: &[&str],
    limit: usize,
) -> Result<(PeerInfo, PeerReader, WriteHalf), PeerError> {
    let exchange = async {
        write.write_all(&codec::greeting()).await?;
        write
            .write_all(&codec::ready_command(&[(
                "Socket-Type",
                own_type.as_bytes(),
            )]))
            .await?;
        write.flush().await?;
        let mut reader = PeerReader {
            read,
            buffer: BytesMut::with_capacity(8 * 1024),
            decoder: Decoder::new(limit),
        };
        let mut greeting = [0u8; 64];
        reader.read.read_exact(&mut greeting).await?;
        codec::check_greeting(&greeting)?;
        let ready = match reader.next().await? {
            Some(Incoming::Command(command)) => command,
            Some(_) => return Err(ProtocolError::NotReady("a message".into()).into()),
            None => return Err(PeerError::ClosedEarly),
        };
        let info = peer_info(&ready, compatible)?;
        Ok((info, reader))
    };
    let (info, reader) = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| PeerError::HandshakeTimeout)??;
    Ok((info, reader, write))
}

fn peer_info(ready: &Command, compatible: &[&str]) -> Result<PeerInfo, ProtocolError> {
    if ready.name != "READY" {
        return Err(ProtocolError::NotReady(ready.name.clone()));
    }
    let mut info = PeerInfo {
        socket_type: String::new(),
        identity: None,
    };
    for (name, value) in ready.properties()? {
        if name.eq_ignore_ascii_case("Socket-Type") {
            info.socket_type = String::from_utf8_lossy(&value).into_owned();
        } else if name.eq_ignore_ascii_case("Identity") && !value.is_empty() {
            info.identity = Some(value);
        }
    }
    if !compatible.contains(&info.socket_type.as_str()) {
        return Err(ProtocolError::IncompatibleSocket(info.socket_type));
    }
    Ok(info)
}

/// Why a message could not be queued for a peer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum QueueError {
    Full,
    Closed,
}

/// The sending side of a connected peer: a bounded queue drained by a writer task.
#[derive(Clone)]
pub(super) struct PeerSender {
    queue: mpsc::Sender<Frames>,
    queued_bytes: Arc<AtomicUsize>,
}

impl PeerSender {
    pub fn spawn(write: WriteHalf) -> Self {
        let (queue, messages) = mpsc::channel(PEER_QUEUE_MESSAGES);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write_loop(write, messages, queued_bytes.clone()));
        Self {
            queue,
            queued_bytes,
        }
    }

    /// Queues a message without waiting; fails when the peer is too far behind.
    pub fn try_send(&self, frames: Frames) -> Result<(), QueueError> {
        let size: usize = frames.iter().map(Bytes::len).sum();
        let before = self.queued_bytes.fetch_add(size, Ordering::AcqRel);
        // One message is always accepted into an empty queue, whatever its size.
        if before > 0 && before + size > PEER_QUEUE_BYTES {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(QueueError::Full);
        }
        self.queue.try_send(frames).map_err(|error| {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            match error {
                mpsc::error::TrySendError::Full(_) => QueueError::Full,
                mpsc::error::TrySendError::Closed(_) => QueueError::Closed,
            }
        })
    }
}

async fn write_loop(
    write: WriteHalf,
    mut messages: mpsc::Receiver<Frames>,
    queued_bytes: Arc<AtomicUsize>,
) {
    let mut writer = BufWriter::with_capacity(64 * 1024, write);
    let mut chunks = Vec::new();
    while let Some(first) = messages.recv().await {
        // Write everything already queued before one flush: fewer system calls when
        // output streams fast.
        let mut next = Some(first);
        let mut written = 0;
        while let Some(frames) = next {
            written += frames.iter().map(Bytes::len).sum::<usize>();
            codec::encode_message(&frames, &mut chunks);
            for chunk in chunks.drain(..) {
                if writer.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            next = if written < 1024 * 1024 {
                messages.try_recv().ok()
            } else {
                None
            };
        }
        let flushed = writer.flush().await;
        queued_bytes.fetch_sub(written, Ordering::AcqRel);
        if flushed.is_err() {
            return;
        }
    }
}
