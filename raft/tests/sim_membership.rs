//! Membership changes in the simulator: learners, promotion, removal, replacement,
//! a leader removing itself, and a removed node that comes back with a higher term.
//!
//! Changes are single-server (one voter added or removed per configuration entry),
//! proposed by the leader once it has committed an entry of its own term. A new node
//! starts with an empty disk and no configuration: it learns everything, its own
//! membership included, from the leader (by snapshot when the log has been compacted).
//! The simulator checks the safety properties after every event, across
//! configurations.

use raft::core::{EntryPayload, Membership, NodeId, ProposeError, Role};
use raft::sim::{Proposal, Sim, SimOptions};

const SECOND: u64 = 1_000_000;

fn compacting() -> SimOptions {
    SimOptions {
        snapshot_every: 20,
        snapshot_keep: 5,
        ..SimOptions::default()
    }
}

fn add_learner(id: NodeId) -> impl Fn(&Membership) -> Membership {
    move |m| {
        let mut m = m.clone();
        m.learners.insert(id);
        m
    }
}

fn promote(id: NodeId) -> impl Fn(&Membership) -> Membership {
    move |m| {
        let mut m = m.clone();
        m.learners.remove(&id);
        m.voters.insert(id);
        m
    }
}

fn remove(id: NodeId) -> impl Fn(&Membership) -> Membership {
    move |m| {
        let mut m = m.clone();
        m.voters.remove(&id);
        m.learners.remove(&id);
        m.addrs.remove(&id);
        m
    }
}

/// Propose `change` of the leader's configuration until it is committed; returns the
/// configuration and its index.
fn change(sim: &mut Sim, change: impl Fn(&Membership) -> Membership) -> (Membership, u64) {
    for _ in 0..200 {
        let Some(l) = sim.leader() else {
            sim.run_for(50_000);
            continue;
        };
        let next = change(sim.nodes[&l].raft().membership());
        match sim.propose_membership(l, next.clone()) {
            Ok((index, term)) => {
                let committed = sim.run_until(3 * SECOND, |s| s.committed_entries().contains_key(&index));
                let ours = sim
                    .committed_entries()
                    .get(&index)
                    .is_some_and(|(t, p)| *t == term && *p == EntryPayload::Membership(next.clone()));
                if committed && ours {
                    return (next, index);
                }
            }
            Err(ProposeError::InvalidMembership(why)) => panic!("change refused: {why}"),
            Err(_) => sim.run_for(20_000),
        }
    }
    panic!("seed {}: the configuration change never committed", sim.seed());
}

/// Propose `count` commands through whoever leads. Returns the last accepted index.
fn workload(sim: &mut Sim, tag: &str, count: usize) -> u64 {
    workload_tracked(sim, tag, count, &mut Vec::new())
}

/// [`workload`], recording every accepted proposal in `proposals`.
fn workload_tracked(sim: &mut Sim, tag: &str, count: usize, proposals: &mut Vec<Proposal>) -> u64 {
    let mut last = 0;
    let mut sent = 0;
    let mut attempts = 0;
    while sent < count {
        attempts += 1;
        assert!(attempts < 200 * count, "seed {}: no progress", sim.seed());
        match sim.leader() {
            Some(l) => {
                if let Some(p) = sim.propose(l, format!("{tag}-{sent}").into_bytes()) {
                    last = p.index;
                    proposals.push(p);
                    sent += 1;
                }
                sim.run_for(2_000);
            }
            None => sim.run_for(50_000),
        }
    }
    last
}

/// Commit one more command and wait until every member of the leader's configuration
/// applied it. Returns (leader, index).
fn settle(sim: &mut Sim, tag: &str) -> (NodeId, u64) {
    for round in 0..20 {
        let Some(l) = sim.run_until_leader(5 * SECOND) else {
            continue;
        };
        if let Some(p) = sim.propose(l, format!("{tag}-final-{round}").into_bytes()) {
            if sim.run_until(10 * SECOND, |s| s.converged(p.index)) {
                return (sim.leader().expect("converged under a leader"), p.index);
            }
        }
    }
    panic!("seed {}: the cluster did not converge", sim.seed());
}

