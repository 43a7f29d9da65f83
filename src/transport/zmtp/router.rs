//! The ROUTER side: every connected peer gets a routing id (its own `Identity`, or a
//! generated one), incoming messages carry it as their first frame, and outgoing
//! messages are delivered by it. With a [`PeerDirectory`], each connection is listed
//! there under its routing id, so that the proxy can say who sent a message it rejects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::codec::Incoming;
use super::connection::{Listener, PeerSender, QueueError, handshake};
use super::{generated_identity, header_of};
use crate::connection::Channel;
use crate::sync::lock;
use crate::transport::peers::{Peer, PeerDirectory};
use crate::transport::{Frames, Link, Oversized};

/// Connected peers by routing id; the serial tells connections with one id apart.
type Peers = Arc<Mutex<HashMap<Bytes, (u64, PeerSender)>>>;

const PEER_TYPES: &[&str] = &["DEALER", "REQ", "ROUTER"];

pub(in crate::transport) fn spawn_router(
    listener: Listener,
    channel: Channel,
    limit: usize,
    capacity: usize,
    oversized: mpsc::Sender<Oversized>,
    directory: Option<PeerDirectory>,
) -> Link {
    let (outgoing, mut to_send) = mpsc::channel::<Frames>(capacity);
    let (received, incoming) = mpsc::channel::<Frames>(capacity);
    let peers: Peers = Arc::default();

    let router = RouterSide {
        channel,
        limit,
        peers: peers.clone(),
        received,
        oversized,
    };
    tokio::spawn(async move {
        let mut serial = 0u64;
        loop {
            let (read, write, endpoint) =
                crate::sync::accept_retrying(channel, || listener.accept()).await;
            serial += 1;
            let listed = directory
                .as_ref()
                .map(|directory| (Peer::accepted(endpoint, directory), directory.clone()));
            let connection = PeerConnection {
                read,
                write,
                serial,
                listed,
            };
            tokio::spawn(serve_peer(router.clone(), connection));
        }
    });

    tokio::spawn(async move {
        while let Some(mut frames) = to_send.recv().await {
            if frames.len() < 2 {
                continue;
            }
            let id = frames.remove(0);
            let sender = lock(&peers).get(&id).map(|(_, sender)| sender.clone());
            match sender.map(|sender| sender.try_send(frames)) {
                Some(Ok(())) => {}
                Some(Err(QueueError::Full)) => {
                    tracing::warn!(%channel, "frontend is not reading; message dropped")
                }
                // ZeroMQ drops messages to peers that have gone away.
                Some(Err(QueueError::Closed)) | None => {
                    tracing::debug!(%channel, "frontend gone; message dropped")
                }
            }
        }
    });
    Link { outgoing, incoming }
}

/// What every peer task of one router shares: where it serves, and where it reports.
#[derive(Clone)]
struct RouterSide {
    channel: Channel,
    limit: usize,
    peers: Peers,
    received: mpsc::Sender<Frames>,
    oversized: mpsc::Sender<Oversized>,
}

/// One accepted connection, before its handshake.
struct PeerConnection {
    read: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    write: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    /// Tells this connection from an earlier one with the same routing id.
    serial: u64,
    /// Its entry in the peer directory, when the router keeps one.
    listed: Option<(Arc<Peer>, PeerDirectory)>,
}

async fn serve_peer(router: RouterSide, connection: PeerConnection) {
    let RouterSide {
        channel,
        limit,
        peers,
        received,
        oversized,
    } = router;
    let PeerConnection {
        read,
        write,
        serial,
        listed,
    } = connection;
    if let Some((peer, _)) = &listed {
        peer.look_up_owner().await;
    }
    let (info, mut reader, write) = match handshake(read, write, "ROUTER", PEER_TYPES, limit).await
    {
        Ok(connected) => connected,
        Err(error) => {
            tracing::warn!(%channel, %error, "frontend connection refused");
            return;
        }
    };
    let id = info.identity.unwrap_or_else(generated_identity);
    // A reconnecting frontend keeps its identity: the new connection takes it over.
    lock(&peers).insert(id.clone(), (serial, PeerSender::spawn(write)));
    if let Some((peer, directory)) = &listed {
        directory.connected(channel, id.clone(), peer.clone());
    }
    tracing::debug!(%channel, peer_type = %info.socket_type, "frontend connected");
    loop {
        match reader.next().await {
            Ok(Some(Incoming::Message(mut frames))) => {
                frames.insert(0, id.clone());
                if received.send(frames).await.is_err() {
                    break;
                }
            }
            Ok(Some(Incoming::Oversized { size, head })) => {
                let header = header_of(&head);
                let notice = Oversized {
                    channel,
                    routing_id: id.clone(),
                    size,
                    limit,
                    msg_type: header.as_ref().map(|header| header.msg_type.clone()),
                    msg_id: header.map(|header| header.msg_id),
                };
                // The proxy logs and records it (rate-limited); waiting for room holds up
                // only this peer's reading, and with no proxy to tell, the log says it.
                if let Err(unsent) = oversized.send(notice).await {
                    let notice = unsent.0;
                    tracing::warn!(
                        %channel,
                        from = "frontend",
                        reason = %format!("message of {} bytes is over the limit of {limit} bytes", notice.size),
                        msg_id = notice.msg_id.as_deref().unwrap_or("unknown"),
                        "message rejected"
                    );
                }
            }
            Ok(Some(Incoming::Command(_))) => {}
            Ok(None) => break,
            Err(error) => {
                tracing::warn!(%channel, %error, "frontend connection closed");
                break;
            }
        }
    }
    if let Some((peer, directory)) = &listed {
        directory.disconnected(channel, id.clone(), peer);
    }
    let mut peers = lock(&peers);
    if peers
        .get(&id)
        .is_some_and(|(current, _)| *current == serial)
    {
        peers.remove(&id);
    }
}
