//! A hand-cranked cluster for the paper scenarios.
//!
//! Every node is a bare [`RaftNode`] with an in-memory "disk". Nothing happens unless a
//! test says so: a node's clock moves only on [`Net::tick`], and a message sits on the
//! wire until the test delivers, drops or rewrites it. Each node's [`Ready`] is performed
//! at once, in the order its documentation prescribes (send `messages`, persist, send
//! `persisted_messages`, apply, record reads, `advance`), so a node's disk is always
//! what it has promised to others.
//!
//! Every message ever sent is kept in `sent`, so tests can count round trips.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use raft::core::{
    AppendEntries, AppendResponse, Config, Entry, EntryPayload, HardState, Index, Membership, Message,
    MessageBody, NodeId, RaftNode, ReadState, Ready, Restore, Role, SnapshotMeta, Term,
};

/// Minimum election timeout of every harness node, in ticks.
pub const ELECTION: u32 = 10;
/// Heartbeat interval of every harness node, in ticks.
pub const HEARTBEAT: u32 = 2;

/// The algorithm exactly as the paper's section 5 describes it: no pre-vote, no
/// check-quorum (and so no leader lease).
pub fn paper_config(id: NodeId) -> Config {
    let mut cfg = Config::new(id);
    cfg.election_ticks = ELECTION;
    cfg.heartbeat_ticks = HEARTBEAT;
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    cfg
}

/// The core's defaults (pre-vote and check-quorum on) with the harness timings.
pub fn default_config(id: NodeId) -> Config {
    let mut cfg = paper_config(id);
    cfg.pre_vote = true;
    cfg.check_quorum = true;
    cfg
}

/// The entry at `index` written in `term`. The payload is derived from both, so two
/// entries with the same index and term are identical, as log matching requires.
pub fn entry(index: Index, term: Term) -> Entry {
    Entry {
        index,
        term,
        payload: EntryPayload::Normal(Bytes::from(format!("{index}@{term}"))),
    }
}

/// A log starting at index 1 whose entries have the given terms.
pub fn log_of(terms: &[Term]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &t)| entry(i as Index + 1, t))
        .collect()
}

/// What a node restarts from: a configuration of `voters`, current term `term`, no
/// vote, nothing known committed, and a log with the given entry terms.
pub fn restore(voters: &[NodeId], term: Term, log_terms: &[Term]) -> Restore {
    Restore {
        hard_state: HardState {
            term,
            vote: None,
            commit: 0,
        },
        snapshot: SnapshotMeta {
            index: 0,
            term: 0,
            membership: Membership::with_voters(voters.iter().copied()),
        },
        entries: log_of(log_terms),
        applied: 0,
    }
}

/// A message, stamped by hand.
pub fn msg(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
    Message { from, to, term, body }
}

/// A hand-written AppendEntries.
pub fn append(
    from: NodeId,
    to: NodeId,
    term: Term,
    prev: (Index, Term),
    entries: Vec<Entry>,
    commit: Index,
) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::Append(AppendEntries {
            prev_index: prev.0,
            prev_term: prev.1,
            entries,
            commit,
        }),
    )
}

/// A hand-written RequestVote from a candidate whose log ends at `last` (index, term).
pub fn vote_request(from: NodeId, to: NodeId, term: Term, last: (Index, Term)) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::Vote {
            last_index: last.0,
            last_term: last.1,
            transfer: false,
        },
    )
}

/// The body of an AppendResponse, if `m` is one.
pub fn as_append_response(m: &Message) -> Option<AppendResponse> {
    match &m.body {
        MessageBody::AppendResponse(r) => Some(*r),
        _ => None,
    }
}

/// Whether `m` is a VoteResponse, and its verdict.
pub fn vote_granted(m: &Message) -> Option<bool> {
    match m.body {
        MessageBody::VoteResponse { granted } => Some(granted),
        _ => None,
    }
}

