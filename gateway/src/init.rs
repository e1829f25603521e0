//! `gateway init-cluster`: a cluster CA, a certificate and key per node, a config per
//! node and a summary, laid out so that `gateway run --config DIR/node-<id>/node.toml`
//! works as is.
//!
//! ```text
//! DIR/
//!   ca.pem          cluster CA certificate (every node and client trusts it)
//!   ca-key.pem      cluster CA private key (0600; needed only to issue certificates)
//!   cluster.toml    the summary: every node's id and addresses
//!   node-<id>/
//!     cert.pem      node certificate: SAN node-<id>.raft, localhost and the host IP
//!     key.pem       node private key (0600)
//!     node.toml     node configuration (paths relative to this directory)
//!     data/         created by the node on first start: raft.redb
//! ```
//!
//! `gateway init-node` ([`init_join_node`]) adds one more `node-<id>/` to an existing
//! cluster directory for a node that joins the running cluster (certificate from the
//! same CA, `join = true` config, an entry in `cluster.toml`).

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use raft::core::NodeId;
use raft::transport::certs::{CertError, ClusterCa, IssuedCert};
use raft::transport::node_server_name;
use serde::{Deserialize, Serialize};

use crate::config::{LogFormat, RawClient, RawConfig, RawListen, RawPeer, RawSnapshot, RawTimings, RawTls};

/// The summary file at the top of a cluster directory.
pub const SUMMARY_FILE: &str = "cluster.toml";
/// The CA certificate file.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key file.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// A node's config file, inside its directory.
pub const NODE_CONFIG_FILE: &str = "node.toml";

/// What `init-cluster` makes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// How many nodes (ids 1..=nodes).
    pub nodes: u64,
    /// The cluster directory.
    pub dir: PathBuf,
    /// The address every node listens on and is reached at.
    pub host: IpAddr,
    /// Node `i` gets ports `base + 10*(i-1)` (raft), `+1` (client), `+2` (admin).
    /// `None` picks free ports on `host`.
    pub base_port: Option<u16>,
    /// The cluster name written to every node.
    pub cluster_id: Option<String>,
    /// A client token written to every node.
    pub client_token: Option<String>,
    /// Timings written to every node (unset fields use the defaults).
    pub timings: RawTimings,
    /// The `[snapshot]` section written to every node (unset fields use the defaults).
    pub snapshot: RawSnapshot,
    /// Log format written to every node.
    pub log_format: Option<LogFormat>,
    /// Overwrite an existing CA, certificates and configs (never data).
    pub force: bool,
}

impl InitOptions {
    /// `nodes` nodes on 127.0.0.1 with free ports.
    pub fn new(nodes: u64, dir: impl Into<PathBuf>) -> Self {
        InitOptions {
            nodes,
            dir: dir.into(),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            base_port: None,
            cluster_id: None,
            client_token: None,
            timings: RawTimings::default(),
            snapshot: RawSnapshot::default(),
            log_format: None,
            force: false,
        }
    }
}

/// One node in the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Node id.
    pub id: NodeId,
    /// Raft channel (UDP).
    pub raft_addr: SocketAddr,
    /// Client channel (UDP).
    pub client_addr: SocketAddr,
    /// Admin HTTP (TCP).
    pub admin_addr: SocketAddr,
    /// The node's config file, relative to the cluster directory.
    pub config: PathBuf,
}

/// The cluster summary (`cluster.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSummary {
    /// The cluster name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The CA certificate, relative to the cluster directory.
    pub ca: PathBuf,
    /// The nodes.
    pub nodes: Vec<NodeSummary>,
}

