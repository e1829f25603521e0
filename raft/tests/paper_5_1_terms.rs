//! Raft paper, section 5.1: terms act as a logical clock.
//!
//! "Current terms are exchanged whenever servers communicate; if one server's current
//! term is smaller than the other's, then it updates its current term to the larger
//! value. If a candidate or leader discovers that its term is out of date, it
//! immediately reverts to follower state. If a server receives a request with a stale
//! term number, it rejects the request."

mod paper_harness;

use paper_harness::*;
use raft::core::{MessageBody, Role};

/// 5.1: a follower that sees a higher term adopts it (and forgets its vote, which
/// belonged to the old term), and durably records it before answering anyone.
#[test]
fn follower_adopts_a_higher_term() {
    let mut r = restore(&[1, 2, 3], 2, &[1, 1]);
    r.hard_state.vote = Some(1);
    let mut net = Net::from_restores([(2, r)], paper_config);

    net.step(msg(3, 2, 5, MessageBody::Heartbeat { commit: 0, round: 0 }));

    let n = net.node(2);
    assert_eq!(n.term(), 5);
    assert_eq!(n.role(), Role::Follower);
    assert_eq!(
        n.leader(),
        Some(3),
        "a heartbeat of the new term names its leader"
    );
    assert_eq!(n.status().vote, None, "the vote was for term 2, not term 5");
    assert_eq!(net.peer(2).disk.hard_state.term, 5, "the new term is durable");
}

/// 5.1: a candidate that learns of a higher term stops campaigning and follows.
#[test]
fn candidate_reverts_to_follower_on_a_higher_term() {
    let mut net = Net::new(&[1, 2, 3], paper_config);
    net.tick_until_campaign(1);
    assert_eq!(net.node(1).role(), Role::Candidate);
    assert_eq!(net.node(1).term(), 1);

    net.step(msg(2, 1, 3, MessageBody::Heartbeat { commit: 0, round: 0 }));

    assert_eq!(net.node(1).role(), Role::Follower);
    assert_eq!(net.node(1).term(), 3);
    assert_eq!(net.node(1).leader(), Some(2));
}

/// 5.1: a leader that learns of a higher term (here from a vote request) steps down at
/// once; in the paper's algorithm (no lease) it also considers the vote.
#[test]
fn leader_reverts_to_follower_on_a_higher_term() {
    let mut net = Net::new(&[1, 2, 3], paper_config);
    net.elect(1);
    assert_eq!(net.node(1).term(), 1);
    let last = (
        net.node(1).last_index(),
        net.node(1).term_at(net.node(1).last_index()).unwrap(),
    );

    net.step(vote_request(3, 1, 4, last));

    assert_eq!(net.node(1).role(), Role::Follower);
    assert_eq!(net.node(1).term(), 4);
    assert_eq!(net.node(1).leader(), None, "nobody is known to lead term 4 yet");
    let answers: Vec<_> = net.on_wire(|m| m.from == 1 && m.to == 3);
    assert_eq!(answers.len(), 1, "the vote request is answered");
    assert_eq!(
        vote_granted(&answers[0]),
        Some(true),
        "the candidate's log is as up to date"
    );
    assert_eq!(answers[0].term, 4);
}

/// 5.1: an AppendEntries from a stale leader is rejected, and the rejection carries the
/// receiver's (higher) term so that the stale leader can learn it. The follower's log
/// and term are untouched.
#[test]
fn stale_append_is_rejected_with_the_current_term() {
    let mut net = Net::from_restores([(2, restore(&[1, 2, 3], 5, &[1, 1]))], default_config);

    net.step(append(1, 2, 3, (2, 1), vec![entry(3, 3)], 2));

    let replies = net.take_where(|m| m.from == 2 && m.to == 1);
    assert_eq!(replies.len(), 1, "the stale leader gets an answer");
    let resp = as_append_response(&replies[0]).expect("an AppendResponse");
    assert!(resp.reject);
    assert_eq!(replies[0].term, 5, "the answer carries the current term");
    let n = net.node(2);
    assert_eq!(n.term(), 5);
    assert_eq!(n.last_index(), 2, "nothing from the stale leader was appended");
    assert_eq!(
        n.commit_index(),
        0,
        "the stale leader's commit index is not taken"
    );
    assert_eq!(n.leader(), None, "the stale leader is not followed");
}

/// 5.1: a leader cut off while the others moved to a new term learns, on its first
/// heartbeat after the partition heals, that it is stale, and steps down.
#[test]
fn stale_leader_steps_down_when_answered_with_a_higher_term() {
    let mut net = Net::new(&[1, 2, 3], default_config);
    net.elect(1);
    assert_eq!(net.node(1).term(), 1);

    net.isolate(1);
    let new_leader = net.run_until(&[2, 3], 10 * ELECTION, |n| {
        [2, 3].iter().any(|&id| n.node(id).role() == Role::Leader)
    });
    assert!(new_leader, "the majority side elects a new leader");
    assert_eq!(net.node(2).term(), 2);
    assert_eq!(
        net.node(1).role(),
        Role::Leader,
        "the old leader does not know yet"
    );
    assert_eq!(net.node(1).term(), 1);

    net.heal();
    net.tick_n(1, HEARTBEAT);
    let heartbeats = net.on_wire(|m| m.from == 1 && matches!(m.body, MessageBody::Heartbeat { .. }));
    assert_eq!(heartbeats.len(), 2, "the stale leader heartbeats both followers");
    assert!(heartbeats.iter().all(|m| m.term == 1));
    net.deliver_where(|m| m.from == 1 || m.to == 1);

    let rejections =
        net.count_sent(|m| m.to == 1 && m.term == 2 && as_append_response(m).is_some_and(|r| r.reject));
    assert!(rejections >= 1, "the heartbeat was refused with the newer term");
    assert_eq!(net.node(1).role(), Role::Follower);
    assert_eq!(net.node(1).term(), 2);
}

/// 5.1: a vote request from an earlier term is refused: no vote is granted and the
/// voter's term and vote do not change.
#[test]
fn stale_vote_request_is_refused() {
    let mut net = Net::from_restores([(2, restore(&[1, 2, 3], 5, &[1, 1]))], paper_config);

    net.step(vote_request(1, 2, 3, (9, 3)));

    assert_eq!(
        net.count_sent(|m| m.from == 2 && vote_granted(m) == Some(true)),
        0,
        "no vote for a stale candidate"
    );
    assert_eq!(net.node(2).term(), 5);
    assert_eq!(net.node(2).status().vote, None);
}

/// 5.1: a vote granted in an earlier term does not count in a later one: a candidate
/// ignores stale vote responses.
#[test]
fn stale_vote_responses_do_not_count() {
    let mut net = Net::new(&[1, 2, 3], paper_config);
    net.tick_until_campaign(1);
    net.take_where(|_| true);
    net.tick_until_new_term(1);
    assert_eq!(net.node(1).term(), 2, "the candidate retried in term 2");

    net.step(msg(2, 1, 1, MessageBody::VoteResponse { granted: true }));
    net.step(msg(3, 1, 1, MessageBody::VoteResponse { granted: true }));
    assert_eq!(
        net.node(1).role(),
        Role::Candidate,
        "term-1 votes do not elect a term-2 leader"
    );

    net.step(msg(2, 1, 2, MessageBody::VoteResponse { granted: true }));
    assert_eq!(
        net.node(1).role(),
        Role::Leader,
        "one term-2 vote plus its own is a majority"
    );
}