/// What a node has durably written.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    /// The latest hard state written.
    pub hard_state: HardState,
    /// The snapshot point (the bootstrap configuration here).
    pub snapshot: SnapshotMeta,
    /// The entries written.
    pub entries: Vec<Entry>,
}

/// One node of the harness.
pub struct Peer {
    /// The core; `None` while crashed.
    pub raft: Option<RaftNode>,
    /// Its configuration (reused on restart).
    pub cfg: Config,
    /// Its durable state.
    pub disk: Disk,
    /// Entries its state machine applied, in order, since it last started.
    pub applied: Vec<Entry>,
    /// Read results it was handed, in order.
    pub reads: Vec<ReadState>,
}

/// The hand-cranked cluster.
pub struct Net {
    /// The nodes.
    pub peers: BTreeMap<NodeId, Peer>,
    /// Messages sent and not yet delivered, oldest first.
    pub wire: VecDeque<Message>,
    /// Every message ever sent (including those later dropped), oldest first.
    pub sent: Vec<Message>,
    /// Directed links that lose everything: (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
}

impl Net {
    /// Nodes `ids`, all empty, bootstrapped with `ids` as voters.
    pub fn new(ids: &[NodeId], cfg: impl Fn(NodeId) -> Config) -> Net {
        Net::from_restores(ids.iter().map(|&id| (id, restore(ids, 0, &[]))), cfg)
    }

    /// Nodes restarted from chosen durable states.
    pub fn from_restores(
        nodes: impl IntoIterator<Item = (NodeId, Restore)>,
        cfg: impl Fn(NodeId) -> Config,
    ) -> Net {
        let mut net = Net {
            peers: BTreeMap::new(),
            wire: VecDeque::new(),
            sent: Vec::new(),
            blocked: BTreeSet::new(),
        };
        for (id, r) in nodes {
            let cfg = cfg(id);
            let disk = Disk {
                hard_state: r.hard_state,
                snapshot: r.snapshot.clone(),
                entries: r.entries.clone(),
            };
            let raft = RaftNode::new(cfg.clone(), r).expect("valid config");
            net.peers.insert(
                id,
                Peer {
                    raft: Some(raft),
                    cfg,
                    disk,
                    applied: Vec::new(),
                    reads: Vec::new(),
                },
            );
        }
        net
    }

    /// The core of node `id` (which must be up).
    pub fn node(&self, id: NodeId) -> &RaftNode {
        self.peers[&id].raft.as_ref().expect("node is up")
    }

    /// Mutable access to the core of `id`; call [`Net::process`] afterwards.
    pub fn node_mut(&mut self, id: NodeId) -> &mut RaftNode {
        self.peers
            .get_mut(&id)
            .expect("known node")
            .raft
            .as_mut()
            .expect("node is up")
    }

    /// The peer record of `id`.
    pub fn peer(&self, id: NodeId) -> &Peer {
        &self.peers[&id]
    }

    /// Terms of node `id`'s entries, from index 1 to its last index.
    pub fn log_terms(&self, id: NodeId) -> Vec<Term> {
        let r = self.node(id);
        (1..=r.last_index())
            .map(|i| r.term_at(i).expect("entry held"))
            .collect()
    }

    /// Node `id`'s entries, from index 1 to its last index.
    pub fn log(&self, id: NodeId) -> Vec<Entry> {
        let r = self.node(id);
        (1..=r.last_index())
            .map(|i| r.entry(i).expect("entry held").clone())
            .collect()
    }

    /// Perform every ready node `id` has, per the ordering contract.
    pub fn process(&mut self, id: NodeId) {
        while self.peers[&id].raft.as_ref().is_some_and(|r| r.has_ready()) {
            let rd = self.node_mut(id).ready();
            self.perform(id, rd);
        }
    }

