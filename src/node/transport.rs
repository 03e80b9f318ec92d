//! UDP transport: one socket on the Raft port for node traffic and control requests.
//!
//! Peers are addressed by name (`node3` → the cluster's host pattern). In Docker a peer's
//! name may not resolve until its container is up, so addresses are resolved lazily, retried
//! at most once a second, and refreshed every few seconds (a restarted container may have a
//! new address); a datagram to a peer without an address is dropped, as the network would
//! drop it. An IP address in the host pattern needs no lookup.
//!
//! A message larger than a datagram leaves as a burst of fragments (see
//! [`crate::proto::fragment`]). So that a burst of megabytes does not overflow the receiver's
//! socket buffer, the socket asks the kernel for large buffers and fragments are paced: they
//! wait in a queue and leave at [`PACE_BYTES_PER_SEC`] after a first [`PACE_BURST`], while
//! ordinary datagrams (heartbeats, votes, replies) go out at once, ahead of the queue.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::raft::NodeId;
use crate::config::Cluster;
use crate::proto::auth::{self, Key, Sequence};

const RESOLVE_RETRY: Duration = Duration::from_secs(1);
/// A resolved name is looked up again this often: a restarted container may get a new address.
const REFRESH: Duration = Duration::from_secs(10);

/// Largest datagram the receive buffer takes; anything above the protocol's limit is rejected
/// by the decoder.
pub const RECV_BUFFER: usize = 64 * 1024;

/// Socket buffers asked of the kernel (it may grant less, up to `net.core.rmem_max`).
pub const SOCKET_BUFFER: usize = 16 * 1024 * 1024;
/// Fragments leave at this rate once the first burst is out.
pub const PACE_BYTES_PER_SEC: usize = 128 * 1024 * 1024;
/// Fragments that may leave at once.
pub const PACE_BURST: usize = 4 * 1024 * 1024;
/// Fragments waiting to leave, at most; a message that does not fit is dropped, as the
/// network would drop it.
const MAX_QUEUED: usize = 64 * 1024 * 1024;

struct Peer {
    addr: Option<SocketAddr>,
    next_try: Instant,
    /// When the name was last looked up (None: never).
    looked_up: Option<Instant>,
}

/// The node's socket and its peers' addresses.
pub struct Transport {
    socket: UdpSocket,
    cluster: Cluster,
    peers: HashMap<NodeId, Peer>,
    send_errors: RateLimited,
    buffers: SocketBuffers,
    pacer: Pacer,
    /// Fragments waiting to leave: where to, for which node, and the unsigned bytes (signed as
    /// they leave, so that sequence numbers follow the order datagrams leave in).
    queue: VecDeque<(SocketAddr, NodeId, Vec<u8>)>,
    queued_bytes: usize,
    replies: ReplyBudget,
    /// Secure mode: every datagram leaves signed for its receiver.
    signing: Option<(Key, Sequence)>,
}

/// The socket buffer sizes the kernel granted, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    pub receive: usize,
    pub send: usize,
}

impl Transport {
    /// Binds `bind` (the node's Raft address) and asks for [`SOCKET_BUFFER`]-sized buffers.
    pub async fn bind(bind: SocketAddr, cluster: Cluster) -> std::io::Result<Transport> {
        let socket = UdpSocket::bind(bind).await?;
        let buffers = SocketBuffers {
            receive: grow_buffer(&socket, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, SOCKET_BUFFER),
            send: grow_buffer(&socket, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, SOCKET_BUFFER),
        };
        Ok(Transport {
            socket,
            cluster,
            peers: HashMap::new(),
            send_errors: RateLimited::new(5),
            buffers,
            pacer: Pacer::new(PACE_BYTES_PER_SEC, PACE_BURST, Instant::now()),
            queue: VecDeque::new(),
            queued_bytes: 0,
            replies: ReplyBudget::new(),
            signing: None,
        })
    }

    /// Signs every datagram from now on with `key` (secure mode).
    pub fn sign_with(&mut self, key: Key) {
        self.signing = Some((key, Sequence::new()));
    }

