//! Who is at the other end of a frontend connection, for the record of the messages the
//! proxy rejects: the peer's address and, for a peer on this host, the OS account that
//! owns its socket (SO_PEERCRED for ipc; the kernel's table of TCP sockets for tcp).
//!
//! The routers register each connection under its channel and routing id in a
//! [`PeerDirectory`]; the proxy looks a sender up there only when it rejects a message,
//! so nothing here is on the path of relayed messages. The owner of a local TCP peer is
//! looked up as the connection is accepted, before the peer is greeted, because it can
//! only be read while the peer's socket exists (a peer that sends one message and closes
//! is gone by the time the message is rejected); the lookups of a burst of connections
//! share one reading of the table, one at a time. User names are resolved only for a
//! rejection on the record.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, mpsc, oneshot};

use crate::connection::Channel;

/// Connections that closed, kept so that their last messages can still be attributed.
const DEPARTED_KEPT: usize = 256;
/// Owner lookups that may wait for the table to be read; past it, owners stay unknown.
const LOOKUP_QUEUE: usize = 1024;
/// How long a report waits for what is being learnt of a sender.
const DESCRIBE_PATIENCE: Duration = Duration::from_secs(1);

/// Where a connection came from, as the listener accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `peer` is the sender's address, `local` the proxy's end of the connection.
    Tcp { peer: SocketAddr, local: SocketAddr },
    /// SO_PEERCRED of a Unix socket peer, when the OS gave it.
    Ipc { owner: Option<Owner> },
}

/// The OS account (and, when known, process) holding a peer's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub uid: u32,
    pub pid: Option<i32>,
}

/// One frontend connection. Equal only to itself.
#[derive(Debug)]
pub struct Peer {
    endpoint: Endpoint,
    owner: OnceCell<Option<Owner>>,
    user_name: OnceCell<Option<String>>,
    lookups: Option<OwnerLookups>,
}

impl PartialEq for Peer {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Peer {}

/// What is known of the sender of a message: `jupyter.sender` of a rejection's record.
///
/// The record's shape too (readers deserialize it): a record written by another
/// sender may lack fields, which then read as their defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SenderInfo {
    /// `tcp` or `ipc`.
    pub transport: String,
    /// `ip:port` of a tcp peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Whether the peer is on this host (an ipc peer always is).
    pub local: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
}

impl fmt::Display for SenderInfo {
    /// `127.0.0.1:40312 uid 1001 (mallory)`, `ipc uid 1001 (mallory) pid 4242`,
    /// `10.0.0.5:40312 (another host)`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.address.as_deref().unwrap_or(&self.transport))?;
        if let Some(uid) = self.uid {
            write!(formatter, " uid {uid}")?;
        }
        if let Some(name) = &self.user_name {
            write!(formatter, " ({name})")?;
        }
        if let Some(pid) = self.pid {
            write!(formatter, " pid {pid}")?;
        }
        if !self.local {
            formatter.write_str(" (another host)")?;
        } else if self.uid.is_none() {
            formatter.write_str(" (owner unknown)")?;
        }
        Ok(())
    }
}

impl Peer {
    /// A newly accepted connection (see [`Peer::look_up_owner`]).
    pub(crate) fn accepted(endpoint: Endpoint, directory: &PeerDirectory) -> Arc<Self> {
        let lookups = match endpoint {
            Endpoint::Tcp { peer, local } if is_local(peer, local) => Some(directory.lookups()),
            _ => None,
        };
        let owner = match (endpoint, &lookups) {
            (Endpoint::Ipc { owner }, _) => OnceCell::new_with(Some(owner)),
            (Endpoint::Tcp { .. }, None) => OnceCell::new_with(Some(None)),
            (Endpoint::Tcp { .. }, Some(_)) => OnceCell::new(),
        };
        Arc::new(Self {
            endpoint,
            owner,
            user_name: OnceCell::new(),
            lookups,
        })
    }

    /// Looks the owner of a local TCP peer's socket up, waiting a little at most. The
    /// router does this before it greets the peer: a ZeroMQ peer sends nothing before
    /// it has the greeting, so its socket is still there to be looked up, even if it
    /// closes right after sending.
    pub(crate) async fn look_up_owner(&self) {
        let _ = tokio::time::timeout(DESCRIBE_PATIENCE, self.owner()).await;
    }

    async fn owner(&self) -> Option<Owner> {
        *self
            .owner
            .get_or_init(|| async {
                let (Endpoint::Tcp { peer, local }, Some(lookups)) = (self.endpoint, &self.lookups)
                else {
                    return None;
                };
                let uid = lookups.owner_of(TcpPair { peer, local }).await?;
                Some(Owner { uid, pid: None })
            })
            .await
    }

    async fn resolve(&self) -> (Option<Owner>, Option<String>) {
        let owner = self.owner().await;
        let name = match owner {
            Some(Owner { uid, .. }) => self
                .user_name
                .get_or_init(|| async move {
                    tokio::task::spawn_blocking(move || user_name(uid))
                        .await
                        .ok()
                        .flatten()
                })
                .await
                .clone(),
            None => None,
        };
        (owner, name)
    }

