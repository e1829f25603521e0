//! Randomized fault injection with log compaction, snapshot installs and membership
//! changes, over many seeds.
//!
//! Each seed builds a 3- or 5-node cluster with its own network character and
//! compaction policy, then for a few virtual seconds mixes client proposals with
//! partitions, crashes and restarts, leadership transfers, and configuration changes:
//! new nodes join empty as learners (catching up by snapshot when the log is
//! compacted), caught-up learners are promoted, voters and learners are removed (the
//! leader included). Snapshot transfers are lost, delayed and duplicated like any
//! message, and sometimes take longer than an election timeout. The simulator checks
//! the safety properties after every event, state machine safety across snapshot
//! installs included. At the end every fault is healed and every member of the final
//! configuration must apply a final entry, with the same state, each committed command
//! exactly once.
//!
//! `SIM_SEEDS2=N` sets the number of seeds (default 200), `SIM_SEED_START2` the first.
//! A failure prints the seed and the command that replays it:
//! `SIM_SEED2=<seed> cargo test -p raft --features sim --release --test sim_membership_random replay -- --nocapture`

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use raft::core::{Membership, NodeId};
use raft::sim::{Sim, SimOptions};

/// A small deterministic generator for the scenario itself (separate from the sim's).
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.below(items.len() as u64) as usize])
        }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    proposals: usize,
    committed: usize,
    changes: usize,
    installs: u64,
    compactions: u64,
    transfers_lost: u64,
    crashes: usize,
    events: u64,
}

/// The configuration the current leader works with (the bootstrap one if none).
fn current_config(sim: &Sim) -> Membership {
    match sim.leader() {
        Some(l) => sim.nodes[&l].raft().membership().clone(),
        None => sim.membership().clone(),
    }
}

