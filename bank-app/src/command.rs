//! The replicated command encoding: what clients ask the bank to do and what it answers.
//!
//! A [`Request`] is what gets proposed to Raft and later handed to
//! [`Bank::apply`](crate::Bank::apply) on every node; a [`Response`] is what `apply`
//! returns. Both travel as a one-byte format version followed by the postcard encoding
//! of the value. The version byte lets a future release change the layout while still
//! recognising (and cleanly rejecting, or translating) bytes written by an older one.
//!
//! Compatibility rule for this format version: enum variants may only be *appended*
//! (postcard encodes a variant by its position), and existing fields are never
//! reordered, removed or retyped. Anything else needs a new version byte.
//!
//! Decoding is strict: a wrong version, an undecodable body and trailing bytes are all
//! errors. Accepting trailing garbage would let two byte strings mean the same command,
//! and the state machine must treat each committed byte string in exactly one way.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Identifies an account. Clients choose it when they open the account.
pub type AccountId = u64;

/// The format version byte that prefixes every encoded [`Request`] and [`Response`].
pub const COMMAND_FORMAT_VERSION: u8 = 1;

/// The largest amount a single operation may move, in minor units (10^15, that is ten
/// trillion in a currency with cents).
///
/// This is the default of [`BankConfig::max_amount`](crate::BankConfig::max_amount);
/// the protocol layer uses it to reject absurd amounts before they reach the log.
pub const MAX_AMOUNT: u64 = 1_000_000_000_000_000;

/// The client session a mutating request belongs to, for exactly-once execution.
///
/// A client picks a `client_id` that no other client uses (for example a random 64-bit
/// number) and numbers its requests `1, 2, 3, ...`. It keeps at most one request
/// outstanding and retries it with the *same* `seq` until it gets an answer; the state
/// machine then applies it at most once. See [`crate::session`] for the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionRef {
    /// The client's session identifier.
    pub client_id: u64,
    /// The request's sequence number within the session; starts at 1.
    pub seq: u64,
}

/// A mutating operation on the bank. Reads are not operations: they are served from
/// local state after a linearizable-read barrier (see [`Bank::balance`](crate::Bank::balance)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// Create `account` holding `initial` minor units (zero is allowed).
    OpenAccount {
        /// The new account's id; must not exist yet.
        account: AccountId,
        /// Opening balance in minor units.
        initial: u64,
    },
    /// Credit `amount` to `account`.
    Deposit {
        /// The account to credit.
        account: AccountId,
        /// Minor units to add; must be in `1..=max_amount`.
        amount: u64,
    },
    /// Debit `amount` from `account`, if it holds enough.
    Withdraw {
        /// The account to debit.
        account: AccountId,
        /// Minor units to remove; must be in `1..=max_amount`.
        amount: u64,
    },
    /// Move `amount` from `from` to `to`, atomically: both balances change or neither.
    Transfer {
        /// The account debited.
        from: AccountId,
        /// The account credited; must differ from `from`.
        to: AccountId,
        /// Minor units to move; must be in `1..=max_amount`.
        amount: u64,
    },
}

/// One replicated command: an operation, normally tagged with its client session.
///
/// A request without a session is applied every time it is committed, so a retried
/// sessionless request may be applied twice. Clients must always send a session; the
/// sessionless form exists for operator tooling and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Request {
    /// The client session, for exactly-once execution.
    pub session: Option<SessionRef>,
    /// What to do.
    pub op: Op,
}

impl Request {
    /// A request in session `client_id` with sequence number `seq`.
    pub fn new(client_id: u64, seq: u64, op: Op) -> Self {
        Request {
            session: Some(SessionRef { client_id, seq }),
            op,
        }
    }

    /// A request outside any session (no duplicate protection).
    pub fn unsessioned(op: Op) -> Self {
        Request { session: None, op }
    }

    /// The bytes to propose to Raft: the format version, then the postcard body.
    pub fn encode(&self) -> Bytes {
        encode_versioned(COMMAND_FORMAT_VERSION, self)
    }

    /// Parses bytes produced by [`Request::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Request, CodecError> {
        decode_versioned(COMMAND_FORMAT_VERSION, bytes)
    }
}