    /// What is known of this peer. Waits a little for lookups in flight (which go on
    /// and are kept for the next time if this gives up on them).
    pub async fn describe(self: &Arc<Self>) -> SenderInfo {
        let peer = Arc::clone(self);
        let resolving = tokio::spawn(async move { peer.resolve().await });
        let (owner, user_name) = tokio::time::timeout(DESCRIBE_PATIENCE, resolving)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let (transport, address, local) = match self.endpoint {
            Endpoint::Tcp { peer, local } => (
                "tcp",
                Some(canonical(peer).to_string()),
                is_local(peer, local),
            ),
            Endpoint::Ipc { .. } => ("ipc", None, true),
        };
        SenderInfo {
            transport: transport.to_owned(),
            address,
            local,
            uid: owner.map(|owner| owner.uid),
            user_name,
            pid: owner.and_then(|owner| owner.pid),
        }
    }
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

/// IPv4-mapped IPv6 addresses as the IPv4 addresses they are.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// A peer on this host: loopback, or the address it reached the proxy on.
fn is_local(peer: SocketAddr, local: SocketAddr) -> bool {
    let peer = peer.ip().to_canonical();
    peer.is_loopback() || peer == local.ip().to_canonical()
}

/// Frontend connections by channel and routing id, and those that closed lately.
#[derive(Debug, Clone, Default)]
pub struct PeerDirectory {
    inner: Arc<Directory>,
}

#[derive(Debug, Default)]
struct Directory {
    entries: Mutex<Entries>,
    /// Started with the first local TCP peer (inside the runtime).
    lookups: OnceLock<OwnerLookups>,
}

type Key = (Channel, Bytes);

#[derive(Debug, Default)]
struct Entries {
    connected: HashMap<Key, Arc<Peer>>,
    departed: VecDeque<(Key, Arc<Peer>)>,
}

impl PeerDirectory {
    fn entries(&self) -> MutexGuard<'_, Entries> {
        crate::sync::lock(&self.inner.entries)
    }

    fn lookups(&self) -> OwnerLookups {
        self.inner.lookups.get_or_init(OwnerLookups::spawn).clone()
    }

    /// `peer` holds `id` on `channel` from now on (a reconnecting frontend takes its
    /// identity over, as the router does).
    pub(crate) fn connected(&self, channel: Channel, id: Bytes, peer: Arc<Peer>) {
        let mut entries = self.entries();
        if let Some(previous) = entries.connected.insert((channel, id.clone()), peer) {
            entries.depart((channel, id), previous);
        }
    }

    /// `peer`'s connection closed.
    pub(crate) fn disconnected(&self, channel: Channel, id: Bytes, peer: &Arc<Peer>) {
        let mut entries = self.entries();
        let key = (channel, id);
        if entries.connected.get(&key) == Some(peer)
            && let Some(gone) = entries.connected.remove(&key)
        {
            entries.depart(key, gone);
        }
    }

    /// The connection that holds (or last held) `id` on `channel`.
    pub fn find(&self, channel: Channel, id: &Bytes) -> Option<Arc<Peer>> {
        let entries = self.entries();
        let key = (channel, id.clone());
        entries.connected.get(&key).cloned().or_else(|| {
            entries
                .departed
                .iter()
                .rev()
                .find(|(departed, _)| *departed == key)
                .map(|(_, peer)| Arc::clone(peer))
        })
    }
}

impl Entries {
    fn depart(&mut self, key: Key, peer: Arc<Peer>) {
        if self.departed.len() >= DEPARTED_KEPT {
            self.departed.pop_front();
        }
        self.departed.push_back((key, peer));
    }
}

/// Both ends of a TCP connection, as the proxy sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpPair {
    peer: SocketAddr,
    local: SocketAddr,
}

/// Finds the owners of local TCP peers, one reading of the socket tables at a time for
/// all lookups waiting.
#[derive(Debug, Clone)]
struct OwnerLookups {
    queue: mpsc::Sender<(TcpPair, oneshot::Sender<Option<u32>>)>,
}

impl OwnerLookups {
    fn spawn() -> Self {
        let (queue, mut waiting) = mpsc::channel(LOOKUP_QUEUE);
        tokio::spawn(async move {
            let mut batch: Vec<(TcpPair, oneshot::Sender<Option<u32>>)> = Vec::new();
            while waiting.recv_many(&mut batch, LOOKUP_QUEUE).await > 0 {
                let pairs: Vec<TcpPair> = batch.iter().map(|(pair, _)| *pair).collect();
                let owners = tokio::task::spawn_blocking(move || owners_of(&pairs))
                    .await
                    .unwrap_or_default();
                for ((_, reply), owner) in batch.drain(..).zip(owners) {
                    let _ = reply.send(owner);
                }
            }
        });
        Self { queue }
    }

