//! The admin HTTP server (TCP): `/health`, `/status` (JSON) and `/metrics`
//! (Prometheus text), plus the task that turns transport counters into metrics.
//!
//! It is deliberately separate from both QUIC channels so that an operator can still
//! look at a node whose Raft or client traffic is cut.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use raft::sidecar::RaftHandle;
use raft::transport::QuicTransport;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::status::{
    role_name, AddressReport, InboundReport, LeaderReport, ReplicationReport, StatusReport, TransportReport,
};

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
            addresses: self.addresses.clone(),
            replication,
            transport,
            inbound: InboundReport {
                accepted: inbound.accepted,
                rejected: inbound.rejected,
                protocol_errors: inbound.protocol_errors,
                received: inbound.received,
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
        let role = role_name(state.raft.status().core.role);
        Json(serde_json::json!({ "status": "ok", "node_id": state.raft.id(), "role": role })).into_response()
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

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(prometheus))
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
