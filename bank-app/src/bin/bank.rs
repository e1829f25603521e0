//! `bank`: the command-line client of a replicated bank cluster.
//!
//! ```text
//! bank --cluster 127.0.0.1:7001,127.0.0.1:7002 --ca ca.pem [--token T] [--json] COMMAND
//!   open ACCOUNT [INITIAL]        deposit ACCOUNT AMOUNT      withdraw ACCOUNT AMOUNT
//!   transfer FROM TO AMOUNT       balance ACCOUNT [--stale]   statement ACCOUNT [--limit N] [--stale]
//!   status                        bench --clients N --duration S --accounts A --mix deposit=..,transfer=..
//! ```
//!
//! Exit codes: 0 success, 2 business rejection (insufficient funds, unknown account,
//! invalid amount, ...), 1 failure (unavailable, timeout, transport, TLS, token), 64
//! usage error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bank_app::client::{Client, ClientConfig, ClientError};
use bank_app::protocol::{Consistency, NodeRole};
use bank_app::{validate_amount, Rejection, TxnKind, MAX_AMOUNT};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

const EXIT_OK: u8 = 0;
const EXIT_FAILURE: u8 = 1;
const EXIT_REJECTED: u8 = 2;
const EXIT_USAGE: u8 = 64;

#[derive(Parser, Debug)]
#[command(name = "bank", version, about = "Client of a replicated bank cluster")]
struct Cli {
    /// Client channel addresses of the cluster's nodes (host:port), comma separated.
    /// Any reachable node will do; writes are redirected to the leader.
    #[arg(long, env = "BANK_CLUSTER", value_delimiter = ',', required = true)]
    cluster: Vec<String>,
    /// PEM file with the cluster CA certificate.
    #[arg(long, env = "BANK_CA")]
    ca: PathBuf,
    /// Shared client token, if the cluster requires one.
    #[arg(long, env = "BANK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print machine-readable JSON on stdout (errors included).
    #[arg(long, global = true)]
    json: bool,
    /// Give up on a command after this many seconds, retries included.
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Open an account with an initial balance (default 0), in minor units.
    Open {
        /// The new account's id.
        account: u64,
        /// Opening balance in minor units.
        #[arg(default_value = "0", allow_negative_numbers = true)]
        initial: i128,
    },
    /// Credit an account.
    Deposit {
        /// The account.
        account: u64,
        /// Minor units to add.
        #[arg(allow_negative_numbers = true)]
        amount: i128,
    },
    /// Debit an account.
    Withdraw {
        /// The account.
        account: u64,
        /// Minor units to remove.
        #[arg(allow_negative_numbers = true)]
        amount: i128,
    },
    /// Move money between two accounts, atomically.
    Transfer {
        /// The account debited.
        from: u64,
        /// The account credited.
        to: u64,
        /// Minor units to move.
        #[arg(allow_negative_numbers = true)]
        amount: i128,
    },
    /// Show an account's balance.
    Balance {
        /// The account.
        account: u64,
        /// Read whatever the node has applied (fast, may miss recent writes).
        #[arg(long)]
        stale: bool,
    },
    /// Show an account's recent transactions.
    Statement {
        /// The account.
        account: u64,
        /// At most this many transactions.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Read whatever the node has applied.
        #[arg(long)]
        stale: bool,
    },
    /// Show every node's view of the cluster.
    Status,
    /// Drive load with concurrent clients and report throughput and latency.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Concurrent clients (each with its own session and connections).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    clients: u64,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    duration: f64,
    /// How many accounts to spread the load over (opened first if missing).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(2..=1_000_000))]
    accounts: u64,
    /// The first account id used by the benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    first_account: u64,
    /// Opening balance of the benchmark's accounts.
    #[arg(long, default_value_t = 1_000_000_000)]
    initial: u64,
    /// Operation weights: deposit, withdraw, transfer, balance, stale, statement.
    #[arg(long, default_value = "deposit=40,transfer=40,balance=20", value_parser = parse_mix)]
    mix: Mix,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err("must be a number of seconds in (0, 86400]".into())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum OpKind {
    Deposit,
    Withdraw,
    Transfer,
    Balance,
    Stale,
    Statement,
}

impl OpKind {
    const ALL: [OpKind; 6] = [
        OpKind::Deposit,
        OpKind::Withdraw,
        OpKind::Transfer,
        OpKind::Balance,
        OpKind::Stale,
        OpKind::Statement,
    ];

