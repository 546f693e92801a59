//! `gauntlet up`: the controller process. Wires the Git source, the local runtime, the store
//! and the API together, then runs until SIGINT/SIGTERM or `gauntlet down`.
//!
//! Stopping the controller leaves the instances running (they are re-adopted at the next
//! start), so a controller upgrade or crash never takes an application down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use gauntlet_api::{ApiConfig, Shutdown};
use gauntlet_reconcile::{Controller, ControllerConfig};
use gauntlet_runtime::local::LocalRuntime;
use gauntlet_runtime::Runtime;
use gauntlet_source::{Auth, Secret, SourceConfig};
use gauntlet_store::{Actor, AuditRecord, Store};
use tokio::sync::watch;

use crate::paths;

#[derive(Args)]
pub struct UpArgs {
    /// The Git repository: a local path, file://, git://, http(s):// or ssh URL.
    #[arg(long)]
    repo: String,
    /// Branch, tag or full commit SHA to follow.
    #[arg(long, default_value = "main")]
    branch: String,
    /// Sub-directory of the repository holding the manifests.
    #[arg(long, default_value = "")]
    path: String,
    /// Address of the controller's API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// How often to poll the repository (at least 1s).
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    interval: Duration,
    /// File holding the secret shared with the Git host for push webhooks
    /// (or set GAUNTLET_WEBHOOK_SECRET).
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
    /// File holding a bearer token for an http(s) repository.
    #[arg(long, conflicts_with_all = ["git_token_env", "git_username"])]
    git_token_file: Option<PathBuf>,
    /// Environment variable holding a bearer token for an http(s) repository.
    #[arg(long)]
    git_token_env: Option<String>,
    /// User name for HTTP basic authentication; the password comes from
    /// --git-password-file or --git-password-env.
    #[arg(long)]
    git_username: Option<String>,
    #[arg(long)]
    git_password_file: Option<PathBuf>,
    #[arg(long)]
    git_password_env: Option<String>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("the polling interval must be at least 1s".into());
    }
    Ok(d)
}

fn auth(args: &UpArgs) -> Result<Option<Auth>> {
    if let Some(f) = &args.git_token_file {
        return Ok(Some(Auth::Bearer(Secret::File(f.clone()))));
    }
    if let Some(e) = &args.git_token_env {
        return Ok(Some(Auth::Bearer(Secret::Env(e.clone()))));
    }
    if let Some(user) = &args.git_username {
        let password = match (&args.git_password_file, &args.git_password_env) {
            (Some(f), None) => Secret::File(f.clone()),
            (None, Some(e)) => Secret::Env(e.clone()),
            _ => bail!(
                "--git-username needs exactly one of --git-password-file or --git-password-env"
            ),
        };
        return Ok(Some(Auth::Basic {
            username: user.clone(),
            password,
        }));
    }
    Ok(None)
}

fn webhook_secret(args: &UpArgs) -> Result<Option<Vec<u8>>> {
    if let Some(f) = &args.webhook_secret_file {
        let s = std::fs::read_to_string(f)
            .with_context(|| format!("reading the webhook secret {}", f.display()))?;
        return Ok(Some(s.trim().as_bytes().to_vec()));
    }
    Ok(std::env::var("GAUNTLET_WEBHOOK_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .map(String::into_bytes))
}

/// A local path becomes an absolute one, so the controller does not depend on its cwd.
fn repo_url(repo: &str) -> String {
    if repo.contains("://") || repo.contains('@') {
        return repo.to_string();
    }
    std::fs::canonicalize(repo)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| repo.to_string())
}

pub fn run(args: UpArgs, state_dir: PathBuf) -> Result<ExitCode> {
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args, state_dir))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GAUNTLET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn serve(args: UpArgs, state_dir: PathBuf) -> Result<ExitCode> {
    let token = paths::ensure_state_dir(&state_dir)?;
    let store = Arc::new(Store::open(&state_dir.join("state.redb"))?);
    let runtime = LocalRuntime::open(&state_dir)
        .await
        .context("opening the local runtime")?;
    let source = SourceConfig {
        repo: repo_url(&args.repo),
        reference: args.branch.clone(),
        path: args.path.clone(),
        auth: auth(&args)?,
        cache_dir: state_dir.join("git"),
    };
    let controller = Controller::new(
        ControllerConfig {
            source,
            interval: args.interval,
            allow_empty: false,
        },
        runtime.clone(),
        store.clone(),
    );
    let (shutdown_tx, mut shutdown_rx) = watch::channel(None);
    let webhook_secret = webhook_secret(&args)?;
    let api = gauntlet_api::router(
        controller.clone(),
        ApiConfig {
            token,
            webhook_secret: webhook_secret.clone(),
            shutdown: shutdown_tx.clone(),
        },
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (use --listen)", args.listen))?;
    let local = listener.local_addr()?;
    paths::write_controller_info(
        &state_dir,
        &paths::ControllerInfo {
            listen: local.to_string(),
            pid: std::process::id(),
        },
    )?;
    store.append(vec![AuditRecord::now(
        Actor::Controller,
        "",
        "start",
        format!(
            "controller started: following {} ({}) every {}",
            args.repo,
            args.branch,
            humantime::format_duration(args.interval)
        ),
    )])?;
    tracing::info!(
        "controller listening on http://{local}; state in {}; webhooks {}",
        state_dir.display(),
        if webhook_secret.is_some() {
            "enabled"
        } else {
            "disabled (no secret)"
        }
    );

    let server = axum::serve(listener, api);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let what = tokio::select! {
        _ = controller.clone().run() => Shutdown::Controller,
        r = server => { r.context("the API server failed")?; Shutdown::Controller }
        _ = tokio::signal::ctrl_c() => Shutdown::Controller,
        _ = sigterm.recv() => Shutdown::Controller,
        r = shutdown_rx.wait_for(|v| v.is_some()) => {
            r.ok().and_then(|v| *v).unwrap_or(Shutdown::Controller)
        }
    };
    if what == Shutdown::Everything {
        stop_all(&runtime).await;
    }
    runtime.shutdown().await;
    let _ = store.append(vec![AuditRecord::now(
        Actor::Controller,
        "",
        "stop",
        match what {
            Shutdown::Everything => "controller stopped with every instance",
            Shutdown::Controller => "controller stopped; instances keep running",
        },
    )]);
    let _ = std::fs::remove_file(state_dir.join("controller.json"));
    Ok(ExitCode::SUCCESS)
}

async fn stop_all(runtime: &LocalRuntime) {
    let stops = runtime.instances().into_iter().map(|i| {
        let runtime = runtime.clone();
        async move {
            if let Err(e) = runtime.stop(&i.id).await {
                tracing::error!("cannot stop {}: {e}", i.id);
            }
        }
    });
    join_all(stops).await;
}

async fn join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    for h in handles {
        let _ = h.await;
    }
}
