//! Mixed faults, round after round, under one continuous bank workload.
//!
//! Each round picks a fault (SIGKILL and restart, SIGSTOP and SIGCONT, the Raft
//! channel cut both ways or inbound only, of the leader or of a follower), waits until
//! the cluster serves writes again, then repairs it and waits until every node agrees
//! on a leader. At the end every acknowledged operation must be in the final balances
//! and every node must hold the same state.
//!
//! By default it runs one round of each fault, in an order chosen by the seed. Knobs:
//!
//! * `CHAOS_SOAK=1` (or `true`): a long soak of 60 rounds; `CHAOS_SOAK=N` with
//!   `N > 1`: `N` rounds. `0` or unset: the short default.
//! * `CHAOS_SEED=S`: the seed of the fault order and of the workload (printed).
//! * `CHAOS_FRESH_CLIENTS=1`: a fresh set of clients each round instead of one set of
//!   clients for the whole run (the default, which also checks that clients survive
//!   the restarts and failovers of the nodes they talk to).

use std::time::{Duration, Instant};

use bank_app::AccountId;
use integration_tests::harness::{serial, Harness, SOON};
use integration_tests::workload::{History, SplitMix, Workload};
use raft::core::NodeId;

const WORKERS: usize = 4;
const LONG_SOAK_ROUNDS: usize = 60;
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillLeader,
    PauseLeader,
    IsolateLeader,
    DeafenLeader,
    KillFollower,
    IsolateFollower,
}

const FAULTS: [Fault; 6] = [
    Fault::KillLeader,
    Fault::PauseLeader,
    Fault::IsolateLeader,
    Fault::DeafenLeader,
    Fault::KillFollower,
    Fault::IsolateFollower,
];

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim() {
        "" => None,
        "true" | "yes" => Some(1),
        n => Some(
            n.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: expected a number")),
        ),
    }
}

/// The faults to inject, in order.
fn plan(seed: u64) -> Vec<Fault> {
    let mut rng = SplitMix::new(seed);
    let mut faults = FAULTS.to_vec();
    // Fisher-Yates, so the default run covers every fault once.
    for i in (1..faults.len()).rev() {
        faults.swap(i, rng.range(0, i as u64) as usize);
    }
    match env_u64("CHAOS_SOAK") {
        None | Some(0) => faults,
        Some(n) => {
            let rounds = if n == 1 { LONG_SOAK_ROUNDS } else { n as usize };
            (0..rounds)
                .map(|i| {
                    if i < faults.len() {
                        faults[i]
                    } else {
                        FAULTS[rng.range(0, FAULTS.len() as u64 - 1) as usize]
                    }
                })
                .collect()
        }
    }
}

#[test]
fn mixed_faults_under_load_lose_no_acknowledged_operation() {
    let _serial = serial();
    let seed = env_u64("CHAOS_SEED").unwrap_or(0xc4a05);
    let faults = plan(seed);
    println!("chaos soak: seed {seed}, {} rounds: {faults:?}", faults.len());

    let mut h = Harness::start_with_relays(3);
    h.wait_leader();
    let accounts: Vec<AccountId> = (1..=8).collect();
    let initial = h.open_accounts(&accounts, 200);
    let keep_clients = env_u64("CHAOS_FRESH_CLIENTS").unwrap_or(0) == 0;
    let mut history = History::default();
    let mut load: Option<Workload> = None;
    let started = Instant::now();

    for (round, &fault) in faults.iter().enumerate() {
        let load = match load.take() {
            Some(l) if keep_clients => load.insert(l),
            previous => {
                if let Some(l) = previous {
                    history.records.extend(l.stop(h.rt(), STOP_TIMEOUT).records);
                }
                load.insert(h.start_load(&accounts, WORKERS, None, seed.wrapping_add(round as u64 * 1000)))
            }
        };
        let leader = h.wait_leader();
        let others: Vec<NodeId> = h
            .cluster
            .node_ids()
            .into_iter()
            .filter(|&id| id != leader)
            .collect();
        let follower = others[round % others.len()];
        let at = Instant::now();
        // Inject, and wait until writes flow again.
        let new_leader = match fault {
            Fault::KillLeader => {
                h.cluster.kill(leader).expect("kill");
                Some(
                    h.cluster
                        .wait_leader_other_than(leader, SOON)
                        .expect("a new leader"),
                )
            }
            Fault::PauseLeader => {
                h.cluster.pause(leader).expect("pause");
                Some(
                    h.cluster
                        .wait_leader_other_than(leader, SOON)
                        .expect("a new leader"),
                )
            }
            Fault::IsolateLeader => {
                h.relays().isolate(leader);
                Some(h.wait_leader_among(&others, SOON))
            }
            Fault::DeafenLeader => {
                h.relays().cut_inbound(leader);
                Some(h.wait_leader_among(&others, SOON))
            }
            Fault::KillFollower => {
                h.cluster.kill(follower).expect("kill");
                None
            }
            Fault::IsolateFollower => {
                h.relays().isolate(follower);
                None
            }
        };
        let elected = at.elapsed();
        load.wait_applied(30, Some(at), SOON);
        let serving = at.elapsed();
        // Repair.
        match fault {
            Fault::KillLeader => {
                h.cluster.restart(leader).expect("restart");
                h.cluster.wait_ready(leader, SOON).expect("ready");
            }
            Fault::PauseLeader => h.cluster.resume(leader).expect("resume"),
            Fault::KillFollower => {
                h.cluster.restart(follower).expect("restart");
                h.cluster.wait_ready(follower, SOON).expect("ready");
            }
            Fault::IsolateLeader | Fault::DeafenLeader | Fault::IsolateFollower => h.relays().heal_all(),
        }
        let agreed = h.wait_leader();
        println!(
            "round {round}: {fault:?} (leader {leader}, follower {follower}): {} 30 writes after {serving:?}; \
             repaired, leader {agreed} after {:?}",
            match new_leader {
                Some(n) => format!("node {n} leads after {elected:?},"),
                None => "leader kept,".to_owned(),
            },
            at.elapsed()
        );
    }

    if let Some(l) = load {
        history.records.extend(l.stop(h.rt(), STOP_TIMEOUT).records);
    }
    println!("{} rounds in {:?}", faults.len(), started.elapsed());
    let observed = h.assert_history_matches(&history, &initial);
    h.assert_nodes_converged(&h.cluster.node_ids(), &observed);
}
