//! `gauntlet proxy`: the data plane as its own process.
//!
//! It serves the configuration persisted in `<state-dir>/proxy/config.json` (if any) from the
//! moment it starts, so it keeps serving when the controller is gone, and takes new
//! configurations over the admin API (see `gauntlet_proxy::admin`), authenticated with the
//! state directory's `token` (created like the controller's if missing) or `--token-file`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use gauntlet_proxy::{admin, persist, Options, Proxy};

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
}

pub fn run(args: ProxyArgs, state_dir: PathBuf) -> Result<ExitCode> {
    crate::up::init_tracing();
    let token = match &args.token_file {
        Some(file) => read_token(file)?,
        None => paths::ensure_state_dir(&state_dir)?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args, state_dir, token))
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

async fn serve(args: ProxyArgs, state_dir: PathBuf, token: String) -> Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let proxy = Proxy::new(Options {
        request_timeout: args.request_timeout,
        ..Options::default()
    });
    if let Some(config) = persist::load(&state_dir)? {
        let version = config.version;
        proxy
            .apply(config)
            .await
            .with_context(|| format!("serving the persisted configuration (version {version})"))?;
        tracing::info!(version, "serving the persisted configuration");
    }
    let listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("listening on {} for the admin API", args.admin))?;
    tracing::info!("proxy admin API listening on {}", args.admin);
    let api = admin::router(proxy, token, state_dir);
    tokio::select! {
        served = axum::serve(listener, api) => served.context("the admin API failed")?,
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    Ok(ExitCode::SUCCESS)
}
