//! Fixtures for end-to-end tests of `gauntlet proxy` on its own: the real binary with its own
//! state directory, configured over its admin API; `gauntlet demo-app` upstreams; and a tiny
//! upstream that records the request heads it receives. Everything listens on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, wait_until, BIN, DEADLINE};

/// A child process killed when the test ends, however it ends.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A blocking HTTP/1.1 client that ignores proxy settings of the environment.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTP client")
}

/// A `gauntlet demo-app` answering `version` on a port of its own, once it answers.
pub fn demo_app(version: &str) -> (Process, u16) {
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

/// A `gauntlet proxy` process with its own state directory and admin port, killed on drop.
pub struct Proxy {
    pub state: tempfile::TempDir,
    pub admin: u16,
    child: Option<Process>,
    http: reqwest::blocking::Client,
}

impl Proxy {
    /// Starts `gauntlet proxy` with `extra` flags and waits until its admin API answers.
    pub fn start(extra: &[&str]) -> Proxy {
        let state = tempfile::tempdir().expect("a temporary state directory");
        let admin = free_port();
        let log = std::fs::File::create(state.path().join("proxy.log")).expect("proxy.log");
        let child = Command::new(BIN)
            .arg("--state-dir")
            .arg(state.path())
            .args(["proxy", "--admin", &format!("127.0.0.1:{admin}")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("proxy.log opens twice"))
            .stderr(log)
            .spawn()
            .expect("gauntlet proxy starts");
        let mut proxy = Proxy {
            state,
            admin,
            child: Some(Process(child)),
            http: http(),
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(Process(child)) = proxy.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("the proxy exited ({status})\n{}", proxy.log_tail());
                }
            }
            let up = proxy
                .http
                .get(proxy.admin_url("/metrics"))
                .send()
                .is_ok_and(|r| r.status().is_success());
            if up {
                return proxy;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the proxy's admin API\n{}",
                proxy.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.state.path().join("proxy.log")
    }

    pub fn log_tail(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.state.path().join("token"))
            .expect("the proxy created a token")
            .trim()
            .to_string()
    }

    /// PUT /admin/v1/config: the status and the JSON answer.
    pub fn put_config(&self, config: &Value) -> (u16, Value) {
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

    pub fn get_admin(&self, path: &str) -> Value {
        let response = self
            .http
            .get(self.admin_url(path))
            .bearer_auth(self.token())
            .send()
            .expect("the admin API answers");
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().expect("a JSON answer")
    }
}

/// One application on `listen` with `(revision, weight, endpoint ports)`, in the proxy's
/// configuration format.
pub fn app(name: &str, listen: u16, revisions: &[(&str, u32, &[u16])]) -> Value {
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

/// The request heads a [`recording_upstream`] received, each as lowercased lines.
pub type Heads = Arc<Mutex<Vec<Vec<String>>>>;

/// A keep-alive HTTP/1.1 upstream on 127.0.0.1 that answers every request with `answer` and
/// records its head (request line and headers, lowercased). Request bodies are read by
/// `Content-Length` only. Its threads end when the test process does.
pub fn recording_upstream(answer: &'static str) -> (u16, Heads) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("an upstream port");
    let port = listener.local_addr().expect("bound").port();
    let heads: Heads = Default::default();
    let log = Arc::clone(&heads);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let log = Arc::clone(&log);
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
                    log.lock().expect("not poisoned").push(head);
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
    (port, heads)
}
