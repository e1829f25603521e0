//! The admin HTTP server (TCP): `/health`, `/status` (JSON) and `/metrics`
//! (Prometheus text), the membership endpoints under `/admin/`, and the task that
//! turns transport counters into metrics.
//!
//! It is deliberately separate from both QUIC channels so that an operator can still
//! look at a node whose Raft or client traffic is cut. It has no authentication: bind
//! it to loopback (the default of `init-cluster`) or a management network.
//!
//! Membership endpoints (JSON in, JSON out):
//!
//! | request | does |
//! | --- | --- |
//! | `GET /admin/members` | the configuration and, on the leader, each member's progress |
//! | `POST /admin/add-learner` `{"id", "raft_addr", "client_addr"}` | add a learner |
//! | `POST /admin/promote` `{"id"}` | learner to voter (refused while it lags) |
//! | `POST /admin/remove` `{"id"}` | remove a voter or learner (the leader too) |
//! | `POST /admin/transfer-leader` `{"id"}` | hand leadership over; answers once `id` leads |
//! | `POST /admin/snapshot` | take a snapshot now |
//!
//! Changes resolve once committed. Only the leader makes them: a follower does not
//! forward, it answers `421 Misdirected Request` with `error = "not_leader"` and the
//! leader's id and addresses (nodes do not know each other's admin addresses;
//! `gateway admin` maps the id to one and retries there). Refusals carry
//! `{"ok": false, "error": <kind>, "message": <text>}`: `400 invalid_change`,
//! `409 change_in_progress | learner_behind | transfer_refused | not_committed`,
//! `410 removed`, `500 snapshot_failed`,
//! `503 no_leader | stopped`, `504 outcome_unknown` (the change
//! may still commit: check `members`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use raft::core::{Membership, NodeAddr, NodeId};
use raft::sidecar::{MembershipChanged, RaftHandle, SidecarError};
use raft::transport::QuicTransport;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::status::{
    role_name, AddressReport, InboundReport, LeaderReport, MemberReport, MembersReport, ReplicationReport,
    SnapshotReport, StatusReport, TransportReport,
};

/// How long `transfer-leader` waits for the target to take over.
const TRANSFER_WAIT: Duration = Duration::from_secs(5);

/// What the handlers need.
#[derive(Clone)]
pub struct AdminState {
    /// The node's Raft handle.
    pub raft: RaftHandle,
    /// The node's Raft transport.
    pub transport: Arc<QuicTransport>,
    /// The Prometheus recorder's handle, if one is installed in this process.
    pub metrics: Option<PrometheusHandle>,
    /// The configured cluster name.
    pub cluster_id: Option<String>,
    /// Where the node listens.
    pub addresses: AddressReport,
}

impl AdminState {
    /// The `/status` report.
    pub fn status_report(&self) -> StatusReport {
        let s = self.raft.status();
        let leader = self.raft.leader();
        let core = s.core;
        let leader = leader.leader.map(|id| LeaderReport {
            id,
            is_self: leader.is_self,
            raft_addr: leader.addr.as_ref().map(|a| a.raft.clone()),
            client_addr: leader.addr.as_ref().map(|a| a.client.clone()),
        });
        let replication = core
            .peers
            .iter()
            .map(|p| ReplicationReport {
                id: p.id,
                matched: p.matched,
                next: p.next,
                lag: core.last_index.saturating_sub(p.matched),
                state: p.state.to_owned(),
                inflight: p.inflight,
                recent_active: p.recent_active,
                learner: p.learner,
            })
            .collect();
        let transport = self
            .transport
            .peer_statuses()
            .into_iter()
            .map(|(id, p)| TransportReport {
                id,
                addr: p.addr.to_string(),
                connected: p.connected,
                queued: p.queued,
                sent: p.sent,
                dropped: p.dropped,
                connects: p.connects,
            })
            .collect();
        let inbound = self.transport.inbound_stats();
        StatusReport {
            node_id: core.id,
            cluster_id: self.cluster_id.clone(),
            role: role_name(core.role).to_owned(),
            term: core.term,
            vote: core.vote,
            leader,
            first_index: core.first_index,
            last_index: core.last_index,
            persisted_index: core.persisted,
            commit_index: core.commit,
            applied_index: s.applied,
            elections: s.elections,
            leader_changes: s.leader_changes,
            voters: core.membership.voters.iter().copied().collect(),
            learners: core.membership.learners.iter().copied().collect(),
            membership_index: s.membership_index,
            membership_pending: s.membership_index > core.commit,
            removed: s.removed,
            addresses: self.addresses.clone(),
            replication,
            transport,
            inbound: InboundReport {
                accepted: inbound.accepted,
                rejected: inbound.rejected,
                protocol_errors: inbound.protocol_errors,
                received: inbound.received,
            },
            snapshot: SnapshotReport {
                index: s.snapshot.index,
                restored: s.snapshot.restored,
                created: s.snapshot.created,
                sent: s.snapshot.sent,
                send_failures: s.snapshot.send_failures,
                installed: s.snapshot.installed,
                receive_failures: s.snapshot.receive_failures,
            },
        }
    }

