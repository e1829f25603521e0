//! The Raft node: roles, elections, replication, commitment, reads and leadership
//! transfer. Everything a reader needs to check against the paper is in this file;
//! it never blocks, never reads a clock and never does IO.
//!
//! The driver's loop is: feed inputs (`tick`, `step`, `propose`, `read_index`,
//! `transfer_leader`, `propose_membership`, `report_snapshot`), take a [`Ready`], do
//! what it says in the documented order, then call [`RaftNode::advance`]. Between
//! readies it may call [`RaftNode::compact`] once its state machine holds a snapshot.
//!
//! Snapshots move out of band: the core never sees their bytes. A leader whose
//! follower needs compacted entries emits `MessageBody::InstallSnapshot { meta }`; the
//! driver streams its latest state machine image (at `meta.index` or later) to that
//! follower and reports the outcome with [`RaftNode::report_snapshot`]. On the
//! follower, the driver steps `InstallSnapshot` into the core only once the data has
//! arrived; if the core adopts it, the next [`Ready::snapshot`] says so.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::config::{Config, ConfigError, Rng};
use super::log::RaftLog;
use super::message::{AppendEntries, AppendResponse, Message, MessageBody};
use super::progress::{Progress, ProgressState};
use super::read_index::{ReadOrigin, ReadQueue};
use super::types::{Entry, EntryPayload, HardState, Index, Membership, NodeId, SnapshotMeta, Term};

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking whether it could win an election, without raising its term.
    PreCandidate,
    /// Campaigning in a new term.
    Candidate,
    /// Leads the cluster in its term.
    Leader,
}

/// Volatile state the application may want to observe; reported in a [`Ready`] when it
/// changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftState {
    /// This node's role.
    pub role: Role,
    /// The leader this node knows of in `term`.
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: Term,
}

/// The outcome of a linearizable read request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's context id given to `read_index`.
    pub ctx: u64,
    /// Once the local state machine has applied this index, the read may be served.
    /// `None` when the read could not be confirmed (leadership changed): retry.
    pub index: Option<Index>,
}

/// A batch of work for the driver. Perform it in this order:
///
/// 1. send `messages` (may happen before or in parallel with step 2);
/// 2. durably write `hard_state` and `entries` (entries replace any stored suffix
///    starting at the first entry's index) and, if present, `snapshot` (as the new
///    snapshot point, together with the state machine image it describes, in one
///    atomic write: storage applies the snapshot point before the entries);
/// 3. only then send `persisted_messages` (votes and acknowledgements, which promise
///    that what they acknowledge is on disk);
/// 4. if `snapshot` is present, restore the state machine from the image received
///    for it; then apply `committed` in order (they follow the snapshot), then serve
///    `reads` whose index has been applied;
/// 5. call [`RaftNode::advance`].
///
/// Between taking a ready and `advance`, the driver may keep stepping the core (new
/// messages, proposals, ticks) while the write is in flight, sending what
/// [`RaftNode::take_messages`] returns as it goes; it takes the next ready only after
/// `advance`. Whatever those inputs produce that depends on durability waits for that
/// next ready. The one exception is `InstallSnapshot`: step it only when no write is
/// in flight, since adopting a snapshot replaces the log that write belongs to.
#[derive(Debug, Default)]
pub struct Ready {
    /// Role, leader or term changed since the previous ready.
    pub soft_state: Option<SoftState>,
    /// Hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// Entries to persist.
    pub entries: Vec<Entry>,
    /// Messages that may be sent at once: the leader's appends and heartbeats, whose
    /// term is already durable. Sending them while the leader's own write is in
    /// progress is what lets the leader's fsync overlap replication.
    pub messages: Vec<Message>,
    /// Messages to send only after `hard_state` and `entries` are durable.
    pub persisted_messages: Vec<Message>,
    /// Committed entries to apply, in order.
    pub committed: Vec<Entry>,
    /// Reads now safe to serve once their index is applied.
    pub reads: Vec<ReadState>,
    /// A snapshot the leader sent that this node adopted (the driver stepped an
    /// `InstallSnapshot` with this meta after receiving its data): persist it as the
    /// snapshot point together with the image, restore the state machine from the image
    /// before applying `committed`. The log now starts right after `snapshot.index`
    /// (entries after it are kept only if the log held `snapshot.index` with
    /// `snapshot.term`, Raft section 7). A received image for which no `snapshot`
    /// appears (stale, or the log already held it) is discarded.
    pub snapshot: Option<SnapshotMeta>,
}

impl Ready {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && self.hard_state.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed.is_empty()
            && self.reads.is_empty()
            && self.snapshot.is_none()
    }
}

/// Why a proposal was refused. The proposal had no effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is who this node believes leads.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// Leadership is being handed over; retry on the new leader.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// A membership change is still uncommitted; only one may be pending at a time.
    #[error("a membership change is already in progress")]
    MembershipChangePending,
    /// The requested membership change is not allowed.
    #[error("invalid membership change: {0}")]
    InvalidMembership(&'static str),
}

/// Why a read could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No leader is known to confirm the read with.
    #[error("no leader known")]
    NoLeader,
}

/// Why a leadership transfer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Only the leader can hand over leadership.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// The target is not a voter of the current configuration.
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
}

/// What a leader knows about one follower, for status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The follower.
    pub id: NodeId,
    /// Highest index known replicated there.
    pub matched: Index,
    /// Next index to send.
    pub next: Index,
    /// `probe`, `replicate` or `snapshot`.
    pub state: &'static str,
    /// Appends in flight.
    pub inflight: usize,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// A learner rather than a voter.
    pub learner: bool,
}

