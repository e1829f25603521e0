//! The driver task: feeds the core, performs its readies in the contracted order, and
//! resolves the application's waiting calls. Snapshot work lives in [`snapshot`].

mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info};

use super::handle::{
    Applied, LeaderInfo, MembershipChanged, MembershipStatus, PeerProgress, RaftHandle, Reconfig, Request,
    SidecarStatus,
};
use super::{SidecarConfig, SidecarError, SnapshotStore, StartError, StateMachine};
use crate::core::{
    Entry, EntryPayload, Index, Membership, Message, NodeAddr, NodeId, ProposeError, RaftNode, ReadState,
    Ready, Restore, Role, SnapshotMeta, SoftState, Term,
};
use crate::storage::{LogStore, StorageError, WriteBatch};
use crate::transport::Transport;

type ProposeReply = oneshot::Sender<Result<Applied, SidecarError>>;
type ReadReply = oneshot::Sender<Result<Index, SidecarError>>;

/// Entry point for starting a sidecar.
pub struct Sidecar;

impl Sidecar {
    /// Load the node's state from `store`, bootstrap it if it is new, and start the
    /// driver task on the current tokio runtime. Inbound peer messages are read from
    /// `inbound`; outbound ones go to `transport`. Snapshot files are kept in
    /// `cfg.snapshot_dir` (in memory if unset).
    pub async fn start<S, T, M>(
        cfg: SidecarConfig,
        store: S,
        transport: Arc<T>,
        inbound: mpsc::Receiver<Message>,
        state_machine: M,
    ) -> Result<RaftHandle, StartError>
    where
        S: LogStore,
        T: Transport + ?Sized,
        M: StateMachine,
    {
        let snapshots = snapshot::open_store(&cfg).await?;
        Self::start_with_snapshots(cfg, store, snapshots, transport, inbound, state_machine).await
    }

    /// Like [`Sidecar::start`], with the snapshot store given (for example an
    /// in-memory store a test keeps across restarts). The state machine is restored
    /// from the newest valid snapshot file and only the log after it is replayed.
    pub async fn start_with_snapshots<S, T, M>(
        cfg: SidecarConfig,
        store: S,
        snapshots: SnapshotStore,
        transport: Arc<T>,
        inbound: mpsc::Receiver<Message>,
        state_machine: M,
    ) -> Result<RaftHandle, StartError>
    where
        S: LogStore,
        T: Transport + ?Sized,
        M: StateMachine,
    {
        // A durable log must not be compacted behind snapshots a restart would lose.
        let may_compact = snapshots.is_durable() || !store.is_durable();
        let (storage, initial) = StorageThread::spawn(cfg.id, store).await?;
        let mut initial = initial;
        let is_new = initial.entries.is_empty()
            && initial.snapshot.index == 0
            && initial.snapshot.membership.voters.is_empty();
        if is_new && cfg.join {
            // No configuration at all: not a voter, so it never campaigns; it waits for a
            // leader to add it and send the log, configuration included.
            info!(
                node = cfg.id,
                "empty store: waiting for a leader to add this node"
            );
        } else if is_new {
            let membership = cfg.bootstrap.clone().ok_or(StartError::NoMembership(cfg.id))?;
            let snapshot = SnapshotMeta {
                index: 0,
                term: 0,
                membership,
            };
            storage
                .write(WriteBatch {
                    snapshot: Some(snapshot.clone()),
                    ..Default::default()
                })
                .await?;
            initial.snapshot = snapshot;
        }
        let durable = state_machine.durable_index();
        let (state_machine, durable, loaded) =
            snapshot::restore_at_start(cfg.id, &snapshots, &initial, state_machine, durable).await?;
        let snap = snapshot::Snapshots::start(
            cfg.id,
            snapshots,
            loaded,
            transport.take_snapshot_inbox(),
            may_compact,
        );
        let core = RaftNode::new(
            cfg.core_config(),
            Restore {
                hard_state: initial.hard_state,
                snapshot: initial.snapshot,
                entries: initial.entries,
                applied: durable,
            },
        )?;
        info!(
            node = cfg.id,
            term = core.term(),
            last_index = core.last_index(),
            commit = core.commit_index(),
            "raft sidecar starting"
        );
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let leader_tx = watch::Sender::new(LeaderInfo {
            term: core.term(),
            ..Default::default()
        });
        let status_tx = watch::Sender::new(SidecarStatus {
            core: core.status(),
            applied: durable,
            elections: 0,
            leader_changes: 0,
            membership_index: core.membership_index(),
            removed: false,
            snapshot: snap.status,
        });
        // A restarted node that had a configuration was a member at some point (a new
        // one learns its first configuration from the leader).
        let was_member = !core.membership().voters.is_empty();
        let applied_tx = watch::Sender::new(durable);
        let handle = RaftHandle {
            id: cfg.id,
            tx,
            leader: leader_tx.subscribe(),
            status: status_tx.subscribe(),
            applied: applied_tx.subscribe(),
            propose_timeout: cfg.propose_timeout,
            read_timeout: cfg.read_timeout,
        };
        let mut driver = Driver {
            applied: durable,
            cfg,
            core,
            storage,
            transport,
            inbound,
            requests: rx,
            sm: state_machine,
            proposals: BTreeMap::new(),
            reads: HashMap::new(),
            reads_waiting_apply: BTreeMap::new(),
            next_read_ctx: 1,
            leader_tx,
            status_tx,
            applied_tx,
            last_soft: None,
            elections: 0,
            leader_changes: 0,
            ticks: 0,
            outbox: BTreeMap::new(),
            was_member,
            removed: false,
            synced: None,
            peers: BTreeMap::new(),
            snap,
            inflight: None,
        };
        driver.sync_membership();
        tokio::spawn(driver.run());
        Ok(handle)
    }
}

