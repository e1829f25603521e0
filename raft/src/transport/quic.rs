//! The QUIC peer transport, authenticated with mutual TLS.
//!
//! One [`QuicTransport`] per node binds one UDP endpoint that both accepts peers'
//! connections and dials peers.
//!
//! **Outbound.** Each peer has a bounded queue ([`QuicConfig::queue_capacity`]) and a
//! task. [`Transport::send`] only pushes to the queue, dropping (and counting) what
//! does not fit. The task dials lazily, when there is something to send, verifying
//! that the server's certificate names the intended node, then opens one long-lived
//! unidirectional stream of kind [`StreamKind::Messages`] and writes every queued
//! message to it in order, in batches (drain the queue, write the frames, flush). When
//! the connection breaks or cannot be made, the task drops what it holds and dials
//! again when new messages arrive, backing off exponentially between failed attempts
//! ([`QuicConfig::backoff_initial`] to [`QuicConfig::backoff_max`]). Raft retransmits,
//! so dropped messages are harmless.
//!
//! **Inbound.** Each accepted connection is authenticated before any stream is
//! read: the peer's certificate (already chained to the cluster CA by rustls) must
//! name a node of the current peer set (or, with [`QuicConfig::accept_unknown_peers`],
//! any node not removed with [`QuicTransport::remove_peer`]; such a node is then dialed
//! back at the address it connected from until told otherwise). Every frame's `Message::from` must be that
//! node and `Message::to` must be us. Any violation, or undecodable, oversized or
//! unknown-version frames, closes that connection (with a `tracing::warn!` line);
//! the endpoint keeps serving everyone else. Accepted messages go to the `inbound`
//! channel given to [`QuicTransport::bind`]; a full channel back-pressures the
//! stream (and so, through QUIC flow control, that sender only).
//!
//! **Snapshots.** [`Transport::send_snapshot`] opens a bidirectional stream of kind
//! [`StreamKind::Snapshot`] on the peer's current connection (waiting up to the
//! connect timeout for the message task to dial it), at a lower priority than the
//! message stream so that heartbeats go first, and streams the file's chunks in frames
//! of at most the maximum frame length; the receiver hands them to the snapshot inbox
//! ([`Transport::take_snapshot_inbox`]) and answers with an acknowledgement once its
//! sidecar has accepted or refused the snapshot. At most
//! [`MAX_INBOUND_SNAPSHOT_STREAMS`] snapshot streams per connection are open at once;
//! one the inbox has no room for is refused as busy.
//!
//! Each stream starts with a kind byte ([`StreamKind`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::frame::{
    Frame, FrameCodec, FrameError, FrameRef, Hello, SnapshotAck, SnapshotHeader, StreamKind,
    DEFAULT_MAX_FRAME_LEN, SNAPSHOT_CHUNK_OVERHEAD,
};
use super::snapshot::{
    failed, IncomingSnapshot, OutgoingSnapshot, SnapshotSend, SnapshotSendError, SNAPSHOT_CHUNKS_IN_FLIGHT,
};
use super::tls::{build_tls_configs, node_id_from_cert, node_server_name, TlsError, TlsMaterial};
use super::Transport;
use crate::core::{Message, NodeAddr, NodeId};

/// Application close code: the node is shutting down or the peer was removed.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// Application close code: the peer's certificate names no node of the peer set.
pub const CLOSE_UNAUTHORIZED: u32 = 1;
/// Application close code: undecodable, oversized or unknown-version data.
pub const CLOSE_PROTOCOL: u32 = 2;
/// Application close code: a message claimed a sender or recipient other than the
/// authenticated peer and us.
pub const CLOSE_BAD_ADDRESS: u32 = 3;

/// How long a connection must have lived for the reconnect backoff to start over.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);
/// At most this many streams may be open from one peer at once.
const MAX_INBOUND_STREAMS: u32 = 8;
/// At most this many snapshot streams may be open from one peer at once.
pub const MAX_INBOUND_SNAPSHOT_STREAMS: u32 = 2;
/// Snapshot transfers waiting for the sidecar before more are refused as busy.
const SNAPSHOT_INBOX: usize = 2;
/// How long a snapshot's sender waits for the receiver's verdict after the last byte
/// (the receiver installs the snapshot before it answers).
const SNAPSHOT_ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// Configuration of a [`QuicTransport`].
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// This node's id; its certificate must name it.
    pub node_id: NodeId,
    /// The UDP address to bind (port 0 picks a free port; see
    /// [`QuicTransport::local_addr`]).
    pub listen: SocketAddr,
    /// The peers: who may connect to us, and where to dial them.
    pub peers: HashMap<NodeId, SocketAddr>,
    /// Cluster CA, node certificate chain and key, PEM.
    pub tls: TlsMaterial,
    /// Sent in the hello; a peer whose hello names another cluster is rejected.
    pub cluster_id: Option<String>,
    /// The largest frame accepted or sent (default 16 MiB).
    pub max_frame_len: usize,
    /// Messages queued per peer before `send` starts dropping (default 4096).
    pub queue_capacity: usize,
    /// Messages taken from the queue per write batch (default 256).
    pub max_batch: usize,
    /// How long a dial may take, handshake included (default 3 s).
    pub connect_timeout: Duration,
    /// A connection without traffic for this long is considered dead (default 10 s).
    pub idle_timeout: Duration,
    /// Keep-alive interval on dialed connections (default 1 s).
    pub keep_alive: Duration,
    /// First reconnect delay after a failure (default 50 ms).
    pub backoff_initial: Duration,
    /// Longest reconnect delay (default 2 s).
    pub backoff_max: Duration,
    /// Also accept nodes outside `peers` (default off). Their certificate must still be
    /// issued by the cluster CA and name their node id, and a node removed with
    /// [`QuicTransport::remove_peer`] stays refused. A node joining a running cluster
    /// knows no members yet, and a node whose log is behind may not know the current
    /// leader, which can be a node added while it was down: both must hear from it
    /// (Raft accepts a leader's traffic from outside its configuration). Such a peer is
    /// answered at the address it connected from (every node dials from its listening
    /// socket) until [`QuicTransport::set_peer`] says otherwise.
    pub accept_unknown_peers: bool,
}

