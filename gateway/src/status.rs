//! The `/status` report and a small blocking client for the admin endpoints, shared
//! by the admin server, `gateway status`, and [`crate::cluster::LocalCluster`].

use std::net::SocketAddr;
use std::time::Duration;

use raft::core::{NodeId, Role};
use serde::{Deserialize, Serialize};

/// What `/status` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// This node.
    pub node_id: NodeId,
    /// The configured cluster name.
    pub cluster_id: Option<String>,
    /// `follower`, `pre_candidate`, `candidate` or `leader`.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// Whom this node voted for in `term`.
    pub vote: Option<NodeId>,
    /// The leader this node knows of.
    pub leader: Option<LeaderReport>,
    /// First index held in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Last index durable on disk.
    pub persisted_index: u64,
    /// Committed index.
    pub commit_index: u64,
    /// Highest index applied to the bank.
    pub applied_index: u64,
    /// Elections this node started since it booted.
    pub elections: u64,
    /// Leader changes this node saw since it booted.
    pub leader_changes: u64,
    /// Current voters.
    pub voters: Vec<NodeId>,
    /// Current learners.
    pub learners: Vec<NodeId>,
    /// Log index of the configuration in force.
    #[serde(default)]
    pub membership_index: u64,
    /// The configuration is not committed yet.
    #[serde(default)]
    pub membership_pending: bool,
    /// This node was removed from the cluster (a committed configuration no longer
    /// lists it).
    #[serde(default)]
    pub removed: bool,
    /// This node's addresses.
    pub addresses: AddressReport,
    /// Replication progress of each follower (filled on the leader only).
    pub replication: Vec<ReplicationReport>,
    /// The outbound Raft connection to each peer.
    pub transport: Vec<TransportReport>,
    /// Inbound Raft connection counters.
    pub inbound: InboundReport,
    /// Snapshots of this node.
    #[serde(default)]
    pub snapshot: SnapshotReport,
}

/// Snapshot activity of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotReport {
    /// Index of the newest snapshot this node holds (0: none).
    pub index: u64,
    /// Index of the snapshot the node restored its state from when it started (0:
    /// none); only the log after it was replayed.
    pub restored: u64,
    /// Snapshots this node took.
    pub created: u64,
    /// Snapshots sent to followers that installed them.
    pub sent: u64,
    /// Snapshot transfers to followers that failed (they are retried).
    pub send_failures: u64,
    /// Snapshots received from a leader and installed.
    pub installed: u64,
    /// Received snapshots refused (damaged, incomplete, or not needed).
    pub receive_failures: u64,
}

/// Who leads, and where clients should go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderReport {
    /// The leader's id.
    pub id: NodeId,
    /// Whether this node is the leader.
    pub is_self: bool,
    /// The leader's Raft address, from the membership.
    pub raft_addr: Option<String>,
    /// The leader's client address, from the membership.
    pub client_addr: Option<String>,
}

/// Where this node listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressReport {
    /// Raft channel (UDP).
    pub raft: String,
    /// Client channel (UDP).
    pub client: String,
    /// Admin HTTP (TCP).
    pub admin: String,
}

/// The leader's view of one follower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationReport {
    /// The follower.
    pub id: NodeId,
    /// Highest index known replicated there.
    pub matched: u64,
    /// Next index to send.
    pub next: u64,
    /// Entries it is behind the leader's last index.
    #[serde(default)]
    pub lag: u64,
    /// `probe`, `replicate` or `snapshot`.
    pub state: String,
    /// Appends in flight.
    pub inflight: usize,
    /// Heard from during the last check-quorum round.
    pub recent_active: bool,
    /// A learner rather than a voter.
    pub learner: bool,
}

/// The outbound link to one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportReport {
    /// The peer.
    pub id: NodeId,
    /// Where it is dialed.
    pub addr: String,
    /// Whether a connection is established.
    pub connected: bool,
    /// Messages waiting to be sent.
    pub queued: usize,
    /// Messages sent.
    pub sent: u64,
    /// Messages dropped (queue full or link down; Raft retransmits).
    pub dropped: u64,
    /// Connections established.
    pub connects: u64,
}

/// Inbound Raft connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundReport {
    /// Connections accepted from known peers.
    pub accepted: u64,
    /// Connections refused.
    pub rejected: u64,
    /// Connections closed for protocol violations.
    pub protocol_errors: u64,
    /// Messages received.
    pub received: u64,
}

impl StatusReport {
    /// Whether this node currently leads.
    pub fn is_leader(&self) -> bool {
        self.role == role_name(Role::Leader)
    }

