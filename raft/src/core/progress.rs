//! What a leader knows about each follower's log, and how hard it may push.
//!
//! A follower starts in `Probe`: the leader sends one AppendEntries at a time until it
//! finds where the logs agree. Once an append succeeds the follower moves to
//! `Replicate`, where the leader streams appends optimistically, bounded by a window
//! of in-flight messages and bytes (pipelining with flow control). A rejection drops
//! it back to `Probe`. `Snapshot` means the follower needs a snapshot before the log
//! can help it: the driver streams one out of band and reports the outcome
//! (`RaftNode::report_snapshot`); appends stay paused meanwhile, heartbeats do not.

use std::collections::VecDeque;

use super::types::Index;

/// Replication mode for one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    /// Looking for the point where the logs agree; one append in flight at most.
    Probe,
    /// Streaming appends, up to the in-flight window.
    Replicate,
    /// Waiting for a snapshot to be installed, up to the given index.
    Snapshot(Index),
}

/// The leader's view of one follower.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Highest index known to be replicated on the follower.
    pub matched: Index,
    /// Next index to send.
    pub next: Index,
    /// Replication mode.
    pub state: ProgressState,
    /// In `Probe`, an append is outstanding; wait for an answer or a heartbeat reply.
    pub probe_sent: bool,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// The latest read-confirmation round the follower has echoed.
    pub acked_round: u64,
    /// Whether the follower is a learner (does not count for quorum).
    pub learner: bool,
    /// Heartbeat replies in a row during which `matched` stayed behind the leader's
    /// log without moving: appends were probably lost.
    pub stalled_heartbeats: u32,
    /// The highest commit index sent to the follower.
    pub commit_sent: Index,
    /// Ticks spent in `Snapshot` without an outcome: after an election timeout the
    /// transfer is presumed lost and the leader asks for another.
    pub snapshot_ticks: u32,
    inflight: VecDeque<(Index, usize)>,
    inflight_bytes: usize,
}

impl Progress {
    /// A fresh progress for a follower when a node becomes leader with `last_index`.
    pub fn new(last_index: Index, learner: bool) -> Self {
        Progress {
            matched: 0,
            next: last_index + 1,
            state: ProgressState::Probe,
            probe_sent: false,
            recent_active: false,
            acked_round: 0,
            learner,
            stalled_heartbeats: 0,
            commit_sent: 0,
            snapshot_ticks: 0,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
        }
    }

    /// Whether the leader must hold off sending more appends.
    pub fn is_paused(&self, max_inflight: usize, max_inflight_bytes: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => {
                self.inflight.len() >= max_inflight || self.inflight_bytes >= max_inflight_bytes
            }
            ProgressState::Snapshot(_) => true,
        }
    }

    /// Record that an append carrying entries up to `last` (with `bytes` payload bytes)
    /// was sent.
    pub fn sent(&mut self, last: Option<Index>, bytes: usize) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Replicate => {
                if let Some(last) = last {
                    self.next = last + 1;
                    self.inflight.push_back((last, bytes));
                    self.inflight_bytes += bytes;
                }
            }
            ProgressState::Snapshot(_) => {}
        }
    }

    /// A successful append acknowledged `index`. Returns whether anything advanced.
    pub fn ack(&mut self, index: Index) -> bool {
        let advanced = index > self.matched;
        if advanced {
            self.matched = index;
            self.probe_sent = false;
            self.stalled_heartbeats = 0;
        }
        self.next = self.next.max(index + 1);
        while let Some(&(last, bytes)) = self.inflight.front() {
            if last > index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
        advanced
    }

    /// The follower rejected an append at `rejected`; `hint` is the highest index where
    /// the logs may agree. Returns false if the rejection is stale (for an append sent
    /// before a newer state of things) and must be ignored.
    pub fn reject(&mut self, rejected: Index, hint: Index) -> bool {
        match self.state {
            // Appends are paused while a snapshot is on its way: any rejection is for
            // an append sent before, and the snapshot supersedes it.
            ProgressState::Snapshot(_) => false,
            ProgressState::Replicate => {
                if rejected <= self.matched {
                    return false;
                }
                self.next = self.matched + 1;
                self.become_probe();
                true
            }
            _ => {
                if self.next.saturating_sub(1) != rejected {
                    return false;
                }
                self.next = rejected.min(hint + 1).max(self.matched + 1);
                self.probe_sent = false;
                true
            }
        }
    }

    /// Switch to probing (after a rejection, or when the follower went quiet).
    pub fn become_probe(&mut self) {
        if let ProgressState::Snapshot(idx) = self.state {
            self.next = self.matched.max(idx) + 1;
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.clear_inflight();
    }

    /// Switch to streaming.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.clear_inflight();
    }

    /// Switch to waiting for a snapshot at `index`.
    pub fn become_snapshot(&mut self, index: Index) {
        self.state = ProgressState::Snapshot(index);
        self.probe_sent = false;
        self.snapshot_ticks = 0;
        self.clear_inflight();
    }

    /// The snapshot transfer ended (`ok`: the follower received the data; otherwise it
    /// failed or timed out). Either way the follower goes back to `Probe`, paused until
    /// it is heard from: on success the probe resumes right after the snapshot and
    /// waits for the follower's acknowledgement; on failure it resumes from what the
    /// follower is known to hold, which asks for a new snapshot. Returns false if no
    /// snapshot was pending (a stale or duplicate report).
    pub fn snapshot_done(&mut self, ok: bool) -> bool {
        let ProgressState::Snapshot(index) = self.state else {
            return false;
        };
        self.next = if ok { self.matched.max(index) } else { self.matched } + 1;
        self.state = ProgressState::Probe;
        self.probe_sent = true;
        self.snapshot_ticks = 0;
        self.clear_inflight();
        true
    }

    /// How many appends are in flight.
    pub fn inflight_count(&self) -> usize {
        self.inflight.len()
    }

    fn clear_inflight(&mut self) {
        self.inflight.clear();
        self.inflight_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_window_pauses_and_acks_free_it() {
        let mut p = Progress::new(10, false);
        p.ack(10);
        p.become_replicate();
        p.sent(Some(12), 100);
        p.sent(Some(14), 100);
        assert!(p.is_paused(2, usize::MAX));
        assert!(p.is_paused(8, 150));
        p.ack(12);
        assert!(!p.is_paused(2, usize::MAX));
        assert_eq!(p.next, 15);
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(10, false);
        p.sent(None, 0);
        assert!(!p.reject(5, 3), "probe rejection for an index we did not send");
        assert!(p.reject(10, 3));
        assert_eq!(p.next, 4);
        p.ack(6);
        p.become_replicate();
        assert!(!p.reject(6, 0), "replicate rejection at or below match");
    }

    #[test]
    fn snapshot_outcome_resumes_probing_from_the_right_place() {
        let mut p = Progress::new(100, false);
        p.ack(3);
        p.become_snapshot(50);
        assert!(p.is_paused(8, usize::MAX));
        assert!(
            !p.reject(99, 0),
            "rejections are ignored while a snapshot is pending"
        );
        assert!(p.snapshot_done(true));
        assert_eq!((p.state, p.next, p.probe_sent), (ProgressState::Probe, 51, true));
        assert!(!p.snapshot_done(true), "a duplicate report changes nothing");
        p.become_snapshot(50);
        assert!(p.snapshot_done(false));
        assert_eq!((p.state, p.next), (ProgressState::Probe, 4));
    }
}
