//! The loop that drives the Raft core: datagrams and timers in, durable writes and datagrams
//! out, committed entries applied in order.
//!
//! One task owns the core and the socket; the durable log is written by a thread of its own
//! ([`LogWriter`]). Each turn the task waits for a datagram, the core's next deadline, a
//! write done or a stop signal; takes every datagram already waiting; then handles the
//! core's `Ready` as persist → send → apply, where persisting hands the write to the log
//! writer with the messages that must follow it, which the writer sends once the write is on
//! disk. So a slow flush holds up the messages that depend on it, and nothing else: timers
//! fire, and a leader keeps sending heartbeats. Timers are exact deadlines from the core, not
//! a periodic tick, so no tick period is added to elections or heartbeats.
//!
//! A Raft message larger than a datagram (an AppendEntries carrying one large entry) leaves as
//! [fragments](crate::proto::fragment) through the transport's paced queue, and incoming fragments are put together
//! again before the core sees the message.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::apply::{AppliedIndex, Applier, ApplyItem, WriteResult, BARRIER_KEY, COMMAND_KEY};
use super::guard::Guard;
use super::handshake::Handshake;
use super::log_writer::{Datagrams, LogWriter, Write};
use super::raft::{EntryValue, Event, LogEntry, Msg, NodeId, ProposeError, Raft, Role};
use super::status::{Batching, NodeStatus, PeerStatus};
use super::storage::StorageError;
use super::transport::{RateLimited, Transport, RECV_BUFFER};
use super::waiting::{Failure, Waiting};
use crate::config::Cluster;
use crate::proto::auth;
use crate::proto::fragment::{Fragmenter, Limits, Reassembler};
use crate::proto::{self, Message, Request, KEY_COMMITED_LOGS, KEY_LEADER, MAX_DATAGRAM};

/// How long a STORE waits to be committed before the controller is told it failed.
const STORE_DEADLINE: Duration = Duration::from_secs(10);
/// At most this many waiting datagrams are taken in one turn.
const MAX_BURST: usize = 256;
/// Room beside the largest entry in the largest message a node accepts.
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// A follower hands committed entries to its applier in batches: once this many wait, or
/// once the oldest has waited this long. Nobody waits on a follower's apply (writes and
/// strong reads are the leader's), and one transaction and one wake-up per batch instead
/// of per entry leave the CPU to the leader and the followers' acknowledgements.
const FOLLOWER_APPLY_BATCH: u64 = 256;
const FOLLOWER_APPLY_DELAY: Duration = Duration::from_millis(10);
/// How long a node's own database may fail to apply the log before the node stops leading
/// and standing for election (see [`Driver::step_down_on_stall`]).
const STALL_STEP_DOWN: Duration = Duration::from_secs(2);
/// A leader whose answers waited for its own disk, with the followers' disks done already,
/// at this many of the last [`DISK_WINDOW`] health checks hands over (see [`DiskWatch`]), and
/// stands for election again after [`DISK_REST`].
const DISK_SLOW_CHECKS: usize = 25;
const DISK_WINDOW: usize = 30;
const DISK_REST: Duration = Duration::from_secs(10);
/// A write that takes the disk this long holds up the answers that wait for it.
const DISK_SLOW_WRITE: Duration = Duration::from_millis(50);
/// How often the node looks at its database's and its log's progress.
const HEALTH_CHECK: Duration = Duration::from_millis(100);

/// Why the node stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// A controller sent SHUTDOWN.
    Shutdown,
    /// SIGINT or SIGTERM.
    Signal,
}

/// A STORE waiting for its entry to commit.
struct PendingStore {
    term: u64,
    reply_to: SocketAddr,
    /// The request was signed: so is the reply.
    signed: bool,
    key: String,
    value: Value,
    deadline: Instant,
}

/// A replicated write from the HTTP API: a serialized store command (None: a linearizable
/// read, answered with [`WriteResult::Readable`] once it may run) and where to answer.
pub struct Proposal {
    pub command: Option<EntryValue>,
    pub reply: oneshot::Sender<WriteResult>,
}

/// One node's running state.
pub struct Driver {
    name: String,
    raft: Raft,
    writer: LogWriter,
    /// The number of the latest write handed to the log writer, and of the latest it has
    /// reported done: while they differ, what the node sends waits for the writer.
    writes_handed: u64,
    writes_done: u64,
    transport: Transport,
    origin: Instant,
    /// Committed entries up to here are handed to the applier (and their STOREs answered).
    handed_off: u64,
    /// A follower's committed entries not handed over yet are handed over by then.
    apply_due: Option<Instant>,
    /// Controller STOREs waiting for their entries to commit, by index.
    stores: BTreeMap<u64, PendingStore>,
    drops: RateLimited,
    stop: Option<Stopped>,
    cluster: Cluster,
    status: watch::Sender<Arc<NodeStatus>>,
    elections: u64,
    leader_changes: u64,
    batching: Batching,
    last_leader: Option<NodeId>,
    proposals: mpsc::Receiver<Proposal>,
    /// HTTP writes and linearizable reads waiting on the core.
    waiting: Waiting<oneshot::Sender<WriteResult>, Instant>,
    applier: Applier,
    /// This leader's new entry to run on the applier's preparing thread while it replicates.
    to_prepare: Option<u64>,
    handshake: Handshake,
    /// Every node's name and HTTP address, as `/status` shows them.
    names: BTreeMap<NodeId, (Arc<str>, Arc<str>)>,
    fragmenter: Fragmenter,
    reassembler: Reassembler,
    /// Secure mode: what the node takes, by the cluster secret.
    guard: Option<Guard>,
    /// The applier's progress, where a database that cannot apply makes the node give up
    /// leading.
    stall_watch: Option<AppliedIndex>,
    /// Whether this node's disk holds up its answers as leader.
    disk_watch: DiskWatch,
    /// When the database and the log are next looked at.
    next_health_check: std::time::Instant,
}

