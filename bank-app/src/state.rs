//! The bank's deterministic state machine: accounts, balances, sessions, snapshots.
//!
//! [`Bank::apply`] is run on every replica for every committed command, in log order.
//! It must produce the same state and the same response bytes everywhere, so it reads
//! nothing but its own state, the log index and the command bytes: no clock, no
//! randomness, no hashing with per-process seeds (all maps are `BTreeMap`), no IO, and
//! no panics on any input.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::account::{Account, Txn, TxnKind};
use crate::command::{
    decode_versioned, encode_versioned, AccountId, CodecError, Op, Rejection, Request, Response, MAX_AMOUNT,
};
use crate::session::{Admission, Session, SessionInfo, SessionTable};

mod accounts;
use accounts::Accounts;

/// The format version byte that prefixes a snapshot.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 1;

/// Tunables of the state machine.
///
/// These shape the replicated state, so every replica must use the same values. They
/// travel inside snapshots, and a restored bank uses the snapshot's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankConfig {
    /// A session idle for more than this many log indices is dropped. Default 1,000,000.
    pub session_ttl_entries: u64,
    /// At most this many sessions are kept; the least recently active one is evicted
    /// beyond it. Default 100,000 (a session costs roughly 100 bytes).
    pub max_sessions: usize,
    /// Each account keeps its last this many transactions for statements. Default 100.
    /// Zero keeps none.
    pub history_len: usize,
    /// The largest amount one operation may move or open an account with.
    /// Default [`MAX_AMOUNT`].
    pub max_amount: u64,
}

impl Default for BankConfig {
    fn default() -> Self {
        BankConfig {
            session_ttl_entries: 1_000_000,
            max_sessions: 100_000,
            history_len: 100,
            max_amount: MAX_AMOUNT,
        }
    }
}

impl BankConfig {
    /// Checks that the values make sense: sessions must be able to live at least one
    /// entry, and at least one must fit.
    pub fn validate(&self) -> Result<(), BankError> {
        if self.session_ttl_entries == 0 {
            return Err(BankError::InvalidConfig(
                "session_ttl_entries must be at least 1".into(),
            ));
        }
        if self.max_sessions == 0 {
            return Err(BankError::InvalidConfig("max_sessions must be at least 1".into()));
        }
        if self.max_amount == 0 {
            return Err(BankError::InvalidConfig("max_amount must be at least 1".into()));
        }
        Ok(())
    }
}

/// Errors of the bank outside of `apply` (which never fails: it answers with a
/// [`Rejection`] instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BankError {
    /// The configuration is unusable.
    #[error("invalid bank configuration: {0}")]
    InvalidConfig(String),
    /// The snapshot bytes could not be decoded.
    #[error("cannot decode bank snapshot: {0}")]
    SnapshotDecode(#[from] CodecError),
    /// The snapshot decoded but its contents are inconsistent.
    #[error("corrupt bank snapshot: {0}")]
    CorruptSnapshot(String),
}

/// The bank's replicated state.
///
/// Two banks compare equal when they hold the same accounts, histories, sessions,
/// applied index and configuration: replicas that applied the same log are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bank {
    config: BankConfig,
    applied_index: u64,
    /// Sum of all balances. Keeping it within `u64` means no single balance can
    /// overflow either, and it makes conservation of money cheap to check.
    total: u64,
    /// Sharded copy-on-write, so that cloning the bank (a snapshot capture) is cheap.
    accounts: Accounts,
    sessions: SessionTable,
}

impl Default for Bank {
    fn default() -> Self {
        Bank::new()
    }
}

/// The snapshot body, borrowed for writing.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    config: &'a BankConfig,
    applied_index: u64,
    total: u64,
    accounts: &'a Accounts,
    sessions: &'a BTreeMap<u64, Session>,
}

/// The snapshot body, owned for reading. Same field order as [`SnapshotRef`].
#[derive(Deserialize)]
struct SnapshotOwned {
    config: BankConfig,
    applied_index: u64,
    total: u64,
    accounts: BTreeMap<AccountId, Account>,
    sessions: BTreeMap<u64, Session>,
}

impl Bank {
    /// An empty bank with the default configuration.
    pub fn new() -> Self {
        Bank {
            config: BankConfig::default(),
            applied_index: 0,
            total: 0,
            accounts: Accounts::default(),
            sessions: SessionTable::default(),
        }
    }

