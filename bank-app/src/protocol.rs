//! The client channel's wire format: what bank clients and nodes say to each other.
//!
//! The channel is QUIC with ALPN [`ALPN`] and TLS 1.3 server authentication (see
//! [`crate::server`] and [`crate::client`]; the full description, with the reasons for
//! each choice, is in `docs/protocol.md`).
//!
//! **Streams.** A connection starts with one bidirectional *handshake stream*: the
//! client sends [`ClientFrame::Hello`] (carrying the optional shared token), the node
//! answers [`ServerFrame::Welcome`] or a [`ServerReply::Unauthorized`] /
//! [`ServerReply::BadRequest`] reply, after which it closes the connection. After a
//! welcome, every request travels on a bidirectional stream of its own: the client
//! writes one [`ClientFrame::Request`] and finishes its side, the node writes one
//! [`ServerFrame::Reply`] and finishes its side.
//!
//! **Frames.** Each frame is a 4-byte big-endian length (tokio-util's
//! `LengthDelimitedCodec`, at most the configured maximum frame length, default
//! [`DEFAULT_MAX_FRAME_LEN`]), then the body: one version byte
//! ([`PROTOCOL_VERSION`]) and the postcard encoding of the frame. Decoding is strict:
//! a wrong version, an undecodable body and trailing bytes are all errors.
//!
//! **Compatibility.** Within one protocol version enum variants may only be appended
//! and fields are never reordered, removed or retyped (postcard encodes variants by
//! position and fields by order). The embedded [`Request`], [`Response`],
//! [`Rejection`] and [`Txn`] follow the same rule (see [`crate::command`]).

use std::io;

use bytes::{Bytes, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::account::Txn;
use crate::command::{validate_amount, AccountId, Op, Rejection, Request, Response};

/// The ALPN protocol identifier of the client channel, version 1.
pub const ALPN: &[u8] = b"bank/1";

/// The version byte that starts every frame body.
pub const PROTOCOL_VERSION: u8 = 1;

/// The default largest frame, version byte included (1 MiB). Requests are a few dozen
/// bytes; the largest reply is a statement of [`MAX_STATEMENT_LIMIT`] lines.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 20;

/// The smallest maximum frame length a server or client accepts as configuration:
/// below it a full statement could not be sent.
pub const MIN_MAX_FRAME_LEN: usize = 64 * 1024;

/// The most statement lines one request may ask for; larger limits are capped.
pub const MAX_STATEMENT_LIMIT: u32 = 1000;

/// The TLS server name a client sends. Nodes do not look at it, and clients do not
/// verify it: they accept any certificate that chains to the cluster CA and names a
/// node (`node-<id>.raft`), because any node of the cluster may serve them.
pub const CLIENT_SERVER_NAME: &str = "bank.raft";

/// QUIC application error codes used when closing a connection or resetting a stream.
pub mod codes {
    /// Normal close (client done, or a finished exchange).
    pub const NORMAL: u32 = 0;
    /// The hello's token was missing or wrong, or a request came before the hello.
    pub const UNAUTHORIZED: u32 = 1;
    /// The peer sent data that is not a valid frame.
    pub const PROTOCOL: u32 = 2;
    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 3;
    /// The reply was dropped on purpose (fault injection, see
    /// [`ServerFaults`](crate::server::ServerFaults)).
    pub const DROPPED: u32 = 5;
}

/// The first frame of a connection, on its handshake stream.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The shared client token, if the cluster requires one. Ignored by a node that
    /// requires none.
    pub token: Option<String>,
    /// Free-form client software name and version, for logs.
    pub client: String,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("client", &self.client)
            .finish()
    }
}

