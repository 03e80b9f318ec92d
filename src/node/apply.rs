//! Applies committed log entries to the database, in index order, on a thread of its own.
//!
//! The driver hands over every committed entry (with the waiting HTTP request, if this node
//! proposed it); the applier takes whatever is queued, applies the run of commands in one
//! transaction, answers the waiters and publishes the applied index. Entries that carry no
//! command (a leader's no-op, a controller's STORE) only advance the applied index. The store
//! skips entries it applied before, so replaying the log after a restart is harmless.
//! A database error stops progress, not the node: the same entries are tried again after a
//! pause, because skipping one would make this node's data differ from the others'.
//!
//! With a database shared by several nodes, another node may have applied an entry first; the
//! client waiting here then gets the outcome that node recorded (see [`Store::outcome_of`]).
//!
//! A linearizable read whose read index has been handed over waits in the same queue, and is
//! let go once everything queued before it is applied.
//!
//! A leader with a single write in flight applies it on its own thread when this thread is
//! idle and the database is the node's own file (see [`Applier::apply`]): waking this thread
//! cost more than the transaction, and the client waits for both. There the client is
//! answered as soon as the transaction has run, before its commit writes the pages; a read
//! on this node that arrives in between waits for the commit ([`AppliedIndex::settled`]).
//!
//! Better still, such a write's transaction can run while its entry replicates, on a thread
//! that runs only when a core would otherwise be idle ([`Applier::prepare`]): once the entry
//! commits, its client is answered at once with what the transaction returned. The transaction
//! is left open until then, and rolled back if this node stops leading first. Once answered, it
//! is committed by that same thread when a core is idle ([`Shared::uncommitted`]), not between
//! the answer and the client; a read that needs it, or whatever takes the database next,
//! commits it first.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::raft::LogEntry;
use super::status::RunAhead;
use super::store::own_file::OwnFile;
use super::store::{snapshot, ApplyOutcome, Command, SnapshotInfo, Store};

/// The `Key` of log entries that carry a database command.
pub const COMMAND_KEY: &str = "labctl.command";
/// The `Key` of a read barrier: an entry with no effect that earlier versions appended for a
/// linearizable read (reads now use ReadIndex, without log entries). Logs may still hold them.
pub const BARRIER_KEY: &str = "labctl.barrier";

/// How a replicated write ended, for the HTTP request waiting on it.
#[derive(Debug)]
pub enum WriteResult {
    /// Applied (or deterministically refused) by the database.
    Done(ApplyOutcome),
    /// A linearizable read may run: its read index is applied.
    Readable,
    /// This node is not the leader; the leader it knows, if any.
    NotLeader { leader: Option<u32> },
    /// The entry was replaced by a newer leader's before it committed.
    LostLeadership,
    /// This node stopped leading before the entry committed; a newer leader may still commit
    /// it (a retry with the same idempotency key then gets its outcome).
    SteppedDown,
    /// Too large for one log entry.
    TooLarge(String),
    /// Not committed in time (e.g. the leader lost its majority).
    Timeout,
}

/// One committed entry on its way to the database.
/// `R` is where the write that waits on it is answered: the HTTP API's channel on a node.
pub struct ApplyItem<R = oneshot::Sender<WriteResult>> {
    pub index: u64,
    pub term: u64,
    pub entry: LogEntry,
    pub waiter: Option<R>,
}

/// What the preparing thread is given.
enum PrepareWork {
    /// An entry to run ahead of its commit.
    Run(ApplyItem),
    /// Commit the answered entry's transaction, if still open (see [`Shared::uncommitted`]).
    Commit,
}

/// What the applier is given, in order.
enum Work {
    Entry(ApplyItem),
    /// A read to let go once everything before it is applied.
    Read(oneshot::Sender<WriteResult>),
    /// Work on a snapshot, once everything before it is applied.
    Snapshot(SnapshotJob),
}

/// Work on a snapshot of the database, done by the applier thread in order with the entries.
#[derive(Debug)]
pub enum SnapshotJob {
    /// Writes a snapshot of everything applied so far to `path` (a leader's, for followers).
    Make { path: PathBuf },
    /// Loads the snapshot received at `path`, checked against `info` first, unless the
    /// database has applied that far already; then has the database on its disk.
    Load { path: PathBuf, info: SnapshotInfo },
}

/// What became of a [`SnapshotJob`].
#[derive(Debug)]
pub enum SnapshotDone {
    Made(Result<SnapshotInfo, String>),
    Loaded(Result<SnapshotInfo, String>),
}

/// A leader's entry run ahead of its commit by the preparing thread (see [`Applier::prepare`]).
/// `Running` and `Claimed` mean the preparing thread holds the store; `Ready` means its
/// transaction is open on the store, which nobody else may use until it is settled.
enum Prepared {
    None,
    /// Handed to the preparing thread, which has not started on it.
    Pending {
        index: u64,
        term: u64,
    },
    /// The preparing thread runs its transaction.
    Running {
        index: u64,
        term: u64,
    },
    /// Its transaction ran and is left open, with what it returned.
    Ready {
        index: u64,
        term: u64,
        outcomes: Vec<ApplyOutcome>,
    },
    /// Committed (at `since`) while its transaction ran: the preparing thread answers the
    /// client (if any) and commits.
    Claimed {
        index: u64,
        waiter: Option<oneshot::Sender<WriteResult>>,
        since: Instant,
    },
    /// Given up while its transaction ran: the preparing thread rolls it back.
    Dropped,
    /// Given up before the preparing thread started on it: the thread skips it.
    Cancelled,
}

/// The applied index of a node, shared with its HTTP handlers.
#[derive(Clone)]
pub struct AppliedIndex {
    shared: Arc<Shared>,
}

/// A committed entry the database keeps failing to apply: the applier tries it again every
/// second, and nothing after it is applied meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyStall {
    /// The first entry of the batch that fails.
    pub index: u64,
    /// The database's last error.
    pub error: String,
    /// Failed attempts so far.
    pub attempts: u32,
    pub since: Instant,
}

/// How long a read waits at most for a write already answered to become visible before it is
/// refused (see [`AppliedIndex::settled`]): the wait is tens of microseconds, longer only
/// while whoever holds the database is kept off a core.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// A read waits no longer than this while the applier reports that the database fails.
const SETTLE_STALLED: Duration = Duration::from_millis(100);

/// A write this node answered is not in its database yet, and a read would not see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("entry {answered} was answered but only entries up to {applied} are in the database")]
pub struct Unsettled {
    pub answered: u64,
    pub applied: u64,
}

impl AppliedIndex {
    /// The entry the applier cannot apply, while it cannot.
    pub fn stall(&self) -> Option<ApplyStall> {
        lock(&self.shared.stall).clone()
    }

