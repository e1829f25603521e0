//! Linearizable reads by ReadIndex (thesis 6.4).
//!
//! A read is safe to serve at the commit index the leader had when the read arrived,
//! once the leader has confirmed (after the read arrived) that a quorum still follows
//! it. Confirmation happens in numbered rounds carried by heartbeats: every read
//! that arrives is tagged with the next round, one heartbeat broadcast starts that
//! round, and a quorum echoing a round number confirms every read tagged with it or
//! earlier. Many reads therefore share one round trip.

use std::collections::VecDeque;

use super::types::{Index, NodeId};

/// Who asked for a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOrigin {
    /// The local application, with its own context id.
    Local(u64),
    /// A follower that forwarded the read, with the follower's context id.
    Remote(NodeId, u64),
}

/// A read waiting for its confirmation round.
#[derive(Debug, Clone)]
struct Pending {
    origin: ReadOrigin,
    index: Index,
    round: u64,
}

/// The leader's queue of reads in confirmation.
#[derive(Debug, Default, Clone)]
pub struct ReadQueue {
    /// The latest round started.
    round: u64,
    /// Reads tagged with `round + 1` are waiting for a round to start.
    need_round: bool,
    pending: VecDeque<Pending>,
    /// Reads that arrived before the leader committed an entry of its term; their
    /// read index is not known yet.
    waiting_for_commit: Vec<ReadOrigin>,
}

impl ReadQueue {
    /// The latest round started (carried by heartbeats).
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Queue a read that arrived before the leader's first commit in its term.
    pub fn wait_for_commit(&mut self, origin: ReadOrigin) {
        self.waiting_for_commit.push(origin);
    }

    /// The leader committed in its term: the waiting reads get `index` and join the
    /// next round.
    pub fn commit_known(&mut self, index: Index) {
        for origin in std::mem::take(&mut self.waiting_for_commit) {
            self.add(origin, index);
        }
    }

    /// Queue a read at `index`, to be confirmed by the next round.
    pub fn add(&mut self, origin: ReadOrigin, index: Index) {
        self.pending.push_back(Pending {
            origin,
            index,
            round: self.round + 1,
        });
        self.need_round = true;
    }

    /// Whether reads are waiting for a round to start (the next ready starts it).
    pub fn needs_round(&self) -> bool {
        self.need_round
    }

    /// Start a new round if reads are waiting for one; returns its number.
    pub fn start_round(&mut self) -> Option<u64> {
        if !self.need_round {
            return None;
        }
        self.need_round = false;
        self.round += 1;
        Some(self.round)
    }

    /// A quorum has confirmed every round up to `confirmed`: release those reads.
    pub fn confirm(&mut self, confirmed: u64, out: &mut Vec<(ReadOrigin, Index)>) {
        while let Some(p) = self.pending.front() {
            if p.round > confirmed {
                break;
            }
            out.push((p.origin, p.index));
            self.pending.pop_front();
        }
    }

    /// The leader lost its role: every queued read fails.
    pub fn drain_all(&mut self) -> Vec<ReadOrigin> {
        let mut out: Vec<ReadOrigin> = self.pending.drain(..).map(|p| p.origin).collect();
        out.append(&mut self.waiting_for_commit);
        self.need_round = false;
        out
    }

    /// Whether any read is queued.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.waiting_for_commit.is_empty()
    }
}
