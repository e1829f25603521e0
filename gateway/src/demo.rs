//! `gateway demo`: a local three-node cluster under bank traffic, its leader killed
//! half-way, and a check that every acknowledged operation survived.
//!
//! The demo keeps its own model of the bank built from *acknowledged* operations only:
//! a deposit, withdrawal or transfer that returned `Ok` changes the model, a business
//! rejection (insufficient funds) does not, and a call that failed without a final
//! answer is kept aside as "unknown" (it may or may not have been applied). At the end,
//! every account's balance, read through the cluster, must equal the model, allowing
//! any subset of the unknown operations to have applied. The clients are given a
//! generous total timeout, so that unknowns are rare: the client library retries a write
//! with the same sequence number until it gets a final answer, which is authoritative.
//!
//! The cluster is owned by the main thread, which does every process operation, while
//! the workload runs on a tokio runtime. The children are spawned with a parent-death
//! signal tied to the main thread, and killed by the cluster's `Drop` on every way out
//! (success, error, panic, Ctrl-C), so the demo leaves no process behind.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bank_app::client::{Client, ClientConfig, ClientError};
use bank_app::protocol::Consistency;
use bank_app::{AccountId, Rejection};
use clap::Args;
use gateway::init::{CA_CERT_FILE, SUMMARY_FILE};
use gateway::status::{fetch_status, StatusReport};
use gateway::{ClusterError, LocalCluster, LocalClusterOptions};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use raft::core::NodeId;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Nodes in the demo cluster: the fewest that survive losing one.
const NODES: u64 = 3;
/// Where in the workload the leader is killed, as a fraction of `--seconds`.
const KILL_AT: f64 = 0.4;
/// The earliest point, as a fraction of `--seconds`, at which the killed node restarts.
const RESTART_AT: f64 = 0.6;
/// Time for the nodes to start and elect a first leader.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for a new leader to appear and for writes to resume after the kill.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for the restarted node, and later every node, to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one blocking wait on the cluster may run before Ctrl-C is looked at again.
const WAIT_SLICE: Duration = Duration::from_millis(500);
/// How often `/status` is polled while failover or catch-up is measured.
const MEASURE_POLL: Duration = Duration::from_millis(10);
/// Timeout of one `/status` request while measuring.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// One attempt of a client call. Short, so that a client whose leader died moves on
/// quickly; an attempt that times out is retried with the same sequence number.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// One client call, retries included. Generous, so that a write across the failover
/// ends with a final answer rather than an unknown outcome.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most unknown outcomes for which every subset is tried against the balances; beyond
/// this the check falls back to per-account bounds.
const MAX_EXACT_UNKNOWNS: usize = 16;

/// Options of `gateway demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Keep the cluster (certificates, configs, logs, data) in DIR instead of a temporary
    /// directory that is removed at exit. DIR must not hold a cluster yet.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Concurrent bank clients, each with its own exactly-once session.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub clients: u64,
    /// Accounts opened before the workload.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=10_000))]
    pub accounts: u64,
    /// Length of the workload in seconds. The leader is killed 40% of the way in.
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Opening balance of every account, in minor units. Operations move amounts of up
    /// to this much, so some withdrawals and transfers are refused for lack of funds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub initial: u64,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && (1.0..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be a number of seconds between 1 and 3600".into())
    }
}

/// The demo was stopped by SIGINT or SIGTERM (the binary exits with status 130).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Runs the demo. `Ok(true)` is a pass, `Ok(false)` a failed check (already reported on
/// stdout); errors are failures to run it at all, or [`Interrupted`].
pub fn run(args: DemoArgs) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("demo")
        .build()
        .context("cannot start the tokio runtime")?;
    let console = Arc::new(Console::new(std::io::stdout().is_terminal()));
    let interrupted = CancellationToken::new();
    {
        // Installed before any child exists, so that Ctrl-C is never fatal by default.
        let _rt = runtime.enter();
        let sigint = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        let sigterm = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        runtime.spawn(watch_signals(sigint, sigterm, interrupted.clone()));
    }
    let result = Demo::new(&args, &runtime, console.clone(), interrupted.clone()).and_then(|d| d.run());
    console.finish_bar();
    // Workers still inside a call (after an error or Ctrl-C) are dropped here.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Err(e) if interrupted.is_cancelled() => {
            // Whatever failed, the cause was the interruption.
            drop(e);
            Err(Interrupted.into())
        }
        other => other,
    }
}

/// Waits for SIGINT or SIGTERM and cancels the demo; a second signal exits at once (the
/// children still die: they get SIGKILL when the main thread goes).
async fn watch_signals(
    mut sigint: tokio::signal::unix::Signal,
    mut sigterm: tokio::signal::unix::Signal,
    interrupted: CancellationToken,
) {
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    eprintln!("interrupted: stopping the cluster (press Ctrl-C again to exit at once)");
    interrupted.cancel();
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    eprintln!("interrupted twice: exiting now; the cluster directory may be left behind");
    std::process::exit(130);
}

/// Where the demo writes: above the progress bar while there is one, else plain lines.
struct Console {
    tty: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Console {
    fn new(tty: bool) -> Self {
        Console {
            tty,
            bar: Mutex::new(None),
        }
    }

    fn line(&self, text: impl AsRef<str>) {
        let bar = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        match bar.as_ref() {
            Some(bar) => bar.println(text),
            None => println!("{}", text.as_ref()),
        }
    }

    /// A progress bar on stdout when it is a terminal; `None` otherwise (the workload
    /// then prints a plain progress line every few seconds).
    fn start_bar(&self, planned: Duration) -> Option<ProgressBar> {
        if !self.tty {
            return None;
        }
        let bar = ProgressBar::with_draw_target(
            Some(planned.as_millis() as u64),
            ProgressDrawTarget::stdout_with_hz(10),
        );
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:24}] {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        Some(bar)
    }

