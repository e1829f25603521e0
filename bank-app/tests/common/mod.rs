//! Shared harness: in-process clusters of Raft sidecars (in-memory network and stores),
//! each node with a `BankReplica` and a `BankServer` on a loopback UDP port, and raw
//! client-channel helpers for the bad-input tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bank_app::client::ClientConfig;
use bank_app::protocol::{
    encode_frame, read_frame, ClientFrame, FrameError, Hello, ServerFrame, CLIENT_SERVER_NAME,
};
use bank_app::server::{BankServer, ServerConfig};
use bank_app::{Bank, BankConfig, BankReplica};
use raft::core::{Membership, NodeAddr, NodeId};
use raft::sidecar::{RaftHandle, Sidecar, SidecarConfig};
use raft::storage::MemStore;
use raft::transport::certs::ClusterCa;
use raft::transport::fault::{Faults, FaultyTransport};
use raft::transport::memory::MemNetwork;
use tokio::sync::mpsc;

/// Bound for every wait in these tests.
pub const T: Duration = Duration::from_secs(15);

/// Wait for `cond` with a deadline, polling every 10 ms.
pub async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut cond: F) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One node: sidecar, bank and client channel, on a runtime of its own (dropping the
/// runtime kills the node abruptly, like kill -9).
pub struct Node {
    pub id: NodeId,
    pub raft: RaftHandle,
    pub bank: BankReplica,
    pub server: BankServer,
    pub addr: SocketAddr,
    pub runtime: Option<tokio::runtime::Runtime>,
}

pub struct TestCluster {
    pub nodes: BTreeMap<NodeId, Node>,
    pub ca: ClusterCa,
    pub faults: Arc<Faults>,
    pub token: Option<String>,
}

fn node_runtime(id: NodeId) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("node-{id}"))
        .enable_all()
        .build()
        .expect("node runtime")
}

async fn on_runtime<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> T {
    rt.spawn(fut).await.expect("task on node runtime")
}

/// A free loopback UDP port (the socket is released again; the server binds it).
fn reserve_udp() -> SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.local_addr().expect("addr")
}

fn sidecar_config(id: NodeId, membership: &Membership) -> SidecarConfig {
    let mut cfg = SidecarConfig::new(id);
    cfg.tick = Duration::from_millis(5);
    cfg.heartbeat_ticks = 5;
    cfg.election_ticks = 30;
    cfg.propose_timeout = Duration::from_secs(3);
    cfg.read_timeout = Duration::from_secs(3);
    cfg.bootstrap = Some(membership.clone());
    cfg
}

impl TestCluster {
    /// `n` nodes without a client token.
    pub async fn start(n: u64) -> TestCluster {
        Self::start_with_token(n, None).await
    }

    /// `n` nodes whose client channels require `token`.
    pub async fn start_with_token(n: u64, token: Option<&str>) -> TestCluster {
        Self::start_with(n, token, BankConfig::default()).await
    }

    /// `n` nodes with a client token (or none) and banks configured with `bank_config`.
    pub async fn start_with(n: u64, token: Option<&str>, bank_config: BankConfig) -> TestCluster {
        let ca = ClusterCa::generate().expect("ca");
        let faults = Faults::new();
        let net = MemNetwork::with_faults(faults.clone());
        let addrs: BTreeMap<NodeId, SocketAddr> = (1..=n).map(|id| (id, reserve_udp())).collect();
        let mut membership = Membership::with_voters(1..=n);
        for (&id, addr) in &addrs {
            membership.addrs.insert(
                id,
                NodeAddr {
                    raft: format!("mem-{id}"),
                    client: addr.to_string(),
                },
            );
        }
        let mut nodes = BTreeMap::new();
        for (&id, &addr) in &addrs {
            let rt = node_runtime(id);
            let (tx, rx) = mpsc::channel(4096);
            let transport = Arc::new(FaultyTransport::new(id, net.join(id, tx), faults.clone()));
            let bank = BankReplica::new(Bank::with_config(bank_config).expect("valid bank config"));
            let cert = ca.issue_node(id).expect("node cert");
            let mut cfg = ServerConfig::new(addr, cert.cert_pem, cert.key_pem, ca.cert_pem().to_string());
            cfg.token = token.map(str::to_string);
            let scfg = sidecar_config(id, &membership);
            let sm = bank.clone();
            let b = bank.clone();
            let (raft, server) = on_runtime(&rt, async move {
                let raft = Sidecar::start(scfg, MemStore::new(), transport, rx, sm)
                    .await
                    .expect("sidecar starts");
                let server = BankServer::start(cfg, raft.clone(), b)
                    .await
                    .expect("bank server starts");
                (raft, server)
            })
            .await;
            assert_eq!(server.local_addr(), addr);
            nodes.insert(
                id,
                Node {
                    id,
                    raft,
                    bank,
                    server,
                    addr,
                    runtime: Some(rt),
                },
            );
        }
        TestCluster {
            nodes,
            ca,
            faults,
            token: token.map(str::to_string),
        }
    }

