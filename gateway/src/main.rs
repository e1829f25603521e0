//! `gateway`: run a bank node, bootstrap a cluster, inspect a node, run the demo.

mod demo;

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use gateway::admin_client::AdminTargets;
use gateway::config::{self, LogFormat, NodeConfig, Overrides, RawTimings};
use gateway::init::{self, InitOptions, JoinNodeOptions};
use gateway::node::Node;
use gateway::status;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "One node of the replicated bank: Raft peer channel, bank client channel, admin HTTP."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node from a TOML config file, with flags overriding its values.
    Run(Box<RunArgs>),
    /// Create a cluster CA, node certificates and node configs in a directory.
    InitCluster(InitArgs),
    /// Issue a new certificate and key for one node from an existing cluster CA
    /// (certificate rotation, or a node added by hand).
    IssueCert(IssueCertArgs),
    /// Prepare a new node to join the running cluster of a directory made by
    /// init-cluster: certificate, key and a join config (it starts empty and waits to be
    /// added), listed in cluster.toml.
    InitNode(InitNodeArgs),
    /// Show a node's status from its admin endpoint.
    Status(StatusArgs),
    /// Change or inspect the cluster's membership through the nodes' admin endpoints:
    /// add a learner, promote it, remove a node, move the leadership, show members.
    Admin(AdminArgs),
    /// Start a local three-node cluster, drive bank traffic, kill the leader, and check
    /// that every acknowledged operation survived. Exits 0 on pass, 1 on fail.
    Demo(demo::DemoArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The node's config file. Without it, every required value must come from flags.
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Args)]
struct InitArgs {
    /// Number of nodes (ids 1..=N).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Directory to create the cluster in.
    #[arg(long)]
    dir: PathBuf,
    /// Node i listens on BASE+10*(i-1) (raft, UDP), +1 (client, UDP), +2 (admin, TCP).
    /// Without it, free ports are picked.
    #[arg(long)]
    base_port: Option<u16>,
    /// The address nodes listen on and advertise.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// Cluster name, checked when peers connect.
    #[arg(long)]
    cluster_id: Option<String>,
    /// Token clients must present.
    #[arg(long, env = "GATEWAY_CLIENT_TOKEN", hide_env_values = true)]
    client_token: Option<String>,
    /// Raft tick in milliseconds.
    #[arg(long)]
    tick_ms: Option<u64>,
    /// Heartbeat interval in ticks.
    #[arg(long)]
    heartbeat_ticks: Option<u32>,
    /// Minimum election timeout in ticks.
    #[arg(long)]
    election_ticks: Option<u32>,
    /// Log format of the nodes.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Overwrite an existing CA, certificates and configs in DIR (node data is never
    /// touched).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct IssueCertArgs {
    /// The cluster directory holding ca.pem and ca-key.pem.
    #[arg(long)]
    dir: PathBuf,
    /// The node id; writes DIR/node-<id>/cert.pem and key.pem.
    #[arg(long)]
    id: u64,
    /// The node's address, added to the certificate for clients.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
}

#[derive(Args)]
struct InitNodeArgs {
    /// The cluster directory (ca.pem, ca-key.pem, cluster.toml).
    #[arg(long)]
    dir: PathBuf,
    /// The new node's id, never used in this cluster before.
    #[arg(long)]
    id: u64,
    /// The address the node listens on and advertises.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// Raft (UDP) on BASE, client (UDP) on BASE+1, admin (TCP) on BASE+2. Without it,
    /// free ports are picked.
    #[arg(long)]
    base_port: Option<u16>,
}

#[derive(Args)]
struct AdminArgs {
    /// A node's admin address (HOST:PORT); repeat for several. Changes are made by the
    /// leader: a follower answers with the leader's id, and the command retries on that
    /// node's admin address when it knows it (from --cluster or the other --admin).
    #[arg(long, global = true)]
    admin: Vec<SocketAddr>,
    /// A cluster directory: its cluster.toml gives every node's admin address.
    #[arg(long, global = true)]
    cluster: Option<PathBuf>,
    /// Bound on the whole command in milliseconds (a change waits for its commit).
    #[arg(long, global = true, default_value_t = 15_000)]
    timeout_ms: u64,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: AdminCmd,
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Show the configuration and, from the leader, each member's replication progress.
    Members,
    /// Add a node as a learner: it receives the log but neither votes nor counts.
    AddLearner {
        /// The node's id.
        #[arg(long)]
        id: u64,
        /// Its Raft address (UDP IP:PORT); from --cluster's cluster.toml if omitted.
        #[arg(long)]
        raft_addr: Option<SocketAddr>,
        /// Its client address (UDP IP:PORT); from --cluster's cluster.toml if omitted.
        #[arg(long)]
        client_addr: Option<SocketAddr>,
    },
    /// Make a caught-up learner a voter (refused while it lags behind the leader).
    Promote {
        /// The learner's id.
        #[arg(long)]
        id: u64,
    },
    /// Remove a voter or learner (the leader too: it hands over first).
    Remove {
        /// The node's id.
        #[arg(long)]
        id: u64,
    },
    /// Hand leadership to another voter and wait until it leads.
    TransferLeader {
        /// The voter to take over.
        #[arg(long)]
        to: u64,
    },
    /// Take a snapshot of a node's state machine now and compact its log (the node
    /// first given with --admin, or the first node of --cluster).
    Snapshot,
}

