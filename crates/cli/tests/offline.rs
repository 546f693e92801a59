//! The commands that need no controller: `validate`, `schema`, `--help`, and the demo app.

mod common;

use std::process::{Command, Stdio};

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
        "demo-app",
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
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stage in ["1/5", "2/5", "3/5", "4/5", "5/5", "demo passed"] {
        assert!(text.contains(stage), "{stage} missing:\n{text}");
    }
}
