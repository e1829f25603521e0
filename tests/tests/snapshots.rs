//! Snapshots and log compaction across real gateway processes.
//!
//! - A follower killed after many operations restarts from its newest snapshot file
//!   and replays only the log after it, then serves again.
//! - After the log has been compacted, a failed node is replaced by a fresh one under
//!   load: the leader no longer has the entries the new node needs, so the new node is
//!   brought up by a snapshot sent over the Raft channel, then by the log.
//!
//! Knobs: `SNAPSHOT_OPS` (default 100,000) operations before the restart;
//! `SNAPSHOT_ACCOUNTS` (default 0) extra accounts opened before the replacement, so
//! that the snapshot the new node receives is large (the figure in
//! docs/performance.md uses 1,000,000).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bank_app::protocol::Consistency;
use bank_app::AccountId;
use gateway::admin_client::AdminTargets;
use gateway::config::RawSnapshot;
use gateway::status::StatusReport;
use integration_tests::harness::{serial, Harness, SOON, STARTUP};
use integration_tests::wait::wait_until;
use raft::core::NodeId;

const STOP_TIMEOUT: Duration = Duration::from_secs(60);

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")),
        Err(_) => default,
    }
}

fn policy(every: u64, keep: u64) -> RawSnapshot {
    RawSnapshot {
        every_entries: Some(every),
        every_bytes: Some(0),
        keep_entries: Some(keep),
        files_kept: Some(2),
    }
}

/// Waits until every node in `ids` holds a snapshot and has compacted its log.
fn wait_compacted(h: &Harness, ids: &[NodeId]) -> BTreeMap<NodeId, StatusReport> {
    wait_until("every node to take a snapshot and compact its log", SOON, || {
        let mut out = BTreeMap::new();
        for &id in ids {
            let s = h.status(id)?;
            if s.snapshot.index == 0 || s.first_index <= 1 {
                return Err(format!(
                    "node {id}: snapshot {:?}, first index {}",
                    s.snapshot, s.first_index
                ));
            }
            out.insert(id, s);
        }
        Ok(out)
    })
}

#[test]
fn a_node_restarted_after_many_operations_loads_its_snapshot_and_replays_only_the_tail() {
    const EVERY: u64 = 2_000;
    const KEEP: u64 = 500;
    let ops = env_u64("SNAPSHOT_OPS", 100_000);
    let _serial = serial();
    let mut h = Harness::start_with_snapshots(3, policy(EVERY, KEEP));
    let leader = h.wait_leader();
    let follower = h.a_follower(leader);
    let accounts: Vec<AccountId> = (1..=8).collect();
    let initial = h.open_accounts(&accounts, 1_000_000);
    let load = h.start_load(&accounts, 16, None, 0x5a4e_0001);

    // Many operations: every node snapshots every EVERY entries and compacts.
    let started = Instant::now();
    load.wait_applied(
        usize::try_from(ops).expect("SNAPSHOT_OPS fits"),
        None,
        Duration::from_secs(120 + ops / 200),
    );
    println!("{ops} operations in {:?}", started.elapsed());
    let views = wait_compacted(&h, &h.cluster.node_ids());
    for (id, s) in &views {
        println!(
            "node {id}: applied {} first index {} snapshot {:?}",
            s.applied_index, s.first_index, s.snapshot
        );
        assert!(s.snapshot.created >= 1, "node {id} took its own snapshots");
    }

    // Kill the follower outright, let the others go on, restart it.
    let before = h.status(follower).expect("status").applied_index;
    let killed_at = Instant::now();
    h.cluster.kill(follower).expect("SIGKILL the follower");
    load.wait_applied(200, Some(killed_at), SOON);
    let target = h.status(leader).expect("leader status").commit_index;
    let restarted = Instant::now();
    h.cluster.start_node(follower).expect("restart the follower");
    h.cluster
        .wait_ready(follower, STARTUP)
        .expect("the follower answers /health");
    let ready = restarted.elapsed();
    let s = h.wait_applied(follower, target, SOON);
    let caught_up = restarted.elapsed();
    let restored = s.snapshot.restored;
    println!(
        "restart: ready in {ready:?}, applied the leader's commit index {target} in {caught_up:?}; \
         restored from the snapshot at {restored}, replayed {} entries of its own log \
         (applied {before} when killed)",
        before.saturating_sub(restored)
    );
    assert!(
        restored > 0,
        "the restarted node must start from a snapshot file: {:?}",
        s.snapshot
    );
    // A snapshot is taken every EVERY entries; one may have been in progress when
    // the node died, so the newest complete one is at most 2 * EVERY behind.
    assert!(
        before.saturating_sub(restored) <= 2 * EVERY,
        "replayed {} entries after the snapshot at {restored} (applied {before}); \
         the snapshot should cover all but the tail",
        before.saturating_sub(restored)
    );
    assert!(
        s.first_index > 1,
        "the restarted node's log is compacted: first index {}",
        s.first_index
    );
    // The restarted node serves reads from its own state again.
    let read = h.client(vec![h.client_addr(follower)]);
    let reading = h
        .block_on(read.read_balance(accounts[0], Consistency::Stale))
        .expect("the restarted node serves a local read");
    assert!(
        reading.applied_index >= target,
        "the local read reflects the caught-up state: {reading:?}"
    );
    h.block_on(read.close());

    let history = load.stop(h.rt(), STOP_TIMEOUT);
    let observed = h.assert_history_matches(&history, &initial);
    h.assert_nodes_converged(&h.cluster.node_ids(), &observed);
}