impl QuicConfig {
    /// A configuration with default limits and no peers.
    pub fn new(node_id: NodeId, listen: SocketAddr, tls: TlsMaterial) -> Self {
        QuicConfig {
            node_id,
            listen,
            peers: HashMap::new(),
            tls,
            cluster_id: None,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            queue_capacity: 4096,
            max_batch: 256,
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            accept_unknown_peers: false,
        }
    }

    /// Adds (or replaces) a peer.
    pub fn with_peer(mut self, id: NodeId, addr: SocketAddr) -> Self {
        self.peers.insert(id, addr);
        self
    }
}

/// Errors of the QUIC transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TLS material is unusable.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// rustls' configuration is not usable for QUIC.
    #[error("quic crypto: {0}")]
    QuicCrypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// Binding the endpoint failed, or no tokio runtime is running.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// A dial could not be started.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// A connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Framing failed.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The dialed peer presented the certificate of another node.
    #[error("dialed node {expected} but its certificate names {found:?}")]
    WrongPeer {
        /// The node we meant to reach.
        expected: NodeId,
        /// The node its certificate names.
        found: Option<NodeId>,
    },
    /// A dial took longer than the connect timeout.
    #[error("timed out")]
    Timeout,
}

/// The state of the outbound link to one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Where the peer is dialed.
    pub addr: SocketAddr,
    /// Whether a connection to the peer is currently established.
    pub connected: bool,
    /// Messages waiting in the queue (at most [`PeerStatus::capacity`]).
    pub queued: usize,
    /// The queue's capacity.
    pub capacity: usize,
    /// Messages written to the peer's stream.
    pub sent: u64,
    /// Messages dropped: queue full, connection failed, or unencodable.
    pub dropped: u64,
    /// Connections established so far.
    pub connects: u64,
}

/// Counters of inbound traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundStats {
    /// Connections accepted (authenticated as a known peer).
    pub accepted: u64,
    /// Connections refused: failed handshake, or a certificate naming no known peer.
    pub rejected: u64,
    /// Connections closed for a protocol violation.
    pub protocol_errors: u64,
    /// Messages forwarded to the inbound channel.
    pub received: u64,
}

#[derive(Default)]
struct InboundCounters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    protocol_errors: AtomicU64,
    received: AtomicU64,
}

struct Peer {
    id: NodeId,
    tx: mpsc::Sender<Message>,
    addr: watch::Sender<SocketAddr>,
    cancel: CancellationToken,
    connected: AtomicBool,
    sent: AtomicU64,
    dropped: AtomicU64,
    connects: AtomicU64,
    /// The current outbound connection, shared with snapshot transfers.
    conn: watch::Sender<Option<Connection>>,
}

impl Peer {
    fn drop_n(&self, n: usize) {
        if n > 0 {
            self.dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn status(&self) -> PeerStatus {
        PeerStatus {
            addr: *self.addr.borrow(),
            connected: self.connected.load(Ordering::Relaxed),
            queued: self.tx.max_capacity() - self.tx.capacity(),
            capacity: self.tx.max_capacity(),
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
        }
    }
}

struct Shared {
    node_id: NodeId,
    cluster_id: Option<String>,
    endpoint: Endpoint,
    local_addr: SocketAddr,
    max_frame_len: usize,
    queue_capacity: usize,
    max_batch: usize,
    connect_timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    peers: RwLock<HashMap<NodeId, Arc<Peer>>>,
    /// Peers removed with `remove_peer` (refused even with `accept_unknown_peers`).
    removed: RwLock<HashSet<NodeId>>,
    accept_unknown_peers: bool,
    inbound_conns: Mutex<HashMap<usize, (NodeId, Connection)>>,
    inbound: mpsc::Sender<Message>,
    snapshot_tx: mpsc::Sender<IncomingSnapshot>,
    snapshot_rx: Mutex<Option<mpsc::Receiver<IncomingSnapshot>>>,
    counters: InboundCounters,
    unknown_dropped: AtomicU64,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// The QUIC peer transport of one node. See the [module documentation](self).
///
/// Dropping it stops its tasks and closes the endpoint; [`QuicTransport::shutdown`]
/// does the same and waits until everything has stopped.
pub struct QuicTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("node_id", &self.shared.node_id)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

fn transport_config(
    idle: Duration,
    keep_alive: Option<Duration>,
    uni_streams: u32,
    bidi_streams: u32,
) -> Result<quinn::TransportConfig, TransportError> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        idle.try_into()
            .map_err(|_| TransportError::Config("idle_timeout out of range"))?,
    ))
    .keep_alive_interval(keep_alive)
    .max_concurrent_bidi_streams(VarInt::from_u32(bidi_streams))
    .max_concurrent_uni_streams(VarInt::from_u32(uni_streams))
    .datagram_receive_buffer_size(None);
    Ok(t)
}