    fn name(self) -> &'static str {
        match self {
            OpKind::Deposit => "deposit",
            OpKind::Withdraw => "withdraw",
            OpKind::Transfer => "transfer",
            OpKind::Balance => "balance",
            OpKind::Stale => "stale",
            OpKind::Statement => "statement",
        }
    }
}

#[derive(Clone, Debug)]
struct Mix(Vec<(OpKind, u32)>);

fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut mix = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected KIND=WEIGHT"))?;
        let kind = OpKind::ALL
            .into_iter()
            .find(|k| k.name() == name.trim())
            .ok_or_else(|| {
                format!("unknown operation `{name}` (deposit, withdraw, transfer, balance, stale, statement)")
            })?;
        let weight: u32 = weight.trim().parse().map_err(|e| format!("`{part}`: {e}"))?;
        if weight > 1_000_000 {
            return Err(format!("`{part}`: weight too large"));
        }
        if weight > 0 {
            mix.push((kind, weight));
        }
    }
    if mix.is_empty() {
        return Err("the mix needs at least one operation with a positive weight".into());
    }
    Ok(Mix(mix))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bank: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let json = cli.json;
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            report_failure(json, "failure", &format!("{e:#}"), None);
            EXIT_FAILURE
        }
    };
    ExitCode::from(code)
}

fn print_json(v: &Value) {
    println!("{v}");
}

fn report_failure(json: bool, kind: &str, message: &str, rejection: Option<&Rejection>) {
    if json {
        let mut v = json!({ "ok": false, "error": kind, "message": message });
        if let Some(r) = rejection {
            v["rejection"] = serde_json::to_value(r).unwrap_or(Value::Null);
        }
        print_json(&v);
    } else {
        eprintln!("bank: {message}");
    }
}

/// Reports a client error and chooses the exit code.
fn report_error(json: bool, e: &ClientError) -> u8 {
    match e {
        ClientError::Rejected(r) => {
            report_failure(json, "rejected", &format!("rejected: {r}"), Some(r));
            EXIT_REJECTED
        }
        other => {
            let kind = match other {
                ClientError::Unavailable(_) => "unavailable",
                ClientError::Timeout(_) => "timeout",
                ClientError::SessionLost(_) => "session_lost",
                ClientError::Transport(_) => "transport",
                ClientError::Tls(_) => "tls",
                ClientError::Protocol(_) => "protocol",
                ClientError::Unauthorized(_) => "unauthorized",
                ClientError::Config(_) | ClientError::Rejected(_) => "config",
            };
            let mut message = other.to_string();
            if other.outcome_unknown() {
                message.push_str(" (a write may or may not have been applied)");
            }
            report_failure(json, kind, &message, None);
            EXIT_FAILURE
        }
    }
}

/// Validates an amount typed by the user; `allow_zero` for opening balances.
fn amount(raw: i128, allow_zero: bool) -> Result<u64, Rejection> {
    if allow_zero && raw == 0 {
        return Ok(0);
    }
    validate_amount(raw, MAX_AMOUNT)
}

async fn resolve_cluster(entries: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut nodes = Vec::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let addr = tokio::net::lookup_host(entry)
            .await
            .with_context(|| format!("cannot resolve cluster address `{entry}` (expected host:port)"))?
            .next()
            .with_context(|| format!("`{entry}` resolves to no address"))?;
        nodes.push(addr);
    }
    if nodes.is_empty() {
        bail!("--cluster names no address");
    }
    Ok(nodes)
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let json = cli.json;
    let ca_pem = std::fs::read_to_string(&cli.ca)
        .with_context(|| format!("cannot read CA file {}", cli.ca.display()))?;
    let nodes = resolve_cluster(&cli.cluster).await?;
    let mut cfg = ClientConfig::new(nodes.clone(), ca_pem);
    cfg.token = cli.token.clone();
    cfg.total_timeout = Duration::from_secs_f64(cli.timeout);
    cfg.request_timeout = cfg.request_timeout.min(cfg.total_timeout);
    cfg.connect_timeout = cfg.connect_timeout.min(cfg.total_timeout);

    // Amounts are checked before connecting: a bad one is a rejection, not a failure.
    let checked = match &cli.command {
        Command::Open { initial, .. } => amount(*initial, true).map(Some),
        Command::Deposit { amount: a, .. }
        | Command::Withdraw { amount: a, .. }
        | Command::Transfer { amount: a, .. } => amount(*a, false).map(Some),
        _ => Ok(None),
    };
    let value = match checked {
        Ok(v) => v.unwrap_or(0),
        Err(r) => return Ok(report_error(json, &ClientError::Rejected(r))),
    };

    if let Command::Bench(args) = &cli.command {
        return bench(cfg, args, json).await;
    }
    let client = match Client::connect(cfg).await {
        Ok(c) => c,
        Err(e) => return Ok(report_error(json, &e)),
    };
    let result = command(&client, &cli.command, value, &nodes, json).await;
    client.close().await;
    Ok(match result {
        Ok(()) => EXIT_OK,
        Err(e) => report_error(json, &e),
    })
}

