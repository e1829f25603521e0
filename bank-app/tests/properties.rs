//! Property tests of the bank state machine against random logs.
//!
//! A log mixes every operation, amounts at and past the limits, retries, stale and
//! skipped sequence numbers, clients that forget their session, unsessioned requests,
//! garbage bytes and index gaps. The bank is checked against an independent, naive
//! model written straight from the rules (linear scans, `u128` arithmetic), and against
//! itself: two replicas, and a replica restored from a snapshot taken midway.

use std::collections::BTreeMap;

use bank_app::{AccountId, Bank, BankConfig, Op, Rejection, Request, Response, MAX_AMOUNT};
use bytes::Bytes;
use proptest::prelude::*;

const ACCOUNTS: u64 = 6;
const CLIENTS: u64 = 6;

// ---------------------------------------------------------------- the model

/// The bank's rules, written as plainly as possible.
struct Model {
    cfg: BankConfig,
    applied: u64,
    balances: BTreeMap<AccountId, u128>,
    /// client id -> (last seq, recorded response, last activity index)
    sessions: BTreeMap<u64, (u64, Response, u64)>,
    /// Opening balances + deposits - withdrawals, counted from applied operations only.
    ledger: i128,
}

impl Model {
    fn new(cfg: BankConfig) -> Self {
        Model {
            cfg,
            applied: 0,
            balances: BTreeMap::new(),
            sessions: BTreeMap::new(),
            ledger: 0,
        }
    }

    fn total(&self) -> u128 {
        self.balances.values().sum()
    }

    fn apply(&mut self, index: u64, cmd: &[u8]) -> Response {
        assert!(index > self.applied, "harness generates growing indices");
        self.applied = index;
        let ttl = self.cfg.session_ttl_entries;
        self.sessions.retain(|_, s| index - s.2 <= ttl);

        let req = match Request::decode(cmd) {
            Ok(r) => r,
            Err(bank_app::CodecError::UnsupportedVersion { found, .. }) => {
                return Response::Rejected(Rejection::UnsupportedVersion(found))
            }
            Err(_) => return Response::Rejected(Rejection::Malformed),
        };
        let Some(s) = req.session else {
            return self.exec(req.op);
        };
        if s.seq == 0 {
            return Response::Rejected(Rejection::InvalidSequence);
        }
        match self.sessions.get_mut(&s.client_id) {
            Some(entry) if s.seq == entry.0 => {
                entry.2 = index;
                entry.1
            }
            Some(entry) if s.seq < entry.0 => Response::Rejected(Rejection::StaleSequence {
                seq: s.seq,
                last_seq: entry.0,
            }),
            None if s.seq != 1 => Response::Rejected(Rejection::SessionExpired {
                client_id: s.client_id,
            }),
            _ => {
                let r = self.exec(req.op);
                self.sessions.insert(s.client_id, (s.seq, r, index));
                while self.sessions.len() > self.cfg.max_sessions {
                    let lru = self
                        .sessions
                        .iter()
                        .min_by_key(|(_, s)| s.2)
                        .map(|(&id, _)| id)
                        .expect("non-empty");
                    self.sessions.remove(&lru);
                }
                r
            }
        }
    }

    fn exec(&mut self, op: Op) -> Response {
        match self.try_exec(op) {
            Ok(r) => r,
            Err(e) => Response::Rejected(e),
        }
    }

    fn check(&self, amount: u64) -> Result<u128, Rejection> {
        if amount == 0 {
            Err(Rejection::InvalidAmount)
        } else if amount > self.cfg.max_amount {
            Err(Rejection::AmountTooLarge {
                max: self.cfg.max_amount,
            })
        } else {
            Ok(u128::from(amount))
        }
    }

    fn balance(&self, a: AccountId) -> Result<u128, Rejection> {
        self.balances.get(&a).copied().ok_or(Rejection::UnknownAccount(a))
    }

