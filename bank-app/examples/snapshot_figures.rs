//! Snapshot figures for a large bank: how long capturing, encoding, writing, loading
//! and restoring a snapshot of N accounts take, how big it is, and how long a node
//! takes from process start to serving when it restarts from that snapshot plus a log
//! tail.
//!
//! Run: `cargo run -p bank-app --release --example snapshot_figures -- [ACCOUNTS] [SESSIONS] [TAIL]`
//! (defaults: 1,000,000 accounts, 100,000 client sessions (the default session limit),
//! a log tail of 10,000 deposits). Files go to a temporary directory that is removed
//! at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bank_app::{Bank, BankReplica, Op, Request};
use bytes::Bytes;
use raft::core::{Entry, EntryPayload, HardState, Membership, SnapshotMeta};
use raft::sidecar::{Sidecar, SidecarConfig, StateMachine};
use raft::storage::{LogStore, RedbStore, SnapshotStore, WriteBatch};
use raft::transport::MemNetwork;
use tokio::sync::mpsc;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let accounts: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let sessions: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100_000);
    let tail: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    println!(
        "snapshot figures: {accounts} accounts, {sessions} sessions, log tail of {tail} deposits, files in {}",
        dir.path().display()
    );

    // The bank after `accounts` OpenAccount commands at indexes 1..=accounts.
    let started = Instant::now();
    let mut replica = BankReplica::new(Bank::new());
    for i in 1..=accounts {
        let cmd = Request::unsessioned(Op::OpenAccount {
            account: i,
            initial: 1_000,
        })
        .encode();
        replica.apply(i, &cmd);
    }
    // One deposit per client session, each leaving a session with its response.
    for c in 1..=sessions {
        let cmd = Request::new(
            c,
            1,
            Op::Deposit {
                account: 1 + (c % accounts.max(1)),
                amount: 1,
            },
        )
        .encode();
        replica.apply(accounts + c, &cmd);
    }
    let snap_index = accounts + sessions;
    println!("{:<34} {}", "build (apply commands)", ms(started.elapsed()));

    let started = Instant::now();
    let capture = replica.snapshot();
    let capture_time = started.elapsed();
    println!(
        "{:<34} {}   (on the driver; proposals wait)",
        "capture (copy-on-write clone)",
        ms(capture_time)
    );
    // What the capture costs the applies that follow it: each first write to a shard
    // the capture still shares copies that shard.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 1..=1_000u64 {
        let cmd = Request::unsessioned(Op::Deposit {
            account: 1 + (i * 7919) % accounts.max(1),
            amount: 1,
        })
        .encode();
        let one = Instant::now();
        replica.apply(snap_index + i, &cmd);
        slowest = slowest.max(one.elapsed());
    }
    println!(
        "{:<34} {}   (1,000 deposits while the capture is alive; slowest {})",
        "applies after the capture",
        ms(started.elapsed()),
        ms(slowest)
    );

    let started = Instant::now();
    let image = capture();
    println!(
        "{:<34} {}   (blocking thread)",
        "encode image",
        ms(started.elapsed())
    );
    println!(
        "{:<34} {} ({} bytes/account)",
        "image size",
        mib(image.len() as u64),
        image.len() as u64 / accounts.max(1)
    );

    let membership = Membership::with_voters([1]);
    let meta = SnapshotMeta {
        index: snap_index,
        term: 1,
        membership: membership.clone(),
    };
    let snap_dir = dir.path().join("snapshots");
    let store = SnapshotStore::open_dir(&snap_dir)?;
    let started = Instant::now();
    let info = store.save(&meta, &image)?;
    println!(
        "{:<34} {}   (checksum, fsync, rename, dir fsync)",
        "write file",
        ms(started.elapsed())
    );
    let file_len = std::fs::metadata(snap_dir.join(info.name()))?.len();
    println!("{:<34} {}", "file size", mib(file_len));

    let started = Instant::now();
    let loaded = store.load(&info)?;
    println!("{:<34} {}", "load and verify file", ms(started.elapsed()));
    let started = Instant::now();
    let restored = Bank::restore(&loaded.image)?;
    println!("{:<34} {}", "restore bank from image", ms(started.elapsed()));
    anyhow::ensure!(
        restored.account_count() as u64 == accounts,
        "restored bank lost accounts"
    );
    drop((restored, loaded, image, replica));

    // A node's disk as it would be after compacting at `accounts`: the snapshot file,
    // and a redb log holding the snapshot point and a tail of committed deposits.
    let log_path = dir.path().join("raft.redb");
    {
        let mut log = RedbStore::open(&log_path)?;
        let entries: Vec<Entry> = (1..=tail)
            .map(|i| Entry {
                term: 1,
                index: snap_index + i,
                payload: EntryPayload::Normal(
                    Request::unsessioned(Op::Deposit {
                        account: 1 + (i % accounts.max(1)),
                        amount: 1,
                    })
                    .encode(),
                ),
            })
            .collect();
        log.write(&WriteBatch {
            hard_state: Some(HardState {
                term: 1,
                vote: Some(1),
                commit: snap_index + tail,
            }),
            entries,
            snapshot: Some(meta),
        })?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let started = Instant::now();
        let log = RedbStore::open(&log_path)?;
        let mut cfg = SidecarConfig::new(1);
        cfg.snapshot_dir = Some(snap_dir);
        cfg.bootstrap = Some(membership);
        let net = MemNetwork::new();
        let (tx, rx) = mpsc::channel(1024);
        let transport = Arc::new(net.join(1, tx));
        let bank = BankReplica::new(Bank::new());
        let handle = Sidecar::start(cfg, log, transport, rx, bank.clone()).await?;
        let start_time = started.elapsed();
        println!(
            "{:<34} {}   (open log, load + verify + restore snapshot)",
            "restart: sidecar started",
            ms(start_time)
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        while handle.applied_index() < snap_index + tail {
            anyhow::ensure!(Instant::now() < deadline, "the tail was not replayed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        println!(
            "{:<34} {}   (+ replay of {tail} entries)",
            "restart: tail applied",
            ms(started.elapsed())
        );
        loop {
            anyhow::ensure!(Instant::now() < deadline, "the node never served a read");
            if handle.linearizable_read().await.is_ok() {
                break;
            }
        }
        println!(
            "{:<34} {}   (+ election timeout, 300-600 ms by default)",
            "restart: serving reads",
            ms(started.elapsed())
        );
        let r = handle
            .propose(Bytes::from(
                Request::unsessioned(Op::Deposit {
                    account: 1,
                    amount: 1,
                })
                .encode()
                .to_vec(),
            ))
            .await;
        anyhow::ensure!(r.is_ok(), "the node does not accept writes: {r:?}");
        println!("{:<34} {}", "restart: first write applied", ms(started.elapsed()));
        anyhow::ensure!(
            bank.read().account_count() as u64 == accounts,
            "accounts lost on restart"
        );
        handle.shutdown().await;
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
