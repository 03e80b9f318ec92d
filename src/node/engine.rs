//! What a node does with each of its inputs: a datagram, a client's write or read, a timer,
//! a write done by the disk. The node's whole protocol logic around the Raft core, with no
//! socket, clock, disk or database of its own.
//!
//! The [`Engine`] owns the core and everything that decides what the node says and answers:
//! which datagrams it takes ([`Engine::datagram`]: the signature check of secure mode, the
//! member's address, fragments put together again, the controller's requests and the leader's
//! handshake), the core's `Ready` handled as persist → send → apply, the clients' writes and
//! reads waiting on the core ([`Waiting`]), the controller's STOREs, and when committed entries
//! go to the database. What it does to the world goes through [`Io`]: datagrams out, writes to
//! the log, entries and reads to the applier, answers to clients. Time comes in with every
//! call, as microseconds since the node started (the core's clock).
//!
//! The node's loop ([`super::driver`]) implements [`Io`] with its UDP socket, log writer
//! thread and database applier; the Raft simulation (`tests/sim`) implements it with a
//! simulated network, a simulated disk under the node's real log code, and a state machine of
//! its own, so that what it checks is what this code decides.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::apply::{ApplyItem, WriteResult, BARRIER_KEY, COMMAND_KEY};
use super::guard::Guard;
use super::handshake::Handshake;
use super::log_writer::Write;
use super::raft::{EntryValue, Event, LogEntry, Micros, Msg, NodeId, Offer, ProposeError, Raft, Ready, Role};
use super::status::Batching;
use super::storage::Base;
use super::transfer::{self, Receiving, Sending, SnapshotInfo};
use super::transport::RateLimited;
use super::waiting::{Failure, Waiting};
use crate::config::Cluster;
use crate::proto::auth;
use crate::proto::fragment::{Fragmenter, Limits, Reassembler};
use crate::proto::{self, Message, Request, KEY_COMMITED_LOGS, KEY_LEADER, MAX_DATAGRAM};

/// How long a STORE, a client's write or a linearizable read waits before it fails.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Room beside the largest entry in the largest message a node accepts.
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// A follower hands committed entries to its applier in batches: once this many wait, or
/// once the oldest has waited this long. Nobody waits on a follower's apply (writes and
/// strong reads are the leader's), and one transaction and one wake-up per batch instead
/// of per entry leave the CPU to the leader and the followers' acknowledgements.
const FOLLOWER_APPLY_BATCH: u64 = 256;
const FOLLOWER_APPLY_DELAY: Duration = Duration::from_millis(10);

/// What a controller's RETRIEVE shows at most: the committed entries that fit one datagram.
const RETRIEVE_BUDGET: usize = MAX_DATAGRAM - 512;

/// When the log is compacted: once the state machine holds, on its disk, `every_entries`
/// entries (or `every_bytes` of them) beyond the log's base and the tail kept, the log is cut
/// to its last `keep_entries` entries before that point. The tail serves followers a little
/// behind with entries; one further behind gets a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    pub every_entries: u64,
    pub every_bytes: u64,
    pub keep_entries: u64,
}

impl Default for Compaction {
    /// etcd snapshots every 10,000 entries and keeps 5,000 for followers catching up.
    fn default() -> Compaction {
        Compaction { every_entries: 10_000, every_bytes: 64 * 1024 * 1024, keep_entries: 5_000 }
    }
}

/// Why the node stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// A controller sent SHUTDOWN.
    Shutdown,
    /// SIGINT or SIGTERM.
    Signal,
}

/// The log writer stopped taking writes (its error says why): the node must stop, since
/// without durable writes it may not vote or acknowledge anything.
#[derive(Debug, PartialEq, Eq)]
pub struct WriterStopped;

/// Datagrams for members, as the engine encoded them.
pub type Outgoing = Vec<(NodeId, Vec<u8>)>;

