//! Raft paper, section 5.3: log replication.
//!
//! "The leader appends the command to its log as a new entry, then issues
//! AppendEntries RPCs in parallel to each of the other servers to replicate the entry.
//! [...] A log entry is committed once the leader that created the entry has
//! replicated it on a majority of the servers. [...] Once a follower learns that a log
//! entry is committed, it applies the entry to its local state machine." The
//! consistency check refuses an append whose previous entry the follower does not
//! hold, and a follower's conflicting entries are overwritten by the leader's
//! (Figure 7).

mod paper_harness;

use paper_harness::*;
use raft::core::{EntryPayload, Message, MessageBody, NodeId, Role};

fn is_append_to(m: &Message, to: NodeId) -> bool {
    m.to == to && matches!(m.body, MessageBody::Append(_))
}

fn is_ack_from(m: &Message, from: NodeId) -> bool {
    m.from == from && as_append_response(m).is_some_and(|r| !r.reject)
}

fn payloads(entries: &[raft::core::Entry]) -> Vec<EntryPayload> {
    entries.iter().map(|e| e.payload.clone()).collect()
}

/// 5.3: in a cluster of 5 the leader commits a new entry when, and only when, a
/// majority (itself and two followers) holds it; then followers learn the commit index
/// from the leader's next message and apply the same entries in the same order.
#[test]
fn leader_commits_once_a_majority_holds_the_entry() {
    let mut net = Net::new(&[1, 2, 3, 4, 5], paper_config);
    net.elect(1);
    let noop = net.node(1).commit_index();
    assert_eq!(noop, 1, "the new leader's no-op is committed");
    for f in 2..=5 {
        assert_eq!(net.node(f).commit_index(), noop, "follower {f} knows it");
    }

    let (index, _) = net.propose(1, "x");
    for f in 2..=5 {
        assert_eq!(
            net.on_wire(|m| is_append_to(m, f)).len(),
            1,
            "the entry is sent to {f}"
        );
    }
    net.deliver_where(|m| is_append_to(m, 2) || is_append_to(m, 3));
    net.deliver_where(|m| is_ack_from(m, 2));
    assert_eq!(
        net.node(1).commit_index(),
        noop,
        "leader + 1 follower is 2 of 5: not committed"
    );
    assert_eq!(net.peer(1).applied.len(), 1, "and not applied");

    net.deliver_where(|m| is_ack_from(m, 3));
    assert_eq!(
        net.node(1).commit_index(),
        index,
        "leader + 2 followers is 3 of 5: committed"
    );
    assert_eq!(
        payloads(&net.peer(1).applied),
        vec![EntryPayload::Noop, EntryPayload::Normal("x".into())]
    );
    for f in 2..=5 {
        assert_eq!(net.node(f).commit_index(), noop, "follower {f} does not know yet");
    }

    net.deliver_all();
    for f in 2..=5 {
        assert_eq!(
            net.node(f).commit_index(),
            index,
            "follower {f} learned the commit"
        );
        assert_eq!(
            net.peer(f).applied,
            net.peer(1).applied,
            "follower {f} applied the same"
        );
    }
}

