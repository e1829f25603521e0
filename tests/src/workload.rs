//! A bank workload that records every outcome, and the model that checks final
//! balances against it.
//!
//! Each worker owns one [`Client`] (one exactly-once session) and submits deposits,
//! withdrawals and transfers between a shared set of accounts, one at a time, until
//! told to stop. Every operation is recorded with its outcome:
//!
//! * **applied**: acknowledged by the cluster. It must be reflected in the final
//!   balances.
//! * **rejected**: a business rejection (insufficient funds). It changed nothing.
//! * **unknown**: the client gave up (unavailable, timeout, transport): it may or may
//!   not have been applied. Tests give clients a long total timeout so that the client
//!   library's same-sequence retries resolve writes across a failover and this stays
//!   empty; if it is not, [`History::check`] accepts exactly the final states that some
//!   subset of the unknown operations explains.
//! * **failed**: any other error (protocol, TLS, ...), which a test treats as a bug.
//!
//! Because deposits, withdrawals and transfers commute in their effect on balances,
//! the final balances are the opening balances plus the effects of the applied
//! operations, whatever order they were applied in.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bank_app::client::{Client, ClientError};
use bank_app::{AccountId, Op, Rejection};

/// Most unknown outcomes [`History::check`] will search subsets of.
pub const MAX_UNKNOWN_SEARCH: usize = 16;

/// How one operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged: applied exactly once.
    Applied,
    /// Refused for a business reason: nothing changed.
    Rejected(Rejection),
    /// The client gave up; it may have been applied.
    Unknown(String),
    /// Any other error.
    Failed(String),
}

/// One operation of the history.
#[derive(Debug, Clone)]
pub struct OpRecord {
    /// The worker that ran it.
    pub worker: usize,
    /// What it asked for.
    pub op: Op,
    /// When the call started.
    pub started: Instant,
    /// When the call returned.
    pub finished: Instant,
    /// How it ended.
    pub outcome: Outcome,
}

impl OpRecord {
    /// How long the call took, retries included.
    pub fn latency(&self) -> Duration {
        self.finished.saturating_duration_since(self.started)
    }
}

/// A small deterministic generator (SplitMix64), so each worker's choices follow its
/// seed.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// A random operation over `accounts` (at least two).
pub fn random_op(rng: &mut SplitMix, accounts: &[AccountId]) -> Op {
    let pick = |rng: &mut SplitMix| accounts[rng.range(0, accounts.len() as u64 - 1) as usize];
    match rng.range(0, 99) {
        0..=54 => {
            let from = pick(rng);
            let mut to = pick(rng);
            while to == from {
                to = pick(rng);
            }
            Op::Transfer {
                from,
                to,
                amount: rng.range(1, 100),
            }
        }
        55..=84 => Op::Deposit {
            account: pick(rng),
            amount: rng.range(1, 100),
        },
        _ => Op::Withdraw {
            account: pick(rng),
            amount: rng.range(1, 100),
        },
    }
}

/// The change `op` makes to each account it touches, if applied.
pub fn effect(op: &Op) -> Vec<(AccountId, i128)> {
    match *op {
        Op::OpenAccount { account, initial } => vec![(account, i128::from(initial))],
        Op::Deposit { account, amount } => vec![(account, i128::from(amount))],
        Op::Withdraw { account, amount } => vec![(account, -i128::from(amount))],
        Op::Transfer { from, to, amount } => vec![(from, -i128::from(amount)), (to, i128::from(amount))],
    }
}

/// Workers running on a tokio runtime. See the module docs.
pub struct Workload {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<OpRecord>>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("workers", &self.handles.len())
            .field("ops", &self.lock().len())
            .finish()
    }
}

