//! The client library against in-process three-node clusters: typed calls, redirects,
//! business rejections, linearizable reads on followers, and exactly-once writes when
//! replies are lost or the leader dies mid-flight.

mod common;

use bank_app::client::{Client, ClientError};
use bank_app::protocol::{
    encode_frame, ClientFrame, ClientRequest, Consistency, RequestKind, ServerFrame, ServerReply,
};
use bank_app::{BankConfig, Op, Rejection, Request, TxnKind};
use common::{raw_connect, raw_exchange, wait_for, TestCluster, T};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_opens_accounts_moves_money_and_reads_balances() {
    let cluster = TestCluster::start(3).await;
    cluster.wait_leader().await;
    let client = Client::connect(cluster.client_config(cluster.addrs()))
        .await
        .expect("connects");

    assert_eq!(client.open_account(1, 100).await, Ok(100));
    assert_eq!(client.open_account(2, 0).await, Ok(0));
    assert_eq!(client.deposit(2, 25).await, Ok(25));
    let t = client.transfer(1, 2, 40).await.expect("transfer");
    assert_eq!((t.from_balance, t.to_balance), (60, 65));
    assert_eq!(client.withdraw(1, 10).await, Ok(50));
    assert_eq!(client.balance(1).await, Ok(50));
    assert_eq!(client.balance(2).await, Ok(65));

    let s = client.statement(2, 10).await.expect("statement");
    let kinds: Vec<TxnKind> = s.txns.iter().map(|t| t.kind).collect();
    assert_eq!(kinds, [TxnKind::Open, TxnKind::Deposit, TxnKind::TransferIn]);
    assert_eq!(s.balance, 65);
    assert_eq!(s.txns[2].counterparty, Some(1));
    assert_eq!(client.statement(2, 1).await.expect("statement").txns.len(), 1);

    // A stale read may lag, but converges on the acknowledged state.
    let mut stale = None;
    for _ in 0..500 {
        stale = client.balance_stale(1).await.ok();
        if stale == Some(50) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(stale, Some(50), "stale reads converge");

    // One session, one sequence number per write: 5 writes so far.
    let session = client.session().await;
    assert_eq!(session.seq, 6);
    assert!(client.ping().await.is_ok());
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_to_a_follower_is_redirected_to_the_leader() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.follower_of(leader);

    // On the wire: the follower names the leader and its client address.
    let ca = cluster.ca.cert_pem();
    let (_ep, conn, hello) = raw_connect(cluster.node(follower).addr, ca, None).await;
    assert!(matches!(hello, ServerFrame::Welcome(w) if w.node_id == follower));
    let write = ClientFrame::Request(ClientRequest {
        id: 9,
        kind: RequestKind::Write(Request::new(
            77,
            1,
            Op::OpenAccount {
                account: 5,
                initial: 1,
            },
        )),
    });
    let reply = raw_exchange(&conn, &encode_frame(&write, 1 << 20).unwrap())
        .await
        .expect("reply");
    assert_eq!(
        reply,
        ServerFrame::Reply {
            id: 9,
            reply: ServerReply::NotLeader {
                leader_id: Some(leader),
                leader_client_addr: Some(cluster.node(leader).addr.to_string()),
            }
        }
    );
    assert_eq!(
        cluster.node(follower).bank.read().account_count(),
        0,
        "nothing was proposed"
    );

    // The library follows the redirect: a client that only knows the follower writes.
    let client = Client::connect(cluster.client_config(vec![cluster.node(follower).addr]))
        .await
        .expect("connects");
    assert_eq!(client.open_account(5, 10).await, Ok(10));
    assert_eq!(client.deposit(5, 5).await, Ok(15));
    assert_eq!(cluster.node(leader).bank.read().balance(5), Some(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_reads_on_a_follower_see_every_acknowledged_write() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let writer = Client::connect(cluster.client_config(vec![cluster.node(leader).addr]))
        .await
        .expect("connects");
    writer.open_account(1, 0).await.expect("open");
    for follower in cluster.nodes.keys().copied().filter(|&id| id != leader) {
        // A reader that knows only this follower (reads are never redirected).
        let reader = Client::connect(cluster.client_config(vec![cluster.node(follower).addr]))
            .await
            .expect("connects");
        for round in 1..=5u64 {
            let after = writer.deposit(1, 1).await.expect("deposit");
            let read = reader
                .read_balance(1, Consistency::Linearizable)
                .await
                .expect("read");
            assert_eq!(
                read.balance, after,
                "follower {follower}, round {round}: stale linearizable read"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_rejections_are_typed_errors_and_change_nothing() {
    let cluster = TestCluster::start(3).await;
    cluster.wait_leader().await;
    let client = Client::connect(cluster.client_config(cluster.addrs()))
        .await
        .expect("connects");
    client.open_account(1, 10).await.expect("open");
    client.open_account(2, 0).await.expect("open");

    assert_eq!(
        client.withdraw(1, 11).await,
        Err(ClientError::Rejected(Rejection::InsufficientFunds {
            available: 10,
            requested: 11
        }))
    );
    assert_eq!(
        client.transfer(1, 3, 1).await,
        Err(ClientError::Rejected(Rejection::UnknownAccount(3)))
    );
    assert_eq!(
        client.open_account(1, 0).await,
        Err(ClientError::Rejected(Rejection::AccountExists(1)))
    );
    assert_eq!(
        client.transfer(2, 2, 1).await,
        Err(ClientError::Rejected(Rejection::SameAccount))
    );
    assert_eq!(
        client.deposit(1, 0).await,
        Err(ClientError::Rejected(Rejection::InvalidAmount))
    );
    assert_eq!(
        client.balance(42).await,
        Err(ClientError::Rejected(Rejection::UnknownAccount(42)))
    );
    assert_eq!(
        client.balance_stale(42).await,
        Err(ClientError::Rejected(Rejection::UnknownAccount(42)))
    );
    assert!(client.statement(42, 5).await.is_err_and(|e| e.is_rejection()));
    // The session carries on after rejections.
    assert_eq!(client.transfer(1, 2, 10).await.map(|t| t.to_balance), Ok(10));
    assert_eq!(client.balance(1).await, Ok(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_retried_with_the_same_sequence_number_and_applied_once() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let client = Client::connect(cluster.client_config(cluster.addrs()))
        .await
        .expect("connects");
    client.open_account(1, 0).await.expect("open");
    let session = client.session().await;

    // The leader applies the next two deposits but loses their replies: the client
    // must retry each with the same sequence number and get the recorded answer.
    let server = &cluster.node(leader).server;
    server.faults().drop_write_replies(2);
    assert_eq!(client.deposit(1, 50).await, Ok(50));
    assert_eq!(client.deposit(1, 7).await, Ok(57));
    assert_eq!(
        server.faults().dropped_replies(),
        2,
        "the replies were really lost"
    );

    assert_eq!(
        client.balance(1).await,
        Ok(57),
        "each deposit applied exactly once"
    );
    let deposits = client
        .statement(1, 100)
        .await
        .expect("statement")
        .txns
        .iter()
        .filter(|t| t.kind == TxnKind::Deposit)
        .count();
    assert_eq!(deposits, 2);
    // The session advanced by exactly the two writes.
    let bank = cluster.node(leader).bank.read();
    let info = bank.session(session.client_id).expect("session is live");
    assert_eq!(info.last_seq, session.seq + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_flight_when_the_leader_dies_are_applied_exactly_once() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let client = Client::connect(cluster.client_config(cluster.addrs()))
        .await
        .expect("connects");
    client.open_account(1, 1000).await.expect("open");

    // A stream of deposits of 1; the leader is killed while they run, at an arbitrary
    // point, so one of them is likely in flight (sent, maybe committed, unanswered).
    const N: u64 = 40;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(64);
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 1..=N {
                let balance = client.deposit(1, 1).await?;
                let _ = tx.send(i).await;
                assert_eq!(balance, 1000 + i, "deposit {i} applied once");
            }
            Ok::<(), ClientError>(())
        })
    };
    // Kill the leader once a few deposits went through.
    while let Some(i) = rx.recv().await {
        if i == 5 {
            break;
        }
    }
    cluster.kill(leader);
    while rx.recv().await.is_some() {}
    writer
        .await
        .expect("writer task")
        .expect("every deposit acknowledged across the failover");

    let new_leader = cluster.wait_leader().await;
    assert_ne!(new_leader, leader);
    // Retries reused their sequence numbers: one per write, none skipped.
    assert_eq!(client.session().await.seq, 1 + 1 + N);
    assert_eq!(client.balance(1).await, Ok(1000 + N));
    let applied = cluster.node(new_leader).bank.read().applied_index();
    cluster.wait_applied(applied).await;
    for node in cluster.nodes.values().filter(|n| n.runtime.is_some()) {
        let bank = node.bank.read();
        assert_eq!(bank.balance(1), Some(1000 + N), "node {}", node.id);
        let deposits = bank
            .statement(1, 1000)
            .expect("account")
            .iter()
            .filter(|t| t.kind == TxnKind::Deposit)
            .count() as u64;
        assert_eq!(deposits, N, "node {}: each deposit once", node.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_their_own_sessions_write_concurrently_and_money_is_conserved() {
    let cluster = TestCluster::start(3).await;
    cluster.wait_leader().await;
    let setup = Client::connect(cluster.client_config(cluster.addrs()))
        .await
        .expect("connects");
    for account in 1..=4 {
        setup.open_account(account, 1000).await.expect("open");
    }
    let mut tasks = Vec::new();
    for c in 0..4u64 {
        let client = Client::connect(cluster.client_config(cluster.addrs()))
            .await
            .expect("connects");
        tasks.push(tokio::spawn(async move {
            for i in 0..20u64 {
                let from = 1 + (c + i) % 4;
                let to = 1 + (c + i + 1) % 4;
                match client.transfer(from, to, 1 + i % 7).await {
                    Ok(_) | Err(ClientError::Rejected(Rejection::InsufficientFunds { .. })) => {}
                    Err(e) => panic!("transfer failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let mut total = 0;
    for account in 1..=4 {
        total += setup.balance(account).await.expect("balance");
    }
    assert_eq!(total, 4000, "transfers conserve money");
    let leader = cluster.wait_leader().await;
    wait_for("sessions recorded", T, || {
        cluster.node(leader).bank.read().session_count() >= 5
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_session_is_renewed_and_the_write_applied_once() {
    // Room for one session only: each client's writes evict the other's session.
    let config = BankConfig {
        max_sessions: 1,
        ..BankConfig::default()
    };
    let cluster = TestCluster::start_with(3, None, config).await;
    cluster.wait_leader().await;
    let a = Client::connect(cluster.client_config(cluster.addrs()))
        .await
        .expect("a");
    let b = Client::connect(cluster.client_config(cluster.addrs()))
        .await
        .expect("b");
    a.open_account(1, 0).await.expect("open 1");
    let first = a.session().await;
    b.open_account(2, 0).await.expect("open 2: evicts a's session");

    // a's next write (seq 2) finds no session: SessionExpired, not applied. The client
    // starts a new session and sends it again, where it is applied once.
    assert_eq!(a.deposit(1, 5).await, Ok(5));
    let renewed = a.session().await;
    assert_ne!(renewed.client_id, first.client_id, "a new session");
    assert_eq!(renewed.seq, 2, "the deposit was seq 1 of the new session");
    assert_eq!(a.balance(1).await, Ok(5));
    assert_eq!(
        b.deposit(2, 1).await,
        Ok(1),
        "b renews its own session just as well"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_dropped_between_an_apply_and_its_retry_is_an_unknown_outcome_not_a_second_apply() {
    // Room for one session only, so another client's write evicts ours.
    let config = BankConfig {
        max_sessions: 1,
        ..BankConfig::default()
    };
    let cluster = TestCluster::start_with(3, None, config).await;
    let leader = cluster.wait_leader().await;
    let a = Client::connect(cluster.client_config(cluster.addrs()))
        .await
        .expect("a");
    let b = Client::connect(cluster.client_config(cluster.addrs()))
        .await
        .expect("b");
    a.open_account(1, 0).await.expect("open 1");
    let first = a.session().await;

    // a's deposit is applied but its reply is lost, so a will retry it; before the
    // retry, b's write evicts a's session.
    cluster.node(leader).server.faults().drop_write_replies(1);
    let deposit = {
        let a = a.clone();
        tokio::spawn(async move { a.deposit(1, 5).await })
    };
    wait_for("a's deposit to be applied", T, || {
        cluster.node(leader).bank.read().balance(1) == Some(5)
    })
    .await;
    b.open_account(2, 0).await.expect("open 2: evicts a's session");
    assert!(
        cluster
            .node(leader)
            .bank
            .read()
            .session(first.client_id)
            .is_none(),
        "a's session is gone"
    );

    // The retry finds no session. Resending under a new session would deposit twice;
    // the client must report that the outcome is unknown instead.
    let outcome = deposit.await.expect("deposit task");
    match &outcome {
        Err(e @ ClientError::SessionLost(_)) => assert!(e.outcome_unknown()),
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    assert_eq!(a.balance(1).await, Ok(5), "the deposit was applied once");
    // The client goes on with a fresh session.
    assert_eq!(a.deposit(1, 1).await, Ok(6));
    assert_ne!(a.session().await.client_id, first.client_id);
}
