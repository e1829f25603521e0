//! Shared harness for sidecar tests: a recording state machine and clusters of
//! sidecars over the in-memory network or real QUIC on loopback with real redb files.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use raft::core::{Index, Membership, NodeAddr, NodeId};
use raft::sidecar::{RaftHandle, Sidecar, SidecarConfig, SidecarError, SnapshotCapture, StateMachine};
use raft::storage::{MemStore, RedbStore, SnapshotStore};
use raft::transport::certs::ClusterCa;
use raft::transport::fault::{Faults, FaultyTransport};
use raft::transport::memory::MemNetwork;
use raft::transport::quic::{QuicConfig, QuicTransport};
use tokio::sync::mpsc;

/// Applied commands, in order, as (index, payload).
pub type AppliedLog = Arc<Mutex<Vec<(Index, Bytes)>>>;

/// What happened to a node's state machine in its current incarnation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmEvent {
    /// `apply` at this index.
    Apply(Index),
    /// `restore` from a snapshot at this index.
    Restore(Index),
}

/// A state machine that records what it applies and answers with the index. Its state
/// is the applied sequence itself, so a snapshot carries the whole history and a node
/// that installed one holds the same sequence as one that applied every entry.
pub struct Recorder {
    pub log: AppliedLog,
    pub events: Arc<Mutex<Vec<SmEvent>>>,
    /// How long encoding an image takes (to show it runs off the driver).
    pub encode_delay: Duration,
}

impl StateMachine for Recorder {
    fn apply(&mut self, index: Index, command: &[u8]) -> Bytes {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((index, Bytes::copy_from_slice(command)));
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(SmEvent::Apply(index));
        Bytes::copy_from_slice(&index.to_be_bytes())
    }
    fn snapshot(&self) -> SnapshotCapture {
        let state = self.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let delay = self.encode_delay;
        Box::new(move || {
            std::thread::sleep(delay);
            let flat: Vec<(Index, Vec<u8>)> = state.into_iter().map(|(i, b)| (i, b.to_vec())).collect();
            Bytes::from(postcard::to_stdvec(&flat).unwrap_or_default())
        })
    }
    fn restore(&mut self, index: Index, image: &[u8]) -> Result<(), String> {
        let flat: Vec<(Index, Vec<u8>)> = postcard::from_bytes(image).map_err(|e| e.to_string())?;
        if flat.last().is_some_and(|(i, _)| *i > index) {
            return Err(format!("image holds entries past its index {index}"));
        }
        *self.log.lock().unwrap_or_else(|e| e.into_inner()) =
            flat.into_iter().map(|(i, b)| (i, Bytes::from(b))).collect();
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(SmEvent::Restore(index));
        Ok(())
    }
}

/// Knobs of a test cluster, kept for restarts.
#[derive(Clone)]
pub struct Options {
    /// Changes to every node's sidecar configuration.
    pub configure: fn(&mut SidecarConfig),
    /// Snapshot files in a directory per node (else an in-memory store kept across
    /// restarts). QUIC clusters always use directories.
    pub snapshot_dirs: bool,
    /// See [`Recorder::encode_delay`].
    pub encode_delay: Duration,
    /// QUIC clusters: in-memory log stores instead of redb files (to measure what
    /// the disk costs).
    pub memory_log: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            configure: |_| {},
            snapshot_dirs: false,
            encode_delay: Duration::ZERO,
            memory_log: false,
        }
    }
}

/// Fast timings so tests finish quickly: 5 ms ticks, heartbeat 25 ms, elections
/// after 150-300 ms.
pub fn fast_config(id: NodeId, membership: &Membership) -> SidecarConfig {
    let mut cfg = SidecarConfig::new(id);
    cfg.tick = Duration::from_millis(5);
    cfg.heartbeat_ticks = 5;
    cfg.election_ticks = 30;
    cfg.propose_timeout = Duration::from_secs(3);
    cfg.read_timeout = Duration::from_secs(3);
    cfg.bootstrap = Some(membership.clone());
    cfg
}

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

