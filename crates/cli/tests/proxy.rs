//! End-to-end: `gauntlet proxy` as a real process in front of real `gauntlet demo-app`
//! processes, configured over its admin API, on 127.0.0.1 only. Each test names the behaviour
//! it proves.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{app, demo_app, http, Process};
use common::{free_port, wait_until, wait_until_or, BIN, DEADLINE};
use serde_json::{json, Value};

/// A `gauntlet proxy` process with its own state directory and admin port.
struct ProxyProcess {
    state: tempfile::TempDir,
    admin: u16,
    args: Vec<String>,
    child: Option<Process>,
    http: reqwest::blocking::Client,
}

impl ProxyProcess {
    fn start(extra: &[&str]) -> ProxyProcess {
        let mut proxy = ProxyProcess {
            state: tempfile::tempdir().expect("a temporary state directory"),
            admin: free_port(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            http: http(),
        };
        proxy.spawn();
        proxy
    }

    fn log_path(&self) -> PathBuf {
        self.state.path().join("proxy.log")
    }

    fn log_tail(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process and waits until its admin API answers.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("proxy.log opens");
        let child = Command::new(BIN)
            .arg("--state-dir")
            .arg(self.state.path())
            .args(["proxy", "--admin", &format!("127.0.0.1:{}", self.admin)])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("proxy.log opens twice"))
            .stderr(log)
            .spawn()
            .expect("gauntlet proxy starts");
        self.child = Some(Process(child));
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(Process(child)) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("the proxy exited ({status})\n{}", self.log_tail());
                }
            }
            let up = self
                .http
                .get(self.admin_url("/metrics"))
                .send()
                .is_ok_and(|r| r.status().is_success());
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the proxy's admin API\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        self.child = None;
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.state.path().join("token"))
            .expect("the proxy created a token")
            .trim()
            .to_string()
    }

    fn put_config(&self, config: &Value) -> (u16, Value) {
        let response = self
            .http
            .put(self.admin_url("/admin/v1/config"))
            .bearer_auth(self.token())
            .json(config)
            .send()
            .expect("the admin API answers");
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }

    fn get_admin(&self, path: &str) -> Value {
        let response = self
            .http
            .get(self.admin_url(path))
            .bearer_auth(self.token())
            .send()
            .expect("the admin API answers");
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().expect("a JSON answer")
    }

    fn prometheus(&self) -> String {
        self.http
            .get(self.admin_url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .expect("/metrics answers")
    }
}

