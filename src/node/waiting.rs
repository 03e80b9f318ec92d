//! The HTTP API's writes and linearizable reads while they wait on the Raft core: which are
//! answered, when, and which fail.
//!
//! Pure bookkeeping, with no clock, channel or socket: the driver keeps its clients' replies
//! here (`R` is where an answer goes, `T` a deadline), and the Raft simulation runs the same
//! code with its own, so that the answers it checks for linearizability are decided as the
//! node decides them.
//!
//! A write waits for its entry to be handed to the applier: the entry the write proposed (same
//! index, same term) is answered by the applier once applied; another entry at its index means
//! a newer leader replaced it. A read waits for its leadership check, then for every entry up
//! to its read index to be handed to the applier, which runs it after them.

use std::collections::BTreeMap;

use super::raft::Role;

/// Why a waiting request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// The write's entry was replaced by a newer leader's, or the read's leadership check can
    /// no longer pass.
    LostLeadership,
    /// The node stopped leading before the write's entry committed: a newer leader may still
    /// commit it.
    SteppedDown,
    /// Not done by its deadline.
    Timeout,
}

struct Request<R, T> {
    /// The term the node led when it took the request.
    term: u64,
    reply: R,
    deadline: T,
}

/// The writes and reads a node has taken and not answered yet.
pub struct Waiting<R, T> {
    /// Writes waiting for their entries to be handed off, by index.
    writes: BTreeMap<u64, Request<R, T>>,
    /// Reads waiting for their leadership check, by id.
    reads: BTreeMap<u64, Request<R, T>>,
    next_read: u64,
    /// Reads that passed their check, waiting for their read index to be handed off, by index.
    readable: BTreeMap<u64, Vec<Request<R, T>>>,
}

impl<R, T> Default for Waiting<R, T> {
    fn default() -> Self {
        Waiting { writes: BTreeMap::new(), reads: BTreeMap::new(), next_read: 0, readable: BTreeMap::new() }
    }
}

impl<R, T: Copy + Ord> Waiting<R, T> {
    /// A write whose entry is `index`, proposed while leading `term`.
    pub fn write(&mut self, index: u64, term: u64, reply: R, deadline: T) {
        self.writes.insert(index, Request { term, reply, deadline });
    }

    /// The id of the next read, for the core's `read_index`.
    pub fn next_read_id(&mut self) -> u64 {
        self.next_read += 1;
        self.next_read
    }

    /// A read numbered `id`, taken while leading `term`, waiting for its leadership check.
    pub fn read(&mut self, id: u64, term: u64, reply: R, deadline: T) {
        self.reads.insert(id, Request { term, reply, deadline });
    }

    /// The leadership check of read `id` passed with read index `index`.
    pub fn confirmed(&mut self, id: u64, index: u64) {
        if let Some(read) = self.reads.remove(&id) {
            self.readable.entry(index).or_default().push(read);
        }
    }

    /// Whether writes, or reads past their check, wait: a follower then hands entries off
    /// at once rather than in batches.
    pub fn anyone_waits(&self) -> bool {
        !self.writes.is_empty() || !self.readable.is_empty()
    }

    /// The node is now `role` in `term`: a node that stopped leading fails its writes, and
    /// reads whose check can no longer pass (not leading, or leading a newer term) fail. Reads
    /// past their check stay: they only wait for their read index.
    pub fn role_changed(&mut self, role: Role, term: u64) -> Vec<(R, Failure)> {
        let mut failed = Vec::new();
        if role != Role::Leader {
            failed.extend(std::mem::take(&mut self.writes).into_values().map(|w| (w.reply, Failure::SteppedDown)));
        }
        let lost: Vec<u64> =
            self.reads.iter().filter(|(_, r)| role != Role::Leader || r.term != term).map(|(&id, _)| id).collect();
        for id in lost {
            if let Some(r) = self.reads.remove(&id) {
                failed.push((r.reply, Failure::LostLeadership));
            }
        }
        failed
    }