/// Whether a leader's own disk holds up the cluster.
///
/// The log writer keeps the Raft thread free of disk stalls, so a leader whose disk stalls
/// for a moment keeps sending heartbeats and keeps its lead. But a leader answers a write only
/// once the write is on its own disk as well (so that its database never holds what its log
/// might lose), so a leader whose disk stays slow makes every write as slow as its disk, even
/// where a majority of followers have theirs on disk long before. Such a leader hands over:
/// when at [`DISK_SLOW_CHECKS`] of the last [`DISK_WINDOW`] health checks it had committed
/// entries (on a majority's disks without its own) that its disk did not hold yet, while its
/// disk took [`DISK_SLOW_WRITE`] or more for a write (the one on its way, or the last one),
/// it stops leading and stands in no election for [`DISK_REST`]. Only a leader outrun by a
/// majority of its followers does so: in a cluster whose disks are all slow, the leader's own
/// write is the one commits wait for, and it keeps its lead.
#[derive(Debug, Default)]
struct DiskWatch {
    /// At each health check while leading: whether committed entries waited for its disk.
    waited: std::collections::VecDeque<bool>,
    resting_until: Option<std::time::Instant>,
}

impl DiskWatch {
    /// Looks at the node at `now`; returns whether its disk lets it lead, and whether it has
    /// just stopped letting it. `write_time`: how long the disk takes for the write on its
    /// way, or took for the last.
    fn check(
        &mut self,
        now: std::time::Instant,
        leading: bool,
        commit: u64,
        durable: u64,
        write_time: Duration,
    ) -> (bool, bool) {
        if let Some(until) = self.resting_until {
            if now < until {
                return (false, false);
            }
            self.resting_until = None;
        }
        if !leading {
            self.waited.clear();
            return (true, false);
        }
        self.waited.push_back(commit > durable && write_time >= DISK_SLOW_WRITE);
        if self.waited.len() > DISK_WINDOW {
            self.waited.pop_front();
        }
        if self.waited.iter().filter(|&&w| w).count() >= DISK_SLOW_CHECKS {
            self.waited.clear();
            self.resting_until = Some(now + DISK_REST);
            return (false, true);
        }
        (true, false)
    }
}

impl Driver {
    /// A driver for `raft`, whose `origin` is time zero of the core's clock.
    pub fn new(
        raft: Raft,
        writer: LogWriter,
        transport: Transport,
        origin: Instant,
        cluster: Cluster,
        proposals: mpsc::Receiver<Proposal>,
        applier: Applier,
    ) -> Driver {
        let names: BTreeMap<NodeId, (Arc<str>, Arc<str>)> =
            cluster.ids().map(|id| (id, (Arc::from(proto::node_name(id)), Arc::from(cluster.http_addr(id))))).collect();
        let (status, _) = watch::channel(Arc::new(NodeStatus {
            name: names
                .get(&raft.id())
                .map_or_else(|| Arc::from(proto::node_name(raft.id())), |(name, _)| name.clone()),
            role: Role::Follower.as_str(),
            term: raft.term(),
            leader: None,
            leader_http: None,
            commit_index: 0,
            applied_index: 0,
            last_log_index: raft.last_index(),
            peers: Vec::new(),
            elections: 0,
            leader_changes: 0,
            batching: Batching::default(),
            run_ahead: Default::default(),
            accepted_by: Default::default(),
            leader_credentials: None,
        }));
        let handshake = Handshake::new(proto::node_name(raft.id()), cluster.http_addr(raft.id()));
        let cfg = raft.config();
        let largest = cfg.max_entry_bytes.max(cfg.max_batch_bytes) + MESSAGE_OVERHEAD;
        let buffers = transport.buffers();
        log::info!(
            "{}: UDP socket buffers: receive {} KiB, send {} KiB; messages up to {} KiB",
            proto::node_name(raft.id()),
            buffers.receive / 1024,
            buffers.send / 1024,
            largest / 1024
        );
        let fragmenter = Fragmenter::new(proto::node_name(raft.id()), super::entropy_seed());
        let mut driver = Driver {
            name: proto::node_name(raft.id()),
            raft,
            writer,
            writes_handed: 0,
            writes_done: 0,
            transport,
            origin,
            handed_off: 0,
            apply_due: None,
            stores: BTreeMap::new(),
            drops: RateLimited::new(10),
            stop: None,
            cluster,
            status,
            elections: 0,
            leader_changes: 0,
            batching: Batching::default(),
            last_leader: None,
            proposals,
            waiting: Waiting::default(),
            applier,
            to_prepare: None,
            handshake,
            names,
            fragmenter,
            reassembler: Reassembler::new(Limits::for_messages_of(largest)),
            guard: None,
            stall_watch: None,
            disk_watch: DiskWatch::default(),
            next_health_check: std::time::Instant::now(),
        };
        driver.publish();
        driver
    }

