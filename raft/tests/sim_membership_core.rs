//! The core's membership rules, hand-cranked: which changes a leader accepts, learners,
//! a leader removing itself, and what a node does with messages from outside its
//! configuration or from behind in terms.

mod paper_harness;

use paper_harness::*;
use raft::core::{AppendResponse, Membership, MessageBody, NodeId, ProposeError, Role};

fn voters(ids: &[NodeId]) -> Membership {
    Membership::with_voters(ids.iter().copied())
}

#[test]
fn a_leader_changes_the_configuration_only_after_committing_in_its_term() {
    let mut net = Net::new(&[1, 2, 3], default_config);
    net.tick_until_campaign(1);
    // Win the election but keep the no-op uncommitted.
    net.deliver_where(|m| !matches!(m.body, MessageBody::Append(_)));
    assert_eq!(net.node(1).role(), Role::Leader);
    let add = voters(&[1, 2, 3, 4]);
    assert_eq!(
        net.node_mut(1).propose_membership(add.clone()),
        Err(ProposeError::MembershipChangePending)
    );
    net.deliver_all();
    assert!(net.node_mut(1).propose_membership(add).is_ok());
}

#[test]
fn one_voter_at_a_time_and_one_change_at_a_time() {
    let mut net = Net::new(&[1, 2, 3], default_config);
    net.elect(1);
    let invalid = |r| matches!(r, Err(ProposeError::InvalidMembership(_)));
    assert!(invalid(
        net.node_mut(1).propose_membership(voters(&[1, 2, 3, 4, 5]))
    ));
    assert!(invalid(net.node_mut(1).propose_membership(voters(&[1]))));
    assert!(
        invalid(net.node_mut(1).propose_membership(voters(&[1, 2, 4]))),
        "swap = two changes"
    );
    assert!(invalid(net.node_mut(1).propose_membership(Membership::default())));
    let mut both = voters(&[1, 2, 3]);
    both.learners.insert(3);
    assert!(invalid(net.node_mut(1).propose_membership(both)));
    let mut joint = voters(&[1, 2, 3]);
    joint.outgoing = [1, 2].into_iter().collect();
    assert!(invalid(net.node_mut(1).propose_membership(joint)));

    let mut learner = voters(&[1, 2, 3]);
    learner.learners.insert(4);
    assert!(net.node_mut(1).propose_membership(learner.clone()).is_ok());
    net.process(1);
    assert_eq!(
        net.node_mut(1).propose_membership(voters(&[1, 2])),
        Err(ProposeError::MembershipChangePending),
        "the previous change is not committed yet"
    );
    net.deliver_all();
    // Adding a learner changes no voter; promoting it changes one.
    let mut promoted = voters(&[1, 2, 3, 4]);
    promoted.learners.clear();
    assert!(net.node_mut(1).propose_membership(promoted).is_ok());
}

#[test]
fn a_learner_never_campaigns_and_does_not_count() {
    let mut net = Net::new(&[1, 2, 3], default_config);
    net.elect(1);
    let mut next = voters(&[1, 2]);
    next.learners.insert(3);
    net.node_mut(1)
        .propose_membership(next.clone())
        .expect("demote 3");
    net.process(1);
    net.deliver_all();
    net.heartbeat(1);
    assert_eq!(net.node(3).membership(), &next);
    // Node 3 hears nothing for a long time: as a learner it stays quiet.
    net.isolate(3);
    net.tick_n(3, 4 * ELECTION);
    assert_eq!(net.node(3).role(), Role::Follower);
    assert_eq!(
        net.count_sent(|m| m.from == 3 && matches!(m.body, MessageBody::PreVote { .. })),
        0
    );
    // With node 2 cut off, the leader and the learner commit nothing.
    net.heal();
    net.isolate(2);
    let before = net.node(1).commit_index();
    let (index, _) = net.propose(1, "needs 2");
    net.deliver_all();
    let status = net.node(1).status();
    assert!(status
        .peers
        .iter()
        .any(|p| p.id == 3 && p.learner && p.matched == index));
    assert_eq!(net.node(1).commit_index(), before);
    net.heal();
    assert!(net.run_until(&[1], 4 * HEARTBEAT, |n| n.node(1).commit_index() == index));
}

