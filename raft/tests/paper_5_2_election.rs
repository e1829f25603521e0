//! Raft paper, section 5.2: leader election.
//!
//! "If a follower receives no communication over a period of time called the election
//! timeout, then it assumes there is no viable leader and begins an election to choose
//! a new leader. To begin an election, a follower increments its current term and
//! transitions to candidate state. It then votes for itself and issues RequestVote RPCs
//! in parallel to each of the other servers in the cluster." Each server votes for at
//! most one candidate per term; a candidate that hears from a leader of its term steps
//! down; a split vote times out and is retried in a new term; randomized timeouts keep
//! split votes rare.
//!
//! The core adds a pre-vote round (thesis 9.6) in front of the vote when
//! `pre_vote` is on; tests that are about the paper's algorithm itself turn it off.

mod paper_harness;

use paper_harness::*;
use raft::core::{MessageBody, Role};
use raft::sim::{Sim, SimOptions};

fn is_pre_vote(m: &raft::core::Message) -> bool {
    matches!(m.body, MessageBody::PreVote { .. })
}

fn is_vote(m: &raft::core::Message) -> bool {
    matches!(m.body, MessageBody::Vote { .. })
}

/// 5.2: a follower stays quiet for its election timeout, then campaigns. With pre-vote
/// it first asks, without raising its term, whether it could win; once a majority says
/// yes it increments its term, votes for itself and requests votes. The new term and
/// the self-vote are handed out for persistence, and the vote requests are held back
/// until that write is done (they are `persisted_messages`).
#[test]
fn follower_campaigns_after_its_election_timeout() {
    let mut net = Net::new(&[1, 2, 3], default_config);

    net.tick_n(1, ELECTION - 1);
    assert!(
        net.sent.is_empty(),
        "nothing happens before the minimum election timeout"
    );
    assert_eq!(net.node(1).role(), Role::Follower);

    let mut pre_vote_ready = None;
    for _ in 0..ELECTION {
        net.node_mut(1).tick();
        if net.node(1).role() != Role::Follower {
            pre_vote_ready = Some(net.node_mut(1).ready());
            break;
        }
        net.process(1);
    }
    let rd = pre_vote_ready.expect("the election timeout fired within 2 * ELECTION ticks");
    assert_eq!(net.node(1).role(), Role::PreCandidate);
    assert_eq!(net.node(1).term(), 0, "a pre-vote does not raise the term");
    let pre_votes: Vec<_> = rd.persisted_messages.iter().filter(|m| is_pre_vote(m)).collect();
    assert_eq!(pre_votes.len(), 2, "a pre-vote request to each other voter");
    assert!(
        pre_votes.iter().all(|m| m.term == 1),
        "pre-votes name the term it would campaign in"
    );
    net.perform(1, rd);

    // Both peers answer yes; the first yes makes a majority with its own.
    net.deliver_where(is_pre_vote);
    let answers = net.take_where(|m| m.to == 1);
    assert_eq!(answers.len(), 2);
    assert!(answers
        .iter()
        .all(|m| m.body == MessageBody::PreVoteResponse { granted: true }));
    net.node_mut(1).step(answers[0].clone());
    assert_eq!(net.node(1).role(), Role::Candidate);
    let rd = net.node_mut(1).ready();
    let hs = rd.hard_state.expect("the new term and vote must be persisted");
    assert_eq!(
        (hs.term, hs.vote),
        (1, Some(1)),
        "term + 1, and a vote for itself"
    );
    let votes: Vec<_> = rd.persisted_messages.iter().filter(|m| is_vote(m)).collect();
    assert_eq!(votes.len(), 2, "a vote request to each other voter");
    assert!(votes.iter().all(|m| m.term == 1));
    assert!(
        !rd.messages.iter().any(is_vote),
        "vote requests never leave before the self-vote is durable"
    );
    net.perform(1, rd);
    assert_eq!(net.peer(1).disk.hard_state.vote, Some(1));

    net.deliver_all();
    assert_eq!(net.node(1).role(), Role::Leader);
    assert_eq!(net.node(1).term(), 1);
}

