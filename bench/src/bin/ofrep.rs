//! Flags over the network: OFREP single-flag evaluations per second with their latency
//! quantiles, and commit-to-served latency, against a real `gauntlet up` on loopback.
//!
//! The controller (release build) follows a temporary repository holding one `FeatureFlags`
//! document. Load: C concurrent HTTP/1.1 keep-alive connections (default 32), each sending
//! `POST /ofrep/v1/evaluate/flags/new-checkout` (a `fractional` split) back to back with one of
//! 1,024 targeting keys, for D seconds (default 10, at most 20); a raw client over tokio's
//! `TcpStream`, so the load generator costs little next to the server it measures. Both share
//! this machine's cores. Then commit-to-served, over N commits (default 20): commit a flag
//! change, take the time, send a signed push webhook, and poll OFREP until the new value is
//! served. Anchors: flagd's OFREP; the target is tens of thousands a second on 2 cores and
//! under 1 s from commit to served.
//!
//! `cargo run --release -p gauntlet-bench --bin ofrep [-- SECONDS [CONNECTIONS [COMMITS]]]`

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gauntlet_bench::{free_port, gauntlet_bin, git, ms, quantile};
use hmac::{Mac, SimpleHmac};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &[u8] = b"bench-secret";
const KEYS: usize = 1024;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn flags(percent: u32) -> String {
    format!(
        "apiVersion: gauntlet.dev/v1alpha1\nkind: FeatureFlags\nmetadata: {{name: bench}}\nspec:\n  flags:\n    new-checkout:\n      state: ENABLED\n      variants: {{on: true, off: false}}\n      defaultVariant: off\n      targeting: {{fractional: [[on, {percent}], [off, {}]]}}\n    generation:\n      state: ENABLED\n      variants: {{current: {percent}}}\n      defaultVariant: current\n",
        100 - percent
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

/// One keep-alive connection sending `requests` round robin until `until`; the latency of each.
async fn connection(addr: String, requests: Vec<Vec<u8>>, until: Instant) -> Result<Vec<u32>> {
    let mut stream = TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut buf = vec![0u8; 16 * 1024];
    let mut i = 0;
    while Instant::now() < until {
        let started = Instant::now();
        stream.write_all(&requests[i % requests.len()]).await?;
        i += 1;
        // Read one response: headers, then Content-Length bytes of body.
        let mut filled = 0;
        let body_end = loop {
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                bail!("the controller closed the connection");
            }
            filled += n;
            if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&buf[..end])?;
                if !head.starts_with("HTTP/1.1 200") {
                    bail!("unexpected answer: {head}");
                }
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .ok_or_else(|| anyhow!("no content-length"))?;
                break end + 4 + length;
            }
        };
        while filled < body_end {
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                bail!("the controller closed the connection");
            }
            filled += n;
        }
        latencies.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    Ok(latencies)
}

fn main() -> Result<()> {
    let arg = |i: usize, default: u64| -> Result<u64> {
        std::env::args()
            .nth(i)
            .map(|s| s.parse())
            .transpose()
            .context("arguments are numbers: SECONDS CONNECTIONS COMMITS")
            .map(|v| v.unwrap_or(default))
    };
    let seconds = arg(1, 10)?.clamp(1, 20);
    let connections = arg(2, 32)?.clamp(1, 1024) as usize;
    let commits = arg(3, 20)?.clamp(1, 200) as usize;

    let bin = gauntlet_bin()?;
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo)?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    std::fs::write(repo.join("flags.yaml"), flags(10))?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "flags"])?;
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET)?;
    let api = format!("127.0.0.1:{}", free_port()?);
    let _controller = Killed(
        Command::new(&bin)
            .args(["up", "--repo"])
            .arg(&repo)
            .args(["--interval", "1h", "--listen", &api])
            .args(["--proxy-admin", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--webhook-secret-file")
            .arg(&secret_file)
            .env("GAUNTLET_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the controller")?,
    );
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let generation = |http: &reqwest::blocking::Client| -> Option<u64> {
        let v: serde_json::Value = http
            .post(format!("http://{api}/ofrep/v1/evaluate/flags/generation"))
            .body("{}")
            .send()
            .ok()?
            .json()
            .ok()?;
        v["value"].as_u64()
    };
    wait("the flags served", || {
        generation(&http).filter(|g| *g == 10)
    })?;

    // Load.
    let requests: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| {
            let body = format!(r#"{{"context":{{"targetingKey":"user-{i}"}}}}"#);
            format!(
                "POST /ofrep/v1/evaluate/flags/new-checkout HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let latencies: Vec<u32> = rt.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|c| {
                let mut mine = requests.clone();
                mine.rotate_left(c * 7 % KEYS);
                tokio::spawn(connection(api.clone(), mine, until))
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.map_err(|e| anyhow!("{e}"))??);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    let elapsed = started.elapsed();
    let samples: Vec<Duration> = latencies
        .iter()
        .map(|us| Duration::from_micros(u64::from(*us)))
        .collect();
    println!(
        "OFREP single-flag evaluations (fractional flag, {connections} keep-alive connections, {seconds} s, loopback, load generator on the same 2 cores):"
    );
    println!(
        "  {} evaluations, {:.0} per second; latency p50 {}, p99 {}, max {}",
        samples.len(),
        samples.len() as f64 / elapsed.as_secs_f64(),
        ms(quantile(&samples, 0.5)),
        ms(quantile(&samples, 0.99)),
        ms(quantile(&samples, 1.0)),
    );

    // Commit to served.
    let mut served = Vec::with_capacity(commits);
    for i in 1..=commits {
        let percent = 10 + (i as u32 % 80);
        std::fs::write(repo.join("flags.yaml"), flags(percent))?;
        git(&repo, &["commit", "-q", "-am", &format!("{percent} %")])?;
        let body = r#"{"ref":"refs/heads/main"}"#;
        let mut mac = SimpleHmac::<sha2::Sha256>::new_from_slice(SECRET)?;
        mac.update(body.as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        let sent = Instant::now();
        let resp = http
            .post(format!("http://{api}/api/v1/webhooks/git"))
            .header("X-Hub-Signature-256", format!("sha256={sig}"))
            .body(body)
            .send()?;
        if resp.status().as_u16() != 202 {
            bail!("webhook answered {}", resp.status());
        }
        wait("the new flags served", || {
            generation(&http).filter(|g| *g == u64::from(percent))
        })?;
        served.push(sent.elapsed());
    }
    println!(
        "commit to served ({commits} commits, push webhook -> first OFREP answer with the new value, polled back to back):"
    );
    println!(
        "  median {}, p99 {}, max {} (target: under 1 s)",
        ms(quantile(&served, 0.5)),
        ms(quantile(&served, 0.99)),
        ms(quantile(&served, 1.0)),
    );
    Ok(())
}