#[test]
fn a_leader_that_removes_itself_hands_over_once_the_change_commits() {
    let mut net = Net::new(&[1, 2, 3], default_config);
    net.elect(1);
    let term = net.node(1).term();
    let (index, _) = net
        .node_mut(1)
        .propose_membership(voters(&[2, 3]))
        .expect("accepted");
    net.process(1);
    // It keeps leading (and replicating) until the change is committed...
    net.deliver_where(|m| !matches!(m.body, MessageBody::TimeoutNow));
    assert!(net.node(1).commit_index() >= index);
    assert_eq!(net.node(1).role(), Role::Follower, "it stepped down on commit");
    // ...then tells an up-to-date voter to campaign at once.
    let handover = net.on_wire(|m| matches!(m.body, MessageBody::TimeoutNow));
    assert_eq!(handover.len(), 1, "{handover:?}");
    let successor = handover[0].to;
    assert!(successor == 2 || successor == 3);
    net.deliver_all();
    assert_eq!(net.node(successor).role(), Role::Leader);
    assert_eq!(net.node(successor).term(), term + 1);
    // The old leader is not a voter any more (nor a member the new leader talks to):
    // it never campaigns.
    net.tick_n(1, 4 * ELECTION);
    assert_eq!(net.count_sent(|m| m.from == 1 && m.term > term), 0);
    assert_eq!(net.node(1).term(), term);
    assert_eq!(net.node(1).role(), Role::Follower);
}

#[test]
fn a_stale_vote_request_is_refused_with_the_current_term() {
    let mut net = Net::from_restores(
        [
            (1, restore(&[1, 2, 3], 7, &[1, 1])),
            (2, restore(&[1, 2, 3], 3, &[1, 1])),
        ],
        paper_config,
    );
    net.step(vote_request(2, 1, 4, (2, 1)));
    let answer = net.take_where(|m| m.from == 1);
    assert_eq!(answer.len(), 1);
    assert_eq!((answer[0].term, vote_granted(&answer[0])), (7, Some(false)));
    // The candidate learns the term and stands down.
    net.node_mut(2).step(answer[0].clone());
    assert_eq!(net.node(2).term(), 7);
    assert_eq!(net.node(2).role(), Role::Follower);
}

#[test]
fn within_its_lease_a_node_ignores_higher_terms_from_outside_its_configuration() {
    let mut net = Net::new(&[1, 2, 3], default_config);
    net.elect(1);
    let term = net.node(1).term();
    let refusal = MessageBody::AppendResponse(AppendResponse {
        index: 0,
        reject: true,
        hint_index: 0,
        hint_term: 0,
    });
    // Node 9 (not a member, say a removed server) claims a higher term: ignored.
    net.step(msg(9, 1, term + 5, refusal.clone()));
    net.step(msg(9, 2, term + 5, MessageBody::HeartbeatResponse { round: 0 }));
    assert_eq!((net.node(1).role(), net.node(1).term()), (Role::Leader, term));
    assert_eq!(net.node(2).term(), term);
    // Leader traffic from outside the configuration is heard: that leader may be in a
    // configuration this node has not seen yet.
    net.step(append(9, 2, term + 5, (1, term), vec![], 0));
    assert_eq!((net.node(2).term(), net.node(2).leader()), (term + 5, Some(9)));
    // From a member, a higher term deposes the leader as usual.
    net.step(msg(3, 1, term + 6, refusal));
    assert_eq!(
        (net.node(1).role(), net.node(1).term()),
        (Role::Follower, term + 6)
    );
}