    /// Entry `index`, of `term`, is handed to the applier: the reply of the write that proposed
    /// it, for the applier to answer (`Ok`), or of the write whose entry it replaced (`Err`).
    pub fn handed_off(&mut self, index: u64, term: u64) -> Option<Result<R, (R, Failure)>> {
        let w = self.writes.remove(&index)?;
        Some(if w.term == term { Ok(w.reply) } else { Err((w.reply, Failure::LostLeadership)) })
    }

    /// The reads whose read index is handed off once entries up to `index` are: the applier
    /// runs them after those entries. In order of read index.
    pub fn readable_up_to(&mut self, index: u64) -> Vec<R> {
        let mut ready = Vec::new();
        while let Some(entry) = self.readable.first_entry() {
            if *entry.key() > index {
                break;
            }
            ready.extend(entry.remove().into_iter().map(|r| r.reply));
        }
        ready
    }

    /// The requests whose deadline is `now` or earlier.
    pub fn expire(&mut self, now: T) -> Vec<(R, Failure)> {
        let mut failed = Vec::new();
        for map in [&mut self.reads, &mut self.writes] {
            if map.values().any(|r| r.deadline <= now) {
                let expired: Vec<u64> = map.iter().filter(|(_, r)| r.deadline <= now).map(|(&k, _)| k).collect();
                for key in expired {
                    if let Some(r) = map.remove(&key) {
                        failed.push((r.reply, Failure::Timeout));
                    }
                }
            }
        }
        self.readable.retain(|_, waiting| {
            failed.extend(waiting.extract_if(.., |r| r.deadline <= now).map(|r| (r.reply, Failure::Timeout)));
            !waiting.is_empty()
        });
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_answered_by_its_own_entry_and_failed_by_another() {
        let mut w: Waiting<&str, u64> = Waiting::default();
        w.write(5, 2, "mine", 100);
        w.write(6, 2, "replaced", 100);
        assert!(w.anyone_waits());
        assert_eq!(w.handed_off(4, 2), None);
        assert_eq!(w.handed_off(5, 2), Some(Ok("mine")));
        assert_eq!(w.handed_off(6, 3), Some(Err(("replaced", Failure::LostLeadership))));
        assert!(!w.anyone_waits());
    }

    #[test]
    fn stepping_down_fails_writes_and_unchecked_reads_but_not_checked_ones() {
        let mut w: Waiting<&str, u64> = Waiting::default();
        w.write(5, 2, "write", 100);
        let (a, b) = (w.next_read_id(), w.next_read_id());
        w.read(a, 2, "checked", 100);
        w.read(b, 2, "unchecked", 100);
        w.confirmed(a, 4);
        // Leading a newer term fails the old term's unchecked reads, not its writes.
        let mut failed = w.role_changed(Role::Leader, 3);
        assert_eq!(failed, vec![("unchecked", Failure::LostLeadership)]);
        failed = w.role_changed(Role::Follower, 4);
        assert_eq!(failed, vec![("write", Failure::SteppedDown)]);
        assert_eq!(w.readable_up_to(3), Vec::<&str>::new());
        assert_eq!(w.readable_up_to(4), vec!["checked"]);
    }

    #[test]
    fn what_passes_its_deadline_times_out() {
        let mut w: Waiting<&str, u64> = Waiting::default();
        w.write(1, 1, "late write", 10);
        w.write(2, 1, "write", 30);
        let (a, b) = (w.next_read_id(), w.next_read_id());
        w.read(a, 1, "late read", 10);
        w.read(b, 1, "late checked read", 10);
        w.confirmed(b, 1);
        let mut failed = w.expire(10);
        failed.sort();
        let late = ["late checked read", "late read", "late write"];
        assert_eq!(failed, late.map(|r| (r, Failure::Timeout)).to_vec());
        assert!(w.expire(20).is_empty());
        assert_eq!(w.handed_off(2, 1), Some(Ok("write")));
    }
}
