//! Listening sockets (tcp or ipc), the handshake, and a peer's reading and writing
//! halves. The writing half is a task with a queue bounded in bytes: a peer that stops
//! reading loses its own messages (as a ZeroMQ PUB or ROUTER at its high-water mark
//! does) instead of holding up everyone else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};

use super::codec::{self, Command, Decoder, Incoming, ZmtpError};
use crate::transport::Frames;
use crate::transport::peers::{Endpoint, Owner};

/// How long a new peer may take to greet and say READY.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages one peer may have waiting to be written.
const PEER_QUEUE_MESSAGES: usize = 4096;
/// Bytes one peer may have waiting to be written.
const PEER_QUEUE_BYTES: usize = 16 * 1024 * 1024;

type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ZmtpError),
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

    /// The next connection, and where it came from.
    pub async fn accept(&self) -> std::io::Result<(ReadHalf, WriteHalf, Endpoint)> {
        match self {
            Self::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                stream.set_nodelay(true)?;
                let endpoint = Endpoint::Tcp {
                    peer,
                    local: stream.local_addr()?,
                };
                let (read, write) = stream.into_split();
                Ok((Box::new(read), Box::new(write), endpoint))
            }
            Self::Unix(listener, _) => {
                let (stream, _) = listener.accept().await?;
                // Read now: the credentials are those of whoever connected, and cost one
                // system call.
                let owner = stream.peer_cred().ok().map(|credentials| Owner {
                    uid: credentials.uid(),
                    pid: credentials.pid(),
                });
                let (read, write) = stream.into_split();
                Ok((Box::new(read), Box::new(write), Endpoint::Ipc { owner }))
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
            Some(_) => return Err(ZmtpError::NotReady("a message".into()).into()),
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

fn peer_info(ready: &Command, compatible: &[&str]) -> Result<PeerInfo, ZmtpError> {
    if ready.name != "READY" {
        return Err(ZmtpError::NotReady(ready.name.clone()));
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
        return Err(ZmtpError::IncompatibleSocket(info.socket_type));
    }
    Ok(info)
}

/// Why a message could not be queued for a peer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum QueueError {
    Full,
    Closed,
}

/// The sending side of a connected peer: a queue bounded in bytes (every message
/// counts at least [`QUEUED_MESSAGE_OVERHEAD`]), drained by a writer task that gives the
/// room back once a message is written.
#[derive(Clone)]
pub(super) struct PeerSender {
    queue: mpsc::UnboundedSender<(Frames, OwnedSemaphorePermit)>,
    room: Arc<Semaphore>,
}

/// What a message costs in the queue besides its bytes, so that many tiny messages
/// are bounded too.
const QUEUED_MESSAGE_OVERHEAD: usize = PEER_QUEUE_BYTES / PEER_QUEUE_MESSAGES;

/// Room a message takes; one message larger than the whole queue takes all of it.
fn cost(frames: &Frames) -> u32 {
    let size: usize = frames.iter().map(Bytes::len).sum::<usize>() + QUEUED_MESSAGE_OVERHEAD;
    u32::try_from(size.min(PEER_QUEUE_BYTES)).unwrap_or(u32::MAX)
}

impl PeerSender {
    pub fn spawn(write: WriteHalf) -> Self {
        let (queue, messages) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(write, messages));
        Self {
            queue,
            room: Arc::new(Semaphore::new(PEER_QUEUE_BYTES)),
        }
    }

    /// Queues a message without waiting; fails when the peer is too far behind.
    pub fn try_send(&self, frames: Frames) -> Result<(), QueueError> {
        let permit = Arc::clone(&self.room)
            .try_acquire_many_owned(cost(&frames))
            .map_err(|error| match error {
                TryAcquireError::NoPermits => QueueError::Full,
                TryAcquireError::Closed => QueueError::Closed,
            })?;
        self.queue
            .send((frames, permit))
            .map_err(|_| QueueError::Closed)
    }

    /// Whether the peer has worked its queue down to half or less.
    pub fn half_empty(&self) -> bool {
        self.room.available_permits() >= PEER_QUEUE_BYTES / 2
    }

    /// Queues a message, waiting up to `patience` for the peer to make room.
    pub async fn send(&self, frames: Frames, patience: Duration) -> Result<(), QueueError> {
        let waiting = Arc::clone(&self.room).acquire_many_owned(cost(&frames));
        let permit = match tokio::time::timeout(patience, waiting).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(QueueError::Closed),
            Err(_) => return Err(QueueError::Full),
        };
        self.queue
            .send((frames, permit))
            .map_err(|_| QueueError::Closed)
    }
}

async fn write_loop(
    write: WriteHalf,
    mut messages: mpsc::UnboundedReceiver<(Frames, OwnedSemaphorePermit)>,
) {
    let mut writer = BufWriter::with_capacity(64 * 1024, write);
    let mut chunks = Vec::new();
    let mut written_permits = Vec::new();
    while let Some(first) = messages.recv().await {
        // Write everything already queued before one flush: fewer system calls when
        // output streams fast.
        let mut next = Some(first);
        let mut written = 0;
        while let Some((frames, permit)) = next {
            written += frames.iter().map(Bytes::len).sum::<usize>();
            codec::encode_message(&frames, &mut chunks);
            for chunk in chunks.drain(..) {
                if writer.write_all(&chunk).await.is_err() {
                    messages.close();
                    return;
                }
            }
            written_permits.push(permit);
            next = if written < 1024 * 1024 {
                messages.try_recv().ok()
            } else {
                None
            };
        }
        let flushed = writer.flush().await;
        // The room is given back once the bytes are with the operating system.
        written_permits.clear();
        if flushed.is_err() {
            messages.close();
            return;
        }
    }
}
