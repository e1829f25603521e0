//! The LocalCluster harness itself: it reports node exits with their log, and it
//! leaves no process behind when dropped, even while unwinding from a panic.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster_options;
use gateway::{ClusterError, LocalCluster};

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn dropping_the_cluster_during_a_panic_kills_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("c");
    let pids = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let mut cluster = LocalCluster::start(&root, cluster_options(2)).unwrap();
        cluster.wait_all_ready(Duration::from_secs(30)).unwrap();
        let mut p = pids.lock().unwrap();
        p.extend(cluster.running().into_iter().filter_map(|id| cluster.pid(id)));
        drop(p);
        panic!("a test failing with a cluster up");
    });
    assert!(result.is_err());
    let pids = pids.into_inner().unwrap();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(!process_exists(pid), "node process {pid} outlived its cluster");
    }
}

#[test]
fn a_node_that_exits_during_startup_is_reported_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::create(dir.path().join("c"), cluster_options(1)).unwrap();
    std::fs::write(dir.path().join("c/node-1/key.pem"), "not a key").unwrap();
    cluster.start_node(1).unwrap();
    match cluster.wait_ready(1, Duration::from_secs(30)) {
        Err(ClusterError::Exited { id, status, tail, .. }) => {
            assert_eq!(id, 1);
            assert!(!status.success());
            assert!(tail.contains("key"), "{tail}");
        }
        other => panic!("expected the node to exit, got {other:?}"),
    }
    assert!(!cluster.is_running(1));
}