    /// Everything up to this index is in the database; a read that starts now sees at least
    /// that. Every write answered before this call is included: a leader answers a write as
    /// soon as its transaction has run and commits it right after (or leaves the commit to its
    /// preparing thread), and a read that comes in meanwhile waits here for that commit (tens of
    /// microseconds), making it itself when the database is free.
    ///
    /// The wait ends only when the write is visible: a read never runs without a write its
    /// client was already answered for, however long a busy machine keeps the committing
    /// thread waiting. It is refused ([`Unsettled`]) only after [`SETTLE_LIMIT`], or sooner
    /// while the database fails ([`AppliedIndex::stall`]).
    pub fn settled(&self) -> Result<u64, Unsettled> {
        let answered = self.shared.answered.load(Ordering::Acquire);
        let mut applied = self.shared.applied.load(Ordering::Acquire);
        let started = Instant::now();
        let mut rounds = 0u32;
        while applied < answered {
            if let Ok(mut store) = self.shared.store.try_lock() {
                self.shared.commit_answered(&mut store);
            }
            applied = self.shared.applied.load(Ordering::Acquire);
            if applied >= answered {
                break;
            }
            let waited = started.elapsed();
            if waited >= SETTLE_LIMIT || (waited >= SETTLE_STALLED && self.stall().is_some()) {
                return Err(Unsettled { answered, applied });
            }
            // Yield first (the commit is usually a moment away), then sleep, so that a long
            // wait leaves the cores to the thread that holds the database.
            rounds += 1;
            if rounds < 100 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(applied)
    }
}

/// The handle the driver keeps.
pub struct Applier {
    /// What became of the snapshot work handed over, in order.
    pub snapshots: tokio::sync::mpsc::UnboundedReceiver<SnapshotDone>,
    tx: mpsc::Sender<Work>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The preparing thread (only for a node's own file).
    preparer: Option<(mpsc::Sender<PrepareWork>, std::thread::JoinHandle<()>)>,
}

/// What the driver and the applier thread share.
struct Shared {
    /// The write connection: the thread's, lent to the driver while the thread is idle.
    store: Mutex<Store>,
    /// Work sent to the thread and not finished yet. Only the driver sends, so when it reads
    /// zero, everything it handed over is applied and the thread does not touch the store.
    queued: AtomicUsize,
    applied: AtomicU64,
    /// Everything up to here is on the database's disk: what the Raft log may drop.
    durable: AtomicU64,
    /// A node's own file, written checkpointed, is checkpointed with flushes once this many
    /// entries were applied since it last was (0: only when it stops), so that the log may drop
    /// them.
    flush_every: AtomicU64,
    /// The highest index whose writer was answered before its transaction committed.
    answered: AtomicU64,
    /// The entry run ahead of its commit. Locked after `store` when both are held, and only
    /// for a moment.
    prepared: Mutex<Prepared>,
    /// A leader's entry run ahead and answered, whose transaction is still open on the store:
    /// the preparing thread commits it when it gets a core, and whoever takes the store before
    /// that commits it first ([`Shared::commit_answered`]). Its client's answer left before the
    /// commit's page writes, which would otherwise run on the core the client's HTTP worker
    /// waits for.
    uncommitted: Mutex<Option<ApplyItem>>,
    /// Whether an entry run ahead is committed after its answer, by the preparing thread,
    /// rather than at once (see [`Shared::uncommitted`]).
    defer_commits: AtomicBool,
    /// No entry is run ahead before then (see [`PREPARE_PAUSE`]).
    prepare_paused_until: Mutex<Option<Instant>>,
    /// What became of entries run ahead: answered, rolled back, pauses.
    ran_ahead: [AtomicU64; 3],
    /// Set while a batch keeps failing (see [`AppliedIndex::stall`]).
    stall: Mutex<Option<ApplyStall>>,
    /// Set when the node stops: a batch that fails then is not tried again.
    stopping: AtomicBool,
    /// Set, under the store's lock, once a batch was left unapplied on stopping: nothing after
    /// it is applied either, so that the database never skips an entry.
    given_up: AtomicBool,
    name: String,
}

impl Shared {
    /// Counts what became of an entry run ahead.
    fn count_run_ahead(&self, what: RanAhead) {
        self.ran_ahead[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Commits the transaction of the entry answered before its commit, if one is open; called
    /// by whoever holds the store, before anything else.
    fn commit_answered(&self, store: &mut Store) {
        let Some(mut item) = lock(&self.uncommitted).take() else { return };
        if let Err(e) = store.commit_open() {
            let _ = store.rollback_open();
            log::error!("{}: cannot commit entry {} after answering it: {e}; applying it again", self.name, item.index);
            let _ = self.apply_until_done(store, std::slice::from_mut(&mut item));
            return;
        }
        self.applied.fetch_max(item.index, Ordering::AcqRel);
    }

    /// Applies `batch`, trying again every [`RETRY`] while the database fails, with the failure
    /// shown to `/readyz` meanwhile. Gives up only when the node is stopping, and then applies
    /// nothing more: the entries are in the Raft log, and applied when the node starts again.
    /// Whether `batch` was applied.
    #[must_use]
    fn apply_until_done(&self, store: &mut Store, batch: &mut [ApplyItem]) -> bool {
        if self.given_up.load(Ordering::Acquire) {
            return false;
        }
        while let Err(e) = apply_batch(store, batch, &self.applied) {
            let index = batch[0].index;
            if self.stopping.load(Ordering::Acquire) {
                log::warn!(
                    "{}: stopping with entries {index}… not applied ({}); they are applied when the node starts again",
                    self.name,
                    e.with_causes()
                );
                self.given_up.store(true, Ordering::Release);
                return false;
            }
            let attempts = {
                let mut stall = lock(&self.stall);
                let attempts = stall.as_ref().filter(|s| s.index == index).map_or(0, |s| s.attempts) + 1;
                let since = stall.as_ref().filter(|s| s.index == index).map_or_else(Instant::now, |s| s.since);
                *stall = Some(ApplyStall { index, error: e.with_causes(), attempts, since });
                attempts
            };
            log::error!(
                "{}: cannot apply entries {index}…: {}; trying again (attempt {attempts})",
                self.name,
                e.with_causes()
            );
            std::thread::sleep(RETRY);
        }
        if lock(&self.stall).take().is_some() {
            log::info!("{}: applied entries {}… after all", self.name, batch[0].index);
        }
        true
    }
}

/// What became of an entry run ahead of its commit, as counted in [`Shared::ran_ahead`].
#[derive(Clone, Copy)]
enum RanAhead {
    Answered = 0,
    RolledBack = 1,
    Paused = 2,
}

/// Entries applied in one transaction at most.
const MAX_BATCH: usize = 512;
const RETRY: Duration = Duration::from_secs(1);
/// When the client of an entry that committed while its transaction ran ahead waited longer
/// than [`CLAIM_WAIT_LIMIT`] for the preparing thread (the cores were busy with work of normal
/// priority, which that thread yields to), entries are applied the usual way for this long: a
/// write's client does not keep waiting on a thread that gets no core. (With one client on an
/// otherwise quiet machine such a wait happens about once in a few thousand writes, and lasts
/// 1–4 ms.)
const PREPARE_PAUSE: Duration = Duration::from_secs(1);
const CLAIM_WAIT_LIMIT: Duration = Duration::from_millis(10);
/// A node's own file, written without flushes, is handed to the disk this often (see
/// [`OwnFile::write_back`]).
const WRITE_BACK_EVERY: Duration = Duration::from_millis(500);

impl Applier {
    /// Starts the applier thread on `store` (its write connection); `own` is the node's own
    /// file when `store` writes it without flushes, to be flushed and marked clean on stop.
    pub fn start(mut store: Store, own: Option<OwnFile>, name: String) -> std::io::Result<Applier> {
        let (tx, rx) = mpsc::channel();
        let applied = match store.last_applied() {
            Ok(a) => a.index,
            Err(e) => {
                log::error!("{name}: cannot read the applied index: {e}");
                0
            }
        };
        // Entries run ahead of their commit only on the node's own file, where this node is the
        // only writer.
        let own_file = store.is_own_file();
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            queued: AtomicUsize::new(0),
            applied: AtomicU64::new(applied),
            durable: AtomicU64::new(if own.is_some() { 0 } else { applied }),
            flush_every: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            prepared: Mutex::new(Prepared::None),
            uncommitted: Mutex::new(None),
            defer_commits: AtomicBool::new(false),
            prepare_paused_until: Mutex::new(None),
            ran_ahead: Default::default(),
            stall: Mutex::new(None),
            stopping: AtomicBool::new(false),
            given_up: AtomicBool::new(false),
            name,
        });
        let theirs = shared.clone();
        let (done_tx, snapshots) = tokio::sync::mpsc::unbounded_channel();
        let thread = std::thread::Builder::new().name("apply".into()).spawn(move || run(&theirs, own, rx, &done_tx))?;
        let preparer = if own_file {
            let (prepare_tx, prepare_rx) = mpsc::channel();
            let theirs = shared.clone();
            let thread =
                std::thread::Builder::new().name("prepare".into()).spawn(move || prepare(&theirs, prepare_rx))?;
            Some((prepare_tx, thread))
        } else {
            None
        };
        Ok(Applier { snapshots, tx, shared, thread: Some(thread), preparer })
    }

