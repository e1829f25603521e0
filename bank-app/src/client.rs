//! The bank client library: typed async calls over the client channel, with
//! redirects, timeouts and exactly-once retries.
//!
//! ```no_run
//! # async fn demo(ca_pem: String) -> Result<(), bank_app::client::ClientError> {
//! use bank_app::client::{Client, ClientConfig};
//!
//! let nodes = vec!["127.0.0.1:7000".parse().unwrap(), "127.0.0.1:7001".parse().unwrap()];
//! let client = Client::connect(ClientConfig::new(nodes, ca_pem)).await?;
//! client.open_account(1, 100).await?;
//! client.open_account(2, 0).await?;
//! client.transfer(1, 2, 30).await?;
//! assert_eq!(client.balance(2).await?, 30);
//! # Ok(()) }
//! ```
//!
//! **Sessions.** A [`Client`] owns one exactly-once session: a random 64-bit client id
//! and a sequence number that starts at 1 and grows by one per write. Writes of a
//! client are *serialized* (one outstanding write per session, as the state machine's
//! session table requires); reads run concurrently. Clones of a `Client` share its
//! connections and its session, so their writes queue behind each other. For parallel
//! writes, create several clients.
//!
//! **Retries.** A call is retried until it succeeds, fails for good, or
//! [`ClientConfig::total_timeout`] passes. A write keeps its sequence number across
//! every retry, so the state machine applies it at most once; the retry of a write that
//! did commit returns the recorded response. Each attempt is bounded by
//! [`ClientConfig::request_timeout`]. A [`ServerReply::NotLeader`] redirect is followed
//! at once; an unreachable node, a timeout or a retryable "unavailable" moves on to
//! the next node after an exponential, jittered backoff.
//!
//! **Errors.** [`ClientError::Rejected`] is a business outcome (insufficient funds,
//! unknown account, ...): the request was applied as a no-op or never reached the log,
//! and repeating it changes nothing. The other errors are failures of the system. After
//! [`ClientError::Unavailable`], [`ClientError::Timeout`] or
//! [`ClientError::Transport`] on a *write*, the outcome is unknown: it may have been
//! applied. The client then moves to the next sequence number for its next write.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, ConnectionError, Endpoint, VarInt};
use tokio::time::Instant;

use crate::account::Txn;
use crate::command::{AccountId, Op, Rejection, Request, Response, SessionRef, MAX_AMOUNT};
use crate::protocol::{
    codes, encode_frame, read_frame, validate_op, ClientFrame, ClientRequest, Consistency, Hello, NodeStatus,
    RequestKind, ServerFrame, ServerReply, CLIENT_SERVER_NAME, DEFAULT_MAX_FRAME_LEN, MIN_MAX_FRAME_LEN,
};
use crate::tls::client_config;

/// The most addresses a client remembers (seeds plus redirect targets).
const MAX_KNOWN_NODES: usize = 64;
/// Redirects followed without a pause before backing off (guards against a loop of
/// stale hints).
const FREE_REDIRECTS: u32 = 3;

/// How a [`Client`] reaches the cluster.
#[derive(Clone)]
pub struct ClientConfig {
    /// Client channel addresses of some or all nodes. Any one reachable node is enough:
    /// the client learns the leader's address from redirects.
    pub nodes: Vec<SocketAddr>,
    /// The cluster CA certificate(s), PEM: nodes must present a certificate chained to
    /// it that names a node (`node-<id>.raft`).
    pub ca_pem: String,
    /// The shared client token, if the cluster requires one.
    pub token: Option<String>,
    /// Longest wait for one attempt (connection included). Default 2 s.
    pub request_timeout: Duration,
    /// Longest time one call may take, retries included. Default 10 s.
    pub total_timeout: Duration,
    /// Longest wait to establish a connection to one node. Default 2 s.
    pub connect_timeout: Duration,
    /// First pause between retries. Default 20 ms.
    pub backoff_initial: Duration,
    /// Longest pause between retries. Default 500 ms.
    pub backoff_max: Duration,
    /// The largest frame sent or accepted. Default 1 MiB.
    pub max_frame_len: usize,
}