    fn try_exec(&mut self, op: Op) -> Result<Response, Rejection> {
        const MAX: u128 = u64::MAX as u128;
        let out = |v: u128| u64::try_from(v).expect("model keeps balances within u64");
        match op {
            Op::OpenAccount { account, initial } => {
                if initial > self.cfg.max_amount {
                    return Err(Rejection::AmountTooLarge {
                        max: self.cfg.max_amount,
                    });
                }
                if self.balances.contains_key(&account) {
                    return Err(Rejection::AccountExists(account));
                }
                if self.total() + u128::from(initial) > MAX {
                    return Err(Rejection::Overflow);
                }
                self.balances.insert(account, u128::from(initial));
                self.ledger += i128::from(initial);
                Ok(Response::Opened { balance: initial })
            }
            Op::Deposit { account, amount } => {
                let amt = self.check(amount)?;
                let bal = self.balance(account)?;
                if bal + amt > MAX || self.total() + amt > MAX {
                    return Err(Rejection::Overflow);
                }
                self.balances.insert(account, bal + amt);
                self.ledger += i128::from(amount);
                Ok(Response::Deposited {
                    balance: out(bal + amt),
                })
            }
            Op::Withdraw { account, amount } => {
                let amt = self.check(amount)?;
                let bal = self.balance(account)?;
                if bal < amt {
                    return Err(Rejection::InsufficientFunds {
                        available: out(bal),
                        requested: amount,
                    });
                }
                self.balances.insert(account, bal - amt);
                self.ledger -= i128::from(amount);
                Ok(Response::Withdrawn {
                    balance: out(bal - amt),
                })
            }
            Op::Transfer { from, to, amount } => {
                let amt = self.check(amount)?;
                if from == to {
                    return Err(Rejection::SameAccount);
                }
                let fb = self.balance(from)?;
                let tb = self.balance(to)?;
                if fb < amt {
                    return Err(Rejection::InsufficientFunds {
                        available: out(fb),
                        requested: amount,
                    });
                }
                if tb + amt > MAX {
                    return Err(Rejection::Overflow);
                }
                self.balances.insert(from, fb - amt);
                self.balances.insert(to, tb + amt);
                Ok(Response::Transferred {
                    from_balance: out(fb - amt),
                    to_balance: out(tb + amt),
                })
            }
        }
    }
}

// ---------------------------------------------------------------- log generation

#[derive(Debug, Clone)]
enum Action {
    /// The client's next request.
    Fresh(u64, Op),
    /// The client resends its last request unchanged (a timeout or redirect).
    Retry(u64),
    /// The client sends an older sequence number.
    Stale(u64, u64, Op),
    /// The client skips sequence numbers.
    Jump(u64, u64, Op),
    /// The client forgets its state and starts again at seq 1 with the same id.
    Restart(u64, Op),
    Unsessioned(Op),
    Garbage(Vec<u8>),
}

fn amount(max: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 1..1_000u64,
        1 => Just(0u64),
        1 => Just(max),
        1 => Just(max.saturating_add(1)),
        1 => any::<u64>(),
    ]
}

fn op(max: u64) -> impl Strategy<Value = Op> {
    let acct = 0..ACCOUNTS;
    prop_oneof![
        (acct.clone(), amount(max)).prop_map(|(account, initial)| Op::OpenAccount { account, initial }),
        (acct.clone(), amount(max)).prop_map(|(account, amount)| Op::Deposit { account, amount }),
        (acct.clone(), amount(max)).prop_map(|(account, amount)| Op::Withdraw { account, amount }),
        (acct.clone(), acct, amount(max)).prop_map(|(from, to, amount)| Op::Transfer { from, to, amount }),
    ]
}

fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..24),
        // Right version byte, random body: exercises the decoder proper.
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|mut v| {
            v.insert(0, bank_app::COMMAND_FORMAT_VERSION);
            v
        }),
    ]
}