    /// For a node with a database of its own: while that database has failed to apply the
    /// log for [`STALL_STEP_DOWN`] (a full disk, say), the node does not lead or stand for
    /// election, so that a member whose database works takes over: a leader that cannot apply
    /// would commit writes and answer none. It still votes and stores the log, and may lead
    /// again once its database applies. Not for a shared database, which every member would
    /// find failing alike.
    pub fn step_down_on_stall(&mut self, applied: AppliedIndex) {
        self.stall_watch = Some(applied);
    }

    /// Whether the node may lead: its database applies (see [`Driver::step_down_on_stall`])
    /// and, while it leads, its disk keeps up (see [`DiskWatch`]). Looked at ten times a second
    /// at most.
    fn check_health(&mut self) {
        let now = std::time::Instant::now();
        if now < self.next_health_check {
            return;
        }
        self.next_health_check = now + HEALTH_CHECK;
        let stall = self.stall_watch.as_ref().and_then(AppliedIndex::stall);
        let stall = stall.filter(|s| now.duration_since(s.since) >= STALL_STEP_DOWN);
        let leading = self.raft.role() == Role::Leader;
        let write_time = self.writer.write_time();
        let (disk_ok, handed_over) =
            self.disk_watch.check(now, leading, self.raft.commit_index(), self.raft.durable_index(), write_time);
        if handed_over {
            log::warn!(
                "{}: writes committed on its followers' disks kept waiting for its own (at {DISK_SLOW_CHECKS} of {} \
                 checks over the last {:.0?}): its disk is slower than theirs. It stops leading, and stands for \
                 election again in {:.0?}",
                self.name,
                DISK_WINDOW,
                HEALTH_CHECK * DISK_WINDOW as u32,
                DISK_REST
            );
        }
        let eligible = stall.is_none() && disk_ok;
        if eligible == self.raft.is_eligible() {
            return;
        }
        if let Some(s) = &stall {
            log::warn!(
                "{}: its database has not applied entry {} for {:.0?} ({}): it does not lead until it does",
                self.name,
                s.index,
                now.duration_since(s.since),
                s.error
            );
        }
        if eligible {
            log::info!("{}: it may lead again", self.name);
        }
        let t = self.now();
        self.raft.set_eligible(t, eligible);
    }

    /// Secure mode: datagrams leave signed, and only those `guard` admits are taken.
    pub fn secure(&mut self, guard: Guard) {
        self.transport.sign_with(guard.key().clone());
        self.guard = Some(guard);
    }

    /// The node's state as it changes, for the HTTP server.
    pub fn subscribe(&self) -> watch::Receiver<Arc<NodeStatus>> {
        self.status.subscribe()
    }

