//! A local cluster of real `gateway run` processes, for the demo and for
//! process-level tests.
//!
//! [`LocalCluster::start`] lays out a cluster directory with the `init-cluster`
//! logic and spawns one child process per node, each writing its output to
//! `DIR/node-<id>/gateway.log`. Nodes can be killed (SIGKILL), terminated (SIGTERM),
//! paused (SIGSTOP), resumed and restarted; their admin endpoints are polled with
//! deadlines. Dropping the cluster kills every child it still runs, also when the
//! owner panics, so a failing test leaves no orphan behind.
//!
//! The API is blocking (processes and plain HTTP polling); call it from
//! `spawn_blocking` inside an async runtime.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use raft::core::NodeId;

use crate::config::{LogFormat, RawSnapshot, RawTimings};
use crate::init::{init_cluster, init_join_node, ClusterSummary, InitError, InitOptions, JoinNodeOptions};
use crate::status::{fetch_health, fetch_status, AdminClientError, StatusReport};

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(50);
/// Timeout of one admin request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How to build and run a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    /// Number of nodes (ids 1..=nodes).
    pub nodes: u64,
    /// The `gateway` binary to run; `None` means the current executable (right for
    /// the `gateway demo` subcommand; tests pass `env!("CARGO_BIN_EXE_gateway")`).
    pub binary: Option<PathBuf>,
    /// Fixed ports from here (see [`InitOptions::base_port`]); `None` picks free ones.
    pub base_port: Option<u16>,
    /// Cluster name.
    pub cluster_id: Option<String>,
    /// Client token.
    pub client_token: Option<String>,
    /// Raft timings for every node.
    pub timings: RawTimings,
    /// Snapshot policy for every node (unset fields use the defaults).
    pub snapshot: RawSnapshot,
    /// `RUST_LOG` for the children (inherited when `None`).
    pub rust_log: Option<String>,
    /// Log format of the children.
    pub log_format: LogFormat,
    /// Linux only: ask the kernel to SIGKILL each child when the thread that spawned
    /// it exits, so that children die even if this process is killed outright. Only
    /// safe when the cluster is used from the thread that created it (a test
    /// function, not a pool thread that may retire).
    pub die_with_parent: bool,
}

impl Default for LocalClusterOptions {
    fn default() -> Self {
        LocalClusterOptions {
            nodes: 3,
            binary: None,
            base_port: None,
            cluster_id: Some("local".to_owned()),
            client_token: None,
            timings: RawTimings::default(),
            snapshot: RawSnapshot::default(),
            rust_log: None,
            log_format: LogFormat::Human,
            die_with_parent: false,
        }
    }
}