    fn finish_bar(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

/// A small, fast, seedable generator (xorshift64*): the workload's choices need no
/// more than that.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 spreads nearby seeds apart and never yields the zero state.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0), up to a negligible bias.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// The kinds of write the workload sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Deposit,
    Withdraw,
    Transfer,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Deposit, Kind::Withdraw, Kind::Transfer];

    fn name(self) -> &'static str {
        match self {
            Kind::Deposit => "deposit",
            Kind::Withdraw => "withdraw",
            Kind::Transfer => "transfer",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One write of the workload.
#[derive(Clone, Copy, Debug)]
enum Op {
    Deposit {
        account: AccountId,
        amount: u64,
    },
    Withdraw {
        account: AccountId,
        amount: u64,
    },
    Transfer {
        from: AccountId,
        to: AccountId,
        amount: u64,
    },
}

impl Op {
    /// A random write: 25% deposits, 25% withdrawals, 50% transfers, amounts up to
    /// `max_amount` (so that some debits find too little money).
    fn random(rng: &mut Rng, accounts: u64, max_amount: u64) -> Op {
        let amount = 1 + rng.below(max_amount);
        let account = 1 + rng.below(accounts);
        match rng.below(4) {
            0 => Op::Deposit { account, amount },
            1 => Op::Withdraw { account, amount },
            _ => {
                // A different account, uniformly among the others.
                let to = 1 + (account + rng.below(accounts - 1)) % accounts;
                Op::Transfer {
                    from: account,
                    to,
                    amount,
                }
            }
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Op::Deposit { .. } => Kind::Deposit,
            Op::Withdraw { .. } => Kind::Withdraw,
            Op::Transfer { .. } => Kind::Transfer,
        }
    }

    /// How the operation changes balances, if applied.
    fn deltas(&self) -> Vec<(AccountId, i128)> {
        match *self {
            Op::Deposit { account, amount } => vec![(account, i128::from(amount))],
            Op::Withdraw { account, amount } => vec![(account, -i128::from(amount))],
            Op::Transfer { from, to, amount } => {
                vec![(from, -i128::from(amount)), (to, i128::from(amount))]
            }
        }
    }

    /// How the operation changes the bank's total, if applied.
    fn total_delta(&self) -> i128 {
        self.deltas().iter().map(|(_, d)| d).sum()
    }

    async fn send(&self, client: &Client) -> Result<(), ClientError> {
        match *self {
            Op::Deposit { account, amount } => client.deposit(account, amount).await.map(drop),
            Op::Withdraw { account, amount } => client.withdraw(account, amount).await.map(drop),
            Op::Transfer { from, to, amount } => client.transfer(from, to, amount).await.map(drop),
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Deposit { account, amount } => write!(f, "deposit {amount} to {account}"),
            Op::Withdraw { account, amount } => write!(f, "withdraw {amount} from {account}"),
            Op::Transfer { from, to, amount } => write!(f, "transfer {amount} from {from} to {to}"),
        }
    }
}

/// What every worker and the main thread see while the workload runs.
struct Shared {
    ok: AtomicU64,
    rejected: AtomicU64,
    unknown: AtomicU64,
    /// Set by the main thread when the workload should end.
    stop: CancellationToken,
    /// When the leader was killed.
    killed_at: OnceLock<Instant>,
    /// When a write sent after the kill was first acknowledged.
    resumed_at: OnceLock<Instant>,
    /// The leader as last seen by the main thread (0: none).
    leader: AtomicU64,
}

impl Shared {
    fn completed(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.rejected.load(Ordering::Relaxed)
    }
}

/// Counts and latencies of one kind of write.
struct KindStats {
    ok: u64,
    rejected: u64,
    unknown: u64,
    /// Microseconds per call, retries included.
    latency: Histogram<u64>,
}

impl KindStats {
    fn new() -> anyhow::Result<KindStats> {
        Ok(KindStats {
            ok: 0,
            rejected: 0,
            unknown: 0,
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).context("latency histogram")?,
        })
    }

    fn merge(&mut self, other: &KindStats) -> anyhow::Result<()> {
        self.ok += other.ok;
        self.rejected += other.rejected;
        self.unknown += other.unknown;
        self.latency
            .add(&other.latency)
            .context("merging latency histograms")
    }
}

/// What a worker did, and how it changes the model.
struct WorkerReport {
    stats: Vec<KindStats>,
    /// Balance change per account (index `account - 1`) from acknowledged writes.
    deltas: Vec<i128>,
    deposited: u128,
    withdrawn: u128,
    /// Writes whose outcome is unknown.
    unknown: Vec<Op>,
    /// Failures worth showing (unknown outcomes and unexpected rejections), first few.
    errors: Vec<String>,
    /// Rejections other than insufficient funds: none are expected.
    unexpected_rejections: u64,
}

impl WorkerReport {
    fn new(accounts: u64) -> anyhow::Result<WorkerReport> {
        Ok(WorkerReport {
            stats: Kind::ALL
                .iter()
                .map(|_| KindStats::new())
                .collect::<anyhow::Result<_>>()?,
            deltas: vec![0; accounts as usize],
            deposited: 0,
            withdrawn: 0,
            unknown: Vec::new(),
            errors: Vec::new(),
            unexpected_rejections: 0,
        })
    }

    fn note_error(&mut self, text: String) {
        if self.errors.len() < 5 {
            self.errors.push(text);
        }
    }