    /// Node `id`'s name and HTTP address.
    fn name_of(&self, id: NodeId) -> (Arc<str>, Arc<str>) {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| (Arc::from(proto::node_name(id)), Arc::from(self.cluster.http_addr(id))))
    }

    /// Publishes the current state when it differs from the last published one. Called after
    /// every turn of the loop: the snapshot shares its text and maps with the last one.
    fn publish(&mut self) {
        let current = self.status.borrow().clone();
        let me = self.raft.id();
        let matches = self.raft.match_indexes();
        let peers = self
            .names
            .iter()
            .filter(|(&id, _)| id != me)
            .map(|(&id, (name, http))| PeerStatus {
                name: name.clone(),
                http: http.clone(),
                match_index: matches.iter().find(|(peer, _)| *peer == id).map(|&(_, index)| index),
            })
            .collect();
        let leader = self.raft.leader().map(|id| self.name_of(id));
        let accepted_by = if *current.accepted_by == *self.handshake.followers() {
            current.accepted_by.clone()
        } else {
            Arc::new(self.handshake.followers().clone())
        };
        let leader_credentials = match (self.handshake.leader_credentials(), &current.leader_credentials) {
            (Some(now), Some(then)) if **then == *now => Some(then.clone()),
            (now, _) => now.cloned().map(Arc::new),
        };
        let snapshot = NodeStatus {
            name: current.name.clone(),
            role: self.raft.role().as_str(),
            term: self.raft.term(),
            leader: leader.as_ref().map(|(name, _)| name.clone()),
            leader_http: leader.map(|(_, http)| http),
            commit_index: self.raft.commit_index(),
            applied_index: self.applier.applied(),
            last_log_index: self.raft.last_index(),
            peers,
            elections: self.elections,
            leader_changes: self.leader_changes,
            batching: self.batching,
            run_ahead: self.applier.run_ahead(),
            accepted_by,
            leader_credentials,
        };
        self.status.send_if_modified(|current| {
            let changed = **current != snapshot;
            if changed {
                *current = Arc::new(snapshot);
            }
            changed
        });
    }

    /// Microseconds since `origin`: the core's clock.
    pub fn micros(origin: Instant) -> u64 {
        origin.elapsed().as_micros() as u64
    }

    fn now(&self) -> u64 {
        Self::micros(self.origin)
    }

    /// Runs until SHUTDOWN or `signal` completes. A storage failure stops the node with an
    /// error: without durable writes it may not vote or acknowledge anything.
    pub async fn run(mut self, signal: impl Future<Output = ()>) -> Result<Stopped, StorageError> {
        tokio::pin!(signal);
        let mut buf = vec![0u8; RECV_BUFFER];
        self.handle_ready()?;
        loop {
            let raft_deadline = self.origin + Duration::from_micros(self.raft.next_deadline());
            let deadline = self.apply_due.map_or(raft_deadline, |due| due.min(raft_deadline));
            let paced = self.transport.next_paced(std::time::Instant::now());
            tokio::select! {
                received = self.transport.recv(&mut buf) => match received {
                    Ok((n, from)) => {
                        self.handle_datagram(&buf[..n], from);
                        for _ in 1..MAX_BURST {
                            if self.stop.is_some() {
                                break;
                            }
                            let Some((n, from)) = self.transport.try_recv(&mut buf) else { break };
                            self.handle_datagram(&buf[..n], from);
                        }
                    }
                    Err(e) => {
                        // ICMP errors from earlier sends surface here on Linux; nothing to do.
                        log::debug!("{}: receive error: {e}", self.name);
                    }
                },
                done = self.writer.done.recv() => match done {
                    Some(Ok(persist_id)) => self.persisted(persist_id),
                    Some(Err(e)) => return Err(e),
                    None => return Err(StorageError::WriterStopped),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let now = self.now();
                    self.raft.tick(now);
                }
                Some(proposal) = self.proposals.recv() => {
                    // Take every waiting write: they leave as one batch of entries.
                    self.propose(proposal);
                    for _ in 1..MAX_BURST {
                        let Ok(proposal) = self.proposals.try_recv() else { break };
                        self.propose(proposal);
                    }
                }
                _ = tokio::time::sleep_until(paced.map_or(deadline, Instant::from_std)), if paced.is_some() => {}
                _ = &mut signal => self.stop = Some(Stopped::Signal),
            }
            self.check_health();
            self.handle_ready()?;
            let now = std::time::Instant::now();
            self.transport.flush_paced(now);
            self.reassembler.evict_stale(now);
            let given_up = self.reassembler.take_given_up();
            if given_up > 0 && self.drops.allow() {
                log::warn!("{}: gave up {given_up} incomplete message(s): a fragment was lost", self.name);
            }
            if self.apply_due.is_some_and(|due| due <= Instant::now()) {
                self.apply(self.raft.applicable_index());
            }
            self.expire_pending();
            self.publish();
            if let Some(stopped) = self.stop.take() {
                // What was handed to the disk is written before the node stops.
                self.writer.finish();
                while let Ok(done) = self.writer.done.try_recv() {
                    self.persisted(done?);
                }
                self.hand_off(self.raft.applicable_index());
                self.applier.stop();
                return Ok(stopped);
            }
        }
    }

    fn propose(&mut self, proposal: Proposal) {
        let Proposal { command, reply } = proposal;
        let Some(command) = command else { return self.start_read(reply) };
        match self.raft.propose(Some(COMMAND_KEY.to_string()), command) {
            Ok(index) => {
                // The only write in flight: its transaction can run while it replicates (see
                // `Driver::prepare`). A node alone commits it at once.
                if self.cluster.ids().nth(1).is_some() && !self.waiting.anyone_waits() && self.stores.is_empty() {
                    self.to_prepare = Some(index);
                }
                let deadline = Instant::now() + STORE_DEADLINE;
                self.waiting.write(index, self.raft.term(), reply, deadline);
            }
            Err(ProposeError::NotLeader { leader }) => {
                let _ = reply.send(WriteResult::NotLeader { leader });
            }
            Err(e @ ProposeError::TooLarge { .. }) => {
                let _ = reply.send(WriteResult::TooLarge(e.to_string()));
            }
        }
    }

    /// Starts a linearizable read: the reads that arrive in one turn share one leadership check.
    fn start_read(&mut self, reply: oneshot::Sender<WriteResult>) {
        let id = self.waiting.next_read_id();
        match self.raft.read_index(id) {
            Ok(()) => {
                let deadline = Instant::now() + STORE_DEADLINE;
                self.waiting.read(id, self.raft.term(), reply, deadline);
            }
            Err(ProposeError::NotLeader { leader }) => {
                let _ = reply.send(WriteResult::NotLeader { leader });
            }
            Err(e) => {
                let _ = reply.send(WriteResult::TooLarge(e.to_string()));
            }
        }
    }

    fn handle_datagram(&mut self, bytes: &[u8], from: SocketAddr) {
        let (msg, request, signed) = match &mut self.guard {
            Some(guard) => match guard.admit(bytes, from, auth::clock_micros()) {
                Ok(admitted) => (admitted.msg, admitted.request, admitted.signed),
                Err(e) => return self.dropped(from, &e),
            },
            None => match Message::decode(bytes) {
                Ok((msg, request)) => (msg, request, false),
                Err(e) => return self.dropped(from, &e),
            },
        };
        if !request.is_control() {
            // Node traffic counts only from the address of the member it names.
            let named = msg.sender_name.as_deref().and_then(proto::parse_node_name);
            match named {
                Some(id) if id != self.raft.id() && self.transport.is_from(id, from) => {}
                Some(id) if id <= self.cluster.nodes && id != self.raft.id() => {
                    return self.dropped(from, &format!("{request} names node{id}, which is not at this address"));
                }
                _ => {
                    let sender = msg.sender_name.as_deref().unwrap_or("nobody");
                    let sender: String = sender.chars().take(32).collect();
                    return self.dropped(from, &format!("{request} names {sender:?}, not another member"));
                }
            }
        }
        if request == Request::Fragment {
            return self.handle_fragment(&msg, from);
        }
        self.handle_message(msg, request, from, signed);
    }

    /// A piece of a larger message; once it is complete, the message is handled like a
    /// datagram. Only Raft messages between nodes travel in pieces.
    fn handle_fragment(&mut self, piece: &Message, from: SocketAddr) {
        let done = match self.reassembler.accept(piece, std::time::Instant::now()) {
            Ok(Some(done)) => done,
            Ok(None) => return,
            Err(e) => return self.dropped(from, &e),
        };
        let limit = self.reassembler.limits().max_message_bytes;
        match Message::decode_with_limit(&done.bytes, limit) {
            Ok((msg, request)) => {
                let raft = !request.is_control()
                    && !matches!(request, Request::Fragment | Request::Accept | Request::Credentials);
                let same_sender = msg.sender_name.as_deref().and_then(proto::parse_node_name) == Some(done.sender);
                if raft && same_sender {
                    self.handle_message(msg, request, from, false);
                } else {
                    self.dropped(
                        from,
                        &format!("a reassembled {request} from node{} is not its Raft message", done.sender),
                    );
                }
            }
            Err(e) => self.dropped(from, &format!("reassembled message: {e}")),
        }
    }

    /// A message that passed the door (see [`Driver::handle_datagram`]); `signed` says whether
    /// a reply to it is signed.
    fn handle_message(&mut self, msg: Message, request: Request, from: SocketAddr, signed: bool) {
        if request.is_control() {
            return self.handle_control(&msg, request, from, signed);
        }
        if matches!(request, Request::Accept | Request::Credentials) {
            return self.handle_handshake(&msg, request);
        }
        match Msg::from_wire(msg, request) {
            Ok((peer, raft_msg)) => {
                if let Msg::Append { term, ref entries, .. } = raft_msg {
                    if entries.is_empty() {
                        log::debug!("heartbeat from node{peer} term {term}");
                    } else {
                        log::debug!("{} entries from node{peer} term {term}", entries.len());
                    }
                }
                let from_leader = matches!(raft_msg, Msg::Append { .. });
                let now = self.now();
                self.raft.step(now, peer, raft_msg);
                // A follower without its leader's credentials asks again with each heartbeat.
                let leader_name = proto::node_name(peer);
                let term = self.raft.term();
                if from_leader
                    && self.raft.role() == Role::Follower
                    && self.raft.leader() == Some(peer)
                    && self.handshake.needs_accept(&leader_name, term)
                {
                    let accept = self.handshake.accept(term);
                    self.transport.send_to_node(peer, &accept.encode());
                }
            }
            Err(e) => self.dropped(from, &e),
        }
    }

    fn handle_handshake(&mut self, msg: &Message, request: Request) {
        // The door let it in: it names a member and comes from that member's address.
        let Some(peer) = msg.sender_name.as_deref().and_then(proto::parse_node_name) else { return };
        let reply = match request {
            Request::Accept => self.handshake.on_accept(msg.term),
            _ => {
                let leader = self.raft.leader().map(proto::node_name);
                self.handshake.on_credentials(msg, (self.raft.term(), leader.as_deref()))
            }
        };
        if let Some(reply) = reply {
            self.transport.send_to_node(peer, &reply.encode());
        }
    }

    fn dropped(&mut self, from: SocketAddr, reason: &dyn std::fmt::Display) {
        if self.drops.allow() {
            log::warn!("{}: dropped datagram from {from}: {reason}", self.name);
        }
    }

    fn handle_control(&mut self, msg: &Message, request: Request, from: SocketAddr, signed: bool) {
        let now = self.now();
        match request {
            Request::ConvertFollower => {
                log::info!("{}: CONVERT_FOLLOWER from {from}", self.name);
                self.raft.convert_follower(now);
            }
            Request::Timeout => {
                log::info!("{}: TIMEOUT from {from}: starting an election", self.name);
                self.raft.timeout_now(now);
            }
            Request::Shutdown => {
                log::info!("{}: SHUTDOWN from {from}", self.name);
                self.stop = Some(Stopped::Shutdown);
            }
            Request::LeaderInfo => self.reply_leader_info(from, signed),
            Request::Store => self.store(msg, from, signed),
            Request::Retrieve => {
                if self.raft.role() == Role::Leader {
                    self.reply_retrieve(from, signed);
                } else {
                    self.reply_leader_info(from, signed);
                }
            }
            _ => unreachable!("is_control() covers the control requests"),
        }
    }

    /// Answers a control request at its source address; signed when the request was.
    fn reply(&mut self, to: SocketAddr, msg: &Message, signed: bool) {
        self.transport.send_reply(to, &msg.encode(), signed);
    }

    fn leader_info(&self) -> Message {
        let mut reply = Message::new(self.name.clone(), Request::LeaderInfo, Some(self.raft.term()));
        reply.key = Some(KEY_LEADER.into());
        reply.value = self.raft.leader().map_or(Value::Null, |id| Value::String(proto::node_name(id)));
        reply
    }

    fn reply_leader_info(&mut self, to: SocketAddr, signed: bool) {
        let reply = self.leader_info();
        self.reply(to, &reply, signed);
    }

    fn store_reply(&self, key: Option<String>, value: Value, success: bool) -> Message {
        let mut reply = Message::new(self.name.clone(), Request::Store, Some(self.raft.term()));
        reply.key = key;
        reply.value = value;
        reply.success = Some(success);
        reply
    }

    fn store(&mut self, msg: &Message, from: SocketAddr, signed: bool) {
        if self.raft.role() != Role::Leader {
            return self.reply_leader_info(from, signed);
        }
        let Some(key) = msg.key.clone() else {
            let reply = self.store_reply(None, Value::String("STORE needs a key".into()), false);
            return self.reply(from, &reply, signed);
        };
        match self.raft.propose(Some(key.clone()), &msg.value) {
            Ok(index) => {
                let pending = PendingStore {
                    term: self.raft.term(),
                    reply_to: from,
                    signed,
                    key,
                    value: msg.value.clone(),
                    deadline: Instant::now() + STORE_DEADLINE,
                };
                self.stores.insert(index, pending);
            }
            Err(ProposeError::NotLeader { .. }) => self.reply_leader_info(from, signed),
            Err(e @ ProposeError::TooLarge { .. }) => {
                let reply = self.store_reply(Some(key), Value::String(e.to_string()), false);
                self.reply(from, &reply, signed);
            }
        }
    }

    /// The committed log, without the leaders' no-ops and read barriers, newest entries first
    /// when it does not fit one datagram.
    fn reply_retrieve(&mut self, to: SocketAddr, signed: bool) {
        let committed = self.raft.log().slice(1, self.raft.commit_index());
        let user: Vec<&LogEntry> =
            committed.iter().filter(|e| !e.is_noop() && e.key.as_deref() != Some(BARRIER_KEY)).collect();
        let mut reply = Message::new(self.name.clone(), Request::Retrieve, Some(self.raft.term()));
        reply.key = Some(KEY_COMMITED_LOGS.into());
        let (shown, too_large) = newest_that_fit(&user, MAX_DATAGRAM - 512, |e| super::raft::encoded_size(e) + 1);
        if shown.len() < user.len() {
            log::warn!(
                "{}: RETRIEVE reply holds {} of {} committed entries (datagram limit; {} alone larger than a datagram)",
                self.name,
                shown.len(),
                user.len(),
                too_large
            );
        }
        reply.value = serde_json::to_value(&shown).unwrap_or(Value::Null);
        self.reply(to, &reply, signed);
    }

    /// Persist, then send, then apply: the order that makes votes and acknowledgements durable.
    ///
    /// Persisting hands the write to the log writer, with the `Ready`'s messages behind it: the
    /// writer sends them once the write is on disk. So do those of any later `Ready` while a
    /// write is on its way, so that nothing leaves that speaks of state the disk may not hold
    /// yet.
    ///
    /// One exception: a leader's AppendEntries leave at once, before its own copy of their
    /// entries is on disk, so the leader's fsync overlaps the followers' (Raft thesis
    /// §10.2.1). That is safe: the core counts the leader's own copy towards a majority only
    /// once it is on disk, and applies nothing before. A `Ready` that changes the term or vote
    /// sends nothing early, and a leader's term and vote are on disk before anything goes out
    /// in it (it was elected by votes that answered requests sent after they were written).
    fn handle_ready(&mut self) -> Result<(), StorageError> {
        while self.raft.has_ready() {
            let ready = self.raft.take_ready();
            let mut messages = ready.messages;
            if ready.hard_state.is_none() {
                let appends;
                (appends, messages) = messages.into_iter().partition(|(_, m)| matches!(m, Msg::Append { .. }));
                self.send(appends);
                if ready.persist_from.is_some() {
                    self.prepare();
                }
            }
            if let Some(persist_id) = ready.persist_id {
                let last = self.raft.last_index();
                let entries = ready.persist_from.map(|from| (from, self.raft.log().slice(from, last).to_vec()));
                if let Some((_, written)) = entries.as_ref().filter(|(_, e)| !e.is_empty()) {
                    self.batching.log_writes += 1;
                    self.batching.log_entries += written.len() as u64;
                }
                let then = self.addressed(messages);
                if !self.writer.write(Write { persist_id, hard_state: ready.hard_state, entries }, then) {
                    return Err(self.writer_failure());
                }
                self.writes_handed = persist_id;
            } else if self.writes_done < self.writes_handed {
                let then = self.addressed(messages);
                if !then.is_empty() && !self.writer.send_after(then) {
                    return Err(self.writer_failure());
                }
            } else {
                self.send(messages);
            }
            for event in ready.events {
                let Event::RoleChanged { role, term, leader } = event;
                if role == Role::Candidate {
                    self.elections += 1;
                }
                if role == Role::Leader {
                    self.handshake.became_leader(term);
                } else {
                    self.handshake.stepped_down();
                    self.to_prepare = None;
                    self.applier.abandon_prepared();
                }
                // Writes fail at once (503) rather than when they time out; their clients may
                // retry with the same idempotency key, whether or not a newer leader commits
                // the entries.
                answer_failures(self.waiting.role_changed(role, term));
                if leader.is_some() && leader != self.last_leader {
                    self.leader_changes += 1;
                }
                if leader.is_some() {
                    self.last_leader = leader;
                }
                match (role, leader) {
                    (Role::Leader, _) => log::info!("{} is LEADER for term {term}", self.name),
                    (Role::Follower, Some(l)) => {
                        log::info!("{} is FOLLOWER for term {term}, leader node{l}", self.name)
                    }
                    (role, _) => log::info!("{} is {role} for term {term}", self.name),
                }
            }
            for read in ready.reads {
                self.waiting.confirmed(read.id, read.index);
            }
            self.apply(ready.commit_index);
        }
        Ok(())
    }

    /// Why the log writer stopped: the error it reported (a full disk, say), which may still
    /// wait behind reports of writes done.
    fn writer_failure(&mut self) -> StorageError {
        while let Ok(report) = self.writer.done.try_recv() {
            if let Err(e) = report {
                return e;
            }
        }
        StorageError::WriterStopped
    }

    /// The log writer has written everything up to the write numbered `persist_id` (and sent
    /// what waited for it): the core counts it as on disk.
    fn persisted(&mut self, persist_id: u64) {
        self.writes_done = persist_id;
        self.raft.persisted(persist_id);
    }

    /// Hands the entry chosen in [`Driver::propose`] to the applier to run ahead of its commit,
    /// once its AppendEntries are on their way: the transaction runs while the entry
    /// replicates, on cores the Raft work leaves idle, and the client is answered as soon as
    /// the entry commits. Only the next entry to apply, while it is not committed yet.
    fn prepare(&mut self) {
        let Some(index) = self.to_prepare.take() else { return };
        let next = self.handed_off + 1 == index && self.raft.commit_index() < index;
        if !next || self.raft.role() != Role::Leader {
            return;
        }
        let (Some(entry), Some(term)) = (self.raft.log().get(index), self.raft.log().term(index)) else { return };
        self.applier.prepare(ApplyItem { index, term, entry: entry.clone(), waiter: None });
    }

    /// Raft messages as datagrams ready for the log writer to send (fragments too, unpaced:
    /// what waits for a write is votes and acknowledgements, far smaller than a datagram).
    fn addressed(&mut self, messages: Vec<(NodeId, Msg)>) -> Datagrams {
        let mut out = Datagrams::new();
        for (to, msg) in messages {
            self.count_sent(&msg);
            for datagram in self.encode(&msg) {
                out.extend(self.transport.addressed(to, &datagram));
            }
        }
        out
    }

    fn count_sent(&mut self, msg: &Msg) {
        if let Msg::Append { entries, .. } = msg {
            if !entries.is_empty() {
                self.batching.append_messages += 1;
                self.batching.append_entries += entries.len() as u64;
            }
        }
    }

    /// A message's datagram, or its fragments when it is larger than a datagram.
    fn encode(&mut self, msg: &Msg) -> Vec<Vec<u8>> {
        let bytes = msg.to_wire(self.raft.id()).encode();
        // Room for the MAC of secure mode, so both modes cut messages alike.
        if bytes.len() > MAX_DATAGRAM - auth::SEAL_ROOM {
            self.fragmenter.split(Some(msg.term()), &bytes)
        } else {
            vec![bytes]
        }
    }

    /// Sends Raft messages; consecutive equal messages (new entries for every follower that
    /// is caught up) are encoded, and cut into fragments when larger than a datagram, once.
    fn send(&mut self, messages: Vec<(NodeId, Msg)>) {
        let mut encoded: Option<(Msg, Vec<Vec<u8>>)> = None;
        for (to, msg) in messages {
            self.count_sent(&msg);
            if !encoded.as_ref().is_some_and(|(last, _)| *last == msg) {
                let datagrams = self.encode(&msg);
                encoded = Some((msg, datagrams));
            }
            let Some((_, datagrams)) = &encoded else { continue };
            match datagrams.as_slice() {
                [one] => self.transport.send_to_node(to, one),
                fragments => self.transport.send_paced(to, fragments),
            }
        }
    }

    /// Hands committed entries to the applier in order, and answers the STOREs they complete:
    /// at once on the leader (requests wait on them), in batches on a follower.
    fn apply(&mut self, commit: u64) {
        let waited_on = self.raft.role() == Role::Leader || self.waiting.anyone_waits() || !self.stores.is_empty();
        if self.handed_off < commit && !waited_on {
            let now = Instant::now();
            let due = *self.apply_due.get_or_insert(now + FOLLOWER_APPLY_DELAY);
            if now < due && commit - self.handed_off < FOLLOWER_APPLY_BATCH {
                return;
            }
        }
        self.hand_off(commit);
    }

    fn hand_off(&mut self, commit: u64) {
        self.apply_due = None;
        let mut items = Vec::new();
        while self.handed_off < commit {
            self.handed_off += 1;
            let index = self.handed_off;
            let term = self.raft.log().term(index).unwrap_or(0);
            let waiter = match self.waiting.handed_off(index, term) {
                Some(Ok(reply)) => Some(reply),
                Some(Err(failed)) => {
                    answer_failures([failed]);
                    None
                }
                None => None,
            };
            if let Some(entry) = self.raft.log().get(index) {
                items.push(ApplyItem { index, term, entry: entry.clone(), waiter });
            }
            if let Some(p) = self.stores.remove(&index) {
                let ok = p.term == term;
                let value = if ok { p.value } else { Value::String("lost leadership before commit".into()) };
                let reply = self.store_reply(Some(p.key), value, ok);
                self.reply(p.reply_to, &reply, p.signed);
            }
        }
        self.applier.apply(items);
        // Reads whose read index is handed over run once the applier has got that far.
        for reply in self.waiting.readable_up_to(self.handed_off) {
            self.applier.push_read(reply);
        }
    }

    /// Fails STOREs and HTTP writes that have not committed in time (e.g. the leader lost its
    /// majority).
    fn expire_pending(&mut self) {
        let now = Instant::now();
        answer_failures(self.waiting.expire(now));
        if self.stores.is_empty() {
            return;
        }
        let expired: Vec<u64> = self.stores.iter().filter(|(_, p)| p.deadline <= now).map(|(&i, _)| i).collect();
        for index in expired {
            if let Some(p) = self.stores.remove(&index) {
                let reply = self.store_reply(Some(p.key), Value::String("not committed in time".into()), false);
                self.reply(p.reply_to, &reply, p.signed);
            }
        }
    }
}