/// What the engine does to the world. `R` is where a client's answer goes.
pub trait Io<R> {
    /// Wall-clock microseconds since the Unix epoch: secure mode's replay window.
    fn wall_micros(&mut self) -> u64;
    /// Whether a datagram from `from` comes from member `id`'s address.
    fn is_from(&mut self, id: NodeId, from: SocketAddr) -> bool;
    /// Sends one datagram to member `id` now.
    fn send(&mut self, to: NodeId, datagram: &[u8]);
    /// Sends the fragments of one message to member `id`, paced.
    fn send_paced(&mut self, to: NodeId, fragments: &[Vec<u8>]);
    /// Answers a controller's request at its source; signed when the request was.
    fn reply(&mut self, to: SocketAddr, datagram: &[u8], signed: bool);
    /// Hands `write` to the log, with datagrams that leave once it (and every write before
    /// it) is on disk; false when the log takes no more writes.
    fn write(&mut self, write: Write, then: Outgoing) -> bool;
    /// Datagrams that leave once every write handed over so far is on disk; false when the
    /// log takes no more writes.
    fn send_after(&mut self, then: Outgoing) -> bool;
    /// Committed entries for the database, in order, with the writes that wait on them.
    fn apply(&mut self, items: Vec<ApplyItem<R>>);
    /// The leader's newest entry, to run in a transaction while it replicates: it is the next
    /// to apply, and is applied (or abandoned) before anything after it.
    fn prepare(&mut self, item: ApplyItem<R>);
    /// The prepared entry will not commit in this leadership: roll its transaction back.
    fn abandon_prepared(&mut self);
    /// A linearizable read may run once everything handed to [`Io::apply`] so far is applied.
    fn read(&mut self, reply: R);
    /// Answers a client's write or read now (it failed, or cannot be taken).
    fn answer(&mut self, reply: R, result: WriteResult);
    /// Leader: makes a snapshot of the state machine as it is now, after everything handed to
    /// [`Io::apply`]; its info comes back through [`Engine::snapshot_made`] (or why it cannot
    /// be asked now).
    fn make_snapshot(&mut self) -> Result<(), String>;
    /// Leader: `len` bytes from `offset` of the snapshot `info` it made.
    fn read_snapshot(&mut self, info: &SnapshotInfo, offset: u64, len: usize) -> Result<Vec<u8>, String>;
    /// Follower: a transfer of `info` starts; how many of its bytes are held already (from a
    /// transfer of the same snapshot cut short). Any other partial snapshot is thrown away.
    fn begin_snapshot(&mut self, info: &SnapshotInfo) -> u64;
    /// Follower: stores bytes of the snapshot being received, at `offset` (pieces may come in
    /// any order; each is written once). With them, the bytes from the start are held without
    /// a gap up to `held`: what [`Io::begin_snapshot`] may say of this snapshot later.
    fn write_snapshot(&mut self, info: &SnapshotInfo, offset: u64, bytes: &[u8], held: u64) -> Result<(), String>;
    /// Follower: every byte of `info` is here: check it and load it into the state machine,
    /// after everything handed to [`Io::apply`]. The outcome comes back through
    /// [`Engine::snapshot_loaded`]; a snapshot that fails its checks is thrown away.
    fn load_snapshot(&mut self, info: &SnapshotInfo);
    /// Sees each `Ready` of the core before the engine handles it (for the simulation's checks).
    fn observe(&mut self, _raft: &Raft, _ready: &Ready) {}
}

/// A STORE waiting for its entry to commit.
struct PendingStore {
    term: u64,
    reply_to: SocketAddr,
    /// The request was signed: so is the reply.
    signed: bool,
    key: String,
    value: Value,
    deadline: Micros,
}

/// One node's protocol state; see the module's documentation.
pub struct Engine<R> {
    name: String,
    raft: Raft,
    cluster: Cluster,
    /// Time zero of the core's clock, for the parts that count in `Instant`s.
    origin: std::time::Instant,
    /// The number of the latest write handed to the log, and of the latest it has reported
    /// done: while they differ, what the node sends waits for the log.
    writes_handed: u64,
    writes_done: u64,
    /// Committed entries up to here are handed to the applier (and their STOREs answered).
    handed_off: u64,
    /// The newest entries compacted away that RETRIEVE still shows (see [`Base::retained`]).
    retained: Vec<LogEntry>,
    /// A follower's committed entries not handed over yet are handed over by then.
    apply_due: Option<Micros>,
    /// Controller STOREs waiting for their entries to commit, by index.
    stores: BTreeMap<u64, PendingStore>,
    drops: RateLimited,
    stop: Option<Stopped>,
    elections: u64,
    leader_changes: u64,
    batching: Batching,
    last_leader: Option<NodeId>,
    /// Clients' writes and linearizable reads waiting on the core.
    waiting: Waiting<R, Micros>,
    /// This leader's new entry to run on the applier's preparing thread while it replicates.
    to_prepare: Option<u64>,
    handshake: Handshake,
    fragmenter: Fragmenter,
    reassembler: Reassembler,
    /// Secure mode: what the node takes, by the cluster secret.
    guard: Option<Guard>,
    /// When the log is compacted; never when None.
    compaction: Option<Compaction>,
    /// The state machine holds the log up to here on its disk.
    state_durable: u64,
    /// Leader: the snapshot made for followers, with what RETRIEVE shows up to its index.
    snapshot: Option<(SnapshotInfo, Vec<LogEntry>)>,
    /// Leader: a snapshot is being made.
    making_snapshot: bool,
    /// Leader: snapshots on their way to followers.
    sending: BTreeMap<NodeId, Sending>,
    /// Follower: the snapshot on its way here.
    receiving: Option<Receiving>,
}

impl<R> Engine<R> {
    /// An engine for `raft`, a member of `cluster`. `origin` is time zero of the core's
    /// clock; `seed` makes the fragments' message ids.
    pub fn new(raft: Raft, cluster: Cluster, origin: std::time::Instant, seed: u64) -> Engine<R> {
        let name = proto::node_name(raft.id());
        let handshake = Handshake::new(name.clone(), cluster.http_addr(raft.id()));
        let fragmenter = Fragmenter::new(name.clone(), seed);
        let reassembler = Reassembler::new(Limits::for_messages_of(Self::largest_message(&raft)));
        // The state machine holds everything up to the log's base.
        let handed_off = raft.log().base().0;
        Engine {
            name,
            raft,
            cluster,
            origin,
            writes_handed: 0,
            writes_done: 0,
            handed_off,
            retained: Vec::new(),
            apply_due: None,
            stores: BTreeMap::new(),
            drops: RateLimited::new(10),
            stop: None,
            elections: 0,
            leader_changes: 0,
            batching: Batching::default(),
            last_leader: None,
            waiting: Waiting::default(),
            to_prepare: None,
            handshake,
            fragmenter,
            reassembler,
            guard: None,
            compaction: None,
            state_durable: handed_off,
            snapshot: None,
            making_snapshot: false,
            sending: BTreeMap::new(),
            receiving: None,
        }
    }

