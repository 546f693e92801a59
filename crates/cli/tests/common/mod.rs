//! Fixtures for end-to-end tests: real Git repositories (the `git` CLI), a real `git daemon`
//! on 127.0.0.1, and the real `gauntlet` binary as controller and as the demo application.
//! Every wait is a poll with a deadline; nothing sleeps and hopes.

#![allow(dead_code)]

pub mod proxy;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_gauntlet");
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `probe` every 50 ms until it returns `Some`, or panics with `what` after `DEADLINE`.
pub fn wait_until<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    wait_until_or(what, String::new, probe)
}

/// [`wait_until`], and on timeout the panic message also carries `context()` (a log tail, say).
pub fn wait_until_or<T>(
    what: &str,
    context: impl FnOnce() -> String,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port on 127.0.0.1 that nothing listens on now, for an address a test writes into a
/// manifest. It is drawn below the kernel's ephemeral range, where `bind(0)` (the runtime's
/// instance ports, other tests' listeners) and outgoing connections never land, so another
/// test running beside this one cannot take it before this test's controller binds it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static DRAWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    const LOWEST: u16 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = u64::from(ephemeral.saturating_sub(LOWEST).max(1));
    // RandomState is seeded per process, so concurrent test binaries draw differently.
    let seed = std::collections::hash_map::RandomState::new();
    for _ in 0..1_000 {
        let mut h = seed.build_hasher();
        h.write_u64(DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let port = LOWEST + (h.finish() % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {LOWEST} and {ephemeral} after 1,000 draws");
}

/// A Git repository made with the git CLI.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(self.path())
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn write(&self, path: &str, contents: &str) {
        let p = self.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }

    /// Commits everything and returns the new commit's SHA.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// An application manifest running `gauntlet demo-app`.
pub fn app_yaml(name: &str, version: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata:
  name: {name}
spec:
  replicas: {replicas}
  process:
    command: ["{BIN}", "demo-app"]
    args: ["--listen", "127.0.0.1:${{PORT}}", "--version", "{version}"]
    terminationGracePeriodSeconds: 5
  readiness:
    httpGet: {{path: /healthz}}
    periodSeconds: 1
"#
    )
}

/// `git daemon` serving a directory on 127.0.0.1; killed on drop.
pub struct GitDaemon {
    /// `None` once stopped: the process group is signalled only while its leader is unreaped,
    /// so its id cannot have been reused.
    child: Option<Child>,
    pub port: u16,
    base: PathBuf,
}

impl GitDaemon {
    /// Starts a daemon on a free port and waits until it serves `repo` (a path under `base`).
    pub fn start_any(base: &Path, repo: &str) -> GitDaemon {
        // Another process may take the free port before the daemon binds it: then try again.
        for _ in 0..5 {
            if let Ok(d) = GitDaemon::try_start(base, free_port(), repo) {
                return d;
            }
        }
        panic!("git daemon could not listen on any of 5 free ports");
    }

    /// Starts a daemon on `port` and waits until it, not some other listener, serves `repo`.
    pub fn start(base: &Path, port: u16, repo: &str) -> GitDaemon {
        GitDaemon::try_start(base, port, repo)
            .unwrap_or_else(|e| panic!("git daemon on port {port}: {e}"))
    }

    fn try_start(base: &Path, port: u16, repo: &str) -> Result<GitDaemon, String> {
        use std::os::unix::process::CommandExt;
        let child = Command::new("git")
            .process_group(0)
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                &base.display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run git daemon: {e}"))?;
        let mut daemon = GitDaemon {
            child: Some(child),
            port,
            base: base.to_path_buf(),
        };
        let url = daemon.url(repo);
        let exited = wait_until(&format!("git daemon serves {url}"), || {
            let child = daemon.child.as_mut().expect("not stopped yet");
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Some(status));
            }
            ls_remote(&url).then_some(None)
        });
        if let Some(status) = exited {
            // Already reaped: nothing left to signal.
            daemon.child = None;
            return Err(format!("git daemon exited ({status}); is the port taken?"));
        }
        Ok(daemon)
    }

    pub fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }

    /// Kills the daemon and the per-connection processes it forked, which would otherwise
    /// keep its listening socket open. Stopping twice does nothing.
    pub fn stop(&mut self) {
        self.kill();
        wait_until("the git daemon's port closed", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port))
                .is_err()
                .then_some(())
        });
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// Whether `git ls-remote url` succeeds within 10 s: a Git server answers there. (Something
/// else on the port may never answer, hence the deadline.)
pub fn ls_remote(url: &str) -> bool {
    let Ok(mut child) = Command::new("git")
        .args(["ls-remote", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.kill();
        } else if self.child.is_some() {
            self.stop();
        }
    }
}

