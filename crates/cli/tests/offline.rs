//! The commands that need no controller: `validate`, `schema`, `--help`, and the demo app.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn validate_accepts_a_good_tree_and_names_file_line_and_field_for_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("apps/nested")).unwrap();
    std::fs::write(
        dir.path().join("apps/nested/web.yaml"),
        app_yaml("web", "v1", 1),
    )
    .unwrap();
    let ok = Command::new(BIN)
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("1 applications"));

    std::fs::write(
        dir.path().join("apps/bad.yaml"),
        "apiVersion: gauntlet.dev/v1alpha1\nkind: Application\nmetadata: {name: bad}\nspec:\n  replicas: two\n  process: {command: [x]}\n",
    )
    .unwrap();
    let bad = Command::new(BIN)
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("apps/bad.yaml:5:") && err.contains("spec.replicas"),
        "{err}"
    );
}

#[test]
fn schema_is_json_describing_the_application_kind() {
    let out = Command::new(BIN).arg("schema").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let _: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(text.contains("replicas") && text.contains("httpGet"));
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    let definitions = &schema["$defs"];
    assert!(definitions["ApplicationSpec"]["properties"]["strategy"].is_object());
    assert!(definitions["AnalysisTemplate"].is_object(), "{text}");
    assert!(definitions["CanarySpec"].is_object() && definitions["BlueGreenSpec"].is_object());
}

/// An application rolled out by canary, and the template its analysis step names.
const CANARY: &str = "\
apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata: {name: checkout}
spec:
  process: {command: [checkout]}
  service: {listen: '127.0.0.1:18080'}
  onFailure: rollback
  strategy:
    canary:
      steps:
      - setWeight: 5
      - pause: {duration: 30s}
      - analysis: {templates: [{templateName: success-rate}]}
      - setWeight: 50
      - pause: {}
      guard: {maxErrorRate: 0.05}
---
apiVersion: gauntlet.dev/v1alpha1
kind: AnalysisTemplate
metadata: {name: success-rate}
spec:
  metrics:
  - name: error-rate
    interval: 10s
    count: 3
    successCondition: result < 0.01
    provider: {builtin: {metric: errorRate}}
";

#[test]
fn validate_checks_strategies_and_the_templates_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkout.yaml");
    std::fs::write(&path, CANARY).unwrap();
    let ok = Command::new(BIN)
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let bad = CANARY
        .replace("templateName: success-rate", "templateName: sucess-rate")
        .replace("- setWeight: 50", "- chaos: {experiment: kill-one}");
    std::fs::write(&path, bad).unwrap();
    let out = Command::new(BIN)
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "checkout.yaml:13:33: spec.strategy.canary.steps[2].analysis.templates[0].templateName: \
             unknown AnalysisTemplate `sucess-rate`"
        ) && err.contains(
            "checkout.yaml:14:17: spec.strategy.canary.steps[3].chaos.experiment: unknown \
             ChaosExperiment `kill-one`"
        ),
        "{err}"
    );
}

#[test]
fn every_subcommand_has_help() {
    for cmd in [
        "up", "down", "status", "sync", "diff", "history", "logs", "validate", "schema", "demo",
        "demo-app", "proxy", "load", "flags", "rollout", "release", "chaos",
    ] {
        let out = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{cmd}"
        );
    }
}

#[test]
fn demo_app_serves_its_version_and_fails_at_its_error_rate() {
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "demo-app",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--version",
            "v9",
            "--error-rate",
            "1",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::blocking::Client::new();
    let health = wait_until("demo-app healthy", || {
        http.get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .ok()
    });
    assert_eq!(health.status().as_u16(), 200);
    let r = http
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 500);
    let v = http
        .get(format!("http://127.0.0.1:{port}/version"))
        .send()
        .unwrap();
    assert_eq!(v.text().unwrap().trim(), "v9");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful exit on SIGTERM");
}

#[test]
fn demo_runs_every_stage_and_exits_zero() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("a temporary directory");
    // Output goes to files, not pipes: nobody reads a pipe while we wait, and a full one
    // would block the demo.
    let out_path = dir.path().join("demo.stdout");
    let err_path = dir.path().join("demo.stderr");
    let file = |p: &std::path::Path| std::fs::File::create(p).expect("an output file");
    let mut child = Command::new(BIN)
        .args(["demo", "--dir"])
        .arg(dir.path().join("demo"))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(file(&out_path))
        .stderr(file(&err_path))
        .spawn()
        .expect("gauntlet demo starts");
    let output = || {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            std::fs::read_to_string(&out_path).unwrap_or_default(),
            std::fs::read_to_string(&err_path).unwrap_or_default()
        )
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                // Not yet reaped, so the group id is still the demo's own.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                // The instances run in sessions of their own: stop them too.
                for pid in instance_processes(&dir.path().join("demo/state")) {
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                }
                panic!("the demo did not finish within 180 s\n{}", output());
            }
            Err(e) => panic!("waiting for the demo: {e}\n{}", output()),
        }
    };
    assert!(
        status.success(),
        "the demo exited with {status}\n{}",
        output()
    );
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    for stage in [
        "1/8",
        "2/8",
        "3/8",
        "4/8",
        "5/8",
        "6/8",
        "7/8",
        "8/8",
        "failed its error guard",
        "did not survive chaos experiment payments-outage",
        "demo passed",
    ] {
        assert!(text.contains(stage), "{stage} missing:\n{}", output());
    }
}

/// Children of `pid`, from `/proc/*/stat` (field 4 is the parent).
fn children_of(pid: u32) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

#[test]
fn a_demo_killed_with_sigkill_leaves_no_controller_proxy_or_instance_behind() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let state = dir.path().join("demo/state");
    let mut demo = Command::new(BIN)
        .args(["demo", "--dir"])
        .arg(dir.path().join("demo"))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gauntlet demo starts");
    let proxy_pid = || -> Option<u64> {
        let text = std::fs::read_to_string(state.join("proxy/proxy.json")).ok()?;
        let info: serde_json::Value = serde_json::from_str(&text).ok()?;
        info["pid"].as_u64().filter(|p| alive(*p))
    };
    let (controller, proxy, instances) = wait_until("the demo's controller, proxy and v1", || {
        let controller = children_of(demo.id()).into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.contains("up"))
        })?;
        let instances = instance_processes(&state);
        let proxy = proxy_pid()?;
        (instances.len() >= 2).then_some((controller, proxy, instances))
    });

    // SIGKILL: the demo runs no cleanup of its own.
    unsafe { libc::kill(demo.id() as i32, libc::SIGKILL) };
    demo.wait().expect("the demo is reaped");

    wait_until(
        "the controller, the proxy and every instance stopped",
        || {
            let left: Vec<u64> = [controller, proxy]
                .into_iter()
                .chain(instances.iter().copied())
                .chain(instance_processes(&state))
                .filter(|p| alive(*p))
                .collect();
            left.is_empty().then_some(())
        },
    );
}
