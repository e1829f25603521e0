//! `gateway demo`, the README's first command, end to end: it must pass with no setup,
//! no terminal and no input, and leave nothing behind, also when interrupted.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The demo under a test deadline; it is killed (and so are its nodes, which die with
/// it) if still running when the guard drops.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Demo {
    fn start(tmp: &Path, args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("demo")
            .args(args)
            // The temporary cluster directory goes here, so the test can see it removed.
            .env("TMPDIR", tmp)
            .env("CI", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gateway demo");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Demo {
            child,
            lines,
            stdout: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Collects stdout until a line contains `needle`; false at the deadline or EOF.
    fn wait_for_line(&mut self, needle: &str, deadline: Instant) -> bool {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stdout.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Waits for the exit; kills the demo and panics with its output at the deadline.
    fn wait(mut self, deadline: Instant) -> (ExitStatus, String, String) {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the demo") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        self.stdout.extend(self.lines.try_iter());
        // The reader threads end once the demo (and with it every node) is gone.
        let stdout = self.stdout.join("\n");
        let stderr = self
            .stderr
            .take()
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default();
        match status {
            Some(status) => (status, stdout, stderr),
            None => panic!("the demo did not finish in time\nstdout:\n{stdout}\nstderr:\n{stderr}"),
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn leftovers(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .expect("read the temporary directory")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Processes whose command line mentions `path` (the demo's nodes run from configs
/// inside it).
fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmd| cmd.contains(&needle))
        .collect()
}

#[test]
fn the_demo_survives_the_loss_of_its_leader_and_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start(tmp.path(), &["--seconds", "4", "--clients", "4"]);
    let (status, stdout, stderr) = demo.wait(Instant::now() + Duration::from_secs(120));
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(status.success(), "the demo failed ({status})\n{context}");
    assert!(stdout.contains("killing the leader, node"), "{context}");
    assert!(stdout.contains("new leader: node"), "{context}");
    assert!(stdout.contains("writes resumed after"), "{context}");
    assert!(stdout.contains("caught up: applied index"), "{context}");
    assert!(stdout.lines().any(|l| l == "PASS"), "{context}");
    assert!(!stdout.contains("FAILED"), "{context}");
    assert_eq!(
        leftovers(tmp.path()),
        Vec::<String>::new(),
        "the cluster directory was left behind"
    );
}

#[test]
fn ctrl_c_stops_the_demo_and_its_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Demo::start(tmp.path(), &["--seconds", "60", "--clients", "2"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    assert!(
        demo.wait_for_line("workload:", deadline),
        "the workload did not start:\n{}",
        demo.stdout.join("\n")
    );
    assert!(
        !processes_mentioning(tmp.path()).is_empty(),
        "no node process found"
    );
    let pid = demo.child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own unreaped child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let (status, stdout, stderr) = demo.wait(Instant::now() + Duration::from_secs(30));
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(status.code(), Some(130), "{context}");
    assert_eq!(
        processes_mentioning(tmp.path()),
        Vec::<String>::new(),
        "{context}"
    );
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new(), "{context}");
}
