//! Throughput and latency of the Raft core itself, without disks or sockets.
//!
//! Three [`RaftNode`]s run in one process. Storage is in memory (a "durable write" is
//! moving the ready's entries into a `Vec`, so it is instantaneous), the network is a
//! function call (a message is delivered by calling `step` on its target, with no
//! serialization), and the state machine is empty. N proposers each keep exactly one
//! proposal outstanding and wait for it to be applied on the leader before proposing
//! the next one. This is the shape of openraft's `benchmarks/minimal` (in-memory log
//! store, empty state machine, function-call network, N client tasks on 2 tokio worker
//! threads), so the numbers are comparable.
//!
//! Two ways to drive it:
//!
//! * `--mode=closed-loop`: one thread, no async runtime. Exactly N proposals are
//!   outstanding at every moment; each one applied on the leader is immediately
//!   replaced by a new one. This measures the core's own cost: everything the thread
//!   does is core work plus the driver's minimal bookkeeping (moving messages, a
//!   timestamp per driver round, a histogram record per proposal).
//! * `--mode=tokio`: N tokio tasks on a 2-worker multi-thread runtime, each proposing
//!   through a channel to one driver task (which owns the three cores) and awaiting a
//!   oneshot that the driver completes when the entry is applied on the leader. This
//!   adds what a real sidecar pays per request (a channel send, a oneshot, a task wake
//!   across threads) and is the like-for-like comparison with openraft's minimal
//!   benchmark.
//!
//! Run: `cargo bench -p raft --features sim --bench core_bench -- [--mode=closed-loop|tokio|both]
//! [--clients=1,64,256,1024] [--payload=100]`. Environment: `BENCH_SECS` (measured
//! seconds per row, default 3), `BENCH_WARMUP_SECS` (default 1).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use raft::core::{
    Config, Entry, EntryPayload, HardState, Index, Membership, Message, MessageBody, NodeId, RaftNode,
    Restore, Role, SnapshotMeta,
};
use tokio::sync::{mpsc, oneshot};

/// Wall-clock length of one core tick (the core's defaults assume 10 ms).
const TICK: Duration = Duration::from_millis(10);
/// Compact a node's log once this many applied entries sit before its snapshot point.
const COMPACT_EVERY: Index = 64 * 1024;
/// Entries kept behind the slowest node when compacting, so no follower ever needs a
/// snapshot.
const COMPACT_MARGIN: Index = 4096;

// ------------------------------------------------------------------ options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ClosedLoop,
    Tokio,
}

#[derive(Debug, Clone)]
struct Opts {
    modes: Vec<Mode>,
    clients: Vec<usize>,
    payload: usize,
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
            secs: env_secs("BENCH_SECS", 3.0),
            warmup: env_secs("BENCH_WARMUP_SECS", 1.0),
        };
        // `cargo bench` passes `--bench`; anything not ours is ignored.
        for arg in std::env::args().skip(1) {
            if let Some(v) = arg.strip_prefix("--mode=") {
                opts.modes = match v {
                    "closed-loop" => vec![Mode::ClosedLoop],
                    "tokio" => vec![Mode::Tokio],
                    "both" => vec![Mode::ClosedLoop, Mode::Tokio],
                    other => panic!("unknown --mode={other} (closed-loop, tokio or both)"),
                };
            } else if let Some(v) = arg.strip_prefix("--clients=") {
                opts.clients = v
                    .split(',')
                    .map(|s| s.trim().parse().expect("--clients takes a comma-separated list"))
                    .collect();
            } else if let Some(v) = arg.strip_prefix("--payload=") {
                opts.payload = v.parse().expect("--payload takes a byte count");
            }
        }
        opts
    }
}

// ------------------------------------------------------------------ cluster

/// A node's "disk": what the ready asked to persist, kept in memory.
#[derive(Default)]
struct MemStore {
    hard_state: HardState,
    /// Index of the entry before `entries[0]`.
    offset: Index,
    entries: Vec<Entry>,
}

impl MemStore {
    fn append(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else { return };
        let keep = (first.index - self.offset - 1) as usize;
        self.entries.truncate(keep);
        if self.entries.is_empty() {
            self.entries = entries;
        } else {
            self.entries.extend(entries);
        }
    }

    fn compact(&mut self, meta: &SnapshotMeta) {
        let n = (meta.index.saturating_sub(self.offset) as usize).min(self.entries.len());
        self.entries.drain(..n);
        self.offset = meta.index;
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
                store.compact(&meta);
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
    count: u64,
    hist: Histogram<u64>,
    stats: NetStats,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
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
        "{:>6} {:>12} {:>10} {:>10} {:>10} {:>11} {:>10} {:>12} {:>10}",
        "N", "props/s", "p50", "p99", "p999", "total", "appends", "ent/append", "empty/s"
    );
}

fn print_row(r: &Row) {
    let secs = r.elapsed.as_secs_f64();
    let ent_per = if r.stats.appends > 0 {
        r.stats.entries as f64 / r.stats.appends as f64
    } else {
        0.0
    };
    println!(
        "{:>6} {:>12.0} {:>10} {:>10} {:>10} {:>11} {:>10} {:>12.1} {:>10.0}",
        r.clients,
        r.count as f64 / secs,
        fmt_ns(r.hist.value_at_quantile(0.50)),
        fmt_ns(r.hist.value_at_quantile(0.99)),
        fmt_ns(r.hist.value_at_quantile(0.999)),
        r.count,
        r.stats.appends,
        ent_per,
        r.stats.empty_appends as f64 / secs,
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
    let mut rounds = 0u64;
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
        let now = now_cache.unwrap_or_else(Instant::now);
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
        rounds += 1;
        if rounds & 63 == 0 {
            c.maybe_compact();
        }
        if !measuring && now >= warm_end {
            measuring = true;
            measure_start = now;
            base = c.stats;
        } else if measuring && now >= end {
            c.check_leader();
            let s = c.stats;
            return Row {
                clients: n,
                elapsed: now.duration_since(measure_start),
                count,
                hist,
                stats: NetStats {
                    appends: s.appends - base.appends,
                    empty_appends: s.empty_appends - base.empty_appends,
                    entries: s.entries - base.entries,
                    messages: s.messages - base.messages,
                    readies: s.readies - base.readies,
                },
            };
        }
    }
}

