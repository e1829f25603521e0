//! QUIC transport tests, all on 127.0.0.1 with ephemeral ports. Every wait is bounded
//! by a deadline.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, ConnectionError, Endpoint, VarInt};
use raft::core::{AppendEntries, Entry, EntryPayload, Message, MessageBody, NodeId};
use raft::transport::certs::ClusterCa;
use raft::transport::frame::{FrameCodec, FrameRef, Hello, StreamKind, WIRE_VERSION};
use raft::transport::quic::{CLOSE_BAD_ADDRESS, CLOSE_PROTOCOL, CLOSE_UNAUTHORIZED};
use raft::transport::tls::{crypto_provider, node_server_name, TlsMaterial, ALPN};
use raft::transport::{QuicConfig, QuicTransport, Transport};
use tokio::sync::mpsc;
use tokio_util::codec::Encoder;

const DEADLINE: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn heartbeat(from: NodeId, to: NodeId, round: u64) -> Message {
    Message {
        from,
        to,
        term: 1,
        body: MessageBody::Heartbeat { commit: 0, round },
    }
}

fn round_of(m: &Message) -> u64 {
    match m.body {
        MessageBody::Heartbeat { round, .. } => round,
        MessageBody::HeartbeatResponse { round } => round,
        _ => panic!("unexpected message {m:?}"),
    }
}

fn append(from: NodeId, to: NodeId, index: u64, payload: usize) -> Message {
    Message {
        from,
        to,
        term: 1,
        body: MessageBody::Append(AppendEntries {
            prev_index: index - 1,
            prev_term: 1,
            entries: vec![Entry {
                term: 1,
                index,
                payload: EntryPayload::Normal(Bytes::from(vec![0xAB; payload])),
            }],
            commit: index - 1,
        }),
    }
}

/// Test timings: quick failure detection and short backoff.
fn config(id: NodeId, ca: &ClusterCa) -> QuicConfig {
    let mut c = QuicConfig::new(id, localhost(), ca.node_material(id).unwrap());
    c.connect_timeout = Duration::from_secs(2);
    c.idle_timeout = Duration::from_secs(5);
    c.keep_alive = Duration::from_millis(500);
    c.backoff_max = Duration::from_millis(400);
    c
}

struct Node {
    t: QuicTransport,
    rx: mpsc::Receiver<Message>,
}

fn bind(cfg: QuicConfig) -> Node {
    let (tx, rx) = mpsc::channel(1024);
    Node {
        t: QuicTransport::bind(cfg, tx).unwrap(),
        rx,
    }
}

/// Binds `n` fully meshed nodes with ids 1..=n.
fn mesh(ca: &ClusterCa, n: u64) -> BTreeMap<NodeId, Node> {
    let nodes: BTreeMap<NodeId, Node> = (1..=n).map(|id| (id, bind(config(id, ca)))).collect();
    let addrs: Vec<(NodeId, SocketAddr)> = nodes.iter().map(|(&id, n)| (id, n.t.local_addr())).collect();
    for node in nodes.values() {
        for &(id, addr) in &addrs {
            node.t.set_peer(id, addr);
        }
    }
    nodes
}

/// Receives `n` messages or fails at the deadline.
async fn recv_n(rx: &mut mpsc::Receiver<Message>, n: usize, within: Duration) -> Vec<Message> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m)) => out.push(m),
            Ok(None) => panic!("inbound channel closed after {} messages", out.len()),
            Err(_) => panic!("timed out with {} of {n} messages", out.len()),
        }
    }
    out
}

/// Polls `cond` until it holds, failing at the deadline.
async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Nothing arrives on `rx` for a short while.
async fn assert_silent(rx: &mut mpsc::Receiver<Message>) {
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("unexpected delivery {m:?}");
    }
}

fn assert_in_order(msgs: &[Message], from: NodeId, to: NodeId, n: u64) {
    let rounds: Vec<u64> = msgs
        .iter()
        .filter(|m| m.from == from)
        .map(|m| {
            assert_eq!(m.to, to);
            round_of(m)
        })
        .collect();
    assert_eq!(rounds, (0..n).collect::<Vec<_>>(), "{from} -> {to}");
}