fn run_seed(seed: u64) -> Outcome {
    let mut dice = Dice(seed ^ 0x005E_ED0F_C0F1);
    let n = if dice.chance(30) { 5 } else { 3 };
    let opts = SimOptions {
        drop_rate: [0.0, 0.01, 0.05, 0.1][dice.below(4) as usize],
        dup_rate: [0.0, 0.02, 0.1][dice.below(3) as usize],
        latency_us: (100, [1_000, 5_000, 30_000][dice.below(3) as usize]),
        pre_vote: dice.chance(80),
        check_quorum: dice.chance(80),
        snapshot_every: [5, 10, 25, 50][dice.below(4) as usize],
        snapshot_keep: [0, 2, 10][dice.below(3) as usize],
        snapshot_drop_rate: [0.0, 0.1, 0.3][dice.below(3) as usize],
        // Sometimes longer than an election timeout (100 ms): the leader asks again
        // while a transfer is still on its way.
        snapshot_us: (1_000, [5_000, 20_000, 150_000][dice.below(3) as usize]),
        // Odd seeds model a driver that keeps stepping the core during its writes.
        step_during_write: seed % 2 == 1,
        ..SimOptions::default()
    };
    let mut sim = Sim::new(n, seed, opts);
    let mut out = Outcome::default();
    let mut counter = 0u64;
    let mut down: BTreeSet<NodeId> = BTreeSet::new();
    let mut next_id = n + 1;

    // Three virtual seconds of chaos, one decision every 20 ms.
    for _ in 0..150 {
        sim.run_for(20_000);
        let ids: Vec<NodeId> = sim.nodes.keys().copied().collect();
        let config = current_config(&sim);
        match dice.below(100) {
            0..=39 => {
                if let Some(l) = sim.leader() {
                    for _ in 0..=dice.below(5) {
                        counter += 1;
                        if sim
                            .propose(l, format!("s{seed}-p{counter}").into_bytes())
                            .is_some()
                        {
                            out.proposals += 1;
                        }
                    }
                }
            }
            40..=45 => {
                let a = dice.pick(&ids).expect("nodes");
                sim.isolate(a);
            }
            46..=49 => {
                let (a, b) = (dice.pick(&ids).expect("nodes"), dice.pick(&ids).expect("nodes"));
                if a != b {
                    sim.block(a, b);
                }
            }
            50..=52 => {
                let side: Vec<NodeId> = ids.iter().copied().filter(|_| dice.chance(50)).collect();
                sim.partition(&side);
            }
            53..=61 => sim.heal(),
            62..=67 => {
                // Crash a node, keeping a majority of the current voters up.
                let a = dice.pick(&ids).expect("nodes");
                let voters_down = config.voters.iter().filter(|v| down.contains(v)).count();
                let hurts = config.voters.contains(&a);
                let allowed = !hurts || (voters_down + 1) * 2 < config.voters.len();
                if !down.contains(&a) && allowed {
                    sim.crash(a);
                    down.insert(a);
                    out.crashes += 1;
                }
            }
            68..=74 => {
                if let Some(&a) = down.iter().next() {
                    sim.restart(a);
                    down.remove(&a);
                }
            }
            75..=79 => {
                // A new, empty node joins as a learner.
                if let Some(l) = sim.leader() {
                    if sim.nodes.len() < 8 {
                        let id = next_id;
                        next_id += 1;
                        sim.add_node(id);
                        let mut next = config.clone();
                        next.learners.insert(id);
                        if sim.propose_membership(l, next).is_ok() {
                            out.changes += 1;
                        }
                    }
                }
            }
            80..=84 => {
                // Promote a learner that has caught up with the leader's commit index.
                if let Some(l) = sim.leader() {
                    let status = sim.nodes[&l].raft().status();
                    let ready: Vec<NodeId> = status
                        .peers
                        .iter()
                        .filter(|p| p.learner && p.matched >= status.commit)
                        .map(|p| p.id)
                        .collect();
                    if let Some(id) = dice.pick(&ready) {
                        let mut next = config.clone();
                        next.learners.remove(&id);
                        next.voters.insert(id);
                        if sim.propose_membership(l, next).is_ok() {
                            out.changes += 1;
                        }
                    }
                }
            }
            85..=89 => {
                // Remove a voter (the leader itself, sometimes) or a learner.
                if let Some(l) = sim.leader() {
                    let mut candidates: Vec<NodeId> = config.learners.iter().copied().collect();
                    if config.voters.len() > 2 {
                        candidates.extend(config.voters.iter().copied());
                    }
                    if let Some(id) = dice.pick(&candidates) {
                        let mut next = config.clone();
                        next.voters.remove(&id);
                        next.learners.remove(&id);
                        if sim.propose_membership(l, next).is_ok() {
                            out.changes += 1;
                        }
                    }
                }
            }
            _ => {
                if let Some(l) = sim.leader() {
                    let voters: Vec<NodeId> = config.voters.iter().copied().collect();
                    if let Some(to) = dice.pick(&voters) {
                        sim.transfer_leader(l, to);
                    }
                }
            }
        }
    }

    // Heal everything; the cluster must recover and converge.
    sim.heal();
    for a in std::mem::take(&mut down) {
        sim.restart(a);
    }
    sim.opts.drop_rate = 0.0;
    sim.opts.dup_rate = 0.0;
    sim.opts.snapshot_drop_rate = 0.0;
    let mut done = None;
    for attempt in 0..20 {
        let Some(l) = sim.run_until_leader(5_000_000) else {
            continue;
        };
        match sim.propose(l, format!("s{seed}-final-{attempt}").into_bytes()) {
            Some(p) => {
                if sim.run_until(10_000_000, |s| s.converged(p.index)) {
                    done = Some((sim.leader().expect("converged under a leader"), p.index));
                    break;
                }
                if std::env::var("SIM_DEBUG").is_ok() {
                    for (id, nd) in &sim.nodes {
                        if let Some(r) = nd.raft.as_ref() {
                            let s = r.status();
                            eprintln!(
                                "attempt {attempt} idx {} node {id}: {:?} term {} leader {:?} first {} last {} commit {} sm {} voters {:?} learners {:?} peers {:?}",
                                p.index, s.role, s.term, s.leader, s.first_index, s.last_index, s.commit,
                                nd.sm.index, s.membership.voters, s.membership.learners, s.peers
                            );
                        }
                    }
                }
            }
            None => sim.run_for(100_000),
        }
    }
    let Some((leader, final_index)) = done else {
        let states: Vec<String> = sim
            .nodes
            .iter()
            .map(|(id, nd)| {
                let s = nd.raft().status();
                format!(
                    "node {id}: {:?} term {} leader {:?} first {} last {} commit {} applied {} sm {} voters {:?} learners {:?} peers {:?}",
                    s.role,
                    s.term,
                    s.leader,
                    s.first_index,
                    s.last_index,
                    s.commit,
                    s.applied,
                    nd.sm.index,
                    s.membership.voters,
                    s.membership.learners,
                    s.peers
                )
            })
            .collect();
        panic!(
            "seed {seed}: cluster did not converge after healing (liveness) at {}\n{}\n{:?}",
            sim.now(),
            states.join("\n"),
            sim.snapshot_stats()
        );
    };
    sim.check_log_matching();
    let config = sim.nodes[&leader].raft().membership().clone();
    for id in config.members() {
        let node = &sim.nodes[&id];
        assert!(
            node.sm.index >= final_index,
            "seed {seed}: member {id} did not converge"
        );
        assert_eq!(
            node.raft().membership(),
            &config,
            "seed {seed}: member {id} has another configuration"
        );
    }
    out.committed = sim.check_history(final_index);
    let stats = sim.snapshot_stats();
    out.installs = stats.installs;
    out.compactions = stats.compactions;
    out.transfers_lost = stats.lost;
    out.events = sim.events_run();
    out
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_membership_and_snapshots() {
    let start = env("SIM_SEED_START2", 0);
    let count = env("SIM_SEEDS2", 200);
    let mut failures = Vec::new();
    let mut totals = Outcome::default();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for seed in start..start + count {
        match catch_unwind(AssertUnwindSafe(|| run_seed(seed))) {
            Ok(o) => {
                totals.proposals += o.proposals;
                totals.committed += o.committed;
                totals.changes += o.changes;
                totals.installs += o.installs;
                totals.compactions += o.compactions;
                totals.transfers_lost += o.transfers_lost;
                totals.crashes += o.crashes;
                totals.events += o.events;
            }
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push((seed, msg));
            }
        }
    }
    std::panic::set_hook(hook);
    println!("{count} seeds from {start}: {totals:?}");
    if !failures.is_empty() {
        for (seed, msg) in &failures {
            eprintln!("seed {seed} failed: {msg}");
            eprintln!(
                "  replay: SIM_SEED2={seed} cargo test -p raft --features sim --release --test sim_membership_random replay -- --nocapture"
            );
        }
        panic!(
            "{} of {count} seeds failed (first: {})",
            failures.len(),
            failures[0].0
        );
    }
    assert!(
        totals.committed > count as usize,
        "the workload committed almost nothing"
    );
    if count >= 20 {
        assert!(totals.installs > 0, "no snapshot was installed");
        assert!(totals.changes > 0, "no membership change was proposed");
        assert!(totals.transfers_lost > 0, "no snapshot transfer was lost");
    }
}

/// Replays one seed exactly (`SIM_SEED2`, default 0), with the panic message intact.
#[test]
fn replay() {
    let seed = env("SIM_SEED2", 0);
    let o = run_seed(seed);
    println!("seed {seed}: {o:?}");
    assert!(o.committed > 0);
}