fn action(max: u64) -> impl Strategy<Value = Action> {
    let client = 0..CLIENTS;
    prop_oneof![
        8 => (client.clone(), op(max)).prop_map(|(c, o)| Action::Fresh(c, o)),
        3 => client.clone().prop_map(Action::Retry),
        1 => (client.clone(), 0..3u64, op(max)).prop_map(|(c, b, o)| Action::Stale(c, b, o)),
        1 => (client.clone(), 1..3u64, op(max)).prop_map(|(c, a, o)| Action::Jump(c, a, o)),
        1 => (client, op(max)).prop_map(|(c, o)| Action::Restart(c, o)),
        2 => op(max).prop_map(Action::Unsessioned),
        1 => garbage().prop_map(Action::Garbage),
    ]
}

fn config() -> impl Strategy<Value = BankConfig> {
    (
        prop_oneof![1..40u64, Just(1_000_000u64)],
        prop_oneof![1..5usize, Just(100_000usize)],
        0..5usize,
        prop_oneof![Just(MAX_AMOUNT), Just(u64::MAX), 1..2_000u64],
    )
        .prop_map(
            |(session_ttl_entries, max_sessions, history_len, max_amount)| BankConfig {
                session_ttl_entries,
                max_sessions,
                history_len,
                max_amount,
            },
        )
}

/// A configuration and a log of `(index, command bytes)`.
fn scenario() -> impl Strategy<Value = (BankConfig, Vec<(u64, Bytes)>)> {
    config().prop_flat_map(|cfg| {
        let steps = proptest::collection::vec(
            (action(cfg.max_amount), prop_oneof![6 => Just(0u64), 1 => 1..5u64]),
            0..150,
        );
        (Just(cfg), steps.prop_map(to_log))
    })
}

/// Plays the clients: turns actions into sequence-numbered command bytes.
fn to_log(actions: Vec<(Action, u64)>) -> Vec<(u64, Bytes)> {
    // client id -> (next seq, last request sent)
    let mut clients: BTreeMap<u64, (u64, Option<Request>)> = BTreeMap::new();
    let mut index = 0;
    let mut log = Vec::with_capacity(actions.len());
    for (action, gap) in actions {
        index += 1 + gap;
        let next_seq = |c: u64| clients.get(&c).map_or(1, |s| s.0);
        // Either a new request that becomes the client's last (with the seq to use
        // after it), or bytes that leave the client's state alone.
        let (sent, bytes) = match action {
            Action::Fresh(c, op) => {
                let seq = next_seq(c);
                (Some((c, seq + 1)), Request::new(c, seq, op))
            }
            Action::Retry(c) => match clients.get(&c) {
                Some((_, Some(r))) => (None, *r),
                _ => {
                    let op = Op::Deposit {
                        account: 0,
                        amount: 1,
                    };
                    (Some((c, 2)), Request::new(c, 1, op))
                }
            },
            Action::Stale(c, back, op) => (None, Request::new(c, next_seq(c).saturating_sub(1 + back), op)),
            Action::Jump(c, ahead, op) => {
                let seq = next_seq(c) + ahead;
                (Some((c, seq + 1)), Request::new(c, seq, op))
            }
            Action::Restart(c, op) => (Some((c, 2)), Request::new(c, 1, op)),
            Action::Unsessioned(op) => (None, Request::unsessioned(op)),
            Action::Garbage(g) => {
                log.push((index, Bytes::from(g)));
                continue;
            }
        };
        if let Some((c, next)) = sent {
            clients.insert(c, (next, Some(bytes)));
        }
        log.push((index, bytes.encode()));
    }
    log
}

