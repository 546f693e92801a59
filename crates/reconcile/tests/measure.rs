//! Measurements against real parts: a real Prometheus scraping a target served here, a local
//! HTTP server for web metrics, and real processes for command metrics. Everything listens
//! on 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gauntlet_reconcile::measure::{measure, MeasureContext};
use gauntlet_rollout::analysis::Provider;
use serde_json::{json, Value};

fn provider(v: Value) -> Provider {
    serde_json::from_value(v).expect("a valid provider")
}

async fn measured(v: Value) -> Result<Value, String> {
    measure(&provider(v), &MeasureContext::default()).await
}

/// A request as the test server saw it.
struct Request {
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A tiny HTTP/1.1 server on 127.0.0.1, one connection at a time, `Connection: close`.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(respond: impl Fn(&Request) -> (u16, &'static str, String) + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("local addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let _ = serve(conn, &respond);
            }
        });
        Server {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: TcpStream,
    respond: &impl Fn(&Request) -> (u16, &'static str, String),
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = Vec::new();
    // Headers end at an empty line; a request has far fewer than 100.
    for _ in 0..100 {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let (status, content_type, body) = respond(&Request { path, headers });
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

// ---------------------------------------------------------------------------------------------
// prometheus

/// A Prometheus started for one test; killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, target_port: u16) -> Prometheus {
        let binary = which("prometheus").unwrap_or_else(|| {
            panic!(
                "`prometheus` is not installed: .ci/run installs it (Debian's `prometheus` \
                 package: apt-get install -y prometheus)"
            )
        });
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: test\n    static_configs:\n\
                 \x20     - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("create prometheus.log");
        let err = out.try_clone().expect("clone log handle");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, log }
    }

    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn query(&self, query: &str) -> Result<Value, String> {
        measured(json!({"prometheus": {"address": self.address(), "query": query}})).await
    }

    /// Waits until `query` returns data: Prometheus is up and has scraped the target.
    async fn wait_for(&mut self, query: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last = self.query(query).await;
            if last.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus returned no data for `{query}` within 60s (last: {last:?}):\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test]
async fn prometheus_scalars_vectors_empty_results_nan_and_errors_map_to_values() {
    let target = Server::start(|req| match req.path.as_str() {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            "# TYPE test_metric gauge\n\
             test_metric{rev=\"a\"} 0.5\n\
             test_metric{rev=\"b\"} 0.25\n\
             # TYPE test_nan gauge\n\
             test_nan NaN\n"
                .to_string(),
        ),
        _ => (404, "text/plain", "not found".into()),
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut prom = Prometheus::start(dir.path(), target.port);
    prom.wait_for("test_metric").await;

    assert_eq!(
        prom.query("test_metric{rev=\"a\"}").await,
        Ok(json!(0.5)),
        "a vector with one sample is a number"
    );
    assert_eq!(
        prom.query("sort_desc(test_metric)").await,
        Ok(json!([0.5, 0.25])),
        "a vector with several samples is an array"
    );
    assert_eq!(
        prom.query("scalar(test_metric{rev=\"b\"}) * 2").await,
        Ok(json!(0.5)),
        "a scalar is a number"
    );
    assert_eq!(
        prom.query("test_metric{rev=\"nope\"}").await,
        Err("the query returned no data".to_string())
    );
    assert_eq!(prom.query("test_nan").await, Ok(json!("NaN")));
    let err = prom.query("sum(test_metric").await.unwrap_err();
    assert!(
        err.starts_with(&format!("prometheus at {}: bad_data: ", prom.address()))
            && err.contains("parse error"),
        "{err}"
    );
    let err = prom.query("test_metric[1m]").await.unwrap_err();
    assert!(err.contains("range vector"), "{err}");

    let err = measured(json!({"prometheus": {
        "address": format!("http://127.0.0.1:{}", free_port()), "query": "up"}}))
    .await
    .unwrap_err();
    assert!(err.starts_with("prometheus at http://127.0.0.1:"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// web

fn json_api() -> Server {
    Server::start(|req| match req.path.as_str() {
        "/ratio" => (
            200,
            "application/json",
            r#"{"data": {"ratio": 0.97}, "items": [{"value": 3}, {"value": 4}]}"#.into(),
        ),
        "/secret" if req.header("authorization") == Some("Bearer t0ken") => {
            (200, "application/json", "true".into())
        }
        "/secret" => (401, "text/plain", "who are you".into()),
        "/down" => (503, "text/plain", "overloaded".into()),
        "/text" => (200, "text/plain", "fine, thanks".into()),
        _ => (404, "text/plain", "not found".into()),
    })
}

#[tokio::test]
async fn web_metrics_select_a_json_path_and_send_headers() {
    let api = json_api();
    let web = |url: String, extra: Value| {
        let mut p = json!({"url": url});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        measured(json!({ "web": p }))
    };
    assert_eq!(
        web(api.url("/ratio"), json!({"jsonPath": "$.data.ratio"})).await,
        Ok(json!(0.97))
    );
    assert_eq!(
        web(api.url("/ratio"), json!({"jsonPath": "$.items[1].value"})).await,
        Ok(json!(4))
    );
    assert_eq!(
        web(api.url("/ratio"), json!({})).await,
        Ok(json!({"data": {"ratio": 0.97}, "items": [{"value": 3}, {"value": 4}]}))
    );
    assert_eq!(
        web(
            api.url("/secret"),
            json!({"headers": {"Authorization": "Bearer t0ken"}})
        )
        .await,
        Ok(json!(true))
    );
}

#[tokio::test]
async fn web_metrics_fail_on_bad_status_bad_body_missing_path_and_timeout() {
    let api = json_api();
    let err = measured(json!({"web": {"url": api.url("/secret")}}))
        .await
        .unwrap_err();
    assert!(
        err.contains("HTTP 401") && err.contains("who are you"),
        "{err}"
    );
    let err = measured(json!({"web": {"url": api.url("/down")}}))
        .await
        .unwrap_err();
    assert!(err.contains("HTTP 503"), "{err}");
    let err = measured(json!({"web": {"url": api.url("/text")}}))
        .await
        .unwrap_err();
    assert!(err.contains("not JSON"), "{err}");
    let err = measured(json!({"web": {"url": api.url("/ratio"), "jsonPath": "$.data.p99"}}))
        .await
        .unwrap_err();
    assert!(err.contains("no field `p99`"), "{err}");

    // Accepted by the kernel, never answered.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let err = measured(json!({"web": {
        "url": format!("http://127.0.0.1:{port}/"), "timeout": "200ms"}}))
    .await
    .unwrap_err();
    assert!(err.contains("timeout (200ms)"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// command

async fn run(argv: &[&str], timeout: Option<&str>) -> Result<Value, String> {
    let mut p = json!({"command": argv});
    if let Some(t) = timeout {
        p["timeout"] = json!(t);
    }
    measured(json!({ "command": p })).await
}

#[tokio::test]
async fn commands_yield_their_json_output_or_true_and_false_when_they_fail() {
    assert_eq!(run(&["sh", "-c", "echo 0.5"], None).await, Ok(json!(0.5)));
    assert_eq!(
        run(&["sh", "-c", r#"echo '{"p99": 120}'"#], None).await,
        Ok(json!({"p99": 120}))
    );
    assert_eq!(
        run(&["sh", "-c", "echo checking; echo 0.02"], None).await,
        Ok(json!(0.02))
    );
    assert_eq!(run(&["true"], None).await, Ok(json!(true)));
    assert_eq!(
        run(&["sh", "-c", "echo all good"], None).await,
        Ok(json!(true))
    );
    assert_eq!(
        run(&["sh", "-c", "echo 0.5; echo broken >&2; exit 3"], None).await,
        Ok(json!(false))
    );
    assert_eq!(
        run(&["sh", "-c", "kill -9 $$"], None).await,
        Ok(json!(false))
    );
    // Far more than the kept 64 KiB: the pipe is drained and the last line still read.
    assert_eq!(
        run(
            &["sh", "-c", "yes log-line | head -n 100000; echo 0.25"],
            None
        )
        .await,
        Ok(json!(0.25))
    );
    let err = run(&["/nonexistent/gauntlet-probe"], None)
        .await
        .unwrap_err();
    assert!(
        err.starts_with("cannot run `/nonexistent/gauntlet-probe`"),
        "{err}"
    );
    assert_eq!(run(&[], None).await, Err("the command is empty".into()));
}

#[tokio::test]
async fn a_command_past_its_timeout_is_an_error_and_its_process_group_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
    let err = run(&["sh", "-c", &script], Some("2s")).await.unwrap_err();
    assert_eq!(err, "`sh` did not finish within the timeout (2s): killed");

    // The background sleep was in the command's group: it is gone too.
    let pid = std::fs::read_to_string(&pid_file).expect("the script wrote its child's pid");
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Gone, or a zombie waiting for a reaper that is not us.
        let running = std::fs::read_to_string(&stat)
            .ok()
            .and_then(|s| {
                let state = s[s.rfind(')')? + 1..]
                    .split_whitespace()
                    .next()?
                    .to_string();
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false);
        if !running {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the background sleep {pid} survived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let err = run(&["sleep", "5"], Some("200ms")).await.unwrap_err();
    assert!(err.contains("timeout (200ms)"), "{err}");
}