    fn record(&mut self, op: Op, result: Result<(), ClientError>, latency: Duration, shared: &Shared) {
        let stats = &mut self.stats[op.kind().index()];
        stats
            .latency
            .saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1));
        match result {
            Ok(()) => {
                stats.ok += 1;
                shared.ok.fetch_add(1, Ordering::Relaxed);
                for (account, delta) in op.deltas() {
                    self.deltas[(account - 1) as usize] += delta;
                }
                match op {
                    Op::Deposit { amount, .. } => self.deposited += u128::from(amount),
                    Op::Withdraw { amount, .. } => self.withdrawn += u128::from(amount),
                    Op::Transfer { .. } => {}
                }
            }
            Err(ClientError::Rejected(Rejection::InsufficientFunds { .. })) => {
                stats.rejected += 1;
                shared.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Err(e @ ClientError::Rejected(_)) => {
                // Refused, so not applied; but a fresh bank has no reason to refuse
                // these, so the run fails.
                stats.rejected += 1;
                shared.rejected.fetch_add(1, Ordering::Relaxed);
                self.unexpected_rejections += 1;
                self.note_error(format!("{op}: {e}"));
            }
            Err(e) => {
                // The outcome is unknown: the call gave up without a final answer (or
                // failed in a way that does not say whether it applied).
                stats.unknown += 1;
                shared.unknown.fetch_add(1, Ordering::Relaxed);
                self.unknown.push(op);
                self.note_error(format!("{op}: {e}"));
            }
        }
    }
}

/// One client's loop: random writes, one at a time, until told to stop. A call in
/// flight is always finished, never dropped, so that its outcome is known.
async fn worker(
    client: Client,
    seed: u64,
    accounts: u64,
    max_amount: u64,
    shared: Arc<Shared>,
    mut report: WorkerReport,
) -> WorkerReport {
    let mut rng = Rng::new(seed);
    while !shared.stop.is_cancelled() {
        let op = Op::random(&mut rng, accounts, max_amount);
        let started = Instant::now();
        let result = op.send(&client).await;
        let latency = started.elapsed();
        if result.is_ok() {
            if let Some(&killed) = shared.killed_at.get() {
                // Only a write *sent* after the kill proves that the new leader serves.
                if started > killed {
                    let _ = shared.resumed_at.set(Instant::now());
                }
            }
        }
        report.record(op, result, latency, &shared);
    }
    client.close().await;
    report
}

/// Shows the workload's progress: a bar on a terminal, a line every 2 s otherwise.
async fn show_progress(bar: Option<ProgressBar>, shared: Arc<Shared>, started: Instant, planned: Duration) {
    let period = if bar.is_some() {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(2)
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // Ops/s over the last second or so, from (time, completed) samples.
    let mut window: VecDeque<(Instant, u64)> = VecDeque::new();
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        let done = shared.completed();
        window.push_back((now, done));
        while window.len() > 2 && now.duration_since(window[1].0) >= Duration::from_secs(1) {
            window.pop_front();
        }
        let rate = match window.front() {
            Some(&(t, n)) if now > t => (done - n) as f64 / now.duration_since(t).as_secs_f64(),
            _ => done as f64 / started.elapsed().as_secs_f64().max(0.001),
        };
        let leader = match shared.leader.load(Ordering::Relaxed) {
            0 => "none".to_owned(),
            id => format!("node {id}"),
        };
        let msg = format!(
            "{} ok, {} rejected, {} unknown, {:.0} ops/s, leader {}",
            shared.ok.load(Ordering::Relaxed),
            shared.rejected.load(Ordering::Relaxed),
            shared.unknown.load(Ordering::Relaxed),
            rate,
            leader
        );
        match &bar {
            Some(bar) => {
                bar.set_position((started.elapsed().min(planned)).as_millis() as u64);
                bar.set_message(msg);
            }
            None => println!("  [{:>5.1}s] {msg}", started.elapsed().as_secs_f64()),
        }
    }
}

/// How failover went.
struct Failover {
    killed: NodeId,
    new_leader: NodeId,
    leader_after: Duration,
    writes_after: Duration,
}

/// How the restarted node caught up.
struct CatchUp {
    node: NodeId,
    index: u64,
    after: Duration,
}

/// The outcome of comparing a set of balances with the model.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Equal to the model of acknowledged operations.
    Exact,
    /// Equal to the model plus `applied` of the `of` operations with unknown outcome.
    Explained {
        applied: usize,
        of: usize,
        total_delta: i128,
    },
    /// Too many unknowns to try every subset: each balance is within what they allow.
    WithinBounds,
    /// Not explainable by any outcome of the unknown operations.
    Mismatch(String),
}

