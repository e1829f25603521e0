//! Membership changes through the sidecar's API: a node that starts empty (join mode)
//! is added as a learner, catches up from the log and is promoted; a lagging learner
//! is not promoted; a follower and the leader are removed; a dead node is replaced
//! under a stream of proposals without losing or duplicating any. Over the in-memory
//! network, and once over real QUIC with mutual TLS, where the new node is reached
//! only through the addresses the configuration carries and the removed one is
//! refused.

mod cluster;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cluster::{wait_for, Cluster, Options};
use raft::core::{Index, NodeAddr, NodeId, Role};
use raft::sidecar::{MembershipStatus, RaftHandle, SidecarError};

const T: Duration = Duration::from_secs(10);
/// A few election timeouts of the test timings (150-300 ms each).
const A_WHILE: Duration = Duration::from_millis(900);

fn addr(id: NodeId) -> NodeAddr {
    NodeAddr {
        raft: format!("raft-of-{id}"),
        client: format!("client-of-{id}"),
    }
}

/// `n` proposals on `h`, which must lead; returns what was acknowledged.
async fn propose_n(h: &RaftHandle, tag: &str, n: usize) -> Vec<(Index, Bytes)> {
    let mut acked = Vec::with_capacity(n);
    for i in 0..n {
        let data = Bytes::from(format!("{tag}-{i}"));
        let a = h
            .propose(data.clone())
            .await
            .unwrap_or_else(|e| panic!("{tag}-{i}: {e}"));
        acked.push((a.index, data));
    }
    acked
}