/// GET through the proxy: status and trimmed body.
fn get(client: &reqwest::blocking::Client, port: u16, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = client.get(format!("http://127.0.0.1:{port}/"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().expect("the proxy answers");
    let status = response.status().as_u16();
    (
        status,
        response.text().unwrap_or_default().trim().to_string(),
    )
}

/// Waits until the proxy answers on `port` with a body for which `ok` holds.
fn wait_for_answer(port: u16, what: &str, ok: impl Fn(u16, &str) -> bool) {
    let client = http();
    wait_until(what, || {
        let response = client
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .ok()?;
        let status = response.status().as_u16();
        let body = response.text().ok()?;
        ok(status, body.trim()).then_some(())
    });
}

#[test]
fn put_config_routes_requests_to_the_configured_revision_and_reloads() {
    let (_v1, v1_port) = demo_app("v1");
    let (_v2, v2_port) = demo_app("v2");
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();

    let first = json!({"version": 1, "apps": [app("web", listen, &[("v1", 10000, &[v1_port])])]});
    assert_eq!(proxy.put_config(&first), (200, json!({"version": 1})));
    assert_eq!(proxy.get_admin("/admin/v1/config")["version"], 1);
    let client = http();
    for _ in 0..20 {
        assert_eq!(get(&client, listen, &[]), (200, "v1".to_string()));
    }

    let second = json!({"version": 2, "apps": [app("web", listen, &[("v2", 10000, &[v2_port])])]});
    assert_eq!(proxy.put_config(&second), (200, json!({"version": 2})));
    for _ in 0..20 {
        assert_eq!(get(&client, listen, &[]), (200, "v2".to_string()));
    }
    let metrics = proxy.get_admin("/admin/v1/metrics");
    assert_eq!(metrics["version"], 2);
    let v2 = &metrics["revisions"][0];
    assert_eq!((&v2["app"], &v2["revision"]), (&json!("web"), &json!("v2")));
    assert_eq!(v2["metrics"]["requests"], 20);
    assert_eq!(v2["metrics"]["responses"][1], 20);

    // Removing the application closes its listener.
    assert_eq!(proxy.put_config(&json!({"version": 3, "apps": []})).0, 200);
    wait_until("the removed application's listener to close", || {
        std::net::TcpStream::connect(("127.0.0.1", listen))
            .is_err()
            .then_some(())
    });
}

#[test]
fn header_match_pins_requests_to_a_revision_without_weight() {
    let (_v1, v1_port) = demo_app("v1");
    let (_v2, v2_port) = demo_app("v2");
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let mut web = app(
        "web",
        listen,
        &[("v1", 10000, &[v1_port]), ("v2", 0, &[v2_port])],
    );
    web["matches"] = json!([{"on": {"header": "x-canary"}, "match": "exact",
                             "value": "yes", "revision": "v2"}]);
    let (status, body) = proxy.put_config(&json!({"version": 1, "apps": [web]}));
    assert_eq!(status, 200, "{body}");

    let client = http();
    for _ in 0..50 {
        assert_eq!(get(&client, listen, &[("X-Canary", "yes")]).1, "v2");
        assert_eq!(get(&client, listen, &[("X-Canary", "no")]).1, "v1");
        assert_eq!(get(&client, listen, &[]).1, "v1");
    }
}

#[test]
fn invalid_config_is_rejected_with_400_and_the_old_routing_kept() {
    let (_v1, v1_port) = demo_app("v1");
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let good = json!({"version": 1, "apps": [app("web", listen, &[("v1", 10000, &[v1_port])])]});
    assert_eq!(proxy.put_config(&good).0, 200);

    // Weights summing to 50 %: a validation error that names the application and field.
    let bad = json!({"version": 2, "apps": [app("web", listen, &[
        ("v1", 2500, &[v1_port]), ("v2", 2500, &[v1_port])])]});
    let (status, body) = proxy.put_config(&bad);
    assert_eq!(status, 400, "{body}");
    let errors = body["errors"].to_string();
    assert!(errors.contains("web") && errors.contains("sum"), "{body}");
    // Not even JSON of the schema.
    let (status, _) = proxy.put_config(&json!({"version": "three"}));
    assert_eq!(status, 400);

    assert_eq!(proxy.get_admin("/admin/v1/config")["version"], 1);
    let client = http();
    assert_eq!(get(&client, listen, &[]), (200, "v1".to_string()));
}

#[test]
fn admin_calls_with_a_bad_or_missing_token_get_401() {
    let proxy = ProxyProcess::start(&[]);
    let client = http();
    let config = json!({"version": 1, "apps": []});
    let wrong = client
        .put(proxy.admin_url("/admin/v1/config"))
        .bearer_auth(format!("{}x", proxy.token()))
        .json(&config)
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let missing = client
        .get(proxy.admin_url("/admin/v1/config"))
        .send()
        .unwrap();
    assert_eq!(missing.status(), 401);
    let metrics = client
        .get(proxy.admin_url("/admin/v1/metrics"))
        .bearer_auth("not-the-token")
        .send()
        .unwrap();
    assert_eq!(metrics.status(), 401);
    // Prometheus scraping needs no token.
    assert_eq!(
        client
            .get(proxy.admin_url("/metrics"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn restarted_proxy_serves_the_persisted_config_without_the_controller() {
    let (_v1, v1_port) = demo_app("v1");
    let mut proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let config = json!({"version": 7, "apps": [app("web", listen, &[("v1", 10000, &[v1_port])])]});
    assert_eq!(proxy.put_config(&config).0, 200);
    assert!(proxy.state.path().join("proxy/config.json").is_file());

    proxy.kill9();
    proxy.spawn();
    assert_eq!(proxy.get_admin("/admin/v1/config")["version"], 7);
    wait_for_answer(listen, "the restarted proxy serving v1", |status, body| {
        status == 200 && body == "v1"
    });
}

#[test]
fn a_restarted_proxy_whose_address_was_taken_serves_the_other_applications() {
    let (_v1, v1_port) = demo_app("v1");
    let mut proxy = ProxyProcess::start(&[]);
    let (web, api) = (free_port(), free_port());
    let config = json!({"version": 3, "apps": [
        app("web", web, &[("v1", 10000, &[v1_port])]),
        app("api", api, &[("v1", 10000, &[v1_port])]),
    ]});
    assert_eq!(proxy.put_config(&config).0, 200);

    // While the proxy is down another process takes api's address.
    proxy.kill9();
    let squatter = wait_until("api's address free again", || {
        TcpListener::bind(("127.0.0.1", api)).ok()
    });
    proxy.spawn();
    wait_for_answer(web, "web still served", |status, body| {
        status == 200 && body == "v1"
    });
    assert!(
        proxy
            .log_tail()
            .contains(&format!("cannot listen on 127.0.0.1:{api} for app `api`")),
        "{}",
        proxy.log_tail()
    );
    drop(squatter);
}

#[test]
fn upstream_that_is_down_answers_502_and_counts_connect_errors() {
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let down = free_port();
    let config = json!({"version": 1, "apps": [app("web", listen, &[("v1", 10000, &[down])])]});
    assert_eq!(proxy.put_config(&config).0, 200);

    let client = http();
    for _ in 0..3 {
        assert_eq!(get(&client, listen, &[]).0, 502);
    }
    let text = proxy.prometheus();
    let line = text
        .lines()
        .find(|l| l.starts_with("gauntlet_proxy_upstream_connect_errors_total"))
        .unwrap_or_else(|| panic!("no connect error counter in\n{text}"));
    let count: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unparsable line {line:?}"));
    assert!(count >= 3.0, "{line}");
    let metrics = proxy.get_admin("/admin/v1/metrics");
    assert_eq!(metrics["revisions"][0]["metrics"]["requests"], 3);
}

#[test]
fn a_metrics_reader_waiting_for_a_failure_is_answered_with_it() {
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let down = free_port();
    let config = json!({"version": 1, "apps": [app("web", listen, &[("v1", 10000, &[down])])]});
    assert_eq!(proxy.put_config(&config).0, 200);
    let before = proxy.get_admin("/admin/v1/metrics")["failureSeq"]
        .as_u64()
        .expect("the metrics report the failures counted");

    // No failure: the reader is answered when its wait ends, with the same count.
    let quiet = proxy.get_admin(&format!(
        "/admin/v1/metrics?afterFailure={before}&waitMs=50"
    ));
    assert_eq!(quiet["failureSeq"], before, "{quiet}");

    // A failure while a reader waits (it asked for 10 s; the proxy caps the wait at 1 s): the
    // answer counts it.
    let client = http();
    let answered = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            proxy.get_admin(&format!(
                "/admin/v1/metrics?afterFailure={before}&waitMs=10000"
            ))
        });
        assert_eq!(get(&client, listen, &[]).0, 502);
        reader.join().expect("the reader thread")
    });
    assert!(
        answered["failureSeq"].as_u64() > Some(before),
        "the waiting reader saw the failure: {answered}"
    );
    assert!(
        answered["revisions"][0]["metrics"]["connectErrors"].as_u64() >= Some(1),
        "{answered}"
    );
}

#[test]
fn hanging_upstream_answers_504_after_the_request_timeout() {
    // Accepts connections (the kernel's backlog does) and never answers.
    let hanging = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hanging.local_addr().unwrap().port();
    let proxy = ProxyProcess::start(&["--request-timeout", "300ms"]);
    let listen = free_port();
    let config = json!({"version": 1, "apps": [app("web", listen, &[("v1", 10000, &[port])])]});
    assert_eq!(proxy.put_config(&config).0, 200);

    let client = http();
    assert_eq!(get(&client, listen, &[]).0, 504);
    let metrics = proxy.get_admin("/admin/v1/metrics");
    assert_eq!(metrics["revisions"][0]["metrics"]["timeouts"], 1);
    drop(hanging);
}

#[test]
fn refused_connection_is_retried_on_another_endpoint() {
    let (_v1, v1_port) = demo_app("v1");
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let down = free_port();
    let config =
        json!({"version": 1, "apps": [app("web", listen, &[("v1", 10000, &[down, v1_port])])]});
    assert_eq!(proxy.put_config(&config).0, 200);

    let client = http();
    for _ in 0..50 {
        assert_eq!(get(&client, listen, &[]), (200, "v1".to_string()));
    }
    let metrics = proxy.get_admin("/admin/v1/metrics");
    assert!(metrics["revisions"][0]["metrics"]["connectErrors"].as_u64() >= Some(1));
}

#[test]
fn abort_fault_answers_its_status_and_reset_fault_closes_the_connection() {
    let (_v1, v1_port) = demo_app("v1");
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let far = 4_102_444_800_000u64; // 2100-01-01
    let with_fault = |version: u64, kind: Value| {
        let mut web = app("web", listen, &[("v1", 10000, &[v1_port])]);
        web["faults"] =
            json!([{"revision": "v1", "kind": kind, "percent": 10000, "expiresAtMs": far}]);
        json!({"version": version, "apps": [web]})
    };
    let (status, body) = proxy.put_config(&with_fault(1, json!({"abort": {"status": 503}})));
    assert_eq!(status, 200, "{body}");
    let client = http();
    assert_eq!(get(&client, listen, &[]).0, 503);

    assert_eq!(proxy.put_config(&with_fault(2, json!("reset"))).0, 200);
    let reset = client.get(format!("http://127.0.0.1:{listen}/")).send();
    assert!(
        reset.is_err(),
        "expected a closed connection, got {reset:?}"
    );

    // An expired rule never fires.
    let mut expired = with_fault(3, json!("reset"));
    expired["apps"][0]["faults"][0]["expiresAtMs"] = json!(1);
    assert_eq!(proxy.put_config(&expired).0, 200);
    assert_eq!(get(&client, listen, &[]), (200, "v1".to_string()));
}

#[test]
fn sticky_cookie_is_set_and_keeps_the_user_on_its_revision() {
    let (_v1, v1_port) = demo_app("v1");
    let (_v2, v2_port) = demo_app("v2");
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let mut web = app(
        "web",
        listen,
        &[("v1", 5000, &[v1_port]), ("v2", 5000, &[v2_port])],
    );
    web["sticky"] = json!({"cookie": {"name": "rev"}});
    assert_eq!(
        proxy.put_config(&json!({"version": 1, "apps": [web]})).0,
        200
    );

    let client = http();
    let first = client
        .get(format!("http://127.0.0.1:{listen}/"))
        .send()
        .unwrap();
    let cookie = first.headers()["set-cookie"].to_str().unwrap().to_string();
    let body = first.text().unwrap().trim().to_string();
    assert_eq!(cookie, format!("rev={body}; Path=/; HttpOnly"));
    let pair = cookie.split(';').next().unwrap().to_string();
    for _ in 0..50 {
        let response = client
            .get(format!("http://127.0.0.1:{listen}/"))
            .header("cookie", &pair)
            .send()
            .unwrap();
        assert!(response.headers().get("set-cookie").is_none());
        assert_eq!(response.text().unwrap().trim(), body);
    }
}

#[test]
fn request_body_and_forwarded_headers_reach_the_upstream() {
    use std::io::{BufRead, BufReader, Read, Write};
    // A one-shot upstream that records what it receives and answers with the body it got.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    let received = std::thread::spawn(move || {
        let (stream, _) = upstream.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim_end().is_empty() {
                break;
            }
            head.push(line.trim_end().to_ascii_lowercase());
        }
        let length: usize = head
            .iter()
            .find_map(|h| h.strip_prefix("content-length: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = reader.into_inner();
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        stream.write_all(&body).unwrap();
        head
    });
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let config = json!({"version": 1, "apps": [app("web", listen, &[("v1", 10000, &[port])])]});
    assert_eq!(proxy.put_config(&config).0, 200);

    let response = http()
        .post(format!("http://127.0.0.1:{listen}/submit?x=1"))
        .header("x-forwarded-for", "10.1.2.3")
        .body("hello through the proxy")
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().unwrap(), "hello through the proxy");
    let head = received.join().unwrap();
    assert_eq!(head[0], "post /submit?x=1 http/1.1");
    assert!(
        head.contains(&"x-forwarded-for: 10.1.2.3, 127.0.0.1".to_string()),
        "{head:?}"
    );
    assert!(
        head.contains(&"x-forwarded-proto: http".to_string()),
        "{head:?}"
    );
}