/// What [`Bank::apply`](crate::Bank::apply) answers. Balances are the values *after*
/// the operation, so a client learns the effect of its request without a second read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Response {
    /// The account was opened.
    Opened {
        /// Its balance, equal to the requested initial amount.
        balance: u64,
    },
    /// The deposit was applied.
    Deposited {
        /// The account's new balance.
        balance: u64,
    },
    /// The withdrawal was applied.
    Withdrawn {
        /// The account's new balance.
        balance: u64,
    },
    /// The transfer was applied.
    Transferred {
        /// The debited account's new balance.
        from_balance: u64,
        /// The credited account's new balance.
        to_balance: u64,
    },
    /// Nothing changed, for the given reason.
    Rejected(Rejection),
}

impl Response {
    /// The bytes `apply` returns: the format version, then the postcard body.
    pub fn encode(&self) -> Bytes {
        encode_versioned(COMMAND_FORMAT_VERSION, self)
    }

    /// Parses bytes returned by [`Bank::apply`](crate::Bank::apply).
    pub fn decode(bytes: &[u8]) -> Result<Response, CodecError> {
        decode_versioned(COMMAND_FORMAT_VERSION, bytes)
    }

    /// The rejection, if the request was rejected.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Response::Rejected(r) => Some(*r),
            _ => None,
        }
    }
}

/// Why a request changed nothing. These are deterministic business outcomes, identical
/// on every node, not system failures: a client that gets one must not retry the same
/// request expecting a different answer (except where noted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The account does not exist.
    #[error("unknown account {0}")]
    UnknownAccount(AccountId),
    /// An account with this id already exists.
    #[error("account {0} already exists")]
    AccountExists(AccountId),
    /// The debited account holds less than requested.
    #[error("insufficient funds: {available} available, {requested} requested")]
    InsufficientFunds {
        /// The account's balance.
        available: u64,
        /// The amount asked for.
        requested: u64,
    },
    /// The amount is zero (or, at the protocol layer, negative).
    #[error("amount must be positive")]
    InvalidAmount,
    /// The amount exceeds the single-operation maximum.
    #[error("amount exceeds the maximum of {max}")]
    AmountTooLarge {
        /// The maximum allowed amount.
        max: u64,
    },
    /// The operation would push a balance, or the bank's total, past `u64::MAX`.
    #[error("balance would overflow")]
    Overflow,
    /// A transfer names the same account on both sides.
    #[error("cannot transfer an account to itself")]
    SameAccount,
    /// The command bytes could not be decoded.
    #[error("malformed command")]
    Malformed,
    /// The command uses a format version this node does not understand.
    #[error("unsupported command format version {0}")]
    UnsupportedVersion(u8),
    /// The session is unknown (expired, evicted, or never started) and the request is
    /// not a session start (`seq == 1`). The request was not applied; the client must
    /// start a new session with a fresh client id. Whether an *earlier* request of the
    /// old session was applied cannot be told any more.
    #[error("session {client_id} expired")]
    SessionExpired {
        /// The session's client id.
        client_id: u64,
    },
    /// The sequence number is older than the session's last applied request, whose
    /// response is no longer kept. The request was not applied now; it was either
    /// applied earlier or superseded.
    #[error("stale sequence number {seq}, session already at {last_seq}")]
    StaleSequence {
        /// The sequence number received.
        seq: u64,
        /// The session's last applied sequence number.
        last_seq: u64,
    },
    /// Sequence numbers start at 1; 0 is never valid.
    #[error("sequence number 0 is invalid")]
    InvalidSequence,
    /// The log index is not beyond the last applied one: the entry was already applied
    /// (a driver bug). Nothing changed.
    #[error("log index {index} already applied (applied index {applied})")]
    AlreadyApplied {
        /// The index passed to `apply`.
        index: u64,
        /// The state machine's applied index.
        applied: u64,
    },
}

/// Checks an amount as a client protocol may send it (any integer type widens to
/// `i128`) and narrows it to the `u64` minor units the commands carry.
///
/// Zero and negative amounts are [`Rejection::InvalidAmount`]; amounts above `max` are
/// [`Rejection::AmountTooLarge`]. Use [`MAX_AMOUNT`] for `max` unless the cluster is
/// configured otherwise. The state machine applies the same rule with its configured
/// maximum, so a check here is an early answer, not the authority.
pub fn validate_amount(amount: i128, max: u64) -> Result<u64, Rejection> {
    if amount <= 0 {
        return Err(Rejection::InvalidAmount);
    }
    match u64::try_from(amount) {
        Ok(a) if a <= max => Ok(a),
        _ => Err(Rejection::AmountTooLarge { max }),
    }
}

