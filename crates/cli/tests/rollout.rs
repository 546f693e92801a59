//! Canary rollouts end to end: a real controller, its proxy, demo-app instances and load from a
//! second process. A bad release is rolled back by the sequential guard after a handful of
//! requests; a good one walks its steps and becomes stable.

mod common;

use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::Value;

/// An application with a canary strategy; `extra_args` go to demo-app (e.g. an error rate).
fn canary_app(version: &str, port: u16, extra_args: &str) -> String {
    canary_with_steps(
        version,
        port,
        extra_args,
        "      - setWeight: 50\n      - pause: {duration: 2s}\n",
    )
}

fn canary_with_steps(version: &str, port: u16, extra_args: &str, steps: &str) -> String {
    format!(
        r#"apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata:
  name: web
spec:
  replicas: 1
  process:
    command: ["{BIN}", "demo-app"]
    args: ["--listen", "127.0.0.1:${{PORT}}", "--version", "{version}"{extra_args}]
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
{steps}"#
    )
}

/// `gauntlet load` against the service for `seconds`; its JSON summary at the end.
fn load(port: u16, seconds: u32) -> Child {
    Command::new(BIN)
        .args(["load", "--url", &format!("http://127.0.0.1:{port}/")])
        .args(["--rate", "100", "--duration", &format!("{seconds}s")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("gauntlet load starts")
}

fn summary(child: Child) -> Value {
    let out = child.wait_with_output().expect("gauntlet load ends");
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}

fn record<'a>(history: &'a [Value], action: &str) -> Option<&'a Value> {
    history.iter().find(|r| r["action"] == action)
}

