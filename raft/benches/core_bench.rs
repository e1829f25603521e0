//! Throughput and latency of the Raft core itself, without disks or sockets.
//!
//! Three [`RaftNode`]s run in one process. Storage is in memory (a "durable write"
//! records the hard state and the last index and drops the entries, so it is
//! instantaneous; the core keeps its own copy until compaction), the network is a
//! function call (a message is delivered by calling `step` on its target, with no
//! serialization), and the state machine is empty. N proposers each keep exactly one
//! proposal outstanding and wait for it to be applied on the leader before proposing
//! the next one. This is the shape of openraft's `benchmarks/minimal` (in-memory log
//! store, empty state machine, function-call network, N client tasks on 2 tokio worker
//! threads), so the numbers are comparable.
//!
//! Two ways to drive it (`--mode=`, default both):
//!
//! * `closed-loop`: one thread, no async runtime. Exactly N proposals are outstanding
//!   at every moment; each one applied on the leader is immediately replaced by a new
//!   one (all proposals completed in a driver round are replaced before the next
//!   round). This measures the core's own cost: the thread does core work plus the
//!   driver's minimal bookkeeping (moving messages, a timestamp per round, a
//!   histogram record and a fresh payload per proposal). It is comparable to the
//!   tokio mode in what the cluster does per proposal (same cores, same batching
//!   rules, N outstanding), not in what the clients cost.
//! * `tokio`: N tokio tasks on a 2-worker multi-thread runtime, each proposing through
//!   a channel to one driver task (which owns the three cores) and awaiting its own
//!   `Notify`, which the driver signals when the entry is applied on the leader. This
//!   adds what a real sidecar pays per request (a channel send, a task wake-up, work
//!   stealing between the two workers) and is the like-for-like comparison with
//!   openraft's minimal benchmark (2 worker threads). A per-request oneshot instead
//!   of the reusable `Notify` costs about 5-10% more CPU per proposal (one
//!   allocation, freed on the other worker).
//!
//! Every row builds a fresh cluster, elects a leader by ticking, warms up, then
//! measures. Ticks run every 10 ms of wall time (heartbeats, check-quorum), the logs
//! are compacted in small steps behind the slowest node's applied index, and leader
//! changes during a row abort the run. Payloads are fresh 100-byte buffers
//! (`Bytes::from(Vec)`), as an application that encodes its commands would hand
//! them over.
//!
//! Columns: proposals completed per second, client-observed latency percentiles,
//! proposals completed in the measured window, AppendEntries carrying entries and
//! their average size (the batching), messages of any kind delivered per proposal,
//! the CPU cores the process used (at most 1.0 for closed-loop, 2.0 for tokio; much
//! less means other work took the machine, so look at the last column too) and
//! proposals per CPU second.
//!
//! Run: `cargo bench -p raft --features sim --bench core_bench -- [--mode=closed-loop|tokio|both]
//! [--clients=1,64,256,1024] [--payload=100] [--repeat=1]`. Environment: `BENCH_SECS` (measured
//! seconds per row, default 3), `BENCH_WARMUP_SECS` (default 1).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use raft::core::{
    Config, Entry, EntryPayload, HardState, Index, Membership, Message, MessageBody, NodeId, RaftNode,
    Restore, Role, SnapshotMeta,
};
use tokio::sync::{mpsc, Notify};

/// Wall-clock length of one core tick (the core's defaults assume 10 ms).
const TICK: Duration = Duration::from_millis(10);
/// Compact the logs once this many entries applied everywhere sit before their snapshot
/// point. Small steps keep the cost of dropping entries (mostly payload refcount
/// decrements) spread out instead of showing up as latency spikes.
const COMPACT_EVERY: Index = 256;
/// Entries kept behind the slowest node's applied index when compacting, so that no
/// follower ever needs a snapshot.
const COMPACT_MARGIN: Index = 256;