/// An endpoint configuration whose stateless-reset key and connection-id generator
/// are derived from `key_pem` (a node's private key) and `label` (one per channel),
/// so that they survive restarts. When a node crashes and comes back on the same
/// address, packets of its old connections carry connection ids it recognises as its
/// own and are answered with stateless resets the other side accepts, so that side
/// reconnects at once instead of waiting out the idle timeout. Used by the Raft
/// channel and by applications' client channels (each with its own label).
pub fn restart_stable_endpoint_config(label: &str, node_id: NodeId, key_pem: &str) -> quinn::EndpointConfig {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(label.as_bytes());
    ctx.update(b"\0");
    ctx.update(&node_id.to_be_bytes());
    ctx.update(key_pem.as_bytes());
    let secret = ctx.finish();
    let (reset, cid) = secret.as_ref().split_at(24);
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(cid);
    let cid_key = u64::from_le_bytes(cid_key);
    let reset_key: Arc<dyn quinn::crypto::HmacKey> =
        Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset));
    let mut endpoint_config = quinn::EndpointConfig::new(reset_key);
    endpoint_config
        .cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    endpoint_config
}

/// The node id named by a connection's peer certificate.
fn peer_node_id(conn: &Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_from_cert(certs.first()?)
}

impl QuicTransport {
    /// Binds the endpoint and starts accepting peers. Must be called inside a tokio
    /// runtime, whose handle the transport's tasks then run on.
    ///
    /// Messages from authenticated peers are delivered to `inbound`, in order per
    /// sending peer. Peers in `config.peers` are dialed lazily, on the first message
    /// sent to them.
    pub fn bind(config: QuicConfig, inbound: mpsc::Sender<Message>) -> Result<Self, TransportError> {
        if config.node_id == 0 {
            return Err(TransportError::Config("node id 0 is reserved"));
        }
        if config.queue_capacity == 0 || config.max_batch == 0 {
            return Err(TransportError::Config(
                "queue_capacity and max_batch must be positive",
            ));
        }
        if config.max_frame_len < 64 {
            return Err(TransportError::Config("max_frame_len below 64 bytes"));
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|e| {
            TransportError::Io(std::io::Error::other(format!(
                "QuicTransport::bind needs a tokio runtime: {e}"
            )))
        })?;
        let tls = build_tls_configs(config.node_id, &config.tls)?;

        let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls.server)?));
        server.transport_config(Arc::new(transport_config(
            config.idle_timeout,
            None,
            MAX_INBOUND_STREAMS,
            MAX_INBOUND_SNAPSHOT_STREAMS,
        )?));
        let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls.client)?));
        client.transport_config(Arc::new(transport_config(
            config.idle_timeout,
            Some(config.keep_alive),
            0,
            0,
        )?));

        let socket = std::net::UdpSocket::bind(config.listen)?;
        let endpoint_config =
            restart_stable_endpoint_config("raft/1 quic endpoint keys", config.node_id, &config.tls.key_pem);
        let mut endpoint = {
            let _guard = handle.enter();
            Endpoint::new(
                endpoint_config,
                Some(server),
                socket,
                Arc::new(quinn::TokioRuntime),
            )?
        };
        endpoint.set_default_client_config(client);
        let local_addr = endpoint.local_addr()?;
        let (snapshot_tx, snapshot_rx) = mpsc::channel(SNAPSHOT_INBOX);

        let shared = Arc::new(Shared {
            node_id: config.node_id,
            cluster_id: config.cluster_id,
            endpoint,
            local_addr,
            max_frame_len: config.max_frame_len,
            queue_capacity: config.queue_capacity,
            max_batch: config.max_batch,
            connect_timeout: config.connect_timeout,
            backoff_initial: config.backoff_initial,
            backoff_max: config.backoff_max.max(config.backoff_initial),
            peers: RwLock::new(HashMap::new()),
            removed: RwLock::new(HashSet::new()),
            accept_unknown_peers: config.accept_unknown_peers,
            inbound_conns: Mutex::new(HashMap::new()),
            inbound,
            snapshot_tx,
            snapshot_rx: Mutex::new(Some(snapshot_rx)),
            counters: InboundCounters::default(),
            unknown_dropped: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let transport = QuicTransport { shared };
        for (id, addr) in config.peers {
            transport.set_peer(id, addr);
        }
        let shared = transport.shared.clone();
        transport.shared.tasks.spawn_on(shared.accept_loop(), &handle);
        Ok(transport)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// The address the endpoint is bound to (with the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Adds a peer, or changes its address. A changed address takes effect at once:
    /// the current connection, if any, is dropped and the new address is dialed. A
    /// peer removed earlier may connect again. Ignored for this node's own id.
    pub fn set_peer(&self, id: NodeId, addr: SocketAddr) {
        self.shared
            .removed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        Shared::set_peer(&self.shared, id, addr, false);
    }

    /// Removes a peer: its queue is discarded, its outbound connection closed, its
    /// inbound connections closed, and it may no longer connect.
    pub fn remove_peer(&self, id: NodeId) {
        if id == self.shared.node_id || id == 0 {
            return;
        }
        self.shared
            .removed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        let removed = self
            .shared
            .peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(peer) = removed {
            peer.cancel.cancel();
        }
        let conns = self
            .shared
            .inbound_conns
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (peer, conn) in conns.values() {
            if *peer == id {
                conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"peer removed");
            }
        }
    }

    /// The outbound state of peer `id`, if it is a peer.
    pub fn peer_status(&self, id: NodeId) -> Option<PeerStatus> {
        self.shared
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .map(|p| p.status())
    }

    /// The outbound state of every peer.
    pub fn peer_statuses(&self) -> BTreeMap<NodeId, PeerStatus> {
        self.shared
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(&id, p)| (id, p.status()))
            .collect()
    }

    /// Inbound counters.
    pub fn inbound_stats(&self) -> InboundStats {
        let c = &self.shared.counters;
        InboundStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            protocol_errors: c.protocol_errors.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
        }
    }

    /// Messages dropped because they were addressed to a node that is not a peer.
    pub fn unknown_peer_dropped(&self) -> u64 {
        self.shared.unknown_dropped.load(Ordering::Relaxed)
    }

    /// Stops every task, closes all connections and the endpoint, and waits until
    /// the peers have been told (or a short grace period passed). The UDP port is
    /// released once the transport is dropped.
    pub async fn shutdown(&self) {
        self.shared.cancel.cancel();
        self.shared
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.endpoint.wait_idle()).await;
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        self.shared
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    }
}