    /// Snapshot work, done after everything handed over before; what became of it comes
    /// back in [`Applier::snapshots`]. An entry run ahead of its commit is given up first (it
    /// is applied the usual way once it commits): the snapshot needs the database to itself.
    pub fn snapshot(&self, job: SnapshotJob) {
        self.abandon_prepared();
        self.send(Work::Snapshot(job));
    }

    /// Everything up to this index is on the database's disk.
    pub fn durable(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Has a node's own file, written without flushes, flushed once `entries` entries were
    /// applied since the last flush (0: only when it stops), so that the Raft log may drop
    /// them. A database server's commits are on its disk already.
    pub fn flush_every(&self, entries: u64) {
        self.shared.flush_every.store(entries, Ordering::Release);
    }

    /// Applies committed entries, in order after those handed over before: the thread does,
    /// never the caller (the Raft thread, whose timers must not wait for the database), except
    /// that an entry run ahead of its commit is settled here (its client answered at once).
    pub fn apply(&self, mut items: Vec<ApplyItem>) {
        if items.is_empty() {
            return;
        }
        self.settle_prepared(&mut items);
        for item in items {
            self.send(Work::Entry(item));
        }
    }

    /// Whether [`Applier::prepare`] would take an entry now: a node's own file, nothing
    /// queued, nothing else run ahead, and not paused (see [`PREPARE_PAUSE`]).
    pub fn can_prepare(&self) -> bool {
        self.preparer.is_some()
            && self.idle()
            && matches!(*lock(&self.shared.prepared), Prepared::None)
            && lock(&self.shared.prepare_paused_until).is_none_or(|until| Instant::now() >= until)
    }

    /// Runs a leader's new entry ahead of its commit, while it replicates: the preparing thread
    /// applies it in a transaction that it leaves open. The thread runs only when a core would
    /// otherwise be idle (`SCHED_IDLE`), so it never delays the nodes' own Raft work. When the
    /// entry commits, [`Applier::apply`] answers its client at once with what the transaction
    /// returned and commits it; when this node stops leading first,
    /// [`Applier::abandon_prepared`] rolls it back. `item` must be the next entry to apply
    /// (everything before it applied), and [`Applier::can_prepare`] true; otherwise nothing
    /// happens.
    pub fn prepare(&self, item: ApplyItem) {
        let Some((tx, _)) = &self.preparer else { return };
        if !self.can_prepare() {
            return;
        }
        *lock(&self.shared.prepared) = Prepared::Pending { index: item.index, term: item.term };
        if tx.send(PrepareWork::Run(item)).is_err() {
            *lock(&self.shared.prepared) = Prepared::None;
        }
    }

    /// Gives up the entry run ahead of its commit, if any: its transaction is rolled back.
    /// Never waits for the preparing thread.
    pub fn abandon_prepared(&self) {
        let mut prepared = lock(&self.shared.prepared);
        match std::mem::replace(&mut *prepared, Prepared::None) {
            Prepared::Ready { index, .. } => {
                drop(prepared);
                self.shared.count_run_ahead(RanAhead::RolledBack);
                // Nobody else uses the store while a transaction is left open on it.
                let mut store = lock(&self.shared.store);
                if let Err(e) = store.rollback_open() {
                    log::error!("{}: cannot roll back entry {index}, run ahead of its commit: {e}", self.shared.name);
                }
            }
            Prepared::Pending { .. } => *prepared = Prepared::Cancelled,
            Prepared::Running { .. } => *prepared = Prepared::Dropped,
            other @ (Prepared::Claimed { .. } | Prepared::Dropped | Prepared::Cancelled) => *prepared = other,
            Prepared::None => {}
        }
    }

    /// Settles the entry run ahead of its commit when `items` (committed entries, in order)
    /// reach it: the first item is that entry, or it was replaced by another leader's. Never
    /// waits for the preparing thread: a transaction still running is claimed (the thread
    /// answers and commits it) or dropped, one not started yet is cancelled and `items` apply
    /// the usual way.
    fn settle_prepared(&self, items: &mut Vec<ApplyItem>) {
        let mut prepared = lock(&self.shared.prepared);
        let first = (items[0].index, items[0].term);
        match std::mem::replace(&mut *prepared, Prepared::None) {
            Prepared::Ready { index, term, outcomes } => {
                drop(prepared);
                let mut store = lock(&self.shared.store);
                if (index, term) != first {
                    self.shared.count_run_ahead(RanAhead::RolledBack);
                    if let Err(e) = store.rollback_open() {
                        log::error!(
                            "{}: cannot roll back entry {index}, run ahead of its commit: {e}",
                            self.shared.name
                        );
                    }
                    return;
                }
                let mut item = items.remove(0);
                self.shared.count_run_ahead(RanAhead::Answered);
                let answers = std::iter::once(item.waiter.take()).zip(outcomes);
                if let (true, Some((tx, _))) = (self.shared.defer_commits.load(Ordering::Acquire), &self.preparer) {
                    // The client is answered now; the commit waits for an idle core.
                    answer(&self.shared, index, answers);
                    *lock(&self.shared.uncommitted) = Some(item);
                    drop(store);
                    let _ = tx.send(PrepareWork::Commit);
                } else if let Err(e) = answer_and_commit(&mut store, &self.shared, index, answers) {
                    log::error!(
                        "{}: cannot commit entry {index} after answering it: {e}; applying it again",
                        self.shared.name
                    );
                    drop(store);
                    // For nobody: its client has its answer. What follows it queues behind it.
                    self.send(Work::Entry(item));
                }
            }
            Prepared::Running { index, term } if (index, term) == first => {
                let item = items.remove(0);
                *prepared = Prepared::Claimed { index, waiter: item.waiter, since: Instant::now() };
            }
            Prepared::Running { .. } => *prepared = Prepared::Dropped,
            Prepared::Pending { .. } => *prepared = Prepared::Cancelled,
            other @ (Prepared::Claimed { .. } | Prepared::Dropped | Prepared::Cancelled) => *prepared = other,
            Prepared::None => {}
        }
    }

    /// Answers `reply` with [`WriteResult::Readable`] once every entry handed over so far is applied.
    pub fn push_read(&self, reply: oneshot::Sender<WriteResult>) {
        if self.idle() {
            let _ = reply.send(WriteResult::Readable);
        } else {
            // A stopped applier drops the reply, which the waiting request reports.
            self.send(Work::Read(reply));
        }
    }

    fn send(&self, work: Work) {
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::SendError(work)) = self.tx.send(work) {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            if let Work::Entry(item) = work {
                log::error!("{}: applier has stopped; entry {} is not applied", self.shared.name, item.index);
            }
        }
    }

