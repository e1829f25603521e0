//! The node side of the client channel: accepts bank clients over QUIC, turns their
//! writes into Raft proposals and answers their reads from the local bank.
//!
//! One [`BankServer`] runs per node, next to the node's Raft sidecar. It holds the
//! sidecar's [`RaftHandle`] (to propose and to confirm reads) and a [`BankReplica`]
//! sharing the bank the sidecar applies to.
//!
//! * **Writes** are checked (a session with a positive sequence number, amounts in
//!   range), encoded and proposed. The reply is the state machine's response once the
//!   command is applied locally. A follower answers [`ServerReply::NotLeader`] with the
//!   leader's client address from the membership; "outcome unknown" failures
//!   (leadership lost, timeout, entry overwritten, sidecar stopped) answer
//!   [`ServerReply::Unavailable`] with `retryable: true`, and the client retries with
//!   the same sequence number.
//! * **Linearizable reads** are served by *any* node, not redirected: the sidecar's
//!   `linearizable_read` confirms a read index with the leader (a follower forwards
//!   the ReadIndex request) and waits until the local bank has applied it. This spreads
//!   read load over the cluster at the price of one round trip to the leader.
//! * **Stale reads** are answered from local state at once, with the applied index.
//!
//! Bad input never reaches Raft: undecodable, oversized or unknown-version frames,
//! sessionless writes and invalid amounts get an error reply and change nothing. Each
//! request lives on its own stream, so garbage on one stream affects nothing else; a
//! connection is closed only when its handshake fails.
//!
//! Metrics (through the `metrics` facade): counter `bank_requests_total{kind,outcome}`
//! and histogram `bank_request_seconds{kind}`, where `kind` is the request kind
//! (`deposit`, `balance`, ..., or `invalid`) and `outcome` is `ok`, `rejected`,
//! `not_leader`, `unavailable`, `bad_request` or `unauthorized`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use raft::core::Role;
use raft::sidecar::{RaftHandle, SidecarError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::command::{Request, Response};
use crate::protocol::{
    codes, encode_frame, read_frame, validate_op, ClientFrame, Consistency, FrameError, Member, NodeRole,
    NodeStatus, RequestKind, ServerFrame, ServerReply, Welcome, DEFAULT_MAX_FRAME_LEN, MAX_STATEMENT_LIMIT,
    MIN_MAX_FRAME_LEN,
};
use crate::replica::BankReplica;
use crate::tls::{server_config, TlsError};
use crate::Rejection;

/// How long a new connection may take to send its hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request stream may take to deliver its request frame.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection without any traffic for this long is dropped (clients keep alive).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests in flight per connection (QUIC stream credit).
const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Connections open at once; more are refused.
const MAX_CONNECTIONS: usize = 10_000;
/// After a refused hello, how long the node waits for the reply to be delivered before
/// closing the connection.
const LINGER: Duration = Duration::from_secs(1);

/// Configuration of a [`BankServer`].
#[derive(Clone)]
pub struct ServerConfig {
    /// The UDP address to listen on (port 0 picks a free one; see
    /// [`BankServer::local_addr`]).
    pub listen: SocketAddr,
    /// The node's certificate chain, PEM, leaf first. The leaf must name the node
    /// (`node-<id>.raft`, the id of the Raft handle) and chain to `ca_pem`.
    pub cert_chain_pem: String,
    /// The node's private key, PEM.
    pub key_pem: String,
    /// The cluster CA certificate(s), PEM.
    pub ca_pem: String,
    /// A shared token every client must present in its hello; `None` admits any client
    /// that completes the TLS handshake.
    pub token: Option<String>,
    /// The largest frame accepted or sent, version byte included (at least
    /// [`MIN_MAX_FRAME_LEN`]; the usual value is [`DEFAULT_MAX_FRAME_LEN`]).
    pub max_frame_len: usize,
}

impl ServerConfig {
    /// A configuration without a token and with the default maximum frame length.
    pub fn new(listen: SocketAddr, cert_chain_pem: String, key_pem: String, ca_pem: String) -> Self {
        ServerConfig {
            listen,
            cert_chain_pem,
            key_pem,
            ca_pem,
            token: None,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field(
                "cert_chain_pem",
                &format_args!("{} bytes", self.cert_chain_pem.len()),
            )
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("max_frame_len", &self.max_frame_len)
            .finish()
    }
}

/// Why a [`BankServer`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The certificate, key or CA is unusable.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// The node certificate names another node than the Raft handle's.
    #[error("the node certificate names node {cert}, but the raft node is {raft}")]
    IdentityMismatch {
        /// The node id in the certificate.
        cert: u64,
        /// The Raft handle's node id.
        raft: u64,
    },
    /// rustls' configuration is not usable for QUIC.
    #[error("quic crypto: {0}")]
    QuicCrypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Binding the UDP socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters of a [`BankServer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections that completed the handshake.
    pub connections_accepted: u64,
    /// Connections refused: failed TLS handshake, bad or missing hello, wrong token, or
    /// too many connections.
    pub connections_refused: u64,
    /// Connections open right now.
    pub connections_open: u64,
    /// Requests answered (any outcome).
    pub requests: u64,
    /// Requests answered with [`ServerReply::BadRequest`].
    pub bad_requests: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    open: AtomicUsize,
    requests: AtomicU64,
    bad_requests: AtomicU64,
}

/// Fault injection for tests and drills: lets a test lose replies on purpose to show
/// that clients retry safely. Does nothing unless armed.
#[derive(Debug, Default)]
pub struct ServerFaults {
    drop_write_replies: AtomicU64,
    dropped: AtomicU64,
}

impl ServerFaults {
    /// The next `n` successful write replies are not sent: the command is applied, but
    /// the stream is reset (code [`codes::DROPPED`]) instead of answered, exactly as
    /// if the reply had been lost in the network.
    pub fn drop_write_replies(&self, n: u64) {
        self.drop_write_replies.store(n, Ordering::SeqCst);
    }

    /// How many write replies were dropped so far.
    pub fn dropped_replies(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }

    fn take_drop(&self) -> bool {
        let took = self
            .drop_write_replies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if took {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
        took
    }
}

struct Shared {
    node_id: u64,
    raft: RaftHandle,
    bank: BankReplica,
    token: Option<String>,
    max_frame_len: usize,
    endpoint: Endpoint,
    cancel: CancellationToken,
    tasks: TaskTracker,
    counters: Counters,
    faults: ServerFaults,
}

/// The client channel of one node. See the [module documentation](self).
///
/// Dropping it stops accepting and closes every connection at once;
/// [`BankServer::shutdown`] lets requests in flight finish first.
pub struct BankServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl fmt::Debug for BankServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BankServer")
            .field("node_id", &self.shared.node_id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

fn transport_config() -> Result<quinn::TransportConfig, ServerError> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .map_err(|_| ServerError::Config("idle timeout out of range".into()))?,
    ))
    .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION))
    .max_concurrent_uni_streams(VarInt::from_u32(0))
    .datagram_receive_buffer_size(None);
    Ok(t)
}

impl BankServer {
    /// Binds the client channel and starts serving. Must run inside a tokio runtime;
    /// the server's tasks run on it.
    ///
    /// Fails if the TLS material is unusable, if the certificate does not name the
    /// Raft node (`raft.id()`) or does not chain to the CA, if `max_frame_len` is below
    /// [`MIN_MAX_FRAME_LEN`], or if the address cannot be bound.
    pub async fn start(
        cfg: ServerConfig,
        raft: RaftHandle,
        bank: BankReplica,
    ) -> Result<BankServer, ServerError> {
        if cfg.max_frame_len < MIN_MAX_FRAME_LEN || cfg.max_frame_len > u32::MAX as usize {
            return Err(ServerError::Config(format!(
                "max_frame_len must be between {MIN_MAX_FRAME_LEN} and {} bytes",
                u32::MAX
            )));
        }
        if cfg.token.as_deref() == Some("") {
            return Err(ServerError::Config("the client token must not be empty".into()));
        }
        let (tls, cert_id) = server_config(&cfg.cert_chain_pem, &cfg.key_pem, &cfg.ca_pem)?;
        if cert_id != raft.id() {
            return Err(ServerError::IdentityMismatch {
                cert: cert_id,
                raft: raft.id(),
            });
        }
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
        server.transport_config(Arc::new(transport_config()?));
        // Reset keys that survive a restart: clients of the node before it restarted
        // get a stateless reset on their next packet and reconnect at once.
        let endpoint_config = raft::transport::restart_stable_endpoint_config(
            "bank/1 client channel keys",
            raft.id(),
            &cfg.key_pem,
        );
        let socket = std::net::UdpSocket::bind(cfg.listen)?;
        let endpoint = Endpoint::new(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let local_addr = endpoint.local_addr()?;
        let shared = Arc::new(Shared {
            node_id: raft.id(),
            raft,
            bank,
            token: cfg.token,
            max_frame_len: cfg.max_frame_len,
            endpoint,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            counters: Counters::default(),
            faults: ServerFaults::default(),
        });
        tracing::info!(node = shared.node_id, %local_addr, "bank client channel listening");
        shared.tasks.spawn(shared.clone().accept_loop());
        Ok(BankServer { shared, local_addr })
    }

    /// The address the channel is bound to (with the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, answers requests still waiting on Raft with a retryable
    /// [`ServerReply::Unavailable`], closes every connection and waits (a few seconds
    /// at most) until everything has stopped. The UDP port is released when the
    /// server is dropped.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        shared.cancel.cancel();
        shared.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), shared.tasks.wait()).await;
        shared
            .endpoint
            .close(VarInt::from_u32(codes::SHUTDOWN), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), shared.endpoint.wait_idle()).await;
        tracing::info!(node = shared.node_id, "bank client channel stopped");
    }

    /// Counters since start.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        ServerStats {
            connections_accepted: c.accepted.load(Ordering::Relaxed),
            connections_refused: c.refused.load(Ordering::Relaxed),
            connections_open: c.open.load(Ordering::Relaxed) as u64,
            requests: c.requests.load(Ordering::Relaxed),
            bad_requests: c.bad_requests.load(Ordering::Relaxed),
        }
    }

    /// Fault injection (tests and drills).
    pub fn faults(&self) -> &ServerFaults {
        &self.shared.faults
    }
}

impl Drop for BankServer {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        self.shared
            .endpoint
            .close(VarInt::from_u32(codes::SHUTDOWN), b"node shutting down");
    }
}

/// Decrements the open-connection gauge when a connection task ends.
struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Compares tokens without an early exit on the first differing byte.
fn tokens_match(expected: &str, given: Option<&str>) -> bool {
    let Some(given) = given else {
        return false;
    };
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// Writes one frame and finishes the stream.
async fn send_frame(send: &mut SendStream, frame: &ServerFrame, max_frame_len: usize) -> Result<(), String> {
    let bytes = match encode_frame(frame, max_frame_len) {
        Ok(b) => b,
        Err(e) => {
            // Only a statement could grow this large, and statements are capped; answer
            // with something small rather than nothing.
            tracing::error!(error = %e, "reply does not fit in a frame");
            let id = match frame {
                ServerFrame::Reply { id, .. } => *id,
                ServerFrame::Welcome(_) => 0,
            };
            let fallback = ServerFrame::Reply {
                id,
                reply: ServerReply::Unavailable {
                    reason: "the reply does not fit in a frame".into(),
                    retryable: false,
                },
            };
            encode_frame(&fallback, max_frame_len).map_err(|e| e.to_string())?
        }
    };
    send.write_all(&bytes).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}

impl Shared {
    async fn accept_loop(self: Arc<Self>) {
        loop {
            let incoming = tokio::select! {
                _ = self.cancel.cancelled() => return,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => return,
                },
            };
            if self.counters.open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(remote = %incoming.remote_address(), "refusing a client: too many connections");
                incoming.refuse();
                continue;
            }
            self.counters.open.fetch_add(1, Ordering::Relaxed);
            self.tasks.spawn(self.clone().serve_connection(incoming));
        }
    }

    async fn serve_connection(self: Arc<Self>, incoming: quinn::Incoming) {
        let _open = OpenGuard(&self.counters.open);
        let remote = incoming.remote_address();
        let conn = tokio::select! {
            _ = self.cancel.cancelled() => return,
            c = incoming => c,
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(error) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, %error, "client handshake failed");
                return;
            }
        };
        let handshake = tokio::select! {
            _ = self.cancel.cancelled() => return,
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(&conn)) => r,
        };
        match handshake {
            Ok(Ok(())) => {
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, "client connected");
            }
            Ok(Err((code, reason))) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%remote, reason, "refusing a client");
                conn.close(VarInt::from_u32(code), reason.as_bytes());
                return;
            }
            Err(_) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%remote, "refusing a client that sent no hello in time");
                conn.close(VarInt::from_u32(codes::PROTOCOL), b"no hello");
                return;
            }
        }
        loop {
            let stream = tokio::select! {
                _ = self.cancel.cancelled() => {
                    conn.close(VarInt::from_u32(codes::SHUTDOWN), b"node shutting down");
                    return;
                }
                s = conn.accept_bi() => s,
            };
            match stream {
                Ok((send, recv)) => {
                    self.tasks.spawn(self.clone().serve_stream(send, recv));
                }
                Err(error) => {
                    tracing::debug!(%remote, %error, "client connection ended");
                    return;
                }
            }
        }
    }

    /// Reads the hello on the first stream. On refusal, the reply has been sent (and
    /// given a moment to arrive) and the caller closes the connection with the code.
    async fn handshake(&self, conn: &Connection) -> Result<(), (u32, &'static str)> {
        let (mut send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|_| (codes::PROTOCOL, "connection ended before the hello"))?;
        let frame = read_frame::<ClientFrame, _>(&mut recv, self.max_frame_len).await;
        let _ = recv.stop(VarInt::from_u32(codes::NORMAL));
        let (id, reply, code, reason) = match frame {
            Ok(ClientFrame::Hello(hello)) => {
                let admitted = match &self.token {
                    None => true,
                    Some(expected) => tokens_match(expected, hello.token.as_deref()),
                };
                if admitted {
                    let welcome = ServerFrame::Welcome(Welcome {
                        node_id: self.node_id,
                        server: concat!("bank-app/", env!("CARGO_PKG_VERSION")).into(),
                    });
                    return send_frame(&mut send, &welcome, self.max_frame_len)
                        .await
                        .map_err(|_| (codes::PROTOCOL, "could not send the welcome"));
                }
                let reason = if hello.token.is_some() {
                    "invalid client token"
                } else {
                    "this cluster requires a client token"
                };
                (
                    0,
                    ServerReply::Unauthorized {
                        reason: reason.into(),
                    },
                    codes::UNAUTHORIZED,
                    reason,
                )
            }
            Ok(ClientFrame::Request(req)) => {
                let reason = "the first frame of a connection must be a hello";
                (
                    req.id,
                    ServerReply::Unauthorized {
                        reason: reason.into(),
                    },
                    codes::UNAUTHORIZED,
                    reason,
                )
            }
            Err(e) if e.is_io() => return Err((codes::PROTOCOL, "stream failed before the hello")),
            Err(e) => (
                0,
                ServerReply::BadRequest {
                    reason: format!("bad hello: {e}"),
                },
                codes::PROTOCOL,
                "bad hello",
            ),
        };
        if send_frame(&mut send, &ServerFrame::Reply { id, reply }, self.max_frame_len)
            .await
            .is_ok()
        {
            // Closing the connection discards undelivered data: let the reply arrive.
            let _ = tokio::time::timeout(LINGER, send.stopped()).await;
        }
        Err((code, reason))
    }

    async fn serve_stream(self: Arc<Self>, mut send: SendStream, mut recv: RecvStream) {
        let started = Instant::now();
        let frame = tokio::select! {
            _ = self.cancel.cancelled() => return,
            r = tokio::time::timeout(
                REQUEST_READ_TIMEOUT,
                read_frame::<ClientFrame, _>(&mut recv, self.max_frame_len),
            ) => r,
        };
        let bad = |reason: String| ("invalid", 0, false, ServerReply::BadRequest { reason });
        let (kind, id, is_write, reply) = match frame {
            Err(_) => bad(format!(
                "no complete request within {} s",
                REQUEST_READ_TIMEOUT.as_secs()
            )),
            Ok(Err(e)) if e.is_io() => {
                // Reset or closed without a request: there is nobody to answer.
                tracing::debug!(error = %e, "request stream ended early");
                return;
            }
            Ok(Err(e @ FrameError::TooLarge { .. })) => bad(e.to_string()),
            Ok(Err(e)) => bad(format!("undecodable request: {e}")),
            Ok(Ok(ClientFrame::Hello(_))) => bad("hello on a request stream".into()),
            Ok(Ok(ClientFrame::Request(req))) => {
                let kind = req.kind.label();
                let is_write = matches!(req.kind, RequestKind::Write(_));
                let reply = tokio::select! {
                    _ = self.cancel.cancelled() => ServerReply::Unavailable {
                        reason: "node shutting down".into(),
                        retryable: true,
                    },
                    r = self.handle(req.kind) => r,
                };
                (kind, req.id, is_write, reply)
            }
        };
        // One request per stream: anything after it is not read.
        let _ = recv.stop(VarInt::from_u32(codes::NORMAL));

        let outcome = reply.outcome_label();
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        if matches!(reply, ServerReply::BadRequest { .. }) {
            self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(?reply, "bad client request");
        }
        metrics::counter!("bank_requests_total", "kind" => kind, "outcome" => outcome).increment(1);
        metrics::histogram!("bank_request_seconds", "kind" => kind).record(started.elapsed().as_secs_f64());

        if is_write && matches!(reply, ServerReply::Written { .. }) && self.faults.take_drop() {
            tracing::info!(id, "fault injection: dropping a write reply");
            let _ = send.reset(VarInt::from_u32(codes::DROPPED));
            return;
        }
        if let Err(error) = send_frame(&mut send, &ServerFrame::Reply { id, reply }, self.max_frame_len).await
        {
            tracing::debug!(id, %error, "could not deliver a reply");
        }
    }

    async fn handle(&self, kind: RequestKind) -> ServerReply {
        match kind {
            RequestKind::Write(req) => self.write(req).await,
            RequestKind::Balance { account, consistency } => {
                if let Err(reply) = self.read_barrier(consistency).await {
                    return reply;
                }
                let bank = self.bank.read();
                match bank.balance(account) {
                    Some(balance) => ServerReply::Balance {
                        account,
                        balance,
                        applied_index: bank.applied_index(),
                    },
                    None => ServerReply::Rejected(Rejection::UnknownAccount(account)),
                }
            }
            RequestKind::Statement {
                account,
                limit,
                consistency,
            } => {
                if let Err(reply) = self.read_barrier(consistency).await {
                    return reply;
                }
                let limit = limit.min(MAX_STATEMENT_LIMIT) as usize;
                let bank = self.bank.read();
                match (bank.balance(account), bank.statement(account, limit)) {
                    (Some(balance), Some(txns)) => ServerReply::Statement {
                        account,
                        balance,
                        txns,
                        applied_index: bank.applied_index(),
                    },
                    _ => ServerReply::Rejected(Rejection::UnknownAccount(account)),
                }
            }
            RequestKind::Ping => ServerReply::Pong {
                node_id: self.node_id,
            },
            RequestKind::Status => ServerReply::Status(self.status()),
        }
    }

    async fn write(&self, req: Request) -> ServerReply {
        let Some(session) = req.session else {
            return ServerReply::BadRequest {
                reason: "a write must carry a session (client_id, seq)".into(),
            };
        };
        if session.seq == 0 {
            return ServerReply::BadRequest {
                reason: "sequence numbers start at 1".into(),
            };
        }
        let max_amount = self.bank.read().config().max_amount;
        if let Err(rejection) = validate_op(&req.op, max_amount) {
            return ServerReply::Rejected(rejection);
        }
        match self.raft.propose(req.encode()).await {
            Ok(applied) => match Response::decode(&applied.response) {
                Ok(response) => ServerReply::Written {
                    index: applied.index,
                    response,
                },
                Err(e) => {
                    tracing::error!(index = applied.index, error = %e, "undecodable state machine response");
                    ServerReply::Unavailable {
                        reason: format!("undecodable state machine response: {e}"),
                        retryable: false,
                    }
                }
            },
            Err(SidecarError::NotLeader {
                leader: Some(leader),
                addr,
            }) => ServerReply::NotLeader {
                leader_id: Some(leader),
                leader_client_addr: addr.map(|a| a.client).filter(|a| !a.is_empty()),
            },
            Err(SidecarError::NotLeader { leader: None, .. }) => ServerReply::Unavailable {
                reason: "no leader is known (election in progress?)".into(),
                retryable: true,
            },
            Err(e) => ServerReply::Unavailable {
                reason: e.to_string(),
                retryable: true,
            },
        }
    }

    async fn read_barrier(&self, consistency: Consistency) -> Result<(), ServerReply> {
        match consistency {
            Consistency::Stale => Ok(()),
            Consistency::Linearizable => match self.raft.linearizable_read().await {
                Ok(_) => Ok(()),
                Err(e) => Err(ServerReply::Unavailable {
                    reason: e.to_string(),
                    retryable: true,
                }),
            },
        }
    }

    fn status(&self) -> NodeStatus {
        let status = self.raft.status();
        let leader = self.raft.leader();
        let core = &status.core;
        let role = match core.role {
            Role::Leader => NodeRole::Leader,
            Role::Candidate | Role::PreCandidate => NodeRole::Candidate,
            Role::Follower => NodeRole::Follower,
        };
        let members = core
            .membership
            .members()
            .into_iter()
            .map(|id| Member {
                node_id: id,
                client_addr: core
                    .membership
                    .addrs
                    .get(&id)
                    .map(|a| a.client.clone())
                    .unwrap_or_default(),
            })
            .collect();
        NodeStatus {
            node_id: self.node_id,
            role,
            term: core.term,
            leader_id: leader.leader,
            leader_client_addr: leader.addr.map(|a| a.client).filter(|a| !a.is_empty()),
            commit_index: core.commit,
            applied_index: self.bank.read().applied_index(),
            members,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(tokens_match("secret", Some("secret")));
        assert!(!tokens_match("secret", Some("secreT")));
        assert!(!tokens_match("secret", Some("secret2")));
        assert!(!tokens_match("secret", Some("")));
        assert!(!tokens_match("secret", None));
    }

    #[test]
    fn faults_drop_exactly_the_armed_number_of_replies() {
        let f = ServerFaults::default();
        assert!(!f.take_drop());
        f.drop_write_replies(2);
        assert!(f.take_drop());
        assert!(f.take_drop());
        assert!(!f.take_drop());
        assert_eq!(f.dropped_replies(), 2);
    }
}
