//! The Raft consensus core: pure state, no sockets, no clock, no disk.
//!
//! # How Raft works here
//!
//! Every node is a follower, a candidate or the leader of a *term* (§5.1). Time is cut into
//! terms, each with at most one leader; a node that hears of a newer term adopts it and
//! becomes a follower.
//!
//! **Leader election (§5.2).** A follower that hears nothing from a leader for a randomized
//! election timeout first runs a *PreVote* round (thesis §9.6): it asks the others whether
//! they would vote for it in the next term, changing nobody's state. Only with a majority of
//! pre-votes does it become a candidate, increment its term, vote for itself and ask for real
//! votes. A voter grants one vote per term, and only to a candidate whose log is at least as
//! up-to-date as its own (last term, then last index; §5.4.1). A candidate with votes from a
//! majority becomes leader and appends a no-op entry, which commits everything before it.
//! Granting a pre-vote restarts the voter's own election timer, as granting a vote does:
//! the pre-candidate is about to campaign, and a competing round would only split the vote.
//!
//! **Staying put (CheckQuorum, thesis §6.2 and §9.6).** A leader that has not heard from a
//! majority within an election timeout steps down. A node that heard from a leader within
//! the minimum election timeout ignores (pre-)vote requests: a live leader is not deposed
//! by a node that merely lost contact with it. Two known traps of PreVote+CheckQuorum are
//! avoided: a node starting a pre-vote forgets its leader, so pre-candidates do not refuse
//! each other forever (etcd #8334); and a node answers a stale leader's AppendEntries with
//! its newer term, so a node stuck on a higher term forces a fresh election instead of
//! being ignored forever (etcd #8501).
//!
//! **TimeoutNow.** A controller's TIMEOUT starts a real election at once, without PreVote,
//! marked `force`: voters grant it even while they hear from a leader (thesis §3.10).
//!
//! **Log replication (§5.3).** The leader appends client entries and sends them in
//! AppendEntries batches of at most [`Config::max_batch_bytes`], pipelining without waiting
//! for replies; an entry larger than that (up to [`Config::max_entry_bytes`]) travels alone,
//! and the driver's transport cuts such a message into fragments.
//! A follower accepts entries only if its log holds the entry before them with the same term
//! (the consistency check); on a mismatch it replies with the conflicting term and its first
//! index, so the leader skips a whole term per round trip. Lost datagrams are resent on the
//! next heartbeat, from the last index known to match; after a large send the leader waits a
//! heartbeat longer per [`RESEND_GRACE_BYTES`] before resending, so that a follower still
//! taking in a multi-megabyte message is not buried in copies of it.
//!
//! **Refusals, reordering and probes.** Pipelined AppendEntries that overtake each other on
//! the way are refused by the follower, each with about the same hint. The leader acts on the
//! first refusal only: it moves back to the hint and *probes*, one AppendEntries at a time,
//! until the follower takes one, then pipelines again. Which refusals are stale it tells by
//! `read_seq`, which every AppendEntries carries and every reply echoes: the leader numbers
//! each probe and each heartbeat's resend anew, and a refusal of an AppendEntries sent before
//! the latest of them is ignored. So neither a burst of reordered appends nor a reordered
//! resend makes it send the same entries over and over, and a follower that lags behind
//! through heavy reordering is caught up a round trip at a time, not a heartbeat at a time.
//!
//! **Thrifty replication.** New entries go at once only to as many followers as a majority
//! needs besides the leader (2 of 4 in a cluster of 5): the *eager* followers. The others get
//! everything they miss with each heartbeat, in a few large messages, and store it with one
//! flush. On one machine or one disk this matters: a write waited for five flushes at once
//! where three suffice, and two fewer processes woke for every entry. The eager followers are
//! chosen anew at each heartbeat: those that answered since the previous one, then those that
//! store the most; the first ones after an election are the voters. Commitment is unchanged
//! (a majority must store an entry), so this only moves when followers learn of entries; a
//! follower that is not eager stays up to a heartbeat behind, and one that stops answering is
//! replaced at the next heartbeat.
//!
//! **Commitment (§5.3, §5.4.2).** The leader commits an index once a majority stores it and
//! the entry is from the leader's own term; earlier entries commit with it. Followers learn
//! the commit index from AppendEntries. Entries are applied in index order by the driver.
//!
//! **Linearizable reads (ReadIndex, thesis §6.4).** A read on the leader takes the commit
//! index as its read index (or, before the leader's no-op has committed, the no-op's index:
//! everything committed by earlier leaders comes before it). The leader then checks that it
//! still leads: it numbers the check (`read_seq`), sends it with an AppendEntries (a heartbeat
//! if there is nothing new) to every follower, and each reply echoes the number. Once a
//! majority, the leader included, has answered a check sent after the read arrived, no other
//! leader can have been elected before those answers, and the read may be served from the
//! state machine as soon as it has applied the read index. All reads waiting for the next
//! check share it, so many reads cost one round of heartbeats, and nothing goes to the log.
//!
//! **Compaction and snapshots (§7).** The state machine holds everything applied, so the log
//! need not: once the state machine has an index on its disk, the driver may
//! [`Raft::compact`] the log up to it. The last entry dropped becomes the log's *base*: its
//! index and term are kept, so AppendEntries anchored there are still checked, votes still
//! compare the last term and index, and a node restarted from a compacted log counts the base
//! as committed. A follower that needs an entry before the leader's base cannot be sent it:
//! the leader sends it only heartbeats (anchored at index 0, where every log matches, when
//! the entry it knows the follower holds is gone) and asks the driver, at every heartbeat,
//! for a snapshot of its state machine ([`Ready::snapshots`]). The driver ships one; the
//! follower asks [`Raft::snapshot_offered`] whether to take it (not from a leader of an
//! older term; not when it has committed that far already, and then the leader hears at once
//! how far its log matches), loads it into its state machine, and reports
//! [`Raft::snapshot_installed`]: its log keeps the entries after the snapshot when it holds
//! the snapshot's own entry, and starts after the snapshot otherwise (an entry there that
//! differs conflicts with a committed one, so nothing from there on was committed). Either
//! way it tells the leader it stores everything up to the snapshot, and the leader goes on
//! with the entries after it. A follower's log never loses an entry it has not applied:
//! entries up to its base are the state machine's, and entries before a leader's AppendEntries
//! are anchored at the base or after it are skipped as the committed entries they are.
//!
//! # Driving the core
//!
//! The driver calls [`Raft::step`] for each message, [`Raft::tick`] when
//! [`Raft::next_deadline`] has passed, [`Raft::propose`] for client entries, and then
//! [`Raft::take_ready`]. A [`Ready`] must be handled in order: persist the hard state and
//! log changes (and fsync), then send the messages, then apply entries up to the commit
//! index. Persisting before sending is what makes a vote or an acknowledgement durable.
//! Time is plain microseconds from any fixed origin.
//!
//! Persisting may take its time: a `Ready` that asks for it carries a `persist_id`, and the
//! driver calls [`Raft::persisted`] with it once the write is on disk. Meanwhile the core
//! goes on (it keeps its timers and a leader its heartbeats), while the `Ready`'s messages,
//! and those of every later `Ready` until then, wait for the write. A leader counts its own
//! log towards a majority only up to what is on its disk, and [`Ready::commit_index`] never
//! passes it, so nothing is applied that a crash could take back from the node's own log.