/// Compares balances (index `account - 1`) with the model `expected`, allowing any
/// subset of `unknown` to have applied.
fn judge(actual: &[u64], expected: &[i128], unknown: &[Op]) -> Verdict {
    let diff: Vec<i128> = actual
        .iter()
        .zip(expected)
        .map(|(&a, &e)| i128::from(a) - e)
        .collect();
    if diff.iter().all(|&d| d == 0) {
        return Verdict::Exact;
    }
    let mismatch = || {
        let shown: Vec<String> = actual
            .iter()
            .zip(expected)
            .enumerate()
            .filter(|(_, (&a, &e))| i128::from(a) != e)
            .take(5)
            .map(|(i, (a, e))| format!("account {} reads {a}, expected {e}", i + 1))
            .collect();
        let more = diff
            .iter()
            .filter(|&&d| d != 0)
            .count()
            .saturating_sub(shown.len());
        let mut text = shown.join("; ");
        if more > 0 {
            text.push_str(&format!("; and {more} more"));
        }
        if !unknown.is_empty() {
            text.push_str(&format!(
                " (no outcome of the {} unknown operations explains it)",
                unknown.len()
            ));
        }
        Verdict::Mismatch(text)
    };
    let slot = |account: AccountId| (account as usize).checked_sub(1).filter(|&i| i < diff.len());
    if unknown.len() <= MAX_EXACT_UNKNOWNS {
        let effects: Vec<Vec<(usize, i128)>> = unknown
            .iter()
            .map(|op| {
                op.deltas()
                    .into_iter()
                    .filter_map(|(a, d)| slot(a).map(|i| (i, d)))
                    .collect()
            })
            .collect();
        let mut sum = vec![0i128; diff.len()];
        for mask in 1u32..(1u32 << unknown.len()) {
            sum.iter_mut().for_each(|s| *s = 0);
            for (bit, effect) in effects.iter().enumerate() {
                if mask & (1 << bit) != 0 {
                    for &(i, d) in effect {
                        sum[i] += d;
                    }
                }
            }
            if sum == diff {
                let total_delta = unknown
                    .iter()
                    .enumerate()
                    .filter(|(bit, _)| mask & (1 << bit) != 0)
                    .map(|(_, op)| op.total_delta())
                    .sum();
                return Verdict::Explained {
                    applied: mask.count_ones() as usize,
                    of: unknown.len(),
                    total_delta,
                };
            }
        }
        return mismatch();
    }
    let mut low = vec![0i128; diff.len()];
    let mut high = vec![0i128; diff.len()];
    for op in unknown {
        for (account, d) in op.deltas() {
            if let Some(i) = slot(account) {
                if d < 0 {
                    low[i] += d;
                } else {
                    high[i] += d;
                }
            }
        }
    }
    if diff.iter().enumerate().all(|(i, &d)| low[i] <= d && d <= high[i]) {
        Verdict::WithinBounds
    } else {
        mismatch()
    }
}

/// The running demo: the cluster, its clients and what has been measured.
struct Demo<'a> {
    args: &'a DemoArgs,
    runtime: &'a tokio::runtime::Runtime,
    console: Arc<Console>,
    interrupted: CancellationToken,
    /// Dropped after the cluster (fields drop in declaration order).
    cluster: LocalCluster,
    tempdir: Option<tempfile::TempDir>,
    ca_pem: String,
}

impl<'a> Demo<'a> {
    fn new(
        args: &'a DemoArgs,
        runtime: &'a tokio::runtime::Runtime,
        console: Arc<Console>,
        interrupted: CancellationToken,
    ) -> anyhow::Result<Demo<'a>> {
        let (tempdir, root) = match &args.dir {
            Some(dir) => {
                if dir.join(SUMMARY_FILE).exists() || dir.join(CA_CERT_FILE).exists() {
                    bail!(
                        "{} already holds a cluster; give --dir a new directory (or remove that one)",
                        dir.display()
                    );
                }
                (None, dir.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("gateway-demo-")
                    .tempdir()
                    .context("cannot create a temporary directory")?;
                let root = t.path().to_path_buf();
                (Some(t), root)
            }
        };
        console.line(format!(
            "cluster directory: {} ({})",
            root.display(),
            if tempdir.is_some() {
                "removed at exit; --dir DIR keeps it"
            } else {
                "kept"
            }
        ));
        let opts = LocalClusterOptions {
            nodes: NODES,
            cluster_id: Some("demo".to_owned()),
            // Every process operation happens on this (the main) thread, so the
            // children may be tied to it: they die even if the demo is killed outright.
            die_with_parent: true,
            ..Default::default()
        };
        let cluster = LocalCluster::start(&root, opts)
            .with_context(|| format!("cannot start a cluster in {}", root.display()))?;
        let ca_path = cluster.ca_path();
        let ca_pem = std::fs::read_to_string(&ca_path)
            .with_context(|| format!("cannot read the cluster CA {}", ca_path.display()))?;
        Ok(Demo {
            args,
            runtime,
            console,
            interrupted,
            cluster,
            tempdir,
            ca_pem,
        })
    }

    fn check_interrupted(&self) -> anyhow::Result<()> {
        if self.interrupted.is_cancelled() {
            bail!(Interrupted);
        }
        Ok(())
    }

    /// Sleeps until `until`, returning early with [`Interrupted`] on Ctrl-C.
    fn sleep_until(&self, until: Instant) -> anyhow::Result<()> {
        loop {
            self.check_interrupted()?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep((until - now).min(Duration::from_millis(20)));
        }
    }

    /// Runs `fut` on the runtime, giving up with [`Interrupted`] on Ctrl-C.
    fn block_on<F: Future>(&self, fut: F) -> anyhow::Result<F::Output> {
        let interrupted = self.interrupted.clone();
        self.runtime.block_on(async move {
            tokio::select! {
                _ = interrupted.cancelled() => Err(Interrupted.into()),
                out = fut => Ok(out),
            }
        })
    }

    /// Repeats a blocking cluster wait in short slices until `total` has passed, so
    /// that Ctrl-C is noticed.
    fn wait<T>(
        &mut self,
        total: Duration,
        mut f: impl FnMut(&mut LocalCluster, Duration) -> Result<T, ClusterError>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + total;
        loop {
            self.check_interrupted()?;
            match f(&mut self.cluster, WAIT_SLICE) {
                Err(ClusterError::Timeout { .. }) if Instant::now() < deadline => {}
                other => return Ok(other?),
            }
        }
    }

    fn client_config(&self, nodes: Vec<SocketAddr>) -> ClientConfig {
        let mut cfg = ClientConfig::new(nodes, self.ca_pem.clone());
        cfg.request_timeout = REQUEST_TIMEOUT;
        cfg.connect_timeout = REQUEST_TIMEOUT;
        cfg.total_timeout = TOTAL_TIMEOUT;
        cfg.backoff_max = Duration::from_millis(200);
        cfg
    }

    fn statuses(&self, ids: &[NodeId]) -> Vec<Result<StatusReport, String>> {
        ids.iter()
            .map(|&id| {
                let addr = self.cluster.admin_addr(id).map_err(|e| e.to_string())?;
                fetch_status(addr, STATUS_TIMEOUT).map_err(|e| e.to_string())
            })
            .collect()
    }

