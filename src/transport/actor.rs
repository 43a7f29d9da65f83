//! Tasks that own one socket each and move messages between it and a [`Link`].

use tokio::sync::mpsc;
use zeromq::{SocketRecv, SocketSend, ZmqMessage};

use super::{Frames, Link};
use crate::connection::Channel;

fn to_message(frames: Frames) -> Option<ZmqMessage> {
    ZmqMessage::try_from(frames).ok()
}

/// A receive-only socket (SUB). The outgoing queue is kept but unused.
pub(super) fn spawn_receiver<S>(mut socket: S, channel: Channel, capacity: usize) -> Link
where
    S: SocketRecv + Send + 'static,
{
    let (outgoing, _unused) = mpsc::channel::<Frames>(1);
    let (received, incoming) = mpsc::channel::<Frames>(capacity);
    tokio::spawn(async move {
        loop {
            match socket.recv().await {
                Ok(message) => {
                    if received.send(message.into_vec()).await.is_err() {
                        break;
                    }
                }
                Err(error) => {
                    tracing::debug!(%channel, %error, "socket closed");
                    break;
                }
            }
        }
    });
    Link { outgoing, incoming }
}

/// Any socket that sends and receives from one task (DEALER, SUB, XPUB).
/// Receiving from the socket is cancel-safe, so it can race the outgoing queue.
pub(super) fn spawn_duplex<S>(mut socket: S, channel: Channel, capacity: usize) -> Link
where
    S: SocketRecv + SocketSend + Send + 'static,
{
    let (outgoing, mut to_send) = mpsc::channel::<Frames>(capacity);
    let (received, incoming) = mpsc::channel::<Frames>(capacity);
    tokio::spawn(async move {
        let mut sending = true;
        loop {
            tokio::select! {
                biased;
                next = to_send.recv(), if sending => match next {
                    Some(frames) => {
                        let Some(message) = to_message(frames) else { continue };
                        if let Err(error) = socket.send(message).await {
                            tracing::warn!(%channel, %error, "send failed, message dropped");
                        }
                    }
                    None => sending = false,
                },
                result = socket.recv() => match result {
                    Ok(message) => {
                        if received.send(message.into_vec()).await.is_err() {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%channel, %error, "socket closed");
                        break;
                    }
                },
            }
        }
    });
    Link { outgoing, incoming }
}
