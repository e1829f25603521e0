//! The sidecar: a tokio driver that runs the core with durable storage, a peer
//! transport and the application's state machine, and the cloneable handle the
//! application uses to propose commands and wait for them to be applied.
//!
//! The driver follows the core's ordering contract (see [`crate::core::Ready`]): the
//! leader's appends leave before its own fsync so the two overlap; votes and append
//! acknowledgements leave only after the hard state and entries they promise are
//! durable; committed entries are applied only after the batch that holds them is
//! durable; reads are answered only once the applied index reaches their read index.
//!
//! Snapshots (see `driver/snapshot.rs`): the driver captures the state machine by
//! policy or on [`RaftHandle::snapshot_now`], writes the image to its
//! [`SnapshotStore`] on a blocking thread, and only once the file is durable compacts
//! the log; it streams its latest file to followers that need it, installs files it
//! receives, and restarts from the newest valid file.

mod driver;
mod handle;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use crate::core::{Index, Membership, NodeAddr, NodeId};
use crate::storage::snapshot::SnapshotError;

pub use crate::storage::snapshot::SnapshotStore;
pub use driver::Sidecar;
pub use handle::{
    Applied, LeaderInfo, MembershipChanged, MembershipStatus, PeerProgress, RaftHandle, SidecarStatus,
    SnapshotStatus,
};

/// A capture of the state machine at one applied index, turned into image bytes later,
/// on a blocking thread, while the driver keeps applying (see
/// [`StateMachine::snapshot`]).
pub type SnapshotCapture = Box<dyn FnOnce() -> Bytes + Send + 'static>;

/// The application's deterministic state machine.
///
/// `apply` must be deterministic: the same commands in the same order produce the same
/// state and responses on every node (no clock, no randomness, no IO that can fail
/// differently on two nodes). Business rejections are responses, not errors.
pub trait StateMachine: Send + 'static {
    /// Apply one committed command and return the response for its proposer.
    fn apply(&mut self, index: Index, command: &[u8]) -> Bytes;

    /// The index up to which the state machine's effects are durable on its own (0 if
    /// it keeps its state in memory only). After a restart the driver applies from the
    /// entry after it.
    fn durable_index(&self) -> Index {
        0
    }

    /// Capture the whole state for a snapshot, as of the last applied command.
    ///
    /// **This must be cheap.** It runs on the driver task, between two applies, and
    /// every proposal waits while it runs: take a copy-on-write reference, a shallow
    /// clone or an in-memory copy, never serialize or do IO here. The returned closure
    /// runs later on a blocking thread, concurrently with further `apply` calls, and
    /// must return the image of the state *as it was at capture time* (the driver
    /// records it as the snapshot of the index applied then).
    fn snapshot(&self) -> SnapshotCapture;

    /// Replace the whole state with a snapshot image taken at `index`. An error means
    /// the image is unusable: at startup the driver then tries an older snapshot; when
    /// installing one received from the leader it stops (the log was already reset).
    fn restore(&mut self, index: Index, image: &[u8]) -> Result<(), String>;
}

/// Timing and sizing of a sidecar. Defaults: 10 ms ticks, heartbeat 50 ms, elections
/// after 300-600 ms.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// This node.
    pub id: NodeId,
    /// Wall-clock length of one core tick.
    pub tick: Duration,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
    /// Minimum election timeout in ticks (randomized up to twice that).
    pub election_ticks: u32,
    /// Pre-vote (recommended).
    pub pre_vote: bool,
    /// Check-quorum (recommended).
    pub check_quorum: bool,
    /// How long `propose` waits for its entry to be applied before giving up with an
    /// "outcome unknown" error.
    pub propose_timeout: Duration,
    /// How long `linearizable_read` waits.
    pub read_timeout: Duration,
    /// Capacity of the queue between handles and the driver; when full, `propose`
    /// waits (backpressure) up to its timeout.
    pub queue_capacity: usize,
    /// Most inputs the driver takes before producing a ready (group commit size cap).
    pub max_batch: usize,
    /// The cluster to bootstrap when the store is empty. Ignored once the node has
    /// state on disk.
    pub bootstrap: Option<Membership>,
    /// Join a running cluster: with an empty store, start without any configuration
    /// (ignoring `bootstrap`) and wait for a leader to add this node, as a learner, and
    /// replicate the log (configuration included) to it. Without it, an empty store and
    /// no `bootstrap` is a start error, so a misconfigured node cannot silently wait.
    pub join: bool,
    /// `promote` refuses a learner whose matched index is more than this many entries
    /// behind the leader's last index: a voter that far behind would hold up commits
    /// (or, with a node down, availability) until it caught up.
    pub promote_max_lag: u64,
    /// Pipelining window per follower.
    pub max_inflight_msgs: usize,
    /// Most entries per AppendEntries.
    pub max_entries_per_msg: usize,
    /// Most payload bytes per AppendEntries.
    pub max_bytes_per_msg: usize,
    /// Where snapshot files are kept (see [`SnapshotStore::open_dir`]), typically
    /// `<data dir>/snapshots`. `None` keeps them in memory only: a restarted process
    /// cannot rebuild a state machine whose log was compacted, so set it whenever the
    /// log store is durable. Ignored by [`Sidecar::start_with_snapshots`].
    pub snapshot_dir: Option<PathBuf>,
    /// Take a snapshot once this many entries were applied since the last one
    /// (0: never by count). Default 100,000.
    pub snapshot_entries: u64,
    /// Take a snapshot once this many payload bytes were applied since the last one
    /// (0: never by size). Default 256 MiB.
    pub snapshot_bytes: u64,
    /// Entries kept in the log behind a snapshot, so that a follower lagging by less
    /// catches up from the log instead of needing the whole snapshot. Default 10,000.
    pub snapshot_keep_entries: u64,
    /// Snapshot files kept (at least 1). Default 2, so a damaged latest file can fall
    /// back to the previous one while the log still reaches back to it.
    pub snapshots_kept: usize,
    /// Size of the chunks a snapshot is streamed to a follower in. Default 1 MiB.
    pub snapshot_chunk_bytes: usize,
}

