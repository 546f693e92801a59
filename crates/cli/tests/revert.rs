//! `onFailure: revert` end to end: a bad canary is caught by the guard, and Gauntlet pushes a
//! revert of its manifest to the repository it follows, so that Git asks for what runs again.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::Value;

fn canary_app(version: &str, port: u16, extra_args: &str) -> String {
    format!(
        r#"# Web tier; this comment must survive the revert.
apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata:
  name: web
spec:
  replicas: 1
  onFailure: revert
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
      - setWeight: 50
      - pause: {{duration: 2s}}
"#
    )
}

fn bare_git(bare: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(bare)
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

fn load(port: u16, seconds: u32) -> Child {
    Command::new(BIN)
        .args(["load", "--url", &format!("http://127.0.0.1:{port}/")])
        .args(["--rate", "100", "--duration", &format!("{seconds}s")])
        .stdout(Stdio::null())
        .spawn()
        .expect("gauntlet load starts")
}

fn record<'a>(history: &'a [Value], action: &str) -> Option<&'a Value> {
    history.iter().find(|r| r["action"] == action)
}

#[test]
fn a_bad_canary_with_on_failure_revert_is_reverted_in_git_and_v1_is_synced_again() {
    let remote = tempfile::tempdir().unwrap();
    let bare = remote.path().join("deploy.git");
    let status = Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(&bare)
        .status()
        .unwrap();
    assert!(status.success());
    let bare_path = bare.to_str().unwrap();

    let repo = Repo::new();
    let port = free_port();
    let v1 = canary_app("v1", port, "");
    repo.write("apps/web.yaml", &v1);
    // Another application in the same path, changed by the bad commit too: the revert must
    // leave its change alone.
    repo.write("apps/other.yaml", "# nothing here yet\n");
    let good = repo.commit("web v1");
    repo.git(&["push", "-q", bare_path, "main"]);

    let c = Controller::start(
        bare_path,
        &["--revert-author", "Gauntlet Bot <bot@example.com>"],
    );
    c.wait_healthy("web", 1);
    wait_until("the proxy serves v1", || {
        answer(u64::from(port)).filter(|b| b == "v1")
    });

    let mut traffic = load(port, 20);
    repo.write(
        "apps/web.yaml",
        &canary_app("v2", port, r#", "--error-rate", "0.5""#),
    );
    repo.write("apps/other.yaml", "# still nothing, but changed\n");
    let bad = repo.commit("web v2, broken");
    repo.git(&["push", "-q", bare_path, "main"]);
    c.sync();

    let history = c.wait_until("the guard to abort v2 and Gauntlet to revert it", || {
        let history = c.history("web");
        (record(&history, "rollout-aborted").is_some()
            && (record(&history, "rollout-reverted").is_some()
                || record(&history, "revert-error").is_some()))
        .then_some(history)
    });
    assert!(
        record(&history, "revert-error").is_none(),
        "{:#?}",
        record(&history, "revert-error")
    );
    let reverted = record(&history, "rollout-reverted").unwrap();
    let head = bare_git(&bare, &["rev-parse", "main"]);
    assert_ne!(head, bad);
    assert!(
        reverted["reason"].as_str().unwrap().contains(&head),
        "{reverted}"
    );
    assert_eq!(
        bare_git(&bare, &["rev-parse", "main~1"]),
        bad,
        "one new commit on top"
    );
    assert_eq!(
        bare_git(&bare, &["log", "-1", "--format=%an <%ae>|%cn"]),
        "Gauntlet Bot <bot@example.com>|Gauntlet Bot"
    );
    assert_eq!(
        bare_git(&bare, &["show", "main:apps/web.yaml"]),
        v1.trim_end(),
        "web's manifest is v1's, byte for byte"
    );
    assert_eq!(
        bare_git(&bare, &["show", "main:apps/other.yaml"]),
        "# still nothing, but changed",
        "the other change of the bad commit stays"
    );
    let message = bare_git(&bare, &["log", "-1", "--format=%B"]);
    assert!(
        message.contains(&bad) && message.contains(&good),
        "{message}"
    );

    let app = c.wait_until("the revert applied, web healthy and synced on v1", || {
        let app = c.app("web")?;
        (app["commit"] == head.as_str()
            && app["health"]["status"] == "Healthy"
            && app["sync"] == "Synced"
            && app["instances"].as_array()?.len() == 1)
            .then_some(app)
    });
    assert_eq!(app["commit"], head.as_str(), "{app}");
    wait_until("only v1 answers", || {
        answer(u64::from(port)).filter(|b| b == "v1")
    });
    let _ = traffic.kill();
    let _ = traffic.wait();
}