    /// The leader's id, if known.
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader.as_ref().map(|l| l.id)
    }

    /// A human-readable multi-line rendering.
    pub fn render_human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let leader = match &self.leader {
            Some(l) if l.is_self => format!("{} (this node)", l.id),
            Some(l) => format!(
                "{} (clients: {})",
                l.id,
                l.client_addr.as_deref().unwrap_or("unknown")
            ),
            None => "unknown".to_owned(),
        };
        let _ = writeln!(
            s,
            "node {}{}",
            self.node_id,
            self.cluster_id
                .as_deref()
                .map(|c| format!(" of cluster {c}"))
                .unwrap_or_default()
        );
        let _ = writeln!(s, "  role        {}", self.role);
        let _ = writeln!(s, "  term        {}", self.term);
        let _ = writeln!(s, "  leader      {leader}");
        let _ = writeln!(
            s,
            "  log         first {}  last {}  persisted {}  commit {}  applied {}",
            self.first_index, self.last_index, self.persisted_index, self.commit_index, self.applied_index
        );
        let _ = writeln!(
            s,
            "  members     voters {:?}  learners {:?}  (configuration at index {}{})",
            self.voters,
            self.learners,
            self.membership_index,
            if self.membership_pending { ", pending" } else { "" }
        );
        if self.removed {
            let _ = writeln!(s, "  REMOVED     this node is no longer a member of the cluster");
        }
        let _ = writeln!(
            s,
            "  listening   raft {}  client {}  admin {}",
            self.addresses.raft, self.addresses.client, self.addresses.admin
        );
        let _ = writeln!(
            s,
            "  elections   {}  leader changes {}",
            self.elections, self.leader_changes
        );
        let sn = &self.snapshot;
        let _ = writeln!(
            s,
            "  snapshots   latest {}  restored at start {}  taken {}  sent {} (failed {})  installed {} (refused {})",
            sn.index, sn.restored, sn.created, sn.sent, sn.send_failures, sn.installed, sn.receive_failures
        );
        if !self.replication.is_empty() {
            let _ = writeln!(s, "replication (leader's view)");
            let _ = writeln!(
                s,
                "  {:>5}  {:<7}  {:>10}  {:>8}  {:>10}  {:<9}  {:>8}  {:<6}",
                "peer", "role", "matched", "lag", "next", "state", "inflight", "active"
            );
            for r in &self.replication {
                let _ = writeln!(
                    s,
                    "  {:>5}  {:<7}  {:>10}  {:>8}  {:>10}  {:<9}  {:>8}  {:<6}",
                    r.id,
                    if r.learner { "learner" } else { "voter" },
                    r.matched,
                    r.lag,
                    r.next,
                    r.state,
                    r.inflight,
                    r.recent_active
                );
            }
        }
        if !self.transport.is_empty() {
            let _ = writeln!(s, "raft links (outbound)");
            let _ = writeln!(
                s,
                "  {:>5}  {:<22}  {:<9}  {:>6}  {:>10}  {:>8}  {:>8}",
                "peer", "addr", "connected", "queued", "sent", "dropped", "connects"
            );
            for t in &self.transport {
                let _ = writeln!(
                    s,
                    "  {:>5}  {:<22}  {:<9}  {:>6}  {:>10}  {:>8}  {:>8}",
                    t.id, t.addr, t.connected, t.queued, t.sent, t.dropped, t.connects
                );
            }
        }
        let _ = writeln!(
            s,
            "raft inbound  accepted {}  rejected {}  protocol errors {}  received {}",
            self.inbound.accepted, self.inbound.rejected, self.inbound.protocol_errors, self.inbound.received
        );
        s
    }
}

/// What `GET /admin/members` answers: the configuration as the node sees it and, on
/// the leader, how far each member is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersReport {
    /// The node that answered.
    pub node_id: NodeId,
    /// Whether it leads (only the leader knows the members' progress).
    pub is_leader: bool,
    /// The leader it knows of.
    pub leader: Option<LeaderReport>,
    /// Log index of the configuration in force.
    pub index: u64,
    /// Not committed yet (no other change can start until it is).
    pub pending: bool,
    /// The answering node was removed from the cluster.
    pub removed: bool,
    /// The answering node's last log index.
    pub last_index: u64,
    /// The answering node's commit index.
    pub commit_index: u64,
    /// Every member, by id.
    pub members: Vec<MemberReport>,
}

/// One member of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    /// Node id.
    pub id: NodeId,
    /// `voter` or `learner`.
    pub role: String,
    /// Its Raft address, from the configuration.
    pub raft_addr: Option<String>,
    /// Its client address, from the configuration (what redirects name).
    pub client_addr: Option<String>,
    /// It is the node that answered.
    pub this_node: bool,
    /// Highest index known replicated there (leader's view; `None` for the leader
    /// itself and on followers).
    pub matched: Option<u64>,
    /// Entries behind the leader's last index.
    pub lag: Option<u64>,
    /// Replication state (`probe`, `replicate`, `snapshot`).
    pub state: Option<String>,
    /// Heard from in the current check-quorum round.
    pub recent_active: Option<bool>,
}

