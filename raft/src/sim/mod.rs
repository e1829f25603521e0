//! A deterministic cluster simulator for testing the core.
//!
//! N [`RaftNode`]s share a virtual clock, a seeded random generator and a simulated
//! network that can drop, delay (and so reorder), duplicate and partition messages,
//! one link or one direction at a time. Each node has a simulated disk: a ready's
//! writes stay unsynced for a disk latency, during which the node is busy; a crash
//! loses unsynced writes, and a restart rebuilds the node from what was synced.
//!
//! Everything is driven by one event queue ordered by (time, sequence number), so the
//! same seed always replays the same run. Tests can run until a condition holds,
//! stop, look at or change any node, deliver or drop single in-flight messages, and
//! resume. After every event the Raft safety properties are checked:
//!
//! * election safety: at most one leader per term;
//! * log matching: two logs with an entry of the same index and term agree on every
//!   entry up to it (checked periodically and on demand, it is O(log length));
//! * leader completeness: a new leader holds every entry any node has committed;
//! * state machine safety: no two nodes apply different entries at the same index,
//!   and every node's state machine, whether it got there by applying entries or by
//!   restoring a snapshot, equals the reference state at that index;
//! * committed entries are never lost or changed.
//!
//! Each node runs a small state machine ([`StateMachine`]: a running digest of what it
//! applied) and the simulator plays the driver's part of snapshots: it compacts by
//! policy ([`SimOptions::snapshot_every`], keeping [`SimOptions::snapshot_keep`]
//! entries), streams the leader's latest image as a separate in-flight transfer (that
//! the network can lose, delay or duplicate) when the core asks for `InstallSnapshot`,
//! steps `InstallSnapshot` into the receiver's core only once the data has arrived,
//! reports the outcome to the leader, and writes the image with the snapshot point in
//! the same (crash-atomic) disk write. Nodes can be added (starting empty, without
//! any configuration) and configurations changed with [`Sim::propose_membership`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet};

use bytes::Bytes;

use crate::core::{
    Config, Entry, EntryPayload, HardState, Index, Membership, Message, MessageBody, NodeId, ProposeError,
    RaftNode, Ready, Restore, Role, SnapshotMeta, Term,
};

/// Virtual time in microseconds.
pub type Time = u64;

/// Knobs of a simulated cluster.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Virtual microseconds between two ticks of a node.
    pub tick_us: Time,
    /// Network latency range (microseconds); each message draws one, so messages are
    /// reordered whenever the range is wide.
    pub latency_us: (Time, Time),
    /// Probability that a message is lost.
    pub drop_rate: f64,
    /// Probability that a message is delivered twice.
    pub dup_rate: f64,
    /// Disk sync latency range (microseconds).
    pub disk_us: (Time, Time),
    /// Election timeout and heartbeat, in ticks.
    pub election_ticks: u32,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
    /// Pre-vote on or off.
    pub pre_vote: bool,
    /// Check-quorum on or off.
    pub check_quorum: bool,
    /// Run the O(log) log-matching check every this many events (0: only on demand).
    pub full_check_every: u64,
    /// Take a state machine snapshot and compact the log whenever a node has applied
    /// this many entries past its latest image (0: never).
    pub snapshot_every: u64,
    /// Entries kept in the log behind the image at each compaction, so that slightly
    /// lagging followers catch up from the log rather than by snapshot.
    pub snapshot_keep: u64,
    /// Latency range of a snapshot transfer (microseconds).
    pub snapshot_us: (Time, Time),
    /// Extra probability (on top of `drop_rate`) that a snapshot transfer is lost.
    pub snapshot_drop_rate: f64,
    /// Model a pipelining driver: inputs that arrive while a node's write is in
    /// flight are stepped into its core at once (sending what
    /// `RaftNode::take_messages` gives), instead of waiting for the write. Received
    /// snapshots still wait for it, as in the sidecar's driver.
    pub step_during_write: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            tick_us: 10_000,
            latency_us: (200, 2_000),
            drop_rate: 0.0,
            dup_rate: 0.0,
            disk_us: (50, 500),
            election_ticks: 10,
            heartbeat_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            full_check_every: 64,
            snapshot_every: 0,
            snapshot_keep: 0,
            snapshot_us: (2_000, 20_000),
            snapshot_drop_rate: 0.0,
            step_during_write: false,
        }
    }
}

/// A message on the simulated wire.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// Identifier for delivering or dropping it by hand.
    pub id: u64,
    /// When it will be delivered.
    pub at: Time,
    /// The message.
    pub msg: Message,
}

/// The simulated application: a running digest of every entry applied, so two state
/// machines are equal exactly when they applied the same sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateMachine {
    /// The last index applied (or restored from a snapshot).
    pub index: Index,
    /// Digest of every entry up to `index`.
    pub digest: u64,
    /// Application commands (`Normal` entries) applied up to `index`.
    pub commands: u64,
}

impl StateMachine {
    fn apply(&mut self, e: &Entry) {
        let mut h = self.digest ^ e.index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ e.term.rotate_left(17);
        let bytes: &[u8] = match &e.payload {
            EntryPayload::Noop => b"noop",
            EntryPayload::Normal(d) => {
                self.commands += 1;
                d
            }
            EntryPayload::Membership(m) => {
                h ^= m
                    .voters
                    .iter()
                    .chain(m.learners.iter())
                    .fold(0xC0F1, |a, &id| a * 31 + id);
                b"config"
            }
        };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
        self.digest = h ^ (h >> 29);
        self.index = e.index;
    }
}

/// A state machine image and the meta the core gave for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Index, term and configuration the image covers.
    pub meta: SnapshotMeta,
    /// The state machine at `meta.index`.
    pub state: StateMachine,
}

