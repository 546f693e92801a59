//! End-to-end: feature flags committed to a real Git repository, served by the real `gauntlet
//! up` over OFREP on 127.0.0.1, read by plain HTTP, by the CLI, and by the real OpenFeature
//! Python SDK with its OFREP provider.

mod common;

use std::process::Command;

use common::*;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A `FeatureFlags` document: `new-checkout` is on for the `pro` plan, on for `percent` % of
/// the other users, off for the rest.
fn checkout_flags(percent: u32) -> String {
    format!(
        r#"apiVersion: gauntlet.dev/v1alpha1
kind: FeatureFlags
metadata: {{name: checkout-flags}}
spec:
  flags:
    new-checkout:
      state: ENABLED
      variants: {{on: true, off: false}}
      defaultVariant: off
      targeting:
        if:
        - {{"==": [{{var: plan}}, pro]}}
        - on
        - fractional: [[on, {percent}], [off, {rest}]]
      metadata: {{team: payments}}
"#,
        rest = 100 - percent
    )
}

/// A plain flagd file with flags of every other type.
const UI_FLAGS: &str = r##"{
  "$schema": "https://flagd.dev/schema/v0/flags.json",
  "flags": {
    "banner": {
      "state": "ENABLED",
      "variants": {"red": "#f00", "blue": "#00f"},
      "defaultVariant": "blue",
      "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "red"]}
    },
    "max-items": {"state": "ENABLED", "variants": {"few": 10, "many": 100}, "defaultVariant": "many"},
    "ratio": {"state": "ENABLED", "variants": {"low": 0.25, "high": 0.75}, "defaultVariant": "low"},
    "theme": {"state": "ENABLED", "variants": {"dark": {"bg": "black"}}, "defaultVariant": "dark"},
    "retired": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}
  }
}
"##;

fn http() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

fn send(req: RequestBuilder) -> Response {
    req.send().expect("the controller answers")
}

fn json_of(r: Response) -> Value {
    r.json().expect("a JSON body")
}

/// POST /ofrep/v1/evaluate/flags/KEY with `context`, optionally with an X-API-Key.
fn ofrep(ctl: &Controller, flag: &str, context: Value, key: Option<&str>) -> Response {
    let mut req = http()
        .post(format!(
            "http://{}/ofrep/v1/evaluate/flags/{flag}",
            ctl.listen
        ))
        .json(&json!({ "context": context }));
    if let Some(key) = key {
        req = req.header("X-API-Key", key);
    }
    send(req)
}

/// Waits until OFREP answers `flag` for `context` with `value`.
fn wait_value(ctl: &Controller, flag: &str, context: Value, key: Option<&str>, value: Value) {
    ctl.wait_until(&format!("{flag} = {value} over OFREP"), || {
        let r = ofrep(ctl, flag, context.clone(), key);
        (r.status() == StatusCode::OK && json_of(r)["value"] == value).then_some(())
    });
}

fn write_keys(ctl_dir: &std::path::Path, keys: &str) -> String {
    let path = ctl_dir.join("flag-keys");
    std::fs::write(&path, keys).expect("the key file is written");
    path.display().to_string()
}