impl MembersReport {
    /// The member `id`, if it is one.
    pub fn member(&self, id: NodeId) -> Option<&MemberReport> {
        self.members.iter().find(|m| m.id == id)
    }

    /// A human-readable table.
    pub fn render_human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let view = if self.is_leader {
            "the leader".to_owned()
        } else {
            match &self.leader {
                Some(l) => format!(
                    "a follower of node {}; progress is known only to the leader",
                    l.id
                ),
                None => "a node that knows no leader; progress is known only to the leader".to_owned(),
            }
        };
        let _ = writeln!(
            s,
            "membership seen by node {} ({view}): configuration at index {} ({}), commit {}",
            self.node_id,
            self.index,
            if self.pending { "pending" } else { "committed" },
            self.commit_index
        );
        if self.removed {
            let _ = writeln!(s, "node {} was REMOVED from the cluster", self.node_id);
        }
        let _ = writeln!(
            s,
            "  {:>4}  {:<7}  {:<22}  {:<22}  {:>10}  {:>8}  {:<9}  {:<6}",
            "id", "role", "raft", "client", "matched", "lag", "state", "active"
        );
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        for m in &self.members {
            let (matched, lag) = if m.this_node && self.is_leader {
                ("leader".to_owned(), "0".to_owned())
            } else {
                (opt(m.matched), opt(m.lag))
            };
            let _ = writeln!(
                s,
                "  {:>4}  {:<7}  {:<22}  {:<22}  {:>10}  {:>8}  {:<9}  {:<6}",
                m.id,
                m.role,
                m.raft_addr.as_deref().unwrap_or("?"),
                m.client_addr.as_deref().unwrap_or("?"),
                matched,
                lag,
                m.state.as_deref().unwrap_or("-"),
                m.recent_active.map_or("-", |a| if a { "yes" } else { "no" })
            );
        }
        s
    }
}

/// The name `/status` uses for a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre_candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

/// Errors talking to an admin endpoint.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// The request failed (connection refused, timeout, non-2xx status).
    #[error("GET http://{addr}{path}: {source}")]
    Http {
        /// The admin address.
        addr: SocketAddr,
        /// The path.
        path: &'static str,
        /// The failure.
        source: Box<ureq::Error>,
    },
    /// The answer was not the expected report.
    #[error("http://{addr}: unexpected answer: {source}")]
    Decode {
        /// The admin address.
        addr: SocketAddr,
        /// The decoding failure.
        source: serde_json::Error,
    },
}

fn get(addr: SocketAddr, path: &'static str, timeout: Duration) -> Result<String, AdminClientError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into();
    let wrap = |source| AdminClientError::Http {
        addr,
        path,
        source: Box::new(source),
    };
    let mut resp = agent.get(format!("http://{addr}{path}")).call().map_err(wrap)?;
    resp.body_mut().read_to_string().map_err(wrap)
}

/// `GET /status` on an admin address.
pub fn fetch_status(addr: SocketAddr, timeout: Duration) -> Result<StatusReport, AdminClientError> {
    let body = get(addr, "/status", timeout)?;
    serde_json::from_str(&body).map_err(|source| AdminClientError::Decode { addr, source })
}

/// `GET /status` as raw JSON text.
pub fn fetch_status_json(addr: SocketAddr, timeout: Duration) -> Result<String, AdminClientError> {
    get(addr, "/status", timeout)
}

/// `GET /health`: `Ok` if the node answers 200.
pub fn fetch_health(addr: SocketAddr, timeout: Duration) -> Result<(), AdminClientError> {
    get(addr, "/health", timeout).map(|_| ())
}

/// `POST` of a JSON body to an admin endpoint. Returns the HTTP status and the body
/// whatever the status (the admin endpoints explain refusals in JSON); fails only when
/// no answer arrives.
pub fn post_json(
    addr: SocketAddr,
    path: &'static str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<(u16, String), AdminClientError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let wrap = |source| AdminClientError::Http {
        addr,
        path,
        source: Box::new(source),
    };
    let mut resp = agent
        .post(format!("http://{addr}{path}"))
        .content_type("application/json")
        .send(body.to_string())
        .map_err(wrap)?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().map_err(wrap)?;
    Ok((status, text))
}

/// `GET /admin/members`.
pub fn fetch_members(addr: SocketAddr, timeout: Duration) -> Result<MembersReport, AdminClientError> {
    let body = get(addr, "/admin/members", timeout)?;
    serde_json::from_str(&body).map_err(|source| AdminClientError::Decode { addr, source })
}

/// `GET /metrics`: the Prometheus text.
pub fn fetch_metrics(addr: SocketAddr, timeout: Duration) -> Result<String, AdminClientError> {
    get(addr, "/metrics", timeout)
}