    /// Whether the sidecar's driver is still running (it drops its watch senders
    /// when it stops, on shutdown or after a fatal storage error).
    pub fn sidecar_running(&self) -> bool {
        self.raft.watch_leader().has_changed().is_ok()
    }
}

/// Describes the gateway's own metrics so `/metrics` carries HELP lines.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "raft_peer_connected",
        "1 if the outbound Raft connection to the peer is up"
    );
    metrics::describe_gauge!(
        "raft_transport_queued",
        "Raft messages waiting to be sent to the peer"
    );
    metrics::describe_counter!("raft_transport_sent_total", "Raft messages written to the peer");
    metrics::describe_counter!(
        "raft_transport_dropped_total",
        "Raft messages dropped for the peer (queue full or link down; Raft retransmits)"
    );
    metrics::describe_counter!(
        "raft_transport_connects_total",
        "Raft connections established to the peer"
    );
    metrics::describe_counter!(
        "raft_transport_inbound_accepted_total",
        "Inbound Raft connections accepted"
    );
    metrics::describe_counter!(
        "raft_transport_inbound_rejected_total",
        "Inbound Raft connections refused (bad handshake or unknown peer)"
    );
    metrics::describe_counter!(
        "raft_transport_inbound_protocol_errors_total",
        "Inbound Raft connections closed for protocol violations"
    );
    metrics::describe_counter!("raft_transport_inbound_received_total", "Raft messages received");
    metrics::describe_gauge!("gateway_info", "Always 1; labels carry the node id and version");
}

/// Copies the transport's counters into metrics. Cheap; called periodically and
/// before every `/metrics` render.
pub fn record_transport_metrics(node: u64, transport: &QuicTransport) {
    metrics::gauge!("gateway_info", "node" => node.to_string(), "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    for (id, p) in transport.peer_statuses() {
        let peer = id.to_string();
        metrics::gauge!("raft_peer_connected", "peer" => peer.clone()).set(if p.connected {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("raft_transport_queued", "peer" => peer.clone()).set(p.queued as f64);
        metrics::counter!("raft_transport_sent_total", "peer" => peer.clone()).absolute(p.sent);
        metrics::counter!("raft_transport_dropped_total", "peer" => peer.clone()).absolute(p.dropped);
        metrics::counter!("raft_transport_connects_total", "peer" => peer).absolute(p.connects);
    }
    let inbound = transport.inbound_stats();
    metrics::counter!("raft_transport_inbound_accepted_total").absolute(inbound.accepted);
    metrics::counter!("raft_transport_inbound_rejected_total").absolute(inbound.rejected);
    metrics::counter!("raft_transport_inbound_protocol_errors_total").absolute(inbound.protocol_errors);
    metrics::counter!("raft_transport_inbound_received_total").absolute(inbound.received);
}

/// Runs [`record_transport_metrics`] every `every`, and the Prometheus recorder's
/// upkeep (which bounds histogram memory), until `cancel`.
pub fn spawn_metrics_task(state: AdminState, every: Duration, cancel: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The transport logs link changes at debug only; operators want them at info.
        let mut links: HashMap<u64, bool> = HashMap::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = interval.tick() => {}
            }
            for (peer, p) in state.transport.peer_statuses() {
                let was = links.insert(peer, p.connected);
                match (was, p.connected) {
                    (Some(false) | None, true) => info!(peer, addr = %p.addr, "raft link to peer is up"),
                    (Some(true), false) => warn!(peer, addr = %p.addr, "raft link to peer is down"),
                    _ => {}
                }
            }
            record_transport_metrics(state.raft.id(), &state.transport);
            if let Some(m) = &state.metrics {
                m.run_upkeep();
            }
        }
    })
}

