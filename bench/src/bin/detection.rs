//! Time to notice a bad canary: requests and failures served by a bad revision before the
//! sequential guard rolls it back, and the time to zero weight, next to Wald's expectation for
//! the guard's own hypotheses and to what Flagger's and Argo Rollouts' documented defaults
//! would let through at the same traffic. Then a simulation of many rollouts with the pure
//! engine: false rollbacks against α, missed detections against β.
//!
//! **End to end.** A real controller (`gauntlet up`, release build) follows a temporary Git
//! repository with one application: `gauntlet demo-app` behind the controller's proxy, stable
//! at a baseline error rate (0.1 %, 1 %), strategy `setWeight: 5` then `pause: {}` with the
//! default guard. `gauntlet load` sends a fixed 400 requests/s through the proxy. For each bad
//! candidate (100 %, 5 %, 2 % errors) the benchmark commits it, syncs, and polls the proxy's
//! admin API back to back (`GET /admin/v1/config` and `/admin/v1/metrics`, a few ms a round):
//! the first round in which the candidate's counter is above zero is the first bad request,
//! the first round in which its weight is 0 (or it is gone) is zero weight. Requests and
//! failures are the proxy's per-revision counters (failures: 5xx, connection errors,
//! timeouts), read until they settle after zero weight. The decision is the `rollout-aborted`
//! audit record (stamped right after the engine's step that aborted); the `traffic` record
//! after it is stamped when the proxy accepted the configuration without the candidate.
//!
//! **Simulation.** `gauntlet_rollout::engine::step` on simulated time: readings every 100 ms
//! of 40 requests (400/s), each routed to the candidate with the weight the engine set, and
//! failing with the revision's true rate; half the candidates good (at stable's rate), half
//! bad (at the guard's p1); 120 s of traffic per rollout; a fixed seed. Each baseline runs
//! twice: with 10 s of stable history as the first reading (the controller's live window, what
//! a rollout under steady traffic sees) and with none (a controller just started).
//!
//! `./target/release/detection [all|e2e|sim] [ROLLOUTS]` (the `gauntlet` binary must sit next
//! to this one: build both with the same target directory).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use gauntlet_bench::{gauntlet_bin, git, instance_processes, shut_down, wait};
use gauntlet_rollout::engine::{
    step, Action, CanarySpec, CanaryStep, Observations, PauseStep, RolloutSpec, RolloutState,
    Strategy, FULL_WEIGHT,
};
use gauntlet_rollout::guard::{Boundaries, GuardConfig, SplitMix64, Sprt, TrafficDelta, Verdict};
use serde_json::{json, Value};

/// Requests per second sent through the proxy (and simulated).
const RATE: u32 = 400;
/// The canary's weight, as a fraction.
const WEIGHT: f64 = 0.05;
const BASELINES: [f64; 2] = [0.001, 0.01];
const BAD_RATES: [f64; 3] = [1.0, 0.05, 0.02];
/// Canary traffic after which a case that was not rolled back is given up.
const CASE_LIMIT: Duration = Duration::from_secs(40);
/// Flagger: `interval` 1m × `threshold` 10 (its docs' canary analysis defaults).
const FLAGGER_S: f64 = 600.0;
/// Argo Rollouts: `interval` 1m × (`failureLimit` 0 + 1); a 1m query window fills within it.
const ARGO_S: f64 = 60.0;
const SEED: u64 = 0x0D37_EC71_0000_0001;
const SIM_READ_MS: u64 = 100;
const SIM_HORIZON_MS: u64 = 120_000;
/// The controller's live window: a revision's first reading covers this much traffic.
const SIM_WINDOW_S: u64 = 10;

fn main() -> Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let rollouts: u64 = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()
        .context("ROLLOUTS must be a number")?
        .unwrap_or(20_000);
    if !matches!(what.as_str(), "all" | "e2e" | "sim") {
        bail!("usage: detection [all|e2e|sim] [ROLLOUTS]");
    }
    let cfg = GuardConfig::default();
    println!(
        "guard defaults: alpha {} beta {}, maxErrorRate {}, minErrorRatio {}, floor {}, \
         baseline {} until stable has {} outcomes",
        cfg.alpha,
        cfg.beta,
        cfg.max_error_rate,
        cfg.min_error_ratio,
        cfg.error_rate_floor,
        cfg.baseline_error_rate,
        cfg.min_stable_requests
    );
    println!(
        "anchors at the same traffic ({RATE} req/s, canary {:.0} % = {:.0} req/s), each assuming every \
         check fails from the first: Flagger interval 1m x threshold 10 (docs) = {FLAGGER_S:.0} s; \
         Argo Rollouts interval 1m x (failureLimit 0 + 1), 1m metric window = {ARGO_S:.0} s",
        WEIGHT * 100.0,
        canary_rate()
    );
    if what != "sim" {
        end_to_end(&cfg)?;
    }
    if what != "e2e" {
        simulation(&cfg, rollouts);
    }
    Ok(())
}