    /// `bytes` signed for `to`, in secure mode.
    fn sealed<'a>(&mut self, bytes: &'a [u8], to: impl FnOnce() -> String) -> std::borrow::Cow<'a, [u8]> {
        match &mut self.signing {
            Some((key, seq)) => auth::seal(key, bytes, &to(), seq.take()).into(),
            None => bytes.into(),
        }
    }

    /// The socket buffers the kernel granted.
    pub fn buffers(&self) -> SocketBuffers {
        self.buffers
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
            let bytes = self.sealed(bytes, || crate::proto::node_name(id));
            self.send_to(addr, &bytes);
        }
    }

    /// Where a datagram for node `id` goes, and its bytes as they leave (signed in secure
    /// mode), for another thread to send (see [`Transport::sending_socket`]); None when the
    /// peer has no address.
    pub fn addressed(&mut self, id: NodeId, bytes: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        let addr = self.peer_addr(id)?;
        Some((addr, self.sealed(bytes, || crate::proto::node_name(id)).into_owned()))
    }

    /// The node's socket again, for a thread that sends [`Transport::addressed`] datagrams
    /// without the async runtime (it is non-blocking: a full send buffer drops the datagram).
    pub fn sending_socket(&self) -> std::io::Result<std::net::UdpSocket> {
        use std::os::fd::AsFd;
        Ok(std::net::UdpSocket::from(self.socket.as_fd().try_clone_to_owned()?))
    }

    /// Queues the fragments of one message to node `id`; they leave paced (see
    /// [`Transport::flush_paced`]).
    pub fn send_paced(&mut self, id: NodeId, datagrams: &[Vec<u8>]) {
        let Some(addr) = self.peer_addr(id) else { return };
        let bytes: usize = datagrams.iter().map(Vec::len).sum();
        if self.queued_bytes + bytes > MAX_QUEUED {
            if self.send_errors.allow() {
                log::warn!("not sending a {bytes}-byte message to node{id}: {} bytes wait already", self.queued_bytes);
            }
            return;
        }
        self.queued_bytes += bytes;
        self.queue.extend(datagrams.iter().map(|d| (addr, id, d.clone())));
    }

    /// Sends the queued fragments the pace allows by `now`.
    pub fn flush_paced(&mut self, now: Instant) {
        while let Some((_, _, bytes)) = self.queue.front() {
            if !self.pacer.take(now, bytes.len()) {
                break;
            }
            let Some((addr, id, bytes)) = self.queue.pop_front() else { break };
            self.queued_bytes -= bytes.len();
            // Signed now, not when queued: a heartbeat that went ahead of the queue must not
            // leave the fragments' sequence numbers too far behind for the receiver's window.
            let sealed = self.sealed(&bytes, || crate::proto::node_name(id));
            self.send_to(addr, &sealed);
        }
    }

    /// When [`Transport::flush_paced`] can send the next queued fragment, if any waits.
    pub fn next_paced(&self, now: Instant) -> Option<Instant> {
        let (_, _, bytes) = self.queue.front()?;
        Some(now + self.pacer.wait(now, bytes.len()))
    }

    /// Sends a reply to a request's source, within that source's [`ReplyBudget`]: UDP
    /// sources can be forged, and a node must not become an amplifier that answers small
    /// requests with large replies to whatever address they name.
    /// A reply to a signed request is signed (for `Controller`); one to an unsigned request is
    /// not, as the controller that sent it expects.
    pub fn send_reply(&mut self, to: SocketAddr, bytes: &[u8], signed: bool) {
        let bytes = if signed { self.sealed(bytes, || crate::proto::CONTROLLER.into()) } else { bytes.into() };
        if !self.replies.take(to.ip(), bytes.len(), Instant::now()) {
            if self.send_errors.allow() {
                log::warn!("not answering {to}: it was sent more replies than a source may get per second");
            }
            return;
        }
        self.send_to(to, &bytes);
    }

    /// Sends to an address.
    pub fn send_to(&mut self, addr: SocketAddr, bytes: &[u8]) {
        if let Err(e) = self.socket.try_send_to(bytes, addr) {
            if self.send_errors.allow() {
                log::warn!("cannot send {} bytes to {addr}: {e}", bytes.len());
            }
        }
    }

    /// True when a datagram from `from` may be node `id`'s: `from` is the address the
    /// configuration resolves `id` to. A datagram from another address makes the name be
    /// looked up again (at most once per [`RESOLVE_RETRY`]), so a peer whose container came
    /// back with a new address is believed as soon as its name says so, and a flood of
    /// forged datagrams costs one lookup a second.
    pub fn is_from(&mut self, id: NodeId, from: SocketAddr) -> bool {
        if id == 0 || id > self.cluster.nodes {
            return false;
        }
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        if self.peer_addr(id) == Some(from) {
            return true;
        }
        let now = Instant::now();
        let Some(peer) = self.peers.get_mut(&id) else { return false };
        if peer.looked_up.is_some_and(|at| now.saturating_duration_since(at) < RESOLVE_RETRY) {
            return false;
        }
        peer.next_try = now;
        self.peer_addr(id) == Some(from)
    }

    fn peer_addr(&mut self, id: NodeId) -> Option<SocketAddr> {
        let now = Instant::now();
        let peer = self.peers.entry(id).or_insert(Peer { addr: None, next_try: now, looked_up: None });
        if now >= peer.next_try {
            peer.looked_up = Some(now);
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

/// Asks for a socket buffer of `wanted` bytes; returns what the kernel granted. Beyond
/// `net.core.rmem_max`/`wmem_max` only a privileged process (CAP_NET_ADMIN) gets more.
fn grow_buffer(socket: &UdpSocket, option: libc::c_int, force: libc::c_int, wanted: usize) -> usize {
    let fd = socket.as_raw_fd();
    let set = |opt: libc::c_int| {
        let value = wanted.min(libc::c_int::MAX as usize) as libc::c_int;
        // SAFETY: setsockopt on an open socket with a pointer to a c_int and its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    let get = || {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on an open socket into a c_int of the given size.
        let rc = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, option, (&mut value as *mut libc::c_int).cast(), &mut len)
        };
        if rc == 0 {
            value.max(0) as usize
        } else {
            0
        }
    };
    set(option);
    // Linux reports twice what was asked (the doubling covers its bookkeeping).
    if get() < wanted && set(force) != 0 {
        log::debug!("socket buffer limited by the kernel: {}", std::io::Error::last_os_error());
    }
    get()
}

