//! A deterministic simulated cluster that drives the real Raft core.
//!
//! Time is virtual, in microseconds. Datagrams in flight wait in the [`Network`]'s queue;
//! node timers are read from each core's `next_deadline()`, and the earliest of the two is
//! processed next, so a run is a pure function of its seed.
//!
//! Every input to a node (a datagram, a timer, a proposal, a controller request) is followed
//! by what a real driver does with the node's `Ready`, in order: persist the hard state and
//! the log into the node's simulated durable storage, send the messages, apply committed
//! entries to the node's state machine. As the driver does, a leader's AppendEntries leave
//! before its new entries are persisted, and a leader may die in between.
//!
//! Persisting takes time when [`Cluster::disk`] says so, as on the real node, whose log
//! writer works beside the Raft thread: the write completes later, in order with the node's
//! other writes, and meanwhile the core goes on taking inputs and firing timers; what it
//! sends waits for the write (a leader's AppendEntries excepted, as above). Writes go through
//! the node's real log code (`Storage`) onto a [`SimDisk`]. A crash drops the core, the writes
//! not yet done (the one on its way torn, half the time) and everything else volatile; a
//! restart builds a new core from what `Storage` recovers from the disk.
//!
//! After every step the [`Checker`] verifies Raft's safety properties; a violation, like any
//! panic of the core, fails the run with the seed and a dump of the cluster. The clients'
//! register writes and reads are checked for linearizability against the log's order at the
//! end of a run ([`Cluster::check_linearizable`]).

pub mod chaos;
mod checker;
pub mod disk;
mod network;

use std::collections::{HashMap, HashSet};

use labctl::node::raft::{
    Config, EntryValue, Event, HardState, LogEntry, Micros, Msg, NodeId, ProposeError, Raft, Rng, Role,
};
use labctl::node::storage::{Recovered, Storage, StorageError};
use labctl::node::waiting::Waiting;
use serde_json::Value;

pub use self::checker::Checker;
use self::disk::SimDisk;
pub use self::network::Network;

pub const MS: Micros = 1_000;
pub const SEC: Micros = 1_000_000;
/// How long a client's write or read waits before the node gives up on it, as the driver's.
const REQUEST_DEADLINE: Micros = 10 * SEC;

