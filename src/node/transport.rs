//! UDP transport: one socket on the Raft port for node traffic and control requests.
//!
//! Peers are addressed by name (`node3` → the cluster's host pattern). In Docker a peer's
//! name may not resolve until its container is up, so addresses are resolved lazily, retried
//! at most once a second, and refreshed every few seconds (a restarted container may have a
//! new address); a datagram to a peer without an address is dropped, as the network would
//! drop it. An IP address in the host pattern needs no lookup.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::raft::NodeId;
use crate::config::Cluster;

const RESOLVE_RETRY: Duration = Duration::from_secs(1);
/// A resolved name is looked up again this often: a restarted container may get a new address.
const REFRESH: Duration = Duration::from_secs(10);

/// Largest datagram the receive buffer takes; anything above the protocol's limit is rejected
/// by the decoder.
pub const RECV_BUFFER: usize = 64 * 1024;

struct Peer {
    addr: Option<SocketAddr>,
    next_try: Instant,
}

/// The node's socket and its peers' addresses.
pub struct Transport {
    socket: UdpSocket,
    cluster: Cluster,
    peers: HashMap<NodeId, Peer>,
    send_errors: RateLimited,
}

impl Transport {
    /// Binds `bind` (the node's Raft address).
    pub async fn bind(bind: SocketAddr, cluster: Cluster) -> std::io::Result<Transport> {
        let socket = UdpSocket::bind(bind).await?;
        Ok(Transport { socket, cluster, peers: HashMap::new(), send_errors: RateLimited::new(5) })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Waits for a datagram.
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }

    /// A datagram that is already waiting, if any.
    pub fn try_recv(&self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        self.socket.try_recv_from(buf).ok()
    }

    /// Sends to node `id`; a full socket buffer or an unresolvable peer drops the datagram.
    pub fn send_to_node(&mut self, id: NodeId, bytes: &[u8]) {
        if let Some(addr) = self.peer_addr(id) {
            self.send_to(addr, bytes);
        }
    }

    /// Sends to an address (replies to controllers go to the request's source).
    pub fn send_to(&mut self, addr: SocketAddr, bytes: &[u8]) {
        if let Err(e) = self.socket.try_send_to(bytes, addr) {
            if self.send_errors.allow() {
                log::warn!("cannot send {} bytes to {addr}: {e}", bytes.len());
            }
        }
    }

    fn peer_addr(&mut self, id: NodeId) -> Option<SocketAddr> {
        let now = Instant::now();
        let peer = self.peers.entry(id).or_insert(Peer { addr: None, next_try: now });
        if now >= peer.next_try {
            match self.cluster.raft_addr(id) {
                Ok(addr) => {
                    if peer.addr.is_some_and(|old| old != addr) {
                        log::info!("node{id} moved to {addr}");
                    }
                    peer.addr = Some(addr);
                    peer.next_try = now + REFRESH;
                }
                Err(e) => {
                    // Keep the last known address: the name may be briefly unresolvable.
                    peer.next_try = now + RESOLVE_RETRY;
                    if self.send_errors.allow() {
                        log::warn!("node{id} has no address yet: {e}");
                    }
                }
            }
        }
        peer.addr
    }
}

/// Lets through at most `per_second` events a second, and says how many it held back.
pub struct RateLimited {
    per_second: u32,
    window: Instant,
    count: u32,
    suppressed: u64,
}

impl RateLimited {
    pub fn new(per_second: u32) -> RateLimited {
        RateLimited { per_second, window: Instant::now(), count: 0, suppressed: 0 }
    }

    /// True when this event may be logged.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                log::warn!("{} similar messages suppressed", self.suppressed);
            }
            self.window = now;
            self.count = 0;
            self.suppressed = 0;
        }
        self.count += 1;
        if self.count > self.per_second {
            self.suppressed += 1;
            return false;
        }
        true
    }
}