/// The node's answer to an accepted [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The Raft node id of the node serving this connection.
    pub node_id: u64,
    /// Free-form server software name and version.
    pub server: String,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (Raft ReadIndex). Served
    /// by any node: a follower asks the leader for the read index.
    Linearizable,
    /// Whatever the serving node has applied; may lag behind acknowledged writes. Cheap
    /// and available without a leader. The reply says how far the node had applied.
    Stale,
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestKind {
    /// A replicated command. It must carry a session (`Request::session`) with a
    /// positive sequence number: that is what makes retries exactly-once.
    Write(Request),
    /// The balance of one account.
    Balance {
        /// The account.
        account: AccountId,
        /// How fresh.
        consistency: Consistency,
    },
    /// The most recent transactions of one account.
    Statement {
        /// The account.
        account: AccountId,
        /// At most this many lines (capped at [`MAX_STATEMENT_LIMIT`]).
        limit: u32,
        /// How fresh.
        consistency: Consistency,
    },
    /// Liveness check; answered by any node without touching Raft.
    Ping,
    /// The serving node's view of the cluster.
    Status,
}

impl RequestKind {
    /// A short label for logs and metrics (`deposit`, `balance`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            RequestKind::Write(r) => match r.op {
                Op::OpenAccount { .. } => "open",
                Op::Deposit { .. } => "deposit",
                Op::Withdraw { .. } => "withdraw",
                Op::Transfer { .. } => "transfer",
            },
            RequestKind::Balance { .. } => "balance",
            RequestKind::Statement { .. } => "statement",
            RequestKind::Ping => "ping",
            RequestKind::Status => "status",
        }
    }
}

/// One request, alone on its stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Chosen by the client and echoed in the reply, for correlation in logs (a stream
    /// carries one request, so it is not needed to match replies).
    pub id: u64,
    /// What to do.
    pub kind: RequestKind,
}

/// Every frame a client sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// First frame of a connection, on the handshake stream.
    Hello(Hello),
    /// The single frame of a request stream.
    Request(ClientRequest),
}

/// A node's role, as reported by [`NodeStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeRole {
    /// Follows a leader, or waits for one.
    Follower,
    /// Campaigning (pre-vote or vote).
    Candidate,
    /// Leads the cluster.
    Leader,
}

/// A member of the cluster and where clients reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its Raft node id.
    pub node_id: u64,
    /// Its client channel address as configured in the membership (may be empty).
    pub client_addr: String,
}

/// One node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node answering.
    pub node_id: u64,
    /// Its role.
    pub role: NodeRole,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader_id: Option<u64>,
    /// That leader's client address, if known.
    pub leader_client_addr: Option<String>,
    /// The highest index it knows committed.
    pub commit_index: u64,
    /// The highest index its bank has applied.
    pub applied_index: u64,
    /// Every member of the configuration in force.
    pub members: Vec<Member>,
}

/// The answer to one request (or to a hello that was refused).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerReply {
    /// The write was committed and applied; this is the state machine's answer, which
    /// may itself be a business rejection ([`Response::Rejected`]).
    Written {
        /// The log index of the command (for a retried request, of this retry's entry:
        /// the recorded response is returned, nothing is applied again).
        index: u64,
        /// The state machine's response.
        response: Response,
    },
    /// Answer to [`RequestKind::Balance`].
    Balance {
        /// The account.
        account: AccountId,
        /// Its balance in minor units.
        balance: u64,
        /// The serving node's applied index when it read.
        applied_index: u64,
    },
    /// Answer to [`RequestKind::Statement`].
    Statement {
        /// The account.
        account: AccountId,
        /// Its current balance.
        balance: u64,
        /// The most recent transactions, oldest first.
        txns: Vec<Txn>,
        /// The serving node's applied index when it read.
        applied_index: u64,
    },
    /// Answer to [`RequestKind::Ping`].
    Pong {
        /// The node answering.
        node_id: u64,
    },
    /// Answer to [`RequestKind::Status`].
    Status(NodeStatus),
    /// The request was refused for a business reason without reaching the log: a read
    /// of an unknown account, or a write whose amount the node rejects up front (the
    /// same rejection the state machine would give). Nothing changed.
    Rejected(Rejection),
    /// This node is not the leader; nothing was proposed. Retry at the leader.
    NotLeader {
        /// The leader, if this node knows it.
        leader_id: Option<u64>,
        /// Its client channel address, if known.
        leader_client_addr: Option<String>,
    },
    /// The request could not be served now. For a write, the outcome is unknown (it
    /// may still commit): retry the *same* request, with the same sequence number,
    /// which the session table makes exactly-once.
    Unavailable {
        /// Why, for humans.
        reason: String,
        /// Whether retrying (here or at another node) may succeed.
        retryable: bool,
    },
    /// The frame or the request is invalid: not decodable, unknown version or variant,
    /// too large, or a write without a valid session. Nothing changed; resending the
    /// same bytes will fail the same way.
    BadRequest {
        /// What is wrong, for humans.
        reason: String,
    },
    /// The hello's token is missing or wrong, or a request came before the hello. The
    /// node closes the connection after this reply.
    Unauthorized {
        /// Why, for humans.
        reason: String,
    },
}