/// What a [`counting_upstream`] received: each request's first line (lowercased) and body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A tiny keep-alive HTTP/1.1 upstream on 127.0.0.1 that answers every request with `answer`
/// and records it. Its threads end when the test process does.
fn counting_upstream(answer: &'static str) -> (u16, Received) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Default::default();
    let log = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line.trim_end().is_empty() {
                            break;
                        }
                        head.push(line.trim_end().to_ascii_lowercase());
                    }
                    let length: usize = head
                        .iter()
                        .find_map(|h| h.strip_prefix("content-length: "))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    log.lock().unwrap().push((head[0].clone(), body));
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if reader.get_mut().write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, received)
}

#[test]
fn mirror_copies_every_request_to_v2_while_v1_answers_them_all() {
    let (v1_port, v1_received) = counting_upstream("v1");
    let (v2_port, v2_received) = counting_upstream("v2");
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let mut web = app(
        "web",
        listen,
        &[("v1", 10000, &[v1_port]), ("v2", 0, &[v2_port])],
    );
    web["mirror"] = json!({"revision": "v2", "percent": 10000});
    let (status, body) = proxy.put_config(&json!({"version": 1, "apps": [web]}));
    assert_eq!(status, 200, "{body}");

    let client = http();
    let n = 50;
    for _ in 0..n {
        assert_eq!(get(&client, listen, &[]), (200, "v1".to_string()));
    }
    // A small body is mirrored too, once the primary upstream has read it.
    let response = client
        .post(format!("http://127.0.0.1:{listen}/submit"))
        .body("a mirrored body")
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().unwrap(), "v1");

    let total = n + 1;
    wait_until_or(
        &format!("{total} mirrored requests at v2"),
        || format!("{:?}\n{}", v2_received.lock().unwrap(), proxy.log_tail()),
        || (v2_received.lock().unwrap().len() >= total).then_some(()),
    );
    let mirrored = v2_received.lock().unwrap().clone();
    assert_eq!(mirrored.len(), total, "{mirrored:?}");
    assert_eq!(
        mirrored
            .iter()
            .filter(|(line, _)| line == "get / http/1.1")
            .count(),
        n
    );
    assert!(
        mirrored
            .iter()
            .any(|(line, body)| line == "post /submit http/1.1" && body == b"a mirrored body"),
        "{mirrored:?}"
    );
    assert_eq!(v1_received.lock().unwrap().len(), total);

    // Mirrored copies are not the mirror revision's traffic.
    let metrics = proxy.get_admin("/admin/v1/metrics");
    let revisions = metrics["revisions"].as_array().unwrap();
    let requests = |name: &str| {
        revisions
            .iter()
            .find(|r| r["revision"] == name)
            .map(|r| r["metrics"]["requests"].clone())
    };
    assert_eq!(requests("v1"), Some(json!(total)), "{metrics}");
    assert_eq!(requests("v2"), Some(json!(0)), "{metrics}");
}

