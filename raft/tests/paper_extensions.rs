//! The extensions of Ongaro's thesis that the core implements on top of section 5:
//! pre-vote (9.6), check-quorum and the leader lease (6.2, 4.2.3), ReadIndex reads (6.4)
//! and leadership transfer (3.10).

mod paper_harness;

use paper_harness::*;
use raft::core::{Message, MessageBody, ProposeError, ReadState, Role};
use raft::sim::{Sim, SimOptions};

/// Virtual microseconds of one election timeout (the minimum) in the simulator.
fn election_us(opts: &SimOptions) -> u64 {
    u64::from(opts.election_ticks) * opts.tick_us
}

fn is_heartbeat(m: &Message) -> bool {
    matches!(m.body, MessageBody::Heartbeat { .. })
}

// ------------------------------------------------------------------- pre-vote

/// Isolates follower `f` of a settled cluster for 20 election timeouts, then heals and
/// runs 20 more. Returns (leader before, its term, f's term while isolated, whether the
/// leader or its term ever changed, the leader and term at the end).
fn isolate_and_rejoin(seed: u64, opts: SimOptions) -> (u64, u64, u64, bool, Option<u64>, u64) {
    let mut sim = Sim::new(5, seed, opts);
    let leader = sim.run_until_leader(5_000_000).expect("a leader");
    let term = sim.nodes[&leader].raft().term();
    let f = (1..=5).find(|&id| id != leader).unwrap();
    let e = election_us(&sim.opts);

    sim.isolate(f);
    let timed_out = sim.run_until(3 * e, |s| s.nodes[&f].raft().role() != Role::Follower);
    assert!(timed_out, "the isolated node's election timer fires");
    sim.run_for(20 * e);
    let isolated_term = sim.nodes[&f].raft().term();

    sim.heal();
    let mut disrupted = false;
    sim.run_until(20 * e, |s| {
        disrupted |= s.leader() != Some(leader) || s.nodes[&leader].raft().term() != term;
        false
    });
    let end_leader = sim.leader();
    let end_term = end_leader.map_or(0, |l| sim.nodes[&l].raft().term());
    (leader, term, isolated_term, disrupted, end_leader, end_term)
}

/// Pre-vote: a follower cut off from the cluster keeps timing out, but since nobody
/// answers its pre-votes it never raises its term; when it comes back, the leader and
/// the term are exactly as before.
#[test]
fn pre_vote_keeps_a_rejoining_node_from_disrupting_the_leader() {
    let (leader, term, isolated_term, disrupted, end_leader, end_term) =
        isolate_and_rejoin(11, SimOptions::default());
    assert_eq!(
        isolated_term, term,
        "pre-votes do not raise the isolated node's term"
    );
    assert!(!disrupted, "the leader never lost its role or term");
    assert_eq!((end_leader, end_term), (Some(leader), term));
}

/// Control for the test above: without pre-vote the isolated node raises its term at
/// every timeout, and on its return it forces the cluster into a new term (here via
/// its answer to the leader's heartbeat, which carries its higher term).
#[test]
fn without_pre_vote_a_rejoining_node_disrupts_the_leader() {
    let opts = SimOptions {
        pre_vote: false,
        ..SimOptions::default()
    };
    let (_leader, term, isolated_term, disrupted, end_leader, end_term) = isolate_and_rejoin(11, opts);
    assert!(
        isolated_term > term + 5,
        "the isolated node campaigned again and again"
    );
    assert!(disrupted, "the leader was deposed");
    assert!(end_leader.is_some(), "the cluster recovers");
    assert!(end_term > term, "but in a later term");
}