async fn health(State(state): State<AdminState>) -> Response {
    if state.sidecar_running() {
        let s = state.raft.status();
        let role = role_name(s.core.role);
        let mut body = serde_json::json!({ "status": "ok", "node_id": state.raft.id(), "role": role });
        if s.removed {
            // Still healthy as a process; no longer part of the cluster.
            body["removed"] = serde_json::Value::Bool(true);
        }
        Json(body).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "raft sidecar stopped", "node_id": state.raft.id() })),
        )
            .into_response()
    }
}

async fn status(State(state): State<AdminState>) -> Json<StatusReport> {
    Json(state.status_report())
}

async fn prometheus(State(state): State<AdminState>) -> Response {
    match &state.metrics {
        Some(m) => {
            record_transport_metrics(state.raft.id(), &state.transport);
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                m.render(),
            )
                .into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no metrics recorder is installed in this process\n",
        )
            .into_response(),
    }
}

/// A refusal of an admin request: status code, machine-readable kind, explanation,
/// and where the leader is when this node is not it.
struct AdminError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    leader: Option<LeaderReport>,
}

impl AdminError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        AdminError {
            status,
            kind,
            message: message.into(),
            leader: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        AdminError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn from_sidecar(e: SidecarError, state: &AdminState) -> Self {
        let message = e.to_string();
        match e {
            SidecarError::NotLeader {
                leader: Some(id),
                addr,
            } => AdminError {
                status: StatusCode::MISDIRECTED_REQUEST,
                kind: "not_leader",
                message: format!("node {} is not the leader; node {id} is", state.raft.id()),
                leader: Some(LeaderReport {
                    id,
                    is_self: false,
                    raft_addr: addr.as_ref().map(|a| a.raft.clone()),
                    client_addr: addr.map(|a| a.client),
                }),
            },
            SidecarError::NotLeader { leader: None, .. } => AdminError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
                "no leader is known (election in progress?); retry shortly",
            ),
            SidecarError::Membership(_) => {
                AdminError::new(StatusCode::BAD_REQUEST, "invalid_change", message)
            }
            SidecarError::ChangeInProgress => {
                AdminError::new(StatusCode::CONFLICT, "change_in_progress", message)
            }
            SidecarError::LearnerBehind { .. } => {
                AdminError::new(StatusCode::CONFLICT, "learner_behind", message)
            }
            SidecarError::Transfer(_) => AdminError::new(StatusCode::CONFLICT, "transfer_refused", message),
            SidecarError::Removed => AdminError::new(StatusCode::GONE, "removed", message),
            SidecarError::NotCommitted => AdminError::new(
                StatusCode::CONFLICT,
                "not_committed",
                format!("{message}; nothing changed, retry"),
            ),
            SidecarError::Timeout | SidecarError::LeadershipLost => AdminError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "outcome_unknown",
                format!("{message}; check `gateway admin members` before retrying"),
            ),
            SidecarError::Stopped(_) => AdminError::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", message),
            SidecarError::Snapshot(_) => {
                AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "snapshot_failed", message)
            }
            other => AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", other.to_string()),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "ok": false,
            "error": self.kind,
            "message": self.message,
        });
        if let Some(leader) = self.leader {
            body["leader"] = serde_json::to_value(leader).unwrap_or_default();
        }
        (self.status, Json(body)).into_response()
    }
}

