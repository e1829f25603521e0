//! The bank served by three real `gateway run` processes: typed client calls, a write
//! through a follower that is redirected to the leader, and bad input on the client
//! channel.

use std::time::Duration;

use bank_app::client::ClientError;
use bank_app::protocol::{RequestKind, ServerFrame, ServerReply, PROTOCOL_VERSION};
use bank_app::{Op, Rejection, Request, TxnKind};
use integration_tests::harness::{metric_sum, serial, Harness, SOON};
use integration_tests::raw::{framed, request_bytes, RawConn, RawError};
use integration_tests::wait::wait_until;

const RAW_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn three_nodes_serve_the_bank() {
    let _serial = serial();
    let mut h = Harness::start(3);
    let leader = h.wait_leader();
    let client = h.client(h.all_client_addrs());

    h.block_on(async {
        assert_eq!(client.open_account(1, 1_000).await, Ok(1_000));
        assert_eq!(client.open_account(2, 0).await, Ok(0));
        assert_eq!(client.open_account(3, 50).await, Ok(50));
        assert_eq!(
            client.open_account(1, 5).await,
            Err(ClientError::Rejected(Rejection::AccountExists(1)))
        );
        assert_eq!(client.deposit(2, 250).await, Ok(250));
        let t = client.transfer(1, 2, 400).await.expect("transfer");
        assert_eq!((t.from_balance, t.to_balance), (600, 650));
        assert_eq!(client.withdraw(3, 20).await, Ok(30));
        assert_eq!(
            client.transfer(3, 1, 31).await,
            Err(ClientError::Rejected(Rejection::InsufficientFunds {
                available: 30,
                requested: 31
            }))
        );
        assert_eq!(
            client.deposit(9, 1).await,
            Err(ClientError::Rejected(Rejection::UnknownAccount(9)))
        );
        assert_eq!(client.balance(1).await, Ok(600));
        assert_eq!(client.balance(2).await, Ok(650));
        assert_eq!(client.balance(3).await, Ok(30));
        let statement = client.statement(2, 10).await.expect("statement");
        let kinds: Vec<TxnKind> = statement.txns.iter().map(|t| t.kind).collect();
        assert_eq!(kinds, vec![TxnKind::Open, TxnKind::Deposit, TxnKind::TransferIn]);
        assert_eq!(statement.balance, 650);
        client.close().await;
    });

    // Every node applies the same log: once caught up, each one's own (stale) state
    // shows the same balances, and each serves linearizable reads too.
    let expected = [(1, 600), (2, 650), (3, 30)].into();
    h.assert_nodes_converged(&h.cluster.node_ids(), &expected);
    for id in h.cluster.node_ids() {
        let only_this_node = h.client(vec![h.client_addr(id)]);
        let b = h.block_on(only_this_node.balance(2));
        assert_eq!(b, Ok(650), "linearizable read served by node {id}");
        h.block_on(only_this_node.close());
    }
    let s = h.status(leader).expect("leader status");
    println!(
        "leader {leader}: term {} commit {} applied {}",
        s.term, s.commit_index, s.applied_index
    );
}

