//! Snapshots through the sidecar: taking them by policy and on request, compacting the
//! log behind them, sending them to followers that fell behind the compacted log,
//! installing them, restarting from them, and surviving damaged files and broken
//! transfers. Every wait has a deadline.

mod cluster;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster::{wait_for, Cluster, Options, SmEvent};
use raft::core::{Index, NodeId};
use raft::sidecar::{SidecarConfig, StartError};
use raft::storage::MemStore;

const T: Duration = Duration::from_secs(20);

/// Snapshots every 100 applied entries, keeping 10 behind each, in small chunks.
fn frequent(cfg: &mut SidecarConfig) {
    cfg.snapshot_entries = 100;
    cfg.snapshot_keep_entries = 10;
    cfg.snapshot_chunk_bytes = 1024;
}

/// No automatic snapshots; tests take them with `snapshot_now`.
fn manual(cfg: &mut SidecarConfig) {
    cfg.snapshot_entries = 0;
    cfg.snapshot_bytes = 0;
    cfg.snapshot_keep_entries = 5;
}

/// Manual snapshots, and the log purged right up to each.
fn manual_no_tail(cfg: &mut SidecarConfig) {
    manual(cfg);
    cfg.snapshot_keep_entries = 0;
}

/// Manual snapshots, with a tail long enough to reach back to the previous one.
fn manual_long_tail(cfg: &mut SidecarConfig) {
    manual(cfg);
    cfg.snapshot_keep_entries = 1_000;
}

fn options(configure: fn(&mut SidecarConfig)) -> Options {
    Options {
        configure,
        ..Default::default()
    }
}

async fn propose_n(cluster: &Cluster, leader: NodeId, tag: &str, n: usize) -> Vec<(Index, Bytes)> {
    let mut acked = Vec::with_capacity(n);
    for i in 0..n {
        let d = Bytes::from(format!("{tag}-{i}"));
        let a = cluster
            .handle(leader)
            .propose(d.clone())
            .await
            .expect("the leader commits");
        acked.push((a.index, d));
    }
    acked
}

fn events(cluster: &Cluster, id: NodeId) -> Vec<SmEvent> {
    cluster.nodes[&id].events.lock().unwrap().clone()
}

fn applied_log(cluster: &Cluster, id: NodeId) -> Vec<(Index, Bytes)> {
    cluster.nodes[&id].applied.lock().unwrap().clone()
}

/// Every live node holds exactly the same applied sequence up to `index`.
fn assert_identical_up_to(cluster: &Cluster, index: Index) {
    let mut first: Option<(NodeId, Vec<(Index, Bytes)>)> = None;
    for (&id, node) in &cluster.nodes {
        if node.runtime.is_none() {
            continue;
        }
        let log: Vec<(Index, Bytes)> = applied_log(cluster, id)
            .into_iter()
            .filter(|(i, _)| *i <= index)
            .collect();
        match &first {
            None => first = Some((id, log)),
            Some((other, expected)) => {
                assert!(
                    &log == expected,
                    "node {id} and node {other} differ up to index {index}"
                )
            }
        }
    }
}

/// The leader counts a snapshot sent and the follower one installed (the counters
/// are published a moment after the follower's applied index moves).
async fn wait_snapshot_counters(cluster: &Cluster, leader: NodeId, follower: NodeId) {
    wait_for("the leader to count a snapshot sent", T, || {
        cluster.handle(leader).status().snapshot.sent >= 1
    })
    .await;
    wait_for("the follower to count a snapshot installed", T, || {
        cluster.handle(follower).status().snapshot.installed >= 1
    })
    .await;
}

/// Damages a file in place: one byte in its middle is inverted.
fn flip_middle_byte(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(path, &bytes).unwrap();
}