    fn run(mut self) -> anyhow::Result<bool> {
        let args = self.args;
        let started = Instant::now();
        self.console.line(format!(
            "starting {NODES} gateway nodes on 127.0.0.1 (logs: {}/node-<id>/gateway.log)",
            self.cluster.dir().display()
        ));
        self.wait(STARTUP_TIMEOUT, |c, slice| c.wait_all_ready(slice))?;
        let leader = self.wait(STARTUP_TIMEOUT, |c, slice| c.wait_leader(slice))?;
        self.print_cluster(leader, started.elapsed())?;

        // The clients: one session each, so their writes run in parallel.
        let nodes: Vec<SocketAddr> = self.cluster.client_addrs().into_values().collect();
        let cfg = self.client_config(nodes.clone());
        let clients = self.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..args.clients {
                set.spawn(Client::connect(cfg.clone()));
            }
            let mut clients = Vec::new();
            while let Some(joined) = set.join_next().await {
                clients.push(
                    joined
                        .context("a client task failed")?
                        .context("cannot connect a client")?,
                );
            }
            anyhow::Ok(clients)
        })??;

        // The accounts, opened in parallel over the clients.
        let opened = self.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for account in 1..=args.accounts {
                let client = clients[(account % args.clients) as usize].clone();
                let initial = args.initial;
                set.spawn(async move { (account, client.open_account(account, initial).await) });
            }
            let mut failures = Vec::new();
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok((_, Ok(balance))) if balance == args.initial => {}
                    Ok((account, Ok(balance))) => {
                        failures.push(format!("account {account} opened with balance {balance}"))
                    }
                    Ok((account, Err(e))) => failures.push(format!("account {account}: {e}")),
                    Err(e) => failures.push(format!("a task failed: {e}")),
                }
            }
            failures
        })?;
        if let Some(first) = opened.first() {
            bail!("cannot open the accounts: {first}");
        }
        let total_initial = u128::from(args.initial) * u128::from(args.accounts);
        self.console.line(format!(
            "opened {} accounts with {} each (total {total_initial})",
            args.accounts, args.initial
        ));

        let planned = Duration::from_secs_f64(args.seconds);
        self.console.line(format!(
            "workload: {} clients send random deposits, withdrawals and transfers for {:.1} s; \
             the leader is killed at {:.1} s",
            args.clients,
            args.seconds,
            args.seconds * KILL_AT
        ));
        let shared = Arc::new(Shared {
            ok: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            stop: CancellationToken::new(),
            killed_at: OnceLock::new(),
            resumed_at: OnceLock::new(),
            leader: AtomicU64::new(leader),
        });
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        let mut workers = Vec::new();
        for (i, client) in clients.into_iter().enumerate() {
            let report = WorkerReport::new(args.accounts)?;
            workers.push(self.runtime.spawn(worker(
                client,
                seed.wrapping_add(i as u64),
                args.accounts,
                args.initial,
                shared.clone(),
                report,
            )));
        }
        let load_started = Instant::now();
        let bar = self.console.start_bar(planned);
        let progress = self
            .runtime
            .spawn(show_progress(bar, shared.clone(), load_started, planned));
        // Whatever happens from here on, the workers are told to stop.
        let stop_guard = shared.stop.clone().drop_guard();

        let (failover, catch_up) = self.disrupt(&shared, load_started, planned)?;
        self.sleep_until(load_started + planned)?;
        drop(stop_guard);
        let elapsed = load_started.elapsed();
        // The last progress line comes before what follows.
        let _ = self.block_on(progress)?;
        self.console.finish_bar();
        self.console.line(format!(
            "[{:>5.1}s] workload done; waiting for calls in flight",
            elapsed.as_secs_f64()
        ));
        let reports = self.block_on(async {
            let mut reports = Vec::new();
            for w in workers {
                reports.push(w.await.context("a workload task failed")?);
            }
            anyhow::Ok(reports)
        })??;
        let load = Load::merge(reports, args.accounts, args.initial)?;

        let checks = self.final_check(&load, total_initial)?;
        self.summary(&load, elapsed, &failover, &catch_up, &checks);
        if self.tempdir.is_none() {
            println!(
                "the nodes stop when the demo exits; {} keeps their configs, logs and data",
                self.cluster.dir().display()
            );
        }
        let pass = checks.iter().all(|c| c.ok) && load.unexpected_rejections == 0;
        println!("{}", if pass { "PASS" } else { "FAIL" });
        Ok(pass)
    }

    fn print_cluster(&self, leader: NodeId, after: Duration) -> anyhow::Result<()> {
        let ids = self.cluster.node_ids();
        let statuses = self.statuses(&ids);
        let term = statuses
            .iter()
            .flatten()
            .find(|s| s.node_id == leader)
            .map_or_else(|| "?".to_owned(), |s| s.term.to_string());
        self.console.line(format!(
            "leader elected: node {leader} (term {term}) after {} ms",
            after.as_millis()
        ));
        self.console.line(format!(
            "  {:>4}  {:<9}  {:<21}  {:<21}  {}",
            "node", "role", "client (udp)", "raft (udp)", "admin (tcp)"
        ));
        for (&id, status) in ids.iter().zip(&statuses) {
            let role = match status {
                Ok(s) => s.role.clone(),
                Err(_) => "unknown".to_owned(),
            };
            self.console.line(format!(
                "  {:>4}  {:<9}  {:<21}  {:<21}  {}",
                id,
                role,
                self.cluster.client_addr(id)?,
                self.cluster.raft_addr(id)?,
                self.cluster.admin_addr(id)?
            ));
        }
        Ok(())
    }

    /// Kills the leader, measures the failover, restarts the node and waits for it to
    /// catch up, all while the workload runs.
    fn disrupt(
        &mut self,
        shared: &Shared,
        load_started: Instant,
        planned: Duration,
    ) -> anyhow::Result<(Failover, CatchUp)> {
        let at = |t: Instant| format!("[{:>5.1}s]", t.duration_since(load_started).as_secs_f64());
        self.sleep_until(load_started + planned.mul_f64(KILL_AT))?;
        let killed = self.wait(FAILOVER_TIMEOUT, |c, slice| c.wait_leader(slice))?;
        self.console.line(format!(
            "{} killing the leader, node {killed}, with SIGKILL",
            at(Instant::now())
        ));
        let t0 = Instant::now();
        shared.leader.store(0, Ordering::Relaxed);
        self.cluster.kill(killed)?;
        // Marked once the process is reaped: a write sent after this cannot have been
        // served by the old leader.
        let _ = shared.killed_at.set(Instant::now());

        // A new leader counts once every survivor's /status names it (and it says it
        // leads); writes count once a write sent after the kill is acknowledged.
        let survivors: Vec<NodeId> = self.cluster.running();
        let mut leader_seen: Option<(NodeId, Duration)> = None;
        let mut last = String::from("no status yet");
        let (new_leader, leader_after, writes_after) = loop {
            self.check_interrupted()?;
            if leader_seen.is_none() {
                let statuses = self.statuses(&survivors);
                let views: Vec<Option<(NodeId, Option<NodeId>, bool)>> = statuses
                    .iter()
                    .map(|s| s.as_ref().ok().map(|s| (s.node_id, s.leader_id(), s.is_leader())))
                    .collect();
                last = format!("{views:?}");
                if let Some(Some((_, Some(l), _))) = views.first() {
                    let agreed = *l != killed
                        && views.iter().all(|v| matches!(v, Some((_, Some(x), _)) if x == l))
                        && views.iter().any(|v| matches!(v, Some((id, _, true)) if id == l));
                    if agreed {
                        leader_seen = Some((*l, t0.elapsed()));
                        shared.leader.store(*l, Ordering::Relaxed);
                    }
                }
            }
            if let (Some((l, after)), Some(&resumed)) = (leader_seen, shared.resumed_at.get()) {
                break (l, after, resumed.duration_since(t0));
            }
            if t0.elapsed() > FAILOVER_TIMEOUT {
                bail!(
                    "no failover within {FAILOVER_TIMEOUT:?} of killing node {killed}: new leader {}, \
                     writes {}; last /status views (node, leader, leads): {last}",
                    leader_seen.map_or("not seen".to_owned(), |(l, _)| format!("node {l}")),
                    if shared.resumed_at.get().is_some() {
                        "resumed"
                    } else {
                        "not resumed"
                    },
                );
            }
            std::thread::sleep(MEASURE_POLL);
        };
        self.console.line(format!(
            "{} new leader: node {new_leader} after {} ms; writes resumed after {} ms",
            at(Instant::now()),
            leader_after.as_millis(),
            writes_after.as_millis()
        ));
        let failover = Failover {
            killed,
            new_leader,
            leader_after,
            writes_after,
        };

        self.sleep_until(load_started + planned.mul_f64(RESTART_AT))?;
        let target = self
            .statuses(&[new_leader])
            .into_iter()
            .next()
            .and_then(Result::ok)
            .filter(StatusReport::is_leader);
        self.cluster.restart(killed)?;
        let t1 = Instant::now();
        let target = match target {
            Some(s) => s.commit_index,
            None => {
                // Leadership moved again: take whoever leads now.
                let leader = self.wait(FAILOVER_TIMEOUT, |c, slice| c.wait_leader(slice))?;
                shared.leader.store(leader, Ordering::Relaxed);
                self.cluster.status(leader)?.commit_index
            }
        };
        self.console.line(format!(
            "{} restarted node {killed}; waiting for it to apply index {target} (the leader's commit index)",
            at(t1)
        ));
        let addr = self.cluster.admin_addr(killed)?;
        loop {
            self.check_interrupted()?;
            if let Some(status) = self.cluster.try_exit_status(killed)? {
                bail!(
                    "node {killed} exited after its restart ({status}); last lines of its log:\n{}",
                    self.cluster.log_tail(killed, 20)
                );
            }
            let last = match fetch_status(addr, STATUS_TIMEOUT) {
                Ok(s) if s.applied_index >= target => break,
                Ok(s) => format!("applied index {}", s.applied_index),
                Err(e) => e.to_string(),
            };
            if t1.elapsed() > CATCH_UP_TIMEOUT {
                bail!(
                    "node {killed} did not reach applied index {target} within {CATCH_UP_TIMEOUT:?}: {last}"
                );
            }
            std::thread::sleep(MEASURE_POLL);
        }
        let catch_up = CatchUp {
            node: killed,
            index: target,
            after: t1.elapsed(),
        };
        self.console.line(format!(
            "{} node {killed} caught up: applied index {target} after {} ms",
            at(Instant::now()),
            catch_up.after.as_millis()
        ));
        Ok((failover, catch_up))
    }

    /// Waits until every node has applied everything the leader holds, then reads
    /// every balance linearizably through the client and stale from each node, and
    /// compares them with the model.
    fn final_check(&mut self, load: &Load, total_initial: u128) -> anyhow::Result<Vec<Check>> {
        let ids = self.cluster.node_ids();
        let leader = self.wait(FAILOVER_TIMEOUT, |c, slice| c.wait_leader(slice))?;
        // Quiesce: once every node has applied the leader's last log index, no write of
        // the workload is pending anywhere, so every read below sees one state.
        let t = Instant::now();
        let mut last = String::new();
        let settled = loop {
            self.check_interrupted()?;
            let statuses = self.statuses(&ids);
            let ok: Vec<&StatusReport> = statuses.iter().flatten().collect();
            if let Some(l) = ok.iter().find(|s| s.is_leader()) {
                let target = l.last_index;
                if ok.len() == ids.len() && ok.iter().all(|s| s.applied_index >= target) {
                    break target;
                }
                last = ok
                    .iter()
                    .map(|s| format!("node {} applied {}", s.node_id, s.applied_index))
                    .collect::<Vec<_>>()
                    .join(", ");
                last.push_str(&format!(" (leader's last index {target})"));
            }
            if t.elapsed() > CATCH_UP_TIMEOUT {
                bail!("the nodes did not converge within {CATCH_UP_TIMEOUT:?}: {last}");
            }
            std::thread::sleep(MEASURE_POLL);
        };
        self.console.line(format!(
            "every node has applied index {settled}; reading {} balances (linearizable through the \
             client, then stale from each node)",
            self.args.accounts
        ));

        let accounts = self.args.accounts;
        let all: Vec<SocketAddr> = self.cluster.client_addrs().into_values().collect();
        let cfg = self.client_config(all);
        let linearizable = self.block_on(read_all(cfg, accounts, Consistency::Linearizable))??;
        let mut checks = Vec::new();
        let verdict = judge(&linearizable.balances, &load.expected, &load.unknown);
        checks.push(Check::from_verdict(
            format!("balances (linearizable, leader node {leader})"),
            &verdict,
            accounts,
        ));

        let read_total: u128 = linearizable.balances.iter().map(|&b| u128::from(b)).sum();
        let unknown_total = match &verdict {
            Verdict::Explained { total_delta, .. } => *total_delta,
            _ => 0,
        };
        let expected_total =
            total_initial as i128 + load.deposited as i128 - load.withdrawn as i128 + unknown_total;
        let total_ok = match verdict {
            Verdict::WithinBounds => true,
            _ => read_total as i128 == expected_total,
        };
        checks.push(Check {
            what: "total".to_owned(),
            ok: total_ok,
            detail: format!(
                "{read_total} read; expected {total_initial} opened + {} deposited - {} withdrawn{}",
                load.deposited,
                load.withdrawn,
                if unknown_total != 0 {
                    format!(" {unknown_total:+} from operations with unknown outcome")
                } else {
                    String::new()
                }
            ),
        });

        for id in ids {
            let cfg = self.client_config(vec![self.cluster.client_addr(id)?]);
            let what = format!("stale reads from node {id}");
            let check = match self.block_on(read_all(cfg, accounts, Consistency::Stale))? {
                Err(e) => Check {
                    what,
                    ok: false,
                    detail: format!("{e:#}"),
                },
                Ok(r) if r.min_applied < settled => Check {
                    what,
                    ok: false,
                    detail: format!("served at applied index {} < {settled}", r.min_applied),
                },
                Ok(r) if r.balances == linearizable.balances => Check {
                    what,
                    ok: true,
                    detail: format!("{accounts} balances equal the linearizable ones"),
                },
                Ok(r) => {
                    let differ: Vec<String> = r
                        .balances
                        .iter()
                        .zip(&linearizable.balances)
                        .enumerate()
                        .filter(|(_, (a, b))| a != b)
                        .take(5)
                        .map(|(i, (a, b))| format!("account {} reads {a}, linearizable {b}", i + 1))
                        .collect();
                    Check {
                        what,
                        ok: false,
                        detail: differ.join("; "),
                    }
                }
            };
            checks.push(check);
        }
        Ok(checks)
    }

    fn summary(
        &self,
        load: &Load,
        elapsed: Duration,
        failover: &Failover,
        catch_up: &CatchUp,
        checks: &[Check],
    ) {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!();
        println!("summary");
        println!(
            "  {:<9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9}",
            "write", "ok", "rejected", "unknown", "p50 ms", "p99 ms", "max ms"
        );
        let rows = Kind::ALL
            .iter()
            .map(|k| (k.name(), &load.stats[k.index()]))
            .chain([("all", &load.all)]);
        for (name, s) in rows {
            println!(
                "  {:<9} {:>9} {:>9} {:>8} {:>9.1} {:>9.1} {:>9.1}",
                name,
                s.ok,
                s.rejected,
                s.unknown,
                ms(&s.latency, 0.5),
                ms(&s.latency, 0.99),
                s.latency.max() as f64 / 1000.0
            );
        }
        let answered = load.all.ok + load.all.rejected;
        let secs = elapsed.as_secs_f64().max(0.001);
        println!(
            "  throughput  {:.0} ops/s ({answered} answered in {secs:.1} s by {} clients; \
             rejected = insufficient funds)",
            answered as f64 / secs,
            self.args.clients
        );
        println!(
            "  failover    node {} killed; new leader node {} after {} ms; writes resumed after {} ms",
            failover.killed,
            failover.new_leader,
            failover.leader_after.as_millis(),
            failover.writes_after.as_millis()
        );
        println!(
            "  catch-up    node {} restarted and applied index {} after {} ms",
            catch_up.node,
            catch_up.index,
            catch_up.after.as_millis()
        );
        for e in &load.errors {
            println!("  error       {e}");
        }
        if load.unexpected_rejections > 0 {
            println!(
                "  FAILED      {} unexpected rejections (only insufficient funds is expected)",
                load.unexpected_rejections
            );
        }
        for c in checks {
            println!(
                "  {:<6} {}: {}",
                if c.ok { "ok" } else { "FAILED" },
                c.what,
                c.detail
            );
        }
    }
}