/// What a simulated node durably holds.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    /// Synced hard state.
    pub hard_state: HardState,
    /// Synced snapshot point (where the log starts).
    pub snapshot: SnapshotMeta,
    /// Synced entries after the snapshot point.
    pub entries: Vec<Entry>,
    /// The latest state machine image, at or after the snapshot point (`None`: the
    /// empty state at index 0).
    pub image: Option<Snapshot>,
}

impl Disk {
    /// Move the snapshot point forward, with the storage rules: entries up to it go;
    /// entries after it stay only if the log holds the point with the same term.
    fn set_snapshot_point(&mut self, meta: &SnapshotMeta) {
        if meta.index <= self.snapshot.index {
            return;
        }
        let held = meta.index - self.snapshot.index;
        let keep_suffix =
            held as usize <= self.entries.len() && self.entries[held as usize - 1].term == meta.term;
        if keep_suffix {
            self.entries.drain(..held as usize);
        } else {
            self.entries.clear();
        }
        self.snapshot = meta.clone();
    }

    fn write(&mut self, hs: Option<HardState>, entries: &[Entry]) {
        if let Some(hs) = hs {
            self.hard_state = hs;
        }
        if let Some(first) = entries.first() {
            let keep = (first.index - self.snapshot.index - 1) as usize;
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
        }
    }
}

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    /// The core, or `None` while crashed.
    pub raft: Option<RaftNode>,
    /// The synced disk.
    pub disk: Disk,
    /// Entries applied by this node's state machine since it last started, in order
    /// (entries covered by a restored snapshot are not in it).
    pub applied: Vec<Entry>,
    /// The node's state machine.
    pub sm: StateMachine,
    /// The image index the state machine was loaded from at the latest start.
    pub restored_from: Index,
    /// Snapshots installed from a leader (restored into the state machine).
    pub installs: u64,
    /// Compactions of the node's own log.
    pub compactions: u64,
    /// Snapshot data received and not yet installed, by index (driver memory: lost on
    /// a crash).
    received: BTreeMap<Index, Snapshot>,
    /// A ready whose writes are not synced yet (the node is busy until `busy_until`).
    unsynced: Option<Ready>,
    busy_until: Time,
    /// Inputs that arrived while busy, processed in order once the write completes.
    deferred: Vec<Event>,
    restarts: u64,
}

impl SimNode {
    /// The core; panics if the node is crashed (tests know which nodes are up).
    pub fn raft(&self) -> &RaftNode {
        self.raft.as_ref().expect("node is crashed")
    }

    /// Mutable access to the core, to change a node's state from a test.
    pub fn raft_mut(&mut self) -> &mut RaftNode {
        self.raft.as_mut().expect("node is crashed")
    }

    /// Whether the node is running.
    pub fn is_up(&self) -> bool {
        self.raft.is_some()
    }

    /// The snapshot the node is installing: adopted by its core, not yet synced to disk.
    pub fn installing(&self) -> Option<&SnapshotMeta> {
        self.unsynced.as_ref().and_then(|rd| rd.snapshot.as_ref())
    }

    fn new(disk: Disk) -> Self {
        SimNode {
            raft: None,
            disk,
            applied: Vec::new(),
            sm: StateMachine::default(),
            restored_from: 0,
            installs: 0,
            compactions: 0,
            received: BTreeMap::new(),
            unsynced: None,
            busy_until: 0,
            deferred: Vec::new(),
            restarts: 0,
        }
    }
}

/// Snapshot traffic counters of a simulation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// `InstallSnapshot` requests the leaders' cores emitted.
    pub requested: u64,
    /// Transfers put on the wire (duplicates included).
    pub sent: u64,
    /// Transfers lost (dropped, blocked link, or receiver down).
    pub lost: u64,
    /// Transfers whose data reached a running receiver.
    pub delivered: u64,
    /// Outcomes reported to the sending core, successful and failed.
    pub reports_ok: u64,
    /// Failed outcomes reported.
    pub reports_failed: u64,
    /// Snapshots installed (restored into a state machine).
    pub installs: u64,
    /// Log compactions.
    pub compactions: u64,
}

/// A snapshot's data on its way from a leader to a follower.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's term when its core asked for the transfer.
    pub term: Term,
    /// When it arrives.
    pub at: Time,
    /// The image.
    pub snapshot: Snapshot,
}

#[derive(Debug, Clone)]
enum Event {
    /// A node's clock (node, incarnation): a restarted node starts a new chain.
    Tick(NodeId, u64),
    Deliver(u64),
    DiskDone(NodeId),
    /// A snapshot transfer arrives.
    SnapshotData(u64),
    /// The outcome of a transfer reaches the sender (leader, its incarnation, peer, ok).
    SnapshotReport(NodeId, u64, NodeId, bool),
}

/// A proposal the simulator made on behalf of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Where the leader put it.
    pub index: Index,
    /// The leader's term.
    pub term: Term,
    /// The payload.
    pub data: Bytes,
}