/// Thesis 9.6: a node grants a pre-vote only if the candidate's log is up to date *and*
/// it has not heard from a leader for an election timeout. Here with pre-vote on and
/// check-quorum off: a follower that just heard from its leader, and the leader itself,
/// refuse a pre-vote from a node with an equally good log; after an election timeout
/// without news from the leader the follower grants it.
#[test]
fn pre_vote_is_refused_while_a_leader_is_heard_from() {
    let mut net = Net::new(&[1, 2, 3], |id| {
        let mut cfg = paper_config(id);
        cfg.pre_vote = true;
        cfg
    });
    net.elect(1);
    let last_index = net.node(3).last_index();
    let pre_vote = |to| {
        msg(
            3,
            to,
            2,
            MessageBody::PreVote {
                last_index,
                last_term: 1,
            },
        )
    };
    let granted = |net: &Net, to| {
        net.count_sent(|m| {
            m.from == to && m.to == 3 && m.body == MessageBody::PreVoteResponse { granted: true }
        })
    };

    net.step(pre_vote(2));
    net.step(pre_vote(1));
    assert_eq!(granted(&net, 2), 0, "the follower hears from its leader");
    assert_eq!(granted(&net, 1), 0, "the leader is alive");
    assert_eq!((net.node(1).role(), net.node(1).term()), (Role::Leader, 1));

    net.tick_n(2, ELECTION);
    net.take_where(|_| true);
    net.step(pre_vote(2));
    assert_eq!(
        granted(&net, 2),
        1,
        "no news from the leader for an election timeout"
    );
}

/// Pre-vote on its own, without check-quorum: thesis 9.6 grants a pre-vote only if the
/// voter "has not received heartbeats from a valid leader for at least a baseline
/// election timeout", so a rejoining node is refused whatever the other options.
#[test]
fn pre_vote_alone_keeps_a_rejoining_node_from_disrupting_the_leader() {
    let opts = SimOptions {
        check_quorum: false,
        ..SimOptions::default()
    };
    let mut disrupted = Vec::new();
    for seed in 0..40 {
        let (_, term, isolated_term, d, _, _) = isolate_and_rejoin(seed, opts.clone());
        assert_eq!(isolated_term, term, "seed {seed}");
        if d {
            disrupted.push(seed);
        }
    }
    assert!(
        disrupted.is_empty(),
        "the leader was deposed on rejoin with seeds {disrupted:?}"
    );
}

// --------------------------------------------------------------- check-quorum

/// Check-quorum: a leader that stops hearing from a majority steps down within two
/// election timeouts (the one under way, in which it may still have heard from them,
/// and a full one of silence); the majority elects a new leader meanwhile.
#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut sim = Sim::new(3, 5, SimOptions::default());
    let leader = sim.run_until_leader(5_000_000).expect("a leader");
    let e = election_us(&sim.opts);

    sim.isolate(leader);
    let start = sim.now();
    let stepped_down = sim.run_until(10 * e, |s| s.nodes[&leader].raft().role() != Role::Leader);
    assert!(stepped_down, "the isolated leader steps down");
    let elapsed = sim.now() - start;
    assert!(
        elapsed <= 2 * e + sim.opts.tick_us,
        "stepped down after {elapsed} us, more than two election timeouts ({} us)",
        2 * e
    );
    let others_elected = sim.run_until(10 * e, |s| {
        s.leader()
            .is_some_and(|l| l != leader && s.nodes[&l].raft().term() > s.nodes[&leader].raft().term())
    });
    assert!(others_elected, "the majority side elects a new leader");
}

/// Control: without check-quorum the isolated leader believes it leads forever.
#[test]
fn without_check_quorum_an_isolated_leader_stays_leader() {
    let opts = SimOptions {
        check_quorum: false,
        ..SimOptions::default()
    };
    let mut sim = Sim::new(3, 5, opts);
    let leader = sim.run_until_leader(5_000_000).expect("a leader");
    let e = election_us(&sim.opts);
    sim.isolate(leader);
    let stepped_down = sim.run_until(10 * e, |s| s.nodes[&leader].raft().role() != Role::Leader);
    assert!(!stepped_down);
}

/// The leader lease (thesis 4.2.3): a follower that heard from its leader within the
/// minimum election timeout ignores a vote request of a higher term, so a disruptive
/// candidate cannot depose a live leader. Once the timeout passes without news from
/// the leader, the same request is honoured.
#[test]
fn follower_in_lease_ignores_a_higher_term_vote_request() {
    let mut net = Net::new(&[1, 2, 3], default_config);
    net.elect(1);
    let last = (net.node(2).last_index(), 1);

    net.step(vote_request(3, 2, 2, last));
    assert!(net.take_where(|m| m.from == 2).is_empty(), "no answer at all");
    assert_eq!((net.node(2).term(), net.node(2).leader()), (1, Some(1)));
    assert_eq!(net.node(2).status().vote, Some(1), "still its term-1 vote");

    net.tick_n(2, ELECTION);
    net.take_where(|_| true);
    net.step(vote_request(3, 2, 3, last));
    let answer = net.take_where(|m| m.from == 2 && m.to == 3);
    assert_eq!(answer.len(), 1);
    assert_eq!(
        vote_granted(&answer[0]),
        Some(true),
        "after the lease, the vote is granted"
    );
    assert_eq!(net.node(2).term(), 3);
}

