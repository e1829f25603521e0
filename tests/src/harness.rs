//! A test cluster: real `gateway run` processes with fast Raft timings, a tokio
//! runtime for clients and relays, and helpers to observe the nodes.
//!
//! Threads. [`LocalCluster`] is blocking and, with `die_with_parent`, ties each child
//! to the thread that spawned it, so every cluster operation (start, kill, restart,
//! pause) stays on the test's own thread. Async work (clients, workloads, relays) runs
//! on the harness's multi-threaded runtime, entered with [`Harness::block_on`] or
//! spawned onto it, so it keeps running while the test thread blocks on the cluster.
//!
//! Cleanup. Dropping the harness kills every node (also while a failing test
//! unwinds). When a test fails, the tail of every node's log is printed and the
//! cluster directory is kept for inspection.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bank_app::client::{Client, ClientConfig};
use bank_app::protocol::Consistency;
use bank_app::AccountId;
use gateway::config::{LogFormat, RawConfig, RawSnapshot, RawTimings};
use gateway::status::{fetch_metrics, StatusReport};
use gateway::{LocalCluster, LocalClusterOptions};
use raft::core::NodeId;
use tempfile::TempDir;

use crate::binary::gateway_binary;
use crate::relay::RelayMesh;
use crate::wait::wait_until;
use crate::workload::{History, Workload};

/// Raft tick of the test clusters.
pub const TICK_MS: u64 = 10;
/// Heartbeat interval, in ticks (30 ms).
pub const HEARTBEAT_TICKS: u32 = 3;
/// Minimum election timeout, in ticks (200 ms, randomized up to 400 ms).
pub const ELECTION_TICKS: u32 = 20;
/// How long a node waits for its proposal to apply before answering "unavailable".
pub const PROPOSE_TIMEOUT_MS: u64 = 3_000;
/// How long a node waits to confirm a linearizable read.
pub const READ_TIMEOUT_MS: u64 = 3_000;

/// One heartbeat interval.
pub const HEARTBEAT: Duration = Duration::from_millis(TICK_MS * HEARTBEAT_TICKS as u64);
/// The longest randomized election timeout.
pub const MAX_ELECTION_TIMEOUT: Duration = Duration::from_millis(TICK_MS * 2 * ELECTION_TICKS as u64);

/// Deadline for start-up steps (processes starting, first election).
pub const STARTUP: Duration = Duration::from_secs(30);
/// Deadline for a condition that should hold within a few election timeouts.
pub const SOON: Duration = Duration::from_secs(10);

/// The fast timings every test cluster runs with.
pub fn fast_timings() -> RawTimings {
    RawTimings {
        tick_ms: Some(TICK_MS),
        heartbeat_ticks: Some(HEARTBEAT_TICKS),
        election_ticks: Some(ELECTION_TICKS),
        propose_timeout_ms: Some(PROPOSE_TIMEOUT_MS),
        read_timeout_ms: Some(READ_TIMEOUT_MS),
    }
}

/// Serializes the tests of one test binary: each starts several processes with tight
/// timings, and two clusters sharing two cores would turn CPU starvation into
/// spurious elections. Hold the guard for the whole test.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running test cluster. See the module docs.
pub struct Harness {
    /// The nodes. Declared first so it is dropped (every node killed) first.
    pub cluster: LocalCluster,
    relays: Option<RelayMesh>,
    rt: tokio::runtime::Runtime,
    ca_pem: String,
    dir: Option<TempDir>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("cluster", &self.cluster)
            .field("relays", &self.relays.is_some())
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// Starts `nodes` nodes and waits until each answers `/health`.
    pub fn start(nodes: u64) -> Harness {
        Harness::launch(nodes, false, RawSnapshot::default())
    }

    /// Like [`Harness::start`], with this `[snapshot]` policy on every node (tests of
    /// compaction use small thresholds so that snapshots happen within a short run).
    pub fn start_with_snapshots(nodes: u64, snapshot: RawSnapshot) -> Harness {
        Harness::launch(nodes, false, snapshot)
    }