fn follower_of(leader: NodeId) -> NodeId {
    (1..=3).find(|&i| i != leader).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_while_the_leader_compacted_gets_a_snapshot_and_converges() {
    let mut cluster = Cluster::memory_with(3, options(frequent)).await;
    let leader = cluster.wait_leader(T).await;
    let lagging = follower_of(leader);
    let mut acked = propose_n(&cluster, leader, "before", 20).await;
    cluster.wait_applied(acked.last().unwrap().0, T).await;
    cluster.kill(lagging);
    acked.extend(propose_n(&cluster, leader, "while-down", 400).await);
    let last = acked.last().unwrap().0;
    wait_for("the leader to compact past the lagging node", T, || {
        cluster.handle(leader).status().core.first_index > 40
    })
    .await;
    let lagging_store = cluster.nodes[&lagging].mem_store.clone().unwrap();
    assert!(
        lagging_store.state().last_index() < cluster.handle(leader).status().core.first_index,
        "the lagging node needs entries the leader no longer has"
    );

    cluster.restart(lagging).await;
    cluster.wait_applied(last, T).await;
    wait_snapshot_counters(&cluster, leader, lagging).await;
    assert!(
        events(&cluster, lagging)
            .iter()
            .any(|e| matches!(e, SmEvent::Restore(_))),
        "its state machine was restored from the image"
    );
    assert_identical_up_to(&cluster, last);
    cluster.check_applied(&acked);
    // The installed snapshot also compacted the follower's durable log.
    assert!(lagging_store.state().snapshot.index > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_now_returns_its_index_and_compacts_the_log() {
    let cluster = Cluster::memory_with(3, options(manual_no_tail)).await;
    let leader = cluster.wait_leader(T).await;
    let acked = propose_n(&cluster, leader, "x", 50).await;
    let applied = cluster.handle(leader).applied_index();
    let index = cluster
        .handle(leader)
        .snapshot_now()
        .await
        .expect("snapshot taken");
    assert!(
        index >= acked.last().unwrap().0 && index <= applied + 1,
        "index {index}"
    );
    let st = cluster.handle(leader).status();
    assert_eq!(st.snapshot.index, index);
    assert_eq!(st.snapshot.created, 1);
    assert_eq!(
        st.core.first_index,
        index + 1,
        "no tail kept: the log starts after it"
    );
    let store = cluster.nodes[&leader].mem_store.clone().unwrap();
    assert_eq!(store.state().snapshot.index, index, "the purge is durable");
    let files = cluster.nodes[&leader].snapshots.list().unwrap();
    assert_eq!(files.first().map(|f| f.index), Some(index));

    // Nothing new applied: the same snapshot, at once.
    assert_eq!(cluster.handle(leader).snapshot_now().await.unwrap(), index);
    assert_eq!(cluster.handle(leader).status().snapshot.created, 1);

    // Followers can take their own.
    let f = follower_of(leader);
    cluster.wait_applied(index, T).await;
    let fi = cluster.handle(f).snapshot_now().await.expect("follower snapshot");
    assert!(fi >= index);

    // Only the newest two files are kept.
    for round in 0..3 {
        propose_n(&cluster, leader, &format!("r{round}"), 5).await;
        cluster.handle(leader).snapshot_now().await.unwrap();
    }
    wait_for("old files to be pruned", T, || {
        cluster.nodes[&leader].snapshots.list().unwrap().len() == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_the_snapshot_and_replays_only_the_tail() {
    let mut cluster = Cluster::memory_with(
        3,
        Options {
            configure: manual,
            snapshot_dirs: true,
            ..Default::default()
        },
    )
    .await;
    let leader = cluster.wait_leader(T).await;
    let node = follower_of(leader);
    let mut acked = propose_n(&cluster, leader, "a", 100).await;
    cluster.wait_applied(acked.last().unwrap().0, T).await;
    let snap = cluster.handle(node).snapshot_now().await.expect("snapshot");
    acked.extend(propose_n(&cluster, leader, "b", 30).await);
    let last = acked.last().unwrap().0;
    cluster.wait_applied(last, T).await;

    cluster.kill(node);
    cluster.restart(node).await;
    cluster.wait_applied(last, T).await;
    let ev = events(&cluster, node);
    assert_eq!(
        ev.first(),
        Some(&SmEvent::Restore(snap)),
        "restored first: {:?}",
        &ev[..3.min(ev.len())]
    );
    let applies: Vec<Index> = ev
        .iter()
        .filter_map(|e| match e {
            SmEvent::Apply(i) => Some(*i),
            SmEvent::Restore(_) => None,
        })
        .collect();
    assert!(
        applies.first().is_some_and(|&i| i > snap),
        "replay starts after the snapshot at {snap}, not at {:?}",
        applies.first()
    );
    assert!(
        applies.len() as u64 <= last - snap,
        "only the tail is replayed ({} applies)",
        applies.len()
    );
    assert_identical_up_to(&cluster, last);
    cluster.check_applied(&acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_latest_snapshot_is_skipped_for_the_previous_one() {
    let mut cluster = Cluster::memory_with(
        3,
        Options {
            configure: manual_long_tail,
            snapshot_dirs: true,
            ..Default::default()
        },
    )
    .await;
    let leader = cluster.wait_leader(T).await;
    let node = follower_of(leader);
    let mut acked = propose_n(&cluster, leader, "a", 40).await;
    cluster.wait_applied(acked.last().unwrap().0, T).await;
    let older = cluster.handle(node).snapshot_now().await.unwrap();
    acked.extend(propose_n(&cluster, leader, "b", 40).await);
    cluster.wait_applied(acked.last().unwrap().0, T).await;
    let newer = cluster.handle(node).snapshot_now().await.unwrap();
    assert!(newer > older);
    acked.extend(propose_n(&cluster, leader, "c", 10).await);
    let last = acked.last().unwrap().0;
    cluster.wait_applied(last, T).await;

    cluster.kill(node);
    let dir = cluster.nodes[&node].snapshot_dir.clone().unwrap();
    let files = cluster.nodes[&node].snapshots.list().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].index, newer);
    flip_middle_byte(&dir.join(files[0].name()));

    cluster.restart(node).await;
    cluster.wait_applied(last, T).await;
    assert_eq!(
        events(&cluster, node).first(),
        Some(&SmEvent::Restore(older)),
        "the previous snapshot was used"
    );
    assert_identical_up_to(&cluster, last);
    cluster.check_applied(&acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_the_log_cannot_replace_fails_the_start_naming_the_file() {
    let mut cluster = Cluster::memory_with(
        3,
        Options {
            configure: manual_no_tail,
            snapshot_dirs: true,
            ..Default::default()
        },
    )
    .await;
    let leader = cluster.wait_leader(T).await;
    let node = follower_of(leader);
    let acked = propose_n(&cluster, leader, "a", 30).await;
    cluster.wait_applied(acked.last().unwrap().0, T).await;
    let index = cluster.handle(node).snapshot_now().await.unwrap();
    cluster.kill(node);
    let old = cluster.nodes.remove(&node).unwrap();
    let store: MemStore = old.mem_store.clone().unwrap();
    assert_eq!(
        store.state().snapshot.index,
        index,
        "the log was purged up to the snapshot"
    );
    let dir = old.snapshot_dir.clone().unwrap();
    let files = old.snapshots.list().unwrap();
    assert_eq!(files.len(), 1);
    let path = dir.join(files[0].name());
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 7)
        .unwrap();

    let snapshots = raft::storage::SnapshotStore::open_dir(&dir).unwrap();
    let err = cluster
        .try_start_memory_node(node, store, snapshots)
        .await
        .expect_err("the node must not start from nothing");
    let msg = err.to_string();
    assert!(matches!(err, StartError::NoUsableSnapshot { .. }), "{msg}");
    assert!(msg.contains(files[0].name()), "the error names the file: {msg}");
    assert!(msg.contains("truncated"), "and says what is wrong: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_transfer_is_retried_and_succeeds_after_healing() {
    let mut cluster = Cluster::memory_with(3, options(frequent)).await;
    let leader = cluster.wait_leader(T).await;
    let lagging = follower_of(leader);
    cluster.kill(lagging);
    let acked = propose_n(&cluster, leader, "while-down", 300).await;
    let last = acked.last().unwrap().0;
    wait_for("the leader to compact", T, || {
        cluster.handle(leader).status().core.first_index > 20
    })
    .await;
    // The first transfer breaks after 2 KiB (the image is several KiB).
    cluster.faults.cut_link_during_snapshot(leader, lagging, 2048);
    cluster.restart(lagging).await;
    wait_for("the transfer to fail", T, || {
        cluster.handle(leader).status().snapshot.send_failures >= 1
    })
    .await;
    assert_eq!(cluster.handle(lagging).status().snapshot.installed, 0);
    assert!(cluster.handle(lagging).applied_index() < last);

    cluster.faults.heal_all();
    cluster.wait_applied(last, T).await;
    wait_snapshot_counters(&cluster, leader, lagging).await;
    assert_identical_up_to(&cluster, last);
    cluster.check_applied(&acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_keep_committing_while_a_snapshot_is_written() {
    let cluster = Cluster::memory_with(
        3,
        Options {
            configure: manual,
            encode_delay: Duration::from_millis(1500),
            ..Default::default()
        },
    )
    .await;
    let leader = cluster.wait_leader(T).await;
    propose_n(&cluster, leader, "warm", 10).await;
    let h = cluster.handle(leader).clone();
    let started = Instant::now();
    let snapshot = tokio::spawn(async move { h.snapshot_now().await });
    let mut during = 0u32;
    let mut i = 0u32;
    while !snapshot.is_finished() {
        i += 1;
        cluster
            .handle(leader)
            .propose(Bytes::from(format!("during-{i}")))
            .await
            .expect("commits while the snapshot is written");
        if !snapshot.is_finished() {
            during += 1;
        }
    }
    let took = started.elapsed();
    let index = snapshot.await.unwrap().expect("snapshot taken");
    assert!(
        took >= Duration::from_millis(1500),
        "the image took its time: {took:?}"
    );
    assert!(
        during >= 20,
        "only {during} proposals committed during a {took:?} snapshot"
    );
    assert!(index >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic_a_lagging_follower_gets_a_snapshot_and_restarts_from_it() {
    let mut cluster = Cluster::quic_with(3, options(frequent)).await;
    let leader = cluster.wait_leader(T).await;
    let lagging = follower_of(leader);
    let mut acked = propose_n(&cluster, leader, "a", 10).await;
    cluster.wait_applied(acked.last().unwrap().0, T).await;
    cluster.kill(lagging);
    acked.extend(propose_n(&cluster, leader, "b", 300).await);
    let last = acked.last().unwrap().0;
    wait_for("the leader to compact", T, || {
        cluster.handle(leader).status().core.first_index > 20
    })
    .await;
    cluster.restart(lagging).await;
    cluster.wait_applied(last, T).await;
    wait_snapshot_counters(&cluster, leader, lagging).await;
    assert_identical_up_to(&cluster, last);

    // The installed file is on disk: a restart restores from it.
    cluster.kill(lagging);
    cluster.restart(lagging).await;
    cluster.wait_applied(last, T).await;
    assert!(
        matches!(events(&cluster, lagging).first(), Some(SmEvent::Restore(_))),
        "restarted from its snapshot file"
    );
    assert_identical_up_to(&cluster, last);
    cluster.check_applied(&acked);
}

/// Snapshots every 40 entries with a 5-entry tail, in tiny chunks: almost every
/// restart needs a snapshot.
fn very_frequent(cfg: &mut SidecarConfig) {
    cfg.snapshot_entries = 40;
    cfg.snapshot_keep_entries = 5;
    cfg.snapshot_chunk_bytes = 512;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_crashes_with_frequent_snapshots_lose_nothing() {
    let mut cluster = Cluster::memory_with(
        3,
        Options {
            configure: very_frequent,
            snapshot_dirs: true,
            ..Default::default()
        },
    )
    .await;
    cluster.wait_leader(T).await;
    let mut acked = Vec::new();
    for round in 0..6u64 {
        // Every node goes down twice, the leader included when it is the victim.
        let victim = round % 3 + 1;
        cluster.kill(victim);
        for i in 0..60 {
            let r = cluster
                .propose_anywhere(Bytes::from(format!("r{round}-{i}")), T)
                .await
                .expect("a majority commits");
            acked.push(r);
        }
        cluster.restart(victim).await;
        for i in 0..10 {
            let r = cluster
                .propose_anywhere(Bytes::from(format!("r{round}-after-{i}")), T)
                .await
                .expect("a majority commits");
            acked.push(r);
        }
    }
    let (last, _) = cluster
        .propose_anywhere(Bytes::from_static(b"final"), T)
        .await
        .expect("the cluster recovers");
    cluster.wait_applied(last, T).await;
    assert_identical_up_to(&cluster, last);
    cluster.check_applied(&acked);
    let installed: u64 = (1..=3)
        .map(|id| cluster.handle(id).status().snapshot.installed)
        .sum();
    let restored = (1..=3).any(|id| matches!(events(&cluster, id).first(), Some(SmEvent::Restore(_))));
    assert!(installed >= 1 || restored, "snapshots were exercised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_snapshot_file_is_damaged_takes_a_fresh_one_for_the_follower() {
    let mut cluster = Cluster::memory_with(
        3,
        Options {
            configure: manual_no_tail,
            snapshot_dirs: true,
            ..Default::default()
        },
    )
    .await;
    let leader = cluster.wait_leader(T).await;
    let lagging = follower_of(leader);
    let mut acked = propose_n(&cluster, leader, "before", 10).await;
    cluster.wait_applied(acked.last().unwrap().0, T).await;
    cluster.kill(lagging);
    acked.extend(propose_n(&cluster, leader, "while-down", 50).await);
    let damaged = cluster.handle(leader).snapshot_now().await.unwrap();
    let last = acked.last().unwrap().0;
    assert!(
        cluster.handle(leader).status().core.first_index > acked[9].0,
        "the leader compacted past what the lagging node has"
    );

    // Damage the leader's only snapshot file in place.
    let dir = cluster.nodes[&leader].snapshot_dir.clone().unwrap();
    let files = cluster.nodes[&leader].snapshots.list().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].index, damaged);
    flip_middle_byte(&dir.join(files[0].name()));
    let created_before = cluster.handle(leader).status().snapshot.created;

    // The follower comes back needing a snapshot: the first transfer finds the file
    // damaged, the leader deletes it and takes a fresh one, which is sent.
    cluster.restart(lagging).await;
    cluster.wait_applied(last, T).await;
    wait_snapshot_counters(&cluster, leader, lagging).await;
    let s = cluster.handle(leader).status().snapshot;
    assert!(s.send_failures >= 1, "the damaged transfer failed: {s:?}");
    assert!(s.created > created_before, "a fresh snapshot was taken: {s:?}");
    let files = cluster.nodes[&leader].snapshots.list().unwrap();
    for f in &files {
        let loaded = cluster.nodes[&leader].snapshots.load(f);
        assert!(loaded.is_ok(), "only good files are left: {f:?}: {loaded:?}");
    }
    assert!(
        events(&cluster, lagging)
            .iter()
            .any(|e| matches!(e, SmEvent::Restore(_))),
        "the follower was restored from the fresh image"
    );
    assert_identical_up_to(&cluster, last);
    cluster.check_applied(&acked);
}
