//! The in-memory replicated log. Index 1 is the first entry ever; index 0 is the empty prefix
//! whose term is 0.
//!
//! The log may start after a *base*: the index and term of the last entry that compaction
//! removed (or of the snapshot a follower installed). Everything up to the base is committed
//! and held by the state machine; the log keeps only the entries after it, and knows the
//! base's term so that an AppendEntries anchored there can be checked. Indexes before the base
//! have no term here any more.

use crate::proto::LogEntry;

/// The log, with each entry's encoded size cached for batching.
#[derive(Debug, Clone, Default)]
pub struct Log {
    /// The index of the last entry compacted away (0: none ever was), and its term.
    base_index: u64,
    base_term: u64,
    entries: Vec<LogEntry>,
    sizes: Vec<usize>,
    /// The sum of `sizes`.
    bytes: usize,
}

/// Encoded size of an entry on the wire.
pub fn encoded_size(entry: &LogEntry) -> usize {
    serde_json::to_vec(entry).map(|v| v.len()).unwrap_or(usize::MAX / 2)
}

impl Log {
    pub fn from_entries(entries: Vec<LogEntry>) -> Log {
        Log::after(0, 0, entries)
    }

    /// A log whose entries follow the base `(base_index, base_term)`.
    pub fn after(base_index: u64, base_term: u64, entries: Vec<LogEntry>) -> Log {
        let sizes: Vec<usize> = entries.iter().map(encoded_size).collect();
        let bytes = sizes.iter().sum();
        Log { base_index, base_term, entries, sizes, bytes }
    }

    /// The index and term of the last entry compacted away: `(0, 0)` when none was.
    pub fn base(&self) -> (u64, u64) {
        (self.base_index, self.base_term)
    }

    /// The index of the first entry held (one past the last when none is).
    pub fn first_index(&self) -> u64 {
        self.base_index + 1
    }

    /// Index of the last entry (the base when none is held).
    pub fn last_index(&self) -> u64 {
        self.base_index + self.entries.len() as u64
    }

