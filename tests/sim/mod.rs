//! A deterministic simulated cluster that runs the node's real engine.
//!
//! Time is virtual, in microseconds. Each node is the [`Engine`] the binary runs (the Raft
//! core, the door that decides which datagrams count, fragments, the controller's requests,
//! the clients' waiting writes and reads, the order persist → send → apply), given its inputs
//! as the node's loop gives them, with the simulation as its [`Io`]: datagrams travel as the
//! bytes the engine encoded through the [`Network`]'s queue; writes go through the node's
//! real log code (`Storage`) onto a [`SimDisk`]; committed entries go to the node's real apply
//! code and database (`apply_entries` on a SQLite `Store` in memory, which outlives a crash
//! as the node's own file does). Node timers are read from each engine's `next_deadline()`, and the earliest
//! event (a timer, a datagram, a write done) is processed next, so a run is a pure function
//! of its seed.
//!
//! Writes take time when [`Cluster::disk`] says so, as on the real node, whose log writer
//! works beside the node's loop: the write completes later, in order with the node's other
//! writes, and meanwhile the engine goes on taking inputs and firing timers; what it sends
//! waits for the write (a leader's AppendEntries excepted, as the engine sends them before its
//! own write), and a leader may die between sending them and persisting. A crash drops the
//! engine, the writes not yet done (the one on its way torn, half the time) and everything
//! else volatile; a restart builds a new engine from what `Storage` recovers from the disk.
//!
//! In secure mode ([`Cluster::secure`]) every datagram is signed as the node's transport signs
//! it (the controller's requests too), and each engine's guard checks signatures, receivers
//! and replays, under the same reordering, duplication, crashes and restarts.
//!
//! After every step the [`Checker`] verifies Raft's safety properties on each `Ready` the
//! engine handles; a violation, like any panic of the node's code, fails the run with the
//! seed and a dump of the cluster. The clients' register writes and reads are checked for
//! linearizability against the log's order at the end of a run
//! ([`Cluster::check_linearizable`]).

pub mod chaos;
mod checker;
pub mod disk;
mod network;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};

use labctl::config;
use labctl::node::apply::{apply_entries, ApplyItem, WriteResult};
use labctl::node::engine::{Compaction, Engine, Io, Outgoing};
use labctl::node::guard::{AllowList, Guard};
use labctl::node::log_writer::Write;
use labctl::node::raft::{
    Config, EntryValue, HardState, Log, LogEntry, Micros, Msg, NodeId, ProposeError, Raft, Ready, Rng, Role,
};
use labctl::node::storage::{Base, Recovered, Storage, StorageError};
use labctl::node::store::command::{Command, Op as StoreOp, ProductInput};
use labctl::node::store::{ApplyOutcome, Store};
use labctl::node::transfer::SnapshotInfo;
use labctl::proto::auth::{self, Key};
use labctl::proto::{node_name, Message, Request};
use serde_json::Value;

pub use self::checker::Checker;
use self::disk::SimDisk;
pub use self::network::Network;

pub const MS: Micros = 1_000;
pub const SEC: Micros = 1_000_000;

/// Where a client's answer goes: its operation in the history, or nowhere for a request the
/// history does not follow.
type Ticket = Option<usize>;

/// Where node `id`'s datagrams come from, as the configuration resolves it.
fn addr(id: NodeId) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, id as u8), 5555))
}

/// The wall clock of the simulated machines at virtual time zero, in microseconds since the
/// Unix epoch: secure mode's sequence numbers and freshness.
const WALL_EPOCH: Micros = 1_800_000_000_000_000;

/// Where the controller's requests come from.
const CONTROLLER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 200)), 40000);

/// A write handed to a node's disk and not done yet, with the datagrams that wait for it.
struct Pending {
    write: Write,
    then: Outgoing,
    done_at: Micros,
}

/// What a write asks the disk for: the hard state, a new base (a rewrite of the whole log),
/// and the entries from an index on.
type Asked = (Option<HardState>, Option<Base>, Option<u64>, Vec<LogEntry>);

fn asked(write: &Write) -> Asked {
    let (from, entries) = match &write.entries {
        Some((from, entries)) => (Some(*from), entries.clone()),
        None => (None, Vec::new()),
    };
    (write.hard_state, write.base.clone(), from, entries)
}

/// Work of a node's state machine that the engine hears of later, as the node's applier
/// thread reports it.
enum SmEvent {
    /// A snapshot asked for by a leader was made (at the time it was asked).
    Made(Result<SnapshotInfo, String>),
    /// A follower's snapshot, received whole, is checked and loaded now.
    Load(SnapshotInfo),
}

/// How long the nodes' writes take, and how they fail.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk {
    /// Each write takes from `delay.0` to `delay.1`; `None`: done at once.
    pub delay: Option<(Micros, Micros)>,
    /// The chance that a write stalls for `stall.1` instead, as a virtual disk now and then does.
    pub stall: (f64, Micros),
    /// The chance that a write's sync fails, which stops the node as the log writer's error
    /// stops the real one.
    pub sync_failure: f64,
}

/// One simulated server: an engine while it is up, and the storage that survives a crash.
struct Node {
    id: NodeId,
    cfg: Config,
    engine: Option<Engine<Ticket>>,
    /// The node's real log code, open while the node is up, on its simulated disk.
    storage: Option<Storage>,
    disk: SimDisk,
    /// Durable: the persisted hard state and log, as the writes that completed left them
    /// (what the disk must give back on a restart)...
    hard: HardState,
    /// ...the whole log, from index 1: what the disk holds after its base, and before it the
    /// committed entries that were compacted away or that a snapshot held...
    log: Vec<LogEntry>,
    /// ...and the base the disk's log starts after, with the entries RETRIEVE shows of it...
    base: u64,
    retained: Vec<LogEntry>,
    /// ...and the write on its way when the node last stopped, which the disk may hold in
    /// whole or not at all.
    unsure: Option<Asked>,
    /// Volatile: the snapshot made for followers when leading, and the state machine's work
    /// the engine hears of later, by when.
    snap_out: Option<(SnapshotInfo, Vec<u8>)>,
    sm_events: VecDeque<(Micros, SmEvent)>,
    /// The part of a snapshot received so far (a file that outlives a crash), and how much
    /// of it from the start is held without a gap.
    snap_in: Option<(SnapshotInfo, Vec<u8>, u64)>,
    /// Hash of the durable log up to each index.
    prefix: Vec<u64>,
    /// Volatile: how far the engine has handed the log to the database.
    applied: u64,
    /// The node's database, with the registers (products) the clients write and read. Like
    /// the node's own file it outlives a crash of the node, and is ahead of the log's replay
    /// after a restart (entries it holds already are not applied again).
    store: Store,
    /// Volatile: the commit index the engine last handled.
    commit: u64,
    /// Volatile: the term this node was last seen leading and its log length then.
    leading: Option<(u64, u64)>,
    /// Volatile: writes on their way to the disk, oldest first.
    writes: VecDeque<Pending>,
    restarts: u64,
}

