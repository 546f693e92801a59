//! Commit to running: a signed push webhook received → the first instance of the new revision
//! started, over N commits (default 50), with the median and p99.
//!
//! A real controller (`gauntlet up`, release build) follows a real repository served by
//! `git daemon` on 127.0.0.1, with a one-hour polling interval so only the webhook can explain
//! a fetch. For each commit the benchmark takes the time just before sending the webhook and
//! reads the new instance's creation time (`createdMs`, stamped by the runtime when it creates
//! the instance) from the API. Anchors: Argo CD polls every 3 min by default, Flux every 1 min.
//!
//! The repository is reached over `git://` (default) or `file://` (`-- N file`): the first
//! includes `git daemon`'s own latency (about 40 ms a round trip on loopback here, two round
//! trips per new commit), the second shows the controller's own share.
//!
//! `cargo run --release -p gauntlet-bench --bin webhook [-- N [git|file]]`

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use gauntlet_bench::{free_port, gauntlet_bin, git, ms, quantile};
use hmac::{Mac, SimpleHmac};
use serde_json::Value;

const SECRET: &[u8] = b"bench-secret";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn manifest(bin: &Path, version: usize) -> String {
    format!(
        "apiVersion: gauntlet.dev/v1alpha1\nkind: Application\nmetadata: {{name: web}}\nspec:\n  process:\n    command: [\"{}\", \"demo-app\"]\n    args: [\"--listen\", \"127.0.0.1:${{PORT}}\", \"--version\", \"v{version}\"]\n    terminationGracePeriodSeconds: 2\n  readiness: {{httpGet: {{path: /healthz}}}}\n",
        bin.display()
    )
}

fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("N must be a number")?
        .unwrap_or(50);
    let transport = std::env::args().nth(2).unwrap_or_else(|| "git".into());
    let bin = gauntlet_bin()?;
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    let served = dir.path().join("served");
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&served)?;
    git(&work, &["init", "-q", "-b", "main"])?;
    std::fs::write(work.join("web.yaml"), manifest(&bin, 0))?;
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-q", "-m", "v0"])?;
    let bare = served.join("apps.git");
    git(
        &work,
        &["clone", "-q", "--bare", ".", &bare.display().to_string()],
    )?;
    git(
        &work,
        &["remote", "add", "origin", &bare.display().to_string()],
    )?;

    let git_port = free_port()?;
    let _daemon = Killed(
        Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={git_port}"),
                &format!("--base-path={}", served.display()),
                &served.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting git daemon")?,
    );
    wait("git daemon", || {
        std::net::TcpStream::connect(("127.0.0.1", git_port)).ok()
    })?;

    let repo_url = match transport.as_str() {
        "git" => format!("git://127.0.0.1:{git_port}/apps.git"),
        "file" => format!("file://{}", bare.display()),
        other => bail!("unknown transport {other}: use git or file"),
    };
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET)?;
    let state = dir.path().join("state");
    let api = format!("127.0.0.1:{}", free_port()?);
    let _controller = Killed(
        Command::new(&bin)
            .args(["up", "--repo", &repo_url])
            .args(["--interval", "1h", "--listen", &api])
            .arg("--state-dir")
            .arg(&state)
            .arg("--webhook-secret-file")
            .arg(&secret_file)
            .env("GAUNTLET_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the controller")?,
    );
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    wait("the controller", || {
        http.get(format!("http://{api}/api/v1/healthz")).send().ok()
    })?;
    let token = std::fs::read_to_string(state.join("token"))?
        .trim()
        .to_string();
    let status = |http: &reqwest::blocking::Client| -> Option<Value> {
        http.get(format!("http://{api}/api/v1/apps/web"))
            .bearer_auth(&token)
            .send()
            .ok()?
            .json()
            .ok()
    };
    let mut revision = wait("v0 ready", || {
        status(&http)
            .filter(|a| a["ready"] == 1 && a["instances"].as_array().is_some_and(|i| i.len() == 1))
    })?["revision"]
        .clone();

    let mut samples = Vec::with_capacity(n);
    for i in 1..=n {
        std::fs::write(work.join("web.yaml"), manifest(&bin, i))?;
        git(&work, &["commit", "-q", "-am", &format!("v{i}")])?;
        git(&work, &["push", "-q", "origin", "main"])?;
        let body = format!(r#"{{"ref":"refs/heads/main","after":"v{i}"}}"#);
        let mut mac = SimpleHmac::<sha2::Sha256>::new_from_slice(SECRET)?;
        mac.update(body.as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        let sent_ms = now_ms();
        let resp = http
            .post(format!("http://{api}/api/v1/webhooks/git"))
            .header("X-Hub-Signature-256", format!("sha256={sig}"))
            .body(body)
            .send()?;
        if resp.status().as_u16() != 202 {
            bail!("webhook answered {}", resp.status());
        }
        let app = wait("the new revision's instance", || {
            status(&http).filter(|a| {
                a["revision"] != revision
                    && a["instances"]
                        .as_array()
                        .is_some_and(|is| is.iter().any(|x| x["revision"] == a["revision"]))
            })
        })?;
        let created = app["instances"]
            .as_array()
            .and_then(|is| {
                is.iter()
                    .filter(|x| x["revision"] == app["revision"])
                    .filter_map(|x| x["createdMs"].as_u64())
                    .min()
            })
            .ok_or_else(|| anyhow!("no createdMs"))?;
        samples.push(Duration::from_millis(created.saturating_sub(sent_ms)));
        revision = app["revision"].clone();
        // Let the rollout finish before the next commit, as in real use.
        wait("the new revision ready alone", || {
            status(&http).filter(|a| {
                a["ready"] == 1
                    && a["instances"].as_array().is_some_and(|is| is.len() == 1)
                    && a["revision"] == revision
            })
        })?;
    }
    let median = quantile(&samples, 0.5);
    let p99 = quantile(&samples, 0.99);
    println!(
        "webhook received -> first instance of the new revision started, {n} commits over {transport}://"
    );
    println!(
        "  median {}   p99 {}   max {}",
        ms(median),
        ms(p99),
        ms(quantile(&samples, 1.0))
    );
    println!(
        "anchors (default polling): Flux 60 s -> {:.0}x; Argo CD 180 s -> {:.0}x (median vs interval)",
        60.0 / median.as_secs_f64().max(0.001),
        180.0 / median.as_secs_f64().max(0.001)
    );
    println!(
        "target: under 100 ms ({})",
        if p99 < Duration::from_millis(100) {
            "met at p99"
        } else if median < Duration::from_millis(100) {
            "met at the median, not at p99"
        } else {
            "NOT met"
        }
    );
    let _ = http
        .post(format!("http://{api}/api/v1/shutdown"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"stopInstances": true}))
        .send();
    wait("the controller to stop its instances", || {
        status(&http).is_none().then_some(())
    })
    .ok();
    Ok(())
}