#[test]
fn websocket_upgrade_is_passed_through_and_bytes_flow_both_ways() {
    use std::io::{BufRead, BufReader, Read, Write};
    // An upstream that accepts one upgrade handshake, answers 101 and then echoes bytes.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    let handshake = std::thread::spawn(move || {
        let (stream, _) = upstream.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim_end().is_empty() {
                break;
            }
            head.push(line.trim_end().to_ascii_lowercase());
        }
        let mut stream = reader.into_inner();
        stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\n\
                  upgrade: websocket\r\n\r\n",
            )
            .unwrap();
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stream.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        head
    });
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let config = json!({"version": 1, "apps": [app("web", listen, &[("v1", 10000, &[port])])]});
    assert_eq!(proxy.put_config(&config).0, 200);

    let mut client = std::net::TcpStream::connect(("127.0.0.1", listen)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    client
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: Upgrade\r\n\
              upgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              sec-websocket-version: 13\r\n\r\n",
        )
        .unwrap();
    // The answer's head, byte by byte so nothing after it is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).expect("the proxy answers");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");

    for message in [&b"hello through the tunnel"[..], b"and back again"] {
        client.write_all(message).unwrap();
        let mut echoed = vec![0u8; message.len()];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message);
    }
    drop(client);

    let upstream_head = handshake.join().unwrap();
    assert_eq!(upstream_head[0], "get /ws http/1.1");
    assert!(
        upstream_head.contains(&"upgrade: websocket".to_string()),
        "{upstream_head:?}"
    );
    assert!(
        upstream_head.contains(&"connection: upgrade".to_string()),
        "{upstream_head:?}"
    );
    assert!(
        upstream_head.contains(&"sec-websocket-key: dghlihnhbxbszsbub25jzq==".to_string()),
        "{upstream_head:?}"
    );
}