/// 5.2: with every message delivered, one node timing out wins in a single round (one
/// pre-vote and one vote request per peer) in clusters of 1, 3 and 5, and every other
/// node ends up following it in term 1.
#[test]
fn one_round_elections_in_clusters_of_1_3_and_5() {
    for n in [1u64, 3, 5] {
        let ids: Vec<u64> = (1..=n).collect();
        let mut net = Net::new(&ids, default_config);
        net.tick_until_campaign(1);
        net.deliver_all();

        assert_eq!(net.node(1).role(), Role::Leader, "cluster of {n}");
        assert_eq!(net.node(1).term(), 1, "cluster of {n}: won in the first term");
        for &id in &ids[1..] {
            let r = net.node(id);
            assert_eq!(
                (r.role(), r.term(), r.leader()),
                (Role::Follower, 1, Some(1)),
                "node {id}"
            );
        }
        let peers = (n - 1) as usize;
        assert_eq!(
            net.count_sent(is_pre_vote),
            peers,
            "cluster of {n}: one pre-vote round"
        );
        assert_eq!(net.count_sent(is_vote), peers, "cluster of {n}: one vote round");
    }
}

/// 5.2: "each server will vote for at most one candidate in a given term, on a
/// first-come-first-served basis". A second candidate of the same term is refused; the
/// first one asking again (a retransmission) is granted again. The vote is durable
/// before the grant leaves.
#[test]
fn a_node_grants_at_most_one_vote_per_term() {
    let mut net = Net::new(&[1, 2, 3], paper_config);
    net.tick_until_campaign(1);
    net.tick_until_campaign(2);
    assert_eq!(
        (net.node(1).term(), net.node(2).term()),
        (1, 1),
        "two candidates in term 1"
    );
    let from_1 = net.take_where(|m| m.from == 1 && m.to == 3).remove(0);
    let from_2 = net.take_where(|m| m.from == 2 && m.to == 3).remove(0);

    net.node_mut(3).step(from_1.clone());
    let rd = net.node_mut(3).ready();
    assert_eq!(rd.hard_state.map(|h| (h.term, h.vote)), Some((1, Some(1))));
    let grant = rd
        .persisted_messages
        .iter()
        .find(|m| m.to == 1)
        .expect("an answer to 1");
    assert_eq!(vote_granted(grant), Some(true));
    assert!(
        rd.messages.is_empty(),
        "the grant waits for the vote to be durable"
    );
    net.perform(3, rd);

    net.step(from_2);
    let to_2 = net.take_where(|m| m.from == 3 && m.to == 2);
    assert_eq!(to_2.len(), 1, "the second candidate gets an answer");
    assert_eq!(
        vote_granted(&to_2[0]),
        Some(false),
        "already voted for 1 in term 1"
    );
    assert_eq!(net.node(3).status().vote, Some(1));

    net.step(from_1);
    let again = net.on_wire(|m| m.from == 3 && m.to == 1 && vote_granted(m).is_some());
    assert_eq!(again.len(), 2);
    assert!(
        again.iter().all(|m| vote_granted(m) == Some(true)),
        "same candidate, same answer"
    );

    net.deliver_all();
    assert_eq!(net.node(1).role(), Role::Leader);
    assert_ne!(net.node(2).role(), Role::Leader);
}