/// One node of a test cluster.
pub struct TestNode {
    pub id: NodeId,
    pub handle: RaftHandle,
    pub applied: AppliedLog,
    /// The node's own runtime: dropping it kills the node abruptly (like kill -9).
    pub runtime: Option<tokio::runtime::Runtime>,
    pub mem_store: Option<MemStore>,
    pub redb_path: Option<PathBuf>,
    pub raft_addr: Option<SocketAddr>,
    /// The QUIC transport (QUIC clusters only; dropped when the node is killed).
    pub quic: Option<Arc<FaultyTransport<QuicTransport>>>,
    /// The state machine's applies and restores in this incarnation.
    pub events: Arc<Mutex<Vec<SmEvent>>>,
    /// The node's snapshot store (a directory store is reopened on restart).
    pub snapshots: SnapshotStore,
    /// The directory of the snapshot store, if it is one.
    pub snapshot_dir: Option<PathBuf>,
}

/// Where the cluster's nodes talk.
// One value per test cluster: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Net {
    Memory(MemNetwork),
    Quic { ca: ClusterCa, dir: tempfile::TempDir },
}

/// A cluster of sidecars under test.
pub struct Cluster {
    pub nodes: BTreeMap<NodeId, TestNode>,
    pub faults: Arc<Faults>,
    pub membership: Membership,
    pub net: Net,
    pub options: Options,
    /// Holds the nodes' snapshot directories.
    pub tmp: tempfile::TempDir,
}

fn node_runtime(id: NodeId) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("node-{id}"))
        .enable_all()
        .build()
        .expect("node runtime")
}

/// Run `fut` on `rt` from inside another runtime and wait for it.
async fn on_runtime<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> T {
    rt.spawn(fut).await.expect("task on node runtime")
}

impl Cluster {
    /// `n` nodes over the in-memory network with in-memory stores.
    pub async fn memory(n: u64) -> Cluster {
        Self::memory_with(n, Options::default()).await
    }

