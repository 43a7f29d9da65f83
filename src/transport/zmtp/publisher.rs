//! The publishing side of iopub: subscriptions are tracked per peer, each message goes
//! to every peer with a matching subscription through that peer's own queue, and a
//! peer that falls behind loses messages alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::codec::Incoming;
use super::connection::{Listener, PeerSender, QueueError, handshake};
use super::generated_identity;
use crate::connection::Channel;
use crate::sync::lock;
use crate::transport::Frames;

const PEER_TYPES: &[&str] = &["SUB", "XSUB"];

/// A frontend subscribed to `topic` (each subscription, also a repeated one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub peer: Bytes,
    pub topic: Bytes,
}

/// The proxy's end of the frontend iopub socket.
#[derive(Debug)]
pub struct Publisher {
    /// Messages for every subscriber whose subscription matches the first frame.
    pub publish: mpsc::Sender<Frames>,
    /// A message for one subscriber only (the welcome).
    pub direct: mpsc::Sender<(Bytes, Frames)>,
    pub subscriptions: mpsc::Receiver<Subscription>,
}

struct Subscriber {
    sender: PeerSender,
    topics: Vec<Bytes>,
    /// Messages lost since the subscriber stalled.
    dropped: u64,
    stalled: bool,
}

type Subscribers = Arc<Mutex<HashMap<Bytes, Subscriber>>>;

pub(in crate::transport) fn spawn_publisher(
    listener: Listener,
    limit: usize,
    capacity: usize,
) -> Publisher {
    let (publish, mut to_publish) = mpsc::channel::<Frames>(capacity);
    let (direct, mut to_one) = mpsc::channel::<(Bytes, Frames)>(capacity);
    let (subscribed, subscriptions) = mpsc::channel::<Subscription>(capacity);
    let subscribers: Subscribers = Arc::default();

    let accept_subscribers = subscribers.clone();
    tokio::spawn(async move {
        loop {
            let (read, write, _) =
                crate::sync::accept_retrying(Channel::Iopub, || listener.accept()).await;
            tokio::spawn(serve_subscriber(
                read,
                write,
                limit,
                accept_subscribers.clone(),
                subscribed.clone(),
            ));
        }
    });

    tokio::spawn(async move {
        loop {
            // A welcome goes out before anything published after it was asked for.
            tokio::select! {
                biased;
                Some((peer, frames)) = to_one.recv() => {
                    if let Some(subscriber) = lock(&subscribers).get_mut(&peer) {
                        deliver(&peer, subscriber, frames);
                    }
                }
                Some(frames) = to_publish.recv() => fan_out(&subscribers, &frames).await,
                else => break,
            }
        }
    });
    Publisher {
        publish,
        direct,
        subscriptions,
    }
}

/// How long one subscriber may hold up the others before it counts as stalled: from
/// then on it loses messages until it has worked its queue down to half.
/// While the proxy waits, the real kernel's iopub socket holds what it publishes, about
/// 1000 messages (ZeroMQ's default high-water mark), and then drops them for the proxy,
/// so for every frontend and for the record: the wait must end before the kernel can
/// publish that many (1 MiB messages come about one per millisecond). A frontend that
/// is reading empties its socket into its own ZeroMQ queue far sooner.
const STALL_PATIENCE: Duration = Duration::from_millis(250);

