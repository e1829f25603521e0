//! The membership endpoints and `gateway admin` against real `gateway run` processes:
//! a follower answers with the leader's id and the CLI follows it, bad requests are
//! refused with a reason, a snapshot is taken on demand, leadership
//! moves on request. And `gateway init-node` prepares a joining node.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{cluster_options, gateway_bin, wait_for};
use gateway::config;
use gateway::init::ClusterSummary;
use gateway::status::post_json;
use gateway::LocalCluster;

const DEADLINE: Duration = Duration::from_secs(60);
const REQUEST: Duration = Duration::from_secs(15);

fn post(addr: SocketAddr, path: &'static str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = post_json(addr, path, &body, REQUEST).expect("an answer");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
    (status, v)
}

/// Runs `gateway ARGS`; returns (success, stdout, stderr).
fn gateway(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(gateway_bin())
        .args(args)
        .output()
        .expect("run gateway");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn admin_endpoints_redirect_refuse_with_reasons_and_move_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(dir.path().join("c"), cluster_options(3)).unwrap();
    cluster.wait_all_ready(DEADLINE).unwrap();
    let leader = cluster.wait_leader(DEADLINE).unwrap();
    let follower = cluster.node_ids().into_iter().find(|&id| id != leader).unwrap();
    let leader_admin = cluster.admin_addr(leader).unwrap();
    let follower_admin = cluster.admin_addr(follower).unwrap();

    // A follower does not make changes: it names the leader.
    let (status, v) = post(follower_admin, "/admin/promote", serde_json::json!({ "id": 2 }));
    assert_eq!(status, 421, "{v}");
    assert_eq!(v["error"], "not_leader");
    assert_eq!(v["leader"]["id"], leader);
    assert_eq!(
        v["leader"]["client_addr"],
        cluster.client_addr(leader).unwrap().to_string()
    );

    // Refusals with reasons.
    for (body, what) in [
        (
            serde_json::json!({ "id": 7, "raft_addr": "0.0.0.0:1", "client_addr": "127.0.0.1:2" }),
            "unreachable raft address",
        ),
        (
            serde_json::json!({ "id": 7, "raft_addr": "nonsense", "client_addr": "127.0.0.1:2" }),
            "raft address that is not IP:PORT",
        ),
        (
            serde_json::json!({ "id": 0, "raft_addr": "127.0.0.1:1", "client_addr": "127.0.0.1:2" }),
            "node id 0",
        ),
        (serde_json::json!({ "id": 7, "extra": 1 }), "unknown fields"),
    ] {
        let (status, v) = post(leader_admin, "/admin/add-learner", body);
        assert_eq!(status, 400, "{what}: {v}");
        assert_eq!(v["ok"], false, "{what}: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    }
    let (status, v) = post(leader_admin, "/admin/promote", serde_json::json!({ "id": 9 }));
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_change")),
        "{v}"
    );
    let (status, v) = post(leader_admin, "/admin/snapshot", serde_json::json!({}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"].as_bool(), Some(true), "{v}");
    assert!(v["index"].as_u64().is_some_and(|i| i > 0), "snapshot index: {v}");

    // The CLI, given only a follower and the leader's address among others, follows the
    // follower's answer to the leader.
    let f = follower_admin.to_string();
    let l = leader_admin.to_string();
    let (ok, out, err) = gateway(&[
        "admin",
        "--admin",
        &f,
        "--admin",
        &l,
        "add-learner",
        "--id",
        "7",
        "--raft-addr",
        "127.0.0.1:9",
        "--client-addr",
        "127.0.0.1:10",
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("node 7 is a learner"), "{out}");
    // Members, asked of a follower, come from the leader (only it knows progress).
    let (ok, out, err) = gateway(&["admin", "--admin", &f, "--admin", &l, "members"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("membership seen by node {leader} (the leader)")),
        "{out}"
    );
    assert!(out.contains("learner"), "{out}");
    let (ok, out, err) = gateway(&["admin", "--admin", &l, "members", "--json"]);
    assert!(ok, "{out}{err}");
    let m: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(m["members"].as_array().map(Vec::len), Some(4), "{m}");
    // With only the follower's address, the leader's admin address is unknown: a
    // clear error that names the leader.
    let (ok, out, err) = gateway(&["admin", "--admin", &f, "remove", "--id", "7"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!("node {leader} leads")) && err.contains("--admin"),
        "{err}"
    );
    let (ok, out, err) = gateway(&[
        "admin",
        "--cluster",
        &cluster.dir().display().to_string(),
        "remove",
        "--id",
        "7",
    ]);
    assert!(ok, "{out}{err}");
    let s = cluster.status(leader).unwrap();
    assert!(s.learners.is_empty() && !s.membership_pending, "{s:?}");

    // Leadership moves on request.
    let (ok, out, err) = gateway(&[
        "admin",
        "--admin",
        &l,
        "transfer-leader",
        "--to",
        &follower.to_string(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("node {follower} leads")), "{out}");
    wait_for("every node to follow the new leader", DEADLINE, || match cluster
        .wait_leader(Duration::from_secs(1))
    {
        Ok(l) if l == follower => Ok(()),
        other => Err(format!("{other:?}")),
    });
}

#[test]
fn init_node_prepares_a_joining_node_and_refuses_a_used_id() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::create(dir.path().join("c"), cluster_options(3)).unwrap();
    let d = cluster.dir().display().to_string();
    let (ok, _, err) = gateway(&["init-node", "--dir", &d, "--id", "2"]);
    assert!(!ok);
    assert!(err.contains("already listed"), "{err}");

    let (ok, out, err) = gateway(&["init-node", "--dir", &d, "--id", "4", "--base-port", "47100"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("add-learner --id 4"), "{out}");
    let cfg = config::load_file(&cluster.dir().join("node-4").join("node.toml")).expect("loads");
    assert!(cfg.join);
    assert_eq!(cfg.raft_listen, "127.0.0.1:47100".parse().unwrap());
    assert_eq!(cfg.admin_listen, "127.0.0.1:47102".parse().unwrap());
    assert!(cfg.sidecar_config().bootstrap.is_none());
    assert!(cfg.sidecar_config().join);
    assert_eq!(
        cfg.cluster_id.as_deref(),
        Some("local"),
        "cluster settings copied"
    );
    let summary = ClusterSummary::load(cluster.dir()).unwrap();
    assert_eq!(
        summary.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let (ok, _, err) = gateway(&["init-node", "--dir", &d, "--id", "4"]);
    assert!(!ok && err.contains("already listed"), "{err}");
}