#[derive(Args)]
struct StatusArgs {
    /// The node's admin address (HOST:PORT).
    #[arg(long)]
    admin: SocketAddr,
    /// Print the raw JSON report.
    #[arg(long)]
    json: bool,
    /// Request timeout in milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => cmd_run(*args),
        Cmd::InitCluster(args) => cmd_init(args),
        Cmd::IssueCert(args) => cmd_issue_cert(args),
        Cmd::InitNode(args) => cmd_init_node(args),
        Cmd::Status(args) => cmd_status(args),
        Cmd::Admin(args) => cmd_admin(args),
        Cmd::Demo(args) => match demo_logging().and_then(|()| demo::run(args)) {
            Ok(true) => Ok(()),
            // The failed checks are on stdout already.
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<demo::Interrupted>() => {
            eprintln!("demo interrupted; its processes are stopped");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. The library's errors already show their
/// cause in their message, so a cause is appended only if it adds something.
fn report(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn init_logging(format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// The demo's own log (its bank clients) goes to stderr only when asked for with
/// `RUST_LOG`; the nodes log to their files in the cluster directory.
fn demo_logging() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        init_logging(LogFormat::Human)?;
    }
    Ok(())
}

fn cmd_run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = config::load(args.config.as_deref(), &args.overrides)?;
    init_logging(cfg.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gateway")
        .build()
        .context("cannot start the tokio runtime")?;
    let json = cfg.log_format == LogFormat::Json;
    let result = runtime.block_on(run_node(cfg));
    // Do not wait for stray blocking tasks (a wedged fsync) once the node is down.
    runtime.shutdown_timeout(Duration::from_secs(2));
    if let (Err(e), true) = (&result, json) {
        // Log shippers see the reason too; main() prints it on stderr either way.
        error!("{}", report(e));
    }
    result
}

async fn run_node(cfg: NodeConfig) -> anyhow::Result<()> {
    // Signal handlers first, so that a SIGTERM during startup is not fatal by default
    // but handled once the node is up.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the Prometheus metrics recorder")?;
    let node = Node::start(cfg, Some(metrics)).await?;
    info!(
        admin = %node.admin_addr(),
        "ready: /health, /status and /metrics are served on the admin address"
    );
    let stopped_by_itself = tokio::select! {
        _ = sigterm.recv() => { info!("SIGTERM received, shutting down"); false }
        _ = sigint.recv() => { info!("SIGINT received, shutting down"); false }
        _ = node.sidecar_stopped() => true,
    };
    node.shutdown().await;
    if stopped_by_itself {
        bail!("the raft sidecar stopped unexpectedly (see the log above); the node exits");
    }
    Ok(())
}

fn cmd_init(args: InitArgs) -> anyhow::Result<()> {
    let mut opts = InitOptions::new(args.nodes, &args.dir);
    opts.host = args.host;
    opts.base_port = args.base_port;
    opts.cluster_id = args.cluster_id;
    opts.client_token = args.client_token;
    opts.log_format = args.log_format;
    opts.force = args.force;
    opts.timings = RawTimings {
        tick_ms: args.tick_ms,
        heartbeat_ticks: args.heartbeat_ticks,
        election_ticks: args.election_ticks,
        ..Default::default()
    };
    let summary = init::init_cluster(&opts)?;
    // Prove the configs load before telling the operator they are ready.
    for n in &summary.nodes {
        let path = args.dir.join(&n.config);
        config::load_file(&path)
            .with_context(|| format!("the generated {} does not load", path.display()))?;
    }
    println!("cluster created in {}", args.dir.display());
    println!(
        "  {:>4}  {:<22}  {:<22}  {:<22}",
        "node", "raft (udp)", "client (udp)", "admin (tcp)"
    );
    for n in &summary.nodes {
        println!(
            "  {:>4}  {:<22}  {:<22}  {:<22}",
            n.id, n.raft_addr, n.client_addr, n.admin_addr
        );
    }
    println!("start each node with:");
    for n in &summary.nodes {
        println!("  gateway run --config {}", args.dir.join(&n.config).display());
    }
    println!(
        "keep {} secret: it can issue certificates the cluster trusts",
        args.dir.join(init::CA_KEY_FILE).display()
    );
    Ok(())
}

fn cmd_issue_cert(args: IssueCertArgs) -> anyhow::Result<()> {
    let dir = init::write_node_cert(&args.dir, args.id, args.host)?;
    println!(
        "wrote {} and {}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    Ok(())
}

fn cmd_status(args: StatusArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    if args.json {
        println!("{}", status::fetch_status_json(args.admin, timeout)?);
    } else {
        print!("{}", status::fetch_status(args.admin, timeout)?.render_human());
    }
    Ok(())
}

fn cmd_init_node(args: InitNodeArgs) -> anyhow::Result<()> {
    let node = init::init_join_node(&JoinNodeOptions {
        dir: args.dir.clone(),
        id: args.id,
        host: args.host,
        base_port: args.base_port,
    })?;
    let config = args.dir.join(&node.config);
    config::load_file(&config)
        .with_context(|| format!("the generated {} does not load", config.display()))?;
    println!(
        "node {} prepared in {} to join the cluster",
        node.id,
        args.dir.join(format!("node-{}", node.id)).display()
    );
    println!(
        "  raft {}  client {}  admin {}",
        node.raft_addr, node.client_addr, node.admin_addr
    );
    println!("next:");
    println!("  gateway run --config {}", config.display());
    println!(
        "  gateway admin --cluster {} add-learner --id {} --raft-addr {} --client-addr {}",
        args.dir.display(),
        node.id,
        node.raft_addr,
        node.client_addr
    );
    println!(
        "  gateway admin --cluster {} members        # until node {} lags by a few entries at most",
        args.dir.display(),
        node.id
    );
    println!(
        "  gateway admin --cluster {} promote --id {}",
        args.dir.display(),
        node.id
    );
    Ok(())
}

fn cmd_admin(args: AdminArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut targets = AdminTargets::new(&args.admin, args.cluster.as_deref(), timeout)?;
    let (path, body, what) = match args.cmd {
        AdminCmd::Members => {
            let report = targets.members()?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render_human());
            }
            return Ok(());
        }
        AdminCmd::AddLearner {
            id,
            raft_addr,
            client_addr,
        } => {
            let listed = targets.summary().and_then(|s| s.node(id)).cloned();
            let raft = raft_addr
                .or(listed.as_ref().map(|n| n.raft_addr))
                .context("--raft-addr is required (node not in --cluster's cluster.toml)")?;
            let client = client_addr
                .or(listed.as_ref().map(|n| n.client_addr))
                .context("--client-addr is required (node not in --cluster's cluster.toml)")?;
            (
                "/admin/add-learner",
                serde_json::json!({ "id": id, "raft_addr": raft.to_string(), "client_addr": client.to_string() }),
                format!("node {id} is a learner"),
            )
        }
        AdminCmd::Promote { id } => (
            "/admin/promote",
            serde_json::json!({ "id": id }),
            format!("node {id} is a voter"),
        ),
        AdminCmd::Remove { id } => (
            "/admin/remove",
            serde_json::json!({ "id": id }),
            format!("node {id} is not a member any more"),
        ),
        AdminCmd::TransferLeader { to } => (
            "/admin/transfer-leader",
            serde_json::json!({ "id": to }),
            format!("node {to} leads"),
        ),
        AdminCmd::Snapshot => (
            "/admin/snapshot",
            serde_json::json!({}),
            "snapshot taken".to_owned(),
        ),
    };
    let answer = targets.post_to_leader(path, &body)?;
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    println!("{what}");
    if path == "/admin/snapshot" {
        println!(
            "node {} holds a snapshot at index {}",
            answer["node"], answer["index"]
        );
    }
    if let Some(m) = answer.get("membership") {
        println!(
            "configuration at index {}: voters {} learners {}",
            answer["index"], m["voters"], m["learners"]
        );
    }
    Ok(())
}
