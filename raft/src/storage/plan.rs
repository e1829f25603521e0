//! The write-batch rules every log store shares: what a batch may contain and which
//! stored entries it deletes. Both [`super::MemStore`] and [`super::RedbStore`] plan a
//! batch here before touching anything, so they accept, refuse and delete exactly alike.

use super::{StorageError, WriteBatch};
use crate::core::{Index, Term};

/// Where the stored log starts and ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// The index of the stored snapshot point (0 for none).
    pub snapshot_index: Index,
    /// The term of the stored snapshot point.
    pub snapshot_term: Term,
    /// The index of the last stored entry, or `snapshot_index` when there is none.
    pub last_index: Index,
}

/// The deletions a valid batch performs before its entries are inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Delete every stored entry with an index at or below this one.
    pub purge_through: Option<Index>,
    /// Delete every stored entry with an index at or above this one.
    pub truncate_from: Option<Index>,
    /// The bounds once the batch is applied.
    pub after: Bounds,
}

fn invalid(reason: String) -> StorageError {
    StorageError::InvalidBatch(reason)
}

/// Checks `batch` against the stored log described by `before` and works out what it
/// deletes. `term_at(i)` must return the term of the stored entry at index `i`; it is
/// called at most once, and only for `before.snapshot_index < i <= before.last_index`.
///
/// The rules:
/// * A snapshot may not be older than the stored one; at the same index it must carry
///   the same term (it then only replaces the metadata).
/// * A newer snapshot deletes every entry up to its index. If a stored entry sits at the
///   snapshot's index with a different term, the entries after it belong to a log the
///   snapshot contradicts and are deleted as well (Raft paper, section 7); if the stored
///   entry there has the snapshot's term, the entries after it are kept.
/// * Entries must be contiguous, start after the (new) snapshot point and leave no gap
///   after the stored log. Stored entries at or after the first of them are deleted.
pub(crate) fn plan(
    before: Bounds,
    batch: &WriteBatch,
    term_at: impl FnOnce(Index) -> Result<Term, StorageError>,
) -> Result<Plan, StorageError> {
    let mut after = before;
    let mut purge_through = None;
    let mut truncate_from = None;

    if let Some(snap) = &batch.snapshot {
        if snap.index < before.snapshot_index {
            return Err(invalid(format!(
                "snapshot at index {} is older than the stored snapshot at index {}",
                snap.index, before.snapshot_index
            )));
        }
        if snap.index == before.snapshot_index {
            if snap.term != before.snapshot_term {
                return Err(invalid(format!(
                    "snapshot at index {} has term {} but the stored snapshot there has term {}",
                    snap.index, snap.term, before.snapshot_term
                )));
            }
        } else {
            purge_through = Some(snap.index);
            if snap.index < before.last_index {
                if term_at(snap.index)? != snap.term {
                    truncate_from = Some(snap.index + 1);
                    after.last_index = snap.index;
                }
            } else {
                after.last_index = snap.index;
            }
            after.snapshot_index = snap.index;
            after.snapshot_term = snap.term;
        }
    }

    if let (Some(first), Some(last)) = (batch.entries.first(), batch.entries.last()) {
        if first.index <= after.snapshot_index {
            return Err(invalid(format!(
                "entries start at index {} but the log starts after the snapshot at index {}",
                first.index, after.snapshot_index
            )));
        }
        // first.index >= 1 here, so the subtraction cannot underflow.
        if first.index - 1 > after.last_index {
            return Err(invalid(format!(
                "entries start at index {} which leaves a gap after the last stored index {}",
                first.index, after.last_index
            )));
        }
        if let Some(pair) = batch
            .entries
            .windows(2)
            .find(|pair| pair[0].index.checked_add(1) != Some(pair[1].index))
        {
            return Err(invalid(format!(
                "entries are not contiguous: index {} follows index {}",
                pair[1].index, pair[0].index
            )));
        }
        if first.index <= after.last_index {
            truncate_from = Some(truncate_from.map_or(first.index, |t: Index| t.min(first.index)));
        }
        after.last_index = last.index;
    }

    Ok(Plan {
        purge_through,
        truncate_from,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Entry, EntryPayload, SnapshotMeta};

    fn entries(range: std::ops::RangeInclusive<Index>, term: Term) -> Vec<Entry> {
        range
            .map(|index| Entry {
                term,
                index,
                payload: EntryPayload::Noop,
            })
            .collect()
    }

    fn snap(index: Index, term: Term) -> Option<SnapshotMeta> {
        Some(SnapshotMeta {
            index,
            term,
            ..Default::default()
        })
    }

    const TEN: Bounds = Bounds {
        snapshot_index: 0,
        snapshot_term: 0,
        last_index: 10,
    };

    fn no_lookup(_: Index) -> Result<Term, StorageError> {
        panic!("term_at must not be called")
    }

    #[test]
    fn conflicting_entries_truncate_the_suffix() {
        let batch = WriteBatch {
            entries: entries(6..=8, 2),
            ..Default::default()
        };
        let p = plan(TEN, &batch, no_lookup).unwrap();
        assert_eq!(p.purge_through, None);
        assert_eq!(p.truncate_from, Some(6));
        assert_eq!(p.after.last_index, 8);
    }

    #[test]
    fn appending_deletes_nothing() {
        let batch = WriteBatch {
            entries: entries(11..=12, 1),
            ..Default::default()
        };
        let p = plan(TEN, &batch, no_lookup).unwrap();
        assert_eq!((p.purge_through, p.truncate_from), (None, None));
        assert_eq!(p.after.last_index, 12);
    }

    #[test]
    fn gaps_and_holes_are_refused() {
        for bad in [
            entries(12..=13, 1),
            [entries(4..=4, 1), entries(6..=6, 1)].concat(),
            [entries(4..=4, 1), entries(4..=4, 1)].concat(),
            [entries(11..=11, 1), entries(10..=10, 1)].concat(),
        ] {
            let batch = WriteBatch {
                entries: bad,
                ..Default::default()
            };
            assert!(matches!(
                plan(TEN, &batch, no_lookup),
                Err(StorageError::InvalidBatch(_))
            ));
        }
    }

    #[test]
    fn entries_at_or_below_the_snapshot_are_refused() {
        let batch = WriteBatch {
            snapshot: snap(5, 1),
            entries: entries(5..=7, 1),
            ..Default::default()
        };
        assert!(matches!(
            plan(TEN, &batch, |_| Ok(1)),
            Err(StorageError::InvalidBatch(_))
        ));
    }

    #[test]
    fn matching_snapshot_keeps_the_suffix() {
        let batch = WriteBatch {
            snapshot: snap(5, 1),
            ..Default::default()
        };
        let p = plan(TEN, &batch, |i| {
            assert_eq!(i, 5);
            Ok(1)
        })
        .unwrap();
        assert_eq!((p.purge_through, p.truncate_from), (Some(5), None));
        assert_eq!(
            p.after,
            Bounds {
                snapshot_index: 5,
                snapshot_term: 1,
                last_index: 10
            }
        );
    }

    #[test]
    fn conflicting_snapshot_discards_the_whole_log() {
        let batch = WriteBatch {
            snapshot: snap(5, 3),
            ..Default::default()
        };
        let p = plan(TEN, &batch, |_| Ok(1)).unwrap();
        assert_eq!((p.purge_through, p.truncate_from), (Some(5), Some(6)));
        assert_eq!(p.after.last_index, 5);
    }

    #[test]
    fn snapshot_beyond_the_log_empties_it() {
        let batch = WriteBatch {
            snapshot: snap(20, 4),
            entries: entries(21..=22, 4),
            ..Default::default()
        };
        let p = plan(TEN, &batch, no_lookup).unwrap();
        assert_eq!((p.purge_through, p.truncate_from), (Some(20), None));
        assert_eq!(p.after.last_index, 22);
    }

    #[test]
    fn older_or_different_snapshot_is_refused() {
        let before = Bounds {
            snapshot_index: 5,
            snapshot_term: 2,
            last_index: 10,
        };
        for s in [snap(4, 2), snap(5, 3)] {
            let batch = WriteBatch {
                snapshot: s,
                ..Default::default()
            };
            assert!(matches!(
                plan(before, &batch, no_lookup),
                Err(StorageError::InvalidBatch(_))
            ));
        }
        let same = WriteBatch {
            snapshot: snap(5, 2),
            ..Default::default()
        };
        let p = plan(before, &same, no_lookup).unwrap();
        assert_eq!((p.purge_through, p.truncate_from, p.after), (None, None, before));
    }
}
