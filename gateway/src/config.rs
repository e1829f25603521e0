//! The node configuration: a TOML file, optionally overridden by command-line flags.
//!
//! Loading happens in two steps so that a flag can supply what the file leaves out:
//! the file is read into a [`RawConfig`] where every field is optional, the
//! [`Overrides`] are laid over it, and [`RawConfig::validate`] turns the result into a
//! [`NodeConfig`] or a [`ConfigError`] that names the file and the field at fault.
//!
//! Relative paths in a file are relative to the file's directory, so a node directory
//! made by `gateway init-cluster` can be moved as a whole; relative paths given as
//! flags are relative to the working directory, as usual on a command line.
//!
//! ```toml
//! id = 1
//! cluster_id = "bank-dev"      # optional; peers announcing another cluster are refused
//! data_dir = "data"            # holds raft.redb
//! log_format = "human"         # or "json"
//!
//! [listen]
//! raft = "127.0.0.1:7000"      # UDP, QUIC peer channel (ALPN raft/1)
//! client = "127.0.0.1:7001"    # UDP, QUIC client channel (ALPN bank/1)
//! admin = "127.0.0.1:7002"     # TCP, HTTP: /health /status /metrics
//!
//! [tls]
//! ca = "../ca.pem"
//! cert = "cert.pem"
//! key = "key.pem"
//!
//! [client]
//! token = "secret"             # optional
//! max_frame_len = 1048576
//!
//! [timings]
//! tick_ms = 10
//! heartbeat_ticks = 5
//! election_ticks = 30
//! propose_timeout_ms = 5000
//! read_timeout_ms = 5000
//!
//! [snapshot]
//! every_entries = 100000
//! every_bytes = 268435456
//! keep_entries = 10000
//! files_kept = 2
//!
//! [[peers]]
//! id = 1
//! raft_addr = "127.0.0.1:7000"
//! client_addr = "127.0.0.1:7001"
//! ```
//!
//! A node that joins a running cluster (`gateway init-node`) has `join = true`: with an
//! empty data directory it starts without any configuration and waits for the leader
//! to add it (`gateway admin add-learner`); `peers` may then be empty.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raft::core::{Membership, NodeAddr, NodeId};
use raft::sidecar::SidecarConfig;
use serde::{Deserialize, Serialize};

/// Default wall-clock length of one Raft tick.
pub const DEFAULT_TICK_MS: u64 = 10;
/// Default heartbeat interval, in ticks.
pub const DEFAULT_HEARTBEAT_TICKS: u32 = 5;
/// Default minimum election timeout, in ticks (randomized up to twice that).
pub const DEFAULT_ELECTION_TICKS: u32 = 30;
/// Default time a proposal may take to be applied before the client is told the
/// outcome is unknown.
pub const DEFAULT_PROPOSE_TIMEOUT_MS: u64 = 5_000;
/// Default time a linearizable read may wait for its confirmation.
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 5_000;
/// Default largest client-channel frame (the bank protocol's default).
pub const DEFAULT_CLIENT_MAX_FRAME_LEN: usize = 1 << 20;
/// Smallest client-channel frame limit the bank server accepts.
pub const MIN_CLIENT_MAX_FRAME_LEN: usize = 64 * 1024;
/// Largest client-channel frame limit this config accepts.
pub const MAX_CLIENT_MAX_FRAME_LEN: usize = 64 << 20;
/// The redb file inside `data_dir`.
pub const RAFT_LOG_FILE: &str = "raft.redb";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        })
    }
}

/// Errors loading a configuration. Every variant names where the configuration came
/// from, and field errors name the field (`peers[1].raft_addr`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has a value of the wrong type, or an unknown field.
    #[error("config file {path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's report, with line, column and the offending text.
        source: Box<toml::de::Error>,
    },
    /// A field is missing or has an unusable value.
    #[error("{origin}: field `{field}`: {problem}")]
    Field {
        /// `config file <path>` or `command line`.
        origin: String,
        /// The field, as written in the file (`listen.raft`, `peers[0].id`).
        field: String,
        /// What is wrong.
        problem: String,
    },
}

impl ConfigError {
    /// The field at fault, if the error is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// The `[listen]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// UDP address of the peer (Raft) channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raft: Option<String>,
    /// UDP address of the client channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// TCP address of the admin HTTP server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
}