    /// Compacts the log as `compaction` says, or never.
    pub fn set_compaction(&mut self, compaction: Option<Compaction>) {
        self.compaction = compaction;
    }

    /// The state machine holds the log up to `index` on its disk: the log before it may go.
    pub fn state_durable(&mut self, index: u64) {
        self.state_durable = self.state_durable.max(index);
    }

    /// The largest message the node accepts: its largest entry or batch, and room for the rest.
    pub fn largest_message(raft: &Raft) -> usize {
        let cfg = raft.config();
        cfg.max_entry_bytes.max(cfg.max_batch_bytes) + MESSAGE_OVERHEAD
    }

    /// The entries compacted away that RETRIEVE still shows, as the log's storage kept them.
    pub fn restore_retained(&mut self, retained: Vec<LogEntry>) {
        self.retained = retained;
    }

    /// Secure mode: only the datagrams `guard` admits are taken.
    pub fn secure(&mut self, guard: Guard) {
        self.guard = Some(guard);
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    /// Elections this node started, and the leader changes it saw.
    pub fn elections(&self) -> (u64, u64) {
        (self.elections, self.leader_changes)
    }

    pub fn batching(&self) -> Batching {
        self.batching
    }

    /// Whether a controller's SHUTDOWN came in this turn.
    pub fn stopping(&self) -> bool {
        self.stop.is_some()
    }

    /// When the engine must next be given [`Engine::tick`]: the core's next timer, or a
    /// follower's batch of committed entries due.
    pub fn next_deadline(&self) -> Micros {
        let raft = self.raft.next_deadline();
        self.apply_due.map_or(raft, |due| due.min(raft))
    }

    /// Time passed: the core's timers that are due fire.
    pub fn tick(&mut self, now: Micros) {
        self.raft.tick(now);
    }

    /// Whether the node may lead and stand for election (its database applies, its disk
    /// keeps up).
    pub fn set_eligible(&mut self, now: Micros, eligible: bool) {
        self.raft.set_eligible(now, eligible);
    }

    /// The log has written everything up to the write numbered `persist_id` (and sent what
    /// waited for it): the core counts it as on disk.
    pub fn persisted(&mut self, persist_id: u64) {
        self.writes_done = persist_id;
        self.raft.persisted(persist_id);
    }

    /// What a turn of the node's loop ends with, after its inputs: the core's `Ready`
    /// handled, incomplete messages given up, a follower's due batch applied, requests past
    /// their deadline failed. Returns why the node stops, when a controller said so.
    pub fn end_turn(&mut self, now: Micros, io: &mut impl Io<R>) -> Result<Option<Stopped>, WriterStopped> {
        self.maybe_compact();
        self.transfers_turn(now, io);
        self.handle_ready(now, io)?;
        self.reassembler.evict_stale(self.instant(now));
        let given_up = self.reassembler.take_given_up();
        if given_up > 0 && self.drops.allow() {
            log::warn!("{}: gave up {given_up} incomplete message(s): a fragment was lost", self.name);
        }
        if self.apply_due.is_some_and(|due| due <= now) {
            self.apply(now, self.raft.applicable_index(), io);
        }
        self.expire_pending(now, io);
        Ok(self.stop.take())
    }

    /// The node stops: what is committed and on disk goes to the applier.
    pub fn finish(&mut self, io: &mut impl Io<R>) {
        self.hand_off(self.raft.applicable_index(), io);
    }

    fn instant(&self, now: Micros) -> std::time::Instant {
        self.origin + Duration::from_micros(now)
    }

    fn deadline(now: Micros) -> Micros {
        now + REQUEST_DEADLINE.as_micros() as u64
    }

    /// A client's write of `command`; the entry's index once the core has taken it. When it
    /// cannot take it, the client is answered at once with why.
    pub fn write(
        &mut self,
        now: Micros,
        command: EntryValue,
        reply: R,
        io: &mut impl Io<R>,
    ) -> Result<u64, ProposeError> {
        match self.raft.propose(Some(COMMAND_KEY.to_string()), command) {
            Ok(index) => {
                // The only write in flight: its transaction can run while it replicates (see
                // `Engine::prepare`). A node alone commits it at once.
                if self.cluster.ids().nth(1).is_some() && !self.waiting.anyone_waits() && self.stores.is_empty() {
                    self.to_prepare = Some(index);
                }
                self.waiting.write(index, self.raft.term(), reply, Self::deadline(now));
                Ok(index)
            }
            Err(e) => {
                io.answer(reply, refusal(&e));
                Err(e)
            }
        }
    }

    /// A client's linearizable read: the reads that arrive in one turn share one leadership
    /// check. The read's id once the core has taken it; otherwise the client is answered at
    /// once with why.
    pub fn read(&mut self, now: Micros, reply: R, io: &mut impl Io<R>) -> Result<u64, ProposeError> {
        let id = self.waiting.next_read_id();
        match self.raft.read_index(id) {
            Ok(()) => {
                self.waiting.read(id, self.raft.term(), reply, Self::deadline(now));
                Ok(id)
            }
            Err(e) => {
                io.answer(reply, refusal(&e));
                Err(e)
            }
        }
    }

    /// A datagram from `from`.
    pub fn datagram(&mut self, now: Micros, bytes: &[u8], from: SocketAddr, io: &mut impl Io<R>) {
        let (msg, request, signed) = match &mut self.guard {
            Some(guard) => match guard.admit(bytes, from, io.wall_micros()) {
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
                Some(id) if id != self.raft.id() && io.is_from(id, from) => {}
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
            return self.handle_fragment(now, &msg, from, io);
        }
        self.handle_message(now, msg, request, from, signed, io);
    }

    /// A piece of a larger message; once it is complete, the message is handled like a
    /// datagram. Only Raft messages between nodes travel in pieces.
    fn handle_fragment(&mut self, now: Micros, piece: &Message, from: SocketAddr, io: &mut impl Io<R>) {
        let done = match self.reassembler.accept(piece, self.instant(now)) {
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
                    self.handle_message(now, msg, request, from, false, io);
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

    /// A message that passed the door (see [`Engine::datagram`]); `signed` says whether a
    /// reply to it is signed.
    fn handle_message(
        &mut self,
        now: Micros,
        msg: Message,
        request: Request,
        from: SocketAddr,
        signed: bool,
        io: &mut impl Io<R>,
    ) {
        if request.is_control() {
            return self.handle_control(now, &msg, request, from, signed, io);
        }
        if matches!(request, Request::Accept | Request::Credentials) {
            return self.handle_handshake(&msg, request, io);
        }
        if matches!(request, Request::Snapshot | Request::SnapshotAck) {
            let Some(peer) = msg.sender_name.as_deref().and_then(proto::parse_node_name) else { return };
            let read = if request == Request::Snapshot {
                transfer::read_piece(msg).map(|piece| self.on_piece(now, peer, piece, io))
            } else {
                transfer::read_ack(msg).map(|ack| self.on_ack(now, peer, ack, io))
            };
            if let Err(e) = read {
                self.dropped(from, &e);
            }
            return;
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
                    io.send(peer, &accept.encode());
                }
            }
            Err(e) => self.dropped(from, &e),
        }
    }

    fn handle_handshake(&mut self, msg: &Message, request: Request, io: &mut impl Io<R>) {
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
            io.send(peer, &reply.encode());
        }
    }

    fn dropped(&mut self, from: SocketAddr, reason: &dyn std::fmt::Display) {
        if self.drops.allow() {
            log::warn!("{}: dropped datagram from {from}: {reason}", self.name);
        }
    }

    fn handle_control(
        &mut self,
        now: Micros,
        msg: &Message,
        request: Request,
        from: SocketAddr,
        signed: bool,
        io: &mut impl Io<R>,
    ) {
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
            Request::LeaderInfo => self.reply_leader_info(from, signed, io),
            Request::Store => self.store(now, msg, from, signed, io),
            Request::Retrieve => {
                if self.raft.role() == Role::Leader {
                    self.reply_retrieve(from, signed, io);
                } else {
                    self.reply_leader_info(from, signed, io);
                }
            }
            _ => unreachable!("is_control() covers the control requests"),
        }
    }