async fn command(
    client: &Client,
    command: &Command,
    value: u64,
    nodes: &[SocketAddr],
    json: bool,
) -> Result<(), ClientError> {
    match *command {
        Command::Open { account, .. } => {
            let balance = client.open_account(account, value).await?;
            if json {
                print_json(&json!({"ok": true, "op": "open", "account": account, "balance": balance}));
            } else {
                println!("account {account} opened, balance {balance}");
            }
        }
        Command::Deposit { account, .. } => {
            let balance = client.deposit(account, value).await?;
            if json {
                print_json(
                    &json!({"ok": true, "op": "deposit", "account": account, "amount": value, "balance": balance}),
                );
            } else {
                println!("account {account}: deposited {value}, balance {balance}");
            }
        }
        Command::Withdraw { account, .. } => {
            let balance = client.withdraw(account, value).await?;
            if json {
                print_json(
                    &json!({"ok": true, "op": "withdraw", "account": account, "amount": value, "balance": balance}),
                );
            } else {
                println!("account {account}: withdrew {value}, balance {balance}");
            }
        }
        Command::Transfer { from, to, .. } => {
            let t = client.transfer(from, to, value).await?;
            if json {
                print_json(&json!({
                    "ok": true, "op": "transfer", "from": from, "to": to, "amount": value,
                    "from_balance": t.from_balance, "to_balance": t.to_balance,
                }));
            } else {
                println!(
                    "transferred {value} from {from} to {to}: balance of {from} is {}, of {to} is {}",
                    t.from_balance, t.to_balance
                );
            }
        }
        Command::Balance { account, stale } => {
            let consistency = if stale {
                Consistency::Stale
            } else {
                Consistency::Linearizable
            };
            let r = client.read_balance(account, consistency).await?;
            if json {
                print_json(&json!({
                    "ok": true, "op": "balance", "account": account, "balance": r.balance,
                    "stale": stale, "applied_index": r.applied_index,
                }));
            } else if stale {
                println!(
                    "account {account}: balance {} (stale read, applied index {})",
                    r.balance, r.applied_index
                );
            } else {
                println!("account {account}: balance {}", r.balance);
            }
        }
        Command::Statement {
            account,
            limit,
            stale,
        } => {
            let consistency = if stale {
                Consistency::Stale
            } else {
                Consistency::Linearizable
            };
            let s = client.read_statement(account, limit, consistency).await?;
            if json {
                print_json(&json!({
                    "ok": true, "op": "statement", "account": account, "balance": s.balance,
                    "applied_index": s.applied_index, "txns": s.txns,
                }));
            } else {
                println!("account {account}: balance {}", s.balance);
                println!(
                    "{:>10}  {:<12} {:>20} {:>12} {:>20}",
                    "index", "kind", "amount", "counterparty", "balance"
                );
                for t in &s.txns {
                    let kind = match t.kind {
                        TxnKind::Open => "open",
                        TxnKind::Deposit => "deposit",
                        TxnKind::Withdraw => "withdraw",
                        TxnKind::TransferOut => "transfer out",
                        TxnKind::TransferIn => "transfer in",
                    };
                    let cp = t
                        .counterparty
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:>10}  {:<12} {:>20} {:>12} {:>20}",
                        t.index, kind, t.amount, cp, t.balance
                    );
                }
            }
        }
        Command::Status => {
            let mut rows = Vec::new();
            let mut reached = 0;
            for &node in nodes {
                match client.node_status(node).await {
                    Ok(s) => {
                        reached += 1;
                        let role = match s.role {
                            NodeRole::Leader => "leader",
                            NodeRole::Candidate => "candidate",
                            NodeRole::Follower => "follower",
                        };
                        if !json {
                            println!(
                                "{node}  node {}  {role:<9}  term {}  leader {}  commit {}  applied {}",
                                s.node_id,
                                s.term,
                                s.leader_id.map_or("?".into(), |l| l.to_string()),
                                s.commit_index,
                                s.applied_index
                            );
                        }
                        rows.push(json!({
                            "addr": node.to_string(), "reachable": true, "node_id": s.node_id, "role": role,
                            "term": s.term, "leader_id": s.leader_id, "leader_client_addr": s.leader_client_addr,
                            "commit_index": s.commit_index, "applied_index": s.applied_index,
                        }));
                    }
                    Err(e) => {
                        if !json {
                            println!("{node}  unreachable: {e}");
                        }
                        rows.push(
                            json!({"addr": node.to_string(), "reachable": false, "error": e.to_string()}),
                        );
                    }
                }
            }
            if json {
                print_json(&json!({"ok": reached > 0, "op": "status", "nodes": rows}));
            }
            if reached == 0 {
                return Err(ClientError::Transport("no node answered".into()));
            }
        }
        Command::Bench(_) => return Err(ClientError::Config("bench runs on its own clients".into())),
    }
    Ok(())
}

