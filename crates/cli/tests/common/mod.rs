//! Fixtures for end-to-end tests: real Git repositories (the `git` CLI), a real `git daemon`
//! on 127.0.0.1, and the real `gauntlet` binary as controller and as the demo application.
//! Every wait is a poll with a deadline; nothing sleeps and hopes.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_gauntlet");
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `probe` every 50 ms until it returns `Some`, or panics with `what` after `DEADLINE`.
pub fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    child: Child,
    pub port: u16,
    base: PathBuf,
}

impl GitDaemon {
    pub fn start(base: &Path, port: u16) -> GitDaemon {
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
            .expect("git daemon starts");
        wait_until("git daemon accepts connections", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        GitDaemon {
            child,
            port,
            base: base.to_path_buf(),
        }
    }

    pub fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }

    /// Kills the daemon and the per-connection processes it forked, which would otherwise
    /// keep its listening socket open.
    pub fn stop(&mut self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        wait_until("the git daemon's port closed", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port))
                .is_err()
                .then_some(())
        });
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `gauntlet up` process with its own state directory.
pub struct Controller {
    pub child: Option<Child>,
    pub state: tempfile::TempDir,
    pub listen: String,
    args: Vec<String>,
    http: reqwest::blocking::Client,
}

impl Controller {
    pub fn start(repo: &str, extra: &[&str]) -> Controller {
        let state = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = vec![
            "up".into(),
            "--repo".into(),
            repo.into(),
            "--listen".into(),
            listen.clone(),
        ];
        if !extra.contains(&"--interval") {
            args.extend(["--interval".into(), "1s".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut c = Controller {
            child: None,
            state,
            listen,
            args,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        };
        c.spawn();
        c
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.path().join("controller.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(&self.args)
            .arg("--state-dir")
            .arg(self.state.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until("the controller answers", || {
            self.http
                .get(format!("http://{}/api/v1/healthz", self.listen))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
        });
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.state.path().join("token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("http://{}{path}", self.listen))
            .bearer_auth(self.token())
            .send()
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().unwrap()
    }

    pub fn post(&self, path: &str, body: Value) -> reqwest::blocking::Response {
        self.http
            .post(format!("http://{}{path}", self.listen))
            .bearer_auth(self.token())
            .json(&body)
            .send()
            .unwrap()
    }

    pub fn status(&self) -> Value {
        self.get("/api/v1/status")
    }

    pub fn sync(&self) -> Value {
        let r = self.post("/api/v1/sync", serde_json::json!({}));
        assert!(r.status().is_success(), "sync: {}", r.status());
        r.json().unwrap()
    }

    pub fn app(&self, name: &str) -> Option<Value> {
        self.status()["apps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
    }

    /// Waits until `name`, judged against the applied commit, is Healthy with `ready`
    /// instances, all of one revision, and returns it.
    pub fn wait_healthy(&self, name: &str, ready: u64) -> Value {
        wait_until(&format!("{name} healthy with {ready} ready"), || {
            let s = self.status();
            let applied = s["source"]["applied"]["sha"].clone();
            s["apps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == name)
                .cloned()
                .filter(|a| {
                    a["commit"] == applied
                        && a["health"]["status"] == "Healthy"
                        && a["ready"] == ready
                        && a["instances"].as_array().unwrap().len() as u64 == ready
                })
        })
    }

    pub fn applied(&self) -> String {
        self.status()["source"]["applied"]["sha"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn history(&self, app: &str) -> Vec<Value> {
        self.get(&format!("/api/v1/history?app={app}&limit=200"))
            .as_array()
            .unwrap()
            .clone()
    }

    /// SIGKILL: no chance to clean anything up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn run_cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--state-dir")
            .arg(self.state.path())
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Never panic again while unwinding: kill what the runtime recorded and the
            // controller, and leave nothing running.
            kill_recorded_instances(self.state.path());
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return;
        }
        if self.child.is_none() {
            self.spawn();
        }
        let _ = self.post(
            "/api/v1/shutdown",
            serde_json::json!({"stopInstances": true}),
        );
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
