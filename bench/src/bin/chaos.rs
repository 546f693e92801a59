//! Chaos faults against the real binary on loopback: how fast a fault is gone once its run is
//! aborted, how close to its lease a fault ends when the controller is dead, how accurate an
//! injected delay is, and what fault rules that do not fire cost the proxy.
//!
//! 1. **Abort to last fault removed.** A real controller (`gauntlet up`, release build) follows a
//!    temporary repository with `web` (two `gauntlet demo-app` instances behind the proxy) and
//!    `ChaosExperiment`s. For each run: `POST /api/v1/chaos/experiments/{name}/run`, wait until
//!    the fault is observably in place, take t0, send `POST /api/v1/chaos/runs/{id}/abort` from
//!    another thread, and take t1 when the removal is first observed: for `pause` (SIGSTOP held
//!    by a fault agent) the paused instance's `/proc/PID/stat` state is no longer `T` (read
//!    every 0.1 ms); for the proxy fault `http: {abort: {status: 503}, percent: 100}` on stable,
//!    a request through the service port answers 200 (requests back to back on one kept-alive
//!    connection).
//! 2. **Lease expiry with the controller dead.** `gauntlet up --chaos-lease 2s`; a run holds a
//!    long fault; once it is in place (and after a pause spread over the 1 s renewal cycle) the
//!    benchmark reads the fault's `leaseExpiresMs` from the journal, reads it again, SIGKILLs
//!    the controller's pid alone (not the proxy, not the instances, not the agent) and observes
//!    the removal as above; the figure is removal (wall clock) − `leaseExpiresMs`. The lease
//!    the agent or the proxy really holds (the agent's record, the proxy's served
//!    configuration) is read right after the kill and compared. Then the controller restarts on
//!    the same state directory and the run must read Interrupted before the next one.
//! 3. **Delay accuracy.** `http: {delay: {latency: 50ms}}` and `{latency: 50ms, jitter: 20ms}`
//!    at 100 %: N requests through the service port (4 kept-alive connections, each sequential)
//!    without the fault, then with it; the added latency of a request is its latency minus the
//!    baseline's median. Configured: the fixed latency plus a whole number of ms drawn uniformly
//!    from 0..=jitter (so 60 / 70 ms at p50 / p99 with 20 ms of jitter).
//! 4. **Proxy overhead of fault rules that do not fire.** A standalone `gauntlet proxy
//!    --workers 1` (pinned to CPU 0) in front of two `gauntlet demo-app`, configured over its
//!    admin API: no rules; 10 rules on another revision (weight 0); 10 rules on the served
//!    revision limited to callers (pids of the backends, not wrk's). `wrk -t1 -c32` (pinned to
//!    CPU 1 with the backends), kept-alive connections and, to show the per-connection cost of
//!    caller rules (the proxy reads `/proc/net/tcp` to find who opened a connection), `Connection:
//!    close`; the sockets listed in `/proc/net/tcp` at the start of each case are printed, with
//!    the time one read of it takes.
//!
//! `./chaos [all|abort|lease|delay|overhead]` (the `gauntlet` binary must sit next to this one:
//! build both with the same target directory). Knobs: `CHAOS_ABORT_RUNS` (50),
//! `CHAOS_LEASE_RUNS` (20), `CHAOS_DELAY_REQUESTS` (500), `CHAOS_WRK_SECONDS` (5),
//! `CHAOS_WRK_ROUNDS` (3). Nothing asserts on time: the benchmark prints.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use gauntlet_bench::{free_port, gauntlet_bin, git, instance_processes, shut_down, wait};
use serde_json::{json, Value};

/// The abort target: every fault removed within this of the abort request.
const ABORT_TARGET_MS: f64 = 100.0;
/// `--chaos-lease` of the lease part.
const LEASE: &str = "2s";
/// Connections of the delay measurement, each sending its share sequentially.
const DELAY_CONNECTIONS: usize = 4;
/// Fault rules present in the overhead part.
const RULES: usize = 10;

