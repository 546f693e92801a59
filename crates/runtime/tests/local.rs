//! End-to-end behaviour of the local runtime with real processes, real sockets on 127.0.0.1
//! and a real state directory. Every wait polls a condition against a deadline; nothing
//! asserts how long anything took.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gauntlet_runtime::local::{LocalOptions, LocalRuntime};
use gauntlet_runtime::{Instance, InstanceSpec, Phase, Runtime, RuntimeEvent};
use gauntlet_spec::{Artifact, ExecAction, HttpGetAction, Probe, ProcessSpec};
use sha2::Digest;

/// Generous: the suite must pass on a loaded two-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

fn spec(app: &str, command: &[&str]) -> InstanceSpec {
    InstanceSpec {
        app: app.into(),
        revision: "rev1".into(),
        process: ProcessSpec {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: vec![],
            env: Default::default(),
            working_dir: None,
            artifact: None,
            termination_grace_period_seconds: Some(5),
        },
        readiness: None,
    }
}

fn probe() -> Probe {
    Probe {
        http_get: None,
        tcp_socket: None,
        exec: None,
        initial_delay_seconds: 0,
        period_seconds: 1,
        timeout_seconds: 2,
        success_threshold: 1,
        failure_threshold: 1,
    }
}

/// A state directory plus the runtime on it. On drop, kills every process the state still
/// records (and any extra pid a test registered), so a failing test leaves nothing behind.
struct Harness {
    dir: tempfile::TempDir,
    rt: LocalRuntime,
    events: Vec<RuntimeEvent>,
    extra_pids: Vec<u32>,
}

impl Harness {
    async fn new() -> Self {
        Self::with_options(LocalOptions::default()).await
    }

    async fn with_options(options: LocalOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let rt = LocalRuntime::open_with(dir.path(), options)
            .await
            .expect("open runtime");
        Harness {
            dir,
            rt,
            events: Vec::new(),
            extra_pids: Vec::new(),
        }
    }

    fn state(&self) -> &Path {
        self.dir.path()
    }

