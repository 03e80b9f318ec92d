//! The thread that writes the Raft log, so that a slow disk never holds up the Raft thread.
//!
//! The driver hands each write (a new term or vote, new or replaced entries) to this thread
//! with the number the core gave it, and goes on: it keeps receiving, a leader keeps sending
//! heartbeats, timers keep firing while a flush takes its time. Writes are done in the order
//! they were handed over; those that queue up while one is on its way are merged into one
//! record and one flush. The datagrams that must not leave before a write is on disk (a
//! vote, an acknowledgement) are handed over behind it, ready to send, and this thread sends
//! them as soon as the flush returns: a follower's acknowledgement leaves without waiting for
//! the Raft thread to be woken. Each done write is then reported back by its number (the
//! newest of a merged set), so the core may count it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc as async_mpsc;

use super::raft::{HardState, LogEntry};
use super::storage::{Base, Storage, StorageError};

/// One write, as a `Ready` asked for it.
#[derive(Debug)]
pub struct Write {
    pub persist_id: u64,
    pub hard_state: Option<HardState>,
    /// Entries from this index on replace what the log holds there.
    pub entries: Option<(u64, Vec<LogEntry>)>,
    /// The log was compacted or replaced by a snapshot: the whole file is rewritten with this
    /// base, and `entries` are then every entry after it.
    pub base: Option<Base>,
}

impl Write {
    /// Adds a later write to this one: what both together leave on disk.
    fn merge(&mut self, later: Write) {
        self.persist_id = later.persist_id;
        if later.hard_state.is_some() {
            self.hard_state = later.hard_state;
        }
        if later.base.is_some() {
            // A rewrite holds the whole log.
            self.base = later.base;
            self.entries = later.entries;
            return;
        }
        let Some((from, entries)) = later.entries else { return };
        match &mut self.entries {
            Some((first, held)) if from > *first => {
                // A later write starts at most one past the end of the earlier one.
                held.truncate((from - *first) as usize);
                held.extend(entries);
            }
            held => *held = Some((from, entries)),
        }
    }
}

/// Datagrams ready to leave: where to, and the bytes as they leave.
pub type Datagrams = Vec<(SocketAddr, Vec<u8>)>;

/// What the thread is handed, in order.
enum Work {
    Write(Write),
    /// To send once every write handed over before is on disk.
    Send(Datagrams),
}

/// The writing thread, and where its reports arrive.
pub struct LogWriter {
    to_write: Option<mpsc::Sender<Work>>,
    /// The number of each done write, in order; an error ends the reports.
    pub done: async_mpsc::UnboundedReceiver<Result<u64, StorageError>>,
    thread: Option<JoinHandle<()>>,
    timing: Arc<Timing>,
}

/// How long the disk takes: the thread's writes, timed from the call to their return (not
/// from when they were handed over, so a thread kept off a busy core does not count as a
/// slow disk).
#[derive(Debug)]
struct Timing {
    origin: Instant,
    /// When the write on its way started, in microseconds after `origin`, plus one; 0: none.
    writing_since: AtomicU64,
    /// How long the last write took, in microseconds.
    last_took: AtomicU64,
}

impl LogWriter {
    /// Starts the thread that owns `storage` and sends on `socket` (the node's, non-blocking).
    pub fn start(name: &str, mut storage: Storage, socket: UdpSocket) -> std::io::Result<LogWriter> {
        let (to_write, work) = mpsc::channel::<Work>();
        let (report, done) = async_mpsc::unbounded_channel();
        let name = name.to_string();
        let timing =
            Arc::new(Timing { origin: Instant::now(), writing_since: AtomicU64::new(0), last_took: AtomicU64::new(0) });
        let clock = timing.clone();
        let thread = std::thread::Builder::new().name(format!("{name}-log")).spawn(move || {
            let mut send_errors = super::transport::RateLimited::new(5);
            while let Ok(first) = work.recv() {
                // Everything handed over meanwhile: one write, then every datagram.
                let mut write: Option<Write> = None;
                let mut datagrams = Datagrams::new();
                for item in std::iter::once(first).chain(std::iter::from_fn(|| work.try_recv().ok())) {
                    match item {
                        Work::Write(later) => match &mut write {
                            Some(write) => write.merge(later),
                            None => write = Some(later),
                        },
                        Work::Send(more) => datagrams.extend(more),
                    }
                }
                let result = match &write {
                    Some(write) => {
                        let entries = write.entries.as_ref().map(|(from, entries)| (*from, entries.as_slice()));
                        let started = clock.origin.elapsed();
                        clock.writing_since.store(started.as_micros() as u64 + 1, Ordering::Release);
                        let result = storage
                            .store(write.hard_state, write.base.as_ref(), entries)
                            .map(|()| Some(write.persist_id));
                        let took = clock.origin.elapsed().saturating_sub(started);
                        clock.last_took.store(took.as_micros() as u64, Ordering::Release);
                        clock.writing_since.store(0, Ordering::Release);
                        result
                    }
                    None => Ok(None),
                };
                if result.is_ok() {
                    for (addr, bytes) in &datagrams {
                        if let Err(e) = socket.send_to(bytes, addr) {
                            if send_errors.allow() {
                                log::warn!("{name}: cannot send {} bytes to {addr}: {e}", bytes.len());
                            }
                        }
                    }
                }
                let failed = result.is_err();
                if let Some(result) = result.transpose() {
                    if report.send(result).is_err() || failed {
                        return;
                    }
                }
            }
        })?;
        Ok(LogWriter { to_write: Some(to_write), done, thread: Some(thread), timing })
    }