// ----- bench -----

/// Per-operation results of one worker.
struct KindStats {
    ok: u64,
    rejected: u64,
    failed: u64,
    /// Latency of completed operations (ok or rejected), in microseconds.
    latency: Histogram<u64>,
}

impl KindStats {
    fn new() -> anyhow::Result<Self> {
        Ok(KindStats {
            ok: 0,
            rejected: 0,
            failed: 0,
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).context("histogram")?,
        })
    }

    fn merge(&mut self, other: &KindStats) {
        self.ok += other.ok;
        self.rejected += other.rejected;
        self.failed += other.failed;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }
}

/// A small xorshift generator: the benchmark's choices need speed, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

async fn bench(cfg: ClientConfig, args: &BenchArgs, json: bool) -> anyhow::Result<u8> {
    let first = args.first_account;
    let last = first
        .checked_add(args.accounts - 1)
        .context("--first-account + --accounts overflows")?;
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        match Client::connect(cfg.clone()).await {
            Ok(c) => clients.push(c),
            Err(e) => return Ok(report_error(json, &e)),
        }
    }
    // Open the accounts, spread over the clients.
    let mut opening = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let client = client.clone();
        let n = clients.len() as u64;
        let initial = args.initial;
        opening.push(tokio::spawn(async move {
            let mut id = first + i as u64;
            while id <= last {
                match client.open_account(id, initial).await {
                    Ok(_) | Err(ClientError::Rejected(Rejection::AccountExists(_))) => {}
                    Err(e) => return Err(e),
                }
                id = match id.checked_add(n) {
                    Some(next) => next,
                    None => break,
                };
            }
            Ok(())
        }));
    }
    for task in opening {
        if let Err(e) = task.await.context("account setup task")? {
            eprintln!("bank bench: cannot open the benchmark's accounts");
            return Ok(report_error(json, &e));
        }
    }

    let duration = Duration::from_secs_f64(args.duration);
    let total_weight: u64 = args.mix.0.iter().map(|&(_, w)| u64::from(w)).sum();
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let end = tokio::time::Instant::now() + duration;

    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(duration.as_millis() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let ticker = {
        let (bar, completed, failed, done) = (bar.clone(), completed.clone(), failed.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let elapsed = started.elapsed();
                let n = completed.load(Ordering::Relaxed);
                bar.set_position(elapsed.as_millis() as u64);
                bar.set_message(format!(
                    "{n} ops, {:.0} ops/s, {} failed",
                    n as f64 / elapsed.as_secs_f64().max(1e-3),
                    failed.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let mut workers = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let client = client.clone();
        let mix = args.mix.clone();
        let (completed, failed) = (completed.clone(), failed.clone());
        let seed = (std::process::id() as u64) << 32 ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let accounts = args.accounts;
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(seed | 1);
            let mut stats: BTreeMap<OpKind, KindStats> = BTreeMap::new();
            while tokio::time::Instant::now() < end {
                let mut pick = rng.below(total_weight);
                let mut kind = mix.0[0].0;
                for &(k, w) in &mix.0 {
                    if pick < u64::from(w) {
                        kind = k;
                        break;
                    }
                    pick -= u64::from(w);
                }
                let a = first + rng.below(accounts);
                let amount = 1 + rng.below(100);
                let t0 = Instant::now();
                let result = match kind {
                    OpKind::Deposit => client.deposit(a, amount).await.map(drop),
                    OpKind::Withdraw => client.withdraw(a, amount).await.map(drop),
                    OpKind::Transfer => {
                        let b = first + (a - first + 1 + rng.below(accounts - 1)) % accounts;
                        client.transfer(a, b, amount).await.map(drop)
                    }
                    OpKind::Balance => client.balance(a).await.map(drop),
                    OpKind::Stale => client.balance_stale(a).await.map(drop),
                    OpKind::Statement => client.statement(a, 10).await.map(drop),
                };
                let micros = t0.elapsed().as_micros() as u64;
                let entry = match stats.entry(kind) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => v.insert(KindStats::new()?),
                };
                match result {
                    Ok(()) => entry.ok += 1,
                    Err(ClientError::Rejected(_)) => entry.rejected += 1,
                    Err(_) => {
                        entry.failed += 1;
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                entry.latency.saturating_record(micros.max(1));
                completed.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(stats)
        }));
    }
    let mut per_kind: BTreeMap<OpKind, KindStats> = BTreeMap::new();
    let mut total = KindStats::new()?;
    for w in workers {
        for (kind, s) in w.await.context("bench worker")?? {
            total.merge(&s);
            match per_kind.entry(kind) {
                std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge(&s),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(s);
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    bar.finish_and_clear();
    for c in &clients {
        c.close().await;
    }

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let row_json = |s: &KindStats| {
        json!({
            "ok": s.ok, "rejected": s.rejected, "failed": s.failed,
            "ops_per_sec": (s.ok + s.rejected) as f64 / elapsed,
            "latency_ms": {
                "p50": ms(&s.latency, 0.5), "p90": ms(&s.latency, 0.9), "p99": ms(&s.latency, 0.99),
                "p999": ms(&s.latency, 0.999), "max": s.latency.max() as f64 / 1000.0,
            },
        })
    };
    if json {
        let ops: serde_json::Map<String, Value> = per_kind
            .iter()
            .map(|(k, s)| (k.name().to_string(), row_json(s)))
            .collect();
        let mix: serde_json::Map<String, Value> = args
            .mix
            .0
            .iter()
            .map(|&(k, w)| (k.name().to_string(), json!(w)))
            .collect();
        print_json(&json!({
            "ok": total.ok + total.rejected > 0, "op": "bench", "clients": args.clients,
            "duration_s": elapsed, "accounts": args.accounts, "mix": mix, "ops": ops, "total": row_json(&total),
        }));
    } else {
        println!(
            "{} clients, {:.1} s, {} accounts",
            args.clients, elapsed, args.accounts
        );
        println!(
            "{:<10} {:>9} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "op", "ok", "rejected", "failed", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        let print_row = |name: &str, s: &KindStats| {
            println!(
                "{:<10} {:>9} {:>9} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                name,
                s.ok,
                s.rejected,
                s.failed,
                (s.ok + s.rejected) as f64 / elapsed,
                ms(&s.latency, 0.5),
                ms(&s.latency, 0.9),
                ms(&s.latency, 0.99),
                ms(&s.latency, 0.999),
                s.latency.max() as f64 / 1000.0
            );
        };
        for (k, s) in &per_kind {
            print_row(k.name(), s);
        }
        print_row("total", &total);
    }
    Ok(if total.ok + total.rejected > 0 {
        EXIT_OK
    } else {
        EXIT_FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_reject_nonsense() {
        let m = parse_mix("deposit=40, transfer=40,balance=20,withdraw=0").unwrap();
        assert_eq!(
            m.0,
            vec![
                (OpKind::Deposit, 40),
                (OpKind::Transfer, 40),
                (OpKind::Balance, 20)
            ]
        );
        assert!(parse_mix("deposit").is_err());
        assert!(parse_mix("steal=1").is_err());
        assert!(parse_mix("deposit=0").is_err());
        assert!(parse_mix("deposit=-1").is_err());
    }

    #[test]
    fn amounts_typed_by_users_are_checked() {
        assert_eq!(amount(0, true), Ok(0));
        assert_eq!(amount(0, false), Err(Rejection::InvalidAmount));
        assert_eq!(amount(-3, true), Err(Rejection::InvalidAmount));
        assert_eq!(amount(5, false), Ok(5));
        assert!(amount(i128::from(u64::MAX) + 1, false).is_err());
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "bank",
            "--cluster",
            "a:1,b:2",
            "--ca",
            "ca.pem",
            "withdraw",
            "7",
            "-5",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.cluster, vec!["a:1", "b:2"]);
        assert!(matches!(
            cli.command,
            Command::Withdraw {
                account: 7,
                amount: -5
            }
        ));
    }
}
