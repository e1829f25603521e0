//! Sidecar benchmark: three sidecars in one process, real QUIC on loopback with mutual
//! TLS, real redb files with fsync per batch, N concurrent proposers of 100-byte
//! commands on the leader, each waiting for its own command to be applied.
//!
//! Run: `cargo bench -p raft --all-features --bench sidecar_bench`
//! Knobs: `BENCH_SECS` (per row, default 5), `BENCH_CLIENTS` (default "1,16,64,256"),
//! `BENCH_STORE=memory` (in-memory stores instead of redb: what the disk costs).
//! All three nodes share this machine's cores with the clients.

#[path = "../tests/cluster/mod.rs"]
mod cluster;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster::Cluster;
use hdrhistogram::Histogram;

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let clients: Vec<usize> = std::env::var("BENCH_CLIENTS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 64, 256]);
    let memory_stores = std::env::var("BENCH_STORE").is_ok_and(|s| s == "memory");
    let store = if memory_stores {
        "in-memory stores"
    } else {
        "redb fsync"
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        println!("sidecar bench: 3 nodes, QUIC loopback, {store}, 100-byte commands, {secs}s per row");
        println!(
            "{:>8} {:>12} {:>10} {:>10} {:>10} {:>10} {:>12}",
            "clients", "ops/s", "p50 us", "p99 us", "p999 us", "max us", "errors"
        );
        for &n in &clients {
            let cluster = Cluster::quic_with(
                3,
                cluster::Options {
                    memory_log: memory_stores,
                    ..cluster::Options::default()
                },
            )
            .await;
            let leader = cluster.wait_leader(Duration::from_secs(10)).await;
            let h = cluster.handle(leader).clone();
            // Warm up connections and the log.
            for _ in 0..200 {
                let _ = h.propose(Bytes::from(vec![7u8; 100])).await;
            }
            let deadline = Instant::now() + Duration::from_secs(secs);
            let started = Instant::now();
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let h = h.clone();
                    tokio::spawn(async move {
                        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
                        let payload = Bytes::from(vec![42u8; 100]);
                        let mut errors = 0u64;
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            match h.propose(payload.clone()).await {
                                Ok(_) => {
                                    let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                                }
                                Err(e) => {
                                    if errors == 0 {
                                        eprintln!("first error: {e}");
                                    }
                                    errors += 1;
                                }
                            }
                        }
                        (hist, errors)
                    })
                })
                .collect();
            let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
            let mut errors = 0;
            for t in tasks {
                let (hh, e) = t.await.expect("task");
                all.add(hh).expect("merge");
                errors += e;
            }
            let elapsed = started.elapsed().as_secs_f64();
            println!(
                "{:>8} {:>12.0} {:>10} {:>10} {:>10} {:>10} {:>12}",
                n,
                all.len() as f64 / elapsed,
                all.value_at_quantile(0.5),
                all.value_at_quantile(0.99),
                all.value_at_quantile(0.999),
                all.max(),
                errors
            );
            drop(cluster);
        }
    });
}