/// 5.3 and the Ready contract: the leader may send an entry before its own write is
/// durable, but its own copy counts towards the majority only once durable; a
/// follower acknowledges only what it has made durable.
#[test]
fn acknowledgements_count_only_durable_copies() {
    let mut net = Net::new(&[1, 2, 3, 4, 5], paper_config);
    net.elect(1);

    net.node_mut(1).propose("x".into()).expect("leader");
    let leader_rd = net.node_mut(1).ready();
    assert_eq!(leader_rd.entries.len(), 1, "the leader must persist the entry");
    let appends: Vec<Message> = leader_rd
        .messages
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Append(_)))
        .cloned()
        .collect();
    assert_eq!(
        appends.len(),
        4,
        "sent while the leader's own write is in progress"
    );

    // Followers 2 and 3 receive it. Their acks wait for their own writes.
    let mut acks = Vec::new();
    for m in appends.iter().filter(|m| m.to == 2 || m.to == 3) {
        net.node_mut(m.to).step(m.clone());
        let rd = net.node_mut(m.to).ready();
        assert_eq!(rd.entries.len(), 1);
        assert!(rd.messages.iter().all(|m| as_append_response(m).is_none()));
        acks.extend(
            rd.persisted_messages
                .iter()
                .filter(|m| is_ack_from(m, m.from))
                .cloned(),
        );
        net.perform(m.to, rd);
        net.take_where(|_| true);
    }
    assert_eq!(acks.len(), 2);
    for ack in acks {
        net.node_mut(1).step(ack);
    }
    assert_eq!(
        net.node(1).commit_index(),
        1,
        "two followers are not a majority of 5 while the leader's copy is not durable"
    );

    net.perform(1, leader_rd);
    assert_eq!(
        net.node(1).commit_index(),
        2,
        "the leader's durable copy makes 3 of 5"
    );
}

/// 5.3: the AppendEntries consistency check. A follower refuses entries whose previous
/// entry (index and term) it does not hold, whether it holds a different term there or
/// nothing at all, and leaves its log unchanged; with a matching previous entry it
/// accepts.
#[test]
fn follower_refuses_an_append_whose_previous_entry_does_not_match() {
    let mut net = Net::from_restores([(2, restore(&[1, 2, 3], 2, &[1, 1, 2]))], paper_config);

    // Different term at index 3.
    net.step(append(1, 2, 3, (3, 3), vec![entry(4, 3)], 0));
    let r = net.take_where(|m| m.to == 1).pop().expect("an answer");
    let resp = as_append_response(&r).expect("an AppendResponse");
    assert!(resp.reject);
    assert_eq!(resp.index, 3, "names the previous index that failed");
    assert_eq!(
        (resp.hint_index, resp.hint_term),
        (3, 2),
        "and what it holds there"
    );
    assert_eq!(net.log_terms(2), vec![1, 1, 2], "log unchanged");

    // Nothing at index 5.
    net.step(append(1, 2, 3, (5, 3), vec![entry(6, 3)], 0));
    let r = net.take_where(|m| m.to == 1).pop().expect("an answer");
    let resp = as_append_response(&r).expect("an AppendResponse");
    assert!(resp.reject);
    assert!(resp.hint_index <= 3, "the hint points inside the follower's log");
    assert_eq!(net.log_terms(2), vec![1, 1, 2], "log unchanged");

    // Matching previous entry.
    net.step(append(1, 2, 3, (3, 2), vec![entry(4, 3)], 0));
    let r = net.take_where(|m| m.to == 1).pop().expect("an answer");
    let resp = as_append_response(&r).expect("an AppendResponse");
    assert!(!resp.reject);
    assert_eq!(resp.index, 4);
    assert_eq!(net.log_terms(2), vec![1, 1, 2, 3]);
}

/// 5.3: "If an existing entry conflicts with a new one (same index but different
/// terms), delete the existing entry and all that follow it". The truncation reaches
/// the disk too.
#[test]
fn follower_replaces_a_conflicting_suffix() {
    let mut net = Net::from_restores([(2, restore(&[1, 2, 3], 2, &[1, 1, 2, 2]))], paper_config);

    net.step(append(1, 2, 3, (2, 1), vec![entry(3, 3)], 0));

    assert_eq!(
        net.log_terms(2),
        vec![1, 1, 3],
        "entries 3 and 4 of term 2 are gone"
    );
    let on_disk: Vec<_> = net
        .peer(2)
        .disk
        .entries
        .iter()
        .map(|e| (e.index, e.term))
        .collect();
    assert_eq!(on_disk, vec![(1, 1), (2, 1), (3, 3)]);
    let ack = net.take_where(|m| m.to == 1).pop().expect("an answer");
    assert_eq!(
        as_append_response(&ack).map(|r| (r.reject, r.index)),
        Some((false, 3))
    );
}

