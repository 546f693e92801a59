//! `gauntlet demo`: the whole GitOps loop on a temporary repository, stage by stage.
//!
//! It creates a Git repository with two applications (`hello`, which calls `payments` on every
//! request) and a chaos experiment, starts a real controller process (`gauntlet up`) on it,
//! and then, each time by committing to Git and waiting for the controller to converge:
//! deploys v1; takes v2 through its canary steps, chaos step included, while requests flow
//! through the proxy (none may fail); shows a malformed commit rejected with its file:line
//! error while v2 keeps serving; has the sequential guard roll back a v3 that fails 5 % of its
//! requests; has the chaos step roll back a v4 that passes every check but waits forever on a
//! slow `payments`; kills an instance and watches it heal; turns a feature flag on for 10 % and
//! then 50 % of users by two commits (evaluating it over OFREP for 1,000 users after each);
//! and removes the applications and watches them pruned. Every stage is checked against what
//! really runs (HTTP answers, process ids, journals); the demo exits 0 only if every stage
//! behaved, and leaves no process behind unless asked to with `--keep`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use gauntlet_chaos::journal::RunStatus;
use gauntlet_reconcile::{AppStatus, Health, RunSummary, Status};
use gauntlet_store::AuditRecord;

use crate::client::Client;
use crate::commands::print_status;
use crate::paths;