// ------------------------------------------------------------------ options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One thread, no runtime: the core's own cost.
    ClosedLoop,
    /// N client tasks and one driver task on a 2-worker multi-thread runtime (what
    /// openraft's minimal benchmark does).
    Tokio,
}

#[derive(Debug, Clone)]
struct Opts {
    modes: Vec<Mode>,
    clients: Vec<usize>,
    payload: usize,
    /// Runs per row; the best (by proposals/s) is printed, with the spread.
    repeat: usize,
    secs: f64,
    warmup: f64,
}

impl Opts {
    fn parse() -> Opts {
        let env_secs = |name: &str, default: f64| {
            std::env::var(name)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(default)
        };
        let mut opts = Opts {
            modes: vec![Mode::ClosedLoop, Mode::Tokio],
            clients: vec![1, 64, 256, 1024],
            payload: 100,
            repeat: 1,
            secs: env_secs("BENCH_SECS", 3.0),
            warmup: env_secs("BENCH_WARMUP_SECS", 1.0),
        };
        // `cargo bench` passes `--bench`; anything not ours is ignored.
        for arg in std::env::args().skip(1) {
            if let Some(v) = arg.strip_prefix("--mode=") {
                opts.modes = v
                    .split(',')
                    .flat_map(|m| match m.trim() {
                        "closed-loop" => vec![Mode::ClosedLoop],
                        "tokio" => vec![Mode::Tokio],
                        "both" => vec![Mode::ClosedLoop, Mode::Tokio],
                        other => panic!("unknown mode {other} (closed-loop, tokio or both)"),
                    })
                    .collect();
            } else if let Some(v) = arg.strip_prefix("--clients=") {
                opts.clients = v
                    .split(',')
                    .map(|s| s.trim().parse().expect("--clients takes a comma-separated list"))
                    .collect();
            } else if let Some(v) = arg.strip_prefix("--payload=") {
                opts.payload = v.parse().expect("--payload takes a byte count");
            } else if let Some(v) = arg.strip_prefix("--repeat=") {
                opts.repeat = v.parse::<usize>().expect("--repeat takes a count").max(1);
            }
        }
        opts
    }
}

// ------------------------------------------------------------------ cluster

/// A node's "disk". Persisting is instantaneous: the hard state is kept, the entries
/// are counted and dropped (as if written out), which also releases their payloads
/// while they are still hot in cache instead of at compaction time.
#[derive(Default)]
struct MemStore {
    hard_state: HardState,
    last_index: Index,
}

impl MemStore {
    fn append(&mut self, entries: Vec<Entry>) {
        if let Some(last) = entries.last() {
            // A conflicting suffix is replaced: the new last index is the batch's.
            self.last_index = last.index;
        }
    }
}

/// Counters of what crossed the function-call network.
#[derive(Default, Clone, Copy)]
struct NetStats {
    /// AppendEntries carrying at least one entry.
    appends: u64,
    /// AppendEntries with no entries (commit propagation, probes).
    empty_appends: u64,
    /// Entries carried by AppendEntries.
    entries: u64,
    /// Every message delivered.
    messages: u64,
    /// Readies processed (all nodes).
    readies: u64,
}

impl NetStats {
    fn since(&self, base: &NetStats) -> NetStats {
        NetStats {
            appends: self.appends - base.appends,
            empty_appends: self.empty_appends - base.empty_appends,
            entries: self.entries - base.entries,
            messages: self.messages - base.messages,
            readies: self.readies - base.readies,
        }
    }
}

/// Three cores wired together with in-memory storage and a function-call network.
struct Cluster {
    nodes: Vec<RaftNode>,
    stores: Vec<MemStore>,
    applied: Vec<Index>,
    compacted: Index,
    net: VecDeque<Message>,
    stats: NetStats,
    leader: usize,
    last_tick: Instant,
}

fn slot(id: NodeId) -> usize {
    (id - 1) as usize
}