mod log;
mod message;
mod rng;
mod role;

use std::collections::{BTreeMap, BTreeSet};

pub use self::log::{encoded_size, Log};
pub use self::message::{Msg, NodeId, WireError, MAX_WIRE_NUMBER};
pub use self::rng::Rng;
pub use self::role::{InvalidTransition, Role};
pub use crate::proto::{EntryValue, LogEntry};

/// Microseconds since an arbitrary origin chosen by the driver.
pub type Micros = u64;

/// How many AppendEntries messages a leader sends to one follower at once when catching it up
/// (fewer when their entries add up to more than this many batch budgets).
const MAX_BATCHES_PER_SEND: usize = 4;

/// Entries sent to a follower are resent by a heartbeat only after one more heartbeat
/// interval per this many bytes sent: time for the follower to receive, store and
/// acknowledge a large message.
pub const RESEND_GRACE_BYTES: usize = 256 * 1024;

/// The largest log entry accepted by default: 16 MiB.
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 16 * 1024 * 1024;

/// Static configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: NodeId,
    /// The other members.
    pub peers: Vec<NodeId>,
    pub heartbeat: Micros,
    pub election_min: Micros,
    pub election_max: Micros,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Budget for the encoded entries of one AppendEntries message: with the message's other
    /// fields it fits one datagram. A larger entry is sent alone.
    pub max_batch_bytes: usize,
    /// The largest entry a proposal may add (encoded size).
    pub max_entry_bytes: usize,
    /// New entries go at once only to the followers needed for a majority (see "Thrifty
    /// replication" above); the others get them with each heartbeat.
    pub thrifty: bool,
}

impl Config {
    /// The defaults of the product: heartbeat 50 ms, election timeout 150–300 ms.
    pub fn new(id: NodeId, peers: Vec<NodeId>) -> Config {
        Config {
            id,
            peers,
            heartbeat: 50_000,
            election_min: 150_000,
            election_max: 300_000,
            pre_vote: true,
            check_quorum: true,
            max_batch_bytes: crate::proto::MAX_DATAGRAM - 4 * 1024,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            thrifty: true,
        }
    }
}

/// What must survive a crash besides the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub voted_for: Option<NodeId>,
}

/// Something the driver may want to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The node's role, term or known leader changed.
    RoleChanged { role: Role, term: u64, leader: Option<NodeId> },
}

/// A linearizable read that may be served once the state machine has applied `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    /// The id the driver gave [`Raft::read_index`].
    pub id: u64,
    pub index: u64,
}

/// Work for the driver, in the order it must be done.
#[derive(Debug, Default)]
pub struct Ready {
    /// Persist this before sending anything.
    pub hard_state: Option<HardState>,
    /// Log entries from this index to the end are new or replaced: drop what storage holds
    /// from this index on and write `log().slice(from, last_index)`. Persist before sending.
    pub persist_from: Option<u64>,
    /// The log was compacted, or replaced by a snapshot: replace what storage holds by this
    /// base (index and term) and every entry after it (`log().entries()`), with the hard
    /// state. `persist_from` is then None: the rewrite covers it.
    pub rewrite: Option<(u64, u64)>,
    /// Set when `hard_state`, `persist_from` or `rewrite` is: give it to [`Raft::persisted`]
    /// once they are on disk. Numbers rise with each such `Ready`; persisting happens in their
    /// order.
    pub persist_id: Option<u64>,
    /// Send these after persisting (and after every earlier `Ready`'s persisting).
    pub messages: Vec<(NodeId, Msg)>,
    /// Entries up to here are committed and on this node's disk: they may be applied.
    pub commit_index: u64,
    pub events: Vec<Event>,
    /// Reads whose leadership check has passed.
    pub reads: Vec<ReadState>,
    /// Leader: followers that need entries compacted away, so a snapshot of the state machine
    /// at an index no lower than the log's base ([`Log::base`]). Asked again at every
    /// heartbeat while still needed; the follower's [`Raft::snapshot_installed`] answers.
    pub snapshots: Vec<NodeId>,
}

/// What a follower does with a snapshot the leader offers (see [`Raft::snapshot_offered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// From a leader of an older term: refused (and the leader told of the newer term).
    Stale,
    /// Everything up to the snapshot's index is committed here already: not needed (and the
    /// leader told how far this log matches).
    Covered,
    /// To load into the state machine, then report with [`Raft::snapshot_installed`].
    Load,
}

/// Why a proposal was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader")]
    NotLeader { leader: Option<NodeId> },
    #[error("entry of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
}

/// The fields of an AppendEntries after its term.
struct Append {
    prev_log_index: u64,
    prev_log_term: u64,
    entries: Vec<LogEntry>,
    leader_commit: u64,
    read_seq: u64,
}

/// The fields of an AppendEntries reply after its term.
struct AppendReply {
    success: bool,
    match_index: u64,
    conflict_index: u64,
    conflict_term: Option<u64>,
    read_seq: u64,
}