/// A write handed to a node's disk and not done yet, with the messages that wait for it.
struct Write {
    persist_id: u64,
    hard: Option<HardState>,
    from: Option<u64>,
    entries: Vec<LogEntry>,
    messages: Vec<(NodeId, Msg)>,
    done_at: Micros,
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

/// One simulated server: a core while it is up, and the storage that survives a crash.
struct Node {
    id: NodeId,
    cfg: Config,
    raft: Option<Raft>,
    /// The node's real log code, open while the node is up, on its simulated disk.
    storage: Option<Storage>,
    disk: SimDisk,
    /// Durable: the persisted hard state and log, as the writes that completed left them
    /// (what the disk must give back on a restart)...
    hard: HardState,
    log: Vec<LogEntry>,
    /// ...and the write on its way when the node last stopped, which the disk may hold in
    /// whole or not at all.
    unsure: Option<(Option<HardState>, Option<u64>, Vec<LogEntry>)>,
    /// Hash of the durable log up to each index.
    prefix: Vec<u64>,
    /// Volatile: how far the state machine has applied the log...
    applied: u64,
    /// ...and the registers it holds: a register's name and the log index of the write that
    /// set it.
    registers: HashMap<String, u64>,
    /// Volatile: the clients' register writes and reads waiting on the core, kept by the
    /// driver's own bookkeeping (ops of the history).
    waiting: Waiting<usize, Micros>,
    /// Volatile: the commit index the core last reported.
    commit: u64,
    /// Volatile: the term this node was last seen leading and its log length then.
    leading: Option<(u64, u64)>,
    /// Volatile: writes on their way to the disk, oldest first.
    writes: std::collections::VecDeque<Write>,
    restarts: u64,
}

/// A simulated cluster of `n` nodes, `node1..=nodeN`.
pub struct Cluster {
    pub seed: u64,
    now: Micros,
    nodes: Vec<Node>,
    pub net: Network,
    checker: Checker,
    proposals: u64,
    trace: bool,
    /// Probability that a leader dies between sending new entries and persisting them (the
    /// driver sends a leader's AppendEntries before its own fsync).
    pub crash_before_persist: f64,
    crash_rng: Rng,
    /// How long writes take (by default, no time).
    pub disk: Disk,
    disk_rng: Rng,
    /// Writes that took time, and those that stalled.
    pub slow_writes: u64,
    pub stalled_writes: u64,
    /// Linearizable reads asked and not yet confirmed: read id -> entries known committed
    /// anywhere when it was asked, which its read index must cover.
    reads: std::collections::HashMap<u64, u64>,
    next_read: u64,
    /// Reads confirmed so far.
    pub reads_confirmed: u64,
    /// The clients' operations on registers, as they saw them, for the linearizability check.
    history: Vec<Op>,
    /// Every register write by its entry's key, and the index and time at which a node first
    /// applied that entry.
    write_ops: HashMap<String, usize>,
    first_applied: HashMap<String, (u64, Micros)>,
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
                    raft: Some(raft),
                    storage: Some(storage),
                    disk,
                    hard: HardState::default(),
                    log: Vec::new(),
                    unsure: None,
                    prefix: Vec::new(),
                    applied: 0,
                    registers: HashMap::new(),
                    waiting: Waiting::default(),
                    commit: 0,
                    leading: None,
                    writes: std::collections::VecDeque::new(),
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
            proposals: 0,
            trace: std::env::var_os("LABCTL_SIM_TRACE").is_some(),
            crash_before_persist: 0.0,
            crash_rng: Rng::new(seed ^ 0x5EED_C4A5_4BEF_0E11),
            disk: Disk::default(),
            disk_rng: Rng::new(seed ^ 0xD15C_5EED_0BAD_F00D),
            slow_writes: 0,
            stalled_writes: 0,
            reads: std::collections::HashMap::new(),
            next_read: 0,
            reads_confirmed: 0,
            history: Vec::new(),
            write_ops: HashMap::new(),
            first_applied: HashMap::new(),
        }
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
        self.slot(id).raft.is_some()
    }

    /// The core of a node that is up.
    pub fn node(&self, id: NodeId) -> &Raft {
        match &self.slot(id).raft {
            Some(raft) => raft,
            None => self.fail(&format!("node{id} is down")),
        }
    }

    pub fn up_nodes(&self) -> impl Iterator<Item = &Raft> {
        self.nodes.iter().filter_map(|n| n.raft.as_ref())
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
        self.nodes.iter().all(|n| n.raft.as_ref().is_some_and(|r| r.term() == term && r.leader() == Some(leader)))
    }

    /// The user entries a node has committed, in log order.
    pub fn committed_values(&self, id: NodeId) -> Vec<Value> {
        let raft = self.node(id);
        raft.log().slice(1, raft.commit_index()).iter().filter(|e| !e.is_noop()).map(|e| e.value.to_value()).collect()
    }

    /// True when every node is up and has committed every value.
    pub fn all_committed(&self, values: &[Value]) -> bool {
        let first = values.first().map(EntryValue::from);
        self.nodes.iter().all(|n| {
            let Some(raft) = &n.raft else { return false };
            let committed = raft.log().slice(1, raft.commit_index());
            if let (1, Some(first)) = (values.len(), &first) {
                // The common case: look from the end, where a new entry is.
                return committed.iter().rev().any(|e| e.value == *first);
            }
            let have: HashSet<String> = committed.iter().map(|e| e.value.to_string()).collect();
            values.iter().all(|v| have.contains(&v.to_string()))
        })
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
            match &n.raft {
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

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("{:>10}us {}", self.now, what());
        }
    }

    // ---- inputs ----

    /// A client proposal to node `id`; the key is unique per proposal.
    /// A node that is down (e.g. crashed handling an earlier proposal) refuses it.
    pub fn propose(&mut self, id: NodeId, value: Value) -> Result<u64, ProposeError> {
        if !self.is_up(id) {
            return Err(ProposeError::NotLeader { leader: None });
        }
        self.proposals += 1;
        let key = format!("k{}", self.proposals);
        let write = register_write(&value);
        let result = self.raft_mut(id).propose(Some(key.clone()), value);
        self.trace(|| format!("node{id} propose -> {result:?}"));
        if let (Ok(index), Some(register)) = (&result, write) {
            // The client hears once its node applies the entry, as the driver answers it.
            let term = self.node(id).term();
            self.history.push(Op { register, write: true, seen: None, call: self.now, ret: None });
            let op = self.history.len() - 1;
            self.write_ops.insert(key, op);
            let deadline = self.now + REQUEST_DEADLINE;
            self.nodes[id as usize - 1].waiting.write(*index, term, op, deadline);
        }
        self.after_input(id);
        result
    }

    /// A linearizable read on node `id` (ReadIndex); false when the node refuses it.
    pub fn read(&mut self, id: NodeId) -> bool {
        self.read_register(id, None)
    }

    /// A linearizable read of `register` on node `id`, answered (and put in the history) once
    /// the node's state machine has applied up to the read index; false when the node refuses it.
    pub fn read_register(&mut self, id: NodeId, register: Option<String>) -> bool {
        if !self.is_up(id) {
            return false;
        }
        self.next_read += 1;
        let read = self.next_read;
        let result = self.raft_mut(id).read_index(read);
        self.trace(|| format!("node{id} read {read} -> {result:?}"));
        if result.is_ok() {
            self.reads.insert(read, self.checker.committed_len());
            if let Some(key) = register {
                self.history.push(Op { register: key, write: false, seen: None, call: self.now, ret: None });
                let (op, term, deadline) = (self.history.len() - 1, self.node(id).term(), self.now + REQUEST_DEADLINE);
                self.nodes[id as usize - 1].waiting.read(read, term, op, deadline);
            }
        }
        self.after_input(id);
        result.is_ok()
    }

    /// A controller's TIMEOUT to node `id`.
    pub fn timeout_now(&mut self, id: NodeId) {
        self.trace(|| format!("node{id} TIMEOUT"));
        let now = self.now;
        self.raft_mut(id).timeout_now(now);
        self.after_input(id);
    }

    /// A controller's CONVERT_FOLLOWER to node `id`.
    pub fn convert_follower(&mut self, id: NodeId) {
        self.trace(|| format!("node{id} CONVERT_FOLLOWER"));
        let now = self.now;
        self.raft_mut(id).convert_follower(now);
        self.after_input(id);
    }

    /// Node `id` may lead, or may not (its state machine cannot apply).
    pub fn set_eligible(&mut self, id: NodeId, eligible: bool) {
        self.trace(|| format!("node{id} {}", if eligible { "may lead" } else { "may not lead" }));
        let now = self.now;
        self.raft_mut(id).set_eligible(now, eligible);
        self.after_input(id);
    }

    /// Kills node `id`: its core, state machine and everything else volatile are gone.
    pub fn crash(&mut self, id: NodeId) {
        self.trace(|| format!("node{id} CRASH"));
        let node = &self.nodes[id as usize - 1];
        if node.raft.is_none() {
            return;
        }
        if let Err(why) = self.check_durable(id) {
            self.fail(&why);
        }
        self.kill(id);
    }

    /// Drops what a crash loses: the core, its writes not done yet, the state machine. The
    /// write on its way, if the disk had started it, reaches the disk in part.
    fn kill(&mut self, id: NodeId) {
        let torn = self.disk_rng.chance(0.5);
        let node = &mut self.nodes[id as usize - 1];
        match (node.writes.front(), node.storage.as_mut()) {
            (Some(w), Some(storage)) if torn => {
                node.disk.crash_in(0);
                let entries = w.from.map(|from| (from, &w.entries[..]));
                if storage.persist(w.hard, entries).is_ok() {
                    self.fail(&format!("node{id}'s disk crashed inside a write that returned"));
                }
                node.unsure = Some((w.hard, w.from, w.entries.clone()));
            }
            _ => node.disk.crash(),
        }
        let node = &mut self.nodes[id as usize - 1];
        node.storage = None;
        node.disk.restart();
        node.raft = None;
        node.writes.clear();
        node.registers.clear();
        // Its clients hear nothing more: what they asked stays without an answer.
        node.waiting = Waiting::default();
        node.applied = 0;
        node.commit = 0;
        node.leading = None;
    }

    /// With no write on its way, what a restart would see must be what the core has.
    fn check_durable(&self, id: NodeId) -> Result<(), String> {
        let node = self.slot(id);
        let Some(raft) = &node.raft else { return Ok(()) };
        if node.writes.is_empty() && (raft.hard_state() != node.hard || raft.log().entries() != node.log.as_slice()) {
            return Err(format!("node{id}'s durable state differs from its core's state with no write on its way"));
        }
        Ok(())
    }

    /// Restarts a crashed node from what its log code recovers from its disk.
    pub fn restart(&mut self, id: NodeId) {
        let now = self.now;
        let seed = self.seed;
        if self.slot(id).raft.is_some() {
            return;
        }
        if let Err(why) = self.recover(id) {
            self.fail(&why);
        }
        let node = &mut self.nodes[id as usize - 1];
        node.restarts += 1;
        let seed = seed.wrapping_add(node.restarts.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        node.raft = Some(Raft::new(node.cfg.clone(), node.hard, node.log.clone(), now, seed));
        self.trace(|| format!("node{id} RESTART"));
        self.after_input(id);
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
        let synced = Recovered { hard_state: node.hard, entries: node.log.clone() };
        let unsure = node.unsure.take();
        if recovered == synced {
            return Ok(());
        }
        let Some((hard, from, entries)) = unsure else {
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
        self.store(id, hard, from, entries)?;
        let node = self.slot(id);
        if recovered.hard_state != node.hard || recovered.entries != node.log {
            return Err(format!(
                "node{id} recovered term {} and {} entries from its disk: neither what completed writes left nor \
                 that with the write on its way",
                recovered.hard_state.term,
                recovered.entries.len()
            ));
        }
        Ok(())
    }

    fn raft_mut(&mut self, id: NodeId) -> &mut Raft {
        if self.nodes[id as usize - 1].raft.is_none() {
            self.fail(&format!("node{id} is down"));
        }
        self.nodes[id as usize - 1].raft.as_mut().expect("up")
    }

    // ---- running ----

    /// Processes the next event (a timer or a datagram) due at or before `limit`; false when
    /// there is none.
    pub fn step_before(&mut self, limit: Micros) -> bool {
        let write = self.nodes.iter().filter_map(|n| n.writes.front().map(|w| (w.done_at, n.id))).min();
        if let Some((at, id)) = write.filter(|&(at, _)| at <= limit) {
            let timer = self.nodes.iter().filter_map(|n| n.raft.as_ref().map(|r| r.next_deadline())).min();
            if timer.is_none_or(|t| at <= t) && self.net.next_at().is_none_or(|d| at <= d) {
                self.now = self.now.max(at);
                self.write_done(id);
                return true;
            }
        }
        let timer = self.nodes.iter().filter_map(|n| n.raft.as_ref().map(|r| (r.next_deadline(), n.id))).min();
        let datagram = self.net.next_at();
        match (timer, datagram) {
            (Some((at, id)), d) if at <= limit && d.is_none_or(|d| at <= d) => {
                self.now = self.now.max(at);
                self.tick(id);
                true
            }
            (_, Some(at)) if at <= limit => {
                self.now = self.now.max(at);
                if let Some(d) = self.net.pop() {
                    if self.is_up(d.to) {
                        self.trace(|| format!("node{} <- node{} {:?}", d.to, d.from, d.msg));
                        let now = self.now;
                        self.raft_mut(d.to).step(now, d.from, d.msg);
                        self.after_input(d.to);
                    }
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
                    let have: HashSet<String> =
                        self.node(leader).log().entries().iter().map(|e| e.value.to_string()).collect();
                    for v in values.iter().filter(|v| !have.contains(&v.to_string())) {
                        if let Err(e) = self.propose(leader, v.clone()) {
                            self.fail(&format!("the leader refused a proposal: {e}"));
                        }
                    }
                }
            }
            self.run_until(deadline.min(self.now + 5 * MS));
        }
    }

    /// Cross-checks log matching the slow way: any two logs (of up nodes, or durable logs of
    /// crashed ones) that share an (index, term) are identical up to it.
    pub fn check_logs_match(&self) {
        let logs: Vec<(NodeId, &[LogEntry])> = self
            .nodes
            .iter()
            .map(|n| (n.id, n.raft.as_ref().map_or(n.log.as_slice(), |r| r.log().entries())))
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

    // ---- the driver ----

    fn tick(&mut self, id: NodeId) {
        let now = self.now;
        self.raft_mut(id).tick(now);
        self.after_input(id);
        if let Some(raft) = &self.slot(id).raft {
            if raft.next_deadline() <= now {
                self.fail(&format!("node{id}'s timer did not move past {now}us after it fired"));
            }
        }
    }

    /// Handles the node's `Ready` as a real driver does, then checks the safety properties.
    fn after_input(&mut self, id: NodeId) {
        if let Err(why) = self.handle_ready(id) {
            self.fail(&why);
        }
    }

    fn handle_ready(&mut self, id: NodeId) -> Result<(), String> {
        while self.slot(id).raft.as_ref().is_some_and(|r| r.has_ready()) {
            self.handle_one_ready(id)?;
        }
        Ok(())
    }

    fn handle_one_ready(&mut self, id: NodeId) -> Result<(), String> {
        let now = self.now;
        let node = &mut self.nodes[id as usize - 1];
        let Some(raft) = node.raft.as_mut() else { return Ok(()) };
        let mut ready = raft.take_ready();
        let (role, term, last) = (raft.role(), raft.term(), raft.last_index());

        // 0. A leader's AppendEntries go out before its own write is done, when the term and
        //    vote are unchanged; the node may die before the write is done.
        if ready.hard_state.is_none() {
            let appends;
            (appends, ready.messages) = ready.messages.into_iter().partition(|(_, m)| matches!(m, Msg::Append { .. }));
            let sent = !appends.is_empty();
            for (to, msg) in appends {
                self.net.send(now, id, to, msg)?;
            }
            if sent && ready.persist_id.is_some() && self.crash_rng.chance(self.crash_before_persist) {
                self.trace(|| format!("node{id} CRASH before persisting the entries it sent"));
                self.kill(id);
                return Ok(());
            }
        }

        // Election safety, and a leader only ever appends to its log.
        self.checker.role(id, role, term)?;
        let node = &mut self.nodes[id as usize - 1];
        let raft = node.raft.as_mut().expect("up");
        if role == Role::Leader && !raft.is_eligible() {
            return Err(format!("node{id} leads term {term} though it may not lead"));
        }
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

        // 1. Persist: hand the write to the disk; the rest of the messages wait for it, and
        //    for every earlier write.
        if let Some(persist_id) = ready.persist_id {
            let entries = ready.persist_from.map_or_else(Vec::new, |from| raft.log().slice(from, last).to_vec());
            let done_at = self.disk_time(id);
            let messages = std::mem::take(&mut ready.messages);
            let write =
                Write { persist_id, hard: ready.hard_state, from: ready.persist_from, entries, messages, done_at };
            self.nodes[id as usize - 1].writes.push_back(write);
        } else if ready.hard_state.is_some() || ready.persist_from.is_some() {
            return Err(format!("node{id} asks for a write without a number to report it by"));
        } else if let Some(waiting) = self.nodes[id as usize - 1].writes.back_mut() {
            waiting.messages.append(&mut ready.messages);
        }
        if new_leader {
            self.checker.leader_complete(id, term, last, |i| self.hash_at(id, i))?;
        }

        // 2. Send what need not wait.
        for (to, msg) in std::mem::take(&mut ready.messages) {
            self.net.send(now, id, to, msg)?;
        }

        // What the driver does with role changes: writes and unchecked reads may fail (their
        // clients then know nothing sure: they stay without an answer in the history).
        let node = &mut self.nodes[id as usize - 1];
        for Event::RoleChanged { role, term, .. } in &ready.events {
            node.waiting.role_changed(*role, *term);
        }
        node.waiting.expire(now);

        // A confirmed read must see every entry committed before it was asked.
        for read in &ready.reads {
            let Some(committed) = self.reads.remove(&read.id) else {
                return Err(format!("node{id} confirmed read {} twice or never asked", read.id));
            };
            if read.index < committed {
                return Err(format!(
                    "stale read: node{id} (term {term}) confirmed read {} at index {} but {committed} entries were committed when it was asked",
                    read.id, read.index
                ));
            }
            self.reads_confirmed += 1;
            self.nodes[id as usize - 1].waiting.confirmed(read.id, read.index);
        }

        // 3. Apply.
        let node = &mut self.nodes[id as usize - 1];
        let raft = node.raft.as_ref().expect("up");
        let commit = ready.commit_index;
        if commit > raft.commit_index() {
            return Err(format!("node{id} reports commit index {commit} but holds {}", raft.commit_index()));
        }
        if commit < node.commit {
            return Err(format!("node{id}'s commit index went back from {} to {commit}", node.commit));
        }
        if commit > node.log.len() as u64 {
            return Err(format!("node{id} may apply index {commit} but its disk holds {} entries", node.log.len()));
        }
        let newly_committed = commit > node.commit;
        if newly_committed {
            self.checker.committed(id, term, node.commit, commit, &node.log, &node.prefix)?;
            node.commit = commit;
        }
        while node.applied < commit {
            node.applied += 1;
            let entry = &node.log[node.applied as usize - 1];
            self.checker.applied(id, node.applied, entry)?;
            if let Some(register) = register_write(&entry.value.to_value()) {
                node.registers.insert(register, node.applied);
                if let Some(key) = entry.key.as_ref().filter(|k| !self.first_applied.contains_key(*k)) {
                    self.first_applied.insert(key.clone(), (node.applied, now));
                }
            }
            // The write that proposed this entry is answered once it is applied.
            if let Some(Ok(op)) = node.waiting.handed_off(node.applied, entry.term) {
                self.history[op].ret = Some(now);
            }
        }
        // Reads whose read index is applied run now.
        for op in node.waiting.readable_up_to(node.applied) {
            self.history[op].seen = node.registers.get(&self.history[op].register).copied();
            self.history[op].ret = Some(now);
        }

        // Leader completeness for every leader, now that more is known committed.
        if newly_committed {
            for n in &self.nodes {
                if let Some(r) = n.raft.as_ref().filter(|r| r.role() == Role::Leader) {
                    self.checker.leader_complete(n.id, r.term(), r.last_index(), |i| self.hash_at(n.id, i))?;
                }
            }
        }
        if self.disk.delay.is_none() {
            // A disk that takes no time: the write is done before anything else happens.
            while self.slot(id).writes.front().is_some() {
                self.complete_write(id)?;
            }
        }
        Ok(())
    }

    /// The hash chain of node `id`'s log (as its core has it, on disk or not yet) up to `index`.
    fn hash_at(&self, id: NodeId, index: u64) -> Option<u64> {
        let node = self.slot(id);
        let raft = node.raft.as_ref()?;
        if index == 0 || index > raft.last_index() {
            return None;
        }
        // Up to the durable index the core's log is the one on disk.
        let durable = raft.durable_index().min(node.prefix.len() as u64);
        if index <= durable {
            return Some(node.prefix[index as usize - 1]);
        }
        let start = if durable == 0 { 0 } else { node.prefix[durable as usize - 1] };
        Some(raft.log().slice(durable + 1, index).iter().fold(start, checker::chain))
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

    /// The oldest write of node `id` is done: it is durable, its messages leave, and the core
    /// hears of it.
    fn write_done(&mut self, id: NodeId) {
        if let Err(why) = self.complete_write(id).and_then(|()| self.handle_ready(id)) {
            self.fail(&why);
        }
    }

    fn complete_write(&mut self, id: NodeId) -> Result<(), String> {
        let now = self.now;
        let fail_sync = self.disk_rng.chance(self.disk.sync_failure);
        let node = &mut self.nodes[id as usize - 1];
        let Some(write) = node.writes.pop_front() else { return Ok(()) };
        let storage = node.storage.as_mut().ok_or_else(|| format!("node{id} is up without its log open"))?;
        if fail_sync {
            node.disk.fail_next_sync();
        }
        let entries = write.from.map(|from| (from, &write.entries[..]));
        if let Err(e) = storage.persist(write.hard, entries) {
            // The log writer's error stops the node; the write may be on the disk or not.
            let unsure = (write.hard, write.from, write.entries);
            node.writes.clear();
            self.trace(|| format!("node{id} STOPS: {e}"));
            self.kill(id);
            self.nodes[id as usize - 1].unsure = Some(unsure);
            return Ok(());
        }
        self.store(id, write.hard, write.from, write.entries)?;
        self.trace(|| format!("node{id} write {} done", write.persist_id));
        for (to, msg) in write.messages {
            self.net.send(now, id, to, msg)?;
        }
        self.raft_mut(id).persisted(write.persist_id);
        let raft = self.slot(id).raft.as_ref().expect("up");
        if raft.durable_index() > self.slot(id).log.len() as u64 {
            return Err(format!(
                "node{id} counts index {} as on its disk, which holds {}",
                raft.durable_index(),
                self.slot(id).log.len()
            ));
        }
        self.check_durable(id)
    }

    /// What a write leaves on node `id`'s disk, checked.
    fn store(
        &mut self,
        id: NodeId,
        hard: Option<HardState>,
        from: Option<u64>,
        entries: Vec<LogEntry>,
    ) -> Result<(), String> {
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
        let mut writes: HashMap<&str, Vec<Write>> = HashMap::new();
        let mut reads: HashMap<(&str, Option<u64>), Vec<usize>> = HashMap::new();
        let mut checked = (0, 0);
        for (key, &op) in &self.write_ops {
            let o = &self.history[op];
            match self.first_applied.get(key) {
                Some(&(index, at)) => {
                    let latest = o.ret.map_or(at, |ret| ret.min(at));
                    writes.entry(o.register.as_str()).or_default().push(Write { index, op, latest });
                    checked.0 += 1;
                }
                None if o.ret.is_some() => self.fail(&format!("a write was answered but no node applied it: {o:?}")),
                None => {}
            }
        }
        for (op, o) in self.history.iter().enumerate().filter(|(_, o)| !o.write && o.ret.is_some()) {
            reads.entry((o.register.as_str(), o.seen)).or_default().push(op);
            checked.1 += 1;
        }
        let mut registers: Vec<&str> =
            writes.keys().copied().chain(reads.keys().map(|(register, _)| *register)).collect();
        registers.sort_unstable();
        registers.dedup();
        for register in registers {
            let mut ws = writes.remove(register).unwrap_or_default();
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

/// The register a client's write sets: an entry whose value names one.
fn register_write(value: &Value) -> Option<String> {
    Some(value.get("reg")?.as_str()?.to_string())
}

/// A client's operation on a register, as the client saw it.
#[derive(Debug)]
struct Op {
    register: String,
    write: bool,
    /// A read: the log index of the write whose value it returned (None: none yet).
    seen: Option<u64>,
    call: Micros,
    /// When the client got its answer; None: it got none.
    ret: Option<Micros>,
}
