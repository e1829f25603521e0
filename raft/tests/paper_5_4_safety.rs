//! Raft paper, section 5.4: safety.
//!
//! 5.4.1, the election restriction: "the RequestVote RPC includes information about the
//! candidate's log, and the voter denies its vote if its own log is more up-to-date
//! than that of the candidate. [...] If the logs have last entries with different
//! terms, then the log with the later term is more up-to-date. If the logs end with the
//! same term, then whichever log is longer is more up-to-date."
//!
//! 5.4.2, committing entries from previous terms: "Raft never commits log entries from
//! previous terms by counting replicas. Only log entries from the leader's current term
//! are committed by counting replicas; once an entry from the current term has been
//! committed in this way, then all prior entries are committed indirectly" (Figure 8).

mod paper_harness;

use paper_harness::*;
use raft::core::{Message, MessageBody, NodeId, Role};

/// 5.4.1: vote and pre-vote requests carry the index and term of the candidate's last
/// entry.
#[test]
fn vote_requests_carry_the_last_log_position() {
    for (cfg, pre_vote) in [(paper_config as fn(NodeId) -> _, false), (default_config, true)] {
        let mut net = Net::from_restores([1, 2, 3].map(|id| (id, restore(&[1, 2, 3], 2, &[1, 1, 2]))), cfg);
        net.tick_until_campaign(1);
        let requests = net.on_wire(|m| m.from == 1);
        assert_eq!(requests.len(), 2);
        for m in requests {
            let (last_index, last_term) = match m.body {
                MessageBody::Vote {
                    last_index,
                    last_term,
                    ..
                } if !pre_vote => (last_index, last_term),
                MessageBody::PreVote {
                    last_index,
                    last_term,
                } if pre_vote => (last_index, last_term),
                other => panic!("unexpected request {other:?}"),
            };
            assert_eq!((last_index, last_term), (3, 2));
            assert_eq!(m.term, 3);
        }
    }
}

/// One voter whose log ends at index 3 with term 2 answers a candidate of term 3 whose
/// log ends at `last`. Returns the verdict and the voter's vote afterwards.
fn ask_for_vote(last: (u64, u64)) -> (bool, Option<NodeId>) {
    let mut net = Net::from_restores([(2, restore(&[1, 2, 3], 2, &[1, 1, 2]))], paper_config);
    net.step(vote_request(1, 2, 3, last));
    let answers = net.take_where(|m| m.from == 2 && m.to == 1);
    assert_eq!(answers.len(), 1, "the request is answered");
    assert_eq!(answers[0].term, 3);
    assert_eq!(net.node(2).term(), 3, "the voter adopts the term, vote or not");
    (
        vote_granted(&answers[0]).expect("a VoteResponse"),
        net.node(2).status().vote,
    )
}

/// 5.4.1: a voter refuses a candidate whose last entry has an earlier term, however
/// long its log, and one whose last term is the same but whose log is shorter.
#[test]
fn voter_refuses_a_less_up_to_date_candidate() {
    assert_eq!(
        ask_for_vote((3, 1)),
        (false, None),
        "lower last term, same length"
    );
    assert_eq!(ask_for_vote((9, 1)), (false, None), "lower last term, longer log");
    assert_eq!(ask_for_vote((2, 2)), (false, None), "same last term, shorter log");
}

/// 5.4.1: a voter grants its vote to a candidate at least as up to date: same last
/// entry, same term and longer, or a later last term even with a shorter log.
#[test]
fn voter_grants_an_at_least_as_up_to_date_candidate() {
    assert_eq!(ask_for_vote((3, 2)), (true, Some(1)), "identical last entry");
    assert_eq!(
        ask_for_vote((4, 2)),
        (true, Some(1)),
        "same last term, longer log"
    );
    assert_eq!(
        ask_for_vote((1, 3)),
        (true, Some(1)),
        "later last term, shorter log"
    );
}

/// 5.4.1 applies to pre-votes as well: a pre-candidate that could not win a real vote
/// is told so, and a pre-vote does not touch the voter's term or vote.
#[test]
fn pre_vote_applies_the_same_restriction_without_side_effects() {
    for (last, expected) in [((3, 1), false), ((2, 2), false), ((3, 2), true), ((1, 3), true)] {
        let mut net = Net::from_restores([(2, restore(&[1, 2, 3], 2, &[1, 1, 2]))], default_config);
        net.step(msg(
            1,
            2,
            3,
            MessageBody::PreVote {
                last_index: last.0,
                last_term: last.1,
            },
        ));
        let answers = net.take_where(|m| m.from == 2 && m.to == 1);
        assert_eq!(answers.len(), 1, "{last:?}: the pre-vote is answered");
        assert_eq!(
            answers[0].body,
            MessageBody::PreVoteResponse { granted: expected },
            "{last:?}"
        );
        assert_eq!(
            net.node(2).term(),
            2,
            "{last:?}: a pre-vote does not change the term"
        );
        assert_eq!(net.node(2).status().vote, None, "{last:?}: nor the vote");
    }
}