/// The body of a request that names a node.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeBody {
    id: NodeId,
}

/// The body of `POST /admin/add-learner`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddLearnerBody {
    id: NodeId,
    raft_addr: String,
    client_addr: String,
}

fn parse_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, AdminError> {
    body.map(|Json(b)| b)
        .map_err(|e| AdminError::bad_request(format!("bad request body: {}", e.body_text())))
}

/// An address other nodes and clients can reach: `IP:PORT`, not unspecified, not
/// port 0.
fn reachable_addr(field: &str, value: &str) -> Result<String, AdminError> {
    let addr: SocketAddr = value.trim().parse().map_err(|_| {
        AdminError::bad_request(format!(
            "{field}: `{value}` is not a socket address (expected IP:PORT)"
        ))
    })?;
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(AdminError::bad_request(format!(
            "{field}: {addr} is not an address other nodes and clients can reach"
        )));
    }
    Ok(addr.to_string())
}

fn membership_json(m: &Membership) -> serde_json::Value {
    let addrs: serde_json::Map<String, serde_json::Value> = m
        .addrs
        .iter()
        .map(|(id, a)| {
            (
                id.to_string(),
                serde_json::json!({ "raft": a.raft, "client": a.client }),
            )
        })
        .collect();
    serde_json::json!({
        "voters": m.voters,
        "learners": m.learners,
        "addrs": addrs,
    })
}

fn changed(done: MembershipChanged) -> Response {
    Json(serde_json::json!({
        "ok": true,
        "index": done.index,
        "membership": membership_json(&done.membership),
    }))
    .into_response()
}

async fn members(State(state): State<AdminState>) -> Result<Json<MembersReport>, AdminError> {
    let m = state
        .raft
        .membership()
        .await
        .map_err(|e| AdminError::from_sidecar(e, &state))?;
    let leader = state.raft.leader();
    let leader = leader.leader.map(|id| LeaderReport {
        id,
        is_self: leader.is_self,
        raft_addr: leader.addr.as_ref().map(|a| a.raft.clone()),
        client_addr: leader.addr.as_ref().map(|a| a.client.clone()),
    });
    let members = m
        .membership
        .members()
        .into_iter()
        .map(|id| {
            let addr = m.membership.addrs.get(&id);
            let progress = m.peers.iter().find(|p| p.id == id);
            MemberReport {
                id,
                role: if m.membership.is_voter(id) {
                    "voter"
                } else {
                    "learner"
                }
                .to_owned(),
                raft_addr: addr.map(|a| a.raft.clone()),
                client_addr: addr.map(|a| a.client.clone()),
                this_node: id == m.id,
                matched: progress.map(|p| p.matched),
                lag: progress.map(|p| p.lag),
                state: progress.map(|p| p.state.to_owned()),
                recent_active: progress.map(|p| p.recent_active),
            }
        })
        .collect();
    Ok(Json(MembersReport {
        node_id: m.id,
        is_leader: m.is_leader,
        leader,
        index: m.index,
        pending: m.pending,
        removed: m.removed,
        last_index: m.last_index,
        commit_index: m.commit_index,
        members,
    }))
}

async fn add_learner(
    State(state): State<AdminState>,
    body: Result<Json<AddLearnerBody>, JsonRejection>,
) -> Result<Response, AdminError> {
    let body = parse_body(body)?;
    if body.id == 0 {
        return Err(AdminError::bad_request("id: node id 0 is reserved"));
    }
    let addr = NodeAddr {
        raft: reachable_addr("raft_addr", &body.raft_addr)?,
        client: reachable_addr("client_addr", &body.client_addr)?,
    };
    info!(node = body.id, raft = %addr.raft, client = %addr.client, "admin: adding a learner");
    let done = state
        .raft
        .add_learner(body.id, addr)
        .await
        .map_err(|e| AdminError::from_sidecar(e, &state))?;
    Ok(changed(done))
}

