//! Chaos over real QUIC on loopback with real redb files: the Raft channel of a node is
//! cut (all of it, one direction, flapping) or the node is killed, under a stream of
//! proposals. Afterwards every acknowledged proposal is applied exactly once, at the
//! index it was acknowledged with, on every node.

mod cluster;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cluster::{wait_for, Cluster};
use raft::core::Index;
use raft::sidecar::SidecarError;

const T: Duration = Duration::from_secs(15);

/// A client stream of proposals that follows the leader, recording what was acked.
struct Workload {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(Index, Bytes)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Workload {
    fn start(cluster: &Arc<tokio::sync::RwLock<Cluster>>, tag: &'static str) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<(Index, Bytes)>>> = Arc::default();
        let (s, a, c) = (stop.clone(), acked.clone(), cluster.clone());
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let data = Bytes::from(format!("{tag}-{i}"));
                let r = c
                    .read()
                    .await
                    .propose_anywhere(data.clone(), Duration::from_millis(500))
                    .await;
                if let Ok(acked) = r {
                    a.lock().unwrap().push(acked);
                }
            }
        });
        Workload { stop, acked, task }
    }

    async fn finish(self) -> Vec<(Index, Bytes)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let v = self.acked.lock().unwrap().clone();
        v
    }
}

async fn settle_and_check(cluster: &Arc<tokio::sync::RwLock<Cluster>>, acked: Vec<(Index, Bytes)>) {
    let c = cluster.read().await;
    c.faults.heal_all();
    let (last, _) = c
        .propose_anywhere(Bytes::from_static(b"final"), T)
        .await
        .expect("cluster recovers");
    c.wait_applied(last, T).await;
    assert!(
        acked.len() > 10,
        "the workload made too little progress: {}",
        acked.len()
    );
    c.check_applied(&acked);
}

async fn acked_count(w: &Workload) -> usize {
    w.acked.lock().unwrap().len()
}

async fn wait_progress(w: &Workload, more: usize) {
    let start = acked_count(w).await;
    let deadline = tokio::time::Instant::now() + T;
    while acked_count(w).await < start + more {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress under the fault"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_the_leaders_raft_channel_moves_leadership_and_loses_nothing() {
    let cluster = Arc::new(tokio::sync::RwLock::new(Cluster::quic(3).await));
    let old = cluster.read().await.wait_leader(T).await;
    let w = Workload::start(&cluster, "cut-leader");
    wait_progress(&w, 20).await;
    cluster.read().await.faults.isolate(old);
    {
        let c = cluster.read().await;
        // The old leader steps down (check-quorum) and refuses quickly.
        wait_for("old leader to step down", T, || !c.handle(old).is_leader()).await;
        let started = std::time::Instant::now();
        let err = c
            .handle(old)
            .propose(Bytes::from_static(b"on-old"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, SidecarError::NotLeader { .. } | SidecarError::LeadershipLost),
            "got {err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        c.wait_leader_other_than(old, T).await;
    }
    wait_progress(&w, 20).await;
    cluster.read().await.faults.heal_all();
    let acked = w.finish().await;
    settle_and_check(&cluster, acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_a_followers_raft_channel_keeps_the_cluster_committing() {
    let cluster = Arc::new(tokio::sync::RwLock::new(Cluster::quic(3).await));
    let leader = cluster.read().await.wait_leader(T).await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let w = Workload::start(&cluster, "cut-follower");
    wait_progress(&w, 20).await;
    cluster.read().await.faults.isolate(follower);
    wait_progress(&w, 50).await;
    assert_eq!(
        cluster.read().await.wait_leader_other_than(follower, T).await,
        leader,
        "leader kept"
    );
    cluster.read().await.faults.heal_all();
    let acked = w.finish().await;
    settle_and_check(&cluster, acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_can_send_but_not_receive_is_replaced() {
    let cluster = Arc::new(tokio::sync::RwLock::new(Cluster::quic(3).await));
    let old = cluster.read().await.wait_leader(T).await;
    let w = Workload::start(&cluster, "one-way");
    wait_progress(&w, 20).await;
    cluster.read().await.faults.block_recv(old);
    {
        let c = cluster.read().await;
        wait_for("deaf leader to step down", T, || !c.handle(old).is_leader()).await;
        c.wait_leader_other_than(old, T).await;
    }
    wait_progress(&w, 20).await;
    cluster.read().await.faults.heal_all();
    let acked = w.finish().await;
    settle_and_check(&cluster, acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_link_loses_nothing() {
    let cluster = Arc::new(tokio::sync::RwLock::new(Cluster::quic(3).await));
    let leader = cluster.read().await.wait_leader(T).await;
    let other = (1..=3).find(|&i| i != leader).unwrap();
    let w = Workload::start(&cluster, "flap");
    wait_progress(&w, 10).await;
    for round in 0..20 {
        let c = cluster.read().await;
        if round % 2 == 0 {
            c.faults.block_link(leader, other);
        } else {
            c.faults.heal_all();
        }
        drop(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.read().await.faults.heal_all();
    wait_progress(&w, 10).await;
    let acked = w.finish().await;
    settle_and_check(&cluster, acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_restarts_from_redb_and_rejoins_with_nothing_lost() {
    let cluster = Arc::new(tokio::sync::RwLock::new(Cluster::quic(3).await));
    let old = cluster.read().await.wait_leader(T).await;
    let w = Workload::start(&cluster, "kill");
    wait_progress(&w, 30).await;
    cluster.write().await.kill(old);
    cluster.read().await.wait_leader_other_than(old, T).await;
    wait_progress(&w, 30).await;
    cluster.write().await.restart(old).await;
    wait_progress(&w, 10).await;
    let acked = w.finish().await;
    settle_and_check(&cluster, acked).await;
}