/// 5.4.1, end to end: a node that missed committed entries times out and campaigns,
/// but cannot win; one that holds them can.
#[test]
fn candidate_missing_committed_entries_cannot_win() {
    let mut net = Net::new(&[1, 2, 3], paper_config);
    net.elect(1);
    net.isolate(3);
    net.propose(1, "x");
    net.deliver_all();
    assert_eq!(net.node(1).commit_index(), 2, "x is committed by 1 and 2");
    assert_eq!(net.node(3).last_index(), 1, "3 missed it");
    net.heal();

    net.tick_until_campaign(3);
    net.deliver_all();
    assert_ne!(net.node(3).role(), Role::Leader);
    assert_eq!(
        net.count_sent(|m| m.from != 3 && vote_granted(m) == Some(true) && m.term == 2),
        0,
        "nobody votes for the node missing x"
    );

    net.tick_until_campaign(2);
    net.deliver_all();
    assert_eq!(net.node(2).role(), Role::Leader);
    assert_eq!(
        net.node(2).entry(2).map(|e| e.term),
        Some(1),
        "the new leader holds x"
    );
}

/// Whether `m` is an append carrying the entry at `index`.
fn carries(m: &Message, index: u64) -> bool {
    matches!(&m.body, MessageBody::Append(ae) if ae.entries.iter().any(|e| e.index == index))
}

/// Builds Figure 8 (c). Five servers; index 1 (term 1) is committed everywhere. S1 led
/// term 2 and wrote index 2 (term 2) but crashed before replicating it; S5 led term 3
/// and wrote its own index 2 (term 3), also unreplicated. Now S1 is elected for term 4
/// (votes of S2, S3, S4; S5 refuses, its log is more up to date) and appends its no-op
/// at index 3. It replicates index 2 to S2 and S3, so a majority (S1, S2, S3) holds it;
/// the appends carrying index 3 are still on the wire, and S4 and S5 hear nothing.
/// Returns the cluster and those held appends.
fn figure_8_c() -> (Net, Vec<Message>) {
    let logs: [(NodeId, &[u64]); 5] = [(1, &[1, 2]), (2, &[1]), (3, &[1]), (4, &[1]), (5, &[1, 3])];
    let mut net = Net::from_restores(
        logs.map(|(id, log)| {
            let mut r = restore(&[1, 2, 3, 4, 5], 3, log);
            r.hard_state.commit = 1;
            (id, r)
        }),
        |id| {
            let mut cfg = paper_config(id);
            // One entry per append, so that index 2 and index 3 travel separately.
            cfg.max_entries_per_msg = 1;
            cfg
        },
    );
    net.tick_until_campaign(1);
    net.deliver_where(|m| {
        matches!(
            m.body,
            MessageBody::Vote { .. } | MessageBody::VoteResponse { .. }
        )
    });
    assert_eq!((net.node(1).role(), net.node(1).term()), (Role::Leader, 4));
    assert_eq!(
        net.count_sent(|m| m.from == 5 && vote_granted(m) == Some(false)),
        1,
        "S5 refused"
    );

    // S2 and S3 refuse the first append (they lack index 2); the leader backs up and
    // sends index 2 alone, which they accept. The next appends, carrying index 3, wait.
    net.deliver_while(|n, m| match m.to {
        1 => true,
        2 | 3 => !carries(m, 3) || n.node(m.to).last_index() < 2,
        _ => false,
    });
    let held = net.take_where(|m| carries(m, 3) && (m.to == 2 || m.to == 3));
    net.take_where(|_| true);
    assert_eq!(held.len(), 2, "index 3 is on its way to S2 and S3");

    assert_eq!(net.log_terms(1), vec![1, 2, 4]);
    assert_eq!(net.log_terms(2), vec![1, 2]);
    assert_eq!(net.log_terms(3), vec![1, 2]);
    assert_eq!(net.log_terms(4), vec![1]);
    assert_eq!(net.log_terms(5), vec![1, 3]);
    let peers = net.node(1).status().peers;
    let matched = |id| peers.iter().find(|p| p.id == id).map(|p| p.matched);
    assert_eq!(
        (matched(2), matched(3)),
        (Some(2), Some(2)),
        "S1 knows that S2 and S3 hold index 2"
    );
    (net, held)
}

