//! Randomized fault injection over many seeds.
//!
//! Each seed builds a 3- or 5-node cluster with its own network character (loss,
//! duplication, latency spread), then for a few virtual seconds mixes client proposals
//! with partitions (whole node, one link, one direction), crashes and restarts. The
//! simulator checks the safety properties after every event. At the end every fault is
//! healed and the cluster must elect a leader, commit a final entry and converge: every
//! committed proposal is applied exactly once, at the same index, on every node.
//!
//! `SIM_SEEDS=N` sets the number of seeds (default 500), `SIM_SEED_START` the first.
//! A failure prints the seed and the command that replays it exactly:
//! `SIM_SEED=<seed> cargo test -p raft --features sim --test sim_random replay -- --nocapture`

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

use raft::core::{EntryPayload, NodeId};
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
}

#[derive(Debug, Default)]
struct Outcome {
    proposals: usize,
    committed: usize,
    crashes: usize,
    partitions: usize,
    events: u64,
}

fn run_seed(seed: u64) -> Outcome {
    let mut dice = Dice(seed);
    let n = if dice.chance(30) { 5 } else { 3 };
    let opts = SimOptions {
        drop_rate: [0.0, 0.01, 0.05, 0.15][dice.below(4) as usize],
        dup_rate: [0.0, 0.02, 0.1][dice.below(3) as usize],
        latency_us: (100, [1_000, 5_000, 30_000][dice.below(3) as usize]),
        pre_vote: dice.chance(80),
        check_quorum: dice.chance(80),
        // Odd seeds model a driver that keeps stepping the core during its writes.
        step_during_write: seed % 2 == 1,
        ..SimOptions::default()
    };
    let mut sim = Sim::new(n, seed, opts);
    let ids: Vec<NodeId> = (1..=n).collect();
    let mut out = Outcome::default();
    let mut payload_counter = 0u64;
    let mut down: BTreeSet<NodeId> = BTreeSet::new();

    // Three virtual seconds of chaos, one decision every 20 ms.
    for _ in 0..150 {
        sim.run_for(20_000);
        let roll = dice.below(100);
        match roll {
            0..=49 => {
                if let Some(l) = sim.leader() {
                    for _ in 0..=dice.below(4) {
                        payload_counter += 1;
                        let data = format!("s{seed}-p{payload_counter}");
                        if sim.propose(l, data.into_bytes()).is_some() {
                            out.proposals += 1;
                        }
                    }
                }
            }
            50..=57 => {
                let a = ids[dice.below(n) as usize];
                sim.isolate(a);
                out.partitions += 1;
            }
            58..=63 => {
                let a = ids[dice.below(n) as usize];
                let b = ids[dice.below(n) as usize];
                if a != b {
                    sim.block(a, b);
                    out.partitions += 1;
                }
            }
            64..=67 => {
                let side: Vec<NodeId> = ids.iter().copied().filter(|_| dice.chance(50)).collect();
                sim.partition(&side);
                out.partitions += 1;
            }
            68..=79 => sim.heal(),
            80..=85 => {
                // Crash a node, but keep a majority up so the run makes progress.
                let a = ids[dice.below(n) as usize];
                if !down.contains(&a) && (down.len() as u64 + 1) * 2 < n {
                    sim.crash(a);
                    down.insert(a);
                    out.crashes += 1;
                }
            }
            86..=93 => {
                if let Some(&a) = down.iter().next() {
                    sim.restart(a);
                    down.remove(&a);
                }
            }
            _ => {
                if let (Some(l), true) = (sim.leader(), dice.chance(30)) {
                    let to = ids[dice.below(n) as usize];
                    sim.transfer_leader(l, to);
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
    let mut final_index = None;
    for _ in 0..20 {
        let Some(l) = sim.run_until_leader(5_000_000) else {
            continue;
        };
        if let Some(p) = sim.propose(l, format!("s{seed}-final").into_bytes()) {
            let idx = p.index;
            let term = p.term;
            let ok = sim.run_until(5_000_000, |s| {
                s.nodes
                    .values()
                    .all(|nd| nd.applied.iter().any(|e| e.index == idx && e.term == term))
            });
            if ok {
                final_index = Some(idx);
                break;
            }
        } else {
            // Refused (e.g. a leadership transfer is running): give it time.
            sim.run_for(100_000);
        }
    }
    let Some(final_index) = final_index else {
        let states: Vec<String> = sim
            .nodes
            .iter()
            .map(|(id, nd)| {
                let s = nd.raft().status();
                format!(
                    "node {id}: {:?} term {} leader {:?} vote {:?} last {} commit {} persisted {} peers {:?}",
                    s.role, s.term, s.leader, s.vote, s.last_index, s.commit, s.persisted, s.peers
                )
            })
            .collect();
        let wire: Vec<String> = sim
            .in_flight()
            .iter()
            .take(20)
            .map(|m| format!("{:?}", m))
            .collect();
        panic!(
            "seed {seed}: cluster did not converge after healing (liveness) at {} with {} events queued\n{}\nwire: {}",
            sim.now(),
            sim.pending_events(),
            states.join("\n"),
            wire.join("\n")
        );
    };
    sim.check_log_matching();

    // Convergence: every node applied the same sequence up to the final entry, each
    // committed proposal exactly once.
    let reference: Vec<_> = sim.nodes[&1]
        .applied
        .iter()
        .filter(|e| e.index <= final_index)
        .cloned()
        .collect();
    assert_eq!(
        reference.len() as u64,
        final_index,
        "seed {seed}: node 1 applied a gap"
    );
    for (id, node) in &sim.nodes {
        let mine: Vec<_> = node
            .applied
            .iter()
            .filter(|e| e.index <= final_index)
            .cloned()
            .collect();
        assert_eq!(
            mine, reference,
            "seed {seed}: node {id} applied a different sequence"
        );
    }
    let mut seen: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for e in &reference {
        if let EntryPayload::Normal(d) = &e.payload {
            *seen.entry(d.to_vec()).or_default() += 1;
        }
    }
    assert!(
        seen.values().all(|&c| c == 1),
        "seed {seed}: a proposal was applied twice"
    );
    for (index, (term, payload)) in sim.committed_entries() {
        if *index <= final_index {
            let e = &reference[(*index - 1) as usize];
            assert!(
                e.term == *term && &e.payload == payload,
                "seed {seed}: committed entry {index} lost"
            );
        }
    }
    out.committed = seen.len();
    out.events = sim.events_run();
    out
}

fn seeds_from_env() -> (u64, u64) {
    let count = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let start = std::env::var("SIM_SEED_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (start, count)
}

#[test]
fn random_faults_many_seeds() {
    let (start, count) = seeds_from_env();
    let mut failures = Vec::new();
    let mut totals = Outcome::default();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for seed in start..start + count {
        match catch_unwind(AssertUnwindSafe(|| run_seed(seed))) {
            Ok(o) => {
                totals.proposals += o.proposals;
                totals.committed += o.committed;
                totals.crashes += o.crashes;
                totals.partitions += o.partitions;
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
    println!(
        "{count} seeds from {start}: {} proposals, {} committed, {} crashes, {} partitions, {} events",
        totals.proposals, totals.committed, totals.crashes, totals.partitions, totals.events
    );
    if !failures.is_empty() {
        for (seed, msg) in &failures {
            eprintln!("seed {seed} failed: {msg}");
            eprintln!(
                "  replay: SIM_SEED={seed} cargo test -p raft --features sim --test sim_random replay -- --nocapture"
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
}

/// Replays one seed exactly (`SIM_SEED`, default 0), with the panic message intact.
#[test]
fn replay() {
    let seed = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let o = run_seed(seed);
    println!("seed {seed}: {o:?}");
    assert!(o.committed > 0);
}
