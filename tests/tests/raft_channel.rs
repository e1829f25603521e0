//! The Raft channel cut while the client channel stays up.
//!
//! Every Raft link runs through a UDP relay the test controls (see
//! `integration_tests::relay`); clients reach the nodes directly. Cutting the relays
//! around the leader leaves it reachable by clients but deaf (and, in the first test,
//! mute) to its peers: it must step down, the others must elect a new leader, clients
//! that talk to the old leader must end up served by the new one, no acknowledged
//! write may be lost, and once healed the old leader must catch up.

use std::time::{Duration, Instant};

use bank_app::protocol::{RequestKind, ServerFrame, ServerReply};
use bank_app::{AccountId, Op, Request};
use integration_tests::harness::{metric_sum, serial, Harness, SOON};
use integration_tests::raw::RawConn;
use integration_tests::wait::wait_until;
use raft::core::NodeId;

const WORKERS: usize = 4;
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How quickly the cut-off leader must step down and a new one be elected.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);
/// An account outside the workload's, written by the test itself during the cut.
const PROBE: AccountId = 100;

/// How the leader is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Nothing in or out.
    Both,
    /// It can send but hears nothing.
    Inbound,
}

/// Requests the node answered with a redirect or "unavailable".
fn refused_requests(h: &Harness, id: NodeId) -> f64 {
    let m = h.metrics(id).expect("metrics");
    ["not_leader", "unavailable"]
        .iter()
        .map(|o| metric_sum(&m, "bank_requests_total", &[("outcome", o)]).unwrap_or(0.0))
        .sum()
}

fn cut_the_leader(cut: Cut) {
    let _serial = serial();
    let mut h = Harness::start_with_relays(3);
    let old = h.wait_leader();
    let others: Vec<NodeId> = h.cluster.node_ids().into_iter().filter(|&id| id != old).collect();

    // The Raft traffic really goes through the relays.
    wait_until("Raft traffic on the leader's relays", SOON, || {
        let quiet: Vec<_> = others
            .iter()
            .flat_map(|&o| [(old, o), (o, old)])
            .filter(|&(a, b)| h.relays().link(a, b).stats().forwarded == 0)
            .collect();
        if quiet.is_empty() {
            Ok(())
        } else {
            Err(format!("no traffic yet on {quiet:?}"))
        }
    });

    let accounts: Vec<AccountId> = (1..=6).collect();
    let initial = h.open_accounts(&accounts, 200);
    let probe = h.client(h.client_addrs_from(old));
    assert_eq!(h.block_on(probe.open_account(PROBE, 0)), Ok(0));
    // Every worker's client starts with the old leader's address.
    let load = h.start_load(&accounts, WORKERS, Some(old), 0x5eed_0005 + cut as u64);
    let old_term = h.status(old).expect("status").term;
    let refused_before = refused_requests(&h, old);

    let cut_at = Instant::now();
    match cut {
        Cut::Both => h.relays().isolate(old),
        Cut::Inbound => h.relays().cut_inbound(old),
    }
    // Check-quorum: a leader that hears from no quorum steps down.
    wait_until("the cut-off leader to step down", SOON, || {
        let s = h.status(old)?;
        if s.is_leader() {
            Err(format!("still {} in term {}", s.role, s.term))
        } else {
            Ok(())
        }
    });
    let stepped_down_after = cut_at.elapsed();
    let new = h.wait_leader_among(&others, SOON);
    let elected_after = cut_at.elapsed();
    assert_ne!(new, old);
    let new_term = h.status(new).expect("status").term;
    assert!(
        new_term > old_term,
        "the new leader's term {new_term} is past {old_term}"
    );

    // The workload, whose clients all started at the old leader, carries on.
    load.wait_applied(50, Some(cut_at), SOON);
    let resumed_after = cut_at.elapsed();

    // A client whose first address is the old leader's gets its write done: the
    // old leader, still reachable on its client channel, refuses it and the client
    // moves to a node that redirects it to the new leader.
    let fresh = h.client(h.client_addrs_from(old));
    assert_eq!(h.block_on(fresh.deposit(PROBE, 7)), Ok(7));
    h.block_on(fresh.close());
    // The old leader answers clients but accepts no writes.
    let ca = h.ca_pem().to_owned();
    let old_addr = h.client_addr(old);
    let reply = h.block_on(async {
        let (raw, _) = RawConn::connect(old_addr, &ca, Duration::from_secs(5))
            .await
            .expect("raw connect");
        assert_eq!(
            raw.request(1, RequestKind::Ping).await.expect("pong"),
            ServerFrame::Reply {
                id: 1,
                reply: ServerReply::Pong { node_id: old }
            }
        );
        let write = Request::new(
            0xc0ffee,
            1,
            Op::Deposit {
                account: PROBE,
                amount: 1_000,
            },
        );
        let reply = raw.request(2, RequestKind::Write(write)).await.expect("a reply");
        raw.close().await;
        reply
    });
    match reply {
        ServerFrame::Reply {
            reply: ServerReply::NotLeader { .. } | ServerReply::Unavailable { retryable: true, .. },
            ..
        } => {}
        other => panic!("the cut-off node must refuse writes, it answered {other:?}"),
    }
    let refused = refused_requests(&h, old) - refused_before;
    assert!(
        refused >= 1.0,
        "the old leader refused or redirected requests during the cut"
    );

    let history = load.stop(h.rt(), STOP_TIMEOUT);
    let first = history
        .first_applied_started_after(cut_at)
        .expect("a write acknowledged after the cut");
    let write_gap = first.finished.saturating_duration_since(cut_at);
    println!(
        "cut ({cut:?}) of leader {old}'s Raft channel: it stepped down after {stepped_down_after:?}; node {new} \
         leads after {elected_after:?} (term {old_term} -> {new_term}); the first write started after the cut \
         was acknowledged after {write_gap:?}; 50 writes after {resumed_after:?}; the old leader refused or \
         redirected {refused} requests"
    );
    assert!(
        stepped_down_after < FAILOVER_BOUND,
        "step-down took {stepped_down_after:?}"
    );
    assert!(elected_after < FAILOVER_BOUND, "election took {elected_after:?}");
    assert!(write_gap < FAILOVER_BOUND, "writes resumed after {write_gap:?}");
    let mut observed = h.assert_history_matches(&history, &initial);
    assert_eq!(
        h.balances(&[PROBE]),
        [(PROBE, 7)].into(),
        "only the probe's acknowledged deposit"
    );
    observed.insert(PROBE, 7);
    h.block_on(probe.close());

    // Heal: the old leader hears the new term, follows, and catches up (its own
    // unreplicated entries from the cut are overwritten).
    let healed_at = Instant::now();
    h.relays().heal_all();
    let s = wait_until("the old leader to follow after the heal", SOON, || {
        let s = h.status(old)?;
        match s.leader_id() {
            Some(l) if l != old && !s.is_leader() => Ok(s),
            _ => Err(format!("{} term {} leader {:?}", s.role, s.term, s.leader_id())),
        }
    });
    h.assert_nodes_converged(&h.cluster.node_ids(), &observed);
    println!(
        "healed: node {old} follows node {:?} in term {} and caught up within {:?}",
        s.leader_id(),
        s.term,
        healed_at.elapsed()
    );
}

#[test]
fn cutting_the_leaders_raft_channel_redirects_clients_and_keeps_balances() {
    cut_the_leader(Cut::Both);
}

#[test]
fn a_leader_that_can_send_but_not_receive_steps_down_and_the_cluster_moves_on() {
    cut_the_leader(Cut::Inbound);
}
