//! One running node: the Raft log on redb, the QUIC peer channel, the sidecar driving
//! the bank, the bank's client channel, and the admin HTTP server, started in that
//! order and stopped in the reverse one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bank_app::{Bank, BankReplica};
use metrics_exporter_prometheus::PrometheusHandle;
use raft::sidecar::{RaftHandle, Sidecar, StartError};
use raft::storage::{RedbStore, StorageError};
use raft::transport::tls::build_tls_configs;
use raft::transport::{QuicConfig, QuicTransport, TlsError, TlsMaterial, TransportError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, AdminServer, AdminState};
use crate::config::NodeConfig;
use crate::status::{AddressReport, StatusReport};
use bank_app::server;

/// Inbound Raft messages buffered between the transport and the driver.
const INBOUND_CAPACITY: usize = 4096;
/// How often transport counters become metrics.
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// Bound on each shutdown step, so that a wedged component cannot keep the process
/// alive after SIGTERM.
const STEP_GRACE: Duration = Duration::from_secs(5);

/// Errors starting a node. Each names the file or address involved.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A PEM file could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    ReadPem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificates are unusable (bad PEM, key mismatch, or the node certificate
    /// names another node).
    #[error("TLS material ({files}): {source}")]
    Tls {
        /// The CA, certificate and key files.
        files: String,
        /// The problem.
        source: Box<TlsError>,
    },
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Raft log could not be opened; the message names the file.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The Raft channel could not be bound.
    #[error("raft channel on udp {addr}: {source}")]
    Transport {
        /// The listen address.
        addr: SocketAddr,
        /// Why.
        source: TransportError,
    },
    /// The sidecar refused to start.
    #[error("raft sidecar: {0}")]
    Sidecar(#[from] StartError),
    /// The client channel could not be started.
    #[error("client channel on udp {addr}: {source}")]
    ClientChannel {
        /// The listen address.
        addr: SocketAddr,
        /// Why.
        source: server::ServerError,
    },
    /// The admin HTTP server could not be bound.
    #[error("admin HTTP server on tcp {addr}: {source}")]
    Admin {
        /// The listen address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("internal: {0}")]
    Internal(String),
}

/// Reads the node's PEM files.
pub fn load_tls_material(cfg: &NodeConfig) -> Result<TlsMaterial, NodeError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read_to_string(path).map_err(|source| NodeError::ReadPem {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    let material = TlsMaterial {
        ca_pem: read("CA certificate", &cfg.tls.ca)?,
        cert_chain_pem: read("node certificate", &cfg.tls.cert)?,
        key_pem: read("node key", &cfg.tls.key)?,
    };
    // Checked here as well as in the transport so that the error names the files.
    build_tls_configs(cfg.id, &material).map_err(|source| NodeError::Tls {
        files: format!(
            "ca {}, cert {}, key {}",
            cfg.tls.ca.display(),
            cfg.tls.cert.display(),
            cfg.tls.key.display()
        ),
        source: Box::new(source),
    })?;
    Ok(material)
}

/// Starts the bank's client channel. The only place that touches
/// `bank_app::server`, so that adapting to its API is a one-function change.
pub async fn start_client_channel(
    cfg: &NodeConfig,
    tls: &TlsMaterial,
    raft: RaftHandle,
    bank: BankReplica,
) -> Result<server::BankServer, server::ServerError> {
    let server_cfg = server::ServerConfig {
        listen: cfg.client_listen,
        cert_chain_pem: tls.cert_chain_pem.clone(),
        key_pem: tls.key_pem.clone(),
        ca_pem: tls.ca_pem.clone(),
        token: cfg.client_token.clone(),
        max_frame_len: cfg.client_max_frame_len,
    };
    server::BankServer::start(server_cfg, raft, bank).await
}

/// A running node.
pub struct Node {
    cfg: NodeConfig,
    raft: RaftHandle,
    bank: BankReplica,
    transport: Arc<QuicTransport>,
    client: server::BankServer,
    admin: AdminServer,
    admin_state: AdminState,
    background: CancellationToken,
    metrics_task: JoinHandle<()>,
}

impl Node {
    /// Starts every part of the node. `metrics` is the process's Prometheus handle
    /// (installing the recorder is the binary's business: there is one per process).
    ///
    /// On failure, whatever was already started is stopped before the error is
    /// returned.
    pub async fn start(cfg: NodeConfig, metrics: Option<PrometheusHandle>) -> Result<Node, NodeError> {
        let tls = load_tls_material(&cfg)?;

        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| NodeError::DataDir {
            path: cfg.data_dir.clone(),
            source,
        })?;
        let log_path = cfg.raft_log_path();
        let store = tokio::task::spawn_blocking(move || RedbStore::open(&log_path))
            .await
            .map_err(|e| NodeError::Internal(format!("opening the raft log: {e}")))??;

        let mut qcfg = QuicConfig::new(cfg.id, cfg.raft_listen, tls.clone());
        qcfg.cluster_id = cfg.cluster_id.clone();
        // The configuration, not this file, says who the members are: a joining node
        // knows none, and a node whose log is behind may not know the current leader
        // (added while it was down). Any node the cluster CA certified is heard (its
        // certificate must still name the id it claims); nodes removed from the
        // configuration are refused.
        qcfg.accept_unknown_peers = true;
        for p in cfg.other_peers() {
            qcfg = qcfg.with_peer(p.id, p.raft_addr);
        }
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
        let transport =
            Arc::new(
                QuicTransport::bind(qcfg, inbound_tx).map_err(|source| NodeError::Transport {
                    addr: cfg.raft_listen,
                    source,
                })?,
            );

        let bank = BankReplica::new(Bank::new());
        let raft = match Sidecar::start(
            cfg.sidecar_config(),
            store,
            transport.clone(),
            inbound_rx,
            bank.clone(),
        )
        .await
        {
            Ok(raft) => raft,
            Err(e) => {
                transport.shutdown().await;
                return Err(e.into());
            }
        };

        // Peers listed in the file but absent from the configuration in the log were
        // removed from the cluster (the file is only the bootstrap): refuse them.
        let membership = raft.status().core.membership;
        if !membership.voters.is_empty() {
            for p in cfg.other_peers().filter(|p| !membership.contains(p.id)) {
                info!(
                    peer = p.id,
                    "the config file lists a node that is no longer a member; refusing it"
                );
                transport.remove_peer(p.id);
            }
        }

        let client = match start_client_channel(&cfg, &tls, raft.clone(), bank.clone()).await {
            Ok(c) => c,
            Err(source) => {
                raft.shutdown().await;
                transport.shutdown().await;
                return Err(NodeError::ClientChannel {
                    addr: cfg.client_listen,
                    source,
                });
            }
        };

        admin::describe_metrics();
        let mut admin_state = AdminState {
            raft: raft.clone(),
            transport: transport.clone(),
            metrics,
            cluster_id: cfg.cluster_id.clone(),
            addresses: AddressReport {
                raft: transport.local_addr().to_string(),
                client: client.local_addr().to_string(),
                admin: cfg.admin_listen.to_string(),
            },
        };
        let admin = match AdminServer::start(cfg.admin_listen, admin_state.clone()).await {
            Ok(a) => a,
            Err(source) => {
                client.shutdown().await;
                raft.shutdown().await;
                transport.shutdown().await;
                return Err(NodeError::Admin {
                    addr: cfg.admin_listen,
                    source,
                });
            }
        };
        admin_state.addresses.admin = admin.local_addr().to_string();
        let background = CancellationToken::new();
        let metrics_task = admin::spawn_metrics_task(admin_state.clone(), METRICS_EVERY, background.clone());

        info!(
            node = cfg.id,
            raft = %transport.local_addr(),
            client = %client.local_addr(),
            admin = %admin.local_addr(),
            data = %cfg.data_dir.display(),
            voters = ?membership.voters,
            learners = ?membership.learners,
            join = cfg.join,
            "gateway node started"
        );
        Ok(Node {
            cfg,
            raft,
            bank,
            transport,
            client,
            admin,
            admin_state,
            background,
            metrics_task,
        })
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The Raft handle.
    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    /// The local bank replica.
    pub fn bank(&self) -> &BankReplica {
        &self.bank
    }

    /// The Raft transport.
    pub fn transport(&self) -> &Arc<QuicTransport> {
        &self.transport
    }

    /// The bound Raft channel address.
    pub fn raft_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// The bound client channel address.
    pub fn client_addr(&self) -> SocketAddr {
        self.client.local_addr()
    }

    /// The bound admin HTTP address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// What `/status` would answer.
    pub fn status_report(&self) -> StatusReport {
        self.admin_state.status_report()
    }

    /// Resolves when the Raft driver stops on its own (a fatal storage error): the
    /// node can no longer do anything useful and should exit.
    pub async fn sidecar_stopped(&self) {
        let mut leader = self.raft.watch_leader();
        while leader.changed().await.is_ok() {}
    }

    /// Stops the node: clients first (no new work), then the Raft driver (which
    /// finishes its batch in progress, so everything acknowledged is durable), then
    /// the peer channel, then the admin server. Each step is bounded.
    pub async fn shutdown(self) {
        info!(node = self.cfg.id, "stopping the client channel");
        if tokio::time::timeout(STEP_GRACE, self.client.shutdown())
            .await
            .is_err()
        {
            warn!("the client channel did not stop in time");
        }
        info!(node = self.cfg.id, "stopping the raft sidecar");
        if tokio::time::timeout(STEP_GRACE, self.raft.shutdown())
            .await
            .is_err()
        {
            warn!("the raft sidecar did not stop in time");
        }
        info!(node = self.cfg.id, "closing the raft channel");
        if tokio::time::timeout(STEP_GRACE, self.transport.shutdown())
            .await
            .is_err()
        {
            warn!("the raft channel did not close in time");
        }
        self.background.cancel();
        let _ = self.metrics_task.await;
        self.admin.shutdown(Duration::from_secs(2)).await;
        info!(node = self.cfg.id, "gateway node stopped");
    }
}