    /// `n` nodes over the in-memory network with in-memory log stores and `options`.
    pub async fn memory_with(n: u64, options: Options) -> Cluster {
        let faults = Faults::new();
        let net = MemNetwork::with_faults(faults.clone());
        let membership = Membership::with_voters(1..=n);
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            faults,
            membership,
            net: Net::Memory(net),
            options,
            tmp: tempfile::tempdir().expect("tempdir"),
        };
        for id in 1..=n {
            let snapshots = cluster.new_snapshot_store(id);
            cluster.start_memory_node(id, MemStore::new(), snapshots).await;
        }
        cluster
    }

    /// Start node `id` with an empty store and no configuration, to be added to the
    /// running cluster (it joins the in-memory network at once).
    pub async fn join_memory_node(&mut self, id: NodeId) {
        let snapshots = self.new_snapshot_store(id);
        self.try_start_memory_node_as(id, MemStore::new(), snapshots, true)
            .await
            .expect("sidecar starts");
    }

    fn snapshot_dir_of(&self, id: NodeId) -> PathBuf {
        self.tmp.path().join(format!("node-{id}-snapshots"))
    }

    fn new_snapshot_store(&self, id: NodeId) -> SnapshotStore {
        if self.options.snapshot_dirs {
            SnapshotStore::open_dir(self.snapshot_dir_of(id)).expect("snapshot dir")
        } else {
            SnapshotStore::in_memory()
        }
    }

    fn recorder(&self) -> (Recorder, AppliedLog, Arc<Mutex<Vec<SmEvent>>>) {
        let applied: AppliedLog = Arc::default();
        let events: Arc<Mutex<Vec<SmEvent>>> = Arc::default();
        let sm = Recorder {
            log: applied.clone(),
            events: events.clone(),
            encode_delay: self.options.encode_delay,
        };
        (sm, applied, events)
    }

    fn config(&self, id: NodeId) -> SidecarConfig {
        let mut cfg = fast_config(id, &self.membership);
        (self.options.configure)(&mut cfg);
        cfg
    }

    /// Starts node `id`; the error if it cannot start.
    pub async fn try_start_memory_node(
        &mut self,
        id: NodeId,
        store: MemStore,
        snapshots: SnapshotStore,
    ) -> Result<(), raft::sidecar::StartError> {
        self.try_start_memory_node_as(id, store, snapshots, false).await
    }

    /// Starts node `id`, as a joining node (no configuration) if `join`.
    async fn try_start_memory_node_as(
        &mut self,
        id: NodeId,
        store: MemStore,
        snapshots: SnapshotStore,
        join: bool,
    ) -> Result<(), raft::sidecar::StartError> {
        let Net::Memory(net) = &self.net else {
            unreachable!()
        };
        let rt = node_runtime(id);
        let (tx, rx) = mpsc::channel(4096);
        let transport = Arc::new(FaultyTransport::new(id, net.join(id, tx), self.faults.clone()));
        let (sm, applied, events) = self.recorder();
        let mut cfg = self.config(id);
        if join {
            cfg.bootstrap = None;
            cfg.join = true;
        }
        let (s, snaps) = (store.clone(), snapshots.clone());
        let handle = on_runtime(&rt, async move {
            Sidecar::start_with_snapshots(cfg, s, snaps, transport, rx, sm).await
        })
        .await;
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                rt.shutdown_background();
                return Err(e);
            }
        };
        let snapshot_dir = self.options.snapshot_dirs.then(|| self.snapshot_dir_of(id));
        self.nodes.insert(
            id,
            TestNode {
                id,
                handle,
                applied,
                runtime: Some(rt),
                mem_store: Some(store),
                redb_path: None,
                raft_addr: None,
                quic: None,
                events,
                snapshots,
                snapshot_dir,
            },
        );
        Ok(())
    }

    async fn start_memory_node(&mut self, id: NodeId, store: MemStore, snapshots: SnapshotStore) {
        self.try_start_memory_node(id, store, snapshots)
            .await
            .expect("sidecar starts");
    }

    /// `n` nodes over real QUIC on 127.0.0.1 with mutual TLS and redb stores.
    pub async fn quic(n: u64) -> Cluster {
        Self::quic_with(n, Options::default()).await
    }

    /// `n` nodes over real QUIC with redb stores, snapshot directories and `options`.
    pub async fn quic_with(n: u64, options: Options) -> Cluster {
        let faults = Faults::new();
        let ca = ClusterCa::generate().expect("ca");
        let dir = tempfile::tempdir().expect("tempdir");
        // Reserve addresses first so every node knows every peer from the start.
        let addrs: BTreeMap<NodeId, SocketAddr> = (1..=n)
            .map(|id| {
                let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
                (id, sock.local_addr().expect("addr"))
            })
            .collect();
        let mut membership = Membership::with_voters(1..=n);
        for (&id, addr) in &addrs {
            membership.addrs.insert(
                id,
                NodeAddr {
                    raft: addr.to_string(),
                    client: format!("client-of-{id}"),
                },
            );
        }
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            faults,
            membership,
            net: Net::Quic { ca, dir },
            options,
            tmp: tempfile::tempdir().expect("tempdir"),
        };
        for (&id, &addr) in &addrs {
            let mem = cluster.options.memory_log.then(MemStore::new);
            cluster.start_quic_node(id, addr, &addrs, mem, false).await;
        }
        cluster
    }

    /// Start node `id` over QUIC with an empty store, no configuration and no peers,
    /// accepting any node the cluster CA certified (how a gateway joins a cluster).
    /// Returns its Raft address.
    pub async fn join_quic_node(&mut self, id: NodeId) -> SocketAddr {
        let addr = std::net::UdpSocket::bind("127.0.0.1:0")
            .expect("udp")
            .local_addr()
            .expect("addr");
        self.start_quic_node(id, addr, &BTreeMap::new(), None, true).await;
        addr
    }

    async fn start_quic_node(
        &mut self,
        id: NodeId,
        addr: SocketAddr,
        addrs: &BTreeMap<NodeId, SocketAddr>,
        mem_store: Option<MemStore>,
        join: bool,
    ) {
        let Net::Quic { ca, dir } = &self.net else {
            unreachable!()
        };
        let path = dir.path().join(format!("node-{id}.redb"));
        let material = ca.node_material(id).expect("node cert");
        let mut qcfg = QuicConfig::new(id, addr, material);
        qcfg.accept_unknown_peers = join;
        for (&p, &a) in addrs {
            if p != id {
                qcfg = qcfg.with_peer(p, a);
            }
        }
        let rt = node_runtime(id);
        let (sm, applied, events) = self.recorder();
        let mut cfg = self.config(id);
        if join {
            cfg.bootstrap = None;
            cfg.join = true;
        }
        let snapshot_dir = self.snapshot_dir_of(id);
        cfg.snapshot_dir = Some(snapshot_dir.clone());
        let snapshots = SnapshotStore::open_dir(&snapshot_dir).expect("snapshot dir");
        let faults = self.faults.clone();
        let p = path.clone();
        let mem = mem_store.clone();
        let (handle, quic) = on_runtime(&rt, async move {
            let (tx, rx) = mpsc::channel(4096);
            let filtered = faults.filter_inbound(tx, 4096);
            let quic = bind_retrying(qcfg, filtered).await;
            let transport = Arc::new(FaultyTransport::new(id, quic, faults));
            let handle = match mem {
                Some(store) => Sidecar::start(cfg, store, transport.clone(), rx, sm).await,
                None => {
                    let store = open_redb_retrying(&p).await;
                    Sidecar::start(cfg, store, transport.clone(), rx, sm).await
                }
            };
            handle.map(|h| (h, transport))
        })
        .await
        .expect("sidecar starts");
        self.nodes.insert(
            id,
            TestNode {
                id,
                handle,
                applied,
                runtime: Some(rt),
                redb_path: mem_store.is_none().then_some(path),
                mem_store,
                raft_addr: Some(addr),
                quic: Some(quic),
                events,
                snapshots,
                snapshot_dir: Some(snapshot_dir),
            },
        );
    }

    /// Kill a node abruptly: its runtime is dropped mid-flight, nothing is flushed
    /// beyond what was already durable.
    pub fn kill(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.get_mut(&id) {
            // The endpoint (and its UDP port) goes away with the last reference.
            node.quic = None;
            if let Some(rt) = node.runtime.take() {
                rt.shutdown_background();
            }
        }
    }

    /// Restart a killed node from its store.
    pub async fn restart(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("known node");
        assert!(node.runtime.is_none(), "kill the node first");
        match &self.net {
            Net::Memory(_) => {
                let store = node.mem_store.expect("memory store");
                let snapshots = match &node.snapshot_dir {
                    Some(dir) => SnapshotStore::open_dir(dir).expect("snapshot dir"),
                    None => node.snapshots.clone(),
                };
                self.start_memory_node(id, store, snapshots).await;
            }
            Net::Quic { .. } => {
                let addr = node.raft_addr.expect("addr");
                let addrs: BTreeMap<NodeId, SocketAddr> = self
                    .membership
                    .addrs
                    .iter()
                    .map(|(&i, a)| (i, a.raft.parse().expect("addr")))
                    .collect();
                self.start_quic_node(id, addr, &addrs, node.mem_store, false)
                    .await;
            }
        }
    }

    pub fn handle(&self, id: NodeId) -> &RaftHandle {
        &self.nodes[&id].handle
    }

    /// Wait until exactly one live node leads and every live node agrees on it.
    pub async fn wait_leader(&self, timeout: Duration) -> NodeId {
        let mut found = 0;
        wait_for("a leader everyone agrees on", timeout, || {
            let live: Vec<&TestNode> = self.nodes.values().filter(|n| n.runtime.is_some()).collect();
            let leaders: Vec<NodeId> = live
                .iter()
                .filter(|n| n.handle.is_leader())
                .map(|n| n.id)
                .collect();
            if leaders.len() != 1 {
                return false;
            }
            found = leaders[0];
            live.iter().all(|n| n.handle.leader().leader == Some(found))
        })
        .await;
        found
    }

    /// Wait until exactly one node of `among` leads and every node of `among` agrees
    /// (nodes outside it are not asked: removed, cut off or dead).
    pub async fn wait_leader_among(&self, among: &[NodeId], timeout: Duration) -> NodeId {
        let mut found = 0;
        wait_for(&format!("a leader nodes {among:?} agree on"), timeout, || {
            let nodes: Vec<&TestNode> = among.iter().filter_map(|id| self.nodes.get(id)).collect();
            let leaders: Vec<NodeId> = nodes
                .iter()
                .filter(|n| n.handle.is_leader())
                .map(|n| n.id)
                .collect();
            if leaders.len() != 1 {
                return false;
            }
            found = leaders[0];
            nodes.iter().all(|n| n.handle.leader().leader == Some(found))
        })
        .await;
        found
    }

    /// Wait until some node other than `not` leads.
    pub async fn wait_leader_other_than(&self, not: NodeId, timeout: Duration) -> NodeId {
        let mut found = 0;
        wait_for("a new leader", timeout, || {
            for n in self.nodes.values().filter(|n| n.runtime.is_some() && n.id != not) {
                if n.handle.is_leader() {
                    found = n.id;
                    return true;
                }
            }
            false
        })
        .await;
        found
    }

    /// Propose on whichever node leads, following NotLeader hints, until `timeout`.
    /// Every attempt carries a distinct payload (`data#attempt`): a retry after an
    /// "outcome unknown" error may commit alongside the first attempt, and raft itself
    /// does not deduplicate (the bank's sessions do). Returns the acknowledged index
    /// and payload, or the last error.
    pub async fn propose_anywhere(
        &self,
        data: Bytes,
        timeout: Duration,
    ) -> Result<(Index, Bytes), SidecarError> {
        let mut attempt = 0u32;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = SidecarError::Timeout;
        let mut target = self.nodes.keys().next().copied().unwrap_or(1);
        while tokio::time::Instant::now() < deadline {
            let Some(node) = self.nodes.get(&target).filter(|n| n.runtime.is_some()) else {
                target = target % self.nodes.len() as u64 + 1;
                continue;
            };
            attempt += 1;
            let payload = Bytes::from([&data[..], format!("#{attempt}").as_bytes()].concat());
            match node.handle.propose(payload.clone()).await {
                Ok(a) => return Ok((a.index, payload)),
                Err(SidecarError::NotLeader { leader: Some(l), .. }) if l != target => target = l,
                Err(e) => {
                    last = e;
                    target = target % self.nodes.len() as u64 + 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(last)
    }

    /// Every node's applied sequence must be a prefix of the longest one, and every
    /// acknowledged `(index, payload)` must appear exactly once, at that index.
    pub fn check_applied(&self, acked: &[(Index, Bytes)]) {
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.check_applied_on(&all, acked);
    }

    /// [`Cluster::check_applied`] over the nodes `ids` only (say, the members left
    /// after a node was removed).
    pub fn check_applied_on(&self, ids: &[NodeId], acked: &[(Index, Bytes)]) {
        let logs: BTreeMap<NodeId, Vec<(Index, Bytes)>> = self
            .nodes
            .iter()
            .filter(|(id, _)| ids.contains(id))
            .map(|(&id, n)| (id, n.applied.lock().unwrap_or_else(|e| e.into_inner()).clone()))
            .collect();
        let longest = logs.values().max_by_key(|l| l.len()).cloned().unwrap_or_default();
        for (id, log) in &logs {
            // Each incarnation of a node records afresh (a restarted node re-applies
            // from the log), so `log` is this incarnation's run.
            let run = &log[..];
            for (i, (idx, data)) in run.iter().enumerate() {
                let pos = longest.iter().position(|(j, _)| j == idx);
                let Some(pos) = pos else {
                    panic!("node {id} applied index {idx} that the longest log lacks")
                };
                assert_eq!(
                    &longest[pos].1, data,
                    "node {id} applied a different command at {idx}"
                );
                if i > 0 {
                    assert!(run[i - 1].0 < *idx, "node {id} applied out of order at {idx}");
                }
            }
        }
        for (idx, data) in acked {
            for (id, log) in &logs {
                let hits: Vec<&(Index, Bytes)> = log.iter().filter(|(_, d)| d == data).collect();
                assert!(!hits.is_empty(), "node {id} lacks acknowledged command at {idx}");
                assert_eq!(
                    hits.len(),
                    1,
                    "node {id} applied an acknowledged command more than once"
                );
                assert!(
                    hits.iter().all(|(i, _)| i == idx),
                    "node {id} applied it at another index"
                );
            }
        }
    }

    /// Wait until every live node has applied at least `index`.
    pub async fn wait_applied(&self, index: Index, timeout: Duration) {
        wait_for(&format!("every node to apply {index}"), timeout, || {
            self.nodes
                .values()
                .filter(|n| n.runtime.is_some())
                .all(|n| n.handle.applied_index() >= index)
        })
        .await;
    }

    /// Wait until every node of `ids` has applied at least `index`.
    pub async fn wait_applied_on(&self, ids: &[NodeId], index: Index, timeout: Duration) {
        wait_for(&format!("nodes {ids:?} to apply {index}"), timeout, || {
            ids.iter().all(|id| {
                self.nodes
                    .get(id)
                    .is_some_and(|n| n.handle.applied_index() >= index)
            })
        })
        .await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(rt) = node.runtime.take() {
                rt.shutdown_background();
            }
        }
    }
}

async fn open_redb_retrying(path: &std::path::Path) -> RedbStore {
    // A killed node's storage thread may still hold the file lock for a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match RedbStore::open(path) {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "cannot reopen {}: {e}",
                    path.display()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn bind_retrying(cfg: QuicConfig, inbound: mpsc::Sender<raft::core::Message>) -> QuicTransport {
    // A killed node's UDP socket may take a moment to be released.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match QuicTransport::bind(cfg.clone(), inbound.clone()) {
            Ok(t) => return t,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "cannot bind: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