/// 5.3: only a conflict truncates. A delayed AppendEntries whose entries the follower
/// already holds must not cut off the newer entries that came after it.
#[test]
fn outdated_append_does_not_truncate_newer_entries() {
    let mut net = Net::from_restores([(2, restore(&[1, 2, 3], 1, &[1, 1, 1]))], paper_config);

    net.step(append(1, 2, 1, (0, 0), vec![entry(1, 1)], 0));

    assert_eq!(net.log_terms(2), vec![1, 1, 1]);
    let ack = net.take_where(|m| m.to == 1).pop().expect("an answer");
    assert_eq!(
        as_append_response(&ack).map(|r| (r.reject, r.index)),
        Some((false, 1)),
        "acknowledges what that append covered, no more"
    );
}

/// 5.3: a follower never takes a commit index beyond what it knows matches the leader:
/// `commitIndex = min(leaderCommit, index of last new entry)`.
#[test]
fn follower_commit_is_capped_by_the_last_new_entry() {
    let mut net = Net::from_restores([(2, restore(&[1, 2, 3], 2, &[1, 1, 2, 2]))], paper_config);

    // The leader has committed 6, but this append only vouches for entries up to 2.
    net.step(append(1, 2, 3, (1, 1), vec![entry(2, 1)], 6));

    assert_eq!(
        net.node(2).commit_index(),
        2,
        "entries 3 and 4 (term 2) are not vouched for"
    );
    assert_eq!(net.peer(2).applied.len(), 2);
}

/// The leader of Figure 7: term 8, log terms 1 1 1 4 4 5 5 6 6 6.
const FIG7_LEADER: [u64; 10] = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];

/// Figure 7: node 1 leads term 8 with the figure's log; node 2 has one of the figure's
/// follower logs; node 3 holds the leader's log (it gives the leader its majority).
/// The leader must bring node 2's log to exactly its own: the figure's log plus the
/// no-op of term 8 at index 11. Returns how many appends node 2 rejected.
fn figure_7(follower: &[u64]) -> usize {
    let follower_term = *follower.iter().max().unwrap();
    let mut net = Net::from_restores(
        [
            (1, restore(&[1, 2, 3], 7, &FIG7_LEADER)),
            (2, restore(&[1, 2, 3], follower_term, follower)),
            (3, restore(&[1, 2, 3], 7, &FIG7_LEADER)),
        ],
        paper_config,
    );
    net.elect(1);
    assert_eq!(net.node(1).term(), 8);
    let rejections =
        net.count_sent(|m| m.from == 2 && m.term == 8 && as_append_response(m).is_some_and(|r| r.reject));

    let mut expected = FIG7_LEADER.to_vec();
    expected.push(8);
    assert_eq!(net.log_terms(1), expected);
    assert_eq!(
        net.log(2),
        net.log(1),
        "follower {follower:?} is repaired to the leader's log"
    );
    assert_eq!(
        net.node(2).commit_index(),
        11,
        "and learns that all of it is committed"
    );
    assert_eq!(
        net.peer(2).applied,
        net.log(1),
        "and applies exactly the leader's entries"
    );
    rejections
}

/// Figure 7 (a): the follower misses the last entry.
#[test]
fn figure_7_a_missing_one_entry() {
    assert_eq!(figure_7(&[1, 1, 1, 4, 4, 5, 5, 6, 6]), 1);
}

/// Figure 7 (b): the follower misses most of the log.
#[test]
fn figure_7_b_missing_many_entries() {
    assert_eq!(figure_7(&[1, 1, 1, 4]), 1);
}

/// Figure 7 (c): the follower has an extra uncommitted entry of term 6, replaced by the
/// leader's no-op.
#[test]
fn figure_7_c_one_extra_entry() {
    assert_eq!(figure_7(&[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6]), 0);
}

/// Figure 7 (d): the follower has two extra entries of term 7 (a term whose leader
/// failed); they are discarded.
#[test]
fn figure_7_d_extra_entries_of_a_later_term() {
    assert_eq!(figure_7(&[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7]), 0);
}

