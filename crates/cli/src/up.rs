//! `gauntlet up`: the controller process. Wires the Git source, the local runtime, the store
//! and the API together, then runs until SIGINT/SIGTERM or `gauntlet down`.
//!
//! Stopping the controller leaves the instances running (they are re-adopted at the next
//! start), so a controller upgrade or crash never takes an application down; `down
//! --stop-instances` and `--stop-instances-on-exit` are the ways to stop them too.
//!
//! Start-up checks everything that can be refused (flags, credentials, the state directory,
//! the API port) before the local runtime opens, because opening it re-adopts and restarts
//! instances. Shutdown stops accepting calls, lets the ones in flight finish (the answer to
//! `gauntlet down` among them) while the controller still runs, and only then stops it.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use gauntlet_api::{ApiConfig, Shutdown};
use gauntlet_reconcile::proxy_link::ProxyLink;
use gauntlet_reconcile::{ChaosConfig, Controller, ControllerConfig};
use gauntlet_runtime::local::LocalRuntime;
use gauntlet_runtime::Runtime;
use gauntlet_source::{redact_url, SourceConfig};
use gauntlet_store::{Actor, AuditRecord, Store};
use tokio::sync::watch;

use crate::dataplane::Dataplane;
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
    /// Address of the admin API of the proxy the controller starts and supervises (`:0`
    /// picks a free port). Keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:7071")]
    proxy_admin: SocketAddr,
    /// How often to poll the repository (at least 1s).
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    interval: Duration,
    /// File holding the secret shared with the Git host for push webhooks
    /// (or set GAUNTLET_WEBHOOK_SECRET).
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
    #[command(flatten)]
    git: crate::git_auth::GitAuthArgs,
    /// Apply a commit that defines no application even while instances run, pruning them
    /// all. Off by default, like Argo CD's allowEmpty: an emptied tree is more often a mistake
    /// (a wrong --path, a bad force-push) than a wish to stop everything.
    #[arg(long)]
    allow_empty: bool,
    /// When the controller stops on SIGINT/SIGTERM, stop every instance too; for demos and
    /// throwaway environments.
    #[arg(long)]
    stop_instances_on_exit: bool,
    /// File of read-only flag evaluation keys, one per line (`#` comments allowed), for OFREP
    /// (`Authorization: Bearer KEY` or `X-API-Key: KEY`). Without it, flag evaluation is open
    /// to anyone who can reach --listen, as flagd's is. The admin token is never one of them.
    #[arg(long)]
    flags_keys_file: Option<PathBuf>,
    /// Author and committer of the commits `onFailure: revert` pushes, as "Name <email>"
    /// (default "Gauntlet <gauntlet@localhost>").
    #[arg(long, value_parser = parse_author)]
    revert_author: Option<String>,
    /// How far ahead the lease of each chaos fault reaches: if this controller dies, a fault
    /// outlives it by at most this long (the fault agents and the proxy end it on their own).
    /// Leases are renewed at half of it while the fault should stay.
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    chaos_lease: Duration,
}

/// How long calls in flight may take to finish once the controller is stopping.
const DRAIN: Duration = Duration::from_secs(10);

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

fn parse_author(s: &str) -> Result<String, String> {
    s.parse::<gauntlet_source::Identity>()
        .map(|author| author.to_string())
}