/// 5.2: "If the AppendEntries RPC is from a leader whose term is at least as large as
/// the candidate's current term, then the candidate recognizes the leader as legitimate
/// and returns to follower state."
#[test]
fn candidate_follows_a_leader_of_its_own_term() {
    let mut net = Net::new(&[1, 2, 3], paper_config);
    net.tick_until_campaign(1);
    assert_eq!((net.node(1).role(), net.node(1).term()), (Role::Candidate, 1));
    net.take_where(|_| true);

    net.step(append(2, 1, 1, (0, 0), vec![entry(1, 1)], 0));

    let r = net.node(1);
    assert_eq!((r.role(), r.term(), r.leader()), (Role::Follower, 1, Some(2)));
    assert_eq!(net.log_terms(1), vec![1], "and it accepts the leader's entries");
    let acks = net.on_wire(|m| m.from == 1 && m.to == 2);
    assert_eq!(acks.len(), 1);
    let ack = as_append_response(&acks[0]).expect("an AppendResponse");
    assert!(!ack.reject);
    assert_eq!(ack.index, 1);
}

/// 5.2 with pre-vote: a pre-candidate that hears from a leader of its term (a heartbeat
/// it had missed) also gives up and follows.
#[test]
fn pre_candidate_follows_a_leader_of_its_own_term() {
    let mut net = Net::from_restores(
        [1, 2, 3].map(|id| (id, restore(&[1, 2, 3], 3, &[1, 2, 3]))),
        default_config,
    );
    net.tick_until_campaign(1);
    assert_eq!((net.node(1).role(), net.node(1).term()), (Role::PreCandidate, 3));

    net.step(msg(2, 1, 3, MessageBody::Heartbeat { commit: 0, round: 0 }));

    let r = net.node(1);
    assert_eq!((r.role(), r.term(), r.leader()), (Role::Follower, 3, Some(2)));
}

/// 5.2: a candidate that neither wins nor loses (here: hears nothing at all) times out
/// and starts a new election in the next term, after a fresh randomized timeout.
#[test]
fn candidate_that_hears_nothing_retries_in_a_new_term() {
    let mut net = Net::new(&[1, 2, 3], paper_config);
    net.tick_until_campaign(1);
    assert_eq!(net.node(1).term(), 1);
    assert_eq!(net.take_where(is_vote).len(), 2, "term-1 vote requests, lost");

    let ticks = net.tick_until_new_term(1);
    assert!(
        (ELECTION..2 * ELECTION).contains(&ticks),
        "retried after {ticks} ticks"
    );
    assert_eq!((net.node(1).role(), net.node(1).term()), (Role::Candidate, 2));
    let retry = net.on_wire(is_vote);
    assert_eq!(retry.len(), 2);
    assert!(retry.iter().all(|m| m.term == 2));

    net.deliver_all();
    assert_eq!((net.node(1).role(), net.node(1).term()), (Role::Leader, 2));
}

/// 5.2: a split vote. In a 4-node cluster two candidates of term 1 each get one vote
/// besides their own; nobody reaches 3 of 4, nobody leads term 1, and time (randomized
/// timeouts) produces a leader in a later term.
#[test]
fn split_vote_is_resolved_in_a_later_term() {
    let mut net = Net::new(&[1, 2, 3, 4], paper_config);
    net.tick_until_campaign(1);
    net.tick_until_campaign(2);
    assert_eq!((net.node(1).term(), net.node(2).term()), (1, 1));
    // 3 hears from 1 first, 4 from 2 first.
    let first = net.take_where(|m| (m.from, m.to) == (1, 3) || (m.from, m.to) == (2, 4));
    assert_eq!(first.len(), 2);
    for m in first {
        net.step(m);
    }
    net.deliver_all();

    for id in 1..=4 {
        assert_ne!(net.node(id).role(), Role::Leader, "node {id} must not win term 1");
    }
    let grants = net.count_sent(|m| vote_granted(m) == Some(true));
    assert_eq!(grants, 2, "one vote each: 3 for 1 and 4 for 2");

    let elected = net.run_until(&[1, 2, 3, 4], 10 * ELECTION, |n| {
        (1..=4).any(|id| n.node(id).role() == Role::Leader)
    });
    assert!(elected, "the split is resolved");
    let leader = (1..=4).find(|&id| net.node(id).role() == Role::Leader).unwrap();
    assert!(net.node(leader).term() >= 2, "in a later term");
}

