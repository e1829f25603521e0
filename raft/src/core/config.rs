//! Tunables of the core, in ticks and counts. The core has no clock: the driver calls
//! `tick()` at a fixed interval and every timeout here is a number of those ticks.

use super::types::NodeId;

/// Configuration of one Raft node.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// Minimum election timeout in ticks. The actual timeout is drawn uniformly from
    /// `[election_ticks, 2 * election_ticks)` after every reset, so that candidates
    /// rarely collide (paper 5.2).
    pub election_ticks: u32,
    /// Ticks between heartbeats from a leader. Must be well below `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Run a pre-vote round before a real election (thesis 9.6), so a node that was
    /// partitioned away cannot disrupt a healthy leader when it comes back.
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum for an election
    /// timeout, and followers that recently heard from a leader ignore vote requests.
    pub check_quorum: bool,
    /// Most AppendEntries in flight to one follower (pipelining window).
    pub max_inflight_msgs: usize,
    /// Most payload bytes in flight to one follower.
    pub max_inflight_bytes: usize,
    /// Most entries in one AppendEntries.
    pub max_entries_per_msg: usize,
    /// Most payload bytes in one AppendEntries (at least one entry is always sent).
    pub max_bytes_per_msg: usize,
    /// Seed for the election-timeout randomness. Two nodes should use different seeds;
    /// the simulator derives them from its own seed so that runs replay exactly.
    pub seed: u64,
}

impl Config {
    /// Defaults that suit a 10 ms tick: heartbeat every 50 ms, elections after
    /// 300-600 ms.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_ticks: 30,
            heartbeat_ticks: 5,
            pre_vote: true,
            check_quorum: true,
            max_inflight_msgs: 256,
            max_inflight_bytes: 64 << 20,
            max_entries_per_msg: 4096,
            max_bytes_per_msg: 1 << 20,
            seed: id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// Check the configuration for values the core cannot work with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError("node id 0 is reserved".into()));
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError(format!(
                "election_ticks ({}) must exceed heartbeat_ticks ({}), and both be positive",
                self.election_ticks, self.heartbeat_ticks
            )));
        }
        if self.max_inflight_msgs == 0 || self.max_entries_per_msg == 0 {
            return Err(ConfigError(
                "inflight window and entries per message must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// An invalid core configuration.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid raft config: {0}")]
pub struct ConfigError(pub String);

/// A tiny deterministic generator (splitmix64): the core's only source of randomness,
/// seeded by the caller so that every run can be replayed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` (0 when n is 0).
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `[lo, hi]`.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `p`.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi.saturating_sub(lo).max(1))) as u32
    }
}
