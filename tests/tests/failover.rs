//! Failures of whole processes under a bank workload: the leader killed with SIGKILL,
//! a follower killed and restarted from its data directory, the leader frozen with
//! SIGSTOP and thawed. Afterwards every acknowledged operation is in the final
//! balances, money is conserved, and every node converges on the same state.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bank_app::client::ClientError;
use bank_app::AccountId;
use integration_tests::harness::{serial, Harness, MAX_ELECTION_TIMEOUT, SOON};
use integration_tests::wait::wait_until;
use integration_tests::workload::{effect, random_op, History, SplitMix, Workload};

/// Concurrent clients of the workloads.
const WORKERS: usize = 4;
/// How quickly a new leader must serve writes after the old one dies.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);
/// Bound on the workers' calls in flight when the load stops.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

fn start_load(h: &Harness, accounts: &[AccountId], seed: u64) -> Workload {
    let clients = (0..WORKERS).map(|_| h.client(h.all_client_addrs())).collect();
    let load = Workload::start(h.rt().handle(), clients, accounts.to_vec(), seed);
    wait_until("the workload to get going", SOON, || {
        let n = load.applied();
        if n >= 100 {
            Ok(())
        } else {
            Err(format!("{n} operations applied"))
        }
    });
    load
}

fn wait_writes_after(load: &Workload, t: Instant, what: &str) {
    wait_until(what, SOON, || {
        let n = load.applied_started_after(t);
        if n >= 50 {
            Ok(())
        } else {
            Err(format!("{n} operations applied since"))
        }
    });
}

/// The history is clean and the cluster's balances are exactly what it implies.
fn check_history(
    h: &Harness,
    history: &History,
    initial: &BTreeMap<AccountId, u64>,
) -> BTreeMap<AccountId, u64> {
    println!("workload: {}", history.summary());
    assert!(
        history.failed().is_empty(),
        "unexpected errors: {:?}",
        history.failed()
    );
    assert!(
        history.unexpected_rejections().is_empty(),
        "unexpected rejections: {:?}",
        history.unexpected_rejections()
    );
    assert!(
        history.unknown().is_empty(),
        "the clients' retries should resolve every write, but these are unknown: {:?}",
        history.unknown()
    );
    let accounts: Vec<AccountId> = initial.keys().copied().collect();
    let observed = h.balances(&accounts);
    if let Err(e) = history.check(initial, &observed) {
        panic!("final balances do not match the acknowledged operations: {e}");
    }
    let total: i128 = observed.values().map(|&b| i128::from(b)).sum();
    let expected_total: i128 = history.expected(initial).values().sum();
    assert_eq!(total, expected_total, "money is conserved");
    observed
}

#[test]
fn sigkill_of_the_leader_under_load_loses_no_acknowledged_operation() {
    let _serial = serial();
    let mut h = Harness::start(3);
    let old = h.wait_leader();
    let accounts: Vec<AccountId> = (1..=6).collect();
    let initial = h.open_accounts(&accounts, 1_000_000);
    let load = start_load(&h, &accounts, 0x5eed_0003);

    let killed_at = Instant::now();
    h.cluster.kill(old).expect("SIGKILL the leader");
    let new = h.cluster.wait_leader_other_than(old, SOON).expect("a new leader");
    let elected_after = killed_at.elapsed();
    wait_writes_after(&load, killed_at, "writes to resume after the kill");
    let history = load.stop(h.rt(), STOP_TIMEOUT);

    let first = history
        .first_applied_started_after(killed_at)
        .expect("an operation acknowledged after the kill");
    let write_gap = first.finished.saturating_duration_since(killed_at);
    println!(
        "SIGKILL of leader {old}: node {new} leads {elected_after:?} after the kill (seen by the test's \
         /status polling); the first write started after the kill was acknowledged {write_gap:?} after it"
    );
    assert!(elected_after < FAILOVER_BOUND, "election took {elected_after:?}");
    assert!(write_gap < FAILOVER_BOUND, "writes resumed after {write_gap:?}");

    let observed = check_history(&h, &history, &initial);
    h.assert_nodes_converged(&h.cluster.running(), &observed);

    // The killed node comes back from its disk and converges too.
    h.cluster.restart(old).expect("restart");
    h.cluster.wait_ready(old, SOON).expect("restarted node ready");
    h.wait_leader();
    h.assert_nodes_converged(&h.cluster.node_ids(), &observed);
}

