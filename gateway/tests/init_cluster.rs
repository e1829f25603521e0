//! `gateway init-cluster` writes a complete, loadable cluster directory.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::gateway_bin;
use gateway::config;
use gateway::init::ClusterSummary;
use gateway::node::load_tls_material;

#[test]
fn init_cluster_writes_configs_that_load_and_certificates_that_match_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(gateway_bin())
        .args(["init-cluster", "--nodes", "3", "--cluster-id", "test", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let summary = ClusterSummary::load(dir.path()).unwrap();
    assert_eq!(summary.cluster_id.as_deref(), Some("test"));
    assert_eq!(
        summary.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let mut ports = std::collections::BTreeSet::new();
    for n in &summary.nodes {
        for a in [n.raft_addr, n.client_addr, n.admin_addr] {
            assert!(a.ip().is_loopback());
            assert!(ports.insert(a.port()), "port {} used twice", a.port());
        }
        let cfg = config::load_file(&dir.path().join(&n.config)).unwrap();
        assert_eq!(cfg.id, n.id);
        assert_eq!(cfg.cluster_id.as_deref(), Some("test"));
        assert_eq!(cfg.raft_listen, n.raft_addr);
        assert_eq!(cfg.client_listen, n.client_addr);
        assert_eq!(cfg.admin_listen, n.admin_addr);
        assert_eq!(cfg.peers.len(), 3);
        for p in &cfg.peers {
            let s = summary.node(p.id).unwrap();
            assert_eq!((p.raft_addr, p.client_addr), (s.raft_addr, s.client_addr));
        }
        // The certificate is chained to the CA and names this node.
        load_tls_material(&cfg).unwrap();
        let mode = std::fs::metadata(&cfg.tls.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "node key must be private");
    }
    let ca_key = std::fs::metadata(dir.path().join("ca-key.pem")).unwrap();
    assert_eq!(ca_key.permissions().mode() & 0o777, 0o600);

    // A node's certificate does not work for another node id.
    let mut cfg = config::load_file(&dir.path().join("node-1/node.toml")).unwrap();
    cfg.id = 2;
    let err = load_tls_material(&cfg).unwrap_err().to_string();
    assert!(err.contains("names node Some(1)"), "{err}");

    // A second run refuses to overwrite the CA.
    let again = Command::new(gateway_bin())
        .args(["init-cluster", "--nodes", "3", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    // The CA can issue a replacement certificate.
    let old = std::fs::read_to_string(dir.path().join("node-2/cert.pem")).unwrap();
    let issue = Command::new(gateway_bin())
        .args(["issue-cert", "--id", "2", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        issue.status.success(),
        "{}",
        String::from_utf8_lossy(&issue.stderr)
    );
    assert_ne!(
        old,
        std::fs::read_to_string(dir.path().join("node-2/cert.pem")).unwrap()
    );
    load_tls_material(&config::load_file(&dir.path().join("node-2/node.toml")).unwrap()).unwrap();
}

#[test]
fn init_cluster_with_a_base_port_lays_ports_out_predictably() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(gateway_bin())
        .args(["init-cluster", "--nodes", "2", "--base-port", "17000", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = ClusterSummary::load(dir.path()).unwrap();
    let n2 = summary.node(2).unwrap();
    assert_eq!(
        (n2.raft_addr.port(), n2.client_addr.port(), n2.admin_addr.port()),
        (17010, 17011, 17012)
    );
}
