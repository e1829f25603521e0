//! Raft paper, Figure 2 ("persistent state on all servers, updated on stable storage
//! before responding to RPCs: currentTerm, votedFor, log[]") and section 5.6: a server
//! that crashes and restarts comes back with the state it promised others.

mod paper_harness;

use paper_harness::*;
use raft::core::{MessageBody, Role};
use raft::sim::{Sim, SimOptions};

/// Figure 2: a node restarted from its durable state has the same term, vote and log
/// as before the crash, whether it was a follower or the leader (which had voted for
/// itself); it comes back as a follower.
#[test]
fn restarted_node_keeps_term_vote_and_log() {
    let mut sim = Sim::new(3, 17, SimOptions::default());
    let leader = sim.run_until_leader(5_000_000).expect("a leader");
    let mut last = 0;
    for i in 0..5u8 {
        last = sim.propose(leader, vec![i]).expect("leader").index;
    }
    assert!(sim.run_until(2_000_000, |s| s
        .nodes
        .values()
        .all(|n| n.raft().commit_index() >= last)));
    let follower = (1..=3).find(|&id| id != leader).unwrap();

    for id in [follower, leader] {
        // Crash at a moment when everything the node holds has been synced.
        let synced = sim.run_until(1_000_000, |s| {
            let n = &s.nodes[&id];
            let r = n.raft();
            n.disk.hard_state.term == r.term()
                && n.disk.hard_state.vote == r.status().vote
                && n.disk.entries.len() as u64 == r.last_index()
        });
        assert!(synced);
        let before = sim.nodes[&id].raft().status();
        let log: Vec<_> = (1..=before.last_index)
            .map(|i| sim.nodes[&id].raft().entry(i).cloned())
            .collect();
        assert!(before.vote.is_some(), "node {id} voted in term {}", before.term);
        assert!(before.last_index >= last, "node {id} holds the proposals");

        sim.crash(id);
        sim.restart(id);

        let r = sim.nodes[&id].raft();
        let after = r.status();
        assert_eq!((after.term, after.vote), (before.term, before.vote), "node {id}");
        assert_eq!(after.last_index, before.last_index, "node {id}");
        let log_after: Vec<_> = (1..=after.last_index).map(|i| r.entry(i).cloned()).collect();
        assert_eq!(log_after, log, "node {id}: same entries");
        assert_eq!(r.role(), Role::Follower, "node {id} restarts as a follower");
        sim.run_until_leader(5_000_000).expect("the cluster recovers");
    }
    sim.check_log_matching();
}

/// Figure 2, votedFor: a node that voted for a candidate in term T and then crashed
/// will not, after restarting, vote for a different candidate in T (it could otherwise
/// elect two leaders in one term); the same candidate asking again still gets it.
#[test]
fn vote_survives_a_restart() {
    let mut net = Net::new(&[1, 2, 3], paper_config);
    net.tick_until_campaign(1);
    net.tick_until_campaign(2);
    assert_eq!((net.node(1).term(), net.node(2).term()), (1, 1));
    let from_1 = net.take_where(|m| m.from == 1 && m.to == 3).remove(0);
    let from_2 = net.take_where(|m| m.from == 2 && m.to == 3).remove(0);

    net.step(from_1.clone());
    assert_eq!(
        net.count_sent(|m| m.from == 3 && vote_granted(m) == Some(true)),
        1
    );
    net.crash(3);
    net.restart(3);
    assert_eq!((net.node(3).term(), net.node(3).status().vote), (1, Some(1)));

    net.step(from_2);
    let to_2 = net.take_where(|m| m.from == 3 && m.to == 2);
    assert_eq!(to_2.len(), 1);
    assert_eq!(vote_granted(&to_2[0]), Some(false), "no second vote in term 1");

    net.step(from_1);
    let to_1 = net.take_where(|m| m.from == 3 && m.to == 1 && vote_granted(m).is_some());
    assert_eq!(to_1.len(), 2, "the original grant and the repeated one");
    assert!(to_1.iter().all(|m| vote_granted(m) == Some(true)));
}