impl SidecarConfig {
    /// Defaults for node `id`.
    pub fn new(id: NodeId) -> Self {
        SidecarConfig {
            id,
            tick: Duration::from_millis(10),
            heartbeat_ticks: 5,
            election_ticks: 30,
            pre_vote: true,
            check_quorum: true,
            propose_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            queue_capacity: 65_536,
            max_batch: 4096,
            bootstrap: None,
            join: false,
            promote_max_lag: 1000,
            max_inflight_msgs: 256,
            max_entries_per_msg: 4096,
            max_bytes_per_msg: 1 << 20,
            snapshot_dir: None,
            snapshot_entries: 100_000,
            snapshot_bytes: 256 << 20,
            snapshot_keep_entries: 10_000,
            snapshots_kept: 2,
            snapshot_chunk_bytes: 1 << 20,
        }
    }

    fn core_config(&self) -> crate::core::Config {
        let mut c = crate::core::Config::new(self.id);
        c.heartbeat_ticks = self.heartbeat_ticks;
        c.election_ticks = self.election_ticks;
        c.pre_vote = self.pre_vote;
        c.check_quorum = self.check_quorum;
        c.max_inflight_msgs = self.max_inflight_msgs;
        c.max_entries_per_msg = self.max_entries_per_msg;
        c.max_bytes_per_msg = self.max_bytes_per_msg;
        // Different on every start, so two restarts do not replay the same timeouts.
        c.seed = self.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        c
    }
}

/// Errors from the sidecar handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SidecarError {
    /// This node is not the leader; nothing was proposed. Redirect to the hint.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
        /// Where that leader can be reached, from the cluster membership.
        addr: Option<NodeAddr>,
    },
    /// Leadership was lost after the command was appended: it may or may not commit.
    /// Retrying is safe only for idempotent or session-deduplicated commands.
    #[error("leadership lost before the command was applied: outcome unknown")]
    LeadershipLost,
    /// The command's log slot was taken by another leader's entry: it was not, and
    /// will never be, applied.
    #[error("the command was overwritten by a new leader and not applied")]
    NotCommitted,
    /// The wait timed out: outcome unknown.
    #[error("timed out waiting for the command to be applied: outcome unknown")]
    Timeout,
    /// A linearizable read could not be confirmed (no leader, or leadership changed).
    #[error("read not confirmed: {0}")]
    ReadFailed(&'static str),
    /// A leadership transfer is in progress or the target is invalid.
    #[error("leadership transfer refused: {0}")]
    Transfer(String),
    /// A membership change was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Another membership change is not committed yet, or a new leader has not yet
    /// committed an entry of its own term; nothing was proposed. The membership calls
    /// of [`RaftHandle`] retry this themselves until their deadline.
    #[error("a membership change is in progress (or the leader is new); retry shortly")]
    ChangeInProgress,
    /// `promote` refused a learner that has not caught up with the leader's log.
    #[error(
        "node {id} is not caught up: it has index {matched}, the leader's log ends at {last} \
         ({} entries behind, at most {max_lag} allowed); wait for it to catch up and retry",
        last.saturating_sub(*matched)
    )]
    LearnerBehind {
        /// The learner.
        id: NodeId,
        /// The highest index the leader knows it holds.
        matched: Index,
        /// The leader's last index.
        last: Index,
        /// The allowed lag ([`SidecarConfig::promote_max_lag`]).
        max_lag: u64,
    },
    /// This node was removed from the cluster: it serves nothing any more.
    #[error("this node was removed from the cluster")]
    Removed,
    /// The sidecar has stopped (shut down, or a fatal storage error).
    #[error("the raft sidecar has stopped: {0}")]
    Stopped(String),
    /// A snapshot could not be taken.
    #[error("snapshot failed: {0}")]
    Snapshot(String),
}

/// Errors starting a sidecar.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be read.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::core::ConfigError),
    /// The node has no state on disk and no bootstrap membership was given.
    #[error("node {0} has no state on disk and no bootstrap membership was configured")]
    NoMembership(NodeId),
    /// The snapshot store could not be opened or read.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The log was compacted, and no snapshot file that covers the compacted part
    /// could be loaded: the state machine cannot be rebuilt.
    #[error(
        "the raft log was compacted through index {point} but no valid snapshot at or after it \
         could be loaded ({problems})"
    )]
    NoUsableSnapshot {
        /// The log's snapshot point.
        point: Index,
        /// What was wrong with each file tried (or that there were none).
        problems: String,
    },
}