    /// Perform one ready of node `id` (taken by the test to look at it first).
    pub fn perform(&mut self, id: NodeId, mut rd: Ready) {
        for m in std::mem::take(&mut rd.messages) {
            self.send(m);
        }
        let peer = self.peers.get_mut(&id).expect("known node");
        if let Some(meta) = &rd.snapshot {
            peer.disk.snapshot = meta.clone();
            peer.disk.entries.clear();
        }
        if let Some(hs) = rd.hard_state {
            peer.disk.hard_state = hs;
        }
        if let Some(first) = rd.entries.first() {
            let keep = (first.index - peer.disk.snapshot.index - 1) as usize;
            peer.disk.entries.truncate(keep);
            peer.disk.entries.extend_from_slice(&rd.entries);
        }
        peer.applied.extend(rd.committed.iter().cloned());
        peer.reads.extend(rd.reads.iter().copied());
        for m in std::mem::take(&mut rd.persisted_messages) {
            self.send(m);
        }
        self.node_mut(id).advance();
    }

    /// Put a message on the wire (unless its link is blocked or its target is down).
    pub fn send(&mut self, m: Message) {
        self.sent.push(m.clone());
        // Messages to nodes the harness does not run stay on the wire for the test
        // to look at; messages to crashed nodes are lost.
        let down = self.peers.get(&m.to).is_some_and(|p| p.raft.is_none());
        if !down && !self.blocked.contains(&(m.from, m.to)) {
            self.wire.push_back(m);
        }
    }

    /// Hand `m` to its recipient now (bypassing the wire) and perform what it produced.
    pub fn step(&mut self, m: Message) {
        let to = m.to;
        if self.peers.get(&to).is_some_and(|p| p.raft.is_some()) {
            self.node_mut(to).step(m);
            self.process(to);
        }
    }

    /// Advance node `id`'s clock by one tick.
    pub fn tick(&mut self, id: NodeId) {
        if self.peers[&id].raft.is_some() {
            self.node_mut(id).tick();
            self.process(id);
        }
    }

    /// Advance node `id`'s clock by `n` ticks.
    pub fn tick_n(&mut self, id: NodeId, n: u32) {
        for _ in 0..n {
            self.tick(id);
        }
    }

    /// Tick node `id` until it leaves the follower role (its election timeout fired);
    /// returns the ticks it took.
    pub fn tick_until_campaign(&mut self, id: NodeId) -> u32 {
        for t in 1..=2 * ELECTION {
            self.tick(id);
            if self.node(id).role() != Role::Follower {
                return t;
            }
        }
        panic!("node {id} did not campaign within {} ticks", 2 * ELECTION);
    }

    /// Tick node `id` until its term changes (a candidate's election timed out and it
    /// campaigns again); returns the ticks it took.
    pub fn tick_until_new_term(&mut self, id: NodeId) -> u32 {
        let term = self.node(id).term();
        for t in 1..=2 * ELECTION {
            self.tick(id);
            if self.node(id).term() != term {
                return t;
            }
        }
        panic!("node {id} did not start a new term within {} ticks", 2 * ELECTION);
    }

    /// Deliver the oldest message on the wire; returns it.
    pub fn deliver_next(&mut self) -> Option<Message> {
        let m = self.wire.pop_front()?;
        self.step(m.clone());
        Some(m)
    }

    /// Deliver messages (including the ones deliveries produce) until the wire is empty.
    /// Returns how many were delivered.
    pub fn deliver_all(&mut self) -> usize {
        self.deliver_where(|_| true)
    }

    /// Deliver, oldest first, every message matching `pred`, including matching ones
    /// that deliveries produce, until none is left. Returns how many were delivered.
    pub fn deliver_where(&mut self, pred: impl Fn(&Message) -> bool) -> usize {
        self.deliver_while(|_, m| pred(m))
    }