impl Workload {
    /// Starts one worker per client on `rt`. Worker `i` draws its operations from
    /// `seed + i`.
    pub fn start(
        rt: &tokio::runtime::Handle,
        clients: Vec<Client>,
        accounts: Vec<AccountId>,
        seed: u64,
    ) -> Workload {
        assert!(
            accounts.len() >= 2,
            "a workload needs two accounts to transfer between"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handles = clients
            .into_iter()
            .enumerate()
            .map(|(worker, client)| {
                let stop = stop.clone();
                let log = log.clone();
                let accounts = accounts.clone();
                rt.spawn(async move {
                    let mut rng = SplitMix::new(seed.wrapping_add(worker as u64));
                    while !stop.load(Ordering::SeqCst) {
                        let op = random_op(&mut rng, &accounts);
                        let started = Instant::now();
                        let result = client.submit(op).await;
                        let finished = Instant::now();
                        let outcome = match result {
                            Ok(_) => Outcome::Applied,
                            Err(ClientError::Rejected(r)) => Outcome::Rejected(r),
                            Err(e) if e.outcome_unknown() => Outcome::Unknown(e.to_string()),
                            Err(e) => Outcome::Failed(e.to_string()),
                        };
                        log.lock().unwrap_or_else(|e| e.into_inner()).push(OpRecord {
                            worker,
                            op,
                            started,
                            finished,
                            outcome,
                        });
                    }
                    client.close().await;
                })
            })
            .collect();
        Workload { stop, log, handles }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OpRecord>> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Operations applied so far.
    pub fn applied(&self) -> usize {
        self.lock()
            .iter()
            .filter(|r| r.outcome == Outcome::Applied)
            .count()
    }

    /// Operations applied so far that started at or after `t`.
    pub fn applied_started_after(&self, t: Instant) -> usize {
        self.lock()
            .iter()
            .filter(|r| r.outcome == Outcome::Applied && r.started >= t)
            .count()
    }

    /// Waits until at least `n` operations that started at or after `since` (any
    /// operation if `None`) have been applied; panics after `timeout`. Returns when.
    pub fn wait_applied(&self, n: usize, since: Option<Instant>, timeout: Duration) -> Instant {
        let what = match since {
            Some(_) => format!("{n} operations applied since the fault"),
            None => format!("{n} operations applied"),
        };
        crate::wait::wait_until(&what, timeout, || {
            let got = match since {
                Some(t) => self.applied_started_after(t),
                None => self.applied(),
            };
            if got >= n {
                Ok(Instant::now())
            } else {
                Err(format!("{got} so far"))
            }
        })
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> History {
        History {
            records: self.lock().clone(),
        }
    }

    /// Tells the workers to stop, waits (up to `timeout`) for their calls in flight to
    /// end, and returns the history. Panics if a worker does not finish in time.
    pub fn stop(self, rt: &tokio::runtime::Runtime, timeout: Duration) -> History {
        self.stop.store(true, Ordering::SeqCst);
        let handles = self.handles;
        rt.block_on(async {
            let all = async {
                for h in handles {
                    if let Err(e) = h.await {
                        panic!("a workload worker panicked: {e}");
                    }
                }
            };
            if tokio::time::timeout(timeout, all).await.is_err() {
                panic!("the workload did not stop within {timeout:?}");
            }
        });
        let records = std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()));
        History { records }
    }
}

/// Everything a workload did.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The operations, in the order they finished.
    pub records: Vec<OpRecord>,
}

impl History {
    fn with(&self, pred: impl Fn(&Outcome) -> bool) -> Vec<&OpRecord> {
        self.records.iter().filter(|r| pred(&r.outcome)).collect()
    }

    /// Acknowledged operations.
    pub fn applied(&self) -> Vec<&OpRecord> {
        self.with(|o| *o == Outcome::Applied)
    }

    /// Operations with a business rejection.
    pub fn rejected(&self) -> Vec<&OpRecord> {
        self.with(|o| matches!(o, Outcome::Rejected(_)))
    }

    /// Operations whose outcome is unknown.
    pub fn unknown(&self) -> Vec<&OpRecord> {
        self.with(|o| matches!(o, Outcome::Unknown(_)))
    }

    /// Operations that failed with an unexpected error.
    pub fn failed(&self) -> Vec<&OpRecord> {
        self.with(|o| matches!(o, Outcome::Failed(_)))
    }

    /// Rejections other than insufficient funds (which the workload causes on
    /// purpose); there should be none.
    pub fn unexpected_rejections(&self) -> Vec<&OpRecord> {
        self.with(|o| matches!(o, Outcome::Rejected(r) if !matches!(r, Rejection::InsufficientFunds { .. })))
    }

    /// The balances the acknowledged operations imply, from `initial`.
    pub fn expected(&self, initial: &BTreeMap<AccountId, u64>) -> BTreeMap<AccountId, i128> {
        let mut out: BTreeMap<AccountId, i128> = initial.iter().map(|(&a, &b)| (a, i128::from(b))).collect();
        for r in self.applied() {
            for (a, d) in effect(&r.op) {
                *out.entry(a).or_insert(0) += d;
            }
        }
        out
    }