async fn promote(
    State(state): State<AdminState>,
    body: Result<Json<NodeBody>, JsonRejection>,
) -> Result<Response, AdminError> {
    let body = parse_body(body)?;
    info!(node = body.id, "admin: promoting a learner");
    let done = state
        .raft
        .promote(body.id)
        .await
        .map_err(|e| AdminError::from_sidecar(e, &state))?;
    Ok(changed(done))
}

async fn remove(
    State(state): State<AdminState>,
    body: Result<Json<NodeBody>, JsonRejection>,
) -> Result<Response, AdminError> {
    let body = parse_body(body)?;
    info!(node = body.id, "admin: removing a node");
    let done = state
        .raft
        .remove_node(body.id)
        .await
        .map_err(|e| AdminError::from_sidecar(e, &state))?;
    Ok(changed(done))
}

async fn transfer_leader(
    State(state): State<AdminState>,
    body: Result<Json<NodeBody>, JsonRejection>,
) -> Result<Response, AdminError> {
    let to = parse_body(body)?.id;
    let leader = state.raft.leader();
    if !leader.is_self {
        // Checked here so that a follower answers with the leader's whereabouts.
        return Err(AdminError::from_sidecar(
            SidecarError::NotLeader {
                leader: leader.leader,
                addr: leader.addr,
            },
            &state,
        ));
    }
    info!(to, "admin: transferring leadership");
    let mut watch = state.raft.watch_leader();
    state
        .raft
        .transfer_leader(to)
        .await
        .map_err(|e| AdminError::from_sidecar(e, &state))?;
    let took_over = tokio::time::timeout(TRANSFER_WAIT, async {
        loop {
            if watch.borrow_and_update().leader == Some(to) {
                return true;
            }
            if watch.changed().await.is_err() {
                return false;
            }
        }
    })
    .await;
    match took_over {
        Ok(true) => Ok(Json(serde_json::json!({ "ok": true, "leader": to })).into_response()),
        Ok(false) => Err(AdminError::from_sidecar(
            SidecarError::Stopped("the raft sidecar stopped".into()),
            &state,
        )),
        Err(_) => Err(AdminError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "outcome_unknown",
            format!(
                "node {to} did not take over within {TRANSFER_WAIT:?} (it may be behind or unreachable); \
                 check `gateway admin members`"
            ),
        )),
    }
}

/// Takes a snapshot of this node's state machine now, writes it durably and compacts
/// the log behind it (keeping the configured tail). Any node can take its own.
async fn snapshot(State(state): State<AdminState>) -> Result<Response, AdminError> {
    match state.raft.snapshot_now().await {
        Ok(index) => Ok(Json(serde_json::json!({
            "ok": true,
            "node": state.raft.id(),
            "index": index,
        }))
        .into_response()),
        Err(e) => Err(AdminError::from_sidecar(e, &state)),
    }
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(prometheus))
        .route("/admin/members", get(members))
        .route("/admin/add-learner", post(add_learner))
        .route("/admin/promote", post(promote))
        .route("/admin/remove", post(remove))
        .route("/admin/transfer-leader", post(transfer_leader))
        .route("/admin/snapshot", post(snapshot))
        .with_state(state)
}

/// A running admin server.
pub struct AdminServer {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `listen` (TCP) and serves the admin routes.
    pub async fn start(listen: SocketAddr, state: AdminState) -> std::io::Result<AdminServer> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router(state))
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                warn!(error = %e, "admin HTTP server stopped");
            }
        });
        Ok(AdminServer {
            local_addr,
            cancel,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and lets in-flight requests finish (bounded by `grace`).
    pub async fn shutdown(self, grace: Duration) {
        self.cancel.cancel();
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}