    /// Like [`Harness::start`], but every Raft link goes through a [`RelayMesh`]
    /// relay the test can cut: each node's config is rewritten so that its peers'
    /// `raft_addr` is the relay's address (client addresses are kept, so redirects
    /// still name the real client ports).
    pub fn start_with_relays(nodes: u64) -> Harness {
        Harness::launch(nodes, true, RawSnapshot::default())
    }

    fn launch(nodes: u64, relays: bool, snapshot: RawSnapshot) -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let dir = tempfile::Builder::new()
            .prefix("bank-e2e-")
            .tempdir()
            .expect("a temporary directory");
        let opts = LocalClusterOptions {
            nodes,
            binary: Some(gateway_binary()),
            cluster_id: Some("e2e".into()),
            timings: fast_timings(),
            snapshot,
            rust_log: Some("info".into()),
            log_format: LogFormat::Human,
            die_with_parent: true,
            ..LocalClusterOptions::default()
        };
        let mut cluster =
            LocalCluster::create(dir.path().join("cluster"), opts).expect("lay out the cluster");
        let ca_pem = std::fs::read_to_string(cluster.ca_path()).expect("read the cluster CA");
        let mesh = if relays {
            let raft_addrs: BTreeMap<NodeId, SocketAddr> = cluster
                .node_ids()
                .into_iter()
                .map(|id| (id, cluster.raft_addr(id).expect("raft address")))
                .collect();
            let mesh = rt
                .block_on(RelayMesh::start(&raft_addrs))
                .expect("start the relays");
            for id in cluster.node_ids() {
                route_peers_through(&cluster, &mesh, id);
            }
            Some(mesh)
        } else {
            None
        };
        cluster.start_all().expect("start the nodes");
        let mut h = Harness {
            cluster,
            relays: mesh,
            rt,
            ca_pem,
            dir: Some(dir),
        };
        h.cluster.wait_all_ready(STARTUP).expect("every node ready");
        h
    }

    /// The relays (for a harness made by [`Harness::start_with_relays`]).
    pub fn relays(&self) -> &RelayMesh {
        match &self.relays {
            Some(r) => r,
            None => panic!("this harness was started without relays"),
        }
    }

    /// The runtime clients and relays run on.
    pub fn rt(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// Runs `fut` to completion on the runtime.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Node `id`'s client channel address.
    pub fn client_addr(&self, id: NodeId) -> SocketAddr {
        self.cluster.client_addr(id).expect("a node of the cluster")
    }

    /// Every node's client address, node `first` first and the others in id order.
    pub fn client_addrs_from(&self, first: NodeId) -> Vec<SocketAddr> {
        let mut ids = self.cluster.node_ids();
        ids.sort_by_key(|&id| (id != first, id));
        ids.into_iter().map(|id| self.client_addr(id)).collect()
    }

    /// Every node's client address, in id order.
    pub fn all_client_addrs(&self) -> Vec<SocketAddr> {
        self.cluster.client_addrs().into_values().collect()
    }

    /// A client configuration for `nodes` with test timeouts: short attempts, so that
    /// a dead or cut-off node is left quickly, and a long total, so that the client's
    /// same-sequence retries resolve every write across a failover.
    pub fn client_config(&self, nodes: Vec<SocketAddr>) -> ClientConfig {
        let mut cfg = ClientConfig::new(nodes, self.ca_pem.clone());
        cfg.request_timeout = Duration::from_secs(1);
        cfg.connect_timeout = Duration::from_secs(1);
        cfg.total_timeout = Duration::from_secs(30);
        cfg.backoff_initial = Duration::from_millis(10);
        cfg.backoff_max = Duration::from_millis(200);
        cfg
    }

    /// A connected client for `nodes`.
    pub fn client(&self, nodes: Vec<SocketAddr>) -> Client {
        let cfg = self.client_config(nodes);
        self.block_on(Client::connect(cfg)).expect("a client connects")
    }

    /// Node `id`'s `/status`.
    pub fn status(&self, id: NodeId) -> Result<StatusReport, String> {
        self.cluster.status(id).map_err(|e| e.to_string())
    }

    /// Node `id`'s `/metrics` text.
    pub fn metrics(&self, id: NodeId) -> Result<String, String> {
        let addr = self.cluster.admin_addr(id).map_err(|e| e.to_string())?;
        fetch_metrics(addr, Duration::from_secs(2)).map_err(|e| e.to_string())
    }

    /// Waits until every running, unpaused node names the same leader; returns it.
    pub fn wait_leader(&mut self) -> NodeId {
        self.cluster.wait_leader(SOON).expect("a leader")
    }

    /// Waits until one node of `among` leads and every node of `among` says so
    /// (nodes outside `among` are not asked: they may be cut off). Returns the leader.
    pub fn wait_leader_among(&self, among: &[NodeId], timeout: Duration) -> NodeId {
        wait_until(
            &format!("a leader that nodes {among:?} agree on"),
            timeout,
            || {
                let mut views = Vec::new();
                for &id in among {
                    views.push(self.status(id)?);
                }
                let leaders: Vec<NodeId> = views
                    .iter()
                    .filter(|s| s.is_leader())
                    .map(|s| s.node_id)
                    .collect();
                let summary = || {
                    views
                        .iter()
                        .map(|s| {
                            format!(
                                "{}: {} term {} leader {:?}",
                                s.node_id,
                                s.role,
                                s.term,
                                s.leader_id()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                match leaders[..] {
                    [l] if views.iter().all(|s| s.leader_id() == Some(l)) => Ok(l),
                    _ => Err(summary()),
                }
            },
        )
    }

    /// A node of the cluster other than `leader` (the one with the smallest id).
    pub fn a_follower(&self, leader: NodeId) -> NodeId {
        self.cluster
            .node_ids()
            .into_iter()
            .find(|&id| id != leader)
            .expect("a follower")
    }

    /// Waits until node `id` has applied at least `index`; returns its status.
    pub fn wait_applied(&self, id: NodeId, index: u64, timeout: Duration) -> StatusReport {
        wait_until(&format!("node {id} to apply index {index}"), timeout, || {
            let s = self.status(id)?;
            if s.applied_index >= index {
                Ok(s)
            } else {
                Err(format!(
                    "applied {} commit {} last {}",
                    s.applied_index, s.commit_index, s.last_index
                ))
            }
        })
    }

    /// An index that covers every write acknowledged before the call: the applied
    /// index a linearizable read of `account` reports. (`/status` is published once
    /// per tick and may lag; a linearizable read waits for the read index itself.)
    pub fn acknowledged_index(&self, account: AccountId) -> u64 {
        let client = self.client(self.all_client_addrs());
        self.block_on(async {
            let r = client
                .read_balance(account, Consistency::Linearizable)
                .await
                .unwrap_or_else(|e| panic!("linearizable read of account {account}: {e}"));
            client.close().await;
            r.applied_index
        })
    }

    /// Balances read from node `id` alone with stale reads (its local state, no
    /// redirect, no Raft round trip).
    pub fn stale_balances(&self, id: NodeId, accounts: &[AccountId]) -> BTreeMap<AccountId, u64> {
        let addr = self.client_addr(id);
        let client = self.client(vec![addr]);
        self.block_on(async {
            let mut out = BTreeMap::new();
            for &a in accounts {
                let r = client
                    .read_balance(a, Consistency::Stale)
                    .await
                    .unwrap_or_else(|e| panic!("stale read of account {a} on node {id}: {e}"));
                out.insert(a, r.balance);
            }
            client.close().await;
            out
        })
    }

    /// Linearizable balances, through a client that may use any node.
    pub fn balances(&self, accounts: &[AccountId]) -> BTreeMap<AccountId, u64> {
        let client = self.client(self.all_client_addrs());
        self.block_on(async {
            let mut out = BTreeMap::new();
            for &a in accounts {
                let b = client
                    .balance(a)
                    .await
                    .unwrap_or_else(|e| panic!("linearizable read of account {a}: {e}"));
                out.insert(a, b);
            }
            client.close().await;
            out
        })
    }

    /// Waits until every node of `nodes` has applied every acknowledged write, then
    /// checks that each one's stale reads show `expected`.
    pub fn assert_nodes_converged(&self, nodes: &[NodeId], expected: &BTreeMap<AccountId, u64>) {
        let accounts: Vec<AccountId> = expected.keys().copied().collect();
        let commit = self.acknowledged_index(*accounts.first().expect("at least one account"));
        for &id in nodes {
            self.wait_applied(id, commit, SOON);
            let seen = self.stale_balances(id, &accounts);
            assert_eq!(
                &seen, expected,
                "node {id}'s balances after applying index {commit}"
            );
        }
    }

    /// Opens each account with `initial` minor units.
    pub fn open_accounts(&self, accounts: &[AccountId], initial: u64) -> BTreeMap<AccountId, u64> {
        let client = self.client(self.all_client_addrs());
        self.block_on(async {
            for &a in accounts {
                let b = client
                    .open_account(a, initial)
                    .await
                    .unwrap_or_else(|e| panic!("open account {a}: {e}"));
                assert_eq!(b, initial);
            }
            client.close().await;
        });
        accounts.iter().map(|&a| (a, initial)).collect()
    }

    /// Starts `workers` concurrent clients writing to `accounts`, each trying node
    /// `first` before the others (or the nodes in id order), and waits until the load
    /// is going (100 operations applied).
    pub fn start_load(
        &self,
        accounts: &[AccountId],
        workers: usize,
        first: Option<NodeId>,
        seed: u64,
    ) -> Workload {
        let nodes = match first {
            Some(id) => self.client_addrs_from(id),
            None => self.all_client_addrs(),
        };
        let clients = (0..workers).map(|_| self.client(nodes.clone())).collect();
        let load = Workload::start(self.rt.handle(), clients, accounts.to_vec(), seed);
        load.wait_applied(100, None, SOON);
        load
    }

    /// Checks a finished workload against the cluster: no unexpected errors or
    /// rejections, no write left with an unknown outcome, final (linearizable)
    /// balances equal to the opening balances plus exactly the acknowledged
    /// operations, and money conserved. Returns the final balances.
    pub fn assert_history_matches(
        &self,
        history: &History,
        initial: &BTreeMap<AccountId, u64>,
    ) -> BTreeMap<AccountId, u64> {
        println!("workload: {}", history.summary());
        assert!(
            history.failed().is_empty(),
            "unexpected errors: {:?}",
            history.failed()
        );
        assert!(
            history.unexpected_rejections().is_empty(),
            "unexpected rejections: {:?}",
            history.unexpected_rejections()
        );
        assert!(
            history.unknown().is_empty(),
            "the clients' same-sequence retries should resolve every write, but these are unknown: {:?}",
            history.unknown()
        );
        let accounts: Vec<AccountId> = initial.keys().copied().collect();
        let observed = self.balances(&accounts);
        if let Err(e) = history.check(initial, &observed) {
            panic!("final balances do not match the acknowledged operations: {e}");
        }
        let total: i128 = observed.values().map(|&b| i128::from(b)).sum();
        let expected_total: i128 = history.expected(initial).values().sum();
        assert_eq!(total, expected_total, "money is conserved");
        observed
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for id in self.cluster.node_ids() {
            eprintln!(
                "----- node {id} ({}) log tail -----\n{}",
                if self.cluster.is_running(id) {
                    "running"
                } else {
                    "stopped"
                },
                self.cluster.log_tail(id, 40)
            );
        }
        if let Some(dir) = self.dir.take() {
            let kept = dir.keep();
            eprintln!("----- the cluster directory is kept at {}", kept.display());
        }
    }
}

/// Rewrites node `id`'s `node.toml` so that it reaches each peer `j` through the
/// relay `id -> j`. Its own entry and every client address stay as they are.
fn route_peers_through(cluster: &LocalCluster, mesh: &RelayMesh, id: NodeId) {
    let path = cluster.config_path(id).expect("config path");
    let text = std::fs::read_to_string(&path).expect("read node.toml");
    let mut raw = RawConfig::parse(&text, &path).expect("parse node.toml");
    for peer in &mut raw.peers {
        let Some(pid) = peer.id else { continue };
        if pid != id {
            peer.raft_addr = Some(mesh.addr(id, pid).to_string());
        }
    }
    let body = raw.to_toml().expect("encode node.toml");
    std::fs::write(
        &path,
        format!("# Peers' Raft addresses point at the test's relays.\n\n{body}"),
    )
    .expect("write node.toml");
}

/// Sums the samples of metric `name` whose labels include every pair of `labels`
/// in Prometheus text. `None` if no sample matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let all = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        if !all {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}