/// Figure 7 (e): the follower misses entries and has extra ones of term 4.
#[test]
fn figure_7_e_missing_and_extra_entries() {
    assert_eq!(figure_7(&[1, 1, 1, 4, 4, 4, 4]), 1);
}

/// Figure 7 (f): the follower led term 2 and term 3 and logged 8 entries nobody else
/// has. Fast backtracking skips whole conflicting terms: the leader finds the match
/// point (index 3) in one rejection, far fewer round trips than the 8 entries to
/// repair (one entry at a time would take 7 rejections).
#[test]
fn figure_7_f_long_divergent_suffix_repaired_in_few_round_trips() {
    let follower = [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3];
    let to_repair = follower.len() - 3;
    let rejections = figure_7(&follower);
    assert!(
        rejections < to_repair,
        "{rejections} rejections for {to_repair} entries"
    );
    assert_eq!(rejections, 1);
}

/// 5.3: after a leader change, the new leader has no idea where each follower's log
/// stands; it probes, and a follower that already matches costs no extra round trip.
#[test]
fn new_leader_probes_and_streams_to_an_up_to_date_follower() {
    let mut net = Net::from_restores(
        [1, 2, 3].map(|id| (id, restore(&[1, 2, 3], 2, &[1, 1, 2]))),
        paper_config,
    );
    net.elect(1);
    assert_eq!(
        net.count_sent(|m| as_append_response(m).is_some_and(|r| r.reject)),
        0,
        "matching logs: no rejection"
    );
    for f in [2, 3] {
        assert_eq!(net.log(f), net.log(1));
        assert_eq!(net.node(f).role(), Role::Follower);
    }
}

/// 5.3: "the leader retries AppendEntries RPCs indefinitely [...] until all followers
/// eventually store all log entries". Here every append to follower 3 is lost for a
/// while: the leader's last entry, then (after two heartbeat rounds without progress)
/// the probe it falls back to, which is empty since it starts past the leader's last
/// entry. Once appends get through again, the next heartbeat replies must still
/// produce a probe, which finds where the logs agree and repairs 3.
#[test]
fn a_lost_probe_past_the_last_entry_is_retried() {
    let mut net = Net::new(&[1, 2, 3], paper_config);
    net.elect(1);
    let (index, _) = net.propose(1, "x");
    let deliver_losing_appends_to_3 = |net: &mut Net| {
        let mut lost = Vec::new();
        loop {
            lost.extend(net.take_where(|m| is_append_to(m, 3)));
            if net.deliver_next().is_none() {
                return lost;
            }
        }
    };
    deliver_losing_appends_to_3(&mut net);
    assert_eq!(net.node(1).commit_index(), index, "1 and 2 commit it");
    // Heartbeat rounds until the leader gives up streaming to 3 and probes it with an
    // empty append after its last entry; that is lost too.
    let probing_past_the_end = |net: &Net| {
        let status = net.node(1).status();
        let p = status.peers.iter().find(|p| p.id == 3).expect("3 is a peer");
        p.state == "probe" && p.next == index + 1 && p.matched < index
    };
    for _ in 0..4 {
        net.tick_n(1, HEARTBEAT);
        let lost = deliver_losing_appends_to_3(&mut net);
        let empty_probe = lost.last().is_some_and(
            |m| matches!(&m.body, MessageBody::Append(ae) if ae.prev_index == index && ae.entries.is_empty()),
        );
        if probing_past_the_end(&net) && empty_probe {
            break;
        }
    }
    assert!(
        probing_past_the_end(&net),
        "the leader probes 3 past its last entry"
    );
    assert!(net.node(3).last_index() < index);
    let caught_up = net.run_until(&[1], 10 * HEARTBEAT, |n| n.node(3).last_index() == index);
    assert!(
        caught_up,
        "later heartbeat replies probe 3 again until it holds the entry"
    );
    assert_eq!(net.log(3), net.log(1));
}