impl ClientConfig {
    /// Defaults for a cluster reachable at `nodes` and certified by `ca_pem`.
    pub fn new(nodes: Vec<SocketAddr>, ca_pem: String) -> Self {
        ClientConfig {
            nodes,
            ca_pem,
            token: None,
            request_timeout: Duration::from_secs(2),
            total_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("nodes", &self.nodes)
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("total_timeout", &self.total_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("max_frame_len", &self.max_frame_len)
            .finish()
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A business rejection: the bank refused the request (insufficient funds, unknown
    /// account, invalid amount, ...). Nothing changed; repeating it will not help.
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// The cluster could not serve the request in time (no leader, leadership changes,
    /// a node that cannot reach a quorum). For a write the outcome is unknown.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No answer within the configured timeouts. For a write the outcome is unknown.
    #[error("timed out: {0}")]
    Timeout(String),
    /// No node could be reached, or a connection failed. For a write the outcome is
    /// unknown.
    #[error("transport: {0}")]
    Transport(String),
    /// The TLS handshake failed: the node's certificate is not trusted by the given CA
    /// (or the node did not accept the client's TLS parameters).
    #[error("tls: {0}")]
    Tls(String),
    /// The node did not speak the protocol as expected, or said our request was
    /// malformed. A bug or a version mismatch, not a transient failure.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The node refused the client token.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The client configuration is unusable.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The cluster dropped this client's session (expired or evicted) while a retry
    /// of this write was pending: an earlier attempt may have been applied, and the
    /// session that could have told is gone. The outcome is unknown; the client has
    /// started a fresh session for its next request.
    #[error("session lost while retrying: {0}")]
    SessionLost(String),
}

impl ClientError {
    /// Whether this is a business rejection rather than a failure of the system.
    pub fn is_rejection(&self) -> bool {
        matches!(self, ClientError::Rejected(_))
    }

    /// Whether a failed write may nonetheless have been applied.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable(_)
                | ClientError::Timeout(_)
                | ClientError::Transport(_)
                | ClientError::SessionLost(_)
        )
    }
}

/// The balances after a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Transferred {
    /// The debited account's new balance.
    pub from_balance: u64,
    /// The credited account's new balance.
    pub to_balance: u64,
}

/// A balance and how fresh it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BalanceReading {
    /// The account.
    pub account: AccountId,
    /// Its balance in minor units.
    pub balance: u64,
    /// The serving node's applied log index when it read.
    pub applied_index: u64,
}

/// An account statement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Statement {
    /// The account.
    pub account: AccountId,
    /// Its current balance.
    pub balance: u64,
    /// The most recent transactions, oldest first.
    pub txns: Vec<Txn>,
    /// The serving node's applied log index when it read.
    pub applied_index: u64,
}

struct Session {
    client_id: u64,
    next_seq: u64,
}

/// A lazily established, reusable connection to one node.
type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

struct Inner {
    cfg: ClientConfig,
    endpoint: Endpoint,
    quic: quinn::ClientConfig,
    nodes: Mutex<Vec<SocketAddr>>,
    cursor: AtomicUsize,
    leader: Mutex<Option<SocketAddr>>,
    conns: Mutex<HashMap<SocketAddr, Slot>>,
    session: tokio::sync::Mutex<Session>,
    next_request_id: AtomicU64,
    jitter: Mutex<u64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.endpoint
            .close(VarInt::from_u32(codes::NORMAL), b"client closed");
    }
}

/// A connection to a bank cluster with one exactly-once session. Cheap to clone (clones
/// share connections and the session). See the [module documentation](self).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("nodes", &self.inner.cfg.nodes)
            .finish_non_exhaustive()
    }
}

/// A random 64-bit number from the operating system, with a time-based fallback should
/// the OS refuse (a session id must be unique, not secret).
fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    splitmix(nanos ^ FALLBACK.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed))
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn is_crypto(code: u64) -> bool {
    code & !0xff == 0x100
}