    fn leader_info(&self) -> Message {
        let mut reply = Message::new(self.name.clone(), Request::LeaderInfo, Some(self.raft.term()));
        reply.key = Some(KEY_LEADER.into());
        reply.value = self.raft.leader().map_or(Value::Null, |id| Value::String(proto::node_name(id)));
        reply
    }

    fn reply_leader_info(&mut self, to: SocketAddr, signed: bool, io: &mut impl Io<R>) {
        io.reply(to, &self.leader_info().encode(), signed);
    }

    fn store_reply(&self, key: Option<String>, value: Value, success: bool) -> Message {
        let mut reply = Message::new(self.name.clone(), Request::Store, Some(self.raft.term()));
        reply.key = key;
        reply.value = value;
        reply.success = Some(success);
        reply
    }

    fn store(&mut self, now: Micros, msg: &Message, from: SocketAddr, signed: bool, io: &mut impl Io<R>) {
        if self.raft.role() != Role::Leader {
            return self.reply_leader_info(from, signed, io);
        }
        let Some(key) = msg.key.clone() else {
            let reply = self.store_reply(None, Value::String("STORE needs a key".into()), false);
            return io.reply(from, &reply.encode(), signed);
        };
        match self.raft.propose(Some(key.clone()), &msg.value) {
            Ok(index) => {
                let pending = PendingStore {
                    term: self.raft.term(),
                    reply_to: from,
                    signed,
                    key,
                    value: msg.value.clone(),
                    deadline: Self::deadline(now),
                };
                self.stores.insert(index, pending);
            }
            Err(ProposeError::NotLeader { .. }) => self.reply_leader_info(from, signed, io),
            Err(e @ ProposeError::TooLarge { .. }) => {
                let reply = self.store_reply(Some(key), Value::String(e.to_string()), false);
                io.reply(from, &reply.encode(), signed);
            }
        }
    }