struct Driver<T: Transport + ?Sized, M: StateMachine> {
    cfg: SidecarConfig,
    core: RaftNode,
    storage: StorageThread,
    transport: Arc<T>,
    inbound: mpsc::Receiver<Message>,
    requests: mpsc::Receiver<Request>,
    sm: M,
    /// Proposals waiting to be applied: index -> (term it was appended in, reply).
    proposals: BTreeMap<Index, (Term, ProposeReply)>,
    /// Reads waiting for their ReadIndex confirmation, by context id.
    reads: HashMap<u64, ReadReply>,
    /// Confirmed reads waiting for the local state machine to catch up.
    reads_waiting_apply: BTreeMap<Index, Vec<ReadReply>>,
    next_read_ctx: u64,
    applied: Index,
    leader_tx: watch::Sender<LeaderInfo>,
    status_tx: watch::Sender<SidecarStatus>,
    applied_tx: watch::Sender<Index>,
    last_soft: Option<SoftState>,
    elections: u64,
    leader_changes: u64,
    ticks: u64,
    outbox: BTreeMap<NodeId, Vec<Message>>,
    /// This node appeared in a configuration (so leaving one means it was removed).
    was_member: bool,
    /// A committed configuration no longer lists this node.
    removed: bool,
    /// What `sync_membership` last acted on: (configuration index, committed, leader).
    synced: Option<(Index, bool, Option<NodeId>)>,
    /// The peers the transport was told about, with the addresses it was given.
    peers: BTreeMap<NodeId, NodeAddr>,
    snap: snapshot::Snapshots,
    /// The write of the latest ready, while the storage thread performs it. The core
    /// keeps being stepped meanwhile (see [`Driver::during_write`]); the next ready is
    /// taken only once this one is done.
    inflight: Option<InFlight>,
}

/// A ready whose write is in flight, and what waits for that write.
struct InFlight {
    done: oneshot::Receiver<Result<(), StorageError>>,
    /// Votes and acknowledgements: they promise the write is durable.
    persisted_messages: Vec<Message>,
    /// Committed entries handed out by the ready that include entries of this very
    /// write (a follower learning a commit index with the entries): applied after it.
    committed: Vec<Entry>,
}

/// What a membership request came to.
enum Reconfigured {
    /// The configuration already is what was asked for.
    Already(MembershipChanged),
    /// A configuration entry was appended at `index` in `term`.
    Proposed {
        index: Index,
        term: Term,
        next: Membership,
    },
}

enum Flow {
    Continue,
    Shutdown(oneshot::Sender<()>),
}