/// The simulated cluster.
pub struct Sim {
    /// The nodes.
    pub nodes: BTreeMap<NodeId, SimNode>,
    /// Options in force (may be changed between steps).
    pub opts: SimOptions,
    seed: u64,
    rng: crate::core::Rng,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64, u64)>>,
    events: BTreeMap<u64, Event>,
    wire: BTreeMap<u64, InFlight>,
    /// Directed links that drop everything: (from, to).
    blocked: HashSet<(NodeId, NodeId)>,
    /// When set, messages are not delivered automatically: tests deliver them by hand.
    hold: bool,
    /// When set, nodes do not tick automatically.
    frozen_clock: bool,
    leaders: BTreeMap<Term, NodeId>,
    committed: BTreeMap<Index, (Term, EntryPayload)>,
    applied_global: BTreeMap<Index, (Term, EntryPayload)>,
    events_run: u64,
    membership: Membership,
    reads_done: BTreeMap<NodeId, Vec<(u64, Option<Index>)>>,
    /// The reference state machine digest after each index.
    digests: BTreeMap<Index, u64>,
    transfers: BTreeMap<u64, Transfer>,
    snap_stats: SnapshotStats,
}

impl Sim {
    /// A cluster of nodes `1..=n` that all start empty with the same configuration.
    pub fn new(n: u64, seed: u64, opts: SimOptions) -> Self {
        let ids: Vec<NodeId> = (1..=n).collect();
        let membership = Membership::with_voters(ids.iter().copied());
        let mut sim = Sim {
            nodes: BTreeMap::new(),
            opts,
            seed,
            rng: crate::core::Rng::new(seed ^ 0xA5A5_5A5A_DEAD_BEEF),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            wire: BTreeMap::new(),
            blocked: HashSet::new(),
            hold: false,
            frozen_clock: false,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            applied_global: BTreeMap::new(),
            events_run: 0,
            membership: membership.clone(),
            reads_done: BTreeMap::new(),
            digests: BTreeMap::new(),
            transfers: BTreeMap::new(),
            snap_stats: SnapshotStats::default(),
        };
        for id in ids {
            let disk = Disk {
                snapshot: SnapshotMeta {
                    index: 0,
                    term: 0,
                    membership: membership.clone(),
                },
                ..Default::default()
            };
            sim.nodes.insert(id, SimNode::new(disk));
            sim.start_node(id);
        }
        sim
    }

    /// The seed this run was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The core config a node gets in this simulation.
    pub fn node_config(&self, id: NodeId, restarts: u64) -> Config {
        let mut cfg = Config::new(id);
        cfg.election_ticks = self.opts.election_ticks;
        cfg.heartbeat_ticks = self.opts.heartbeat_ticks;
        cfg.pre_vote = self.opts.pre_vote;
        cfg.check_quorum = self.opts.check_quorum;
        cfg.max_inflight_msgs = 8;
        cfg.max_entries_per_msg = 16;
        cfg.seed = self
            .seed
            .wrapping_mul(31)
            .wrapping_add(id * 1_000_003 + restarts * 7919);
        cfg
    }

    fn start_node(&mut self, id: NodeId) {
        let restarts = self.nodes[&id].restarts;
        let cfg = self.node_config(id, restarts);
        let node = self.nodes.get_mut(&id).expect("known node");
        // The state machine comes back from its latest image; the core hands out the
        // committed entries after it (the tail), not the whole log.
        node.sm = node
            .disk
            .image
            .as_ref()
            .map(|i| i.state.clone())
            .unwrap_or_default();
        node.restored_from = node.sm.index;
        let restore = Restore {
            hard_state: node.disk.hard_state,
            snapshot: node.disk.snapshot.clone(),
            entries: node.disk.entries.clone(),
            applied: node.sm.index,
        };
        node.raft = Some(RaftNode::new(cfg, restore).expect("valid sim config"));
        node.applied.clear();
        node.received.clear();
        node.unsynced = None;
        node.deferred.clear();
        node.busy_until = 0;
        let (index, digest) = (node.sm.index, node.sm.digest);
        self.check_digest(id, index, digest);
        // Nodes tick at staggered offsets so they are not in lockstep.
        let offset = self.rng.below(self.opts.tick_us.max(1));
        self.schedule(self.now + offset, Event::Tick(id, restarts));
    }

    fn schedule(&mut self, at: Time, ev: Event) -> u64 {
        self.seq += 1;
        let id = self.seq;
        self.queue.push(Reverse((at, id, id)));
        self.events.insert(id, ev);
        id
    }

    // ------------------------------------------------------------- faults

