//! One real `gateway run` process: it serves its admin endpoints, reports itself as
//! leader, exports raft metrics, exits 0 on SIGTERM, and refuses a corrupt log.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{cluster_options, gateway_bin, wait_for, ChildGuard};
use gateway::status::{fetch_metrics, fetch_status};
use gateway::LocalCluster;

const STARTUP: Duration = Duration::from_secs(30);

#[test]
fn a_single_node_serves_health_status_and_metrics_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(dir.path().join("c"), cluster_options(1)).unwrap();
    cluster.wait_ready(1, STARTUP).unwrap();
    let admin = cluster.admin_addr(1).unwrap();

    // A one-node cluster elects itself and commits its leader's no-op.
    let status = wait_for("node 1 to lead and commit", STARTUP, || {
        let s = fetch_status(admin, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        if s.is_leader() && s.commit_index >= 1 && s.applied_index >= 1 {
            Ok(s)
        } else {
            Err(format!("role {} commit {}", s.role, s.commit_index))
        }
    });
    assert_eq!(status.node_id, 1);
    assert_eq!(status.voters, vec![1]);
    let leader = status.leader.as_ref().unwrap();
    assert!(leader.is_self);
    assert_eq!(
        leader.client_addr.as_deref(),
        Some(cluster.client_addr(1).unwrap().to_string().as_str())
    );
    assert_eq!(status.addresses.admin, admin.to_string());

    let metrics = fetch_metrics(admin, Duration::from_secs(2)).unwrap();
    for name in [
        "raft_term",
        "raft_is_leader 1",
        "raft_commit_index",
        "raft_applied_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }

    // The CLI reads the same report.
    let out = Command::new(gateway_bin())
        .args(["status", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("role        leader"), "{text}");
    let out = Command::new(gateway_bin())
        .args(["status", "--json", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["node_id"], 1);

    let exit = cluster.terminate(1, Duration::from_secs(15)).unwrap();
    assert!(exit.success(), "SIGTERM must exit 0, got {exit}");
    let log = std::fs::read_to_string(cluster.log_path(1)).unwrap();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("gateway node stopped"), "{log}");
}

#[test]
fn a_corrupt_raft_log_is_a_startup_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::create(dir.path().join("c"), cluster_options(1)).unwrap();
    let config = cluster.config_path(1).unwrap();
    let data = dir.path().join("c/node-1/data");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join("raft.redb");
    std::fs::write(&file, vec![0xA5u8; 8192]).unwrap();

    let child = ChildGuard::spawn(
        Command::new(gateway_bin())
            .arg("run")
            .arg("--config")
            .arg(&config),
    );
    let (status, _, stderr) = child.wait_with_deadline(Duration::from_secs(30));
    assert!(!status.success(), "a corrupt log must not start: {stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    // Nothing was silently replaced.
    assert_eq!(std::fs::read(&file).unwrap(), vec![0xA5u8; 8192]);
}

#[test]
fn a_taken_admin_port_is_a_startup_error_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::create(dir.path().join("c"), cluster_options(1)).unwrap();
    let admin = cluster.admin_addr(1).unwrap();
    let _hold = std::net::TcpListener::bind(admin).unwrap();
    let child = ChildGuard::spawn(
        Command::new(gateway_bin())
            .arg("run")
            .arg("--config")
            .arg(cluster.config_path(1).unwrap()),
    );
    let (status, _, stderr) = child.wait_with_deadline(Duration::from_secs(30));
    assert!(!status.success());
    assert!(stderr.contains(&admin.to_string()), "{stderr}");
}

#[test]
fn a_node_stopped_with_sigint_restarts_from_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(dir.path().join("c"), cluster_options(1)).unwrap();
    cluster.wait_ready(1, STARTUP).unwrap();
    let before = wait_for("node 1 to lead and commit", STARTUP, || {
        let s = cluster.status(1).map_err(|e| e.to_string())?;
        if s.is_leader() && s.applied_index >= 1 {
            Ok(s)
        } else {
            Err(format!("role {} applied {}", s.role, s.applied_index))
        }
    });
    let exit = cluster.interrupt(1, Duration::from_secs(15)).unwrap();
    assert!(exit.success(), "SIGINT must exit 0, got {exit}");
    assert!(dir.path().join("c/node-1/data/raft.redb").is_file());

    cluster.start_node(1).unwrap();
    cluster.wait_ready(1, STARTUP).unwrap();
    let after = wait_for("node 1 to lead again", STARTUP, || {
        let s = cluster.status(1).map_err(|e| e.to_string())?;
        if s.is_leader() && s.applied_index > before.applied_index {
            Ok(s)
        } else {
            Err(format!("role {} applied {}", s.role, s.applied_index))
        }
    });
    // The log and the term survived the restart: the new leader's term is later and
    // its log extends the old one.
    assert!(after.term > before.term, "{} > {}", after.term, before.term);
    assert!(after.first_index <= before.last_index + 1);
    assert!(after.last_index > before.last_index);
}
