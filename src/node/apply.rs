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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::raft::LogEntry;
use super::store::own_file::OwnFile;
use super::store::{ApplyOutcome, Command, Store};

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
    /// Too large for one log entry.
    TooLarge(String),
    /// Not committed in time (e.g. the leader lost its majority).
    Timeout,
}

/// One committed entry on its way to the database.
pub struct ApplyItem {
    pub index: u64,
    pub term: u64,
    pub entry: LogEntry,
    pub waiter: Option<oneshot::Sender<WriteResult>>,
}

/// What the applier is given, in order.
enum Work {
    Entry(ApplyItem),
    /// A read to let go once everything before it is applied.
    Read(oneshot::Sender<WriteResult>),
}

/// The applied index of a node, shared with its HTTP handlers.
#[derive(Clone)]
pub struct AppliedIndex(Arc<AtomicU64>);

impl AppliedIndex {
    /// Everything up to this index is in the database; a read that starts now sees at least that.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// The handle the driver keeps.
pub struct Applier {
    tx: mpsc::Sender<Work>,
    applied: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Entries applied in one transaction at most.
const MAX_BATCH: usize = 512;
const RETRY: Duration = Duration::from_secs(1);

impl Applier {
    /// Starts the applier thread on `store` (its write connection); `own` is the node's own
    /// file when `store` writes it without flushes, to be flushed and marked clean on stop.
    pub fn start(store: Store, own: Option<OwnFile>, name: String) -> std::io::Result<Applier> {
        let (tx, rx) = mpsc::channel();
        let applied = Arc::new(AtomicU64::new(0));
        let published = applied.clone();
        let thread =
            std::thread::Builder::new().name("apply".into()).spawn(move || run(store, own, rx, published, name))?;
        Ok(Applier { tx, applied, thread: Some(thread) })
    }

    /// Queues a committed entry.
    pub fn push(&self, item: ApplyItem) {
        if let Err(mpsc::SendError(Work::Entry(item))) = self.tx.send(Work::Entry(item)) {
            log::error!("applier has stopped; entry {} is not applied", item.index);
        }
    }

    /// Answers `reply` with [`WriteResult::Readable`] once every entry queued so far is applied.
    pub fn push_read(&self, reply: oneshot::Sender<WriteResult>) {
        // A stopped applier drops the reply, which the waiting request reports.
        let _ = self.tx.send(Work::Read(reply));
    }

    /// The highest index applied to the database by this node.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// The applied index as it moves, for readers on other threads: it is stored after the
    /// transaction that applied it has committed.
    pub fn applied_index(&self) -> AppliedIndex {
        AppliedIndex(self.applied.clone())
    }

    /// Lets the applier finish what is queued, then stops it.
    pub fn stop(mut self) {
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut store: Store, own: Option<OwnFile>, rx: mpsc::Receiver<Work>, applied: Arc<AtomicU64>, name: String) {
    match store.last_applied() {
        Ok(a) => applied.store(a.index, Ordering::Release),
        Err(e) => log::error!("{name}: cannot read the applied index: {e}"),
    }
    while let Ok(first) = rx.recv() {
        let (mut batch, mut reads) = (Vec::new(), Vec::new());
        let mut work = Some(first);
        while let Some(w) = work.take() {
            match w {
                Work::Entry(item) => batch.push(item),
                Work::Read(reply) => reads.push(reply),
            }
            if batch.len() < MAX_BATCH {
                work = rx.try_recv().ok();
            }
        }
        // Reads queued behind these entries go once they are applied (or at once if none).
        while !batch.is_empty() {
            match apply_batch(&mut store, &mut batch, &applied) {
                Ok(()) => break,
                Err(e) => {
                    log::error!("{name}: cannot apply entries {}…: {e}; trying again", batch[0].index);
                    std::thread::sleep(RETRY);
                }
            }
        }
        for reply in reads {
            let _ = reply.send(WriteResult::Readable);
        }
    }
    if let Some(own) = own {
        // Left unflushed, the file is still used after a restart of the node, but rebuilt after
        // a restart of the machine.
        match store.flush_to_disk().map_err(|e| e.to_string()).and_then(|()| own.close().map_err(|e| e.to_string())) {
            Ok(()) => log::info!("{name}: database flushed to disk"),
            Err(e) => log::warn!("{name}: cannot flush the database on stop ({e}); a reboot will rebuild it"),
        }
    }
}

/// Applies `batch` (consecutive entries); answers the waiters only once it is all durable and
/// `applied` shows it, so that a client's next read on this node sees its write.
fn apply_batch(
    store: &mut Store,
    batch: &mut [ApplyItem],
    applied: &AtomicU64,
) -> Result<(), super::store::StoreError> {
    let mut outcomes: Vec<Option<ApplyOutcome>> = Vec::with_capacity(batch.len());
    let mut run: Vec<(u64, u64, Command)> = Vec::new();
    let mut run_start = 0;
    for (i, item) in batch.iter().enumerate() {
        let command = (item.entry.key.as_deref() == Some(COMMAND_KEY))
            .then(|| serde_json::from_str::<Command>(item.entry.value.get()))
            .and_then(|parsed| match parsed {
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
    // Looked up before any waiter is answered, so that an error retries the batch whole.
    for (item, outcome) in batch.iter().zip(outcomes.iter_mut()) {
        if item.waiter.is_some() && *outcome == Some(ApplyOutcome::AlreadyApplied) {
            if let Some(recorded) = store.outcome_of(item.index)? {
                *outcome = Some(recorded);
            }
        }
    }
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
    use crate::node::store::{Op, ProductInput, Reply};
    use crate::proto::EntryValue;

    fn create(title: &str) -> Command {
        let product = ProductInput {
            title: title.into(),
            price: 2.5,
            currency: "GBP".into(),
            converted_price: None,
            converted_currency: None,
            availability: None,
            rating: None,
            link: None,
            scraped_at: None,
        };
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
}