/// A token bucket: `rate` bytes a second, at most `burst` at once.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: usize,
    burst: usize,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    pub fn new(rate: usize, burst: usize, now: Instant) -> Pacer {
        Pacer { rate, burst, tokens: burst as f64, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.burst as f64);
        self.last = self.last.max(now);
    }

    /// Takes `bytes` if the bucket has them by `now` (a datagram larger than the burst needs
    /// a full bucket).
    pub fn take(&mut self, now: Instant, bytes: usize) -> bool {
        self.refill(now);
        let need = bytes.min(self.burst) as f64;
        if self.tokens < need {
            return false;
        }
        self.tokens -= bytes as f64;
        true
    }

    /// How long until `bytes` can be taken.
    pub fn wait(&self, now: Instant, bytes: usize) -> Duration {
        let mut next = self.clone();
        next.refill(now);
        let missing = bytes.min(self.burst) as f64 - next.tokens;
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        // Rounded up, so that the bucket surely holds the bytes by then.
        Duration::from_micros((missing * 1e6 / self.rate as f64).ceil() as u64 + 1)
    }
}

/// How many reply bytes a node sends to control requests: per source address and in all.
///
/// A request's source address is whatever the datagram says, so replies are budgeted per
/// address a node answers, not per requester: a flood of small RETRIEVEs naming a victim's
/// address gets it at most [`ReplyBudget::PER_SOURCE`] bytes a second from each node, and all
/// sources together at most [`ReplyBudget::TOTAL`]. A controller or a polling script uses a
/// small part of that.
#[derive(Debug)]
pub struct ReplyBudget {
    sources: HashMap<IpAddr, Pacer>,
    total: Option<Pacer>,
}

impl ReplyBudget {
    /// Bytes a second (and at once, twice that) one source address may be sent.
    pub const PER_SOURCE: usize = 1024 * 1024;
    /// Bytes a second (and at once) all sources together may be sent.
    pub const TOTAL: usize = 8 * 1024 * 1024;
    /// Source addresses tracked at once; idle ones are forgotten first.
    pub const MAX_SOURCES: usize = 1024;

    pub fn new() -> ReplyBudget {
        ReplyBudget { sources: HashMap::new(), total: None }
    }

