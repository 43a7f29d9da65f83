//! ZeroMQ sockets of the five channels. All socket code lives here; the rest of the
//! program sees each socket as a [`Link`]: a bounded queue of multipart messages in
//! each direction, served by a task that owns the socket.
//!
//! Frontends are served by [`zmtp`], a small ZMTP server made for untrusted input; the
//! connection to the private kernel uses the `zeromq` crate.
//!
//! Bounded queues are the back-pressure: when the proxy cannot keep up, a socket task
//! stops reading and the peer's own queues fill, as between two ZeroMQ peers.

mod actor;
mod peers;
mod zmtp;

#[cfg(test)]
pub(crate) use peers::Endpoint;
pub use peers::{Peer, PeerDirectory, SenderInfo};
pub use zmtp::{DecodedItem, Publisher, Subscription, ZmtpError, decode_frontend_bytes};

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use zeromq::{DealerSocket, Socket, SocketOptions, SubSocket};

use crate::connection::{Channel, ConnectionInfo, Transport};

/// One multipart message, frame by frame.
pub type Frames = Vec<Bytes>;

/// How many messages may wait in each direction of a link.
const LINK_CAPACITY: usize = 64;

/// The proxy's end of one socket.
#[derive(Debug)]
pub struct Link {
    /// Messages to send on the socket.
    pub outgoing: mpsc::Sender<Frames>,
    /// Messages received on the socket. Closed when the socket can no longer receive.
    pub incoming: mpsc::Receiver<Frames>,
}

/// The sockets frontends connect to, bound as the connection file says.
#[derive(Debug)]
pub struct FrontendLinks {
    pub shell: Link,
    pub control: Link,
    pub stdin: Link,
    pub iopub: Publisher,
    pub heartbeat: Link,
    /// Messages skipped for their size on any channel, for the proxy to report.
    pub oversized: mpsc::Receiver<Oversized>,
    /// The connections of shell, control and stdin by routing id: who sent a message.
    pub peers: PeerDirectory,
}

/// A frontend message skipped as it arrived because it was over the size limit: only
/// what came before the limit was crossed is known of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversized {
    pub channel: Channel,
    /// The routing id of the connection it came from (see [`PeerDirectory`]).
    pub routing_id: Bytes,
    /// The size announced by its frames, as far as they were read.
    pub size: u64,
    pub limit: usize,
    pub msg_id: Option<String>,
    pub msg_type: Option<String>,
}

/// How many oversized notices may wait for the proxy; past it the peer's reading waits.
const OVERSIZED_CAPACITY: usize = 64;

/// The proxy's connections to the real kernel.
#[derive(Debug)]
pub struct KernelLinks {
    pub shell: Link,
    pub control: Link,
    pub stdin: Link,
    /// Everything the kernel publishes (subscribed to all topics).
    pub iopub: mpsc::Receiver<Frames>,
    pub heartbeat: Link,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot bind {channel} on {endpoint}: {reason}")]
    Bind {
        channel: Channel,
        endpoint: String,
        reason: String,
    },
    #[error("cannot connect to the kernel's {channel} on {endpoint}: {reason}")]
    Connect {
        channel: Channel,
        endpoint: String,
        reason: String,
    },
}

/// Binds all five frontend sockets. Frontend messages larger than `limit` bytes are
/// skipped as they arrive, with a diagnostic.
pub async fn bind_frontend(
    info: &ConnectionInfo,
    limit: usize,
) -> Result<FrontendLinks, TransportError> {
    let (notices, oversized) = mpsc::channel(OVERSIZED_CAPACITY);
    let peers = PeerDirectory::default();
    // Heartbeat pings are echoed, never rejected: nobody asks who sent them.
    let router = |listener, channel| {
        let directory = (channel != Channel::Heartbeat).then(|| peers.clone());
        zmtp::spawn_router(
            listener,
            channel,
            limit,
            LINK_CAPACITY,
            notices.clone(),
            directory,
        )
    };
    Ok(FrontendLinks {
        shell: router(listen(info, Channel::Shell).await?, Channel::Shell),
        control: router(listen(info, Channel::Control).await?, Channel::Control),
        stdin: router(listen(info, Channel::Stdin).await?, Channel::Stdin),
        iopub: zmtp::spawn_publisher(listen(info, Channel::Iopub).await?, limit, LINK_CAPACITY),
        heartbeat: router(listen(info, Channel::Heartbeat).await?, Channel::Heartbeat),
        oversized,
        peers,
    })
}

