//! The `bank` binary against an in-process cluster: output, `--json` and exit codes.

mod common;

use std::process::{Command, Output};

use common::TestCluster;
use serde_json::Value;

struct Cli {
    cluster: String,
    ca: tempfile::NamedTempFile,
}

impl Cli {
    fn new(cluster: &TestCluster) -> Cli {
        let ca = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(ca.path(), cluster.ca.cert_pem()).expect("write CA");
        let cluster = cluster
            .addrs()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        Cli { cluster, ca }
    }

    /// Runs `bank --cluster .. --ca .. ARGS` off the async runtime.
    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bank"));
        cmd.arg("--cluster")
            .arg(&self.cluster)
            .arg("--ca")
            .arg(self.ca.path())
            .arg("--timeout")
            .arg("10")
            .args(args)
            .env_remove("BANK_CLUSTER")
            .env_remove("BANK_CA")
            .env_remove("BANK_TOKEN");
        tokio::task::spawn_blocking(move || cmd.output().expect("bank runs"))
            .await
            .expect("blocking task")
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_results_and_exits_with_the_documented_codes() {
    let cluster = TestCluster::start(3).await;
    cluster.wait_leader().await;
    let cli = Cli::new(&cluster);

    let out = cli.run(&["open", "1", "100"]).await;
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(stdout(&out).contains("account 1 opened, balance 100"), "{out:?}");

    let out = cli.run(&["--json", "deposit", "1", "50"]).await;
    assert_eq!(code(&out), 0, "{out:?}");
    let v = json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["balance"], 150);

    let out = cli.run(&["open", "2"]).await;
    assert_eq!(code(&out), 0, "{out:?}");
    let out = cli.run(&["transfer", "1", "2", "30", "--json"]).await;
    assert_eq!(code(&out), 0, "{out:?}");
    assert_eq!(json(&out)["to_balance"], 30);

    // Business rejections exit 2, in both output modes.
    let out = cli.run(&["withdraw", "1", "1000"]).await;
    assert_eq!(code(&out), 2, "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("insufficient funds"),
        "{out:?}"
    );
    let out = cli.run(&["--json", "withdraw", "1", "1000"]).await;
    assert_eq!(code(&out), 2, "{out:?}");
    let v = json(&out);
    assert_eq!(v["error"], "rejected");
    assert_eq!(v["rejection"]["InsufficientFunds"]["available"], 120);
    for args in [
        &["deposit", "1", "0"][..],
        &["deposit", "1", "-5"],
        &["transfer", "1", "1", "5"],
        &["balance", "99"],
        &["open", "1"],
    ] {
        let out = cli.run(args).await;
        assert_eq!(code(&out), 2, "{args:?}: {out:?}");
    }

    let out = cli.run(&["balance", "1"]).await;
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(stdout(&out).contains("account 1: balance 120"), "{out:?}");
    let out = cli.run(&["--json", "balance", "2", "--stale"]).await;
    assert_eq!(code(&out), 0, "{out:?}");
    assert_eq!(json(&out)["stale"], true);
    let out = cli.run(&["--json", "statement", "1", "--limit", "2"]).await;
    assert_eq!(code(&out), 0, "{out:?}");
    assert_eq!(json(&out)["txns"].as_array().map(Vec::len), Some(2));
    let out = cli.run(&["statement", "1"]).await;
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(stdout(&out).contains("transfer out"), "{out:?}");
    let out = cli.run(&["--json", "status"]).await;
    assert_eq!(code(&out), 0, "{out:?}");
    let v = json(&out);
    let roles: Vec<&str> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["role"].as_str())
        .collect();
    assert_eq!(roles.iter().filter(|r| **r == "leader").count(), 1, "{v}");

    // Usage errors exit 64.
    for args in [
        &["frobnicate"][..],
        &["deposit", "1"],
        &["deposit", "x", "1"],
        &[],
    ] {
        let out = cli.run(args).await;
        assert_eq!(code(&out), 64, "{args:?}: {out:?}");
    }
    let out = cli.run(&["--help"]).await;
    assert_eq!(code(&out), 0, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_1_when_the_cluster_is_unreachable_or_untrusted() {
    let cluster = TestCluster::start(1).await;
    cluster.wait_leader().await;
    let mut cli = Cli::new(&cluster);
    let stranger = raft::transport::certs::ClusterCa::generate().expect("ca");
    std::fs::write(cli.ca.path(), stranger.cert_pem()).expect("write CA");
    let out = cli.run(&["--json", "balance", "1"]).await;
    assert_eq!(code(&out), 1, "{out:?}");
    assert_eq!(json(&out)["error"], "tls");

    let nobody = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("addr");
    cli.cluster = nobody.to_string();
    let started = std::time::Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bank"));
    cmd.args(["--cluster", &cli.cluster, "--timeout", "1", "--ca"])
        .arg(cli.ca.path())
        .args(["deposit", "1", "5"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("runs"))
        .await
        .expect("blocking");
    assert_eq!(code(&out), 1, "{out:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_load_and_reports_per_operation_statistics() {
    let cluster = TestCluster::start(3).await;
    cluster.wait_leader().await;
    let cli = Cli::new(&cluster);
    let out = cli
        .run(&[
            "--json",
            "bench",
            "--clients",
            "3",
            "--duration",
            "1",
            "--accounts",
            "5",
            "--mix",
            "deposit=2,transfer=2,balance=1,stale=1,statement=1,withdraw=1",
        ])
        .await;
    assert_eq!(code(&out), 0, "{out:?}");
    let v = json(&out);
    let total = &v["total"];
    assert!(total["ok"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(total["failed"], 0, "{v}");
    assert!(total["latency_ms"]["p99"].as_f64().is_some(), "{v}");
    assert!(v["ops"]["deposit"]["ok"].as_u64().unwrap_or(0) > 0, "{v}");

    // The human table.
    let out = cli
        .run(&["bench", "--clients", "1", "--duration", "0.5", "--accounts", "2"])
        .await;
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(stdout(&out).contains("total"), "{out:?}");
}
