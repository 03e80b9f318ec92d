//! The loop that drives a node: datagrams, clients' requests and timers in, durable writes
//! and datagrams out, committed entries applied in order.
//!
//! What the node does with each input is the [`Engine`]'s; this loop gives it the inputs and
//! carries out what it decides, through the node's UDP socket ([`Transport`]), its log writer
//! thread ([`LogWriter`]) and its database [`Applier`]. One task owns the engine and the
//! socket. Each turn it waits for a datagram, the engine's next deadline, a write done, a
//! client's request or a stop signal; takes every datagram already waiting; then lets the
//! engine end the turn (its core's `Ready` handled as persist → send → apply, where
//! persisting hands the write to the log writer with the messages that must follow it, which
//! the writer sends once the write is on disk). So a slow flush holds up the messages that
//! depend on it, and nothing else: timers fire, and a leader keeps sending heartbeats. Timers
//! are exact deadlines from the core, not a periodic tick, so no tick period is added to
//! elections or heartbeats.
//!
//! Beside the engine, the loop watches the node's health (its database applies, its disk keeps
//! up as leader) and publishes the node's status for the HTTP server.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::apply::{AppliedIndex, Applier, ApplyItem, SnapshotDone, SnapshotJob, WriteResult};
use super::engine::{Compaction, Engine, Io, Outgoing, WriterStopped};
use super::guard::Guard;
use super::log_writer::{Datagrams, LogWriter, Write};
use super::raft::{EntryValue, LogEntry, Micros, NodeId, Raft, Role};
use super::snapshot_files::SnapshotFiles;
use super::status::{NodeStatus, PeerStatus};
use super::storage::StorageError;
use super::transfer::SnapshotInfo;
use super::transport::{Transport, RECV_BUFFER};
use crate::config::Cluster;
use crate::proto::{self, auth};

pub use super::engine::Stopped;

/// At most this many waiting datagrams are taken in one turn.
const MAX_BURST: usize = 256;
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

/// Where a client's answer goes.
type Reply = oneshot::Sender<WriteResult>;

/// A replicated write from the HTTP API: a serialized store command (None: a linearizable
/// read, answered with [`WriteResult::Readable`] once it may run) and where to answer.
pub struct Proposal {
    pub command: Option<EntryValue>,
    pub reply: Reply,
}

/// One node's running state.
pub struct Driver {
    engine: Engine<Reply>,
    writer: LogWriter,
    transport: Transport,
    origin: Instant,
    cluster: Cluster,
    status: watch::Sender<Arc<NodeStatus>>,
    proposals: mpsc::Receiver<Proposal>,
    applier: Applier,
    /// Every node's name and HTTP address, as `/status` shows them.
    names: BTreeMap<NodeId, (Arc<str>, Arc<str>)>,
    /// The applier's progress, where a database that cannot apply makes the node give up
    /// leading.
    stall_watch: Option<AppliedIndex>,
    /// Whether this node's disk holds up its answers as leader.
    disk_watch: DiskWatch,
    /// When the database and the log are next looked at.
    next_health_check: std::time::Instant,
    /// Where snapshots made for followers and received from a leader are kept.
    snapshot_files: Option<SnapshotFiles>,
}

/// The engine's [`Io`] on the real node.
struct NodeIo<'a> {
    transport: &'a mut Transport,
    writer: &'a LogWriter,
    applier: &'a Applier,
    files: Option<&'a mut SnapshotFiles>,
}

impl NodeIo<'_> {
    fn addressed(&mut self, outgoing: Outgoing) -> Datagrams {
        outgoing.into_iter().filter_map(|(to, datagram)| self.transport.addressed(to, &datagram)).collect()
    }
}

