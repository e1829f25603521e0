//! Replacing a failed node while the bank workload runs, with the operator commands of
//! docs/operations.md ("Replace a failed node"): a follower is killed; `gateway
//! init-node` prepares node 4; it starts empty (join mode); `gateway admin add-learner`
//! adds it, it catches up from the leader's log, `gateway admin remove` drops the dead
//! node and `gateway admin promote` makes node 4 a voter. Then leadership moves to
//! node 4, so clients that only know the original nodes reach it through the redirects
//! (its client address travels in the configuration). Nothing acknowledged is lost and
//! the three members converge.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bank_app::AccountId;
use gateway::admin_client::AdminTargets;
use integration_tests::harness::{serial, Harness, SOON, STARTUP};
use integration_tests::wait::wait_until;

const WORKERS: usize = 4;
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const NEW: u64 = 4;

/// Runs `gateway ARGS`, expecting success; returns its standard output.
fn gateway(binary: &Path, args: &[&str]) -> String {
    let out = Command::new(binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run gateway {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "gateway {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("$ gateway {}\n{stdout}", args.join(" "));
    stdout
}

#[test]
fn a_killed_node_is_replaced_by_a_fresh_node_under_load_and_nothing_is_lost() {
    let _serial = serial();
    let mut h = Harness::start(3);
    let leader = h.wait_leader();
    let failed = h.a_follower(leader);
    let survivors: Vec<u64> = (1..=3).filter(|&id| id != failed).collect();
    let accounts: Vec<AccountId> = (1..=6).collect();
    let initial = h.open_accounts(&accounts, 500);
    let load = h.start_load(&accounts, WORKERS, None, 0x5eed_0404);
    let bin = h.cluster.binary().to_path_buf();
    let dir = h.cluster.dir().to_path_buf();
    let dir_s = dir.display().to_string();

    // The node fails; the other two carry on.
    let failed_at = Instant::now();
    h.cluster.kill(failed).expect("SIGKILL a follower");
    load.wait_applied(50, Some(failed_at), SOON);

    // 1. Prepare the replacement and start it: it has no data and no configuration.
    gateway(&bin, &["init-node", "--dir", &dir_s, "--id", "4"]);
    h.cluster.reload_summary().expect("cluster.toml lists node 4");
    h.cluster.start_node(NEW).expect("start node 4");
    h.cluster
        .wait_ready(NEW, STARTUP)
        .expect("node 4 answers /health");
    let s = h.status(NEW).expect("node 4's status");
    assert!(
        s.voters.is_empty() && s.learners.is_empty(),
        "a joining node starts without a configuration: {s:?}"
    );

    // 2. Add it as a learner (its addresses come from cluster.toml).
    let out = gateway(&bin, &["admin", "--cluster", &dir_s, "add-learner", "--id", "4"]);
    assert!(out.contains("node 4 is a learner"), "{out}");

    // 3. Wait until it has caught up from the leader's log.
    let mut targets = AdminTargets::new(&[], Some(&dir), SOON).expect("admin targets");
    wait_until("node 4 to catch up", SOON, || {
        let m = targets.members().map_err(|e| e.to_string())?;
        match m.member(NEW) {
            Some(p) if m.is_leader && p.role == "learner" && p.lag.is_some_and(|lag| lag <= 50) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let out = gateway(&bin, &["admin", "--cluster", &dir_s, "members"]);
    assert!(out.contains("learner"), "{out}");

    // 4. Remove the dead node, 5. promote the new one.
    let failed_s = failed.to_string();
    let out = gateway(&bin, &["admin", "--cluster", &dir_s, "remove", "--id", &failed_s]);
    assert!(out.contains("not a member any more"), "{out}");
    let out = gateway(&bin, &["admin", "--cluster", &dir_s, "promote", "--id", "4"]);
    assert!(out.contains("node 4 is a voter"), "{out}");
    let m = targets.members().expect("members");
    let mut voters: Vec<u64> = m
        .members
        .iter()
        .filter(|p| p.role == "voter")
        .map(|p| p.id)
        .collect();
    voters.sort_unstable();
    let mut expected_voters = survivors.clone();
    expected_voters.push(NEW);
    assert_eq!(voters, expected_voters, "{m:?}");
    assert!(!m.pending);

    // The new node leads: the workload's clients know only nodes 1-3 and reach it
    // through the followers' redirects.
    let out = gateway(
        &bin,
        &["admin", "--cluster", &dir_s, "transfer-leader", "--to", "4"],
    );
    assert!(out.contains("node 4 leads"), "{out}");
    let moved_at = Instant::now();
    load.wait_applied(100, Some(moved_at), SOON);
    let follower_view = h.status(survivors[0]).expect("status");
    let new_client = h.client_addr(NEW).to_string();
    assert_eq!(
        follower_view.leader.as_ref().and_then(|l| l.client_addr.clone()),
        Some(new_client),
        "followers redirect clients to node 4's client address"
    );

    let history = load.stop(h.rt(), STOP_TIMEOUT);
    let observed = h.assert_history_matches(&history, &initial);
    let mut members = survivors.clone();
    members.push(NEW);
    h.assert_nodes_converged(&members, &observed);
    for &id in &members {
        let s = h.status(id).expect("status");
        assert_eq!(s.voters, expected_voters, "node {id}'s configuration");
        assert_eq!(s.leader_id(), Some(NEW), "node {id} follows node 4");
    }
}