/// Names a connection failure: TLS, refused token, or plain transport.
fn classify(addr: SocketAddr, e: &ConnectionError) -> ClientError {
    match e {
        ConnectionError::TransportError(t) if is_crypto(t.code.into()) => {
            ClientError::Tls(format!("{addr}: {e}"))
        }
        ConnectionError::ConnectionClosed(c) if is_crypto(c.error_code.into()) => {
            ClientError::Tls(format!("{addr}: {e}"))
        }
        ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(codes::UNAUTHORIZED) => {
            ClientError::Unauthorized(String::from_utf8_lossy(&c.reason).into_owned())
        }
        _ => ClientError::Transport(format!("{addr}: {e}")),
    }
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Idle connections are kept (and reused) while the client lives.
    if let Ok(idle) = Duration::from_secs(30).try_into() {
        t.max_idle_timeout(Some(idle));
    }
    t.keep_alive_interval(Some(Duration::from_secs(5)))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None);
    t
}

/// Resolves a leader address hint from the membership (usually `ip:port`).
async fn resolve(hint: &str) -> Option<SocketAddr> {
    if let Ok(addr) = hint.parse() {
        return Some(addr);
    }
    tokio::net::lookup_host(hint).await.ok()?.next()
}

impl Client {
    /// Builds a client and connects to the first node that answers, so that a wrong
    /// CA or token is reported here rather than at the first call.
    ///
    /// Fails with [`ClientError::Config`] for an empty node list or unusable CA,
    /// [`ClientError::Tls`] if a node's certificate is not trusted,
    /// [`ClientError::Unauthorized`] if the token is refused, and with the last
    /// connection error if no node answered within the total timeout.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.nodes.is_empty() {
            return Err(ClientError::Config("no node addresses given".into()));
        }
        if cfg.max_frame_len < MIN_MAX_FRAME_LEN || cfg.max_frame_len > u32::MAX as usize {
            return Err(ClientError::Config(format!(
                "max_frame_len must be between {MIN_MAX_FRAME_LEN} and {} bytes",
                u32::MAX
            )));
        }
        if cfg.request_timeout.is_zero() || cfg.total_timeout.is_zero() || cfg.connect_timeout.is_zero() {
            return Err(ClientError::Config("timeouts must be positive".into()));
        }
        let tls = client_config(&cfg.ca_pem).map_err(|e| ClientError::Config(e.to_string()))?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| ClientError::Config(e.to_string()))?;
        let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
        quic.transport_config(Arc::new(transport_config()));
        let bind: SocketAddr = if cfg.nodes[0].is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint =
            Endpoint::client(bind).map_err(|e| ClientError::Transport(format!("binding {bind}: {e}")))?;
        let mut nodes: Vec<SocketAddr> = Vec::with_capacity(cfg.nodes.len());
        for &n in &cfg.nodes {
            if !nodes.contains(&n) {
                nodes.push(n);
            }
        }
        let client_id = random_u64();
        let client = Client {
            inner: Arc::new(Inner {
                endpoint,
                quic,
                nodes: Mutex::new(nodes),
                cursor: AtomicUsize::new(0),
                leader: Mutex::new(None),
                conns: Mutex::new(HashMap::new()),
                session: tokio::sync::Mutex::new(Session {
                    client_id,
                    next_seq: 1,
                }),
                next_request_id: AtomicU64::new(1),
                jitter: Mutex::new(client_id | 1),
                cfg,
            }),
        };
        client.warm_up().await?;
        Ok(client)
    }

    /// Connects to some node, trying each in turn until the total timeout.
    async fn warm_up(&self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.inner.cfg.total_timeout;
        let mut backoff = self.inner.cfg.backoff_initial;
        let mut target = self.first_target();
        loop {
            let err = match tokio::time::timeout_at(deadline, self.connection(target)).await {
                Ok(Ok(_)) => {
                    self.inner
                        .cursor
                        .store(self.node_index(target), Ordering::Relaxed);
                    return Ok(());
                }
                Ok(Err(
                    e @ (ClientError::Unauthorized(_) | ClientError::Tls(_) | ClientError::Protocol(_)),
                )) => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => ClientError::Timeout(format!(
                    "no node answered within {:?}",
                    self.inner.cfg.total_timeout
                )),
            };
            if Instant::now() >= deadline {
                return Err(err);
            }
            tracing::debug!(%target, error = %err, "cannot reach node");
            target = self.next_target(target);
            self.pause(&mut backoff, deadline).await;
        }
    }

    /// Closes every connection and waits briefly for the nodes to be told.
    pub async fn close(&self) {
        let slots: Vec<Slot> = self.lock_conns().drain().map(|(_, s)| s).collect();
        for slot in slots {
            if let Some(conn) = slot.lock().await.take() {
                conn.close(VarInt::from_u32(codes::NORMAL), b"client closed");
            }
        }
        self.inner
            .endpoint
            .close(VarInt::from_u32(codes::NORMAL), b"client closed");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }

    /// The session, and the sequence number the next write will use.
    pub async fn session(&self) -> SessionRef {
        let s = self.inner.session.lock().await;
        SessionRef {
            client_id: s.client_id,
            seq: s.next_seq,
        }
    }

    // ----- typed calls -----

    /// Opens `account` with `initial` minor units; returns the balance.
    pub async fn open_account(&self, account: AccountId, initial: u64) -> Result<u64, ClientError> {
        match self.submit(Op::OpenAccount { account, initial }).await? {
            Response::Opened { balance } => Ok(balance),
            other => Err(unexpected(&other)),
        }
    }

    /// Credits `amount` to `account`; returns the new balance.
    pub async fn deposit(&self, account: AccountId, amount: u64) -> Result<u64, ClientError> {
        match self.submit(Op::Deposit { account, amount }).await? {
            Response::Deposited { balance } => Ok(balance),
            other => Err(unexpected(&other)),
        }
    }

    /// Debits `amount` from `account`; returns the new balance.
    pub async fn withdraw(&self, account: AccountId, amount: u64) -> Result<u64, ClientError> {
        match self.submit(Op::Withdraw { account, amount }).await? {
            Response::Withdrawn { balance } => Ok(balance),
            other => Err(unexpected(&other)),
        }
    }

    /// Moves `amount` from `from` to `to` atomically; returns both new balances.
    pub async fn transfer(
        &self,
        from: AccountId,
        to: AccountId,
        amount: u64,
    ) -> Result<Transferred, ClientError> {
        match self.submit(Op::Transfer { from, to, amount }).await? {
            Response::Transferred {
                from_balance,
                to_balance,
            } => Ok(Transferred {
                from_balance,
                to_balance,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// The balance of `account`, reflecting every write acknowledged before the call.
    pub async fn balance(&self, account: AccountId) -> Result<u64, ClientError> {
        Ok(self
            .read_balance(account, Consistency::Linearizable)
            .await?
            .balance)
    }

    /// The balance of `account` as some node currently has it; may miss recent writes.
    pub async fn balance_stale(&self, account: AccountId) -> Result<u64, ClientError> {
        Ok(self.read_balance(account, Consistency::Stale).await?.balance)
    }

    /// The last `limit` transactions of `account` (linearizable).
    pub async fn statement(&self, account: AccountId, limit: u32) -> Result<Statement, ClientError> {
        self.read_statement(account, limit, Consistency::Linearizable)
            .await
    }

    /// Runs one write and returns the state machine's response; a business rejection
    /// is returned as [`ClientError::Rejected`].
    ///
    /// Amounts are checked locally first (against [`MAX_AMOUNT`]), so a request bound
    /// to be rejected for its amount never leaves the client.
    pub async fn submit(&self, op: Op) -> Result<Response, ClientError> {
        validate_op(&op, MAX_AMOUNT).map_err(ClientError::Rejected)?;
        // One outstanding write per session: held across every retry.
        let mut session = self.inner.session.lock().await;
        let mut renewed = false;
        loop {
            let seq = session.next_seq;
            // Whatever happens next, this number is spent: reusing it for another
            // operation could be answered with this one's recorded response.
            session.next_seq += 1;
            let request = Request::new(session.client_id, seq, op);
            // Whether an attempt that may have reached the leader ended without an
            // answer (so this very request may already be applied).
            let mut maybe_applied = false;
            match self
                .execute_tracked(RequestKind::Write(request), true, &mut maybe_applied)
                .await?
            {
                ServerReply::Written {
                    response: Response::Rejected(Rejection::SessionExpired { client_id }),
                    ..
                } if client_id == session.client_id && maybe_applied => {
                    // This attempt was refused, but an earlier one may have been
                    // applied before the session was dropped: resending under a new
                    // session could apply it twice. Say the outcome is unknown, and
                    // start a fresh session for what comes next.
                    session.client_id = random_u64();
                    session.next_seq = 1;
                    return Err(ClientError::SessionLost(format!(
                        "session {client_id} was dropped while request {seq} was being retried"
                    )));
                }
                ServerReply::Written {
                    response: Response::Rejected(Rejection::SessionExpired { client_id }),
                    ..
                } if client_id == session.client_id && !renewed => {
                    // The session is gone (expired, evicted, or its first request never
                    // arrived) and this request, sent once, was not applied: start a
                    // fresh session and send it again, once.
                    tracing::debug!(client_id, "session expired; starting a new one");
                    session.client_id = random_u64();
                    session.next_seq = 1;
                    renewed = true;
                }
                ServerReply::Written {
                    response: Response::Rejected(r),
                    ..
                } => return Err(ClientError::Rejected(r)),
                ServerReply::Written { response, .. } => return Ok(response),
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// A balance with the chosen consistency, and how fresh it is.
    pub async fn read_balance(
        &self,
        account: AccountId,
        consistency: Consistency,
    ) -> Result<BalanceReading, ClientError> {
        match self
            .execute(RequestKind::Balance { account, consistency }, false)
            .await?
        {
            ServerReply::Balance {
                account,
                balance,
                applied_index,
            } => Ok(BalanceReading {
                account,
                balance,
                applied_index,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// A statement with the chosen consistency.
    pub async fn read_statement(
        &self,
        account: AccountId,
        limit: u32,
        consistency: Consistency,
    ) -> Result<Statement, ClientError> {
        let kind = RequestKind::Statement {
            account,
            limit,
            consistency,
        };
        match self.execute(kind, false).await? {
            ServerReply::Statement {
                account,
                balance,
                txns,
                applied_index,
            } => Ok(Statement {
                account,
                balance,
                txns,
                applied_index,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Checks that some node answers; returns its node id.
    pub async fn ping(&self) -> Result<u64, ClientError> {
        match self.execute(RequestKind::Ping, false).await? {
            ServerReply::Pong { node_id } => Ok(node_id),
            other => Err(unexpected(&other)),
        }
    }

    /// The status of the node at `node` (asked directly: no redirect, one attempt).
    pub async fn node_status(&self, node: SocketAddr) -> Result<NodeStatus, ClientError> {
        let id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        let timeout = self.inner.cfg.request_timeout;
        let sent = AtomicBool::new(false);
        let reply = tokio::time::timeout(timeout, self.attempt(node, id, RequestKind::Status, &sent))
            .await
            .map_err(|_| ClientError::Timeout(format!("{node}: no answer within {timeout:?}")))??;
        match reply {
            ServerReply::Status(s) => Ok(s),
            ServerReply::Unauthorized { reason } => Err(ClientError::Unauthorized(reason)),
            other => Err(unexpected(&other)),
        }
    }

    // ----- the retry loop -----

    /// Sends `kind` until a final answer, following redirects and retrying (the same
    /// request, so the same sequence number for a write) until the total timeout.
    /// Returns replies that carry an answer; turns the others into errors.
    async fn execute(&self, kind: RequestKind, is_write: bool) -> Result<ServerReply, ClientError> {
        let mut maybe_delivered = false;
        self.execute_tracked(kind, is_write, &mut maybe_delivered).await
    }

    /// [`Client::execute`], also telling whether an attempt that may have reached a
    /// leader ended without an answer (a timeout, a broken connection, or "unavailable"
    /// from a node that may have proposed it): for a write, whether this request may
    /// already have been applied by the time the final answer comes.
    async fn execute_tracked(
        &self,
        kind: RequestKind,
        is_write: bool,
        maybe_delivered: &mut bool,
    ) -> Result<ServerReply, ClientError> {
        let cfg = &self.inner.cfg;
        let deadline = Instant::now() + cfg.total_timeout;
        let mut backoff = cfg.backoff_initial;
        let mut redirects = 0u32;
        let mut target = self.first_target();
        loop {
            let now = Instant::now();
            let budget = cfg.request_timeout.min(deadline.saturating_duration_since(now));
            let id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
            let received_before = self.datagrams_received(target);
            // Set once the request's bytes start to leave: before that, a failed
            // attempt certainly did not reach the node.
            let sent = AtomicBool::new(false);
            let attempt = tokio::time::timeout(budget, self.attempt(target, id, kind.clone(), &sent)).await;
            // Set when the node answered that it is not the leader.
            let mut not_leader = false;
            // `move_on`: the next attempt goes to another node.
            let (err, move_on) = match attempt {
                Err(_) => {
                    self.drop_if_silent(target, received_before).await;
                    (
                        ClientError::Timeout(format!("{target}: no answer within {budget:?}")),
                        true,
                    )
                }
                Ok(Err(e @ (ClientError::Unauthorized(_) | ClientError::Tls(_)))) => return Err(e),
                Ok(Err(e)) => (e, true),
                Ok(Ok(reply)) => match reply {
                    ServerReply::NotLeader {
                        leader_id,
                        leader_client_addr,
                    } => {
                        not_leader = true;
                        let hint = match &leader_client_addr {
                            Some(a) => resolve(a).await,
                            None => None,
                        };
                        match hint {
                            Some(leader) if leader != target => {
                                tracing::debug!(from = %target, to = %leader, ?leader_id, "redirected to the leader");
                                self.learn_leader(leader);
                                target = leader;
                                redirects += 1;
                                if redirects <= FREE_REDIRECTS {
                                    continue;
                                }
                                (
                                    ClientError::Unavailable(format!("redirected {redirects} times")),
                                    false,
                                )
                            }
                            _ => (
                                ClientError::Unavailable(format!(
                                    "not the leader (leader {leader_id:?} at {leader_client_addr:?})"
                                )),
                                true,
                            ),
                        }
                    }
                    ServerReply::Unavailable {
                        reason,
                        retryable: true,
                    } => (ClientError::Unavailable(reason), true),
                    ServerReply::Unavailable {
                        reason,
                        retryable: false,
                    } => return Err(ClientError::Unavailable(reason)),
                    ServerReply::BadRequest { reason } => return Err(ClientError::Protocol(reason)),
                    ServerReply::Unauthorized { reason } => return Err(ClientError::Unauthorized(reason)),
                    ServerReply::Rejected(r) => return Err(ClientError::Rejected(r)),
                    answer => {
                        if is_write {
                            self.learn_leader(target);
                        }
                        return Ok(answer);
                    }
                },
            };
            // A node that answered "not the leader" did not propose the request, nor
            // did one the request never reached; any other failed attempt may have.
            if !not_leader && sent.load(Ordering::Relaxed) {
                *maybe_delivered = true;
            }
            if move_on {
                // A node that failed us is not tried first again; the next one will
                // redirect if it is not the leader either.
                self.forget_leader(target);
                target = self.next_target(target);
            }
            if Instant::now() >= deadline {
                return Err(err);
            }
            tracing::debug!(%target, error = %err, "retrying");
            self.pause(&mut backoff, deadline).await;
            if Instant::now() >= deadline {
                return Err(err);
            }
        }
    }

    /// Sleeps for the jittered backoff (never past `deadline`) and doubles it.
    async fn pause(&self, backoff: &mut Duration, deadline: Instant) {
        let jitter = {
            let mut state = self.inner.jitter.lock().unwrap_or_else(|e| e.into_inner());
            *state = splitmix(*state);
            *state
        };
        // Between half and all of the backoff.
        let nanos = backoff.as_nanos() as u64;
        let wait = Duration::from_nanos(nanos / 2 + jitter % (nanos / 2 + 1));
        let until = (Instant::now() + wait).min(deadline);
        tokio::time::sleep_until(until).await;
        *backoff = (*backoff * 2).min(self.inner.cfg.backoff_max);
    }

    /// One request on its own stream to `target`.
    async fn attempt(
        &self,
        target: SocketAddr,
        id: u64,
        kind: RequestKind,
        sent: &AtomicBool,
    ) -> Result<ServerReply, ClientError> {
        let conn = self.connection(target).await?;
        let result = self.exchange(target, &conn, id, kind, sent).await;
        if result.is_err() && conn.close_reason().is_some() {
            self.drop_connection(target, &conn).await;
        }
        result
    }

    async fn exchange(
        &self,
        target: SocketAddr,
        conn: &Connection,
        id: u64,
        kind: RequestKind,
        sent: &AtomicBool,
    ) -> Result<ServerReply, ClientError> {
        let max = self.inner.cfg.max_frame_len;
        let frame = encode_frame(&ClientFrame::Request(ClientRequest { id, kind }), max)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| classify(target, &e))?;
        // The node may answer, and stop our side, before reading everything (an
        // oversized request): the reply is read regardless.
        sent.store(true, Ordering::Relaxed);
        if let Err(error) = send.write_all(&frame).await {
            tracing::debug!(%target, %error, "request write failed");
        }
        let _ = send.finish();
        match read_frame::<ServerFrame, _>(&mut recv, max).await {
            Ok(ServerFrame::Reply { id: got, reply }) if got == id || got == 0 => Ok(reply),
            Ok(ServerFrame::Reply { id: got, .. }) => Err(ClientError::Protocol(format!(
                "{target}: reply for request {got} on the stream of request {id}"
            ))),
            Ok(ServerFrame::Welcome(_)) => Err(ClientError::Protocol(format!(
                "{target}: welcome on a request stream"
            ))),
            Err(e) if e.is_io() => Err(match conn.close_reason() {
                Some(reason) => classify(target, &reason),
                None => ClientError::Transport(format!("{target}: {e}")),
            }),
            Err(e) => Err(ClientError::Protocol(format!("{target}: {e}"))),
        }
    }

    // ----- connections -----

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Slot>> {
        self.inner.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live connection to `target`, dialing (and saying hello) if there is none.
    async fn connection(&self, target: SocketAddr) -> Result<Connection, ClientError> {
        let slot = self.lock_conns().entry(target).or_default().clone();
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        *guard = None;
        let timeout = self.inner.cfg.connect_timeout;
        let conn = tokio::time::timeout(timeout, self.dial(target))
            .await
            .map_err(|_| ClientError::Timeout(format!("{target}: no connection within {timeout:?}")))??;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// The cached connection to `target` and how many datagrams it has received.
    fn datagrams_received(&self, target: SocketAddr) -> Option<(Connection, u64)> {
        let slot = self.lock_conns().get(&target).cloned()?;
        let guard = slot.try_lock().ok()?;
        let conn = guard.as_ref()?.clone();
        let received = conn.stats().udp_rx.datagrams;
        Some((conn, received))
    }

    /// After an attempt timed out: if the connection it used received nothing at all
    /// meanwhile (not even an acknowledgement of the request), the node is gone (it
    /// crashed, or restarted and lost the connection), so the connection is closed and
    /// forgotten and the next attempt dials afresh, instead of waiting out the idle
    /// timeout. A connection that is merely slow to answer is kept.
    async fn drop_if_silent(&self, target: SocketAddr, before: Option<(Connection, u64)>) {
        let Some((conn, received)) = before else {
            return;
        };
        if conn.stats().udp_rx.datagrams == received {
            tracing::debug!(%target, "the connection received nothing during a timed-out attempt; dropping it");
            conn.close(VarInt::from_u32(codes::NORMAL), b"unresponsive");
            self.drop_connection(target, &conn).await;
        }
    }

    async fn drop_connection(&self, target: SocketAddr, dead: &Connection) {
        let slot = self.lock_conns().get(&target).cloned();
        if let Some(slot) = slot {
            let mut guard = slot.lock().await;
            if guard.as_ref().is_some_and(|c| c.stable_id() == dead.stable_id()) {
                *guard = None;
            }
        }
    }

    async fn dial(&self, target: SocketAddr) -> Result<Connection, ClientError> {
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.quic.clone(), target, CLIENT_SERVER_NAME)
            .map_err(|e| ClientError::Transport(format!("{target}: {e}")))?;
        let conn = connecting.await.map_err(|e| classify(target, &e))?;
        let max = self.inner.cfg.max_frame_len;
        let hello = ClientFrame::Hello(Hello {
            token: self.inner.cfg.token.clone(),
            client: concat!("bank-app/", env!("CARGO_PKG_VERSION")).into(),
        });
        let frame = encode_frame(&hello, max).map_err(|e| ClientError::Config(e.to_string()))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| classify(target, &e))?;
        if let Err(error) = send.write_all(&frame).await {
            tracing::debug!(%target, %error, "hello write failed");
        }
        let _ = send.finish();
        let refused = |e: ClientError| {
            conn.close(VarInt::from_u32(codes::NORMAL), b"handshake refused");
            Err(e)
        };
        match read_frame::<ServerFrame, _>(&mut recv, max).await {
            Ok(ServerFrame::Welcome(w)) => {
                tracing::debug!(%target, node = w.node_id, server = %w.server, "connected");
                Ok(conn)
            }
            Ok(ServerFrame::Reply {
                reply: ServerReply::Unauthorized { reason },
                ..
            }) => refused(ClientError::Unauthorized(reason)),
            Ok(ServerFrame::Reply {
                reply: ServerReply::BadRequest { reason },
                ..
            }) => refused(ClientError::Protocol(reason)),
            Ok(ServerFrame::Reply { reply, .. }) => refused(ClientError::Protocol(format!(
                "{target}: unexpected answer to hello: {reply:?}"
            ))),
            Err(e) if e.is_io() => {
                let err = match conn.close_reason() {
                    Some(reason) => classify(target, &reason),
                    None => ClientError::Transport(format!("{target}: {e}")),
                };
                refused(err)
            }
            Err(e) => refused(ClientError::Protocol(format!("{target}: {e}"))),
        }
    }

    // ----- choosing nodes -----

    fn node_index(&self, addr: SocketAddr) -> usize {
        let nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.iter().position(|&n| n == addr).unwrap_or(0)
    }

    /// The known leader, else the node the cursor points at.
    fn first_target(&self) -> SocketAddr {
        if let Some(leader) = *self.inner.leader.lock().unwrap_or_else(|e| e.into_inner()) {
            return leader;
        }
        let nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes[self.inner.cursor.load(Ordering::Relaxed) % nodes.len()]
    }

    /// The node after `failed` in the known list.
    fn next_target(&self, failed: SocketAddr) -> SocketAddr {
        let nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let next = match nodes.iter().position(|&n| n == failed) {
            Some(i) => (i + 1) % nodes.len(),
            None => self.inner.cursor.load(Ordering::Relaxed) % nodes.len(),
        };
        self.inner.cursor.store(next, Ordering::Relaxed);
        nodes[next]
    }

    fn learn_leader(&self, leader: SocketAddr) {
        *self.inner.leader.lock().unwrap_or_else(|e| e.into_inner()) = Some(leader);
        let mut nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if !nodes.contains(&leader) && nodes.len() < MAX_KNOWN_NODES {
            nodes.push(leader);
        }
    }

    fn forget_leader(&self, addr: SocketAddr) {
        let mut leader = self.inner.leader.lock().unwrap_or_else(|e| e.into_inner());
        if *leader == Some(addr) {
            *leader = None;
        }
    }
}

fn unexpected<T: fmt::Debug>(what: &T) -> ClientError {
    ClientError::Protocol(format!("unexpected answer: {what:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypto_error_codes_are_recognised() {
        assert!(is_crypto(0x100));
        assert!(is_crypto(0x12a));
        assert!(is_crypto(0x1ff));
        assert!(!is_crypto(0x0a));
        assert!(!is_crypto(0x200));
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(random_u64(), random_u64());
    }

    #[test]
    fn errors_say_whether_a_write_may_have_applied() {
        assert!(ClientError::Timeout("x".into()).outcome_unknown());
        assert!(!ClientError::Rejected(Rejection::InvalidAmount).outcome_unknown());
        assert!(ClientError::Rejected(Rejection::InvalidAmount).is_rejection());
        assert!(!ClientError::Unauthorized("x".into()).outcome_unknown());
    }
}