/// The `[tls]` section: PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The cluster CA certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// This node's certificate chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// This node's private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// The `[client]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    /// A shared secret clients must present; none means no token check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Largest client frame accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frame_len: Option<usize>,
}

/// The `[timings]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimings {
    /// Length of one Raft tick in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tick_ms: Option<u64>,
    /// Heartbeat interval in ticks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_ticks: Option<u32>,
    /// Minimum election timeout in ticks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_ticks: Option<u32>,
    /// Proposal timeout in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propose_timeout_ms: Option<u64>,
    /// Linearizable-read timeout in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_timeout_ms: Option<u64>,
}

/// One `[[peers]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    /// The peer's node id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Where the peer's Raft channel is reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raft_addr: Option<String>,
    /// Where the peer's client channel is reached (sent to clients in redirects).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
}

/// A configuration as written, every field optional. See the module docs for the
/// file format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// This node's id (non-zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The cluster's name, checked in the peer handshake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Where the node keeps its Raft log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Join a running cluster instead of bootstrapping one from `peers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<bool>,
    /// `human` or `json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Listen addresses.
    #[serde(default, skip_serializing_if = "is_default")]
    pub listen: RawListen,
    /// Certificate files.
    #[serde(default, skip_serializing_if = "is_default")]
    pub tls: RawTls,
    /// Client channel settings.
    #[serde(default, skip_serializing_if = "is_default")]
    pub client: RawClient,
    /// Raft timings.
    #[serde(default, skip_serializing_if = "is_default")]
    pub timings: RawTimings,
    /// Snapshot and log compaction policy.
    #[serde(default, skip_serializing_if = "is_default")]
    pub snapshot: RawSnapshot,
    /// The cluster's members (this node may be listed too).
    #[serde(default)]
    pub peers: Vec<RawPeer>,
}

/// The `[snapshot]` section as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnapshot {
    /// Snapshot after this many applied entries (0: never by count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every_entries: Option<u64>,
    /// Snapshot after this many applied payload bytes (0: never by size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every_bytes: Option<u64>,
    /// Log entries kept behind a snapshot for slow followers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_entries: Option<u64>,
    /// Snapshot files kept (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_kept: Option<usize>,
}

/// Snapshot policy, validated (see [`raft::sidecar::SidecarConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// `snapshot.every_entries`.
    pub every_entries: u64,
    /// `snapshot.every_bytes`.
    pub every_bytes: u64,
    /// `snapshot.keep_entries`.
    pub keep_entries: u64,
    /// `snapshot.files_kept`.
    pub files_kept: usize,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        let d = SidecarConfig::new(1);
        SnapshotPolicy {
            every_entries: d.snapshot_entries,
            every_bytes: d.snapshot_bytes,
            keep_entries: d.snapshot_keep_entries,
            files_kept: d.snapshots_kept,
        }
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Command-line values that take precedence over the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// This node's id (`id`).
    #[arg(long)]
    pub id: Option<u64>,
    /// The cluster name (`cluster_id`).
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// Data directory (`data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Join a running cluster (`join = true`): with an empty data directory, start
    /// without a configuration and wait for the leader to add this node.
    #[arg(long)]
    pub join: bool,
    /// Raft channel UDP listen address (`listen.raft`).
    #[arg(long)]
    pub raft_listen: Option<String>,
    /// Client channel UDP listen address (`listen.client`).
    #[arg(long)]
    pub client_listen: Option<String>,
    /// Admin HTTP TCP listen address (`listen.admin`).
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Cluster CA certificate PEM file (`tls.ca`).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Node certificate PEM file (`tls.cert`).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Node private key PEM file (`tls.key`).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Token clients must present (`client.token`).
    #[arg(long, env = "GATEWAY_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,
    /// Largest client frame in bytes (`client.max_frame_len`).
    #[arg(long)]
    pub client_max_frame_len: Option<usize>,
    /// Raft tick in milliseconds (`timings.tick_ms`).
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// Heartbeat interval in ticks (`timings.heartbeat_ticks`).
    #[arg(long)]
    pub heartbeat_ticks: Option<u32>,
    /// Minimum election timeout in ticks (`timings.election_ticks`).
    #[arg(long)]
    pub election_ticks: Option<u32>,
    /// Proposal timeout in milliseconds (`timings.propose_timeout_ms`).
    #[arg(long)]
    pub propose_timeout_ms: Option<u64>,
    /// Read timeout in milliseconds (`timings.read_timeout_ms`).
    #[arg(long)]
    pub read_timeout_ms: Option<u64>,
    /// A cluster member as `ID=RAFT_ADDR,CLIENT_ADDR`; repeat for each. When given,
    /// replaces the file's `peers` list.
    #[arg(long = "peer", value_name = "ID=RAFT_ADDR,CLIENT_ADDR")]
    pub peers: Vec<String>,
    /// Log format (`log_format`).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Paths of the node's PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// Cluster CA certificate.
    pub ca: PathBuf,
    /// Node certificate chain.
    pub cert: PathBuf,
    /// Node private key.
    pub key: PathBuf,
}