impl Cluster {
    fn new() -> Cluster {
        let membership = Membership::with_voters([1, 2, 3]);
        let nodes = (1..=3)
            .map(|id| {
                let restore = Restore {
                    snapshot: SnapshotMeta {
                        index: 0,
                        term: 0,
                        membership: membership.clone(),
                    },
                    ..Default::default()
                };
                RaftNode::new(Config::new(id), restore).expect("valid config")
            })
            .collect();
        Cluster {
            nodes,
            stores: (0..3).map(|_| MemStore::default()).collect(),
            applied: vec![0; 3],
            compacted: 0,
            net: VecDeque::new(),
            stats: NetStats::default(),
            leader: 0,
            last_tick: Instant::now(),
        }
    }

    /// Tick every node (without waiting for wall time) until one leads and the
    /// others follow it; its no-op is then committed.
    fn elect(&mut self) {
        for _ in 0..10_000 {
            for n in &mut self.nodes {
                n.tick();
            }
            while self.pump(&mut |_| {}) {}
            let leaders: Vec<usize> = (0..3).filter(|&i| self.nodes[i].role() == Role::Leader).collect();
            if let [l] = leaders[..] {
                let id = self.nodes[l].id();
                if self.nodes.iter().all(|n| n.leader() == Some(id))
                    && self.nodes[l].commit_index() == self.nodes[l].last_index()
                {
                    self.leader = l;
                    self.last_tick = Instant::now();
                    return;
                }
            }
        }
        panic!("no leader elected");
    }

    /// Propose on the leader. Leadership never moves in this benchmark (a tick every
    /// 10 ms keeps heartbeats and check-quorum going); if it did, the run is invalid.
    fn propose(&mut self, data: Bytes) -> Index {
        match self.nodes[self.leader].propose(data) {
            Ok((index, _)) => index,
            Err(e) => panic!("leader refused a proposal: {e}"),
        }
    }

    /// Tick every node if a tick's worth of wall time has passed.
    fn maybe_tick(&mut self, now: Instant) {
        if now.duration_since(self.last_tick) >= TICK {
            self.last_tick = now;
            for n in &mut self.nodes {
                n.tick();
            }
        }
    }

    /// One round: process every node's ready (in the documented order), then deliver
    /// every queued message. `on_apply` is called with the index of each application
    /// entry the leader applies. Returns whether anything happened.
    fn pump(&mut self, on_apply: &mut impl FnMut(Index)) -> bool {
        let mut busy = false;
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            if !node.has_ready() {
                continue;
            }
            busy = true;
            self.stats.readies += 1;
            let rd = node.ready();
            // 1. Messages that may leave before the write.
            self.net.extend(rd.messages);
            // 2. The "durable" write.
            let store = &mut self.stores[i];
            if let Some(hs) = rd.hard_state {
                store.hard_state = hs;
            }
            assert!(
                rd.snapshot.is_none(),
                "no snapshot is ever installed in this benchmark"
            );
            store.append(rd.entries);
            // 3. Messages that promise the write is durable.
            self.net.extend(rd.persisted_messages);
            // 4. Apply (the state machine is empty; the leader completes proposals).
            if let Some(last) = rd.committed.last() {
                self.applied[i] = last.index;
                if i == self.leader {
                    for e in &rd.committed {
                        if let EntryPayload::Normal(_) = e.payload {
                            on_apply(e.index);
                        }
                    }
                }
            }
            // 5.
            node.advance();
        }
        while let Some(msg) = self.net.pop_front() {
            busy = true;
            self.stats.messages += 1;
            match &msg.body {
                MessageBody::Append(ae) if ae.entries.is_empty() => self.stats.empty_appends += 1,
                MessageBody::Append(ae) => {
                    self.stats.appends += 1;
                    self.stats.entries += ae.entries.len() as u64;
                }
                MessageBody::InstallSnapshot { .. } => panic!("a follower fell behind compaction"),
                _ => {}
            }
            let to = slot(msg.to);
            self.nodes[to].step(msg);
        }
        busy
    }

    /// Drop applied entries from every log, as a driver does after a snapshot.
    fn maybe_compact(&mut self) {
        let floor = self.applied.iter().copied().min().unwrap_or(0);
        if floor < self.compacted + COMPACT_EVERY + COMPACT_MARGIN {
            return;
        }
        let to = floor - COMPACT_MARGIN;
        for (node, store) in self.nodes.iter_mut().zip(&mut self.stores) {
            if let Some(meta) = node.compact(to) {
                assert!(meta.index <= store.last_index, "compacted past the durable log");
            }
        }
        self.compacted = to;
    }

    fn check_leader(&self) {
        assert_eq!(
            self.nodes[self.leader].role(),
            Role::Leader,
            "leadership moved during the run; the numbers are invalid"
        );
    }
}