/// 5.2: "election timeouts are chosen randomly from a fixed interval". Every timeout,
/// the first one and each one re-drawn after a fruitless campaign, falls in
/// `[election_ticks, 2 * election_ticks)`, and over many seeds the whole interval is
/// used.
#[test]
fn election_timeouts_are_drawn_from_the_randomized_interval() {
    let mut samples = Vec::new();
    for seed in 0..200u64 {
        let mut net = Net::new(&[1, 2, 3], |id| {
            let mut cfg = default_config(id);
            cfg.seed = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ id;
            cfg
        });
        // The lone node keeps timing out (nobody answers its pre-votes); each timeout
        // shows as a new round of pre-vote requests.
        let mut ticks = 0;
        let mut rounds = 0;
        while samples.len() < 3 * (seed as usize + 1) {
            net.tick(1);
            ticks += 1;
            assert!(
                ticks <= 2 * ELECTION,
                "seed {seed}: a timeout exceeded 2 * election_ticks"
            );
            let now = net.count_sent(is_pre_vote) / 2;
            if now > rounds {
                rounds = now;
                samples.push(ticks);
                ticks = 0;
            }
        }
    }
    let min = *samples.iter().min().unwrap();
    let max = *samples.iter().max().unwrap();
    assert_eq!(min, ELECTION, "the interval starts at election_ticks");
    assert_eq!(max, 2 * ELECTION - 1, "and reaches up to 2 * election_ticks - 1");
    let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
    assert_eq!(
        distinct.len(),
        ELECTION as usize,
        "every value of the interval is drawn"
    );
}

/// Runs `sim` until a leader is known to every live node, and returns it with the set of
/// nodes that campaigned (pre-vote or vote) on the way.
fn election(sim: &mut Sim) -> (u64, std::collections::BTreeSet<u64>) {
    let mut campaigners = std::collections::BTreeSet::new();
    let done = sim.run_until(10_000_000, |s| {
        for (&id, n) in &s.nodes {
            if n.raft
                .as_ref()
                .is_some_and(|r| matches!(r.role(), Role::PreCandidate | Role::Candidate))
            {
                campaigners.insert(id);
            }
        }
        s.leader().is_some_and(|l| {
            let term = s.nodes[&l].raft().term();
            s.nodes
                .values()
                .filter(|n| n.is_up())
                .all(|n| n.raft().leader() == Some(l) && n.raft().term() == term)
        })
    });
    assert!(done, "seed {}: no leader within 10 s", sim.seed());
    (sim.leader().expect("a leader"), campaigners)
}

/// 5.2: randomized timeouts make competing candidacies rare. Over many seeded 5-node
/// simulated clusters (random latencies, clocks at staggered offsets), both for the
/// first election and for the one after the leader crashes, the elections in which more
/// than one node campaigned stay under 30%, and no election needs more than one term.
#[test]
fn randomized_timeouts_rarely_collide() {
    let runs = 200u64;
    let (mut collided, mut elections, mut extra_terms) = (0, 0, 0);
    for seed in 0..runs {
        let mut sim = Sim::new(5, seed, SimOptions::default());
        let (first, campaigners) = election(&mut sim);
        elections += 1;
        collided += usize::from(campaigners.len() > 1);
        extra_terms += usize::from(sim.nodes[&first].raft().term() > 1);

        let before = sim.nodes[&first].raft().term();
        sim.crash(first);
        let (second, campaigners) = election(&mut sim);
        assert_ne!(second, first);
        elections += 1;
        collided += usize::from(campaigners.len() > 1);
        extra_terms += usize::from(sim.nodes[&second].raft().term() > before + 1);
    }
    eprintln!("{collided}/{elections} elections had competing candidates, {extra_terms} needed another term");
    assert!(
        (collided as f64) < 0.30 * elections as f64,
        "{collided} of {elections} elections had more than one candidate"
    );
    assert!((extra_terms as f64) < 0.30 * elections as f64);
}