#[test]
fn a_restarted_node_rejoins_and_catches_up() {
    let _serial = serial();
    let mut h = Harness::start(3);
    let leader = h.wait_leader();
    let follower = h
        .cluster
        .node_ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    let accounts: Vec<AccountId> = (1..=4).collect();
    let mut expected: BTreeMap<AccountId, u64> = h.open_accounts(&accounts, 10_000);
    let client = h.client(h.all_client_addrs());
    let mut rng = SplitMix::new(0x5eed_0004);
    let mut run = |h: &Harness, n: usize, expected: &mut BTreeMap<AccountId, u64>| {
        h.block_on(async {
            for _ in 0..n {
                let op = random_op(&mut rng, &accounts);
                match client.submit(op).await {
                    Ok(_) => {
                        for (a, d) in effect(&op) {
                            let b = expected.get_mut(&a).expect("a known account");
                            *b = u64::try_from(i128::from(*b) + d).expect("a balance stays positive");
                        }
                    }
                    Err(ClientError::Rejected(_)) => {}
                    Err(e) => panic!("{op:?}: {e}"),
                }
            }
        })
    };
    run(&h, 50, &mut expected);
    let commit_before = h.acknowledged_index(1);
    h.wait_applied(follower, commit_before, SOON);

    h.cluster.kill(follower).expect("kill the follower");
    // The two others are a quorum: writes go on without it.
    run(&h, 300, &mut expected);
    let commit = h.acknowledged_index(1);
    assert!(
        commit >= commit_before + 300,
        "commit {commit} after 300 more writes (was {commit_before})"
    );

    let restarted_at = Instant::now();
    h.cluster
        .restart(follower)
        .expect("restart from the data directory");
    h.cluster
        .wait_ready(follower, SOON)
        .expect("restarted node ready");
    let s = h.wait_applied(follower, commit, SOON);
    println!(
        "node {follower} restarted and applied index {} (leader's commit {commit}, {} entries written while \
         it was down) {:?} after the restart",
        s.applied_index,
        commit - commit_before,
        restarted_at.elapsed()
    );
    assert_eq!(
        s.leader_id(),
        Some(leader),
        "the restarted node follows the leader"
    );
    assert!(!s.is_leader());
    let seen = h.stale_balances(follower, &accounts);
    assert_eq!(
        seen, expected,
        "the restarted node's own state shows the latest balances"
    );
    assert_eq!(h.balances(&accounts), expected);
    h.block_on(client.close());
}

#[test]
fn sigstop_of_the_leader_under_load_is_survived_and_it_steps_down_after_sigcont() {
    let _serial = serial();
    let mut h = Harness::start(3);
    let old = h.wait_leader();
    let accounts: Vec<AccountId> = (1..=6).collect();
    let initial = h.open_accounts(&accounts, 1_000_000);
    let old_term = h.status(old).expect("status").term;
    let load = start_load(&h, &accounts, 0x5eed_0008);

    let paused_at = Instant::now();
    h.cluster.pause(old).expect("SIGSTOP the leader");
    let new = h
        .cluster
        .wait_leader_other_than(old, SOON)
        .expect("a new leader while the old one is frozen");
    let elected_after = paused_at.elapsed();
    wait_writes_after(&load, paused_at, "writes to resume while the leader is frozen");

    let resumed_at = Instant::now();
    h.cluster.resume(old).expect("SIGCONT");
    // The thawed node believes it leads until it hears the new term; it must step
    // down and follow.
    let s = wait_until("the thawed leader to step down and follow", SOON, || {
        let s = h.status(old)?;
        if !s.is_leader() && s.leader_id().is_some_and(|l| l != old) {
            Ok(s)
        } else {
            Err(format!("{} term {} leader {:?}", s.role, s.term, s.leader_id()))
        }
    });
    let stepped_down_after = resumed_at.elapsed();
    assert!(s.term > old_term, "it adopted the new term");
    let history = load.stop(h.rt(), STOP_TIMEOUT);
    let first = history
        .first_applied_started_after(paused_at)
        .expect("an operation acknowledged after the pause");
    let write_gap = first.finished.saturating_duration_since(paused_at);
    println!(
        "SIGSTOP of leader {old}: node {new} leads {elected_after:?} after the pause, writes resumed after \
         {write_gap:?}; after SIGCONT the old leader stepped down within {stepped_down_after:?}"
    );
    assert!(elected_after < FAILOVER_BOUND, "election took {elected_after:?}");
    assert!(write_gap < FAILOVER_BOUND, "writes resumed after {write_gap:?}");
    assert!(
        stepped_down_after < FAILOVER_BOUND,
        "step-down took {stepped_down_after:?} (election timeout at most {MAX_ELECTION_TIMEOUT:?})"
    );

    let observed = check_history(&h, &history, &initial);
    h.wait_leader();
    h.assert_nodes_converged(&h.cluster.node_ids(), &observed);
}
