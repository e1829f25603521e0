//! In-memory transport and fault injection.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use raft::core::{Message, MessageBody, NodeId};
use raft::transport::{Faults, FaultyTransport, MemNetwork, MemTransport, Transport};
use tokio::sync::mpsc;

const IDS: [NodeId; 3] = [1, 2, 3];

fn msg(from: NodeId, to: NodeId, round: u64) -> Message {
    Message {
        from,
        to,
        term: 1,
        body: MessageBody::Heartbeat { commit: 0, round },
    }
}

type Links = BTreeSet<(NodeId, NodeId)>;

fn all_links() -> Links {
    IDS.iter()
        .flat_map(|&a| IDS.iter().filter(move |&&b| b != a).map(move |&b| (a, b)))
        .collect()
}

fn without(drop: &[(NodeId, NodeId)]) -> Links {
    let mut l = all_links();
    for d in drop {
        l.remove(d);
    }
    l
}

type Cluster = (
    BTreeMap<NodeId, MemTransport>,
    BTreeMap<NodeId, mpsc::Receiver<Message>>,
    BTreeMap<NodeId, mpsc::Sender<Message>>,
);

fn mem_cluster(net: &MemNetwork) -> Cluster {
    let mut ts = BTreeMap::new();
    let mut rxs = BTreeMap::new();
    let mut markers = BTreeMap::new();
    for id in IDS {
        let (tx, rx) = mpsc::channel(64);
        ts.insert(id, net.join(id, tx.clone()));
        rxs.insert(id, rx);
        markers.insert(id, tx);
    }
    (ts, rxs, markers)
}

/// Sends one message on every ordered pair and returns the pairs that delivered.
/// Each receiver's stream is then ended with a marker (from node 0) sent straight to
/// its channel, so the wait is bounded without sleeping.
async fn probe_mem<T: Transport>(
    ts: &BTreeMap<NodeId, T>,
    rxs: &mut BTreeMap<NodeId, mpsc::Receiver<Message>>,
    markers: &BTreeMap<NodeId, mpsc::Sender<Message>>,
) -> Links {
    // Sends first, then the markers: the in-memory transport delivers synchronously.
    for &from in &IDS {
        for &to in IDS.iter().filter(|&&to| to != from) {
            ts[&from].send(to, vec![msg(from, to, 0)]);
        }
    }
    for (&to, m) in markers {
        m.send(msg(0, to, 0)).await.unwrap();
    }
    let mut got = Links::new();
    for (&to, rx) in rxs.iter_mut() {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("probe timed out")
                .expect("inbound closed");
            if m.from == 0 {
                break;
            }
            assert_eq!(m.to, to);
            got.insert((m.from, m.to));
        }
    }
    got
}

#[tokio::test]
async fn memory_transport_delivers_in_order_and_drops_when_full() {
    let net = MemNetwork::new();
    let (tx1, _rx1) = mpsc::channel(4);
    let (tx2, mut rx2) = mpsc::channel(4);
    let t1 = net.join(1, tx1);
    let _t2 = net.join(2, tx2);
    t1.send(2, (0..10).map(|r| msg(1, 2, r)).collect());
    let s = t1.link_stats(2);
    assert_eq!((s.sent, s.dropped), (4, 6));
    for r in 0..4 {
        assert_eq!(rx2.try_recv().unwrap(), msg(1, 2, r));
    }
    assert!(rx2.try_recv().is_err());

    // Unknown and departed nodes drop too.
    t1.send(9, vec![msg(1, 9, 0)]);
    assert_eq!(t1.link_stats(9).dropped, 1);
    net.leave(2);
    t1.send(2, vec![msg(1, 2, 0)]);
    assert_eq!(t1.link_stats(2).dropped, 7);
}

#[tokio::test]
async fn memory_network_faults_drop_exactly_what_they_should() {
    let net = MemNetwork::new();
    let (ts, mut rxs, markers) = mem_cluster(&net);
    let f = net.faults().clone();
    assert_eq!(probe_mem(&ts, &mut rxs, &markers).await, all_links());

    f.block_send(1);
    assert_eq!(
        probe_mem(&ts, &mut rxs, &markers).await,
        without(&[(1, 2), (1, 3)])
    );
    f.heal_node(1);
    f.block_recv(1);
    assert_eq!(
        probe_mem(&ts, &mut rxs, &markers).await,
        without(&[(2, 1), (3, 1)])
    );
    f.heal_node(1);
    f.isolate(1);
    assert_eq!(
        probe_mem(&ts, &mut rxs, &markers).await,
        without(&[(1, 2), (1, 3), (2, 1), (3, 1)])
    );
    f.heal_node(1);
    f.block_direction(1, 2);
    assert_eq!(probe_mem(&ts, &mut rxs, &markers).await, without(&[(1, 2)]));
    f.heal_direction(1, 2);
    f.block_link(2, 3);
    assert_eq!(
        probe_mem(&ts, &mut rxs, &markers).await,
        without(&[(2, 3), (3, 2)])
    );
    f.heal_link(3, 2);
    assert_eq!(probe_mem(&ts, &mut rxs, &markers).await, all_links());

    f.block_send(1);
    f.block_recv(2);
    f.block_direction(3, 1);
    assert_eq!(
        probe_mem(&ts, &mut rxs, &markers).await,
        without(&[(1, 2), (1, 3), (3, 2), (3, 1)])
    );
    f.heal_all();
    assert_eq!(probe_mem(&ts, &mut rxs, &markers).await, all_links());
    assert_eq!(ts[&1].link_stats(2).dropped, 4);
}

