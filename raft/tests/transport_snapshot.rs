//! Snapshot transfers through the transports: the in-memory network and real QUIC on
//! 127.0.0.1 (ephemeral ports, mutual TLS). Every wait is bounded by a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft::core::{Message, MessageBody, NodeId};
use raft::transport::certs::ClusterCa;
use raft::transport::{
    Faults, FaultyTransport, IncomingSnapshot, MemNetwork, OutgoingSnapshot, QuicConfig, QuicTransport,
    SnapshotSendError, Transport,
};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(20);

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Feeds `bytes` in `chunk`-sized pieces, stopping after `stop_after` bytes if given.
fn source(bytes: Vec<u8>, chunk: usize, stop_after: Option<usize>) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let bytes = Bytes::from(bytes);
        let end = stop_after.unwrap_or(bytes.len()).min(bytes.len());
        let mut at = 0;
        while at < end {
            let n = chunk.min(end - at);
            if tx.send(bytes.slice(at..at + n)).await.is_err() {
                return;
            }
            at += n;
        }
    });
    rx
}

/// What a receiver saw.
#[derive(Debug)]
struct Received {
    from: NodeId,
    term: u64,
    len: u64,
    bytes: Vec<u8>,
}

/// Plays the receiving sidecar: collects one transfer and answers with `verdict`
/// (or nothing if the transfer broke).
async fn receive_one(
    inbox: &mut mpsc::Receiver<IncomingSnapshot>,
    verdict: Result<(), String>,
) -> Result<Received, Received> {
    let inc = tokio::time::timeout(DEADLINE, inbox.recv())
        .await
        .expect("a transfer arrives")
        .expect("inbox open");
    let IncomingSnapshot {
        from,
        term,
        len,
        mut chunks,
        reply,
    } = inc;
    let mut bytes = Vec::new();
    while let Some(c) = tokio::time::timeout(DEADLINE, chunks.recv())
        .await
        .expect("chunks flow")
    {
        bytes.extend_from_slice(&c);
    }
    let r = Received {
        from,
        term,
        len,
        bytes,
    };
    if r.bytes.len() as u64 == len {
        let _ = reply.send(verdict);
        Ok(r)
    } else {
        Err(r)
    }
}

#[tokio::test]
async fn memory_a_snapshot_arrives_whole_and_the_verdict_returns() {
    let net = MemNetwork::new();
    let (tx1, _rx1) = mpsc::channel(16);
    let (tx2, _rx2) = mpsc::channel(16);
    let t1 = net.join(1, tx1);
    let t2 = net.join(2, tx2);
    let mut inbox = t2.take_snapshot_inbox().expect("inbox");
    assert!(t2.take_snapshot_inbox().is_none(), "the inbox is taken once");
    let bytes = data(3_000_000);
    let send = t1.send_snapshot(
        2,
        OutgoingSnapshot {
            term: 7,
            len: bytes.len() as u64,
            chunks: source(bytes.clone(), 65_536, None),
        },
    );
    let (sent, got) = tokio::join!(send, receive_one(&mut inbox, Ok(())));
    sent.expect("accepted");
    let got = got.expect("complete");
    assert_eq!((got.from, got.term, got.len), (1, 7, bytes.len() as u64));
    assert!(got.bytes == bytes, "bytes arrive intact and in order");

    // A refusal comes back as such.
    let send = t1.send_snapshot(
        2,
        OutgoingSnapshot {
            term: 7,
            len: 10,
            chunks: source(data(10), 3, None),
        },
    );
    let (sent, _) = tokio::join!(send, receive_one(&mut inbox, Err("stale".into())));
    assert_eq!(sent, Err(SnapshotSendError::Rejected("stale".into())));
}

#[tokio::test]
async fn memory_a_link_cut_mid_transfer_fails_it_on_both_sides() {
    let faults = Faults::new();
    let net = MemNetwork::with_faults(faults.clone());
    let (tx1, _rx1) = mpsc::channel(16);
    let (tx2, _rx2) = mpsc::channel(16);
    let t1 = FaultyTransport::new(1, net.join(1, tx1), faults.clone());
    let t2 = net.join(2, tx2);
    let mut inbox = t2.take_snapshot_inbox().expect("inbox");
    faults.cut_link_during_snapshot(1, 2, 100_000);
    let bytes = data(1_000_000);
    let send = t1.send_snapshot(
        2,
        OutgoingSnapshot {
            term: 1,
            len: bytes.len() as u64,
            chunks: source(bytes.clone(), 10_000, None),
        },
    );
    let (sent, got) = tokio::join!(send, receive_one(&mut inbox, Ok(())));
    assert!(sent.is_err(), "the transfer fails: {sent:?}");
    let got = got.expect_err("the receiver sees a short transfer");
    assert!(got.bytes.len() <= 100_000, "{} bytes passed", got.bytes.len());
    assert!(!faults.allows(1, 2) && !faults.allows(2, 1), "the link is cut");

    // While cut, a new transfer fails at once; after healing it goes through.
    let r = t1
        .send_snapshot(
            2,
            OutgoingSnapshot {
                term: 1,
                len: 10,
                chunks: source(data(10), 10, None),
            },
        )
        .await;
    assert_eq!(r, Err(SnapshotSendError::LinkDown));
    faults.heal_all();
    let send = t1.send_snapshot(
        2,
        OutgoingSnapshot {
            term: 1,
            len: bytes.len() as u64,
            chunks: source(bytes.clone(), 10_000, None),
        },
    );
    let (sent, got) = tokio::join!(send, receive_one(&mut inbox, Ok(())));
    sent.expect("retry succeeds");
    assert!(got.expect("complete").bytes == bytes);
}

