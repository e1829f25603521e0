//! Helpers for tests that run the `gateway` binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gateway::config::{LogFormat, RawTimings};
use gateway::LocalClusterOptions;

/// The binary under test.
pub fn gateway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gateway"))
}

/// Options for a test cluster of the built binary: loopback, free ports, children
/// that die with the test thread.
pub fn cluster_options(nodes: u64) -> LocalClusterOptions {
    LocalClusterOptions {
        nodes,
        binary: Some(gateway_bin()),
        rust_log: Some("info".into()),
        log_format: LogFormat::Human,
        die_with_parent: true,
        timings: RawTimings::default(),
        ..Default::default()
    }
}

/// A child process killed on drop, so a failing assertion leaves no orphan.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        ChildGuard(Some(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn gateway"),
        ))
    }

    /// Waits for the process to exit, killing it (and failing) after `timeout`.
    /// Returns its status, stdout and stderr.
    pub fn wait_with_deadline(mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let mut child = self.0.take().expect("child");
        let deadline = Instant::now() + timeout;
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "gateway did not exit within {timeout:?}; stderr:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `cond` every 20 ms until it returns `Some`, panicking with `what` and the
/// last observation after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match cond() {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out after {timeout:?} waiting for {what}; last: {last}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
