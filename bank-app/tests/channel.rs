//! The client channel under bad input and bad credentials: garbage, oversized frames,
//! unknown versions and variants, invalid requests, missing hellos, wrong tokens and
//! untrusted certificates. Each gets an error reply (or a refused handshake), nothing
//! reaches the log, and the node keeps serving everyone else.

mod common;

use std::time::Duration;

use bank_app::client::{Client, ClientError};
use bank_app::protocol::{
    encode_body, encode_frame, ClientFrame, ClientRequest, FrameError, RequestKind, ServerFrame, ServerReply,
    PROTOCOL_VERSION,
};
use bank_app::server::{BankServer, ServerConfig, ServerError};
use bank_app::{Bank, BankReplica, Op, Rejection, Request};
use common::{framed, raw_connect, raw_dial, raw_exchange, TestCluster, T};
use raft::transport::certs::ClusterCa;

fn bad_request(frame: &ServerFrame) -> Option<&str> {
    match frame {
        ServerFrame::Reply {
            reply: ServerReply::BadRequest { reason },
            ..
        } => Some(reason),
        _ => None,
    }
}

fn request(id: u64, kind: RequestKind) -> Vec<u8> {
    encode_frame(&ClientFrame::Request(ClientRequest { id, kind }), 1 << 20)
        .expect("encode")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_error_reply_and_the_node_keeps_serving() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let node = cluster.node(leader);
    let (_ep, conn, hello) = raw_connect(node.addr, cluster.ca.cert_pem(), None).await;
    assert!(matches!(hello, ServerFrame::Welcome(_)));
    let applied_before = node.bank.read().applied_index();

    // Random garbage inside a well-formed length prefix.
    let reply = raw_exchange(&conn, &framed(&[0xde, 0xad, 0xbe, 0xef, 0x00]))
        .await
        .unwrap();
    assert!(
        bad_request(&reply).is_some_and(|r| r.contains("version 222")),
        "{reply:?}"
    );
    // The right version, then nonsense.
    let reply = raw_exchange(&conn, &framed(&[PROTOCOL_VERSION, 0xff, 0xff, 0xff]))
        .await
        .unwrap();
    assert!(
        bad_request(&reply).is_some_and(|r| r.contains("malformed")),
        "{reply:?}"
    );
    // An empty frame.
    let reply = raw_exchange(&conn, &framed(&[])).await.unwrap();
    assert!(
        bad_request(&reply).is_some_and(|r| r.contains("empty")),
        "{reply:?}"
    );
    // A valid request under an unknown protocol version.
    let mut body = encode_body(&ClientFrame::Request(ClientRequest {
        id: 1,
        kind: RequestKind::Ping,
    }))
    .to_vec();
    body[0] = PROTOCOL_VERSION + 1;
    let reply = raw_exchange(&conn, &framed(&body)).await.unwrap();
    assert!(
        bad_request(&reply).is_some_and(|r| r.contains("unsupported protocol version")),
        "{reply:?}"
    );
    // Trailing bytes after a valid request.
    body[0] = PROTOCOL_VERSION;
    body.push(0);
    let reply = raw_exchange(&conn, &framed(&body)).await.unwrap();
    assert!(
        bad_request(&reply).is_some_and(|r| r.contains("trailing")),
        "{reply:?}"
    );
    // An unknown request kind (variant 42), and an unknown operation (Write, no
    // session, op variant 99).
    let reply = raw_exchange(&conn, &framed(&[PROTOCOL_VERSION, 1, 7, 42]))
        .await
        .unwrap();
    assert!(bad_request(&reply).is_some(), "{reply:?}");
    let reply = raw_exchange(&conn, &framed(&[PROTOCOL_VERSION, 1, 7, 0, 0, 99]))
        .await
        .unwrap();
    assert!(bad_request(&reply).is_some(), "{reply:?}");
    // A frame announcing 2 GiB: refused from the length prefix alone.
    let mut huge = 0x8000_0000u32.to_be_bytes().to_vec();
    huge.extend_from_slice(&[PROTOCOL_VERSION; 4096]);
    let reply = raw_exchange(&conn, &huge).await.unwrap();
    assert!(
        bad_request(&reply).is_some_and(|r| r.contains("longer than the maximum")),
        "{reply:?}"
    );
    // Just over the configured maximum (1 MiB), really sent.
    let over = vec![0u8; (1 << 20) + 1];
    let reply = raw_exchange(&conn, &framed(&over)).await.unwrap();
    assert!(
        bad_request(&reply).is_some_and(|r| r.contains("longer than the maximum")),
        "{reply:?}"
    );
    // A hello on a request stream.
    let reply = raw_exchange(
        &conn,
        &encode_frame(
            &ClientFrame::Hello(bank_app::protocol::Hello {
                token: None,
                client: "x".into(),
            }),
            1 << 20,
        )
        .unwrap(),
    )
    .await
    .unwrap();
    assert!(
        bad_request(&reply).is_some_and(|r| r.contains("hello")),
        "{reply:?}"
    );
    // A truncated frame (the stream ends inside it): nobody to answer, nothing breaks.
    let truncated = raw_exchange(&conn, &framed(&[PROTOCOL_VERSION, 1, 2, 3])[..5]).await;
    assert!(
        matches!(truncated, Err(FrameError::Closed) | Err(FrameError::Io(_))),
        "{truncated:?}"
    );

    // Well-formed requests the node refuses without proposing them.
    let zero = Request::new(
        5,
        1,
        Op::Deposit {
            account: 1,
            amount: 0,
        },
    );
    let reply = raw_exchange(&conn, &request(11, RequestKind::Write(zero)))
        .await
        .unwrap();
    assert_eq!(
        reply,
        ServerFrame::Reply {
            id: 11,
            reply: ServerReply::Rejected(Rejection::InvalidAmount)
        }
    );
    let huge_amount = Request::new(
        5,
        1,
        Op::Withdraw {
            account: 1,
            amount: u64::MAX,
        },
    );
    let reply = raw_exchange(&conn, &request(12, RequestKind::Write(huge_amount)))
        .await
        .unwrap();
    assert!(matches!(
        reply,
        ServerFrame::Reply {
            id: 12,
            reply: ServerReply::Rejected(Rejection::AmountTooLarge { .. })
        }
    ));
    let sessionless = Request::unsessioned(Op::OpenAccount {
        account: 1,
        initial: 5,
    });
    let reply = raw_exchange(&conn, &request(13, RequestKind::Write(sessionless)))
        .await
        .unwrap();
    assert!(
        bad_request(&reply).is_some_and(|r| r.contains("session")),
        "{reply:?}"
    );
    let seq_zero = Request::new(
        5,
        0,
        Op::OpenAccount {
            account: 1,
            initial: 5,
        },
    );
    let reply = raw_exchange(&conn, &request(14, RequestKind::Write(seq_zero)))
        .await
        .unwrap();
    assert!(
        bad_request(&reply).is_some_and(|r| r.contains("sequence")),
        "{reply:?}"
    );

    assert_eq!(
        node.bank.read().applied_index(),
        applied_before,
        "no bad request reached the log"
    );
    assert!(node.server.stats().bad_requests >= 12);

    // The same connection and the node still serve proper requests.
    let reply = raw_exchange(&conn, &request(20, RequestKind::Ping))
        .await
        .unwrap();
    assert_eq!(
        reply,
        ServerFrame::Reply {
            id: 20,
            reply: ServerReply::Pong { node_id: leader }
        }
    );
    let client = Client::connect(cluster.client_config(cluster.addrs()))
        .await
        .expect("connects");
    assert_eq!(client.open_account(1, 5).await, Ok(5));
    assert_eq!(client.deposit(1, 5).await, Ok(10));
    assert_eq!(client.balance(1).await, Ok(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_must_start_with_a_valid_hello() {
    let cluster = TestCluster::start(1).await;
    cluster.wait_leader().await;
    let addr = cluster.node(1).addr;
    let ca = cluster.ca.cert_pem();

    // A request before any hello: unauthorized, and the connection is closed.
    let (_ep, conn) = raw_dial(addr, ca).await;
    let reply = raw_exchange(&conn, &request(3, RequestKind::Ping)).await.unwrap();
    assert!(
        matches!(
            reply,
            ServerFrame::Reply {
                id: 3,
                reply: ServerReply::Unauthorized { .. }
            }
        ),
        "{reply:?}"
    );
    tokio::time::timeout(T, conn.closed())
        .await
        .expect("connection closed");

    // Garbage instead of a hello: a bad-request reply, then the connection is closed.
    let (_ep, conn) = raw_dial(addr, ca).await;
    let reply = raw_exchange(&conn, &framed(b"GET / HTTP/1.1\r\n\r\n"))
        .await
        .unwrap();
    assert!(bad_request(&reply).is_some(), "{reply:?}");
    tokio::time::timeout(T, conn.closed())
        .await
        .expect("connection closed");

    assert!(cluster.node(1).server.stats().connections_refused >= 2);
    let client = Client::connect(cluster.client_config(cluster.addrs()))
        .await
        .expect("the node still serves");
    assert_eq!(client.open_account(1, 1).await, Ok(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_is_unauthorized() {
    let cluster = TestCluster::start_with_token(1, Some("s3cret")).await;
    cluster.wait_leader().await;

    let mut cfg = cluster.client_config(cluster.addrs());
    cfg.token = Some("guess".into());
    let err = Client::connect(cfg).await.expect_err("wrong token");
    assert!(
        matches!(err, ClientError::Unauthorized(ref r) if r.contains("invalid")),
        "{err:?}"
    );

    let mut cfg = cluster.client_config(cluster.addrs());
    cfg.token = None;
    let err = Client::connect(cfg).await.expect_err("no token");
    assert!(
        matches!(err, ClientError::Unauthorized(ref r) if r.contains("requires")),
        "{err:?}"
    );

    let (_ep, _conn, hello) = raw_connect(cluster.node(1).addr, cluster.ca.cert_pem(), Some("guess")).await;
    assert!(matches!(
        hello,
        ServerFrame::Reply {
            reply: ServerReply::Unauthorized { .. },
            ..
        }
    ));

    let client = Client::connect(cluster.client_config(cluster.addrs()))
        .await
        .expect("the right token");
    assert_eq!(client.open_account(1, 3).await, Ok(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_cluster_ca_cannot_connect() {
    let cluster = TestCluster::start(1).await;
    cluster.wait_leader().await;
    let stranger = ClusterCa::generate().expect("ca");
    let mut cfg = cluster.client_config(cluster.addrs());
    cfg.ca_pem = stranger.cert_pem().to_string();
    let started = std::time::Instant::now();
    let err = Client::connect(cfg).await.expect_err("untrusted server");
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a TLS failure is not retried until the total timeout"
    );

    let mut cfg = cluster.client_config(cluster.addrs());
    cfg.ca_pem = "not a certificate".into();
    assert!(matches!(Client::connect(cfg).await, Err(ClientError::Config(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_a_transport_failure_within_the_total_timeout() {
    // A port nobody listens on.
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("addr");
    let ca = ClusterCa::generate().expect("ca");
    let mut cfg = bank_app::ClientConfig::new(vec![addr], ca.cert_pem().to_string());
    cfg.total_timeout = Duration::from_millis(1500);
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.request_timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let err = Client::connect(cfg).await.expect_err("nobody there");
    assert!(err.outcome_unknown(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_start_with_a_certificate_that_is_not_its_own() {
    let cluster = TestCluster::start(1).await;
    let raft = cluster.node(1).raft.clone();
    let ca = &cluster.ca;
    let listen = "127.0.0.1:0".parse().unwrap();
    let bank = BankReplica::new(Bank::new());

    let other = ca.issue_node(2).expect("cert");
    let cfg = ServerConfig::new(listen, other.cert_pem, other.key_pem, ca.cert_pem().into());
    let err = BankServer::start(cfg, raft.clone(), bank.clone())
        .await
        .expect_err("node 2's cert");
    assert!(
        matches!(err, ServerError::IdentityMismatch { cert: 2, raft: 1 }),
        "{err}"
    );

    let anonymous = ca.issue_for_names("x", vec!["example.com".into()]).expect("cert");
    let cfg = ServerConfig::new(
        listen,
        anonymous.cert_pem,
        anonymous.key_pem,
        ca.cert_pem().into(),
    );
    let err = BankServer::start(cfg, raft.clone(), bank.clone())
        .await
        .expect_err("no node name");
    assert!(matches!(err, ServerError::Tls(_)), "{err}");

    let stranger = ClusterCa::generate().expect("ca");
    let foreign = stranger.issue_node(1).expect("cert");
    let cfg = ServerConfig::new(listen, foreign.cert_pem, foreign.key_pem, ca.cert_pem().into());
    let err = BankServer::start(cfg, raft.clone(), bank.clone())
        .await
        .expect_err("another CA");
    assert!(matches!(err, ServerError::Tls(_)), "{err}");

    let own = ca.issue_node(1).expect("cert");
    let mut cfg = ServerConfig::new(listen, own.cert_pem, own.key_pem, ca.cert_pem().into());
    cfg.max_frame_len = 10;
    let err = BankServer::start(cfg, raft, bank).await.expect_err("tiny frames");
    assert!(matches!(err, ServerError::Config(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_channel_and_clients_move_on() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.follower_of(leader);
    let client =
        Client::connect(cluster.client_config(vec![cluster.node(follower).addr, cluster.node(leader).addr]))
            .await
            .expect("connects");
    client.open_account(1, 1).await.expect("open");
    cluster.node(follower).server.shutdown().await;
    // The follower's channel is gone; the client still reaches the cluster.
    assert_eq!(client.deposit(1, 1).await, Ok(2));
    let reader =
        Client::connect(cluster.client_config(vec![cluster.node(follower).addr, cluster.node(leader).addr]))
            .await
            .expect("connects through the other node");
    assert_eq!(reader.balance(1).await, Ok(2));
}
