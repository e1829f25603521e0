//! An in-memory [`LogStore`] for tests and the simulator.
//!
//! "Durable" here means "survives dropping the node": a [`MemStore`] is a cheap handle
//! to shared state, so a test or the simulator can keep a clone, drop the node that
//! owns the other one (a crash), and start a new node on the same clone (a restart)
//! that loads exactly what the old node had written.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use super::plan::{plan, Bounds};
use super::{InitialState, LogStore, StorageError, WriteBatch};
use crate::core::{Entry, HardState, SnapshotMeta};

/// An in-memory log store. Clones share the same state.
///
/// It accepts, refuses and applies batches by exactly the same rules as
/// [`RedbStore`](super::RedbStore) (listed in the [`redb_store`](super::redb_store)
/// module documentation), so code tested against it behaves the same on disk.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    entries: VecDeque<Entry>,
    writes: u64,
}

impl Inner {
    fn bounds(&self) -> Bounds {
        Bounds {
            snapshot_index: self.snapshot.index,
            snapshot_term: self.snapshot.term,
            last_index: self.entries.back().map_or(self.snapshot.index, |e| e.index),
        }
    }
}

impl MemStore {
    /// An empty store, as a brand-new node finds it.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock cannot leave `Inner` half-updated
        // in a way we care about (writes mutate only after validation), so recover.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of what is currently stored, exactly what [`LogStore::load`] would return.
    pub fn state(&self) -> InitialState {
        let inner = self.lock();
        InitialState {
            hard_state: inner.hard_state,
            snapshot: inner.snapshot.clone(),
            entries: inner.entries.iter().cloned().collect(),
        }
    }

    /// How many non-empty batches have been written successfully: the number of fsyncs
    /// a disk store would have done.
    pub fn write_count(&self) -> u64 {
        self.lock().writes
    }
}

impl LogStore for MemStore {
    fn is_durable(&self) -> bool {
        false
    }

    fn load(&mut self) -> Result<InitialState, StorageError> {
        Ok(self.state())
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        let first_index = inner.snapshot.index + 1;
        let entries = &inner.entries;
        let plan = plan(inner.bounds(), batch, |index| {
            index
                .checked_sub(first_index)
                .and_then(|offset| usize::try_from(offset).ok())
                .and_then(|offset| entries.get(offset))
                .map(|e| e.term)
                .ok_or_else(|| StorageError::Io(format!("memory log has no entry at {index}")))
        })?;

        if let Some(through) = plan.purge_through {
            while inner.entries.front().is_some_and(|e| e.index <= through) {
                inner.entries.pop_front();
            }
        }
        if let Some(from) = plan.truncate_from {
            while inner.entries.back().is_some_and(|e| e.index >= from) {
                inner.entries.pop_back();
            }
        }
        inner.entries.extend(batch.entries.iter().cloned());
        if let Some(snapshot) = &batch.snapshot {
            inner.snapshot = snapshot.clone();
        }
        if let Some(hard_state) = batch.hard_state {
            inner.hard_state = hard_state;
        }
        inner.writes += 1;
        debug_assert_eq!(inner.bounds(), plan.after);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::EntryPayload;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term,
            index,
            payload: EntryPayload::Noop,
        }
    }

    #[test]
    fn clones_share_state_and_refused_batches_change_nothing() {
        let mut store = MemStore::new();
        let observer = store.clone();
        store
            .write(&WriteBatch {
                entries: vec![entry(1, 1), entry(2, 1)],
                hard_state: Some(HardState {
                    term: 1,
                    vote: Some(3),
                    commit: 1,
                }),
                ..Default::default()
            })
            .unwrap();
        let before = observer.state();
        assert_eq!(before.last_index(), 2);
        assert_eq!(before.hard_state.vote, Some(3));

        let err = store
            .write(&WriteBatch {
                entries: vec![entry(3, 1), entry(5, 1)],
                hard_state: Some(HardState::default()),
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(err, StorageError::InvalidBatch(_)), "{err}");
        assert_eq!(observer.state(), before);
        assert_eq!(observer.write_count(), 1);
    }
}