/// Tells the clients of failed requests why.
fn answer_failures(failed: impl IntoIterator<Item = (oneshot::Sender<WriteResult>, Failure)>) {
    for (reply, failure) in failed {
        let _ = reply.send(match failure {
            Failure::LostLeadership => WriteResult::LostLeadership,
            Failure::SteppedDown => WriteResult::SteppedDown,
            Failure::Timeout => WriteResult::Timeout,
        });
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stopped::Shutdown => "SHUTDOWN",
            Stopped::Signal => "signal",
        })
    }
}

/// The newest items of `items` (kept in log order) whose sizes add up to at most `budget`,
/// and how many were left out because one alone is larger than `budget`: a RETRIEVE reply
/// skips an entry that could never fit a datagram (an uploaded file) and goes on with older ones.
fn newest_that_fit<T: Copy>(items: &[T], budget: usize, size: impl Fn(T) -> usize) -> (Vec<T>, usize) {
    let (mut shown, mut used, mut too_large) = (Vec::new(), 0, 0);
    for &item in items.iter().rev() {
        let n = size(item);
        if n > budget {
            too_large += 1;
            continue;
        }
        if used + n > budget {
            break;
        }
        used += n;
        shown.push(item);
    }
    shown.reverse();
    (shown, too_large)
}

