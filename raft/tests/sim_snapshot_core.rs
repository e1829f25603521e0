//! The core's side of snapshots, hand-cranked: when a leader asks for one, what the
//! driver's report does, how a follower adopts one, and what `compact` accepts.
//!
//! The harness plays a driver that already holds the snapshot data: it steps
//! `InstallSnapshot` straight into the follower's core.

mod paper_harness;

use paper_harness::*;
use raft::core::{Membership, Message, MessageBody, NodeId, Ready, SnapshotMeta};

fn is_install(m: &Message) -> bool {
    matches!(m.body, MessageBody::InstallSnapshot { .. })
}

fn install_meta(m: &Message) -> SnapshotMeta {
    match &m.body {
        MessageBody::InstallSnapshot { meta } => meta.clone(),
        _ => panic!("not an InstallSnapshot: {m:?}"),
    }
}

fn peer_state(net: &Net, leader: NodeId, id: NodeId) -> &'static str {
    let status = net.node(leader).status();
    status
        .peers
        .iter()
        .find(|p| p.id == id)
        .expect("a follower")
        .state
}

/// Three nodes; node 1 leads; node 3 misses ten entries that node 1 then compacts
/// away. Returns the compaction point once node 1 has asked for a snapshot for node 3
/// (the request is taken off the wire and returned too).
fn leader_needs_a_snapshot() -> (Net, SnapshotMeta, Message) {
    let mut net = Net::new(&[1, 2, 3], default_config);
    net.elect(1);
    net.isolate(3);
    for _ in 0..10 {
        net.propose(1, "x");
    }
    net.deliver_all();
    let commit = net.node(1).commit_index();
    assert_eq!(commit, 11);
    let meta = net.node_mut(1).compact(commit).expect("applied and durable");
    assert_eq!(meta.membership, Membership::with_voters([1, 2, 3]));
    assert_eq!(net.node(1).status().first_index, commit + 1);
    net.heal();
    for _ in 0..10 {
        net.tick_n(1, HEARTBEAT);
        net.deliver_where(|m| !is_install(m));
        if let Some(m) = net.take_where(is_install).pop() {
            return (net, meta, m);
        }
    }
    panic!("the leader never asked for a snapshot");
}

#[test]
fn leader_asks_for_a_snapshot_and_keeps_heartbeating_the_follower() {
    let (mut net, meta, req) = leader_needs_a_snapshot();
    assert_eq!((req.from, req.to), (1, 3));
    assert_eq!(install_meta(&req), meta);
    assert_eq!(peer_state(&net, 1, 3), "snapshot");
    // While the transfer runs, no appends go to node 3 but heartbeats do.
    net.propose(1, "more");
    net.tick_n(1, HEARTBEAT);
    assert!(net
        .on_wire(|m| m.to == 3 && matches!(m.body, MessageBody::Append(_)))
        .is_empty());
    assert!(!net
        .on_wire(|m| m.to == 3 && matches!(m.body, MessageBody::Heartbeat { .. }))
        .is_empty());
}

#[test]
fn failed_transfer_is_asked_for_again_after_the_next_heartbeat_reply() {
    let (mut net, meta, _lost) = leader_needs_a_snapshot();
    net.node_mut(1).report_snapshot(3, false);
    net.process(1);
    assert_eq!(peer_state(&net, 1, 3), "probe");
    assert!(
        net.on_wire(is_install).is_empty(),
        "no retry before the follower is heard from"
    );
    net.tick_n(1, HEARTBEAT);
    net.deliver_where(|m| !is_install(m));
    let retry = net.take_where(is_install);
    assert_eq!(retry.len(), 1);
    assert_eq!(install_meta(&retry[0]), meta);
}

#[test]
fn unreported_transfer_times_out_and_is_asked_for_again() {
    let (mut net, _, _lost) = leader_needs_a_snapshot();
    let before = net.count_sent(is_install);
    let mut retried_at = None;
    for t in 1..=2 * ELECTION {
        net.tick(1);
        net.deliver_where(|m| !is_install(m));
        net.take_where(is_install);
        if retried_at.is_none() && net.count_sent(is_install) > before {
            retried_at = Some(t);
        }
    }
    let t = retried_at.expect("a transfer that was never reported was not retried");
    assert!(t >= ELECTION, "asked again after {t} ticks, before the timeout");
    assert!(net.node(1).role() == raft::core::Role::Leader);
}

#[test]
fn installed_snapshot_resumes_replication_after_the_follower_acks() {
    let (mut net, meta, req) = leader_needs_a_snapshot();
    let applied_before = net.peer(3).applied.len();
    net.step(req);
    // The follower adopted it: durable snapshot point, log restarted after it.
    let three = net.peer(3);
    assert_eq!(three.disk.snapshot, meta);
    assert!(three.disk.entries.is_empty());
    assert_eq!(net.node(3).status().first_index, meta.index + 1);
    assert_eq!(net.node(3).commit_index(), meta.index);
    let ack = net.on_wire(|m| m.from == 3 && as_append_response(m).is_some());
    assert_eq!(
        as_append_response(&ack[0]).map(|r| (r.index, r.reject)),
        Some((meta.index, false))
    );
    net.node_mut(1).report_snapshot(3, true);
    net.process(1);
    assert_eq!(peer_state(&net, 1, 3), "probe");
    net.deliver_all();
    assert_eq!(peer_state(&net, 1, 3), "replicate");
    let (index, _) = net.propose(1, "after");
    net.deliver_all();
    net.heartbeat(1);
    assert_eq!(net.node(3).commit_index(), index);
    let applied: Vec<u64> = net.peer(3).applied[applied_before..]
        .iter()
        .map(|e| e.index)
        .collect();
    assert_eq!(
        applied,
        vec![index],
        "entries covered by the snapshot were applied again"
    );
}