    /// Term of the last entry (the base's when none is held).
    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.base_term, |e| e.term)
    }

    /// Term of the entry at `index`: the base's at the base, None before it (compacted) and
    /// past the end.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.base_index {
            return Some(self.base_term);
        }
        self.position(index).map(|i| self.entries[i].term)
    }

    /// Where the entry at `index` is in `entries`, if held.
    fn position(&self, index: u64) -> Option<usize> {
        let i = index.checked_sub(self.base_index + 1)?;
        (i < self.entries.len() as u64).then_some(i as usize)
    }

    pub fn get(&self, index: u64) -> Option<&LogEntry> {
        self.position(index).map(|i| &self.entries[i])
    }

    /// Entries `from..=to`, clamped to those held.
    pub fn slice(&self, from: u64, to: u64) -> &[LogEntry] {
        let from = from.max(self.first_index());
        let to = to.min(self.last_index());
        if from > to {
            return &[];
        }
        let start = (from - self.first_index()) as usize;
        &self.entries[start..start + (to - from + 1) as usize]
    }

    /// The encoded size of the entries held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The entries held, from [`Log::first_index`] on.
    pub fn entries(&self) -> &[LogEntry] {
        &self.entries
    }

    pub fn append(&mut self, entry: LogEntry) -> u64 {
        let size = encoded_size(&entry);
        self.append_sized(entry, size)
    }

    /// Appends an entry whose [`encoded_size`] the caller has just computed.
    pub fn append_sized(&mut self, entry: LogEntry, size: usize) -> u64 {
        self.sizes.push(size);
        self.bytes += size;
        self.entries.push(entry);
        self.last_index()
    }

    /// Removes the entries at `index` and after (never the base or what is before it).
    pub fn truncate_from(&mut self, index: u64) {
        let keep = (index.max(self.first_index()) - self.first_index()) as usize;
        self.bytes -= self.sizes.get(keep..).map_or(0, |cut| cut.iter().sum());
        self.entries.truncate(keep);
        self.sizes.truncate(keep);
    }

    /// Drops the entries up to `index`, which becomes the base; false (and nothing changes)
    /// unless `index` is held.
    pub fn compact(&mut self, index: u64) -> bool {
        let Some(term) = self.get(index).map(|e| e.term) else { return false };
        let n = (index - self.base_index) as usize;
        self.entries.drain(..n);
        self.bytes -= self.sizes.drain(..n).sum::<usize>();
        // What a long log left allocated goes back once the tail is much shorter.
        if self.entries.capacity() > 4 * self.entries.len() + 1024 {
            self.entries.shrink_to(2 * self.entries.len());
            self.sizes.shrink_to(2 * self.sizes.len());
        }
        self.base_index = index;
        self.base_term = term;
        true
    }

    /// Drops every entry: the log starts after `(index, term)`, a snapshot's.
    pub fn reset(&mut self, index: u64, term: u64) {
        self.entries = Vec::new();
        self.sizes = Vec::new();
        self.bytes = 0;
        self.base_index = index;
        self.base_term = term;
    }

    /// The last index of a run starting at `from` whose encoded entries fit in `budget` bytes,
    /// and their size. The run has at least one entry, so an entry larger than `budget` goes
    /// alone. `from` must be held.
    pub fn batch(&self, from: u64, budget: usize) -> (u64, usize) {
        let mut used = 0usize;
        let mut end = from.saturating_sub(1);
        let Some(start) = self.position(from) else { return (end, 0) };
        for (offset, &size) in self.sizes[start..].iter().enumerate() {
            let size = size + 1;
            if offset > 0 && used + size > budget {
                break;
            }
            used += size;
            end = from + offset as u64;
        }
        (end, used)
    }

    /// The first index of the run of entries with `term` that contains `index` (not before
    /// the first entry held).
    pub fn first_index_of_term_at(&self, index: u64) -> u64 {
        let Some(term) = self.term(index) else { return index };
        let mut i = index;
        while i > self.first_index() && self.term(i - 1) == Some(term) {
            i -= 1;
        }
        i
    }

    /// The last index holding an entry of `term`, if any (the base counts).
    pub fn last_index_of_term(&self, term: u64) -> Option<u64> {
        // Terms never decrease along the log, so search from the end.
        match self.entries.iter().rposition(|e| e.term == term) {
            Some(p) => Some(self.base_index + p as u64 + 1),
            None => (self.base_index > 0 && self.base_term == term).then_some(self.base_index),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(term: u64, text: &str) -> LogEntry {
        LogEntry { term, key: None, value: serde_json::json!(text).into() }
    }

    fn log(terms: &[u64]) -> Log {
        Log::from_entries(terms.iter().map(|&t| entry(t, "x")).collect())
    }

    #[test]
    fn a_compacted_log_keeps_its_indexes_and_knows_the_base_term_only() {
        let mut l = log(&[1, 1, 2, 2, 3]);
        assert!(l.compact(3));
        assert_eq!(l.base(), (3, 2));
        assert_eq!((l.first_index(), l.last_index(), l.last_term()), (4, 5, 3));
        assert_eq!([l.term(2), l.term(3), l.term(4), l.term(5), l.term(6)], [None, Some(2), Some(2), Some(3), None]);
        assert!(l.get(3).is_none());
        assert_eq!(l.get(4).map(|e| e.term), Some(2));
        assert_eq!(l.slice(1, 9).len(), 2);
        assert_eq!(l.slice(5, 5)[0].term, 3);
        assert_eq!(l.batch(4, 1 << 20), (5, l.sizes.iter().map(|s| s + 1).sum()));
        assert_eq!(l.first_index_of_term_at(5), 5);
        assert_eq!(l.first_index_of_term_at(4), 4, "not before the first entry held");
        assert_eq!(l.last_index_of_term(2), Some(4));
        assert_eq!(l.last_index_of_term(1), None);
        assert!(!l.compact(3) && !l.compact(6), "only held entries can become the base");
        assert!(l.compact(5));
        assert_eq!((l.base(), l.last_index(), l.last_term(), l.last_index_of_term(3)), ((5, 3), 5, 3, Some(5)));
        assert_eq!(l.append(entry(4, "y")), 6);
        l.truncate_from(2);
        assert_eq!((l.last_index(), l.base()), (5, (5, 3)), "truncation never reaches the base");
    }

    #[test]
    fn a_reset_log_starts_after_the_snapshot() {
        let mut l = log(&[1, 1, 2]);
        l.reset(10, 4);
        assert_eq!((l.first_index(), l.last_index(), l.last_term(), l.term(10), l.term(3)), (11, 10, 4, Some(4), None));
        assert!(l.slice(1, 10).is_empty());
        assert_eq!(l.append(entry(5, "z")), 11);
    }
}