impl<T: Transport + ?Sized, M: StateMachine> Driver<T, M> {
    async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.cfg.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inbound_open = true;
        let stop: Option<oneshot::Sender<()>> = loop {
            let mut flow = Flow::Continue;
            let mut snapshot_event = None;
            let mut write_done = None;
            let writing = self.inflight.is_some();
            tokio::select! {
                biased;
                r = wait_write(&mut self.inflight), if writing => write_done = Some(r),
                _ = ticker.tick() => self.on_tick(),
                ev = self.snap.events.recv() => snapshot_event = ev,
                msg = self.inbound.recv(), if inbound_open => match msg {
                    Some(m) => self.step_peer(m),
                    None => inbound_open = false,
                },
                req = self.requests.recv() => match req {
                    Some(r) => flow = self.on_request(r),
                    None => break None,
                },
            }
            if let Some(r) = write_done {
                if let Err(e) = self.finish_write(r) {
                    self.storage_failed(&e);
                    break None;
                }
            }
            if let Some(ev) = snapshot_event {
                // Snapshot work changes the stored log and the core's: between writes.
                let r = match self.finish_inflight().await {
                    Ok(()) => self.on_snapshot_event(ev).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    self.storage_failed(&e);
                    break None;
                }
            }
            // Take whatever else is already queued, so one ready (one fsync) covers
            // many inputs: this is the group commit.
            let mut budget = self.cfg.max_batch;
            while budget > 0 && matches!(flow, Flow::Continue) {
                budget -= 1;
                if let Ok(m) = self.inbound.try_recv() {
                    self.step_peer(m);
                } else if let Ok(r) = self.requests.try_recv() {
                    flow = self.on_request(r);
                } else {
                    break;
                }
            }
            let r = if matches!(flow, Flow::Shutdown(_)) {
                self.flush().await
            } else if self.inflight.is_some() {
                self.during_write();
                Ok(())
            } else {
                self.start_readies().await
            };
            if let Err(e) = r {
                self.storage_failed(&e);
                break None;
            }
            self.sync_membership();
            self.after_ready();
            if let Flow::Shutdown(tx) = flow {
                break Some(tx);
            }
        };
        info!(node = self.cfg.id, "raft sidecar stopped");
        self.fail_all(SidecarError::Stopped("shut down".into()));
        self.storage.close();
        if let Some(tx) = stop {
            let _ = tx.send(());
        }
    }

    fn storage_failed(&mut self, e: &StorageError) {
        error!(node = self.cfg.id, error = %e, "raft storage failed; stopping the sidecar");
        self.fail_all(SidecarError::Stopped(format!("storage failure: {e}")));
    }

    fn on_tick(&mut self) {
        self.core.tick();
        self.ticks += 1;
        self.publish_status();
        if self.ticks.is_multiple_of(100) {
            // Forget callers that gave up waiting.
            self.proposals.retain(|_, (_, tx)| !tx.is_closed());
            self.reads.retain(|_, tx| !tx.is_closed());
        }
    }

    fn on_request(&mut self, req: Request) -> Flow {
        match req {
            Request::Propose(data, reply) => {
                metrics::counter!("raft_proposals_total").increment(1);
                match self.core.propose(data) {
                    Ok((index, term)) => {
                        self.proposals.insert(index, (term, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.propose_error(e)));
                    }
                }
            }
            Request::ChangeMembership(next, reply) => match self.core.propose_membership(next) {
                Ok((index, term)) => {
                    self.proposals.insert(index, (term, reply));
                }
                Err(ProposeError::NotLeader { leader }) => {
                    let _ = reply.send(Err(self.not_leader(leader)));
                }
                Err(e) => {
                    let _ = reply.send(Err(SidecarError::Membership(e.to_string())));
                }
            },
            Request::Read(reply) => {
                let ctx = self.next_read_ctx;
                self.next_read_ctx += 1;
                match self.core.read_index(ctx) {
                    Ok(()) => {
                        self.reads.insert(ctx, reply);
                    }
                    Err(_) if self.removed => {
                        let _ = reply.send(Err(SidecarError::Removed));
                    }
                    Err(_) => {
                        let _ = reply.send(Err(SidecarError::ReadFailed("no leader known")));
                    }
                }
            }
            Request::Reconfigure(op, reply) => match self.reconfigure(op) {
                Ok(Reconfigured::Already(done)) => {
                    let _ = reply.send(Ok(done));
                }
                Ok(Reconfigured::Proposed { index, term, next }) => {
                    // Resolved like a proposal, when the entry is applied with its term.
                    let (tx, rx) = oneshot::channel();
                    self.proposals.insert(index, (term, tx));
                    tokio::spawn(async move {
                        let r = rx.await.unwrap_or_else(|_| {
                            Err(SidecarError::Stopped("driver dropped the request".into()))
                        });
                        let _ = reply.send(r.map(|a| MembershipChanged {
                            index: a.index,
                            membership: next,
                        }));
                    });
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Request::Membership(reply) => {
                let _ = reply.send(Ok(self.membership_status()));
            }
            Request::Transfer(to, reply) => {
                let r = self
                    .core
                    .transfer_leader(to)
                    .map_err(|e| SidecarError::Transfer(e.to_string()));
                let _ = reply.send(r);
            }
            Request::SnapshotNow(reply) => self.snapshot_now(reply),
            Request::Shutdown(tx) => return Flow::Shutdown(tx),
        }
        Flow::Continue
    }

    fn not_leader(&self, leader: Option<NodeId>) -> SidecarError {
        if self.removed {
            return SidecarError::Removed;
        }
        SidecarError::NotLeader {
            leader,
            addr: leader.and_then(|l| self.core.membership().addrs.get(&l).cloned()),
        }
    }

    fn propose_error(&self, e: ProposeError) -> SidecarError {
        match e {
            ProposeError::NotLeader { leader } => self.not_leader(leader),
            ProposeError::TransferInProgress => {
                SidecarError::Transfer("leadership transfer in progress".into())
            }
            other => SidecarError::Membership(other.to_string()),
        }
    }

    /// Takes readies until one needs a write (which is then left in flight) or the
    /// core has nothing left to do.
    ///
    /// Per ready: the soft state is handled and the messages that may leave at once
    /// go (the leader's appends: its fsync overlaps the round trip); the hard state
    /// and entries go to the storage thread; committed entries that are already
    /// durable here are applied at once, the others after the write; votes and
    /// acknowledgements leave only after the write ([`Driver::finish_write`]). A
    /// ready that installs a received snapshot is performed whole, in place.
    async fn start_readies(&mut self) -> Result<(), StorageError> {
        while self.inflight.is_none() && self.core.has_ready() {
            let rd = self.core.ready();
            if rd.snapshot.is_some() {
                self.perform(rd).await?;
                continue;
            }
            let Ready {
                soft_state,
                hard_state,
                entries,
                messages,
                persisted_messages,
                committed,
                reads,
                snapshot: _,
            } = rd;
            if let Some(ss) = soft_state {
                self.on_soft_state(ss);
            }
            self.send(messages);
            if hard_state.is_none() && entries.is_empty() {
                self.send(persisted_messages);
                self.apply_committed(committed);
                for r in reads {
                    self.on_read_state(r);
                }
                self.core.advance();
                continue;
            }
            let done = self.storage.submit(WriteBatch {
                hard_state,
                entries,
                snapshot: None,
            })?;
            let durable = self.core.persisted_index();
            let committed = if committed.last().is_none_or(|e| e.index <= durable) {
                self.apply_committed(committed);
                Vec::new()
            } else {
                committed
            };
            for r in reads {
                self.on_read_state(r);
            }
            self.inflight = Some(InFlight {
                done,
                persisted_messages,
                committed,
            });
        }
        Ok(())
    }

    /// While a write is in flight: send what may leave before it (appends of commands
    /// proposed meanwhile, heartbeats, read rounds), and apply what has committed and
    /// is durable here, so a leader answers its clients without waiting for a write
    /// that holds later entries.
    fn during_write(&mut self) {
        let msgs = self.core.take_messages();
        self.send(msgs);
        if self.inflight.as_ref().is_some_and(|w| w.committed.is_empty()) {
            let (committed, reads) = self.core.take_applicable();
            self.apply_committed(committed);
            for r in reads {
                self.on_read_state(r);
            }
        }
    }

    /// The write in flight finished: its acknowledgements may go, what waited for it
    /// is applied, and the core learns that it is durable.
    fn finish_write(&mut self, r: Result<(), StorageError>) -> Result<(), StorageError> {
        let Some(w) = self.inflight.take() else {
            return Ok(());
        };
        r?;
        self.send(w.persisted_messages);
        self.apply_committed(w.committed);
        self.core.advance();
        Ok(())
    }

    /// Waits for the write in flight, if any, and finishes it.
    async fn finish_inflight(&mut self) -> Result<(), StorageError> {
        if self.inflight.is_some() {
            let r = wait_write(&mut self.inflight).await;
            self.finish_write(r)?;
        }
        Ok(())
    }

    /// Everything the core has handed out or still has is made durable and done
    /// (graceful shutdown).
    async fn flush(&mut self) -> Result<(), StorageError> {
        loop {
            self.finish_inflight().await?;
            if !self.core.has_ready() {
                return Ok(());
            }
            self.start_readies().await?;
        }
    }

    fn apply_committed(&mut self, committed: Vec<Entry>) {
        if !committed.is_empty() {
            self.note_applied(&committed);
            self.apply(committed);
        }
    }

    async fn perform(&mut self, rd: Ready) -> Result<(), StorageError> {
        let Ready {
            soft_state,
            hard_state,
            entries,
            messages,
            persisted_messages,
            committed,
            reads,
            snapshot,
        } = rd;
        if let Some(ss) = soft_state {
            self.on_soft_state(ss);
        }
        // 1. The leader's appends go out before its own write: the fsync overlaps the
        //    network round trip.
        self.send(messages);
        // 2. Make the batch durable (one transaction, one fsync). An adopted snapshot's
        //    file is published first: the snapshot point must never be durable
        //    without the image it stands for.
        let installed = match &snapshot {
            Some(meta) => Some(self.install_received(meta).await?),
            None => None,
        };
        if hard_state.is_some() || !entries.is_empty() || snapshot.is_some() {
            self.storage
                .write(WriteBatch {
                    hard_state,
                    entries,
                    snapshot: snapshot.clone(),
                })
                .await?;
        }
        if let Some(info) = installed {
            self.restore_installed(info).await?;
        }
        // 3. Votes and acknowledgements promise durability: only now.
        self.send(persisted_messages);
        // 4. Apply, then answer reads.
        self.apply_committed(committed);
        for r in reads {
            self.on_read_state(r);
        }
        // 5. Tell the core it is all durable.
        self.core.advance();
        Ok(())
    }

    fn send(&mut self, mut msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        self.take_snapshot_requests(&mut msgs);
        for m in msgs {
            self.outbox.entry(m.to).or_default().push(m);
        }
        for (to, batch) in std::mem::take(&mut self.outbox) {
            self.transport.send(to, batch);
        }
    }

    fn apply(&mut self, committed: Vec<Entry>) {
        let started = Instant::now();
        let n = committed.len();
        for e in committed {
            let response = match &e.payload {
                EntryPayload::Normal(data) => self.sm.apply(e.index, data),
                EntryPayload::Noop | EntryPayload::Membership(_) => Bytes::new(),
            };
            if let Some((term, reply)) = self.proposals.remove(&e.index) {
                let r = if term == e.term {
                    Ok(Applied {
                        index: e.index,
                        term: e.term,
                        response,
                    })
                } else {
                    Err(SidecarError::NotCommitted)
                };
                let _ = reply.send(r);
            }
            self.applied = e.index;
        }
        metrics::counter!("raft_applied_total").increment(n as u64);
        metrics::histogram!("raft_apply_batch_seconds").record(started.elapsed().as_secs_f64());
        self.applied_tx.send_replace(self.applied);
        // Reads whose index is now applied can be served.
        let later = self.reads_waiting_apply.split_off(&(self.applied + 1));
        for (_, replies) in std::mem::replace(&mut self.reads_waiting_apply, later) {
            for r in replies {
                let _ = r.send(Ok(self.applied));
            }
        }
    }

    fn on_read_state(&mut self, rs: ReadState) {
        let Some(reply) = self.reads.remove(&rs.ctx) else {
            return;
        };
        match rs.index {
            Some(index) if index <= self.applied => {
                let _ = reply.send(Ok(index));
            }
            Some(index) => self.reads_waiting_apply.entry(index).or_default().push(reply),
            None => {
                let _ = reply.send(Err(SidecarError::ReadFailed("leadership changed")));
            }
        }
    }

    fn on_soft_state(&mut self, ss: SoftState) {
        let prev = self.last_soft.replace(ss);
        let was_leader = prev.is_some_and(|p| p.role == Role::Leader);
        if ss.role == Role::Candidate && prev.is_none_or(|p| p.role != Role::Candidate || p.term != ss.term) {
            self.elections += 1;
            metrics::counter!("raft_elections_total").increment(1);
        }
        let leader_changed = prev.is_none_or(|p| p.leader != ss.leader || p.term != ss.term);
        if leader_changed {
            if ss.leader.is_some() {
                self.leader_changes += 1;
                metrics::counter!("raft_leader_changes_total").increment(1);
            }
            info!(node = self.cfg.id, term = ss.term, leader = ?ss.leader, role = ?ss.role, "leader changed");
            // Reads forwarded to the old leader will not be answered.
            for (_, r) in self.reads.drain() {
                let _ = r.send(Err(SidecarError::ReadFailed("leadership changed")));
            }
        }
        if was_leader && ss.role != Role::Leader {
            debug!(
                node = self.cfg.id,
                waiting = self.proposals.len(),
                "lost leadership"
            );
            // Entries already committed are applied (with their term) in this very
            // ready, and resolve then: a leader that removed itself steps down as its
            // change commits, and that change did succeed.
            let uncommitted = self.proposals.split_off(&(self.core.commit_index() + 1));
            for (_, (_, r)) in uncommitted {
                let _ = r.send(Err(SidecarError::LeadershipLost));
            }
        }
        metrics::gauge!("raft_term").set(ss.term as f64);
        metrics::gauge!("raft_is_leader").set(if ss.role == Role::Leader { 1.0 } else { 0.0 });
        self.leader_tx.send_replace(LeaderInfo {
            term: ss.term,
            leader: ss.leader,
            addr: ss
                .leader
                .and_then(|l| self.core.membership().addrs.get(&l).cloned()),
            is_self: ss.role == Role::Leader,
        });
        self.publish_status();
    }

    fn publish_status(&mut self) {
        let core = self.core.status();
        metrics::gauge!("raft_commit_index").set(core.commit as f64);
        metrics::gauge!("raft_applied_index").set(self.applied as f64);
        self.status_tx.send_replace(SidecarStatus {
            core,
            applied: self.applied,
            elections: self.elections,
            leader_changes: self.leader_changes,
            membership_index: self.core.membership_index(),
            removed: self.removed,
            snapshot: self.snap.status,
        });
    }

    /// Works out the configuration `op` asks for, from the one in force.
    fn reconfigure(&mut self, op: Reconfig) -> Result<Reconfigured, SidecarError> {
        if self.core.role() != Role::Leader {
            return Err(self.not_leader(self.core.leader()));
        }
        let index = self.core.membership_index();
        if index > self.core.commit_index() {
            return Err(SidecarError::ChangeInProgress);
        }
        let current = self.core.membership();
        let already = || {
            Ok(Reconfigured::Already(MembershipChanged {
                index,
                membership: current.clone(),
            }))
        };
        let mut next = current.clone();
        match op {
            Reconfig::AddLearner(id, addr) => {
                if id == 0 {
                    return Err(SidecarError::Membership("node id 0 is reserved".into()));
                }
                if current.is_voter(id) {
                    return Err(SidecarError::Membership(format!("node {id} is already a voter")));
                }
                if current.learners.contains(&id) && current.addrs.get(&id) == Some(&addr) {
                    return already();
                }
                next.learners.insert(id);
                next.addrs.insert(id, addr);
            }
            Reconfig::Promote(id) => {
                if current.is_voter(id) {
                    return already();
                }
                if !current.learners.contains(&id) {
                    return Err(SidecarError::Membership(format!(
                        "node {id} is not a learner of the cluster; add it as a learner first"
                    )));
                }
                let last = self.core.last_index();
                let matched = self
                    .core
                    .status()
                    .peers
                    .iter()
                    .find(|p| p.id == id)
                    .map_or(0, |p| p.matched);
                let max_lag = self.cfg.promote_max_lag;
                if last.saturating_sub(matched) > max_lag {
                    return Err(SidecarError::LearnerBehind {
                        id,
                        matched,
                        last,
                        max_lag,
                    });
                }
                next.learners.remove(&id);
                next.voters.insert(id);
            }
            Reconfig::Remove(id) => {
                if !current.contains(id) {
                    return already();
                }
                next.voters.remove(&id);
                next.learners.remove(&id);
                next.addrs.remove(&id);
            }
        }
        match self.core.propose_membership(next.clone()) {
            Ok((index, term)) => {
                info!(node = self.cfg.id, index, voters = ?next.voters, learners = ?next.learners,
                    "membership change proposed");
                Ok(Reconfigured::Proposed { index, term, next })
            }
            Err(ProposeError::NotLeader { leader }) => Err(self.not_leader(leader)),
            Err(ProposeError::TransferInProgress) => {
                Err(SidecarError::Transfer("leadership transfer in progress".into()))
            }
            Err(ProposeError::MembershipChangePending) => Err(SidecarError::ChangeInProgress),
            Err(ProposeError::InvalidMembership(why)) => Err(SidecarError::Membership(why.into())),
        }
    }

    fn membership_status(&self) -> MembershipStatus {
        let status = self.core.status();
        let index = self.core.membership_index();
        let peers = status
            .peers
            .iter()
            .map(|p| PeerProgress {
                id: p.id,
                voter: !p.learner,
                matched: p.matched,
                lag: status.last_index.saturating_sub(p.matched),
                state: p.state,
                recent_active: p.recent_active,
            })
            .collect();
        MembershipStatus {
            id: self.cfg.id,
            pending: index > status.commit,
            index,
            removed: self.removed,
            leader: status.leader,
            is_leader: status.role == Role::Leader,
            last_index: status.last_index,
            commit_index: status.commit,
            membership: status.membership,
            peers,
        }
    }

    /// After every batch: notice whether this node was removed, and keep the
    /// transport's address book in step with the configuration. Cheap unless the
    /// configuration, its commitment or the leader changed.
    ///
    /// Peers of the configuration in force are added (a leader replicates to a new
    /// learner as soon as it appends it). A peer is removed only once no committed
    /// configuration lists it either, and never while it is the leader this node
    /// follows: followers append a change that removes the leader before it commits,
    /// and the leader needs their acknowledgements (and may send `TimeoutNow`) to
    /// finish. A node that has no configuration yet (joining) keeps the peers it was
    /// started with.
    fn sync_membership(&mut self) {
        let index = self.core.membership_index();
        let committed = index <= self.core.commit_index();
        let leader = self.core.leader();
        let key = (index, committed, leader);
        if self.synced == Some(key) {
            return;
        }
        self.synced = Some(key);
        let me = self.cfg.id;
        let current = self.core.membership().clone();
        if current.contains(me) {
            self.was_member = true;
            if self.removed {
                info!(node = me, "this node is a member again");
            }
            self.removed = false;
        } else if committed && self.was_member && !current.voters.is_empty() && !self.removed {
            info!(
                node = me,
                index, "this node was removed from the cluster; it no longer takes part"
            );
            self.removed = true;
        }
        let settled: Membership = if committed {
            current.clone()
        } else {
            self.core.committed_membership()
        };
        if current.voters.is_empty() && settled.voters.is_empty() {
            self.publish_status();
            return;
        }
        let mut want: BTreeMap<NodeId, NodeAddr> = BTreeMap::new();
        for m in [&settled, &current] {
            for id in m.members().into_iter().filter(|&id| id != me) {
                match m.addrs.get(&id) {
                    Some(a) => {
                        want.insert(id, a.clone());
                    }
                    None => {
                        want.entry(id).or_default();
                    }
                }
            }
        }
        if let Some(l) = leader.filter(|&l| l != me && !want.contains_key(&l)) {
            if let Some(a) = self.peers.get(&l) {
                want.insert(l, a.clone());
            }
        }
        for (id, addr) in &want {
            if self.peers.get(id) != Some(addr) {
                debug!(node = me, peer = id, raft = %addr.raft, "telling the transport about a peer");
                self.transport.set_peer(*id, addr);
            }
        }
        for id in self.peers.keys().filter(|id| !want.contains_key(id)) {
            info!(
                node = me,
                peer = id,
                "dropping a peer that left the configuration"
            );
            self.transport.remove_peer(*id);
        }
        self.peers = want;
        self.publish_status();
    }

    fn fail_all(&mut self, err: SidecarError) {
        for (_, (_, r)) in std::mem::take(&mut self.proposals) {
            let _ = r.send(Err(err.clone()));
        }
        for (_, r) in self.reads.drain() {
            let _ = r.send(Err(err.clone()));
        }
        for (_, rs) in std::mem::take(&mut self.reads_waiting_apply) {
            for r in rs {
                let _ = r.send(Err(err.clone()));
            }
        }
        self.snap.fail_all(&err);
        self.requests.close();
        while let Ok(req) = self.requests.try_recv() {
            match req {
                Request::Propose(_, r) | Request::ChangeMembership(_, r) => {
                    let _ = r.send(Err(err.clone()));
                }
                Request::Reconfigure(_, r) => {
                    let _ = r.send(Err(err.clone()));
                }
                Request::Membership(r) => {
                    let _ = r.send(Err(err.clone()));
                }
                Request::Read(r) => {
                    let _ = r.send(Err(err.clone()));
                }
                Request::Transfer(_, r) => {
                    let _ = r.send(Err(err.clone()));
                }
                Request::SnapshotNow(r) => {
                    let _ = r.send(Err(err.clone()));
                }
                Request::Shutdown(r) => {
                    let _ = r.send(());
                }
            }
        }
    }
}

/// The outcome of the write in flight (never resolves when there is none).
async fn wait_write(inflight: &mut Option<InFlight>) -> Result<(), StorageError> {
    match inflight {
        Some(w) => (&mut w.done)
            .await
            .unwrap_or_else(|_| Err(StorageError::Io("storage thread is gone".into()))),
        None => std::future::pending().await,
    }
}

type StorageJob = (WriteBatch, oneshot::Sender<Result<(), StorageError>>);

/// The log store lives on its own OS thread: its calls block on fsync and must never
/// run on the async workers.
struct StorageThread {
    tx: Option<std::sync::mpsc::Sender<StorageJob>>,
}

impl StorageThread {
    async fn spawn<S: LogStore>(
        id: NodeId,
        mut store: S,
    ) -> Result<(Self, crate::storage::InitialState), StorageError> {
        let (tx, rx) = std::sync::mpsc::channel::<StorageJob>();
        let (init_tx, init_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("raft-log-{id}"))
            .spawn(move || {
                let loaded = store.load();
                let ok = loaded.is_ok();
                let _ = init_tx.send(loaded);
                if !ok {
                    return;
                }
                while let Ok((batch, reply)) = rx.recv() {
                    let started = Instant::now();
                    let r = store.write(&batch);
                    metrics::histogram!("raft_fsync_seconds").record(started.elapsed().as_secs_f64());
                    let _ = reply.send(r);
                }
            })
            .map_err(|e| StorageError::Io(format!("cannot start the storage thread: {e}")))?;
        let initial = init_rx
            .await
            .map_err(|_| StorageError::Io("storage thread exited during load".into()))??;
        Ok((StorageThread { tx: Some(tx) }, initial))
    }

    /// Hands `batch` to the storage thread; the receiver yields the outcome.
    fn submit(&self, batch: WriteBatch) -> Result<oneshot::Receiver<Result<(), StorageError>>, StorageError> {
        let (reply, rx) = oneshot::channel();
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| StorageError::Io("storage closed".into()))?;
        tx.send((batch, reply))
            .map_err(|_| StorageError::Io("storage thread is gone".into()))?;
        Ok(rx)
    }

    async fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.submit(batch)?
            .await
            .map_err(|_| StorageError::Io("storage thread is gone".into()))?
    }

    fn close(&mut self) {
        self.tx = None;
    }
}
