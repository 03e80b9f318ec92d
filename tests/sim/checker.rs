//! Raft's safety properties (Figure 3 of the paper), checked over the whole history of a run.
//!
//! Logs are compared through *prefix hashes*: the hash at index `i` covers every entry up to
//! `i`, so two logs agree up to `i` exactly when their hashes at `i` are equal. That turns each
//! property into a constant-time check per new entry instead of a scan of every pair of logs.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use labctl::node::raft::{HardState, LogEntry, NodeId, Role};

/// The hash of a log prefix ending with `entry`, given the hash of the prefix before it.
pub fn chain(prev: u64, entry: &LogEntry) -> u64 {
    let mut h = DefaultHasher::new();
    prev.hash(&mut h);
    entry.term.hash(&mut h);
    entry.key.hash(&mut h);
    entry.value.to_string().hash(&mut h);
    h.finish()
}

/// What the run has established so far; every method checks one new observation against it.
#[derive(Default)]
pub struct Checker {
    /// Election safety: the leader of each term.
    leaders: BTreeMap<u64, NodeId>,
    /// Log matching: every (index, term) any node ever stored, with the hash of the log up
    /// to it and the node that stored it first.
    stored: HashMap<(u64, u64), (u64, NodeId)>,
    /// Entries known committed, `1..=len`, with prefix hashes.
    committed: Vec<(LogEntry, u64)>,
    /// For leader completeness: the highest index known committed in each term.
    committed_by_term: BTreeMap<u64, u64>,
    /// State machine safety: the entry each index was applied with.
    applied: Vec<LogEntry>,
}

impl Checker {
    /// Terms never go back, and a node votes at most once per term, even across crashes.
    pub fn hard_state(&self, id: NodeId, old: HardState, new: HardState) -> Result<(), String> {
        if new.term < old.term {
            return Err(format!("node{id} persisted term {} after term {}", new.term, old.term));
        }
        if new.term == old.term && old.voted_for.is_some() && new.voted_for != old.voted_for {
            return Err(format!(
                "node{id} voted for {:?} and then for {:?} in term {}",
                old.voted_for, new.voted_for, new.term
            ));
        }
        Ok(())
    }

    /// Election safety: at most one leader per term.
    pub fn role(&mut self, id: NodeId, role: Role, term: u64) -> Result<(), String> {
        if role != Role::Leader {
            return Ok(());
        }
        let leader = *self.leaders.entry(term).or_insert(id);
        if leader != id {
            return Err(format!("election safety: node{leader} and node{id} both lead term {term}"));
        }
        Ok(())
    }

    /// Leaders elected so far, by term.
    pub fn leaders(&self) -> &BTreeMap<u64, NodeId> {
        &self.leaders
    }

    /// Log matching: `log[from..]` was just stored by `id`. Any other log that ever held one
    /// of these (index, term) pairs must have held the same entries up to there.
    pub fn stored(&mut self, id: NodeId, log: &[LogEntry], prefix: &[u64], from: u64) -> Result<(), String> {
        for i in from..=log.len() as u64 {
            let entry = &log[i as usize - 1];
            if i > 1 && entry.term < log[i as usize - 2].term {
                return Err(format!(
                    "node{id}'s log goes back from term {} to {} at index {i}",
                    log[i as usize - 2].term,
                    entry.term
                ));
            }
            match self.stored.entry((i, entry.term)) {
                Entry::Vacant(v) => {
                    v.insert((prefix[i as usize - 1], id));
                }
                Entry::Occupied(o) => {
                    let (hash, first) = *o.get();
                    if hash != prefix[i as usize - 1] {
                        return Err(format!(
                            "log matching: node{id} and node{first} both stored index {i} of term {} \
                             but their logs differ up to there",
                            entry.term
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// `id`, in `term`, learned that its log is committed up to `new` (it knew `old` before).
    /// No two nodes may ever commit different entries at one index.
    pub fn committed(
        &mut self,
        id: NodeId,
        term: u64,
        old: u64,
        new: u64,
        log: &[LogEntry],
        prefix: &[u64],
    ) -> Result<(), String> {
        let known = self.committed.len() as u64;
        let overlap = new.min(known);
        if overlap > old && prefix[overlap as usize - 1] != self.committed[overlap as usize - 1].1 {
            let at = (old + 1..=overlap)
                .find(|&i| prefix[i as usize - 1] != self.committed[i as usize - 1].1)
                .unwrap_or(overlap);
            return Err(format!(
                "state machine safety: node{id} commits {:?} at index {at}, where {:?} was committed",
                log[at as usize - 1],
                self.committed[at as usize - 1].0
            ));
        }
        for i in known + 1..=new {
            self.committed.push((log[i as usize - 1].clone(), prefix[i as usize - 1]));
        }
        let best = self.committed_by_term.entry(term).or_insert(0);
        *best = (*best).max(new);
        Ok(())
    }

    /// Leader completeness: the leader of `term`, whose log ends at `last` and whose hash
    /// chain up to an index `hash_at` gives, holds every entry committed in a term up to
    /// `term`.
    pub fn leader_complete(
        &self,
        id: NodeId,
        term: u64,
        last: u64,
        hash_at: impl Fn(u64) -> Option<u64>,
    ) -> Result<(), String> {
        let Some(must_hold) = self.committed_by_term.range(..=term).map(|(_, &i)| i).max() else {
            return Ok(());
        };
        if must_hold == 0 {
            return Ok(());
        }
        let committed = self.committed[must_hold as usize - 1].1;
        if hash_at(must_hold) != Some(committed) {
            return Err(format!(
                "leader completeness: node{id} leads term {term} without the entries committed up to \
                 index {must_hold} (its log ends at {last})"
            ));
        }
        Ok(())
    }

    /// State machine safety: `id` applies `entry` at `index`.
    pub fn applied(&mut self, id: NodeId, index: u64, entry: &LogEntry) -> Result<(), String> {
        let known = self.applied.len() as u64;
        if index <= known {
            let first = &self.applied[index as usize - 1];
            if first != entry {
                return Err(format!(
                    "state machine safety: node{id} applies {entry:?} at index {index}, where {first:?} was applied"
                ));
            }
        } else if index == known + 1 {
            self.applied.push(entry.clone());
        } else {
            return Err(format!("node{id} applies index {index} before index {}", known + 1));
        }
        Ok(())
    }

    /// How many entries are known committed.
    pub fn committed_len(&self) -> u64 {
        self.committed.len() as u64
    }

    /// The entries known committed up to `to`, and the hash of the log up to `to` (0 for 0).
    pub fn committed_prefix(&self, to: u64) -> (Vec<LogEntry>, u64) {
        let to = (to as usize).min(self.committed.len());
        let hash = if to == 0 { 0 } else { self.committed[to - 1].1 };
        (self.committed[..to].iter().map(|(e, _)| e.clone()).collect(), hash)
    }

    /// The hash of the log up to `index`, if it is known committed.
    pub fn committed_hash(&self, index: u64) -> Option<u64> {
        match index {
            0 => Some(0),
            i => self.committed.get(i as usize - 1).map(|(_, h)| *h),
        }
    }
}