/// A snapshot of a node's state for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// Whom it voted for in `term`.
    pub vote: Option<NodeId>,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// First index held in the log.
    pub first_index: Index,
    /// Last index in the log.
    pub last_index: Index,
    /// Committed index.
    pub commit: Index,
    /// Highest index handed out to apply.
    pub applied: Index,
    /// Last index known durable locally.
    pub persisted: Index,
    /// The configuration in force.
    pub membership: Membership,
    /// Per-follower progress (leaders only).
    pub peers: Vec<PeerStatus>,
}

/// What a node restarts from: what storage returned, plus how far the application's
/// state machine had durably applied (so committed entries are not handed out twice).
#[derive(Debug, Clone, Default)]
pub struct Restore {
    /// The durable hard state.
    pub hard_state: HardState,
    /// The snapshot (or bootstrap) point and its configuration.
    pub snapshot: SnapshotMeta,
    /// The durable entries after the snapshot point.
    pub entries: Vec<Entry>,
    /// The index the state machine has durably applied (0 if it keeps nothing).
    pub applied: Index,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Campaign {
    PreElection,
    Election,
    Transfer,
}

/// One Raft node: the pure state machine.
#[derive(Debug)]
pub struct RaftNode {
    cfg: Config,
    id: NodeId,
    term: Term,
    vote: Option<NodeId>,
    leader: Option<NodeId>,
    role: Role,
    log: RaftLog,
    /// The configuration in force (the latest appended, committed or not).
    membership: Membership,
    /// Configurations appended after the snapshot point, to roll back on truncation.
    configs: Vec<(Index, Membership)>,
    snapshot_membership: Membership,
    progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_timeout: u32,
    rng: Rng,
    transfer: Option<(NodeId, u32)>,
    reads: ReadQueue,
    need_broadcast: bool,
    committed_in_term: bool,
    msgs: Vec<Message>,
    persisted_msgs: Vec<Message>,
    read_states: Vec<ReadState>,
    pending_snapshot: Option<SnapshotMeta>,
    prev_hard: HardState,
    prev_soft: SoftState,
    /// The highest term known durable (restored, or written by a ready the driver
    /// has since acknowledged with `advance`).
    durable_term: Term,
    /// The term of the hard state handed out by the latest ready, until `advance`.
    term_in_flight: Option<Term>,
}

impl RaftNode {
    /// Create a node from what it had persisted (all defaults for a new node, with the
    /// bootstrap membership as `restore.snapshot.membership`).
    pub fn new(cfg: Config, restore: Restore) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let Restore {
            hard_state,
            snapshot,
            entries,
            applied,
        } = restore;
        let mut log = RaftLog::new(snapshot.index, snapshot.term, entries);
        log.commit_to(hard_state.commit.max(snapshot.index));
        // Entries up to `applied` are already reflected in the state machine; they
        // are committed by definition and are not handed out again.
        log.commit_to(applied);
        log.set_applied(applied);
        let mut node = RaftNode {
            id: cfg.id,
            rng: Rng::new(cfg.seed),
            term: hard_state.term,
            vote: hard_state.vote,
            leader: None,
            role: Role::Follower,
            log,
            membership: snapshot.membership.clone(),
            configs: Vec::new(),
            snapshot_membership: snapshot.membership,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_timeout: 0,
            transfer: None,
            reads: ReadQueue::default(),
            need_broadcast: false,
            committed_in_term: false,
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            read_states: Vec::new(),
            pending_snapshot: None,
            prev_hard: hard_state,
            durable_term: hard_state.term,
            term_in_flight: None,
            prev_soft: SoftState {
                role: Role::Follower,
                leader: None,
                term: hard_state.term,
            },
            cfg,
        };
        node.scan_configs(node.log.first_index());
        node.reset_election_timer();
        Ok(node)
    }

    // ------------------------------------------------------------------ inputs

