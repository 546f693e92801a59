//! `gauntlet proxy`: the data plane as its own process.
//!
//! It serves the configuration persisted in `<state-dir>/proxy/config.json` (if any) from the
//! moment it starts, so it keeps serving when the controller is gone, and takes new
//! configurations over the admin API (see `gauntlet_proxy::admin`), authenticated with the
//! state directory's `token` (created like the controller's if missing) or `--token-file`.
//!
//! Client connections are served thread-per-core, as nginx's worker processes and HAProxy's
//! threads serve them: `--workers` threads each run a single-threaded runtime with a listener
//! of its own on every application's address (`SO_REUSEPORT`) and its own upstream connection
//! pool, so a request never leaves the thread that accepted its connection. The admin API
//! runs on the main thread. Routing tables, endpoint state and metrics are shared by all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use gauntlet_proxy::{admin, persist, ApplyError, Options, Proxy};

use crate::paths;

#[derive(Args, Clone)]
pub struct ProxyArgs {
    /// Address of the admin API (configuration, metrics). Keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:7071")]
    admin: SocketAddr,
    /// A file holding the admin bearer token, instead of the state directory's `token`.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// How long an instance has to answer with response headers before the proxy answers 504.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Slow-client protection: how long a client has to complete the TLS handshake, to send
    /// each HTTP/1.1 request head (and so how long a kept-alive HTTP/1.1 connection may idle),
    /// and to send an HTTP/2 connection's first request. Such clients are disconnected.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// How long an HTTP/2 client connection may have no request open before it is closed.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// The largest request head in bytes (HTTP/1.1 request line and headers; HTTP/2 header
    /// list). Larger ones are answered 431 or disconnected.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(8192..))]
    max_header_bytes: u32,
    /// The most requests one HTTP/2 client connection may have open at once.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_streams: u32,
    /// Threads serving client connections, each with its own listeners and upstream
    /// connections. Defaults to the CPUs this process may run on.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
}

impl ProxyArgs {
    /// The data path's settings from the flags.
    fn options(&self) -> Options {
        Options {
            request_timeout: self.request_timeout,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_header_bytes: self.max_header_bytes as usize,
            max_concurrent_streams: self.max_concurrent_streams,
            ..Options::default()
        }
    }
}

pub fn run(args: ProxyArgs, state_dir: PathBuf) -> Result<ExitCode> {
    crate::up::init_tracing();
    let token = match &args.token_file {
        Some(file) => read_token(file)?,
        None => paths::ensure_state_dir(&state_dir)?,
    };
    let workers = match args.workers {
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let handles = (0..workers).map(spawn_worker).collect::<Result<Vec<_>>>()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args, state_dir, token, handles))
}

/// Starts worker `index`: a thread running a single-threaded runtime until the process exits.
fn spawn_worker(index: usize) -> Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a worker's async runtime")?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name(format!("proxy-worker-{index}"))
        .spawn(move || rt.block_on(std::future::pending::<()>()))
        .context("starting a worker thread")?;
    Ok(handle)
}

fn read_token(file: &Path) -> Result<String> {
    let token = std::fs::read_to_string(file)
        .with_context(|| format!("reading the admin token from {}", file.display()))?;
    let token = token.trim().to_string();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        file.display()
    );
    Ok(token)
}

async fn serve(
    args: ProxyArgs,
    state_dir: PathBuf,
    token: String,
    workers: Vec<tokio::runtime::Handle>,
) -> Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let proxy = Proxy::with_workers(args.options(), workers);
    if let Some(config) = persist::load(&state_dir)? {
        serve_persisted(&proxy, config).await;
    }
    let listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("listening on {} for the admin API", args.admin))?;
    let admin_addr = listener.local_addr()?;
    tracing::info!("proxy admin API listening on {admin_addr}");
    persist::write_process_info(
        &state_dir,
        &persist::ProcessInfo {
            pid: std::process::id(),
            admin: admin_addr,
        },
    )?;
    let api = admin::router(proxy, token, state_dir);
    tokio::select! {
        served = axum::serve(listener, api) => served.context("the admin API failed")?,
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Serves the persisted configuration, leaving out the applications that cannot be served now
/// (an address another process took while the proxy was down, a certificate file gone): the
/// others keep being served, and the controller's next push says what is wrong with the rest.
async fn serve_persisted(proxy: &Proxy, mut config: gauntlet_proxy::ProxyConfig) {
    let version = config.version;
    // Each failure leaves out at least one application, so this ends.
    for _ in 0..=config.apps.len() {
        let left_out: Vec<String> = match proxy.apply(config.clone()).await {
            Ok(()) => {
                tracing::info!(
                    version,
                    apps = config.apps.len(),
                    "serving the persisted configuration"
                );
                return;
            }
            Err(ApplyError::Bind { app, addr, source }) => {
                tracing::error!("persisted configuration {version}: cannot listen on {addr} for app `{app}`: {source}; serving the others");
                vec![app]
            }
            Err(ApplyError::Invalid(invalid)) => {
                tracing::error!("persisted configuration {version}: {invalid}; serving the others");
                invalid.0.iter().map(|e| e.app.clone()).collect()
            }
        };
        let before = config.apps.len();
        config
            .apps
            .retain(|app| !left_out.iter().any(|name| name == &app.name));
        if config.apps.len() == before {
            break;
        }
    }
    tracing::error!(
        "persisted configuration {version} could not be served; waiting for the controller"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        proxy: ProxyArgs,
    }

    #[test]
    fn flag_defaults_are_the_data_paths_defaults() {
        let parsed = Cli::parse_from(["gauntlet"]).proxy.options();
        let defaults = Options::default();
        assert_eq!(parsed.request_timeout, defaults.request_timeout);
        assert_eq!(parsed.header_read_timeout, defaults.header_read_timeout);
        assert_eq!(parsed.idle_timeout, defaults.idle_timeout);
        assert_eq!(parsed.max_header_bytes, defaults.max_header_bytes);
        assert_eq!(
            parsed.max_concurrent_streams,
            defaults.max_concurrent_streams
        );
    }

    #[test]
    fn zero_workers_are_refused() {
        assert!(Cli::try_parse_from(["gauntlet", "--workers", "0"]).is_err());
        let parsed = Cli::parse_from(["gauntlet", "--workers", "3"]).proxy;
        assert_eq!(parsed.workers, Some(3));
    }

    #[test]
    fn a_header_limit_below_8_kib_is_refused() {
        assert!(Cli::try_parse_from(["gauntlet", "--max-header-bytes", "1024"]).is_err());
    }
}