fn main() -> Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let parts = ["abort", "lease", "delay", "overhead"];
    if what != "all" && !parts.contains(&what.as_str()) {
        bail!("usage: chaos [all|abort|lease|delay|overhead]");
    }
    let wants = |part: &str| what == "all" || what == part;
    let bin = gauntlet_bin()?;
    println!(
        "chaos benchmark: gauntlet at HEAD {}, binary {} (built {} ago), {} CPUs, 127.0.0.1 only",
        version(),
        bin.display(),
        std::fs::metadata(&bin)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or("?".into(), |d| format!("{:.0} min", d.as_secs_f64() / 60.0)),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Each part on a controller of its own, with a fresh state directory.
    if wants("abort") {
        abort_part(&Bed::new(&bin, &[])?)?;
    }
    if wants("lease") {
        lease_part(&bin)?;
    }
    if wants("delay") {
        delay_part(&Bed::new(&bin, &[])?)?;
    }
    if wants("overhead") {
        overhead_part(&bin)?;
    }
    Ok(())
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn version() -> String {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into());
    let dirty = Command::new("git")
        .args([
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "../crates",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    format!(
        "{commit}{}",
        if dirty {
            " (uncommitted changes in crates/ at run time)"
        } else {
            ""
        }
    )
}

// ---------------------------------------------------------------------------------------------
// Small tools

fn now_ms_f() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

/// The state letter of `/proc/PID/stat` (`T` for a stopped process), `None` once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn alive(pid: u32) -> bool {
    proc_state(pid).is_some_and(|s| s != 'Z')
}

fn kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Nearest-rank quantile of `samples` (ms).
fn q(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client: one kept-alive connection, `GET /`, the status. Cheaper and more
// predictable than a general client, so it adds little to what is measured.

struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(port: u16) -> Conn {
        Conn {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// One `GET /`: the status, or `None` when no answer came (refused, reset, timed out). A
    /// kept-alive connection that turns out closed is replaced once.
    fn get(&mut self) -> Option<u16> {
        let reused = self.stream.is_some();
        match self.exchange() {
            Ok(status) => Some(status),
            Err(_) => {
                self.stream = None;
                if !reused {
                    return None;
                }
                let again = self.exchange().ok();
                if again.is_none() {
                    self.stream = None;
                }
                again
            }
        }
    }

    fn exchange(&mut self) -> std::io::Result<u16> {
        use std::io::{Error, ErrorKind};
        let bad = |what: &str| Error::new(ErrorKind::InvalidData, what.to_string());
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.set_write_timeout(Some(Duration::from_secs(5)))?;
            self.stream = Some(s);
        }
        let s = self.stream.as_mut().expect("connected above");
        s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let mut read = |buf: &mut Vec<u8>| -> std::io::Result<()> {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(Error::new(ErrorKind::UnexpectedEof, "connection closed"));
            }
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        };
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if self.buf.len() > 65_536 {
                return Err(bad("response head over 64 KiB"));
            }
            read(&mut self.buf)?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| bad("head"))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("status line"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        for line in head.lines().skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                let v = v.trim();
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        if chunked {
            while !self.buf[head_end..].ends_with(b"0\r\n\r\n") {
                read(&mut self.buf)?;
            }
        } else if let Some(len) = length {
            while self.buf.len() - head_end < len {
                read(&mut self.buf)?;
            }
        } else {
            close = true;
        }
        if close {
            self.stream = None;
        }
        Ok(status)
    }
}

// ---------------------------------------------------------------------------------------------
// The controller

/// A `gauntlet up` on a state directory, restartable; on drop it is shut down with its
/// instances, and whatever it started that is left (proxy, instances, fault agents) is killed
/// by pid.
struct Controller {
    bin: PathBuf,
    repo: PathBuf,
    state: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
    api: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Controller {
    fn start(bin: &Path, repo: &Path, state: &Path, extra: &[&str]) -> Result<Controller> {
        let mut c = Controller {
            bin: bin.to_path_buf(),
            repo: repo.to_path_buf(),
            state: state.to_path_buf(),
            log: state.with_extension("log"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            api: String::new(),
            token: String::new(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()?,
        };
        c.spawn()?;
        Ok(c)
    }

    /// Starts `gauntlet up` and waits until the `controller.json` it wrote names this process
    /// (a SIGKILLed predecessor leaves its own behind) and its API answers there.
    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(["up", "--repo"])
            .arg(&self.repo)
            .args(["--interval", "1h", "--listen", "127.0.0.1:0"])
            .args(["--proxy-admin", "127.0.0.1:0", "--state-dir"])
            .arg(&self.state)
            .args(&self.extra)
            .env("GAUNTLET_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the controller")?;
        let pid = child.id();
        self.child = Some(child);
        let state = self.state.clone();
        let http = self.http.clone();
        self.api = wait("the controller's API", Duration::from_secs(60), || {
            let text = std::fs::read_to_string(state.join("controller.json")).ok()?;
            let info: Value = serde_json::from_str(&text).ok()?;
            (info["pid"].as_u64() == Some(u64::from(pid))).then_some(())?;
            let listen = info["listen"].as_str()?.to_string();
            http.get(format!("http://{listen}/api/v1/healthz"))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| listen)
        })?;
        self.token = std::fs::read_to_string(self.state.join("token"))?
            .trim()
            .to_string();
        Ok(())
    }

    /// SIGKILL to the controller's own pid: the proxy, instances and agents live on.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.http
            .get(format!("http://{}{path}", self.api))
            .bearer_auth(&self.token)
            .send()
            .ok()
            .filter(|r| r.status().is_success())?
            .json()
            .ok()
    }

    fn post(&self, path: &str) -> Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("http://{}{path}", self.api))
            .bearer_auth(&self.token)
            .json(&json!({}))
            .send()?;
        let status = r.status().as_u16();
        Ok((status, r.json().unwrap_or(Value::Null)))
    }

    /// `web`'s ready instances and the pids of its running ones.
    fn web(&self) -> Option<(u64, Vec<u32>)> {
        let app = self.get("/api/v1/apps/web")?;
        let pids = app["instances"]
            .as_array()?
            .iter()
            .filter_map(|i| i["pid"].as_u64().map(|p| p as u32))
            .collect();
        Some((app["ready"].as_u64()?, pids))
    }

    /// Waits until `web` has `n` ready instances; returns their pids.
    fn wait_ready(&self, n: u64) -> Result<Vec<u32>> {
        wait("web ready", Duration::from_secs(60), || {
            self.web()
                .filter(|(ready, pids)| *ready == n && pids.len() as u64 == n)
                .map(|(_, pids)| pids)
        })
    }

    /// Starts a run of `experiment`; a 409 (the previous run still ending) is retried.
    fn start_run(&self, experiment: &str) -> Result<String> {
        let path = format!("/api/v1/chaos/experiments/{experiment}/run");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.post(&path)?;
            if status == 202 {
                return body["run"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("run answered {body}"));
            }
            if status != 409 || Instant::now() > deadline {
                bail!("POST {path}: {status} {body}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn run_view(&self, id: &str) -> Option<Value> {
        self.get(&format!("/api/v1/chaos/runs/{id}"))
    }

    /// Waits until run `id` has ended; returns its view.
    fn finished(&self, id: &str) -> Result<Value> {
        wait("the run to end", Duration::from_secs(60), || {
            self.run_view(id)
                .filter(|v| v["journal"]["endedMs"].is_u64())
        })
    }

    fn proxy_info(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.state.join("proxy").join("proxy.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The fault rules the proxy serves now, from its admin API.
    fn proxy_faults(&self) -> Option<Vec<Value>> {
        let admin = self.proxy_info()?["admin"].as_str()?.to_string();
        let cfg: Value = self
            .http
            .get(format!("http://{admin}/admin/v1/config"))
            .bearer_auth(&self.token)
            .send()
            .ok()?
            .json()
            .ok()?;
        Some(
            cfg["apps"]
                .as_array()?
                .iter()
                .flat_map(|a| a["faults"].as_array().cloned().unwrap_or_default())
                .collect(),
        )
    }

    /// The fault agents' records (`<state>/faults/*.json`).
    fn agent_records(&self) -> Vec<Value> {
        let Ok(dir) = std::fs::read_dir(self.state.join("faults")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| {
                e.path().extension().is_some_and(|x| x == "json")
                    && !e.file_name().to_string_lossy().starts_with('.')
            })
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if self.child.is_none() {
            // Killed on purpose: bring it back so that it stops its instances itself.
            let _ = self.spawn();
        }
        let proxy_pid = self.proxy_info().and_then(|i| i["pid"].as_u64());
        let agents: Vec<u64> = self
            .agent_records()
            .iter()
            .filter_map(|r| r["agentPid"].as_u64())
            .collect();
        shut_down(
            &self.http,
            &self.api.to_string(),
            &self.token,
            self.child.take(),
        );
        let mut left = instance_processes(&self.state);
        left.extend(proxy_pid.map(|p| p as u32));
        left.extend(agents.into_iter().map(|p| p as u32));
        for pid in left.into_iter().filter(|p| alive(*p)) {
            eprintln!("killing {pid}, left running after the controller's shutdown");
            kill(pid);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test bed: a repository with `web` and the experiments, and a controller following it

const PAUSE: &str = "pause-one";
const ABORT: &str = "abort-all";
const DELAY: &str = "delay-50";
const JITTER: &str = "delay-50-jitter-20";

fn web_manifest(bin: &Path, port: u16) -> String {
    format!(
        r#"apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata: {{name: web}}
spec:
  replicas: 2
  process:
    command: ["{}", "demo-app"]
    args: ["--listen", "127.0.0.1:${{PORT}}", "--version", "v1"]
    terminationGracePeriodSeconds: 2
  readiness: {{httpGet: {{path: /healthz}}, periodSeconds: 1}}
  service: {{listen: "127.0.0.1:{port}"}}
"#,
        bin.display()
    )
}

/// A `ChaosExperiment` holding one fault on `web`'s stable revision for up to 10 minutes.
fn experiment(name: &str, mode: &str, fault: &str) -> String {
    format!(
        "apiVersion: gauntlet.dev/v1alpha1\nkind: ChaosExperiment\nmetadata: {{name: {name}}}\nspec:\n  \
         target: {{application: web, revision: stable, mode: {mode}}}\n  \
         blastRadius: {{allowAllStable: true}}\n  hypothesis:\n    probes: []\n  method:\n  \
         - {{fault: {fault}, duration: 10m}}\n  duration: 20m\n"
    )
}

struct Bed {
    _dir: tempfile::TempDir,
    port: u16,
    c: Controller,
}

impl Bed {
    fn new(bin: &Path, extra: &[&str]) -> Result<Bed> {
        let dir = tempfile::tempdir()?;
        let repo = dir.path().join("repo");
        let state = dir.path().join("state");
        std::fs::create_dir_all(repo.join("apps"))?;
        std::fs::create_dir_all(repo.join("chaos"))?;
        std::fs::create_dir_all(&state)?;
        let port = free_port()?;
        git(&repo, &["init", "-q", "-b", "main"])?;
        std::fs::write(repo.join("apps/web.yaml"), web_manifest(bin, port))?;
        for (name, mode, fault) in [
            (PAUSE, "one", "{pause: {}}"),
            (ABORT, "all", "{http: {abort: {status: 503}, percent: 100}}"),
            (
                DELAY,
                "all",
                "{http: {delay: {latency: 50ms}, percent: 100}}",
            ),
            (
                JITTER,
                "all",
                "{http: {delay: {latency: 50ms, jitter: 20ms}, percent: 100}}",
            ),
        ] {
            std::fs::write(
                repo.join(format!("chaos/{name}.yaml")),
                experiment(name, mode, fault),
            )?;
        }
        git(&repo, &["add", "-A"])?;
        git(&repo, &["commit", "-q", "-m", "web and its experiments"])?;
        let c = Controller::start(bin, &repo, &state, extra)?;
        c.wait_ready(2)?;
        let mut conn = Conn::new(port);
        wait("web through the proxy", Duration::from_secs(60), || {
            (conn.get() == Some(200)).then_some(())
        })?;
        Ok(Bed { _dir: dir, port, c })
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Pause,
    Proxy,
}

impl Kind {
    fn experiment(self) -> &'static str {
        match self {
            Kind::Pause => PAUSE,
            Kind::Proxy => ABORT,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Pause => "pause (SIGSTOP held by a fault agent)",
            Kind::Proxy => "proxy http abort 503, 100 % of stable",
        }
    }
}

/// Waits until the fault of a fresh run is in place: the paused pid, or `None` for the proxy
/// fault (a 503 seen through the service port).
fn in_place(kind: Kind, pids: &[u32], conn: &mut Conn) -> Result<Option<u32>> {
    match kind {
        Kind::Pause => wait("an instance stopped", Duration::from_secs(30), || {
            pids.iter().copied().find(|p| proc_state(*p) == Some('T'))
        })
        .map(Some),
        Kind::Proxy => wait("503 through the proxy", Duration::from_secs(30), || {
            (conn.get() == Some(503)).then_some(())
        })
        .map(|_| None),
    }
}

/// Polls until the fault is observed gone (the paused pid no longer `T`, or a 200 through the
/// proxy), for at most `limit`; returns when it was seen.
fn observe_removal(paused: Option<u32>, conn: &mut Conn, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let gone = match paused {
            Some(pid) => proc_state(pid) != Some('T'),
            None => conn.get() == Some(200),
        };
        let now = Instant::now();
        if gone {
            return Some(now);
        }
        if now > deadline {
            return None;
        }
        if paused.is_some() {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Abort to last fault removed

struct AbortSample {
    /// t0 (just before the abort request) to the removal observed.
    removed: Option<Duration>,
    /// t0 to the abort request's answer.
    answered: Duration,
    /// The journal's `removedMs` (the controller's step that removes it) minus t0, wall clock.
    journal: Option<f64>,
}

fn abort_part(bed: &Bed) -> Result<()> {
    let runs = env_count("CHAOS_ABORT_RUNS", 50);
    let mut rows = Vec::new();
    for kind in [Kind::Pause, Kind::Proxy] {
        let mut samples = Vec::new();
        for i in 0..runs {
            eprintln!("abort: {} run {}/{runs}", kind.experiment(), i + 1);
            samples.push(abort_once(bed, kind)?);
        }
        rows.push((kind, samples));
    }
    println!();
    println!(
        "1. abort -> last fault removed: {runs} runs each; t0 just before POST /api/v1/chaos/runs/{{id}}/abort, \
         t1 when the removal is first seen (pause: /proc/PID/stat of the paused instance no longer T, read every 0.1 ms; \
         proxy: a request through the service port answers 200, requests back to back on one kept-alive connection); \
         target: every fault removed within {ABORT_TARGET_MS:.0} ms"
    );
    println!(
        "| fault | runs | removed: median | p90 | max | over {ABORT_TARGET_MS:.0} ms | abort API answered: median / max | journal removedMs - t0: median / max |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (kind, samples) in &rows {
        let removed: Vec<f64> = samples.iter().filter_map(|s| s.removed.map(ms)).collect();
        let missing = samples.len() - removed.len();
        let answered: Vec<f64> = samples.iter().map(|s| ms(s.answered)).collect();
        let journal: Vec<f64> = samples.iter().filter_map(|s| s.journal).collect();
        let over = removed.iter().filter(|d| **d > ABORT_TARGET_MS).count() + missing;
        println!(
            "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {over}{} | {:.1} / {:.1} ms | {:.0} / {:.0} ms |",
            kind.label(),
            samples.len(),
            q(&removed, 0.5),
            q(&removed, 0.9),
            q(&removed, 1.0),
            if missing > 0 {
                format!(" ({missing} not seen within 10 s)")
            } else {
                String::new()
            },
            q(&answered, 0.5),
            q(&answered, 1.0),
            q(&journal, 0.5),
            q(&journal, 1.0),
        );
    }
    Ok(())
}

fn abort_once(bed: &Bed, kind: Kind) -> Result<AbortSample> {
    let c = &bed.c;
    let pids = c.wait_ready(2)?;
    let mut conn = Conn::new(bed.port);
    let id = c.start_run(kind.experiment())?;
    let paused = in_place(kind, &pids, &mut conn)?;

    let url = format!("http://{}/api/v1/chaos/runs/{id}/abort", c.api);
    let (http, token) = (c.http.clone(), c.token.clone());
    let t0 = Instant::now();
    let t0_ms = now_ms_f();
    let abort = std::thread::spawn(move || {
        let status = http
            .post(url)
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .map(|r| r.status().as_u16());
        (status, Instant::now())
    });
    let seen = observe_removal(paused, &mut conn, Duration::from_secs(10));
    let (status, answered_at) = abort
        .join()
        .map_err(|_| anyhow!("the abort thread panicked"))?;
    match status {
        Ok(202) => {}
        other => bail!("abort of {id} answered {other:?}"),
    }
    let view = c.finished(&id)?;
    let journal = &view["journal"];
    if journal["status"] != "aborted" {
        eprintln!(
            "run {id} ended {}: {}",
            journal["status"], journal["message"]
        );
    }
    let removed_ms = journal["faults"]
        .as_array()
        .and_then(|f| f.iter().filter_map(|f| f["removedMs"].as_u64()).max());
    Ok(AbortSample {
        removed: seen.map(|t| t.duration_since(t0)),
        answered: answered_at.duration_since(t0),
        journal: removed_ms.map(|r| r as f64 - t0_ms),
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Lease expiry with the controller dead

struct LeaseSample {
    /// Removal seen (wall clock) minus the journal's `leaseExpiresMs` read just before the kill.
    after_lease: Option<f64>,
    /// The journal's lease minus the kill: how long the fault had left.
    left_at_kill: f64,
    /// The lease the agent or the proxy held, read right after the kill, minus the journal's.
    enforced_minus_journal: Option<i64>,
    /// Between the second read of the journal and the kill.
    read_to_kill: f64,
    /// The journal's `removedMs` after the restart minus the lease, and minus the restart.
    journal_removed: Option<(f64, f64)>,
}

fn lease_part(bin: &Path) -> Result<()> {
    let runs = env_count("CHAOS_LEASE_RUNS", 20);
    let mut rows = Vec::new();
    for kind in [Kind::Pause, Kind::Proxy] {
        let mut bed = Bed::new(bin, &["--chaos-lease", LEASE])?;
        let mut samples = Vec::new();
        for i in 0..runs {
            eprintln!("lease: {} run {}/{runs}", kind.experiment(), i + 1);
            samples.push(lease_once(&mut bed, kind, i)?);
        }
        rows.push((kind, samples));
    }
    println!();
    println!(
        "2. lease expiry with the controller dead: gauntlet up --chaos-lease {LEASE} (renewed every 1 s), {runs} runs each; \
         the fault's leaseExpiresMs read from the journal (GET /api/v1/chaos/runs/{{id}}) twice, then SIGKILL to the controller's pid alone, \
         removal observed as in 1 (wall clock); before each next run the controller restarts on the same state directory and the run reads Interrupted"
    );
    println!(
        "| fault | runs | removed after lease: median | p90 | max | min | lease left at kill: min / max | lease held (agent record / proxy config) = journal's | journal read -> kill: max | journal removedMs - lease: median / max | journal removedMs - restart: min / max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (kind, samples) in &rows {
        let after: Vec<f64> = samples.iter().filter_map(|s| s.after_lease).collect();
        let missing = samples.len() - after.len();
        let left: Vec<f64> = samples.iter().map(|s| s.left_at_kill).collect();
        let same = samples
            .iter()
            .filter(|s| s.enforced_minus_journal == Some(0))
            .count();
        let diffs: Vec<String> = samples
            .iter()
            .filter_map(|s| s.enforced_minus_journal.filter(|d| *d != 0))
            .map(|d| format!("{d:+} ms"))
            .collect();
        let unread = samples
            .iter()
            .filter(|s| s.enforced_minus_journal.is_none())
            .count();
        let read_to_kill: Vec<f64> = samples.iter().map(|s| s.read_to_kill).collect();
        let journal_removed: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.journal_removed.map(|r| r.0))
            .collect();
        let after_restart: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.journal_removed.map(|r| r.1))
            .collect();
        println!(
            "| {} | {}{} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.0} / {:.0} ms | {same} of {}{}{} | {:.1} ms | {:.0} / {:.0} ms | {:.0} / {:.0} ms |",
            kind.label(),
            samples.len(),
            if missing > 0 {
                format!(" ({missing} not seen)")
            } else {
                String::new()
            },
            q(&after, 0.5),
            q(&after, 0.9),
            q(&after, 1.0),
            q(&after, 0.0),
            q(&left, 0.0),
            q(&left, 1.0),
            samples.len(),
            if diffs.is_empty() {
                String::new()
            } else {
                format!(" (others: {})", diffs.join(", "))
            },
            if unread > 0 {
                format!(" ({unread} not readable)")
            } else {
                String::new()
            },
            q(&read_to_kill, 1.0),
            q(&journal_removed, 0.5),
            q(&journal_removed, 1.0),
            q(&after_restart, 0.0),
            q(&after_restart, 1.0),
        );
    }
    Ok(())
}

fn lease_once(bed: &mut Bed, kind: Kind, index: usize) -> Result<LeaseSample> {
    let pids = bed.c.wait_ready(2)?;
    let mut conn = Conn::new(bed.port);
    let id = bed.c.start_run(kind.experiment())?;
    let paused = in_place(kind, &pids, &mut conn)?;
    // Spread the kill over the renewal cycle (every half lease, 1 s).
    std::thread::sleep(Duration::from_millis((index as u64 * 373) % 1000));
    let lease = |c: &Controller| -> Result<u64> {
        c.run_view(&id)
            .and_then(|v| v["journal"]["faults"][0]["leaseExpiresMs"].as_u64())
            .ok_or_else(|| anyhow!("no leaseExpiresMs in run {id}"))
    };
    lease(&bed.c)?;
    let journal_lease = lease(&bed.c)?;
    let read_at = now_ms_f();
    bed.c.kill9();
    let killed_at = now_ms_f();
    let enforced = match kind {
        Kind::Pause => bed
            .c
            .agent_records()
            .iter()
            .filter_map(|r| r["untilMs"].as_u64())
            .max(),
        Kind::Proxy => bed
            .c
            .proxy_faults()
            .and_then(|f| f.iter().filter_map(|r| r["expiresAtMs"].as_u64()).max()),
    };
    let limit = Duration::from_millis((journal_lease as f64 - now_ms_f()).max(0.0) as u64 + 10_000);
    let seen = observe_removal(paused, &mut conn, limit).map(|_| now_ms_f());
    let restarted_at = now_ms_f();
    bed.c.spawn()?;
    let view = bed.c.finished(&id)?;
    if view["journal"]["status"] != "interrupted" {
        eprintln!(
            "run {id} ended {} after the restart: {}",
            view["journal"]["status"], view["journal"]["message"]
        );
    }
    let journal_removed = view["journal"]["faults"][0]["removedMs"]
        .as_u64()
        .map(|r| (r as f64 - journal_lease as f64, r as f64 - restarted_at));
    Ok(LeaseSample {
        journal_removed,
        after_lease: seen.map(|s| s - journal_lease as f64),
        left_at_kill: journal_lease as f64 - killed_at,
        enforced_minus_journal: enforced.map(|e| e as i64 - journal_lease as i64),
        read_to_kill: killed_at - read_at,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Delay accuracy

/// Latencies of `total` `GET /` through `port` over `DELAY_CONNECTIONS` connections, each
/// sequential (after one unmeasured request), for at most `limit`; with the statuses other
/// than 200 counted.
fn latencies(port: u16, total: usize, limit: Duration) -> (Vec<f64>, usize) {
    let per = total.div_ceil(DELAY_CONNECTIONS);
    let deadline = Instant::now() + limit;
    let threads: Vec<_> = (0..DELAY_CONNECTIONS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut conn = Conn::new(port);
                let _ = conn.get();
                let (mut out, mut bad) = (Vec::with_capacity(per), 0);
                for _ in 0..per {
                    if Instant::now() > deadline {
                        break;
                    }
                    let t = Instant::now();
                    match conn.get() {
                        Some(200) => out.push(ms(t.elapsed())),
                        _ => bad += 1,
                    }
                }
                (out, bad)
            })
        })
        .collect();
    let (mut all, mut bad) = (Vec::new(), 0);
    for t in threads {
        if let Ok((out, b)) = t.join() {
            all.extend(out);
            bad += b;
        }
    }
    (all, bad)
}

fn delay_part(bed: &Bed) -> Result<()> {
    let n = env_count("CHAOS_DELAY_REQUESTS", 500);
    let limit = Duration::from_secs(120);
    let mut rows = Vec::new();
    // Configured added latency: fixed + a uniform whole number of ms in 0..=jitter.
    for (experiment, fixed, jitter) in [(DELAY, 50.0, 0.0), (JITTER, 50.0, 20.0)] {
        eprintln!("delay: {experiment}: baseline");
        let (base, base_bad) = latencies(bed.port, n, limit);
        let base_p50 = q(&base, 0.5);
        let id = bed.c.start_run(experiment)?;
        let mut conn = Conn::new(bed.port);
        wait("the delay in place", Duration::from_secs(30), || {
            let t = Instant::now();
            (conn.get() == Some(200) && ms(t.elapsed()) >= fixed - 1.0).then_some(())
        })?;
        eprintln!("delay: {experiment}: {n} requests under the fault");
        let (faulty, bad) = latencies(bed.port, n, limit);
        let (status, body) = bed.c.post(&format!("/api/v1/chaos/runs/{id}/abort"))?;
        if status != 202 {
            bail!("abort of {id}: {status} {body}");
        }
        bed.c.finished(&id)?;
        let added: Vec<f64> = faulty.iter().map(|l| l - base_p50).collect();
        let configured = |p: f64| {
            // Nearest rank over the 21 (or 1) equally likely values.
            let values = jitter as usize + 1;
            let rank = ((p * values as f64).ceil() as usize).clamp(1, values);
            fixed + (rank - 1) as f64
        };
        rows.push((
            experiment,
            fixed,
            jitter,
            base,
            base_bad,
            faulty,
            bad,
            added,
            configured(0.5),
            configured(0.99),
        ));
    }
    println!();
    println!(
        "3. delay accuracy: {n} requests through the service port ({DELAY_CONNECTIONS} kept-alive connections, each sequential), \
         first without the fault (baseline), then under it; added = latency - baseline median"
    );
    println!(
        "| fault | baseline p50 / p99 | under fault p50 / p99 | configured added p50 / p99 / mean | measured added p50 / p99 / mean | measured added min / max | error p50 / p99 / mean | requests (not 200) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (experiment, fixed, jitter, base, base_bad, faulty, bad, added, c50, c99) in &rows {
        let (a50, a99) = (q(added, 0.5), q(added, 0.99));
        let mean = added.iter().sum::<f64>() / added.len().max(1) as f64;
        let c_mean = fixed + jitter / 2.0;
        println!(
            "| {experiment}: latency {fixed:.0}ms{} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {c50:.0} / {c99:.0} / {c_mean:.0} ms | {a50:.2} / {a99:.2} / {mean:.2} ms | {:.2} / {:.2} ms | {:+.2} / {:+.2} / {:+.2} ms | {} ({}), baseline {} ({}) |",
            if *jitter > 0.0 {
                format!(", jitter {jitter:.0}ms")
            } else {
                String::new()
            },
            q(base, 0.5),
            q(base, 0.99),
            q(faulty, 0.5),
            q(faulty, 0.99),
            q(added, 0.0),
            q(added, 1.0),
            a50 - c50,
            a99 - c99,
            mean - c_mean,
            faulty.len(),
            bad,
            base.len(),
            base_bad,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Proxy overhead of fault rules that do not fire

struct Wrk {
    rps: f64,
    p50: f64,
    p99: f64,
    non2xx: u64,
    errors: u64,
}

/// `wrk` latency figure ("355.00us", "1.20ms", "2.00s") in ms.
fn wrk_ms(v: &str) -> Option<f64> {
    let (n, unit) = v
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| v.split_at(i))?;
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> Option<Wrk> {
    let field = |prefix: &str| -> Option<&str> {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(|l| l[prefix.len()..].trim())
    };
    let rps = field("Requests/sec:")?.parse().ok()?;
    let p50 = wrk_ms(field("50%")?)?;
    let p99 = wrk_ms(field("99%")?)?;
    let non2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let errors = field("Socket errors:")
        .map(|v| {
            v.split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Some(Wrk {
        rps,
        p50,
        p99,
        non2xx,
        errors,
    })
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A command pinned to `cpu` with taskset when there is one (and two CPUs).
fn pinned(cpu: usize, program: &Path) -> Command {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 && has("taskset") {
        let mut c = Command::new("taskset");
        c.args(["-c", &cpu.to_string()]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Sockets listed in `/proc/net/tcp` (TIME_WAIT included), what a caller lookup reads, and
/// the fastest of three reads of it, in ms.
fn tcp_sockets() -> (usize, f64) {
    let mut count = 0;
    let mut fastest = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        fastest = fastest.min(ms(t.elapsed()));
        count = text.lines().count().saturating_sub(1);
    }
    (count, fastest)
}

fn run_wrk(port: u16, seconds: u64, close: bool) -> Result<Wrk> {
    let mut cmd = pinned(1, Path::new("wrk"));
    cmd.args(["-t1", "-c32", &format!("-d{seconds}s"), "--latency"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).ok_or_else(|| anyhow!("cannot read wrk's output:\n{text}"))
}

#[derive(Clone, Copy, PartialEq)]
enum Rules {
    None,
    OtherRevision,
    Callers,
}

impl Rules {
    fn label(self) -> String {
        match self {
            Rules::None => "no fault rules".into(),
            Rules::OtherRevision => {
                format!("{RULES} abort rules on another revision (weight 0)")
            }
            Rules::Callers => {
                format!("{RULES} abort rules on the served revision, callers = the backends' pids")
            }
        }
    }
}

fn proxy_config(version: u64, listen: u16, backends: &[(u16, u32)], rules: Rules) -> Value {
    let far = (now_ms_f() as u64) + 3_600_000;
    let callers: Vec<u32> = backends.iter().map(|(_, pid)| *pid).collect();
    let faults: Vec<Value> = (0..RULES)
        .map(|i| match rules {
            Rules::None => Value::Null,
            Rules::OtherRevision => json!({
                "revision": "v2", "kind": {"abort": {"status": 503}},
                "percent": 10_000, "expiresAtMs": far + i as u64,
            }),
            Rules::Callers => json!({
                "revision": "v1", "kind": {"abort": {"status": 503}},
                "percent": 10_000, "expiresAtMs": far + i as u64, "callers": callers,
            }),
        })
        .filter(|v| !v.is_null())
        .collect();
    json!({"version": version, "apps": [{
        "name": "bench",
        "listen": format!("127.0.0.1:{listen}"),
        "revisions": [
            {"name": "v1", "weight": 10_000, "endpoints": [{"addr": format!("127.0.0.1:{}", backends[0].0)}]},
            {"name": "v2", "weight": 0, "endpoints": [{"addr": format!("127.0.0.1:{}", backends[1].0)}]},
        ],
        "faults": faults,
    }]})
}

fn overhead_part(bin: &Path) -> Result<()> {
    if !has("wrk") {
        println!("\n4. proxy overhead: skipped, wrk is not installed (apt-get install wrk)");
        return Ok(());
    }
    let seconds = env_count("CHAOS_WRK_SECONDS", 5) as u64;
    let rounds = env_count("CHAOS_WRK_ROUNDS", 3);
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("proxy-state");
    std::fs::create_dir_all(&state)?;
    let token = format!("bench-{}-{}", std::process::id(), now_ms_f() as u64);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token)?;

    // Two backends on CPU 1 (with wrk), as bench/proxy/run.sh does.
    let mut backends = Vec::new();
    let mut keep = Vec::new();
    for version in ["v1", "v2"] {
        let port = free_port()?;
        let child = pinned(1, bin)
            .args(["demo-app", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--version", version])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting demo-app")?;
        let pid = child.id();
        keep.push(Killed(child));
        let mut conn = Conn::new(port);
        wait("demo-app", Duration::from_secs(30), || {
            (conn.get() == Some(200)).then_some(())
        })?;
        // taskset execs the program: the pid is demo-app's.
        backends.push((port, pid));
    }
    let proxy_log = std::fs::File::create(dir.path().join("proxy.log"))?;
    let proxy = Killed(
        pinned(0, bin)
            .arg("--state-dir")
            .arg(&state)
            .args(["proxy", "--admin", "127.0.0.1:0", "--token-file"])
            .arg(&token_file)
            .args(["--workers", "1"])
            .env("GAUNTLET_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(proxy_log.try_clone()?)
            .stderr(proxy_log)
            .spawn()
            .context("starting gauntlet proxy")?,
    );
    let proxy_pid = proxy.0.id();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()?;
    let admin = wait("the proxy's admin API", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(state.join("proxy").join("proxy.json")).ok()?;
        let info: Value = serde_json::from_str(&text).ok()?;
        (info["pid"].as_u64() == Some(u64::from(proxy_pid))).then_some(())?;
        let admin = info["admin"].as_str()?.to_string();
        http.get(format!("http://{admin}/admin/v1/config"))
            .bearer_auth(&token)
            .send()
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| admin)
    })?;
    let listen = free_port()?;
    let mut version = 0;
    let mut push = |rules: Rules| -> Result<()> {
        version += 1;
        let r = http
            .put(format!("http://{admin}/admin/v1/config"))
            .bearer_auth(&token)
            .json(&proxy_config(version, listen, &backends, rules))
            .send()?;
        if !r.status().is_success() {
            bail!("PUT /admin/v1/config: {} {}", r.status(), r.text()?);
        }
        let mut conn = Conn::new(listen);
        wait("the proxy serving 200", Duration::from_secs(10), || {
            (conn.get() == Some(200)).then_some(())
        })?;
        Ok(())
    };

    let cases = [
        (Rules::None, false),
        (Rules::OtherRevision, false),
        (Rules::Callers, false),
        (Rules::None, true),
        (Rules::Callers, true),
    ];
    let mut results: Vec<Vec<Wrk>> = cases.iter().map(|_| Vec::new()).collect();
    let mut sockets: Vec<Vec<(usize, f64)>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, (rules, close)) in cases.iter().enumerate() {
            eprintln!(
                "overhead: round {}/{rounds}: {}{}",
                round + 1,
                rules.label(),
                if *close { ", Connection: close" } else { "" }
            );
            push(*rules)?;
            run_wrk(listen, 1, *close)?;
            sockets[i].push(tcp_sockets());
            results[i].push(run_wrk(listen, seconds, *close)?);
        }
    }
    drop(proxy);
    drop(keep);

    println!();
    println!(
        "4. proxy overhead of fault rules that never fire: standalone gauntlet proxy --workers 1 on CPU 0, \
         wrk -t1 -c32 -d{seconds}s --latency and two demo-app backends on CPU 1; {rounds} rounds, the cases interleaved; \
         medians over the rounds (req/s of each round in brackets)"
    );
    println!(
        "| connections | fault rules | requests/s | ratio to no rules | p50 | p99 | non-2xx / socket errors | sockets in /proc/net/tcp at start (one read of it) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let median = |w: &[Wrk], f: &dyn Fn(&Wrk) -> f64| q(&w.iter().map(f).collect::<Vec<_>>(), 0.5);
    for (i, (rules, close)) in cases.iter().enumerate() {
        let w = &results[i];
        let base = cases
            .iter()
            .position(|(r, c)| *r == Rules::None && c == close)
            .map(|b| median(&results[b], &|w| w.rps))
            .unwrap_or(f64::NAN);
        let rps = median(w, &|w| w.rps);
        let each = w
            .iter()
            .map(|w| format!("{:.0}", w.rps))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "| {} | {} | {rps:.0} ({each}) | {:.3}x | {:.3} ms | {:.3} ms | {} / {} | {} |",
            if *close {
                "new connection per request (Connection: close)"
            } else {
                "32 kept alive"
            },
            rules.label(),
            rps / base,
            median(w, &|w| w.p50),
            median(w, &|w| w.p99),
            w.iter().map(|w| w.non2xx).sum::<u64>(),
            w.iter().map(|w| w.errors).sum::<u64>(),
            sockets[i]
                .iter()
                .map(|(n, t)| format!("{n} ({t:.1} ms)"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let out = "Running 5s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  \
                   Latency Distribution\n     50%  355.00us\n     75%  400.00us\n     90%    1.00ms\n     \
                   99%    1.20ms\n  1000 requests in 5.00s, 1.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  \
                   Non-2xx or 3xx responses: 5\nRequests/sec:  12345.67\nTransfer/sec: 1.00MB\n";
        let w = parse_wrk(out).expect("parsed");
        assert_eq!(w.rps, 12345.67);
        assert!((w.p50 - 0.355).abs() < 1e-9);
        assert!((w.p99 - 1.2).abs() < 1e-9);
        assert_eq!((w.non2xx, w.errors), (5, 3));
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(q(&s, 0.5), 50.0);
        assert_eq!(q(&s, 0.9), 90.0);
        assert_eq!(q(&s, 0.0), 1.0);
        assert_eq!(q(&s, 1.0), 100.0);
    }
}
