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
    let repo = Repo::new();
    let port = free_port();
    repo.write("apps/web.yaml", &web(port, replicas));
    for (name, spec) in experiments {
        repo.write(&format!("chaos/{name}.yaml"), &experiment(name, spec));
    }
    repo.commit("web and its experiments");
    let c = Controller::start(repo.path().to_str().unwrap(), &[]);
    c.wait_healthy("web", u64::from(replicas));
    wait_until("web answers through the proxy", || {
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
    wait_until("web answers", || (status(port) == Some(200)).then_some(()));

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
    let (_repo, mut c, _port) = setup(2, &[("pause-long", pause)]);
    let pids = instance_pids(&c.app("web").unwrap());
    let id = start(&c, "pause-long");
    let paused = wait_until("one instance stopped", || {
        pids.iter().copied().find(|p| is_stopped(*p as u32))
    });

    // The controller dies; the agent's lease (at most 30 s ahead) ends the fault by itself.
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