/// Control: without check-quorum there is no lease, and the same request deposes the
/// follower's allegiance at once.
#[test]
fn without_check_quorum_a_follower_has_no_lease() {
    let mut net = Net::new(&[1, 2, 3], paper_config);
    net.elect(1);
    net.step(vote_request(3, 2, 2, (net.node(2).last_index(), 1)));
    let answer = net.take_where(|m| m.from == 2 && m.to == 3);
    assert_eq!(answer.len(), 1);
    assert_eq!(vote_granted(&answer[0]), Some(true));
    assert_eq!(net.node(2).term(), 2);
}

// ------------------------------------------------------------------ ReadIndex

/// ReadIndex (thesis 6.4), step 1: a new leader does not know the commit index of the
/// previous term until it commits an entry of its own. A read it receives before its
/// no-op is committed gets no answer, even across heartbeat rounds a quorum answered;
/// once the no-op commits, the read is answered with an index at or past the no-op.
#[test]
fn read_on_a_new_leader_waits_for_its_no_op() {
    let mut net = Net::from_restores(
        [1, 2, 3].map(|id| (id, restore(&[1, 2, 3], 1, &[1, 1]))),
        default_config,
    );
    net.tick_until_campaign(1);
    net.deliver_where(|m| !matches!(m.body, MessageBody::Append(_)));
    assert_eq!(net.node(1).role(), Role::Leader);
    let noop = net.node(1).last_index();
    assert_eq!(noop, 3);
    let appends = net.take_where(|m| matches!(m.body, MessageBody::Append(_)));
    assert_eq!(appends.len(), 2, "the no-op is on its way, held");

    net.node_mut(1).read_index(7).expect("leader");
    net.process(1);
    // Heartbeat rounds go through (appends, which would carry the no-op, are lost).
    let is_append = |m: &Message| matches!(m.body, MessageBody::Append(_));
    for _ in 0..3 {
        net.tick_n(1, HEARTBEAT);
        net.take_where(is_append);
        net.deliver_where(|m| is_heartbeat(m) || matches!(m.body, MessageBody::HeartbeatResponse { .. }));
        net.take_where(is_append);
    }
    assert!(net.count_sent(is_heartbeat) >= 6, "heartbeat rounds went through");
    assert!(
        net.count_sent(|m| matches!(m.body, MessageBody::HeartbeatResponse { .. })) >= 6,
        "and were answered"
    );
    assert!(net.peer(1).reads.is_empty(), "no answer before the no-op commits");
    assert_eq!(net.node(1).commit_index(), 0);

    for m in appends {
        net.step(m);
    }
    net.deliver_all();
    assert_eq!(net.node(1).commit_index(), noop);
    assert_eq!(
        net.peer(1).reads,
        vec![ReadState {
            ctx: 7,
            index: Some(noop)
        }]
    );
}

/// ReadIndex on a single-node cluster: the node is its own quorum, so a read is
/// confirmed at once, without any message.
#[test]
fn read_on_a_single_node_cluster_is_answered_at_once() {
    let mut net = Net::new(&[1], default_config);
    net.tick_until_campaign(1);
    assert_eq!(net.node(1).role(), Role::Leader);

    net.node_mut(1).read_index(3).expect("leader");
    net.process(1);

    assert_eq!(
        net.peer(1).reads,
        vec![ReadState {
            ctx: 3,
            index: Some(1)
        }]
    );
}

/// The same through the simulator's driver, which (like the sidecar) only takes a ready
/// when `has_ready()` says there is one: the read must not wait forever.
#[test]
fn read_on_a_single_node_simulated_cluster_completes() {
    let mut sim = Sim::new(1, 3, SimOptions::default());
    sim.run_until_leader(5_000_000).expect("a leader");
    sim.run_for(election_us(&sim.opts));
    assert_eq!(
        sim.nodes[&1].raft().commit_index(),
        1,
        "settled: the no-op is committed"
    );
    assert!(sim.read_index(1, 42));
    let done = sim.run_until(10 * election_us(&sim.opts), |s| !s.reads(1).is_empty());
    assert!(done, "the read completes");
    assert!(matches!(sim.reads(1), [(42, Some(i))] if *i >= 1));
}