#[test]
fn ofrep_serves_committed_flags_with_etags_errors_keys_and_cors() {
    let repo = Repo::new();
    repo.write("flags/checkout.yaml", &checkout_flags(10));
    repo.write("flags/ui.flagd.json", UI_FLAGS);
    repo.commit("flags");
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = write_keys(keys_dir.path(), "# the web shop\neval-key-1\neval-key-2\n");
    let ctl = Controller::start(
        &repo.path().display().to_string(),
        &["--flags-keys-file", &keys],
    );
    let base = format!("http://{}", ctl.listen);
    let key = "eval-key-1";
    wait_value(&ctl, "max-items", json!({}), Some(key), json!(100));

    // One flag, with the key as a bearer token and as X-API-Key.
    let pro = json!({"targetingKey": "u-1", "plan": "pro"});
    let r = send(
        http()
            .post(format!("{base}/ofrep/v1/evaluate/flags/new-checkout"))
            .bearer_auth("eval-key-2")
            .json(&json!({ "context": pro })),
    );
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        json_of(r),
        json!({"key": "new-checkout", "value": true, "variant": "on",
               "reason": "TARGETING_MATCH", "metadata": {"team": "payments"}})
    );
    let r = ofrep(
        &ctl,
        "banner",
        json!({"email": "ada@example.com"}),
        Some(key),
    );
    assert_eq!(json_of(r)["value"], "#f00");
    let r = ofrep(&ctl, "theme", json!({}), Some(key));
    assert_eq!(json_of(r)["value"], json!({"bg": "black"}));
    let r = ofrep(&ctl, "retired", json!({}), Some(key));
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a disabled flag, as flagd answers"
    );
    assert_eq!(json_of(r)["errorCode"], "FLAG_NOT_FOUND");

    // Errors: unknown flag, a context that is not an object, a body that is not JSON.
    let r = ofrep(&ctl, "no-such-flag", json!({}), Some(key));
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body = json_of(r);
    assert_eq!(
        (&body["key"], &body["errorCode"]),
        (&json!("no-such-flag"), &json!("FLAG_NOT_FOUND"))
    );
    let r = ofrep(&ctl, "banner", json!(["not", "an", "object"]), Some(key));
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(r)["errorCode"], "INVALID_CONTEXT");
    let r = send(
        http()
            .post(format!("{base}/ofrep/v1/evaluate/flags/banner"))
            .header("X-API-Key", key)
            .header("Content-Type", "application/json")
            .body("{not json"),
    );
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(r)["errorCode"], "INVALID_CONTEXT");

    // Keys: none, a wrong one, and the admin token are refused; a key opens no admin route.
    let token = ctl.token();
    for (name, req) in [
        (
            "no key",
            http().post(format!("{base}/ofrep/v1/evaluate/flags/banner")),
        ),
        (
            "wrong key",
            http()
                .post(format!("{base}/ofrep/v1/evaluate/flags/banner"))
                .header("X-API-Key", "eval-key-3"),
        ),
        (
            "admin token",
            http()
                .post(format!("{base}/ofrep/v1/evaluate/flags/banner"))
                .bearer_auth(&token),
        ),
        (
            "admin token, bulk",
            http()
                .post(format!("{base}/ofrep/v1/evaluate/flags"))
                .bearer_auth(&token),
        ),
    ] {
        let r = send(req.json(&json!({})));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{name}");
    }
    for path in ["/api/v1/status", "/api/v1/flags", "/api/v1/flags/banner"] {
        let r = send(http().get(format!("{base}{path}")).bearer_auth(key));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} with a key");
    }

    // Bulk: every enabled flag, an ETag, 304 for a matching If-None-Match.
    let bulk = |context: Value, etag: Option<&str>| {
        let mut req = http()
            .post(format!("{base}/ofrep/v1/evaluate/flags"))
            .bearer_auth(key)
            .json(&json!({ "context": context }));
        if let Some(etag) = etag {
            req = req.header("If-None-Match", etag);
        }
        send(req)
    };
    let r = bulk(pro.clone(), None);
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let all = json_of(r);
    let keys: Vec<&str> = all["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["banner", "max-items", "new-checkout", "ratio", "theme"]
    );
    let r = bulk(pro.clone(), Some(&etag));
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert!(r.text().unwrap().is_empty());
    let r = bulk(json!({"targetingKey": "u-2"}), Some(&etag));
    assert_eq!(r.status(), StatusCode::OK, "another context, another ETag");
    let r = bulk(json!("nope"), None);
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(r)["errorCode"], "INVALID_CONTEXT");

    // CORS: a browser's preflight needs no key; answers are readable with their ETag.
    let r = send(
        http()
            .request(
                reqwest::Method::OPTIONS,
                format!("{base}/ofrep/v1/evaluate/flags"),
            )
            .header("Origin", "https://shop.example.com")
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type, if-none-match",
            ),
    );
    assert!(r.status().is_success(), "preflight: {}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for header in [
        "authorization",
        "x-api-key",
        "if-none-match",
        "content-type",
    ] {
        assert!(allowed.contains(header), "{header} in {allowed}");
    }
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let r = send(
        http()
            .post(format!("{base}/ofrep/v1/evaluate/flags"))
            .header("Origin", "https://shop.example.com")
            .bearer_auth(key)
            .json(&json!({})),
    );
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert!(r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("ETag"));

    // The CLI, with the admin token.
    let out = ctl.run_cli(&["flags", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("6 flags"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("new-checkout") && l.contains("flags/checkout.yaml")),
        "{text}"
    );
    let out = ctl.run_cli(&["flags", "get", "banner", "-o", "json"]);
    let banner: Value = serde_json::from_slice(&out.stdout).expect("flags get -o json");
    assert_eq!(banner["source"], "flags/ui.flagd.json");
    assert_eq!(banner["defaultVariant"], "blue");
    let out = ctl.run_cli(&[
        "flags",
        "eval",
        "new-checkout",
        "--context",
        r#"{"targetingKey": "u-1", "plan": "pro"}"#,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("value:   true"), "{text}");
    assert!(text.contains("variant: on"), "{text}");
    assert!(text.contains("reason:  TARGETING_MATCH"), "{text}");
    let out = ctl.run_cli(&["flags", "eval", "no-such-flag"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no flag named no-such-flag"));
}

#[test]
fn without_keys_evaluation_is_open_and_the_controller_says_so() {
    let repo = Repo::new();
    repo.write("flags/ui.flagd.json", UI_FLAGS);
    repo.commit("flags");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    wait_value(&ctl, "max-items", json!({}), None, json!(100));
    let log = std::fs::read_to_string(ctl.state.path().join("controller.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("flag evaluation") && l.contains("is open")),
        "{log}"
    );
}

#[test]
fn flag_commits_are_served_bad_ones_rejected_and_nothing_restarts() {
    let repo = Repo::new();
    repo.write("apps/web.yaml", &app_yaml("web", "v1", 1));
    repo.write("flags/checkout.yaml", &checkout_flags(10));
    let c1 = repo.commit("web and flags");
    let ctl = Controller::start(&repo.path().display().to_string(), &[]);
    let web = ctl.wait_healthy("web", 1);
    let pids = instance_pids(&web);
    let pro = json!({"targetingKey": "u-1", "plan": "pro"});
    wait_value(&ctl, "new-checkout", pro.clone(), None, json!(true));

    // A typo in a flag rejects the whole commit, naming file, line and field; the previous
    // flags keep being served.
    repo.write(
        "flags/checkout.yaml",
        &checkout_flags(10).replace("defaultVariant: off", "defaultVariant: of"),
    );
    repo.write("flags/ui.flagd.json", UI_FLAGS);
    let bad = repo.commit("typo");
    let rejected = ctl.wait_until("the typo rejected", || {
        let s = ctl.status();
        (s["source"]["rejected"]["commit"]["sha"] == bad).then(|| s["source"]["rejected"].clone())
    });
    let errors = rejected["errors"].to_string();
    assert!(
        errors.contains(
            "flags/checkout.yaml:9:7: spec.flags.new-checkout.defaultVariant: \\\"of\\\" is not one of its variants"
        ),
        "{errors}"
    );
    assert_eq!(ctl.applied(), c1);
    let r = json_of(ofrep(&ctl, "new-checkout", pro.clone(), None));
    assert_eq!(r["value"], true);
    assert_eq!(
        ofrep(&ctl, "banner", json!({}), None).status(),
        StatusCode::NOT_FOUND
    );

    // A key defined in two files is rejected naming both.
    repo.write("flags/checkout.yaml", &checkout_flags(10));
    repo.write(
        "flags/ui.flagd.json",
        &UI_FLAGS.replace("\"banner\"", "\"new-checkout\""),
    );
    let dup = repo.commit("duplicate");
    let rejected = ctl.wait_until("the duplicate rejected", || {
        let s = ctl.status();
        (s["source"]["rejected"]["commit"]["sha"] == dup).then(|| s["source"]["rejected"].clone())
    });
    let errors = rejected["errors"].to_string();
    assert!(
        errors.contains("flags/ui.flagd.json:4:5: flags.new-checkout: flag \\\"new-checkout\\\" is also defined at flags/checkout.yaml:6:5"),
        "{errors}"
    );

    // `gauntlet validate` reports the same problem offline.
    let out = Command::new(BIN)
        .args(["validate"])
        .arg(repo.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("flags/ui.flagd.json:4:5"), "{stderr}");

    // A good commit is served (found by polling, no sync), and nothing restarts for it.
    repo.write("flags/ui.flagd.json", UI_FLAGS);
    repo.write(
        "flags/checkout.yaml",
        &checkout_flags(10).replace("- on\n", "- off\n"),
    );
    let c2 = repo.commit("pro users off");
    wait_value(&ctl, "new-checkout", pro.clone(), None, json!(false));
    wait_value(&ctl, "banner", json!({}), None, json!("#00f"));
    assert_eq!(ctl.applied(), c2);
    let web2 = ctl.wait_healthy("web", 1);
    assert_eq!(web2["revision"], web["revision"]);
    assert_eq!(instance_pids(&web2), pids);
    let flags_records: Vec<Value> = ctl
        .all_history()
        .into_iter()
        .filter(|r| r["action"] == "flags")
        .collect();
    assert_eq!(flags_records.last().unwrap()["actor"]["id"], c2.as_str());
}

/// The Python interpreter of the venv `.ci/run` makes with the OpenFeature SDK in it.
fn sdk_python() -> String {
    let python = std::env::var("GAUNTLET_OFREP_PYTHON")
        .unwrap_or_else(|_| "/opt/gauntlet-venv/bin/python3".to_string());
    let ok = Command::new(&python)
        .args([
            "-c",
            "import openfeature, openfeature.contrib.provider.ofrep",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the OpenFeature Python SDK is not installed at {python}: run .ci/run, or \
         `python3 -m venv /opt/gauntlet-venv && /opt/gauntlet-venv/bin/pip install \
         openfeature-sdk openfeature-provider-ofrep` (or point GAUNTLET_OFREP_PYTHON at a \
         python3 that has both)"
    );
    python
}

#[test]
fn the_openfeature_python_sdk_evaluates_flags_over_ofrep() {
    let python = sdk_python();
    let repo = Repo::new();
    repo.write("flags/checkout.yaml", &checkout_flags(10));
    repo.write("flags/ui.flagd.json", UI_FLAGS);
    repo.commit("flags");
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = write_keys(keys_dir.path(), "sdk-key\n");
    let ctl = Controller::start(
        &repo.path().display().to_string(),
        &["--flags-keys-file", &keys],
    );
    wait_value(&ctl, "max-items", json!({}), Some("sdk-key"), json!(100));

    let requests = json!([
        {"flag": "new-checkout", "type": "boolean", "default": false,
         "context": {"targetingKey": "u-1", "plan": "pro"}},
        {"flag": "banner", "type": "string", "default": "none",
         "context": {"targetingKey": "u-1", "email": "ada@example.com"}},
        {"flag": "max-items", "type": "integer", "default": 1, "context": {}},
        {"flag": "ratio", "type": "float", "default": 0.0, "context": {}},
        {"flag": "theme", "type": "object", "default": {}, "context": {}},
        {"flag": "retired", "type": "boolean", "default": false, "context": {}},
        {"flag": "no-such-flag", "type": "boolean", "default": true, "context": {}},
        {"flag": "banner", "type": "boolean", "default": true, "context": {}}
    ]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ofrep_sdk.py");
    let run = |key: &str| {
        let out = Command::new(&python)
            .arg(script)
            .arg(format!("http://{}", ctl.listen))
            .arg(key)
            .arg(requests.to_string())
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "ofrep_sdk.py failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("the script prints JSON")
    };
    let got = run("sdk-key");
    let summary: Vec<(Value, Value, Value)> = got
        .iter()
        .map(|d| {
            (
                d["value"].clone(),
                d["reason"].clone(),
                d["errorCode"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (json!(true), json!("TARGETING_MATCH"), Value::Null),
            (json!("#f00"), json!("TARGETING_MATCH"), Value::Null),
            (json!(100), json!("STATIC"), Value::Null),
            (json!(0.25), json!("STATIC"), Value::Null),
            (json!({"bg": "black"}), json!("STATIC"), Value::Null),
            (json!(false), json!("ERROR"), json!("FLAG_NOT_FOUND")),
            (json!(true), json!("ERROR"), json!("FLAG_NOT_FOUND")),
            (json!(true), json!("ERROR"), json!("TYPE_MISMATCH")),
        ],
        "{got:#?}"
    );
    assert_eq!(got[0]["variant"], "on");

    // With a wrong key the SDK gets 401 and falls back to the defaults.
    let refused = run("wrong-key");
    assert!(
        refused.iter().all(|d| d["reason"] == "ERROR"),
        "{refused:#?}"
    );
}
