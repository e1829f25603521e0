//! Snapshots and log compaction in the simulator.
//!
//! Every node compacts its log by policy (an image every `snapshot_every` applied
//! entries, `snapshot_keep` entries kept behind it). A follower that needs entries a
//! leader has compacted away gets the leader's latest image as a separate transfer on
//! the simulated network (lost, delayed or duplicated like any message) and installs
//! it. The simulator checks after every event that each node's state machine, however
//! it got there, equals the reference state at its applied index.

use raft::core::{NodeId, Role};
use raft::sim::{Sim, SimOptions};

const SECOND: u64 = 1_000_000;

fn compacting(drop_rate: f64) -> SimOptions {
    SimOptions {
        drop_rate,
        snapshot_every: 20,
        snapshot_keep: 5,
        ..SimOptions::default()
    }
}

/// Propose `count` commands through whoever leads, letting time pass in between.
/// Returns the index of the last accepted one.
fn workload(sim: &mut Sim, tag: &str, count: usize) -> u64 {
    let mut last = 0;
    let mut sent = 0;
    let mut attempts = 0;
    while sent < count {
        attempts += 1;
        assert!(attempts < 100 * count, "the workload could not make progress");
        match sim.leader() {
            Some(l) => {
                if let Some(p) = sim.propose(l, format!("{tag}-{sent}").into_bytes()) {
                    last = p.index;
                    sent += 1;
                }
                sim.run_for(2_000);
            }
            None => sim.run_for(50_000),
        }
    }
    last
}

/// Commit one more command and wait until every member applied it. Returns its index.
fn settle(sim: &mut Sim, tag: &str) -> u64 {
    for round in 0..20 {
        let Some(l) = sim.run_until_leader(5 * SECOND) else {
            continue;
        };
        if let Some(p) = sim.propose(l, format!("{tag}-final-{round}").into_bytes()) {
            if sim.run_until(10 * SECOND, |s| s.converged(p.index)) {
                return p.index;
            }
        }
    }
    panic!("seed {}: the cluster did not converge", sim.seed());
}

fn follower_of(sim: &Sim, leader: NodeId) -> NodeId {
    *sim.nodes.keys().find(|&&id| id != leader).expect("a follower")
}

/// Isolate a follower, let the others run `count` commands and compact well past the
/// follower's log. Returns (leader, follower).
fn leave_behind(sim: &mut Sim, count: usize) -> (NodeId, NodeId) {
    let leader = sim.run_until_leader(5 * SECOND).expect("a leader");
    let lagger = follower_of(sim, leader);
    sim.isolate(lagger);
    workload(sim, "behind", count);
    let lag_last = sim.nodes[&lagger].raft().last_index();
    let leader = sim.leader().expect("the majority keeps a leader");
    let first = sim.nodes[&leader].raft().status().first_index;
    assert!(
        first > lag_last + 1,
        "the leader compacted past the lagging log (first index {first}, lagger at {lag_last})"
    );
    (leader, lagger)
}

#[test]
fn lagging_follower_catches_up_by_snapshot_under_message_loss() {
    let mut installs = 0;
    for seed in 0..8 {
        let mut sim = Sim::new(3, seed, compacting(0.05));
        let (_, lagger) = leave_behind(&mut sim, 120);
        sim.heal();
        let last = settle(&mut sim, "heal");
        let node = &sim.nodes[&lagger];
        assert!(
            node.installs >= 1,
            "seed {seed}: the lagging node installed no snapshot"
        );
        assert!(node.sm.index >= last);
        assert!(
            node.applied.len() < last as usize,
            "seed {seed}: the lagging node replayed the whole log instead of installing"
        );
        installs += node.installs;
        sim.check_log_matching();
        assert!(sim.check_history(last) >= 120);
    }
    assert!(installs >= 8);
}

#[test]
fn lost_snapshot_transfers_are_retried_until_one_arrives() {
    let mut lost = 0;
    for seed in 0..8 {
        let opts = SimOptions {
            snapshot_drop_rate: 0.6,
            ..compacting(0.02)
        };
        let mut sim = Sim::new(3, 100 + seed, opts);
        let (_, lagger) = leave_behind(&mut sim, 80);
        sim.heal();
        let last = settle(&mut sim, "heal");
        let stats = sim.snapshot_stats().clone();
        assert!(sim.nodes[&lagger].installs >= 1, "seed {seed}: {stats:?}");
        assert!(stats.requested >= stats.sent.min(1));
        lost += stats.lost;
        sim.check_history(last);
    }
    assert!(lost > 0, "no transfer was lost: the retry path was not exercised");
}