/// The leader's view of one follower.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Next index to send.
    next: u64,
    /// Highest index known to be stored.
    matched: u64,
    /// Heard from since the last CheckQuorum round.
    active: bool,
    /// The `read_seq` of the latest resend from where the follower's log matches (a probe, or
    /// a heartbeat's resend): refusals of AppendEntries sent before it are stale.
    resent_seq: u64,
    /// After a refusal, the leader sends one AppendEntries at a time until the follower takes
    /// one sent since `resent_seq`.
    probing: bool,
    /// Entries in flight are not resent by a heartbeat before this time (see
    /// [`RESEND_GRACE_BYTES`]).
    resend_at: Micros,
    /// The latest leadership check the follower has answered in this term.
    read_seq: u64,
    /// Gets new entries as they are proposed (with [`Config::thrifty`], the followers needed
    /// for a majority); the others get them with each heartbeat.
    eager: bool,
    /// Answered since the last heartbeat.
    heard: bool,
    /// A follower that is not eager is sent entries up to here (the last index at the latest
    /// heartbeat) as its acknowledgements come in, and no further.
    catch_up_to: u64,
    /// It needs entries compacted away: it gets heartbeats and a snapshot, no entries, until
    /// it stores the log's base.
    needs_snapshot: bool,
}

/// A read waiting for its leadership check.
#[derive(Debug, Clone, Copy)]
struct PendingRead {
    id: u64,
    index: u64,
    /// The check that must pass: the first one sent after the read arrived.
    seq: u64,
}

/// One Raft node's state.
pub struct Raft {
    cfg: Config,
    rng: Rng,
    role: Role,
    term: u64,
    voted_for: Option<NodeId>,
    leader: Option<NodeId>,
    log: Log,
    commit: u64,

    /// Follower/candidate: when to start an election.
    election_deadline: Micros,
    /// Follower: when we last heard from the leader (for the lease of CheckQuorum).
    last_leader_contact: Option<Micros>,
    /// Leader: next heartbeat.
    heartbeat_deadline: Micros,
    /// Leader: next CheckQuorum round.
    quorum_deadline: Micros,

    /// Follower running a PreVote round, and who granted it.
    prevoting: bool,
    /// Whether this node may lead: a node whose state machine cannot apply the log says it may
    /// not (see [`Raft::set_eligible`]).
    eligible: bool,
    pre_votes: BTreeSet<NodeId>,
    /// Candidate: who voted for us.
    votes: BTreeSet<NodeId>,
    /// Leader: per-follower replication state.
    progress: BTreeMap<NodeId, Progress>,
    /// Leader: first index proposed since the last flush.
    unflushed_from: Option<u64>,
    /// The latest time given to `tick` or `step`: when proposals are sent.
    clock: Micros,
    /// Leader: index of its no-op, the first entry of its term.
    term_start: u64,
    /// Number of the latest leadership check sent (never reused, across terms too).
    read_seq: u64,
    /// Leader: reads waiting for their check, oldest first.
    pending_reads: std::collections::VecDeque<PendingRead>,
    /// Leader: a read arrived since the last check was sent.
    read_check_due: bool,

    // Output accumulated until take_ready().
    msgs: Vec<(NodeId, Msg)>,
    hard_dirty: bool,
    persist_from: Option<u64>,
    /// The log up to here is on disk as it is in `log` (see [`Raft::persisted`]).
    durable: u64,
    /// Writes handed out and not yet reported done: their `persist_id`, and the last index
    /// each one leaves on disk (lowered when a later write replaces entries before it).
    unpersisted: std::collections::VecDeque<(u64, u64)>,
    last_persist_id: u64,
    reported: Option<(Role, u64, Option<NodeId>)>,
    /// The commit index handed out in the last Ready.
    reported_commit: u64,
    reads_ready: Vec<ReadState>,
    /// The log was compacted or replaced since the last Ready: storage must be rewritten.
    rewrite_due: bool,
    /// Leader: followers to send a snapshot, for the next Ready.
    snapshots_due: BTreeSet<NodeId>,
}

impl Raft {
    /// A node restarted from persisted `hard` state and `log`, as a follower.
    pub fn new(cfg: Config, hard: HardState, log: Vec<LogEntry>, now: Micros, seed: u64) -> Raft {
        Raft::restored(cfg, hard, Log::from_entries(log), now, seed)
    }

    /// A node restarted from persisted `hard` state and a log that may start after a base
    /// (its state machine holds everything up to the base: it counts as committed).
    pub fn restored(cfg: Config, hard: HardState, log: Log, now: Micros, seed: u64) -> Raft {
        let base = log.base().0;
        let mut raft = Raft {
            rng: Rng::new(seed ^ (cfg.id as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)),
            cfg,
            role: Role::Follower,
            term: hard.term,
            voted_for: hard.voted_for,
            leader: None,
            log,
            commit: base,
            election_deadline: 0,
            last_leader_contact: None,
            heartbeat_deadline: 0,
            quorum_deadline: 0,
            prevoting: false,
            eligible: true,
            pre_votes: BTreeSet::new(),
            votes: BTreeSet::new(),
            progress: BTreeMap::new(),
            unflushed_from: None,
            clock: now,
            term_start: 0,
            read_seq: 0,
            pending_reads: std::collections::VecDeque::new(),
            read_check_due: false,
            msgs: Vec::new(),
            hard_dirty: false,
            persist_from: None,
            durable: 0,
            unpersisted: std::collections::VecDeque::new(),
            last_persist_id: 0,
            reported: None,
            reported_commit: base,
            reads_ready: Vec::new(),
            rewrite_due: false,
            snapshots_due: BTreeSet::new(),
        };
        raft.durable = raft.log.last_index();
        raft.reset_election_timer(now);
        raft
    }