/// The leader's view of how far `id` has replicated.
fn matched(sim: &Sim, id: NodeId) -> Option<u64> {
    let l = sim.leader()?;
    let status = sim.nodes[&l].raft().status();
    status.peers.iter().find(|p| p.id == id).map(|p| p.matched)
}

#[test]
fn learner_catches_up_by_snapshot_does_not_count_then_is_promoted() {
    let mut sim = Sim::new(3, 1, compacting());
    let leader = sim.run_until_leader(5 * SECOND).expect("a leader");
    workload(&mut sim, "before", 100);
    assert!(
        sim.nodes[&leader].raft().status().first_index > 1,
        "the log was compacted"
    );

    sim.add_node(4);
    assert!(
        sim.nodes[&4].raft().membership().voters.is_empty(),
        "a new node knows no configuration"
    );
    let (learning, _) = change(&mut sim, add_learner(4));
    let (_, last) = settle(&mut sim, "learner");
    let four = &sim.nodes[&4];
    assert!(four.installs >= 1, "the learner caught up without a snapshot");
    assert!(four.sm.index >= last);
    assert_eq!(
        four.raft().membership(),
        &learning,
        "the learner learned its configuration"
    );
    assert_eq!(four.raft().role(), Role::Follower);

    // A learner does not count toward commitment: the leader and the learner alone
    // commit nothing.
    let leader = sim.leader().expect("a leader");
    let voters: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    for &v in &voters {
        sim.crash(v);
    }
    let before = sim.nodes[&leader].raft().commit_index();
    let p = sim.propose(leader, &b"uncommittable"[..]).expect("still leader");
    sim.run_for(50_000);
    assert!(
        matched(&sim, 4).is_some_and(|m| m >= p.index),
        "the learner holds the entry"
    );
    assert_eq!(
        sim.nodes[&leader].raft().commit_index(),
        before,
        "a learner's ack counted"
    );
    for &v in &voters {
        sim.restart(v);
    }
    settle(&mut sim, "voters-back");

    // Promote the caught-up learner: it now counts, so one original voter can go down.
    let (promoted, _) = change(&mut sim, promote(4));
    assert_eq!(promoted.voters.len(), 4);
    let leader = sim.leader().expect("a leader");
    let down = *[1, 2, 3].iter().find(|&&id| id != leader).expect("a follower");
    sim.crash(down);
    let (_, last) = settle(&mut sim, "promoted");
    assert!(sim.nodes[&4].sm.index >= last);
    sim.restart(down);
    let (_, last) = settle(&mut sim, "end");
    sim.check_log_matching();
    sim.check_history(last);
}

#[test]
fn removed_follower_stops_receiving_and_the_rest_commits() {
    let mut sim = Sim::new(3, 2, compacting());
    let leader = sim.run_until_leader(5 * SECOND).expect("a leader");
    workload(&mut sim, "before", 30);
    let gone = *[1, 2, 3].iter().find(|&&id| id != leader).expect("a follower");
    let (next, index) = change(&mut sim, remove(gone));
    assert!(!next.contains(gone));
    let (_, last) = settle(&mut sim, "removed");
    let term = sim.nodes[&gone].raft().term();
    let applied = sim.nodes[&gone].sm.index;
    workload(&mut sim, "after", 60);
    let (leader2, last2) = settle(&mut sim, "after");
    assert!(last2 > last + 60);
    let node = &sim.nodes[&gone];
    assert!(
        node.sm.index <= applied.max(index),
        "the removed node still receives entries"
    );
    // It never got the entry that removed it (the leader stops replicating to a node as
    // soon as it appends a configuration without it), so it still believes it is a
    // voter and pre-campaigns, but pre-vote keeps its term, and the cluster's, still.
    assert_eq!(node.raft().term(), term, "the removed node raised its term");
    assert_eq!(leader2, leader, "the removed node disrupted the leader");
    assert_eq!(sim.nodes[&leader2].raft().membership(), &next);
    sim.check_history(last2);
}