    /// The committed log, without the leaders' no-ops and read barriers, newest entries first
    /// when it does not fit one datagram.
    fn reply_retrieve(&mut self, to: SocketAddr, signed: bool, io: &mut impl Io<R>) {
        let committed = self.raft.log().slice(1, self.raft.commit_index());
        let user: Vec<&LogEntry> = self
            .retained
            .iter()
            .chain(committed)
            .filter(|e| !e.is_noop() && e.key.as_deref() != Some(BARRIER_KEY))
            .collect();
        let mut reply = Message::new(self.name.clone(), Request::Retrieve, Some(self.raft.term()));
        reply.key = Some(KEY_COMMITED_LOGS.into());
        let (shown, too_large) = newest_that_fit(&user, RETRIEVE_BUDGET, |e| super::raft::encoded_size(e) + 1);
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
        io.reply(to, &reply.encode(), signed);
    }

    /// Persist, then send, then apply: the order that makes votes and acknowledgements durable.
    ///
    /// Persisting hands the write to the log, with the `Ready`'s messages behind it: the log
    /// sends them once the write is on disk. So do those of any later `Ready` while a write is
    /// on its way, so that nothing leaves that speaks of state the disk may not hold yet.
    ///
    /// One exception: a leader's AppendEntries leave at once, before its own copy of their
    /// entries is on disk, so the leader's fsync overlaps the followers' (Raft thesis
    /// §10.2.1). That is safe: the core counts the leader's own copy towards a majority only
    /// once it is on disk, and applies nothing before. A `Ready` that changes the term or vote
    /// sends nothing early, and a leader's term and vote are on disk before anything goes out
    /// in it (it was elected by votes that answered requests sent after they were written).
    pub fn handle_ready(&mut self, now: Micros, io: &mut impl Io<R>) -> Result<(), WriterStopped> {
        while self.raft.has_ready() {
            let ready = self.raft.take_ready();
            io.observe(&self.raft, &ready);
            let mut messages = ready.messages;
            if ready.hard_state.is_none() {
                let appends;
                (appends, messages) = messages.into_iter().partition(|(_, m)| matches!(m, Msg::Append { .. }));
                self.send(appends, io);
                if ready.persist_from.is_some() {
                    self.prepare(io);
                }
            }
            if let Some(persist_id) = ready.persist_id {
                let last = self.raft.last_index();
                let (entries, base) = match ready.rewrite {
                    Some((index, term)) => {
                        let base = Base { index, term, retained: self.retained.clone() };
                        (Some((index + 1, self.raft.log().entries().to_vec())), Some(base))
                    }
                    None => (ready.persist_from.map(|from| (from, self.raft.log().slice(from, last).to_vec())), None),
                };
                if let Some((_, written)) = entries.as_ref().filter(|(_, e)| !e.is_empty()) {
                    self.batching.log_writes += 1;
                    self.batching.log_entries += written.len() as u64;
                }
                let then = self.encoded(messages);
                let hard_state = if base.is_some() { Some(self.raft.hard_state()) } else { ready.hard_state };
                if !io.write(Write { persist_id, hard_state, entries, base }, then) {
                    return Err(WriterStopped);
                }
                self.writes_handed = persist_id;
            } else if self.writes_done < self.writes_handed {
                let then = self.encoded(messages);
                if !then.is_empty() && !io.send_after(then) {
                    return Err(WriterStopped);
                }
            } else {
                self.send(messages, io);
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
                    io.abandon_prepared();
                }
                // Writes fail at once (503) rather than when they time out; their clients may
                // retry with the same idempotency key, whether or not a newer leader commits
                // the entries.
                answer_failures(self.waiting.role_changed(role, term), io);
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
            if !ready.snapshots.is_empty() {
                self.snapshots_wanted(now, &ready.snapshots, io);
            }
            self.apply(now, ready.commit_index, io);
        }
        Ok(())
    }

    /// Hands the entry chosen in [`Engine::write`] to the applier to run ahead of its commit,
    /// once its AppendEntries are on their way: the transaction runs while the entry
    /// replicates, on cores the Raft work leaves idle, and the client is answered as soon as
    /// the entry commits. Only the next entry to apply, while it is not committed yet.
    fn prepare(&mut self, io: &mut impl Io<R>) {
        let Some(index) = self.to_prepare.take() else { return };
        let next = self.handed_off + 1 == index && self.raft.commit_index() < index;
        if !next || self.raft.role() != Role::Leader {
            return;
        }
        let (Some(entry), Some(term)) = (self.raft.log().get(index), self.raft.log().term(index)) else { return };
        io.prepare(ApplyItem { index, term, entry: entry.clone(), waiter: None });
    }