/// A simulated cluster of `n` nodes, `node1..=nodeN`.
pub struct Cluster {
    pub seed: u64,
    now: Micros,
    nodes: Vec<Node>,
    pub net: Network,
    checker: Checker,
    trace: bool,
    /// Probability that a leader dies between sending new entries and persisting them (the
    /// engine sends a leader's AppendEntries before its own write).
    pub crash_before_persist: f64,
    crash_rng: Rng,
    /// How long writes take (by default, no time).
    pub disk: Disk,
    disk_rng: Rng,
    /// Writes that took time, and those that stalled.
    pub slow_writes: u64,
    pub stalled_writes: u64,
    /// Linearizable reads asked and not yet confirmed, by node and the engine's read id: the
    /// entries known committed anywhere when it was asked, which its read index must cover.
    reads: HashMap<(NodeId, u64), u64>,
    /// Reads confirmed so far.
    pub reads_confirmed: u64,
    /// The clients' operations on registers, as they saw them, for the linearizability check.
    history: Vec<Op>,
    /// Every register write by the title it writes (each write's own), and the index and time
    /// at which a node first applied its entry.
    write_ops: HashMap<String, usize>,
    first_applied: HashMap<String, (u64, Micros)>,
    /// A time zero for the engines' `Instant`s.
    origin: std::time::Instant,
    /// Secure mode: the key every datagram is signed with, and each sender's last sequence
    /// number (the controller's under 0), which a node's transport starts again from the clock
    /// when the node restarts.
    key: Option<Key>,
    sequences: HashMap<NodeId, u64>,
    /// When the nodes compact their logs (never by default).
    compaction: Option<Compaction>,
    /// Snapshots the followers installed.
    pub snapshots_installed: u64,
}

/// The engine's world while it handles one input of node `id`.
struct SimIo<'a> {
    c: &'a mut Cluster,
    id: NodeId,
    /// The node died in this input (a crash between sending and persisting, a failed sync):
    /// nothing more it does reaches the world.
    dead: bool,
    /// The `Ready` being handled sends a leader's entries before its write, and the node
    /// dies between the two.
    crash_before_write: bool,
    /// The first safety violation seen.
    error: Option<String>,
}
impl Cluster {
    /// `n` nodes with the product's default configuration, on a reliable network with a
    /// delay of 1–5 ms.
    pub fn new(n: u32, seed: u64) -> Cluster {
        Cluster::with_config(n, seed, |_| {})
    }

    /// `n` nodes whose default configuration `tune` may change.
    pub fn with_config(n: u32, seed: u64, tune: impl Fn(&mut Config)) -> Cluster {
        let ids: Vec<NodeId> = (1..=n).collect();
        let origin = std::time::Instant::now();
        let nodes = ids
            .iter()
            .map(|&id| {
                let mut cfg = Config::new(id, ids.iter().copied().filter(|&p| p != id).collect());
                tune(&mut cfg);
                let raft = Raft::new(cfg.clone(), HardState::default(), Vec::new(), 0, seed);
                let disk = SimDisk::new(&format!("node{id}"), seed ^ u64::from(id));
                let (storage, _) = Storage::open_in(Box::new(disk.clone())).expect("an empty simulated disk opens");
                Node {
                    id,
                    cfg,
                    engine: Some(Engine::new(raft, members(n), origin, seed ^ u64::from(id))),
                    storage: Some(storage),
                    disk,
                    hard: HardState::default(),
                    log: Vec::new(),
                    base: 0,
                    retained: Vec::new(),
                    unsure: None,
                    snap_out: None,
                    sm_events: VecDeque::new(),
                    snap_in: None,
                    prefix: Vec::new(),
                    applied: 0,
                    store: Store::open(":memory:").expect("a database in memory opens").private(),
                    commit: 0,
                    leading: None,
                    writes: VecDeque::new(),
                    restarts: 0,
                }
            })
            .collect();
        Cluster {
            seed,
            now: 0,
            nodes,
            net: Network::new(&ids, seed),
            checker: Checker::default(),
            trace: std::env::var_os("LABCTL_SIM_TRACE").is_some(),
            crash_before_persist: 0.0,
            crash_rng: Rng::new(seed ^ 0x5EED_C4A5_4BEF_0E11),
            disk: Disk::default(),
            disk_rng: Rng::new(seed ^ 0xD15C_5EED_0BAD_F00D),
            slow_writes: 0,
            stalled_writes: 0,
            reads: HashMap::new(),
            reads_confirmed: 0,
            history: Vec::new(),
            write_ops: HashMap::new(),
            first_applied: HashMap::new(),
            origin,
            key: None,
            sequences: HashMap::new(),
            compaction: None,
            snapshots_installed: 0,
        }
    }

    /// The nodes compact their logs as `compaction` says, from now on and after restarts;
    /// followers too far behind get snapshots of a leader's database.
    pub fn compact(&mut self, compaction: Compaction) {
        for node in &mut self.nodes {
            if let Some(engine) = node.engine.as_mut() {
                engine.set_compaction(Some(compaction));
            }
        }
        self.compaction = Some(compaction);
    }

    /// Secure mode, as with a cluster secret: from now on every datagram is signed, and every
    /// node takes only those signed for it, by a member (or the controller), once.
    pub fn secure(&mut self) {
        let key = Key::derive(format!("the simulated cluster secret of seed {}", self.seed).as_bytes())
            .expect("a long enough secret");
        let n = self.nodes.len() as u32;
        for node in &mut self.nodes {
            if let Some(engine) = node.engine.as_mut() {
                engine.secure(Guard::new(key.clone(), node.id, n, AllowList::default()));
            }
        }
        self.key = Some(key);
    }

    /// `datagram` as `from` (0: the controller) sends it to `to` in secure mode; as it is
    /// otherwise.
    fn sealed(&mut self, from: NodeId, to: &str, datagram: Vec<u8>) -> Vec<u8> {
        let Some(key) = &self.key else { return datagram };
        let wall = WALL_EPOCH + self.now;
        let last = self.sequences.entry(from).or_insert(0);
        *last = (*last + 1).max(wall);
        auth::seal(key, &datagram, to, *last)
    }

    // ---- reading the cluster ----

