//! `gauntlet load`: a bounded, open-loop HTTP load generator for tests and demos.
//!
//! It sends GET requests at a fixed rate (open loop: a slow answer never delays the next
//! request, so a stall shows up as failures or latency rather than as fewer requests) for a
//! fixed duration, then prints one JSON summary on stdout: how many were sent, answered with a
//! 2xx, and failed, by status and by error, the response bodies seen (the demo application
//! answers its version) and the first failures with their time. Every request has a timeout,
//! at most [`MAX_IN_FLIGHT`] are outstanding, and the run ends by itself.
//!
//! `--progress-file` is rewritten with the running counts four times a second, so a test can
//! wait until load flows before it acts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

/// Requests outstanding at once; beyond it a tick is counted as failed (`overload`).
const MAX_IN_FLIGHT: usize = 2_000;
/// Failures listed individually in the summary.
const FAILURES_LISTED: usize = 20;

#[derive(Args)]
pub struct LoadArgs {
    /// The URL to GET (http only).
    #[arg(long)]
    url: String,
    /// Requests per second.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    rate: u32,
    /// How long to send for (at most 10 minutes).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// How long one request may take.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Rewritten with the running counts four times a second.
    #[arg(long)]
    progress_file: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > Duration::from_secs(600) {
        return Err("at most 10m".into());
    }
    Ok(d)
}

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    sent: u64,
    ok: u64,
    failed: u64,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    bodies: BTreeMap<String, u64>,
    /// The first failures: milliseconds since the start and what happened.
    failures: Vec<(u64, String)>,
}

impl Summary {
    fn fail(&mut self, at_ms: u64, what: String, error: Option<&str>) {
        self.failed += 1;
        if let Some(kind) = error {
            *self.errors.entry(kind.to_string()).or_default() += 1;
        }
        if self.failures.len() < FAILURES_LISTED {
            self.failures.push((at_ms, what));
        }
    }
}

pub fn run(args: LoadArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = rt.block_on(generate(args))?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}

async fn generate(args: LoadArgs) -> Result<Summary> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(args.timeout)
        .pool_max_idle_per_host(256)
        .build()?;
    let summary = Arc::new(Mutex::new(Summary::default()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let total = (u128::from(args.rate) * args.duration.as_millis() / 1000) as u64;
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let started = Instant::now();
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut last_progress = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..total {
        ticks.tick().await;
        let at_ms = started.elapsed().as_millis() as u64;
        lock(&summary).sent += 1;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            lock(&summary).fail(
                at_ms,
                "too many requests in flight".into(),
                Some("overload"),
            );
            continue;
        };
        let client = client.clone();
        let url = args.url.clone();
        let shared = Arc::clone(&summary);
        tasks.spawn(async move {
            let outcome = request(&client, &url).await;
            drop(permit);
            let mut s = lock(&shared);
            match outcome {
                Ok((status, body)) => {
                    *s.statuses.entry(status).or_default() += 1;
                    if (200..300).contains(&status) {
                        s.ok += 1;
                        *s.bodies.entry(body).or_default() += 1;
                    } else {
                        s.fail(at_ms, format!("status {status}: {body}"), None);
                    }
                }
                Err((kind, detail)) => s.fail(at_ms, format!("{kind}: {detail}"), Some(kind)),
            }
        });
        while tasks.try_join_next().is_some() {}
        if let Some(path) = &args.progress_file {
            if last_progress.elapsed() >= Duration::from_millis(250) {
                last_progress = Instant::now();
                write_progress(path, &lock(&summary));
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let summary = lock(&summary).clone();
    if let Some(path) = &args.progress_file {
        write_progress(path, &summary);
    }
    Ok(summary)
}

/// The status and the body (trimmed, at most 80 bytes), or the kind of error and its detail.
async fn request(
    client: &reqwest::Client,
    url: &str,
) -> Result<(u16, String), (&'static str, String)> {
    let classify = |e: reqwest::Error| {
        let kind = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else {
            "other"
        };
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        (kind, detail)
    };
    let response = client.get(url).send().await.map_err(classify)?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(classify)?;
    Ok((status, body.trim().chars().take(80).collect()))
}

fn write_progress(path: &PathBuf, summary: &Summary) {
    let tmp = path.with_extension("tmp");
    if let Ok(text) = serde_json::to_string(summary) {
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