// ------------------------------------------------------------------ results

struct Row {
    clients: usize,
    elapsed: Duration,
    /// Process CPU time (all threads) spent in the measured window, where known.
    cpu: Option<Duration>,
    count: u64,
    hist: Histogram<u64>,
    stats: NetStats,
}

/// CPU time used so far by the whole process (user + system, all threads), from
/// `/proc/self/stat` on Linux. With 2 cores shared by other work, this shows whether a
/// row had the machine to itself (about 1.0 for closed-loop, 2.0 for tokio).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
    // After the command name: state is field 3; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // Clock ticks are 100 Hz on every Linux configuration std supports.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Nanoseconds, 1 ns to 100 s, two significant figures (1% resolution): small enough
/// (about 30 KB) that a thousand per-client histograms stay in cache.
fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 2).expect("valid histogram bounds")
}

fn fmt_ns(ns: u64) -> String {
    if ns >= 10_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else if ns >= 10_000 {
        format!("{:.0} us", ns as f64 / 1e3)
    } else {
        format!("{:.1} us", ns as f64 / 1e3)
    }
}

fn print_header(title: &str) {
    println!();
    println!("{title}");
    println!(
        "{:>6} {:>12} {:>10} {:>10} {:>10} {:>11} {:>10} {:>11} {:>10} {:>6} {:>12}",
        "N",
        "props/s",
        "p50",
        "p99",
        "p999",
        "total",
        "appends",
        "ent/append",
        "msgs/prop",
        "cpu",
        "props/cpu-s"
    );
}

fn print_row(r: &Row) {
    let secs = r.elapsed.as_secs_f64();
    let ent_per = if r.stats.appends > 0 {
        r.stats.entries as f64 / r.stats.appends as f64
    } else {
        0.0
    };
    let msgs_per = if r.count > 0 {
        r.stats.messages as f64 / r.count as f64
    } else {
        0.0
    };
    let cpu = r
        .cpu
        .map_or_else(|| "-".to_string(), |c| format!("{:.2}", c.as_secs_f64() / secs));
    let per_cpu = r.cpu.filter(|c| !c.is_zero()).map_or_else(
        || "-".to_string(),
        |c| format!("{:.0}", r.count as f64 / c.as_secs_f64()),
    );
    println!(
        "{:>6} {:>12.0} {:>10} {:>10} {:>10} {:>11} {:>10} {:>11.1} {:>10.2} {:>6} {:>12}",
        r.clients,
        r.count as f64 / secs,
        fmt_ns(r.hist.value_at_quantile(0.50)),
        fmt_ns(r.hist.value_at_quantile(0.99)),
        fmt_ns(r.hist.value_at_quantile(0.999)),
        r.count,
        r.stats.appends,
        ent_per,
        msgs_per,
        cpu,
        per_cpu,
    );
}

fn payload_for(template: &[u8], client: u64, seq: u64) -> Bytes {
    // Every payload is a fresh buffer (as if it came off a client connection), tagged
    // so that no two are equal.
    let mut v = template.to_vec();
    let tag = (client << 40 | (seq & ((1 << 40) - 1))).to_le_bytes();
    let n = v.len().min(8);
    v[..n].copy_from_slice(&tag[..n]);
    Bytes::from(v)
}