#[test]
fn a_bad_canary_is_rolled_back_by_the_guard_and_a_good_one_is_promoted() {
    let repo = Repo::new();
    let port = free_port();
    repo.write("apps/web.yaml", &canary_app("v1", port, ""));
    repo.commit("web v1");
    let c = Controller::start(repo.path().to_str().unwrap(), &[]);
    c.wait_healthy("web", 1);
    wait_until("the proxy serves v1", || {
        answer(u64::from(port)).filter(|b| b == "v1")
    });

    // v2 fails half of its requests.
    let traffic = load(port, 12);
    repo.write(
        "apps/web.yaml",
        &canary_app("v2", port, r#", "--error-rate", "0.5""#),
    );
    let bad = repo.commit("web v2, broken");
    c.sync();
    let history = c.wait_until("the guard to roll v2 back", || {
        let history = c.history("web");
        record(&history, "rollout-aborted")
            .is_some()
            .then_some(history)
    });
    let aborted = record(&history, "rollout-aborted").unwrap();
    let reason = aborted["reason"].as_str().unwrap();
    assert!(reason.contains("guard"), "{aborted}");
    assert!(
        reason.contains("llr"),
        "the evidence is recorded: {aborted}"
    );
    let app = c.wait_until("web degraded, v2 stopped", || {
        let app = c.app("web")?;
        let degraded = app["health"]["status"] == "Degraded"
            && app["health"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("rolled back"));
        let only_v1 = app["instances"].as_array()?.len() == 1;
        (degraded && only_v1).then_some(app)
    });
    assert_eq!(app["commit"], bad.as_str(), "Git still asks for v2: {app}");
    wait_until("only v1 answers", || {
        answer(u64::from(port)).filter(|b| b == "v1")
    });
    let s = summary(traffic);
    let failed = s["failed"].as_u64().unwrap();
    eprintln!(
        "bad canary: {failed} of {} requests failed before the rollback",
        s["sent"]
    );
    assert!(failed > 0, "v2 was never given traffic: {s}");
    // A handful, not the half of all traffic a fixed-interval check would let fail.
    assert!(failed < s["sent"].as_u64().unwrap() / 10, "{s}");

    // v3 is good: its canary walks the steps and it becomes stable.
    repo.write("apps/web.yaml", &canary_app("v3", port, ""));
    repo.commit("web v3");
    c.sync();
    let history = c.wait_until("v3 promoted", || {
        let history = c.history("web");
        record(&history, "rollout-completed")
            .is_some()
            .then_some(history)
    });
    assert!(
        record(&history, "rollout-candidate-ready").is_some(),
        "{history:#?}"
    );
    let app = c.wait_healthy("web", 1);
    assert_eq!(app["sync"], "Synced", "{app}");
    wait_until("only v3 answers", || {
        answer(u64::from(port)).filter(|b| b == "v3")
    });
}

#[test]
fn an_operator_promotes_a_paused_canary_and_aborts_the_next_one() {
    let steps = "      - setWeight: 20\n      - pause: {}\n";
    let repo = Repo::new();
    let port = free_port();
    repo.write("apps/web.yaml", &canary_with_steps("v1", port, "", steps));
    repo.commit("web v1");
    let c = Controller::start(repo.path().to_str().unwrap(), &[]);
    c.wait_healthy("web", 1);

    repo.write("apps/web.yaml", &canary_with_steps("v2", port, "", steps));
    repo.commit("web v2");
    c.sync();
    let view = c.wait_until("v2 paused at 20 %", || {
        let v = c.get("/api/v1/apps/web/rollout");
        (v["state"]["phase"] == "paused" && v["state"]["traffic"]["candidateWeight"] == 2000)
            .then_some(v)
    });
    let out = c.run_cli(&["rollout", "get", "web"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("candidate 20.00%"), "{text}");
    assert!(text.contains("step       2 of 2"), "{text}\n{view}");

    let out = c.run_cli(&["rollout", "promote", "web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_until("v2 promoted by the operator", || {
        let history = c.history("web");
        record(&history, "rollout-completed")
            .is_some()
            .then_some(())
    });
    let history = c.history("web");
    let command = record(&history, "rollout-command").expect("the command is audited");
    assert_eq!(command["actor"]["kind"], "user", "{command}");
    c.wait_healthy("web", 1);
    wait_until("v2 answers", || {
        answer(u64::from(port)).filter(|b| b == "v2")
    });

    repo.write("apps/web.yaml", &canary_with_steps("v3", port, "", steps));
    repo.commit("web v3");
    c.sync();
    c.wait_until("v3 paused", || {
        (c.get("/api/v1/apps/web/rollout")["state"]["phase"] == "paused").then_some(())
    });
    let out = c.run_cli(&["rollout", "abort", "web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_until("v3 rolled back by the operator", || {
        let app = c.app("web")?;
        (app["health"]["status"] == "Degraded").then_some(())
    });
    wait_until("v2 answers again", || {
        answer(u64::from(port)).filter(|b| b == "v2")
    });
    // An unknown command and an application without a rollout are refused.
    let out = c.run_cli(&["rollout", "retry", "nope"]);
    assert!(!out.status.success());
}

/// The revisions of the application's instances.
fn instance_revisions(c: &Controller) -> Vec<String> {
    c.app("web")
        .and_then(|a| a["instances"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i["revision"].as_str().map(str::to_string))
        .collect()
}

/// Waits until the guard has counted `n` requests answered by the candidate. The probe that
/// saw the candidate answer accounts for one, so the load has reached it too: a candidate
/// replaced within a few hundred milliseconds at 20 % of 100 requests a second could
/// otherwise see none of them.
fn wait_candidate_served(c: &Controller, n: u64) {
    c.wait_until(&format!("the candidate counted {n} requests"), || {
        let counted =
            c.get("/api/v1/apps/web/rollout")["state"]["guard"]["errors"]["n"].as_u64()?;
        (counted >= n).then_some(())
    });
}

#[test]
fn a_new_commit_replaces_the_candidate_and_a_return_to_stable_ends_the_rollout() {
    let steps = "      - setWeight: 20\n      - pause: {}\n";
    let repo = Repo::new();
    let port = free_port();
    repo.write("apps/web.yaml", &canary_with_steps("v1", port, "", steps));
    repo.commit("web v1");
    let c = Controller::start(repo.path().to_str().unwrap(), &[]);
    c.wait_healthy("web", 1);
    wait_until("v1 served", || {
        answer(u64::from(port)).filter(|b| b == "v1")
    });
    let stable = c.get("/api/v1/apps/web/rollout")["state"]["stable"].clone();
    assert!(stable.is_string(), "{stable}");
    let traffic = load(port, 40);
    let paused_candidate = |c: &Controller| {
        let v = c.get("/api/v1/apps/web/rollout");
        (v["state"]["phase"] == "paused" && v["state"]["traffic"]["candidateWeight"] == 2000)
            .then(|| v["state"]["candidate"].as_str().map(str::to_string))
            .flatten()
    };

    repo.write("apps/web.yaml", &canary_with_steps("v2", port, "", steps));
    repo.commit("web v2");
    c.sync();
    let v2 = c.wait_until("v2 paused at 20 %", || paused_candidate(&c));
    wait_until("v2 answers", || {
        answer(u64::from(port)).filter(|b| b == "v2")
    });
    wait_candidate_served(&c, 5);

    // A new commit mid-rollout: v3 replaces v2 as the candidate and starts from the first step.
    repo.write("apps/web.yaml", &canary_with_steps("v3", port, "", steps));
    repo.commit("web v3");
    c.sync();
    let v3 = c.wait_until("v3 replaced v2 as the candidate", || {
        paused_candidate(&c).filter(|r| *r != v2)
    });
    c.wait_until("v2's instance stopped", || {
        (!instance_revisions(&c).contains(&v2)).then_some(())
    });
    wait_until("v3 answers", || {
        answer(u64::from(port)).filter(|b| b == "v3")
    });
    wait_candidate_served(&c, 5);
    assert_eq!(
        c.get("/api/v1/apps/web/rollout")["state"]["stable"],
        stable,
        "stable is still v1"
    );

    // Git returns to the stable revision: the rollout ends at once, no step is waited for.
    repo.write("apps/web.yaml", &canary_with_steps("v1", port, "", steps));
    repo.commit("back to web v1");
    c.sync();
    c.wait_until("the rollout ended on v1", || {
        let v = c.get("/api/v1/apps/web/rollout");
        (v["state"]["candidate"].is_null()
            && v["state"]["stable"] == stable
            && v["state"]["traffic"]["candidateWeight"] == 0)
            .then_some(())
    });
    c.wait_until("v3's instance stopped", || {
        let revisions = instance_revisions(&c);
        (!revisions.is_empty()
            && revisions
                .iter()
                .all(|r| Some(r.as_str()) == stable.as_str()))
        .then_some(())
    });
    wait_until("only v1 answers", || {
        (0..20)
            .all(|_| answer(u64::from(port)).is_some_and(|b| b == "v1"))
            .then_some(())
    });
    assert!(v3 != v2);

    let s = summary(traffic);
    assert_eq!(
        s["failed"], 0,
        "no request failed through both changes: {s}"
    );
    for version in ["v1", "v2", "v3"] {
        assert!(s["bodies"][version].as_u64() > Some(0), "{version}: {s}");
    }
}

fn blue_green_app(version: &str, port: u16, preview: u16) -> String {
    canary_with_steps(version, port, "", "").replace(
        "    canary:\n      abortScaleDownDelaySeconds: 0\n      steps:\n",
        &format!(
            "    blueGreen:\n      previewListen: \"127.0.0.1:{preview}\"\n      autoPromotionEnabled: false\n"
        ),
    )
}

#[test]
fn blue_green_serves_the_candidate_on_the_preview_listener_until_promoted() {
    let repo = Repo::new();
    let (port, preview) = (free_port(), free_port());
    repo.write("apps/web.yaml", &blue_green_app("v1", port, preview));
    repo.commit("web v1");
    let c = Controller::start(repo.path().to_str().unwrap(), &[]);
    c.wait_healthy("web", 1);
    wait_until("v1 served", || {
        answer(u64::from(port)).filter(|b| b == "v1")
    });

    repo.write("apps/web.yaml", &blue_green_app("v2", port, preview));
    repo.commit("web v2");
    c.sync();
    wait_until("v2 on the preview listener", || {
        answer(u64::from(preview)).filter(|b| b == "v2")
    });
    for _ in 0..20 {
        assert_eq!(answer(u64::from(port)).as_deref(), Some("v1"));
    }
    let out = c.run_cli(&["rollout", "promote", "web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("v2 promoted", || {
        answer(u64::from(port)).filter(|b| b == "v2")
    });
    c.wait_until("the rollout completed", || {
        let history = c.history("web");
        record(&history, "rollout-completed")
            .is_some()
            .then_some(())
    });
}

#[test]
fn a_controller_killed_mid_rollout_resumes_at_the_same_step() {
    let steps =
        "      - setWeight: 30\n      - pause: {}\n      - setWeight: 60\n      - pause: {}\n";
    let repo = Repo::new();
    let port = free_port();
    repo.write("apps/web.yaml", &canary_with_steps("v1", port, "", steps));
    repo.commit("web v1");
    let mut c = Controller::start(repo.path().to_str().unwrap(), &[]);
    c.wait_healthy("web", 1);
    repo.write("apps/web.yaml", &canary_with_steps("v2", port, "", steps));
    repo.commit("web v2");
    c.sync();
    let paused = |c: &Controller, weight: u64| {
        c.wait_until(&format!("paused at {weight}"), || {
            let v = c.get("/api/v1/apps/web/rollout");
            (v["state"]["phase"] == "paused"
                && v["state"]["traffic"]["candidateWeight"].as_u64() == Some(weight))
            .then_some(v)
        })
    };
    let before = paused(&c, 3000);
    c.kill9();
    c.spawn();
    // The same step, the same weight, the same candidate: nothing restarted.
    let after = paused(&c, 3000);
    assert_eq!(after["state"]["stepIndex"], before["state"]["stepIndex"]);
    assert_eq!(after["state"]["candidate"], before["state"]["candidate"]);
    let out = c.run_cli(&["rollout", "promote", "web"]);
    assert!(out.status.success());
    paused(&c, 6000);
    let history = c.history("web");
    let created = history.iter().filter(|r| r["action"] == "update").count();
    assert_eq!(created, 1, "the candidate was started once: {history:#?}");
}

#[test]
fn a_good_canary_under_load_is_promoted_with_no_failed_request() {
    let repo = Repo::new();
    let port = free_port();
    repo.write("apps/web.yaml", &canary_app("v1", port, ""));
    repo.commit("web v1");
    let c = Controller::start(repo.path().to_str().unwrap(), &[]);
    c.wait_healthy("web", 1);
    wait_until("v1 served", || {
        answer(u64::from(port)).filter(|b| b == "v1")
    });
    let traffic = load(port, 10);
    repo.write("apps/web.yaml", &canary_app("v2", port, ""));
    repo.commit("web v2");
    c.sync();
    c.wait_until("v2 promoted", || {
        record(&c.history("web"), "rollout-completed").map(|_| ())
    });
    wait_until("only v2 answers", || {
        answer(u64::from(port)).filter(|b| b == "v2")
    });
    let s = summary(traffic);
    assert_eq!(s["failed"], 0, "{s}");
    assert!(
        s["bodies"]["v1"].as_u64() > Some(0) && s["bodies"]["v2"].as_u64() > Some(0),
        "{s}"
    );
}

#[test]
fn a_header_route_sends_only_matching_requests_to_the_candidate() {
    let steps = "      - setHeaderRoute:\n          match:\n          - header: x-canary\n            value: {exact: \"yes\"}\n          - cookie: beta\n            value: {prefix: \"on\"}\n      - pause: {}\n";
    let repo = Repo::new();
    let port = free_port();
    repo.write("apps/web.yaml", &canary_with_steps("v1", port, "", steps));
    repo.commit("web v1");
    let c = Controller::start(repo.path().to_str().unwrap(), &[]);
    c.wait_healthy("web", 1);
    repo.write("apps/web.yaml", &canary_with_steps("v2", port, "", steps));
    repo.commit("web v2");
    c.sync();
    c.wait_until("the canary paused behind its header route", || {
        (c.get("/api/v1/apps/web/rollout")["state"]["phase"] == "paused").then_some(())
    });
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let get = |headers: &[(&str, &str)]| {
        let mut r = http.get(format!("http://127.0.0.1:{port}/"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().unwrap().text().unwrap().trim().to_string()
    };
    wait_until("the header route served", || {
        (get(&[("x-canary", "yes")]) == "v2").then_some(())
    });
    for _ in 0..20 {
        assert_eq!(get(&[("x-canary", "yes")]), "v2");
        assert_eq!(get(&[("cookie", "beta=on-please")]), "v2");
        assert_eq!(get(&[("x-canary", "no")]), "v1");
        assert_eq!(get(&[]), "v1", "no weight goes to the candidate");
    }
}

/// A Prometheus scraping `target` every second; killed on drop. Panics if the `prometheus`
/// binary is missing (`.ci/run` installs Debian's package).
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("prometheus").is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "`prometheus` is not installed: .ci/run installs it (apt-get install -y prometheus)"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: proxy\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }
}

fn analysed_app(version: &str, port: u16, prometheus: u16, condition: &str) -> String {
    let steps = "      - setWeight: 50\n      - analysis:\n          templates: [{templateName: proxy-traffic}]\n";
    format!(
        "{}---\napiVersion: gauntlet.dev/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: proxy-traffic}}\nspec:\n  metrics:\n  - name: requests\n    count: 1\n    initialDelay: 2s\n    successCondition: \"{condition}\"\n    provider:\n      prometheus:\n        address: http://127.0.0.1:{prometheus}\n        query: sum(gauntlet_proxy_requests_total{{app='web'}})\n",
        canary_with_steps(version, port, "", steps)
    )
}

#[test]
fn a_prometheus_analysis_over_the_proxys_metrics_promotes_or_rolls_back() {
    let repo = Repo::new();
    let port = free_port();
    let c = {
        repo.write("apps/web.yaml", &canary_app("v1", port, ""));
        repo.commit("web v1");
        Controller::start(repo.path().to_str().unwrap(), &[])
    };
    c.wait_healthy("web", 1);
    let admin = c.wait_until("the proxy's admin address", || c.proxy_admin());
    let prometheus = Prometheus::start(&admin);
    let traffic = load(port, 30);

    // Passes: the proxy has counted requests for web.
    repo.write(
        "apps/web.yaml",
        &analysed_app("v2", port, prometheus.port, "result > 0"),
    );
    repo.commit("web v2 with an analysis that passes");
    c.sync();
    c.wait_until("v2 promoted by its analysis", || {
        record(&c.history("web"), "rollout-completed").map(|_| ())
    });

    // Fails: no count is negative.
    repo.write(
        "apps/web.yaml",
        &analysed_app("v3", port, prometheus.port, "result < 0"),
    );
    repo.commit("web v3 with an analysis that fails");
    c.sync();
    let aborted = c.wait_until("v3 rolled back by its analysis", || {
        record(&c.history("web"), "rollout-aborted").cloned()
    });
    assert!(
        aborted["reason"]
            .as_str()
            .unwrap_or("")
            .contains("analysis"),
        "{aborted}"
    );
    // Every measurement is in the audit log, the passing one and the failing one.
    let measured: Vec<String> = c
        .history("web")
        .iter()
        .filter(|r| r["action"] == "rollout-measured")
        .map(|r| r["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        measured
            .iter()
            .any(|m| m.starts_with("step 2 analysis requests: ") && m.ends_with("is Successful"))
            && measured.iter().any(|m| m.ends_with("is Failed")),
        "{measured:?}"
    );
    // And the rollout's view shows the run, the metric's tally and the measurement.
    let out = c.run_cli(&["rollout", "get", "web"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("analysis   step 2 analysis of ")
            && shown.contains(", ended: Failed")
            && shown.contains("requests: Failed, 0 successful, 1 failed")
            && shown
                .lines()
                .any(|l| l.trim_end().ends_with("Failed") && l.starts_with("    ")),
        "{shown}"
    );
    wait_until("v2 answers", || {
        answer(u64::from(port)).filter(|b| b == "v2")
    });
    drop(summary(traffic));
}

#[test]
fn a_failed_post_promotion_analysis_switches_blue_green_traffic_back() {
    let repo = Repo::new();
    let (port, preview) = (free_port(), free_port());
    let app = |version: &str| {
        blue_green_app(version, port, preview).replace(
            "      autoPromotionEnabled: false\n",
            "      autoPromotionEnabled: true\n      postPromotionAnalysis:\n        templates: [{templateName: smoke}]\n",
        ) + "---\napiVersion: gauntlet.dev/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: smoke}\nspec:\n  metrics:\n  - name: smoke\n    count: 1\n    initialDelay: 1s\n    successCondition: result == true\n    provider:\n      command: {command: [\"sh\", \"-c\", \"exit 1\"]}\n"
    };
    repo.write("apps/web.yaml", &app("v1"));
    repo.commit("web v1");
    let c = Controller::start(repo.path().to_str().unwrap(), &[]);
    c.wait_healthy("web", 1);
    wait_until("v1 served", || {
        answer(u64::from(port)).filter(|b| b == "v1")
    });

    repo.write("apps/web.yaml", &app("v2"));
    repo.commit("web v2");
    c.sync();
    let aborted = c.wait_until("the failed post-promotion analysis to roll v2 back", || {
        record(&c.history("web"), "rollout-aborted").cloned()
    });
    let history = c.history("web");
    assert!(
        history.iter().any(|r| r["action"] == "rollout-promoted"
            || r["reason"].as_str().is_some_and(|x| x.contains("promot"))),
        "v2 was promoted before its analysis failed: {history:#?}"
    );
    wait_until("v1 serves again", || {
        answer(u64::from(port)).filter(|b| b == "v1")
    });
    c.wait_until("web degraded", || {
        let app = c.app("web")?;
        (app["health"]["status"] == "Degraded").then_some(())
    });
    assert!(
        aborted["reason"]
            .as_str()
            .is_some_and(|r| r.contains("post-promotion")),
        "{aborted}"
    );
}
