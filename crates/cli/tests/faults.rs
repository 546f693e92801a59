//! The chaos fault agent end to end: a real `gauntlet fault run` process holding each fault
//! against a real process or the filesystem, its effect observed in `/proc` or on disk, and its
//! removal at the lease, on `stop-all` (the abort), and by `sweep` after the agent was
//! SIGKILLed.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use gauntlet_runtime::local::faults::is_stopped;
use gauntlet_runtime::local::os::start_time;
use serde_json::{json, Value};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A child in its own session, as the runtime starts instances; killed on drop.
struct Target(Child);

impl Target {
    fn start() -> Target {
        let mut cmd = Command::new("sleep");
        cmd.arg("120").stdin(Stdio::null());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        Target(cmd.spawn().expect("sleep starts"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn fault(&self) -> Value {
        let pid = self.pid();
        let start = wait_until("the target's start time", || start_time(pid));
        json!({"kind": "pause", "pid": pid, "startTime": start})
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gauntlet fault run` with a lease of `lease_ms` from now.
fn agent(dir: &Path, id: &str, fault: &Value, lease_ms: u64) -> Child {
    Command::new(BIN)
        .args(["fault", "run", "--dir"])
        .arg(dir)
        .args(["--id", id, "--until-ms", &(now_ms() + lease_ms).to_string()])
        .args(["--fault", &fault.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the agent starts")
}

fn fault_cli(dir: &Path, verb: &str) -> Vec<String> {
    let out = Command::new(BIN)
        .args(["fault", verb, "--dir"])
        .arg(dir)
        .output()
        .expect("gauntlet fault runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The agent's JSON line once it exited successfully.
fn ended(child: Child) -> Value {
    let out = child.wait_with_output().expect("the agent exits");
    assert!(out.status.success(), "agent failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("a JSON line")
}

fn records(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn a_paused_instance_is_resumed_when_the_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start();
    let child = agent(dir.path(), "pause-lease", &target.fault(), 1_500);
    wait_until("the target stopped", || {
        is_stopped(target.pid()).then_some(())
    });
    assert_eq!(records(dir.path()), 1, "the agent recorded its fault");
    let end = ended(child);
    assert_eq!(end["ended"], "expired", "{end}");
    assert!(!is_stopped(target.pid()), "resumed when the lease ended");
    assert_eq!(records(dir.path()), 0, "and the record is gone");
}

#[test]
fn stop_all_ends_a_pause_at_once_and_sweep_ends_one_whose_agent_was_killed() {
    let dir = tempfile::tempdir().unwrap();
    let first = Target::start();
    let child = agent(dir.path(), "pause-abort", &first.fault(), 600_000);
    wait_until("the first target stopped", || {
        is_stopped(first.pid()).then_some(())
    });
    assert_eq!(fault_cli(dir.path(), "stop-all"), ["pause-abort"]);
    assert!(!is_stopped(first.pid()), "resumed before stop-all returned");
    assert_eq!(ended(child)["ended"], "stopped");

    // An agent killed with SIGKILL cannot clean up: its record names the fault, and a sweep
    // (the controller's, at start and after an abort) removes it.
    let second = Target::start();
    let mut killed = agent(dir.path(), "pause-orphan", &second.fault(), 600_000);
    wait_until("the second target stopped", || {
        is_stopped(second.pid()).then_some(())
    });
    assert!(fault_cli(dir.path(), "sweep").is_empty(), "its agent lives");
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(is_stopped(second.pid()), "still stopped: nobody removed it");
    assert_eq!(fault_cli(dir.path(), "sweep"), ["pause-orphan"]);
    assert!(!is_stopped(second.pid()));
    assert_eq!(records(dir.path()), 0);
}

#[test]
fn cpu_stress_burns_cpu_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let fault = json!({"kind": "cpu", "cores": 1, "loadPercent": 100});
    let child = agent(dir.path(), "cpu", &fault, 600_000);
    let pid = child.id();
    let start = wait_until("the agent's first tick", || cpu_ticks(pid));
    // 50 ticks is half a second of CPU at the usual 100 Hz: far more than an idle agent uses.
    wait_until("half a second of CPU burnt", || {
        cpu_ticks(pid).filter(|t| *t >= start + 50)
    });
    assert_eq!(fault_cli(dir.path(), "stop-all"), ["cpu"]);
    assert_eq!(ended(child)["ended"], "stopped");
}

#[test]
fn memory_stress_holds_its_bytes_resident_until_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: u64 = 64 << 20;
    let child = agent(
        dir.path(),
        "memory",
        &json!({"kind": "memory", "bytes": bytes}),
        3_000,
    );
    let pid = child.id();
    wait_until("64 MiB resident", || {
        resident_bytes(pid).filter(|r| *r >= bytes)
    });
    assert_eq!(ended(child)["ended"], "expired");
}

#[test]
fn disk_fill_writes_its_file_and_removes_it_at_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let bytes: u64 = 8 << 20;
    let fault = json!({"kind": "diskFill", "dir": work.path(), "bytes": bytes});
    let child = agent(dir.path(), "disk", &fault, 2_000);
    let file = work.path().join(".gauntlet-fault-disk.fill");
    wait_until("the fill file at its size", || {
        std::fs::metadata(&file)
            .ok()
            .filter(|m| m.len() == bytes)
            .map(|_| ())
    });
    assert_eq!(ended(child)["ended"], "expired");
    assert!(!file.exists(), "removed at the lease");
    assert_eq!(records(dir.path()), 0);
}

#[test]
fn a_fault_that_cannot_be_applied_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["fault", "run", "--dir"])
        .arg(dir.path())
        .args(["--id", "bad", "--until-ms", &(now_ms() + 1_000).to_string()])
        .args([
            "--fault",
            r#"{"kind": "cpu", "cores": 1, "loadPercent": 0}"#,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loadPercent 1-100"), "{err}");
    assert_eq!(records(dir.path()), 0, "nothing recorded, nothing applied");
}