    pub fn now(&self) -> Micros {
        self.now
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn quorum(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    /// The longest election timeout of any node.
    pub fn election_max(&self) -> Micros {
        self.nodes.iter().map(|n| n.cfg.election_max).max().unwrap_or(0)
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.slot(id).engine.is_some()
    }

    /// The core of a node that is up.
    pub fn node(&self, id: NodeId) -> &Raft {
        match &self.slot(id).engine {
            Some(engine) => engine.raft(),
            None => self.fail(&format!("node{id} is down")),
        }
    }

    pub fn up_nodes(&self) -> impl Iterator<Item = &Raft> {
        self.nodes.iter().filter_map(|n| n.engine.as_ref().map(Engine::raft))
    }

    /// The nodes that are up and believe they lead.
    pub fn leaders(&self) -> Vec<NodeId> {
        self.up_nodes().filter(|r| r.role() == Role::Leader).map(|r| r.id()).collect()
    }

    /// A leader that a majority of the cluster (itself included) follows in its term.
    pub fn stable_leader(&self) -> Option<NodeId> {
        self.up_nodes()
            .filter(|r| r.role() == Role::Leader)
            .map(|r| (r.id(), r.term()))
            .find(|&(id, term)| {
                self.up_nodes().filter(|r| r.term() == term && r.leader() == Some(id)).count() >= self.quorum()
            })
            .map(|(id, _)| id)
    }

    /// True when every node is up, in one term, and follows one leader.
    pub fn all_agree(&self) -> bool {
        let Some(leader) = self.stable_leader() else { return false };
        let term = self.node(leader).term();
        self.nodes.iter().all(|n| {
            n.engine.as_ref().map(Engine::raft).is_some_and(|r| r.term() == term && r.leader() == Some(leader))
        })
    }

    /// Node `id`'s whole log up to `to`, as its core has it: the committed entries up to its
    /// base (compacted away, or held by a snapshot), then the entries it holds.
    fn whole_log(&self, raft: &Raft, to: u64) -> Vec<LogEntry> {
        let (base, _) = raft.log().base();
        let (mut log, _) = self.checker.committed_prefix(base.min(to));
        log.extend_from_slice(raft.log().slice(base + 1, to));
        log
    }

    /// The user entries a node has committed, in log order.
    pub fn committed_values(&self, id: NodeId) -> Vec<Value> {
        let raft = self.node(id);
        let committed = self.whole_log(raft, raft.commit_index());
        committed.iter().filter(|e| !e.is_noop()).map(|e| e.value.to_value()).collect()
    }

    /// True when every node is up and has committed every value.
    pub fn all_committed(&self, values: &[Value]) -> bool {
        let first = values.first().map(EntryValue::from);
        self.nodes.iter().all(|n| {
            let Some(raft) = n.engine.as_ref().map(Engine::raft) else { return false };
            if let (1, Some(first)) = (values.len(), &first) {
                // The common case: look from the end, where a new entry is.
                let held = raft.log().slice(1, raft.commit_index());
                if held.iter().rev().any(|e| e.value == *first) {
                    return true;
                }
            }
            let committed = self.whole_log(raft, raft.commit_index());
            let have: HashSet<String> = committed.iter().map(|e| e.value.to_string()).collect();
            values.iter().all(|v| have.contains(&EntryValue::from(v).to_string()))
        })
    }

    /// Log entries the nodes that are up have sent in AppendEntries since they started.
    pub fn entries_sent(&self) -> u64 {
        self.nodes.iter().filter_map(|n| n.engine.as_ref()).map(|e| e.batching().append_entries).sum()
    }

    /// A one-line-per-node picture of the cluster for failure reports.
    pub fn dump(&self) -> String {
        let cfg = &self.nodes[0].cfg;
        let mut out = format!(
            "{} nodes, pre-vote {}, check-quorum {}, batches of {} bytes; at {}us, network: {}\n",
            self.nodes.len(),
            cfg.pre_vote,
            cfg.check_quorum,
            cfg.max_batch_bytes,
            self.now,
            self.net.describe()
        );
        for n in &self.nodes {
            match n.engine.as_ref().map(Engine::raft) {
                Some(r) => {
                    out += &format!(
                        "  node{} {:?} term {} leader {:?} voted {:?} log {} (last term {}) commit {} applied {}\n",
                        n.id,
                        r.role(),
                        r.term(),
                        r.leader(),
                        r.voted_for(),
                        r.last_index(),
                        r.log().last_term(),
                        r.commit_index(),
                        n.applied
                    )
                }
                None => {
                    out += &format!(
                        "  node{} DOWN, durable term {} voted {:?} log {}\n",
                        n.id,
                        n.hard.term,
                        n.hard.voted_for,
                        n.log.len()
                    )
                }
            }
        }
        out += &format!("  leaders by term: {:?}\n", self.checker.leaders());
        out
    }

    /// Fails the run, naming the seed.
    pub fn fail(&self, why: &str) -> ! {
        panic!("seed {}: {why}\n{}", self.seed, self.dump())
    }

    fn slot(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize - 1]
    }

    fn slot_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("{:>10}us {}", self.now, what());
        }
    }

    // ---- inputs ----

    /// Runs `input` on node `id`'s engine at the current time, then ends the turn as the
    /// node's loop does, and completes the writes of a disk that takes no time. Nothing
    /// happens to a node that is down. Fails the run on a safety violation.
    fn drive<T>(&mut self, id: NodeId, input: impl FnOnce(&mut Engine<Ticket>, Micros, &mut SimIo) -> T) -> Option<T> {
        let mut engine = self.slot_mut(id).engine.take()?;
        let now = self.now;
        let mut io = SimIo { c: self, id, dead: false, crash_before_write: false, error: None };
        let out = input(&mut engine, now, &mut io);
        while !io.dead && io.error.is_none() {
            // The database is the node's own, which outlives a crash: what it applied is on its disk.
            engine.state_durable(io.c.slot(id).applied);
            if engine.end_turn(now, &mut io).is_err() {
                io.error = Some(format!("node{id}'s engine found its log stopped, which the simulation never does"));
                break;
            }
            // A disk that takes no time: the writes are done before anything else happens.
            if io.c.disk.delay.is_some() || io.c.slot(id).writes.is_empty() {
                break;
            }
            io.complete_write(&mut engine);
        }
        let (dead, error) = (io.dead, io.error.take());
        self.slot_mut(id).engine = Some(engine);
        if let Some(why) = error {
            self.fail(&why);
        }
        if dead {
            self.kill(id);
        }
        Some(out)
    }

    /// The state machine of node `id` reports work the engine asked of it.
    fn state_machine_event(&mut self, id: NodeId, event: SmEvent) {
        match event {
            SmEvent::Made(made) => {
                self.trace(|| format!("node{id} snapshot made: {made:?}"));
                self.drive(id, |engine, now, io| engine.snapshot_made(now, made, io));
            }
            SmEvent::Load(info) => {
                let loaded = self.load_snapshot(id, &info);
                self.trace(|| format!("node{id} snapshot loaded: {loaded:?}"));
                if loaded.is_ok() {
                    self.snapshots_installed += 1;
                }
                self.drive(id, |engine, now, io| engine.snapshot_loaded(now, loaded, io));
            }
        }
    }

    /// Checks the snapshot node `id` received and loads it into its database with the node's
    /// own code, unless the database has applied that far already.
    fn load_snapshot(&mut self, id: NodeId, info: &SnapshotInfo) -> Result<SnapshotInfo, String> {
        let node = self.slot_mut(id);
        let bytes = match node.snap_in.take() {
            Some((held, bytes, _)) if held == *info => bytes,
            _ => return Err("no such snapshot received".into()),
        };
        if bytes.len() as u64 != info.size || sha256_hex(&bytes) != info.sha256 {
            return Err("size or SHA-256 differ from the leader's".into());
        }
        let applied = node.store.last_applied().map_err(|e| e.to_string())?.index;
        if applied < info.index {
            let (index, term) =
                node.store.load_snapshot(&mut bytes.as_slice()).map_err(|e| format!("cannot load: {e}"))?;
            if (index, term) != (info.index, info.term) {
                return Err(format!("the snapshot holds index {index} of term {term}, not {info:?}"));
            }
        }
        node.applied = node.applied.max(info.index);
        Ok(info.clone())
    }

    /// A client's write of `value` to node `id`: the entry's index when the node takes it.
    /// A node that is down (e.g. crashed handling an earlier proposal) refuses it.
    pub fn propose(&mut self, id: NodeId, value: Value) -> Result<u64, ProposeError> {
        let command = EntryValue::from(&value);
        let write = register_write(command.get());
        let ticket = write.as_ref().map(|&(register, _)| {
            self.history.push(Op { register, write: true, seen: None, call: self.now, ret: None });
            self.history.len() - 1
        });
        let result = self
            .drive(id, |engine, now, io| engine.write(now, command, ticket, io))
            .unwrap_or(Err(ProposeError::NotLeader { leader: None }));
        self.trace(|| format!("node{id} propose -> {result:?}"));
        if let (Some(op), Some((_, title))) = (ticket, write) {
            if result.is_ok() {
                self.write_ops.insert(title, op);
            } else {
                self.history.pop();
            }
        }
        result
    }

    /// A linearizable read on node `id` (ReadIndex); false when the node refuses it.
    pub fn read(&mut self, id: NodeId) -> bool {
        self.read_register(id, None)
    }

    /// A linearizable read of `register` on node `id`, answered (and put in the history) once
    /// the node's state machine has applied up to the read index; false when the node refuses it.
    pub fn read_register(&mut self, id: NodeId, register: Option<i64>) -> bool {
        if !self.is_up(id) {
            return false;
        }
        let ticket = register.map(|register| {
            self.history.push(Op { register, write: false, seen: None, call: self.now, ret: None });
            self.history.len() - 1
        });
        let committed = self.checker.committed_len();
        let result = self.drive(id, |engine, now, io| {
            let result = engine.read(now, ticket, io);
            if let Ok(read) = result {
                io.c.reads.insert((id, read), committed);
            }
            result
        });
        self.trace(|| format!("node{id} read -> {result:?}"));
        let taken = matches!(result, Some(Ok(_)));
        if !taken && ticket.is_some() {
            self.history.pop();
        }
        taken
    }

    /// A controller's request to node `id`, as a datagram from the controller's address.
    fn control(&mut self, id: NodeId, request: Request) {
        self.trace(|| format!("node{id} {request}"));
        let datagram = Message::new(labctl::proto::CONTROLLER, request, None).encode();
        let datagram = self.sealed(0, &node_name(id), datagram);
        self.drive(id, |engine, now, io| engine.datagram(now, &datagram, CONTROLLER, io));
    }

    /// A controller's TIMEOUT to node `id`.
    pub fn timeout_now(&mut self, id: NodeId) {
        self.control(id, Request::Timeout);
    }

    /// A controller's CONVERT_FOLLOWER to node `id`.
    pub fn convert_follower(&mut self, id: NodeId) {
        self.control(id, Request::ConvertFollower);
    }

    /// Node `id` may lead, or may not (its state machine cannot apply).
    pub fn set_eligible(&mut self, id: NodeId, eligible: bool) {
        self.trace(|| format!("node{id} {}", if eligible { "may lead" } else { "may not lead" }));
        self.drive(id, |engine, now, _| engine.set_eligible(now, eligible));
    }

    /// Kills node `id`: its engine, state machine and everything else volatile are gone.
    pub fn crash(&mut self, id: NodeId) {
        self.trace(|| format!("node{id} CRASH"));
        if !self.is_up(id) {
            return;
        }
        if let Err(why) = self.check_durable(id) {
            self.fail(&why);
        }
        self.kill(id);
    }

    /// Drops what a crash loses: the engine, its writes not done yet, the state machine. The
    /// write on its way, if the disk had started it, reaches the disk in part.
    fn kill(&mut self, id: NodeId) {
        let torn = self.disk_rng.chance(0.5);
        let node = &mut self.nodes[id as usize - 1];
        match (node.writes.front(), node.storage.as_mut()) {
            (Some(w), Some(storage)) if torn => {
                node.disk.crash_in(0);
                let (hard, base, from, entries) = asked(&w.write);
                if storage.store(hard, base.as_ref(), from.map(|from| (from, &entries[..]))).is_ok() {
                    self.fail(&format!("node{id}'s disk crashed inside a write that returned"));
                }
                node.unsure = Some((hard, base, from, entries));
            }
            _ => node.disk.crash(),
        }
        let node = &mut self.nodes[id as usize - 1];
        node.storage = None;
        node.disk.restart();
        // Its clients hear nothing more: what they asked stays without an answer.
        node.engine = None;
        node.writes.clear();
        node.applied = 0;
        node.commit = 0;
        node.leading = None;
        node.snap_out = None;
        node.sm_events.clear();
        self.reads.retain(|&(node, _), _| node != id);
        // Its transport's sequence numbers start again from the clock.
        self.sequences.remove(&id);
    }

    /// With no write on its way, what a restart would see must be what the core has.
    fn check_durable(&self, id: NodeId) -> Result<(), String> {
        match self.slot(id).engine.as_ref() {
            Some(engine) => self.durable_is(id, engine.raft()),
            None => Ok(()),
        }
    }

    /// With no write on its way, node `id`'s disk holds what its core `raft` has.
    fn durable_is(&self, id: NodeId, raft: &Raft) -> Result<(), String> {
        let node = self.slot(id);
        let held = node.log.get(node.base as usize..).unwrap_or_default();
        let same = raft.hard_state() == node.hard && raft.log().base().0 == node.base && raft.log().entries() == held;
        if node.writes.is_empty() && !same {
            return Err(format!("node{id}'s durable state differs from its core's state with no write on its way"));
        }
        Ok(())
    }

    /// Restarts a crashed node from what its log code recovers from its disk.
    pub fn restart(&mut self, id: NodeId) {
        let now = self.now;
        let (seed, origin, n) = (self.seed, self.origin, self.nodes.len() as u32);
        if self.is_up(id) {
            return;
        }
        if let Err(why) = self.recover(id) {
            self.fail(&why);
        }
        let node = &mut self.nodes[id as usize - 1];
        node.restarts += 1;
        let seed = seed.wrapping_add(node.restarts.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let base_term = if node.base == 0 { 0 } else { node.log[node.base as usize - 1].term };
        let log = Log::after(node.base, base_term, node.log[node.base as usize..].to_vec());
        let raft = Raft::restored(node.cfg.clone(), node.hard, log, now, seed);
        // The database holds everything up to the base: the engine hands on from there.
        node.applied = node.base;
        let mut engine = Engine::new(raft, members(n), origin, seed ^ u64::from(id));
        engine.restore_retained(node.retained.clone());
        engine.set_compaction(self.compaction);
        if let Some(key) = self.key.clone() {
            engine.secure(Guard::new(key, id, n, AllowList::default()));
        }
        self.nodes[id as usize - 1].engine = Some(engine);
        self.trace(|| format!("node{id} RESTART"));
        self.drive(id, |_, _, _| ());
    }

    /// Opens node `id`'s log as the node does on start, and checks what it recovers: what the
    /// writes that completed left, with the write that was on its way or without it.
    fn recover(&mut self, id: NodeId) -> Result<(), String> {
        let node = &mut self.nodes[id as usize - 1];
        let mut failed_opens = 0;
        let (storage, recovered) = loop {
            match Storage::open_in(Box::new(node.disk.clone())) {
                Ok(opened) => break opened,
                // A sync that fails as the node cuts off a torn write stops it; it starts again.
                Err(StorageError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EIO) && failed_opens < 10 =>
                {
                    failed_opens += 1;
                    node.disk.restart();
                }
                Err(e) => return Err(format!("node{id} cannot open its log: {e}")),
            }
        };
        node.storage = Some(storage);
        let synced = durable_state(node);
        let unsure = node.unsure.take();
        if recovered == synced {
            return Ok(());
        }
        let Some((hard, base, from, entries)) = unsure else {
            return Err(format!(
                "node{id} recovered term {} and {} entries from its disk, where writes that completed left term {} \
                 and {} entries",
                recovered.hard_state.term,
                recovered.entries.len(),
                synced.hard_state.term,
                synced.entries.len()
            ));
        };
        // The unsure write is on the disk whole: it is durable now, as if it had completed.
        self.store(id, hard, base, from, entries)?;
        let node = self.slot(id);
        if recovered != durable_state(node) {
            return Err(format!(
                "node{id} recovered term {} and {} entries from its disk: neither what completed writes left nor \
                 that with the write on its way",
                recovered.hard_state.term,
                recovered.entries.len()
            ));
        }
        Ok(())
    }

    // ---- running ----

    /// Processes the next event (a write done, a timer or a datagram) due at or before
    /// `limit`; false when there is none.
    pub fn step_before(&mut self, limit: Micros) -> bool {
        let timer = self.nodes.iter().filter_map(|n| n.engine.as_ref().map(|e| (e.next_deadline(), n.id))).min();
        let write = self.nodes.iter().filter_map(|n| n.writes.front().map(|w| (w.done_at, n.id))).min();
        let datagram = self.net.next_at();
        let sm = self.nodes.iter().filter_map(|n| n.sm_events.front().map(|(at, _)| (*at, n.id))).min();
        if let Some((at, id)) = sm.filter(|&(at, _)| at <= limit) {
            let first = [timer.map(|t| t.0), write.map(|w| w.0), datagram].into_iter().flatten().all(|t| at <= t);
            if first {
                self.now = self.now.max(at);
                if let Some((_, event)) = self.slot_mut(id).sm_events.pop_front() {
                    self.state_machine_event(id, event);
                }
                return true;
            }
        }
        if let Some((at, id)) = write.filter(|&(at, _)| at <= limit) {
            if timer.is_none_or(|(t, _)| at <= t) && datagram.is_none_or(|d| at <= d) {
                self.now = self.now.max(at);
                self.trace(|| format!("node{id} write done"));
                self.drive(id, |engine, _, io| io.complete_write(engine));
                return true;
            }
        }
        match (timer, datagram) {
            (Some((at, id)), d) if at <= limit && d.is_none_or(|d| at <= d) => {
                self.now = self.now.max(at);
                self.drive(id, |engine, now, _| engine.tick(now));
                if let Some(next) = self.slot(id).engine.as_ref().map(Engine::next_deadline) {
                    if next <= at {
                        self.fail(&format!("node{id}'s timer did not move past {at}us after it fired"));
                    }
                }
                true
            }
            (_, Some(at)) if at <= limit => {
                self.now = self.now.max(at);
                if let Some(d) = self.net.pop() {
                    self.trace(|| format!("node{} <- node{} {} bytes", d.to, d.from, d.bytes.len()));
                    self.drive(d.to, |engine, now, io| engine.datagram(now, &d.bytes, addr(d.from), io));
                }
                true
            }
            _ => false,
        }
    }

    /// Runs until virtual time `t`.
    pub fn run_until(&mut self, t: Micros) {
        while self.step_before(t) {}
        self.now = self.now.max(t);
    }

    pub fn run_for(&mut self, d: Micros) {
        self.run_until(self.now + d);
    }

    /// Runs until `cond` holds (checked after every event) or `within` has passed; says
    /// whether it held.
    pub fn run_until_cond(&mut self, within: Micros, cond: impl Fn(&Cluster) -> bool) -> bool {
        let limit = self.now + within;
        loop {
            if cond(self) {
                return true;
            }
            if !self.step_before(limit) {
                self.now = self.now.max(limit);
                return cond(self);
            }
        }
    }

    /// Waits for a leader that a majority follows; fails the run if none appears `within`.
    pub fn wait_for_leader(&mut self, within: Micros) -> NodeId {
        if !self.run_until_cond(within, |c| c.stable_leader().is_some()) {
            self.fail(&format!("no leader followed by a majority within {}ms", within / MS));
        }
        self.stable_leader().expect("leader")
    }

    /// Acts as a client that submits `values` to whoever leads, submitting again what a new
    /// leader lacks, until every node has committed them all; says whether that happened
    /// `within` the time given.
    pub fn commit_values(&mut self, values: &[Value], within: Micros) -> bool {
        let deadline = self.now + within;
        let mut submitted_to = None;
        loop {
            if self.all_committed(values) {
                return true;
            }
            if self.now >= deadline {
                return false;
            }
            if let Some(leader) = self.stable_leader() {
                let term = self.node(leader).term();
                if submitted_to != Some((leader, term)) {
                    submitted_to = Some((leader, term));
                    let raft = self.node(leader);
                    let have: HashSet<String> =
                        self.whole_log(raft, raft.last_index()).iter().map(|e| e.value.to_string()).collect();
                    for v in values.iter().filter(|v| !have.contains(&EntryValue::from(*v).to_string())) {
                        if let Err(e) = self.propose(leader, v.clone()) {
                            self.fail(&format!("the leader refused a proposal: {e}"));
                        }
                    }
                }
            }
            self.run_until(deadline.min(self.now + 5 * MS));
        }
    }

    /// Creates the products 1..=`count` that the clients' register writes update, through
    /// whoever leads (each once, by its idempotency key); says whether every node committed
    /// them `within` the time given.
    pub fn create_registers(&mut self, count: u64, within: Micros) -> bool {
        let creations: Vec<Value> = (0..count)
            .map(|i| {
                let product = ProductInput::new(format!("r{i}"), 1.0, "GBP");
                let command =
                    Command::new(command_time(), StoreOp::CreateProduct { product }).with_key(format!("register-{i}"));
                serde_json::to_value(command).expect("a command serializes")
            })
            .collect();
        self.commit_values(&creations, within)
    }

    /// Cross-checks log matching the slow way: any two logs (of up nodes, or durable logs of
    /// crashed ones) that share an (index, term) are identical up to it.
    pub fn check_logs_match(&self) {
        let logs: Vec<(NodeId, Vec<LogEntry>)> = self
            .nodes
            .iter()
            .map(|n| match n.engine.as_ref() {
                Some(e) => (n.id, self.whole_log(e.raft(), e.raft().last_index())),
                None => (n.id, n.log.clone()),
            })
            .collect();
        for (i, (a, la)) in logs.iter().enumerate() {
            for (b, lb) in &logs[i + 1..] {
                let common = la.len().min(lb.len());
                if let Some(last_same) = (0..common).rev().find(|&k| la[k].term == lb[k].term) {
                    if la[..=last_same] != lb[..=last_same] {
                        self.fail(&format!(
                            "log matching: node{a} and node{b} agree on the term at index {} but not before",
                            last_same + 1
                        ));
                    }
                }
            }
        }
    }

    /// The hash chain of node `id`'s log, as its core `raft` has it (on disk or not yet), up
    /// to `index`.
    fn hash_at(&self, id: NodeId, raft: &Raft, index: u64) -> Option<u64> {
        let node = self.slot(id);
        if index == 0 || index > raft.last_index() {
            return None;
        }
        // Up to its base the core holds the committed entries.
        let (base, _) = raft.log().base();
        if index <= base {
            return self.checker.committed_hash(index);
        }
        // Up to the durable index the core's log is the one on disk.
        let durable = raft.durable_index().min(node.prefix.len() as u64);
        if index <= durable {
            return Some(node.prefix[index as usize - 1]);
        }
        let from = durable.max(base);
        let start = if from == durable && durable > 0 {
            node.prefix[durable as usize - 1]
        } else {
            self.checker.committed_hash(from)?
        };
        Some(raft.log().slice(from + 1, index).iter().fold(start, checker::chain))
    }

    /// When a write handed to node `id`'s disk now is done: after the node's earlier writes.
    /// As the node's log writer does, writes that queue up while one is on its way go to the
    /// disk together, with one flush, once it is done.
    fn disk_time(&mut self, id: NodeId) -> Micros {
        let Some((min, max)) = self.disk.delay else { return self.now };
        let writes = &self.slot(id).writes;
        if writes.len() >= 2 {
            return writes.back().expect("queued").done_at;
        }
        let took = if self.disk_rng.chance(self.disk.stall.0) {
            self.stalled_writes += 1;
            self.disk.stall.1
        } else {
            self.slow_writes += 1;
            self.disk_rng.range(min, max + 1)
        };
        let after = self.slot(id).writes.back().map_or(0, |w| w.done_at);
        (self.now + took).max(after)
    }

    /// What a write leaves on node `id`'s disk, checked.
    fn store(
        &mut self,
        id: NodeId,
        hard: Option<HardState>,
        base: Option<Base>,
        from: Option<u64>,
        entries: Vec<LogEntry>,
    ) -> Result<(), String> {
        if let Some(base) = base {
            self.rebase(id, base, from)?;
        }
        let node = &mut self.nodes[id as usize - 1];
        if let Some(hard) = hard {
            self.checker.hard_state(id, node.hard, hard)?;
            node.hard = hard;
        }
        if let Some(from) = from {
            let stored = node.log.len() as u64;
            if from == 0 || from > stored + 1 {
                return Err(format!("node{id} asks to persist from index {from} but storage ends at {stored}"));
            }
            node.log.truncate(from as usize - 1);
            node.prefix.truncate(from as usize - 1);
            for entry in entries {
                let prev = node.prefix.last().copied().unwrap_or(0);
                node.prefix.push(checker::chain(prev, &entry));
                node.log.push(entry);
            }
            self.checker.stored(id, &node.log, &node.prefix, from)?;
        }
        Ok(())
    }

    /// A rewrite of node `id`'s log with `base`: up to there the log is the committed one (what
    /// compaction dropped, or what a snapshot held), which the disk no longer holds; the
    /// entries after it follow (from `from`, which must be just after the base).
    fn rebase(&mut self, id: NodeId, base: Base, from: Option<u64>) -> Result<(), String> {
        if from.is_some_and(|f| f != base.index + 1) {
            return Err(format!("node{id} rewrites its log after base {} with entries from {from:?}", base.index));
        }
        let (committed, hash) = self.checker.committed_prefix(base.index);
        if (committed.len() as u64) < base.index || committed.last().map_or(0, |e| e.term) != base.term {
            return Err(format!(
                "node{id} rewrites its log after index {} of term {}, which is not known committed",
                base.index, base.term
            ));
        }
        let node = &mut self.nodes[id as usize - 1];
        let kept_prefix =
            node.prefix.len() as u64 >= base.index && node.prefix.get(base.index as usize - 1) == Some(&hash);
        if !kept_prefix || base.index == 0 {
            // A snapshot: the log up to the base is the committed one.
            node.log = committed;
            node.prefix.clear();
            for entry in &node.log {
                let prev = node.prefix.last().copied().unwrap_or(0);
                node.prefix.push(checker::chain(prev, entry));
            }
        }
        node.log.truncate(base.index as usize);
        node.prefix.truncate(base.index as usize);
        node.base = base.index;
        node.retained = base.retained;
        Ok(())
    }

    /// Checks the clients' history of register writes and reads for linearizability; fails the
    /// run with the register whose history is not. Returns how many writes and reads it checked.
    ///
    /// A client that got no answer cannot tell whether its write took effect; the simulation
    /// can: a write whose entry no node ever applied did not, and one that some node applied
    /// took effect, in its place in the log, by the time the first node applied it. So the
    /// order of the register's writes is known (the log's), and the check is whether each
    /// operation can be given a moment within its call and its answer such that the writes'
    /// moments follow the log's order and each read's falls after the write it saw and before
    /// the next one: the earliest moments that satisfy every constraint met so far are placed in
    /// log order, and the history is linearizable (with the log's order as the witness) when
    /// none falls after its operation's answer. That is stricter than asking whether some order
    /// explains the history (a read after two overlapping writes that sees the one earlier in
    /// the log is stale, though the other order would explain it), and it takes linear time
    /// where a search of orders can take exponential time.
    pub fn check_linearizable(&self) -> (usize, usize) {
        struct Write {
            index: u64,
            op: usize,
            latest: Micros,
        }
        let mut writes: HashMap<i64, Vec<Write>> = HashMap::new();
        let mut reads: HashMap<(i64, Option<u64>), Vec<usize>> = HashMap::new();
        let mut checked = (0, 0);
        for (key, &op) in &self.write_ops {
            let o = &self.history[op];
            match self.first_applied.get(key) {
                Some(&(index, at)) => {
                    let latest = o.ret.map_or(at, |ret| ret.min(at));
                    writes.entry(o.register).or_default().push(Write { index, op, latest });
                    checked.0 += 1;
                }
                None if o.ret.is_some() => self.fail(&format!("a write was answered but no node applied it: {o:?}")),
                None => {}
            }
        }
        for (op, o) in self.history.iter().enumerate().filter(|(_, o)| !o.write && o.ret.is_some()) {
            reads.entry((o.register, o.seen)).or_default().push(op);
            checked.1 += 1;
        }
        let mut registers: Vec<i64> =
            writes.keys().copied().chain(reads.keys().map(|(register, _)| *register)).collect();
        registers.sort_unstable();
        registers.dedup();
        for register in registers {
            let mut ws = writes.remove(&register).unwrap_or_default();
            ws.sort_unstable_by_key(|w| w.index);
            // The earliest moment the next operation in log order may have.
            let mut floor: Micros = 0;
            let place = |op: usize, floor: Micros, latest: Micros| -> Micros {
                let o = &self.history[op];
                let at = o.call.max(floor);
                if at > latest {
                    let ops: Vec<String> =
                        self.history.iter().filter(|x| x.register == register).map(|x| format!("{x:?}")).collect();
                    self.fail(&format!(
                        "register {register} is not linearizable in the log's order: {o:?} cannot take effect \
                         before {at}us, after its answer at {latest}us; its operations:\n    {}",
                        ops.join("\n    ")
                    ));
                }
                at
            };
            let ret = |op: usize| self.history[op].ret.unwrap_or(Micros::MAX);
            for &op in reads.get(&(register, None)).into_iter().flatten() {
                floor = floor.max(place(op, 0, ret(op)));
            }
            for w in &ws {
                let at = place(w.op, floor, w.latest);
                floor = at;
                for &op in reads.get(&(register, Some(w.index))).into_iter().flatten() {
                    floor = floor.max(place(op, at, ret(op)));
                }
            }
            for ((r, seen), ops) in &reads {
                if *r == register && seen.is_some_and(|i| !ws.iter().any(|w| w.index == i)) {
                    self.fail(&format!("a read saw a write to {register} at index {seen:?} no client made: {:?}", ops));
                }
            }
        }
        checked
    }

    /// Waits until every node has applied everything committed, then checks that their
    /// databases hold the same rows; fails the run naming the first that differs.
    pub fn check_databases_converge(&mut self, within: Micros) {
        let done = |c: &Cluster| {
            let target = c.up_nodes().map(Raft::commit_index).max().unwrap_or(0);
            c.nodes.iter().all(|n| {
                n.engine.as_ref().is_some_and(|e| e.raft().commit_index() == target)
                    && n.applied == target
                    && n.sm_events.is_empty()
            })
        };
        if !self.run_until_cond(within, done) {
            self.fail(&format!("the nodes did not all apply what was committed within {}ms", within / MS));
        }
        let mut dumps = Vec::new();
        for id in self.ids() {
            match self.slot_mut(id).store.dump() {
                Ok(dump) => dumps.push((id, dump)),
                Err(e) => self.fail(&format!("node{id} cannot read its database: {e}")),
            }
        }
        let (first, reference) = &dumps[0];
        for (id, dump) in &dumps[1..] {
            if dump != reference {
                self.fail(&format!(
                    "node{id}'s database differs from node{first}'s at applied index {} and {}",
                    dump.meta.last_index, reference.meta.last_index
                ));
            }
        }
    }

    /// The rows of node `id`'s database.
    pub fn database(&mut self, id: NodeId) -> labctl::node::store::Dump {
        let node = &mut self.nodes[id as usize - 1];
        node.store.dump().unwrap_or_else(|e| panic!("node{id} cannot read its database: {e}"))
    }

    /// Writes that a crash or a failed sync left on the disk in part, and syncs that failed.
    pub fn disk_faults(&self) -> (u64, u64) {
        self.nodes.iter().map(|n| n.disk.faults()).fold((0, 0), |(t, f), (t2, f2)| (t + t2, f + f2))
    }

    /// Entries known committed so far.
    pub fn committed_len(&self) -> u64 {
        self.checker.committed_len()
    }

    /// Terms that had a leader so far.
    pub fn leaders_elected(&self) -> usize {
        self.checker.leaders().len()
    }
}