/// A `gauntlet up` process with its own state directory, listening on a port it picks itself.
pub struct Controller {
    pub child: Option<Child>,
    pub state: tempfile::TempDir,
    /// The address the running controller wrote to `controller.json`; changes on each spawn.
    pub listen: String,
    args: Vec<String>,
    http: reqwest::blocking::Client,
}

impl Controller {
    pub fn start(repo: &str, extra: &[&str]) -> Controller {
        let state = tempfile::tempdir().expect("a temporary state directory");
        let mut args: Vec<String> = vec!["up".into(), "--repo".into(), repo.into()];
        if !extra.contains(&"--listen") {
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        if !extra.contains(&"--interval") {
            args.extend(["--interval".into(), "1s".into()]);
        }
        if !extra.contains(&"--proxy-admin") {
            args.extend(["--proxy-admin".into(), "127.0.0.1:0".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut c = Controller {
            child: None,
            state,
            listen: String::new(),
            args,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("an HTTP client"),
        };
        c.spawn();
        c
    }

    /// Starts the controller and waits until the `controller.json` it wrote names this very
    /// process (a SIGKILLed predecessor leaves its own behind) and its API answers there.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("controller.log opens");
        let child = Command::new(BIN)
            .args(&self.args)
            .arg("--state-dir")
            .arg(self.state.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("controller.log opens twice"))
            .stderr(log)
            .spawn()
            .expect("gauntlet up starts");
        let pid = child.id();
        // Held by `self` at once, so that a panic below still kills it (see `Drop`).
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "the controller exited before it answered ({status})\n{}",
                        self.log_tail()
                    );
                }
            }
            if let Some(listen) = self.listening(pid) {
                self.listen = listen;
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out waiting for the controller (pid {pid}) to answer\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address in `controller.json` if it names `pid` and healthz answers there.
    fn listening(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(self.state.path().join("controller.json")).ok()?;
        let info: Value = serde_json::from_str(&text).ok()?;
        if info["pid"].as_u64() != Some(u64::from(pid)) {
            return None;
        }
        let listen = info["listen"].as_str()?.to_string();
        self.http
            .get(format!("http://{listen}/api/v1/healthz"))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| listen)
    }

    fn log_path(&self) -> PathBuf {
        self.state.path().join("controller.log")
    }

    /// The last lines of the controller's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!(
            "--- last lines of {} ---\n{tail}",
            self.log_path().display()
        )
    }

    /// [`wait_until`] that fails at once, with the log's tail, if the controller exits, and
    /// shows the log's tail on timeout too.
    pub fn wait_until<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let pid = self.child.as_ref().map(|c| c.id());
        wait_until_or(
            what,
            || self.log_tail(),
            || {
                if let Some(pid) = pid {
                    assert!(
                        alive(u64::from(pid)),
                        "the controller exited while waiting for {what}\n{}",
                        self.log_tail()
                    );
                }
                probe()
            },
        )
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.state.path().join("token"))
            .unwrap_or_else(|e| panic!("reading the controller's token: {e}"))
            .trim()
            .to_string()
    }

    pub fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("http://{}{path}", self.listen))
            .bearer_auth(self.token())
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_tail()));
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json()
            .unwrap_or_else(|e| panic!("GET {path}: the body is not JSON: {e}"))
    }

    pub fn post(&self, path: &str, body: Value) -> reqwest::blocking::Response {
        self.http
            .post(format!("http://{}{path}", self.listen))
            .bearer_auth(self.token())
            .json(&body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log_tail()))
    }

    pub fn status(&self) -> Value {
        self.get("/api/v1/status")
    }

    /// POST /api/v1/sync: returns the status after a fetch pass that started after the call.
    pub fn sync(&self) -> Value {
        let r = self.post("/api/v1/sync", serde_json::json!({}));
        assert!(r.status().is_success(), "sync: {}", r.status());
        r.json()
            .unwrap_or_else(|e| panic!("sync: the body is not JSON: {e}"))
    }

    /// Fetch passes the controller has completed.
    pub fn checks(&self) -> u64 {
        let s = self.status();
        s["source"]["checks"]
            .as_u64()
            .unwrap_or_else(|| panic!("status has no source.checks: {s}"))
    }

    pub fn app(&self, name: &str) -> Option<Value> {
        self.status()["apps"]
            .as_array()
            .expect("status has apps")
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
    }

    /// Waits until `name`, judged against the applied commit, is Healthy with `ready`
    /// instances, all of one revision, and returns it.
    pub fn wait_healthy(&self, name: &str, ready: u64) -> Value {
        self.wait_until(&format!("{name} healthy with {ready} ready"), || {
            let s = self.status();
            let applied = s["source"]["applied"]["sha"].clone();
            s["apps"]
                .as_array()
                .expect("status has apps")
                .iter()
                .find(|a| a["name"] == name)
                .cloned()
                .filter(|a| {
                    a["commit"] == applied
                        && a["health"]["status"] == "Healthy"
                        && a["ready"] == ready
                        && a["instances"].as_array().is_some_and(|i| {
                            i.len() as u64 == ready
                                && i.iter().all(|i| i["revision"] == a["revision"])
                        })
                })
        })
    }

    pub fn applied(&self) -> String {
        self.status()["source"]["applied"]["sha"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The newest 200 audit records of `app` (all when empty), oldest first.
    pub fn history(&self, app: &str) -> Vec<Value> {
        self.get(&format!("/api/v1/history?app={app}&limit=200"))
            .as_array()
            .expect("history is an array")
            .clone()
    }

    /// Every audit record, oldest first.
    pub fn all_history(&self) -> Vec<Value> {
        self.get("/api/v1/history?limit=1000000")
            .as_array()
            .expect("history is an array")
            .clone()
    }

    /// The instances' processes as the operating system sees them, see [`instance_processes`].
    pub fn processes(&self) -> Vec<u64> {
        instance_processes(self.state.path())
    }

    /// POST /api/v1/shutdown and wait up to 30 s for the controller to exit; `None` if it did
    /// not (it still runs then).
    pub fn shutdown(&mut self, stop_instances: bool) -> Option<std::process::ExitStatus> {
        let r = self.post(
            "/api/v1/shutdown",
            serde_json::json!({"stopInstances": stop_instances}),
        );
        assert_eq!(r.status().as_u16(), 202, "shutdown");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL: no chance to clean anything up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The proxy this controller runs, as it announced itself in the state directory.
    pub fn proxy_pid(&self) -> Option<u32> {
        let text =
            std::fs::read_to_string(self.state.path().join("proxy").join("proxy.json")).ok()?;
        let info: Value = serde_json::from_str(&text).ok()?;
        let pid = u32::try_from(info["pid"].as_u64()?).ok()?;
        alive(u64::from(pid)).then_some(pid)
    }

    /// The proxy's admin address, as it announced itself in the state directory.
    pub fn proxy_admin(&self) -> Option<String> {
        let text =
            std::fs::read_to_string(self.state.path().join("proxy").join("proxy.json")).ok()?;
        let info: Value = serde_json::from_str(&text).ok()?;
        info["admin"].as_str().map(str::to_string)
    }

    pub fn run_cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--state-dir")
            .arg(self.state.path())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("gauntlet {args:?}: {e}"))
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Never panic again while unwinding: kill what the runtime recorded, what the OS
            // says is ours, and the controller, and leave nothing running.
            kill_recorded_instances(self.state.path());
            for pid in instance_processes(self.state.path()) {
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            if let Some(pid) = self.proxy_pid() {
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return;
        }
        if self.child.is_none() {
            self.spawn();
        }
        if self.shutdown(true).is_none() {
            self.kill9();
        }
        if let Some(pid) = self.proxy_pid() {
            eprintln!("killed the proxy {pid}, left running by a shutdown with stopInstances");
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
        // Nothing of the test may outlive it, even if the controller failed to stop it.
        let left = instance_processes(self.state.path());
        if !left.is_empty() {
            let who: Vec<String> = left
                .iter()
                .map(|pid| {
                    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                    let id = env
                        .split(|b| *b == 0)
                        .find_map(|e| e.strip_prefix(b"GAUNTLET_INSTANCE="))
                        .map(|id| String::from_utf8_lossy(id).into_owned())
                        .unwrap_or_default();
                    format!("{pid} ({id})")
                })
                .collect();
            // Not a failure of the test at hand: `stopping_the_controller_with_its_instances_
            // leaves_no_process` owns that behaviour.
            eprintln!("killed {who:?}, left running by a shutdown with stopInstances");
            for pid in left {
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
        }
    }
}

/// Pids of the live process-group leaders whose environment carries
/// `GAUNTLET_STATE_DIR={state, canonical}`: every instance process started for that state
/// directory, whether or not any controller knows it. Sorted.
pub fn instance_processes(state: &Path) -> Vec<u64> {
    let Ok(canonical) = std::fs::canonicalize(state) else {
        return Vec::new();
    };
    let mut marker = b"GAUNTLET_STATE_DIR=".to_vec();
    marker.extend_from_slice(canonical.as_os_str().as_encoded_bytes());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u64> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            // Processes of other users, or gone by now, cannot be read: not ours.
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == marker.as_slice()))
        })
        .filter(|pid| group_leader(*pid) && alive(*pid))
        .collect();
    pids.sort();
    pids
}

