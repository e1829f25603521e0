//! Apply throughput, measured rather than asserted. Run with:
//!
//! ```text
//! cargo test --release -p bank-app --test throughput -- --ignored --nocapture
//! ```

use std::time::Instant;

use bank_app::{Bank, Op, Request, Response};
use bytes::Bytes;

const ACCOUNTS: u64 = 10_000;

/// A bank with `ACCOUNTS` funded accounts, and the next free log index.
fn funded_bank() -> (Bank, u64) {
    let mut bank = Bank::new();
    let mut index = 0;
    for account in 0..ACCOUNTS {
        index += 1;
        let open = Request::unsessioned(Op::OpenAccount {
            account,
            initial: 1_000_000_000,
        });
        bank.apply(index, &open.encode());
    }
    (bank, index + 1)
}

/// Pre-encodes `n` requests spread round-robin over `clients` sessions, so that the
/// timed loop measures `apply` alone.
fn log(n: u64, clients: u64, op: impl Fn(u64) -> Op) -> Vec<Bytes> {
    (0..n)
        .map(|i| Request::new(i % clients, i / clients + 1, op(i)).encode())
        .collect()
}

/// Applies `cmds` at consecutive indices and prints the rate. The timed loop includes
/// decoding each response to count rejections, so it slightly understates `apply`.
fn measure(name: &str, bank: &mut Bank, first_index: u64, cmds: &[Bytes]) {
    let start = Instant::now();
    let mut rejected = 0u64;
    for (i, cmd) in cmds.iter().enumerate() {
        let r = bank.apply(first_index + i as u64, cmd);
        if matches!(Response::decode(&r), Ok(Response::Rejected(_))) {
            rejected += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name:<44} {:>10.0} applies/s  ({} in {secs:.3}s, {rejected} rejected, {} sessions)",
        cmds.len() as f64 / secs,
        cmds.len(),
        bank.session_count(),
    );
    assert_eq!(rejected, 0);
}

#[test]
#[ignore = "measurement; run in release with --nocapture"]
fn apply_throughput() {
    let n = 1_000_000;

    let (mut bank, index) = funded_bank();
    let cmds = log(n, 1_000, |i| Op::Deposit {
        account: i % ACCOUNTS,
        amount: 1,
    });
    measure("deposits, 1k sessions", &mut bank, index, &cmds);
    let total = bank.total_balance();
    // Retries after a timeout: each session's last request again, answered from the
    // session without re-applying.
    let retries: Vec<Bytes> = cmds[cmds.len() - 1_000..].to_vec();
    let retries: Vec<Bytes> = retries.iter().cycle().take(n as usize).cloned().collect();
    measure(
        "retries answered from sessions, 1k sessions",
        &mut bank,
        index + n,
        &retries,
    );
    assert_eq!(bank.total_balance(), total, "retries applied nothing");

    let (mut bank, index) = funded_bank();
    let cmds = log(n, 1_000, |i| Op::Transfer {
        from: i % ACCOUNTS,
        to: (i * 7 + 1) % ACCOUNTS,
        amount: 1,
    });
    measure("transfers, 1k sessions", &mut bank, index, &cmds);

    let (mut bank, index) = funded_bank();
    let cmds = log(n, 100_000, |i| Op::Transfer {
        from: i % ACCOUNTS,
        to: (i * 7 + 1) % ACCOUNTS,
        amount: 1,
    });
    measure("transfers, 100k sessions", &mut bank, index, &cmds);

    let start = Instant::now();
    let snap = bank.snapshot();
    let snap_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let restored = Bank::restore(&snap).expect("restores");
    let restore_secs = start.elapsed().as_secs_f64();
    assert_eq!(restored, bank);
    println!(
        "snapshot of {ACCOUNTS} accounts x 100 txns + 100k sessions: {} bytes, \
         written in {snap_secs:.3}s, restored in {restore_secs:.3}s",
        snap.len()
    );
}