    /// Whether everything handed over is applied.
    fn idle(&self) -> bool {
        self.shared.queued.load(Ordering::Acquire) == 0
    }

    /// What became of the entries run ahead of their commit so far.
    pub fn run_ahead(&self) -> RunAhead {
        let count = |what: RanAhead| self.shared.ran_ahead[what as usize].load(Ordering::Relaxed);
        RunAhead {
            answered: count(RanAhead::Answered),
            rolled_back: count(RanAhead::RolledBack),
            pauses: count(RanAhead::Paused),
        }
    }

    /// The highest index applied to the database by this node.
    pub fn applied(&self) -> u64 {
        self.shared.applied.load(Ordering::Acquire)
    }

    /// The applied index as it moves, for readers on other threads: it is stored after the
    /// transaction that applied it has committed.
    pub fn applied_index(&self) -> AppliedIndex {
        AppliedIndex { shared: self.shared.clone() }
    }

    /// Lets the applier finish what is queued, then stops it.
    pub fn stop(mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.abandon_prepared();
        if let Some((tx, thread)) = self.preparer.take() {
            drop(tx);
            let _ = thread.join();
        }
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    shared: &Shared,
    own: Option<OwnFile>,
    rx: mpsc::Receiver<Work>,
    snapshots: &tokio::sync::mpsc::UnboundedSender<SnapshotDone>,
) {
    let name = &shared.name;
    // When the file was last handed to the disk, and the applied index then.
    let mut written_back = (Instant::now(), shared.applied.load(Ordering::Acquire));
    loop {
        let received = match &own {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(own) => {
                if written_back.0.elapsed() >= WRITE_BACK_EVERY {
                    let index = shared.applied.load(Ordering::Acquire);
                    if index != written_back.1 {
                        own.write_back();
                    }
                    written_back = (Instant::now(), index);
                }
                rx.recv_timeout(WRITE_BACK_EVERY.saturating_sub(written_back.0.elapsed()))
            }
        };
        let first = match received {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // A leader's lone writes are applied by the preparing thread, never here: the
                // flush they may be due is looked at now and then.
                if shared.flush_every.load(Ordering::Acquire) > 0 {
                    let mut store = lock(&shared.store);
                    make_durable(shared, &mut store, own.as_ref(), false);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let (mut batch, mut reads, mut job) = (Vec::new(), Vec::new(), None);
        let mut work = Some(first);
        while let Some(w) = work.take() {
            match w {
                Work::Entry(item) => batch.push(item),
                Work::Read(reply) => reads.push(reply),
                // Done after the entries before it; what follows waits for the next round.
                Work::Snapshot(j) => {
                    job = Some(j);
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                work = rx.try_recv().ok();
            }
        }
        let taken = batch.len() + reads.len() + usize::from(job.is_some());
        // Reads queued behind these entries go once they are applied (or at once if none).
        let mut store = lock(&shared.store);
        shared.commit_answered(&mut store);
        if !batch.is_empty() && !shared.apply_until_done(&mut store, &mut batch) {
            // Stopping with the database failing: the waiters of these entries and of those
            // still queued are let go unanswered.
            break;
        }
        if let Some(job) = job {
            let done = snapshot_job(shared, &mut store, own.as_ref(), job);
            let _ = snapshots.send(done);
        }
        make_durable(shared, &mut store, own.as_ref(), false);
        drop(store);
        for reply in reads {
            let _ = reply.send(WriteResult::Readable);
        }
        shared.queued.fetch_sub(taken, Ordering::AcqRel);
    }
    if let Some(own) = own {
        // Left unflushed, the file is still used after a restart of the node, but rebuilt after
        // a restart of the machine.
        let mut store = lock(&shared.store);
        shared.commit_answered(&mut store);
        match store.flush_to_disk().map_err(|e| e.to_string()).and_then(|()| own.close().map_err(|e| e.to_string())) {
            Ok(()) => log::info!("{name}: database flushed to disk"),
            Err(e) => log::warn!("{name}: cannot flush the database on stop ({e}); a reboot will rebuild it"),
        }
    }
}

/// Does a snapshot job on the store (the applier thread holds it).
fn snapshot_job(shared: &Shared, store: &mut Store, own: Option<&OwnFile>, job: SnapshotJob) -> SnapshotDone {
    match job {
        SnapshotJob::Make { path } => {
            SnapshotDone::Made(snapshot::write_file(store, &path).map_err(|e| e.with_causes()))
        }
        SnapshotJob::Load { path, info } => {
            let applied = match store.last_applied() {
                Ok(applied) => applied.index,
                Err(e) => return SnapshotDone::Loaded(Err(e.with_causes())),
            };
            if applied < info.index {
                if let Err(e) = snapshot::load_file(store, &path, &info) {
                    return SnapshotDone::Loaded(Err(e.with_causes()));
                }
                shared.applied.fetch_max(info.index, Ordering::AcqRel);
            }
            // The log drops what the snapshot holds once the core is told: on the disk first.
            make_durable(shared, store, own, true);
            SnapshotDone::Loaded(Ok(info))
        }
    }
}

/// Publishes how far the database is on its disk: a server's commits are; a node's own file,
/// written without flushes, is flushed once [`Shared::flush_every`] entries were applied since
/// the last flush (or now, when `now`).
fn make_durable(shared: &Shared, store: &mut Store, own: Option<&OwnFile>, now: bool) {
    let applied = shared.applied.load(Ordering::Acquire);
    if own.is_none() {
        shared.durable.fetch_max(applied, Ordering::AcqRel);
        return;
    }
    let every = shared.flush_every.load(Ordering::Acquire);
    let durable = shared.durable.load(Ordering::Acquire);
    let due = now || (every > 0 && applied >= durable + every);
    if !due || applied <= durable {
        return;
    }
    shared.commit_answered(store);
    match store.checkpoint_flushed() {
        Ok(true) => {
            shared.durable.fetch_max(applied, Ordering::AcqRel);
        }
        Ok(false) => log::debug!(
            "{}: a reader or an entry run ahead of its commit kept the checkpoint from completing; again later",
            shared.name
        ),
        Err(e) => log::error!("{}: cannot checkpoint the database to disk: {}", shared.name, e.with_causes()),
    }
}

/// The preparing thread: runs a leader's entries ahead of their commit (see
/// [`Applier::prepare`]), at idle priority.
fn prepare(shared: &Shared, rx: mpsc::Receiver<PrepareWork>) {
    let idle = set_policy(libc::SCHED_IDLE);
    if !idle {
        log::debug!("{}: preparing thread keeps its priority: {}", shared.name, std::io::Error::last_os_error());
    }
    // Answered entries are left for this thread to commit only if it can leave idle priority
    // while it does: readers wait for that commit, and would wait for as long as the cores are
    // busy. Without CAP_SYS_NICE (or room in RLIMIT_NICE) a thread cannot.
    let can_commit = !idle || (set_policy(libc::SCHED_OTHER) && set_policy(libc::SCHED_IDLE));
    shared.defer_commits.store(can_commit, Ordering::Release);
    while let Ok(work) = rx.recv() {
        match work {
            PrepareWork::Run(item) => {
                commit_answered_now(shared, idle);
                prepare_one(shared, item);
            }
            PrepareWork::Commit => commit_answered_now(shared, idle),
        }
    }
    commit_answered_now(shared, idle);
}

/// Sets this thread's scheduling policy; whether it could.
fn set_policy(policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets this thread's own policy; `param` outlives the call.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

/// Commits the answered entry's open transaction, if there is one, at normal priority (the
/// preparing thread is `idle` otherwise): readers and the Raft thread may wait for the store
/// or for `uncommitted` while this thread holds them, so it takes neither at idle priority.
fn commit_answered_now(shared: &Shared, idle: bool) {
    // Answered but not applied: an entry may be left open (`answered` is raised before the
    // entry is left in `uncommitted`, `applied` after its commit).
    if shared.applied.load(Ordering::Acquire) >= shared.answered.load(Ordering::Acquire) {
        return;
    }
    if idle {
        set_policy(libc::SCHED_OTHER);
    }
    shared.commit_answered(&mut lock(&shared.store));
    if idle {
        set_policy(libc::SCHED_IDLE);
    }
}

/// Runs `item` ahead of its commit unless it was given up already; then settles it if the
/// driver has meanwhile claimed or dropped it, or leaves it open for the driver.
fn prepare_one(shared: &Shared, mut item: ApplyItem) {
    // The store first: `Running` means this thread holds it.
    let mut store = lock(&shared.store);
    shared.commit_answered(&mut store);
    {
        let mut prepared = lock(&shared.prepared);
        if !matches!(*prepared, Prepared::Pending { index, term } if index == item.index && term == item.term) {
            *prepared = Prepared::None;
            return;
        }
        *prepared = Prepared::Running { index: item.index, term: item.term };
    }
    let ran = match command_of(&item.entry) {
        Some(Ok(command)) => match store.apply_open(&[(item.index, item.term, command)]) {
            Ok(outcomes) => Some(outcomes),
            Err(e) => {
                log::warn!("{}: cannot run entry {} ahead of its commit: {e}", shared.name, item.index);
                None
            }
        },
        // Not a command this thread runs (the usual way reports it).
        _ => None,
    };
    let mut prepared = lock(&shared.prepared);
    match (std::mem::replace(&mut *prepared, Prepared::None), ran) {
        (Prepared::Running { index, term }, Some(outcomes)) => {
            // Left open for the driver; the store is let go before the state.
            *prepared = Prepared::Ready { index, term, outcomes };
            drop(store);
        }
        (Prepared::Claimed { index, waiter, since }, Some(outcomes)) => {
            drop(prepared);
            shared.count_run_ahead(RanAhead::Answered);
            if since.elapsed() > CLAIM_WAIT_LIMIT {
                log::debug!("{}: entry {index} waited {:?} for its transaction; pausing", shared.name, since.elapsed());
                shared.count_run_ahead(RanAhead::Paused);
                *lock(&shared.prepare_paused_until) = Some(Instant::now() + PREPARE_PAUSE);
            }
            if let Err(e) = answer_and_commit(&mut store, shared, index, std::iter::once(waiter).zip(outcomes)) {
                log::error!("{}: cannot commit entry {index} after answering it: {e}; applying it again", shared.name);
                let _ = shared.apply_until_done(&mut store, std::slice::from_mut(&mut item));
            }
        }
        // Committed, but its transaction failed: applied here, before anything after it, as
        // this thread holds the store.
        (Prepared::Claimed { waiter, .. }, None) => {
            drop(prepared);
            item.waiter = waiter;
            let _ = shared.apply_until_done(&mut store, std::slice::from_mut(&mut item));
        }
        // Given up (or, with nothing run, applied the usual way once committed).
        (_, Some(_)) => {
            drop(prepared);
            shared.count_run_ahead(RanAhead::RolledBack);
            if let Err(e) = store.rollback_open() {
                log::error!("{}: cannot roll back entry {}, run ahead of its commit: {e}", shared.name, item.index);
            }
        }
        (_, None) => {}
    }
}

/// The command `entry` carries, read; None for an entry without one (a no-op, a STORE).
fn command_of(entry: &LogEntry) -> Option<serde_json::Result<Command>> {
    (entry.key.as_deref() == Some(COMMAND_KEY)).then(|| serde_json::from_str::<Command>(entry.value.get()))
}

/// Answers the waiters of entries up to `last`, whose transaction has run and is still open,
/// with their outcomes, then commits it. `answered` is raised before the first answer leaves,
/// so that a read arriving before the commit waits for it ([`AppliedIndex::settled`]), and
/// `applied` once it is committed. A failed commit is rolled back and returned: the entries
/// must be applied again (for nobody: their clients have their answers).
fn answer_and_commit(
    store: &mut Store,
    shared: &Shared,
    last: u64,
    answers: impl IntoIterator<Item = (Option<oneshot::Sender<WriteResult>>, ApplyOutcome)>,
) -> Result<(), super::store::StoreError> {
    answer(shared, last, answers);
    if let Err(e) = store.commit_open() {
        let _ = store.rollback_open();
        return Err(e);
    }
    shared.applied.fetch_max(last, Ordering::AcqRel);
    Ok(())
}

/// Answers the waiters of entries up to `last` with their outcomes, `answered` raised first:
/// a read arriving before their transaction commits waits for it ([`AppliedIndex::settled`]).
fn answer(
    shared: &Shared,
    last: u64,
    answers: impl IntoIterator<Item = (Option<oneshot::Sender<WriteResult>>, ApplyOutcome)>,
) {
    shared.answered.fetch_max(last, Ordering::AcqRel);
    for (waiter, outcome) in answers {
        if let Some(waiter) = waiter {
            let _ = waiter.send(WriteResult::Done(outcome));
        }
    }
}

/// The store (or the prepared entry), also after a panic elsewhere while it was held (its
/// transactions roll back).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Applies `batch` (consecutive entries); answers the waiters only once it is all durable and
/// `applied` shows it, so that a client's next read on this node sees its write.
fn apply_batch(
    store: &mut Store,
    batch: &mut [ApplyItem],
    applied: &AtomicU64,
) -> Result<(), super::store::StoreError> {
    let outcomes = apply_entries(store, batch)?;
    if let Some(last) = batch.last() {
        applied.fetch_max(last.index, Ordering::AcqRel);
    }
    for (item, outcome) in batch.iter_mut().zip(outcomes) {
        if let Some(waiter) = item.waiter.take() {
            // An entry without a command is only waited on by a write that turned out empty.
            let _ = waiter.send(outcome.map_or(WriteResult::Done(ApplyOutcome::AlreadyApplied), WriteResult::Done));
        }
    }
    Ok(())
}

/// What the database makes of `batch` (consecutive committed entries): each entry's outcome,
/// None for an entry without a command (a leader's no-op, a controller's STORE) or with one
/// that cannot be read, which only advance the applied index. Each run of commands is applied
/// in one transaction. An entry applied before (by this node before a restart, or by another
/// node sharing the database) is not applied again; where a client waits on it, it gets the
/// outcome recorded then. On an error nothing is answered, and the batch may be tried again
/// whole.
pub fn apply_entries<R>(
    store: &mut Store,
    batch: &[ApplyItem<R>],
) -> Result<Vec<Option<ApplyOutcome>>, super::store::StoreError> {
    let mut outcomes: Vec<Option<ApplyOutcome>> = Vec::with_capacity(batch.len());
    let mut run: Vec<(u64, u64, Command)> = Vec::new();
    let mut run_start = 0;
    for (i, item) in batch.iter().enumerate() {
        let command = command_of(&item.entry).and_then(|parsed| match parsed {
            Ok(c) => Some(c),
            Err(e) => {
                // Every node reads the same entry the same way, so skipping stays consistent.
                log::error!("entry {} carries an unreadable command: {e}", item.index);
                None
            }
        });
        match command {
            Some(c) => {
                if run.is_empty() {
                    run_start = i;
                }
                run.push((item.index, item.term, c));
            }
            None => {
                flush(store, &mut run, run_start, &mut outcomes)?;
                store.skip(item.index, item.term)?;
                outcomes.push(None);
            }
        }
    }
    flush(store, &mut run, run_start, &mut outcomes)?;
    for (item, outcome) in batch.iter().zip(outcomes.iter_mut()) {
        if item.waiter.is_some() && *outcome == Some(ApplyOutcome::AlreadyApplied) {
            if let Some(recorded) = store.outcome_of(item.index)? {
                *outcome = Some(recorded);
            }
        }
    }
    Ok(outcomes)
}

fn flush(
    store: &mut Store,
    run: &mut Vec<(u64, u64, Command)>,
    run_start: usize,
    outcomes: &mut Vec<Option<ApplyOutcome>>,
) -> Result<(), super::store::StoreError> {
    if run.is_empty() {
        return Ok(());
    }
    debug_assert_eq!(outcomes.len(), run_start);
    let results = store.apply_batch(run)?;
    outcomes.extend(results.into_iter().map(Some));
    run.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commands of `items` if every one carries a readable command.
    fn commands_of(items: &[ApplyItem]) -> Option<Vec<(u64, u64, Command)>> {
        items.iter().map(|item| Some((item.index, item.term, command_of(&item.entry)?.ok()?))).collect()
    }
    use crate::node::store::{Op, ProductInput, Reply};
    use crate::proto::EntryValue;

    fn create(title: &str) -> Command {
        let product = ProductInput::new(title, 2.5, "GBP");
        Command::new(chrono::Utc::now(), Op::CreateProduct { product })
    }

    fn item(index: u64, cmd: &Command) -> (ApplyItem, oneshot::Receiver<WriteResult>) {
        let (tx, rx) = oneshot::channel();
        let entry = LogEntry { term: 1, key: Some(COMMAND_KEY.into()), value: EntryValue::to_json(cmd).unwrap() };
        (ApplyItem { index, term: 1, entry, waiter: Some(tx) }, rx)
    }

    #[test]
    fn a_waiter_gets_the_outcome_of_the_node_that_applied_first() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("shared.db").to_string_lossy().into_owned();
        let (mut first, mut second) = (Store::open(&url).unwrap(), Store::open(&url).unwrap());
        let cmd = create("Dune");
        // Another node sharing the database applies entry 1 first.
        let applied = first.apply(1, 1, &cmd).unwrap();
        let ApplyOutcome::Applied { status: 201, reply: Reply::Product(ref p) } = applied else {
            panic!("{applied:?}")
        };
        assert_eq!(p.title, "Dune");
        // This node's client waits for entry 1, and another for the no-op after it.
        let (one, mut answer) = item(1, &cmd);
        let (tx, mut barrier) = oneshot::channel();
        let noop = ApplyItem { index: 2, term: 1, entry: LogEntry::noop(1), waiter: Some(tx) };
        let index = AtomicU64::new(0);
        apply_batch(&mut second, &mut [one, noop], &index).unwrap();
        assert_eq!(index.load(Ordering::Acquire), 2, "the applied index covers the batch");
        match answer.try_recv().unwrap() {
            WriteResult::Done(outcome) => assert_eq!(outcome, applied, "the real answer, not just 'applied'"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(barrier.try_recv().unwrap(), WriteResult::Done(ApplyOutcome::AlreadyApplied)));
        assert_eq!(second.dump().unwrap().products.len(), 1, "applied once");
    }

    #[test]
    fn a_write_is_answered_before_its_commit_and_readers_see_it_only_after() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("node.db").to_string_lossy().into_owned();
        let mut store = Store::open(&url).unwrap().private();
        let mut reader = Store::open(&url).unwrap();
        let (shared, index) = shared_on(&url);
        // Left open, the transaction's row is invisible to another connection; rolled back, it
        // is gone and entry 1 can be applied again.
        let cmd = create("ahead");
        store.apply_open(&[(1, 1, cmd.clone())]).unwrap();
        assert!(reader.dump().unwrap().products.is_empty(), "not visible before the commit");
        store.rollback_open().unwrap();
        assert_eq!(store.last_applied().unwrap().index, 0);
        let (mut one, mut answer) = item(1, &cmd);
        let commands = commands_of(std::slice::from_ref(&one)).unwrap();
        let outcomes = store.apply_open(&commands).unwrap();
        answer_and_commit(&mut store, &shared, 1, std::iter::once(one.waiter.take()).zip(outcomes)).unwrap();
        assert_eq!(title(answer.try_recv().unwrap()), "ahead");
        assert_eq!((index.settled(), reader.dump().unwrap().products.len()), (Ok(1), 1), "visible once settled");
        assert_eq!(store.last_applied().unwrap().index, 1);
    }

    /// What the driver and the applier share, on the file at `url` (through a connection
    /// of its own), without the applier's threads; and the applied index readers get.
    fn shared_on(url: &str) -> (Arc<Shared>, AppliedIndex) {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::open(url).unwrap().private()),
            queued: AtomicUsize::new(0),
            applied: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            flush_every: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            prepared: Mutex::new(Prepared::None),
            uncommitted: Mutex::new(None),
            defer_commits: AtomicBool::new(false),
            prepare_paused_until: Mutex::new(None),
            ran_ahead: Default::default(),
            stall: Default::default(),
            stopping: AtomicBool::new(false),
            given_up: AtomicBool::new(false),
            name: "node1".into(),
        });
        let index = AppliedIndex { shared: shared.clone() };
        (shared, index)
    }

    #[test]
    fn an_answered_entry_left_open_is_committed_by_the_first_reader_that_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("node.db").to_string_lossy().into_owned();
        let (shared, index) = shared_on(&url);
        let mut reader = Store::open(&url).unwrap();
        let (item, _) = item(1, &create("answered"));
        let commands = commands_of(std::slice::from_ref(&item)).unwrap();
        lock(&shared.store).apply_open(&commands).unwrap();
        shared.answered.store(1, Ordering::Release);
        *lock(&shared.uncommitted) = Some(item);
        assert!(titles_in(&mut reader).is_empty(), "not visible before its commit");
        assert_eq!(index.settled(), Ok(1), "the reader committed it");
        assert_eq!(titles_in(&mut reader), ["answered"]);
        assert!(lock(&shared.uncommitted).is_none());
        assert_eq!(lock(&shared.store).last_applied().unwrap().index, 1);
    }

