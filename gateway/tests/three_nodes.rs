//! Three real `gateway run` processes: they elect one leader that every node
//! reports, and when the leader is killed with SIGKILL the others elect another.

mod common;

use std::time::Duration;

use common::{cluster_options, wait_for};
use gateway::status::fetch_metrics;
use gateway::LocalCluster;

const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn three_nodes_elect_a_leader_and_fail_over_when_it_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(dir.path().join("c"), cluster_options(3)).unwrap();
    cluster.wait_all_ready(DEADLINE).unwrap();

    let first = cluster.wait_leader(DEADLINE).unwrap();
    let leader_client = cluster.client_addr(first).unwrap().to_string();
    for id in cluster.node_ids() {
        let s = cluster.status(id).unwrap();
        let l = s.leader.as_ref().unwrap();
        assert_eq!(l.id, first);
        // Every node can redirect clients to the leader's client channel.
        assert_eq!(l.client_addr.as_deref(), Some(leader_client.as_str()));
        assert_eq!(s.voters, vec![1, 2, 3]);
    }
    // The leader replicates to both followers and its Raft links are up.
    wait_for(
        "the leader to see both followers connected and caught up",
        DEADLINE,
        || {
            let s = cluster.status(first).map_err(|e| e.to_string())?;
            let connected = s.transport.iter().filter(|t| t.connected).count();
            let caught_up = s
                .replication
                .iter()
                .filter(|r| r.matched >= s.commit_index)
                .count();
            if s.replication.len() == 2 && connected == 2 && caught_up == 2 {
                Ok(())
            } else {
                Err(format!("{:?} / {:?}", s.replication, s.transport))
            }
        },
    );
    let term = cluster.status(first).unwrap().term;
    let admin = cluster.admin_addr(first).unwrap();
    wait_for("the leader's metrics to show both links up", DEADLINE, || {
        let m = fetch_metrics(admin, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        let up = cluster
            .node_ids()
            .into_iter()
            .filter(|&p| p != first)
            .all(|p| m.contains(&format!("raft_peer_connected{{peer=\"{p}\"}} 1")));
        if up && m.contains("raft_is_leader 1") && m.contains("raft_transport_sent_total{peer=") {
            Ok(())
        } else {
            Err(m)
        }
    });

    cluster.kill(first).unwrap();
    let second = cluster.wait_leader_other_than(first, DEADLINE).unwrap();
    assert_ne!(second, first);
    for id in cluster.running() {
        let s = cluster.status(id).unwrap();
        assert!(s.term > term, "a new leader means a new term");
        assert_eq!(s.leader_id(), Some(second));
    }

    // The killed node comes back from its disk and follows the new leader.
    cluster.restart(first).unwrap();
    cluster.wait_ready(first, DEADLINE).unwrap();
    let third = cluster.wait_leader(DEADLINE).unwrap();
    wait_for("the restarted node to know the leader", DEADLINE, || {
        let s = cluster.status(first).map_err(|e| e.to_string())?;
        if s.leader_id() == Some(third) && !s.is_leader() {
            Ok(())
        } else {
            Err(format!("{} sees {:?}", s.role, s.leader_id()))
        }
    });

    // A follower stops cleanly on SIGTERM.
    let follower = cluster.node_ids().into_iter().find(|&id| id != third).unwrap();
    let exit = cluster.terminate(follower, Duration::from_secs(15)).unwrap();
    assert!(exit.success(), "{exit}");
}