/// The register a client's write sets and the title it writes: an entry that updates a product.
fn register_write(entry: &str) -> Option<(i64, String)> {
    match serde_json::from_str::<Command>(entry).ok()?.op {
        StoreOp::UpdateProduct { id, product } => Some((id, product.title)),
        _ => None,
    }
}

/// The time the clients' commands carry.
fn command_time() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time")
}

/// A client's write of register `register` (a product's id), writing a title of its own
/// (`w{n}`) and `pad` more bytes, as the HTTP API replicates it.
pub fn register_write_value(register: i64, n: u64, pad: usize) -> Value {
    let mut product = ProductInput::new(format!("w{n}"), 1.0, "GBP");
    product.availability = (pad > 0).then(|| "x".repeat(pad));
    serde_json::to_value(Command::new(command_time(), StoreOp::UpdateProduct { id: register, product }))
        .expect("a command serializes")
}

/// An uploaded file of products of about `bytes` in all, as one entry (`n` names it).
pub fn upload_value(n: u64, bytes: usize) -> Value {
    const LINK: usize = 8_000;
    let items = (0..bytes.div_ceil(LINK))
        .map(|i| {
            let mut product = ProductInput::new(format!("u{n}-{i}"), 1.0, "GBP");
            product.link = Some("x".repeat(LINK));
            product
        })
        .collect();
    serde_json::to_value(Command::new(command_time(), StoreOp::ImportProducts { items })).expect("a command serializes")
}

