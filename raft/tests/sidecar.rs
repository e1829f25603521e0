//! The sidecar's API over the in-memory network: propose-and-await, redirects,
//! linearizable reads, leadership loss, transfer, restart from the store.

mod cluster;

use std::time::Duration;

use bytes::Bytes;
use cluster::{wait_for, Cluster};
use raft::sidecar::SidecarError;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_on_the_leader_are_applied_on_every_node_in_order() {
    let cluster = Cluster::memory(3).await;
    let leader = cluster.wait_leader(T).await;
    let mut acked = Vec::new();
    for i in 0..200u32 {
        let data = Bytes::from(format!("cmd-{i}"));
        let a = cluster
            .handle(leader)
            .propose(data.clone())
            .await
            .expect("leader applies");
        assert_eq!(
            a.response.as_ref(),
            &a.index.to_be_bytes(),
            "response comes from the state machine"
        );
        acked.push((a.index, data));
    }
    assert!(acked.windows(2).all(|w| w[0].0 < w[1].0), "indexes grow");
    cluster.wait_applied(acked.last().unwrap().0, T).await;
    cluster.check_applied(&acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_are_group_committed() {
    let cluster = Cluster::memory(3).await;
    let leader = cluster.wait_leader(T).await;
    let h = cluster.handle(leader).clone();
    let tasks: Vec<_> = (0..500u32)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move {
                let data = Bytes::from(format!("c-{i}"));
                h.propose(data.clone()).await.map(|a| (a.index, data))
            })
        })
        .collect();
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap().expect("applied"));
    }
    cluster
        .wait_applied(acked.iter().map(|a| a.0).max().unwrap(), T)
        .await;
    cluster.check_applied(&acked);
    let store = cluster.nodes[&leader].mem_store.as_ref().unwrap();
    assert!(
        store.write_count() < 500,
        "500 proposals took {} writes: no batching",
        store.write_count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_at_once_and_names_the_leader() {
    let cluster = Cluster::memory(3).await;
    let leader = cluster.wait_leader(T).await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let started = std::time::Instant::now();
    let err = cluster
        .handle(follower)
        .propose(Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SidecarError::NotLeader {
            leader: Some(leader),
            addr: None
        }
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "NotLeader must be immediate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_reads_see_every_acknowledged_write_on_any_node() {
    let cluster = Cluster::memory(3).await;
    let leader = cluster.wait_leader(T).await;
    let a = cluster
        .handle(leader)
        .propose(Bytes::from_static(b"w"))
        .await
        .unwrap();
    for id in 1..=3 {
        let idx = cluster
            .handle(id)
            .linearizable_read()
            .await
            .expect("read confirmed");
        assert!(
            idx >= a.index,
            "node {id} read at {idx} before the write at {}",
            a.index
        );
        assert!(
            cluster.handle(id).applied_index() >= a.index,
            "node {id} serves before applying"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_steps_down_and_its_proposals_fail_fast() {
    let cluster = Cluster::memory(3).await;
    let old = cluster.wait_leader(T).await;
    cluster.faults.isolate(old);
    let started = std::time::Instant::now();
    let err = cluster
        .handle(old)
        .propose(Bytes::from_static(b"lost?"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SidecarError::LeadershipLost | SidecarError::NotLeader { .. }),
        "got {err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the caller must not hang"
    );
    let new = cluster.wait_leader_other_than(old, T).await;
    let a = cluster
        .handle(new)
        .propose(Bytes::from_static(b"after"))
        .await
        .expect("majority commits");
    cluster.faults.heal_all();
    wait_for("old leader to catch up", T, || {
        cluster.handle(old).applied_index() >= a.index
    })
    .await;
    assert!(!cluster.handle(old).is_leader());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_transfer_moves_the_leader() {
    let cluster = Cluster::memory(3).await;
    let old = cluster.wait_leader(T).await;
    cluster
        .handle(old)
        .propose(Bytes::from_static(b"x"))
        .await
        .unwrap();
    let target = (1..=3).find(|&i| i != old).unwrap();
    cluster
        .handle(old)
        .transfer_leader(target)
        .await
        .expect("transfer accepted");
    wait_for("the target to lead", T, || cluster.handle(target).is_leader()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_restarts_from_its_store_and_catches_up() {
    let mut cluster = Cluster::memory(3).await;
    let leader = cluster.wait_leader(T).await;
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    let mut acked = Vec::new();
    for i in 0..50u32 {
        let d = Bytes::from(format!("a{i}"));
        acked.push((cluster.handle(leader).propose(d.clone()).await.unwrap().index, d));
    }
    cluster.kill(victim);
    for i in 0..50u32 {
        let d = Bytes::from(format!("b{i}"));
        acked.push((cluster.handle(leader).propose(d.clone()).await.unwrap().index, d));
    }
    cluster.restart(victim).await;
    cluster.wait_applied(acked.last().unwrap().0, T).await;
    cluster.check_applied(&acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_new_calls_cleanly() {
    let cluster = Cluster::memory(1).await;
    cluster.wait_leader(T).await;
    let h = cluster.handle(1).clone();
    h.propose(Bytes::from_static(b"before")).await.unwrap();
    h.shutdown().await;
    let err = h.propose(Bytes::from_static(b"after")).await.unwrap_err();
    assert!(matches!(err, SidecarError::Stopped(_)), "got {err:?}");
}