/// Checks `cond` every 10 ms for `dur`; panics the first time it does not hold.
async fn holds_for<F: FnMut() -> Result<(), String>>(what: &str, dur: Duration, mut cond: F) {
    let end = tokio::time::Instant::now() + dur;
    while tokio::time::Instant::now() < end {
        if let Err(e) = cond() {
            panic!("{what} stopped holding: {e}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `h.membership()` until `cond` holds on it.
async fn wait_membership(
    h: &RaftHandle,
    what: &str,
    mut cond: impl FnMut(&MembershipStatus) -> bool,
) -> MembershipStatus {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let m = h.membership().await.expect("membership");
        if cond(&m) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn lag_of(m: &MembershipStatus, id: NodeId) -> Option<u64> {
    m.peers.iter().find(|p| p.id == id).map(|p| p.lag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_is_added_as_a_learner_catches_up_and_is_promoted() {
    let mut c = Cluster::memory(3).await;
    let leader = c.wait_leader(T).await;
    let mut acked = propose_n(c.handle(leader), "before", 100).await;

    c.join_memory_node(4).await;
    let joiner = c.handle(4).clone();
    let m = joiner.membership().await.expect("membership");
    assert!(
        m.membership.voters.is_empty() && m.membership.learners.is_empty(),
        "a joining node starts without a configuration: {m:?}"
    );
    assert!(!m.removed && !m.is_leader);
    // Not a member yet: the cluster carries on without it, and it never campaigns.
    acked.extend(propose_n(c.handle(leader), "meanwhile", 20).await);
    holds_for("the joiner waiting passively", A_WHILE, || {
        let s = joiner.status();
        if s.elections == 0 && s.core.role == Role::Follower {
            Ok(())
        } else {
            Err(format!("{:?} after {} elections", s.core.role, s.elections))
        }
    })
    .await;
    assert_eq!(joiner.applied_index(), 0, "nobody replicates to a non-member");

    let added = c
        .handle(leader)
        .add_learner(4, addr(4))
        .await
        .expect("learner added");
    assert!(added.membership.learners.contains(&4));
    assert!(!added.membership.voters.contains(&4));
    assert_eq!(added.membership.addrs.get(&4), Some(&addr(4)));
    // Catch-up from the log, configuration included.
    let last = acked.last().expect("acked").0;
    c.wait_applied(last, T).await;
    wait_for("the joiner to know it is a learner", T, || {
        joiner.status().core.membership.learners.contains(&4)
    })
    .await;
    let m = wait_membership(c.handle(leader), "node 4 caught up", |m| lag_of(m, 4) == Some(0)).await;
    let p = m.peers.iter().find(|p| p.id == 4).expect("node 4's progress");
    assert!(!p.voter, "still a learner: {p:?}");
    assert!(!m.pending);
    // Asking again changes nothing.
    let again = c
        .handle(leader)
        .add_learner(4, addr(4))
        .await
        .expect("idempotent");
    assert_eq!(again.index, added.index);

    let promoted = c.handle(leader).promote(4).await.expect("promoted");
    assert_eq!(
        promoted.membership.voters.iter().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(promoted.membership.learners.is_empty());
    let m = c.handle(leader).membership().await.expect("membership");
    assert!(m.peers.iter().any(|p| p.id == 4 && p.voter), "{m:?}");
    assert!(!m.pending, "the promotion is committed: {m:?}");
    acked.extend(propose_n(c.handle(leader), "after", 50).await);
    c.wait_applied(acked.last().expect("acked").0, T).await;
    c.check_applied(&acked);

    // The new node's client address travels in the configuration: once it leads, the
    // others name it in their redirects.
    c.handle(leader)
        .transfer_leader(4)
        .await
        .expect("transfer accepted");
    wait_for("node 4 to lead", T, || c.handle(4).is_leader()).await;
    assert_eq!(c.wait_leader(T).await, 4);
    let follower = if leader == 4 { 1 } else { leader };
    let err = c
        .handle(follower)
        .propose(Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SidecarError::NotLeader {
            leader: Some(4),
            addr: Some(addr(4))
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_learner_is_not_promoted() {
    let mut c = Cluster::memory_with(
        3,
        Options {
            configure: |cfg| cfg.promote_max_lag = 10,
            ..Options::default()
        },
    )
    .await;
    let leader = c.wait_leader(T).await;
    c.join_memory_node(4).await;
    c.faults.isolate(4);
    c.handle(leader)
        .add_learner(4, addr(4))
        .await
        .expect("adding a learner needs only the voters");
    propose_n(c.handle(leader), "while-cut-off", 30).await;

    let err = c.handle(leader).promote(4).await.unwrap_err();
    match &err {
        SidecarError::LearnerBehind {
            id: 4,
            matched,
            last,
            max_lag: 10,
        } => assert!(last - matched > 10, "{err:?}"),
        other => panic!("expected LearnerBehind, got {other:?}"),
    }
    assert!(err.to_string().contains("not caught up"), "{err}");
    let m = c.handle(leader).membership().await.expect("membership");
    assert!(
        m.membership.learners.contains(&4) && !m.membership.voters.contains(&4),
        "{m:?}"
    );
    assert!(!m.pending, "nothing was proposed: {m:?}");

    c.faults.heal_all();
    wait_membership(c.handle(leader), "node 4 to catch up", |m| {
        lag_of(m, 4).is_some_and(|lag| lag <= 10)
    })
    .await;
    let promoted = c.handle(leader).promote(4).await.expect("caught up now");
    assert!(promoted.membership.voters.contains(&4));
    // Promoting or adding a voter again: a no-op and a clear refusal.
    assert_eq!(
        c.handle(leader).promote(4).await.expect("no-op").index,
        promoted.index
    );
    let err = c.handle(leader).add_learner(4, addr(4)).await.unwrap_err();
    assert!(matches!(err, SidecarError::Membership(_)), "{err:?}");
    let err = c.handle(leader).promote(9).await.unwrap_err();
    assert!(
        matches!(&err, SidecarError::Membership(m) if m.contains("not a learner")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_follower_is_cut_off_and_cannot_disrupt_the_cluster() {
    let c = Cluster::memory(3).await;
    let leader = c.wait_leader(T).await;
    let removed = (1..=3).find(|&i| i != leader).expect("a follower");
    let rest: Vec<NodeId> = (1..=3).filter(|&i| i != removed).collect();
    let mut acked = propose_n(c.handle(leader), "before", 20).await;

    let changed = c
        .handle(leader)
        .remove_node(removed)
        .await
        .expect("the removal commits");
    assert!(!changed.membership.contains(removed));
    assert_eq!(
        changed.membership.voters.iter().copied().collect::<Vec<_>>(),
        rest
    );
    // Removing it again is a no-op (a retry after a lost answer is harmless).
    assert_eq!(
        c.handle(leader).remove_node(removed).await.expect("no-op").index,
        changed.index
    );
    acked.extend(propose_n(c.handle(leader), "after", 20).await);
    let last = acked.last().expect("acked").0;
    c.wait_applied_on(&rest, last, T).await;
    assert!(
        c.handle(removed).applied_index() < changed.index,
        "the leader stops replicating to a node as soon as it appends its removal"
    );

    // The removed node times out and campaigns, but nobody follows it: the leader and
    // its term stay put.
    let term = c.handle(leader).status().core.term;
    holds_for("the leader and its term", A_WHILE, || {
        let s = c.handle(leader).status();
        let views: Vec<Option<NodeId>> = rest.iter().map(|&id| c.handle(id).leader().leader).collect();
        if s.core.role == Role::Leader && s.core.term == term && views.iter().all(|&v| v == Some(leader)) {
            Ok(())
        } else {
            Err(format!(
                "{:?} in term {} (was {term}); views {views:?}",
                s.core.role, s.core.term
            ))
        }
    })
    .await;
    assert!(c.handle(removed).propose(Bytes::from_static(b"x")).await.is_err());
    c.check_applied_on(&rest, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_removes_itself_and_a_successor_takes_over() {
    let c = Cluster::memory(3).await;
    let old = c.wait_leader(T).await;
    let rest: Vec<NodeId> = (1..=3).filter(|&i| i != old).collect();
    let mut acked = propose_n(c.handle(old), "before", 20).await;

    let changed = c
        .handle(old)
        .remove_node(old)
        .await
        .expect("the change commits before the leader steps down");
    assert!(!changed.membership.contains(old));
    let new = c.wait_leader_among(&rest, T).await;
    assert_ne!(new, old);
    wait_for("the old leader to report itself removed", T, || {
        c.handle(old).status().removed
    })
    .await;
    assert!(!c.handle(old).is_leader());
    assert_eq!(
        c.handle(old).propose(Bytes::from_static(b"x")).await,
        Err(SidecarError::Removed)
    );
    assert!(
        c.handle(old).membership().await.expect("membership").removed,
        "membership() says so too"
    );

    acked.extend(propose_n(c.handle(new), "after", 20).await);
    let elections = c.handle(old).status().elections;
    let term = c.handle(new).status().core.term;
    holds_for("the old leader staying out", A_WHILE, || {
        let o = c.handle(old).status();
        let n = c.handle(new).status();
        if o.elections == elections && o.core.role == Role::Follower && n.core.term == term {
            Ok(())
        } else {
            Err(format!(
                "old: {:?}, {} elections (was {elections}); new leader's term {} (was {term})",
                o.core.role, o.elections, n.core.term
            ))
        }
    })
    .await;
    c.wait_applied_on(&rest, acked.last().expect("acked").0, T).await;
    c.check_applied_on(&rest, &acked);
}

/// Proposes through whoever leads until stopped, each attempt with a fresh payload;
/// records what was acknowledged.
struct Proposer {
    handles: Arc<Mutex<BTreeMap<NodeId, RaftHandle>>>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<(Index, Bytes)>>,
}

impl Proposer {
    fn start(handles: BTreeMap<NodeId, RaftHandle>) -> Proposer {
        let handles = Arc::new(Mutex::new(handles));
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (handles, stop, count) = (handles.clone(), stop.clone(), count.clone());
            async move {
                let mut acked = Vec::new();
                let mut target: NodeId = 1;
                let mut attempt = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let (h, next) = {
                        let hs = handles.lock().unwrap_or_else(|e| e.into_inner());
                        let next = hs
                            .keys()
                            .copied()
                            .find(|&id| id > target)
                            .or_else(|| hs.keys().copied().next())
                            .unwrap_or(1);
                        (hs.get(&target).cloned(), next)
                    };
                    let Some(h) = h else {
                        target = next;
                        continue;
                    };
                    attempt += 1;
                    let data = Bytes::from(format!("p-{attempt}"));
                    match h.propose(data.clone()).await {
                        Ok(a) => {
                            acked.push((a.index, data));
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(SidecarError::NotLeader { leader: Some(l), .. }) if l != target => target = l,
                        Err(_) => {
                            target = next;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                acked
            }
        });
        Proposer {
            handles,
            stop,
            acked: count,
            task,
        }
    }

    fn set(&self, id: NodeId, h: Option<RaftHandle>) {
        let mut hs = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        match h {
            Some(h) => hs.insert(id, h),
            None => hs.remove(&id),
        };
    }

    async fn wait_more(&self, n: usize) {
        let target = self.acked.load(Ordering::SeqCst) + n;
        wait_for(&format!("{n} more acknowledged proposals"), T, || {
            self.acked.load(Ordering::SeqCst) >= target
        })
        .await;
    }

    async fn finish(self) -> Vec<(Index, Bytes)> {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(T, self.task)
            .await
            .expect("the proposer stops")
            .expect("the proposer does not panic")
    }
}

/// The replacement an operator does (docs/operations.md): with a node dead, start an
/// empty one, add it as a learner, let it catch up, remove the dead one, promote the
/// new one; all while the cluster keeps taking writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_under_a_stream_of_proposals() {
    let mut c = Cluster::memory(3).await;
    let leader = c.wait_leader(T).await;
    let dead = (1..=3).find(|&i| i != leader).expect("a follower");
    let survivors: Vec<NodeId> = (1..=3).filter(|&i| i != dead).collect();
    let proposer = Proposer::start(c.nodes.iter().map(|(&id, n)| (id, n.handle.clone())).collect());
    proposer.wait_more(50).await;

    c.kill(dead);
    proposer.set(dead, None);
    proposer.wait_more(50).await;

    c.join_memory_node(4).await;
    proposer.set(4, Some(c.handle(4).clone()));
    let leader = c.wait_leader_among(&survivors, T).await;
    let h = c.handle(leader).clone();
    h.add_learner(4, addr(4)).await.expect("learner added");
    wait_membership(&h, "node 4 to catch up", |m| {
        lag_of(m, 4).is_some_and(|lag| lag < 100)
    })
    .await;
    proposer.wait_more(50).await;
    let removed = h.remove_node(dead).await.expect("dead node removed");
    assert_eq!(
        removed.membership.voters.iter().copied().collect::<Vec<_>>(),
        survivors
    );
    proposer.wait_more(20).await;
    let promoted = h.promote(4).await.expect("new node promoted");
    let members: Vec<NodeId> = promoted.membership.voters.iter().copied().collect();
    assert_eq!(members.len(), 3);
    assert!(members.contains(&4) && !members.contains(&dead));
    proposer.wait_more(50).await;

    // The new voter counts: with one of the old survivors cut off, the other and the
    // new node still commit.
    let cut = *survivors
        .iter()
        .find(|&&id| id != leader)
        .expect("another survivor");
    c.faults.isolate(cut);
    proposer.wait_more(30).await;
    c.faults.heal_all();
    proposer.wait_more(20).await;

    let acked = proposer.finish().await;
    println!("{} proposals acknowledged across the replacement", acked.len());
    let last = acked.iter().map(|a| a.0).max().expect("acked");
    c.wait_applied_on(&members, last, T).await;
    c.check_applied_on(&members, &acked);
}

/// Over QUIC the new node knows no peer: it accepts the leader (its certificate is
/// from the cluster CA) and answers at the address it dialed from; the members reach
/// it at the address the configuration gives. A removed node is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic_a_new_node_is_reached_through_the_configuration_and_a_removed_one_is_refused() {
    let mut c = Cluster::quic(3).await;
    let leader = c.wait_leader(T).await;
    let mut acked = propose_n(c.handle(leader), "before", 20).await;
    let raft4 = c.join_quic_node(4).await;
    let new_addr = NodeAddr {
        raft: raft4.to_string(),
        client: "client-of-4".into(),
    };
    let h = c.handle(leader).clone();
    h.add_learner(4, new_addr).await.expect("learner added");
    acked.extend(propose_n(&h, "learner", 20).await);
    let last = acked.last().expect("acked").0;
    c.wait_applied_on(&[4], last, T).await;

    let removed = (1..=3).find(|&i| i != leader).expect("a follower");
    let members: Vec<NodeId> = [leader, 4]
        .into_iter()
        .chain((1..=3).filter(|&i| i != leader && i != removed))
        .collect();
    let leader_quic = c.nodes[&leader].quic.clone().expect("quic");
    h.remove_node(removed).await.expect("removed");
    h.promote(4).await.expect("promoted");
    assert!(
        leader_quic.inner().peer_status(removed).is_none(),
        "the leader dropped the removed peer from its transport"
    );
    let rejected = leader_quic.inner().inbound_stats().rejected;
    // The removed node keeps its old configuration and soon campaigns: its
    // connections are refused.
    wait_for("the removed node to be refused", T, || {
        leader_quic.inner().inbound_stats().rejected > rejected
    })
    .await;
    acked.extend(propose_n(&h, "after", 20).await);
    let last = acked.last().expect("acked").0;
    c.wait_applied_on(&members, last, T).await;
    c.check_applied_on(&members, &acked);
    let status = leader_quic.inner().peer_status(4).expect("node 4 is a peer");
    assert_eq!(status.addr, raft4);
    assert!(status.connected);
}