    /// Checks `observed` final balances: exactly the acknowledged operations are
    /// reflected, plus some subset of the unknown ones (none, normally). Returns how
    /// many unknown operations the observed state says were applied.
    pub fn check(
        &self,
        initial: &BTreeMap<AccountId, u64>,
        observed: &BTreeMap<AccountId, u64>,
    ) -> Result<usize, String> {
        let expected = self.expected(initial);
        let observed: BTreeMap<AccountId, i128> =
            observed.iter().map(|(&a, &b)| (a, i128::from(b))).collect();
        if expected.keys().ne(observed.keys()) {
            return Err(format!(
                "accounts differ: expected {:?}, observed {:?}",
                expected.keys(),
                observed.keys()
            ));
        }
        let gap: BTreeMap<AccountId, i128> = expected.iter().map(|(a, e)| (*a, observed[a] - e)).collect();
        if gap.values().all(|&d| d == 0) {
            return Ok(0);
        }
        let unknown = self.unknown();
        if unknown.len() > MAX_UNKNOWN_SEARCH {
            return Err(format!(
                "balances differ from the acknowledged operations by {gap:?}, and {} unknown outcomes are \
                 too many to search",
                unknown.len()
            ));
        }
        for mask in 1u32..(1u32 << unknown.len()) {
            let mut sum: BTreeMap<AccountId, i128> = gap.keys().map(|&a| (a, 0)).collect();
            for (i, r) in unknown.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    for (a, d) in effect(&r.op) {
                        *sum.entry(a).or_insert(0) += d;
                    }
                }
            }
            if sum == gap {
                return Ok(mask.count_ones() as usize);
            }
        }
        Err(format!(
            "balances differ from the acknowledged operations by {gap:?} (observed {observed:?}, expected \
             {expected:?}), and no subset of the {} unknown outcomes explains it",
            unknown.len()
        ))
    }

    /// The first acknowledged operation that started at or after `t`.
    pub fn first_applied_started_after(&self, t: Instant) -> Option<&OpRecord> {
        self.applied()
            .into_iter()
            .filter(|r| r.started >= t)
            .min_by_key(|r| r.finished)
    }

    /// The longest call among acknowledged operations.
    pub fn max_latency(&self) -> Duration {
        self.applied()
            .iter()
            .map(|r| r.latency())
            .max()
            .unwrap_or_default()
    }

    /// One line for the test output.
    pub fn summary(&self) -> String {
        format!(
            "{} operations: {} applied, {} rejected, {} unknown, {} failed; slowest acknowledged call {:?}",
            self.records.len(),
            self.applied().len(),
            self.rejected().len(),
            self.unknown().len(),
            self.failed().len(),
            self.max_latency()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: Op, outcome: Outcome) -> OpRecord {
        let now = Instant::now();
        OpRecord {
            worker: 0,
            op,
            started: now,
            finished: now,
            outcome,
        }
    }

    #[test]
    fn the_model_accepts_exactly_the_acknowledged_effects() {
        let initial: BTreeMap<AccountId, u64> = [(1, 100), (2, 100)].into();
        let h = History {
            records: vec![
                rec(
                    Op::Transfer {
                        from: 1,
                        to: 2,
                        amount: 30,
                    },
                    Outcome::Applied,
                ),
                rec(
                    Op::Deposit {
                        account: 1,
                        amount: 5,
                    },
                    Outcome::Applied,
                ),
                rec(
                    Op::Withdraw {
                        account: 2,
                        amount: 500,
                    },
                    Outcome::Rejected(Rejection::InsufficientFunds {
                        available: 130,
                        requested: 500,
                    }),
                ),
            ],
        };
        assert_eq!(h.check(&initial, &[(1, 75), (2, 130)].into()), Ok(0));
        assert!(h.check(&initial, &[(1, 70), (2, 130)].into()).is_err());
        assert!(h.check(&initial, &[(1, 75)].into()).is_err());
    }

    #[test]
    fn unknown_outcomes_may_explain_a_difference() {
        let initial: BTreeMap<AccountId, u64> = [(1, 100), (2, 100)].into();
        let h = History {
            records: vec![
                rec(
                    Op::Deposit {
                        account: 1,
                        amount: 7,
                    },
                    Outcome::Unknown("timeout".into()),
                ),
                rec(
                    Op::Deposit {
                        account: 2,
                        amount: 9,
                    },
                    Outcome::Unknown("timeout".into()),
                ),
            ],
        };
        assert_eq!(h.check(&initial, &[(1, 100), (2, 100)].into()), Ok(0));
        assert_eq!(h.check(&initial, &[(1, 107), (2, 100)].into()), Ok(1));
        assert_eq!(h.check(&initial, &[(1, 107), (2, 109)].into()), Ok(2));
        assert!(h.check(&initial, &[(1, 108), (2, 100)].into()).is_err());
    }

    #[test]
    fn random_ops_are_valid() {
        let mut rng = SplitMix::new(1);
        for _ in 0..1000 {
            let op = random_op(&mut rng, &[1, 2, 3]);
            assert_eq!(bank_app::protocol::validate_op(&op, bank_app::MAX_AMOUNT), Ok(()));
        }
    }
}
