//! Tasks that own one socket each and move messages between it and a [`Link`].

use tokio::sync::mpsc;
use zeromq::{SocketRecv, SocketSend, ZmqMessage, ZmqResult};

use super::{Frames, Link};
use crate::connection::Channel;

fn to_message(frames: Frames) -> Option<ZmqMessage> {
    ZmqMessage::try_from(frames).ok()
}

/// A receive-only socket (SUB): only an incoming queue.
pub(super) fn spawn_receiver<S>(
    mut socket: S,
    channel: Channel,
    capacity: usize,
) -> mpsc::Receiver<Frames>
where
    S: SocketRecv + Send + 'static,
{
    let (received, incoming) = mpsc::channel::<Frames>(capacity);
    tokio::spawn(async move { while pass_on(socket.recv().await, &received, channel).await {} });
    incoming
}

/// Hands a received message to the link; false once the socket or the link is closed.
async fn pass_on(
    result: ZmqResult<ZmqMessage>,
    received: &mpsc::Sender<Frames>,
    channel: Channel,
) -> bool {
    match result {
        Ok(message) => {
            let frames = message.into_vec();
            crate::memory::large_buffer_received(frames.iter().map(|frame| frame.len()).sum());
            received.send(frames).await.is_ok()
        }
        Err(error) => {
            tracing::debug!(%channel, %error, "socket closed");
            false
        }
    }
}

/// Any socket that sends and receives from one task (DEALER).
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
                result = socket.recv() => {
                    if !pass_on(result, &received, channel).await {
                        break;
                    }
                }
            }
        }
    });
    Link { outgoing, incoming }
}