    /// Hands a write to the thread, with the datagrams to send once it is on disk; false when
    /// the thread has stopped (its error is, or will be, in `done`).
    pub fn write(&self, write: Write, then: Datagrams) -> bool {
        let Some(to_write) = &self.to_write else { return false };
        to_write.send(Work::Write(write)).is_ok() && (then.is_empty() || to_write.send(Work::Send(then)).is_ok())
    }

    /// Hands the thread datagrams to send once every write handed over so far is on disk.
    pub fn send_after(&self, datagrams: Datagrams) -> bool {
        self.to_write.as_ref().is_some_and(|w| w.send(Work::Send(datagrams)).is_ok())
    }

    /// How long the disk takes now: the write on its way so far, or the last one if that took
    /// longer.
    pub fn write_time(&self) -> Duration {
        let t = &self.timing;
        let last = Duration::from_micros(t.last_took.load(Ordering::Acquire));
        match t.writing_since.load(Ordering::Acquire) {
            0 => last,
            since => t.origin.elapsed().saturating_sub(Duration::from_micros(since - 1)).max(last),
        }
    }

    /// Lets the thread finish what it was given and waits for it; the reports stay in `done`.
    pub fn finish(&mut self) {
        self.to_write = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the log writer panicked");
            }
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(term: u64, n: u64) -> LogEntry {
        LogEntry { term, key: None, value: json!(n).into() }
    }

    #[test]
    fn merged_writes_leave_what_the_writes_in_order_would() {
        let mut first = Write {
            persist_id: 1,
            hard_state: None,
            base: None,
            entries: Some((3, vec![entry(1, 3), entry(1, 4), entry(1, 5)])),
        };
        // Appends after the end.
        first.merge(Write { persist_id: 2, hard_state: None, base: None, entries: Some((6, vec![entry(1, 6)])) });
        assert_eq!(first.entries, Some((3, vec![entry(1, 3), entry(1, 4), entry(1, 5), entry(1, 6)])));
        // Replaces from inside, with a new term.
        let vote = HardState { term: 2, voted_for: Some(3) };
        first.merge(Write {
            persist_id: 3,
            hard_state: Some(vote),
            base: None,
            entries: Some((5, vec![entry(2, 50)])),
        });
        assert_eq!(first.entries, Some((3, vec![entry(1, 3), entry(1, 4), entry(2, 50)])));
        // A term alone keeps the entries.
        let later_vote = HardState { term: 3, voted_for: None };
        first.merge(Write { persist_id: 4, hard_state: Some(later_vote), base: None, entries: None });
        assert_eq!((first.persist_id, first.hard_state), (4, Some(later_vote)));
        // Replaces from before the first write's start.
        first.merge(Write { persist_id: 5, hard_state: None, base: None, entries: Some((2, vec![entry(3, 20)])) });
        assert_eq!(first.entries, Some((2, vec![entry(3, 20)])));
        assert_eq!((first.persist_id, first.hard_state), (5, Some(later_vote)));
    }

    #[test]
    fn a_rewrite_merged_in_holds_the_whole_log_and_later_writes_add_to_it() {
        let hard = HardState { term: 3, voted_for: None };
        let mut write = Write { persist_id: 1, hard_state: None, base: None, entries: Some((5, vec![entry(3, 5)])) };
        let base = Base { index: 4, term: 3, retained: vec![] };
        let all = vec![entry(3, 5), entry(3, 6)];
        write.merge(Write { persist_id: 2, hard_state: Some(hard), base: Some(base.clone()), entries: Some((5, all)) });
        write.merge(Write { persist_id: 3, hard_state: None, base: None, entries: Some((7, vec![entry(3, 7)])) });
        assert_eq!(write.base, Some(base));
        assert_eq!(write.entries, Some((5, vec![entry(3, 5), entry(3, 6), entry(3, 7)])));
        assert_eq!((write.persist_id, write.hard_state), (3, Some(hard)));
    }

    #[test]
    fn writes_are_reported_in_order_and_reach_the_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (storage, _) = Storage::open(dir.path()).expect("open");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("socket");
        let receiver = UdpSocket::bind("127.0.0.1:0").expect("socket");
        let to = receiver.local_addr().expect("address");
        let mut writer = LogWriter::start("test", storage, socket).expect("thread");
        let hard = HardState { term: 4, voted_for: Some(1) };
        assert!(writer.write(Write { persist_id: 1, hard_state: Some(hard), base: None, entries: None }, Vec::new()));
        for n in 1..=50u64 {
            let write =
                Write { persist_id: n + 1, hard_state: None, base: None, entries: Some((n, vec![entry(4, n)])) };
            assert!(writer.write(write, vec![(to, format!("ack {n}").into_bytes())]));
        }
        assert!(writer.send_after(vec![(to, b"after all".to_vec())]));
        writer.finish();
        let mut buf = [0u8; 64];
        for n in 1..=50u64 {
            let got = receiver.recv(&mut buf).expect("a datagram");
            assert_eq!(&buf[..got], format!("ack {n}").as_bytes(), "sent in order");
        }
        let got = receiver.recv(&mut buf).expect("a datagram");
        assert_eq!(&buf[..got], b"after all");
        let mut reported = Vec::new();
        while let Ok(done) = writer.done.try_recv() {
            reported.push(done.expect("written"));
        }
        assert_eq!(reported.last(), Some(&51), "the last write is reported");
        assert!(reported.windows(2).all(|w| w[0] < w[1]), "in order: {reported:?}");
        let (_, recovered) = Storage::open(dir.path()).expect("reopen");
        assert_eq!(recovered.hard_state, hard);
        assert_eq!(recovered.entries, (1..=50).map(|n| entry(4, n)).collect::<Vec<_>>());
    }
}