impl Transport for QuicTransport {
    fn send(&self, to: NodeId, msgs: Vec<Message>) {
        let peer = self
            .shared
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&to)
            .cloned();
        let Some(peer) = peer else {
            self.shared
                .unknown_dropped
                .fetch_add(msgs.len() as u64, Ordering::Relaxed);
            tracing::debug!(to, n = msgs.len(), "dropping messages to an unknown peer");
            return;
        };
        let mut dropped = 0;
        for msg in msgs {
            if peer.tx.try_send(msg).is_err() {
                dropped += 1;
            }
        }
        peer.drop_n(dropped);
    }

    fn set_peer(&self, id: NodeId, addr: &NodeAddr) {
        if addr.raft.is_empty() {
            // No address in the configuration: keep whatever this node was given.
            return;
        }
        match addr.raft.parse::<SocketAddr>() {
            Ok(sock) => QuicTransport::set_peer(self, id, sock),
            Err(_) => tracing::warn!(
                peer = id,
                addr = %addr.raft,
                "the configuration gives a raft address that is not IP:PORT; the peer stays unreachable"
            ),
        }
    }

    fn remove_peer(&self, id: NodeId) {
        QuicTransport::remove_peer(self, id)
    }

    fn send_snapshot(&self, to: NodeId, snapshot: OutgoingSnapshot) -> SnapshotSend {
        let peer = self
            .shared
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&to)
            .cloned();
        let Some(peer) = peer else {
            return failed(SnapshotSendError::Unreachable(format!("node {to} is not a peer")));
        };
        Box::pin(self.shared.clone().send_snapshot_to(peer, snapshot))
    }

    fn take_snapshot_inbox(&self) -> Option<mpsc::Receiver<IncomingSnapshot>> {
        self.shared
            .snapshot_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Why an outbound connection stopped.
enum PumpEnd {
    /// The transport or the peer is going away.
    Cancelled,
    /// The peer's address changed.
    Moved,
    /// The connection failed.
    Failed(TransportError),
}

/// Why an inbound stream stopped.
enum ReadEnd {
    /// The stream ended cleanly, the connection went away, or we are shutting down.
    Done,
    /// The peer broke the protocol: close its connection.
    Violation(u32, String),
}

impl From<FrameError> for ReadEnd {
    fn from(e: FrameError) -> Self {
        if e.is_io() {
            ReadEnd::Done
        } else {
            ReadEnd::Violation(CLOSE_PROTOCOL, e.to_string())
        }
    }
}

/// Takes everything queued right now, returning how many messages were discarded.
fn drain(rx: &mut mpsc::Receiver<Message>) -> usize {
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    n
}

impl Shared {
    // ----- outbound -----

    /// Adds peer `id` dialed at `addr`, or moves it there. A `learned` address (from an
    /// inbound connection) never overrides a configured one nor readmits a removed peer.
    fn set_peer(self: &Arc<Self>, id: NodeId, addr: SocketAddr, learned: bool) {
        if id == self.node_id || id == 0 {
            return;
        }
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        // Checked under the peers lock: a concurrent `remove_peer` marks the peer
        // removed before it takes the lock to drop it.
        if learned
            && self
                .removed
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&id)
        {
            return;
        }
        if let Some(peer) = peers.get(&id) {
            if !learned {
                peer.addr.send_if_modified(|current| {
                    let changed = *current != addr;
                    *current = addr;
                    changed
                });
            }
            return;
        }
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let (addr_tx, addr_rx) = watch::channel(addr);
        let peer = Arc::new(Peer {
            id,
            tx,
            addr: addr_tx,
            cancel: self.cancel.child_token(),
            connected: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            conn: watch::Sender::new(None),
        });
        peers.insert(id, peer.clone());
        drop(peers);
        self.tasks.spawn(self.clone().run_peer(peer, rx, addr_rx));
    }

    async fn run_peer(
        self: Arc<Self>,
        peer: Arc<Peer>,
        mut rx: mpsc::Receiver<Message>,
        mut addr_rx: watch::Receiver<SocketAddr>,
    ) {
        let cancel = peer.cancel.clone();
        let mut backoff = self.backoff_initial;
        let mut batch: Vec<Message> = Vec::with_capacity(self.max_batch);
        loop {
            // Dial lazily: only once there is something to send.
            if batch.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    n = rx.recv_many(&mut batch, self.max_batch) => if n == 0 { return },
                }
            }
            let addr = *addr_rx.borrow_and_update();
            let dialed = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(self.connect_timeout, self.dial(peer.id, addr)) => {
                    r.unwrap_or(Err(TransportError::Timeout))
                }
            };
            let retry = match dialed {
                Err(error) => {
                    tracing::debug!(peer = peer.id, %addr, %error, "dial failed");
                    true
                }
                Ok((conn, writer)) => {
                    peer.connected.store(true, Ordering::Relaxed);
                    peer.connects.fetch_add(1, Ordering::Relaxed);
                    peer.conn.send_replace(Some(conn.clone()));
                    tracing::debug!(peer = peer.id, %addr, "connected");
                    let since = Instant::now();
                    let end = self
                        .pump(&peer, &conn, writer, &mut rx, &mut batch, &mut addr_rx)
                        .await;
                    peer.connected.store(false, Ordering::Relaxed);
                    peer.conn.send_replace(None);
                    match end {
                        PumpEnd::Cancelled => {
                            conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
                            return;
                        }
                        PumpEnd::Moved => {
                            conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"peer moved");
                            backoff = self.backoff_initial;
                            false
                        }
                        PumpEnd::Failed(error) => {
                            tracing::debug!(peer = peer.id, %addr, %error, "connection lost");
                            if since.elapsed() >= STABLE_CONNECTION {
                                backoff = self.backoff_initial;
                                false
                            } else {
                                true
                            }
                        }
                    }
                }
            };
            // Whatever was taken or queued before the failure is stale: drop it and
            // carry on with newer messages.
            peer.drop_n(batch.len() + drain(&mut rx));
            batch.clear();
            if retry {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                    _ = addr_rx.changed() => {}
                }
                backoff = (backoff * 2).min(self.backoff_max);
            }
        }
    }

    async fn dial(
        &self,
        id: NodeId,
        addr: SocketAddr,
    ) -> Result<(Connection, FramedWrite<SendStream, FrameCodec>), TransportError> {
        let conn = self.endpoint.connect(addr, &node_server_name(id))?.await?;
        // rustls already checked the name; make the identity check explicit anyway.
        let found = peer_node_id(&conn);
        if found != Some(id) {
            conn.close(VarInt::from_u32(CLOSE_UNAUTHORIZED), b"unexpected identity");
            return Err(TransportError::WrongPeer { expected: id, found });
        }
        let mut send = conn.open_uni().await?;
        send.write_all(&[StreamKind::Messages.as_byte()]).await?;
        let mut writer = FramedWrite::new(send, FrameCodec::new(self.max_frame_len));
        writer.set_backpressure_boundary(64 * 1024);
        let hello = Hello {
            node_id: self.node_id,
            cluster_id: self.cluster_id.clone(),
        };
        writer.feed(FrameRef::Hello(&hello)).await?;
        Ok((conn, writer))
    }

    /// Writes queued messages to the stream until the connection ends.
    async fn pump(
        &self,
        peer: &Peer,
        conn: &Connection,
        mut writer: FramedWrite<SendStream, FrameCodec>,
        rx: &mut mpsc::Receiver<Message>,
        batch: &mut Vec<Message>,
        addr_rx: &mut watch::Receiver<SocketAddr>,
    ) -> PumpEnd {
        let cancel = &peer.cancel;
        loop {
            if batch.is_empty() {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return PumpEnd::Cancelled,
                    Ok(()) = addr_rx.changed() => return PumpEnd::Moved,
                    e = conn.closed() => return PumpEnd::Failed(e.into()),
                    n = rx.recv_many(batch, self.max_batch) => {
                        if n == 0 {
                            return PumpEnd::Cancelled;
                        }
                    }
                }
            }
            let n = batch.len();
            let write = async {
                let mut unencodable = 0usize;
                for msg in batch.iter() {
                    match writer.feed(FrameRef::Message(msg)).await {
                        Ok(()) => {}
                        Err(e @ (FrameError::TooLarge { .. } | FrameError::Encode(_))) => {
                            tracing::warn!(peer = peer.id, kind = msg.kind(), error = %e,
                                "dropping a message that cannot be framed");
                            unencodable += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
                writer.flush().await.map(|()| unencodable)
            };
            let written = tokio::select! {
                _ = cancel.cancelled() => return PumpEnd::Cancelled,
                r = write => r,
            };
            match written {
                Ok(unencodable) => {
                    peer.drop_n(unencodable);
                    peer.sent.fetch_add((n - unencodable) as u64, Ordering::Relaxed);
                    batch.clear();
                }
                Err(e) => return PumpEnd::Failed(e.into()),
            }
        }
    }

    // ----- inbound -----

    async fn accept_loop(self: Arc<Self>) {
        loop {
            let incoming = tokio::select! {
                _ = self.cancel.cancelled() => return,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => return,
                },
            };
            let shared = self.clone();
            self.tasks.spawn(shared.serve_connection(incoming));
        }
    }

    fn reject(&self, conn: &Connection, code: u32, reason: &'static str) {
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        conn.close(VarInt::from_u32(code), reason.as_bytes());
    }

    async fn serve_connection(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let conn = tokio::select! {
            _ = self.cancel.cancelled() => return,
            c = incoming => c,
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(error) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%remote, %error, "inbound handshake failed");
                return;
            }
        };
        // Authenticate before reading anything.
        let Some(peer) = peer_node_id(&conn) else {
            tracing::warn!(%remote, "rejecting a connection whose certificate names no node");
            self.reject(&conn, CLOSE_UNAUTHORIZED, "no node identity");
            return;
        };
        let known = |s: &Self| {
            peer != s.node_id
                && s.peers
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&peer)
        };
        if self.accept_unknown_peers && !known(&self) {
            // Every node dials from its listening socket: answer it there.
            self.set_peer(peer, remote, true);
            if known(&self) {
                tracing::info!(%remote, peer, "accepted a cluster node outside the peer set");
            }
        }
        if !known(&self) {
            tracing::warn!(%remote, peer, "rejecting a connection from a node outside the peer set");
            self.reject(&conn, CLOSE_UNAUTHORIZED, "not a peer");
            return;
        }
        let key = conn.stable_id();
        self.inbound_conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (peer, conn.clone()));
        // The peer may have been removed between the check and the registration.
        if known(&self) {
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, peer, "accepted peer connection");
            loop {
                let stream = tokio::select! {
                    _ = self.cancel.cancelled() => break,
                    r = conn.accept_uni() => r.map(|recv| (None, recv)),
                    r = conn.accept_bi() => r.map(|(send, recv)| (Some(send), recv)),
                };
                let (send, recv) = match stream {
                    Ok(s) => s,
                    Err(error) => {
                        tracing::debug!(%remote, peer, %error, "inbound connection ended");
                        break;
                    }
                };
                let shared = self.clone();
                let conn = conn.clone();
                self.tasks.spawn(async move {
                    if let ReadEnd::Violation(code, reason) = shared.read_stream(peer, send, recv).await {
                        shared.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(remote = %conn.remote_address(), peer, %reason,
                            "closing peer connection: protocol violation");
                        conn.close(VarInt::from_u32(code), reason.as_bytes());
                    }
                });
            }
        } else {
            self.reject(&conn, CLOSE_UNAUTHORIZED, "not a peer");
        }
        self.inbound_conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    /// Reads one inbound stream: unidirectional ones carry messages, bidirectional ones
    /// a snapshot (`send` is the answering half).
    async fn read_stream(&self, peer: NodeId, send: Option<SendStream>, mut recv: RecvStream) -> ReadEnd {
        let mut kind = [0u8; 1];
        let read = tokio::select! {
            _ = self.cancel.cancelled() => return ReadEnd::Done,
            r = recv.read_exact(&mut kind) => r,
        };
        match read {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(_)) => {
                return ReadEnd::Violation(CLOSE_PROTOCOL, "empty stream".into())
            }
            Err(quinn::ReadExactError::ReadError(_)) => return ReadEnd::Done,
        }
        match (StreamKind::from_byte(kind[0]), send) {
            (Ok(StreamKind::Messages), None) => self.read_messages(peer, recv).await,
            (Ok(StreamKind::Snapshot), Some(send)) => self.read_snapshot(peer, send, recv).await,
            (Ok(kind), _) => ReadEnd::Violation(
                CLOSE_PROTOCOL,
                format!("stream kind {kind:?} on the wrong kind of QUIC stream"),
            ),
            (Err(e), _) => e.into(),
        }
    }

    // ----- snapshots -----

    /// Streams a snapshot on the peer's current connection.
    async fn send_snapshot_to(
        self: Arc<Self>,
        peer: Arc<Peer>,
        snapshot: OutgoingSnapshot,
    ) -> Result<(), SnapshotSendError> {
        let mut conn_rx = peer.conn.subscribe();
        let waited = tokio::select! {
            _ = peer.cancel.cancelled() => None,
            r = tokio::time::timeout(self.connect_timeout, conn_rx.wait_for(Option::is_some)) => {
                r.ok().and_then(|r| r.ok()).and_then(|c| c.clone())
            }
        };
        let Some(conn) = waited else {
            return Err(SnapshotSendError::Unreachable(format!(
                "no connection to node {}",
                peer.id
            )));
        };
        tokio::select! {
            _ = peer.cancel.cancelled() => Err(SnapshotSendError::Unreachable("peer removed or shutting down".into())),
            r = self.stream_snapshot(&conn, peer.id, snapshot) => r,
        }
    }

    async fn stream_snapshot(
        &self,
        conn: &Connection,
        to: NodeId,
        snapshot: OutgoingSnapshot,
    ) -> Result<(), SnapshotSendError> {
        fn fail(e: impl std::fmt::Display) -> SnapshotSendError {
            SnapshotSendError::Failed(e.to_string())
        }
        let OutgoingSnapshot {
            term,
            len,
            mut chunks,
        } = snapshot;
        let (mut send, recv) = conn.open_bi().await.map_err(fail)?;
        // Heartbeats and appends on the message stream go first.
        let _ = send.set_priority(-1);
        send.write_all(&[StreamKind::Snapshot.as_byte()])
            .await
            .map_err(fail)?;
        let mut writer = FramedWrite::new(send, FrameCodec::new(self.max_frame_len));
        let header = SnapshotHeader {
            from: self.node_id,
            to,
            term,
            len,
        };
        writer
            .send(FrameRef::SnapshotHeader(&header))
            .await
            .map_err(fail)?;
        let max_chunk = self.max_frame_len.saturating_sub(SNAPSHOT_CHUNK_OVERHEAD).max(1);
        let mut sent = 0u64;
        while sent < len {
            let Some(mut chunk) = chunks.recv().await else {
                let _ = writer.get_mut().reset(VarInt::from_u32(CLOSE_SHUTDOWN));
                return Err(SnapshotSendError::Source);
            };
            sent += chunk.len() as u64;
            if sent > len {
                let _ = writer.get_mut().reset(VarInt::from_u32(CLOSE_SHUTDOWN));
                return Err(SnapshotSendError::Source);
            }
            while !chunk.is_empty() {
                let piece = chunk.split_to(chunk.len().min(max_chunk));
                writer.send(FrameRef::SnapshotChunk(&piece)).await.map_err(fail)?;
            }
        }
        writer.into_inner().finish().map_err(fail)?;
        let mut reader = FramedRead::new(recv, FrameCodec::new(self.max_frame_len));
        match tokio::time::timeout(SNAPSHOT_ANSWER_TIMEOUT, reader.next()).await {
            Err(_) => Err(SnapshotSendError::Failed("no answer from the receiver".into())),
            Ok(None) => Err(SnapshotSendError::Failed(
                "the receiver closed the stream without answering".into(),
            )),
            Ok(Some(Err(e))) => Err(fail(e)),
            Ok(Some(Ok(Frame::SnapshotAck(ack)))) if ack.ok => Ok(()),
            Ok(Some(Ok(Frame::SnapshotAck(ack)))) => Err(SnapshotSendError::Rejected(ack.reason)),
            Ok(Some(Ok(_))) => Err(SnapshotSendError::Failed(
                "unexpected frame instead of the snapshot answer".into(),
            )),
        }
    }

    /// Receives one snapshot: hands its chunks to the inbox, then answers with the
    /// sidecar's verdict.
    async fn read_snapshot(&self, peer: NodeId, send: SendStream, recv: RecvStream) -> ReadEnd {
        let mut frames = FramedRead::new(recv, FrameCodec::new(self.max_frame_len));
        let first = tokio::select! {
            _ = self.cancel.cancelled() => return ReadEnd::Done,
            f = frames.next() => f,
        };
        let header = match first {
            None => return ReadEnd::Done,
            Some(Err(e)) => return e.into(),
            Some(Ok(Frame::SnapshotHeader(h))) => h,
            Some(Ok(_)) => {
                return ReadEnd::Violation(CLOSE_PROTOCOL, "snapshot stream without a header".into())
            }
        };
        if header.from != peer || header.to != self.node_id {
            return ReadEnd::Violation(
                CLOSE_BAD_ADDRESS,
                format!("snapshot from {} to {}", header.from, header.to),
            );
        }
        let mut answer = FramedWrite::new(send, FrameCodec::new(self.max_frame_len));
        let (chunk_tx, chunk_rx) = mpsc::channel(SNAPSHOT_CHUNKS_IN_FLIGHT);
        let (reply_tx, reply_rx) = oneshot::channel();
        let offered = self.snapshot_tx.try_send(IncomingSnapshot {
            from: peer,
            term: header.term,
            len: header.len,
            chunks: chunk_rx,
            reply: reply_tx,
        });
        if offered.is_err() {
            let ack = SnapshotAck {
                ok: false,
                reason: "busy: too many snapshot transfers in progress".into(),
            };
            let _ = answer.send(FrameRef::SnapshotAck(&ack)).await;
            let _ = answer.into_inner().finish();
            return ReadEnd::Done;
        }
        let mut got = 0u64;
        while got < header.len {
            let frame = tokio::select! {
                _ = self.cancel.cancelled() => return ReadEnd::Done,
                f = frames.next() => f,
            };
            match frame {
                // The transfer broke: dropping `chunk_tx` short tells the receiver.
                None => return ReadEnd::Done,
                Some(Err(e)) => return e.into(),
                Some(Ok(Frame::SnapshotChunk(data))) => {
                    got += data.len() as u64;
                    if got > header.len {
                        return ReadEnd::Violation(
                            CLOSE_PROTOCOL,
                            format!("more snapshot bytes than the {} announced", header.len),
                        );
                    }
                    let delivered = tokio::select! {
                        _ = self.cancel.cancelled() => return ReadEnd::Done,
                        r = chunk_tx.send(data) => r.is_ok(),
                    };
                    if !delivered {
                        // The receiver gave up (the data did not verify, or it is
                        // shutting down); its verdict follows.
                        break;
                    }
                }
                Some(Ok(_)) => {
                    return ReadEnd::Violation(CLOSE_PROTOCOL, "unexpected frame in a snapshot stream".into())
                }
            }
        }
        drop(chunk_tx);
        let verdict = tokio::select! {
            _ = self.cancel.cancelled() => return ReadEnd::Done,
            r = tokio::time::timeout(SNAPSHOT_ANSWER_TIMEOUT, reply_rx) => r,
        };
        let ack = match verdict {
            Ok(Ok(Ok(()))) => SnapshotAck {
                ok: true,
                reason: String::new(),
            },
            Ok(Ok(Err(reason))) => SnapshotAck { ok: false, reason },
            Ok(Err(_)) => SnapshotAck {
                ok: false,
                reason: "the receiving node dropped the snapshot".into(),
            },
            Err(_) => SnapshotAck {
                ok: false,
                reason: "the receiving node did not decide in time".into(),
            },
        };
        let _ = answer.send(FrameRef::SnapshotAck(&ack)).await;
        let _ = answer.into_inner().finish();
        ReadEnd::Done
    }

    async fn read_messages(&self, peer: NodeId, recv: RecvStream) -> ReadEnd {
        let mut frames = FramedRead::new(recv, FrameCodec::new(self.max_frame_len));
        let mut first = true;
        loop {
            let frame = tokio::select! {
                _ = self.cancel.cancelled() => return ReadEnd::Done,
                f = frames.next() => f,
            };
            let frame = match frame {
                None => return ReadEnd::Done,
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return e.into(),
            };
            match frame {
                Frame::Hello(hello) => {
                    if !first {
                        return ReadEnd::Violation(CLOSE_PROTOCOL, "hello after messages".into());
                    }
                    if hello.node_id != peer {
                        return ReadEnd::Violation(
                            CLOSE_BAD_ADDRESS,
                            format!("hello claims node {}", hello.node_id),
                        );
                    }
                    if let (Some(theirs), Some(ours)) = (&hello.cluster_id, &self.cluster_id) {
                        if theirs != ours {
                            return ReadEnd::Violation(
                                CLOSE_UNAUTHORIZED,
                                format!("peer belongs to cluster {theirs:?}"),
                            );
                        }
                    }
                }
                Frame::Message(msg) => {
                    if msg.from != peer || msg.to != self.node_id {
                        return ReadEnd::Violation(
                            CLOSE_BAD_ADDRESS,
                            format!("message from {} to {}", msg.from, msg.to),
                        );
                    }
                    let sent = tokio::select! {
                        _ = self.cancel.cancelled() => return ReadEnd::Done,
                        r = self.inbound.send(msg) => r,
                    };
                    if sent.is_err() {
                        // Nobody listens any more.
                        return ReadEnd::Done;
                    }
                    self.counters.received.fetch_add(1, Ordering::Relaxed);
                }
                Frame::SnapshotHeader(_) | Frame::SnapshotChunk(_) | Frame::SnapshotAck(_) => {
                    return ReadEnd::Violation(CLOSE_PROTOCOL, "snapshot frame on the message stream".into())
                }
            }
            first = false;
        }
    }
}
