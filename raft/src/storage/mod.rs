//! Durable storage for the Raft log and hard state, and the snapshot files
//! ([`snapshot`]) that let the log be compacted.
//!
//! The core keeps the live log in memory; storage is the durable copy the driver writes
//! behind it and reads back at startup. Every method is blocking: the driver calls
//! them from a dedicated thread, never from an async worker.

use std::path::PathBuf;

use crate::core::{Entry, HardState, Index, SnapshotMeta};

pub mod memory;
mod plan;
pub mod redb_store;
pub mod snapshot;

pub use memory::MemStore;
pub use redb_store::RedbStore;
pub use snapshot::{SnapshotError, SnapshotInfo, SnapshotStore};

/// What a node finds on disk when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    /// The last durable hard state (all zero for a brand-new node).
    pub hard_state: HardState,
    /// The latest snapshot (or bootstrap) point: the log starts right after
    /// `snapshot.index`, and `snapshot.membership` is the configuration in force there.
    pub snapshot: SnapshotMeta,
    /// Every durable entry after `snapshot.index`, contiguous and in order.
    pub entries: Vec<Entry>,
}

impl InitialState {
    /// The index of the last durable entry, or the snapshot index when there is none.
    pub fn last_index(&self) -> Index {
        self.entries.last().map_or(self.snapshot.index, |e| e.index)
    }
}

/// One atomic, durable unit of work: everything in it is on disk when `write`
/// returns, or none of it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// A new hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// Contiguous entries to store. Any stored entry at an index >= the first of these
    /// is a conflicting suffix and is deleted first.
    pub entries: Vec<Entry>,
    /// A new snapshot point: entries up to and including `snapshot.index` are deleted
    /// and the snapshot metadata replaces the old one.
    pub snapshot: Option<SnapshotMeta>,
}

impl WriteBatch {
    /// Whether the batch has nothing to write.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.entries.is_empty() && self.snapshot.is_none()
    }
}

/// Errors from a log store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The file could not be opened or is not a log store of ours.
    #[error("cannot open raft log {path}: {reason}")]
    Open {
        /// The file in question.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The file opened but its content does not decode or is inconsistent.
    #[error("raft log {path} is corrupt: {reason}")]
    Corrupt {
        /// The file in question.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A read or write failed.
    #[error("raft log I/O error: {0}")]
    Io(String),
    /// A write batch was refused before anything was written because applying it would
    /// leave the log inconsistent (entries not contiguous, a gap after the stored log,
    /// entries at or below the snapshot point, a snapshot older than the stored one).
    /// This is a bug in the caller, not a disk problem; the store is unchanged.
    #[error("invalid raft log write: {0}")]
    InvalidBatch(String),
}

/// A durable home for the log. Implementations must make `write` atomic and durable
/// (fsync) before returning, because the driver sends votes and acknowledgements
/// right after.
pub trait LogStore: Send + 'static {
    /// Read everything back at startup.
    fn load(&mut self) -> Result<InitialState, StorageError>;
    /// Durably apply one batch in a single transaction.
    fn write(&mut self, batch: &WriteBatch) -> Result<(), StorageError>;
    /// Whether the log survives the process. The sidecar never compacts a durable log
    /// behind snapshots that do not (an in-memory snapshot store), since a restart
    /// could then not rebuild the state machine.
    fn is_durable(&self) -> bool {
        true
    }
}
