//! End-to-end: the real `gauntlet` binary following real Git repositories and running real
//! processes. Each test names the behaviour it proves.

mod common;

use common::*;

#[test]
fn commit_is_deployed_and_a_new_revision_replaces_the_old() {
    let repo = Repo::new();
    repo.write("apps/web.yaml", &app_yaml("web", "v1", 2));
    let c1 = repo.commit("v1");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);

    let v1 = ctl.wait_healthy("web", 2);
    assert_eq!(ctl.applied(), c1);
    assert_eq!(v1["sync"], "Synced");
    for port in instance_ports(&v1) {
        assert_eq!(answer(port).as_deref(), Some("v1"));
    }

    repo.write("apps/web.yaml", &app_yaml("web", "v2", 2));
    let c2 = repo.commit("v2");
    ctl.sync();
    let v2 = wait_until("v2 replaced v1", || {
        ctl.app("web").filter(|a| {
            a["revision"] != v1["revision"]
                && a["health"]["status"] == "Healthy"
                && a["instances"].as_array().unwrap().len() == 2
                && a["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|i| i["revision"] == a["revision"])
        })
    });
    assert_eq!(ctl.applied(), c2);
    for port in instance_ports(&v2) {
        assert_eq!(answer(port).as_deref(), Some("v2"));
    }
    wait_until("v1 processes stopped", || {
        instance_pids(&v1).iter().all(|p| !alive(*p)).then_some(())
    });

    let actions: Vec<String> = ctl
        .history("web")
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["action"].as_str().unwrap(),
                r["actor"]["id"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(actions.contains(&format!("create {c1}")), "{actions:?}");
    assert!(actions.contains(&format!("update {c2}")), "{actions:?}");
    assert!(actions.contains(&format!("retire {c2}")), "{actions:?}");
}

#[test]
fn scaling_changes_the_instance_count_without_a_new_revision() {
    let repo = Repo::new();
    repo.write("web.yaml", &app_yaml("web", "v1", 1));
    repo.commit("one");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    let one = ctl.wait_healthy("web", 1);
    repo.write("web.yaml", &app_yaml("web", "v1", 3));
    repo.commit("three");
    ctl.sync();
    let three = ctl.wait_healthy("web", 3);
    assert_eq!(one["revision"], three["revision"]);
    assert!(instance_pids(&three).contains(&instance_pids(&one)[0]));
}

#[test]
fn bad_commit_is_rejected_naming_file_and_line_and_the_old_commit_keeps_running() {
    let repo = Repo::new();
    repo.write("apps/web.yaml", &app_yaml("web", "v1", 1));
    let good = repo.commit("good");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    let before = ctl.wait_healthy("web", 1);

    // A second, valid app in the same commit must not be applied either: all or nothing.
    repo.write("apps/other.yaml", &app_yaml("other", "v1", 1));
    repo.write(
        "apps/web.yaml",
        &app_yaml("web", "v2", 1).replace("replicas: 1", "replicas: 1\n  replicaz: 2"),
    );
    let bad = repo.commit("bad");
    ctl.sync();
    let status = wait_until("rejection reported", || {
        let s = ctl.status();
        (s["source"]["rejected"]["commit"]["sha"] == bad.as_str()).then_some(s)
    });
    let errors = status["source"]["rejected"]["errors"].as_array().unwrap();
    let first = errors[0].as_str().unwrap();
    assert!(first.starts_with("apps/web.yaml:7:"), "{first}");
    assert!(first.contains("replicaz"), "{first}");
    assert_eq!(status["source"]["applied"]["sha"], good.as_str());
    assert!(
        ctl.app("other").is_none(),
        "nothing of a bad commit is applied"
    );
    let after = ctl.app("web").unwrap();
    assert_eq!(instance_pids(&after), instance_pids(&before));
    assert_eq!(answer(instance_ports(&after)[0]).as_deref(), Some("v1"));
    assert!(ctl
        .history("")
        .iter()
        .any(|r| r["action"] == "reject" && r["actor"]["id"] == bad.as_str()));
}

#[test]
fn unreachable_git_server_leaves_apps_running_and_recovery_applies_new_commits() {
    let base = tempfile::tempdir().unwrap();
    let repo = Repo::new();
    repo.write("web.yaml", &app_yaml("web", "v1", 1));
    repo.commit("v1");
    let bare = base.path().join("apps.git");
    Repo::new().git(&[
        "clone",
        "-q",
        "--bare",
        &repo.path().display().to_string(),
        &bare.display().to_string(),
    ]);
    repo.git(&["remote", "add", "origin", &bare.display().to_string()]);

    let port = free_port();
    let mut daemon = GitDaemon::start(base.path(), port);
    let ctl = Controller::start(&daemon.url("apps.git"), &[]);
    let running = ctl.wait_healthy("web", 1);

    daemon.stop();
    let status = wait_until("the fetch error in status", || {
        let s = ctl.status();
        s["source"]["error"].is_string().then_some(s)
    });
    assert!(status["source"]["failures"].as_u64().unwrap() >= 1);
    let still = ctl.app("web").unwrap();
    assert_eq!(instance_pids(&still), instance_pids(&running));
    assert_eq!(answer(instance_ports(&still)[0]).as_deref(), Some("v1"));

    repo.write("web.yaml", &app_yaml("web", "v2", 1));
    let c2 = repo.commit("v2");
    repo.git(&["push", "-q", "origin", "main"]);
    let _daemon = GitDaemon::start(base.path(), port);
    ctl.sync();
    wait_until("recovered and v2 applied", || {
        let s = ctl.status();
        (s["source"]["error"].is_null() && s["source"]["applied"]["sha"] == c2.as_str())
            .then_some(())
    });
    let v2 = ctl.wait_healthy("web", 1);
    assert_eq!(answer(instance_ports(&v2)[0]).as_deref(), Some("v2"));
}

#[test]
fn force_push_to_an_older_commit_is_followed() {
    let repo = Repo::new();
    repo.write("web.yaml", &app_yaml("web", "v1", 1));
    let c1 = repo.commit("v1");
    repo.write("web.yaml", &app_yaml("web", "v2", 1));
    repo.commit("v2");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    let v2 = ctl.wait_healthy("web", 1);
    assert_eq!(answer(instance_ports(&v2)[0]).as_deref(), Some("v2"));
    repo.git(&["reset", "-q", "--hard", &c1]);
    ctl.sync();
    wait_until("back on v1", || {
        let a = ctl.app("web")?;
        (ctl.applied() == c1
            && a["health"]["status"] == "Healthy"
            && a["revision"] != v2["revision"]
            && answer(instance_ports(&a)[0]).as_deref() == Some("v1"))
        .then_some(())
    });
}

#[test]
fn killed_instance_is_restarted_on_the_same_port() {
    let repo = Repo::new();
    repo.write("web.yaml", &app_yaml("web", "v1", 1));
    repo.commit("v1");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    let app = ctl.wait_healthy("web", 1);
    let pid = instance_pids(&app)[0];
    let port = instance_ports(&app)[0];
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let healed = wait_until("a new process for the instance", || {
        ctl.app("web").filter(|a| {
            let i = &a["instances"][0];
            i["pid"].as_u64().is_some_and(|p| p != pid) && i["phase"]["phase"] == "ready"
        })
    });
    assert_eq!(instance_ports(&healed), vec![port]);
    assert!(healed["instances"][0]["restarts"].as_u64().unwrap() >= 1);
    assert_eq!(answer(port).as_deref(), Some("v1"));
    assert!(ctl
        .history("web")
        .iter()
        .any(|r| r["action"] == "restarted"));
}

#[test]
fn sigkilled_controller_leaves_instances_serving_and_readopts_them_without_duplicates() {
    let repo = Repo::new();
    repo.write("web.yaml", &app_yaml("web", "v1", 2));
    repo.commit("v1");
    let mut ctl = Controller::start(&repo.path().display().to_string(), &[]);
    let before = ctl.wait_healthy("web", 2);
    let history_before = ctl.history("").len();

    ctl.kill9();
    for port in instance_ports(&before) {
        assert_eq!(
            answer(port).as_deref(),
            Some("v1"),
            "serving without the controller"
        );
    }
    ctl.spawn();
    let after = ctl.wait_healthy("web", 2);
    assert_eq!(
        instance_pids(&after),
        instance_pids(&before),
        "same processes, adopted"
    );
    let all: Vec<u64> = after["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["port"].as_u64().unwrap())
        .collect();
    assert_eq!(all.len(), 2, "no duplicates");
    assert!(
        ctl.history("").len() >= history_before,
        "no audit record lost"
    );
}

#[test]
fn removed_application_is_pruned_and_its_processes_stopped() {
    let repo = Repo::new();
    repo.write("a.yaml", &app_yaml("keep", "v1", 1));
    repo.write("b.yaml", &app_yaml("gone", "v1", 2));
    repo.commit("two apps");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    ctl.wait_healthy("keep", 1);
    let gone = ctl.wait_healthy("gone", 2);
    repo.git(&["rm", "-q", "b.yaml"]);
    let c = repo.commit("remove gone");
    ctl.sync();
    wait_until("gone pruned", || {
        (ctl.app("gone").is_none() && instance_pids(&gone).iter().all(|p| !alive(*p))).then_some(())
    });
    assert!(ctl.app("keep").is_some());
    assert!(ctl
        .history("gone")
        .iter()
        .any(|r| r["action"] == "prune" && r["actor"]["id"] == c.as_str()));
}

#[test]
fn depends_on_starts_the_dependency_first() {
    let repo = Repo::new();
    let api = app_yaml("api", "v1", 1).replace("  replicas: 1", "  replicas: 1\n  dependsOn: [db]");
    repo.write(
        "apps.yaml",
        &format!("{api}---\n{}", app_yaml("db", "v1", 1)),
    );
    repo.commit("api and db");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    let api = ctl.wait_healthy("api", 1);
    let db = ctl.wait_healthy("db", 1);
    let created = |a: &serde_json::Value| a["instances"][0]["createdMs"].as_u64().unwrap();
    assert!(created(&db) <= created(&api));
}

#[test]
fn webhook_with_a_bad_signature_is_refused_and_a_good_one_fetches_at_once() {
    let repo = Repo::new();
    repo.write("web.yaml", &app_yaml("web", "v1", 1));
    repo.commit("v1");
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "s3cret\n").unwrap();
    // A one-hour interval: only the webhook can explain a fetch.
    let ctl = Controller::start(
        &repo.path().display().to_string(),
        &[
            "--interval",
            "1h",
            "--webhook-secret-file",
            &secret.path().display().to_string(),
        ],
    );
    ctl.wait_healthy("web", 1);
    repo.write("web.yaml", &app_yaml("web", "v2", 1));
    let c2 = repo.commit("v2");
    let http = reqwest::blocking::Client::new();
    let body = br#"{"ref":"refs/heads/main"}"#.to_vec();
    let bad = http
        .post(format!("http://{}/api/v1/webhooks/git", ctl.listen))
        .header("X-Hub-Signature-256", "sha256=0000")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    let checks = ctl.status()["source"]["lastCheckMs"].clone();
    assert_ne!(ctl.applied(), c2, "a refused webhook fetches nothing");

    let sig = {
        use hmac::{Mac, SimpleHmac};
        let mut mac = SimpleHmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(&body);
        hex::encode(mac.finalize().into_bytes())
    };
    let good = http
        .post(format!("http://{}/api/v1/webhooks/git", ctl.listen))
        .header("X-Hub-Signature-256", format!("sha256={sig}"))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(good.status().as_u16(), 202);
    wait_until("the webhook's fetch applied v2", || {
        (ctl.applied() == c2).then_some(())
    });
    assert_ne!(ctl.status()["source"]["lastCheckMs"], checks);
}

#[test]
fn api_refuses_calls_without_the_token() {
    let repo = Repo::new();
    repo.commit("empty");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    let r = reqwest::blocking::get(format!("http://{}/api/v1/status", ctl.listen)).unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let mode = std::fs::metadata(ctl.state.path().join("token")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
}

#[test]
fn cli_status_history_diff_and_logs_work_against_the_running_controller() {
    let repo = Repo::new();
    repo.write("web.yaml", &app_yaml("web", "v1", 1));
    repo.commit("v1");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    ctl.wait_healthy("web", 1);

    let out = ctl.run_cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("web") && text.contains("Synced") && text.contains("Healthy"),
        "{text}"
    );

    let out = ctl.run_cli(&["status", "web", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "web");

    let out = ctl.run_cli(&["status", "-o", "yaml"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("apps:"));

    repo.write("web.yaml", &app_yaml("web", "v1", 2));
    repo.commit("scale");
    let out = ctl.run_cli(&["diff"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("scale") && text.contains("replicas 1 -> 2"),
        "{text}"
    );

    let out = ctl.run_cli(&["history", "web"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("create"), "{text}");

    let out = ctl.run_cli(&["logs", "web"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("demo-app v1 listening"), "{text}");

    let out = ctl.run_cli(&["sync"]);
    assert!(out.status.success());
    ctl.wait_healthy("web", 2);
}

#[test]
fn a_process_started_by_hand_on_the_service_port_is_reported() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = squatter.local_addr().unwrap();
    let repo = Repo::new();
    repo.write(
        "web.yaml",
        &format!(
            "{}  service: {{listen: \"{addr}\"}}\n",
            app_yaml("web", "v1", 1)
        ),
    );
    repo.commit("v1");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    let app = wait_until("the conflict reported", || {
        ctl.app("web").filter(|a| {
            a["warnings"].as_array().is_some_and(|w| {
                w.iter().any(|w| {
                    w.as_str()
                        .unwrap_or("")
                        .contains(&format!("pid {}", std::process::id()))
                })
            })
        })
    });
    assert!(app["warnings"][0]
        .as_str()
        .unwrap()
        .contains("did not start"));
    drop(squatter);
}

#[test]
fn repeated_sigkill_of_the_controller_mid_update_corrupts_nothing() {
    let repo = Repo::new();
    repo.write("web.yaml", &app_yaml("web", "v0", 1));
    repo.commit("v0");
    let mut ctl = Controller::start(&repo.path().display().to_string(), &[]);
    ctl.wait_healthy("web", 1);
    let mut last = String::new();
    for i in 1..=4 {
        repo.write("web.yaml", &app_yaml("web", &format!("v{i}"), 1));
        last = repo.commit(&format!("v{i}"));
        // Ask for a sync and kill the controller while it is fetching, applying or starting.
        let url = format!("http://{}/api/v1/sync", ctl.listen);
        let token = ctl.token();
        let asked = std::thread::spawn(move || {
            let _ = reqwest::blocking::Client::new()
                .post(url)
                .bearer_auth(token)
                .send();
        });
        if i % 2 == 0 {
            // Half the time, once the commit is applied: mid-start or mid-retire.
            wait_until("the commit applied", || {
                (ctl.applied() == last).then_some(())
            });
        }
        // Otherwise at once: somewhere between the request and the fetch's end.
        ctl.kill9();
        let _ = asked.join();
        ctl.spawn();
    }
    let app = ctl.wait_healthy("web", 1);
    assert_eq!(ctl.applied(), last);
    assert_eq!(answer(instance_ports(&app)[0]).as_deref(), Some("v4"));
    let seqs: Vec<u64> = ctl
        .get("/api/v1/history?limit=100000")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "the audit log has no gaps and no torn records"
    );
}
