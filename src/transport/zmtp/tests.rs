//! The frontend server against a real ZeroMQ peer (the `zeromq` crate), and against
//! a raw socket that behaves badly.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use super::codec;
use super::{Listener, spawn_publisher, spawn_router};
use crate::connection::Channel;
use crate::transport::{Frames, Oversized, PeerDirectory};

const WAIT: Duration = Duration::from_secs(10);

async fn tcp_listener() -> (Listener, u16) {
    let listener = Listener::bind_tcp("127.0.0.1", 0).await.expect("bind");
    let Listener::Tcp(tcp) = &listener else {
        unreachable!("tcp listener")
    };
    let port = tcp.local_addr().expect("address").port();
    (listener, port)
}

fn message(frames: &[&[u8]]) -> ZmqMessage {
    let frames: Vec<Bytes> = frames
        .iter()
        .map(|frame| Bytes::copy_from_slice(frame))
        .collect();
    ZmqMessage::try_from(frames).expect("non-empty")
}

/// A dealer with routing id `identity`, connected to `endpoint`, that has sent one message.
async fn dealer_saying_hello(identity: &'static [u8], endpoint: &str) -> DealerSocket {
    let mut options = SocketOptions::default();
    options.peer_identity(Bytes::from_static(identity).try_into().expect("identity"));
    let mut dealer = DealerSocket::with_options(options);
    dealer.connect(endpoint).await.expect("connect");
    dealer
        .send(message(&[b"<IDS|MSG>", b"hello"]))
        .await
        .expect("send");
    dealer
}

#[tokio::test]
async fn router_delivers_by_identity_both_ways() {
    let (listener, port) = tcp_listener().await;
    let directory = PeerDirectory::default();
    let mut link = spawn_router(
        listener,
        Channel::Shell,
        1 << 20,
        16,
        notices().0,
        Some(directory.clone()),
    );
    let mut dealer = dealer_saying_hello(b"session-1", &format!("tcp://127.0.0.1:{port}")).await;

    let received = tokio::time::timeout(WAIT, link.incoming.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(received, frames(&[b"session-1", b"<IDS|MSG>", b"hello"]));

    link.outgoing
        .send(frames(&[b"session-1", b"<IDS|MSG>", b"reply"]))
        .await
        .expect("queued");
    let reply = tokio::time::timeout(WAIT, dealer.recv())
        .await
        .expect("in time")
        .expect("reply");
    assert_eq!(reply.into_vec(), frames(&[b"<IDS|MSG>", b"reply"]));

    // The proxy can tell who holds the routing id: this process's user, on this host.
    let peer = directory
        .find(Channel::Shell, &Bytes::from_static(b"session-1"))
        .expect("listed");
    let sender = peer.describe().await;
    assert_eq!((sender.transport.as_str(), sender.local), ("tcp", true));
    assert_eq!(sender.uid, Some(nix::unistd::getuid().as_raw()));
    assert!(
        sender
            .address
            .is_some_and(|address| address.starts_with("127.0.0.1:")),
    );
    assert_eq!(
        directory.find(Channel::Control, &Bytes::from_static(b"session-1")),
        None
    );
}

#[tokio::test]
async fn an_ipc_peer_is_listed_with_its_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shell");
    let listener = Listener::bind_unix(path.clone()).expect("bind");
    let directory = PeerDirectory::default();
    let mut link = spawn_router(
        listener,
        Channel::Stdin,
        1 << 20,
        16,
        notices().0,
        Some(directory.clone()),
    );
    let _dealer = dealer_saying_hello(b"ipc-1", &format!("ipc://{}", path.display())).await;
    tokio::time::timeout(WAIT, link.incoming.recv())
        .await
        .expect("in time")
        .expect("open");
    let sender = directory
        .find(Channel::Stdin, &Bytes::from_static(b"ipc-1"))
        .expect("listed")
        .describe()
        .await;
    assert_eq!((sender.transport.as_str(), sender.local), ("ipc", true));
    assert_eq!(sender.uid, Some(nix::unistd::getuid().as_raw()));
    assert_eq!(
        sender.pid.and_then(|pid| u32::try_from(pid).ok()),
        Some(std::process::id())
    );
}

