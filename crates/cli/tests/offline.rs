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
}

#[test]
fn every_subcommand_has_help() {
    for cmd in [
        "up", "down", "status", "sync", "diff", "history", "logs", "validate", "schema", "demo",
        "demo-app", "proxy", "load", "flags",
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
    for stage in ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6", "demo passed"] {
        assert!(text.contains(stage), "{stage} missing:\n{}", output());
    }
}
