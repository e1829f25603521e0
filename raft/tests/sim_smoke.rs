use raft::core::Role;
use raft::sim::{Sim, SimOptions};

#[test]
fn three_nodes_elect_and_replicate() {
    let mut sim = Sim::new(3, 7, SimOptions::default());
    let leader = sim.run_until_leader(5_000_000).expect("a leader");
    let p = sim.propose(leader, &b"hello"[..]).expect("leader accepts");
    assert!(sim.run_until(1_000_000, |s| s
        .nodes
        .values()
        .all(|n| n.applied.iter().any(|e| e.index == p.index))));
    assert_eq!(sim.nodes[&leader].raft().role(), Role::Leader);
    sim.check_log_matching();
}