fn evaluation_keys(args: &UpArgs, admin_token: &str) -> Result<gauntlet_api::EvaluationKeys> {
    let Some(f) = &args.flags_keys_file else {
        return Ok(gauntlet_api::EvaluationKeys::default());
    };
    let text = std::fs::read_to_string(f)
        .with_context(|| format!("reading the flag evaluation keys {}", f.display()))?;
    let keys = gauntlet_api::EvaluationKeys::parse(&text);
    if keys.is_empty() {
        bail!(
            "{} holds no key: put one evaluation key per line, or leave out --flags-keys-file to serve flags without keys",
            f.display()
        );
    }
    if keys.contains(admin_token) {
        bail!(
            "{} holds the admin token; evaluation keys must be separate from it (they are given to applications)",
            f.display()
        );
    }
    Ok(keys)
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

/// A password in an http(s) URL would be stored, logged and shown wherever the repository is:
/// credentials come from files or the environment instead.
fn refuse_password_in_url(repo: &str) -> Result<()> {
    let Some((scheme, rest)) = repo.split_once("://") else {
        return Ok(());
    };
    let is_http = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let has_password = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    if is_http && has_password {
        bail!(
            "--repo {} has a password in the URL; it would be recorded and shown wherever the repository is. Put it in a file and pass --git-username USER --git-password-file FILE (or a token with --git-token-file FILE)",
            redact_url(repo)
        );
    }
    Ok(())
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

/// Logs to stderr, filtered by `GAUNTLET_LOG` (default `info`); shared by long-running commands.
pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GAUNTLET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn serve(args: UpArgs, state_dir: PathBuf) -> Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed first, so a signal during start-up is acted on rather than killing us midway.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    refuse_password_in_url(&args.repo)?;
    let auth = args.git.auth()?;
    let webhook_secret = webhook_secret(&args)?;
    let token = paths::ensure_state_dir(&state_dir)?;
    let evaluation_keys = evaluation_keys(&args, &token)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (use --listen)", args.listen))?;
    let local = listener.local_addr()?;
    let store = Arc::new(Store::open(&state_dir.join("state.redb"))?);
    let runtime = LocalRuntime::open(&state_dir)
        .await
        .context("opening the local runtime")?;
    let (dataplane, proxy_process) =
        Dataplane::start(&state_dir, args.proxy_admin, token.clone(), store.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot run the proxy (its admin API on {}; use --proxy-admin)",
                    args.proxy_admin
                )
            })?;
    let repo = repo_url(&args.repo);
    let repo_shown = redact_url(&repo);
    let source = SourceConfig {
        repo,
        reference: args.branch.clone(),
        path: args.path.clone(),
        auth,
        cache_dir: state_dir.join("git"),
    };
    let controller = Controller::new(
        ControllerConfig {
            source,
            interval: args.interval,
            allow_empty: args.allow_empty,
            proxy: Some(ProxyLink::new(token.clone(), proxy_process)),
            revert_author: args.revert_author.clone(),
            chaos: Some(ChaosConfig {
                faults_dir: state_dir.join("faults"),
                agent_bin: std::env::current_exe().context("locating the gauntlet binary")?,
                lease: args.chaos_lease,
            }),
        },
        runtime.clone(),
        store.clone(),
    );
    let (shutdown_tx, _) = watch::channel(None);
    let api = gauntlet_api::router(
        controller.clone(),
        ApiConfig {
            token,
            webhook_secret: webhook_secret.clone(),
            shutdown: shutdown_tx.clone(),
            evaluation_keys: evaluation_keys.clone(),
        },
    );
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
            "controller started: following {repo_shown} ({}) every {}",
            args.branch,
            humantime::format_duration(args.interval)
        ),
    )])?;
    tracing::info!(
        "controller listening on http://{local}; following {repo_shown} ({}); state in {}; webhooks {}",
        args.branch,
        state_dir.display(),
        if webhook_secret.is_some() {
            "enabled"
        } else {
            "disabled (no secret)"
        }
    );

    if evaluation_keys.is_empty() {
        tracing::warn!(
            "flag evaluation (OFREP, http://{local}/ofrep/v1/) is open: no --flags-keys-file, so anyone who can reach this address can evaluate flags, as with flagd"
        );
    } else {
        tracing::info!(
            "flag evaluation (OFREP, http://{local}/ofrep/v1/) needs one of {} evaluation keys",
            evaluation_keys.len()
        );
    }

    let mut stopping = shutdown_tx.subscribe();
    let mut server = tokio::spawn(
        axum::serve(listener, api)
            .with_graceful_shutdown(async move {
                let _ = stopping.wait_for(|v| v.is_some()).await;
            })
            .into_future(),
    );
    let supervisor = tokio::spawn(dataplane.clone().supervise());
    let mut run = Box::pin(controller.clone().run());
    let on_signal = if args.stop_instances_on_exit {
        Shutdown::Everything
    } else {
        Shutdown::Controller
    };
    let mut requested = shutdown_tx.subscribe();
    let mut run_finished = false;
    let mut server_finished = false;
    let what = tokio::select! {
        _ = &mut run => {
            run_finished = true;
            tracing::error!("the controller's loops ended");
            Shutdown::Controller
        }
        r = &mut server => {
            server_finished = true;
            log_server_end(r);
            Shutdown::Controller
        }
        _ = sigint.recv() => on_signal,
        _ = sigterm.recv() => on_signal,
        r = requested.wait_for(|v| v.is_some()) => {
            r.ok().and_then(|v| *v).unwrap_or(Shutdown::Controller)
        }
    };
    // Stops the server from accepting; a `down` call already set it, with what it asked for.
    shutdown_tx.send_if_modified(|v| {
        if v.is_some() {
            return false;
        }
        *v = Some(what);
        true
    });
    if !server_finished {
        // The controller keeps running meanwhile, so a `sync` in flight can complete.
        tokio::select! {
            _ = &mut run, if !run_finished => server.abort(),
            r = tokio::time::timeout(DRAIN, &mut server) => match r {
                Ok(r) => log_server_end(r),
                Err(_) => {
                    tracing::warn!(
                        "calls still unanswered after {} are cut",
                        humantime::format_duration(DRAIN)
                    );
                    server.abort();
                }
            },
        }
    }
    drop(run);
    // The server also ends when a `down` call asked for it, and may win the race above: what
    // the call asked for is in the channel.
    let what = (*shutdown_tx.borrow()).unwrap_or(what);
    supervisor.abort();
    let _ = supervisor.await;
    if what == Shutdown::Everything {
        dataplane.stop().await;
        stop_all(&runtime).await;
    }
    runtime.shutdown().await;
    let _ = store.append(vec![AuditRecord::now(
        Actor::Controller,
        "",
        "stop",
        match what {
            Shutdown::Everything => "controller stopped with the proxy and every instance",
            Shutdown::Controller => "controller stopped; the proxy and instances keep running",
        },
    )]);
    let _ = std::fs::remove_file(state_dir.join("controller.json"));
    Ok(ExitCode::SUCCESS)
}

fn log_server_end(r: Result<std::io::Result<()>, tokio::task::JoinError>) {
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("the API server failed: {e}"),
        Err(e) => tracing::error!("the API server stopped: {e}"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_an_http_url_is_refused_and_hidden_in_the_error() {
        let err = refuse_password_in_url("https://bob:hunter2@git.example.com/deploy.git")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--git-password-file"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(refuse_password_in_url("HTTP://bob:x@example.com/r").is_err());
    }

    #[test]
    fn urls_without_a_password_are_accepted() {
        for url in [
            "https://git.example.com/deploy.git",
            "https://bob@git.example.com/deploy.git",
            "https://example.com/a@b:c",
            "ssh://git@example.com/r.git",
            "git@example.com:o/r.git",
            "/srv/git/deploy.git",
        ] {
            assert!(refuse_password_in_url(url).is_ok(), "{url}");
        }
    }
}
