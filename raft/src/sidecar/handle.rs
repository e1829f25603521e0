//! The application's side of the sidecar: a cheap, cloneable handle.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::SidecarError;
use crate::core::{Index, Membership, NodeAddr, NodeId, Role, Status, Term};

/// A command that was committed and applied locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Where it sits in the log.
    pub index: Index,
    /// The term of the leader that appended it.
    pub term: Term,
    /// The state machine's response.
    pub response: Bytes,
}

/// Who leads, as seen by this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The current term.
    pub term: Term,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// The leader's addresses, from the membership.
    pub addr: Option<NodeAddr>,
    /// Whether this node is the leader.
    pub is_self: bool,
}

/// What the sidecar reports about itself.
#[derive(Debug, Clone)]
pub struct SidecarStatus {
    /// The core's status (role, term, indexes, per-peer progress on the leader).
    pub core: Status,
    /// Highest index applied to the local state machine.
    pub applied: Index,
    /// Total elections this node started.
    pub elections: u64,
    /// Leader changes seen.
    pub leader_changes: u64,
    /// Log index of the configuration in force (see
    /// [`crate::core::RaftNode::membership_index`]); pending while above the commit index.
    pub membership_index: Index,
    /// This node was removed from the cluster: a committed configuration no longer
    /// lists it. It no longer campaigns and refuses proposals and reads with
    /// [`SidecarError::Removed`].
    pub removed: bool,
    /// Snapshots held, taken, sent and installed.
    pub snapshot: SnapshotStatus,
}

/// A configuration change that was committed and applied locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipChanged {
    /// Log index of the configuration entry (of the configuration already in force,
    /// when the change had been made before).
    pub index: Index,
    /// The configuration now in force.
    pub membership: Membership,
}

/// The configuration as this node sees it, and, on the leader, how far each peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipStatus {
    /// This node.
    pub id: NodeId,
    /// The configuration in force (the latest appended; it takes effect at once).
    pub membership: Membership,
    /// Log index of its configuration entry.
    pub index: Index,
    /// Not committed yet: it may still be rolled back, and no other change can start.
    pub pending: bool,
    /// This node was removed from the cluster.
    pub removed: bool,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// Whether this node leads (only the leader knows the peers' progress).
    pub is_leader: bool,
    /// This node's last log index.
    pub last_index: Index,
    /// This node's commit index.
    pub commit_index: Index,
    /// Replication progress of every other member (leader only; empty elsewhere).
    pub peers: Vec<PeerProgress>,
}

/// How far the leader knows one member to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    /// The member.
    pub id: NodeId,
    /// A voter (counts for elections and commitment) rather than a learner.
    pub voter: bool,
    /// Highest index known replicated there.
    pub matched: Index,
    /// Entries it is behind the leader's last index.
    pub lag: u64,
    /// Replication state: `probe`, `replicate` or `snapshot`.
    pub state: &'static str,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
}

/// A single-server membership change, resolved against the configuration in force
/// by the driver (so it is always proposed on top of the latest one).
#[derive(Debug, Clone)]
pub(crate) enum Reconfig {
    AddLearner(NodeId, NodeAddr),
    Promote(NodeId),
    Remove(NodeId),
}

/// Snapshot activity of one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// Index of the latest snapshot this node holds (0: none).
    pub index: Index,
    /// Index of the snapshot the state machine was restored from when the node
    /// started (0: it started from an empty state machine or from its own persisted
    /// state); the log was replayed only after this index.
    pub restored: Index,
    /// Snapshots this node took.
    pub created: u64,
    /// Snapshots streamed to followers that accepted them.
    pub sent: u64,
    /// Snapshot transfers to followers that failed (they are retried).
    pub send_failures: u64,
    /// Snapshots received from a leader and installed.
    pub installed: u64,
    /// Received snapshots refused (damaged, incomplete, or not needed).
    pub receive_failures: u64,
}

/// How long [`RaftHandle::snapshot_now`] waits: capturing is cheap but writing a large
/// image is not.
const SNAPSHOT_NOW_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) enum Request {
    Propose(Bytes, oneshot::Sender<Result<Applied, SidecarError>>),
    Read(oneshot::Sender<Result<Index, SidecarError>>),
    Transfer(NodeId, oneshot::Sender<Result<(), SidecarError>>),
    ChangeMembership(Membership, oneshot::Sender<Result<Applied, SidecarError>>),
    Reconfigure(Reconfig, oneshot::Sender<Result<MembershipChanged, SidecarError>>),
    Membership(oneshot::Sender<Result<MembershipStatus, SidecarError>>),
    SnapshotNow(oneshot::Sender<Result<Index, SidecarError>>),
    Shutdown(oneshot::Sender<()>),
}

/// The handle an application holds. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct RaftHandle {
    pub(crate) id: NodeId,
    pub(crate) tx: mpsc::Sender<Request>,
    pub(crate) leader: watch::Receiver<LeaderInfo>,
    pub(crate) status: watch::Receiver<SidecarStatus>,
    pub(crate) applied: watch::Receiver<Index>,
    pub(crate) propose_timeout: Duration,
    pub(crate) read_timeout: Duration,
}

impl RaftHandle {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Propose a command and wait until it is committed and applied locally. Fails at
    /// once with `NotLeader` on a follower; every other wait is bounded by the
    /// configured propose timeout.
    pub async fn propose(&self, command: Bytes) -> Result<Applied, SidecarError> {
        let (tx, rx) = oneshot::channel();
        self.call(Request::Propose(command, tx), rx, self.propose_timeout)
            .await
    }

