//! The in-memory Raft log: every entry after the last snapshot point, plus the
//! bookkeeping of what is committed, what is durable and what has been handed out.
//!
//! The core owns the live log; storage is the durable copy written behind it. Three
//! cursors move independently:
//!
//! * `unstable_from`: the first entry not yet handed to the driver for persistence;
//! * `persisted`: the last entry the driver reported durable;
//! * `committed` / `applied`: what a quorum holds, and what was handed out to apply.

use super::types::{Entry, Index, Term};

/// A leader asked to overwrite a committed entry: a safety violation by the sender,
/// refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommittedConflict {
    /// The committed index the sender tried to overwrite.
    pub index: Index,
}

/// The live log.
#[derive(Debug, Clone)]
pub struct RaftLog {
    snapshot_index: Index,
    snapshot_term: Term,
    entries: Vec<Entry>,
    committed: Index,
    applied: Index,
    unstable_from: Index,
    persisted: Index,
    /// Last index of the batch handed out by the latest `take_unstable`, until the
    /// driver confirms it durable.
    in_flight: Option<Index>,
}

impl RaftLog {
    /// A log that starts after `snapshot_index` with the given durable entries.
    pub fn new(snapshot_index: Index, snapshot_term: Term, entries: Vec<Entry>) -> Self {
        let last = snapshot_index + entries.len() as Index;
        RaftLog {
            snapshot_index,
            snapshot_term,
            entries,
            committed: snapshot_index,
            applied: snapshot_index,
            unstable_from: last + 1,
            persisted: last,
            in_flight: None,
        }
    }

    /// Index of the first entry held (snapshot index + 1, even if the log is empty).
    pub fn first_index(&self) -> Index {
        self.snapshot_index + 1
    }