fn quic_pair(
    ca: &ClusterCa,
    max_frame_len: usize,
) -> (QuicTransport, QuicTransport, mpsc::Receiver<Message>) {
    let cfg = |id: NodeId| {
        let mut c = QuicConfig::new(
            id,
            "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
            ca.node_material(id).unwrap(),
        );
        c.connect_timeout = Duration::from_secs(2);
        c.max_frame_len = max_frame_len;
        c
    };
    let (tx1, _rx1) = mpsc::channel(1024);
    let (tx2, rx2) = mpsc::channel(1024);
    let t1 = QuicTransport::bind(cfg(1), tx1).unwrap();
    let t2 = QuicTransport::bind(cfg(2), tx2).unwrap();
    t1.set_peer(2, t2.local_addr());
    t2.set_peer(1, t1.local_addr());
    (t1, t2, rx2)
}

fn heartbeat(round: u64) -> Message {
    Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::Heartbeat { commit: 0, round },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_a_snapshot_streams_beside_heartbeats_and_is_acknowledged() {
    let ca = ClusterCa::generate().unwrap();
    // A small frame limit forces the transport to split the source's 1 MiB chunks.
    let (t1, t2, mut rx2) = quic_pair(&ca, 256 * 1024);
    let t1 = Arc::new(t1);
    let mut inbox = t2.take_snapshot_inbox().expect("inbox");
    // The snapshot waits for the message connection, which heartbeats open.
    t1.send(2, vec![heartbeat(0)]);
    let bytes = data(8 * 1024 * 1024);
    let send = t1.send_snapshot(
        2,
        OutgoingSnapshot {
            term: 3,
            len: bytes.len() as u64,
            chunks: source(bytes.clone(), 1 << 20, None),
        },
    );
    // Heartbeats sent during the transfer still arrive.
    let beats = {
        let t1 = t1.clone();
        tokio::spawn(async move {
            for round in 1..=20 {
                t1.send(2, vec![heartbeat(round)]);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let (sent, got) = tokio::join!(send, receive_one(&mut inbox, Ok(())));
    sent.expect("acknowledged");
    let got = got.expect("complete");
    assert_eq!((got.from, got.term), (1, 3));
    assert!(got.bytes == bytes, "bytes arrive intact");
    beats.await.unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut rounds = Vec::new();
    while rounds.last() != Some(&20) {
        let m = tokio::time::timeout_at(deadline, rx2.recv())
            .await
            .expect("heartbeats arrive")
            .unwrap();
        if let MessageBody::Heartbeat { round, .. } = m.body {
            rounds.push(round);
        }
    }
    assert!(rounds.windows(2).all(|w| w[0] < w[1]), "in order: {rounds:?}");
    t1.shutdown().await;
    t2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_refusals_and_short_sources_fail_the_transfer() {
    let ca = ClusterCa::generate().unwrap();
    let (t1, t2, _rx2) = quic_pair(&ca, 1 << 20);
    let mut inbox = t2.take_snapshot_inbox().expect("inbox");
    t1.send(2, vec![heartbeat(0)]);

    let send = t1.send_snapshot(
        2,
        OutgoingSnapshot {
            term: 1,
            len: 50_000,
            chunks: source(data(50_000), 4096, None),
        },
    );
    let (sent, _) = tokio::join!(send, receive_one(&mut inbox, Err("checksum mismatch".into())));
    assert_eq!(sent, Err(SnapshotSendError::Rejected("checksum mismatch".into())));

    // The local file ends early: the sender fails (resetting the stream, so the
    // receiver may or may not have seen its start) and a complete transfer that
    // follows is the only one the receiver sees whole.
    let r = t1
        .send_snapshot(
            2,
            OutgoingSnapshot {
                term: 1,
                len: 50_000,
                chunks: source(data(50_000), 4096, Some(20_000)),
            },
        )
        .await;
    assert_eq!(r, Err(SnapshotSendError::Source));
    let send = t1.send_snapshot(
        2,
        OutgoingSnapshot {
            term: 2,
            len: 50_000,
            chunks: source(data(50_000), 4096, None),
        },
    );
    let receive = async {
        loop {
            match receive_one(&mut inbox, Ok(())).await {
                Ok(got) => return got,
                Err(short) => assert!(short.bytes.len() < 50_000),
            }
        }
    };
    let (sent, got) = tokio::join!(send, receive);
    sent.expect("the complete transfer is acknowledged");
    assert_eq!(got.term, 2, "the short transfer was never complete");

    // An unknown peer is refused at once.
    let r = t1
        .send_snapshot(
            9,
            OutgoingSnapshot {
                term: 1,
                len: 1,
                chunks: source(data(1), 1, None),
            },
        )
        .await;
    assert!(matches!(r, Err(SnapshotSendError::Unreachable(_))), "{r:?}");
    t1.shutdown().await;
    t2.shutdown().await;
}
