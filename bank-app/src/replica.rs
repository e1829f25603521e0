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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Op, Request};

    fn open(replica: &mut BankReplica, index: Index, account: u64) {
        let cmd = Request::unsessioned(Op::OpenAccount { account, initial: 10 }).encode();
        replica.apply(index, &cmd);
    }

    #[test]
    fn a_capture_encodes_the_state_as_of_the_capture() {
        let mut replica = BankReplica::new(Bank::new());
        for i in 1..=1_000 {
            open(&mut replica, i, i);
        }
        let at_capture = replica.read().clone();
        let capture = replica.snapshot();
        for i in 1_001..=1_100 {
            open(&mut replica, i, i);
        }
        let deposit = Request::unsessioned(Op::Deposit {
            account: 5,
            amount: 1,
        })
        .encode();
        replica.apply(1_101, &deposit);
        let image = capture();
        assert_eq!(
            image,
            at_capture.snapshot(),
            "later applies do not leak into the image"
        );
        let mut other = BankReplica::default();
        other.restore(1_000, &image).unwrap();
        assert_eq!(*other.read(), at_capture);
        assert_eq!(replica.read().account_count(), 1_100);
        assert_eq!(replica.read().balance(5), Some(11));
    }
}