    async fn owner_of(&self, pair: TcpPair) -> Option<u32> {
        let (reply, answer) = oneshot::channel();
        if self.queue.try_send((pair, reply)).is_err() {
            tracing::debug!(peer = %pair.peer, "too many owner lookups waiting; owner not looked up");
            return None;
        }
        answer.await.ok().flatten()
    }
}

/// The uid owning the peer's end of each connection, from /proc/net/tcp and tcp6 (the
/// peer's end is the entry whose local address is the peer's and whose remote address
/// is the proxy's end). Sockets in TIME_WAIT have no owner any more.
fn owners_of(pairs: &[TcpPair]) -> Vec<Option<u32>> {
    let mut owners = vec![None; pairs.len()];
    let tables = [procfs::net::tcp(), procfs::net::tcp6()];
    for entry in tables.into_iter().filter_map(Result::ok).flatten() {
        if entry.state == procfs::net::TcpState::TimeWait {
            continue;
        }
        let (entry_local, entry_remote) = (
            canonical(entry.local_address),
            canonical(entry.remote_address),
        );
        for (pair, owner) in pairs.iter().zip(owners.iter_mut()) {
            if owner.is_none()
                && canonical(pair.peer) == entry_local
                && canonical(pair.local) == entry_remote
            {
                *owner = Some(entry.uid);
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_tcp_peer_is_named_by_the_owner_of_its_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = tokio::net::TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        let local = server.local_addr().expect("local");
        assert_eq!(peer, client.local_addr().expect("client address"));

        let directory = PeerDirectory::default();
        let accepted = Peer::accepted(Endpoint::Tcp { peer, local }, &directory);
        let sender = accepted.describe().await;
        assert_eq!(sender.transport, "tcp");
        assert_eq!(sender.address, Some(peer.to_string()));
        assert!(sender.local);
        assert_eq!(sender.uid, Some(nix::unistd::getuid().as_raw()));
        assert_eq!(sender.user_name, user_name(nix::unistd::getuid().as_raw()));
        assert!(sender.to_string().starts_with(&format!("{peer} uid ")));
    }

    #[tokio::test]
    async fn a_peer_on_another_host_is_not_looked_up() {
        let peer: SocketAddr = "192.0.2.7:40312".parse().expect("address");
        let local: SocketAddr = "127.0.0.1:5555".parse().expect("address");
        let accepted = Peer::accepted(Endpoint::Tcp { peer, local }, &PeerDirectory::default());
        let sender = accepted.describe().await;
        assert!(!sender.local);
        assert_eq!(sender.uid, None);
        assert_eq!(sender.to_string(), "192.0.2.7:40312 (another host)");
        assert_eq!(
            serde_json::to_value(&sender).expect("json"),
            serde_json::json!({"transport": "tcp", "address": "192.0.2.7:40312", "local": false})
        );
    }

    #[tokio::test]
    async fn an_ipc_peer_is_named_by_its_credentials() {
        let uid = nix::unistd::getuid().as_raw();
        let owner = Owner { uid, pid: Some(42) };
        let accepted = Peer::accepted(
            Endpoint::Ipc { owner: Some(owner) },
            &PeerDirectory::default(),
        );
        let sender = accepted.describe().await;
        assert_eq!(
            (sender.transport.as_str(), sender.uid, sender.pid),
            ("ipc", Some(uid), Some(42))
        );
        assert_eq!(sender.address, None);
    }

    #[tokio::test]
    async fn the_directory_finds_current_and_departed_peers_and_forgets_the_oldest() {
        let directory = PeerDirectory::default();
        let endpoint = Endpoint::Ipc { owner: None };
        let first = Peer::accepted(endpoint, &directory);
        let id = Bytes::from_static(b"frontend");
        directory.connected(Channel::Shell, id.clone(), first.clone());
        assert_eq!(directory.find(Channel::Shell, &id), Some(first.clone()));
        assert_eq!(directory.find(Channel::Stdin, &id), None, "per channel");
        // A reconnection under the same identity takes it over.
        let second = Peer::accepted(endpoint, &directory);
        directory.connected(Channel::Shell, id.clone(), second.clone());
        directory.disconnected(Channel::Shell, id.clone(), &first);
        assert_eq!(directory.find(Channel::Shell, &id), Some(second.clone()));
        // Once closed, still found until enough others closed after it.
        directory.disconnected(Channel::Shell, id.clone(), &second);
        assert_eq!(directory.find(Channel::Shell, &id), Some(second));
        for n in 0..DEPARTED_KEPT {
            let other = Bytes::from(format!("other-{n}"));
            let peer = Peer::accepted(endpoint, &directory);
            directory.connected(Channel::Shell, other.clone(), peer.clone());
            directory.disconnected(Channel::Shell, other, &peer);
        }
        assert_eq!(directory.find(Channel::Shell, &id), None);
        assert_eq!(directory.entries().departed.len(), DEPARTED_KEPT);
    }
}