#[test]
fn a_write_to_a_follower_is_redirected() {
    let _serial = serial();
    let mut h = Harness::start(3);
    let leader = h.wait_leader();
    let follower = h.a_follower(leader);
    let leader_client = h.client_addr(leader).to_string();
    let ca = h.ca_pem().to_owned();

    // Raw: the follower answers a write with NotLeader, naming the leader and its
    // client address, and proposes nothing.
    let follower_addr = h.client_addr(follower);
    let reply = h.block_on(async {
        let (raw, welcome) = RawConn::connect(follower_addr, &ca, RAW_TIMEOUT)
            .await
            .expect("raw connect");
        assert!(
            matches!(welcome, ServerFrame::Welcome(ref w) if w.node_id == follower),
            "{welcome:?}"
        );
        let write = Request::new(
            0xfeed,
            1,
            Op::OpenAccount {
                account: 77,
                initial: 5,
            },
        );
        let reply = raw.request(1, RequestKind::Write(write)).await.expect("a reply");
        raw.close().await;
        reply
    });
    match reply {
        ServerFrame::Reply {
            id: 1,
            reply:
                ServerReply::NotLeader {
                    leader_id,
                    leader_client_addr,
                },
        } => {
            assert_eq!(leader_id, Some(leader));
            assert_eq!(leader_client_addr.as_deref(), Some(leader_client.as_str()));
        }
        other => panic!("expected NotLeader from follower {follower}, got {other:?}"),
    }

    // A client that knows only the follower's address writes successfully: it
    // follows the redirect to the leader.
    let metrics_before = h.metrics(follower).expect("metrics");
    let redirected_before = metric_sum(
        &metrics_before,
        "bank_requests_total",
        &[("outcome", "not_leader")],
    )
    .unwrap_or(0.0);
    let client = h.client(vec![follower_addr]);
    h.block_on(async {
        assert_eq!(client.open_account(1, 10).await, Ok(10));
        assert_eq!(client.deposit(1, 5).await, Ok(15));
        assert_eq!(client.balance(1).await, Ok(15));
        client.close().await;
    });
    // The follower's own counters show that it redirected the client's writes
    // rather than serving them (an open account and a deposit, at least the first
    // of which went to the follower).
    wait_until("the follower's metrics to count the redirect", SOON, || {
        let m = h.metrics(follower)?;
        let n = metric_sum(&m, "bank_requests_total", &[("outcome", "not_leader")]).unwrap_or(0.0);
        if n > redirected_before {
            Ok(())
        } else {
            Err(format!("not_leader count {n} (was {redirected_before})"))
        }
    });
    let expected = [(1, 15)].into();
    h.assert_nodes_converged(&h.cluster.node_ids(), &expected);
    // The write the follower refused was not applied anywhere.
    let client = h.client(h.all_client_addrs());
    assert_eq!(
        h.block_on(client.balance(77)),
        Err(ClientError::Rejected(Rejection::UnknownAccount(77)))
    );
    h.block_on(client.close());
}

fn bad_request(frame: &ServerFrame) -> Option<&str> {
    match frame {
        ServerFrame::Reply {
            reply: ServerReply::BadRequest { reason },
            ..
        } => Some(reason),
        _ => None,
    }
}