/// ReadIndex batching: reads that arrive together share one confirmation round, a
/// single heartbeat to each follower, and all get the same read index.
#[test]
fn reads_issued_together_share_one_heartbeat_round() {
    let mut net = Net::new(&[1, 2, 3, 4, 5], default_config);
    net.elect(1);
    let commit = net.node(1).commit_index();
    let before = net.count_sent(is_heartbeat);

    for ctx in 0..10 {
        net.node_mut(1).read_index(ctx).expect("leader");
    }
    net.process(1);
    net.deliver_all();

    assert_eq!(
        net.count_sent(is_heartbeat) - before,
        4,
        "one heartbeat per follower, once"
    );
    let expected: Vec<ReadState> = (0..10)
        .map(|ctx| ReadState {
            ctx,
            index: Some(commit),
        })
        .collect();
    assert_eq!(net.peer(1).reads, expected);
}

/// ReadIndex linearizability: a read that arrives after a confirmation round started
/// cannot be confirmed by that round's answers (they may predate the read); it waits
/// for a later round.
#[test]
fn read_arriving_after_a_round_started_waits_for_a_later_round() {
    let mut net = Net::new(&[1, 2, 3], default_config);
    net.elect(1);

    net.node_mut(1).read_index(1).expect("leader");
    net.process(1);
    let first_round: Vec<Message> = net.take_where(is_heartbeat);
    assert_eq!(first_round.len(), 2);
    let round = match first_round[0].body {
        MessageBody::Heartbeat { round, .. } => round,
        _ => unreachable!(),
    };

    net.node_mut(1).read_index(2).expect("leader");
    net.process(1);
    let second_round: Vec<Message> = net.take_where(is_heartbeat);
    assert_eq!(second_round.len(), 2, "a new round starts for the second read");

    for m in first_round {
        net.step(m);
    }
    net.deliver_all();
    let ctxs: Vec<u64> = net.peer(1).reads.iter().map(|r| r.ctx).collect();
    assert_eq!(
        ctxs,
        vec![1],
        "round {round} confirms only the read that preceded it"
    );

    for m in second_round {
        net.step(m);
    }
    net.deliver_all();
    let ctxs: Vec<u64> = net.peer(1).reads.iter().map(|r| r.ctx).collect();
    assert_eq!(ctxs, vec![1, 2]);
}

/// ReadIndex on a follower: the request is forwarded to the leader, which confirms its
/// leadership and answers with its commit index; the follower then serves the read
/// once it has applied that far.
#[test]
fn read_on_a_follower_is_forwarded_and_answered() {
    let mut net = Net::new(&[1, 2, 3], default_config);
    net.elect(1);
    net.propose(1, "x");
    net.deliver_all();
    let commit = net.node(1).commit_index();

    net.node_mut(2).read_index(9).expect("a leader is known");
    net.process(2);
    let forwarded = net.on_wire(|m| m.from == 2);
    assert_eq!(forwarded.len(), 1);
    assert_eq!(
        (forwarded[0].to, &forwarded[0].body),
        (1, &MessageBody::ReadIndex { ctx: 9 })
    );

    net.deliver_all();
    assert_eq!(
        net.peer(2).reads,
        vec![ReadState {
            ctx: 9,
            index: Some(commit)
        }]
    );
    assert!(
        net.peer(2).applied.iter().any(|e| e.index == commit),
        "applied up to it"
    );
}

/// ReadIndex safety: a leader that lost its quorum cannot confirm a read, so the read
/// never completes with an index; when check-quorum makes the leader step down, the
/// read fails (index `None`) so the caller can retry elsewhere.
#[test]
fn read_on_a_leader_without_quorum_fails_on_step_down() {
    let mut net = Net::new(&[1, 2, 3], default_config);
    net.elect(1);
    net.isolate(1);

    net.node_mut(1).read_index(5).expect("leader");
    net.process(1);
    let mut ticks = 0;
    while net.node(1).role() == Role::Leader {
        assert!(
            net.peer(1).reads.is_empty(),
            "no answer while the leader is cut off"
        );
        net.tick(1);
        net.deliver_all();
        ticks += 1;
        assert!(
            ticks <= 3 * ELECTION,
            "check-quorum should have deposed the leader"
        );
    }
    assert_eq!(net.peer(1).reads, vec![ReadState { ctx: 5, index: None }]);
}

