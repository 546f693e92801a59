//! `gauntlet demo-app`: a small HTTP service whose knobs make good and bad releases.
//!
//! `GET /` answers `<version>` (failing with 500 for `--error-rate` of requests, after a delay
//! drawn from `--latency`), `GET /healthz` answers 200 once listening, `GET /version` answers
//! the version alone. It stops gracefully on SIGTERM, as a well-behaved service should.
//!
//! With `--downstream URL`, `GET /` first calls that URL (another application, through its
//! service listener), as a real service calls its dependencies. With `--downstream-timeout`
//! it gives up on a slow or failing dependency after that long and answers from a fallback
//! (`<version> (fallback)`); without it, it waits as long as the dependency takes and answers
//! 502 when the call fails: the release that does not survive a dependency's outage.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use clap::Args;

#[derive(Args, Clone)]
pub struct DemoAppArgs {
    /// Address to serve on, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: SocketAddr,
    /// The version this build reports.
    #[arg(long, default_value = "v1")]
    version: String,
    /// Fraction of `GET /` requests answered with 500 (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    error_rate: f64,
    /// Delay before each answer to `GET /`: a fixed duration (`20ms`) or a uniform range
    /// (`10ms..50ms`).
    #[arg(long, value_parser = parse_latency)]
    latency: Option<Latency>,
    /// A dependency `GET /` calls before answering, e.g. http://127.0.0.1:8081/.
    #[arg(long)]
    downstream: Option<String>,
    /// Give up on the dependency after this long and answer from a fallback; without it,
    /// wait as long as it takes.
    #[arg(long, value_parser = humantime::parse_duration, requires = "downstream")]
    downstream_timeout: Option<Duration>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s} is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err("the error rate is a fraction between 0 and 1".into());
    }
    Ok(v)
}

/// A latency distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    min: Duration,
    max: Duration,
}

fn parse_latency(s: &str) -> Result<Latency, String> {
    let parse = |p: &str| humantime::parse_duration(p.trim()).map_err(|e| format!("{p}: {e}"));
    match s.split_once("..") {
        Some((a, b)) => {
            let (min, max) = (parse(a)?, parse(b)?);
            if max < min {
                return Err("the range's end is before its start".into());
            }
            Ok(Latency { min, max })
        }
        None => {
            let d = parse(s)?;
            Ok(Latency { min: d, max: d })
        }
    }
}

struct App {
    version: String,
    error_rate: f64,
    latency: Option<Latency>,
    rng: AtomicU64,
    downstream: Option<Downstream>,
}

struct Downstream {
    url: String,
    client: reqwest::Client,
    /// With a timeout, a failed call is answered from a fallback.
    timeout: Option<Duration>,
}

impl Downstream {
    /// Calls the dependency: `Ok(true)` when it answered 2xx, `Ok(false)` when it failed
    /// and a fallback is allowed, `Err` when the caller must fail.
    async fn call(&self) -> Result<bool, String> {
        let mut request = self.client.get(&self.url);
        if let Some(t) = self.timeout {
            request = request.timeout(t);
        }
        let outcome = match request.send().await {
            Ok(r) if r.status().is_success() => return Ok(true),
            Ok(r) => format!("status {}", r.status()),
            Err(e) => e.to_string(),
        };
        match self.timeout {
            Some(_) => Ok(false),
            None => Err(outcome),
        }
    }
}

impl App {
    /// A uniform draw in [0, 1) from a shared xorshift generator: demo-grade randomness with
    /// no dependency.
    fn uniform(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        loop {
            let mut y = x;
            y ^= y << 13;
            y ^= y >> 7;
            y ^= y << 17;
            match self
                .rng
                .compare_exchange_weak(x, y, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (y >> 11) as f64 / (1u64 << 53) as f64,
                Err(now) => x = now,
            }
        }
    }
}

async fn root(State(app): State<Arc<App>>) -> (StatusCode, String) {
    if let Some(l) = app.latency {
        let span = l.max.saturating_sub(l.min);
        tokio::time::sleep(l.min + span.mul_f64(app.uniform())).await;
    }
    let mut fallback = "";
    if let Some(downstream) = &app.downstream {
        match downstream.call().await {
            Ok(true) => {}
            Ok(false) => fallback = " (fallback)",
            Err(e) => {
                return (
                    StatusCode::BAD_GATEWAY,
                    format!("{}: the dependency failed: {e}\n", app.version),
                )
            }
        }
    }
    if app.error_rate > 0.0 && app.uniform() < app.error_rate {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{} failed\n", app.version),
        );
    }
    (StatusCode::OK, format!("{}{fallback}\n", app.version))
}

pub fn run(args: DemoAppArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: DemoAppArgs) -> Result<ExitCode> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let app = Arc::new(App {
        version: args.version.clone(),
        error_rate: args.error_rate,
        latency: args.latency,
        rng: AtomicU64::new(seed ^ u64::from(std::process::id())),
        downstream: match &args.downstream {
            Some(url) => Some(Downstream {
                url: url.clone(),
                client: reqwest::Client::builder()
                    .no_proxy()
                    .build()
                    .context("building the downstream client")?,
                timeout: args.downstream_timeout,
            }),
            None => None,
        },
    });
    let version = args.version.clone();
    let router = Router::new()
        .route("/", get(root))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/version",
            get(move || async move { format!("{version}\n") }),
        )
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!(
        "demo-app {} listening on {} (error rate {}, latency {:?})",
        args.version, args.listen, args.error_rate, args.latency
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            term.recv().await;
            println!("demo-app {}: SIGTERM, shutting down", args.version);
        })
        .await
        .context("serving")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_accepts_a_fixed_value_or_a_range() {
        assert_eq!(
            parse_latency("20ms"),
            Ok(Latency {
                min: Duration::from_millis(20),
                max: Duration::from_millis(20)
            })
        );
        assert_eq!(
            parse_latency("10ms..50ms"),
            Ok(Latency {
                min: Duration::from_millis(10),
                max: Duration::from_millis(50)
            })
        );
        assert!(parse_latency("50ms..10ms").is_err());
        assert!(parse_rate("1.5").is_err());
    }

    #[test]
    fn uniform_draws_stay_in_the_unit_interval_and_vary() {
        let app = App {
            version: "v".into(),
            error_rate: 0.0,
            latency: None,
            rng: AtomicU64::new(12345),
            downstream: None,
        };
        let draws: Vec<f64> = (0..1000).map(|_| app.uniform()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }
}