impl Io<Reply> for NodeIo<'_> {
    fn wall_micros(&mut self) -> u64 {
        auth::clock_micros()
    }

    fn is_from(&mut self, id: NodeId, from: SocketAddr) -> bool {
        self.transport.is_from(id, from)
    }

    fn send(&mut self, to: NodeId, datagram: &[u8]) {
        self.transport.send_to_node(to, datagram);
    }

    fn send_paced(&mut self, to: NodeId, fragments: &[Vec<u8>]) {
        self.transport.send_paced(to, fragments);
    }

    fn reply(&mut self, to: SocketAddr, datagram: &[u8], signed: bool) {
        self.transport.send_reply(to, datagram, signed);
    }

    fn write(&mut self, write: Write, then: Outgoing) -> bool {
        let then = self.addressed(then);
        self.writer.write(write, then)
    }

    fn send_after(&mut self, then: Outgoing) -> bool {
        let then = self.addressed(then);
        self.writer.send_after(then)
    }

    fn apply(&mut self, items: Vec<ApplyItem>) {
        self.applier.apply(items);
    }

    fn prepare(&mut self, item: ApplyItem) {
        self.applier.prepare(item);
    }

    fn abandon_prepared(&mut self) {
        self.applier.abandon_prepared();
    }

    fn read(&mut self, reply: Reply) {
        self.applier.push_read(reply);
    }

    fn answer(&mut self, reply: Reply, result: WriteResult) {
        let _ = reply.send(result);
    }

    fn make_snapshot(&mut self) -> Result<(), String> {
        let files = self.files.as_ref().ok_or("no place for snapshots")?;
        let path = files.made_path().map_err(|e| e.to_string())?;
        self.applier.snapshot(SnapshotJob::Make { path });
        Ok(())
    }

    fn read_snapshot(&mut self, info: &SnapshotInfo, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        self.files.as_ref().ok_or("no snapshot files")?.read(info, offset, len)
    }

    fn begin_snapshot(&mut self, info: &SnapshotInfo) -> u64 {
        self.files.as_mut().map_or(0, |files| files.begin(info))
    }

    fn write_snapshot(&mut self, info: &SnapshotInfo, offset: u64, bytes: &[u8], held: u64) -> Result<(), String> {
        self.files.as_mut().ok_or("no snapshot files")?.write(info, offset, bytes, held)
    }

    fn load_snapshot(&mut self, info: &SnapshotInfo) {
        if let Some(files) = &self.files {
            self.applier.snapshot(SnapshotJob::Load { path: files.received_path(), info: info.clone() });
        }
    }
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
            batching: Default::default(),
            run_ahead: Default::default(),
            accepted_by: Default::default(),
            leader_credentials: None,
        }));
        let buffers = transport.buffers();
        log::info!(
            "{}: UDP socket buffers: receive {} KiB, send {} KiB; messages up to {} KiB",
            proto::node_name(raft.id()),
            buffers.receive / 1024,
            buffers.send / 1024,
            Engine::<Reply>::largest_message(&raft) / 1024
        );
        let engine = Engine::new(raft, cluster.clone(), origin.into_std(), super::entropy_seed());
        let mut driver = Driver {
            engine,
            writer,
            transport,
            origin,
            cluster,
            status,
            proposals,
            applier,
            names,
            stall_watch: None,
            disk_watch: DiskWatch::default(),
            next_health_check: std::time::Instant::now(),
            snapshot_files: None,
        };
        driver.publish();
        driver
    }

    /// Snapshots are kept in `files`: this node can send them to followers and take them
    /// from a leader. With `compaction`, its log is compacted (and its own database file,
    /// written without flushes, is flushed as often as that needs).
    pub fn snapshots(&mut self, files: SnapshotFiles, compaction: Option<Compaction>) {
        self.snapshot_files = Some(files);
        if let Some(c) = compaction {
            // One flush a compaction: the log drops what the flush before made durable.
            self.applier.flush_every(c.every_entries.max(1));
        }
        self.engine.set_compaction(compaction);
    }

    /// The entries compacted away that RETRIEVE still shows, as the log's storage kept them.
    pub fn restore_retained(&mut self, retained: Vec<LogEntry>) {
        self.engine.restore_retained(retained);
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
        let name = self.engine.name().to_string();
        let stall = self.stall_watch.as_ref().and_then(AppliedIndex::stall);
        let stall = stall.filter(|s| now.duration_since(s.since) >= STALL_STEP_DOWN);
        let raft = self.engine.raft();
        let leading = raft.role() == Role::Leader;
        let write_time = self.writer.write_time();
        let (disk_ok, handed_over) =
            self.disk_watch.check(now, leading, raft.commit_index(), raft.durable_index(), write_time);
        if handed_over {
            log::warn!(
                "{name}: writes committed on its followers' disks kept waiting for its own (at {DISK_SLOW_CHECKS} of \
                 {DISK_WINDOW} checks over the last {:.0?}): its disk is slower than theirs. It stops leading, and \
                 stands for election again in {:.0?}",
                HEALTH_CHECK * DISK_WINDOW as u32,
                DISK_REST
            );
        }
        let eligible = stall.is_none() && disk_ok;
        if eligible == raft.is_eligible() {
            return;
        }
        if let Some(s) = &stall {
            log::warn!(
                "{name}: its database has not applied entry {} for {:.0?} ({}): it does not lead until it does",
                s.index,
                now.duration_since(s.since),
                s.error
            );
        }
        if eligible {
            log::info!("{name}: it may lead again");
        }
        let t = self.now();
        self.engine.set_eligible(t, eligible);
    }

    /// Secure mode: datagrams leave signed, and only those `guard` admits are taken.
    pub fn secure(&mut self, guard: Guard) {
        self.transport.sign_with(guard.key().clone());
        self.engine.secure(guard);
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
        let raft = self.engine.raft();
        let handshake = self.engine.handshake();
        let me = raft.id();
        let matches = raft.match_indexes();
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
        let leader = raft.leader().map(|id| self.name_of(id));
        let accepted_by = if *current.accepted_by == *handshake.followers() {
            current.accepted_by.clone()
        } else {
            Arc::new(handshake.followers().clone())
        };
        let leader_credentials = match (handshake.leader_credentials(), &current.leader_credentials) {
            (Some(now), Some(then)) if **then == *now => Some(then.clone()),
            (now, _) => now.cloned().map(Arc::new),
        };
        let (elections, leader_changes) = self.engine.elections();
        let snapshot = NodeStatus {
            name: current.name.clone(),
            role: raft.role().as_str(),
            term: raft.term(),
            leader: leader.as_ref().map(|(name, _)| name.clone()),
            leader_http: leader.map(|(_, http)| http),
            commit_index: raft.commit_index(),
            applied_index: self.applier.applied(),
            last_log_index: raft.last_index(),
            peers,
            elections,
            leader_changes,
            batching: self.engine.batching(),
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
    pub fn micros(origin: Instant) -> Micros {
        origin.elapsed().as_micros() as u64
    }

    fn now(&self) -> Micros {
        Self::micros(self.origin)
    }

    /// The engine, and the node's socket, log writer and applier as its [`Io`].
    fn parts(&mut self) -> (&mut Engine<Reply>, NodeIo<'_>) {
        let io = NodeIo {
            transport: &mut self.transport,
            writer: &self.writer,
            applier: &self.applier,
            files: self.snapshot_files.as_mut(),
        };
        (&mut self.engine, io)
    }

    /// Runs until SHUTDOWN or `signal` completes. A storage failure stops the node with an
    /// error: without durable writes it may not vote or acknowledge anything.
    pub async fn run(mut self, signal: impl Future<Output = ()>) -> Result<Stopped, StorageError> {
        tokio::pin!(signal);
        let mut buf = vec![0u8; RECV_BUFFER];
        let now = self.now();
        let (engine, mut io) = self.parts();
        if engine.handle_ready(now, &mut io).is_err() {
            return Err(self.writer_failure());
        }
        loop {
            let deadline = self.origin + Duration::from_micros(self.engine.next_deadline());
            let paced = self.transport.next_paced(std::time::Instant::now());
            let mut signalled = false;
            tokio::select! {
                received = self.transport.recv(&mut buf) => match received {
                    Ok((n, from)) => {
                        let origin = self.origin;
                        let (engine, mut io) = self.parts();
                        engine.datagram(Self::micros(origin), &buf[..n], from, &mut io);
                        for _ in 1..MAX_BURST {
                            if engine.stopping() {
                                break;
                            }
                            let Some((n, from)) = io.transport.try_recv(&mut buf) else { break };
                            engine.datagram(Self::micros(origin), &buf[..n], from, &mut io);
                        }
                    }
                    Err(e) => {
                        // ICMP errors from earlier sends surface here on Linux; nothing to do.
                        log::debug!("{}: receive error: {e}", self.engine.name());
                    }
                },
                done = self.writer.done.recv() => match done {
                    Some(Ok(persist_id)) => self.engine.persisted(persist_id),
                    Some(Err(e)) => return Err(e),
                    None => return Err(StorageError::WriterStopped),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let now = self.now();
                    self.engine.tick(now);
                }
                Some(proposal) = self.proposals.recv() => {
                    // Take every waiting write: they leave as one batch of entries.
                    let now = self.now();
                    self.propose(now, proposal);
                    for _ in 1..MAX_BURST {
                        let Ok(proposal) = self.proposals.try_recv() else { break };
                        self.propose(now, proposal);
                    }
                }
                Some(done) = self.applier.snapshots.recv() => self.snapshot_done(done),
                _ = tokio::time::sleep_until(paced.map_or(deadline, Instant::from_std)), if paced.is_some() => {}
                _ = &mut signal => signalled = true,
            }
            self.check_health();
            let now = self.now();
            self.engine.state_durable(self.applier.durable());
            let (engine, mut io) = self.parts();
            let stopped = match engine.end_turn(now, &mut io) {
                Ok(stopped) => stopped,
                Err(WriterStopped) => return Err(self.writer_failure()),
            };
            self.transport.flush_paced(std::time::Instant::now());
            self.publish();
            if let Some(stopped) = stopped.or(signalled.then_some(Stopped::Signal)) {
                // What was handed to the disk is written before the node stops.
                self.writer.finish();
                while let Ok(done) = self.writer.done.try_recv() {
                    self.engine.persisted(done?);
                }
                let (engine, mut io) = self.parts();
                engine.finish(&mut io);
                self.applier.stop();
                return Ok(stopped);
            }
        }
    }

    /// The applier did snapshot work the engine asked for.
    fn snapshot_done(&mut self, done: SnapshotDone) {
        let now = self.now();
        match done {
            SnapshotDone::Made(made) => {
                let made = match (made, self.snapshot_files.as_mut()) {
                    (Ok(info), Some(files)) => files.made(&info).map(|()| info),
                    (made, _) => made,
                };
                let (engine, mut io) = self.parts();
                engine.snapshot_made(now, made, &mut io);
            }
            SnapshotDone::Loaded(loaded) => {
                if let Some(files) = self.snapshot_files.as_mut() {
                    files.received_done(loaded.is_ok());
                }
                let (engine, mut io) = self.parts();
                engine.snapshot_loaded(now, loaded, &mut io);
            }
        }
    }

    fn propose(&mut self, now: Micros, proposal: Proposal) {
        let Proposal { command, reply } = proposal;
        let (engine, mut io) = self.parts();
        // A refused request is answered by the engine.
        let _ = match command {
            Some(command) => engine.write(now, command, reply, &mut io).map(drop),
            None => engine.read(now, reply, &mut io).map(drop),
        };
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
}

#[cfg(test)]
mod tests {
    use super::{DiskWatch, DISK_REST, DISK_SLOW_WRITE, HEALTH_CHECK};

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
}