    /// Every node's client channel address, in node order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.values().map(|n| n.addr).collect()
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    /// A client configuration for `nodes` with the cluster's CA and token and short
    /// timeouts, so that failover tests finish quickly.
    pub fn client_config(&self, nodes: Vec<SocketAddr>) -> ClientConfig {
        let mut cfg = ClientConfig::new(nodes, self.ca.cert_pem().to_string());
        cfg.token = self.token.clone();
        cfg.request_timeout = Duration::from_millis(1500);
        cfg.connect_timeout = Duration::from_millis(1000);
        cfg.total_timeout = Duration::from_secs(12);
        cfg
    }

    /// Wait until exactly one live node leads and every live node agrees on it.
    pub async fn wait_leader(&self) -> NodeId {
        let mut found = 0;
        wait_for("a leader everyone agrees on", T, || {
            let live: Vec<&Node> = self.nodes.values().filter(|n| n.runtime.is_some()).collect();
            let leaders: Vec<NodeId> = live.iter().filter(|n| n.raft.is_leader()).map(|n| n.id).collect();
            if leaders.len() != 1 {
                return false;
            }
            found = leaders[0];
            live.iter().all(|n| n.raft.leader().leader == Some(found))
        })
        .await;
        found
    }

    /// Some node other than `leader`.
    pub fn follower_of(&self, leader: NodeId) -> NodeId {
        *self.nodes.keys().find(|&&id| id != leader).expect("a follower")
    }

    /// Kill a node abruptly: its runtime (sidecar and client channel) is dropped.
    pub fn kill(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.get_mut(&id) {
            if let Some(rt) = node.runtime.take() {
                rt.shutdown_background();
            }
        }
    }

    /// Wait until every live node's bank has applied at least `index`.
    pub async fn wait_applied(&self, index: u64) {
        wait_for(&format!("every node to apply {index}"), T, || {
            self.nodes
                .values()
                .filter(|n| n.runtime.is_some())
                .all(|n| n.bank.read().applied_index() >= index)
        })
        .await;
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(rt) = node.runtime.take() {
                rt.shutdown_background();
            }
        }
    }
}

// ----- raw access to the client channel -----

/// A QUIC endpoint and connection to `addr` that has said hello (with `token`) but no
/// more; returns the connection and the node's answer to the hello.
pub async fn raw_connect(
    addr: SocketAddr,
    ca_pem: &str,
    token: Option<&str>,
) -> (quinn::Endpoint, quinn::Connection, ServerFrame) {
    let (endpoint, conn) = raw_dial(addr, ca_pem).await;
    let hello = ClientFrame::Hello(Hello {
        token: token.map(str::to_string),
        client: "raw-test".into(),
    });
    let bytes = encode_frame(&hello, 1 << 20).expect("encode hello");
    let answer = raw_exchange(&conn, &bytes).await.expect("an answer to the hello");
    (endpoint, conn, answer)
}

/// A QUIC connection to `addr` that has not said anything yet.
pub async fn raw_dial(addr: SocketAddr, ca_pem: &str) -> (quinn::Endpoint, quinn::Connection) {
    let tls = bank_app::tls::client_config(ca_pem).expect("client tls");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic crypto");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = tokio::time::timeout(T, endpoint.connect(addr, CLIENT_SERVER_NAME).expect("connect"))
        .await
        .expect("connect in time")
        .expect("connected");
    (endpoint, conn)
}

/// Opens a stream, writes `bytes` as they are, finishes, and reads one server frame.
pub async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<ServerFrame, FrameError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| FrameError::Io(e.into()))?;
    // The node may stop our side early (oversized frame): read the reply regardless.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    tokio::time::timeout(T, read_frame::<ServerFrame, _>(&mut recv, 1 << 20))
        .await
        .expect("an answer in time")
}

/// A length prefix followed by `body`, exactly as given.
pub fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}
