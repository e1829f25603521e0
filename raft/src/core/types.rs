//! The vocabulary shared by the core, storage and transport: identifiers, log entries,
//! persisted state and cluster membership.
//!
//! These types are serialized by storage (redb values) and by the transport (postcard
//! frames), so changing a field is a wire and disk format change.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node's identity in the cluster. Zero is reserved to mean "nobody".
pub type NodeId = u64;
/// A Raft term. Terms only grow; a larger term always wins.
pub type Term = u64;
/// A position in the replicated log. The first real entry has index 1; index 0 is the
/// empty prefix that every log agrees on.
pub type Index = u64;

/// What a log entry carries. The core interprets only `Membership`; `Normal` payloads
/// are opaque application commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// The empty entry a new leader appends so that it can commit something of its own
    /// term (Raft paper 5.4.2 and 8).
    Noop,
    /// An application command, handed back to the state machine once committed.
    Normal(Bytes),
    /// A new cluster configuration. It takes effect as soon as it is appended.
    Membership(Membership),
}

/// One slot of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: Index,
    /// What the entry carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// The number of payload bytes, used for flow control and compaction policy.
    pub fn payload_len(&self) -> usize {
        match &self.payload {
            EntryPayload::Noop => 0,
            EntryPayload::Normal(b) => b.len(),
            EntryPayload::Membership(m) => 16 * (m.voters.len() + m.learners.len()),
        }
    }
}

/// The state that must be durable before a node sends a vote or an append
/// acknowledgement: losing it could let a node vote twice in a term or forget entries
/// it acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// Whom this node voted for in `term`, if anyone.
    pub vote: Option<NodeId>,
    /// The highest index known committed. Persisting it is an optimisation (a
    /// restarted node can apply sooner); correctness does not depend on it.
    pub commit: Index,
}

/// Where a node can be reached. The core never reads these; they travel with the
/// membership so that every node can redirect clients to the current leader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The address of the node's peer (Raft) channel.
    pub raft: String,
    /// The address of the node's client channel.
    pub client: String,
}

/// A cluster configuration. `outgoing` is non-empty only while a joint-consensus
/// change is in progress, in which case decisions need a majority of both `voters` and
/// `outgoing`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Nodes whose votes and acknowledgements count.
    pub voters: BTreeSet<NodeId>,
    /// The previous voter set during a joint change; empty otherwise.
    pub outgoing: BTreeSet<NodeId>,
    /// Nodes that receive the log but neither vote nor count for commitment.
    pub learners: BTreeSet<NodeId>,
    /// Addresses of every member, voter or learner.
    pub addrs: BTreeMap<NodeId, NodeAddr>,
}

impl Membership {
    /// A configuration of voters only, without addresses. Convenient in tests.
    pub fn with_voters(ids: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: ids.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Whether `id` takes part in elections and commitment.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    /// Whether `id` is a member in any role.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every member, voters first, without duplicates.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.voters
            .iter()
            .chain(self.outgoing.iter())
            .chain(self.learners.iter())
            .copied()
            .collect()
    }

    /// Whether `ids` hold a majority of the configuration (of both halves while joint).
    pub fn has_quorum(&self, ids: impl Fn(NodeId) -> bool) -> bool {
        fn majority(set: &BTreeSet<NodeId>, ids: &impl Fn(NodeId) -> bool) -> bool {
            set.is_empty() || set.iter().filter(|&&id| ids(id)).count() > set.len() / 2
        }
        majority(&self.voters, &ids) && majority(&self.outgoing, &ids)
    }

    /// The highest index that a majority (of each half while joint) has reached, given
    /// each voter's acknowledged index.
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Index) -> Index {
        fn quorum_index(set: &BTreeSet<NodeId>, acked: &impl Fn(NodeId) -> Index) -> Index {
            if set.is_empty() {
                return Index::MAX;
            }
            let mut v: Vec<Index> = set.iter().map(|&id| acked(id)).collect();
            v.sort_unstable_by(|a, b| b.cmp(a));
            v[set.len() / 2]
        }
        quorum_index(&self.voters, &acked).min(quorum_index(&self.outgoing, &acked))
    }
}

/// Describes the state a snapshot captures: everything up to and including `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last log index the snapshot covers.
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The configuration in force at `index`.
    pub membership: Membership,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_index_is_the_majority_median() {
        let m = Membership::with_voters([1, 2, 3]);
        let acked = |id| match id {
            1 => 10,
            2 => 7,
            _ => 3,
        };
        assert_eq!(m.committed_index(acked), 7);
    }

    #[test]
    fn joint_configuration_needs_both_majorities() {
        let mut m = Membership::with_voters([1, 2, 3]);
        m.outgoing = [3, 4, 5].into_iter().collect();
        let acked = |id| match id {
            1 | 2 => 10,
            3 => 5,
            _ => 1,
        };
        assert_eq!(m.committed_index(acked), 1);
        assert!(!m.has_quorum(|id| id <= 2));
        assert!(m.has_quorum(|id| id <= 4));
    }
}