/// The merged reports of every worker: the model of acknowledged operations.
struct Load {
    stats: Vec<KindStats>,
    /// Every kind together.
    all: KindStats,
    /// Expected balance per account (index `account - 1`): the opening balance plus
    /// every acknowledged change.
    expected: Vec<i128>,
    deposited: u128,
    withdrawn: u128,
    unknown: Vec<Op>,
    errors: Vec<String>,
    unexpected_rejections: u64,
}

impl Load {
    fn merge(reports: Vec<WorkerReport>, accounts: u64, initial: u64) -> anyhow::Result<Load> {
        let mut load = Load {
            stats: Kind::ALL
                .iter()
                .map(|_| KindStats::new())
                .collect::<anyhow::Result<_>>()?,
            all: KindStats::new()?,
            expected: vec![i128::from(initial); accounts as usize],
            deposited: 0,
            withdrawn: 0,
            unknown: Vec::new(),
            errors: Vec::new(),
            unexpected_rejections: 0,
        };
        for r in reports {
            for (mine, theirs) in load.stats.iter_mut().zip(&r.stats) {
                mine.merge(theirs)?;
                load.all.merge(theirs)?;
            }
            for (e, d) in load.expected.iter_mut().zip(&r.deltas) {
                *e += d;
            }
            load.deposited += r.deposited;
            load.withdrawn += r.withdrawn;
            load.unknown.extend(r.unknown);
            load.errors.extend(
                r.errors
                    .into_iter()
                    .take(5usize.saturating_sub(load.errors.len())),
            );
            load.unexpected_rejections += r.unexpected_rejections;
        }
        Ok(load)
    }
}