#[tokio::test]
async fn two_nodes_exchange_messages_in_order_both_ways() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut nodes = mesh(&ca, 2);
    const N: u64 = 500;
    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        nodes[&1]
            .t
            .send(2, chunk.iter().map(|&r| heartbeat(1, 2, r)).collect());
        nodes[&2]
            .t
            .send(1, chunk.iter().map(|&r| heartbeat(2, 1, r)).collect());
    }
    let at2 = recv_n(&mut nodes.get_mut(&2).unwrap().rx, N as usize, DEADLINE).await;
    let at1 = recv_n(&mut nodes.get_mut(&1).unwrap().rx, N as usize, DEADLINE).await;
    assert_in_order(&at2, 1, 2, N);
    assert_in_order(&at1, 2, 1, N);

    let s = nodes[&1].t.peer_status(2).unwrap();
    assert!(s.connected);
    assert_eq!((s.sent, s.dropped, s.connects), (N, 0, 1));
    assert_eq!(nodes[&2].t.inbound_stats().received, N);
    assert_eq!(nodes[&2].t.inbound_stats().accepted, 1);
    for node in nodes.values() {
        node.t.shutdown().await;
    }
}

#[tokio::test]
async fn three_nodes_exchange_messages_in_order() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut nodes = mesh(&ca, 3);
    const N: u64 = 200;
    for r in 0..N {
        for from in 1..=3u64 {
            for to in (1..=3u64).filter(|&to| to != from) {
                nodes[&from].t.send(to, vec![heartbeat(from, to, r)]);
            }
        }
    }
    for to in 1..=3u64 {
        let got = recv_n(&mut nodes.get_mut(&to).unwrap().rx, 2 * N as usize, DEADLINE).await;
        for from in (1..=3u64).filter(|&f| f != to) {
            assert_in_order(&got, from, to, N);
        }
    }
    for node in nodes.values() {
        node.t.shutdown().await;
    }
}