#[derive(Args)]
pub struct DemoArgs {
    /// Leave the controller and the application running at the end (v2 is restored).
    #[arg(long)]
    keep: bool,
    /// Where to create the repository and state (default: a new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const APP: &str = "hello";
const DEADLINE: Duration = Duration::from_secs(60);

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("gauntlet-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let mut demo = match Demo::start(&root) {
        Ok(demo) => demo,
        Err(e) => {
            report_failure(&e, &root.join(LOG));
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut result = demo.stages();
    if result.is_ok() && args.keep {
        match demo.restore() {
            Ok(()) => {
                println!(
                    "\nThe controller keeps running (pid {}). Try:",
                    demo.controller.id()
                );
                let sd = demo.state.display();
                println!("  gauntlet --state-dir {sd} status");
                println!("  gauntlet --state-dir {sd} history {APP}");
                println!("  gauntlet --state-dir {sd} logs {APP}");
                println!(
                    "  (edit {} and commit; then gauntlet --state-dir {sd} sync)",
                    demo.repo.join("apps/hello.yaml").display()
                );
                println!("  gauntlet --state-dir {sd} down --stop-instances");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => result = Err(e.context("restoring v2 for --keep")),
        }
    }
    demo.stop();
    match result {
        Ok(()) => {
            if args.dir.is_none() {
                let _ = std::fs::remove_dir_all(&root);
            }
            println!("\ndemo passed: every stage behaved");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            report_failure(&e, &demo.log);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The controller's log file, in the demo's directory.
const LOG: &str = "controller.log";

fn report_failure(e: &anyhow::Error, log: &Path) {
    eprintln!("\ndemo FAILED: {e:#}");
    eprintln!("controller log: {}", log.display());
    if let Ok(text) = std::fs::read_to_string(log) {
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(15)..] {
            eprintln!("  | {line}");
        }
    }
}

struct Demo {
    ports: Ports,
    repo: PathBuf,
    state: PathBuf,
    log: PathBuf,
    controller: Child,
    client: Client,
}

impl Demo {
    /// Creates the repository and starts the controller on it. The controller stops every
    /// instance when it is signalled (`--stop-instances-on-exit`), so an interrupted demo
    /// leaves nothing running, and it may apply the empty commit of stage 5 (`--allow-empty`).
    fn start(root: &Path) -> Result<Demo> {
        let repo = root.join("repo");
        let state = root.join("state");
        let log = root.join(LOG);
        std::fs::create_dir_all(&repo).with_context(|| format!("creating {}", repo.display()))?;
        git(&repo, &["init", "-q", "-b", "main"])?;
        stage("Setup", &format!("a Git repository at {}", repo.display()));
        let ports = Ports {
            hello: free_port()?,
            payments: free_port()?,
        };
        write_payments(&repo, ports)?;
        write_experiment(&repo)?;
        write_app(&repo, ports, &Release::good("v1"))?;
        git(&repo, &["add", "-A"])?;
        git(
            &repo,
            &["commit", "-q", "-m", "Deploy hello v1 and payments"],
        )?;

        let exe = gauntlet_exe()?;
        let log_file = std::fs::File::create(&log)?;
        let mut controller = Command::new(&exe);
        // However the demo ends, even by SIGKILL, the controller gets SIGTERM and, with
        // `--stop-instances-on-exit`, stops the proxy and every instance before it exits.
        let demo = std::process::id();
        // SAFETY: prctl, getppid and raise are async-signal-safe.
        unsafe {
            controller.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // The demo may have died before prctl took effect.
                if libc::getppid() as u32 != demo {
                    libc::raise(libc::SIGTERM);
                }
                Ok(())
            });
        }
        let mut controller = controller
            .args(["up", "--repo"])
            .arg(&repo)
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", "127.0.0.1:0", "--interval", "1s"])
            .args(["--proxy-admin", "127.0.0.1:0"])
            .args(["--allow-empty", "--stop-instances-on-exit"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting the controller")?;
        match connect(&mut controller, &state) {
            Ok(client) => Ok(Demo {
                ports,
                repo,
                state,
                log,
                controller,
                client,
            }),
            Err(e) => {
                terminate(&mut controller);
                Err(e)
            }
        }
    }

    fn stages(&mut self) -> Result<()> {
        // 1. v1
        stage(
            "1/8",
            "v1 is deployed from the first commit, with payments beside it",
        );
        let c1 = head(&self.repo)?;
        self.wait_app_named("payments", "payments healthy", |s, a| {
            applied(s) == c1 && a.health == Health::Healthy && a.ready == 1
        })?;
        let app = self.wait_app("v1 healthy with 2 ready instances", |s, a| {
            applied(s) == c1 && a.health == Health::Healthy && a.ready == 2
        })?;
        self.check_answers(&app, "v1")?;
        let rev1 = app.revision.clone();

        // 2. v2
        stage(
            "2/8",
            "v2 goes through its canary steps, chaos step included, to stable while requests flow",
        );
        let traffic = Traffic::start(self.ports.hello);
        write_app(&self.repo, self.ports, &Release::good("v2"))?;
        git(&self.repo, &["commit", "-qam", "Release hello v2"])?;
        let c2 = head(&self.repo)?;
        self.sync()?;
        let app = self.wait_app("v2 healthy, v1 instances gone", |s, a| {
            applied(s) == c2
                && a.health == Health::Healthy
                && a.revision != rev1
                && a.instances.len() == 2
                && a.instances.iter().all(|i| i.revision == a.revision)
        })?;
        let counts = traffic.finish();
        self.check_answers(&app, "v2")?;
        println!("  revision {rev1} -> {}", app.revision);
        let gate = self.gate_run(&app.revision)?;
        println!(
            "  chaos step: payments held for 3 s under v2's calls; run {}: {:?} (v2 fell back after its 300 ms timeout)",
            gate.id, gate.status
        );
        if gate.status != RunStatus::Completed {
            bail!("v2's chaos step did not complete: {gate:?}");
        }
        println!(
            "  through the proxy on 127.0.0.1:{} during the canary: {} requests, {} answered v1, {} answered v2, {} failed",
            self.ports.hello,
            counts.sent,
            counts.answered("v1"),
            counts.answered("v2"),
            counts.failed
        );
        if counts.failed > 0 {
            bail!(
                "{} requests failed during the update: {:?}",
                counts.failed,
                counts.first_failure
            );
        }

        // 3. malformed commit
        stage("3/8", "a malformed commit is rejected; v2 keeps running");
        write_app(
            &self.repo,
            self.ports,
            &Release {
                typo: true,
                ..Release::good("v3")
            },
        )?;
        git(&self.repo, &["commit", "-qam", "Typo in the manifest"])?;
        let c3 = head(&self.repo)?;
        self.sync()?;
        let status = self.wait_status("the commit rejected", |s| {
            s.source
                .rejected
                .as_ref()
                .is_some_and(|r| r.commit.sha == c3)
        })?;
        let errors = status
            .source
            .rejected
            .as_ref()
            .map(|r| r.errors.clone())
            .unwrap_or_default();
        for e in &errors {
            println!("  rejected: {e}");
        }
        if !errors.iter().any(|e| e.starts_with("apps/hello.yaml:")) {
            bail!("the rejection does not name apps/hello.yaml with a line: {errors:?}");
        }
        if applied(&status) != c2 {
            bail!("the applied commit moved away from v2");
        }
        let app = find(&status, APP)?;
        self.check_answers(&app, "v2")?;

        // Repair the manifest so the next stages start from a valid head.
        write_app(&self.repo, self.ports, &Release::good("v2"))?;
        git(&self.repo, &["commit", "-qam", "Fix the manifest"])?;
        self.sync()?;

        // 4. a bad release, rolled back by the guard
        stage(
            "4/8",
            "a bad v3 (5 % errors) is caught by the sequential guard and rolled back",
        );
        self.bad_release()?;

        // 5. a fragile release, rolled back by its chaos step
        stage(
            "5/8",
            "a v4 with no timeout on payments passes every check but not its chaos step",
        );
        self.fragile_release()?;

        // 6. self-heal
        stage("6/8", "an instance is killed with SIGKILL and healed");
        let victim = app
            .instances
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("no instance to kill"))?;
        let pid = victim.pid.ok_or_else(|| anyhow!("instance has no pid"))?;
        println!("  kill -9 {pid} ({})", victim.id);
        // SAFETY: kill(2) with a pid we read from the controller; no memory is involved.
        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
            bail!("kill {pid}: {}", std::io::Error::last_os_error());
        }
        let app = self.wait_app("the killed instance restarted and ready", |_, a| {
            a.health == Health::Healthy
                && a.instances
                    .iter()
                    .any(|i| i.id == victim.id && i.pid.is_some_and(|p| p != pid) && i.is_ready())
        })?;
        if let Some(i) = app.instances.iter().find(|i| i.id == victim.id) {
            println!(
                "  {} is back: pid {}, restarts {}",
                i.id,
                i.pid.unwrap_or(0),
                i.restarts
            );
        }
        self.check_answers(&app, "v2")?;

        // 7. a feature flag, rolled out by two commits
        stage(
            "7/8",
            "a feature flag is turned on for 10 % of users, then 50 %, by two commits",
        );
        for percent in [10, 50] {
            self.flag_rollout(percent)?;
        }

        // 8. prune
        stage("8/8", "the applications are removed from Git and pruned");
        let status: Status = self.client.get("/api/v1/status")?;
        let pids: Vec<u32> = status
            .apps
            .iter()
            .flat_map(|a| a.instances.iter().filter_map(|i| i.pid))
            .collect();
        git(&self.repo, &["rm", "-rq", "apps", "chaos"])?;
        git(&self.repo, &["commit", "-qm", "Remove hello and payments"])?;
        let c5 = head(&self.repo)?;
        self.sync()?;
        self.wait_status("hello and payments pruned and their processes gone", |s| {
            applied(s) == c5 && s.apps.is_empty() && pids.iter().all(|p| !alive(*p))
        })?;
        println!("  processes {pids:?} are gone");

        println!("\n--- gauntlet history {APP} ---");
        let records: Vec<AuditRecord> = self
            .client
            .get(&format!("/api/v1/history?app={APP}&limit=40"))?;
        for r in records {
            println!("  {:<18} {:<8} {}", r.actor.to_string(), r.action, r.reason);
        }
        Ok(())
    }

    /// The chaos run that judged `revision` of hello at its chaos step.
    fn gate_run(&self, revision: &str) -> Result<RunSummary> {
        let runs: serde_json::Value = self.client.get("/api/v1/chaos/runs")?;
        let runs: Vec<RunSummary> = serde_json::from_value(runs["runs"].clone())?;
        runs.into_iter()
            .rev()
            .find(|r| {
                r.gate
                    .as_ref()
                    .is_some_and(|g| g.app == APP && g.revision == revision)
            })
            .ok_or_else(|| anyhow!("no chaos run judged hello's revision {revision}"))
    }

    /// Commits a v4 whose calls to payments have no timeout while requests flow: it passes
    /// its canary steps until the chaos step holds payments for 3 s, where it stops answering
    /// and is rolled back. Prints the journal's verdict, then returns Git to v2.
    fn fragile_release(&mut self) -> Result<()> {
        let fragile = Release {
            resilient: false,
            ..Release::good("v4")
        };
        let (app, counts, reason) = self.rolled_back(&fragile)?;
        if !reason.contains("did not survive chaos experiment payments-outage") {
            bail!("v4 was rolled back, but not by its chaos step: {reason}");
        }
        let gate = self.gate_run(&app.revision)?;
        let view: serde_json::Value = self
            .client
            .get(&format!("/api/v1/chaos/runs/{}", gate.id))?;
        let journal = &view["journal"];
        for (phase, label) in [
            ("before", "before the fault"),
            ("after", "with payments held"),
        ] {
            for probe in journal["steadyState"][phase]
                .as_array()
                .into_iter()
                .flatten()
            {
                println!(
                    "  probe {} {label}: {} ({})",
                    probe["name"].as_str().unwrap_or_default(),
                    if probe["passed"] == true {
                        "ok"
                    } else {
                        "FAILED"
                    },
                    probe["reason"].as_str().unwrap_or_default()
                );
            }
        }
        for fault in journal["faults"].as_array().into_iter().flatten() {
            println!(
                "  {}: removed {} ms after it was injected",
                fault["title"].as_str().unwrap_or_default(),
                fault["removedMs"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(fault["injectedMs"].as_u64().unwrap_or(0))
            );
        }
        println!("  journal: gauntlet chaos report {}", gate.id);
        println!(
            "  through the proxy meanwhile: {} requests, {} answered v4, {} answered v2, {} failed",
            counts.sent,
            counts.answered("v4"),
            counts.answered("v2"),
            counts.failed
        );
        self.back_to_v2()
    }

    /// Commits `release` while requests flow and waits until its rollout is rolled back with
    /// all traffic on v2; returns the application, the requests' answers and the reason.
    fn rolled_back(&mut self, release: &Release) -> Result<(AppStatus, TrafficCounts, String)> {
        let traffic = Traffic::start(self.ports.hello);
        write_app(&self.repo, self.ports, release)?;
        let message = format!("Release hello {}", release.version);
        git(&self.repo, &["commit", "-qam", &message])?;
        self.sync()?;
        let what = format!("{} rolled back: all traffic on v2", release.version);
        let app = self.wait_app(&what, |_, a| {
            matches!(&a.health, Health::Degraded(r) if r.contains("rolled back"))
                && a.traffic
                    .iter()
                    .all(|t| t.weight == 0 || t.revision != a.revision)
        })?;
        let counts = traffic.finish();
        let Health::Degraded(reason) = app.health.clone() else {
            bail!("{} is not reported rolled back", release.version);
        };
        println!("  {reason}");
        Ok((app, counts, reason))
    }

    /// Puts v2 back in Git and waits until it is healthy and answering.
    fn back_to_v2(&mut self) -> Result<()> {
        write_app(&self.repo, self.ports, &Release::good("v2"))?;
        git(&self.repo, &["commit", "-qam", "Back to hello v2"])?;
        let back = head(&self.repo)?;
        self.sync()?;
        let app = self.wait_app("Git back on v2, healthy", |s, a| {
            applied(s) == back && a.health == Health::Healthy && a.ready == 2
        })?;
        self.check_answers(&app, "v2")
    }

    /// Commits a v3 that fails 5 % of its requests while requests flow, waits until the guard
    /// rolls it back, prints what v3 served, then returns Git to v2.
    fn bad_release(&mut self) -> Result<()> {
        let failing = Release {
            error_rate: 0.05,
            ..Release::good("v3")
        };
        let (_, counts, _) = self.rolled_back(&failing)?;
        let served = counts.answered("v3") + counts.failed;
        println!(
            "  v3 served {served} of {} requests through the proxy; {} of them failed (v2 served {})",
            counts.sent,
            counts.failed,
            counts.answered("v2")
        );
        if served == 0 {
            bail!("v3 never received traffic, so the guard had nothing to judge");
        }
        self.back_to_v2()
    }

    /// Commits `new-checkout` on for `percent` % of users, then evaluates it over OFREP (as an
    /// application's OpenFeature SDK would) for 1,000 users and checks the split is within 4σ
    /// of the binomial expectation.
    fn flag_rollout(&self, percent: u32) -> Result<()> {
        const USERS: u32 = 1000;
        write_flags(&self.repo, percent)?;
        git(&self.repo, &["add", "-A"])?;
        let message = format!("Turn new-checkout on for {percent} % of users");
        git(&self.repo, &["commit", "-qm", &message])?;
        let commit = head(&self.repo)?;
        self.sync()?;
        let served: serde_json::Value = self.client.get("/api/v1/flags")?;
        if served["commit"].as_str() != Some(commit.as_str()) {
            bail!(
                "the flags served are from {}, not {commit}",
                served["commit"]
            );
        }
        let listen = paths::read_controller_info(&self.state)?.listen;
        let url = format!("http://{listen}/ofrep/v1/evaluate/flags/new-checkout");
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        let mut on = 0u32;
        for user in 0..USERS {
            let answer: serde_json::Value = http
                .post(&url)
                .json(&serde_json::json!({"context": {"targetingKey": format!("user-{user}")}}))
                .send()
                .and_then(|r| r.error_for_status()?.json())
                .with_context(|| format!("POST {url}"))?;
            match answer["value"].as_bool() {
                Some(true) => on += 1,
                Some(false) => {}
                None => bail!("{url} answered {answer}"),
            }
        }
        let p = f64::from(percent) / 100.0;
        let n = f64::from(USERS);
        let sigma = (n * p * (1.0 - p)).sqrt();
        let off_by = (f64::from(on) - n * p).abs() / sigma;
        println!(
            "  commit {}: new-checkout on for {on} of {USERS} users ({:.1} %, target {percent} %, {off_by:.1}σ off)",
            crate::commands::short(&commit),
            f64::from(on) * 100.0 / n,
        );
        if off_by > 4.0 {
            bail!("the split is {off_by:.1}σ away from {percent} %");
        }
        Ok(())
    }

    fn restore(&mut self) -> Result<()> {
        write_payments(&self.repo, self.ports)?;
        write_experiment(&self.repo)?;
        write_app(&self.repo, self.ports, &Release::good("v2"))?;
        git(&self.repo, &["add", "-A"])?;
        git(&self.repo, &["commit", "-qm", "Restore hello v2"])?;
        self.sync()?;
        let status = self.wait_status("hello restored", |s| {
            s.apps
                .iter()
                .any(|a| a.name == APP && a.health == Health::Healthy)
        })?;
        println!();
        print_status(&mut std::io::stdout(), &status)?;
        Ok(())
    }

    /// Stops the controller with every instance: through the API, else by signal.
    fn stop(&mut self) {
        let asked: Result<serde_json::Value> = self.client.post(
            "/api/v1/shutdown",
            serde_json::json!({"stopInstances": true}),
        );
        if asked.is_ok() {
            wait_or_kill(&mut self.controller);
        } else {
            terminate(&mut self.controller);
        }
    }

    fn sync(&self) -> Result<()> {
        self.client.sync()?;
        Ok(())
    }

    fn wait_status(&self, what: &str, ok: impl Fn(&Status) -> bool) -> Result<Status> {
        let start = Instant::now();
        let s = wait_for(what, || {
            let s: Status = self.client.get("/api/v1/status")?;
            Ok(ok(&s).then_some(s))
        })?;
        println!("  ok: {what} ({:.1}s)", start.elapsed().as_secs_f64());
        Ok(s)
    }

    fn wait_app(&self, what: &str, ok: impl Fn(&Status, &AppStatus) -> bool) -> Result<AppStatus> {
        self.wait_app_named(APP, what, ok)
    }

    fn wait_app_named(
        &self,
        name: &str,
        what: &str,
        ok: impl Fn(&Status, &AppStatus) -> bool,
    ) -> Result<AppStatus> {
        // On a timeout the error says where the application was, not only what it was not.
        let last = std::cell::RefCell::new(None);
        let s = self
            .wait_status(what, |s| {
                let app = s.apps.iter().find(|a| a.name == name);
                if let Some(a) = app {
                    let shares: Vec<String> = a
                        .traffic
                        .iter()
                        .map(|t| format!("{} {}", t.revision, t.weight))
                        .collect();
                    *last.borrow_mut() = Some(format!(
                        "{name} was {:?} at revision {}, {}/{} ready, traffic [{}]",
                        a.health,
                        a.revision,
                        a.ready,
                        a.replicas,
                        shares.join(", ")
                    ));
                }
                app.is_some_and(|a| ok(s, a))
            })
            .map_err(|e| match last.borrow().as_ref() {
                Some(last) => anyhow!("{e:#}; {last}"),
                None => e,
            })?;
        find(&s, name)
    }

    /// Every instance answers `GET /` with `version`.
    fn check_answers(&self, app: &AppStatus, version: &str) -> Result<()> {
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        for i in &app.instances {
            let url = format!("http://127.0.0.1:{}/", i.port);
            let body = http
                .get(&url)
                .send()
                .and_then(|r| r.text())
                .with_context(|| format!("GET {url}"))?;
            if body.trim() != version {
                bail!("{url} answered {:?}, expected {version}", body.trim());
            }
            println!("  GET {url} -> {}", body.trim());
        }
        let url = format!("http://127.0.0.1:{}/", self.ports.hello);
        wait_for(&format!("{url} to answer {version}"), || {
            let body = http.get(&url).send().and_then(|r| r.text()).ok();
            Ok(body.filter(|b| b.trim() == version))
        })?;
        println!("  GET {url} (the service, through the proxy) -> {version}");
        Ok(())
    }
}

/// Requests sent to the service address from a background thread, about 100 a second, until
/// `finish`; the answers are counted by version.
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<TrafficCounts>,
}

#[derive(Debug, Default)]
struct TrafficCounts {
    sent: u64,
    /// Successful answers by body (the version).
    answers: std::collections::BTreeMap<String, u64>,
    failed: u64,
    first_failure: Option<String>,
}

impl TrafficCounts {
    /// Answers from `version`, its fallback answers (`v2 (fallback)`) included.
    fn answered(&self, version: &str) -> u64 {
        self.answers
            .iter()
            .filter(|(body, _)| body.split(' ').next() == Some(version))
            .map(|(_, n)| n)
            .sum()
    }
}

impl Traffic {
    fn start(port: u16) -> Traffic {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut counts = TrafficCounts::default();
            let Ok(http) = reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
            else {
                return counts;
            };
            let url = format!("http://127.0.0.1:{port}/");
            // Bounded: at most ten minutes of requests even if never stopped.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                counts.sent += 1;
                match http
                    .get(&url)
                    .send()
                    .and_then(|r| r.error_for_status()?.text())
                {
                    Ok(body) => {
                        *counts.answers.entry(body.trim().to_string()).or_default() += 1;
                    }
                    Err(e) => {
                        counts.failed += 1;
                        counts.first_failure.get_or_insert(e.to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            counts
        });
        Traffic { stop, thread }
    }

    fn finish(self) -> TrafficCounts {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// A port nothing listens on now, for the demo's service address.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until the controller has written `controller.json` (it is then listening) and returns
/// a client of it; fails at once if the controller exits first.
fn connect(controller: &mut Child, state: &Path) -> Result<Client> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = controller.try_wait().context("watching the controller")? {
            bail!("the controller exited during start-up ({status})");
        }
        // A file left by an earlier run in the same --dir names another pid.
        if let Ok(info) = paths::read_controller_info(state) {
            if info.pid == controller.id() {
                let token = paths::read_token_file(state)?;
                println!(
                    "  controller pid {} on http://{}, state in {}",
                    info.pid,
                    info.listen,
                    state.display()
                );
                return Client::new(&info.listen, token);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the controller did not start within {}s",
                DEADLINE.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM: the controller, started with `--stop-instances-on-exit`, stops every instance.
fn terminate(controller: &mut Child) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(controller.id() as i32, libc::SIGTERM) };
    wait_or_kill(controller);
}

/// Waits for the controller to exit; SIGKILL after 30 s.
fn wait_or_kill(controller: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match controller.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = controller.kill();
                let _ = controller.wait();
                return;
            }
        }
    }
}

fn stage(n: &str, what: &str) {
    println!("\n==> {n}: {what}");
}

fn applied(s: &Status) -> String {
    s.source
        .applied
        .as_ref()
        .map(|c| c.sha.clone())
        .unwrap_or_default()
}

fn find(s: &Status, name: &str) -> Result<AppStatus> {
    s.apps
        .iter()
        .find(|a| a.name == name)
        .cloned()
        .ok_or_else(|| anyhow!("{name} is not in the status"))
}

fn alive(pid: u32) -> bool {
    // Zombies count as gone: their /proc state is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + DEADLINE;
    let mut last_err = None;
    loop {
        match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "timed out after {}s waiting for {what}{}",
                DEADLINE.as_secs(),
                last_err
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The ports the proxy serves the demo's applications on.
#[derive(Debug, Clone, Copy)]
struct Ports {
    hello: u16,
    payments: u16,
}

/// One release of hello.
struct Release<'a> {
    version: &'a str,
    /// Fraction of requests answered with 500.
    error_rate: f64,
    /// Gives up on payments after 300 ms and answers from a fallback; otherwise waits for it.
    resilient: bool,
    /// Misspells `command`: a commit the controller must reject.
    typo: bool,
}

impl Release<'_> {
    fn good(version: &str) -> Release<'_> {
        Release {
            version,
            error_rate: 0.0,
            resilient: true,
            typo: false,
        }
    }
}

/// hello at `release`, on two instances behind the proxy, rolled out as a canary whose third
/// step is the `payments-outage` chaos experiment.
fn write_app(repo: &Path, ports: Ports, release: &Release) -> Result<()> {
    let exe = gauntlet_exe()?;
    let command_key = if release.typo { "comand" } else { "command" };
    let Release {
        version,
        error_rate,
        ..
    } = release;
    let timeout = if release.resilient {
        r#", "--downstream-timeout", "300ms""#
    } else {
        ""
    };
    let yaml = format!(
        r#"# The demo application: `gauntlet demo-app`, answering its version on GET / after a call
# to payments.
apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata:
  name: {APP}
spec:
  replicas: 2
  process:
    {command_key}: ["{exe}", "demo-app"]
    args: ["--listen", "127.0.0.1:${{PORT}}", "--version", "{version}", "--error-rate", "{error_rate}",
           "--downstream", "http://127.0.0.1:{payments}/"{timeout}]
  readiness:
    httpGet: {{path: /healthz}}
    periodSeconds: 1
  service:
    listen: "127.0.0.1:{hello}"
  # Every release is a canary judged request by request by the sequential guard, and must
  # survive payments' outage before it gets half of the traffic. It is promoted only once the
  # guard has accepted it: the steps' timing never lets an undecided candidate through.
  strategy:
    canary:
      guard: {{requireAcceptance: true, beta: 0.001}}
      scaleDownDelaySeconds: 0
      abortScaleDownDelaySeconds: 0
      steps:
      - setWeight: 25
      - pause: {{duration: 5s}}
      - chaos: {{experiment: payments-outage}}
      - setWeight: 50
      - pause: {{duration: 5s}}
"#,
        exe = exe.display(),
        hello = ports.hello,
        payments = ports.payments,
    );
    write_file(&repo.join("apps/hello.yaml"), &yaml)
}

/// payments: the dependency hello calls on every request.
fn write_payments(repo: &Path, ports: Ports) -> Result<()> {
    let exe = gauntlet_exe()?;
    let yaml = format!(
        r#"apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata:
  name: payments
spec:
  replicas: 1
  process:
    command: ["{exe}", "demo-app"]
    args: ["--listen", "127.0.0.1:${{PORT}}", "--version", "payments"]
  readiness:
    httpGet: {{path: /healthz}}
    periodSeconds: 1
  service:
    listen: "127.0.0.1:{payments}"
"#,
        exe = exe.display(),
        payments = ports.payments,
    );
    write_file(&repo.join("apps/payments.yaml"), &yaml)
}

/// The experiment of hello's chaos step: its candidate alone must keep answering within a
/// second while its calls to payments are held for three.
fn write_experiment(repo: &Path) -> Result<()> {
    let yaml = r#"apiVersion: gauntlet.dev/v1alpha1
kind: ChaosExperiment
metadata:
  name: payments-outage
spec:
  target: {application: hello, revision: candidate, mode: all}
  hypothesis:
    probes:
    - name: candidate-answers
      http: {url: "http://${TARGET}/"}
      timeout: 1s
      tolerance: {status: 200}
  method:
  # Held until the run ends: the hypothesis after the method is checked under it.
  - fault: {dependency: {application: payments, delay: {latency: 3s}}}
  - pause: 1s
  duration: 1m
"#;
    write_file(&repo.join("chaos/payments-outage.yaml"), yaml)
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    // Stage 8's `git rm` takes emptied directories with it.
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// The demo's flag set: `new-checkout` on for `percent` % of users, bucketed by targeting key.
fn write_flags(repo: &Path, percent: u32) -> Result<()> {
    let path = repo.join("flags/checkout.yaml");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let yaml = format!(
        "apiVersion: gauntlet.dev/v1alpha1
kind: FeatureFlags
metadata: {{name: checkout-flags}}
spec:
  flags:
    new-checkout:
      state: ENABLED
      variants: {{on: true, off: false}}
      defaultVariant: off
      targeting: {{fractional: [[on, {percent}], [off, {rest}]]}}
",
        rest = 100 - percent
    );
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))
}

fn git(repo: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=Gauntlet Demo",
            "-c",
            "user.email=demo@gauntlet.dev",
        ])
        .args(args)
        .output()
        .context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn head(repo: &Path) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "HEAD"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// This binary's path. Linux reports a binary replaced on disk (a rebuild while the demo runs)
/// as `PATH (deleted)`; the new binary at the same path is the one to run.
pub(crate) fn gauntlet_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the gauntlet binary")?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}