/// Raft timings, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// One tick.
    pub tick: Duration,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
    /// Minimum election timeout in ticks.
    pub election_ticks: u32,
    /// Proposal timeout.
    pub propose_timeout: Duration,
    /// Read timeout.
    pub read_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            tick: Duration::from_millis(DEFAULT_TICK_MS),
            heartbeat_ticks: DEFAULT_HEARTBEAT_TICKS,
            election_ticks: DEFAULT_ELECTION_TICKS,
            propose_timeout: Duration::from_millis(DEFAULT_PROPOSE_TIMEOUT_MS),
            read_timeout: Duration::from_millis(DEFAULT_READ_TIMEOUT_MS),
        }
    }
}

/// A cluster member and where it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Node id.
    pub id: NodeId,
    /// Its Raft channel.
    pub raft_addr: SocketAddr,
    /// Its client channel.
    pub client_addr: SocketAddr,
}

/// A complete, validated node configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node.
    pub id: NodeId,
    /// The cluster's name, if any.
    pub cluster_id: Option<String>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Join a running cluster: no bootstrap configuration (see the module docs).
    pub join: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// UDP address the Raft channel binds.
    pub raft_listen: SocketAddr,
    /// UDP address the client channel binds.
    pub client_listen: SocketAddr,
    /// TCP address the admin HTTP server binds.
    pub admin_listen: SocketAddr,
    /// PEM files.
    pub tls: TlsPaths,
    /// Client token, if clients must present one.
    pub client_token: Option<String>,
    /// Largest client frame.
    pub client_max_frame_len: usize,
    /// Raft timings.
    pub timings: Timings,
    /// Snapshot and compaction policy.
    pub snapshot: SnapshotPolicy,
    /// Every member, this node included, sorted by id, with the addresses the others
    /// reach it at.
    pub peers: Vec<Peer>,
    /// The file this came from, if any.
    pub source: Option<PathBuf>,
}

impl NodeConfig {
    /// The redb file holding the Raft log.
    pub fn raft_log_path(&self) -> PathBuf {
        self.data_dir.join(RAFT_LOG_FILE)
    }