/// Sends a message to every matching subscriber. A subscriber that is slow but
/// reading gets everything (the others wait for room in its queue, as the kernel
/// would wait for a slow direct frontend); one that stopped reading stalls and alone
/// loses messages.
async fn fan_out(subscribers: &Subscribers, frames: &Frames) {
    let topic = frames.first().map(Bytes::as_ref).unwrap_or_default();
    let targets: Vec<(Bytes, PeerSender, bool)> = lock(subscribers)
        .iter()
        .filter(|(_, subscriber)| {
            subscriber
                .topics
                .iter()
                .any(|prefix| topic.starts_with(prefix))
        })
        .map(|(peer, subscriber)| (peer.clone(), subscriber.sender.clone(), subscriber.stalled))
        .collect();
    for (peer, sender, stalled) in targets {
        let result = if stalled {
            // Back to lossless only with room to spare: a peer that drains slowly must
            // not make everyone wait out the patience again at every message.
            if sender.half_empty() {
                sender.try_send(frames.clone())
            } else {
                Err(QueueError::Full)
            }
        } else {
            sender.send(frames.clone(), STALL_PATIENCE).await
        };
        if let Some(subscriber) = lock(subscribers).get_mut(&peer) {
            note_delivery(&peer, subscriber, result);
        }
    }
}

fn deliver(peer: &Bytes, subscriber: &mut Subscriber, frames: Frames) {
    let result = subscriber.sender.try_send(frames);
    note_delivery(peer, subscriber, result);
}

fn note_delivery(peer: &Bytes, subscriber: &mut Subscriber, result: Result<(), QueueError>) {
    match result {
        Ok(()) => {
            if subscriber.dropped > 0 {
                tracing::warn!(
                    channel = %Channel::Iopub,
                    peer = %hex::encode(peer),
                    dropped = subscriber.dropped,
                    "stalled frontend caught up; it missed messages"
                );
            }
            subscriber.dropped = 0;
            subscriber.stalled = false;
        }
        Err(QueueError::Full) => {
            if !subscriber.stalled {
                tracing::warn!(
                    channel = %Channel::Iopub,
                    peer = %hex::encode(peer),
                    "frontend stopped reading iopub; dropping its messages until it catches up"
                );
            }
            subscriber.stalled = true;
            subscriber.dropped += 1;
        }
        Err(QueueError::Closed) => {}
    }
}

async fn serve_subscriber(
    read: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    write: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    limit: usize,
    subscribers: Subscribers,
    subscribed: mpsc::Sender<Subscription>,
) {
    let channel = Channel::Iopub;
    let (_info, mut reader, write) = match handshake(read, write, "XPUB", PEER_TYPES, limit).await {
        Ok(connected) => connected,
        Err(error) => {
            tracing::warn!(%channel, %error, "frontend connection refused");
            return;
        }
    };
    // Subscribers are told apart by connection, whatever identity they claim.
    let peer = generated_identity();
    lock(&subscribers).insert(
        peer.clone(),
        Subscriber {
            sender: PeerSender::spawn(write),
            topics: Vec::new(),
            dropped: 0,
            stalled: false,
        },
    );
    loop {
        let change = match reader.next().await {
            Ok(Some(Incoming::Message(frames))) => match frames.as_slice() {
                [frame] if !frame.is_empty() => Some((frame[0] == 1, frame.slice(1..))),
                _ => None,
            },
            // ZMTP 3.1 peers may use commands instead of messages.
            Ok(Some(Incoming::Command(command))) => match command.name.as_str() {
                "SUBSCRIBE" => Some((true, command.body)),
                "CANCEL" => Some((false, command.body)),
                _ => None,
            },
            Ok(Some(Incoming::Oversized { .. })) => None,
            Ok(None) => break,
            Err(error) => {
                tracing::warn!(%channel, %error, "frontend connection closed");
                break;
            }
        };
        let Some((subscribe, topic)) = change else {
            continue;
        };
        if let Some(subscriber) = lock(&subscribers).get_mut(&peer) {
            if subscribe {
                subscriber.topics.push(topic.clone());
            } else if let Some(index) = subscriber.topics.iter().position(|known| *known == topic) {
                subscriber.topics.remove(index);
            }
        }
        if subscribe
            && subscribed
                .send(Subscription {
                    peer: peer.clone(),
                    topic,
                })
                .await
                .is_err()
        {
            break;
        }
    }
    lock(&subscribers).remove(&peer);
}