    /// Polls until `pred` holds for the instance list; returns that list.
    async fn wait_until(
        &mut self,
        what: &str,
        pred: impl Fn(&[Instance]) -> bool,
    ) -> Vec<Instance> {
        let start = Instant::now();
        loop {
            self.events.extend(self.rt.drain_events());
            let instances = self.rt.instances();
            if pred(&instances) {
                return instances;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; instances: {instances:#?}; events: {:#?}",
                self.events
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_one(&mut self, what: &str, pred: impl Fn(&Instance) -> bool) -> Instance {
        let list = self.wait_until(what, |l| l.len() == 1 && pred(&l[0])).await;
        list[0].clone()
    }

    fn event_actions(&mut self) -> Vec<String> {
        self.events.extend(self.rt.drain_events());
        self.events.iter().map(|e| e.action.clone()).collect()
    }

    fn log_of(&self, instance: &Instance) -> String {
        std::fs::read_to_string(self.rt.log_file(instance)).unwrap_or_default()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let mut pids = self.extra_pids.clone();
        let records = self.state().join("runtime/instances.json");
        if let Ok(text) = std::fs::read_to_string(records) {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
                for r in json["instances"].as_array().into_iter().flatten() {
                    if let Some(pid) = r["pid"].as_u64() {
                        pids.push(pid as u32);
                    }
                }
            }
        }
        for pid in pids.into_iter().filter(|p| *p > 1) {
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// Gone or a zombie waiting for its parent: either way it no longer runs.
fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or("X");
            !matches!(state, "Z" | "X")
        }
        Err(_) => false,
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pids of running processes whose environment says they are `instance`.
fn processes_of(instance: &str) -> Vec<u32> {
    let needle = format!("GAUNTLET_INSTANCE={instance}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| is_running(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

async fn with_timeout<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("operation did not finish before the deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probe_makes_an_http_server_ready_and_its_output_is_logged() {
    let mut h = Harness::new().await;
    let mut s = spec(
        "web",
        &[
            "python3",
            "-m",
            "http.server",
            "${PORT}",
            "--bind",
            "127.0.0.1",
        ],
    );
    s.readiness = Some(Probe {
        http_get: Some(HttpGetAction {
            path: "/".into(),
            port: None,
            host: None,
        }),
        ..probe()
    });
    let started = h.rt.start(s).await.expect("start");
    assert_eq!(started.phase, Phase::Starting);
    let ready = h.wait_one("ready", |i| i.is_ready()).await;
    assert_eq!(ready.port, started.port);
    assert!(h.event_actions().contains(&"ready".to_string()));
    // http.server logs each probe request to stderr, which goes to the instance log.
    eventually("a probe request in the log", || {
        h.log_of(&ready).contains("GET / HTTP/1.1")
    })
    .await;
    assert_eq!(h.rt.log_files("web"), vec![h.rt.log_file(&ready)]);
    with_timeout(h.rt.stop(&ready.id)).await.expect("stop");
    assert!(h.rt.instances().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_gets_port_and_identity_in_its_environment_and_arguments() {
    let h = Harness::new().await;
    let mut s = spec(
        "env",
        &["sh", "-c", "echo \"arg=$0 port=$PORT app=$GAUNTLET_APP id=$GAUNTLET_INSTANCE url=$URL\"; exec sleep 1000"],
    );
    s.process.args = vec!["${PORT}".into()];
    s.process
        .env
        .insert("URL".into(), "http://127.0.0.1:${PORT}/".into());
    let i = h.rt.start(s).await.expect("start");
    let expected = format!(
        "arg={p} port={p} app=env id={} url=http://127.0.0.1:{p}/",
        i.id,
        p = i.port
    );
    eventually("the greeting in the log", || {
        h.log_of(&i).contains(&expected)
    })
    .await;
    with_timeout(h.rt.stop(&i.id)).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_is_restarted_on_the_same_port() {
    let mut h = Harness::new().await;
    let i =
        h.rt.start(spec("kill", &["sh", "-c", "exec sleep 1000"]))
            .await
            .expect("start");
    let first = h
        .wait_one("running", |i| i.is_ready() && i.pid.is_some())
        .await;
    let old_pid = first.pid.expect("pid");
    unsafe { libc::kill(old_pid as i32, libc::SIGKILL) };
    let again = h
        .wait_one("restarted", |i| {
            i.is_ready() && i.restarts == 1 && i.pid.is_some_and(|p| p != old_pid)
        })
        .await;
    assert_eq!(again.port, i.port);
    assert_eq!(again.id, i.id);
    let restarted = h
        .events
        .iter()
        .find(|e| e.action == "restarted")
        .expect("restarted event");
    assert!(
        restarted.detail.contains("signal 9 (SIGKILL)"),
        "{}",
        restarted.detail
    );
    with_timeout(h.rt.stop(&i.id)).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_keeps_exiting_enters_crash_loop_with_exit_status_and_log_tail() {
    let mut h = Harness::new().await;
    let i =
        h.rt.start(spec(
            "crash",
            &["sh", "-c", "echo boom before exit; exit 3"],
        ))
        .await
        .expect("start");
    let looping = h
        .wait_one("crash loop", |i| matches!(i.phase, Phase::CrashLoop { .. }))
        .await;
    let Phase::CrashLoop {
        last_exit,
        log_tail,
        next_start_ms,
    } = looping.phase
    else {
        unreachable!()
    };
    assert_eq!(last_exit, "exit status 3");
    assert!(
        log_tail.iter().any(|l| l == "boom before exit"),
        "{log_tail:?}"
    );
    assert!(next_start_ms > 0);
    assert!(looping.restarts >= 2);
    assert!(h.event_actions().contains(&"crashloop".to_string()));
    with_timeout(h.rt.stop(&i.id)).await.expect("stop");
    assert!(h.rt.instances().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_the_whole_process_group() {
    let mut h = Harness::new().await;
    let marker = h.state().join("grandchild.pid");
    let script = format!("sleep 1000 & echo $! > {}; wait", marker.display());
    let i =
        h.rt.start(spec("group", &["sh", "-c", &script]))
            .await
            .expect("start");
    let running = h.wait_one("running", |i| i.pid.is_some()).await;
    let leader = running.pid.expect("pid");
    eventually("the grandchild's pid", || {
        std::fs::read_to_string(&marker).is_ok_and(|s| s.trim().parse::<u32>().is_ok())
    })
    .await;
    let grandchild: u32 = std::fs::read_to_string(&marker)
        .expect("marker")
        .trim()
        .parse()
        .expect("pid");
    h.extra_pids.push(grandchild);
    assert!(is_running(grandchild));
    with_timeout(h.rt.stop(&i.id)).await.expect("stop");
    assert!(h.rt.instances().is_empty());
    eventually("the leader to die", || !is_running(leader)).await;
    eventually("the grandchild to die", || !is_running(grandchild)).await;
    // Idempotent.
    with_timeout(h.rt.stop(&i.id)).await.expect("second stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
    let mut h = Harness::new().await;
    let mut s = spec(
        "stubborn",
        &[
            "sh",
            "-c",
            "trap '' TERM; echo trapped; while true; do sleep 1; done",
        ],
    );
    s.process.termination_grace_period_seconds = Some(1);
    let i = h.rt.start(s).await.expect("start");
    let running = h.wait_one("running", |i| i.pid.is_some()).await;
    eventually("the trap to be set", || {
        h.log_of(&running).contains("trapped")
    })
    .await;
    let pid = running.pid.expect("pid");
    with_timeout(h.rt.stop(&i.id)).await.expect("stop");
    eventually("the stubborn process to die", || !is_running(pid)).await;
    assert!(processes_of(&i.id.0).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_adopts_the_same_process_without_a_duplicate() {
    let mut h = Harness::new().await;
    let i =
        h.rt.start(spec("adopt", &["sh", "-c", "exec sleep 1000"]))
            .await
            .expect("start");
    let before = h
        .wait_one("running", |i| i.is_ready() && i.pid.is_some())
        .await;
    h.rt.shutdown().await;
    assert!(
        is_running(before.pid.expect("pid")),
        "shutdown must not stop instances"
    );

    h.rt = LocalRuntime::open(h.state()).await.expect("reopen");
    let after = h.wait_one("adopted and ready", |i| i.is_ready()).await;
    assert_eq!(after.id, i.id);
    assert_eq!(after.pid, before.pid);
    assert_eq!(after.port, before.port);
    assert_eq!(after.restarts, 0);
    assert!(h.event_actions().contains(&"adopted".to_string()));
    assert_eq!(processes_of(&i.id.0), vec![before.pid.expect("pid")]);

    // The adopted process is not our child, yet stop still ends it.
    with_timeout(h.rt.stop(&i.id)).await.expect("stop");
    let pid = before.pid.expect("pid");
    eventually("the adopted process to die", || !is_running(pid)).await;
}

/// Rewrites `instances.json` as a controller that died at some earlier moment would have
/// left it.
fn edit_records(state: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = state.join("runtime/instances.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("records")).expect("json");
    edit(&mut json);
    std::fs::write(&path, serde_json::to_vec(&json).expect("json")).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_start_time_does_not_match_is_not_adopted() {
    let mut h = Harness::new().await;
    let i =
        h.rt.start(spec("reused", &["sh", "-c", "exec sleep 1000"]))
            .await
            .expect("start");
    let before = h.wait_one("running", |i| i.pid.is_some()).await;
    let instance_pid = before.pid.expect("pid");
    h.rt.shutdown().await;
    // The instance's process died while no controller ran, and an unrelated process (which
    // does not carry the instance's identity) now holds the recorded pid.
    let _ = unsafe { libc::kill(-(instance_pid as i32), libc::SIGKILL) };
    eventually("the instance's process to die", || {
        !is_running(instance_pid)
    })
    .await;
    let mut unrelated = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("spawn an unrelated process");
    let old_pid = unrelated.id();
    h.extra_pids.push(old_pid);
    edit_records(h.state(), |json| {
        let stat = std::fs::read_to_string(format!("/proc/{old_pid}/stat")).expect("stat");
        let start: u64 = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(19))
            .and_then(|f| f.parse().ok())
            .expect("start time");
        json["instances"][0]["pid"] = serde_json::json!(old_pid);
        json["instances"][0]["startTime"] = serde_json::json!(start + 1);
    });

    h.rt = LocalRuntime::open(h.state()).await.expect("reopen");
    let after = h
        .wait_one("a new process", |i| i.pid.is_some_and(|p| p != old_pid))
        .await;
    assert_eq!(after.id, i.id);
    assert_eq!(after.port, before.port);
    assert_eq!(after.restarts, 1);
    let actions = h.event_actions();
    assert!(actions.contains(&"lost".to_string()), "{actions:?}");
    assert!(!actions.contains(&"adopted".to_string()), "{actions:?}");
    // The unrelated process that holds the old pid is left alone.
    assert!(is_running(old_pid));
    with_timeout(h.rt.stop(&i.id)).await.expect("stop");
    unrelated.kill().expect("kill the unrelated process");
    unrelated.wait().expect("reap the unrelated process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_started_but_never_recorded_is_adopted_instead_of_duplicated() {
    let mut h = Harness::new().await;
    let i =
        h.rt.start(spec("window", &["sh", "-c", "exec sleep 1000"]))
            .await
            .expect("start");
    let before = h.wait_one("running", |i| i.pid.is_some()).await;
    let pid = before.pid.expect("pid");
    h.extra_pids.push(pid);
    h.rt.shutdown().await;
    // The controller died after spawning the process and before recording its pid.
    edit_records(h.state(), |json| {
        json["instances"][0]["pid"] = serde_json::Value::Null;
        json["instances"][0]["startTime"] = serde_json::Value::Null;
    });

    h.rt = LocalRuntime::open(h.state()).await.expect("reopen");
    let after = h.wait_one("adopted and ready", |i| i.is_ready()).await;
    assert_eq!(after.id, i.id);
    assert_eq!(after.pid, Some(pid));
    assert_eq!(after.port, before.port);
    assert_eq!(after.restarts, 0);
    let actions = h.event_actions();
    assert!(actions.contains(&"adopted".to_string()), "{actions:?}");
    assert!(!actions.contains(&"lost".to_string()), "{actions:?}");
    assert_eq!(processes_of(&i.id.0), vec![pid]);
    // Recorded again, so the next restart adopts it the ordinary way.
    let records =
        std::fs::read_to_string(h.state().join("runtime/instances.json")).expect("records");
    let json: serde_json::Value = serde_json::from_str(&records).expect("json");
    assert_eq!(json["instances"][0]["pid"].as_u64(), Some(u64::from(pid)));
    with_timeout(h.rt.stop(&i.id)).await.expect("stop");
    eventually("the adopted process to die", || !is_running(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_of_an_instance_never_recorded_is_stopped_with_its_group() {
    let mut h = Harness::new().await;
    let marker = h.state().join("grandchild.pid");
    let script = format!("sleep 1000 & echo $! > {}; wait", marker.display());
    let i =
        h.rt.start(spec("unrecorded", &["sh", "-c", &script]))
            .await
            .expect("start");
    let running = h.wait_one("running", |i| i.pid.is_some()).await;
    let leader = running.pid.expect("pid");
    h.extra_pids.push(leader);
    eventually("the grandchild's pid", || {
        std::fs::read_to_string(&marker).is_ok_and(|s| s.trim().parse::<u32>().is_ok())
    })
    .await;
    let grandchild: u32 = std::fs::read_to_string(&marker)
        .expect("marker")
        .trim()
        .parse()
        .expect("pid");
    h.extra_pids.push(grandchild);
    h.rt.shutdown().await;
    // The controller died after starting the instance and before recording it at all.
    edit_records(h.state(), |json| {
        json["instances"] = serde_json::json!([]);
    });

    h.rt = LocalRuntime::open(h.state()).await.expect("reopen");
    eventually("the leader to die", || !is_running(leader)).await;
    eventually("the grandchild to die", || !is_running(grandchild)).await;
    assert!(processes_of(&i.id.0).is_empty());
    assert!(h.rt.instances().is_empty());
    h.events.extend(h.rt.drain_events());
    let stopped: Vec<&RuntimeEvent> = h
        .events
        .iter()
        .filter(|e| e.action == "orphan-stopped")
        .collect();
    assert_eq!(stopped.len(), 1, "{:#?}", h.events);
    assert_eq!(stopped[0].instance, i.id);
    assert_eq!(stopped[0].app, "unrecorded");
    assert!(
        stopped[0].detail.contains(&leader.to_string()),
        "{}",
        stopped[0].detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_of_another_state_directory_are_left_alone() {
    let mut h = Harness::new().await;
    let i =
        h.rt.start(spec("neighbour", &["sh", "-c", "exec sleep 1000"]))
            .await
            .expect("start");
    let running = h.wait_one("running", |i| i.pid.is_some()).await;
    let pid = running.pid.expect("pid");

    // `open` stops orphans before it returns, so a wrongly claimed process would be gone.
    let mut other = Harness::new().await;
    assert!(other.event_actions().is_empty());
    assert!(is_running(pid));
    assert_eq!(processes_of(&i.id.0), vec![pid]);
    with_timeout(h.rt.stop(&i.id)).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runtime_cannot_open_the_same_state_directory() {
    let h = Harness::new().await;
    let err = LocalRuntime::open(h.state())
        .await
        .err()
        .expect("second open must fail");
    assert!(
        err.to_string().contains("another Gauntlet controller"),
        "{err}"
    );
}

fn write_tar_gz(path: &Path, files: &[(&str, &str)]) -> String {
    let file = std::fs::File::create(path).expect("create archive");
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        tar.append_data(&mut header, name, body.as_bytes())
            .expect("append");
    }
    tar.into_inner().expect("tar").finish().expect("gzip");
    hex::encode(sha2::Sha256::digest(
        std::fs::read(path).expect("read archive"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tar_gz_artifact_is_verified_unpacked_once_and_its_command_runs() {
    let mut h = Harness::new().await;
    let archive: PathBuf = h.state().join("app.tar.gz");
    let sha = write_tar_gz(
        &archive,
        &[(
            "bin/serve.sh",
            "#!/bin/sh\necho \"artifact says hi on $PORT from $(pwd)\"\nexec sleep 1000\n",
        )],
    );
    let mut s = spec("art", &["bin/serve.sh"]);
    s.process.artifact = Some(Artifact {
        url: format!("file://{}", archive.display()),
        sha256: sha.clone(),
    });
    let (a, b) = tokio::join!(h.rt.start(s.clone()), h.rt.start(s));
    let (a, b) = (a.expect("start a"), b.expect("start b"));
    h.wait_until("both ready", |l| {
        l.len() == 2 && l.iter().all(|i| i.is_ready())
    })
    .await;
    let unpacked = h.state().join("artifacts").join(&sha);
    for i in [&a, &b] {
        let expected = format!("artifact says hi on {} from {}", i.port, unpacked.display());
        eventually("the artifact's greeting", || {
            h.log_of(i).contains(&expected)
        })
        .await;
    }
    let cached: Vec<_> = std::fs::read_dir(h.state().join("artifacts"))
        .expect("artifacts dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(cached, vec![std::ffi::OsString::from(&sha)]);
    with_timeout(h.rt.stop(&a.id)).await.expect("stop a");
    with_timeout(h.rt.stop(&b.id)).await.expect("stop b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_with_the_wrong_sha256_fails_and_never_runs() {
    let mut h = Harness::new().await;
    let archive = h.state().join("app.tar.gz");
    let sha = write_tar_gz(&archive, &[("run.sh", "#!/bin/sh\nexec sleep 1000\n")]);
    let wrong = sha.chars().rev().collect::<String>();
    let mut s = spec("bad", &["run.sh"]);
    s.process.artifact = Some(Artifact {
        url: format!("file://{}", archive.display()),
        sha256: wrong,
    });
    let i = h.rt.start(s).await.expect("start");
    let failed = h
        .wait_one("failed", |i| matches!(i.phase, Phase::Failed { .. }))
        .await;
    let Phase::Failed { reason } = &failed.phase else {
        unreachable!()
    };
    assert!(reason.contains("sha256 mismatch"), "{reason}");
    assert!(reason.contains(&sha), "{reason}");
    assert_eq!(failed.pid, None);
    assert!(processes_of(&i.id.0).is_empty());
    with_timeout(h.rt.stop(&i.id)).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probe_turns_ready_then_unready_with_a_reason() {
    let mut h = Harness::new().await;
    let flag = h.state().join("healthy");
    let mut s = spec("exec", &["sh", "-c", "exec sleep 1000"]);
    s.readiness = Some(Probe {
        exec: Some(ExecAction {
            command: vec!["test".into(), "-f".into(), flag.display().to_string()],
        }),
        ..probe()
    });
    h.rt.start(s).await.expect("start");
    h.wait_one("running", |i| i.pid.is_some()).await;
    assert!(!h.rt.instances()[0].is_ready());
    std::fs::write(&flag, "").expect("flag");
    h.wait_one("ready", |i| i.is_ready()).await;
    std::fs::remove_file(&flag).expect("remove flag");
    let unready = h
        .wait_one("unready", |i| matches!(i.phase, Phase::Unready { .. }))
        .await;
    let Phase::Unready { reason } = unready.phase else {
        unreachable!()
    };
    assert!(reason.contains("exit status 1"), "{reason}");
    let actions = h.event_actions();
    assert!(actions.contains(&"ready".to_string()) && actions.contains(&"unready".to_string()));
    with_timeout(h.rt.stop(&unready.id)).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_log_is_copy_truncated_while_the_process_keeps_writing() {
    let h = Harness::with_options(LocalOptions {
        log_max_bytes: 2_000,
        log_check_interval: Duration::from_millis(100),
        ..LocalOptions::default()
    })
    .await;
    let i =
        h.rt.start(spec(
            "chatty",
            &[
                "sh",
                "-c",
                "while true; do echo 0123456789012345678901234567890123456789; sleep 0.02; done",
            ],
        ))
        .await
        .expect("start");
    let live = h.rt.log_file(&i);
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", live.display()));
    eventually("two rotations", || rotated(2).exists()).await;
    assert!(std::fs::metadata(rotated(1)).expect(".1").len() > 2_000);
    // After truncation the O_APPEND writer continues at the start of the live file.
    eventually(
        "fresh lines in a live log smaller than its rotated copy",
        || {
            let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            let text = std::fs::read_to_string(&live).unwrap_or_default();
            text.starts_with("0123456789") && len(&live) < len(&rotated(1))
        },
    )
    .await;
    with_timeout(h.rt.stop(&i.id)).await.expect("stop");
}

/// Set by [`a_controller_killed_with_sigkill_is_replaced_without_duplicates`] when it runs
/// this test binary as a stand-in controller.
const CONTROLLER_ENV: &str = "GAUNTLET_RUNTIME_TEST_CONTROLLER_STATE";

/// The stand-in controller: opens the runtime on the given state directory, starts two
/// instances, reports when they are ready and then waits to be killed. Does nothing in a
/// normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_controller() {
    let Some(state) = std::env::var_os(CONTROLLER_ENV) else {
        return;
    };
    let rt = LocalRuntime::open(Path::new(&state)).await.expect("open");
    for _ in 0..2 {
        rt.start(spec("survivor", &["sh", "-c", "exec sleep 1000"]))
            .await
            .expect("start");
    }
    let start = Instant::now();
    while !rt.instances().iter().all(|i| i.is_ready()) {
        assert!(start.elapsed() < DEADLINE, "instances never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(Path::new(&state).join("controller-ready"), "").expect("ready marker");
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_with_sigkill_is_replaced_without_duplicates() {
    let state = tempfile::tempdir().expect("temp dir");
    let mut controller = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "stand_in_controller", "--nocapture"])
        .env(CONTROLLER_ENV, state.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the stand-in controller");
    let marker = state.path().join("controller-ready");
    eventually("the stand-in controller's instances", || {
        marker.exists() || controller.try_wait().ok().flatten().is_some()
    })
    .await;
    assert!(marker.exists(), "the stand-in controller exited early");
    let records =
        std::fs::read_to_string(state.path().join("runtime/instances.json")).expect("records");
    let json: serde_json::Value = serde_json::from_str(&records).expect("json");
    let mut before: Vec<(String, u64)> = json["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or_default().to_string(),
                r["pid"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    before.sort();
    assert_eq!(before.len(), 2);

    controller.kill().expect("SIGKILL the controller");
    controller.wait().expect("reap the controller");

    // Open the runtime in this process: the lock died with the controller.
    let rt = LocalRuntime::open(state.path()).await.expect("reopen");
    let mut h = Harness {
        dir: state,
        rt,
        events: Vec::new(),
        extra_pids: before.iter().map(|(_, pid)| *pid as u32).collect(),
    };
    let after = h
        .wait_until("both adopted and ready", |l| {
            l.len() == 2 && l.iter().all(|i| i.is_ready())
        })
        .await;
    let mut after: Vec<(String, u64)> = after
        .iter()
        .map(|i| (i.id.0.clone(), u64::from(i.pid.unwrap_or(0))))
        .collect();
    after.sort();
    assert_eq!(after, before);
    for (id, pid) in &before {
        assert_eq!(processes_of(id), vec![*pid as u32]);
    }
    let actions = h.event_actions();
    assert_eq!(
        actions.iter().filter(|a| *a == "adopted").count(),
        2,
        "{actions:?}"
    );
    for i in h.rt.instances() {
        with_timeout(h.rt.stop(&i.id)).await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_is_downloaded_over_http() {
    let mut h = Harness::new().await;
    let site = h.state().join("site");
    std::fs::create_dir_all(&site).expect("site dir");
    let sha = write_tar_gz(
        &site.join("app.tgz"),
        &[(
            "run.sh",
            "#!/bin/sh\necho downloaded over http\nexec sleep 1000\n",
        )],
    );
    // The file server is itself an instance of the runtime.
    let mut server = spec(
        "files",
        &[
            "python3",
            "-m",
            "http.server",
            "${PORT}",
            "--bind",
            "127.0.0.1",
        ],
    );
    server.process.working_dir = Some(site.display().to_string());
    server.readiness = Some(Probe {
        http_get: Some(HttpGetAction {
            path: "/".into(),
            port: None,
            host: None,
        }),
        ..probe()
    });
    let server = h.rt.start(server).await.expect("start file server");
    h.wait_one("file server ready", |i| i.is_ready()).await;

    let mut s = spec("fetched", &["run.sh"]);
    s.process.artifact = Some(Artifact {
        url: format!("http://127.0.0.1:{}/app.tgz", server.port),
        sha256: sha,
    });
    let i = h.rt.start(s).await.expect("start");
    eventually("the downloaded program's output", || {
        h.log_of(&i).contains("downloaded over http")
    })
    .await;
    with_timeout(h.rt.stop(&i.id)).await.expect("stop");
    with_timeout(h.rt.stop(&server.id))
        .await
        .expect("stop server");
}

/// An HTTP server instance serving `site`, ready while `site/healthz` exists.
fn health_checked_server(app: &str, site: &Path) -> InstanceSpec {
    let mut s = spec(
        app,
        &[
            "python3",
            "-m",
            "http.server",
            "${PORT}",
            "--bind",
            "127.0.0.1",
        ],
    );
    s.process.working_dir = Some(site.display().to_string());
    s.readiness = Some(Probe {
        http_get: Some(HttpGetAction {
            path: "/healthz".into(),
            port: None,
            host: None,
        }),
        ..probe()
    });
    s
}

/// The `ready` field of the only record in `instances.json`.
fn recorded_ready(state: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(state.join("runtime/instances.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["instances"][0]["ready"].as_bool()
}

/// Starts a health-checked server, waits until it is ready and recorded as ready, and shuts
/// the runtime down as a dying controller would. Returns the instance as it was before.
async fn ready_server_then_controller_gone(h: &mut Harness, app: &str) -> (Instance, PathBuf) {
    let site = h.state().join("site");
    std::fs::create_dir_all(&site).expect("site dir");
    std::fs::write(site.join("healthz"), "ok").expect("healthz");
    h.rt.start(health_checked_server(app, &site))
        .await
        .expect("start");
    let before = h
        .wait_one("ready", |i| i.is_ready() && i.pid.is_some())
        .await;
    h.extra_pids.push(before.pid.expect("pid"));
    // Written when the phase became ready, not only at shutdown.
    eventually("the record to say ready", || {
        recorded_ready(h.state()) == Some(true)
    })
    .await;
    h.rt.shutdown().await;
    assert!(is_running(before.pid.expect("pid")));
    (before, site)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_instance_is_adopted_ready_without_waiting_for_its_probe() {
    let mut h = Harness::new().await;
    let (before, _site) = ready_server_then_controller_gone(&mut h, "keepready").await;

    h.rt = LocalRuntime::open(h.state()).await.expect("reopen");
    let first = h.rt.instances();
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!(first[0].phase, Phase::Ready, "{first:#?}");
    assert_eq!(first[0].id, before.id);
    assert_eq!(first[0].pid, before.pid);
    assert_eq!(first[0].port, before.port);
    assert_eq!(first[0].restarts, 0);
    let actions = h.event_actions();
    assert!(actions.contains(&"adopted".to_string()), "{actions:?}");
    assert!(!actions.contains(&"lost".to_string()), "{actions:?}");
    assert_eq!(recorded_ready(h.state()), Some(true));

    // Still probed: the server logs new probe requests after adoption (two, so one that was
    // in flight when the old runtime shut down does not count).
    let probes = |h: &Harness| h.log_of(&before).matches("GET /healthz HTTP/1.1").count();
    let at_open = probes(&h);
    eventually("probe requests after adoption", || {
        probes(&h) >= at_open + 2
    })
    .await;
    assert!(h.rt.instances()[0].is_ready());
    with_timeout(h.rt.stop(&before.id)).await.expect("stop");
    let pid = before.pid.expect("pid");
    eventually("the adopted process to die", || !is_running(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_adopted_ready_is_demoted_when_its_probe_fails() {
    let mut h = Harness::new().await;
    let (before, site) = ready_server_then_controller_gone(&mut h, "demoted").await;

    h.rt = LocalRuntime::open(h.state()).await.expect("reopen");
    let first = h.rt.instances();
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!(first[0].phase, Phase::Ready, "{first:#?}");
    assert_eq!(first[0].pid, before.pid);

    // The process keeps running but its health check stops answering 2xx.
    std::fs::remove_file(site.join("healthz")).expect("remove healthz");
    let unready = h
        .wait_one("unready", |i| matches!(i.phase, Phase::Unready { .. }))
        .await;
    let Phase::Unready { reason } = &unready.phase else {
        unreachable!()
    };
    assert!(reason.contains("404"), "{reason}");
    assert_eq!(unready.pid, before.pid, "demoted, not restarted");
    assert_eq!(unready.restarts, 0);
    let actions = h.event_actions();
    assert!(actions.contains(&"adopted".to_string()), "{actions:?}");
    assert!(actions.contains(&"unready".to_string()), "{actions:?}");
    eventually("the record to say not ready", || {
        recorded_ready(h.state()) == Some(false)
    })
    .await;
    with_timeout(h.rt.stop(&before.id)).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_adopted_without_a_ready_record_starts_as_before() {
    let mut h = Harness::new().await;
    let (before, _site) = ready_server_then_controller_gone(&mut h, "oldrecord").await;
    // As a controller from before readiness was recorded would have left the file.
    edit_records(h.state(), |json| {
        json["instances"][0]
            .as_object_mut()
            .expect("record")
            .remove("ready");
    });

    h.rt = LocalRuntime::open(h.state()).await.expect("reopen");
    let first = h.rt.instances();
    assert_eq!(first.len(), 1, "{first:#?}");
    // Its first probe may already have passed by this read; what matters is that readiness
    // was earned by a probe after adoption (a `ready` event), not restored from the record.
    assert!(
        matches!(first[0].phase, Phase::Starting | Phase::Ready),
        "{first:#?}"
    );
    assert_eq!(first[0].pid, before.pid);
    let after = h.wait_one("ready", |i| i.is_ready()).await;
    assert_eq!(after.pid, before.pid);
    eventually("a ready event after the adoption", || {
        let actions = h.event_actions();
        let adopted = actions.iter().position(|a| a == "adopted");
        let ready = actions.iter().rposition(|a| a == "ready");
        matches!((adopted, ready), (Some(a), Some(r)) if a < r)
    })
    .await;
    with_timeout(h.rt.stop(&before.id)).await.expect("stop");
}