    /// Block every message from `from` to `to` (one direction).
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Cut a node off from everyone, both directions.
    pub fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        for o in others {
            self.block(id, o);
            self.block(o, id);
        }
    }

    /// Split the cluster into two sides that cannot talk to each other.
    pub fn partition(&mut self, side: &[NodeId]) {
        let side: BTreeSet<NodeId> = side.iter().copied().collect();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for &a in &ids {
            for &b in &ids {
                if side.contains(&a) != side.contains(&b) {
                    self.block(a, b);
                }
            }
        }
    }

    /// Restore every link.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Stop delivering messages automatically (they wait on the wire for
    /// [`Sim::deliver`]), or resume.
    pub fn hold_messages(&mut self, hold: bool) {
        self.hold = hold;
    }

    /// Stop or resume automatic ticks.
    pub fn freeze_clock(&mut self, frozen: bool) {
        self.frozen_clock = frozen;
    }

    /// Crash a node: its memory and unsynced writes are lost; the disk stays.
    pub fn crash(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.raft = None;
            node.unsynced = None;
            node.deferred.clear();
            node.applied.clear();
            node.received.clear();
        }
    }

    /// Add a node that starts empty: no log and no configuration, so it learns
    /// everything (its membership included) from a leader once a configuration that
    /// contains it is proposed.
    pub fn add_node(&mut self, id: NodeId) {
        assert!(
            id != 0 && !self.nodes.contains_key(&id),
            "node {id} already exists"
        );
        self.nodes.insert(id, SimNode::new(Disk::default()));
        self.start_node(id);
    }

    /// Propose a configuration change on node `id` and process the resulting ready.
    pub fn propose_membership(
        &mut self,
        id: NodeId,
        next: Membership,
    ) -> Result<(Index, Term), ProposeError> {
        let raft = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.raft.as_mut())
            .ok_or(ProposeError::NotLeader { leader: None })?;
        let r = raft.propose_membership(next)?;
        self.after_call(id);
        self.check_invariants();
        Ok(r)
    }

    /// Restart a crashed node from its disk.
    pub fn restart(&mut self, id: NodeId) {
        if self.nodes.get(&id).is_some_and(|n| !n.is_up()) {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.restarts += 1;
            }
            self.start_node(id);
        }
    }

    // ------------------------------------------------------------ clients

    /// The node that currently believes it leads with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.raft.as_ref().map(|r| (id, r)))
            .filter(|(_, r)| r.role() == Role::Leader)
            .max_by_key(|(_, r)| r.term())
            .map(|(id, _)| id)
    }

    /// Propose `data` on node `id` and process the resulting ready.
    pub fn propose(&mut self, id: NodeId, data: impl Into<Bytes>) -> Option<Proposal> {
        let data = data.into();
        let raft = self.nodes.get_mut(&id)?.raft.as_mut()?;
        let (index, term) = raft.propose(data.clone()).ok()?;
        self.after_call(id);
        self.check_invariants();
        Some(Proposal { index, term, data })
    }

    /// Start a linearizable read on node `id`.
    pub fn read_index(&mut self, id: NodeId, ctx: u64) -> bool {
        let Some(raft) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) else {
            return false;
        };
        let ok = raft.read_index(ctx).is_ok();
        self.after_call(id);
        ok
    }

    /// Ask the leader `id` to transfer leadership to `to`.
    pub fn transfer_leader(&mut self, id: NodeId, to: NodeId) -> bool {
        let Some(raft) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) else {
            return false;
        };
        let ok = raft.transfer_leader(to).is_ok();
        self.after_call(id);
        ok
    }

    /// Let a test change a node's core directly, then process what that produced.
    pub fn with_node<R>(&mut self, id: NodeId, f: impl FnOnce(&mut RaftNode) -> R) -> R {
        let r = f(self.nodes.get_mut(&id).expect("known node").raft_mut());
        self.process_ready(id);
        self.check_invariants();
        r
    }

    /// Reads completed on node `id` so far: (ctx, index).
    pub fn reads(&self, id: NodeId) -> &[(u64, Option<Index>)] {
        self.reads_done.get(&id).map_or(&[], |v| v.as_slice())
    }

    // ------------------------------------------------------------- running

    /// Messages on the wire, in delivery order.
    pub fn in_flight(&self) -> Vec<InFlight> {
        let mut v: Vec<InFlight> = self.wire.values().cloned().collect();
        v.sort_by_key(|m| (m.at, m.id));
        v
    }

    /// Deliver one in-flight message now (even while messages are held).
    pub fn deliver(&mut self, msg_id: u64) {
        if let Some(m) = self.wire.remove(&msg_id) {
            self.deliver_msg(m.msg);
            self.check_invariants();
        }
    }

    /// Drop one in-flight message.
    pub fn drop_msg(&mut self, msg_id: u64) {
        self.wire.remove(&msg_id);
    }

    /// Deliver every message on the wire matching `pred`, oldest first, including
    /// those that the deliveries produce, until none is left.
    pub fn deliver_all_matching(&mut self, pred: impl Fn(&Message) -> bool) {
        loop {
            let next = self.in_flight().into_iter().find(|m| pred(&m.msg));
            match next {
                Some(m) => self.deliver(m.id),
                None => break,
            }
        }
    }

    /// Tick node `id` once by hand.
    pub fn tick(&mut self, id: NodeId) {
        if let Some(raft) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) {
            raft.tick();
            self.process_ready(id);
            self.check_invariants();
        }
    }

    /// Run one event. Returns false if nothing is left to do.
    pub fn step(&mut self) -> bool {
        let Some(Reverse((at, _, ev_id))) = self.queue.pop() else {
            return false;
        };
        let Some(ev) = self.events.remove(&ev_id) else {
            return true;
        };
        self.now = self.now.max(at);
        self.events_run += 1;
        match ev {
            Event::Tick(id, incarnation) => {
                let tick_us = self.opts.tick_us;
                if !self
                    .nodes
                    .get(&id)
                    .is_some_and(|n| n.is_up() && n.restarts == incarnation)
                {
                    return true;
                }
                self.schedule(self.now + tick_us, Event::Tick(id, incarnation));
                if !self.frozen_clock {
                    self.input(id, Event::Tick(id, incarnation));
                }
            }
            Event::Deliver(mid) => {
                if self.hold {
                    // Put it back; it waits for a manual delivery.
                    self.schedule(self.now + self.opts.tick_us, Event::Deliver(mid));
                    return true;
                }
                if let Some(m) = self.wire.remove(&mid) {
                    self.deliver_msg(m.msg);
                }
            }
            Event::DiskDone(id) => self.finish_ready(id),
            Event::SnapshotData(tid) => {
                if self.hold {
                    self.schedule(self.now + self.opts.tick_us, Event::SnapshotData(tid));
                    return true;
                }
                if let Some(t) = self.transfers.remove(&tid) {
                    self.receive_snapshot(t);
                }
            }
            ev @ Event::SnapshotReport(leader, ..) => self.input(leader, ev),
        }
        if self.opts.full_check_every > 0 && self.events_run.is_multiple_of(self.opts.full_check_every) {
            self.check_log_matching();
        }
        self.check_invariants();
        true
    }

    /// Run until `cond` holds (checked after every event) or `max_us` of virtual time
    /// pass. Returns whether the condition held.
    pub fn run_until(&mut self, max_us: Time, mut cond: impl FnMut(&Sim) -> bool) -> bool {
        let deadline = self.now + max_us;
        loop {
            if cond(self) {
                return true;
            }
            match self.queue.peek() {
                Some(Reverse((at, _, _))) if *at <= deadline => {
                    self.step();
                }
                _ => {
                    self.now = deadline;
                    return cond(self);
                }
            }
        }
    }

    /// Run for `us` of virtual time.
    pub fn run_for(&mut self, us: Time) {
        self.run_until(us, |_| false);
    }

    /// Run until some node is leader and every live member of its configuration knows
    /// it; returns it.
    pub fn run_until_leader(&mut self, max_us: Time) -> Option<NodeId> {
        self.run_until(max_us, |s| {
            s.leader().is_some_and(|l| {
                let leader = s.nodes[&l].raft();
                let term = leader.term();
                let members = leader.membership().members();
                s.nodes
                    .iter()
                    .filter(|(id, n)| n.is_up() && members.contains(id))
                    .all(|(_, n)| {
                        let r = n.raft();
                        r.leader() == Some(l) && r.term() == term
                    })
            })
        });
        self.leader()
    }

    /// Snapshot traffic so far.
    pub fn snapshot_stats(&self) -> &SnapshotStats {
        &self.snap_stats
    }

    /// Snapshot transfers on the wire, in arrival order.
    pub fn transfers(&self) -> Vec<Transfer> {
        let mut v: Vec<Transfer> = self.transfers.values().cloned().collect();
        v.sort_by_key(|t| t.at);
        v
    }

    /// The reference state machine digest after `index`, if some node applied it.
    pub fn reference_digest(&self, index: Index) -> Option<u64> {
        if index == 0 {
            return Some(0);
        }
        self.digests.get(&index).copied()
    }

    fn input(&mut self, id: NodeId, ev: Event) {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.raft.is_none() {
            return;
        }
        if node.unsynced.is_some() || node.busy_until > now {
            if self.opts.step_during_write {
                self.apply_input(id, ev);
                self.send_early(id);
            } else {
                node.deferred.push(ev);
            }
            return;
        }
        self.apply_input(id, ev);
        self.process_ready(id);
    }

    /// After a call on node `id`'s core: a pipelining driver sends what can leave at
    /// once even while a write is in flight; then the next ready, if the node is idle.
    fn after_call(&mut self, id: NodeId) {
        if self.opts.step_during_write {
            self.send_early(id);
        }
        self.process_ready(id);
    }

    /// A pipelining driver's send of the messages that need no write, while the
    /// node's write is in flight.
    fn send_early(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        // Applying ahead of the write is allowed once the entries the ready in flight
        // handed out to apply are applied (and never across an adopted snapshot).
        let may_apply = node
            .unsynced
            .as_ref()
            .is_none_or(|rd| rd.committed.is_empty() && rd.snapshot.is_none());
        let Some(r) = node.raft.as_mut() else { return };
        let msgs = r.take_messages();
        let (committed, reads) = if may_apply {
            r.take_applicable()
        } else {
            (Vec::new(), Vec::new())
        };
        for m in msgs {
            self.send(m);
        }
        self.apply_now(id, committed);
        for r in reads {
            self.reads_done.entry(id).or_default().push((r.ctx, r.index));
        }
        self.check_invariants();
    }

    /// Applies entries a pipelining driver may apply at once (durable here).
    fn apply_now(&mut self, id: NodeId, committed: Vec<Entry>) {
        if committed.is_empty() {
            return;
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.applied.extend(committed.iter().cloned());
        }
        for e in committed {
            self.on_apply(id, e);
        }
    }

    /// Hand one input to a running, idle node's core (without taking its ready).
    fn apply_input(&mut self, id: NodeId, ev: Event) {
        match ev {
            Event::Tick(..) => {
                if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) {
                    r.tick();
                }
            }
            Event::Deliver(mid) => {
                if let Some(m) = self.wire.remove(&mid) {
                    if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) {
                        r.step(m.msg);
                    }
                }
            }
            Event::SnapshotReport(_, incarnation, peer, ok) => {
                let Some(node) = self.nodes.get_mut(&id) else {
                    return;
                };
                if node.restarts != incarnation {
                    return;
                }
                if let Some(r) = node.raft.as_mut() {
                    r.report_snapshot(peer, ok);
                    if ok {
                        self.snap_stats.reports_ok += 1;
                    } else {
                        self.snap_stats.reports_failed += 1;
                    }
                }
            }
            Event::DiskDone(_) | Event::SnapshotData(_) => {}
        }
    }

    fn deliver_msg(&mut self, msg: Message) {
        let id = msg.to;
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.raft.is_none() {
            return;
        }
        if (node.unsynced.is_some() || node.busy_until > now) && self.opts.step_during_write {
            node.raft_mut().step(msg);
            self.send_early(id);
            return;
        }
        if node.unsynced.is_some() || node.busy_until > now {
            // Park it: the driver would read it after the write completes.
            self.park(id, msg);
            return;
        }
        node.raft_mut().step(msg);
        self.process_ready(id);
    }

    /// Take the node's ready: send early messages, start the disk write.
    fn process_ready(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.unsynced.is_some() {
            return;
        }
        let Some(raft) = node.raft.as_mut() else { return };
        if !raft.has_ready() {
            return;
        }
        let mut rd = raft.ready();
        if let Some(soft) = rd.soft_state {
            if soft.role == Role::Leader {
                self.on_new_leader(id, soft.term);
            }
        }
        for m in std::mem::take(&mut rd.messages) {
            self.send(m);
        }
        let needs_disk = rd.hard_state.is_some() || !rd.entries.is_empty() || rd.snapshot.is_some();
        // A pipelining driver applies at once what is already durable here, so that
        // while this write is in flight it may apply what commits meanwhile.
        if self.opts.step_during_write && rd.snapshot.is_none() {
            let durable = self.nodes[&id].raft.as_ref().map_or(0, |r| r.persisted_index());
            if rd.committed.last().is_some_and(|e| e.index <= durable) {
                let committed = std::mem::take(&mut rd.committed);
                self.apply_now(id, committed);
            }
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        node.unsynced = Some(rd);
        if needs_disk {
            let lat = self.rng.between(self.opts.disk_us.0, self.opts.disk_us.1);
            self.nodes.get_mut(&id).expect("known node").busy_until = self.now + lat;
            self.schedule(self.now + lat, Event::DiskDone(id));
        } else {
            self.finish_ready(id);
        }
    }

    /// The disk write finished: sync, send the rest, apply, advance, then handle what
    /// arrived meanwhile.
    fn finish_ready(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(rd) = node.unsynced.take() else { return };
        if node.raft.is_none() {
            return;
        }
        node.busy_until = 0;
        let mut restored = None;
        if let Some(meta) = &rd.snapshot {
            // The image arrived before the core adopted it; it becomes durable with the
            // snapshot point, in this one write.
            let image = node.received.remove(&meta.index);
            let image = match image {
                Some(i) if i.meta == *meta => i,
                _ => panic!(
                    "node {id} installed snapshot {} that its driver never received (seed {})",
                    meta.index, self.seed
                ),
            };
            node.received.retain(|&i, _| i > meta.index);
            node.disk.set_snapshot_point(meta);
            node.disk.image = Some(image.clone());
            restored = Some(image.state);
        }
        node.disk.write(rd.hard_state, &rd.entries);
        let committed = rd.committed;
        let reads = rd.reads;
        for e in &committed {
            node.applied.push(e.clone());
        }
        node.raft_mut().advance();
        for m in rd.persisted_messages {
            self.send(m);
        }
        if let Some(state) = restored {
            let node = self.nodes.get_mut(&id).expect("known node");
            assert!(
                state.index > node.sm.index,
                "node {id} restored snapshot {} over state {} (seed {})",
                state.index,
                node.sm.index,
                self.seed
            );
            node.sm = state;
            node.installs += 1;
            self.snap_stats.installs += 1;
            let (index, digest) = (node.sm.index, node.sm.digest);
            self.check_digest(id, index, digest);
        }
        for e in committed {
            self.on_apply(id, e);
        }
        self.maybe_compact(id);
        for r in reads {
            self.reads_done.entry(id).or_default().push((r.ctx, r.index));
        }
        // Inputs that waited for the write.
        let deferred = std::mem::take(&mut self.nodes.get_mut(&id).expect("known node").deferred);
        let had_deferred = !deferred.is_empty();
        for ev in deferred {
            self.apply_input(id, ev);
        }
        self.process_ready(id);
        if had_deferred {
            self.discard_unneeded_snapshots(id);
        }
        self.check_invariants();
    }

    /// The driver's compaction policy: once the state machine is `snapshot_every`
    /// entries past its latest image, take a new image (durable at once) and compact
    /// the log to `snapshot_keep` entries behind it.
    fn maybe_compact(&mut self, id: NodeId) {
        let every = self.opts.snapshot_every;
        let keep = self.opts.snapshot_keep;
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let image_index = node.disk.image.as_ref().map_or(0, |i| i.meta.index);
        if every == 0 || node.sm.index < image_index + every {
            return;
        }
        let Some(raft) = node.raft.as_mut() else { return };
        let Some(meta) = raft.snapshot_meta(node.sm.index) else {
            return;
        };
        node.disk.image = Some(Snapshot {
            meta,
            state: node.sm.clone(),
        });
        if let Some(point) = raft.compact(node.sm.index.saturating_sub(keep)) {
            node.disk.set_snapshot_point(&point);
            node.compactions += 1;
            self.snap_stats.compactions += 1;
        }
    }

    /// A leader's core asked for a snapshot to be sent: stream the latest image as a
    /// transfer of its own, which the network may lose, delay or duplicate.
    fn start_transfer(&mut self, msg: Message) {
        let MessageBody::InstallSnapshot { meta } = &msg.body else {
            return;
        };
        self.snap_stats.requested += 1;
        let Some(sender) = self.nodes.get(&msg.from) else {
            return;
        };
        let incarnation = sender.restarts;
        let snapshot = match &sender.disk.image {
            Some(img) if img.meta.index >= meta.index => img.clone(),
            _ => panic!(
                "node {} asked to send snapshot {} but its latest image is older (seed {})",
                msg.from, meta.index, self.seed
            ),
        };
        let lost = self.blocked.contains(&(msg.from, msg.to))
            || !self.nodes.contains_key(&msg.to)
            || (self.opts.drop_rate > 0.0 && self.rng.chance(self.opts.drop_rate))
            || (self.opts.snapshot_drop_rate > 0.0 && self.rng.chance(self.opts.snapshot_drop_rate));
        let (lo, hi) = self.opts.snapshot_us;
        if lost {
            self.snap_stats.lost += 1;
            // Half the time the sender's transport notices the broken stream and says
            // so; otherwise the core's snapshot timeout has to.
            if self.rng.chance(0.5) {
                let at = self.now + hi;
                self.schedule(at, Event::SnapshotReport(msg.from, incarnation, msg.to, false));
            }
            return;
        }
        let copies = if self.opts.dup_rate > 0.0 && self.rng.chance(self.opts.dup_rate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + self.rng.between(lo, hi);
            let tid = self.schedule(at, Event::SnapshotData(0));
            self.events.insert(tid, Event::SnapshotData(tid));
            self.transfers.insert(
                tid,
                Transfer {
                    from: msg.from,
                    to: msg.to,
                    term: msg.term,
                    at,
                    snapshot: snapshot.clone(),
                },
            );
            self.snap_stats.sent += 1;
        }
    }

    /// A transfer arrived: the receiver's driver keeps the data and steps
    /// `InstallSnapshot` into its core; the sender learns that the stream completed.
    fn receive_snapshot(&mut self, t: Transfer) {
        let incarnation = self.nodes.get(&t.from).map_or(0, |n| n.restarts);
        let ack_lat = self.rng.between(self.opts.latency_us.0, self.opts.latency_us.1);
        let up = self.nodes.get(&t.to).is_some_and(|n| n.is_up());
        if !up {
            self.snap_stats.lost += 1;
            self.schedule(
                self.now + ack_lat,
                Event::SnapshotReport(t.from, incarnation, t.to, false),
            );
            return;
        }
        self.snap_stats.delivered += 1;
        let meta = t.snapshot.meta.clone();
        let node = self.nodes.get_mut(&t.to).expect("known node");
        node.received.insert(meta.index, t.snapshot);
        // The report travels back over the network too; it may be lost.
        if !(self.opts.drop_rate > 0.0 && self.rng.chance(self.opts.drop_rate)) {
            self.schedule(
                self.now + ack_lat,
                Event::SnapshotReport(t.from, incarnation, t.to, true),
            );
        }
        let msg = Message {
            from: t.from,
            to: t.to,
            term: t.term,
            body: MessageBody::InstallSnapshot { meta },
        };
        let node = self.nodes.get_mut(&t.to).expect("known node");
        if node.unsynced.is_some() || node.busy_until > self.now {
            // Even a pipelining driver steps a received snapshot only between writes
            // (the sidecar waits for its write in flight first): adopting it resets
            // the core's log, and so what the write in flight stands for. It waits
            // for the write like any input of a non-pipelining driver.
            self.park(t.to, msg);
            return;
        }
        self.deliver_msg(msg);
        self.discard_unneeded_snapshots(t.to);
    }

    /// Received snapshot data the core will not adopt (stale, or its log already held
    /// it) is dropped.
    fn discard_unneeded_snapshots(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.get_mut(&id) {
            let commit = node.raft.as_ref().map_or(0, |r| r.commit_index());
            let pending = node
                .unsynced
                .as_ref()
                .and_then(|rd| rd.snapshot.as_ref())
                .map(|m| m.index);
            node.received.retain(|&i, _| i > commit || Some(i) == pending);
        }
    }

    /// Keep a message for node `id` until its write in flight completes.
    fn park(&mut self, id: NodeId, msg: Message) {
        let now = self.now;
        self.seq += 1;
        let mid = self.seq;
        self.wire.insert(
            mid,
            InFlight {
                id: mid,
                at: now,
                msg,
            },
        );
        if let Some(node) = self.nodes.get_mut(&id) {
            node.deferred.push(Event::Deliver(mid));
        }
    }

    fn send(&mut self, msg: Message) {
        if let MessageBody::InstallSnapshot { .. } = msg.body {
            return self.start_transfer(msg);
        }
        if self.blocked.contains(&(msg.from, msg.to)) || !self.nodes.contains_key(&msg.to) {
            return;
        }
        if self.opts.drop_rate > 0.0 && self.rng.chance(self.opts.drop_rate) {
            return;
        }
        let copies = if self.opts.dup_rate > 0.0 && self.rng.chance(self.opts.dup_rate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let lat = self.rng.between(self.opts.latency_us.0, self.opts.latency_us.1);
            let at = self.now + lat;
            let ev = self.schedule(at, Event::Deliver(0));
            self.events.insert(ev, Event::Deliver(ev));
            self.wire.insert(
                ev,
                InFlight {
                    id: ev,
                    at,
                    msg: msg.clone(),
                },
            );
        }
    }

    // ---------------------------------------------------------- invariants

    fn on_new_leader(&mut self, id: NodeId, term: Term) {
        if let Some(&other) = self.leaders.get(&term) {
            assert_eq!(
                other, id,
                "election safety violated: nodes {other} and {id} both led term {term} (seed {})",
                self.seed
            );
        }
        self.leaders.insert(term, id);
        // Leader completeness: every entry committed anywhere is in the new leader's log.
        let raft = self.nodes[&id].raft();
        for (&index, (t, payload)) in &self.committed {
            let e = raft.entry(index);
            if index < raft.status().first_index {
                continue;
            }
            assert!(
                e.is_some_and(|e| e.term == *t && &e.payload == payload),
                "leader completeness violated: leader {id} of term {term} lacks committed entry {index} (seed {})",
                self.seed
            );
        }
    }

    /// State machine safety across snapshots: a node's state at `index` is the
    /// reference state there.
    fn check_digest(&mut self, id: NodeId, index: Index, digest: u64) {
        if index == 0 {
            assert_eq!(
                digest, 0,
                "node {id} has a non-empty state at index 0 (seed {})",
                self.seed
            );
            return;
        }
        match self.digests.get(&index) {
            Some(&d) => assert_eq!(
                d, digest,
                "state machine safety violated: node {id} has a different state at index {index} (seed {})",
                self.seed
            ),
            None => {
                self.digests.insert(index, digest);
            }
        }
    }

    fn on_apply(&mut self, id: NodeId, e: Entry) {
        if let Some(node) = self.nodes.get_mut(&id) {
            assert_eq!(
                node.sm.index + 1,
                e.index,
                "node {id} applied entry {} right after state {} (seed {})",
                e.index,
                node.sm.index,
                self.seed
            );
            node.sm.apply(&e);
            let digest = node.sm.digest;
            self.check_digest(id, e.index, digest);
        }
        match self.applied_global.get(&e.index) {
            Some((t, p)) => assert!(
                *t == e.term && *p == e.payload,
                "state machine safety violated: node {id} applied a different entry at {} (seed {})",
                e.index,
                self.seed
            ),
            None => {
                self.applied_global.insert(e.index, (e.term, e.payload.clone()));
            }
        }
    }

    /// Check the properties that are cheap enough to run after every event.
    pub fn check_invariants(&mut self) {
        let mut newly: Vec<(Index, Term, EntryPayload)> = Vec::new();
        for (&id, node) in &self.nodes {
            let Some(raft) = node.raft.as_ref() else { continue };
            if raft.role() == Role::Leader {
                if let Some(&other) = self.leaders.get(&raft.term()) {
                    assert_eq!(
                        other,
                        id,
                        "election safety violated: nodes {other} and {id} both led term {} (seed {})",
                        raft.term(),
                        self.seed
                    );
                }
            }
            // Committed entries never change: compare the tail of what this node
            // has committed with what anyone else has committed there.
            let commit = raft.commit_index();
            let known = self.committed.keys().next_back().copied().unwrap_or(0);
            let first = raft.status().first_index;
            let lo = first.max(known.saturating_sub(64).max(1));
            for index in lo..=commit {
                let Some(e) = raft.entry(index) else { continue };
                match self.committed.get(&index) {
                    Some((t, p)) => assert!(
                        *t == e.term && *p == e.payload,
                        "committed entry {index} differs on node {id}: term {} vs {} (seed {})",
                        e.term,
                        t,
                        self.seed
                    ),
                    None => newly.push((index, e.term, e.payload.clone())),
                }
            }
        }
        for (i, t, p) in newly {
            self.committed.entry(i).or_insert((t, p));
        }
    }

    /// Log matching, across every pair of live nodes: if two logs hold an entry with
    /// the same index and term, they are identical up to it.
    pub fn check_log_matching(&self) {
        let live: Vec<(NodeId, &RaftNode)> = self
            .nodes
            .iter()
            .filter_map(|(&id, n)| n.raft.as_ref().map(|r| (id, r)))
            .collect();
        for (i, (a_id, a)) in live.iter().enumerate() {
            for (b_id, b) in &live[i + 1..] {
                let first = a.status().first_index.max(b.status().first_index);
                let last = a.last_index().min(b.last_index());
                // Highest common index with equal terms.
                let mut top = None;
                let mut idx = last;
                while idx >= first && idx > 0 {
                    if a.term_at(idx).is_some() && a.term_at(idx) == b.term_at(idx) {
                        top = Some(idx);
                        break;
                    }
                    idx -= 1;
                }
                if let Some(top) = top {
                    for k in first..=top {
                        assert_eq!(
                            a.entry(k),
                            b.entry(k),
                            "log matching violated between {a_id} and {b_id} at {k} (agree at {top}) (seed {})",
                            self.seed
                        );
                    }
                }
            }
        }
    }

    /// Whether every running member of node `id`'s configuration has applied up to
    /// `index`.
    pub fn members_applied(&self, id: NodeId, index: Index) -> bool {
        let Some(r) = self.nodes.get(&id).and_then(|n| n.raft.as_ref()) else {
            return false;
        };
        r.membership().members().iter().all(|m| {
            self.nodes
                .get(m)
                .is_some_and(|n| !n.is_up() || n.sm.index >= index)
        })
    }

    /// Whether some node leads and every running member of its configuration has
    /// applied up to `index`.
    pub fn converged(&self, index: Index) -> bool {
        self.leader().is_some_and(|l| self.members_applied(l, index))
    }

    /// End-of-run history check: the reference sequence has no gap up to `upto`, agrees
    /// with every entry ever committed, and applies no command twice (every proposal's
    /// payload is unique in the tests). Returns the number of commands applied.
    pub fn check_history(&self, upto: Index) -> usize {
        let mut seen = BTreeSet::new();
        for index in 1..=upto {
            let Some((term, payload)) = self.applied_global.get(&index) else {
                panic!("no node applied index {index} (seed {})", self.seed);
            };
            if let Some((t, p)) = self.committed.get(&index) {
                assert!(
                    t == term && p == payload,
                    "committed entry {index} differs from the applied one (seed {})",
                    self.seed
                );
            }
            if let EntryPayload::Normal(d) = payload {
                assert!(
                    seen.insert(d.clone()),
                    "command {:?} at index {index} was applied twice (seed {})",
                    d,
                    self.seed
                );
            }
        }
        seen.len()
    }

    /// Every entry applied anywhere so far, by index: the reference sequence.
    pub fn applied_entries(&self) -> &BTreeMap<Index, (Term, EntryPayload)> {
        &self.applied_global
    }

    /// Every entry committed anywhere so far, by index.
    pub fn committed_entries(&self) -> &BTreeMap<Index, (Term, EntryPayload)> {
        &self.committed
    }

    /// Events scheduled and not yet run.
    pub fn pending_events(&self) -> usize {
        self.queue.len()
    }

    /// How many events ran.
    pub fn events_run(&self) -> u64 {
        self.events_run
    }

    /// The bootstrap membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
}