/// Rebinds on a fixed port, retrying while the old endpoint still holds it.
async fn rebind(cfg: QuicConfig, tx: mpsc::Sender<Message>) -> QuicTransport {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match QuicTransport::bind(cfg.clone(), tx.clone()) {
            Ok(t) => return t,
            Err(e) => {
                assert!(Instant::now() < deadline, "rebinding failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Sends a numbered heartbeat every 20 ms until one arrives at `rx`.
async fn send_until_delivered(
    t: &QuicTransport,
    from: NodeId,
    to: NodeId,
    rx: &mut mpsc::Receiver<Message>,
) -> Message {
    let deadline = Instant::now() + DEADLINE;
    let mut round = 1_000_000;
    loop {
        t.send(to, vec![heartbeat(from, to, round)]);
        round += 1;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(20), rx.recv()).await {
            return m;
        }
        assert!(Instant::now() < deadline, "{from} -> {to} never delivered");
    }
}

#[tokio::test]
async fn delivery_resumes_after_a_peer_restarts() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut a = bind(config(1, &ca));
    let b_cfg = config(2, &ca).with_peer(1, a.t.local_addr());
    let mut b = bind(b_cfg.clone());
    let b_addr = b.t.local_addr();
    a.t.set_peer(2, b_addr);

    a.t.send(2, vec![heartbeat(1, 2, 0)]);
    b.t.send(1, vec![heartbeat(2, 1, 0)]);
    assert_eq!(round_of(&recv_n(&mut b.rx, 1, DEADLINE).await[0]), 0);
    assert_eq!(round_of(&recv_n(&mut a.rx, 1, DEADLINE).await[0]), 0);

    // Node 2 goes away; messages sent meanwhile are dropped, not buffered forever.
    b.t.shutdown().await;
    drop(b);
    wait_for("node 1 to notice", DEADLINE, || {
        !a.t.peer_status(2).unwrap().connected
    })
    .await;
    for r in 1..100 {
        a.t.send(2, vec![heartbeat(1, 2, r)]);
    }

    // It comes back on the same port with a fresh endpoint.
    let (tx, mut b_rx) = mpsc::channel(1024);
    let b2 = rebind(
        QuicConfig {
            listen: b_addr,
            ..b_cfg
        },
        tx,
    )
    .await;
    let first = send_until_delivered(&a.t, 1, 2, &mut b_rx).await;
    assert_eq!(first.from, 1);
    assert!(a.t.peer_status(2).unwrap().connects >= 2);
    // And the restarted node reaches the survivor too.
    let back = send_until_delivered(&b2, 2, 1, &mut a.rx).await;
    assert_eq!(back.from, 2);

    // Ordered delivery continues on the new connection.
    a.t.send(2, (0..100).map(|r| heartbeat(1, 2, 10_000 + r)).collect());
    let mut tail = Vec::new();
    while tail.len() < 100 {
        // Skip the probes of `send_until_delivered` still in flight.
        let r = round_of(&recv_n(&mut b_rx, 1, DEADLINE).await[0]);
        if (10_000..10_100).contains(&r) {
            tail.push(r);
        }
    }
    assert_eq!(tail, (10_000..10_100).collect::<Vec<_>>());
    a.t.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_quickly_after_a_peer_crashes() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    // Idle timeouts far longer than the test: only stateless resets can reveal the
    // crash in time.
    let mut a_cfg = config(1, &ca);
    a_cfg.idle_timeout = Duration::from_secs(120);
    let mut a = bind(a_cfg);
    let mut b_cfg = config(2, &ca).with_peer(1, a.t.local_addr());
    b_cfg.idle_timeout = Duration::from_secs(120);

    // Node 2 runs on a runtime of its own, so that it can die without a word.
    let b_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut b_rx) = mpsc::channel(1024);
    let b = {
        let _guard = b_rt.enter();
        QuicTransport::bind(b_cfg.clone(), tx).unwrap()
    };
    let b_addr = b.local_addr();
    a.t.set_peer(2, b_addr);
    send_until_delivered(&a.t, 1, 2, &mut b_rx).await;
    send_until_delivered(&b, 2, 1, &mut a.rx).await;

    // Crash: every task of node 2 (endpoint driver included) vanishes, no close is
    // sent, and node 1 still believes its connection is up.
    b_rt.shutdown_background();
    drop(b);
    drop(b_rx);
    assert!(a.t.peer_status(2).unwrap().connected);

    let start = Instant::now();
    let (tx, mut b_rx) = mpsc::channel(1024);
    let b2 = rebind(
        QuicConfig {
            listen: b_addr,
            ..b_cfg
        },
        tx,
    )
    .await;
    send_until_delivered(&a.t, 1, 2, &mut b_rx).await;
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    assert!(a.t.peer_status(2).unwrap().connects >= 2);
    a.t.shutdown().await;
    b2.shutdown().await;
}

/// An address where nothing listens.
fn dead_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test]
async fn a_dead_peer_neither_grows_memory_nor_delays_live_peers() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut cfg = config(1, &ca);
    cfg.queue_capacity = 64;
    cfg.max_batch = 16;
    cfg.connect_timeout = Duration::from_secs(5);
    let a = bind(cfg.with_peer(3, dead_addr()));
    let mut b = bind(config(2, &ca).with_peer(1, a.t.local_addr()));
    a.t.set_peer(2, b.t.local_addr());

    const FLOOD: u64 = 20_000;
    let start = Instant::now();
    for r in 0..FLOOD {
        a.t.send(3, vec![heartbeat(1, 3, r)]);
        if r % 500 == 0 {
            let s = a.t.peer_status(3).unwrap();
            assert!(s.queued <= s.capacity, "{s:?}");
        }
    }
    // The flood did not block the caller.
    assert!(start.elapsed() < Duration::from_secs(5));
    // Delivery to the live peer is not held up by the dial to the dead one (which
    // takes the whole 5 s connect timeout).
    let start = Instant::now();
    a.t.send(2, (0..50).map(|r| heartbeat(1, 2, r)).collect());
    let got = recv_n(&mut b.rx, 50, DEADLINE).await;
    assert_in_order(&got, 1, 2, 50);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "live peer delayed by {:?}",
        start.elapsed()
    );

    let s = a.t.peer_status(3).unwrap();
    assert!(!s.connected);
    assert!(s.queued <= 64, "{s:?}");
    // At most one full queue and one batch are held; the rest was dropped.
    assert!(s.dropped >= FLOOD - 64 - 16, "{s:?}");
    assert_eq!(s.sent, 0);
    assert_eq!(a.t.peer_status(2).unwrap().dropped, 0);
    a.t.shutdown().await;
    b.t.shutdown().await;
}

// ----- hostile peers, driven through a raw quinn client -----