// ------------------------------------------------------------------ tokio

/// Phases shared by the driver and the clients.
const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

struct Request {
    data: Bytes,
    done: oneshot::Sender<Index>,
}

struct ClientResult {
    count: u64,
    hist: Histogram<u64>,
}

async fn client(
    id: u64,
    template: Arc<Vec<u8>>,
    tx: mpsc::UnboundedSender<Request>,
    phase: Arc<AtomicU8>,
) -> ClientResult {
    let mut hist = new_hist();
    let mut count = 0u64;
    let mut seq = 0u64;
    loop {
        let p = phase.load(Ordering::Relaxed);
        if p == STOP {
            break;
        }
        seq += 1;
        let (done, wait) = oneshot::channel();
        let t0 = Instant::now();
        if tx
            .send(Request {
                data: payload_for(&template, id, seq),
                done,
            })
            .is_err()
        {
            break;
        }
        if wait.await.is_err() {
            break;
        }
        // Counted only if it both started and finished inside the measured window.
        if p == MEASURE && phase.load(Ordering::Relaxed) == MEASURE {
            hist.saturating_record(t0.elapsed().as_nanos() as u64);
            count += 1;
        }
    }
    ClientResult { count, hist }
}

/// Owns the three cores. Takes whatever proposals have queued up, proposes them all,
/// runs the cluster one round, and completes the proposals the leader applied.
async fn driver(mut rx: mpsc::UnboundedReceiver<Request>, phase: Arc<AtomicU8>) -> NetStats {
    let mut c = Cluster::new();
    c.elect();
    let mut pending: VecDeque<(Index, oneshot::Sender<Index>)> = VecDeque::new();
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
        if got == 0 && rx.is_closed() && pending.is_empty() && rx.is_empty() {
            break;
        }
        for r in batch.drain(..) {
            let idx = c.propose(r.data);
            pending.push_back((idx, r.done));
        }
        let busy = c.pump(&mut |idx| {
            let (want, done) = pending.pop_front().expect("an outstanding proposal");
            assert_eq!(want, idx, "proposals are applied in order");
            let _ = done.send(idx);
        });
        idle_rounds = if busy || got > 0 { 0 } else { idle_rounds + 1 };
        let now = Instant::now();
        c.maybe_tick(now);
        rounds += 1;
        if rounds & 63 == 0 {
            c.maybe_compact();
            // Let the clients woken on this worker run even when work keeps coming.
            tokio::task::yield_now().await;
        }
        match phase.load(Ordering::Relaxed) {
            MEASURE if !measuring => {
                measuring = true;
                base = c.stats;
            }
            STOP => {
                c.check_leader();
                let s = c.stats;
                // Unblock everyone still waiting, then finish.
                pending.clear();
                return NetStats {
                    appends: s.appends - base.appends,
                    empty_appends: s.empty_appends - base.empty_appends,
                    entries: s.entries - base.entries,
                    messages: s.messages - base.messages,
                    readies: s.readies - base.readies,
                };
            }
            _ => {}
        }
    }
    NetStats::default()
}

fn run_tokio(n: usize, opts: &Opts) -> Row {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let phase = Arc::new(AtomicU8::new(WARMUP));
        let (tx, rx) = mpsc::unbounded_channel();
        let template = Arc::new(vec![0xA5u8; opts.payload]);
        let driver = tokio::spawn(driver(rx, phase.clone()));
        let clients: Vec<_> = (0..n)
            .map(|i| tokio::spawn(client(i as u64 + 1, template.clone(), tx.clone(), phase.clone())))
            .collect();
        drop(tx);
        tokio::time::sleep(Duration::from_secs_f64(opts.warmup)).await;
        phase.store(MEASURE, Ordering::Relaxed);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(opts.secs)).await;
        phase.store(STOP, Ordering::Relaxed);
        let elapsed = t0.elapsed();
        let stats = driver.await.expect("driver task");
        let mut hist = new_hist();
        let mut count = 0;
        for c in clients {
            let r = c.await.expect("client task");
            count += r.count;
            hist.add(&r.hist).expect("histograms with the same bounds");
        }
        Row {
            clients: n,
            elapsed,
            count,
            hist,
            stats,
        }
    })
}

// ------------------------------------------------------------------- main

fn main() {
    let opts = Opts::parse();
    println!(
        "core_bench: 3 nodes, in-memory log, function-call network, empty state machine; \
         payload {} bytes; {} s measured after {} s warmup per row",
        opts.payload, opts.secs, opts.warmup
    );
    for &mode in &opts.modes {
        match mode {
            Mode::ClosedLoop => print_header(
                "mode=closed-loop (one thread; exactly N proposals outstanding, each replaced when applied)",
            ),
            Mode::Tokio => print_header(
                "mode=tokio (2 worker threads; N client tasks -> channel -> 1 driver task -> oneshot)",
            ),
        }
        for &n in &opts.clients {
            let row = match mode {
                Mode::ClosedLoop => run_closed_loop(n, &opts),
                Mode::Tokio => run_tokio(n, &opts),
            };
            print_row(&row);
        }
    }
}