/// A follower with entries 1..=4 of terms [1, 1, 2, 2], nothing known committed.
fn follower() -> Net {
    Net::from_restores([(2, restore(&[1, 2, 3], 2, &[1, 1, 2, 2]))], default_config)
}

fn install(net: &mut Net, term: u64, meta: SnapshotMeta) -> Ready {
    net.node_mut(2)
        .step(msg(1, 2, term, MessageBody::InstallSnapshot { meta }));
    net.node_mut(2).ready()
}

fn meta(index: u64, term: u64, voters: &[NodeId]) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term,
        membership: Membership::with_voters(voters.iter().copied()),
    }
}

fn acked(rd: &Ready) -> Option<u64> {
    rd.persisted_messages
        .iter()
        .find_map(as_append_response)
        .filter(|r| !r.reject)
        .map(|r| r.index)
}

#[test]
fn snapshot_contradicting_the_log_replaces_it() {
    let mut net = follower();
    let m = meta(3, 3, &[1, 2, 3, 4]);
    let rd = install(&mut net, 3, m.clone());
    assert_eq!(rd.snapshot, Some(m.clone()));
    assert!(rd.committed.is_empty(), "nothing to apply from the log");
    assert_eq!(
        acked(&rd),
        Some(3),
        "the ack waits for the snapshot to be durable"
    );
    assert!(rd.messages.iter().all(|m| as_append_response(m).is_none()));
    let r = net.node(2);
    assert_eq!(
        (r.status().first_index, r.last_index(), r.commit_index()),
        (4, 3, 3)
    );
    assert_eq!(r.membership(), &m.membership);
}

#[test]
fn snapshot_matching_the_log_keeps_the_suffix() {
    let mut net = follower();
    let rd = install(&mut net, 2, meta(3, 2, &[1, 2, 3]));
    assert_eq!(rd.snapshot, None, "the log already holds it: nothing to restore");
    assert_eq!(
        rd.committed.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(acked(&rd), Some(3));
    let r = net.node(2);
    assert_eq!(
        (r.status().first_index, r.last_index(), r.commit_index()),
        (1, 4, 3)
    );
}

#[test]
fn stale_snapshot_is_acknowledged_with_the_commit_index() {
    let mut net = follower();
    install(&mut net, 2, meta(3, 2, &[1, 2, 3]));
    let rd = install(&mut net, 2, meta(2, 1, &[1, 2, 3]));
    assert_eq!(rd.snapshot, None);
    assert_eq!(acked(&rd), Some(3));
    assert_eq!(net.node(2).last_index(), 4);
}

#[test]
fn compact_takes_only_applied_durable_entries_and_records_the_configuration() {
    let mut net = Net::new(&[1], default_config);
    net.elect(1);
    net.propose(1, "a");
    let mut next = Membership::with_voters([1]);
    next.learners.insert(2);
    let (cfg_index, _) = net
        .node_mut(1)
        .propose_membership(next.clone())
        .expect("accepted");
    net.process(1);
    net.propose(1, "b");
    let last = net.node(1).last_index();
    assert_eq!(net.node(1).commit_index(), last);

    let before = net.node(1).snapshot_meta(cfg_index - 1).expect("applied");
    assert_eq!(before.membership, Membership::with_voters([1]));
    let at = net.node(1).snapshot_meta(cfg_index).expect("applied");
    assert_eq!(at.membership, next);
    assert_eq!(net.node(1).snapshot_meta(last + 1), None, "not applied yet");
    assert_eq!(net.node_mut(1).compact(last + 1), None, "beyond the log");

    let point = net.node_mut(1).compact(cfg_index).expect("compacted");
    assert_eq!(point, at);
    assert_eq!(net.node_mut(1).compact(cfg_index), None, "already there");
    assert_eq!(net.node_mut(1).compact(cfg_index - 1), None, "behind the point");
    assert_eq!(net.node(1).snapshot_meta(cfg_index - 1), None, "compacted away");
    assert_eq!(net.node(1).membership(), &next);
    // A restart from the compacted state finds the same configuration.
    let r = net.node(1);
    let entries = (cfg_index + 1..=last)
        .map(|i| r.entry(i).expect("held").clone())
        .collect();
    let restarted = raft::core::RaftNode::new(
        default_config(1),
        raft::core::Restore {
            hard_state: r.hard_state(),
            snapshot: point,
            entries,
            applied: last,
        },
    )
    .expect("valid");
    assert_eq!(restarted.membership(), &next);
    assert_eq!(restarted.status().first_index, cfg_index + 1);
}
