//! Chaos experiments end to end: a real controller with its proxy and demo-app instances, a
//! `ChaosExperiment` committed to Git, runs started with `gauntlet chaos run`, each fault's
//! effect observed (statuses through the proxy, a stopped process in `/proc`) and its removal:
//! at the end of the run, on `chaos abort`, on a continuous check's failure, and by the fault's
//! own lease with the controller killed.

mod common;

use common::*;
use gauntlet_runtime::local::faults::is_stopped;
use serde_json::Value;

/// `web` behind the proxy on `port`, `replicas` instances.
fn web(port: u16, replicas: u32) -> String {
    format!(
        "{}  service:\n    listen: \"127.0.0.1:{port}\"\n",
        app_yaml("web", "v1", replicas)
    )
}

fn experiment(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: gauntlet.dev/v1alpha1\nkind: ChaosExperiment\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

/// Status of one GET through the proxy, or `None` if it could not be made.
fn status(port: u16) -> Option<u16> {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .no_proxy()
        .build()
        .ok()?
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .ok()
        .map(|r| r.status().as_u16())
}

fn start(c: &Controller, experiment: &str) -> String {
    let out = c.run_cli(&["chaos", "run", experiment]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn run_view(c: &Controller, id: &str) -> Value {
    c.get(&format!("/api/v1/chaos/runs/{id}"))
}

fn finished(c: &Controller, id: &str) -> Value {
    c.wait_until("the run finished", || {
        let v = run_view(c, id);
        v["journal"]["endedMs"].is_u64().then_some(v)
    })
}

fn setup(replicas: u32, experiments: &[(&str, &str)]) -> (Repo, Controller, u16) {
    setup_with(replicas, experiments, &[])
}

/// [`setup`] with extra flags for `gauntlet up`.
fn setup_with(
    replicas: u32,
    experiments: &[(&str, &str)],
    flags: &[&str],
) -> (Repo, Controller, u16) {
    let repo = Repo::new();
    let port = free_port();
    repo.write("apps/web.yaml", &web(port, replicas));
    for (name, spec) in experiments {
        repo.write(&format!("chaos/{name}.yaml"), &experiment(name, spec));
    }
    repo.commit("web and its experiments");
    let c = Controller::start(repo.path().to_str().unwrap(), flags);
    c.wait_healthy("web", u64::from(replicas));
    c.wait_until("web answers through the proxy", || {
        (status(port) == Some(200)).then_some(())
    });
    (repo, c, port)
}

#[test]
fn an_http_abort_fault_that_breaks_the_hypothesis_is_stopped_by_the_continuous_check() {
    let repo = Repo::new();
    let port = free_port();
    repo.write("apps/web.yaml", &web(port, 1));
    repo.write(
        "chaos/abort-all.yaml",
        &experiment(
            "abort-all",
            &format!(
                "  target: {{application: web, revision: stable, mode: all}}\n  blastRadius: {{allowAllStable: true}}\n  hypothesis:\n    probes:\n    - {{name: answers, http: {{url: \"http://127.0.0.1:{port}/\"}}, tolerance: {{status: 200}}}}\n    continuous: {{interval: 200ms, failureThreshold: 2}}\n  method:\n  - {{fault: {{http: {{abort: {{status: 503}}, percent: 100}}}}, duration: 60s}}\n  duration: 2m\n"
            ),
        ),
    );
    repo.commit("web and an experiment");
    let c = Controller::start(repo.path().to_str().unwrap(), &[]);
    c.wait_healthy("web", 1);
    c.wait_until("web answers", || (status(port) == Some(200)).then_some(()));

    let id = start(&c, "abort-all");
    let run = finished(&c, &id);
    let journal = &run["journal"];
    assert_eq!(journal["status"], "aborted", "{journal}");
    assert_eq!(journal["deviated"], true, "{journal}");
    assert_eq!(journal["steadyState"]["metBefore"], true, "{journal}");
    let during = journal["steadyState"]["during"].as_array().unwrap();
    assert!(
        during
            .iter()
            .any(|p| p["passed"] == false && p["reason"].as_str().unwrap_or("").contains("503")),
        "the continuous check saw the fault: {journal}"
    );
    assert!(
        journal["faults"][0]["removedMs"].is_u64(),
        "the fault is recorded as removed: {journal}"
    );
    // Removed for real: the proxy serves again, and holds no fault rule.
    wait_until("web answers 200 again", || {
        (status(port) == Some(200)).then_some(())
    });
    let report = c.run_cli(&["chaos", "report", &id]);
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(text.contains("Aborted, hypothesis deviated"), "{text}");
    let list = c.run_cli(&["chaos", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&id));
}

#[test]
fn a_paused_instance_is_resumed_on_abort_and_a_second_run_is_refused_while_one_runs() {
    let pause = "  target: {application: web, revision: stable, mode: one}\n  hypothesis:\n    probes: []\n  method:\n  - {fault: {pause: {}}, duration: 60s}\n  duration: 2m\n";
    let (_repo, c, _port) = setup(2, &[("pause-one", pause)]);

    // Dry run: the plan names the targets and touches nothing.
    let out = c.run_cli(&["chaos", "run", "pause-one", "--dry-run"]);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && plan.contains("pause"), "{plan}");
    let app = c.app("web").unwrap();
    let pids = instance_pids(&app);
    assert!(
        pids.iter().all(|p| !is_stopped(*p as u32)),
        "a dry run pauses nothing"
    );

    let id = start(&c, "pause-one");
    let paused = wait_until("one instance stopped", || {
        let stopped: Vec<u64> = pids
            .iter()
            .copied()
            .filter(|p| is_stopped(*p as u32))
            .collect();
        (stopped.len() == 1).then(|| stopped[0])
    });
    let again = c.run_cli(&["chaos", "run", "pause-one"]);
    assert!(
        !again.status.success(),
        "runs of one experiment never overlap"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let out = c.run_cli(&["chaos", "abort", &id]);
    assert!(out.status.success());
    let run = finished(&c, &id);
    assert_eq!(run["journal"]["status"], "aborted", "{run}");
    assert!(!is_stopped(paused as u32), "resumed once the run ended");
    let faults_dir = c.state.path().join("faults");
    assert!(
        std::fs::read_dir(&faults_dir)
            .map(|d| d
                .flatten()
                .all(|e| e.path().extension().is_none_or(|x| x != "json")))
            .unwrap_or(true),
        "no fault record left"
    );
}

#[test]
fn a_fault_ends_at_its_lease_with_the_controller_killed_and_the_run_is_interrupted() {
    let pause = "  target: {application: web, revision: stable, mode: one}\n  hypothesis:\n    probes: []\n  method:\n  - {fault: {pause: {}}, duration: 5m}\n  rollbacks:\n  - {action: {command: [\"true\"]}}\n  duration: 10m\n";
    let (_repo, mut c, _port) = setup_with(2, &[("pause-long", pause)], &["--chaos-lease", "2s"]);
    let pids = instance_pids(&c.app("web").unwrap());
    let id = start(&c, "pause-long");
    let paused = wait_until("one instance stopped", || {
        pids.iter().copied().find(|p| is_stopped(*p as u32))
    });

    // While the controller lives it renews the lease, so the fault outlasts its first lease.
    c.wait_until("the lease renewed past its first 2 s", || {
        let fault = run_view(&c, &id)["journal"]["faults"][0].clone();
        let (injected, lease) = (
            fault["injectedMs"].as_u64()?,
            fault["leaseExpiresMs"].as_u64()?,
        );
        (lease > injected + 2_500 && crate::now_ms() > injected + 2_500).then_some(())
    });
    assert!(
        is_stopped(paused as u32),
        "still paused after its first lease"
    );

    // The controller dies; the agent's lease (at most 2 s ahead) ends the fault by itself.
    c.kill9();
    c.wait_until(
        "the paused instance resumed by its lease, with no controller",
        || (!is_stopped(paused as u32)).then_some(()),
    );

    // Back up: the run is Interrupted and its rollbacks ran.
    c.spawn();
    let run = finished(&c, &id);
    assert_eq!(run["journal"]["status"], "interrupted", "{run}");
    assert!(
        run["journal"]["rollbacks"][0]["endMs"].is_u64(),
        "the rollback ran: {run}"
    );
}

#[test]
fn an_unknown_experiment_and_runs_while_paused_are_refused() {
    let noop = "  target: {application: web, revision: stable, mode: one}\n  hypothesis:\n    probes: []\n  method:\n  - {pause: 100ms}\n";
    let (_repo, c, _port) = setup(1, &[("noop", noop)]);
    let out = c.run_cli(&["chaos", "run", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no ChaosExperiment named `nope`"));

    assert!(c.run_cli(&["chaos", "pause-all"]).status.success());
    let out = c.run_cli(&["chaos", "run", "noop"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("paused"));
    assert!(c.run_cli(&["chaos", "resume-all"]).status.success());

    let id = start(&c, "noop");
    let run = finished(&c, &id);
    assert_eq!(run["journal"]["status"], "completed", "{run}");
    let history = c.history("web");
    assert!(
        history.iter().any(|r| r["action"] == "chaos-finished"),
        "{history:?}"
    );
}

/// `web`, calling `payments` on every request, with a canary whose second step is the chaos
/// experiment `dependency-outage`; `downstream` are demo-app's flags for the call.
fn gated_web(version: &str, port: u16, payments: u16, downstream: &str) -> String {
    format!(
        r#"apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata:
  name: web
spec:
  replicas: 1
  process:
    command: ["{BIN}", "demo-app"]
    args: ["--listen", "127.0.0.1:${{PORT}}", "--version", "{version}", "--downstream", "http://127.0.0.1:{payments}/"{downstream}]
    terminationGracePeriodSeconds: 5
  readiness:
    httpGet: {{path: /healthz}}
    periodSeconds: 1
  service:
    listen: "127.0.0.1:{port}"
  strategy:
    canary:
      abortScaleDownDelaySeconds: 0
      steps:
      - setWeight: 20
      - chaos: {{experiment: dependency-outage}}
"#
    )
}

/// The candidate alone must answer within a second while its calls to `payments` are held
/// for three.
const DEPENDENCY_OUTAGE: &str = "  target: {application: web, revision: candidate, mode: all}\n  hypothesis:\n    probes:\n    - {name: candidate-answers, http: {url: \"http://${TARGET}/\"}, timeout: 1s, tolerance: {status: 200}}\n  method:\n  - {fault: {dependency: {application: payments, delay: {latency: 3s}}}}\n  - {pause: 500ms}\n  duration: 1m\n";

#[test]
fn a_chaos_step_promotes_a_candidate_that_survives_and_rolls_back_one_that_does_not() {
    let repo = Repo::new();
    let (port, payments) = (free_port(), free_port());
    repo.write(
        "apps/payments.yaml",
        &format!(
            "{}  service:\n    listen: \"127.0.0.1:{payments}\"\n",
            app_yaml("payments", "p1", 1)
        ),
    );
    let resilient = r#", "--downstream-timeout", "200ms""#;
    repo.write("apps/web.yaml", &gated_web("v1", port, payments, resilient));
    repo.write(
        "chaos/dependency-outage.yaml",
        &experiment("dependency-outage", DEPENDENCY_OUTAGE),
    );
    repo.commit("web v1 calling payments");
    let c = Controller::start(repo.path().to_str().unwrap(), &[]);
    c.wait_healthy("payments", 1);
    c.wait_healthy("web", 1);
    wait_until("web answers through the proxy", || {
        (status(port) == Some(200)).then_some(())
    });

    // v2 gives up on payments after 200 ms and answers from a fallback: it survives.
    repo.write("apps/web.yaml", &gated_web("v2", port, payments, resilient));
    repo.commit("web v2, resilient");
    c.sync();
    c.wait_until("v2 promoted through its chaos step", || {
        let history = c.history("web");
        history
            .iter()
            .any(|r| r["action"] == "rollout-completed")
            .then_some(())
    });
    let runs = c.get("/api/v1/chaos/runs");
    let gate = runs["runs"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["gate"]["app"] == "web"))
        .cloned()
        .unwrap_or_else(|| panic!("a gate run: {runs}"));
    assert_eq!(gate["status"], "completed", "{runs}");

    // v3 waits on payments for as long as it takes: its chaos step rolls it back.
    repo.write("apps/web.yaml", &gated_web("v3", port, payments, ""));
    repo.commit("web v3, no timeout on payments");
    c.sync();
    let aborted = c.wait_until("v3 rolled back by its chaos step", || {
        c.history("web")
            .into_iter()
            .find(|r| r["action"] == "rollout-aborted")
    });
    let reason = aborted["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains("did not survive chaos experiment dependency-outage"),
        "{aborted}"
    );
    // The abort names the run; its journal shows the deviation and the fault removed.
    let run_id = reason
        .split("run ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("the abort names its run: {reason}"))
        .to_string();
    let run = finished(&c, &run_id);
    let journal = &run["journal"];
    assert_eq!(journal["status"], "failed", "{journal}");
    assert_eq!(journal["deviated"], true, "{journal}");
    assert!(journal["faults"][0]["removedMs"].is_u64(), "{journal}");
    let view = c.get("/api/v1/apps/web/rollout");
    assert!(
        view["state"]["aborted"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&run_id)),
        "the rollout's status links the journal: {view}"
    );
    wait_until("v2 serves again", || {
        answer(u64::from(port)).filter(|b| b.starts_with("v2"))
    });
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The fault agents' records in the controller's state directory.
fn agent_records(c: &Controller) -> Vec<Value> {
    let Ok(dir) = std::fs::read_dir(c.state.path().join("faults")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect()
}

/// Fields of `/proc/PID/stat` after the command name, from its state (index 0) on.
fn proc_stat(pid: u64) -> Vec<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.to_string()))
        .map(|rest| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

/// `VmRSS` of `pid` in bytes.
fn resident(pid: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// One GET through `port` with its status (or `None` when no answer came) and how long it took.
fn timed(port: u16) -> (Option<u16>, std::time::Duration) {
    let started = std::time::Instant::now();
    (status(port), started.elapsed())
}

#[test]
fn a_killed_instance_is_restarted_by_the_runtime() {
    let kill = "  target: {application: web, revision: stable, mode: one}\n  hypothesis:\n    probes: []\n  method:\n  - {fault: {kill: {signal: KILL}}}\n";
    let (_repo, c, _port) = setup(2, &[("kill-one", kill)]);
    let before = instance_pids(&c.app("web").unwrap());
    let id = start(&c, "kill-one");
    let run = finished(&c, &id);
    assert_eq!(run["journal"]["status"], "completed", "{run}");
    let killed = wait_until("one of the instances' processes is gone", || {
        before.iter().copied().find(|p| !alive(*p))
    });
    assert_eq!(
        before.iter().filter(|p| alive(**p)).count(),
        1,
        "mode one kills one of two"
    );
    c.wait_until("the runtime restarted it with a new process", || {
        let app = c.app("web")?;
        let pids = instance_pids(&app);
        let restarted = app["instances"]
            .as_array()?
            .iter()
            .any(|i| i["restarts"].as_u64() >= Some(1));
        (restarted
            && pids.len() == 2
            && !pids.contains(&killed)
            && app["health"]["status"] == "Healthy")
            .then_some(())
    });
}

#[test]
fn cpu_memory_and_disk_faults_hold_their_resources_until_the_run_is_aborted() {
    // Each fault picks its own instance; two of them may pick both.
    let stress = "  target: {application: web, revision: stable, mode: one}\n  blastRadius: {allowAllStable: true}\n  hypothesis:\n    probes: []\n  method:\n  - {fault: {cpu: {cores: 1, load: 100}}, duration: 5m, background: true}\n  - {fault: {memory: {size: 64Mi}}, duration: 5m, background: true}\n  - {fault: {diskFill: {size: 32Mi}}, duration: 5m, background: true}\n  - {pause: 5m}\n  duration: 10m\n";
    let (_repo, c, _port) = setup(2, &[("stress", stress)]);
    let id = start(&c, "stress");
    let records = wait_until_or(
        "three fault agents hold their faults",
        || format!("{}\n{}", run_view(&c, &id), c.log_tail()),
        || {
            let records = agent_records(&c);
            (records.len() == 3).then_some(records)
        },
    );
    let agent = |kind: &str| -> Value {
        records
            .iter()
            .find(|r| r["fault"]["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("a {kind} agent in {records:?}"))
    };
    let (cpu, memory, disk) = (agent("cpu"), agent("memory"), agent("diskFill"));

    // The CPU agent burns CPU: user + system time keeps growing past a second.
    let cpu_pid = cpu["agentPid"].as_u64().unwrap();
    c.wait_until("the cpu agent has used a second of CPU", || {
        let stat = proc_stat(cpu_pid);
        // utime and stime, in clock ticks (100 a second), are fields 14 and 15 of stat.
        let ticks = stat.get(11).copied().unwrap_or(0) + stat.get(12).copied().unwrap_or(0);
        (ticks >= 100).then_some(())
    });
    // The memory agent holds 64 MiB resident.
    let memory_pid = memory["agentPid"].as_u64().unwrap();
    c.wait_until("the memory agent holds 64 MiB", || {
        (resident(memory_pid) >= 64 << 20).then_some(())
    });
    // The disk fill is a 32 MiB file in the instance's working directory.
    let file = std::path::PathBuf::from(disk["file"].as_str().expect("the fill's file"));
    let instance_dirs: Vec<std::path::PathBuf> = instance_pids(&c.app("web").unwrap())
        .iter()
        .filter_map(|p| std::fs::read_link(format!("/proc/{p}/cwd")).ok())
        .collect();
    assert!(
        instance_dirs
            .iter()
            .any(|d| file.parent() == Some(d.as_path())),
        "{file:?} in one of {instance_dirs:?}"
    );
    assert!(std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) >= 32 << 20);

    let out = c.run_cli(&["chaos", "abort", &id]);
    assert!(out.status.success());
    let run = finished(&c, &id);
    assert_eq!(run["journal"]["status"], "aborted", "{run}");
    // Removed for real: the agents are gone, so is the file and every record.
    for pid in [cpu_pid, memory_pid, disk["agentPid"].as_u64().unwrap()] {
        assert!(!alive(pid), "agent {pid} ended");
    }
    assert!(!file.exists(), "{file:?} removed");
    assert!(agent_records(&c).is_empty());
    let faults = run["journal"]["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 3, "{run}");
    assert!(faults.iter().all(|f| f["removedMs"].is_u64()), "{run}");
}

#[test]
fn http_delay_and_reset_faults_are_seen_through_the_proxy_and_end_with_the_run() {
    let delay = "  target: {application: web, revision: stable, mode: all}\n  blastRadius: {allowAllStable: true}\n  hypothesis:\n    probes: []\n  method:\n  - {fault: {http: {delay: {latency: 400ms}, percent: 100}}, duration: 5m}\n  duration: 10m\n";
    let reset = "  target: {application: web, revision: stable, mode: all}\n  blastRadius: {allowAllStable: true}\n  hypothesis:\n    probes: []\n  method:\n  - {fault: {http: {reset: {}, percent: 100}}, duration: 5m}\n  duration: 10m\n";
    let (_repo, c, port) = setup(1, &[("delay", delay), ("reset", reset)]);

    let id = start(&c, "delay");
    c.wait_until("requests take the injected 400 ms", || {
        let (status, took) = timed(port);
        (status == Some(200) && took >= std::time::Duration::from_millis(400)).then_some(())
    });
    assert!(c.run_cli(&["chaos", "abort", &id]).status.success());
    finished(&c, &id);
    let (answered, took) = timed(port);
    assert_eq!(answered, Some(200));
    assert!(
        took < std::time::Duration::from_millis(400),
        "no delay once the run ended: {took:?}"
    );

    let id = start(&c, "reset");
    c.wait_until("requests are reset", || {
        status(port).is_none().then_some(())
    });
    assert!(c.run_cli(&["chaos", "abort", &id]).status.success());
    finished(&c, &id);
    assert_eq!(status(port), Some(200), "answered once the run ended");
}

#[test]
fn dependency_faults_refuse_hold_or_delay_only_the_targets_calls() {
    let repo = Repo::new();
    let (port, payments) = (free_port(), free_port());
    repo.write(
        "apps/payments.yaml",
        &format!(
            "{}  service:\n    listen: \"127.0.0.1:{payments}\"\n",
            app_yaml("payments", "p1", 1)
        ),
    );
    repo.write(
        "apps/web.yaml",
        &gated_web("v1", port, payments, r#", "--downstream-timeout", "1s""#)
            .replace("  strategy:\n    canary:\n      abortScaleDownDelaySeconds: 0\n      steps:\n      - setWeight: 20\n      - chaos: {experiment: dependency-outage}\n", ""),
    );
    let outage = |effect: &str| {
        format!("  target: {{application: web, revision: stable, mode: all}}\n  blastRadius: {{allowAllStable: true}}\n  hypothesis:\n    probes: []\n  method:\n  - {{fault: {{dependency: {{application: payments, {effect}}}}}, duration: 5m}}\n  duration: 10m\n")
    };
    for (name, effect) in [
        ("refuse", "refuse: {}"),
        ("blackhole", "blackhole: {}"),
        ("delay", "delay: {latency: 300ms}"),
    ] {
        repo.write(
            &format!("chaos/{name}.yaml"),
            &experiment(name, &outage(effect)),
        );
    }
    repo.commit("web calling payments, and three outages");
    let c = Controller::start(repo.path().to_str().unwrap(), &[]);
    c.wait_healthy("payments", 1);
    c.wait_healthy("web", 1);
    wait_until("web answers with payments' help", || {
        answer(u64::from(port)).filter(|b| b == "v1")
    });
    let direct = || answer(u64::from(payments));

    // Refused: web's calls fail at once and it answers from its fallback; others reach
    // payments as before.
    let id = start(&c, "refuse");
    c.wait_until("web falls back", || {
        answer(u64::from(port)).filter(|b| b == "v1 (fallback)")
    });
    assert_eq!(direct().as_deref(), Some("p1"), "calls from elsewhere pass");
    assert!(c.run_cli(&["chaos", "abort", &id]).status.success());
    finished(&c, &id);
    wait_until("web is served by payments again", || {
        answer(u64::from(port)).filter(|b| b == "v1")
    });

    // Black-holed: web's calls go unanswered, so it gives up after its 1 s timeout.
    let id = start(&c, "blackhole");
    c.wait_until("web falls back after its timeout", || {
        let started = std::time::Instant::now();
        let body = answer(u64::from(port))?;
        (body == "v1 (fallback)" && started.elapsed() >= std::time::Duration::from_secs(1))
            .then_some(())
    });
    assert_eq!(direct().as_deref(), Some("p1"), "calls from elsewhere pass");
    assert!(c.run_cli(&["chaos", "abort", &id]).status.success());
    finished(&c, &id);
    wait_until("web is served by payments again", || {
        answer(u64::from(port)).filter(|b| b == "v1")
    });

    // Delayed: web's calls take 300 ms more and still succeed.
    let id = start(&c, "delay");
    c.wait_until("web's answers carry the delay", || {
        let started = std::time::Instant::now();
        let body = answer(u64::from(port))?;
        (body == "v1" && started.elapsed() >= std::time::Duration::from_millis(300)).then_some(())
    });
    let started = std::time::Instant::now();
    assert_eq!(direct().as_deref(), Some("p1"));
    assert!(
        started.elapsed() < std::time::Duration::from_millis(300),
        "calls from elsewhere are not delayed"
    );
    assert!(c.run_cli(&["chaos", "abort", &id]).status.success());
    finished(&c, &id);
}

#[test]
fn a_schedule_fires_again_and_again_but_never_while_a_run_goes_on() {
    // Fires every 2 s; each run lasts 3 s, so every other fire finds one going.
    let scheduled = "  target: {application: web, revision: stable, mode: one}\n  schedule: '@every 2s'\n  hypothesis:\n    probes: []\n  method:\n  - {pause: 3s}\n";
    let (_repo, c, _port) = setup(1, &[("every-2s", scheduled)]);
    let runs = c.wait_until("two scheduled runs finished and a fire was skipped", || {
        let runs: Vec<Value> = c.get("/api/v1/chaos/runs")["runs"].as_array()?.clone();
        let done = runs.iter().filter(|r| r["endedMs"].is_u64()).count();
        let skipped = c
            .history("web")
            .iter()
            .any(|r| r["action"] == "chaos-skipped");
        (done >= 2 && skipped).then_some(runs)
    });
    let mut spans: Vec<(u64, u64)> = runs
        .iter()
        .filter_map(|r| Some((r["startedMs"].as_u64()?, r["endedMs"].as_u64()?)))
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "runs overlap: {spans:?} in {runs:?}"
        );
    }
    assert!(
        runs.iter().all(|r| r["experiment"] == "every-2s"),
        "{runs:?}"
    );
    let run = run_view(&c, runs[0]["id"].as_str().unwrap());
    assert_eq!(run["actor"], "schedule", "{run}");
}