    /// This node's entry in [`NodeConfig::peers`].
    pub fn this_peer(&self) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id == self.id)
    }

    /// The other members.
    pub fn other_peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(move |p| p.id != self.id)
    }

    /// The membership a brand-new cluster starts with: every member votes, and every
    /// member's Raft and client addresses travel with it so that any node can tell a
    /// client where the leader is.
    pub fn bootstrap_membership(&self) -> Membership {
        let mut m = Membership::with_voters(self.peers.iter().map(|p| p.id));
        m.addrs = self
            .peers
            .iter()
            .map(|p| {
                (
                    p.id,
                    NodeAddr {
                        raft: p.raft_addr.to_string(),
                        client: p.client_addr.to_string(),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>();
        m
    }

    /// The sidecar configuration for this node.
    pub fn sidecar_config(&self) -> SidecarConfig {
        let mut c = SidecarConfig::new(self.id);
        c.tick = self.timings.tick;
        c.heartbeat_ticks = self.timings.heartbeat_ticks;
        c.election_ticks = self.timings.election_ticks;
        c.propose_timeout = self.timings.propose_timeout;
        c.read_timeout = self.timings.read_timeout;
        if self.join {
            c.join = true;
        } else {
            c.bootstrap = Some(self.bootstrap_membership());
        }
        // Snapshot files live next to the log: the log is compacted behind them.
        c.snapshot_dir = Some(self.data_dir.join("snapshots"));
        c.snapshot_entries = self.snapshot.every_entries;
        c.snapshot_bytes = self.snapshot.every_bytes;
        c.snapshot_keep_entries = self.snapshot.keep_entries;
        c.snapshots_kept = self.snapshot.files_kept;
        c
    }
}

/// Loads a configuration from `path` (if any) with `overrides` applied.
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<NodeConfig, ConfigError> {
    let (mut raw, origin, base) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let raw = RawConfig::parse(&text, path)?;
            let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (raw, format!("config file {}", path.display()), base)
        }
        None => (RawConfig::default(), "command line".to_owned(), PathBuf::new()),
    };
    raw.resolve_paths(&base);
    raw.apply(overrides, &origin)?;
    let mut cfg = raw.validate(&origin)?;
    cfg.source = path.map(Path::to_path_buf);
    Ok(cfg)
}

/// Loads and validates a configuration file without overrides.
pub fn load_file(path: &Path) -> Result<NodeConfig, ConfigError> {
    load(Some(path), &Overrides::default())
}

fn field_err(origin: &str, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        origin: origin.to_owned(),
        field: field.into(),
        problem: problem.into(),
    }
}

fn resolve(base: &Path, p: &mut Option<PathBuf>) {
    if let Some(path) = p {
        if path.is_relative() && !base.as_os_str().is_empty() {
            *path = base.join(&*path);
        }
    }
}

fn parse_addr(origin: &str, field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.trim().parse().map_err(|_| {
        field_err(
            origin,
            field,
            format!("`{value}` is not a socket address (expected IP:PORT, like 127.0.0.1:7000)"),
        )
    })
}

fn required<T: Clone>(origin: &str, field: &str, flag: &str, v: &Option<T>) -> Result<T, ConfigError> {
    v.clone().ok_or_else(|| {
        field_err(
            origin,
            field,
            format!("missing (set it in the file or with {flag})"),
        )
    })
}