fn frames(parts: &[&[u8]]) -> Frames {
    parts
        .iter()
        .map(|part| Bytes::copy_from_slice(part))
        .collect()
}

#[tokio::test]
async fn oversized_message_is_dropped_and_the_connection_keeps_working() {
    let (listener, port) = tcp_listener().await;
    let (notices, mut oversized) = notices();
    let mut link = spawn_router(listener, Channel::Shell, 1000, 16, notices, None);
    let mut dealer = DealerSocket::new();
    dealer
        .connect(&format!("tcp://127.0.0.1:{port}"))
        .await
        .expect("connect");
    dealer
        .send(message(&[b"<IDS|MSG>", &[0u8; 5000]]))
        .await
        .expect("send big");
    dealer
        .send(message(&[b"<IDS|MSG>", b"small"]))
        .await
        .expect("send small");
    let received = tokio::time::timeout(WAIT, link.incoming.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(received[1..], frames(&[b"<IDS|MSG>", b"small"])[..]);
    // The proxy hears of the skipped message, to report it.
    let notice = tokio::time::timeout(WAIT, oversized.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(notice.channel, Channel::Shell);
    assert_eq!(notice.limit, 1000);
    assert!(notice.size > 1000, "{notice:?}");
    assert_eq!(notice.msg_id, None, "no header among the frames");
}

/// A queue for oversized notices; the receiver may be dropped (the router then logs).
fn notices() -> (
    tokio::sync::mpsc::Sender<Oversized>,
    tokio::sync::mpsc::Receiver<Oversized>,
) {
    tokio::sync::mpsc::channel(16)
}

/// Connects a raw TCP peer that completes the handshake as a SUB and subscribes to
/// everything, and then never reads again.
async fn stalled_subscriber(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(&codec::greeting())
        .await
        .expect("greeting");
    stream
        .write_all(&codec::ready_command(&[("Socket-Type", b"SUB")]))
        .await
        .expect("ready");
    let mut greeting = [0u8; 64];
    stream
        .read_exact(&mut greeting)
        .await
        .expect("server greeting");
    // One short frame, no MORE flag: `\x01` subscribes to every topic.
    stream.write_all(&[0, 1, 1]).await.expect("subscribe");
    stream
}

#[tokio::test]
async fn a_stalled_subscriber_does_not_hold_up_the_others() {
    let (listener, port) = tcp_listener().await;
    let mut publisher = spawn_publisher(listener, 1 << 20, 64);
    let _stalled = stalled_subscriber(port).await;
    let mut reader = SubSocket::new();
    reader
        .connect(&format!("tcp://127.0.0.1:{port}"))
        .await
        .expect("connect");
    reader.subscribe("").await.expect("subscribe");
    // Both subscriptions are announced before anything is published.
    for _ in 0..2 {
        tokio::time::timeout(WAIT, publisher.subscriptions.recv())
            .await
            .expect("in time")
            .expect("subscription");
    }
    // Far more than socket buffers hold (the stalled peer's fill up after a few MiB),
    // less than a peer's queue (so the reader, if it lags, loses nothing).
    let payload = Bytes::from(vec![b'x'; 64 * 1024]);
    let count = 300;
    let publish = publisher.publish.clone();
    let producer = tokio::spawn(async move {
        for index in 0..count {
            let frames = vec![Bytes::from(format!("{index}")), payload.clone()];
            publish.send(frames).await.expect("publisher open");
        }
    });
    for expected in 0..count {
        let received = tokio::time::timeout(WAIT, reader.recv())
            .await
            .expect("not stalled")
            .expect("message");
        assert_eq!(
            received.get(0).map(|frame| frame.to_vec()),
            Some(expected.to_string().into_bytes())
        );
    }
    producer.await.expect("producer done");
}

#[tokio::test]
async fn direct_message_reaches_only_its_subscriber() {
    let (listener, port) = tcp_listener().await;
    let mut publisher = spawn_publisher(listener, 1 << 20, 16);
    let mut first = SubSocket::new();
    first
        .connect(&format!("tcp://127.0.0.1:{port}"))
        .await
        .expect("connect");
    first.subscribe("").await.expect("subscribe");
    let subscription = tokio::time::timeout(WAIT, publisher.subscriptions.recv())
        .await
        .expect("in time")
        .expect("subscription");
    assert_eq!(subscription.topic, Bytes::new());
    let mut second = SubSocket::new();
    second
        .connect(&format!("tcp://127.0.0.1:{port}"))
        .await
        .expect("connect");
    second.subscribe("").await.expect("subscribe");
    let other = tokio::time::timeout(WAIT, publisher.subscriptions.recv())
        .await
        .expect("in time")
        .expect("subscription");
    assert_ne!(
        other.peer, subscription.peer,
        "each connection is its own peer"
    );

    publisher
        .direct
        .send((other.peer, frames(&[b"welcome"])))
        .await
        .expect("queued");
    publisher
        .publish
        .send(frames(&[b"for-all"]))
        .await
        .expect("queued");
    let to_second = tokio::time::timeout(WAIT, second.recv())
        .await
        .expect("in time")
        .expect("message");
    assert_eq!(to_second.into_vec(), frames(&[b"welcome"]));
    let to_first = tokio::time::timeout(WAIT, first.recv())
        .await
        .expect("in time")
        .expect("message");
    assert_eq!(
        to_first.into_vec(),
        frames(&[b"for-all"]),
        "the welcome was not for the first"
    );
}

#[tokio::test]
async fn garbage_and_wrong_socket_types_are_refused_without_harm() {
    let (listener, port) = tcp_listener().await;
    let mut link = spawn_router(listener, Channel::Control, 1 << 20, 16, notices().0, None);
    let mut garbage = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut wrong_type = SubSocket::new();
    // A SUB cannot talk to a ROUTER; the connection is refused, nothing else happens.
    let _ = wrong_type.connect(&format!("tcp://127.0.0.1:{port}")).await;

    let mut dealer = DealerSocket::new();
    dealer
        .connect(&format!("tcp://127.0.0.1:{port}"))
        .await
        .expect("connect");
    dealer.send(message(&[b"still works"])).await.expect("send");
    let received = tokio::time::timeout(WAIT, link.incoming.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(received[1..], frames(&[b"still works"])[..]);
    assert_eq!(
        received[0].first(),
        Some(&0),
        "generated identities start with a zero byte"
    );
}

#[test]
fn frontend_bytes_decode_the_same_however_they_are_cut() {
    // A two-frame message, a message over the limit, then READY: in one piece and
    // one byte at a time.
    let mut stream = Vec::new();
    stream.extend_from_slice(&[0x01, 3]);
    stream.extend_from_slice(b"abc");
    stream.extend_from_slice(&[0x00, 2]);
    stream.extend_from_slice(b"de");
    stream.extend_from_slice(&[0x00, 200]);
    stream.extend_from_slice(&[b'x'; 200]);
    stream.extend_from_slice(&codec::ready_command(&[("Socket-Type", b"DEALER")]));
    let whole = super::decode_frontend_bytes(None, &[&stream], 100);
    let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(whole, super::decode_frontend_bytes(None, &bytewise, 100));
    let (items, error) = whole;
    assert_eq!(error, None);
    assert_eq!(
        items,
        vec![
            super::DecodedItem::Message(vec![
                Bytes::from_static(b"abc"),
                Bytes::from_static(b"de")
            ]),
            super::DecodedItem::Oversized { size: 200 },
            super::DecodedItem::Command {
                name: "READY".into(),
                properties: Some(vec![("Socket-Type".into(), Bytes::from_static(b"DEALER"))]),
            },
        ]
    );
    let mut bad_greeting = codec::greeting();
    bad_greeting[0] = 0;
    let (_, error) = super::decode_frontend_bytes(Some(&bad_greeting), &[&stream], 100);
    assert_eq!(error, Some(codec::ZmtpError::BadSignature));
}