    /// Advance logical time by one tick.
    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
    }

    /// Propose an application command. On the leader, returns the index and term the
    /// entry got; it is committed later (or lost if leadership changes first).
    pub fn propose(&mut self, data: Bytes) -> Result<(Index, Term), ProposeError> {
        self.check_can_propose()?;
        Ok(self.append_local(EntryPayload::Normal(data)))
    }

    /// Propose a new configuration. Only one change may be uncommitted at a time, and
    /// it may change the voter set by at most one node (single-server changes, thesis
    /// 4.1), which keeps every pair of consecutive majorities overlapping.
    pub fn propose_membership(&mut self, next: Membership) -> Result<(Index, Term), ProposeError> {
        self.check_can_propose()?;
        if self
            .configs
            .last()
            .is_some_and(|(idx, _)| *idx > self.log.committed())
        {
            return Err(ProposeError::MembershipChangePending);
        }
        if !self.committed_in_term {
            // The thesis' fix for single-server changes: a leader may change the
            // configuration only after committing an entry of its own term.
            return Err(ProposeError::MembershipChangePending);
        }
        if !next.outgoing.is_empty() {
            return Err(ProposeError::InvalidMembership(
                "joint configurations are not proposed directly",
            ));
        }
        if next.voters.is_empty() {
            return Err(ProposeError::InvalidMembership(
                "a configuration needs at least one voter",
            ));
        }
        if next.voters.iter().any(|id| next.learners.contains(id)) {
            return Err(ProposeError::InvalidMembership(
                "a node cannot be voter and learner at once",
            ));
        }
        let diff = next.voters.symmetric_difference(&self.membership.voters).count();
        if diff > 1 {
            return Err(ProposeError::InvalidMembership(
                "change at most one voter at a time",
            ));
        }
        Ok(self.append_local(EntryPayload::Membership(next)))
    }

    /// Ask for a linearizable read. The answer arrives as a [`ReadState`] with the same
    /// `ctx` in a later [`Ready`].
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ReadError> {
        match self.role {
            Role::Leader => {
                self.leader_read(ReadOrigin::Local(ctx));
                Ok(())
            }
            _ => match self.leader {
                Some(leader) => {
                    self.send(leader, MessageBody::ReadIndex { ctx });
                    Ok(())
                }
                None => Err(ReadError::NoLeader),
            },
        }
    }

    /// Hand leadership to `to`: bring it up to date, then tell it to campaign at once.
    /// Proposals are refused while the transfer runs; it is abandoned after an
    /// election timeout.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader { leader: self.leader });
        }
        if to == self.id {
            return Ok(());
        }
        if !self.membership.is_voter(to) || !self.progress.contains_key(&to) {
            return Err(TransferError::NotAVoter(to));
        }
        self.transfer = Some((to, 0));
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send(to, MessageBody::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    /// The driver reports how streaming a snapshot to `to` ended, after the core asked
    /// for one with an `InstallSnapshot` message. `ok` means `to` received the data
    /// (and steps it into its core, which acknowledges the install with an
    /// `AppendResponse`): replication resumes right after the snapshot once that
    /// acknowledgement arrives. Not `ok` means the transfer failed: the leader asks for
    /// another one after it next hears from `to`. A leader that gets no report within
    /// an election timeout presumes the transfer lost and also asks again. Reports for
    /// a follower that is not waiting for a snapshot are ignored.
    pub fn report_snapshot(&mut self, to: NodeId, ok: bool) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.snapshot_done(ok);
        }
    }

    /// Process a message from a peer.
    pub fn step(&mut self, msg: Message) {
        if msg.to != self.id || msg.from == self.id || msg.from == 0 {
            return;
        }
        if msg.term > self.term {
            let leader_traffic = matches!(
                msg.body,
                MessageBody::Append(_) | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. }
            );
            if !leader_traffic && self.in_lease() && !self.membership.contains(msg.from) {
                // A node outside our configuration (typically a removed server that
                // kept campaigning on its own) does not get to move the term of a node
                // that hears from a live leader, or of that leader. Leader traffic is
                // always heard: a leader may be in a configuration we have not seen yet.
                return;
            }
            match &msg.body {
                // A follower that heard from a live leader within the election timeout
                // ignores disruptive campaigns (thesis 4.2.3), unless the leader itself
                // ordered the campaign (leadership transfer).
                MessageBody::Vote { transfer, .. } if !transfer && self.in_lease() => return,
                // A pre-vote is granted only by a node that has not heard from a leader
                // for an election timeout (thesis 9.6), with or without check-quorum.
                MessageBody::PreVote { .. }
                    if self.leader.is_some() && self.election_elapsed < self.cfg.election_ticks =>
                {
                    return
                }
                // Pre-votes carry a prospective term and must not move ours.
                MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { granted: true } => {}

                MessageBody::Append(_)
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(msg.term, Some(msg.from));
                }
                _ => self.become_follower(msg.term, None),
            }
        } else if msg.term < self.term {
            match msg.body {
                MessageBody::Append(_) | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // A stale leader (e.g. back from a partition) learns our term and
                    // steps down instead of waiting for its check-quorum timeout.
                    self.send(
                        msg.from,
                        MessageBody::AppendResponse(AppendResponse {
                            index: 0,
                            reject: true,
                            hint_index: 0,
                            hint_term: 0,
                        }),
                    );
                }
                MessageBody::PreVote { .. } => {
                    self.send(msg.from, MessageBody::PreVoteResponse { granted: false });
                }
                // A candidate behind on terms learns ours from the refusal (paper figure
                // 2). Without it, a candidate that nobody else campaigns to (its
                // configuration is newer than theirs, so it is not among their voters)
                // can keep campaigning in stale terms forever while the others cannot win
                // without it.
                MessageBody::Vote { .. } => {
                    self.send(msg.from, MessageBody::VoteResponse { granted: false });
                }
                _ => {}
            }
            return;
        }
        self.step_current(msg);
    }

    // ----------------------------------------------------------------- outputs

    /// Whether [`RaftNode::ready`] would return anything.
    pub fn has_ready(&self) -> bool {
        let hard = self.hard_state();
        self.soft_state() != self.prev_soft
            || hard.term != self.prev_hard.term
            || hard.vote != self.prev_hard.vote
            || self.log.has_unstable()
            || !self.msgs.is_empty()
            || !self.persisted_msgs.is_empty()
            || self.log.has_committed_to_apply()
            || !self.read_states.is_empty()
            || self.need_broadcast
            || self.pending_snapshot.is_some()
            || (self.role == Role::Leader && self.reads.needs_round())
    }

    /// Collect the work accumulated since the previous ready.
    pub fn ready(&mut self) -> Ready {
        self.flush_broadcasts();
        let soft = self.soft_state();
        let entries = self.log.take_unstable();
        let hard = self.hard_state();
        // Term and vote must be durable before anything is sent; the commit index
        // need not be (it is recomputed after a restart), so a commit-only change
        // costs no fsync of its own: it rides along with the next write.
        let must_sync = hard.term != self.prev_hard.term || hard.vote != self.prev_hard.vote;
        let write_hard = must_sync || (!entries.is_empty() && hard != self.prev_hard);
        let rd = Ready {
            soft_state: (soft != self.prev_soft).then_some(soft),
            hard_state: write_hard.then_some(hard),
            entries,
            messages: std::mem::take(&mut self.msgs),
            persisted_messages: std::mem::take(&mut self.persisted_msgs),
            committed: self.log.take_committed(),
            reads: std::mem::take(&mut self.read_states),
            snapshot: self.pending_snapshot.take(),
        };
        self.prev_soft = soft;
        if write_hard {
            self.prev_hard = hard;
            self.term_in_flight = Some(hard.term);
        }
        rd
    }

    /// The messages that may leave before any write ([`Ready::messages`]: appends,
    /// heartbeats, `TimeoutNow`, read forwarding, snapshot offers), taken without
    /// taking a ready.
    ///
    /// This is for a driver that keeps stepping the core while the previous ready's
    /// write is in flight (between [`RaftNode::ready`] and [`RaftNode::advance`]): the
    /// leader's appends of commands proposed meanwhile leave at once instead of after
    /// that write. Everything else (the hard state, new entries, votes and
    /// acknowledgements, committed entries) waits for the next ready, which the
    /// driver takes only after `advance`.
    pub fn take_messages(&mut self) -> Vec<Message> {
        self.flush_broadcasts();
        std::mem::take(&mut self.msgs)
    }

    /// What may be applied and answered while a write is in flight (between
    /// [`RaftNode::ready`] and [`RaftNode::advance`]): committed entries that are
    /// already durable on this node (up to the smaller of the commit index and the
    /// persisted one, so nothing is applied ahead of the local log) and reads now safe
    /// to serve once their index is applied.
    ///
    /// The driver must have applied the `committed` entries of every ready it took
    /// before applying these (they come after them). Nothing is handed out while an
    /// adopted snapshot waits for the next ready: the state machine must be restored
    /// from it first.
    pub fn take_applicable(&mut self) -> (Vec<Entry>, Vec<ReadState>) {
        if self.pending_snapshot.is_some() {
            return (Vec::new(), Vec::new());
        }
        (
            self.log.take_committed_durable(),
            std::mem::take(&mut self.read_states),
        )
    }

    /// The last log index known durable on this node (what the driver reported with
    /// [`RaftNode::advance`]; a write in flight is not included).
    pub fn persisted_index(&self) -> Index {
        self.log.persisted()
    }

    /// A leader's pending read-confirmation round and deferred appends, turned into
    /// messages.
    fn flush_broadcasts(&mut self) {
        if self.role == Role::Leader {
            if let Some(round) = self.reads.start_round() {
                self.broadcast_heartbeat(round);
                self.check_reads();
            }
            if std::mem::take(&mut self.need_broadcast) {
                self.broadcast_append();
            }
        } else {
            self.need_broadcast = false;
        }
    }

    /// The driver has done everything the latest ready asked: what it handed out for
    /// persistence is durable.
    pub fn advance(&mut self) {
        self.log.persisted_in_flight();
        if let Some(t) = self.term_in_flight.take() {
            self.durable_term = self.durable_term.max(t);
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// Discard log entries up to `index` once the application holds a snapshot that
    /// covers them (its state machine image is at `index` or later). Only applied and
    /// durable entries can be compacted. Returns the new snapshot point (with the
    /// configuration in force there); the driver persists it as `WriteBatch::snapshot`,
    /// which purges the stored entries up to it. `None`: nothing to do (`index` is at or
    /// before the current point, or not yet applied and durable).
    ///
    /// The driver chooses `index`, and so how long a tail of entries stays behind its
    /// snapshot: compacting to `applied - tail` lets a follower that lags by less than
    /// `tail` entries catch up from the log instead of needing a whole snapshot. A
    /// leader that needs to send a snapshot asks for one at its snapshot point; the
    /// driver may send any image it holds at that index or later, with that image's
    /// own meta (from [`RaftNode::snapshot_meta`]).
    pub fn compact(&mut self, index: Index) -> Option<SnapshotMeta> {
        let term = self.log.term(index)?;
        if index <= self.log.snapshot_point().0 || index > self.log.applied().min(self.log.persisted()) {
            return None;
        }
        let membership = self.membership_at(index);
        self.log.compact_to(index);
        self.configs.retain(|(i, _)| *i > index);
        self.snapshot_membership = membership.clone();
        Some(SnapshotMeta {
            index,
            term,
            membership,
        })
    }

    /// The meta a state machine image taken at `index` must carry: the term of the
    /// entry there and the configuration in force. `None` unless `index` is between
    /// the snapshot point and the applied index (only applied state can be captured).
    pub fn snapshot_meta(&self, index: Index) -> Option<SnapshotMeta> {
        if index < self.log.snapshot_point().0 || index > self.log.applied() {
            return None;
        }
        Some(SnapshotMeta {
            index,
            term: self.log.term(index)?,
            membership: self.membership_at(index),
        })
    }

    // --------------------------------------------------------------- queries

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The leader known in the current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The configuration in force.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The log index of the configuration in force: the index of its configuration
    /// entry, or the snapshot point's index when it comes from the snapshot (or the
    /// bootstrap). While this is above [`RaftNode::commit_index`] the change is still
    /// pending: it may yet be rolled back, and no other change may be proposed.
    pub fn membership_index(&self) -> Index {
        self.configs
            .last()
            .map_or(self.log.snapshot_point().0, |(index, _)| *index)
    }

    /// The configuration in force at the commit index: the latest one that can no
    /// longer be rolled back.
    pub fn committed_membership(&self) -> Membership {
        self.membership_at(self.log.committed())
    }

    /// The committed index.
    pub fn commit_index(&self) -> Index {
        self.log.committed()
    }

    /// The last log index.
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }

    /// The entry at `index`, if held in memory.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// Term of the entry at `index`, if known.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }

    /// The durable state as the core sees it now.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }

    /// The volatile state as the core sees it now.
    pub fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
            term: self.term,
        }
    }

    /// Everything an operator may want to see.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            commit: self.log.committed(),
            applied: self.log.applied(),
            persisted: self.log.persisted(),
            membership: self.membership.clone(),
            peers: self
                .progress
                .iter()
                .map(|(&id, p)| PeerStatus {
                    id,
                    matched: p.matched,
                    next: p.next,
                    state: match p.state {
                        ProgressState::Probe => "probe",
                        ProgressState::Replicate => "replicate",
                        ProgressState::Snapshot(_) => "snapshot",
                    },
                    inflight: p.inflight_count(),
                    recent_active: p.recent_active,
                    learner: p.learner,
                })
                .collect(),
        }
    }

    // ------------------------------------------------------------ internals

    /// The configuration in force at `index` (at or after the snapshot point).
    fn membership_at(&self, index: Index) -> Membership {
        self.configs
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or_else(|| self.snapshot_membership.clone(), |(_, m)| m.clone())
    }

    fn in_lease(&self) -> bool {
        self.cfg.check_quorum && self.leader.is_some() && self.election_elapsed < self.cfg.election_ticks
    }

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if !self.membership.is_voter(self.id) {
            // This leader appended a configuration that removes it: it steps down as
            // soon as that commits, and what it accepted meanwhile could be lost with
            // it. New commands wait for the next leader.
            return Err(ProposeError::TransferInProgress);
        }
        Ok(())
    }

    fn append_local(&mut self, payload: EntryPayload) -> (Index, Term) {
        let index = self.log.last_index() + 1;
        let is_config = matches!(payload, EntryPayload::Membership(_));
        self.log.push(Entry {
            term: self.term,
            index,
            payload,
        });
        if is_config {
            self.scan_configs(index);
        }
        self.need_broadcast = true;
        (index, self.term)
    }

    /// Queue a message; leader traffic may go out before the local write, everything
    /// else waits for it.
    fn send(&mut self, to: NodeId, body: MessageBody) {
        let early = matches!(
            body,
            MessageBody::Append(_)
                | MessageBody::Heartbeat { .. }
                | MessageBody::TimeoutNow
                | MessageBody::ReadIndex { .. }
                | MessageBody::ReadIndexResponse { .. }
                | MessageBody::InstallSnapshot { .. }
        );
        let msg = Message {
            from: self.id,
            to,
            term: self.term,
            body,
        };
        // Nothing leaves in a term that is not yet durable here. A leader normally
        // made its term durable before asking for votes, but a single-voter cluster
        // wins at once: its appends to learners must wait for the write of its new
        // term, or after a crash it could win that same term again and send a
        // different entry with the same index and term.
        if early && self.term <= self.durable_term {
            self.msgs.push(msg);
        } else {
            self.persisted_msgs.push(msg);
        }
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_timeout = self
            .rng
            .range(self.cfg.election_ticks, 2 * self.cfg.election_ticks);
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.randomized_timeout {
            self.reset_election_timer();
            if self.membership.voters.contains(&self.id) || self.membership.outgoing.contains(&self.id) {
                let kind = if self.cfg.pre_vote {
                    Campaign::PreElection
                } else {
                    Campaign::Election
                };
                self.campaign(kind);
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let id = self.id;
                let progress = &self.progress;
                let active = self
                    .membership
                    .has_quorum(|p| p == id || progress.get(&p).is_some_and(|pr| pr.recent_active));
                for pr in self.progress.values_mut() {
                    pr.recent_active = false;
                }
                if !active {
                    self.become_follower(self.term, None);
                    return;
                }
            }
        }
        for pr in self.progress.values_mut() {
            if let ProgressState::Snapshot(_) = pr.state {
                // No outcome reported for an election timeout: presume the transfer
                // lost; the next heartbeat reply asks for a new one.
                pr.snapshot_ticks += 1;
                if pr.snapshot_ticks >= self.cfg.election_ticks {
                    pr.snapshot_done(false);
                }
            }
        }
        if let Some((_, elapsed)) = self.transfer.as_mut() {
            *elapsed += 1;
            if *elapsed >= self.cfg.election_ticks {
                // The target did not take over in time: resume normal service.
                self.transfer = None;
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat(self.reads.round());
        }
    }

    fn campaign(&mut self, kind: Campaign) {
        self.votes.clear();
        let (term, body_for) = match kind {
            Campaign::PreElection => {
                self.role = Role::PreCandidate;
                self.leader = None;
                (self.term + 1, true)
            }
            Campaign::Election | Campaign::Transfer => {
                self.become_candidate();
                (self.term, false)
            }
        };
        self.votes.insert(self.id, true);
        if self.membership.has_quorum(|id| id == self.id) {
            // A single-voter cluster wins at once.
            match kind {
                Campaign::PreElection => self.campaign(Campaign::Election),
                _ => self.become_leader(),
            }
            return;
        }
        let last_index = self.log.last_index();
        let last_term = self.log.last_term();
        let voters: Vec<NodeId> = self
            .membership
            .voters
            .union(&self.membership.outgoing)
            .copied()
            .collect();
        for id in voters.into_iter().filter(|&id| id != self.id) {
            let body = if body_for {
                MessageBody::PreVote {
                    last_index,
                    last_term,
                }
            } else {
                MessageBody::Vote {
                    last_index,
                    last_term,
                    transfer: kind == Campaign::Transfer,
                }
            };
            let msg = Message {
                from: self.id,
                to: id,
                term,
                body,
            };
            // Vote requests wait for the new term and self-vote to be durable.
            self.persisted_msgs.push(msg);
        }
    }

    fn become_candidate(&mut self) {
        self.reset_leader_state();
        self.term += 1;
        self.vote = Some(self.id);
        self.leader = None;
        self.role = Role::Candidate;
        self.reset_election_timer();
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.reset_leader_state();
        if term != self.term {
            self.term = term;
            self.vote = None;
        }
        self.leader = leader;
        self.role = Role::Follower;
        self.reset_election_timer();
    }

    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.reset_election_timer();
        self.committed_in_term = false;
        let last = self.log.last_index();
        self.progress = self
            .membership
            .members()
            .into_iter()
            .filter(|&id| id != self.id)
            .map(|id| (id, Progress::new(last, self.membership.learners.contains(&id))))
            .collect();
        for pr in self.progress.values_mut() {
            // A new leader assumes everyone is alive for its first check-quorum round.
            pr.recent_active = true;
        }
        // The no-op lets the leader commit everything before it (paper 5.4.2) and
        // is the entry ReadIndex waits for.
        self.append_local(EntryPayload::Noop);
    }

    /// Leaving the leader role: reads in confirmation fail, progress is forgotten.
    fn reset_leader_state(&mut self) {
        for origin in self.reads.drain_all() {
            self.answer_read(origin, None);
        }
        self.reads = ReadQueue::default();
        self.progress.clear();
        self.transfer = None;
        self.need_broadcast = false;
        self.committed_in_term = false;
    }

    fn step_current(&mut self, msg: Message) {
        let from = msg.from;
        match msg.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            } => {
                // msg.term > self.term here means a prospective term; a pre-vote for
                // our own term or lower is refused.
                let granted = msg.term > self.term && self.log.is_up_to_date(last_index, last_term);
                let term = if granted { msg.term } else { self.term };
                self.persisted_msgs.push(Message {
                    from: self.id,
                    to: from,
                    term,
                    body: MessageBody::PreVoteResponse { granted },
                });
            }
            MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => {
                let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
                let granted = can_vote && self.log.is_up_to_date(last_index, last_term);
                if granted {
                    self.vote = Some(from);
                    self.election_elapsed = 0;
                }
                self.send(from, MessageBody::VoteResponse { granted });
            }
            MessageBody::PreVoteResponse { granted } => {
                if self.role == Role::PreCandidate && (!granted || msg.term == self.term + 1) {
                    self.tally(from, granted);
                }
            }
            MessageBody::VoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.tally(from, granted);
                }
            }
            MessageBody::Append(ae) => {
                if self.role != Role::Leader {
                    self.follow(from);
                    self.handle_append(from, ae);
                }
            }
            MessageBody::Heartbeat { commit, round } => {
                if self.role != Role::Leader {
                    self.follow(from);
                    self.log.commit_to(commit);
                    self.send(from, MessageBody::HeartbeatResponse { round });
                }
            }
            MessageBody::InstallSnapshot { meta } => {
                if self.role != Role::Leader {
                    self.follow(from);
                    self.handle_snapshot(from, meta);
                }
            }
            MessageBody::TimeoutNow => {
                if self.role != Role::Leader && self.membership.is_voter(self.id) {
                    self.campaign(Campaign::Transfer);
                }
            }
            MessageBody::AppendResponse(resp) => {
                if self.role == Role::Leader {
                    self.handle_append_response(from, resp);
                }
            }
            MessageBody::HeartbeatResponse { round } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(from, round);
                }
            }
            MessageBody::ReadIndex { ctx } => {
                if self.role == Role::Leader && self.membership.contains(from) {
                    self.leader_read(ReadOrigin::Remote(from, ctx));
                } else {
                    self.send(from, MessageBody::ReadIndexResponse { ctx, index: None });
                }
            }
            MessageBody::ReadIndexResponse { ctx, index } => {
                if self.role != Role::Leader {
                    self.read_states.push(ReadState { ctx, index });
                }
            }
        }
    }

    /// Accept `from` as the leader of the current term.
    fn follow(&mut self, from: NodeId) {
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(self.term, Some(from));
        }
        self.election_elapsed = 0;
    }

    fn tally(&mut self, from: NodeId, granted: bool) {
        self.votes.insert(from, granted);
        let votes = &self.votes;
        let won = self.membership.has_quorum(|id| votes.get(&id) == Some(&true));
        let lost = !self.membership.has_quorum(|id| votes.get(&id) != Some(&false));
        if won {
            match self.role {
                Role::PreCandidate => self.campaign(Campaign::Election),
                Role::Candidate => self.become_leader(),
                _ => {}
            }
        } else if lost {
            self.become_follower(self.term, None);
        }
    }

    fn handle_append(&mut self, from: NodeId, ae: AppendEntries) {
        let contiguous = ae
            .entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.index == ae.prev_index + 1 + i as Index && e.term <= self.term);
        if !contiguous {
            return;
        }
        if ae.prev_index < self.log.committed() {
            // Everything up to our commit index matches any leader's log; acknowledge
            // it so the leader can resume from there.
            let committed = self.log.committed();
            let tail: Vec<Entry> = ae.entries.into_iter().filter(|e| e.index > committed).collect();
            let (prev, prev_term) = (committed, self.log.term(committed).unwrap_or(0));
            return self.handle_append(
                from,
                AppendEntries {
                    prev_index: prev,
                    prev_term,
                    entries: tail,
                    commit: ae.commit,
                },
            );
        }
        if self.log.matches(ae.prev_index, ae.prev_term) {
            let last_new = ae.prev_index + ae.entries.len() as Index;
            let first_new = ae.prev_index + 1;
            let has_config = ae
                .entries
                .iter()
                .any(|e| matches!(e.payload, EntryPayload::Membership(_)));
            match self.log.append_from_leader(ae.entries) {
                Ok(truncated) => {
                    if truncated.is_some() || has_config {
                        self.rollback_configs(truncated.unwrap_or(first_new));
                        self.scan_configs(truncated.unwrap_or(first_new));
                    }
                }
                Err(_) => return,
            }
            self.log.commit_to(ae.commit.min(last_new));
            self.send(
                from,
                MessageBody::AppendResponse(AppendResponse {
                    index: last_new,
                    reject: false,
                    hint_index: 0,
                    hint_term: 0,
                }),
            );
        } else {
            let (hint_index, hint_term) = self
                .log
                .find_conflict_by_term(ae.prev_index.min(self.log.last_index()), ae.prev_term);
            self.send(
                from,
                MessageBody::AppendResponse(AppendResponse {
                    index: ae.prev_index,
                    reject: true,
                    hint_index,
                    hint_term,
                }),
            );
        }
    }

    fn handle_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        // The snapshot data itself has already been received and verified by the
        // driver; here the core adopts it if it moves this node forward. A stale or
        // duplicate one is answered with the commit index, which every leader's log
        // matches, so the leader resumes from there.
        if meta.index <= self.log.committed() {
            let index = self.log.committed();
            self.send(
                from,
                MessageBody::AppendResponse(AppendResponse {
                    index,
                    reject: false,
                    hint_index: 0,
                    hint_term: 0,
                }),
            );
            return;
        }
        if self.log.matches(meta.index, meta.term) {
            // We already hold the entry, and so (log matching) everything before it:
            // keep the log and fast-forward the commit index; the entries are applied
            // from the log and the received image is not needed.
            self.log.commit_to(meta.index);
        } else {
            // Raft section 7: the snapshot contradicts or outruns our log; discard it
            // all and start over after the snapshot point.
            self.log.restore_snapshot(meta.index, meta.term);
            self.snapshot_membership = meta.membership.clone();
            self.configs.clear();
            if self.membership != meta.membership {
                self.membership = meta.membership.clone();
                self.on_membership_change();
            }
            self.pending_snapshot = Some(meta.clone());
        }
        self.send(
            from,
            MessageBody::AppendResponse(AppendResponse {
                index: meta.index,
                reject: false,
                hint_index: 0,
                hint_term: 0,
            }),
        );
    }

    fn handle_append_response(&mut self, from: NodeId, resp: AppendResponse) {
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if resp.reject {
            let hint = if resp.hint_term > 0 {
                self.log.find_conflict_by_term(resp.hint_index, resp.hint_term).0
            } else {
                resp.hint_index
            };
            if pr.reject(resp.index, hint) {
                self.send_append(from, true);
            }
            return;
        }
        let was_probe = pr.state == ProgressState::Probe;
        if !pr.ack(resp.index.min(last_index)) {
            if pr.state == ProgressState::Probe && pr.matched + 1 == pr.next {
                // Acks at the current match (e.g. for an empty probe) still let the
                // probe continue.
                pr.probe_sent = false;
            }
            self.send_more(from);
            return;
        }
        if was_probe || matches!(pr.state, ProgressState::Snapshot(i) if pr.matched >= i) {
            pr.become_replicate();
        }
        if self.maybe_commit() {
            self.need_broadcast = true;
        }
        if let Some((target, _)) = self.transfer {
            if target == from && self.progress.get(&from).is_some_and(|p| p.matched == last_index) {
                self.send(from, MessageBody::TimeoutNow);
            }
        }
        self.send_more(from);
        // A follower that just caught up would otherwise learn the commit index only
        // with the next heartbeat: tell it now.
        let committed = self.log.committed();
        if let Some(pr) = self.progress.get(&from) {
            if pr.commit_sent < pr.matched.min(committed) {
                self.send_append(from, true);
            }
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, round: u64) {
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        pr.acked_round = pr.acked_round.max(round);
        let behind = pr.matched < self.log.last_index();
        if behind {
            pr.stalled_heartbeats += 1;
            if pr.state == ProgressState::Replicate && pr.stalled_heartbeats >= 2 {
                // The follower is alive but its match has not moved for two heartbeat
                // rounds: appends in the window were lost. Resume from what it has.
                pr.become_probe();
                pr.stalled_heartbeats = 0;
                self.send_append(from, true);
            } else {
                // A probing follower gets its probe again, empty if need be: its
                // `next` may be past our last entry (a new leader's or new member's
                // progress, a probe after a stall or after a snapshot), and if that
                // probe or its answer was lost, only an empty append finds where the
                // logs agree. Without it the follower is never caught up.
                let probing = pr.state == ProgressState::Probe;
                self.send_append(from, probing);
            }
        } else {
            pr.stalled_heartbeats = 0;
        }
        self.check_reads();
    }

    fn check_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let id = self.id;
        let own = self.reads.round();
        let progress = &self.progress;
        let confirmed = self.membership.committed_index(|p| {
            if p == id {
                own
            } else {
                progress.get(&p).map_or(0, |pr| pr.acked_round)
            }
        });
        let mut released = Vec::new();
        self.reads.confirm(confirmed, &mut released);
        for (origin, index) in released {
            self.answer_read(origin, Some(index));
        }
    }

    fn leader_read(&mut self, origin: ReadOrigin) {
        if self.transfer.is_some() {
            return self.answer_read(origin, None);
        }
        if self.committed_in_term {
            self.reads.add(origin, self.log.committed());
        } else {
            self.reads.wait_for_commit(origin);
        }
    }

    fn answer_read(&mut self, origin: ReadOrigin, index: Option<Index>) {
        match origin {
            ReadOrigin::Local(ctx) => self.read_states.push(ReadState { ctx, index }),
            ReadOrigin::Remote(to, ctx) => self.send(to, MessageBody::ReadIndexResponse { ctx, index }),
        }
    }

    /// Advance the commit index to what a quorum holds, counting only entries of the
    /// current term (paper 5.4.2, the Figure 8 rule).
    fn maybe_commit(&mut self) -> bool {
        let id = self.id;
        let persisted = self.log.persisted();
        let progress = &self.progress;
        let quorum_index = self.membership.committed_index(|p| {
            if p == id {
                persisted
            } else {
                progress.get(&p).map_or(0, |pr| pr.matched)
            }
        });
        if quorum_index <= self.log.committed() || self.log.term(quorum_index) != Some(self.term) {
            return false;
        }
        self.log.commit_to(quorum_index);
        self.need_broadcast = true;
        if !self.committed_in_term {
            self.committed_in_term = true;
            self.reads.commit_known(self.log.committed());
            if self.progress.is_empty() {
                self.check_reads();
            }
        }
        self.on_commit_config();
        true
    }

    /// A leader that committed a configuration without itself steps down, handing
    /// over to a voter that holds its whole log (if any) so the cluster need not wait
    /// an election timeout for a new leader.
    fn on_commit_config(&mut self) {
        if self.role == Role::Leader
            && !self.membership.is_voter(self.id)
            && self
                .configs
                .last()
                .is_some_and(|(idx, _)| *idx <= self.log.committed())
        {
            let last = self.log.last_index();
            let successor = self
                .progress
                .iter()
                .filter(|(&id, p)| self.membership.is_voter(id) && p.matched == last)
                .map(|(&id, _)| id)
                .next();
            if let Some(to) = successor {
                self.send(to, MessageBody::TimeoutNow);
            }
            self.become_follower(self.term, None);
        }
    }

    fn broadcast_append(&mut self) {
        let committed = self.log.committed();
        let last = self.log.last_index();
        let peers: Vec<NodeId> = self
            .progress
            .iter()
            // A streaming follower that has been sent every entry and the current
            // commit index (typically by the append that answered its ack) would only
            // get an empty duplicate; probing followers always get their probe.
            .filter(|(_, pr)| {
                pr.state != ProgressState::Replicate || pr.next <= last || pr.commit_sent < committed
            })
            .map(|(&id, _)| id)
            .collect();
        for id in peers {
            self.send_append(id, true);
        }
    }

    fn broadcast_heartbeat(&mut self, round: u64) {
        let commit = self.log.committed();
        let targets: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .map(|(&id, p)| (id, p.matched.min(commit)))
            .collect();
        for (id, commit) in targets {
            if let Some(pr) = self.progress.get_mut(&id) {
                pr.commit_sent = pr.commit_sent.max(commit);
            }
            self.send(id, MessageBody::Heartbeat { commit, round });
        }
    }

    /// Send as many appends to `to` as its window allows.
    fn send_more(&mut self, to: NodeId) {
        while self.send_append(to, false) {}
    }

    /// Send one append to `to` from its `next` index. With `allow_empty`, an append
    /// with no entries is sent too (to probe, or to carry a new commit index).
    /// Returns whether a message carrying entries was sent.
    fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let commit = self.log.committed();
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&to) else {
            return false;
        };
        if pr.is_paused(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes) {
            return false;
        }
        let prev_index = pr.next - 1;
        let Some(prev_term) = self.log.term(prev_index) else {
            // The follower needs entries we compacted away: send a snapshot.
            let (index, term) = self.log.snapshot_point();
            pr.become_snapshot(index);
            let meta = SnapshotMeta {
                index,
                term,
                membership: self.snapshot_membership.clone(),
            };
            self.send(to, MessageBody::InstallSnapshot { meta });
            return false;
        };
        let entries = self.log.slice(
            pr.next,
            last,
            self.cfg.max_entries_per_msg,
            self.cfg.max_bytes_per_msg,
        );
        if entries.is_empty() && !allow_empty {
            return false;
        }
        let bytes: usize = entries.iter().map(|e| e.payload_len() + 24).sum();
        pr.commit_sent = commit;
        let last_sent = entries.last().map(|e| e.index);
        let entries = entries.to_vec();
        pr.sent(last_sent, bytes);
        let has_entries = last_sent.is_some();
        self.send(
            to,
            MessageBody::Append(AppendEntries {
                prev_index,
                prev_term,
                entries,
                commit,
            }),
        );
        has_entries
    }

    /// Re-derive the configuration in force from the snapshot's and every config
    /// entry at or after `from`.
    fn scan_configs(&mut self, from: Index) {
        let found: Vec<(Index, Membership)> = self
            .log
            .entries_from(from)
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some((e.index, m.clone())),
                _ => None,
            })
            .collect();
        for (idx, m) in found {
            if self.configs.last().is_none_or(|(i, _)| *i < idx) {
                self.configs.push((idx, m));
            }
        }
        let next = self
            .configs
            .last()
            .map_or_else(|| self.snapshot_membership.clone(), |(_, m)| m.clone());
        if next != self.membership {
            self.membership = next;
            self.on_membership_change();
        }
    }

    fn rollback_configs(&mut self, from: Index) {
        self.configs.retain(|(idx, _)| *idx < from);
    }

    fn on_membership_change(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        let members = self.membership.members();
        self.progress.retain(|id, _| members.contains(id));
        for id in members {
            if id == self.id {
                continue;
            }
            let learner = self.membership.learners.contains(&id);
            let pr = self.progress.entry(id).or_insert_with(|| {
                let mut p = Progress::new(last, learner);
                p.recent_active = true;
                p
            });
            pr.learner = learner;
        }
    }
}
