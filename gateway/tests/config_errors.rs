//! Configuration loading: bad files are refused with a message naming the file and
//! the field at fault; flags override and complete the file.

use std::path::{Path, PathBuf};
use std::process::Command;

use gateway::config::{self, ConfigError, Overrides};

const GOOD: &str = r#"
id = 1
data_dir = "data"

[listen]
raft = "127.0.0.1:7000"
client = "127.0.0.1:7001"
admin = "127.0.0.1:7002"

[tls]
ca = "../ca.pem"
cert = "cert.pem"
key = "key.pem"

[[peers]]
id = 1
raft_addr = "127.0.0.1:7000"
client_addr = "127.0.0.1:7001"

[[peers]]
id = 2
raft_addr = "127.0.0.1:7010"
client_addr = "127.0.0.1:7011"
"#;

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("node.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn load_err(text: &str) -> (PathBuf, ConfigError, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), text);
    let err = config::load_file(&path).unwrap_err();
    let msg = err.to_string();
    (path, err, msg)
}

#[test]
fn a_good_file_loads_with_paths_relative_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), GOOD);
    let cfg = config::load_file(&path).unwrap();
    assert_eq!(cfg.id, 1);
    assert_eq!(cfg.data_dir, dir.path().join("data"));
    assert_eq!(cfg.tls.ca, dir.path().join("../ca.pem"));
    assert_eq!(cfg.raft_log_path(), dir.path().join("data").join("raft.redb"));
    let m = cfg.bootstrap_membership();
    assert_eq!(m.voters.iter().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(m.addrs[&2].raft, "127.0.0.1:7010");
    assert_eq!(m.addrs[&2].client, "127.0.0.1:7011");
    let sc = cfg.sidecar_config();
    assert_eq!(sc.id, 1);
    assert_eq!(sc.bootstrap, Some(m));
    assert_eq!(sc.snapshot_dir, Some(dir.path().join("data").join("snapshots")));
}

#[test]
fn invalid_toml_names_the_file_and_the_line() {
    let (path, err, msg) = load_err("id = 1\n[listen\nraft = 1\n");
    assert!(matches!(err, ConfigError::Toml { .. }), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
}

#[test]
fn a_value_of_the_wrong_type_is_shown_in_context() {
    let (path, _, msg) = load_err(&GOOD.replace("id = 1\ndata_dir", "id = \"one\"\ndata_dir"));
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("id = \"one\""), "{msg}");
}

#[test]
fn an_unknown_field_is_named() {
    let (_, _, msg) = load_err(&GOOD.replace("[listen]", "[listen]\nraf = \"127.0.0.1:1\""));
    assert!(msg.contains("unknown field `raf`"), "{msg}");
}

#[test]
fn a_missing_field_is_named_with_the_flag_that_can_supply_it() {
    let (path, err, msg) = load_err(&GOOD.replace("id = 1\ndata_dir", "data_dir"));
    assert_eq!(err.field(), Some("id"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("--id"), "{msg}");

    let (_, err, msg) = load_err(&GOOD.replace("key = \"key.pem\"", ""));
    assert_eq!(err.field(), Some("tls.key"), "{msg}");

    let (_, err, msg) = load_err(&GOOD.replace("client_addr = \"127.0.0.1:7011\"", ""));
    assert_eq!(err.field(), Some("peers[1].client_addr"), "{msg}");
}

#[test]
fn a_duplicate_peer_id_is_refused() {
    let (_, err, msg) = load_err(&GOOD.replace("id = 2", "id = 1"));
    assert_eq!(err.field(), Some("peers[1].id"), "{msg}");
    assert!(msg.contains("duplicate node id 1"), "{msg}");
    assert!(msg.contains("peers[0]"), "{msg}");
}

#[test]
fn a_duplicate_peer_address_is_refused() {
    let (_, err, msg) = load_err(&GOOD.replace("127.0.0.1:7010", "127.0.0.1:7000"));
    assert_eq!(err.field(), Some("peers[1].raft_addr"), "{msg}");
}

#[test]
fn an_unparsable_address_is_refused() {
    let (_, err, msg) = load_err(&GOOD.replace("raft = \"127.0.0.1:7000\"", "raft = \"localhost\""));
    assert_eq!(err.field(), Some("listen.raft"), "{msg}");
    assert!(msg.contains("`localhost` is not a socket address"), "{msg}");
}

#[test]
fn node_id_zero_is_refused() {
    let (_, err, msg) = load_err(&GOOD.replace("id = 1\ndata_dir", "id = 0\ndata_dir"));
    assert_eq!(err.field(), Some("id"), "{msg}");
}

#[test]
fn timings_are_checked() {
    let (_, err, msg) = load_err(&format!(
        "{GOOD}\n[timings]\nheartbeat_ticks = 10\nelection_ticks = 10\n"
    ));
    assert_eq!(err.field(), Some("timings.election_ticks"), "{msg}");
    let (_, err, msg) = load_err(&format!("{GOOD}\n[timings]\ntick_ms = 0\n"));
    assert_eq!(err.field(), Some("timings.tick_ms"), "{msg}");
}

#[test]
fn flags_override_and_complete_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &GOOD.replace("id = 1\ndata_dir", "data_dir"));
    let overrides = Overrides {
        id: Some(2),
        admin_listen: Some("127.0.0.1:9999".into()),
        tick_ms: Some(7),
        ..Default::default()
    };
    let cfg = config::load(Some(&path), &overrides).unwrap();
    assert_eq!(cfg.id, 2);
    assert_eq!(cfg.admin_listen, "127.0.0.1:9999".parse().unwrap());
    assert_eq!(cfg.timings.tick.as_millis(), 7);
}

#[test]
fn a_config_from_flags_alone_works() {
    let overrides = Overrides {
        id: Some(1),
        data_dir: Some("d".into()),
        raft_listen: Some("127.0.0.1:7000".into()),
        client_listen: Some("127.0.0.1:7001".into()),
        admin_listen: Some("127.0.0.1:7002".into()),
        ca: Some("ca.pem".into()),
        cert: Some("c.pem".into()),
        key: Some("k.pem".into()),
        peers: vec!["2=127.0.0.1:7010,127.0.0.1:7011".into()],
        ..Default::default()
    };
    let cfg = config::load(None, &overrides).unwrap();
    assert_eq!(cfg.peers.iter().map(|p| p.id).collect::<Vec<_>>(), vec![1, 2]);
    let err = config::load(None, &Overrides::default()).unwrap_err();
    assert!(err.to_string().starts_with("command line: field `id`"), "{err}");
}

#[test]
fn gateway_run_with_a_bad_config_exits_non_zero_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &GOOD.replace("id = 2", "id = 1"));
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("peers[1].id"), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
}