/// One line of the final check.
struct Check {
    what: String,
    ok: bool,
    detail: String,
}

impl Check {
    fn from_verdict(what: String, verdict: &Verdict, accounts: u64) -> Check {
        let (ok, detail) = match verdict {
            Verdict::Exact => (
                true,
                format!("{accounts} of {accounts} accounts match the acknowledged operations"),
            ),
            Verdict::Explained { applied, of, .. } => (
                true,
                format!(
                    "{accounts} accounts match the acknowledged operations plus {applied} of the {of} \
                     with unknown outcome"
                ),
            ),
            Verdict::WithinBounds => (
                true,
                format!("{accounts} accounts are within what the unknown outcomes allow (a weaker check)"),
            ),
            Verdict::Mismatch(text) => (false, text.clone()),
        };
        Check { what, ok, detail }
    }
}

/// Every balance, and the lowest applied index among the answers.
struct Readings {
    balances: Vec<u64>,
    min_applied: u64,
}

/// Reads every account with one client.
async fn read_all(cfg: ClientConfig, accounts: u64, consistency: Consistency) -> anyhow::Result<Readings> {
    let client = Client::connect(cfg).await.context("cannot connect a client")?;
    let mut readings = Readings {
        balances: Vec::with_capacity(accounts as usize),
        min_applied: u64::MAX,
    };
    for account in 1..=accounts {
        let r = client
            .read_balance(account, consistency)
            .await
            .with_context(|| format!("reading account {account}"))?;
        readings.balances.push(r.balance);
        readings.min_applied = readings.min_applied.min(r.applied_index);
    }
    client.close().await;
    Ok(readings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ops_stay_in_range() {
        let mut rng = Rng::new(7);
        for _ in 0..10_000 {
            match Op::random(&mut rng, 5, 100) {
                Op::Deposit { account, amount } | Op::Withdraw { account, amount } => {
                    assert!((1..=5).contains(&account));
                    assert!((1..=100).contains(&amount));
                }
                Op::Transfer { from, to, amount } => {
                    assert!((1..=5).contains(&from) && (1..=5).contains(&to));
                    assert_ne!(from, to);
                    assert!((1..=100).contains(&amount));
                }
            }
        }
    }

    #[test]
    fn balances_equal_to_the_model_are_exact() {
        assert_eq!(judge(&[10, 20], &[10, 20], &[]), Verdict::Exact);
    }

    #[test]
    fn a_difference_without_unknowns_is_a_mismatch() {
        match judge(&[10, 21], &[10, 20], &[]) {
            Verdict::Mismatch(text) => assert!(text.contains("account 2 reads 21, expected 20"), "{text}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_operations_may_have_applied_or_not() {
        let unknown = [
            Op::Transfer {
                from: 1,
                to: 2,
                amount: 5,
            },
            Op::Deposit {
                account: 1,
                amount: 3,
            },
        ];
        // Neither applied.
        assert_eq!(judge(&[10, 20], &[10, 20], &unknown), Verdict::Exact);
        // Only the transfer applied.
        assert_eq!(
            judge(&[5, 25], &[10, 20], &unknown),
            Verdict::Explained {
                applied: 1,
                of: 2,
                total_delta: 0
            }
        );
        // Both applied.
        assert_eq!(
            judge(&[8, 25], &[10, 20], &unknown),
            Verdict::Explained {
                applied: 2,
                of: 2,
                total_delta: 3
            }
        );
        // Half a transfer is never explained.
        assert!(matches!(
            judge(&[5, 20], &[10, 20], &unknown),
            Verdict::Mismatch(_)
        ));
    }

    #[test]
    fn many_unknowns_fall_back_to_bounds() {
        let unknown: Vec<Op> = (0..MAX_EXACT_UNKNOWNS + 1)
            .map(|_| Op::Deposit {
                account: 1,
                amount: 1,
            })
            .collect();
        assert_eq!(judge(&[12, 20], &[10, 20], &unknown), Verdict::WithinBounds);
        assert!(matches!(
            judge(&[9, 20], &[10, 20], &unknown),
            Verdict::Mismatch(_)
        ));
    }

    #[test]
    fn seconds_are_checked() {
        assert!(parse_seconds("4").is_ok());
        assert!(parse_seconds("0.5").is_err());
        assert!(parse_seconds("nan").is_err());
        assert!(parse_seconds("ten").is_err());
    }
}