    /// Wait until a read of the local state machine is linearizable: the leader
    /// confirmed its leadership with a quorum after this call began, and this node has
    /// applied everything that was committed at that point. Returns that index.
    pub async fn linearizable_read(&self) -> Result<Index, SidecarError> {
        let (tx, rx) = oneshot::channel();
        self.call(Request::Read(tx), rx, self.read_timeout).await
    }

    /// Ask the leader (this node) to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), SidecarError> {
        let (tx, rx) = oneshot::channel();
        self.call(Request::Transfer(to, tx), rx, self.propose_timeout)
            .await
    }

    /// Propose a new cluster configuration (at most one voter added or removed).
    pub async fn change_membership(&self, next: Membership) -> Result<Applied, SidecarError> {
        let (tx, rx) = oneshot::channel();
        self.call(Request::ChangeMembership(next, tx), rx, self.propose_timeout)
            .await
    }

    /// Add node `id` as a learner reachable at `addr` (its Raft address, and the client
    /// address other nodes give in redirects once it leads). It receives the log but
    /// does not vote or count for commitment until promoted. Resolves once the change
    /// is committed. Adding a learner that is already one with the same addresses
    /// succeeds without a new entry; with other addresses, its addresses are updated.
    ///
    /// Like every membership call: only the leader accepts it (`NotLeader` with a
    /// hint elsewhere); while another change is uncommitted (or the leader has not
    /// committed an entry of its term yet) it waits and retries; it is bounded by the
    /// propose timeout (`Timeout`: outcome unknown, check [`RaftHandle::membership`]).
    pub async fn add_learner(&self, id: NodeId, addr: NodeAddr) -> Result<MembershipChanged, SidecarError> {
        self.reconfigure(Reconfig::AddLearner(id, addr)).await
    }

    /// Turn learner `id` into a voter. Refused with [`SidecarError::LearnerBehind`]
    /// unless its log is within [`crate::sidecar::SidecarConfig::promote_max_lag`]
    /// entries of the leader's. A node that already votes is left as is.
    pub async fn promote(&self, id: NodeId) -> Result<MembershipChanged, SidecarError> {
        self.reconfigure(Reconfig::Promote(id)).await
    }

    /// Remove node `id` (voter or learner) from the cluster. Removing the leader itself
    /// is allowed: it keeps leading until the change commits, then hands over to an
    /// up-to-date voter and reports itself removed. A node that is not a member is
    /// left as is (so a retry after a timeout is harmless).
    pub async fn remove_node(&self, id: NodeId) -> Result<MembershipChanged, SidecarError> {
        self.reconfigure(Reconfig::Remove(id)).await
    }

    /// The configuration in force, whether it is still pending, and, on the leader,
    /// every peer's replication progress. Answered by the driver, so it reflects
    /// every call that resolved before it.
    pub async fn membership(&self) -> Result<MembershipStatus, SidecarError> {
        let (tx, rx) = oneshot::channel();
        self.call(Request::Membership(tx), rx, self.propose_timeout).await
    }

    async fn reconfigure(&self, op: Reconfig) -> Result<MembershipChanged, SidecarError> {
        /// How long to wait before asking again while another change is pending.
        const RETRY: Duration = Duration::from_millis(20);
        let deadline = tokio::time::Instant::now() + self.propose_timeout;
        loop {
            let (tx, rx) = oneshot::channel();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.call(Request::Reconfigure(op.clone(), tx), rx, left).await {
                Err(SidecarError::ChangeInProgress) if tokio::time::Instant::now() + RETRY < deadline => {
                    tokio::time::sleep(RETRY).await;
                }
                r => return r,
            }
        }
    }

    /// Take a snapshot of the state machine now (or join the one being taken), write it
    /// durably and compact the log behind it (keeping the configured tail). Returns the
    /// index the snapshot covers. Proposals keep committing meanwhile: only the capture
    /// runs on the driver. If nothing was applied since the latest snapshot, returns
    /// that snapshot's index at once.
    pub async fn snapshot_now(&self) -> Result<Index, SidecarError> {
        let (tx, rx) = oneshot::channel();
        self.call(Request::SnapshotNow(tx), rx, SNAPSHOT_NOW_TIMEOUT)
            .await
    }

    /// The latest status report (refreshed every tick and on every role change).
    pub fn status(&self) -> SidecarStatus {
        self.status.borrow().clone()
    }

    /// The current leader as this node sees it.
    pub fn leader(&self) -> LeaderInfo {
        self.leader.borrow().clone()
    }

    /// A receiver that changes whenever the leader or term changes.
    pub fn watch_leader(&self) -> watch::Receiver<LeaderInfo> {
        self.leader.clone()
    }

    /// Highest index applied to the local state machine.
    pub fn applied_index(&self) -> Index {
        *self.applied.borrow()
    }

    /// Whether this node currently believes it is the leader.
    pub fn is_leader(&self) -> bool {
        self.status.borrow().core.role == Role::Leader
    }

    /// Stop the driver after it finishes the batch in progress (everything
    /// acknowledged is already durable). Returns once it has stopped.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn call<T>(
        &self,
        req: Request,
        rx: oneshot::Receiver<Result<T, SidecarError>>,
        timeout: Duration,
    ) -> Result<T, SidecarError> {
        let deadline = tokio::time::Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, self.tx.send(req)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(SidecarError::Stopped("driver gone".into())),
            Err(_) => return Err(SidecarError::Timeout),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SidecarError::Stopped("driver dropped the request".into())),
            Err(_) => Err(SidecarError::Timeout),
        }
    }
}