impl ServerReply {
    /// A short label for metrics (`ok`, `rejected`, `not_leader`, ...).
    pub fn outcome_label(&self) -> &'static str {
        match self {
            ServerReply::Written {
                response: Response::Rejected(_),
                ..
            }
            | ServerReply::Rejected(_) => "rejected",
            ServerReply::Written { .. }
            | ServerReply::Balance { .. }
            | ServerReply::Statement { .. }
            | ServerReply::Pong { .. }
            | ServerReply::Status(_) => "ok",
            ServerReply::NotLeader { .. } => "not_leader",
            ServerReply::Unavailable { .. } => "unavailable",
            ServerReply::BadRequest { .. } => "bad_request",
            ServerReply::Unauthorized { .. } => "unauthorized",
        }
    }
}

/// Every frame a node sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The hello was accepted; requests may follow on new streams.
    Welcome(Welcome),
    /// The answer to the request on this stream (or to a refused hello).
    Reply {
        /// The request's id (0 if the request could not be decoded).
        id: u64,
        /// The answer.
        reply: ServerReply,
    },
}

/// Checks an operation's amounts the way the state machine will, so that a request
/// certain to be rejected for its amount is answered without a trip through the log.
///
/// Amounts must be in `1..=max_amount` (an opening balance in `0..=max_amount`) and a
/// transfer must name two different accounts. The state machine stays the authority:
/// it applies the same rules with its configured maximum.
pub fn validate_op(op: &Op, max_amount: u64) -> Result<(), Rejection> {
    match *op {
        Op::OpenAccount { initial, .. } => {
            if initial > max_amount {
                return Err(Rejection::AmountTooLarge { max: max_amount });
            }
        }
        Op::Deposit { amount, .. } | Op::Withdraw { amount, .. } => {
            validate_amount(i128::from(amount), max_amount)?;
        }
        Op::Transfer { from, to, amount } => {
            validate_amount(i128::from(amount), max_amount)?;
            if from == to {
                return Err(Rejection::SameAccount);
            }
        }
    }
    Ok(())
}

/// Why a frame could not be read, decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or was reset.
    #[error("stream: {0}")]
    Io(#[from] io::Error),
    /// The stream ended before a frame arrived.
    #[error("stream ended before a frame")]
    Closed,
    /// The length prefix announced more than the maximum frame length.
    #[error("frame longer than the maximum of {max} bytes")]
    TooLarge {
        /// The maximum in force.
        max: usize,
    },
    /// The frame body was empty (no version byte).
    #[error("empty frame")]
    Empty,
    /// The version byte is not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {found} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The body is not a valid postcard encoding of the expected frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The body decoded with bytes left over.
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
}

impl FrameError {
    /// Whether the error is a failure of the stream rather than bad data from the peer.
    pub fn is_io(&self) -> bool {
        matches!(self, FrameError::Io(_) | FrameError::Closed)
    }
}

/// The length-delimited codec of the channel: 4-byte big-endian length, at most
/// `max_frame_len` bytes of body.
pub fn length_codec(max_frame_len: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame_len)
        .new_codec()
}

