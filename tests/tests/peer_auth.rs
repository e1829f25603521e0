//! The Raft channel admits only certificates of the cluster CA.
//!
//! An intruder runs the real QUIC peer transport with a certificate from another CA
//! that claims a member's node id (and another that claims a new id), trusts the
//! cluster CA (which is public), and floods every node with vote requests carrying an
//! enormous term and the leadership-transfer flag, which a member would obey even
//! under the leader lease. If a single one were delivered, the cluster's term would
//! jump. It must not: every connection is refused during the handshake, the refusal is
//! counted and logged, and the cluster keeps its leader and term.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::harness::{metric_sum, serial, Harness, HEARTBEAT, MAX_ELECTION_TIMEOUT, SOON};
use integration_tests::wait::{holds_for, wait_until};
use raft::core::{Message, MessageBody, NodeId};
use raft::transport::certs::ClusterCa;
use raft::transport::{QuicConfig, QuicTransport, TlsMaterial, Transport};

const HUGE_TERM: u64 = 1 << 40;

/// A peer transport claiming `claimed`, certified by `issuer`, trusting the cluster
/// CA, dialing every target.
fn intruder(
    claimed: NodeId,
    issuer: &ClusterCa,
    cluster_ca_pem: &str,
    targets: &BTreeMap<NodeId, SocketAddr>,
) -> QuicTransport {
    let cert = issuer.issue_node(claimed).expect("a node certificate");
    let material = TlsMaterial {
        ca_pem: cluster_ca_pem.to_owned(),
        cert_chain_pem: cert.cert_pem,
        key_pem: cert.key_pem,
    };
    let mut cfg = QuicConfig::new(claimed, "127.0.0.1:0".parse().expect("address"), material);
    cfg.cluster_id = Some("e2e".into());
    cfg.backoff_initial = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(50);
    for (&id, &addr) in targets {
        if id != claimed {
            cfg = cfg.with_peer(id, addr);
        }
    }
    // Nothing is ever delivered to it; the receiver is simply dropped.
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    QuicTransport::bind(cfg, tx).expect("bind the intruder")
}

fn vote(from: NodeId, to: NodeId) -> Message {
    Message {
        from,
        to,
        term: HUGE_TERM,
        body: MessageBody::Vote {
            last_index: u64::MAX / 2,
            last_term: HUGE_TERM,
            transfer: true,
        },
    }
}