#[test]
fn crash_during_snapshot_install_loses_it_cleanly() {
    let mut sim = Sim::new(3, 21, compacting(0.0));
    let (_, lagger) = leave_behind(&mut sim, 100);
    let before = sim.nodes[&lagger].disk.clone();
    sim.heal();
    // The data arrives and the core adopts the snapshot; crash before the write syncs.
    assert!(sim.run_until(5 * SECOND, |s| s.nodes[&lagger].installing().is_some()));
    let meta = sim.nodes[&lagger].installing().cloned().expect("installing");
    assert!(meta.index > before.snapshot.index);
    sim.crash(lagger);
    let disk = &sim.nodes[&lagger].disk;
    assert_eq!(
        disk.snapshot, before.snapshot,
        "an unsynced snapshot point reached the disk"
    );
    assert_eq!(disk.image, before.image, "an unsynced image reached the disk");
    assert_eq!(disk.entries, before.entries);
    assert_eq!(sim.nodes[&lagger].installs, 0);

    sim.run_for(SECOND);
    sim.restart(lagger);
    assert_eq!(
        sim.nodes[&lagger].sm.index,
        before.image.as_ref().map_or(0, |i| i.meta.index)
    );
    let last = settle(&mut sim, "after-crash");
    let node = &sim.nodes[&lagger];
    assert!(node.installs >= 1, "the retried install did not happen");
    assert!(node.disk.snapshot.index >= meta.index);
    assert!(node.sm.index >= last);
    sim.check_log_matching();
    assert!(sim.check_history(last) >= 100);
}

#[test]
fn restart_loads_the_snapshot_and_replays_only_the_tail() {
    let mut sim = Sim::new(3, 5, compacting(0.0));
    sim.run_until_leader(5 * SECOND).expect("a leader");
    workload(&mut sim, "w", 150);
    let last = settle(&mut sim, "w");
    for id in [1, 2, 3] {
        let leader = sim.leader().expect("a leader");
        sim.crash(id);
        let disk = &sim.nodes[&id].disk;
        let image = disk.image.clone().expect("the node took an image");
        assert!(disk.snapshot.index > 0, "node {id} never compacted");
        assert!(disk.snapshot.index <= image.meta.index);
        sim.restart(id);
        let node = &sim.nodes[&id];
        assert_eq!(node.restored_from, image.meta.index);
        assert_eq!(node.sm, image.state);
        let target = if id == leader {
            settle(&mut sim, "restart")
        } else {
            last
        };
        assert!(sim.run_until(5 * SECOND, |s| s.nodes[&id].sm.index >= target));
        let node = &sim.nodes[&id];
        assert!(
            (node.applied.len() as u64) < target - 100,
            "node {id} replayed {} entries for a log of {target}",
            node.applied.len()
        );
        assert_eq!(node.applied.first().map(|e| e.index), Some(image.meta.index + 1));
    }
    let last = settle(&mut sim, "end");
    sim.check_history(last);
}

#[test]
fn snapshot_install_keeps_reads_transfer_and_check_quorum_working() {
    let mut sim = Sim::new(3, 9, compacting(0.0));
    let (leader, lagger) = leave_behind(&mut sim, 100);
    sim.heal();
    assert!(sim.run_until(5 * SECOND, |s| s.nodes[&lagger].installs >= 1));
    // A read forwarded by the freshly installed follower is answered at an index it
    // reaches.
    assert!(sim.read_index(lagger, 77));
    assert!(sim.run_until(SECOND, |s| !s.reads(lagger).is_empty()));
    let (ctx, index) = sim.reads(lagger)[0];
    assert_eq!(ctx, 77);
    let index = index.expect("the read is confirmed");
    assert!(sim.run_until(SECOND, |s| s.nodes[&lagger].sm.index >= index));
    // Leadership moves to the node that caught up by snapshot.
    assert!(sim.transfer_leader(leader, lagger));
    assert!(sim.run_until(2 * SECOND, |s| s.leader() == Some(lagger)));
    // Check-quorum: with both others cut off, it steps down.
    let last = settle(&mut sim, "moved");
    assert!(sim.nodes[&lagger].sm.index >= last);
    sim.isolate(lagger);
    assert!(sim.run_until(2 * SECOND, |s| s.nodes[&lagger].raft().role() != Role::Leader));
    sim.heal();
    let last = settle(&mut sim, "end");
    sim.check_history(last);
}