    /// Takes `bytes` of the budgets of `to` and of all sources; false when either is spent.
    pub fn take(&mut self, to: IpAddr, bytes: usize, now: Instant) -> bool {
        let to = to.to_canonical();
        if !self.sources.contains_key(&to) && self.sources.len() >= Self::MAX_SOURCES {
            // A source whose budget has refilled is no different from a new one.
            self.sources.retain(|_, p| p.wait(now, 2 * Self::PER_SOURCE) > Duration::ZERO);
            if self.sources.len() >= Self::MAX_SOURCES {
                return false;
            }
        }
        let total = self.total.get_or_insert_with(|| Pacer::new(Self::TOTAL, Self::TOTAL, now));
        let source = self.sources.entry(to).or_insert_with(|| Pacer::new(Self::PER_SOURCE, 2 * Self::PER_SOURCE, now));
        if source.wait(now, bytes) > Duration::ZERO || total.wait(now, bytes) > Duration::ZERO {
            return false;
        }
        source.take(now, bytes) && total.take(now, bytes)
    }
}

impl Default for ReplyBudget {
    fn default() -> ReplyBudget {
        ReplyBudget::new()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_lets_a_burst_through_then_keeps_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1_000_000, 100_000, t0);
        let sent = (0..10).filter(|_| p.take(t0, 30_000)).count();
        assert_eq!(sent, 3, "a 100 kB burst holds three 30 kB datagrams");
        assert!(!p.take(t0, 30_000));
        let wait = p.wait(t0, 30_000);
        assert!(wait >= Duration::from_millis(20) && wait <= Duration::from_millis(21), "{wait:?}");
        assert!(!p.take(t0 + wait / 2, 30_000));
        assert!(p.take(t0 + wait, 30_000));
        // One second later the bucket is full again, never fuller.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(p.wait(later, 30_000), Duration::ZERO);
        assert_eq!((0..10).filter(|_| p.take(later, 30_000)).count(), 3);
        // A datagram larger than the burst waits for a full bucket, then leaves.
        let mut p = Pacer::new(1_000, 10, t0);
        assert!(p.take(t0, 50));
        assert!(!p.take(t0, 50));
        assert!(p.take(t0 + Duration::from_secs(1), 50));
    }

    #[test]
    fn replies_are_budgeted_per_source_address_and_in_all() {
        let t0 = Instant::now();
        let mut budget = ReplyBudget::new();
        let victim: IpAddr = "127.0.0.9".parse().unwrap();
        let reply = 60_000;
        let burst = 2 * ReplyBudget::PER_SOURCE / reply;
        assert_eq!((0..100).filter(|_| budget.take(victim, reply, t0)).count(), burst);
        // The same address written as IPv4-mapped IPv6 shares the budget.
        let mapped: IpAddr = "::ffff:127.0.0.9".parse().unwrap();
        assert!(!budget.take(mapped, reply, t0));
        // Another source is still answered; the victim again a second later, at the rate.
        assert!(budget.take("127.0.0.1".parse().unwrap(), reply, t0));
        let later = t0 + Duration::from_secs(1);
        let left_over = 2 * ReplyBudget::PER_SOURCE % reply;
        let refilled = (ReplyBudget::PER_SOURCE + left_over) / reply;
        assert_eq!((0..100).filter(|_| budget.take(victim, reply, later)).count(), refilled);
        // Many sources together get no more than the total.
        let mut budget = ReplyBudget::new();
        let sent: usize = (1..=200u8)
            .map(|i| IpAddr::from([10, 0, 0, i]))
            .map(|ip| (0..10).filter(|_| budget.take(ip, reply, t0)).count() * reply)
            .sum();
        assert!(sent <= ReplyBudget::TOTAL && sent > ReplyBudget::TOTAL - reply, "{sent}");
        // The sources tracked are bounded; one idle for long enough is forgotten for a new one.
        let mut budget = ReplyBudget::new();
        for i in 0..ReplyBudget::MAX_SOURCES as u32 {
            assert!(budget.take(IpAddr::from(i.to_be_bytes()), 100, t0));
        }
        assert!(!budget.take("192.0.2.1".parse().unwrap(), 100, t0), "all sources are busy");
        assert!(budget.take("192.0.2.1".parse().unwrap(), 100, t0 + Duration::from_secs(1)));
        assert!(budget.sources.len() <= ReplyBudget::MAX_SOURCES);
    }

    #[tokio::test]
    async fn fragments_wait_their_turn_and_ordinary_datagrams_do_not() {
        let cluster = Cluster { nodes: 2, host: "127.0.0.{id}".into(), raft_port: 0, http_port: 0 };
        let mut sender = Transport::bind("127.0.0.1:0".parse().unwrap(), cluster).await.unwrap();
        let receiver = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = receiver.local_addr().unwrap();
        // Node 2 lives where the receiver is.
        sender.peers.insert(2, Peer { addr: Some(to), next_try: Instant::now() + REFRESH, looked_up: None });
        assert!(sender.buffers().receive >= 256 * 1024, "{:?}", sender.buffers());
        // Sends never wait; the socket must be known writable first, as it is once a node runs.
        sender.socket.writable().await.unwrap();
        let fragments: Vec<Vec<u8>> = (0..200u8).map(|i| vec![i; 50_000]).collect();
        sender.send_paced(2, &fragments);
        sender.send_to(to, b"heartbeat");
        let now = Instant::now();
        sender.flush_paced(now);
        let burst = PACE_BURST / 50_000;
        assert_eq!(sender.queue.len(), 200 - burst);
        let next = sender.next_paced(now).unwrap();
        assert!(next > now && next <= now + Duration::from_millis(1), "{:?}", next - now);
        let mut buf = vec![0u8; RECV_BUFFER];
        let received = tokio::time::timeout(Duration::from_secs(5), receiver.recv_from(&mut buf)).await;
        let (n, _) = received.expect("a datagram within 5 s").unwrap();
        assert_eq!(&buf[..n], b"heartbeat", "an ordinary datagram goes ahead of queued fragments");
        // The rest leaves at the pace: 10 MB less the burst, at 128 MiB/s, in about 45 ms.
        let mut t = now;
        while let Some(next) = sender.next_paced(t) {
            t = next;
            sender.flush_paced(t);
        }
        assert!(sender.queue.is_empty() && sender.queued_bytes == 0);
        let expected = (200 * 50_000 - PACE_BURST) as f64 / PACE_BYTES_PER_SEC as f64;
        let took = (t - now).as_secs_f64();
        assert!((took - expected).abs() < 0.002, "took {took}s, expected {expected}s");
    }

    #[tokio::test]
    async fn signed_datagrams_leave_in_the_order_of_their_sequence_numbers() {
        let cluster = Cluster { nodes: 2, host: "127.0.0.{id}".into(), raft_port: 0, http_port: 0 };
        let mut sender = Transport::bind("127.0.0.1:0".parse().unwrap(), cluster.clone()).await.unwrap();
        let receiver = Transport::bind("127.0.0.1:0".parse().unwrap(), cluster).await.unwrap();
        let key = Key::derive(b"a cluster secret for this test").unwrap();
        sender.sign_with(key.clone());
        let to = receiver.local_addr().unwrap();
        sender.peers.insert(2, Peer { addr: Some(to), next_try: Instant::now() + REFRESH, looked_up: None });
        sender.socket.writable().await.unwrap();
        // More fragments than one burst, then a heartbeat that goes ahead of those still queued.
        let fragments: Vec<Vec<u8>> =
            (0..120u8).map(|i| format!("{{\"i\":{i},\"x\":\"{}\"}}", "x".repeat(50_000)).into_bytes()).collect();
        sender.send_paced(2, &fragments);
        let now = Instant::now();
        sender.flush_paced(now);
        sender.send_to_node(2, br#"{"request":"APPEND_RPC"}"#);
        let mut t = now;
        while let Some(next) = sender.next_paced(t) {
            t = next;
            sender.flush_paced(t);
        }
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut seqs = Vec::new();
        while seqs.len() < 121 {
            let got = tokio::time::timeout(Duration::from_secs(5), receiver.recv(&mut buf)).await;
            let (n, _) = got.expect("every datagram within 5 s").unwrap();
            let sealed = auth::open(&key, &buf[..n]).expect("signed for node2");
            assert_eq!(sealed.to, "node2");
            seqs.push(sealed.seq);
        }
        let mut window = auth::ReplayWindow::default();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence numbers in the order of arrival: {seqs:?}");
        assert!(seqs.iter().all(|&seq| window.take(seq)), "the receiver's window takes every one");
    }
}