/// Maps an error from [`length_codec`] to a [`FrameError`], recognising "too large".
pub fn map_codec_error(err: io::Error, max_frame_len: usize) -> FrameError {
    let too_large = err
        .get_ref()
        .is_some_and(|e| e.is::<tokio_util::codec::LengthDelimitedCodecError>());
    if too_large {
        FrameError::TooLarge { max: max_frame_len }
    } else {
        FrameError::Io(err)
    }
}

/// Encodes a frame body: the version byte, then postcard.
pub fn encode_body<T: Serialize>(frame: &T) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.push(PROTOCOL_VERSION);
    // Serializing plain derived data into a growable Vec cannot fail.
    match postcard::to_extend(frame, out) {
        Ok(out) => Bytes::from(out),
        Err(e) => unreachable!("postcard cannot fail on derived plain-data types: {e}"),
    }
}

/// Decodes a frame body strictly: right version, valid body, nothing left over.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (&version, rest) = body.split_first().ok_or(FrameError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion { found: version });
    }
    let (frame, trailing) =
        postcard::take_from_bytes(rest).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(FrameError::TrailingBytes(trailing.len()));
    }
    Ok(frame)
}

/// Encodes a whole frame, length prefix included, refusing bodies over the maximum.
pub fn encode_frame<T: Serialize>(frame: &T, max_frame_len: usize) -> Result<Bytes, FrameError> {
    let body = encode_body(frame);
    if body.len() > max_frame_len {
        return Err(FrameError::TooLarge { max: max_frame_len });
    }
    let mut out = BytesMut::with_capacity(4 + body.len());
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge { max: max_frame_len })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out.freeze())
}