fn canary_rate() -> f64 {
    f64::from(RATE) * WEIGHT
}

// ---------------------------------------------------------------------------------------------
// Wald's expectations at a true rate p

/// What a two-boundary Wald SPRT of `p0` vs `p1` is expected to do when the truth is `p`.
struct Expectation {
    /// Expected requests to a decision (either boundary; overshoot ignored).
    requests: f64,
    /// Probability that the upper boundary (rollback) is crossed first: 1 − OC(p).
    p_reject: f64,
}

/// Wald's ASN and OC at any `p` (not only at p0 and p1, which `wald_asn` gives): with `h` the
/// non-zero root of `p·(p1/p0)^h + (1−p)·((1−p1)/(1−p0))^h = 1`, OC = (e^{hA} − 1)/(e^{hA} −
/// e^{hB}) and E[N] = (OC·B + (1 − OC)·A)/E[z]. At p0 and p1 this is `wald_asn`.
fn expect_at(p: f64, p0: f64, p1: f64, bounds: Boundaries) -> Expectation {
    let (z1, z0) = ((p1 / p0).ln(), ((1.0 - p1) / (1.0 - p0)).ln());
    let (a, b) = (bounds.upper, bounds.lower);
    if p >= 1.0 {
        // Every request fails: the statistic only rises.
        return Expectation {
            requests: a / z1,
            p_reject: 1.0,
        };
    }
    let drift = p * z1 + (1.0 - p) * z0;
    let g = |h: f64| p * (h * z1).exp() + (1.0 - p) * (h * z0).exp() - 1.0;
    // g is convex with g(0) = 0 and g'(0) = drift: the other root lies on the side opposite
    // to the drift's sign.
    let dir = if drift > 0.0 { -1.0 } else { 1.0 };
    let mut far = 1.0;
    while g(dir * far) <= 0.0 && far < 1e6 {
        far *= 2.0;
    }
    let (mut lo, mut hi) = (1e-9, far);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if g(dir * mid) > 0.0 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let h = dir * 0.5 * (lo + hi);
    let oc = ((h * a).exp() - 1.0) / ((h * a).exp() - (h * b).exp());
    let requests = if drift.abs() < 1e-12 {
        let second = p * z1 * z1 + (1.0 - p) * z0 * z0;
        -a * b / second
    } else {
        (oc * b + (1.0 - oc) * a) / drift
    };
    Expectation {
        requests,
        p_reject: 1.0 - oc,
    }
}

/// The guard's error test judged after every single request, simulated (10,000 runs of at
/// most 100,000 requests, overshoot included). Unlike Wald's two-boundary test it does not stop
/// at the lower boundary: the guard keeps watching after it accepted. Returns the fraction of
/// runs that tripped and their mean requests and failures.
fn guard_per_request(p: f64, p0: f64, p1: f64, bounds: Boundaries) -> (f64, f64, f64) {
    const RUNS: u64 = 10_000;
    let mut rng = SplitMix64::new(SEED ^ p.to_bits());
    let (mut caught, mut n, mut f) = (0u64, 0u64, 0u64);
    for _ in 0..RUNS {
        let mut sprt = Sprt::default();
        while sprt.n < 100_000 {
            let failed = u64::from(rng.bernoulli(p));
            if sprt.update(failed, 1 - failed, p0, p1, bounds) == Verdict::Reject {
                caught += 1;
                n += sprt.n;
                f += sprt.events;
                break;
            }
        }
    }
    let c = caught.max(1) as f64;
    (caught as f64 / RUNS as f64, n as f64 / c, f as f64 / c)
}

/// The guard's hypotheses once stable's own rate is the baseline.
fn steady_hypotheses(cfg: &GuardConfig, baseline: f64) -> (f64, f64) {
    let n = 1_000_000u64;
    cfg.error_hypotheses(n, (baseline * n as f64).round() as u64)
}

// ---------------------------------------------------------------------------------------------
// End to end