/// A client's operation on a register, as the client saw it.
#[derive(Debug)]
struct Op {
    /// The product's id.
    register: i64,
    write: bool,
    /// A read: the log index of the write whose value it returned (None: none yet).
    seen: Option<u64>,
    call: Micros,
    /// When the client got its answer; None: it got none.
    ret: Option<Micros>,
}

/// SHA-256 in lowercase hex, as snapshots are known by.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    auth::hex(&sha2::Sha256::digest(bytes))
}

/// What node's disk must give back on a restart, by the writes that completed.
fn durable_state(node: &Node) -> Recovered {
    let term = if node.base == 0 { 0 } else { node.log[node.base as usize - 1].term };
    Recovered {
        hard_state: node.hard,
        base: Base { index: node.base, term, retained: node.retained.clone() },
        entries: node.log[node.base as usize..].to_vec(),
    }
}

/// The members of a simulated cluster of `n` nodes, as the engines know them.
fn members(n: u32) -> config::Cluster {
    config::Cluster { nodes: n, ..config::Cluster::default() }
}

impl SimIo<'_> {
    fn failed(&mut self, why: String) {
        self.error.get_or_insert(why);
    }

    /// Datagrams of the node as its transport signs them in secure mode.
    fn sealed_all(&mut self, outgoing: Outgoing) -> Outgoing {
        outgoing.into_iter().map(|(to, datagram)| (to, self.c.sealed(self.id, &node_name(to), datagram))).collect()
    }

    /// The oldest write of the node is done: it is durable, its datagrams leave, and the
    /// engine hears of it. A sync that fails stops the node, as the log writer's error does.
    fn complete_write(&mut self, engine: &mut Engine<Ticket>) {
        if let Err(why) = self.try_complete_write(engine) {
            self.failed(why);
        }
    }

    fn try_complete_write(&mut self, engine: &mut Engine<Ticket>) -> Result<(), String> {
        let (id, now) = (self.id, self.c.now);
        let fail_sync = self.c.disk_rng.chance(self.c.disk.sync_failure);
        let node = self.c.slot_mut(id);
        let Some(pending) = node.writes.pop_front() else { return Ok(()) };
        let storage = node.storage.as_mut().ok_or_else(|| format!("node{id} is up without its log open"))?;
        if fail_sync {
            node.disk.fail_next_sync();
        }
        let (hard, base, from, entries) = asked(&pending.write);
        if let Err(e) = storage.store(hard, base.as_ref(), from.map(|from| (from, &entries[..]))) {
            // The node stops; the write may be on the disk or not.
            node.writes.clear();
            node.unsure = Some((hard, base, from, entries));
            self.dead = true;
            self.c.trace(|| format!("node{id} STOPS: {e}"));
            return Ok(());
        }
        self.c.store(id, hard, base, from, entries)?;
        self.c.trace(|| format!("node{id} write {} done", pending.write.persist_id));
        for (to, datagram) in pending.then {
            self.c.net.send(now, id, to, datagram)?;
        }
        engine.persisted(pending.write.persist_id);
        let raft = engine.raft();
        // Up to its base, a snapshot it installed: on the database's disk.
        if raft.durable_index() > (self.c.slot(id).log.len() as u64).max(raft.log().base().0) {
            return Err(format!(
                "node{id} counts index {} as on its disk, which holds {}",
                raft.durable_index(),
                self.c.slot(id).log.len()
            ));
        }
        if self.c.slot(id).writes.is_empty() {
            self.c.durable_is(id, raft)?;
        }
        Ok(())
    }

    /// The safety checks on one `Ready` of the node's core.
    fn check_ready(&mut self, raft: &Raft, ready: &Ready) -> Result<(), String> {
        let (id, c) = (self.id, &mut *self.c);
        let (role, term, last) = (raft.role(), raft.term(), raft.last_index());
        // Election safety, and a leader only ever appends to its log.
        c.checker.role(id, role, term)?;
        if role == Role::Leader && !raft.is_eligible() {
            return Err(format!("node{id} leads term {term} though it may not lead"));
        }
        let node = c.slot_mut(id);
        let mut new_leader = false;
        if role == Role::Leader {
            match node.leading {
                Some((t, len)) if t == term => {
                    if let Some(from) = ready.persist_from.filter(|&from| from <= len) {
                        return Err(format!("node{id}, leader of term {term}, rewrote its log from index {from}"));
                    }
                }
                _ => new_leader = true,
            }
            node.leading = Some((term, last));
        } else {
            node.leading = None;
        }
        if ready.persist_id.is_none() && (ready.hard_state.is_some() || ready.persist_from.is_some()) {
            return Err(format!("node{id} asks for a write without a number to report it by"));
        }
        if new_leader {
            c.checker.leader_complete(id, term, last, |i| c.hash_at(id, raft, i))?;
        }
        // A leader's AppendEntries leave before its own write; it may die in between.
        let sends_early =
            ready.hard_state.is_none() && ready.messages.iter().any(|(_, m)| matches!(m, Msg::Append { .. }));
        if sends_early && ready.persist_id.is_some() && c.crash_rng.chance(c.crash_before_persist) {
            self.crash_before_write = true;
        }

        // A confirmed read must see every entry committed before it was asked.
        for read in &ready.reads {
            let Some(committed) = c.reads.remove(&(id, read.id)) else {
                return Err(format!("node{id} confirmed read {} twice or never asked", read.id));
            };
            if read.index < committed {
                return Err(format!(
                    "stale read: node{id} (term {term}) confirmed read {} at index {} but {committed} entries were \
                     committed when it was asked",
                    read.id, read.index
                ));
            }
            c.reads_confirmed += 1;
        }

        let commit = ready.commit_index;
        let node = c.slot(id);
        if commit > raft.commit_index() {
            return Err(format!("node{id} reports commit index {commit} but holds {}", raft.commit_index()));
        }
        if commit < node.commit {
            return Err(format!("node{id}'s commit index went back from {} to {commit}", node.commit));
        }
        // Up to its base the node's state machine holds the log (a snapshot it installed).
        let (base, _) = raft.log().base();
        if commit > base && commit > node.log.len() as u64 {
            return Err(format!("node{id} may apply index {commit} but its disk holds {} entries", node.log.len()));
        }
        if commit > node.commit {
            let node = &mut c.nodes[id as usize - 1];
            if commit > base {
                c.checker.committed(id, term, node.commit.max(base), commit, &node.log, &node.prefix)?;
            }
            node.commit = commit;
            // Leader completeness for every leader, now that more is known committed.
            if role == Role::Leader {
                c.checker.leader_complete(id, term, last, |i| c.hash_at(id, raft, i))?;
            }
            for n in &c.nodes {
                if let Some(r) = n.engine.as_ref().map(Engine::raft).filter(|r| r.role() == Role::Leader) {
                    c.checker.leader_complete(n.id, r.term(), r.last_index(), |i| c.hash_at(n.id, r, i))?;
                }
            }
        }
        Ok(())
    }

    /// The node's database applies `items` (committed entries, in order) with the node's own
    /// apply code; the writes that wait on them hear.
    fn apply_all(&mut self, items: Vec<ApplyItem<Ticket>>) -> Result<(), String> {
        let (id, now, c) = (self.id, self.c.now, &mut *self.c);
        for item in &items {
            let node = &c.nodes[id as usize - 1];
            if item.index != node.applied + 1 {
                return Err(format!("node{id} applies index {} after index {}", item.index, node.applied));
            }
            if item.index > node.commit {
                return Err(format!(
                    "node{id} applies index {} with entries up to {} committed",
                    item.index, node.commit
                ));
            }
            c.checker.applied(id, item.index, &item.entry)?;
            c.nodes[id as usize - 1].applied = item.index;
        }
        let node = &mut c.nodes[id as usize - 1];
        let outcomes = apply_entries(&mut node.store, &items)
            .map_err(|e| format!("node{id}'s database cannot apply entries {}..: {e}", items[0].index))?;
        for (item, outcome) in items.into_iter().zip(outcomes) {
            let Some((_, title)) = register_write(item.entry.value.get()) else { continue };
            if let Some(ApplyOutcome::Rejected { status, error }) = outcome {
                return Err(format!("node{id}'s database refused the register write {title}: {status} {error}"));
            }
            c.first_applied.entry(title).or_insert((item.index, now));
            // The write that proposed this entry is answered once it is applied.
            if let Some(Some(op)) = item.waiter {
                c.history[op].ret = Some(now);
            }
        }
        Ok(())
    }

    /// A read handed over: it runs on the node's database now, which holds everything handed
    /// to it before.
    fn read_now(&mut self, op: usize) -> Result<(), String> {
        let (id, c) = (self.id, &mut *self.c);
        let register = c.history[op].register;
        let product = c.nodes[id as usize - 1]
            .store
            .get_product(register)
            .map_err(|e| format!("node{id}'s database cannot read product {register}: {e}"))?;
        let title = product.map(|p| p.title).ok_or_else(|| format!("node{id} has no product {register}"))?;
        c.history[op].seen = c.first_applied.get(&title).map(|&(index, _)| index);
        c.history[op].ret = Some(c.now);
        Ok(())
    }
}