async fn listen(info: &ConnectionInfo, channel: Channel) -> Result<zmtp::Listener, TransportError> {
    let port = info.port(channel);
    let bound = match info.transport {
        Transport::Tcp => zmtp::Listener::bind_tcp(&info.ip, port).await,
        Transport::Ipc => zmtp::Listener::bind_unix(format!("{}-{port}", info.ip).into()),
    };
    bound.map_err(|error| TransportError::Bind {
        channel,
        endpoint: info.endpoint(channel),
        reason: error.to_string(),
    })
}

/// Connects to the real kernel, retrying until its sockets exist or `patience` runs out.
/// `identity` is the routing id of the shell and stdin sockets: the kernel addresses
/// `input_request` on stdin to the identity that sent the execute_request on shell.
pub async fn connect_kernel(
    info: &ConnectionInfo,
    identity: Bytes,
    patience: Duration,
) -> Result<KernelLinks, TransportError> {
    let deadline = tokio::time::Instant::now() + patience;
    let dealer = || -> Result<DealerSocket, TransportError> {
        let mut options = SocketOptions::default();
        let id = identity
            .clone()
            .try_into()
            .map_err(|error: zeromq::ZmqError| TransportError::Connect {
                channel: Channel::Shell,
                endpoint: String::new(),
                reason: error.to_string(),
            })?;
        options.peer_identity(id);
        Ok(DealerSocket::with_options(options))
    };
    let mut iopub = connect(SubSocket::new(), info, Channel::Iopub, deadline).await?;
    iopub
        .subscribe("")
        .await
        .map_err(|error| TransportError::Connect {
            channel: Channel::Iopub,
            endpoint: info.endpoint(Channel::Iopub),
            reason: error.to_string(),
        })?;
    let shell = connect(dealer()?, info, Channel::Shell, deadline).await?;
    let control = connect(dealer()?, info, Channel::Control, deadline).await?;
    let stdin = connect(dealer()?, info, Channel::Stdin, deadline).await?;
    let heartbeat = connect(DealerSocket::new(), info, Channel::Heartbeat, deadline).await?;
    Ok(KernelLinks {
        shell: actor::spawn_duplex(shell, Channel::Shell, LINK_CAPACITY),
        control: actor::spawn_duplex(control, Channel::Control, LINK_CAPACITY),
        stdin: actor::spawn_duplex(stdin, Channel::Stdin, LINK_CAPACITY),
        iopub: actor::spawn_receiver(iopub, Channel::Iopub, LINK_CAPACITY),
        heartbeat: actor::spawn_duplex(heartbeat, Channel::Heartbeat, LINK_CAPACITY),
    })
}

/// How often a kernel socket that is not listening yet is tried again.
const LISTEN_POLL: Duration = Duration::from_millis(5);

/// Returns once something accepts connections at the kernel's `channel` endpoint, or
/// at `deadline`. The `zeromq` crate retries a refused connection itself, but after
/// 50, 100, 200 ms…: a kernel that binds its sockets a moment after the first try would
/// be reached up to a few hundred milliseconds late, and the kernel's start with it.
async fn wait_until_listening(endpoint: &str, deadline: tokio::time::Instant) {
    while tokio::time::Instant::now() < deadline {
        let accepted = if let Some(path) = endpoint.strip_prefix("ipc://") {
            tokio::net::UnixStream::connect(path).await.is_ok()
        } else if let Some(address) = endpoint.strip_prefix("tcp://") {
            tokio::net::TcpStream::connect(address).await.is_ok()
        } else {
            return; // nothing to probe with: the socket's own retries remain
        };
        if accepted {
            return;
        }
        tokio::time::sleep(LISTEN_POLL).await;
    }
}

async fn connect<S: Socket>(
    mut socket: S,
    info: &ConnectionInfo,
    channel: Channel,
    deadline: tokio::time::Instant,
) -> Result<S, TransportError> {
    let endpoint = info.endpoint(channel);
    wait_until_listening(&endpoint, deadline).await;
    loop {
        match socket.connect(&endpoint).await {
            Ok(()) => return Ok(socket),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(TransportError::Connect {
                    channel,
                    endpoint,
                    reason: error.to_string(),
                });
            }
            // The kernel has not bound its sockets yet.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