/// A client config presenting `material`'s certificate, without the identity check
/// of `build_tls_configs` (so that it can present anything).
fn raw_client_config(material: &TlsMaterial) -> quinn::ClientConfig {
    let read = |pem: &str| {
        rustls_pemfile::certs(&mut pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in read(&material.ca_pem) {
        roots.add(ca).unwrap();
    }
    let key = rustls_pemfile::private_key(&mut material.key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(read(&material.cert_chain_pem), key)
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
}

async fn raw_connect(
    material: &TlsMaterial,
    server: SocketAddr,
    server_id: NodeId,
) -> (Endpoint, Result<Connection, ConnectionError>) {
    let mut ep = Endpoint::client(localhost()).unwrap();
    ep.set_default_client_config(raw_client_config(material));
    let connecting = ep.connect(server, &node_server_name(server_id)).unwrap();
    let conn = tokio::time::timeout(DEADLINE, connecting)
        .await
        .expect("handshake timed out");
    (ep, conn)
}

/// Opens a stream, writes `bytes` (optionally finishing), and waits for the server to
/// close the connection; returns the close.
async fn write_and_wait_close(conn: &Connection, bytes: &[u8], finish: bool) -> ConnectionError {
    if let Ok(mut s) = conn.open_uni().await {
        let _ = s.write_all(bytes).await;
        if finish {
            let _ = s.finish();
        }
    }
    tokio::time::timeout(DEADLINE, conn.closed())
        .await
        .expect("server did not close the connection")
}

fn app_code(e: &ConnectionError) -> Option<VarInt> {
    match e {
        ConnectionError::ApplicationClosed(c) => Some(c.error_code),
        _ => None,
    }
}

/// A messages stream carrying `frames`.
fn stream_of(frames: &[FrameRef<'_>]) -> Vec<u8> {
    let mut codec = FrameCodec::new(1 << 20);
    let mut buf = BytesMut::new();
    buf.put_u8(StreamKind::Messages.as_byte());
    for &f in frames {
        codec.encode(f, &mut buf).unwrap();
    }
    buf.to_vec()
}

fn frames(msgs: &[Message]) -> Vec<u8> {
    stream_of(&msgs.iter().map(FrameRef::Message).collect::<Vec<_>>())
}

/// Deterministic pseudo-random bytes (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A single node 1 whose peers are 2 and 3 (not running: driven by raw clients).
fn lone_node(ca: &ClusterCa, max_frame_len: usize) -> Node {
    let mut cfg = config(1, ca).with_peer(2, dead_addr()).with_peer(3, dead_addr());
    cfg.max_frame_len = max_frame_len;
    bind(cfg)
}

#[tokio::test]
async fn garbage_closes_that_connection_only() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut a = lone_node(&ca, 1 << 20);
    let m2 = ca.node_material(2).unwrap();

    // Random bytes from the first byte on.
    let (_ep, conn) = raw_connect(&m2, a.t.local_addr(), 1).await;
    let closed = write_and_wait_close(&conn.unwrap(), &noise(7, 4096), true).await;
    assert_eq!(
        app_code(&closed),
        Some(VarInt::from_u32(CLOSE_PROTOCOL)),
        "{closed}"
    );

    // A valid stream kind followed by random bytes.
    let (_ep, conn) = raw_connect(&m2, a.t.local_addr(), 1).await;
    let mut bytes = vec![StreamKind::Messages.as_byte()];
    bytes.extend(noise(11, 4096));
    let closed = write_and_wait_close(&conn.unwrap(), &bytes, true).await;
    assert_eq!(
        app_code(&closed),
        Some(VarInt::from_u32(CLOSE_PROTOCOL)),
        "{closed}"
    );
    assert_eq!(a.t.inbound_stats().protocol_errors, 2);

    // The node still serves a well-behaved peer.
    let b = bind(config(2, &ca).with_peer(1, a.t.local_addr()));
    let got = send_until_delivered(&b.t, 2, 1, &mut a.rx).await;
    assert_eq!(got.from, 2);
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_the_connection() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut a = lone_node(&ca, 1024);
    let (_ep, conn) = raw_connect(&ca.node_material(2).unwrap(), a.t.local_addr(), 1).await;
    let conn = conn.unwrap();
    // A valid message first, then a header announcing 1 MB; the stream stays open,
    // so the rejection comes from the header alone.
    let mut bytes = frames(&[heartbeat(2, 1, 1)]);
    bytes.extend_from_slice(&1_000_000u32.to_be_bytes());
    bytes.extend_from_slice(&[0u8; 512]);
    let closed = write_and_wait_close(&conn, &bytes, false).await;
    assert_eq!(
        app_code(&closed),
        Some(VarInt::from_u32(CLOSE_PROTOCOL)),
        "{closed}"
    );
    let got = recv_n(&mut a.rx, 1, DEADLINE).await;
    assert_eq!(round_of(&got[0]), 1);
    assert_silent(&mut a.rx).await;
    a.t.shutdown().await;
}

#[tokio::test]
async fn an_unknown_frame_version_closes_the_connection() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut a = lone_node(&ca, 1 << 20);
    let (_ep, conn) = raw_connect(&ca.node_material(2).unwrap(), a.t.local_addr(), 1).await;
    // A well-formed message frame whose version byte is bumped.
    let mut bytes = frames(&[heartbeat(2, 1, 5)]);
    assert_eq!(bytes[5], WIRE_VERSION);
    bytes[5] = WIRE_VERSION + 1;
    let closed = write_and_wait_close(&conn.unwrap(), &bytes, false).await;
    assert_eq!(
        app_code(&closed),
        Some(VarInt::from_u32(CLOSE_PROTOCOL)),
        "{closed}"
    );
    assert_silent(&mut a.rx).await;
    a.t.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_delivers_nothing() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let rogue_ca = ClusterCa::generate().unwrap();
    let mut a = lone_node(&ca, 1 << 20);
    // Trusts the real CA (so it accepts node 1) but presents a node-2 certificate
    // issued by another CA.
    let rogue = rogue_ca.issue_node(2).unwrap();
    let material = TlsMaterial {
        ca_pem: ca.cert_pem().to_owned(),
        cert_chain_pem: rogue.cert_pem,
        key_pem: rogue.key_pem,
    };
    let (_ep, conn) = raw_connect(&material, a.t.local_addr(), 1).await;
    // With TLS 1.3 the client may finish its handshake before the server has
    // judged its certificate; either way the connection dies without delivering.
    if let Ok(conn) = conn {
        let closed = write_and_wait_close(&conn, &frames(&[heartbeat(2, 1, 1)]), true).await;
        assert!(matches!(closed, ConnectionError::ConnectionClosed(_)), "{closed}");
    }
    wait_for("the rejection", DEADLINE, || a.t.inbound_stats().rejected == 1).await;
    assert_eq!(a.t.inbound_stats().accepted, 0);
    assert_silent(&mut a.rx).await;

    // A whole transport with the rogue certificate gets nothing through either.
    let mut rogue_cfg = config(2, &ca).with_peer(1, a.t.local_addr());
    rogue_cfg.tls = material;
    let b = bind(rogue_cfg);
    for r in 0..20 {
        b.t.send(1, vec![heartbeat(2, 1, r)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("more rejections", DEADLINE, || a.t.inbound_stats().rejected >= 2).await;
    assert_silent(&mut a.rx).await;
    assert_eq!(a.t.inbound_stats().received, 0);
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test]
async fn a_peer_cannot_speak_for_another_node() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut a = lone_node(&ca, 1 << 20);
    let m3 = ca.node_material(3).unwrap();

    // Node 3's own message goes through; then it claims to be node 2.
    let (_ep, conn) = raw_connect(&m3, a.t.local_addr(), 1).await;
    let bytes = frames(&[heartbeat(3, 1, 1), heartbeat(2, 1, 2), heartbeat(3, 1, 3)]);
    let closed = write_and_wait_close(&conn.unwrap(), &bytes, false).await;
    assert_eq!(
        app_code(&closed),
        Some(VarInt::from_u32(CLOSE_BAD_ADDRESS)),
        "{closed}"
    );
    let got = recv_n(&mut a.rx, 1, DEADLINE).await;
    assert_eq!((got[0].from, round_of(&got[0])), (3, 1));
    assert_silent(&mut a.rx).await;

    // A message addressed to another node is refused the same way.
    let (_ep, conn) = raw_connect(&m3, a.t.local_addr(), 1).await;
    let closed = write_and_wait_close(&conn.unwrap(), &frames(&[heartbeat(3, 2, 1)]), false).await;
    assert_eq!(
        app_code(&closed),
        Some(VarInt::from_u32(CLOSE_BAD_ADDRESS)),
        "{closed}"
    );
    assert_silent(&mut a.rx).await;
    assert_eq!(a.t.inbound_stats().protocol_errors, 2);
    a.t.shutdown().await;
}

#[tokio::test]
async fn the_hello_must_match_the_certificate_and_cluster() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut cfg = config(1, &ca).with_peer(2, dead_addr());
    cfg.cluster_id = Some("alpha".into());
    let mut a = bind(cfg);
    let m2 = ca.node_material(2).unwrap();
    let hello = |node_id, cluster: &str| Hello {
        node_id,
        cluster_id: Some(cluster.into()),
    };
    let m = heartbeat(2, 1, 1);
    let cases = [
        (
            stream_of(&[FrameRef::Hello(&hello(3, "alpha")), FrameRef::Message(&m)]),
            CLOSE_BAD_ADDRESS,
        ),
        (
            stream_of(&[FrameRef::Hello(&hello(2, "beta")), FrameRef::Message(&m)]),
            CLOSE_UNAUTHORIZED,
        ),
        (
            stream_of(&[FrameRef::Message(&m), FrameRef::Hello(&hello(2, "alpha"))]),
            CLOSE_PROTOCOL,
        ),
    ];
    for (i, (bytes, code)) in cases.iter().enumerate() {
        let (_ep, conn) = raw_connect(&m2, a.t.local_addr(), 1).await;
        let closed = write_and_wait_close(&conn.unwrap(), bytes, false).await;
        assert_eq!(
            app_code(&closed),
            Some(VarInt::from_u32(*code)),
            "case {i}: {closed}"
        );
    }
    // Only the third case's message, sent before its misplaced hello, got through.
    let got = recv_n(&mut a.rx, 1, DEADLINE).await;
    assert_eq!(got[0], m);
    assert_silent(&mut a.rx).await;

    // A matching hello is fine.
    let (_ep, conn) = raw_connect(&m2, a.t.local_addr(), 1).await;
    let conn = conn.unwrap();
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&stream_of(&[
        FrameRef::Hello(&hello(2, "alpha")),
        FrameRef::Message(&m),
    ]))
    .await
    .unwrap();
    assert_eq!(recv_n(&mut a.rx, 1, DEADLINE).await[0], m);
    assert_eq!(a.t.inbound_stats().protocol_errors, 3);
    a.t.shutdown().await;
}

#[tokio::test]
async fn a_node_outside_the_peer_set_is_rejected() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut a = lone_node(&ca, 1 << 20);
    let (_ep, conn) = raw_connect(&ca.node_material(99).unwrap(), a.t.local_addr(), 1).await;
    let closed = write_and_wait_close(&conn.unwrap(), &frames(&[heartbeat(99, 1, 1)]), true).await;
    assert_eq!(
        app_code(&closed),
        Some(VarInt::from_u32(CLOSE_UNAUTHORIZED)),
        "{closed}"
    );
    // A certificate of the cluster CA naming no node at all is rejected too.
    let anon = ca
        .issue_for_names("anonymous", vec!["example.com".into()])
        .unwrap();
    let (_ep, conn) = raw_connect(&ca.tls_material(&anon), a.t.local_addr(), 1).await;
    let closed = write_and_wait_close(&conn.unwrap(), &frames(&[heartbeat(2, 1, 1)]), true).await;
    assert_eq!(
        app_code(&closed),
        Some(VarInt::from_u32(CLOSE_UNAUTHORIZED)),
        "{closed}"
    );
    assert_eq!(a.t.inbound_stats().rejected, 2);
    assert_eq!(a.t.inbound_stats().accepted, 0);
    assert_silent(&mut a.rx).await;
    a.t.shutdown().await;
}

#[tokio::test]
async fn the_dialer_verifies_it_reached_the_intended_node() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    // Node 3 is up and would accept node 1; node 1 believes node 2 lives there.
    let mut c = bind(config(3, &ca));
    let a = bind(config(1, &ca).with_peer(2, c.t.local_addr()));
    c.t.set_peer(1, a.t.local_addr());
    for r in 0..20 {
        a.t.send(2, vec![heartbeat(1, 2, r)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("node 3 to refuse the handshake", DEADLINE, || {
        c.t.inbound_stats().rejected >= 1
    })
    .await;
    let s = a.t.peer_status(2).unwrap();
    assert_eq!((s.connects, s.sent), (0, 0), "{s:?}");
    assert!(s.dropped > 0);
    assert_silent(&mut c.rx).await;
    a.t.shutdown().await;
    c.t.shutdown().await;
}

#[tokio::test]
async fn peers_can_move_and_be_removed() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut a = bind(config(1, &ca));
    let b = bind(config(2, &ca).with_peer(1, a.t.local_addr()));
    a.t.set_peer(2, b.t.local_addr());
    send_until_delivered(&b.t, 2, 1, &mut a.rx).await;

    // Node 2 reappears elsewhere; node 1 is told its new address.
    b.t.shutdown().await;
    drop(b);
    let (tx, mut b_rx) = mpsc::channel(64);
    let b2 = QuicTransport::bind(config(2, &ca).with_peer(1, a.t.local_addr()), tx).unwrap();
    a.t.set_peer(2, b2.local_addr());
    assert_eq!(a.t.peer_status(2).unwrap().addr, b2.local_addr());
    send_until_delivered(&a.t, 1, 2, &mut b_rx).await;
    send_until_delivered(&b2, 2, 1, &mut a.rx).await;

    // Once removed, node 2 can no longer deliver and node 1 no longer sends to it.
    a.t.remove_peer(2);
    assert!(a.t.peer_status(2).is_none());
    let rejected = a.t.inbound_stats().rejected;
    for r in 0..20 {
        b2.send(1, vec![heartbeat(2, 1, r)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("node 2 to be refused", DEADLINE, || {
        a.t.inbound_stats().rejected > rejected
    })
    .await;
    // Drain what was in flight before the removal took effect, then expect silence.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), a.rx.recv()).await {}
    for r in 0..5 {
        b2.send(1, vec![heartbeat(2, 1, 100 + r)]);
    }
    assert_silent(&mut a.rx).await;
    a.t.send(2, vec![heartbeat(1, 2, 0)]);
    assert_eq!(a.t.unknown_peer_dropped(), 1);
    a.t.shutdown().await;
    b2.shutdown().await;
}

/// A joining node knows no peer. With `accept_unknown_peers` it accepts any node the
/// cluster CA certified and answers it at the address it connected from; a node it
/// removed stays refused until named again; another CA's certificate never passes.
#[tokio::test]
async fn a_node_accepting_unknown_peers_answers_them_where_they_dial_from() {
    init_tracing();
    let ca = ClusterCa::generate().unwrap();
    let mut joiner_cfg = config(4, &ca);
    joiner_cfg.accept_unknown_peers = true;
    let mut joiner = bind(joiner_cfg);
    let mut leader = bind(config(1, &ca).with_peer(4, joiner.t.local_addr()));
    let m = send_until_delivered(&leader.t, 1, 4, &mut joiner.rx).await;
    assert_eq!(m.from, 1);
    let learned = joiner.t.peer_status(1).expect("node 1 became a peer");
    assert_eq!(
        learned.addr,
        leader.t.local_addr(),
        "dialed back where it came from"
    );
    send_until_delivered(&joiner.t, 4, 1, &mut leader.rx).await;

    // Through the trait (as the sidecar does), with the configuration's address.
    let moved = bind(config(1, &ca));
    Transport::set_peer(
        &joiner.t,
        1,
        &raft::core::NodeAddr {
            raft: moved.t.local_addr().to_string(),
            client: String::new(),
        },
    );
    assert_eq!(joiner.t.peer_status(1).unwrap().addr, moved.t.local_addr());
    Transport::set_peer(&joiner.t, 1, &raft::core::NodeAddr::default());
    assert_eq!(
        joiner.t.peer_status(1).unwrap().addr,
        moved.t.local_addr(),
        "no address in the configuration: keep the one known"
    );
    moved.t.shutdown().await;

    // Removed: refused, even though unknown peers are otherwise welcome.
    Transport::remove_peer(&joiner.t, 1);
    let rejected = joiner.t.inbound_stats().rejected;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), joiner.rx.recv()).await {}
    for r in 0..20 {
        leader.t.send(4, vec![heartbeat(1, 4, r)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("node 1 to be refused", DEADLINE, || {
        joiner.t.inbound_stats().rejected > rejected
    })
    .await;
    assert_silent(&mut joiner.rx).await;
    assert!(joiner.t.peer_status(1).is_none());
    // Named again: welcome again.
    joiner.t.set_peer(1, leader.t.local_addr());
    send_until_delivered(&leader.t, 1, 4, &mut joiner.rx).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), joiner.rx.recv()).await {}

    // A certificate from another CA is refused during the handshake.
    let rejected = joiner.t.inbound_stats().rejected;
    let other = ClusterCa::generate().unwrap();
    let mut material = other.node_material(7).unwrap();
    material.ca_pem = ca.node_material(7).unwrap().ca_pem;
    let (_ep, conn) = raw_connect(&material, joiner.t.local_addr(), 4).await;
    if let Ok(conn) = conn {
        let closed = write_and_wait_close(&conn, &frames(&[heartbeat(7, 4, 1)]), true).await;
        println!("foreign certificate: {closed}");
    }
    wait_for("the foreign certificate to be refused", DEADLINE, || {
        joiner.t.inbound_stats().rejected > rejected
    })
    .await;
    assert!(joiner.t.peer_status(7).is_none());
    assert_silent(&mut joiner.rx).await;
    leader.t.shutdown().await;
    joiner.t.shutdown().await;
}

// ----- measurements (run with `cargo test -p raft --test transport_quic -- --ignored --nocapture`) -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn measure_throughput_and_latency() {
    let ca = ClusterCa::generate().unwrap();
    let mut cfg1 = config(1, &ca);
    cfg1.queue_capacity = 8192;
    let (tx1, mut rx1) = mpsc::channel(8192);
    let a = QuicTransport::bind(cfg1, tx1).unwrap();
    let (tx2, mut rx2) = mpsc::channel(8192);
    let b = Arc::new(QuicTransport::bind(config(2, &ca).with_peer(1, a.local_addr()), tx2).unwrap());
    a.set_peer(2, b.local_addr());

    // Warm up the connection.
    a.send(2, vec![append(1, 2, 1, 100)]);
    recv_n(&mut rx2, 1, DEADLINE).await;

    // Throughput: 100-byte Append messages, keeping at most half a queue in flight.
    const N: u64 = 200_000;
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = counter.clone();
    let receiver = tokio::spawn(async move {
        let mut n = 0u64;
        while n < N {
            match rx2.recv().await {
                Some(_) => {
                    n += 1;
                    c.store(n, std::sync::atomic::Ordering::Relaxed);
                }
                None => break,
            }
        }
        rx2
    });
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < N {
        let done = counter.load(std::sync::atomic::Ordering::Relaxed);
        if sent - done > 4096 {
            tokio::task::yield_now().await;
            continue;
        }
        let k = 256.min(N - sent);
        a.send(2, (0..k).map(|i| append(1, 2, sent + i + 2, 100)).collect());
        sent += k;
    }
    let mut rx2 = tokio::time::timeout(Duration::from_secs(120), receiver)
        .await
        .expect("throughput run timed out")
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let dropped = a.peer_status(2).unwrap().dropped;
    println!(
        "throughput: {N} Append(100 B) messages in {secs:.2} s = {:.0} msg/s ({dropped} dropped)",
        N as f64 / secs
    );

    // Round trips: 1 -> 2 heartbeat, 2 -> 1 response.
    let echo_b = b.clone();
    let echo = tokio::spawn(async move {
        while let Some(m) = rx2.recv().await {
            if let MessageBody::Heartbeat { round, .. } = m.body {
                echo_b.send(
                    1,
                    vec![Message {
                        from: 2,
                        to: 1,
                        term: 1,
                        body: MessageBody::HeartbeatResponse { round },
                    }],
                );
            }
        }
    });
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for round in 0..2000u64 {
        let t0 = Instant::now();
        a.send(2, vec![heartbeat(1, 2, round)]);
        loop {
            let m = tokio::time::timeout(DEADLINE, rx1.recv())
                .await
                .expect("echo timed out")
                .unwrap();
            if round_of(&m) == round {
                break;
            }
        }
        if round >= 100 {
            hist.record(t0.elapsed().as_micros() as u64).unwrap();
        }
    }
    println!(
        "round trip: p50 {} us, p90 {} us, p99 {} us, max {} us over {} samples",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.9),
        hist.value_at_quantile(0.99),
        hist.max(),
        hist.len()
    );
    echo.abort();
    a.shutdown().await;
    b.shutdown().await;
}