/// Figure 8 (c) and (d): S1, leader of term 4, knows that index 2 (term 2) is stored on
/// a majority, yet must not commit it, because it is not an entry of term 4. Indeed if
/// S1 crashes, S5 can still be elected (S2, S3, S4 find its last term 3 more up to
/// date) and overwrite index 2 everywhere: had S1 committed and applied it, state
/// machines would now disagree.
#[test]
fn figure_8_entry_of_an_earlier_term_is_not_committed_by_counting_replicas() {
    let (mut net, _held) = figure_8_c();
    assert_eq!(
        net.node(1).commit_index(),
        1,
        "index 2 is on a majority but not committed"
    );
    assert!(
        net.peers.values().all(|p| p.applied.iter().all(|e| e.index < 2)),
        "nobody applied index 2"
    );

    // (d): S1 crashes; S5 times out (its first try, in term 4, meets voters who already
    // voted in term 4; the next one wins).
    net.crash(1);
    let won = net.run_until(&[5], 10 * ELECTION, |n| n.node(5).role() == Role::Leader);
    assert!(won, "S5 wins with the votes of S2, S3 and S4");
    net.heartbeat(5);
    let t = net.node(5).term();
    for id in [2, 3, 4] {
        assert_eq!(
            net.log_terms(id),
            vec![1, 3, t],
            "S{id}: index 2 of term 2 was replaced"
        );
    }
    assert_eq!(net.node(5).commit_index(), 3);
    assert!(net.peers[&2].applied.iter().any(|e| e.index == 2 && e.term == 3));
}

/// Figure 8 (e): if S1 instead replicates an entry of its own term (its no-op at index
/// 3) on a majority, that entry is committed by counting replicas, and index 2 with it.
/// From then on S5 cannot be elected (S2 and S3 refuse it) and any new leader holds
/// index 2 of term 2.
#[test]
fn figure_8_committing_a_current_term_entry_commits_the_earlier_ones() {
    let (mut net, held) = figure_8_c();
    for m in held {
        net.step(m);
    }
    net.deliver_where(|m| m.to == 1);
    assert_eq!(
        net.node(1).commit_index(),
        3,
        "index 3 (term 4) on S1, S2, S3: committed"
    );
    let applied: Vec<_> = net.peers[&1].applied.iter().map(|e| (e.index, e.term)).collect();
    assert_eq!(
        applied,
        vec![(1, 1), (2, 2), (3, 4)],
        "index 2 is committed with it"
    );

    net.crash(1);
    let won = net.run_until(&[5], 10 * ELECTION, |n| n.node(5).role() == Role::Leader);
    assert!(!won, "S5 can no longer win: S2 and S3 hold a later last term");
    assert!(net.count_sent(|m| m.from == 5 && matches!(m.body, MessageBody::Vote { .. })) > 0);

    let elected = net.run_until(&[2, 3, 4, 5], 10 * ELECTION, |n| {
        (2..=5).any(|id| n.node(id).role() == Role::Leader)
    });
    assert!(elected);
    let leader = (2..=5).find(|&id| net.node(id).role() == Role::Leader).unwrap();
    assert!(leader == 2 || leader == 3, "only S2 or S3 can win, got S{leader}");
    assert_eq!(
        net.log_terms(leader)[..3],
        [1, 2, 4],
        "the committed entries survive"
    );
}

/// 5.4.2 and section 8: a new leader whose log holds entries of earlier terms that were
/// never known committed commits them by committing its own no-op; every node then
/// applies them, in order.
#[test]
fn new_leader_commits_earlier_entries_through_its_no_op() {
    let mut net = Net::from_restores(
        [1, 2, 3].map(|id| (id, restore(&[1, 2, 3], 2, &[1, 1, 2]))),
        paper_config,
    );
    assert_eq!(net.node(1).commit_index(), 0);
    net.elect(1);

    assert_eq!(
        net.log_terms(1),
        vec![1, 1, 2, 3],
        "the no-op of term 3 at index 4"
    );
    for id in [1, 2, 3] {
        assert_eq!(net.node(id).commit_index(), 4, "node {id}");
        let applied: Vec<_> = net.peers[&id].applied.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(applied, vec![(1, 1), (2, 1), (3, 2), (4, 3)], "node {id}");
    }
}