    /// Raft messages as datagrams to send once the log has written what they speak of
    /// (fragments too, unpaced: what waits for a write is votes and acknowledgements, far
    /// smaller than a datagram).
    fn encoded(&mut self, messages: Vec<(NodeId, Msg)>) -> Outgoing {
        let mut out = Outgoing::new();
        for (to, msg) in messages {
            self.count_sent(&msg);
            out.extend(self.encode(&msg).into_iter().map(|datagram| (to, datagram)));
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
        self.encode_message(&msg.to_wire(self.raft.id()))
    }

    /// A node message's datagram, or its fragments when it is larger than a datagram.
    fn encode_message(&mut self, msg: &Message) -> Vec<Vec<u8>> {
        let bytes = msg.encode();
        // Room for the MAC of secure mode, so both modes cut messages alike.
        if bytes.len() > MAX_DATAGRAM - auth::SEAL_ROOM {
            self.fragmenter.split(msg.term, &bytes)
        } else {
            vec![bytes]
        }
    }

    /// Sends a node message that nothing waits for, cut into fragments when it is large.
    fn send_message(&mut self, to: NodeId, msg: &Message, io: &mut impl Io<R>) {
        match self.encode_message(msg).as_slice() {
            [one] => io.send(to, one),
            fragments => io.send_paced(to, fragments),
        }
    }

    /// Sends Raft messages; consecutive equal messages (new entries for every follower that
    /// is caught up) are encoded, and cut into fragments when larger than a datagram, once.
    fn send(&mut self, messages: Vec<(NodeId, Msg)>, io: &mut impl Io<R>) {
        let mut encoded: Option<(Msg, Vec<Vec<u8>>)> = None;
        for (to, msg) in messages {
            self.count_sent(&msg);
            if !encoded.as_ref().is_some_and(|(last, _)| *last == msg) {
                let datagrams = self.encode(&msg);
                encoded = Some((msg, datagrams));
            }
            let Some((_, datagrams)) = &encoded else { continue };
            match datagrams.as_slice() {
                [one] => io.send(to, one),
                fragments => io.send_paced(to, fragments),
            }
        }
    }

    /// Hands committed entries to the applier in order, and answers the STOREs they complete:
    /// at once on the leader (requests wait on them), in batches on a follower.
    fn apply(&mut self, now: Micros, commit: u64, io: &mut impl Io<R>) {
        let waited_on = self.raft.role() == Role::Leader || self.waiting.anyone_waits() || !self.stores.is_empty();
        if self.handed_off < commit && !waited_on {
            let due = *self.apply_due.get_or_insert(now + FOLLOWER_APPLY_DELAY.as_micros() as u64);
            if now < due && commit - self.handed_off < FOLLOWER_APPLY_BATCH {
                return;
            }
        }
        self.hand_off(commit, io);
    }

    fn hand_off(&mut self, commit: u64, io: &mut impl Io<R>) {
        self.apply_due = None;
        let mut items = Vec::new();
        while self.handed_off < commit {
            self.handed_off += 1;
            let index = self.handed_off;
            let term = self.raft.log().term(index).unwrap_or(0);
            let waiter = match self.waiting.handed_off(index, term) {
                Some(Ok(reply)) => Some(reply),
                Some(Err(failed)) => {
                    answer_failures([failed], io);
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
                io.reply(p.reply_to, &reply.encode(), p.signed);
            }
        }
        io.apply(items);
        // Reads whose read index is handed over run once the applier has got that far.
        for reply in self.waiting.readable_up_to(self.handed_off) {
            io.read(reply);
        }
    }

    // ---- compaction and snapshots ----

    /// Compacts the log when the state machine holds enough of it on its disk (see
    /// [`Compaction`]), never past a snapshot on its way to a follower: that follower goes on
    /// with the entries after it.
    fn maybe_compact(&mut self) {
        let Some(c) = self.compaction else { return };
        let (base, _) = self.raft.log().base();
        let durable = self.state_durable.min(self.raft.applicable_index()).min(self.handed_off);
        let mut upto = durable.saturating_sub(c.keep_entries);
        if let Some(sending) = self.sending.values().map(|s| s.info.index).min() {
            upto = upto.min(sending);
        }
        if upto <= base {
            return;
        }
        let due = upto - base >= c.every_entries || self.raft.log().bytes() as u64 >= c.every_bytes;
        if !due {
            return;
        }
        let dropped = self.raft.log().slice(base + 1, upto);
        let retained = retrieve_window(&self.retained, dropped);
        if self.raft.compact(upto) {
            log::info!("{}: log compacted up to index {upto}", self.name);
            self.retained = retained;
        }
    }

    /// Leader: `peers` need a snapshot at the log's base or later. The one made last serves
    /// while it is recent enough; else one is made.
    fn snapshots_wanted(&mut self, now: Micros, peers: &[NodeId], io: &mut impl Io<R>) {
        let base = self.raft.log().base().0;
        for &peer in peers {
            if self.sending.get(&peer).is_some_and(|s| s.info.index >= base) {
                continue;
            }
            self.sending.remove(&peer);
            match &self.snapshot {
                Some((info, _)) if info.index >= base => {
                    let info = info.clone();
                    log::info!(
                        "{}: sending node{peer} the snapshot at index {} ({} bytes)",
                        self.name,
                        info.index,
                        info.size
                    );
                    self.sending.insert(peer, Sending::new(info, now));
                    self.pump(now, peer, io);
                }
                _ if self.making_snapshot => {}
                _ => match io.make_snapshot() {
                    Ok(()) => self.making_snapshot = true,
                    Err(e) => log::error!("{}: node{peer} needs a snapshot, and none can be made: {e}", self.name),
                },
            }
        }
    }

    /// Leader: the snapshot asked of the state machine is made (or why not).
    pub fn snapshot_made(&mut self, now: Micros, made: Result<SnapshotInfo, String>, io: &mut impl Io<R>) {
        self.making_snapshot = false;
        let info = match made {
            Ok(info) => info,
            Err(e) => {
                log::error!("{}: cannot make a snapshot for followers: {e}", self.name);
                return;
            }
        };
        let (base, _) = self.raft.log().base();
        if self.raft.role() != Role::Leader || info.index < base {
            // Compacted past it meanwhile (or no longer leading): the next heartbeat asks again.
            return;
        }
        // The database may be ahead of what this leader knows committed (it outlived a restart
        // of the node): its state is committed all the same, and this log holds its entries.
        if self.raft.log().term(info.index) != Some(info.term) {
            log::error!(
                "{}: the snapshot made holds index {} of term {}, which this log does not",
                self.name,
                info.index,
                info.term
            );
            return;
        }
        let tail = self.raft.log().slice(base + 1, info.index);
        let retained = retrieve_window(&self.retained, tail);
        log::info!("{}: made a snapshot at index {} ({} bytes)", self.name, info.index, info.size);
        self.snapshot = Some((info, retained));
        let peers: Vec<NodeId> = self.cluster.ids().filter(|&p| self.raft.needs_snapshot(p)).collect();
        self.snapshots_wanted(now, &peers, io);
    }

    /// Leader: sends `peer` the pieces of its snapshot that are due.
    fn pump(&mut self, now: Micros, peer: NodeId, io: &mut impl Io<R>) {
        let Some(sending) = self.sending.get_mut(&peer) else { return };
        let info = sending.info.clone();
        let due = sending.due(now);
        let term = self.raft.term();
        for (offset, len) in due {
            let bytes = match io.read_snapshot(&info, offset, len) {
                Ok(bytes) => bytes,
                Err(e) => {
                    log::error!("{}: cannot read the snapshot at index {}: {e}", self.name, info.index);
                    self.sending.remove(&peer);
                    self.snapshot = None;
                    return;
                }
            };
            let retained = match &self.snapshot {
                Some((made, retained)) if *made == info && offset == 0 => retained.as_slice(),
                _ => &[],
            };
            let msg = transfer::piece(&self.name, term, &info, offset, &bytes, retained);
            self.send_message(peer, &msg, io);
        }
    }

    /// Leader: a follower's answer to pieces of a snapshot.
    fn on_ack(&mut self, now: Micros, peer: NodeId, ack: transfer::Ack, io: &mut impl Io<R>) {
        if self.raft.role() != Role::Leader || ack.term != self.raft.term() {
            return;
        }
        let Some(sending) = self.sending.get_mut(&peer) else { return };
        if sending.info != ack.info {
            return;
        }
        sending.acked(now, ack.received);
        self.pump(now, peer, io);
    }

    /// The transfers' timers: a leader resends what was lost and gives up on followers that
    /// stopped answering or need nothing any more; a node that stopped leading drops them all.
    fn transfers_turn(&mut self, now: Micros, io: &mut impl Io<R>) {
        if self.raft.role() != Role::Leader {
            self.sending.clear();
            self.snapshot = None;
            return;
        }
        let peers: Vec<NodeId> = self.sending.keys().copied().collect();
        for peer in peers {
            let gone = !self.raft.needs_snapshot(peer);
            let given_up = self.sending.get(&peer).is_some_and(|s| s.given_up(now));
            if gone || given_up {
                if given_up && !gone {
                    log::warn!("{}: node{peer} stopped answering its snapshot: given up for now", self.name);
                }
                self.sending.remove(&peer);
                continue;
            }
            self.pump(now, peer, io);
        }
    }

    /// Follower: a piece of a snapshot from `peer`.
    fn on_piece(&mut self, now: Micros, peer: NodeId, piece: transfer::Piece, io: &mut impl Io<R>) {
        let same =
            self.receiving.as_ref().is_some_and(|r| r.leader == peer && r.term == piece.term && r.info == piece.info);
        if !same {
            if self.receiving.as_ref().is_some_and(|r| r.loading) {
                // One snapshot is loaded at a time.
                return;
            }
            if self.raft.snapshot_offered(now, peer, piece.term, piece.info.index) != Offer::Load {
                self.receiving = None;
                return;
            }
            let held = io.begin_snapshot(&piece.info).min(piece.info.size);
            log::info!(
                "{}: receiving a snapshot at index {} ({} bytes, {held} held) from node{peer}",
                self.name,
                piece.info.index,
                piece.info.size
            );
            self.receiving = Some(Receiving {
                leader: peer,
                term: piece.term,
                info: piece.info.clone(),
                retained: Vec::new(),
                received: held,
                beyond: Default::default(),
                first_seen: false,
                loading: false,
            });
        }
        let Some(r) = self.receiving.as_mut() else { return };
        if piece.offset == 0 {
            r.first_seen = true;
            r.retained = piece.retained;
        }
        if r.wants(piece.offset, piece.data.len()) {
            let held = r.held_after(piece.offset, piece.data.len());
            if let Err(e) = io.write_snapshot(&r.info, piece.offset, &piece.data, held) {
                log::error!("{}: cannot store the snapshot from node{peer}: {e}", self.name);
                self.receiving = None;
                return;
            }
            r.wrote(piece.offset, piece.data.len());
        }
        // Until the first piece is here (it says what RETRIEVE shows), the leader starts over.
        let held = if r.first_seen { r.received } else { 0 };
        let ack = transfer::ack(&self.name, r.term, &r.info, held);
        let complete = r.first_seen && r.received == r.info.size && !r.loading;
        if complete {
            r.loading = true;
            io.load_snapshot(&r.info);
        }
        self.send_message(peer, &ack, io);
    }

    /// Follower: the snapshot received is loaded into the state machine, on its disk (or was
    /// refused, and thrown away).
    pub fn snapshot_loaded(&mut self, now: Micros, loaded: Result<SnapshotInfo, String>, io: &mut impl Io<R>) {
        let Some(r) = self.receiving.take_if(|r| r.loading) else { return };
        match loaded {
            Ok(info) if info == r.info => {
                log::info!("{}: installed the snapshot at index {} from node{}", self.name, info.index, r.leader);
                self.raft.snapshot_installed(now, r.leader, r.term, info.index, info.term);
                self.retained = r.retained;
                self.handed_off = self.handed_off.max(info.index);
                self.state_durable = self.state_durable.max(info.index);
            }
            Ok(other) => log::error!("{}: loaded snapshot {other:?}, expected {:?}", self.name, r.info),
            Err(e) => {
                log::error!(
                    "{}: the snapshot at index {} from node{} is refused: {e}",
                    self.name,
                    r.info.index,
                    r.leader
                );
                // Its bytes are thrown away: the leader sends them all again.
                let ack = transfer::ack(&self.name, r.term, &r.info, 0);
                self.send_message(r.leader, &ack, io);
            }
        }
    }

    /// Fails STOREs and clients' requests that have not committed in time (e.g. the leader
    /// lost its majority).
    fn expire_pending(&mut self, now: Micros, io: &mut impl Io<R>) {
        answer_failures(self.waiting.expire(now), io);
        if self.stores.is_empty() {
            return;
        }
        let expired: Vec<u64> = self.stores.iter().filter(|(_, p)| p.deadline <= now).map(|(&i, _)| i).collect();
        for index in expired {
            if let Some(p) = self.stores.remove(&index) {
                let reply = self.store_reply(Some(p.key), Value::String("not committed in time".into()), false);
                io.reply(p.reply_to, &reply.encode(), p.signed);
            }
        }
    }
}

/// What a client hears when the core does not take its request.
fn refusal(e: &ProposeError) -> WriteResult {
    match e {
        ProposeError::NotLeader { leader } => WriteResult::NotLeader { leader: *leader },
        e @ ProposeError::TooLarge { .. } => WriteResult::TooLarge(e.to_string()),
    }
}

/// Tells the clients of failed requests why.
fn answer_failures<R>(failed: impl IntoIterator<Item = (R, Failure)>, io: &mut impl Io<R>) {
    for (reply, failure) in failed {
        io.answer(
            reply,
            match failure {
                Failure::LostLeadership => WriteResult::LostLeadership,
                Failure::SteppedDown => WriteResult::SteppedDown,
                Failure::Timeout => WriteResult::Timeout,
            },
        );
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

/// The entries RETRIEVE shows of a log compacted up to the end of `dropped`: the newest that
/// fit its datagram among those `retained` from earlier compactions and `dropped`. (RETRIEVE
/// then shows the newest that fit among these and the log, as it would of the whole log.)
fn retrieve_window(retained: &[LogEntry], dropped: &[LogEntry]) -> Vec<LogEntry> {
    let user: Vec<&LogEntry> =
        retained.iter().chain(dropped).filter(|e| !e.is_noop() && e.key.as_deref() != Some(BARRIER_KEY)).collect();
    let (shown, _) = newest_that_fit(&user, RETRIEVE_BUDGET, |e| super::raft::encoded_size(e) + 1);
    shown.into_iter().cloned().collect()
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
    use super::newest_that_fit;

    #[test]
    fn retrieve_skips_entries_larger_than_a_datagram_and_keeps_the_newest_that_fit() {
        let sizes = [10, 20, 500, 30, 40];
        assert_eq!(newest_that_fit(&sizes, 90, |n| n), (vec![20, 30, 40], 1));
        assert_eq!(newest_that_fit(&sizes, 60, |n| n), (vec![40], 0));
        assert_eq!(newest_that_fit(&[500, 600], 100, |n| n), (vec![], 2));
        assert_eq!(newest_that_fit(&[1, 2, 3], 100, |n| n), (vec![1, 2, 3], 0));
    }
}