#[test]
fn a_failed_node_is_replaced_after_compaction_by_a_snapshot_under_load_and_nothing_is_lost() {
    const KEEP: u64 = 100;
    const NEW: NodeId = 4;
    let extra = env_u64("SNAPSHOT_ACCOUNTS", 0);
    // With a large bank, snapshot less often: each one encodes every account.
    let every: u64 = if extra > 0 { 50_000 } else { 500 };
    let catch_up_deadline = if extra > 0 { Duration::from_secs(600) } else { SOON };
    let _serial = serial();
    let mut h = Harness::start_with_snapshots(3, policy(every, KEEP));
    let leader = h.wait_leader();
    let failed = h.a_follower(leader);
    let survivors: Vec<NodeId> = (1..=3).filter(|&id| id != failed).collect();
    let accounts: Vec<AccountId> = (1..=6).collect();
    let initial = h.open_accounts(&accounts, 1_000_000);
    if extra > 0 {
        open_many(&h, 1_000_000, extra);
    }
    let load = h.start_load(&accounts, 4, None, 0x5a4e_0002);
    load.wait_applied(3_000, None, Duration::from_secs(120));
    wait_compacted(&h, &h.cluster.node_ids());

    // The node fails; the others go on, and compact past anything it could need.
    let failed_at = Instant::now();
    h.cluster.kill(failed).expect("SIGKILL a follower");
    load.wait_applied(1_000, Some(failed_at), SOON);
    let leader_view = h.status(leader).expect("leader status");
    assert!(
        leader_view.first_index > 1,
        "the leader has compacted its log: {leader_view:?}"
    );

    // A fresh node joins as a learner: the entries it needs are gone from the
    // leader's log, so it must be sent a snapshot.
    h.cluster.prepare_join_node(NEW).expect("prepare node 4");
    h.cluster.start_node(NEW).expect("start node 4");
    h.cluster
        .wait_ready(NEW, STARTUP)
        .expect("node 4 answers /health");
    let summary = h.cluster.summary().node(NEW).cloned().expect("node 4 listed");
    let mut targets = AdminTargets::new(&[], Some(h.cluster.dir()), SOON).expect("admin targets");
    let added = Instant::now();
    targets
        .post_to_leader(
            "/admin/add-learner",
            &serde_json::json!({
                "id": NEW,
                "raft_addr": summary.raft_addr.to_string(),
                "client_addr": summary.client_addr.to_string(),
            }),
        )
        .expect("add node 4 as a learner");
    let target = h.status(leader).expect("leader status").commit_index;
    let s = h.wait_applied(NEW, target, catch_up_deadline);
    let caught_up = added.elapsed();
    println!(
        "node 4 applied the leader's commit index {target} {caught_up:?} after it was added; \
         snapshot {:?}, first index {}",
        s.snapshot, s.first_index
    );
    assert!(
        s.snapshot.installed >= 1,
        "node 4 was brought up by a snapshot: {:?}",
        s.snapshot
    );
    let leader_view = h.status(leader).expect("leader status");
    assert!(
        leader_view.snapshot.sent >= 1,
        "the leader sent a snapshot: {:?}",
        leader_view.snapshot
    );

    // Remove the dead node, promote the new one; the workload never stops.
    targets
        .post_to_leader("/admin/remove", &serde_json::json!({ "id": failed }))
        .expect("remove the failed node");
    targets
        .post_to_leader("/admin/promote", &serde_json::json!({ "id": NEW }))
        .expect("promote node 4");
    let changed_at = Instant::now();
    load.wait_applied(200, Some(changed_at), SOON);

    let history = load.stop(h.rt(), STOP_TIMEOUT);
    let observed = h.assert_history_matches(&history, &initial);
    let mut members = survivors.clone();
    members.push(NEW);
    h.assert_nodes_converged(&members, &observed);
    for &id in &members {
        let s = h.status(id).expect("status");
        assert_eq!(s.voters, members_sorted(&members), "node {id}'s configuration");
    }
}

/// Opens `count` accounts from id `first` on, with 64 concurrent clients.
fn open_many(h: &Harness, first: AccountId, count: u64) {
    const CLIENTS: u64 = 64;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let client = h.client(h.all_client_addrs());
        tasks.spawn_on(
            async move {
                let mut id = first + c;
                while id < first + count {
                    client
                        .open_account(id, 100)
                        .await
                        .unwrap_or_else(|e| panic!("open account {id}: {e}"));
                    id += CLIENTS;
                }
                client.close().await;
            },
            h.rt().handle(),
        );
    }
    h.block_on(async {
        while let Some(r) = tasks.join_next().await {
            r.expect("an opening task");
        }
    });
    println!("opened {count} accounts in {:?}", started.elapsed());
}

fn members_sorted(ids: &[NodeId]) -> Vec<NodeId> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v
}