/// Errors of a [`LocalCluster`].
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Laying out the cluster directory failed.
    #[error(transparent)]
    Init(#[from] InitError),
    /// The binary could not be found.
    #[error("cannot find the gateway binary: {0}")]
    Binary(std::io::Error),
    /// A node id that is not in the cluster.
    #[error("node {0} is not part of this cluster")]
    UnknownNode(NodeId),
    /// The node is not running (never started, killed, or exited).
    #[error("node {0} is not running")]
    NotRunning(NodeId),
    /// The node is already running.
    #[error("node {0} is already running")]
    AlreadyRunning(NodeId),
    /// A process operation failed.
    #[error("node {id}: {what}: {source}")]
    Process {
        /// The node.
        id: NodeId,
        /// What was attempted.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The node's process exited while we waited for it.
    #[error("node {id} exited ({status}); last lines of {log}:\n{tail}")]
    Exited {
        /// The node.
        id: NodeId,
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A condition did not hold before its deadline.
    #[error("timed out after {after:?} waiting for {what}; last observation: {last}")]
    Timeout {
        /// The condition.
        what: String,
        /// The deadline.
        after: Duration,
        /// What was last seen.
        last: String,
    },
    /// An admin request failed.
    #[error(transparent)]
    Admin(#[from] AdminClientError),
}

struct Proc {
    child: Child,
    paused: bool,
}

/// A local cluster of `gateway run` child processes. See the module docs.
pub struct LocalCluster {
    dir: PathBuf,
    binary: PathBuf,
    summary: ClusterSummary,
    opts: LocalClusterOptions,
    procs: BTreeMap<NodeId, Proc>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("dir", &self.dir)
            .field("running", &self.procs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LocalCluster {
    /// Lays out a cluster in `dir` (which must not hold one yet) without starting it.
    pub fn create(dir: impl Into<PathBuf>, opts: LocalClusterOptions) -> Result<LocalCluster, ClusterError> {
        let dir = dir.into();
        let binary = match &opts.binary {
            Some(b) => b.clone(),
            None => std::env::current_exe().map_err(ClusterError::Binary)?,
        };
        let mut init = InitOptions::new(opts.nodes, &dir);
        init.base_port = opts.base_port;
        init.cluster_id = opts.cluster_id.clone();
        init.client_token = opts.client_token.clone();
        init.timings = opts.timings.clone();
        init.snapshot = opts.snapshot.clone();
        init.log_format = Some(opts.log_format);
        let summary = init_cluster(&init)?;
        Ok(LocalCluster {
            dir,
            binary,
            summary,
            opts,
            procs: BTreeMap::new(),
        })
    }

    /// Lays out a cluster in `dir` and starts every node (without waiting for them;
    /// see [`LocalCluster::wait_all_ready`]).
    pub fn start(dir: impl Into<PathBuf>, opts: LocalClusterOptions) -> Result<LocalCluster, ClusterError> {
        let mut cluster = LocalCluster::create(dir, opts)?;
        cluster.start_all()?;
        Ok(cluster)
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `gateway` binary the nodes run.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Re-reads `cluster.toml`, after `gateway init-node` added a node to it.
    pub fn reload_summary(&mut self) -> Result<(), ClusterError> {
        self.summary = ClusterSummary::load(&self.dir)?;
        Ok(())
    }

    /// Prepares node `id` to join the running cluster, as `gateway init-node` does
    /// (certificate, `join = true` config on free ports, an entry in `cluster.toml`),
    /// without starting it: start it with [`LocalCluster::start_node`], then have the
    /// leader add it.
    pub fn prepare_join_node(&mut self, id: NodeId) -> Result<(), ClusterError> {
        init_join_node(&JoinNodeOptions {
            dir: self.dir.clone(),
            id,
            host: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            base_port: None,
        })?;
        self.reload_summary()
    }

    /// The summary: ids and addresses.
    pub fn summary(&self) -> &ClusterSummary {
        &self.summary
    }

    /// Every node id.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.summary.nodes.iter().map(|n| n.id).collect()
    }

    /// The nodes currently running (started and not killed or terminated).
    pub fn running(&self) -> Vec<NodeId> {
        self.procs.keys().copied().collect()
    }

    /// Whether node `id`'s process is running (it may have exited on its own since:
    /// see [`LocalCluster::try_exit_status`]).
    pub fn is_running(&self, id: NodeId) -> bool {
        self.procs.contains_key(&id)
    }

    /// The process id of node `id`, if it runs.
    pub fn pid(&self, id: NodeId) -> Option<u32> {
        self.procs.get(&id).map(|p| p.child.id())
    }

    fn node(&self, id: NodeId) -> Result<&crate::init::NodeSummary, ClusterError> {
        self.summary.node(id).ok_or(ClusterError::UnknownNode(id))
    }

    /// Node `id`'s admin HTTP address.
    pub fn admin_addr(&self, id: NodeId) -> Result<SocketAddr, ClusterError> {
        Ok(self.node(id)?.admin_addr)
    }

    /// Node `id`'s client channel address.
    pub fn client_addr(&self, id: NodeId) -> Result<SocketAddr, ClusterError> {
        Ok(self.node(id)?.client_addr)
    }

    /// Node `id`'s Raft channel address.
    pub fn raft_addr(&self, id: NodeId) -> Result<SocketAddr, ClusterError> {
        Ok(self.node(id)?.raft_addr)
    }

    /// Every node's client channel address, by id.
    pub fn client_addrs(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.summary.nodes.iter().map(|n| (n.id, n.client_addr)).collect()
    }

    /// The cluster CA certificate file (what clients trust).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(&self.summary.ca)
    }

    /// Node `id`'s config file.
    pub fn config_path(&self, id: NodeId) -> Result<PathBuf, ClusterError> {
        Ok(self.dir.join(&self.node(id)?.config))
    }

    /// Node `id`'s log file (stdout and stderr of every run, appended).
    pub fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}")).join("gateway.log")
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: NodeId, lines: usize) -> String {
        match fs::read_to_string(self.log_path(id)) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(cannot read the log: {e})"),
        }
    }

    /// Starts every node that is not running.
    pub fn start_all(&mut self) -> Result<(), ClusterError> {
        for id in self.node_ids() {
            if !self.procs.contains_key(&id) {
                self.start_node(id)?;
            }
        }
        Ok(())
    }

    /// Spawns `gateway run` for node `id`.
    pub fn start_node(&mut self, id: NodeId) -> Result<(), ClusterError> {
        let config = self.config_path(id)?;
        if self.procs.contains_key(&id) {
            return Err(ClusterError::AlreadyRunning(id));
        }
        let proc_err = |what| move |source| ClusterError::Process { id, what, source };
        let log_path = self.log_path(id);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(proc_err("open the log file"))?;
        let log2 = log.try_clone().map_err(proc_err("open the log file"))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        if let Some(filter) = &self.opts.rust_log {
            cmd.env("RUST_LOG", filter);
        }
        if self.opts.die_with_parent {
            set_parent_death_signal(&mut cmd);
        }
        let child = cmd.spawn().map_err(proc_err("spawn gateway run"))?;
        self.procs.insert(id, Proc { child, paused: false });
        Ok(())
    }

    fn proc_mut(&mut self, id: NodeId) -> Result<&mut Proc, ClusterError> {
        self.node(id)?;
        self.procs.get_mut(&id).ok_or(ClusterError::NotRunning(id))
    }

    fn signal(&mut self, id: NodeId, sig: libc::c_int, what: &'static str) -> Result<(), ClusterError> {
        let proc = self.proc_mut(id)?;
        let pid = libc::pid_t::try_from(proc.child.id()).map_err(|_| ClusterError::Process {
            id,
            what,
            source: std::io::Error::other("pid out of range"),
        })?;
        // SAFETY: kill(2) has no memory-safety preconditions. The pid is our own
        // child's, which we have not reaped, so it cannot have been reused.
        let rc = unsafe { libc::kill(pid, sig) };
        if rc != 0 {
            return Err(ClusterError::Process {
                id,
                what,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Kills node `id` with SIGKILL (no cleanup, like a crash or `kill -9`) and
    /// reaps it.
    pub fn kill(&mut self, id: NodeId) -> Result<(), ClusterError> {
        let proc = self.proc_mut(id)?;
        // std's kill sends SIGKILL; an already exited child is fine.
        let _ = proc.child.kill();
        let mut proc = self.procs.remove(&id).ok_or(ClusterError::NotRunning(id))?;
        proc.child.wait().map_err(|source| ClusterError::Process {
            id,
            what: "wait",
            source,
        })?;
        Ok(())
    }

    /// Sends SIGTERM to node `id` and waits up to `timeout` for it to exit. Returns
    /// its exit status; on timeout the node is killed and an error returned.
    pub fn terminate(&mut self, id: NodeId, timeout: Duration) -> Result<ExitStatus, ClusterError> {
        self.stop_with(id, libc::SIGTERM, "SIGTERM", timeout)
    }

    /// Like [`LocalCluster::terminate`] with SIGINT (Ctrl-C).
    pub fn interrupt(&mut self, id: NodeId, timeout: Duration) -> Result<ExitStatus, ClusterError> {
        self.stop_with(id, libc::SIGINT, "SIGINT", timeout)
    }

    fn stop_with(
        &mut self,
        id: NodeId,
        sig: libc::c_int,
        name: &'static str,
        timeout: Duration,
    ) -> Result<ExitStatus, ClusterError> {
        if self.proc_mut(id)?.paused {
            self.resume(id)?;
        }
        self.signal(id, sig, "send a signal")?;
        let deadline = Instant::now() + timeout;
        loop {
            let proc = self.proc_mut(id)?;
            if let Some(status) = proc.child.try_wait().map_err(|source| ClusterError::Process {
                id,
                what: "wait",
                source,
            })? {
                self.procs.remove(&id);
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill(id)?;
                return Err(ClusterError::Timeout {
                    what: format!("node {id} to exit after {name} (it was killed)"),
                    after: timeout,
                    last: self.log_tail(id, 5),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Freezes node `id` with SIGSTOP (it keeps its sockets but answers nothing).
    pub fn pause(&mut self, id: NodeId) -> Result<(), ClusterError> {
        self.signal(id, libc::SIGSTOP, "send SIGSTOP")?;
        self.proc_mut(id)?.paused = true;
        Ok(())
    }

    /// Resumes a paused node with SIGCONT.
    pub fn resume(&mut self, id: NodeId) -> Result<(), ClusterError> {
        self.signal(id, libc::SIGCONT, "send SIGCONT")?;
        self.proc_mut(id)?.paused = false;
        Ok(())
    }

    /// Kills node `id` if it runs, then starts it again on the same data directory.
    pub fn restart(&mut self, id: NodeId) -> Result<(), ClusterError> {
        if self.procs.contains_key(&id) {
            self.kill(id)?;
        }
        self.start_node(id)
    }

    /// Whether node `id`'s process has exited on its own, and how. The node stays
    /// in the running set until killed, terminated or restarted.
    pub fn try_exit_status(&mut self, id: NodeId) -> Result<Option<ExitStatus>, ClusterError> {
        let proc = self.proc_mut(id)?;
        proc.child.try_wait().map_err(|source| ClusterError::Process {
            id,
            what: "wait",
            source,
        })
    }

    fn check_alive(&mut self, id: NodeId) -> Result<(), ClusterError> {
        if let Some(status) = self.try_exit_status(id)? {
            self.procs.remove(&id);
            return Err(ClusterError::Exited {
                id,
                status,
                log: self.log_path(id),
                tail: self.log_tail(id, 20),
            });
        }
        Ok(())
    }

    /// Waits until node `id` answers `/health`, failing early if it exits.
    pub fn wait_ready(&mut self, id: NodeId, timeout: Duration) -> Result<(), ClusterError> {
        let addr = self.admin_addr(id)?;
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive(id)?;
            let last = match fetch_health(addr, REQUEST_TIMEOUT) {
                Ok(()) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("node {id} to answer /health on {addr}"),
                    after: timeout,
                    last,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until every running node answers `/health`.
    pub fn wait_all_ready(&mut self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        for id in self.running() {
            self.wait_ready(id, deadline.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }

    /// Node `id`'s `/status`.
    pub fn status(&self, id: NodeId) -> Result<StatusReport, ClusterError> {
        Ok(fetch_status(self.admin_addr(id)?, REQUEST_TIMEOUT)?)
    }

    /// Waits until one running node leads and every running (and not paused) node
    /// names it as leader in its `/status`; returns its id. `not` excludes a node
    /// from being accepted as the leader (for example the one just killed).
    pub fn wait_leader_where(
        &mut self,
        timeout: Duration,
        not: Option<NodeId>,
    ) -> Result<NodeId, ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut last = String::new();
            let live: Vec<NodeId> = self
                .procs
                .iter()
                .filter(|(_, p)| !p.paused)
                .map(|(&id, _)| id)
                .collect();
            for &id in &live {
                self.check_alive(id)?;
            }
            let mut reports = Vec::new();
            for &id in &live {
                match self.status(id) {
                    Ok(r) => reports.push(r),
                    Err(e) => last = format!("node {id}: {e}"),
                }
            }
            if reports.len() == live.len() && !live.is_empty() {
                let leaders: Vec<NodeId> = reports
                    .iter()
                    .filter(|r| r.is_leader())
                    .map(|r| r.node_id)
                    .collect();
                let views: Vec<String> = reports
                    .iter()
                    .map(|r| {
                        format!(
                            "node {} ({} term {}) sees leader {:?}",
                            r.node_id,
                            r.role,
                            r.term,
                            r.leader_id()
                        )
                    })
                    .collect();
                last = views.join("; ");
                if let [leader] = leaders[..] {
                    if Some(leader) != not && reports.iter().all(|r| r.leader_id() == Some(leader)) {
                        return Ok(leader);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: match not {
                        Some(n) => format!("a leader other than node {n} that every running node agrees on"),
                        None => "a leader that every running node agrees on".to_owned(),
                    },
                    after: timeout,
                    last,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for a leader every running node agrees on.
    pub fn wait_leader(&mut self, timeout: Duration) -> Result<NodeId, ClusterError> {
        self.wait_leader_where(timeout, None)
    }

    /// Waits for a leader other than `not` every running node agrees on.
    pub fn wait_leader_other_than(&mut self, not: NodeId, timeout: Duration) -> Result<NodeId, ClusterError> {
        self.wait_leader_where(timeout, Some(not))
    }

    /// Kills every node. Also done on drop.
    pub fn kill_all(&mut self) {
        for (_, mut proc) in std::mem::take(&mut self.procs) {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

#[cfg(target_os = "linux")]
fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_cmd: &mut Command) {}
