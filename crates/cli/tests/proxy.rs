//! End-to-end: `gauntlet proxy` as a real process in front of real `gauntlet demo-app`
//! processes, configured over its admin API, on 127.0.0.1 only. Each test names the behaviour
//! it proves.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, wait_until, BIN, DEADLINE};
use serde_json::{json, Value};

/// A child process killed when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTP client")
}

/// A `gauntlet demo-app` answering `version` on a port of its own, once it answers.
fn demo_app(version: &str) -> (Process, u16) {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["demo-app", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--version", version])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gauntlet demo-app starts");
    let process = Process(child);
    let client = http();
    wait_until(&format!("demo-app {version} on {port}"), || {
        client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
    });
    (process, port)
}

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

/// One application on `listen` with `(revision, weight, endpoint ports)`.
fn app(name: &str, listen: u16, revisions: &[(&str, u32, &[u16])]) -> Value {
    let revisions: Vec<Value> = revisions
        .iter()
        .map(|(revision, weight, ports)| {
            let endpoints: Vec<Value> = ports
                .iter()
                .map(|p| json!({"addr": format!("127.0.0.1:{p}")}))
                .collect();
            json!({"name": revision, "weight": weight, "endpoints": endpoints})
        })
        .collect();
    json!({"name": name, "listen": format!("127.0.0.1:{listen}"), "revisions": revisions})
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
fn weighted_split_of_90_10_holds_within_four_sigma_over_2000_requests() {
    let (_v1, v1_port) = demo_app("v1");
    let (_v2, v2_port) = demo_app("v2");
    let proxy = ProxyProcess::start(&[]);
    let listen = free_port();
    let config = json!({"version": 1, "apps": [app("web", listen, &[
        ("v1", 9000, &[v1_port]), ("v2", 1000, &[v2_port])])]});
    assert_eq!(proxy.put_config(&config).0, 200);

    let client = http();
    let n = 2000u32;
    let mut v2 = 0u32;
    for _ in 0..n {
        let (status, body) = get(&client, listen, &[]);
        assert_eq!(status, 200);
        match body.as_str() {
            "v1" => {}
            "v2" => v2 += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let (p, n) = (0.1, f64::from(n));
    let sigma = (n * p * (1.0 - p)).sqrt();
    let deviation = (f64::from(v2) - n * p).abs();
    assert!(
        deviation <= 4.0 * sigma,
        "{v2} of {n} requests went to v2; expected {} ± {:.0}",
        n * p,
        4.0 * sigma
    );
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