fn run(bank: &mut Bank, log: &[(u64, Bytes)]) -> Vec<Bytes> {
    log.iter().map(|(i, c)| bank.apply(*i, c)).collect()
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The bank answers every command exactly as the naive model does, keeps the same
    /// balances and sessions, and money is conserved: the sum of balances is always the
    /// opening balances plus deposits minus withdrawals of the operations really
    /// applied (retries answered from a session count once).
    #[test]
    fn bank_agrees_with_a_naive_model_and_conserves_money((cfg, log) in scenario()) {
        let mut bank = Bank::with_config(cfg).expect("generated config is valid");
        let mut model = Model::new(cfg);
        for (index, cmd) in &log {
            let got = Response::decode(&bank.apply(*index, cmd)).expect("decodable response");
            let want = model.apply(*index, cmd);
            prop_assert_eq!(got, want, "at index {}", index);

            let sum: u128 = bank.accounts().map(|(_, a)| u128::from(a.balance())).sum();
            prop_assert_eq!(sum, u128::from(bank.total_balance()));
            prop_assert_eq!(i128::try_from(sum).expect("fits"), model.ledger);
            for a in 0..ACCOUNTS {
                prop_assert_eq!(
                    bank.balance(a).map(u128::from),
                    model.balances.get(&a).copied(),
                    "account {} at index {}", a, index
                );
            }
            for c in 0..CLIENTS {
                prop_assert_eq!(
                    bank.session(c).map(|s| (s.last_seq, s.last_index)),
                    model.sessions.get(&c).map(|s| (s.0, s.2)),
                    "session {} at index {}", c, index
                );
            }
            prop_assert_eq!(bank.applied_index(), *index);
        }
    }

    /// Two replicas applying the same log end in equal states, answer with identical
    /// bytes at every step, and write identical snapshots.
    #[test]
    fn replicas_applying_the_same_log_are_identical((cfg, log) in scenario()) {
        let mut a = Bank::with_config(cfg).expect("valid");
        let mut b = Bank::with_config(cfg).expect("valid");
        let ra = run(&mut a, &log);
        let rb = run(&mut b, &log);
        prop_assert_eq!(ra, rb);
        prop_assert_eq!(a.snapshot(), b.snapshot());
        prop_assert_eq!(a, b);
    }

    /// Snapshotting at any point, restoring, and applying the rest of the log is
    /// indistinguishable from never having snapshotted.
    #[test]
    fn restoring_a_snapshot_midway_changes_nothing(
        (cfg, log) in scenario(),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(log.len() + 1);
        let mut straight = Bank::with_config(cfg).expect("valid");
        let expected = run(&mut straight, &log);

        let mut first = Bank::with_config(cfg).expect("valid");
        let mut got = run(&mut first, &log[..cut]);
        let mut restored = Bank::restore(&first.snapshot()).expect("own snapshot restores");
        prop_assert_eq!(&restored, &first);
        got.extend(run(&mut restored, &log[cut..]));

        prop_assert_eq!(got, expected);
        prop_assert_eq!(restored, straight);
    }

    /// Arbitrary bytes never panic `apply` or `restore`; bytes that do not decode as a
    /// command change no account and no session.
    #[test]
    fn arbitrary_bytes_are_harmless(
        junk in proptest::collection::vec(garbage(), 1..20),
    ) {
        let mut bank = Bank::new();
        bank.apply(1, &Request::new(1, 1, Op::OpenAccount { account: 0, initial: 10 }).encode());
        let mut index = 1;
        for g in &junk {
            index += 1;
            let accounts: Vec<_> = bank.accounts().map(|(id, a)| (id, a.clone())).collect();
            let sessions = bank.session_count();
            let r = Response::decode(&bank.apply(index, g)).expect("decodable response");
            if Request::decode(g).is_err() {
                prop_assert!(r.rejection().is_some());
                let after: Vec<_> = bank.accounts().map(|(id, a)| (id, a.clone())).collect();
                prop_assert_eq!(after, accounts);
                prop_assert_eq!(bank.session_count(), sessions);
            }
            let _ = Bank::restore(g);
        }
    }
}