#[test]
fn a_peer_with_a_foreign_ca_cannot_join_the_raft_channel() {
    let _serial = serial();
    let mut h = Harness::start(3);
    let leader = h.wait_leader();
    let ids = h.cluster.node_ids();
    let impersonated = *ids.iter().find(|&&id| id != leader).expect("a follower");
    let targets: BTreeMap<NodeId, SocketAddr> = ids
        .iter()
        .map(|&id| (id, h.cluster.raft_addr(id).expect("raft address")))
        .collect();

    let before: BTreeMap<NodeId, _> = ids
        .iter()
        .map(|&id| (id, h.status(id).expect("status")))
        .collect();
    let term = before[&leader].term;
    let rejected_metric_before = metric_sum(
        &h.metrics(leader).expect("metrics"),
        "raft_transport_inbound_rejected_total",
        &[],
    )
    .unwrap_or(0.0);

    // Two intruders: one impersonates a member, one claims a new id. Both send
    // votes to every node they know, every heartbeat interval, until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let ca = h.ca_pem().to_owned();
    let flood = {
        let stop = stop.clone();
        let targets = targets.clone();
        h.rt().spawn(async move {
            let intruders: Vec<(NodeId, QuicTransport)> = [impersonated, 4]
                .into_iter()
                .map(|claimed| {
                    let foreign = ClusterCa::generate().expect("a foreign CA");
                    (claimed, intruder(claimed, &foreign, &ca, &targets))
                })
                .collect();
            let mut sent = 0u64;
            while !stop.load(Ordering::SeqCst) {
                for (claimed, t) in &intruders {
                    for &to in targets.keys().filter(|&&to| to != *claimed) {
                        t.send(to, vec![vote(*claimed, to)]);
                        sent += 1;
                    }
                }
                tokio::time::sleep(HEARTBEAT).await;
            }
            let connects: u64 = intruders
                .iter()
                .flat_map(|(_, t)| t.peer_statuses().into_values())
                .map(|p| p.connects)
                .sum();
            for (_, t) in &intruders {
                t.shutdown().await;
            }
            (sent, connects)
        })
    };

    // Every node refuses the intruders' connections...
    wait_until("every node to refuse the intruders", SOON, || {
        let mut waiting = Vec::new();
        for &id in &ids {
            let s = h.status(id)?;
            if s.inbound.rejected < before[&id].inbound.rejected + 2 {
                waiting.push((id, s.inbound.rejected));
            }
        }
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(format!("rejections so far (node, count): {waiting:?}"))
        }
    });
    // ...and nothing they send gets through: over many election timeouts, the term,
    // the leader and every node's election count stay as they were.
    let period = (MAX_ELECTION_TIMEOUT * 5).max(Duration::from_secs(2));
    holds_for("the cluster's term and leader", period, || {
        for &id in &ids {
            let s = h.status(id)?;
            let b = &before[&id];
            if s.term != term || s.leader_id() != Some(leader) || s.elections != b.elections {
                return Err(format!(
                    "node {id}: {} term {} (was {term}) leader {:?} elections {} (was {})",
                    s.role,
                    s.term,
                    s.leader_id(),
                    s.elections,
                    b.elections
                ));
            }
        }
        Ok(())
    });
    stop.store(true, Ordering::SeqCst);
    let (sent, connects) = h
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), flood).await })
        .expect("the intruders stop")
        .expect("the intruder task");

    // The refusals are visible to operators: a counter in /metrics and a log line.
    let leader_metrics = h.metrics(leader).expect("metrics");
    let rejected_metric =
        metric_sum(&leader_metrics, "raft_transport_inbound_rejected_total", &[]).unwrap_or(0.0);
    assert!(
        rejected_metric > rejected_metric_before,
        "raft_transport_inbound_rejected_total {rejected_metric} (was {rejected_metric_before})"
    );
    wait_until("the leader's log to record the refusal", SOON, || {
        let log = std::fs::read_to_string(h.cluster.log_path(leader)).map_err(|e| e.to_string())?;
        if log.contains("inbound handshake failed") {
            Ok(())
        } else {
            Err("no refusal logged yet".into())
        }
    });
    let after: BTreeMap<NodeId, u64> = ids
        .iter()
        .map(|&id| {
            (
                id,
                h.status(id).expect("status").inbound.rejected - before[&id].inbound.rejected,
            )
        })
        .collect();
    println!(
        "foreign-CA intruders (claiming nodes {impersonated} and 4) sent {sent} votes with term {HUGE_TERM}; \
         connections the intruders believed established: {connects}; refusals per node: {after:?}; the \
         cluster stayed at term {term} with leader {leader} for {period:?}"
    );

    // The cluster still works.
    h.open_accounts(&[1], 5);
    assert_eq!(h.balances(&[1]), [(1, 5)].into());
}

/// The control experiment: the same vote, sent with a certificate of the cluster's
/// own CA, is delivered and moves the cluster to the huge term. This is what makes
/// the unchanged term above evidence that nothing got through.
#[test]
fn control_the_same_vote_from_a_cluster_certified_peer_is_delivered() {
    let _serial = serial();
    let mut h = Harness::start(3);
    let leader = h.wait_leader();
    let ids = h.cluster.node_ids();
    let impersonated = *ids.iter().find(|&&id| id != leader).expect("a follower");
    let targets: BTreeMap<NodeId, SocketAddr> =
        [(leader, h.cluster.raft_addr(leader).expect("raft address"))].into();
    let cluster_ca = gateway::init::load_ca(h.cluster.dir()).expect("the cluster CA");
    let ca = h.ca_pem().to_owned();
    let insider = h.block_on(async { intruder(impersonated, &cluster_ca, &ca, &targets) });
    let s = wait_until("the vote to reach the leader's Raft core", SOON, || {
        insider.send(leader, vec![vote(impersonated, leader)]);
        let s = h.status(leader)?;
        if s.term >= HUGE_TERM {
            Ok(s)
        } else {
            Err(format!("term {}", s.term))
        }
    });
    println!(
        "a cluster-certified peer claiming node {impersonated} moved leader {leader} to term {} ({})",
        s.term, s.role
    );
    h.block_on(insider.shutdown());
}