    /// Like [`Net::deliver_where`], with a predicate that may look at the cluster as it
    /// is when each message would be delivered.
    pub fn deliver_while(&mut self, pred: impl Fn(&Net, &Message) -> bool) -> usize {
        let mut n = 0;
        while let Some(pos) = self.wire.iter().position(|m| pred(self, m)) {
            let m = self.wire.remove(pos).expect("position is valid");
            self.step(m);
            n += 1;
            assert!(n < 100_000, "message storm: the cluster does not settle");
        }
        n
    }

    /// Remove from the wire and return every message matching `pred` (lost, or kept by
    /// the test to deliver later with [`Net::step`]).
    pub fn take_where(&mut self, pred: impl Fn(&Message) -> bool) -> Vec<Message> {
        let (taken, kept): (Vec<Message>, Vec<Message>) = self.wire.drain(..).partition(|m| pred(m));
        self.wire = kept.into();
        taken
    }

    /// Messages on the wire matching `pred`, oldest first.
    pub fn on_wire(&self, pred: impl Fn(&Message) -> bool) -> Vec<Message> {
        self.wire.iter().filter(|m| pred(m)).cloned().collect()
    }

    /// Messages ever sent matching `pred`.
    pub fn count_sent(&self, pred: impl Fn(&Message) -> bool) -> usize {
        self.sent.iter().filter(|m| pred(m)).count()
    }

    /// Lose every message from `from` to `to` from now on.
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Cut `id` off from everyone, both ways (messages already on the wire stay).
    pub fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.peers.keys().copied().filter(|&o| o != id).collect();
        for o in others {
            self.block(id, o);
            self.block(o, id);
        }
    }

    /// Restore every link.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Crash node `id`: its memory is gone and messages to it are lost; its disk stays.
    pub fn crash(&mut self, id: NodeId) {
        let peer = self.peers.get_mut(&id).expect("known node");
        peer.raft = None;
        peer.applied.clear();
        peer.reads.clear();
        self.wire.retain(|m| m.to != id);
    }

    /// Restart node `id` from its disk.
    pub fn restart(&mut self, id: NodeId) {
        let peer = self.peers.get_mut(&id).expect("known node");
        assert!(peer.raft.is_none(), "node {id} is still up");
        let restore = Restore {
            hard_state: peer.disk.hard_state,
            snapshot: peer.disk.snapshot.clone(),
            entries: peer.disk.entries.clone(),
            applied: 0,
        };
        peer.raft = Some(RaftNode::new(peer.cfg.clone(), restore).expect("valid config"));
    }

    /// Let time pass on nodes `ids` (one tick each per round, then every message is
    /// delivered) until `cond` holds or `max_rounds` rounds ran. Returns whether it held.
    pub fn run_until(&mut self, ids: &[NodeId], max_rounds: u32, cond: impl Fn(&Net) -> bool) -> bool {
        for _ in 0..max_rounds {
            if cond(self) {
                return true;
            }
            for &id in ids {
                self.tick(id);
            }
            self.deliver_all();
        }
        cond(self)
    }

    /// Let node `id` time out and run the whole election with every message delivered;
    /// asserts that it won. Then one heartbeat round passes, so that every follower
    /// also knows that the leader's no-op is committed (a follower whose
    /// acknowledgement completed the replication learns the commit index from the
    /// leader's next message).
    pub fn elect(&mut self, id: NodeId) {
        self.tick_until_campaign(id);
        self.deliver_all();
        assert_eq!(
            self.node(id).role(),
            Role::Leader,
            "node {id} should have won its election"
        );
        self.heartbeat(id);
    }

    /// Tick leader `id` until it sends heartbeats, and deliver everything.
    pub fn heartbeat(&mut self, id: NodeId) {
        self.tick_n(id, HEARTBEAT);
        self.deliver_all();
    }

    /// Propose `data` on node `id`, which must be the leader; returns (index, term).
    pub fn propose(&mut self, id: NodeId, data: &'static str) -> (Index, Term) {
        let r = self.node_mut(id).propose(Bytes::from_static(data.as_bytes()));
        let at = r.expect("the leader accepts proposals");
        self.process(id);
        at
    }
}