#[test]
fn bad_input_on_the_client_channel_gets_an_error_and_the_node_keeps_serving() {
    let _serial = serial();
    let mut h = Harness::start(3);
    let leader = h.wait_leader();
    let addr = h.client_addr(leader);
    let ca = h.ca_pem().to_owned();
    let opener = h.client(vec![addr]);
    assert_eq!(h.block_on(opener.open_account(1, 100)), Ok(100));
    h.block_on(opener.close());
    let log_before = h.acknowledged_index(1);

    h.block_on(async {
        let (raw, welcome) = RawConn::connect(addr, &ca, RAW_TIMEOUT)
            .await
            .expect("raw connect");
        assert!(matches!(welcome, ServerFrame::Welcome(_)), "{welcome:?}");

        // Garbage: text where a frame should be. Its first four bytes read as a
        // length far over the limit.
        let reply = raw.exchange(b"GET / HTTP/1.1\r\nHost: bank\r\n\r\n").await;
        match &reply {
            Ok(f) => assert!(bad_request(f).is_some(), "garbage: {f:?}"),
            Err(RawError::Frame(e)) if e.is_io() => {} // closed stream: also acceptable
            Err(e) => panic!("garbage: {e}"),
        }

        // Random bytes inside a well-formed length prefix: unknown version byte.
        let reply = raw
            .exchange(&framed(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x17]))
            .await
            .expect("reply");
        assert!(
            bad_request(&reply).is_some_and(|r| r.contains("version")),
            "junk body: {reply:?}"
        );

        // A huge frame length.
        let mut huge = 0x7fff_ffffu32.to_be_bytes().to_vec();
        huge.extend_from_slice(&[PROTOCOL_VERSION; 1024]);
        let reply = raw.exchange(&huge).await.expect("reply");
        assert!(
            bad_request(&reply).is_some_and(|r| r.contains("longer than the maximum")),
            "huge frame: {reply:?}"
        );

        // A future protocol version.
        let mut body = request_bytes(3, RequestKind::Ping).expect("encode")[4..].to_vec();
        body[0] = PROTOCOL_VERSION + 1;
        let reply = raw.exchange(&framed(&body)).await.expect("reply");
        assert!(
            bad_request(&reply).is_some_and(|r| r.contains("unsupported protocol version")),
            "unknown version: {reply:?}"
        );

        // An unknown operation: a request frame (variant 1) with id 4 whose kind is
        // variant 200, which no version of the protocol defines.
        let reply = raw
            .exchange(&framed(&[PROTOCOL_VERSION, 1, 4, 200, 1]))
            .await
            .expect("reply");
        assert!(
            bad_request(&reply).is_some_and(|r| r.contains("malformed")),
            "unknown operation: {reply:?}"
        );

        // A truncated frame: the stream ends inside the body. Nobody is left to answer:
        // the node drops the stream.
        let reply = raw.exchange(&[0, 0, 0, 100, PROTOCOL_VERSION, 1]).await;
        assert!(
            matches!(reply, Err(RawError::Frame(ref e)) if e.is_io())
                || reply.as_ref().is_ok_and(|f| bad_request(f).is_some()),
            "truncated: {reply:?}"
        );

        // An invalid amount: a business rejection, answered without touching the log.
        let zero = Request::new(
            0xbad,
            1,
            Op::Deposit {
                account: 1,
                amount: 0,
            },
        );
        let reply = raw.request(5, RequestKind::Write(zero)).await.expect("reply");
        assert_eq!(
            reply,
            ServerFrame::Reply {
                id: 5,
                reply: ServerReply::Rejected(Rejection::InvalidAmount)
            }
        );
        let same = Request::new(
            0xbad,
            2,
            Op::Transfer {
                from: 1,
                to: 1,
                amount: 3,
            },
        );
        let reply = raw.request(6, RequestKind::Write(same)).await.expect("reply");
        assert_eq!(
            reply,
            ServerFrame::Reply {
                id: 6,
                reply: ServerReply::Rejected(Rejection::SameAccount)
            }
        );

        // A write without a session cannot be made exactly-once: refused.
        let sessionless = Request::unsessioned(Op::Deposit {
            account: 1,
            amount: 1,
        });
        let reply = raw
            .request(7, RequestKind::Write(sessionless))
            .await
            .expect("reply");
        assert!(
            bad_request(&reply).is_some_and(|r| r.contains("session")),
            "{reply:?}"
        );

        // The same connection still serves good requests after all that.
        let reply = raw.request(8, RequestKind::Ping).await.expect("reply");
        assert_eq!(
            reply,
            ServerFrame::Reply {
                id: 8,
                reply: ServerReply::Pong { node_id: leader }
            }
        );
        assert!(
            raw.close_reason().is_none(),
            "the connection survived bad requests"
        );
        raw.close().await;

        // Garbage instead of a hello: an error reply, then the connection is closed.
        let raw = RawConn::dial(addr, &ca, RAW_TIMEOUT).await.expect("raw dial");
        let reply = raw
            .exchange(&framed(&[PROTOCOL_VERSION, 0xff, 0xff]))
            .await
            .expect("reply");
        assert!(bad_request(&reply).is_some(), "bad hello: {reply:?}");
        raw.close().await;
    });

    // Nothing of the above reached the log.
    let log_after = h.acknowledged_index(1);
    assert_eq!(log_after, log_before, "bad input must not be proposed");
    let m = h.metrics(leader).expect("metrics");
    let bad = metric_sum(&m, "bank_requests_total", &[("outcome", "bad_request")]).unwrap_or(0.0);
    assert!(bad >= 6.0, "bad requests counted: {bad}\n{m}");

    // And the node keeps serving a normal client.
    let client = h.client(vec![addr]);
    h.block_on(async {
        assert_eq!(client.deposit(1, 1).await, Ok(101));
        assert_eq!(client.balance(1).await, Ok(101));
        client.close().await;
    });
}