#[cfg(test)]
mod tests {
    use super::{newest_that_fit, DiskWatch, DISK_REST, DISK_SLOW_WRITE, HEALTH_CHECK};

    #[test]
    fn a_leader_outrun_by_its_followers_disks_hands_over_and_rests() {
        let start = std::time::Instant::now();
        let at = |check: u32| start + HEALTH_CHECK * check;
        let mut watch = DiskWatch::default();
        // A stall of 2.4 s (24 checks) in a 3 s window: it keeps its lead.
        let slow = DISK_SLOW_WRITE;
        for t in 0..24 {
            assert_eq!(watch.check(at(t), true, 10 + t as u64, 10, slow * (t + 1)), (true, false), "check {t}");
        }
        for t in 24..40 {
            assert_eq!(watch.check(at(t), true, 30, 30, slow / 10), (true, false), "check {t}");
        }
        // A follower is never held to it.
        for t in 40..70 {
            assert_eq!(watch.check(at(t), false, 40, 30, slow * 2), (true, false), "check {t}");
        }
        // Nor is a leader whose disk is quick, however often the followers' come first.
        for t in 70..100 {
            assert_eq!(watch.check(at(t), true, 50, 49, slow / 2), (true, false), "check {t}");
        }
        // A disk that stays slow: the leader hands over at the 25th such check of 30.
        let mut handed = None;
        for t in 100..140 {
            let (ok, now) = watch.check(at(t), true, 100 + t as u64, 100, slow);
            if now {
                handed = Some(t);
            }
            assert_eq!(ok, handed.is_none(), "check {t}");
        }
        assert_eq!(handed, Some(124));
        // It rests for DISK_REST, then may lead again.
        let rest_checks = (DISK_REST.as_millis() / HEALTH_CHECK.as_millis()) as u32;
        assert_eq!(watch.check(at(124 + rest_checks - 1), false, 200, 200, slow), (false, false));
        assert_eq!(watch.check(at(124 + rest_checks), false, 200, 200, slow), (true, false));
    }

    #[test]
    fn retrieve_skips_entries_larger_than_a_datagram_and_keeps_the_newest_that_fit() {
        let sizes = [10, 20, 500, 30, 40];
        assert_eq!(newest_that_fit(&sizes, 90, |n| n), (vec![20, 30, 40], 1));
        assert_eq!(newest_that_fit(&sizes, 60, |n| n), (vec![40], 0));
        assert_eq!(newest_that_fit(&[500, 600], 100, |n| n), (vec![], 2));
        assert_eq!(newest_that_fit(&[1, 2, 3], 100, |n| n), (vec![1, 2, 3], 0));
    }
}