#[tokio::test]
async fn faulty_transport_filters_outgoing_traffic() {
    // The wrapper works over any transport; the network underneath has no faults.
    let net = MemNetwork::new();
    let (ts, mut rxs, markers) = mem_cluster(&net);
    let faults = Faults::new();
    let wrapped: BTreeMap<NodeId, FaultyTransport<MemTransport>> = ts
        .into_iter()
        .map(|(id, t)| (id, FaultyTransport::new(id, t, faults.clone())))
        .collect();
    assert_eq!(probe_mem(&wrapped, &mut rxs, &markers).await, all_links());
    faults.block_send(2);
    assert_eq!(
        probe_mem(&wrapped, &mut rxs, &markers).await,
        without(&[(2, 1), (2, 3)])
    );
    assert_eq!(faults.dropped_outgoing(), 2);
    faults.heal_all();
    faults.block_recv(2);
    assert_eq!(
        probe_mem(&wrapped, &mut rxs, &markers).await,
        without(&[(1, 2), (3, 2)])
    );
    faults.heal_all();
    faults.block_direction(3, 2);
    assert_eq!(probe_mem(&wrapped, &mut rxs, &markers).await, without(&[(3, 2)]));
    faults.heal_all();
    assert_eq!(probe_mem(&wrapped, &mut rxs, &markers).await, all_links());
    assert_eq!(wrapped[&1].inner().id(), 1);
}

/// Sends one message from each of nodes 2 and 3 to node 1 and returns the senders
/// whose message got through node 1's inbound filter.
async fn probe_node1(
    ts: &BTreeMap<NodeId, MemTransport>,
    rx: &mut mpsc::Receiver<Message>,
    faults: &Faults,
) -> BTreeSet<NodeId> {
    let dropped_before = faults.dropped_incoming();
    for from in [2, 3] {
        ts[&from].send(1, vec![msg(from, 1, 0)]);
    }
    let mut got = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // Every probe is either delivered or counted as dropped by the filter.
    while got.len() as u64 + (faults.dropped_incoming() - dropped_before) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "probe timed out");
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await {
            got.insert(m.expect("inbound closed").from);
        }
    }
    got
}

#[tokio::test]
async fn inbound_filter_cuts_receiving_without_wrapping_senders() {
    // Only node 1's receiving side knows about the faults (as with remote senders).
    let net = MemNetwork::new();
    let faults = Faults::new();
    let (tx1, mut rx1) = mpsc::channel(64);
    let mut ts = BTreeMap::new();
    ts.insert(1, net.join(1, faults.filter_inbound(tx1, 64)));
    let mut other_rxs = Vec::new();
    for id in [2, 3] {
        let (tx, rx) = mpsc::channel(64);
        ts.insert(id, net.join(id, tx));
        other_rxs.push(rx);
    }
    assert_eq!(probe_node1(&ts, &mut rx1, &faults).await, [2, 3].into());
    faults.block_recv(1);
    assert_eq!(probe_node1(&ts, &mut rx1, &faults).await, [].into());
    assert_eq!(faults.dropped_incoming(), 2);
    faults.heal_node(1);
    faults.block_direction(3, 1);
    assert_eq!(probe_node1(&ts, &mut rx1, &faults).await, [2].into());
    faults.heal_all();
    assert_eq!(probe_node1(&ts, &mut rx1, &faults).await, [2, 3].into());

    // A receive-side filter leaves node 1's sending alone.
    faults.block_send(1);
    ts[&1].send(2, vec![msg(1, 2, 0)]);
    assert_eq!(other_rxs[0].try_recv().unwrap(), msg(1, 2, 0));
    assert!(faults.accept_inbound(&msg(2, 1, 0)));
    assert!(!faults.accept_inbound(&msg(1, 2, 0)));
}
