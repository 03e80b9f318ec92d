//! The in-memory replicated log. Index 1 is the first entry; index 0 is the empty prefix
//! whose term is 0.

use crate::proto::LogEntry;

/// The log, with each entry's encoded size cached for batching.
#[derive(Debug, Clone, Default)]
pub struct Log {
    entries: Vec<LogEntry>,
    sizes: Vec<usize>,
}

/// Encoded size of an entry on the wire.
pub fn encoded_size(entry: &LogEntry) -> usize {
    serde_json::to_vec(entry).map(|v| v.len()).unwrap_or(usize::MAX / 2)
}

impl Log {
    pub fn from_entries(entries: Vec<LogEntry>) -> Log {
        let sizes = entries.iter().map(encoded_size).collect();
        Log { entries, sizes }
    }

    /// Index of the last entry (0 when empty).
    pub fn last_index(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Term of the last entry (0 when empty).
    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.term)
    }

    /// Term of the entry at `index`; 0 for index 0; None past the end.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == 0 {
            return Some(0);
        }
        self.entries.get(index as usize - 1).map(|e| e.term)
    }

    pub fn get(&self, index: u64) -> Option<&LogEntry> {
        if index == 0 {
            return None;
        }
        self.entries.get(index as usize - 1)
    }

    /// Entries `from..=to` (clamped to the log).
    pub fn slice(&self, from: u64, to: u64) -> &[LogEntry] {
        let from = from.max(1);
        let to = to.min(self.last_index());
        if from > to {
            return &[];
        }
        &self.entries[from as usize - 1..to as usize]
    }

    /// All entries.
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
        self.entries.push(entry);
        self.last_index()
    }

    /// Removes the entries at `index` and after.
    pub fn truncate_from(&mut self, index: u64) {
        let keep = index.saturating_sub(1) as usize;
        self.entries.truncate(keep);
        self.sizes.truncate(keep);
    }

    /// The last index of a run starting at `from` whose encoded entries fit in `budget` bytes,
    /// and their size. The run has at least one entry, so an entry larger than `budget` goes
    /// alone.
    pub fn batch(&self, from: u64, budget: usize) -> (u64, usize) {
        let mut used = 0usize;
        let mut end = from.saturating_sub(1);
        for idx in from..=self.last_index() {
            let size = self.sizes[idx as usize - 1] + 1;
            if idx > from && used + size > budget {
                break;
            }
            used += size;
            end = idx;
        }
        (end, used)
    }

    /// The first index of the run of entries with `term` that contains `index`.
    pub fn first_index_of_term_at(&self, index: u64) -> u64 {
        let Some(term) = self.term(index) else { return index };
        let mut i = index;
        while i > 1 && self.term(i - 1) == Some(term) {
            i -= 1;
        }
        i
    }

    /// The last index holding an entry of `term`, if any.
    pub fn last_index_of_term(&self, term: u64) -> Option<u64> {
        // Terms never decrease along the log, so search from the end.
        self.entries.iter().rposition(|e| e.term == term).map(|p| p as u64 + 1)
    }
}