// ------------------------------------------------------------ closed loop

fn run_closed_loop(n: usize, opts: &Opts) -> Row {
    let template = vec![0xA5u8; opts.payload];
    let mut c = Cluster::new();
    c.elect();
    let mut pending: VecDeque<(Index, Instant)> = VecDeque::with_capacity(n);
    let mut hist = new_hist();
    let mut seq = 0u64;
    let start = Instant::now();
    for _ in 0..n {
        seq += 1;
        let idx = c.propose(payload_for(&template, 0, seq));
        pending.push_back((idx, start));
    }
    let warm_end = start + Duration::from_secs_f64(opts.warmup);
    let end = warm_end + Duration::from_secs_f64(opts.secs);
    let mut measuring = false;
    let mut count = 0u64;
    let mut base = NetStats::default();
    let mut measure_start = start;
    let mut cpu0 = None;
    loop {
        let mut done = 0usize;
        let mut now_cache: Option<Instant> = None;
        c.pump(&mut |idx| {
            let (want, t0) = pending.pop_front().expect("an outstanding proposal");
            assert_eq!(want, idx, "proposals are applied in order");
            let now = *now_cache.get_or_insert_with(Instant::now);
            if measuring {
                hist.saturating_record(now.duration_since(t0).as_nanos() as u64);
            }
            done += 1;
        });
        let now = Instant::now();
        if measuring {
            count += done as u64;
        }
        // Each completed proposal is replaced at once.
        for _ in 0..done {
            seq += 1;
            let idx = c.propose(payload_for(&template, 0, seq));
            pending.push_back((idx, now));
        }
        c.maybe_tick(now);
        c.maybe_compact();
        if !measuring && now >= warm_end {
            measuring = true;
            measure_start = now;
            cpu0 = cpu_time();
            base = c.stats;
        } else if measuring && now >= end {
            c.check_leader();
            return Row {
                clients: n,
                elapsed: now.duration_since(measure_start),
                cpu: cpu_time().zip(cpu0).map(|(b, a)| b.saturating_sub(a)),
                count,
                hist,
                stats: c.stats.since(&base),
            };
        }
    }
}

// ------------------------------------------------------------------ tokio

/// Driver rounds between two voluntary yields. Yielding after every round lets the
/// clients trickle in one by one (small batches, more rounds per proposal); never
/// yielding starves the client parked in the driver worker's LIFO slot (and cost a
/// quarter of the throughput at N=1024). Measured with both cores idle, anything from 8
/// to 1024 rounds did about equally well.
const YIELD_EVERY: u64 = 64;

/// Phases shared by the driver and the clients.
const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

struct Request {
    data: Bytes,
    /// Which client to notify when the entry is applied on the leader.
    client: usize,
}

/// Latency samples of the tokio run, kept per worker thread and merged at the end:
/// with a histogram per client, a thousand histograms would each be cold in cache on
/// every record.
struct Samples {
    /// Distinguishes runs: a thread's cached entry from an earlier run is not reused.
    run: u64,
    threads: Mutex<Vec<ThreadSamples>>,
}

/// One thread's histogram and sample count.
type ThreadSamples = Arc<Mutex<(Histogram<u64>, u64)>>;

thread_local! {
    /// This thread's samples, tagged with the run of the [`Samples`] they belong to.
    static LOCAL: RefCell<Option<(u64, ThreadSamples)>> = const { RefCell::new(None) };
}