/// The other side of the same rule: a vote that was not yet durable when the node
/// crashed was never announced (the grant is a persisted message), so the restarted
/// node may vote afresh without any candidate having counted the lost vote.
#[test]
fn vote_lost_in_a_crash_was_never_announced() {
    let mut net = Net::new(&[1, 2, 3], paper_config);
    net.tick_until_campaign(1);
    let from_1 = net.take_where(|m| m.from == 1 && m.to == 3).remove(0);

    net.node_mut(3).step(from_1);
    let rd = net.node_mut(3).ready();
    assert_eq!(rd.hard_state.map(|h| h.vote), Some(Some(1)));
    assert!(rd.messages.is_empty(), "the grant waits for the write");
    assert_eq!(rd.persisted_messages.len(), 1);
    drop(rd); // The node crashes before the write completes.
    net.crash(3);
    net.restart(3);

    assert_eq!(
        net.count_sent(|m| m.from == 3),
        0,
        "candidate 1 never heard of the vote"
    );
    assert_eq!(net.node(3).status().vote, None);
    net.tick_until_campaign(2);
    net.deliver_where(|m| m.to == 3 || m.from == 3);
    assert_eq!(
        net.count_sent(|m| m.from == 3 && m.to == 2 && vote_granted(m) == Some(true)),
        1,
        "3 may vote for 2 in term 1"
    );
}

/// Figure 2, log[]: an entry a follower acknowledged is on its disk, so it survives a
/// crash; the leader counted that acknowledgement towards a commit.
#[test]
fn acknowledged_entries_survive_a_crash() {
    let mut net = Net::new(&[1, 2, 3], paper_config);
    net.elect(1);
    let (index, term) = net.propose(1, "x");

    net.deliver_where(|m| m.to == 2 && matches!(m.body, MessageBody::Append(_)));
    let acks = net.on_wire(|m| m.from == 2 && as_append_response(m).is_some_and(|r| !r.reject));
    assert_eq!(acks.len(), 1);
    assert_eq!(as_append_response(&acks[0]).unwrap().index, index);
    net.crash(2);
    net.restart(2);

    assert_eq!(
        net.node(2).entry(index).map(|e| e.term),
        Some(term),
        "still there"
    );
    net.deliver_where(|m| m.to == 1);
    assert_eq!(net.node(1).commit_index(), index, "the ack counted");
}

/// Figure 2's rule for a leader that needed no votes: a single-voter cluster elects
/// itself at once, so its new term is not yet on disk when it starts sending appends
/// to its learners. Those appends must wait for the write of that term (they are
/// `persisted_messages`), or a crash before the write could let it win the same term
/// again and send a different entry with the same index and term.
#[test]
fn a_single_voter_leader_sends_nothing_in_its_new_term_before_that_term_is_durable() {
    let mut r = restore(&[1], 3, &[1, 2]);
    r.snapshot.membership.learners.insert(2);
    let mut node = raft::core::RaftNode::new(default_config(1), r).expect("valid config");
    for _ in 0..(10 * ELECTION) {
        node.tick();
        if node.role() == Role::Leader {
            break;
        }
    }
    assert_eq!(node.role(), Role::Leader, "the only voter elects itself");
    assert!(node.term() > 3);
    let rd = node.ready();
    let hard = rd.hard_state.expect("the new term is handed out to persist");
    assert_eq!(hard.term, node.term());
    assert!(
        rd.messages.iter().all(|m| m.term < node.term()),
        "nothing of the new term leaves before the write: {:?}",
        rd.messages
    );
    assert!(
        rd.persisted_messages
            .iter()
            .any(|m| m.to == 2 && matches!(m.body, MessageBody::Append(_))),
        "the learner's append waits for the write: {:?}",
        rd.persisted_messages
    );
    node.advance();
}
