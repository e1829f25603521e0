//! Measures `RedbStore::write` latency: 1000 durable writes of batches of 1 and of 64
//! entries with 100-byte payloads, then the time to reopen and load the log.
//!
//! `cargo run --release -p raft --example redb_write_latency [DIR]` (DIR defaults to the
//! system temporary directory; use a directory on the disk you care about).

use std::time::Instant;

use bytes::Bytes;
use hdrhistogram::Histogram;
use raft::core::{Entry, EntryPayload, HardState};
use raft::storage::{LogStore, RedbStore, WriteBatch};

const WRITES: u64 = 1000;

fn main() -> anyhow::Result<()> {
    let base = std::env::args_os()
        .nth(1)
        .map_or_else(std::env::temp_dir, Into::into);
    let payload = Bytes::from(vec![0xab; 100]);
    for (batch_size, with_hard_state) in [(1u64, true), (1, false), (64, true)] {
        let dir = tempfile::tempdir_in(&base)?;
        let mut store = RedbStore::open(dir.path().join("log.redb"))?;
        let mut hist = Histogram::<u64>::new(3)?;
        let started = Instant::now();
        for w in 0..WRITES {
            let first = w * batch_size + 1;
            let batch = WriteBatch {
                hard_state: with_hard_state.then_some(HardState {
                    term: 1,
                    vote: Some(1),
                    commit: first.saturating_sub(1),
                }),
                entries: (first..first + batch_size)
                    .map(|index| Entry {
                        term: 1,
                        index,
                        payload: EntryPayload::Normal(payload.clone()),
                    })
                    .collect(),
                snapshot: None,
            };
            let t = Instant::now();
            store.write(&batch)?;
            hist.record(t.elapsed().as_micros() as u64)?;
        }
        let total = started.elapsed();
        println!(
            "batch of {batch_size:>2}{}: {WRITES} writes in {:.2?}: p50 {} us, p90 {} us, p99 {} us, \
             max {} us; {:.0} entries/s; file {} KiB",
            if with_hard_state {
                " + hard state"
            } else {
                " entries only"
            },
            total,
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.9),
            hist.value_at_quantile(0.99),
            hist.max(),
            (WRITES * batch_size) as f64 / total.as_secs_f64(),
            std::fs::metadata(store.path())?.len() / 1024,
        );
        let path = store.path().to_path_buf();
        drop(store);
        let t = Instant::now();
        let mut store = RedbStore::open(&path)?;
        let opened = t.elapsed();
        let state = store.load()?;
        println!(
            "             reopen (integrity check) {opened:.2?}, load of {} entries {:.2?}",
            state.entries.len(),
            t.elapsed() - opened
        );
    }
    Ok(())
}