impl ClusterSummary {
    /// Reads `DIR/cluster.toml`.
    pub fn load(dir: &Path) -> Result<ClusterSummary, InitError> {
        let path = dir.join(SUMMARY_FILE);
        let text = fs::read_to_string(&path).map_err(|source| InitError::Io {
            path: path.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| InitError::Summary {
            path,
            reason: e.to_string(),
        })
    }

    /// The node with id `id`.
    pub fn node(&self, id: NodeId) -> Option<&NodeSummary> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// Errors making a cluster directory.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
    /// The directory already holds a cluster.
    #[error("{0} already exists; pass --force to overwrite the CA, certificates and configs")]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificates: {0}")]
    Cert(#[from] CertError),
    /// The summary file is unreadable.
    #[error("{path}: {reason}")]
    Summary {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A free port could not be found.
    #[error("cannot pick a free port on {host}: {source}")]
    NoPort {
        /// The host.
        host: IpAddr,
        /// Why.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), InitError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    if secret {
        // The mode above applies only to new files; an overwritten one keeps its own.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
    }
    f.write_all(contents.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// The names a node certificate carries: the Raft identity `node-<id>.raft` (which
/// the peer channel checks) and the names clients dial the client channel with.
pub fn node_cert_names(id: NodeId, host: IpAddr) -> Vec<String> {
    let mut names = vec![node_server_name(id), "localhost".to_owned(), host.to_string()];
    if !host.is_loopback() {
        names.push(Ipv4Addr::LOCALHOST.to_string());
    }
    names.dedup();
    names
}

/// Issues a certificate for node `id` usable on both channels.
pub fn issue_node_cert(ca: &ClusterCa, id: NodeId, host: IpAddr) -> Result<IssuedCert, InitError> {
    if id == 0 {
        return Err(InitError::Invalid("node id 0 is reserved".into()));
    }
    Ok(ca.issue_for_names(&format!("node-{id}"), node_cert_names(id, host))?)
}

/// Loads the CA of an existing cluster directory.
pub fn load_ca(dir: &Path) -> Result<ClusterCa, InitError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let cert = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
    let key = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
    Ok(ClusterCa::from_pem(&cert, &key)?)
}

/// Writes a fresh certificate and key for node `id` into `DIR/node-<id>/`, signed by
/// the CA in `DIR` (certificate rotation, or a node added by hand).
pub fn write_node_cert(dir: &Path, id: NodeId, host: IpAddr) -> Result<PathBuf, InitError> {
    let ca = load_ca(dir)?;
    let node_dir = dir.join(format!("node-{id}"));
    fs::create_dir_all(&node_dir).map_err(io_err(&node_dir))?;
    let cert = issue_node_cert(&ca, id, host)?;
    write_file(&node_dir.join("key.pem"), &cert.key_pem, true)?;
    write_file(&node_dir.join("cert.pem"), &cert.cert_pem, false)?;
    Ok(node_dir)
}

/// Picks a port free for both UDP and TCP on `host` for each of `n` nodes' three
/// sockets. The sockets are held until all are picked so the picks differ; another
/// process may still take one before the node binds it.
fn pick_ports(host: IpAddr, n: u64) -> Result<Vec<[u16; 3]>, InitError> {
    let err = |source| InitError::NoPort { host, source };
    let mut held_udp = Vec::new();
    let mut held_tcp = Vec::new();
    let mut out = Vec::new();
    for _ in 0..n {
        let mut ports = [0u16; 3];
        for (k, port) in ports.iter_mut().enumerate() {
            if k < 2 {
                let s = UdpSocket::bind((host, 0)).map_err(err)?;
                *port = s.local_addr().map_err(err)?.port();
                held_udp.push(s);
            } else {
                let s = TcpListener::bind((host, 0)).map_err(err)?;
                *port = s.local_addr().map_err(err)?.port();
                held_tcp.push(s);
            }
        }
        out.push(ports);
    }
    Ok(out)
}

/// Creates the cluster directory. See the module docs for the layout.
pub fn init_cluster(opts: &InitOptions) -> Result<ClusterSummary, InitError> {
    if opts.nodes == 0 || opts.nodes > 99 {
        return Err(InitError::Invalid(format!(
            "--nodes {}: between 1 and 99 nodes",
            opts.nodes
        )));
    }
    if opts.host.is_unspecified() {
        return Err(InitError::Invalid(format!(
            "--host {}: nodes advertise this address to each other and to clients, so it must be \
             a concrete address",
            opts.host
        )));
    }
    let ports: Vec<[u16; 3]> = match opts.base_port {
        Some(base) => {
            let last = u32::from(base) + 10 * (opts.nodes as u32 - 1) + 2;
            if base == 0 || last > u32::from(u16::MAX) {
                return Err(InitError::Invalid(format!(
                    "--base-port {base}: {} nodes need ports {base}..={last}",
                    opts.nodes
                )));
            }
            (0..opts.nodes as u16)
                .map(|i| {
                    let p = base + 10 * i;
                    [p, p + 1, p + 2]
                })
                .collect()
        }
        None => pick_ports(opts.host, opts.nodes)?,
    };

    let dir = &opts.dir;
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ca_path = dir.join(CA_CERT_FILE);
    if !opts.force {
        for existing in [CA_CERT_FILE, CA_KEY_FILE, SUMMARY_FILE].map(|f| dir.join(f)) {
            if existing.exists() {
                return Err(InitError::Exists(existing));
            }
        }
    }
    for id in 1..=opts.nodes {
        let data = dir.join(format!("node-{id}")).join("data");
        if data.exists() {
            return Err(InitError::Invalid(format!(
                "{} holds a node's data from an earlier cluster; remove it first",
                data.display()
            )));
        }
    }

    let ca = ClusterCa::generate()?;
    write_file(&dir.join(CA_KEY_FILE), ca.key_pem(), true)?;
    write_file(&ca_path, ca.cert_pem(), false)?;

    let addr = |port: u16| SocketAddr::new(opts.host, port);
    let peers: Vec<RawPeer> = (1..=opts.nodes)
        .zip(&ports)
        .map(|(id, p)| RawPeer {
            id: Some(id),
            raft_addr: Some(addr(p[0]).to_string()),
            client_addr: Some(addr(p[1]).to_string()),
        })
        .collect();
    let mut nodes = Vec::new();
    for (id, p) in (1..=opts.nodes).zip(&ports) {
        let node_dir = dir.join(format!("node-{id}"));
        fs::create_dir_all(&node_dir).map_err(io_err(&node_dir))?;
        let cert = issue_node_cert(&ca, id, opts.host)?;
        write_file(&node_dir.join("key.pem"), &cert.key_pem, true)?;
        write_file(&node_dir.join("cert.pem"), &cert.cert_pem, false)?;
        let raw = RawConfig {
            id: Some(id),
            cluster_id: opts.cluster_id.clone(),
            data_dir: Some("data".into()),
            join: None,
            log_format: opts.log_format,
            listen: RawListen {
                raft: Some(addr(p[0]).to_string()),
                client: Some(addr(p[1]).to_string()),
                admin: Some(addr(p[2]).to_string()),
            },
            tls: RawTls {
                ca: Some(Path::new("..").join(CA_CERT_FILE)),
                cert: Some("cert.pem".into()),
                key: Some("key.pem".into()),
            },
            client: RawClient {
                token: opts.client_token.clone(),
                max_frame_len: None,
            },
            timings: opts.timings.clone(),
            snapshot: opts.snapshot.clone(),
            peers: peers.clone(),
        };
        let body = raw
            .to_toml()
            .map_err(|e| InitError::Invalid(format!("cannot encode node {id}'s config: {e}")))?;
        let text = format!(
            "# Node {id} of a cluster made by `gateway init-cluster`.\n\
             # Relative paths are relative to this file's directory.\n\
             # Run it with: gateway run --config {}\n\n{body}",
            node_dir.join(NODE_CONFIG_FILE).display()
        );
        write_file(
            &node_dir.join(NODE_CONFIG_FILE),
            &text,
            opts.client_token.is_some(),
        )?;
        nodes.push(NodeSummary {
            id,
            raft_addr: addr(p[0]),
            client_addr: addr(p[1]),
            admin_addr: addr(p[2]),
            config: Path::new(&format!("node-{id}")).join(NODE_CONFIG_FILE),
        });
    }
    let summary = ClusterSummary {
        cluster_id: opts.cluster_id.clone(),
        ca: CA_CERT_FILE.into(),
        nodes,
    };
    let text = toml::to_string(&summary)
        .map_err(|e| InitError::Invalid(format!("cannot encode the cluster summary: {e}")))?;
    write_file(
        &dir.join(SUMMARY_FILE),
        &format!("# Made by `gateway init-cluster`.\n\n{text}"),
        false,
    )?;
    Ok(summary)
}

/// What `init-node` makes: the directory of a node that joins a running cluster.
#[derive(Debug, Clone)]
pub struct JoinNodeOptions {
    /// The cluster directory (made by `init-cluster`: `ca.pem`, `ca-key.pem`,
    /// `cluster.toml` and the existing nodes' configs).
    pub dir: PathBuf,
    /// The new node's id: not used by any node of the cluster before.
    pub id: NodeId,
    /// The address the node listens on and is reached at.
    pub host: IpAddr,
    /// Raft, client and admin ports `base`, `base + 1`, `base + 2`; `None` picks free
    /// ports on `host`.
    pub base_port: Option<u16>,
}

/// Prepares `DIR/node-<id>/` for a node that joins the running cluster of `DIR`: a
/// certificate and key from the cluster CA and a `join = true` config that takes the
/// cluster's settings (cluster id, client token and frame limit, timings, log format)
/// from an existing node's config. The node is added to `cluster.toml`. Refuses an id
/// that the summary already lists (node ids are never reused: a removed node's log
/// still names it) and a directory that holds data.
///
/// The node still has to be started and then added by the leader
/// (`gateway admin add-learner`, then `promote`).
pub fn init_join_node(opts: &JoinNodeOptions) -> Result<NodeSummary, InitError> {
    let dir = &opts.dir;
    let id = opts.id;
    if id == 0 {
        return Err(InitError::Invalid("node id 0 is reserved".into()));
    }
    if opts.host.is_unspecified() {
        return Err(InitError::Invalid(format!(
            "--host {}: the node advertises this address, so it must be a concrete address",
            opts.host
        )));
    }
    let mut summary = ClusterSummary::load(dir)?;
    if summary.node(id).is_some() {
        return Err(InitError::Invalid(format!(
            "node {id} is already listed in {}; a new node needs an id never used in this cluster",
            dir.join(SUMMARY_FILE).display()
        )));
    }
    let template_node = summary
        .nodes
        .first()
        .ok_or_else(|| InitError::Invalid(format!("{} lists no node", dir.join(SUMMARY_FILE).display())))?;
    let template_path = dir.join(&template_node.config);
    let text = fs::read_to_string(&template_path).map_err(io_err(&template_path))?;
    let template = RawConfig::parse(&text, &template_path).map_err(|e| InitError::Summary {
        path: template_path.clone(),
        reason: e.to_string(),
    })?;
    let node_dir = dir.join(format!("node-{id}"));
    let data = node_dir.join("data");
    if data.exists() {
        return Err(InitError::Invalid(format!(
            "{} holds a node's data; a joining node must start empty",
            data.display()
        )));
    }
    let ports = match opts.base_port {
        Some(base) => {
            if base == 0 || base > u16::MAX - 2 {
                return Err(InitError::Invalid(format!(
                    "--base-port {base}: the node needs ports {base} to {}",
                    u32::from(base) + 2
                )));
            }
            [base, base + 1, base + 2]
        }
        None => pick_ports(opts.host, 1)?[0],
    };
    let addr = |port: u16| SocketAddr::new(opts.host, port);
    fs::create_dir_all(&node_dir).map_err(io_err(&node_dir))?;
    let ca = load_ca(dir)?;
    let cert = issue_node_cert(&ca, id, opts.host)?;
    write_file(&node_dir.join("key.pem"), &cert.key_pem, true)?;
    write_file(&node_dir.join("cert.pem"), &cert.cert_pem, false)?;
    let raw = RawConfig {
        id: Some(id),
        cluster_id: template.cluster_id.clone(),
        data_dir: Some("data".into()),
        join: Some(true),
        log_format: template.log_format,
        listen: RawListen {
            raft: Some(addr(ports[0]).to_string()),
            client: Some(addr(ports[1]).to_string()),
            admin: Some(addr(ports[2]).to_string()),
        },
        tls: RawTls {
            ca: Some(Path::new("..").join(CA_CERT_FILE)),
            cert: Some("cert.pem".into()),
            key: Some("key.pem".into()),
        },
        client: template.client.clone(),
        timings: template.timings.clone(),
        snapshot: template.snapshot.clone(),
        peers: Vec::new(),
    };
    let body = raw
        .to_toml()
        .map_err(|e| InitError::Invalid(format!("cannot encode node {id}'s config: {e}")))?;
    let text = format!(
        "# Node {id}, made by `gateway init-node` to join the cluster of this directory.\n\
         # `join = true`: it starts with no configuration and waits for the leader to add it:\n\
         #   gateway admin add-learner --id {id} --raft-addr {} --client-addr {}\n\
         # Relative paths are relative to this file's directory.\n\n{body}",
        addr(ports[0]),
        addr(ports[1]),
    );
    write_file(
        &node_dir.join(NODE_CONFIG_FILE),
        &text,
        raw.client.token.is_some(),
    )?;
    let node = NodeSummary {
        id,
        raft_addr: addr(ports[0]),
        client_addr: addr(ports[1]),
        admin_addr: addr(ports[2]),
        config: Path::new(&format!("node-{id}")).join(NODE_CONFIG_FILE),
    };
    summary.nodes.push(node.clone());
    summary.nodes.sort_by_key(|n| n.id);
    let text = toml::to_string(&summary)
        .map_err(|e| InitError::Invalid(format!("cannot encode the cluster summary: {e}")))?;
    write_file(
        &dir.join(SUMMARY_FILE),
        &format!("# Made by `gateway init-cluster`; nodes added by `gateway init-node`.\n\n{text}"),
        false,
    )?;
    Ok(node)
}