    /// A reader waits for an answered write however long the database is held elsewhere (a
    /// thread kept off the cores of a busy machine): it never reads without that write.
    #[test]
    fn a_reader_waits_for_an_answered_write_while_the_database_is_held_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("node.db").to_string_lossy().into_owned();
        let (shared, index) = shared_on(&url);
        let (item, _) = item(1, &create("held"));
        let commands = commands_of(std::slice::from_ref(&item)).unwrap();
        lock(&shared.store).apply_open(&commands).unwrap();
        shared.answered.store(1, Ordering::Release);
        *lock(&shared.uncommitted) = Some(item);
        let holder = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut store = lock(&shared.store);
                // Longer than any wait a read used to give up after.
                std::thread::sleep(Duration::from_millis(400));
                shared.commit_answered(&mut store);
            })
        };
        // The holder has the database before the read starts.
        while shared.store.try_lock().is_ok() {
            std::thread::yield_now();
        }
        let started = Instant::now();
        assert_eq!(index.settled(), Ok(1));
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
        let mut reader = Store::open(&url).unwrap();
        assert_eq!(titles_in(&mut reader), ["held"]);
        holder.join().unwrap();
        // Nothing answered beyond what is applied: no wait at all.
        assert_eq!(index.settled(), Ok(1));
    }

    fn title(result: WriteResult) -> String {
        match result {
            WriteResult::Done(ApplyOutcome::Applied { reply: Reply::Product(p), .. }) => p.title,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_applier_applies_what_it_is_handed_in_log_order_and_never_on_the_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("node.db").to_string_lossy().into_owned();
        let applier = Applier::start(Store::open(&url).unwrap().private(), None, "node1".into()).unwrap();
        // The caller (the Raft thread) holds nothing up while the database is held elsewhere.
        let held = lock(&applier.shared.store);
        let (one, first) = item(1, &create("e1"));
        applier.apply(vec![one]);
        assert_eq!(applier.applied(), 0, "not applied by the caller");
        drop(held);
        assert_eq!(title(first.blocking_recv().unwrap()), "e1");
        assert_eq!(applier.applied(), 1);

        // Batches handed over one after another, while earlier ones may still be queued.
        let (items, answers): (Vec<_>, Vec<_>) = (2..=11).map(|i| item(i, &create(&format!("e{i}")))).unzip();
        let mut items = items.into_iter();
        applier.apply(items.by_ref().take(4).collect());
        applier.apply(items.collect());
        let (tx, read) = oneshot::channel();
        applier.push_read(tx);
        let titles: Vec<String> = answers.into_iter().map(|rx| title(rx.blocking_recv().unwrap())).collect();
        assert_eq!(titles, (2..=11).map(|i| format!("e{i}")).collect::<Vec<_>>());
        assert!(matches!(read.blocking_recv().unwrap(), WriteResult::Readable));
        assert_eq!(applier.applied(), 11);
        applier.stop();
        let ids: Vec<(i64, String)> =
            Store::open(&url).unwrap().dump().unwrap().products.into_iter().map(|p| (p.id, p.title)).collect();
        assert_eq!(ids, (1..=11).map(|i| (i, format!("e{i}"))).collect::<Vec<_>>(), "ids follow the log");
    }

    /// An applier on a node's own file in a temp dir (kept while the first value lives), the
    /// file's path, and another connection to read it with (opened before any transaction is
    /// left open on the file).
    fn own_file_applier() -> (tempfile::TempDir, String, Applier, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("node.db").to_string_lossy().into_owned();
        let applier = Applier::start(Store::open(&url).unwrap().private(), None, "node1".into()).unwrap();
        let reader = Store::open(&url).unwrap();
        (dir, url, applier, reader)
    }

    /// Entry `index` of `term` creating a product titled `title`, with no client waiting.
    fn unwaited(index: u64, term: u64, title: &str) -> ApplyItem {
        let (mut item, _) = item(index, &create(title));
        item.term = term;
        item.entry.term = term;
        item.waiter = None;
        item
    }

    /// Waits (5 s at most) until the entry run ahead is in the state `want` tells.
    fn wait_prepared(applier: &Applier, want: fn(&Prepared) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !want(&lock(&applier.shared.prepared)) {
            assert!(Instant::now() < deadline, "the preparing thread did not get there");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The product titles another connection sees.
    fn titles_in(reader: &mut Store) -> Vec<String> {
        reader.dump().unwrap().products.into_iter().map(|p| p.title).collect()
    }

    /// Another connection holding the write lock of the file at `url` until it is dropped.
    fn write_lock(url: &str) -> diesel::SqliteConnection {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let mut other = diesel::SqliteConnection::establish(url).unwrap();
        other.batch_execute("BEGIN IMMEDIATE").unwrap();
        other
    }

    fn answer(rx: &mut oneshot::Receiver<WriteResult>) -> Option<WriteResult> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match rx.try_recv() {
                Ok(result) => return Some(result),
                Err(oneshot::error::TryRecvError::Closed) => return None,
                Err(oneshot::error::TryRecvError::Empty) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(oneshot::error::TryRecvError::Empty) => panic!("no answer in 10 s"),
            }
        }
    }

    #[test]
    fn a_write_run_ahead_is_answered_with_what_its_transaction_returned_as_soon_as_it_commits() {
        let (_dir, _, applier, mut reader) = own_file_applier();
        assert!(applier.can_prepare());
        applier.prepare(unwaited(1, 1, "ahead"));
        wait_prepared(&applier, |p| matches!(p, Prepared::Ready { index: 1, .. }));
        assert!(!applier.can_prepare(), "one entry at a time");
        assert!(titles_in(&mut reader).is_empty(), "not visible before it commits");
        assert_eq!(applier.applied(), 0);

        let (committed, mut rx) = item(1, &create("ahead"));
        applier.apply(vec![committed]);
        assert_eq!(title(rx.try_recv().expect("answered before apply() returned")), "ahead");
        assert_eq!(applier.applied_index().settled(), Ok(1));
        assert_eq!(titles_in(&mut reader), ["ahead"]);
        assert!(applier.can_prepare());
        assert_eq!(applier.run_ahead(), RunAhead { answered: 1, rolled_back: 0, pauses: 0 });
        applier.stop();
    }

    #[test]
    fn a_write_run_ahead_and_answered_is_committed_by_the_preparing_thread_without_a_reader() {
        let (_dir, _, applier, mut reader) = own_file_applier();
        for i in 1..=3 {
            let title = format!("w{i}");
            applier.prepare(unwaited(i, 1, &title));
            wait_prepared(&applier, |p| matches!(p, Prepared::Ready { .. }));
            let (committed, mut rx) = item(i, &create(&title));
            applier.apply(vec![committed]);
            assert_eq!(self::title(rx.try_recv().expect("answered before apply() returned")), title);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while applier.applied() < 3 {
            assert!(Instant::now() < deadline, "the last write was never committed");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(titles_in(&mut reader), ["w1", "w2", "w3"]);
        applier.stop();
    }

    #[test]
    fn an_answered_write_is_kept_when_the_node_stops_leading_and_the_next_entry_applies_after_it() {
        let (_dir, url, applier, _) = own_file_applier();
        applier.prepare(unwaited(1, 1, "answered"));
        wait_prepared(&applier, |p| matches!(p, Prepared::Ready { .. }));
        let (committed, mut rx) = item(1, &create("answered"));
        applier.apply(vec![committed]);
        assert_eq!(title(rx.try_recv().unwrap()), "answered");
        applier.abandon_prepared();
        let (next, mut rx) = item(2, &create("next"));
        applier.apply(vec![next]);
        assert_eq!(title(answer(&mut rx).unwrap()), "next");
        applier.stop();
        let mut reopened = Store::open(&url).unwrap();
        assert_eq!(titles_in(&mut reopened), ["answered", "next"]);
        assert_eq!(reopened.last_applied().unwrap().index, 2);
    }

    #[test]
    fn a_write_run_ahead_is_rolled_back_when_the_node_stops_leading_and_applied_once_if_it_commits_later() {
        let (_dir, _, applier, mut reader) = own_file_applier();
        applier.prepare(unwaited(1, 1, "maybe"));
        wait_prepared(&applier, |p| matches!(p, Prepared::Ready { .. }));
        applier.abandon_prepared();
        assert!(titles_in(&mut reader).is_empty());
        assert_eq!(reader.last_applied().unwrap().index, 0, "its applied index undone too");
        assert_eq!(applier.run_ahead(), RunAhead { answered: 0, rolled_back: 1, pauses: 0 });

        // The next leader commits it after all: applied the usual way, once.
        let (committed, mut rx) = item(1, &create("maybe"));
        applier.apply(vec![committed]);
        assert_eq!(title(answer(&mut rx).unwrap()), "maybe");
        assert_eq!(titles_in(&mut reader), ["maybe"]);
        applier.stop();
    }

    #[test]
    fn an_entry_run_ahead_but_replaced_by_another_leaders_is_rolled_back_for_the_committed_one() {
        let (_dir, _, applier, mut reader) = own_file_applier();
        applier.prepare(unwaited(1, 1, "lost"));
        wait_prepared(&applier, |p| matches!(p, Prepared::Ready { .. }));
        let (mut other, mut rx) = item(1, &create("kept"));
        other.term = 2;
        other.entry.term = 2;
        applier.apply(vec![other]);
        assert_eq!(title(answer(&mut rx).unwrap()), "kept");
        assert_eq!(titles_in(&mut reader), ["kept"]);
        assert_eq!(applier.run_ahead(), RunAhead { answered: 0, rolled_back: 1, pauses: 0 });
        applier.stop();
    }

    #[test]
    fn an_entry_that_commits_while_its_transaction_runs_is_answered_and_committed_by_the_preparing_thread() {
        let (_dir, url, applier, mut reader) = own_file_applier();
        // Another connection's write lock holds the transaction up while it runs.
        let other = write_lock(&url);
        applier.prepare(unwaited(1, 1, "slow"));
        wait_prepared(&applier, |p| matches!(p, Prepared::Running { .. }));
        let (committed, mut rx) = item(1, &create("slow"));
        let (after, mut rx2) = item(2, &create("after"));
        applier.apply(vec![committed, after]);
        assert!(matches!(*lock(&applier.shared.prepared), Prepared::Claimed { index: 1, .. }));
        assert!(rx.try_recv().is_err(), "not answered before its transaction ran");
        // The client waits longer than CLAIM_WAIT_LIMIT: running ahead pauses.
        std::thread::sleep(CLAIM_WAIT_LIMIT * 2);
        drop(other);
        assert_eq!(title(answer(&mut rx).unwrap()), "slow");
        assert_eq!(title(answer(&mut rx2).unwrap()), "after", "the next entry waits for it");
        assert_eq!(titles_in(&mut reader), ["slow", "after"], "in log order");
        assert!(!applier.can_prepare(), "paused after a client waited on the preparing thread");
        assert_eq!(applier.applied(), 2);
        assert_eq!(applier.run_ahead(), RunAhead { answered: 1, rolled_back: 0, pauses: 1 });
        applier.stop();
    }

    #[test]
    fn an_entry_dropped_while_its_transaction_runs_is_rolled_back_and_one_not_started_is_skipped() {
        let (_dir, url, applier, mut reader) = own_file_applier();
        let other = write_lock(&url);
        applier.prepare(unwaited(1, 1, "dropped"));
        wait_prepared(&applier, |p| matches!(p, Prepared::Running { .. }));
        applier.abandon_prepared();
        drop(other);
        wait_prepared(&applier, |p| matches!(p, Prepared::None));
        assert!(titles_in(&mut reader).is_empty(), "rolled back");

        // Not started yet (the store is busy) when its entry commits: applied the usual way.
        let store = lock(&applier.shared.store);
        applier.prepare(unwaited(1, 1, "cancelled"));
        let (committed, mut rx) = item(1, &create("cancelled"));
        applier.apply(vec![committed]);
        assert!(matches!(*lock(&applier.shared.prepared), Prepared::Cancelled));
        drop(store);
        assert_eq!(title(answer(&mut rx).unwrap()), "cancelled");
        wait_prepared(&applier, |p| matches!(p, Prepared::None));
        assert_eq!(titles_in(&mut reader), ["cancelled"], "applied once");
        applier.stop();
    }
}