impl Io<Ticket> for SimIo<'_> {
    fn wall_micros(&mut self) -> u64 {
        WALL_EPOCH + self.c.now
    }

    fn is_from(&mut self, id: NodeId, from: SocketAddr) -> bool {
        from == addr(id)
    }

    fn send(&mut self, to: NodeId, datagram: &[u8]) {
        if self.dead {
            return;
        }
        let datagram = self.c.sealed(self.id, &node_name(to), datagram.to_vec());
        if let Err(why) = self.c.net.send(self.c.now, self.id, to, datagram) {
            self.failed(why);
        }
    }

    fn send_paced(&mut self, to: NodeId, fragments: &[Vec<u8>]) {
        for fragment in fragments {
            self.send(to, fragment);
        }
    }

    fn reply(&mut self, _to: SocketAddr, _datagram: &[u8], _signed: bool) {}

    fn write(&mut self, write: Write, then: Outgoing) -> bool {
        if self.dead {
            return true;
        }
        if std::mem::take(&mut self.crash_before_write) {
            let id = self.id;
            self.c.trace(|| format!("node{id} CRASH before persisting the entries it sent"));
            self.dead = true;
            return true;
        }
        // Signed as they are handed over, as the node's transport signs them for its log writer.
        let then = self.sealed_all(then);
        let done_at = self.c.disk_time(self.id);
        self.c.slot_mut(self.id).writes.push_back(Pending { write, then, done_at });
        true
    }

    fn send_after(&mut self, then: Outgoing) -> bool {
        if self.dead {
            return true;
        }
        if self.c.slot(self.id).writes.is_empty() {
            for (to, datagram) in then {
                self.send(to, &datagram);
            }
            return true;
        }
        let then = self.sealed_all(then);
        if let Some(last) = self.c.slot_mut(self.id).writes.back_mut() {
            last.then.extend(then);
        }
        true
    }

    fn apply(&mut self, items: Vec<ApplyItem<Ticket>>) {
        if self.dead {
            return;
        }
        if let Err(why) = self.apply_all(items) {
            self.failed(why);
        }
    }

    fn prepare(&mut self, _item: ApplyItem<Ticket>) {}

    fn abandon_prepared(&mut self) {}

    fn read(&mut self, ticket: Ticket) {
        if self.dead {
            return;
        }
        let Some(op) = ticket else { return };
        if let Err(why) = self.read_now(op) {
            self.failed(why);
        }
    }

    /// A request that failed: its client knows nothing sure, and it stays without an answer
    /// in the history.
    fn answer(&mut self, _ticket: Ticket, _result: WriteResult) {}

    fn make_snapshot(&mut self) -> Result<(), String> {
        if self.dead {
            return Ok(());
        }
        let (id, now) = (self.id, self.c.now);
        let took = self.c.disk_rng.range(MS, 20 * MS);
        let node = self.c.slot_mut(id);
        let mut bytes = Vec::new();
        let made = node.store.write_snapshot(&mut bytes).map_err(|e| e.to_string()).map(|(index, term)| SnapshotInfo {
            index,
            term,
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        });
        if let Ok(info) = &made {
            node.snap_out = Some((info.clone(), bytes));
        }
        // The applier does one thing after another: this after what it was given before.
        let at = node.sm_events.back().map_or(0, |(at, _)| *at).max(now + took);
        node.sm_events.push_back((at, SmEvent::Made(made)));
        Ok(())
    }

    fn read_snapshot(&mut self, info: &SnapshotInfo, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        match &self.c.slot(self.id).snap_out {
            Some((made, bytes)) if made == info => bytes
                .get(offset as usize..offset as usize + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| "beyond the snapshot's end".into()),
            _ => Err("no such snapshot here".into()),
        }
    }

    fn begin_snapshot(&mut self, info: &SnapshotInfo) -> u64 {
        let node = self.c.slot_mut(self.id);
        match &node.snap_in {
            Some((held, _, without_gap)) if held == info => *without_gap,
            _ => {
                node.snap_in = Some((info.clone(), Vec::new(), 0));
                0
            }
        }
    }

    fn write_snapshot(&mut self, info: &SnapshotInfo, offset: u64, data: &[u8], held: u64) -> Result<(), String> {
        if self.dead {
            return Err("the node is down".into());
        }
        match &mut self.c.slot_mut(self.id).snap_in {
            Some((this, bytes, without_gap)) if this == info && offset + data.len() as u64 <= info.size => {
                let end = offset as usize + data.len();
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[offset as usize..end].copy_from_slice(data);
                *without_gap = held;
                Ok(())
            }
            _ => Err(format!("a piece at {offset} of a snapshot not begun")),
        }
    }

    fn load_snapshot(&mut self, info: &SnapshotInfo) {
        if self.dead {
            return;
        }
        let took = self.c.disk_rng.range(MS, 20 * MS);
        let now = self.c.now;
        let node = self.c.slot_mut(self.id);
        let at = node.sm_events.back().map_or(0, |(at, _)| *at).max(now + took);
        node.sm_events.push_back((at, SmEvent::Load(info.clone())));
    }

    fn observe(&mut self, raft: &Raft, ready: &Ready) {
        if self.dead || self.error.is_some() {
            return;
        }
        if let Err(why) = self.check_ready(raft, ready) {
            self.failed(why);
        }
    }
}