#[test]
fn an_upstream_that_resets_connections_answers_502_and_the_proxy_keeps_serving() {
    use std::os::fd::AsRawFd;
    // Accepts each connection and closes it with an RST (SO_LINGER 0) before answering.
    let resetting = TcpListener::bind("127.0.0.1:0").unwrap();
    let reset_port = resetting.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in resetting.incoming().take(64) {
            let Ok(stream) = stream else { continue };
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt on a socket we own, with a correctly sized value.
            unsafe {
                libc::setsockopt(
                    stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            drop(stream);
        }
    });
    let (_v1, v1_port) = demo_app("v1");
    let proxy = ProxyProcess::start(&[]);
    let (bad, good) = (free_port(), free_port());
    let config = json!({"version": 1, "apps": [
        app("bad", bad, &[("r1", 10000, &[reset_port])]),
        app("good", good, &[("v1", 10000, &[v1_port])])]});
    assert_eq!(proxy.put_config(&config).0, 200);

    let client = http();
    for _ in 0..5 {
        assert_eq!(get(&client, bad, &[]).0, 502);
        assert_eq!(get(&client, good, &[]), (200, "v1".to_string()));
    }
    let metrics = proxy.get_admin("/admin/v1/metrics");
    let bad_metrics = metrics["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["app"] == "bad")
        .unwrap()["metrics"]
        .clone();
    assert_eq!(bad_metrics["requests"], 5, "{metrics}");
    // Each is a failure for the revision: a 5xx answer, or a connection error once passive
    // health has ejected the endpoint.
    let failures = bad_metrics["responses"][4].as_u64().unwrap()
        + bad_metrics["connectErrors"].as_u64().unwrap()
        + bad_metrics["timeouts"].as_u64().unwrap();
    assert_eq!(failures, 5, "{metrics}");
}

/// Sends `n` requests (from 4 threads) through a split giving `v2_weight` (0.01 % units) to
/// v2 and checks the share v2 got, and what the proxy counted, within four standard deviations.
fn split_holds_within_four_sigma(v2_weight: u32, n: u32) {
    let (_v1, v1_port) = demo_app("v1");
    let (_v2, v2_port) = demo_app("v2");
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let config = json!({"version": 1, "apps": [app("web", listen, &[
        ("v1", 10_000 - v2_weight, &[v1_port]), ("v2", v2_weight, &[v2_port])])]});
    assert_eq!(proxy.put_config(&config).0, 200);

    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let client = http();
                let mut v2 = 0u32;
                for _ in 0..n / 4 {
                    let (status, body) = get(&client, listen, &[]);
                    assert_eq!(status, 200);
                    match body.as_str() {
                        "v1" => {}
                        "v2" => v2 += 1,
                        other => panic!("unexpected answer {other:?}"),
                    }
                }
                v2
            })
        })
        .collect();
    let v2: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let (p, total) = (f64::from(v2_weight) / 10_000.0, f64::from(n / 4 * 4));
    let sigma = (total * p * (1.0 - p)).sqrt();
    let deviation = (f64::from(v2) - total * p).abs();
    assert!(
        deviation <= 4.0 * sigma,
        "{v2} of {total} requests went to v2; expected {} ± {:.0}",
        total * p,
        4.0 * sigma
    );
    // The proxy counted the same split.
    let metrics = proxy.get_admin("/admin/v1/metrics");
    let counted: Vec<u64> = metrics["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metrics"]["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(counted, vec![total as u64 - u64::from(v2), u64::from(v2)]);
}

