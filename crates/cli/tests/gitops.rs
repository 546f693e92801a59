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
    let v2 = ctl.wait_until("v2 replaced v1", || {
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
    ctl.wait_until("v1 processes stopped", || {
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
    let status = ctl.wait_until("rejection reported", || {
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

    let mut daemon = GitDaemon::start_any(base.path(), "apps.git");
    let port = daemon.port;
    let ctl = Controller::start(&daemon.url("apps.git"), &[]);
    let running = ctl.wait_healthy("web", 1);

    daemon.stop();
    let status = ctl.wait_until("the fetch error in status", || {
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
    // The controller follows this URL, so the daemon must come back on the same port; `start`
    // checks that it is the daemon answering there, not some other process.
    let _daemon = GitDaemon::start(base.path(), port, "apps.git");
    ctl.sync();
    ctl.wait_until("recovered and v2 applied", || {
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
    ctl.wait_until("back on v1", || {
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
    let healed = ctl.wait_until("a new process for the instance", || {
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
    let pids = instance_pids(&before);
    assert_eq!(pids.len(), 2, "{before}");
    assert_eq!(
        ctl.processes(),
        pids,
        "the OS runs exactly the reported instances"
    );
    let records_before = seq_actions(&ctl.all_history());

    ctl.kill9();
    for port in instance_ports(&before) {
        assert_eq!(
            answer(port).as_deref(),
            Some("v1"),
            "serving without the controller"
        );
    }
    assert_eq!(ctl.processes(), pids, "instances outlive the controller");

    ctl.spawn();
    let after = ctl.wait_healthy("web", 2);
    assert_eq!(instance_pids(&after), pids, "same processes, adopted");
    let adopted = |h: &[serde_json::Value]| h.iter().filter(|r| r["action"] == "adopted").count();
    let history = ctl.wait_until("both instances' adoption audited", || {
        let h = ctl.all_history();
        (adopted(&h[records_before.len().min(h.len())..]) >= 2).then_some(h)
    });
    assert_eq!(
        ctl.processes(),
        pids,
        "no duplicate processes: the OS runs the same two"
    );

    let records_after = seq_actions(&history);
    assert!(
        records_after.len() >= records_before.len(),
        "audit records lost: {records_before:?} then {records_after:?}"
    );
    assert_eq!(
        records_after[..records_before.len()],
        records_before[..],
        "every record from before the kill is still there, unchanged"
    );
    let new = &history[records_before.len()..];
    let count = |action: &str| new.iter().filter(|r| r["action"] == action).count();
    assert_eq!(count("adopted"), 2, "{new:#?}");
    assert_eq!(count("start"), 1, "one controller start: {new:#?}");
    for action in ["create", "update", "scale", "restarted", "lost", "retire"] {
        assert_eq!(
            count(action),
            0,
            "nothing started or stopped again: {new:#?}"
        );
    }
    // Adopted ready instances stay ready: the restart is not a health change.
    assert!(
        new.iter()
            .filter(|r| r["action"] == "health")
            .all(|r| r["after"] == "Healthy"),
        "no health flap across the restart: {new:#?}"
    );
}

/// `(seq, action)` of each audit record, in order.
fn seq_actions(history: &[serde_json::Value]) -> Vec<(u64, String)> {
    history
        .iter()
        .map(|r| {
            (
                r["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {r}")),
                r["action"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
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
    ctl.wait_until("gone pruned", || {
        (ctl.app("gone").is_none() && instance_pids(&gone).iter().all(|p| !alive(*p))).then_some(())
    });
    assert!(ctl.app("keep").is_some());
    assert!(ctl
        .history("gone")
        .iter()
        .any(|r| r["action"] == "prune" && r["actor"]["id"] == c.as_str()));
}

#[test]
fn stopping_the_controller_with_its_instances_leaves_no_process() {
    let repo = Repo::new();
    repo.write("web.yaml", &app_yaml("web", "v1", 2));
    repo.commit("v1");
    let mut ctl = Controller::start(&repo.path().display().to_string(), &[]);
    // A few rounds: how the controller ends must not depend on which of its tasks ends first.
    for round in 1..=3 {
        if round > 1 {
            ctl.spawn();
        }
        let app = ctl.wait_healthy("web", 2);
        assert_eq!(ctl.processes(), instance_pids(&app));
        let proxy = ctl.proxy_pid().expect("the controller runs a proxy");
        let status = ctl
            .shutdown(true)
            .unwrap_or_else(|| panic!("round {round}: the controller still runs after 30 s"));
        assert!(
            status.success(),
            "round {round}: {status}\n{}",
            ctl.log_tail()
        );
        let left = ctl.processes();
        assert!(
            left.is_empty(),
            "round {round}: processes {left:?} outlived a shutdown with stopInstances\n{}",
            ctl.log_tail()
        );
        assert!(
            !alive(u64::from(proxy)),
            "round {round}: the proxy {proxy} outlived a shutdown with stopInstances"
        );
    }
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
    let created = |a: &serde_json::Value| {
        a["instances"][0]["createdMs"]
            .as_u64()
            .unwrap_or_else(|| panic!("no createdMs: {a}"))
    };
    assert!(created(&db) <= created(&api));

    // The audit log tells the same story: api is created only once db is healthy.
    let history = ctl.all_history();
    let seq_of = |what: &str, found: Option<&serde_json::Value>| {
        found
            .and_then(|r| r["seq"].as_u64())
            .unwrap_or_else(|| panic!("no {what} record in {history:#?}"))
    };
    let db_healthy = seq_of(
        "db health -> Healthy",
        history
            .iter()
            .find(|r| r["app"] == "db" && r["action"] == "health" && r["after"] == "Healthy"),
    );
    let api_created = seq_of(
        "api create",
        history
            .iter()
            .find(|r| r["app"] == "api" && r["action"] == "create"),
    );
    assert!(
        db_healthy < api_created,
        "db must be Healthy (seq {db_healthy}) before api is created (seq {api_created}): {history:#?}"
    );
}

/// A controller with one healthy app, a webhook secret, and a one-hour polling interval: only
/// a webhook (or a sync) can explain a fetch.
fn webhook_controller(secret: &str) -> (Repo, Controller, tempfile::NamedTempFile) {
    let repo = Repo::new();
    repo.write("web.yaml", &app_yaml("web", "v1", 1));
    repo.commit("v1");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{secret}\n")).unwrap();
    let ctl = Controller::start(
        &repo.path().display().to_string(),
        &[
            "--interval",
            "1h",
            "--webhook-secret-file",
            &file.path().display().to_string(),
        ],
    );
    ctl.wait_healthy("web", 1);
    (repo, ctl, file)
}

#[test]
fn webhook_with_a_bad_signature_is_refused_and_a_good_one_fetches_at_once() {
    let (repo, ctl, _secret) = webhook_controller("s3cret");
    let http = reqwest::blocking::Client::new();
    let body = br#"{"ref":"refs/heads/main"}"#.to_vec();
    let webhook = |signature: &str| {
        http.post(format!("http://{}/api/v1/webhooks/git", ctl.listen))
            .header("X-Hub-Signature-256", signature)
            .body(body.clone())
            .send()
            .unwrap_or_else(|e| panic!("POST the webhook: {e}"))
            .status()
            .as_u16()
    };

    let checks = ctl.checks();
    assert_eq!(webhook("sha256=0000"), 401);
    // A sync waits for a fetch pass that started after it. Had the refused webhook woken the
    // fetch loop, that pass would come on top of the sync's.
    let synced = ctl.sync()["source"]["checks"].as_u64();
    assert_eq!(synced, Some(checks + 1), "only the sync fetched");
    assert_eq!(
        ctl.checks(),
        checks + 1,
        "a refused webhook fetches nothing"
    );

    repo.write("web.yaml", &app_yaml("web", "v2", 1));
    let c2 = repo.commit("v2");
    let sig = {
        use hmac::{Mac, SimpleHmac};
        let mut mac = SimpleHmac::<sha2::Sha256>::new_from_slice(b"s3cret").expect("any key");
        mac.update(&body);
        hex::encode(mac.finalize().into_bytes())
    };
    assert_eq!(webhook(&format!("sha256={sig}")), 202);
    ctl.wait_until("the webhook's fetch applied v2", || {
        (ctl.applied() == c2).then_some(())
    });
    assert!(ctl.checks() > checks + 1, "the webhook fetched");
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
    // A one-hour interval: no poll can apply the "scale" commit before `gauntlet diff` shows it.
    let ctl = Controller::start(&repo.path().display().to_string(), &["--interval", "1h"]);
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
    let app = ctl.wait_until("the conflict reported", || {
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
    let first = repo.commit("v0");
    let mut ctl = Controller::start(&repo.path().display().to_string(), &[]);
    ctl.wait_healthy("web", 1);
    // Commits seen applied; the others may have been overtaken before they were applied.
    let mut applied = vec![first];
    let mut commits = applied.clone();
    let mut last = String::new();
    for i in 1..=4 {
        repo.write("web.yaml", &app_yaml("web", &format!("v{i}"), 1));
        last = repo.commit(&format!("v{i}"));
        commits.push(last.clone());
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
            ctl.wait_until("the commit applied", || {
                (ctl.applied() == last).then_some(())
            });
            applied.push(last.clone());
        }
        // Otherwise at once: somewhere between the request and the fetch's end.
        ctl.kill9();
        let _ = asked.join();
        ctl.spawn();
    }
    let app = ctl.wait_healthy("web", 1);
    assert_eq!(ctl.applied(), last);
    assert_eq!(answer(instance_ports(&app)[0]).as_deref(), Some("v4"));

    let history = ctl.all_history();
    let applies: Vec<&str> = history
        .iter()
        .filter(|r| r["action"] == "apply")
        .map(|r| r["actor"]["id"].as_str().unwrap_or(""))
        .collect();
    for sha in &applied {
        assert!(
            applies.contains(&sha.as_str()),
            "{sha} was applied but has no apply record: {history:#?}"
        );
    }
    for sha in &applies {
        assert!(
            commits.iter().any(|c| c == sha),
            "an apply record names {sha:?}, not one of the commits: {history:#?}"
        );
    }

    let revision = app["revision"].as_str().expect("a revision");
    for instance in app["instances"].as_array().expect("instances") {
        let id = instance["id"].as_str().expect("an instance id");
        assert!(
            id.starts_with(&format!("web-{revision}-")),
            "{id} is not of revision {revision}"
        );
    }
    assert!(
        history.iter().any(|r| r["app"] == "web"
            && (r["action"] == "create" || r["action"] == "update")
            && r["after"] == revision),
        "the running revision {revision} was started without a create or update record: {history:#?}"
    );
    assert_eq!(
        ctl.processes(),
        instance_pids(&app),
        "exactly the one instance runs, no orphan of an interrupted start"
    );
}

#[test]
fn update_starts_the_new_revision_and_waits_until_ready_before_stopping_the_old() {
    let repo = Repo::new();
    repo.write("web.yaml", &app_yaml("web", "v1", 2));
    repo.commit("v1");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    let v1 = ctl.wait_healthy("web", 2);
    repo.write("web.yaml", &app_yaml("web", "v2", 2));
    repo.commit("v2");
    ctl.sync();
    let v2 = ctl.wait_until("v2 replaced v1", || {
        ctl.app("web")
            .filter(|a| a["revision"] != v1["revision"] && a["health"]["status"] == "Healthy")
            .filter(|a| a["instances"].as_array().is_some_and(|i| i.len() == 2))
            .filter(|a| {
                a["instances"]
                    .as_array()
                    .is_some_and(|i| i.iter().all(|i| i["revision"] == a["revision"]))
            })
    });
    ctl.wait_until("the v1 processes stopped", || {
        instance_pids(&v1).iter().all(|p| !alive(*p)).then_some(())
    });

    let history = ctl.history("web");
    let first_retire = history
        .iter()
        .find(|r| r["action"] == "retire")
        .and_then(|r| r["seq"].as_u64())
        .unwrap_or_else(|| panic!("no retire record: {history:#?}"));
    for instance in v2["instances"].as_array().expect("instances") {
        let id = instance["id"].as_str().expect("an instance id");
        let ready = history
            .iter()
            .find(|r| {
                r["action"] == "ready"
                    && r["reason"]
                        .as_str()
                        .is_some_and(|why| why.starts_with(&format!("{id}:")))
            })
            .and_then(|r| r["seq"].as_u64())
            .unwrap_or_else(|| panic!("no ready record for {id}: {history:#?}"));
        assert!(
            ready < first_retire,
            "{id} must be ready (seq {ready}) before the old revision is retired (seq {first_retire}): {history:#?}"
        );
    }
}

#[test]
fn a_commit_that_empties_the_tree_is_rejected_while_apps_run() {
    let repo = Repo::new();
    repo.write("web.yaml", &app_yaml("web", "v1", 1));
    let good = repo.commit("v1");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    let before = ctl.wait_healthy("web", 1);
    repo.git(&["rm", "-q", "web.yaml"]);
    let empty = repo.commit("remove everything");
    ctl.sync();
    // Either outcome ends the wait, so that a wrongly applied empty tree fails at once.
    let status = ctl.wait_until("the empty commit judged", || {
        let s = ctl.status();
        (s["source"]["rejected"]["commit"]["sha"] == empty.as_str()
            || s["source"]["applied"]["sha"] == empty.as_str())
        .then_some(s)
    });
    assert_eq!(
        status["source"]["applied"]["sha"],
        good.as_str(),
        "an empty tree must not be applied: {status:#}"
    );
    let errors = status["source"]["rejected"]["errors"].to_string();
    assert!(errors.contains("--allow-empty"), "{errors}");
    let after = ctl.app("web").expect("web still in the applied commit");
    assert_eq!(instance_pids(&after), instance_pids(&before));
    assert_eq!(answer(instance_ports(&after)[0]).as_deref(), Some("v1"));
}

#[test]
fn gitlab_webhook_token_triggers_a_fetch_and_a_wrong_one_is_refused() {
    let (repo, ctl, _secret) = webhook_controller("gl-token");
    repo.write("web.yaml", &app_yaml("web", "v2", 1));
    let c2 = repo.commit("v2");
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let hook = |token: &str| {
        http.post(format!("http://{}/api/v1/webhooks/git", ctl.listen))
            .header("X-Gitlab-Token", token)
            .body("{}")
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(hook("wrong"), 401);
    assert_eq!(hook("gl-token"), 202);
    ctl.wait_until("the GitLab webhook's fetch applied v2", || {
        (ctl.applied() == c2).then_some(())
    });
}

#[test]
fn an_artifact_is_fetched_verified_and_run_and_a_bad_digest_degrades_the_app() {
    // A release archive: a script that runs the demo app, as a build pipeline would publish.
    let build = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(build.path().join("bin")).unwrap();
    let script = build.path().join("bin/serve");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec \"{BIN}\" demo-app --listen \"127.0.0.1:$PORT\" --version from-artifact\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let archive = build.path().join("release.tar.gz");
    let tar = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(build.path())
        .arg("bin")
        .status()
        .unwrap();
    assert!(tar.success());
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&archive).unwrap()))
    };
    let manifest = |sha: &str| {
        format!(
            "apiVersion: gauntlet.dev/v1alpha1\nkind: Application\nmetadata: {{name: art}}\nspec:\n  process:\n    command: [bin/serve]\n    artifact: {{url: \"file://{}\", sha256: {sha}}}\n  readiness: {{httpGet: {{path: /healthz}}}}\n",
            archive.display()
        )
    };
    let repo = Repo::new();
    repo.write("art.yaml", &manifest(&digest));
    repo.commit("artifact release");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    let app = ctl.wait_healthy("art", 1);
    assert_eq!(
        answer(instance_ports(&app)[0]).as_deref(),
        Some("from-artifact")
    );

    repo.write("art.yaml", &manifest(&"0".repeat(64)));
    repo.commit("a release whose digest does not match");
    ctl.sync();
    let degraded = ctl.wait_until("the bad digest reported", || {
        ctl.app("art").filter(|a| {
            a["instances"].as_array().unwrap().iter().any(|i| {
                i["phase"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("sha256"))
            })
        })
    });
    assert_eq!(degraded["health"]["status"], "Degraded", "{degraded:#}");
    // The good release keeps serving while the bad one cannot start.
    let good = degraded["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["phase"]["phase"] == "ready")
        .expect("the previous release still runs")
        .clone();
    assert_eq!(
        answer(good["port"].as_u64().unwrap()).as_deref(),
        Some("from-artifact")
    );
}

#[test]
fn logs_follow_prints_new_lines_as_the_instance_writes_them() {
    let repo = Repo::new();
    repo.write("web.yaml", &app_yaml("web", "v1", 1));
    repo.commit("v1");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    let app = ctl.wait_healthy("web", 1);
    let mut follower = std::process::Command::new(BIN)
        .arg("--state-dir")
        .arg(ctl.state.path())
        .args(["logs", "web", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut next_matching = |needle: &str| {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(needle) {
                        return;
                    }
                }
                Err(_) => panic!("no line with {needle:?} in `logs -f`: {seen:#?}"),
            }
        }
    };
    next_matching("demo-app v1 listening");
    // SIGTERM: the app logs its shutdown, and its restart logs a new start line.
    let pid = instance_pids(&app)[0];
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    next_matching("SIGTERM, shutting down");
    next_matching("demo-app v1 listening");
    let _ = follower.kill();
    let _ = follower.wait();
}
