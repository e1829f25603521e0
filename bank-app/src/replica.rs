//! The bank as a Raft state machine: the sidecar applies committed commands to it, and
//! the client channel reads from it after a linearizable-read confirmation.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use bytes::Bytes;
use raft::core::Index;
use raft::sidecar::{SnapshotCapture, StateMachine};

use crate::state::Bank;

/// A shared handle to one node's bank state. Clones share the same bank: one is given
/// to the Raft sidecar (which applies commands), others to the client channel (which
/// reads balances and statements).
#[derive(Clone, Default)]
pub struct BankReplica {
    inner: Arc<RwLock<Bank>>,
}

impl BankReplica {
    /// Wrap a bank (usually `Bank::new()` or one restored from a snapshot).
    pub fn new(bank: Bank) -> Self {
        BankReplica {
            inner: Arc::new(RwLock::new(bank)),
        }
    }

    /// Read the current state. Hold the guard briefly: applies wait for it.
    pub fn read(&self) -> RwLockReadGuard<'_, Bank> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl StateMachine for BankReplica {
    fn apply(&mut self, index: Index, command: &[u8]) -> Bytes {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(index, command)
    }

    /// Copies the bank in memory (no encoding) under the read lock; the copy is
    /// encoded later on the sidecar's blocking thread while applies go on.
    fn snapshot(&self) -> SnapshotCapture {
        let bank = self.read().clone();
        Box::new(move || bank.snapshot())
    }

    fn restore(&mut self, _index: Index, image: &[u8]) -> Result<(), String> {
        let bank = Bank::restore(image).map_err(|e| e.to_string())?;
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = bank;
        Ok(())
    }
}