// -------------------------------------------------------- leadership transfer

/// Leadership transfer to an up-to-date follower: the leader tells it to campaign at
/// once (TimeoutNow), and it wins in the next term, much faster than an election
/// timeout could.
#[test]
fn transfer_to_an_up_to_date_follower_completes_quickly() {
    let mut sim = Sim::new(3, 21, SimOptions::default());
    let leader = sim.run_until_leader(5_000_000).expect("a leader");
    let p = sim.propose(leader, &b"x"[..]).expect("leader");
    assert!(sim.run_until(1_000_000, |s| s
        .nodes
        .values()
        .all(|n| n.raft().commit_index() >= p.index)));
    let term = sim.nodes[&leader].raft().term();
    let target = (1..=3).find(|&id| id != leader).unwrap();

    let start = sim.now();
    assert!(sim.transfer_leader(leader, target));
    let done = sim.run_until(10 * election_us(&sim.opts), |s| {
        s.nodes.values().all(|n| n.raft().leader() == Some(target))
    });
    assert!(done, "the transfer completes");
    let ticks = (sim.now() - start) / sim.opts.tick_us;
    assert!(
        ticks < u64::from(sim.opts.election_ticks),
        "took {ticks} ticks, an election timeout is {}",
        sim.opts.election_ticks
    );
    assert_eq!(sim.nodes[&target].raft().term(), term + 1);
    assert_eq!(sim.nodes[&leader].raft().role(), Role::Follower);
}

/// Leadership transfer to a follower that missed entries: the leader first brings it
/// up to date and only then tells it to campaign (it could not win otherwise); it
/// becomes leader with the full log.
#[test]
fn transfer_to_a_lagging_follower_catches_it_up_first() {
    let mut net = Net::new(&[1, 2, 3], default_config);
    net.elect(1);
    net.isolate(3);
    for data in ["a", "b", "c", "d"] {
        net.propose(1, data);
    }
    net.deliver_all();
    let last = net.node(1).last_index();
    assert_eq!(net.node(1).commit_index(), last);
    assert!(net.node(3).last_index() < last, "3 missed the proposals");
    net.heal();

    net.node_mut(1).transfer_leader(3).expect("leader");
    net.process(1);
    assert!(
        net.on_wire(|m| m.body == MessageBody::TimeoutNow).is_empty(),
        "no TimeoutNow to a lagging target"
    );
    while net.count_sent(|m| m.body == MessageBody::TimeoutNow) == 0 {
        assert!(net.deliver_next().is_some(), "the transfer stalled");
    }
    assert_eq!(net.log(3), net.log(1), "caught up before being told to campaign");

    net.deliver_all();
    assert_eq!(net.node(3).role(), Role::Leader);
    assert_eq!(net.node(1).role(), Role::Follower);
    let log = net.log(3);
    assert_eq!(log.len() as u64, last + 1, "the full log plus its own no-op");
    assert_eq!(log[..last as usize], net.log(1)[..last as usize]);
}

/// While a transfer runs the leader refuses proposals (they would delay the target
/// catching up, and could be lost); after an election timeout without success the
/// transfer is abandoned and proposals are accepted again.
#[test]
fn proposals_are_refused_during_a_transfer() {
    let mut net = Net::new(&[1, 2, 3], default_config);
    net.elect(1);
    net.isolate(3);

    net.node_mut(1).transfer_leader(3).expect("leader");
    net.process(1);
    assert_eq!(
        net.node_mut(1).propose("x".into()),
        Err(ProposeError::TransferInProgress)
    );

    for _ in 0..ELECTION {
        net.tick(1);
        net.deliver_all();
    }
    assert_eq!(
        net.node(1).role(),
        Role::Leader,
        "the transfer failed, 1 still leads"
    );
    assert!(
        net.node_mut(1).propose("x".into()).is_ok(),
        "and serves proposals again"
    );
}