/// Parses a `--peer` value: `ID=RAFT_ADDR,CLIENT_ADDR`.
pub fn parse_peer_flag(value: &str) -> Result<RawPeer, String> {
    let (id, addrs) = value
        .split_once('=')
        .ok_or_else(|| format!("`{value}`: expected ID=RAFT_ADDR,CLIENT_ADDR"))?;
    let (raft, client) = addrs
        .split_once(',')
        .ok_or_else(|| format!("`{value}`: expected ID=RAFT_ADDR,CLIENT_ADDR"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("`{value}`: `{id}` is not a node id"))?;
    Ok(RawPeer {
        id: Some(id),
        raft_addr: Some(raft.trim().to_owned()),
        client_addr: Some(client.trim().to_owned()),
    })
}

impl RawConfig {
    /// Parses TOML text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Makes relative paths relative to `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.data_dir);
        resolve(base, &mut self.tls.ca);
        resolve(base, &mut self.tls.cert);
        resolve(base, &mut self.tls.key);
    }

    /// Lays `o` over this configuration.
    pub fn apply(&mut self, o: &Overrides, origin: &str) -> Result<(), ConfigError> {
        fn set<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if let Some(v) = src {
                *dst = Some(v.clone());
            }
        }
        set(&mut self.id, &o.id);
        set(&mut self.cluster_id, &o.cluster_id);
        set(&mut self.data_dir, &o.data_dir);
        if o.join {
            self.join = Some(true);
        }
        set(&mut self.log_format, &o.log_format);
        set(&mut self.listen.raft, &o.raft_listen);
        set(&mut self.listen.client, &o.client_listen);
        set(&mut self.listen.admin, &o.admin_listen);
        set(&mut self.tls.ca, &o.ca);
        set(&mut self.tls.cert, &o.cert);
        set(&mut self.tls.key, &o.key);
        set(&mut self.client.token, &o.client_token);
        set(&mut self.client.max_frame_len, &o.client_max_frame_len);
        set(&mut self.timings.tick_ms, &o.tick_ms);
        set(&mut self.timings.heartbeat_ticks, &o.heartbeat_ticks);
        set(&mut self.timings.election_ticks, &o.election_ticks);
        set(&mut self.timings.propose_timeout_ms, &o.propose_timeout_ms);
        set(&mut self.timings.read_timeout_ms, &o.read_timeout_ms);
        if !o.peers.is_empty() {
            self.peers = o
                .peers
                .iter()
                .map(|p| parse_peer_flag(p).map_err(|e| field_err(origin, "--peer", e)))
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }

    /// Checks everything and produces a [`NodeConfig`]. `origin` says where the
    /// configuration came from, for error messages.
    pub fn validate(&self, origin: &str) -> Result<NodeConfig, ConfigError> {
        let id = required(origin, "id", "--id", &self.id)?;
        if id == 0 {
            return Err(field_err(origin, "id", "node id 0 is reserved; use 1 or more"));
        }
        if let Some(c) = &self.cluster_id {
            if c.trim().is_empty() {
                return Err(field_err(origin, "cluster_id", "must not be empty when given"));
            }
        }
        let data_dir = required(origin, "data_dir", "--data-dir", &self.data_dir)?;
        let raft_listen = parse_addr(
            origin,
            "listen.raft",
            &required(origin, "listen.raft", "--raft-listen", &self.listen.raft)?,
        )?;
        let client_listen = parse_addr(
            origin,
            "listen.client",
            &required(origin, "listen.client", "--client-listen", &self.listen.client)?,
        )?;
        let admin_listen = parse_addr(
            origin,
            "listen.admin",
            &required(origin, "listen.admin", "--admin-listen", &self.listen.admin)?,
        )?;
        if raft_listen == client_listen && raft_listen.port() != 0 {
            return Err(field_err(
                origin,
                "listen.client",
                format!(
                    "same UDP address as listen.raft ({raft_listen}); the two channels need their own ports"
                ),
            ));
        }
        let tls = TlsPaths {
            ca: required(origin, "tls.ca", "--ca", &self.tls.ca)?,
            cert: required(origin, "tls.cert", "--cert", &self.tls.cert)?,
            key: required(origin, "tls.key", "--key", &self.tls.key)?,
        };
        if let Some(t) = &self.client.token {
            if t.is_empty() {
                return Err(field_err(
                    origin,
                    "client.token",
                    "must not be empty (leave it out for no token)",
                ));
            }
        }
        let client_max_frame_len = self.client.max_frame_len.unwrap_or(DEFAULT_CLIENT_MAX_FRAME_LEN);
        if !(MIN_CLIENT_MAX_FRAME_LEN..=MAX_CLIENT_MAX_FRAME_LEN).contains(&client_max_frame_len) {
            return Err(field_err(
                origin,
                "client.max_frame_len",
                format!("{client_max_frame_len} is out of range (64 KiB to 64 MiB)"),
            ));
        }
        let timings = self.validate_timings(origin)?;
        let snapshot = {
            let d = SnapshotPolicy::default();
            let r = &self.snapshot;
            let files_kept = r.files_kept.unwrap_or(d.files_kept);
            if files_kept == 0 {
                return Err(field_err(origin, "snapshot.files_kept", "must be at least 1"));
            }
            SnapshotPolicy {
                every_entries: r.every_entries.unwrap_or(d.every_entries),
                every_bytes: r.every_bytes.unwrap_or(d.every_bytes),
                keep_entries: r.keep_entries.unwrap_or(d.keep_entries),
                files_kept,
            }
        };
        let peers = self.validate_peers(origin, id, raft_listen, client_listen)?;
        Ok(NodeConfig {
            id,
            cluster_id: self.cluster_id.clone(),
            data_dir,
            join: self.join.unwrap_or(false),
            log_format: self.log_format.unwrap_or_default(),
            raft_listen,
            client_listen,
            admin_listen,
            tls,
            client_token: self.client.token.clone(),
            client_max_frame_len,
            timings,
            snapshot,
            peers,
            source: None,
        })
    }

    fn validate_timings(&self, origin: &str) -> Result<Timings, ConfigError> {
        let t = &self.timings;
        let tick_ms = t.tick_ms.unwrap_or(DEFAULT_TICK_MS);
        if !(1..=10_000).contains(&tick_ms) {
            return Err(field_err(
                origin,
                "timings.tick_ms",
                format!("{tick_ms} is out of range (1 to 10000)"),
            ));
        }
        let heartbeat_ticks = t.heartbeat_ticks.unwrap_or(DEFAULT_HEARTBEAT_TICKS);
        if heartbeat_ticks == 0 {
            return Err(field_err(origin, "timings.heartbeat_ticks", "must be at least 1"));
        }
        let election_ticks = t.election_ticks.unwrap_or(DEFAULT_ELECTION_TICKS);
        if election_ticks <= heartbeat_ticks {
            return Err(field_err(
                origin,
                "timings.election_ticks",
                format!(
                    "{election_ticks} must be larger than timings.heartbeat_ticks ({heartbeat_ticks}), \
                     ideally 5 to 10 times larger"
                ),
            ));
        }
        let ms = |field: &str, v: Option<u64>, default: u64| {
            let v = v.unwrap_or(default);
            if v == 0 {
                Err(field_err(origin, field, "must be at least 1"))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        Ok(Timings {
            tick: Duration::from_millis(tick_ms),
            heartbeat_ticks,
            election_ticks,
            propose_timeout: ms(
                "timings.propose_timeout_ms",
                t.propose_timeout_ms,
                DEFAULT_PROPOSE_TIMEOUT_MS,
            )?,
            read_timeout: ms(
                "timings.read_timeout_ms",
                t.read_timeout_ms,
                DEFAULT_READ_TIMEOUT_MS,
            )?,
        })
    }

    fn validate_peers(
        &self,
        origin: &str,
        id: NodeId,
        raft_listen: SocketAddr,
        client_listen: SocketAddr,
    ) -> Result<Vec<Peer>, ConfigError> {
        let mut peers: Vec<Peer> = Vec::with_capacity(self.peers.len() + 1);
        let mut seen_id: HashMap<NodeId, usize> = HashMap::new();
        let mut seen_raft: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, p) in self.peers.iter().enumerate() {
            let name = |f: &str| format!("peers[{i}].{f}");
            let pid = p.id.ok_or_else(|| field_err(origin, name("id"), "missing"))?;
            if pid == 0 {
                return Err(field_err(origin, name("id"), "node id 0 is reserved"));
            }
            if let Some(j) = seen_id.insert(pid, i) {
                return Err(field_err(
                    origin,
                    name("id"),
                    format!("duplicate node id {pid} (also peers[{j}].id)"),
                ));
            }
            let raw_raft = p
                .raft_addr
                .as_deref()
                .ok_or_else(|| field_err(origin, name("raft_addr"), "missing"))?;
            let raft_addr = parse_addr(origin, &name("raft_addr"), raw_raft)?;
            let raw_client = p
                .client_addr
                .as_deref()
                .ok_or_else(|| field_err(origin, name("client_addr"), "missing"))?;
            let client_addr = parse_addr(origin, &name("client_addr"), raw_client)?;
            for (f, a) in [("raft_addr", raft_addr), ("client_addr", client_addr)] {
                if a.ip().is_unspecified() || a.port() == 0 {
                    return Err(field_err(
                        origin,
                        name(f),
                        format!("{a} is not an address other nodes and clients can reach"),
                    ));
                }
            }
            if let Some(j) = seen_raft.insert(raft_addr, i) {
                return Err(field_err(
                    origin,
                    name("raft_addr"),
                    format!("{raft_addr} is also the address of peers[{j}]"),
                ));
            }
            peers.push(Peer {
                id: pid,
                raft_addr,
                client_addr,
            });
        }
        if !seen_id.contains_key(&id) {
            // This node is not listed: others reach it at its listen addresses, which
            // must then be concrete.
            for (f, a) in [("listen.raft", raft_listen), ("listen.client", client_listen)] {
                if a.ip().is_unspecified() || a.port() == 0 {
                    return Err(field_err(
                        origin,
                        f,
                        format!(
                            "{a} cannot be advertised to peers and clients; list this node (id {id}) \
                             in `peers` with the address it is reached at"
                        ),
                    ));
                }
            }
            if let Some(&j) = seen_raft.get(&raft_listen) {
                return Err(field_err(
                    origin,
                    "listen.raft",
                    format!("{raft_listen} is the address of peers[{j}], another node"),
                ));
            }
            peers.push(Peer {
                id,
                raft_addr: raft_listen,
                client_addr: client_listen,
            });
        }
        peers.sort_by_key(|p| p.id);
        Ok(peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> RawConfig {
        RawConfig {
            id: Some(1),
            data_dir: Some("d".into()),
            listen: RawListen {
                raft: Some("127.0.0.1:7000".into()),
                client: Some("127.0.0.1:7001".into()),
                admin: Some("127.0.0.1:7002".into()),
            },
            tls: RawTls {
                ca: Some("ca.pem".into()),
                cert: Some("cert.pem".into()),
                key: Some("key.pem".into()),
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_node_not_listed_in_peers_is_added_with_its_listen_addresses() {
        let cfg = minimal().validate("t").unwrap();
        assert_eq!(cfg.peers.len(), 1);
        assert_eq!(cfg.peers[0].id, 1);
        assert_eq!(cfg.peers[0].raft_addr, "127.0.0.1:7000".parse().unwrap());
        let m = cfg.bootstrap_membership();
        assert!(m.voters.contains(&1));
        assert_eq!(m.addrs[&1].client, "127.0.0.1:7001");
    }

    #[test]
    fn a_peer_flag_replaces_the_file_peers() {
        let mut raw = minimal();
        raw.peers.push(RawPeer {
            id: Some(9),
            raft_addr: Some("127.0.0.1:9".into()),
            client_addr: Some("127.0.0.1:10".into()),
        });
        let o = Overrides {
            peers: vec!["2=127.0.0.1:7010,127.0.0.1:7011".into()],
            ..Default::default()
        };
        raw.apply(&o, "t").unwrap();
        let cfg = raw.validate("t").unwrap();
        let ids: Vec<_> = cfg.peers.iter().map(|p| p.id).collect();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn an_unspecified_listen_address_needs_an_advertised_one() {
        let mut raw = minimal();
        raw.listen.raft = Some("0.0.0.0:7000".into());
        let err = raw.validate("t").unwrap_err();
        assert_eq!(err.field(), Some("listen.raft"));
        raw.peers.push(RawPeer {
            id: Some(1),
            raft_addr: Some("10.0.0.1:7000".into()),
            client_addr: Some("10.0.0.1:7001".into()),
        });
        let cfg = raw.validate("t").unwrap();
        assert_eq!(
            cfg.this_peer().unwrap().raft_addr,
            "10.0.0.1:7000".parse().unwrap()
        );
    }

    #[test]
    fn election_must_be_slower_than_heartbeat() {
        let mut raw = minimal();
        raw.timings.election_ticks = Some(5);
        let err = raw.validate("t").unwrap_err();
        assert_eq!(err.field(), Some("timings.election_ticks"));
    }

    #[test]
    fn snapshot_policy_reaches_the_sidecar() {
        let mut raw = minimal();
        raw.snapshot = toml::from_str("every_entries = 500\nkeep_entries = 50\nfiles_kept = 3\n")
            .expect("snapshot section");
        let cfg = raw.validate("t").expect("valid");
        let sc = cfg.sidecar_config();
        assert_eq!(
            (sc.snapshot_entries, sc.snapshot_keep_entries, sc.snapshots_kept),
            (500, 50, 3)
        );
        assert_eq!(
            sc.snapshot_bytes,
            SidecarConfig::new(1).snapshot_bytes,
            "default kept"
        );

        raw.snapshot.files_kept = Some(0);
        assert_eq!(
            raw.validate("t").unwrap_err().field(),
            Some("snapshot.files_kept")
        );
        assert!(
            toml::from_str::<RawSnapshot>("every_entry = 5").is_err(),
            "unknown key refused"
        );
    }

    #[test]
    fn peer_flags_are_parsed_strictly() {
        assert!(parse_peer_flag("2=127.0.0.1:1,127.0.0.1:2").is_ok());
        assert!(parse_peer_flag("2=127.0.0.1:1").is_err());
        assert!(parse_peer_flag("x=127.0.0.1:1,127.0.0.1:2").is_err());
    }
}
