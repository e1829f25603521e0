//! An account: its balance and a bounded statement of its recent transactions.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::command::AccountId;

/// What kind of movement a [`Txn`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxnKind {
    /// The account was opened with the amount as its initial balance.
    Open,
    /// Money was credited from outside the bank.
    Deposit,
    /// Money was debited to outside the bank.
    Withdraw,
    /// Money left this account for the counterparty.
    TransferOut,
    /// Money arrived in this account from the counterparty.
    TransferIn,
}

/// One line of an account statement.
///
/// The log index doubles as a transaction id that every replica agrees on: it is the
/// position of the command in the replicated log, so no clock or counter is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Txn {
    /// The Raft log index of the command that caused this movement.
    pub index: u64,
    /// The kind of movement.
    pub kind: TxnKind,
    /// The amount moved, in minor units.
    pub amount: u64,
    /// The other account of a transfer; `None` otherwise.
    pub counterparty: Option<AccountId>,
    /// This account's balance right after the movement.
    pub balance: u64,
}

/// An account's state. Only applied movements appear in its history; rejected requests
/// leave no trace here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub(crate) balance: u64,
    /// Oldest first; bounded by the bank's configured history length so that state and
    /// snapshots stay proportional to the number of accounts, not to all time.
    pub(crate) history: VecDeque<Txn>,
}

impl Account {
    pub(crate) fn new() -> Self {
        Account {
            balance: 0,
            history: VecDeque::new(),
        }
    }

    /// The current balance in minor units.
    pub fn balance(&self) -> u64 {
        self.balance
    }

    /// The retained recent transactions, oldest first.
    pub fn history(&self) -> impl DoubleEndedIterator<Item = &Txn> + ExactSizeIterator {
        self.history.iter()
    }

    /// Sets the balance and appends the movement, dropping the oldest entries beyond
    /// `history_len`.
    pub(crate) fn record(
        &mut self,
        history_len: usize,
        index: u64,
        kind: TxnKind,
        amount: u64,
        counterparty: Option<AccountId>,
        balance: u64,
    ) {
        self.balance = balance;
        if history_len == 0 {
            return;
        }
        while self.history.len() >= history_len {
            self.history.pop_front();
        }
        self.history.push_back(Txn {
            index,
            kind,
            amount,
            counterparty,
            balance,
        });
    }
}