/// Why bytes could not be decoded as a [`Request`] or [`Response`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// There were no bytes at all, not even a version.
    #[error("empty input")]
    Empty,
    /// The leading version byte is not one this build understands.
    #[error("unsupported format version {found} (expected {expected})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
        /// The version this build writes and reads.
        expected: u8,
    },
    /// The body is not a valid postcard encoding of the expected type.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// The body decoded but bytes were left over.
    #[error("{0} trailing bytes after the body")]
    TrailingBytes(usize),
}

/// Encodes `value` after a version byte.
pub(crate) fn encode_versioned<T: Serialize>(version: u8, value: &T) -> Bytes {
    let mut out = Vec::with_capacity(32);
    out.push(version);
    // Serializing into a growable Vec fails only if a `Serialize` impl reports a custom
    // error; the derived impls of this crate's plain data types never do.
    match postcard::to_extend(value, out) {
        Ok(out) => Bytes::from(out),
        Err(e) => unreachable!("postcard cannot fail on derived plain-data types: {e}"),
    }
}

/// Decodes a version byte and a postcard body, rejecting anything left over.
pub(crate) fn decode_versioned<T: serde::de::DeserializeOwned>(
    version: u8,
    bytes: &[u8],
) -> Result<T, CodecError> {
    let (&found, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if found != version {
        return Err(CodecError::UnsupportedVersion {
            found,
            expected: version,
        });
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_its_encoding() {
        let reqs = [
            Request::new(
                7,
                1,
                Op::OpenAccount {
                    account: 1,
                    initial: 0,
                },
            ),
            Request::new(
                u64::MAX,
                u64::MAX,
                Op::Deposit {
                    account: u64::MAX,
                    amount: MAX_AMOUNT,
                },
            ),
            Request::unsessioned(Op::Withdraw {
                account: 3,
                amount: 9,
            }),
            Request::new(
                1,
                2,
                Op::Transfer {
                    from: 1,
                    to: 2,
                    amount: 5,
                },
            ),
        ];
        for req in reqs {
            let bytes = req.encode();
            assert_eq!(bytes[0], COMMAND_FORMAT_VERSION);
            assert_eq!(Request::decode(&bytes), Ok(req));
        }
    }

    #[test]
    fn response_round_trips_through_its_encoding() {
        let resps = [
            Response::Opened { balance: 1 },
            Response::Transferred {
                from_balance: 0,
                to_balance: u64::MAX,
            },
            Response::Rejected(Rejection::InsufficientFunds {
                available: 1,
                requested: 2,
            }),
            Response::Rejected(Rejection::Malformed),
        ];
        for resp in resps {
            assert_eq!(Response::decode(&resp.encode()), Ok(resp));
        }
    }

    #[test]
    fn decoding_rejects_empty_input_wrong_version_garbage_and_trailing_bytes() {
        assert_eq!(Request::decode(&[]), Err(CodecError::Empty));
        let mut bytes = Request::unsessioned(Op::Deposit {
            account: 1,
            amount: 1,
        })
        .encode()
        .to_vec();
        bytes[0] = 9;
        assert_eq!(
            Request::decode(&bytes),
            Err(CodecError::UnsupportedVersion {
                found: 9,
                expected: COMMAND_FORMAT_VERSION
            })
        );
        assert!(matches!(
            Request::decode(&[COMMAND_FORMAT_VERSION, 0xff, 0xff]),
            Err(CodecError::Malformed(_))
        ));
        bytes[0] = COMMAND_FORMAT_VERSION;
        bytes.push(0);
        assert_eq!(Request::decode(&bytes), Err(CodecError::TrailingBytes(1)));
    }

    #[test]
    fn validate_amount_accepts_only_positive_amounts_up_to_the_maximum() {
        assert_eq!(validate_amount(1, MAX_AMOUNT), Ok(1));
        assert_eq!(
            validate_amount(i128::from(MAX_AMOUNT), MAX_AMOUNT),
            Ok(MAX_AMOUNT)
        );
        assert_eq!(validate_amount(0, MAX_AMOUNT), Err(Rejection::InvalidAmount));
        assert_eq!(validate_amount(-5, MAX_AMOUNT), Err(Rejection::InvalidAmount));
        assert_eq!(
            validate_amount(i128::from(MAX_AMOUNT) + 1, MAX_AMOUNT),
            Err(Rejection::AmountTooLarge { max: MAX_AMOUNT })
        );
        assert_eq!(
            validate_amount(i128::MAX, u64::MAX),
            Err(Rejection::AmountTooLarge { max: u64::MAX })
        );
        assert_eq!(validate_amount(i128::from(u64::MAX), u64::MAX), Ok(u64::MAX));
    }
}