#[test]
fn replace_a_node_under_workload_partitions_and_crashes() {
    for seed in 0..6 {
        let opts = SimOptions {
            drop_rate: 0.02,
            ..compacting()
        };
        let mut sim = Sim::new(3, 40 + seed, opts);
        let mut proposals = Vec::new();
        sim.run_until_leader(5 * SECOND).expect("a leader");
        workload_tracked(&mut sim, "w0", 60, &mut proposals);

        // A follower is cut off while the new node joins as a learner.
        let leader = sim.leader().expect("a leader");
        let cut = *[1, 2, 3].iter().find(|&&id| id != leader).expect("a follower");
        sim.isolate(cut);
        sim.add_node(4);
        change(&mut sim, add_learner(4));
        workload_tracked(&mut sim, "w1", 40, &mut proposals);
        sim.heal();

        // Wait for the learner to catch up (by snapshot: the log is compacted), with a
        // crash of some follower meanwhile.
        let leader = sim.leader().expect("a leader");
        let victim = *[1, 2, 3].iter().find(|&&id| id != leader).expect("a follower");
        sim.crash(victim);
        let commit = sim.nodes[&leader].raft().commit_index();
        assert!(
            sim.run_until(5 * SECOND, |s| matched(s, 4).is_some_and(|m| m >= commit)),
            "seed {seed}: the learner did not catch up"
        );
        sim.restart(victim);
        assert!(
            sim.nodes[&4].installs >= 1,
            "seed {seed}: the learner needed a snapshot"
        );
        change(&mut sim, promote(4));
        workload_tracked(&mut sim, "w2", 30, &mut proposals);

        // Remove node 1 (possibly the leader) while node 2 is partitioned for a while.
        sim.isolate(2);
        let (next, _) = change(&mut sim, remove(1));
        assert_eq!(next.voters.iter().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
        workload_tracked(&mut sim, "w3", 20, &mut proposals);
        sim.heal();
        let (leader, last) = settle(&mut sim, "end");
        assert_ne!(leader, 1, "seed {seed}: the removed node leads");
        for id in [2, 3, 4] {
            assert!(
                sim.nodes[&id].sm.index >= last,
                "seed {seed}: node {id} did not converge"
            );
            assert_eq!(sim.nodes[&id].raft().membership(), &next);
        }
        sim.check_log_matching();
        let applied = sim.check_history(last);
        // A proposal accepted by a leader is applied at its index, or lost because a
        // later leader put another entry in its slot (here: proposals a leader took
        // just before being cut off); never anything else.
        let mut lost = 0;
        for p in &proposals {
            match sim.applied_entries().get(&p.index) {
                Some((term, EntryPayload::Normal(data))) if *term == p.term => {
                    assert_eq!(
                        data, &p.data,
                        "seed {seed}: index {} holds another command",
                        p.index
                    )
                }
                Some((term, _)) => {
                    assert_ne!(
                        *term, p.term,
                        "seed {seed}: index {} changed within a term",
                        p.index
                    );
                    lost += 1;
                }
                None => panic!("seed {seed}: index {} was never applied", p.index),
            }
        }
        assert!(
            applied >= proposals.len() - lost,
            "seed {seed}: {applied} commands applied"
        );
        assert!(lost <= 5, "seed {seed}: {lost} proposals lost to leader changes");
    }
}

#[test]
fn leader_removing_itself_steps_down_and_a_new_leader_is_elected() {
    let mut sim = Sim::new(3, 3, compacting());
    let old = sim.run_until_leader(5 * SECOND).expect("a leader");
    workload(&mut sim, "before", 30);
    let term = sim.nodes[&old].raft().term();
    let (next, index) = change(&mut sim, remove(old));
    // It led until the change committed, then stepped down and handed over to an
    // up-to-date voter at once, without waiting for an election timeout.
    assert!(sim.run_until(SECOND, |s| s.nodes[&old].raft().role() != Role::Leader));
    assert!(sim.nodes[&old].raft().commit_index() >= index);
    let stepped_down = sim.now();
    assert!(sim.run_until(SECOND, |s| s.leader().is_some_and(|l| l != old)));
    let election_timeout = u64::from(sim.opts.election_ticks) * sim.opts.tick_us;
    assert!(
        sim.now() - stepped_down < election_timeout,
        "no hand-over: the new leader took {} us",
        sim.now() - stepped_down
    );
    let (leader, last) = settle(&mut sim, "after");
    assert_ne!(leader, old);
    assert!(sim.nodes[&leader].raft().term() > term);
    assert_eq!(sim.nodes[&leader].raft().membership(), &next);
    // The old leader is no longer a voter: it never campaigns again.
    let old_term = sim.nodes[&old].raft().term();
    workload(&mut sim, "later", 30);
    sim.run_for(2 * SECOND);
    assert_eq!(sim.nodes[&old].raft().term(), old_term);
    assert_eq!(sim.nodes[&old].raft().role(), Role::Follower);
    let (_, last2) = settle(&mut sim, "end");
    assert!(last2 > last);
    sim.check_history(last2);
}

/// Node 3 is cut off, campaigns on its own and raises its term well past the
/// cluster's; meanwhile the cluster removes it. When it can reach the cluster again, its
/// vote requests must not depose the leader.
fn removed_node_comes_back(pre_vote: bool) {
    let opts = SimOptions {
        pre_vote,
        check_quorum: true,
        ..compacting()
    };
    let mut sim = Sim::new(3, 11, opts);
    let mut leader = sim.run_until_leader(5 * SECOND).expect("a leader");
    if leader == 3 {
        assert!(sim.transfer_leader(3, 1));
        leader = sim.run_until_leader(5 * SECOND).expect("a leader");
    }
    assert_ne!(leader, 3);
    workload(&mut sim, "before", 20);
    sim.isolate(3);
    sim.run_for(2 * SECOND);
    change(&mut sim, remove(3));
    workload(&mut sim, "removed", 20);
    let (leader, _) = settle(&mut sim, "removed");
    let term = sim.nodes[&leader].raft().term();
    let removed_term = sim.nodes[&3].raft().term();
    if !pre_vote {
        assert!(removed_term > term, "node 3 did not raise its term while alone");
    }
    assert!(
        sim.nodes[&3].raft().membership().is_voter(3),
        "node 3 does not know it was removed"
    );

    sim.heal();
    for round in 0..10 {
        workload(&mut sim, &format!("healed-{round}"), 5);
        sim.run_for(300_000);
        assert_eq!(sim.leader(), Some(leader), "the removed node deposed the leader");
        assert_eq!(sim.nodes[&leader].raft().term(), term, "the cluster's term moved");
    }
    if !pre_vote {
        assert!(
            sim.nodes[&3].raft().term() > removed_term,
            "node 3 stopped campaigning: the test did not exercise anything"
        );
    }
    let (_, last) = settle(&mut sim, "end");
    sim.check_history(last);
}

#[test]
fn removed_node_with_a_higher_term_does_not_disrupt_the_cluster() {
    removed_node_comes_back(false);
}

#[test]
fn removed_node_with_pre_vote_does_not_disrupt_the_cluster() {
    removed_node_comes_back(true);
}

/// Between appending a configuration that removes it and stepping down, a leader
/// takes no new commands (they could be lost with it); it says to retry elsewhere.
#[test]
fn a_leader_that_is_removing_itself_refuses_new_commands() {
    let mut sim = Sim::new(3, 5, compacting());
    let old = sim.run_until_leader(5 * SECOND).expect("a leader");
    workload(&mut sim, "before", 10);
    let next = remove(old)(sim.nodes[&old].raft().membership());
    let (index, _) = sim.propose_membership(old, next).expect("removal proposed");
    // Still the leader: the removal is appended, not yet committed.
    assert_eq!(sim.nodes[&old].raft().role(), Role::Leader);
    assert!(sim.nodes[&old].raft().commit_index() < index);
    assert_eq!(
        sim.nodes
            .get_mut(&old)
            .expect("node")
            .raft_mut()
            .propose("late".into()),
        Err(ProposeError::TransferInProgress)
    );
    // The removal commits and another node takes over and serves.
    assert!(sim.run_until(SECOND, |s| s.leader().is_some_and(|l| l != old)));
    workload(&mut sim, "after", 5);
}