struct CaseResult {
    baseline: f64,
    bad: f64,
    /// The proxy's counters for the candidate after it settled.
    requests: u64,
    failures: u64,
    aborted: Option<Aborted>,
    /// First candidate request observed → zero weight observed.
    first_to_zero: Option<Duration>,
    /// Zero weight observed by the bench, in Unix ms.
    zero_seen_ms: Option<u64>,
    /// Mean time of one polling round (both GETs).
    poll: Duration,
}

struct Aborted {
    /// The `rollout-aborted` record's time (the decision).
    at_ms: u64,
    /// The first `traffic` record after it (the proxy accepted the new configuration).
    traffic_ms: Option<u64>,
    guard_requests: u64,
    guard_failures: u64,
    p0: f64,
}

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `gauntlet up`; on drop it is shut down with its instances, then SIGKILLed if it
/// does not exit, and its proxy and any instance left behind are killed by pid.
struct Controller {
    child: Option<Child>,
    state: PathBuf,
    api: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Controller {
    fn start(bin: &Path, repo: &Path, state: &Path) -> Result<Controller> {
        let log = std::fs::File::create(state.with_extension("log"))?;
        let child = Command::new(bin)
            .args(["up", "--repo"])
            .arg(repo)
            .args(["--interval", "1h", "--listen", "127.0.0.1:0"])
            .args(["--proxy-admin", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .env("GAUNTLET_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the controller")?;
        let pid = child.id();
        let mut c = Controller {
            child: Some(child),
            state: state.to_path_buf(),
            api: String::new(),
            token: String::new(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()?,
        };
        c.api = wait("the controller's API", Duration::from_secs(30), || {
            let text = std::fs::read_to_string(state.join("controller.json")).ok()?;
            let info: Value = serde_json::from_str(&text).ok()?;
            (info["pid"].as_u64() == Some(u64::from(pid))).then_some(())?;
            let listen = info["listen"].as_str()?.to_string();
            c.http
                .get(format!("http://{listen}/api/v1/healthz"))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| listen)
        })?;
        c.token = std::fs::read_to_string(state.join("token"))?
            .trim()
            .to_string();
        Ok(c)
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

    fn sync(&self) -> Result<()> {
        let r = self
            .http
            .post(format!("http://{}/api/v1/sync", self.api))
            .bearer_auth(&self.token)
            .json(&json!({}))
            .send()?;
        if !r.status().is_success() {
            bail!("sync answered {}", r.status());
        }
        Ok(())
    }

    fn history(&self) -> Vec<Value> {
        self.get("/api/v1/history?app=web&limit=1000")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    fn proxy_info(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.state.join("proxy").join("proxy.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let proxy_pid = self.proxy_info().and_then(|i| i["pid"].as_u64());
        shut_down(
            &self.http,
            &self.api.to_string(),
            &self.token,
            self.child.take(),
        );
        let mut left: Vec<u64> = instance_processes(&self.state)
            .into_iter()
            .map(u64::from)
            .collect();
        left.extend(proxy_pid.filter(|pid| Path::new(&format!("/proc/{pid}")).exists()));
        for pid in left {
            eprintln!("killing {pid}, left running after the controller's shutdown");
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn manifest(bin: &Path, port: u16, version: &str, error_rate: f64) -> String {
    format!(
        r#"apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata: {{name: web}}
spec:
  replicas: 1
  process:
    command: ["{}", "demo-app"]
    args: ["--listen", "127.0.0.1:${{PORT}}", "--version", "{version}", "--error-rate", "{error_rate}"]
    terminationGracePeriodSeconds: 2
  readiness: {{httpGet: {{path: /healthz}}, periodSeconds: 1}}
  service: {{listen: "127.0.0.1:{port}"}}
  strategy:
    canary:
      steps:
      - setWeight: 5
      - pause: {{}}
"#,
        bin.display()
    )
}

/// The proxy's admin API, read with the state directory's token.
struct Admin {
    addr: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Admin {
    fn get(&self, path: &str) -> Option<Value> {
        self.http
            .get(format!("http://{}{path}", self.addr))
            .bearer_auth(&self.token)
            .send()
            .ok()
            .filter(|r| r.status().is_success())?
            .json()
            .ok()
    }

    /// Revision name → weight of application `web` in the served configuration.
    fn weights(&self) -> Option<Vec<(String, u64)>> {
        let cfg = self.get("/admin/v1/config")?;
        let app = cfg["apps"]
            .as_array()?
            .iter()
            .find(|a| a["name"] == "web")?;
        Some(
            app["revisions"]
                .as_array()?
                .iter()
                .filter_map(|r| Some((r["name"].as_str()?.to_string(), r["weight"].as_u64()?)))
                .collect(),
        )
    }

    /// (requests with an outcome, failures) of `web`'s `revision`, if the proxy has it.
    fn counters(&self, revision: &str) -> Option<(u64, u64)> {
        let m = self.get("/admin/v1/metrics")?;
        let entry = m["revisions"]
            .as_array()?
            .iter()
            .find(|r| r["app"] == "web" && r["revision"] == revision)?;
        let metrics = &entry["metrics"];
        let responses: Vec<u64> = metrics["responses"]
            .as_array()?
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        let errors = metrics["connectErrors"].as_u64().unwrap_or(0)
            + metrics["timeouts"].as_u64().unwrap_or(0);
        let requests = responses.iter().sum::<u64>() + errors;
        let failures = responses.get(4).copied().unwrap_or(0) + errors;
        Some((requests, failures))
    }

    /// The requests of every revision of `web`, summed.
    fn total_requests(&self) -> Option<u64> {
        let m = self.get("/admin/v1/metrics")?;
        Some(
            m["revisions"]
                .as_array()?
                .iter()
                .filter(|r| r["app"] == "web")
                .filter_map(|r| r["metrics"]["requests"].as_u64())
                .sum(),
        )
    }
}

fn end_to_end(cfg: &GuardConfig) -> Result<()> {
    let bin = gauntlet_bin()?;
    let mut results = Vec::new();
    for baseline in BASELINES {
        results.extend(run_baseline(&bin, baseline)?);
    }
    print_end_to_end(cfg, &results);
    Ok(())
}

/// Runs of each end-to-end case (`DETECTION_REPEATS`, default 3): one rollout is one draw of
/// a random process, so the table shows the mean and every run.
fn repeats() -> usize {
    std::env::var("DETECTION_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3)
}

/// One controller, stable at `baseline`, and each bad candidate in turn.
fn run_baseline(bin: &Path, baseline: f64) -> Result<Vec<CaseResult>> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&repo)?;
    std::fs::create_dir_all(&state)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    git(&repo, &["init", "-q", "-b", "main"])?;
    std::fs::write(
        repo.join("web.yaml"),
        manifest(bin, port, "stable", baseline),
    )?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "stable"])?;

    let c = Controller::start(bin, &repo, &state)?;
    wait("the stable revision ready", Duration::from_secs(30), || {
        c.get("/api/v1/apps/web").filter(|a| a["ready"] == 1)
    })?;
    let info = wait("the proxy", Duration::from_secs(30), || c.proxy_info())?;
    let admin = Admin {
        addr: info["admin"]
            .as_str()
            .ok_or_else(|| anyhow!("proxy.json names no admin address"))?
            .to_string(),
        token: c.token.clone(),
        http: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()?,
    };
    wait("the proxy to serve web", Duration::from_secs(30), || {
        reqwest::blocking::get(format!("http://127.0.0.1:{port}/"))
            .ok()
            .filter(|r| r.status().is_success() || r.status().as_u16() == 500)
    })?;

    let mut out = Vec::new();
    for (i, bad) in BAD_RATES.into_iter().enumerate() {
        for rep in 0..repeats() {
            eprintln!(
                "baseline {baseline}: bad candidate at {bad}, run {} ...",
                rep + 1
            );
            let index = i * 100 + rep;
            let result = run_case(bin, &c, &admin, &repo, port, baseline, bad, index)?;
            out.push(result);
        }
    }
    drop(c);
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn run_case(
    bin: &Path,
    c: &Controller,
    admin: &Admin,
    repo: &Path,
    port: u16,
    baseline: f64,
    bad: f64,
    index: usize,
) -> Result<CaseResult> {
    let _load = Killed(
        Command::new(bin)
            .args(["load", "--url", &format!("http://127.0.0.1:{port}/")])
            .args(["--rate", &RATE.to_string(), "--duration", "120s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting gauntlet load")?,
    );
    // Steady traffic for a whole live window before the candidate, as in production: the
    // guard's baseline is stable's window (the simulation's "no history" rows show the rest).
    let before = admin.total_requests().unwrap_or(0);
    wait("load through the proxy", Duration::from_secs(40), || {
        admin
            .total_requests()
            .filter(|n| *n > before + u64::from(RATE) * SIM_WINDOW_S)
    })?;
    let known: Vec<String> = admin
        .weights()
        .ok_or_else(|| anyhow!("the proxy serves no configuration for web"))?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let seq_before = c
        .history()
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap_or(0);

    std::fs::write(
        repo.join("web.yaml"),
        manifest(bin, port, &format!("bad{index}"), bad),
    )?;
    git(
        repo,
        &["commit", "-q", "-am", &format!("bad candidate {bad}")],
    )?;
    c.sync()?;

    // Poll back to back: the candidate's weight in the served configuration and its counters.
    let started = Instant::now();
    let mut candidate: Option<String> = None;
    let (mut weighted_at, mut first_at, mut zero_at) = (None, None, None);
    let mut zero_seen_ms = None;
    let mut last = (0u64, 0u64);
    let mut settled_at = Instant::now();
    let mut rounds = 0u32;
    let mut polling_time = Duration::ZERO;
    loop {
        let round = Instant::now();
        if started.elapsed() > Duration::from_secs(60) && weighted_at.is_none() {
            bail!("the candidate never got traffic within 60 s");
        }
        let weights = admin.weights().unwrap_or_default();
        if candidate.is_none() {
            candidate = weights
                .iter()
                .find(|(n, _)| !known.contains(n))
                .map(|(n, _)| n.clone());
        }
        let Some(name) = candidate.clone() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let weight = weights.iter().find(|(n, _)| *n == name).map(|(_, w)| *w);
        let now = Instant::now();
        if weighted_at.is_none() && weight.is_some_and(|w| w > 0) {
            weighted_at = Some(now);
        }
        if weighted_at.is_some() && zero_at.is_none() && weight.unwrap_or(0) == 0 {
            zero_at = Some(now);
            zero_seen_ms = Some(now_ms());
        }
        if let Some(counts) = admin.counters(&name) {
            if counts.0 > 0 && first_at.is_none() {
                first_at = Some(Instant::now());
            }
            if counts != last {
                last = counts;
                settled_at = Instant::now();
            }
        }
        if weighted_at.is_some() {
            rounds += 1;
            polling_time += round.elapsed();
        }
        if let Some(z) = zero_at {
            // In-flight requests finish; the counters stop moving.
            if settled_at.elapsed() > Duration::from_millis(500)
                || z.elapsed() > Duration::from_secs(3)
            {
                break;
            }
        }
        if weighted_at.is_some_and(|t| t.elapsed() > CASE_LIMIT) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let candidate = candidate.unwrap_or_default();

    let history = c.history();
    let after: Vec<&Value> = history
        .iter()
        .filter(|r| r["seq"].as_u64().is_some_and(|s| s > seq_before))
        .collect();
    // An abort writes two `rollout-aborted` records: the engine's event, then the abort with
    // its evidence; the first is the decision's time, the second carries the evidence.
    let evidence_record = after.iter().find(|r| {
        r["action"] == "rollout-aborted"
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("; evidence "))
    });
    let aborted = after
        .iter()
        .find(|r| r["action"] == "rollout-aborted")
        .map(|r| {
            let seq = r["seq"].as_u64().unwrap_or(0);
            let traffic_ms = after
                .iter()
                .find(|t| t["action"] == "traffic" && t["seq"].as_u64().is_some_and(|s| s > seq))
                .and_then(|t| t["timeMs"].as_u64());
            let evidence: Value = evidence_record
                .and_then(|r| r["reason"].as_str())
                .and_then(|s| s.split_once("; evidence "))
                .and_then(|(_, e)| serde_json::from_str(e).ok())
                .unwrap_or(Value::Null);
            let e = &evidence["errors"];
            Aborted {
                at_ms: r["timeMs"].as_u64().unwrap_or(0),
                traffic_ms,
                guard_requests: e["requests"].as_u64().unwrap_or(0),
                guard_failures: e["events"].as_u64().unwrap_or(0),
                p0: e["p0"].as_f64().unwrap_or(f64::NAN),
            }
        });
    if aborted.is_none() && zero_at.is_some() {
        eprintln!("candidate {candidate} lost its weight without a rollout-aborted record");
    }
    Ok(CaseResult {
        baseline,
        bad,
        requests: last.0,
        failures: last.1,
        aborted,
        first_to_zero: match (first_at, zero_at) {
            (Some(f), Some(z)) => Some(z.saturating_duration_since(f)),
            _ => None,
        },
        zero_seen_ms,
        poll: polling_time / rounds.max(1),
    })
}

fn ratio(measured: f64, expected: f64) -> String {
    if expected > 0.0 && expected.is_finite() {
        format!("{:.2}x", measured / expected)
    } else {
        "-".into()
    }
}

fn print_end_to_end(cfg: &GuardConfig, results: &[CaseResult]) {
    let bounds = cfg.boundaries();
    println!();
    println!(
        "end to end: gauntlet up + proxy + demo-app, {RATE} req/s from `gauntlet load`, \
         setWeight 5 then pause {{}}, {} s of load before each candidate; {} runs per case, \
         means over the runs rolled back; give-up after {} s of canary traffic",
        SIM_WINDOW_S,
        repeats(),
        CASE_LIMIT.as_secs()
    );
    println!(
        "| baseline | bad | p0 / p1 | Wald E[N] / E[fail] (P trip) | SPRT per request (sim, exact): N / fail (P trip in 100k) | served N / failed: mean (each run) | ratio to SPRT N / fail | ratio to Wald N / fail | guard counted N / fail (p0 at trip) | first bad -> zero weight (each run) | Wald time | Flagger N / fail / time | Argo N / fail / time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut cases: Vec<(f64, f64, Vec<&CaseResult>)> = Vec::new();
    for r in results {
        match cases.last_mut() {
            Some((b, bad, runs)) if *b == r.baseline && *bad == r.bad => runs.push(r),
            _ => cases.push((r.baseline, r.bad, vec![r])),
        }
    }
    for (baseline, bad, runs) in &cases {
        let (baseline, bad) = (*baseline, *bad);
        let (p0, p1) = steady_hypotheses(cfg, baseline);
        let e = expect_at(bad, p0, p1, bounds);
        let e_fail = e.requests * bad;
        let wald = if e.p_reject >= 0.5 {
            format!("{:.1} / {:.1} ({:.3})", e.requests, e_fail, e.p_reject)
        } else {
            format!("accepts after {:.0} (P trip {:.3})", e.requests, e.p_reject)
        };
        let (tripped, sim_n, sim_f) = guard_per_request(bad, p0, p1, bounds);
        let per_request = if tripped > 0.0 {
            format!("{sim_n:.1} / {sim_f:.2} ({tripped:.3})")
        } else {
            "never (0 of 10,000)".into()
        };
        let caught: Vec<&&CaseResult> = runs.iter().filter(|r| r.aborted.is_some()).collect();
        let each = runs
            .iter()
            .map(|r| {
                if r.aborted.is_some() {
                    format!("{}/{}", r.requests, r.failures)
                } else {
                    format!("{}/{} not rolled back", r.requests, r.failures)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let (served, to_sprt, to_wald, guard) = if caught.is_empty() {
            (format!("- ({each})"), "-".into(), "-".into(), "-".into())
        } else {
            let k = caught.len() as f64;
            let mean =
                |f: &dyn Fn(&CaseResult) -> f64| caught.iter().map(|r| f(r)).sum::<f64>() / k;
            let n = mean(&|r| r.requests as f64);
            let f = mean(&|r| r.failures as f64);
            let gn = mean(&|r| r.aborted.as_ref().map_or(0.0, |a| a.guard_requests as f64));
            let gf = mean(&|r| r.aborted.as_ref().map_or(0.0, |a| a.guard_failures as f64));
            let p0s: Vec<f64> = caught
                .iter()
                .filter_map(|r| r.aborted.as_ref().map(|a| a.p0))
                .collect();
            let (lo, hi) = p0s
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &p| (lo.min(p), hi.max(p)));
            (
                format!("{n:.1} / {f:.1} ({each})"),
                if tripped > 0.0 {
                    format!("{} / {}", ratio(n, sim_n), ratio(f, sim_f))
                } else {
                    "-".into()
                },
                format!("{} / {}", ratio(n, e.requests), ratio(f, e_fail)),
                format!("{gn:.1} / {gf:.1} ({lo:.4}-{hi:.4})"),
            )
        };
        let times = runs
            .iter()
            .map(|r| {
                r.first_to_zero
                    .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
                    .unwrap_or_else(|| "-".into())
            })
            .collect::<Vec<_>>()
            .join(", ");
        let flagger_n = canary_rate() * FLAGGER_S;
        let argo_n = canary_rate() * ARGO_S;
        println!(
            "| {:.1} % | {:.0} % | {:.3} / {:.3} | {wald} | {per_request} | {served} | {to_sprt} | {to_wald} | {guard} | {times} ms | {:.1} s | {:.0} / {:.0} / {:.0} s | {:.0} / {:.0} / {:.0} s |",
            baseline * 100.0,
            bad * 100.0,
            p0,
            p1,
            e.requests / canary_rate(),
            flagger_n,
            flagger_n * bad,
            FLAGGER_S,
            argo_n,
            argo_n * bad,
            ARGO_S,
        );
    }
    println!();
    println!("decision -> zero weight (target under 100 ms), each run:");
    println!(
        "| baseline | bad | rollout-aborted -> traffic record (controller clock, 1 ms) | rollout-aborted -> zero weight seen by polling GET /admin/v1/config | polling round |"
    );
    println!("|---|---|---|---|---|");
    for (baseline, bad, runs) in &cases {
        let aborted: Vec<(&&CaseResult, &Aborted)> = runs
            .iter()
            .filter_map(|r| r.aborted.as_ref().map(|a| (r, a)))
            .collect();
        if aborted.is_empty() {
            continue;
        }
        let records = aborted
            .iter()
            .map(|(_, a)| {
                a.traffic_ms
                    .map(|t| t.saturating_sub(a.at_ms).to_string())
                    .unwrap_or_else(|| "no record".into())
            })
            .collect::<Vec<_>>()
            .join(", ");
        let seen = aborted
            .iter()
            .map(|(r, a)| {
                r.zero_seen_ms
                    .map(|z| (z as i64 - a.at_ms as i64).to_string())
                    .unwrap_or_else(|| "-".into())
            })
            .collect::<Vec<_>>()
            .join(", ");
        let poll = aborted
            .iter()
            .map(|(r, _)| r.poll.as_secs_f64() * 1e3)
            .fold(0.0, f64::max);
        println!(
            "| {:.1} % | {:.0} % | {records} ms | {seen} ms | at most {poll:.1} ms |",
            baseline * 100.0,
            bad * 100.0,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Simulation with the pure engine

const STABLE: &str = "stable";
const CANDIDATE: &str = "candidate";

struct SimOutcome {
    aborted: bool,
    /// The error test crossed its lower boundary before any rollback (Wald's "accept").
    accepted_first: bool,
    requests: u64,
    failures: u64,
}

fn sim_spec(cfg: &GuardConfig) -> RolloutSpec {
    RolloutSpec {
        replicas: 1,
        strategy: Some(Strategy::Canary(CanarySpec {
            steps: vec![
                CanaryStep::SetWeight(WEIGHT * 100.0),
                CanaryStep::Pause(PauseStep::default()),
            ],
            guard: cfg.clone(),
            ..CanarySpec::default()
        })),
        templates: Default::default(),
    }
}

fn observations(desired: &str) -> Observations {
    Observations {
        desired: desired.into(),
        ready: [(STABLE.to_string(), 1), (CANDIDATE.to_string(), 1)].into(),
        ..Observations::default()
    }
}

/// One rollout of a candidate failing at `p` over a stable failing at `baseline`.
/// With `history`, the first reading of stable is its live window (the controller's
/// `WINDOW` of traffic at full weight before the rollout), as the controller gives it.
fn sim_rollout(
    spec: &RolloutSpec,
    rng: &mut SplitMix64,
    p: f64,
    baseline: f64,
    history: bool,
) -> SimOutcome {
    let mut state = step(spec, &RolloutState::default(), &observations(STABLE), 0).state;
    state = step(spec, &state, &observations(CANDIDATE), 1).state;
    let per_reading = u64::from(RATE) * SIM_READ_MS / 1000;
    let (mut requests, mut failures) = (0, 0);
    let mut now = 1;
    if history {
        let n = u64::from(RATE) * SIM_WINDOW_S;
        let f = (0..n).filter(|_| rng.bernoulli(baseline)).count() as u64;
        let obs = Observations {
            stable_traffic: Some(TrafficDelta::outcomes(n, f)),
            candidate_traffic: Some(TrafficDelta::default()),
            ..observations(CANDIDATE)
        };
        state = step(spec, &state, &obs, now).state;
    }
    while now < SIM_HORIZON_MS {
        now += SIM_READ_MS;
        let weight = f64::from(state.traffic.candidate_weight) / f64::from(FULL_WEIGHT);
        let (mut cn, mut cf, mut sn, mut sf) = (0, 0, 0, 0);
        for _ in 0..per_reading {
            if rng.bernoulli(weight) {
                cn += 1;
                cf += u64::from(rng.bernoulli(p));
            } else {
                sn += 1;
                sf += u64::from(rng.bernoulli(baseline));
            }
        }
        requests += cn;
        failures += cf;
        let accepted = state.guard.errors.accepted_after.is_some();
        let obs = Observations {
            stable_traffic: Some(TrafficDelta::outcomes(sn, sf)),
            candidate_traffic: Some(TrafficDelta::outcomes(cn, cf)),
            ..observations(CANDIDATE)
        };
        let s = step(spec, &state, &obs, now);
        if s.actions.iter().any(|a| matches!(a, Action::Aborted(_))) {
            return SimOutcome {
                aborted: true,
                accepted_first: accepted,
                requests,
                failures,
            };
        }
        state = s.state;
    }
    SimOutcome {
        aborted: false,
        accepted_first: state.guard.errors.accepted_after.is_some(),
        requests,
        failures,
    }
}

fn simulation(cfg: &GuardConfig, rollouts: u64) {
    let per_row = (rollouts / BASELINES.len() as u64).max(2);
    let mut rng = SplitMix64::new(SEED);
    println!();
    println!(
        "simulation: {} rollouts per row with gauntlet_rollout::engine::step, seed {SEED:#x}: {RATE} req/s in \
         readings every {SIM_READ_MS} ms, canary {:.0} %, {} s of traffic each; half good (true rate = \
         stable's), half bad (true rate = the guard's p1)",
        per_row,
        WEIGHT * 100.0,
        SIM_HORIZON_MS / 1000
    );
    println!(
        "| baseline | guard | p0 / p1 | good: false rollbacks | rate | vs alpha | bad: accepted first (missed) | rate | vs beta | bad: not rolled back in {} s | bad: mean N / failed to rollback | Wald E[N] / E[fail] | ratio N / fail | guard per request (sim) N / fail |",
        SIM_HORIZON_MS / 1000
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for baseline in BASELINES {
        let label = format!("defaults, {SIM_WINDOW_S} s of stable history");
        sim_row(cfg, &label, baseline, per_row, true, &mut rng);
    }
    // No history: the controller was just started, or stable had no traffic before. The
    // first `minStableRequests` stable outcomes are all the guard knows of the baseline.
    for baseline in BASELINES {
        sim_row(
            cfg,
            "defaults, no history",
            baseline,
            per_row,
            false,
            &mut rng,
        );
    }
}

fn sim_row(
    cfg: &GuardConfig,
    label: &str,
    baseline: f64,
    rollouts: u64,
    history: bool,
    rng: &mut SplitMix64,
) {
    let spec = sim_spec(cfg);
    let bounds = cfg.boundaries();
    let (p0, p1) = steady_hypotheses(cfg, baseline);
    let (mut good, mut false_rollbacks) = (0u64, 0u64);
    let (mut bad, mut missed, mut not_rolled_back) = (0u64, 0u64, 0u64);
    let (mut caught, mut n_sum, mut f_sum) = (0u64, 0u64, 0u64);
    for i in 0..rollouts {
        if i % 2 == 0 {
            good += 1;
            let o = sim_rollout(&spec, rng, p0, baseline, history);
            false_rollbacks += u64::from(o.aborted);
        } else {
            bad += 1;
            let o = sim_rollout(&spec, rng, p1, baseline, history);
            missed += u64::from(o.accepted_first);
            not_rolled_back += u64::from(!o.aborted);
            if o.aborted {
                caught += 1;
                n_sum += o.requests;
                f_sum += o.failures;
            }
        }
    }
    let e = expect_at(p1, p0, p1, bounds);
    let (_, sim_n, sim_f) = guard_per_request(p1, p0, p1, bounds);
    let (mean_n, mean_f) = (
        n_sum as f64 / caught.max(1) as f64,
        f_sum as f64 / caught.max(1) as f64,
    );
    let fr = false_rollbacks as f64 / good as f64;
    let mr = missed as f64 / bad as f64;
    println!(
        "| {:.1} % | {label} | {p0:.3} / {p1:.3} | {false_rollbacks} of {good} | {fr:.4} | {:.2}x of {} | {missed} of {bad} | {mr:.4} | {:.2}x of {} | {not_rolled_back} | {mean_n:.1} / {mean_f:.2} | {:.1} / {:.2} | {} / {} | {sim_n:.1} / {sim_f:.2} |",
        baseline * 100.0,
        fr / cfg.alpha,
        cfg.alpha,
        mr / cfg.beta,
        cfg.beta,
        e.requests,
        e.requests * p1,
        ratio(mean_n, e.requests),
        ratio(mean_f, e.requests * p1),
    );
}