/// Whether `pid` leads its process group (field 5 of `/proc/PID/stat`, `pgrp`, equals it).
fn group_leader(pid: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // After the parenthesised command name: state, ppid, pgrp, ...
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    rest.split_whitespace()
        .nth(2)
        .and_then(|p| p.parse::<u64>().ok())
        == Some(pid)
}

/// GET http://127.0.0.1:port/ and return the trimmed body.
pub fn answer(port: u64) -> Option<String> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .ok()?
        .text()
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn instance_ports(app: &Value) -> Vec<u64> {
    app["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["port"].as_u64().unwrap())
        .collect()
}

pub fn instance_pids(app: &Value) -> Vec<u64> {
    let mut v: Vec<u64> = app["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["pid"].as_u64())
        .collect();
    v.sort();
    v
}

pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// SIGKILLs every process group the runtime's records name.
fn kill_recorded_instances(state: &Path) {
    let Ok(text) = std::fs::read_to_string(state.join("runtime/instances.json")) else {
        return;
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        return;
    };
    let mut pids = Vec::new();
    collect_pids(&v, &mut pids);
    for pid in pids {
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
}

fn collect_pids(v: &Value, out: &mut Vec<u64>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "pid" {
                    if let Some(p) = v.as_u64() {
                        out.push(p);
                    }
                } else {
                    collect_pids(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_pids(v, out)),
        _ => {}
    }
}