impl Samples {
    fn new() -> Samples {
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Samples {
            run: RUNS.fetch_add(1, Ordering::Relaxed) + 1,
            threads: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, ns: u64) {
        let key = self.run;
        LOCAL.with(|cell| {
            let mut local = cell.borrow_mut();
            if local.as_ref().is_none_or(|(k, _)| *k != key) {
                let h = Arc::new(Mutex::new((new_hist(), 0)));
                self.threads.lock().expect("not poisoned").push(h.clone());
                *local = Some((key, h));
            }
            if let Some((_, h)) = local.as_ref() {
                let mut g = h.lock().expect("not poisoned");
                g.0.saturating_record(ns);
                g.1 += 1;
            }
        });
    }

    fn merged(&self) -> (Histogram<u64>, u64) {
        let mut hist = new_hist();
        let mut count = 0;
        for h in self.threads.lock().expect("not poisoned").iter() {
            let g = h.lock().expect("not poisoned");
            hist.add(&g.0).expect("histograms with the same bounds");
            count += g.1;
        }
        (hist, count)
    }
}

async fn client(
    id: usize,
    done: Arc<Notify>,
    template: Arc<Vec<u8>>,
    tx: mpsc::UnboundedSender<Request>,
    phase: Arc<AtomicU8>,
    samples: Arc<Samples>,
) {
    let mut seq = 0u64;
    loop {
        let p = phase.load(Ordering::Relaxed);
        if p == STOP {
            break;
        }
        seq += 1;
        let t0 = Instant::now();
        let req = Request {
            data: payload_for(&template, id as u64, seq),
            client: id,
        };
        if tx.send(req).is_err() {
            break;
        }
        done.notified().await;
        if phase.load(Ordering::Relaxed) == STOP {
            // The driver is gone; this wake-up was its farewell, not a completion.
            break;
        }
        // Counted only if it both started and finished inside the measured window.
        if p == MEASURE && phase.load(Ordering::Relaxed) == MEASURE {
            samples.record(t0.elapsed().as_nanos() as u64);
        }
    }
}

/// Owns the three cores. Takes whatever proposals have queued up, proposes them all,
/// runs the cluster one round, and completes the proposals the leader applied.
async fn driver(
    mut rx: mpsc::UnboundedReceiver<Request>,
    done: Vec<Arc<Notify>>,
    phase: Arc<AtomicU8>,
) -> NetStats {
    let mut c = Cluster::new();
    c.elect();
    let mut pending: VecDeque<(Index, usize)> = VecDeque::new();
    let mut batch: Vec<Request> = Vec::with_capacity(4096);
    let mut base = NetStats::default();
    let mut measuring = false;
    let mut rounds = 0u64;
    let mut idle_rounds = 0u32;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        // Wait for work only when the cluster has nothing left to do.
        let got = if idle_rounds > 0 && pending.is_empty() {
            tokio::select! {
                n = rx.recv_many(&mut batch, 4096) => n,
                _ = ticker.tick() => 0,
            }
        } else {
            let mut n = 0;
            while n < 4096 {
                match rx.try_recv() {
                    Ok(r) => {
                        batch.push(r);
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            n
        };
        let closed = got == 0 && rx.is_closed() && rx.is_empty();
        for r in batch.drain(..) {
            let idx = c.propose(r.data);
            pending.push_back((idx, r.client));
        }
        let busy = c.pump(&mut |idx| {
            let (want, client) = pending.pop_front().expect("an outstanding proposal");
            assert_eq!(want, idx, "proposals are applied in order");
            done[client].notify_one();
        });
        idle_rounds = if busy || got > 0 { 0 } else { idle_rounds + 1 };
        let now = Instant::now();
        c.maybe_tick(now);
        rounds += 1;
        c.maybe_compact();
        if rounds.is_multiple_of(YIELD_EVERY) {
            // Let the clients woken on this worker (the last one sits in its LIFO slot,
            // where no other worker can steal it) run even when work keeps coming.
            tokio::task::yield_now().await;
        }
        match phase.load(Ordering::Relaxed) {
            MEASURE if !measuring => {
                measuring = true;
                base = c.stats;
            }
            STOP => break,
            _ if closed => break,
            _ => {}
        }
    }
    c.check_leader();
    // Wake every client: those still waiting see the STOP phase and leave.
    for d in &done {
        d.notify_one();
    }
    c.stats.since(&base)
}

/// Spawns the clients on the current runtime, lets them warm up, measures, stops them.
async fn clients_and_measure(
    opts: &Opts,
    done: Vec<Arc<Notify>>,
    tx: mpsc::UnboundedSender<Request>,
    phase: Arc<AtomicU8>,
) -> (Duration, Option<Duration>, Histogram<u64>, u64) {
    let template = Arc::new(vec![0xA5u8; opts.payload]);
    let samples = Arc::new(Samples::new());
    let clients: Vec<_> = done
        .into_iter()
        .enumerate()
        .map(|(i, done)| {
            tokio::spawn(client(
                i,
                done,
                template.clone(),
                tx.clone(),
                phase.clone(),
                samples.clone(),
            ))
        })
        .collect();
    drop(tx);
    tokio::time::sleep(Duration::from_secs_f64(opts.warmup)).await;
    phase.store(MEASURE, Ordering::Relaxed);
    let t0 = Instant::now();
    let cpu0 = cpu_time();
    tokio::time::sleep(Duration::from_secs_f64(opts.secs)).await;
    phase.store(STOP, Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let cpu = cpu_time().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    for c in clients {
        c.await.expect("client task");
    }
    let (hist, count) = samples.merged();
    (elapsed, cpu, hist, count)
}

/// Runs the tokio mode. The runtime gets timers but no IO driver: nothing here does
/// IO, and with an IO driver every wake-up of a parked worker is an eventfd write.
fn run_tokio(n: usize, opts: &Opts) -> Row {
    let phase = Arc::new(AtomicU8::new(WARMUP));
    // Unbounded, but it never holds more than N requests: each client has at most one
    // outstanding.
    let (tx, rx) = mpsc::unbounded_channel();
    // One reusable completion per client: the driver notifies it when the client's
    // entry is applied (a permit is stored if the client is not waiting yet).
    let done: Vec<Arc<Notify>> = (0..n).map(|_| Arc::new(Notify::new())).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("tokio runtime");
    let ((elapsed, cpu, hist, count), stats) = rt.block_on(async {
        let driver = tokio::spawn(driver(rx, done.clone(), phase.clone()));
        let measured = clients_and_measure(opts, done, tx, phase).await;
        (measured, driver.await.expect("driver task"))
    });
    Row {
        clients: n,
        elapsed,
        cpu,
        count,
        hist,
        stats,
    }
}

// ------------------------------------------------------------------- main

fn main() {
    let opts = Opts::parse();
    println!(
        "core_bench: 3 nodes, in-memory log, function-call network, empty state machine; \
         payload {} bytes; {} s measured after {} s warmup per row{}",
        opts.payload,
        opts.secs,
        opts.warmup,
        if opts.repeat > 1 {
            format!("; best of {} runs", opts.repeat)
        } else {
            String::new()
        }
    );
    for &mode in &opts.modes {
        match mode {
            Mode::ClosedLoop => print_header(
                "mode=closed-loop (one thread; exactly N proposals outstanding, each replaced when applied)",
            ),
            Mode::Tokio => print_header(
                "mode=tokio (2-worker runtime; N client tasks -> channel -> 1 driver task -> notify)",
            ),
        }
        for &n in &opts.clients {
            let rows: Vec<Row> = (0..opts.repeat)
                .map(|_| match mode {
                    Mode::ClosedLoop => run_closed_loop(n, &opts),
                    Mode::Tokio => run_tokio(n, &opts),
                })
                .collect();
            let rate = |r: &Row| r.count as f64 / r.elapsed.as_secs_f64();
            let best = rows
                .iter()
                .max_by(|a, b| rate(a).total_cmp(&rate(b)))
                .expect("at least one run");
            print_row(best);
            if rows.len() > 1 {
                let all: Vec<String> = rows.iter().map(|r| format!("{:.0}", rate(r))).collect();
                println!("{:>6} (best of {}: {} props/s)", "", rows.len(), all.join(", "));
            }
        }
    }
}