    /// An empty bank with the given configuration.
    pub fn with_config(config: BankConfig) -> Result<Self, BankError> {
        config.validate()?;
        Ok(Bank {
            config,
            ..Bank::new()
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &BankConfig {
        &self.config
    }

    /// The log index of the last command applied (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The balance of `account`, or `None` if it does not exist.
    pub fn balance(&self, account: AccountId) -> Option<u64> {
        self.accounts.get(&account).map(|a| a.balance)
    }

    /// Up to `limit` most recent transactions of `account`, oldest first, or `None` if
    /// the account does not exist. Only the last [`BankConfig::history_len`] are kept.
    pub fn statement(&self, account: AccountId, limit: usize) -> Option<Vec<Txn>> {
        let a = self.accounts.get(&account)?;
        let skip = a.history.len().saturating_sub(limit);
        Some(a.history.iter().skip(skip).copied().collect())
    }

    /// The account, for callers that want both balance and history.
    pub fn account(&self, account: AccountId) -> Option<&Account> {
        self.accounts.get(&account)
    }

    /// All accounts in id order.
    pub fn accounts(&self) -> impl Iterator<Item = (AccountId, &Account)> {
        self.accounts.iter()
    }

    /// The number of accounts.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// The sum of all balances: every opening balance and deposit, minus every
    /// withdrawal. Transfers leave it unchanged.
    pub fn total_balance(&self) -> u64 {
        self.total
    }

    /// The number of live client sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The state of session `client_id`, if it is live.
    pub fn session(&self, client_id: u64) -> Option<SessionInfo> {
        self.sessions.info(client_id)
    }

    /// Applies the committed command at log `index` and returns the encoded
    /// [`Response`].
    ///
    /// Never fails and never panics: undecodable bytes, business rules and session
    /// rules all produce a `Rejected` response. `index` must grow from call to call;
    /// an index at or below [`applied_index`](Self::applied_index) changes nothing and
    /// answers [`Rejection::AlreadyApplied`].
    pub fn apply(&mut self, index: u64, cmd: &[u8]) -> Bytes {
        if index <= self.applied_index {
            tracing::warn!(
                index,
                applied = self.applied_index,
                "bank asked to apply an already applied index; ignored"
            );
            return Response::Rejected(Rejection::AlreadyApplied {
                index,
                applied: self.applied_index,
            })
            .encode();
        }
        self.applied_index = index;
        let expired = self.sessions.expire(index, self.config.session_ttl_entries);
        if expired > 0 {
            tracing::debug!(index, expired, "client sessions expired");
        }

        let request = match Request::decode(cmd) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(index, error = %e, "undecodable bank command");
                let rejection = match e {
                    CodecError::UnsupportedVersion { found, .. } => Rejection::UnsupportedVersion(found),
                    _ => Rejection::Malformed,
                };
                return Response::Rejected(rejection).encode();
            }
        };

        let Some(session) = request.session else {
            return self.execute(index, request.op).encode();
        };
        match self.sessions.admit(session, index) {
            Admission::Duplicate(recorded) => recorded,
            Admission::Reject(rejection) => Response::Rejected(rejection).encode(),
            Admission::Apply => {
                let response = self.execute(index, request.op).encode();
                let evicted =
                    self.sessions
                        .record(session, response.clone(), index, self.config.max_sessions);
                if evicted > 0 {
                    tracing::debug!(index, evicted, "client sessions evicted at capacity");
                }
                response
            }
        }
    }

    /// Runs one operation. Every check happens before the first mutation, so a
    /// rejected operation leaves the state untouched.
    fn execute(&mut self, index: u64, op: Op) -> Response {
        match self.try_execute(index, op) {
            Ok(r) => r,
            Err(rejection) => Response::Rejected(rejection),
        }
    }

    fn try_execute(&mut self, index: u64, op: Op) -> Result<Response, Rejection> {
        let history_len = self.config.history_len;
        match op {
            Op::OpenAccount { account, initial } => {
                if initial > self.config.max_amount {
                    return Err(Rejection::AmountTooLarge {
                        max: self.config.max_amount,
                    });
                }
                if self.accounts.contains_key(&account) {
                    return Err(Rejection::AccountExists(account));
                }
                let total = self.total.checked_add(initial).ok_or(Rejection::Overflow)?;
                let mut a = Account::new();
                a.record(history_len, index, TxnKind::Open, initial, None, initial);
                self.accounts.insert(account, a);
                self.total = total;
                Ok(Response::Opened { balance: initial })
            }
            Op::Deposit { account, amount } => {
                self.check_amount(amount)?;
                let a = self
                    .accounts
                    .get_mut(&account)
                    .ok_or(Rejection::UnknownAccount(account))?;
                let balance = a.balance.checked_add(amount).ok_or(Rejection::Overflow)?;
                let total = self.total.checked_add(amount).ok_or(Rejection::Overflow)?;
                a.record(history_len, index, TxnKind::Deposit, amount, None, balance);
                self.total = total;
                Ok(Response::Deposited { balance })
            }
            Op::Withdraw { account, amount } => {
                self.check_amount(amount)?;
                let a = self
                    .accounts
                    .get_mut(&account)
                    .ok_or(Rejection::UnknownAccount(account))?;
                let balance = a
                    .balance
                    .checked_sub(amount)
                    .ok_or(Rejection::InsufficientFunds {
                        available: a.balance,
                        requested: amount,
                    })?;
                // total >= every balance, so this cannot underflow; checked regardless.
                let total = self.total.checked_sub(amount).ok_or(Rejection::Overflow)?;
                a.record(history_len, index, TxnKind::Withdraw, amount, None, balance);
                self.total = total;
                Ok(Response::Withdrawn { balance })
            }
            Op::Transfer { from, to, amount } => {
                self.check_amount(amount)?;
                if from == to {
                    return Err(Rejection::SameAccount);
                }
                let from_balance = self
                    .accounts
                    .get(&from)
                    .ok_or(Rejection::UnknownAccount(from))?
                    .balance;
                let to_balance = self
                    .accounts
                    .get(&to)
                    .ok_or(Rejection::UnknownAccount(to))?
                    .balance;
                let new_from = from_balance
                    .checked_sub(amount)
                    .ok_or(Rejection::InsufficientFunds {
                        available: from_balance,
                        requested: amount,
                    })?;
                let new_to = to_balance.checked_add(amount).ok_or(Rejection::Overflow)?;
                // Both accounts exist (checked above); all checks passed, now mutate.
                if let Some(a) = self.accounts.get_mut(&from) {
                    a.record(
                        history_len,
                        index,
                        TxnKind::TransferOut,
                        amount,
                        Some(to),
                        new_from,
                    );
                }
                if let Some(a) = self.accounts.get_mut(&to) {
                    a.record(
                        history_len,
                        index,
                        TxnKind::TransferIn,
                        amount,
                        Some(from),
                        new_to,
                    );
                }
                Ok(Response::Transferred {
                    from_balance: new_from,
                    to_balance: new_to,
                })
            }
        }
    }

    fn check_amount(&self, amount: u64) -> Result<(), Rejection> {
        if amount == 0 {
            Err(Rejection::InvalidAmount)
        } else if amount > self.config.max_amount {
            Err(Rejection::AmountTooLarge {
                max: self.config.max_amount,
            })
        } else {
            Ok(())
        }
    }

    /// The full state as bytes: a version byte, then the postcard encoding of the
    /// configuration, applied index, accounts with their histories, and sessions.
    ///
    /// Replicas with equal state produce identical snapshots.
    pub fn snapshot(&self) -> Bytes {
        encode_versioned(
            SNAPSHOT_FORMAT_VERSION,
            &SnapshotRef {
                config: &self.config,
                applied_index: self.applied_index,
                total: self.total,
                accounts: &self.accounts,
                sessions: self.sessions.sessions(),
            },
        )
    }

    /// Rebuilds a bank from [`snapshot`](Self::snapshot) bytes.
    ///
    /// Bytes that do not decode, or decode to an inconsistent state (a total that is
    /// not the sum of the balances, histories longer than configured or from the
    /// future, impossible sessions, an invalid configuration), are an error: a node must
    /// not start serving from a state it cannot trust.
    pub fn restore(bytes: &[u8]) -> Result<Self, BankError> {
        let snap: SnapshotOwned = decode_versioned(SNAPSHOT_FORMAT_VERSION, bytes)?;
        let corrupt = |msg: String| BankError::CorruptSnapshot(msg);
        snap.config.validate().map_err(|e| corrupt(e.to_string()))?;

        let mut sum: u128 = 0;
        for (&id, account) in &snap.accounts {
            sum += u128::from(account.balance);
            if account.history.len() > snap.config.history_len {
                return Err(corrupt(format!(
                    "account {id} keeps {} transactions, more than the configured {}",
                    account.history.len(),
                    snap.config.history_len
                )));
            }
            if let Some(txn) = account.history.back() {
                if txn.balance != account.balance {
                    return Err(corrupt(format!(
                        "account {id} balance {} differs from its last transaction's {}",
                        account.balance, txn.balance
                    )));
                }
            }
            if account.history.iter().any(|t| t.index > snap.applied_index) {
                return Err(corrupt(format!(
                    "account {id} has a transaction beyond applied index {}",
                    snap.applied_index
                )));
            }
        }
        if sum != u128::from(snap.total) {
            return Err(corrupt(format!(
                "total {} is not the sum of the balances {sum}",
                snap.total
            )));
        }

        if snap.sessions.len() > snap.config.max_sessions {
            return Err(corrupt(format!(
                "{} sessions exceed the configured maximum {}",
                snap.sessions.len(),
                snap.config.max_sessions
            )));
        }
        for (&client_id, s) in &snap.sessions {
            if let Err(e) = Response::decode(&s.last_response) {
                return Err(corrupt(format!(
                    "session {client_id} holds an undecodable response: {e}"
                )));
            }
        }
        let sessions = SessionTable::from_sessions(snap.sessions, snap.applied_index).map_err(corrupt)?;

        Ok(Bank {
            config: snap.config,
            applied_index: snap.applied_index,
            total: snap.total,
            accounts: Accounts::from(snap.accounts),
            sessions,
        })
    }
}

#[cfg(test)]
mod tests;