/// Reads exactly one frame from `recv` and decodes it.
///
/// An oversized length prefix fails at once, without reading the body.
pub async fn read_frame<T, R>(recv: R, max_frame_len: usize) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: tokio::io::AsyncRead + Unpin,
{
    use futures_util::StreamExt;
    let mut reader = tokio_util::codec::FramedRead::new(recv, length_codec(max_frame_len));
    match reader.next().await {
        None => Err(FrameError::Closed),
        Some(Err(e)) => Err(map_codec_error(e, max_frame_len)),
        Some(Ok(body)) => decode_body(&body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::MAX_AMOUNT;

    #[test]
    fn validate_op_matches_the_state_machine_rules() {
        let ok = [
            Op::OpenAccount {
                account: 1,
                initial: 0,
            },
            Op::OpenAccount {
                account: 1,
                initial: MAX_AMOUNT,
            },
            Op::Deposit {
                account: 1,
                amount: 1,
            },
            Op::Transfer {
                from: 1,
                to: 2,
                amount: MAX_AMOUNT,
            },
        ];
        for op in ok {
            assert_eq!(validate_op(&op, MAX_AMOUNT), Ok(()), "{op:?}");
        }
        let too_large = Rejection::AmountTooLarge { max: MAX_AMOUNT };
        let bad = [
            (
                Op::OpenAccount {
                    account: 1,
                    initial: MAX_AMOUNT + 1,
                },
                too_large,
            ),
            (
                Op::Deposit {
                    account: 1,
                    amount: 0,
                },
                Rejection::InvalidAmount,
            ),
            (
                Op::Withdraw {
                    account: 1,
                    amount: MAX_AMOUNT + 1,
                },
                too_large,
            ),
            (
                Op::Transfer {
                    from: 1,
                    to: 2,
                    amount: 0,
                },
                Rejection::InvalidAmount,
            ),
            (
                Op::Transfer {
                    from: 3,
                    to: 3,
                    amount: 1,
                },
                Rejection::SameAccount,
            ),
        ];
        for (op, why) in bad {
            assert_eq!(validate_op(&op, MAX_AMOUNT), Err(why), "{op:?}");
        }
    }

    fn sample_requests() -> Vec<ClientFrame> {
        vec![
            ClientFrame::Hello(Hello {
                token: Some("secret".into()),
                client: "test".into(),
            }),
            ClientFrame::Request(ClientRequest {
                id: 7,
                kind: RequestKind::Write(Request::new(
                    1,
                    2,
                    Op::Transfer {
                        from: 1,
                        to: 2,
                        amount: 3,
                    },
                )),
            }),
            ClientFrame::Request(ClientRequest {
                id: u64::MAX,
                kind: RequestKind::Statement {
                    account: 9,
                    limit: 10,
                    consistency: Consistency::Stale,
                },
            }),
            ClientFrame::Request(ClientRequest {
                id: 0,
                kind: RequestKind::Status,
            }),
        ]
    }

    #[test]
    fn client_frames_round_trip() {
        for frame in sample_requests() {
            let body = encode_body(&frame);
            assert_eq!(body[0], PROTOCOL_VERSION);
            assert_eq!(decode_body::<ClientFrame>(&body).unwrap(), frame);
        }
    }

    #[test]
    fn server_frames_round_trip() {
        let frames = [
            ServerFrame::Welcome(Welcome {
                node_id: 3,
                server: "s".into(),
            }),
            ServerFrame::Reply {
                id: 1,
                reply: ServerReply::Written {
                    index: 5,
                    response: Response::Rejected(Rejection::InsufficientFunds {
                        available: 1,
                        requested: 2,
                    }),
                },
            },
            ServerFrame::Reply {
                id: 2,
                reply: ServerReply::NotLeader {
                    leader_id: Some(2),
                    leader_client_addr: Some("127.0.0.1:9".into()),
                },
            },
            ServerFrame::Reply {
                id: 3,
                reply: ServerReply::Status(NodeStatus {
                    node_id: 1,
                    role: NodeRole::Leader,
                    term: 4,
                    leader_id: Some(1),
                    leader_client_addr: None,
                    commit_index: 9,
                    applied_index: 9,
                    members: vec![Member {
                        node_id: 1,
                        client_addr: "a".into(),
                    }],
                }),
            },
        ];
        for frame in frames {
            assert_eq!(decode_body::<ServerFrame>(&encode_body(&frame)).unwrap(), frame);
        }
    }

    #[test]
    fn bad_bodies_are_typed_errors() {
        assert!(matches!(decode_body::<ClientFrame>(&[]), Err(FrameError::Empty)));
        assert!(matches!(
            decode_body::<ClientFrame>(&[9, 0]),
            Err(FrameError::UnsupportedVersion { found: 9 })
        ));
        // Variant 200 of ClientFrame does not exist.
        assert!(matches!(
            decode_body::<ClientFrame>(&[PROTOCOL_VERSION, 200]),
            Err(FrameError::Malformed(_))
        ));
        let mut body = encode_body(&sample_requests()[1]).to_vec();
        body.push(0);
        assert!(matches!(
            decode_body::<ClientFrame>(&body),
            Err(FrameError::TrailingBytes(1))
        ));
    }

    #[test]
    fn frames_over_the_maximum_are_refused_both_ways() {
        let big = ServerFrame::Reply {
            id: 1,
            reply: ServerReply::BadRequest {
                reason: "x".repeat(100),
            },
        };
        assert!(matches!(
            encode_frame(&big, 50),
            Err(FrameError::TooLarge { max: 50 })
        ));
        let bytes = encode_frame(&big, 1000).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let small = rt.block_on(read_frame::<ServerFrame, _>(&bytes[..], 50));
        assert!(matches!(small, Err(FrameError::TooLarge { max: 50 })));
        let ok = rt
            .block_on(read_frame::<ServerFrame, _>(&bytes[..], 1000))
            .unwrap();
        assert_eq!(ok, big);
        let closed = rt.block_on(read_frame::<ServerFrame, _>(&[][..], 1000));
        assert!(matches!(closed, Err(FrameError::Closed)));
        let truncated = rt.block_on(read_frame::<ServerFrame, _>(&bytes[..bytes.len() - 1], 1000));
        assert!(truncated.is_err_and(|e| e.is_io()));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode_body::<ClientFrame>(&bytes);
            let _ = decode_body::<ServerFrame>(&bytes);
        }
    }
}
