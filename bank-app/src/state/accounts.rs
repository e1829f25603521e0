//! The bank's accounts, sharded copy-on-write so that a snapshot capture is cheap.
//!
//! The accounts are spread over [`SHARDS`] ordered maps by a fixed hash of the id (no
//! per-process seed, so every replica shards alike), each behind an `Arc`. Cloning
//! the whole set (what a snapshot capture does) copies only the `Arc`s; the first
//! change to a shard while a capture still holds it copies that shard alone
//! (`Arc::make_mut`), so the cost of a capture is spread over the applies that follow
//! it and ends once the capture has been encoded and dropped.
//!
//! Iteration and serialization visit the accounts in id order across shards, so the
//! encoding is the one of a single `BTreeMap` of all accounts: snapshots stay canonical
//! and compatible.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::account::Account;
use crate::command::AccountId;

/// Number of shards: enough that copying one is short (1/256 of the accounts).
pub(crate) const SHARDS: usize = 256;

fn shard_of(id: AccountId) -> usize {
    // Fibonacci hashing: consecutive ids land in different shards.
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize
}

/// The accounts, by id.
#[derive(Clone, Debug)]
pub(crate) struct Accounts {
    shards: Vec<Arc<BTreeMap<AccountId, Account>>>,
    len: usize,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            shards: (0..SHARDS).map(|_| Arc::new(BTreeMap::new())).collect(),
            len: 0,
        }
    }
}

impl PartialEq for Accounts {
    fn eq(&self, other: &Self) -> bool {
        // Sharding is a function of the id, so equal sets have equal shards.
        self.len == other.len && self.shards.iter().zip(&other.shards).all(|(a, b)| a == b)
    }
}

impl Eq for Accounts {}

impl Accounts {
    pub(crate) fn get(&self, id: &AccountId) -> Option<&Account> {
        self.shards[shard_of(*id)].get(id)
    }

    /// A mutable account; copies its shard first if a snapshot capture shares it.
    pub(crate) fn get_mut(&mut self, id: &AccountId) -> Option<&mut Account> {
        let shard = &mut self.shards[shard_of(*id)];
        if !shard.contains_key(id) {
            return None;
        }
        Arc::make_mut(shard).get_mut(id)
    }

    pub(crate) fn contains_key(&self, id: &AccountId) -> bool {
        self.shards[shard_of(*id)].contains_key(id)
    }

    pub(crate) fn insert(&mut self, id: AccountId, account: Account) {
        if Arc::make_mut(&mut self.shards[shard_of(id)])
            .insert(id, account)
            .is_none()
        {
            self.len += 1;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every account in id order. Gathers references and sorts them (faster than a
    /// k-way merge of the shards, and the allocation is 16 bytes per account).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (AccountId, &Account)> {
        let mut all: Vec<(AccountId, &Account)> = Vec::with_capacity(self.len);
        for shard in &self.shards {
            all.extend(shard.iter().map(|(&id, a)| (id, a)));
        }
        all.sort_unstable_by_key(|(id, _)| *id);
        all.into_iter()
    }
}

impl From<BTreeMap<AccountId, Account>> for Accounts {
    fn from(map: BTreeMap<AccountId, Account>) -> Self {
        let mut shards: Vec<BTreeMap<AccountId, Account>> = (0..SHARDS).map(|_| BTreeMap::new()).collect();
        let len = map.len();
        for (id, a) in map {
            shards[shard_of(id)].insert(id, a);
        }
        Accounts {
            shards: shards.into_iter().map(Arc::new).collect(),
            len,
        }
    }
}

impl Serialize for Accounts {
    /// Exactly like a `BTreeMap<AccountId, Account>` of every account.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (id, a) in self.iter() {
            map.serialize_entry(&id, a)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(balance: u64) -> Account {
        let mut a = Account::new();
        a.balance = balance;
        a
    }

    #[test]
    fn iterates_and_encodes_like_one_ordered_map() {
        let mut plain = BTreeMap::new();
        let mut sharded = Accounts::default();
        for id in [5u64, 1, 1_000_000, 42, 7, u64::MAX, 0, 300, 299] {
            plain.insert(id, account(id % 1000));
            sharded.insert(id, account(id % 1000));
        }
        assert_eq!(sharded.len(), plain.len());
        let ids: Vec<AccountId> = sharded.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, plain.keys().copied().collect::<Vec<_>>());
        assert_eq!(
            postcard::to_stdvec(&sharded).unwrap(),
            postcard::to_stdvec(&plain).unwrap()
        );
        assert_eq!(Accounts::from(plain), sharded);
    }

    #[test]
    fn a_clone_shares_until_written_and_then_diverges() {
        let mut a = Accounts::default();
        for id in 0..10_000u64 {
            a.insert(id, account(1));
        }
        let captured = a.clone();
        let shared = a
            .shards
            .iter()
            .zip(&captured.shards)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert_eq!(shared, SHARDS, "a clone copies no shard");
        a.get_mut(&3).unwrap().balance = 99;
        assert!(a.get_mut(&10_001).is_none());
        let shared = a
            .shards
            .iter()
            .zip(&captured.shards)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert_eq!(shared, SHARDS - 1, "one write copies one shard");
        assert_eq!(captured.get(&3).unwrap().balance, 1, "the capture is unchanged");
        assert_eq!(a.get(&3).unwrap().balance, 99);
        assert_ne!(a, captured);
    }
}