    /// Index of the last entry (the snapshot index when there are no entries).
    pub fn last_index(&self) -> Index {
        self.snapshot_index + self.entries.len() as Index
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot_term, |e| e.term)
    }

    /// The snapshot point the log starts after.
    pub fn snapshot_point(&self) -> (Index, Term) {
        (self.snapshot_index, self.snapshot_term)
    }

    /// Term of the entry at `index`, if the log still knows it (the snapshot point's
    /// term is known; entries compacted before it are not).
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|e| e.term)
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    /// Entries in `[lo, hi]`, capped so the total payload stays under `max_bytes` and
    /// the count under `max_count` (at least one entry is always returned if any).
    pub fn slice(&self, lo: Index, hi: Index, max_count: usize, max_bytes: usize) -> &[Entry] {
        if lo > hi || lo <= self.snapshot_index || hi > self.last_index() {
            return &[];
        }
        let start = (lo - self.snapshot_index - 1) as usize;
        let end = (hi - self.snapshot_index) as usize;
        let window = &self.entries[start..end];
        let mut bytes = 0usize;
        let mut n = 0usize;
        for e in window.iter().take(max_count.max(1)) {
            bytes += e.payload_len() + 24;
            if n > 0 && bytes > max_bytes {
                break;
            }
            n += 1;
        }
        &window[..n]
    }

    /// Whether the log holds an entry at `index` with term `term` (the AppendEntries
    /// consistency check).
    pub fn matches(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Whether a candidate whose log ends at (`last_index`, `last_term`) is at least as
    /// up to date as this log (paper 5.4.1).
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// The largest index <= `index` whose term is <= `term`: where a log whose entry
    /// at `index` has term `term` can possibly agree with this one. Used on both sides
    /// of fast conflict backtracking.
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Some(t) if t > term => i -= 1,
                Some(t) => return (i, t),
                None => return (i, 0),
            }
        }
    }

    /// Append entries received from a leader after the consistency check passed (the
    /// caller has checked that they are contiguous and follow a matching entry). Entries
    /// already present with the same term are kept; the first conflicting one and
    /// everything after it are replaced. Returns the index of the first entry that was
    /// truncated, if any. Takes the entries by value so that they move into the log
    /// instead of being cloned (one payload refcount round trip per entry saved).
    pub fn append_from_leader(
        &mut self,
        mut entries: Vec<Entry>,
    ) -> Result<Option<Index>, CommittedConflict> {
        let mut skip = 0usize;
        for (i, e) in entries.iter().enumerate() {
            if e.index <= self.snapshot_index {
                skip = i + 1;
                continue;
            }
            match self.term(e.index) {
                Some(t) if t == e.term => skip = i + 1,
                _ => break,
            }
        }
        let Some(first) = entries.get(skip).map(|e| e.index) else {
            return Ok(None);
        };
        if first <= self.committed {
            return Err(CommittedConflict { index: first });
        }
        let truncated = if first <= self.last_index() {
            self.truncate_from(first);
            Some(first)
        } else {
            None
        };
        if skip > 0 {
            entries.drain(..skip);
        }
        self.entries.append(&mut entries);
        Ok(truncated)
    }

    /// Append one entry created locally (by the leader). Returns its index.
    pub fn push(&mut self, entry: Entry) -> Index {
        let idx = entry.index;
        self.entries.push(entry);
        idx
    }

    /// Remove `index` and everything after it. The cursors follow: nothing at or after
    /// `index` is durable or handed out any more.
    fn truncate_from(&mut self, index: Index) {
        let keep = (index - self.snapshot_index - 1) as usize;
        self.entries.truncate(keep);
        let last = index - 1;
        self.unstable_from = self.unstable_from.min(index);
        self.persisted = self.persisted.min(last);
        self.in_flight = self.in_flight.map(|p| p.min(last));
    }

    /// The committed index.
    pub fn committed(&self) -> Index {
        self.committed
    }

    /// Raise the committed index (never lowers it, never past the last entry).
    pub fn commit_to(&mut self, index: Index) -> bool {
        let index = index.min(self.last_index());
        if index > self.committed {
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// The highest index handed out to apply.
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// Declare entries up to `index` (clamped to what is committed and held) already
    /// applied, so they are not handed out again after a restart.
    pub fn set_applied(&mut self, index: Index) {
        self.applied = index.min(self.committed).max(self.snapshot_index);
    }

    /// Last index known durable.
    pub fn persisted(&self) -> Index {
        self.persisted
    }

    /// Whether entries are waiting to be handed out for persistence.
    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Hand out the entries not yet given to the driver for persistence.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        if !self.has_unstable() {
            return Vec::new();
        }
        let start = (self.unstable_from - self.snapshot_index - 1) as usize;
        let out = self.entries[start..].to_vec();
        self.unstable_from = self.last_index() + 1;
        self.in_flight = Some(self.last_index());
        out
    }

    /// The driver reports that everything handed out so far is durable.
    pub fn persisted_in_flight(&mut self) {
        if let Some(p) = self.in_flight.take() {
            self.persisted = self.persisted.max(p);
        }
    }

    /// Whether committed entries are waiting to be handed out to apply.
    pub fn has_committed_to_apply(&self) -> bool {
        self.committed > self.applied
    }

    /// Hand out committed entries not yet given to the application.
    pub fn take_committed(&mut self) -> Vec<Entry> {
        if self.committed <= self.applied {
            return Vec::new();
        }
        let start = (self.applied - self.snapshot_index) as usize;
        let end = (self.committed - self.snapshot_index) as usize;
        let out = self.entries[start..end].to_vec();
        self.applied = self.committed;
        out
    }

    /// Hand out committed entries not yet given to the application that are also
    /// durable on this node: up to the smaller of the commit and persisted indexes.
    pub fn take_committed_durable(&mut self) -> Vec<Entry> {
        let upto = self.committed.min(self.persisted);
        if upto <= self.applied {
            return Vec::new();
        }
        let start = (self.applied - self.snapshot_index) as usize;
        let end = (upto - self.snapshot_index) as usize;
        let out = self.entries[start..end].to_vec();
        self.applied = upto;
        out
    }

    /// Entries from `index` to the end (for scanning membership changes).
    pub fn entries_from(&self, index: Index) -> &[Entry] {
        if index > self.last_index() {
            return &[];
        }
        let start = index.saturating_sub(self.snapshot_index + 1) as usize;
        &self.entries[start..]
    }

    /// Replace the whole log with a snapshot point (the log is discarded). Used when a
    /// follower installs a snapshot.
    pub fn restore_snapshot(&mut self, index: Index, term: Term) {
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.entries.clear();
        self.committed = index;
        self.applied = index;
        self.unstable_from = index + 1;
        self.persisted = index;
        self.in_flight = None;
    }

    /// Drop entries up to and including `index` (log compaction after a snapshot).
    pub fn compact_to(&mut self, index: Index) {
        if index <= self.snapshot_index || index > self.applied.min(self.persisted) {
            return;
        }
        let Some(term) = self.term(index) else { return };
        let n = (index - self.snapshot_index) as usize;
        self.entries.drain(..n);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::EntryPayload;

    fn ent(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::Noop,
        }
    }

    fn log_of(terms: &[Term]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| ent(i as Index + 1, t))
            .collect();
        RaftLog::new(0, 0, entries)
    }

    #[test]
    fn conflicting_suffix_is_replaced_and_cursors_follow() {
        let mut log = log_of(&[1, 1, 2, 2]);
        let truncated = log
            .append_from_leader(vec![ent(3, 3), ent(4, 3), ent(5, 3)])
            .unwrap();
        assert_eq!(truncated, Some(3));
        assert_eq!(log.last_index(), 5);
        assert_eq!(log.term(3), Some(3));
        assert_eq!(log.persisted(), 2);
        assert_eq!(log.take_unstable().len(), 3);
    }

    #[test]
    fn duplicate_append_changes_nothing() {
        let mut log = log_of(&[1, 1, 2]);
        assert_eq!(log.append_from_leader(vec![ent(1, 1), ent(2, 1)]), Ok(None));
        assert_eq!(log.last_index(), 3);
        assert!(!log.has_unstable());
    }

    #[test]
    fn find_conflict_by_term_skips_whole_terms() {
        let log = log_of(&[1, 1, 4, 4, 4, 5, 5]);
        assert_eq!(log.find_conflict_by_term(7, 4), (5, 4));
        assert_eq!(log.find_conflict_by_term(7, 3), (2, 1));
        assert_eq!(log.find_conflict_by_term(100, 9), (7, 5));
    }

    #[test]
    fn slice_respects_byte_budget_but_returns_at_least_one() {
        let log = log_of(&[1, 1, 1, 1]);
        assert_eq!(log.slice(1, 4, 100, 1).len(), 1);
        assert_eq!(log.slice(1, 4, 2, usize::MAX).len(), 2);
        assert_eq!(log.slice(2, 4, 100, usize::MAX).len(), 3);
    }

    #[test]
    fn compaction_keeps_the_term_of_the_snapshot_point() {
        let mut log = log_of(&[1, 2, 3]);
        log.commit_to(3);
        log.take_committed();
        log.compact_to(2);
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term(2), Some(2));
        assert_eq!(log.term(1), None);
        assert_eq!(log.last_index(), 3);
    }
}