#[test]
fn weighted_split_of_90_10_holds_within_four_sigma_over_2000_requests() {
    split_holds_within_four_sigma(1_000, 2_000);
}

#[test]
fn a_5_percent_split_holds_within_four_sigma_over_20000_requests() {
    split_holds_within_four_sigma(500, 20_000);
}

#[test]
fn cookie_and_regex_header_matches_pin_requests_in_rule_order() {
    let (_v1, v1_port) = demo_app("v1");
    let (_v2, v2_port) = demo_app("v2");
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let mut web = app(
        "web",
        listen,
        &[("v1", 10000, &[v1_port]), ("v2", 0, &[v2_port])],
    );
    web["matches"] = json!([
        {"on": {"cookie": "beta"}, "match": "exact", "value": "no", "revision": "v1"},
        {"on": {"cookie": "beta"}, "match": "prefix", "value": "y", "revision": "v2"},
        {"on": {"header": "user-agent"}, "match": "regex", "value": "^canary-[0-9]+$", "revision": "v2"}
    ]);
    let (status, body) = proxy.put_config(&json!({"version": 1, "apps": [web]}));
    assert_eq!(status, 200, "{body}");

    let client = http();
    for _ in 0..20 {
        assert_eq!(get(&client, listen, &[("Cookie", "a=1; beta=yes")]).1, "v2");
        assert_eq!(get(&client, listen, &[("Cookie", "beta=no")]).1, "v1");
        // The first matching rule wins: the cookie pins to v1 before the header could pin v2.
        assert_eq!(
            get(
                &client,
                listen,
                &[("Cookie", "beta=no"), ("User-Agent", "canary-7")]
            )
            .1,
            "v1"
        );
        assert_eq!(get(&client, listen, &[("User-Agent", "canary-42")]).1, "v2");
        assert_eq!(get(&client, listen, &[("User-Agent", "canary-x")]).1, "v1");
        assert_eq!(get(&client, listen, &[]).1, "v1");
    }
}

#[test]
fn a_fault_ends_at_its_expiry_without_a_new_configuration() {
    let (_v1, v1_port) = demo_app("v1");
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut web = app("web", listen, &[("v1", 10000, &[v1_port])]);
    web["faults"] = json!([{"revision": "v1", "kind": {"abort": {"status": 503}},
                            "percent": 10000, "expiresAtMs": now_ms + 3_000}]);
    assert_eq!(
        proxy.put_config(&json!({"version": 1, "apps": [web]})).0,
        200
    );
    let client = http();
    // Aborted while the lease runs, then served again: nothing but the clock changed.
    let mut aborted = 0;
    wait_until("the fault's lease to run out", || {
        let (status, body) = get(&client, listen, &[]);
        match status {
            503 => {
                aborted += 1;
                std::thread::sleep(Duration::from_millis(50));
                None
            }
            200 => Some(body),
            other => panic!("unexpected status {other}"),
        }
    });
    assert!(aborted > 0, "the fault never fired");
    for _ in 0..20 {
        assert_eq!(get(&client, listen, &[]), (200, "v1".to_string()));
    }
    assert_eq!(proxy.get_admin("/admin/v1/config")["version"], 1);
}