    // ---- accessors ----

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }
    /// The leader of the current term, if known (self when leading).
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn commit_index(&self) -> u64 {
        self.commit
    }
    /// The last index of the log known to be on this node's disk.
    pub fn durable_index(&self) -> u64 {
        self.durable
    }
    /// Committed and on this node's disk: what may be applied.
    pub fn applicable_index(&self) -> u64 {
        self.commit.min(self.durable)
    }
    pub fn log(&self) -> &Log {
        &self.log
    }
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, voted_for: self.voted_for }
    }
    /// True while a follower runs a PreVote round.
    pub fn is_eligible(&self) -> bool {
        self.eligible
    }

    pub fn is_prevoting(&self) -> bool {
        self.prevoting
    }
    /// Votes needed to win, and acknowledgements needed to commit.
    pub fn quorum(&self) -> usize {
        let members = self.cfg.peers.len() + 1;
        members / 2 + 1
    }
    /// Leader: whether `peer` needs a snapshot (it lacks entries compacted away).
    pub fn needs_snapshot(&self, peer: NodeId) -> bool {
        self.progress.get(&peer).is_some_and(|p| p.needs_snapshot)
    }
    /// Leader: the highest index each follower is known to store.
    pub fn match_indexes(&self) -> Vec<(NodeId, u64)> {
        self.progress.iter().map(|(&id, p)| (id, p.matched)).collect()
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self) -> Micros {
        match self.role {
            Role::Leader if self.cfg.check_quorum => self.heartbeat_deadline.min(self.quorum_deadline),
            Role::Leader => self.heartbeat_deadline,
            _ => self.election_deadline,
        }
    }

    // ---- inputs ----

    /// Fires whatever timers have expired by `now`.
    pub fn tick(&mut self, now: Micros) {
        self.clock = self.clock.max(now);
        match self.role {
            Role::Leader => {
                if self.cfg.check_quorum && now >= self.quorum_deadline {
                    let active = 1 + self.progress.values().filter(|p| p.active).count();
                    if active < self.quorum() {
                        ::log::info!(
                            "{} steps down in term {}: heard from {active} of {} members",
                            self.name(),
                            self.term,
                            self.cfg.peers.len() + 1
                        );
                        self.become_follower(now, self.term, None);
                        return;
                    }
                    self.progress.values_mut().for_each(|p| p.active = false);
                    self.quorum_deadline = now + self.cfg.election_min;
                }
                if now >= self.heartbeat_deadline {
                    self.heartbeat_deadline = now + self.cfg.heartbeat;
                    if self.cfg.thrifty {
                        self.choose_eager();
                    }
                    let peers: Vec<NodeId> = self.progress.keys().copied().collect();
                    for peer in peers {
                        // Resend from the last known match: anything beyond may have been lost.
                        let last = self.log.last_index();
                        let pr = self.progress.get_mut(&peer).expect("peer progress");
                        if pr.matched < last && now < pr.resend_at {
                            // A large send is still being taken in: only say we are alive.
                            self.send_heartbeat(peer);
                            continue;
                        }
                        if pr.matched >= last {
                            self.send_append(peer, MAX_BATCHES_PER_SEND);
                            continue;
                        }
                        pr.next = pr.matched + 1;
                        let batches = if pr.probing { 1 } else { MAX_BATCHES_PER_SEND };
                        self.resend(peer, batches);
                    }
                }
            }
            Role::Follower | Role::Candidate => {
                if now >= self.election_deadline {
                    if !self.eligible {
                        // It still votes, but does not stand.
                        self.reset_election_timer(now);
                        return;
                    }
                    if self.cfg.pre_vote {
                        self.start_prevote(now);
                    } else {
                        self.campaign(now, false);
                    }
                }
            }
        }
    }

    /// Handles one message from another node.
    pub fn step(&mut self, now: Micros, from: NodeId, msg: Msg) {
        self.clock = self.clock.max(now);
        if from == self.cfg.id || !self.cfg.peers.contains(&from) {
            ::log::debug!("{} ignores {:?} from unknown node {from}", self.name(), msg.request());
            return;
        }
        if msg.term() > MAX_WIRE_NUMBER {
            // The wire refuses such terms; adopting one would leave no term to campaign in.
            ::log::debug!("{} ignores {:?} of term {} from node{from}", self.name(), msg.request(), msg.term());
            return;
        }
        match msg {
            Msg::PreVote { term, last_log_index, last_log_term } => {
                self.on_prevote(now, from, term, last_log_index, last_log_term)
            }
            Msg::PreVoteReply { term, granted } => self.on_prevote_reply(now, from, term, granted),
            Msg::Vote { term, last_log_index, last_log_term, force } => {
                self.on_vote(now, from, term, last_log_index, last_log_term, force)
            }
            Msg::VoteAck { term } => {
                if term > self.term {
                    self.become_follower(now, term, None);
                } else if term == self.term && self.role == Role::Candidate {
                    self.votes.insert(from);
                    if self.votes.len() >= self.quorum() {
                        self.become_leader(now);
                    }
                }
            }
            Msg::Append { term, prev_log_index, prev_log_term, entries, leader_commit, read_seq } => {
                let append = Append { prev_log_index, prev_log_term, entries, leader_commit, read_seq };
                self.on_append(now, from, term, append)
            }
            Msg::AppendReply { term, success, match_index, conflict_index, conflict_term, read_seq } => {
                if term > self.term {
                    self.become_follower(now, term, None);
                } else if term == self.term && self.role == Role::Leader {
                    if let Some(pr) = self.progress.get_mut(&from) {
                        pr.read_seq = pr.read_seq.max(read_seq);
                    }
                    let reply = AppendReply { success, match_index, conflict_index, conflict_term, read_seq };
                    self.on_append_reply(now, from, reply);
                    self.release_reads();
                }
            }
        }
    }

    /// Appends a client entry on the leader; returns its index. The entry is sent to the
    /// followers on the next [`Raft::take_ready`], batched with other proposals.
    pub fn propose(&mut self, key: Option<String>, value: impl Into<EntryValue>) -> Result<u64, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        let entry = LogEntry { term: self.term, key, value: value.into() };
        let size = encoded_size(&entry);
        if size > self.cfg.max_entry_bytes {
            return Err(ProposeError::TooLarge { size, max: self.cfg.max_entry_bytes });
        }
        let index = self.log.append_sized(entry, size);
        self.appended(index);
        self.unflushed_from.get_or_insert(index);
        Ok(index)
    }

    /// Starts a linearizable read (ReadIndex) on the leader. `id` comes back in
    /// [`Ready::reads`] with the read index once a majority has confirmed, after this call,
    /// that this node still leads. A read not confirmed when the node stops leading is
    /// dropped; the driver answers it as it sees the role change.
    pub fn read_index(&mut self, id: u64) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        let index = self.commit.max(self.term_start);
        self.pending_reads.push_back(PendingRead { id, index, seq: self.read_seq + 1 });
        self.read_check_due = true;
        Ok(())
    }

    /// Whether this node may lead. A node that may not (its state machine cannot apply what
    /// the log holds, so it could answer no write) steps down if it leads or campaigns, and
    /// stands in no election until it may again; it still votes and replicates. Not standing
    /// is always safe: it only leaves the leading to the others.
    pub fn set_eligible(&mut self, now: Micros, eligible: bool) {
        self.clock = self.clock.max(now);
        if self.eligible == eligible {
            return;
        }
        self.eligible = eligible;
        if !eligible && self.prevoting {
            self.prevoting = false;
            self.pre_votes.clear();
        }
        if !eligible && self.role != Role::Follower {
            ::log::info!("{} steps down in term {}: it may not lead for now", self.name(), self.term);
            self.become_follower(now, self.term, None);
            self.reset_election_timer(now);
        }
    }

    /// A controller's TIMEOUT: start an election now, skipping PreVote, that voters grant even
    /// while they hear from a leader. A leader steps down first. A node that may not lead
    /// ([`Raft::set_eligible`]) ignores it.
    pub fn timeout_now(&mut self, now: Micros) {
        self.clock = self.clock.max(now);
        if !self.eligible {
            ::log::info!("{} ignores TIMEOUT: it may not lead for now", self.name());
            return;
        }
        if self.role == Role::Leader {
            self.become_follower(now, self.term, None);
        }
        self.campaign(now, true);
    }

    /// A controller's CONVERT_FOLLOWER: become a follower of the current term.
    pub fn convert_follower(&mut self, now: Micros) {
        self.clock = self.clock.max(now);
        let leader = if self.role == Role::Follower { self.leader } else { None };
        self.become_follower(now, self.term, leader);
        self.reset_election_timer(now);
    }

    /// The driver's write of the `Ready` numbered `persist_id` (and of every earlier one) is on
    /// disk. A leader may now count its own log up to there towards committing.
    pub fn persisted(&mut self, persist_id: u64) {
        while let Some(&(id, last)) = self.unpersisted.front() {
            if id > persist_id {
                break;
            }
            self.unpersisted.pop_front();
            self.durable = self.durable.max(last);
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// Takes the work accumulated since the last call.
    pub fn take_ready(&mut self) -> Ready {
        if self.read_check_due {
            self.send_read_check();
        } else {
            self.flush_proposals();
        }
        let mut events = Vec::new();
        let current = (self.role, self.term, self.leader);
        if self.reported != Some(current) {
            self.reported = Some(current);
            events.push(Event::RoleChanged { role: self.role, term: self.term, leader: self.leader });
        }
        let hard_state = std::mem::take(&mut self.hard_dirty).then(|| self.hard_state());
        let mut persist_from = self.persist_from.take();
        let rewrite = std::mem::take(&mut self.rewrite_due).then(|| self.log.base());
        if rewrite.is_some() {
            persist_from = None;
        }
        let mut persist_id = None;
        if hard_state.is_some() || persist_from.is_some() || rewrite.is_some() {
            self.last_persist_id += 1;
            self.unpersisted.push_back((self.last_persist_id, self.log.last_index()));
            persist_id = Some(self.last_persist_id);
        }
        self.reported_commit = self.applicable_index();
        Ready {
            hard_state,
            persist_from,
            rewrite,
            persist_id,
            messages: std::mem::take(&mut self.msgs),
            commit_index: self.reported_commit,
            events,
            reads: std::mem::take(&mut self.reads_ready),
            snapshots: std::mem::take(&mut self.snapshots_due).into_iter().collect(),
        }
    }

    /// True when take_ready would return work.
    pub fn has_ready(&self) -> bool {
        self.hard_dirty
            || self.persist_from.is_some()
            || !self.msgs.is_empty()
            || self.unflushed_from.is_some()
            || self.applicable_index() > self.reported_commit
            || self.reported != Some((self.role, self.term, self.leader))
            || self.read_check_due
            || !self.reads_ready.is_empty()
            || self.rewrite_due
            || !self.snapshots_due.is_empty()
    }

    // ---- compaction and snapshots ----

    /// Drops the log up to `index`, which the state machine holds on its disk: the entry at
    /// `index` becomes the log's base. Only committed entries on this node's disk can go
    /// ([`Raft::applicable_index`]); false when `index` is not such an entry, or is the base
    /// already. Storage is rewritten with the next `Ready` ([`Ready::rewrite`]). A follower
    /// that needs entries compacted away gets a snapshot ([`Ready::snapshots`]).
    pub fn compact(&mut self, index: u64) -> bool {
        if index > self.applicable_index() || !self.log.compact(index) {
            return false;
        }
        self.rewrite_due = true;
        true
    }

    /// A leader of `term`, `from`, offers a snapshot of its state machine at `index` (the
    /// entry there has `snap_term`). Says whether to load it; when it is not needed, the
    /// leader is told so at once.
    pub fn snapshot_offered(&mut self, now: Micros, from: NodeId, term: u64, index: u64) -> Offer {
        self.clock = self.clock.max(now);
        if !self.cfg.peers.contains(&from) || term > MAX_WIRE_NUMBER {
            return Offer::Stale;
        }
        if term < self.term {
            self.refuse_stale(from, 0);
            return Offer::Stale;
        }
        if !self.heard_from_leader(now, from, term) {
            return Offer::Stale;
        }
        if index <= self.commit {
            // Committed entries are the leader's too (§5.4): this log matches up to here.
            self.send(
                from,
                Msg::AppendReply {
                    term,
                    success: true,
                    match_index: self.commit,
                    conflict_index: 0,
                    conflict_term: None,
                    read_seq: 0,
                },
            );
            return Offer::Covered;
        }
        Offer::Load
    }

    /// The state machine now holds, on its disk, the snapshot at `index` (entry term
    /// `snap_term`) that `from`, leader of `term`, sent. The log keeps what follows `index` if
    /// it holds that very entry, and starts after the snapshot otherwise (what it held there
    /// conflicts with a committed entry, so none of it was committed); the leader is told
    /// that this node stores everything up to `index`.
    pub fn snapshot_installed(&mut self, now: Micros, from: NodeId, term: u64, index: u64, snap_term: u64) {
        self.clock = self.clock.max(now);
        if term < self.term || !self.cfg.peers.contains(&from) || !self.heard_from_leader(now, from, term) {
            return;
        }
        if index > self.log.base().0 {
            if self.log.term(index) == Some(snap_term) && index <= self.log.last_index() {
                self.log.compact(index);
            } else {
                self.log.reset(index, snap_term);
                for (_, last) in self.unpersisted.iter_mut() {
                    *last = (*last).min(index);
                }
                self.persist_from = None;
            }
            self.durable = self.durable.min(self.log.last_index()).max(index);
            self.commit = self.commit.max(index);
            self.rewrite_due = true;
        }
        let match_index = index.max(self.log.base().0);
        self.send(
            from,
            Msg::AppendReply { term, success: true, match_index, conflict_index: 0, conflict_term: None, read_seq: 0 },
        );
    }

    /// A message from `from` as leader of `term` (no older than this node's): this node follows
    /// it from now. False when this node leads `term` itself.
    fn heard_from_leader(&mut self, now: Micros, from: NodeId, term: u64) -> bool {
        if self.role == Role::Leader && term == self.term {
            ::log::error!("{} is leader of term {term} and got a leader's message from node{from}", self.name());
            debug_assert!(false, "two leaders in term {term}");
            return false;
        }
        if term > self.term || self.role == Role::Candidate || self.leader != Some(from) {
            self.become_follower(now, term, Some(from));
        } else {
            self.last_leader_contact = Some(now);
            self.prevoting = false;
            self.reset_election_timer(now);
        }
        true
    }

    /// Tells a leader of an older term of this node's, so that it steps down.
    fn refuse_stale(&mut self, to: NodeId, read_seq: u64) {
        self.send(
            to,
            Msg::AppendReply {
                term: self.term,
                success: false,
                match_index: 0,
                conflict_index: 0,
                conflict_term: None,
                read_seq,
            },
        );
    }

    // ---- elections ----

    fn name(&self) -> String {
        crate::proto::node_name(self.cfg.id)
    }

    fn set_role(&mut self, to: Role) -> bool {
        match self.role.transition(to) {
            Ok(role) => {
                self.role = role;
                true
            }
            Err(e) => {
                ::log::error!("{}: {e}", self.name());
                debug_assert!(false, "{e}");
                false
            }
        }
    }

    fn reset_election_timer(&mut self, now: Micros) {
        self.election_deadline = now + self.rng.range(self.cfg.election_min, self.cfg.election_max + 1);
    }

    /// Within the minimum election timeout of hearing from a live leader (or leading), a node
    /// ignores elections it was not forced into.
    fn in_lease(&self, now: Micros) -> bool {
        if !self.cfg.check_quorum {
            return false;
        }
        match self.role {
            Role::Leader => true,
            _ => self.leader.is_some() && self.last_leader_contact.is_some_and(|t| now < t + self.cfg.election_min),
        }
    }

    fn log_up_to_date(&self, last_log_index: u64, last_log_term: u64) -> bool {
        let (my_index, my_term) = (self.log.last_index(), self.log.last_term());
        last_log_term > my_term || (last_log_term == my_term && last_log_index >= my_index)
    }

    fn become_follower(&mut self, now: Micros, term: u64, leader: Option<NodeId>) {
        let was_follower = self.role == Role::Follower;
        if !self.set_role(Role::Follower) {
            return;
        }
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.hard_dirty = true;
        }
        self.leader = leader;
        self.prevoting = false;
        self.pre_votes.clear();
        self.votes.clear();
        self.progress.clear();
        self.unflushed_from = None;
        self.pending_reads.clear();
        self.read_check_due = false;
        if leader.is_some() {
            self.last_leader_contact = Some(now);
        }
        // A follower that merely learned of a newer term keeps its timer, so that a node
        // campaigning with a stale log cannot hold elections off forever.
        if !was_follower || leader.is_some() {
            self.reset_election_timer(now);
        }
    }

    fn start_prevote(&mut self, now: Micros) {
        if !self.eligible {
            return;
        }
        if self.role == Role::Candidate && !self.set_role(Role::Follower) {
            return;
        }
        self.prevoting = true;
        // Forget the leader, so we grant other pre-candidates' requests (etcd #8334).
        self.leader = None;
        self.pre_votes.clear();
        self.pre_votes.insert(self.cfg.id);
        self.reset_election_timer(now);
        if self.pre_votes.len() >= self.quorum() {
            self.campaign(now, false);
            return;
        }
        let msg = Msg::PreVote {
            term: self.term + 1,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
        };
        self.broadcast(msg);
    }

    fn campaign(&mut self, now: Micros, force: bool) {
        if !self.eligible {
            return;
        }
        if self.term >= MAX_WIRE_NUMBER {
            ::log::error!("{} is at term {}, the largest there is: it cannot campaign", self.name(), self.term);
            return;
        }
        if !self.set_role(Role::Candidate) {
            return;
        }
        self.term += 1;
        self.voted_for = Some(self.cfg.id);
        self.hard_dirty = true;
        self.leader = None;
        self.prevoting = false;
        self.pre_votes.clear();
        self.votes.clear();
        self.votes.insert(self.cfg.id);
        self.reset_election_timer(now);
        if self.votes.len() >= self.quorum() {
            self.become_leader(now);
            return;
        }
        let msg = Msg::Vote {
            term: self.term,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            force,
        };
        self.broadcast(msg);
    }

    fn become_leader(&mut self, now: Micros) {
        if !self.set_role(Role::Leader) {
            return;
        }
        self.leader = Some(self.cfg.id);
        let next = self.log.last_index() + 1;
        let voters = std::mem::take(&mut self.votes);
        // Followers count as active only once they answer, so a leader elected just before it
        // was cut off steps down after one CheckQuorum round.
        self.progress = self
            .cfg
            .peers
            .iter()
            .map(|&p| {
                let progress = Progress {
                    next,
                    matched: 0,
                    active: false,
                    resent_seq: 0,
                    probing: false,
                    resend_at: now,
                    read_seq: 0,
                    eager: !self.cfg.thrifty,
                    // The voters answered: they are the first eager followers.
                    heard: voters.contains(&p),
                    catch_up_to: 0,
                    needs_snapshot: false,
                };
                (p, progress)
            })
            .collect();
        if self.cfg.thrifty {
            self.choose_eager();
        }
        self.heartbeat_deadline = now + self.cfg.heartbeat;
        self.quorum_deadline = now + self.cfg.election_min;
        // The no-op commits earlier terms' entries (§5.4.2) and tells followers who leads.
        let index = self.append_local(LogEntry::noop(self.term));
        self.term_start = index;
        self.unflushed_from = Some(index);
        self.flush_proposals();
    }

    fn on_prevote(&mut self, now: Micros, from: NodeId, term: u64, last_log_index: u64, last_log_term: u64) {
        if term <= self.term {
            // Behind: tell it our term so it can catch up (etcd #8501).
            self.send(from, Msg::PreVoteReply { term: self.term, granted: false });
        } else if !self.in_lease(now) && self.log_up_to_date(last_log_index, last_log_term) {
            // Backing a pre-candidate restarts our own timer, as granting a vote does (§5.2):
            // it is about to campaign, and a competing round of ours now would only split
            // the vote. A node mid-round keeps going, so two pre-candidates never both stand
            // down; the timer only delays, so a pre-candidate that then fails costs at most
            // one more timeout.
            if !self.prevoting {
                self.reset_election_timer(now);
            }
            self.send(from, Msg::PreVoteReply { term, granted: true });
        }
    }

    fn on_prevote_reply(&mut self, now: Micros, from: NodeId, term: u64, granted: bool) {
        if !granted {
            if term > self.term {
                self.become_follower(now, term, None);
            }
            return;
        }
        if self.prevoting && self.role == Role::Follower && term == self.term + 1 {
            self.pre_votes.insert(from);
            if self.pre_votes.len() >= self.quorum() {
                self.campaign(now, false);
            }
        }
    }

    fn on_vote(&mut self, now: Micros, from: NodeId, term: u64, last_log_index: u64, last_log_term: u64, force: bool) {
        if term < self.term {
            return;
        }
        if term > self.term {
            if !force && self.in_lease(now) {
                return;
            }
            self.become_follower(now, term, None);
        }
        let can_vote = self.voted_for == Some(from) || (self.voted_for.is_none() && self.leader.is_none());
        if can_vote && self.log_up_to_date(last_log_index, last_log_term) {
            if self.voted_for != Some(from) {
                self.voted_for = Some(from);
                self.hard_dirty = true;
            }
            self.reset_election_timer(now);
            self.send(from, Msg::VoteAck { term: self.term });
        }
    }

    // ---- replication ----

    fn append_local(&mut self, entry: LogEntry) -> u64 {
        let index = self.log.append(entry);
        self.appended(index);
        index
    }

    /// Records that `index` was just appended: it must be persisted, and may commit.
    fn appended(&mut self, index: u64) {
        self.persist_from = Some(self.persist_from.map_or(index, |p| p.min(index)));
        // What is on disk, or on its way there, from `index` on is no longer this log.
        // (The last indexes of unpersisted writes never fall along the queue.)
        let kept = index - 1;
        self.durable = self.durable.min(kept);
        if self.unpersisted.back().is_some_and(|&(_, last)| last > kept) {
            for (_, last) in self.unpersisted.iter_mut() {
                *last = (*last).min(kept);
            }
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// Sends newly proposed entries to the followers that are caught up; lagging followers
    /// get them as their acknowledgements come in.
    fn flush_proposals(&mut self) {
        let Some(from) = self.unflushed_from.take() else { return };
        if self.role != Role::Leader {
            return;
        }
        // The leader's no-op goes to everyone: it tells them who leads.
        let all = from == self.term_start;
        let peers: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(_, p)| p.next >= from && !p.probing && (p.eager || all))
            .map(|(&id, _)| id)
            .collect();
        for peer in peers {
            self.send_append(peer, 1);
        }
    }

    /// Sends a new leadership check: to each follower the entries it is due (those proposed
    /// since the last flush) or else a heartbeat, all numbered with the new `read_seq`.
    fn send_read_check(&mut self) {
        self.read_check_due = false;
        if self.role != Role::Leader {
            return;
        }
        self.read_seq += 1;
        let new_from = self.unflushed_from.take();
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            let caught_up = new_from.is_some_and(|from| {
                self.progress.get(&peer).is_some_and(|pr| pr.eager && !pr.probing && pr.next >= from)
            });
            if caught_up {
                self.send_append(peer, 1);
            } else {
                // Entries already on their way, or none: the check rides on a heartbeat.
                self.send_heartbeat(peer);
            }
        }
        self.release_reads();
    }

    /// Hands out the reads whose check a majority (this node included) has answered.
    fn release_reads(&mut self) {
        while let Some(read) = self.pending_reads.front() {
            let answered = 1 + self.progress.values().filter(|p| p.read_seq >= read.seq).count();
            if answered < self.quorum() || read.seq > self.read_seq {
                break;
            }
            let read = self.pending_reads.pop_front().expect("front");
            self.reads_ready.push(ReadState { id: read.id, index: read.index });
        }
    }

    /// Picks the followers that get new entries at once: as many as a majority needs besides
    /// this node, those that answered since the last heartbeat first, then those that store
    /// the most, then those already eager. A follower that stops answering is replaced at the
    /// next heartbeat; until then its entries reach a majority with the heartbeat's catch-up.
    /// The others are caught up to the current last index, from this heartbeat on.
    fn choose_eager(&mut self) {
        let last = self.log.last_index();
        let mut ranked: Vec<(NodeId, bool, u64, bool)> =
            self.progress.iter().map(|(&id, p)| (id, p.heard, p.matched, p.eager)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(b.3.cmp(&a.3)).then(a.0.cmp(&b.0)));
        let eager: BTreeSet<NodeId> = ranked.iter().take(self.quorum() - 1).map(|r| r.0).collect();
        for (id, pr) in self.progress.iter_mut() {
            pr.eager = eager.contains(id);
            pr.heard = false;
            pr.catch_up_to = last;
        }
    }

    /// An AppendEntries without entries, anchored at the last index known to match, so it
    /// never fails the consistency check on entries still in flight. (When that entry is
    /// compacted away, at index 0: every log matches there.)
    fn send_heartbeat(&mut self, peer: NodeId) {
        let Some(pr) = self.progress.get(&peer) else { return };
        let (prev, prev_term) = match self.log.term(pr.matched) {
            Some(term) => (pr.matched, term),
            None => (0, 0),
        };
        let msg = Msg::Append {
            term: self.term,
            prev_log_index: prev,
            prev_log_term: prev_term,
            entries: Vec::new(),
            leader_commit: self.commit,
            read_seq: self.read_seq,
        };
        self.msgs.push((peer, msg));
    }

    fn send_append(&mut self, peer: NodeId, max_batches: usize) {
        let last = self.log.last_index();
        let commit = self.commit;
        let term = self.term;
        let read_seq = self.read_seq;
        let budget = self.cfg.max_batch_bytes;
        let (now, heartbeat) = (self.clock, self.cfg.heartbeat);
        let base = self.log.base().0;
        let Some(pr) = self.progress.get_mut(&peer) else { return };
        pr.next = pr.next.clamp(pr.matched + 1, last + 1);
        if pr.next <= base {
            // What it needs first is compacted away: a snapshot, then entries after it.
            pr.needs_snapshot = true;
            self.snapshots_due.insert(peer);
            self.send_heartbeat(peer);
            return;
        }
        if pr.next > last {
            self.send_heartbeat(peer);
            return;
        }
        let mut sent = 0;
        for _ in 0..max_batches {
            if pr.next > last || sent >= max_batches * budget {
                break;
            }
            let prev = pr.next - 1;
            let (end, bytes) = self.log.batch(pr.next, budget);
            sent += bytes;
            let msg = Msg::Append {
                term,
                prev_log_index: prev,
                prev_log_term: self.log.term(prev).unwrap_or(0),
                entries: self.log.slice(pr.next, end).to_vec(),
                leader_commit: commit,
                read_seq,
            };
            self.msgs.push((peer, msg));
            pr.next = end + 1;
        }
        let grace = heartbeat.saturating_mul((sent / RESEND_GRACE_BYTES) as u64);
        pr.resend_at = pr.resend_at.max(now.saturating_add(grace));
    }

    fn on_append_reply(&mut self, now: Micros, from: NodeId, reply: AppendReply) {
        let AppendReply { success, match_index, conflict_index, conflict_term, read_seq } = reply;
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.active = true;
        pr.heard = true;
        if success {
            let matched = match_index.min(last);
            if matched > pr.matched {
                pr.matched = matched;
                if matched + 1 >= pr.next {
                    // Everything sent is acknowledged: no grace is owed any more.
                    pr.resend_at = now;
                }
            }
            pr.next = pr.next.max(pr.matched + 1);
            // The follower took an AppendEntries sent since the probe: pipelining again.
            let mut probe_answered = pr.probing && read_seq >= pr.resent_seq;
            if pr.needs_snapshot && pr.matched >= self.log.base().0 {
                // It installed a snapshot (or had the entries after all): entries from here.
                pr.needs_snapshot = false;
                probe_answered = pr.probing;
            }
            if probe_answered {
                pr.probing = false;
            }
            // A follower waiting for a snapshot answered a heartbeat: nothing to send it until
            // the snapshot is in (answering at once would bounce heartbeats between the two).
            let more = !pr.needs_snapshot && pr.next <= last && !pr.probing && (pr.eager || pr.next <= pr.catch_up_to);
            self.maybe_commit();
            if more {
                self.send_append(from, if probe_answered { MAX_BATCHES_PER_SEND } else { 1 });
            }
        } else {
            if read_seq < pr.resent_seq {
                // Refused before the latest probe or resend left: pipelined datagrams that
                // overtook each other are all refused from about the same index, and entries
                // from there are already on their way again.
                return;
            }
            let hint = match conflict_term.and_then(|t| self.log.last_index_of_term(t)) {
                Some(i) => i + 1,
                None => conflict_index,
            };
            let pr = self.progress.get_mut(&from).expect("progress");
            pr.next = hint.clamp(pr.matched + 1, last + 1);
            pr.probing = true;
            self.resend(from, 1);
        }
    }

    /// Sends `peer` up to `max_batches` from its `next` under a new `read_seq`, so that
    /// refusals of what was sent before are known to be stale. (A higher `read_seq` on an
    /// AppendEntries only says it left later, which is all a leadership check needs of it.)
    fn resend(&mut self, peer: NodeId, max_batches: usize) {
        self.read_seq += 1;
        let read_seq = self.read_seq;
        let Some(pr) = self.progress.get_mut(&peer) else { return };
        pr.resent_seq = read_seq;
        self.send_append(peer, max_batches);
    }

    /// Commits the highest index stored by a majority, if it is from this term (§5.4.2).
    fn maybe_commit(&mut self) {
        let mut matched: Vec<u64> = self.progress.values().map(|p| p.matched).collect();
        // The leader's own copy counts once it is on its disk (it is sent before).
        matched.push(self.durable);
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matched[self.quorum() - 1];
        if candidate > self.commit && self.log.term(candidate) == Some(self.term) {
            self.commit = candidate;
        }
    }

    fn on_append(&mut self, now: Micros, from: NodeId, term: u64, append: Append) {
        let Append { prev_log_index, prev_log_term, entries, leader_commit, read_seq } = append;
        if term < self.term {
            // A stale leader: our newer term makes it step down.
            self.refuse_stale(from, read_seq);
            return;
        }
        // Two leaders in one term would break Raft's first guarantee. (A leader of a newer
        // term is normal: this node was deposed and steps down.)
        if !self.heard_from_leader(now, from, term) {
            return;
        }
        let (mut prev_log_index, mut prev_log_term, mut entries) = (prev_log_index, prev_log_term, entries);
        let (base, base_term) = self.log.base();
        if prev_log_index < base {
            // Entries up to the base are committed: the leader's are the same. Skip them.
            let skip = (base - prev_log_index).min(entries.len() as u64);
            entries.drain(..skip as usize);
            prev_log_index += skip;
            if prev_log_index < base {
                let reply = Msg::AppendReply {
                    term,
                    success: true,
                    match_index: base,
                    conflict_index: 0,
                    conflict_term: None,
                    read_seq,
                };
                self.send(from, reply);
                return;
            }
            prev_log_term = base_term;
        }

        let reject = |conflict_index: u64, conflict_term: Option<u64>| Msg::AppendReply {
            term,
            success: false,
            match_index: 0,
            conflict_index,
            conflict_term,
            read_seq,
        };
        match self.log.term(prev_log_index) {
            None => {
                let msg = reject(self.log.last_index() + 1, None);
                self.send(from, msg);
                return;
            }
            Some(t) if t != prev_log_term => {
                let msg = reject(self.log.first_index_of_term_at(prev_log_index), Some(t));
                self.send(from, msg);
                return;
            }
            Some(_) => {}
        }

        let match_index = prev_log_index + entries.len() as u64;
        for (offset, entry) in entries.into_iter().enumerate() {
            let index = prev_log_index + 1 + offset as u64;
            match self.log.term(index) {
                Some(t) if t == entry.term => continue,
                Some(_) => {
                    if index <= self.commit {
                        ::log::error!("{}: leader node{from} conflicts with committed index {index}", self.name());
                        debug_assert!(false, "conflict below the commit index");
                        return;
                    }
                    self.log.truncate_from(index);
                }
                None => {}
            }
            // append_local records `index` as the first index to persist, which also covers
            // the truncation just made.
            self.append_local(entry);
        }
        let new_commit = leader_commit.min(match_index);
        if new_commit > self.commit {
            self.commit = new_commit;
        }
        let reply =
            Msg::AppendReply { term, success: true, match_index, conflict_index: 0, conflict_term: None, read_seq };
        self.send(from, reply);
    }

    fn send(&mut self, to: NodeId, msg: Msg) {
        self.msgs.push((to, msg));
    }

    fn broadcast(&mut self, msg: Msg) {
        for i in 0..self.cfg.peers.len() {
            let peer = self.cfg.peers[i];
            self.msgs.push((peer, msg.clone()));
        }
    }
}

#[cfg(test)]
mod tests;
