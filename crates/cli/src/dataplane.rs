//! The proxy under `gauntlet up`: found or started, watched, restarted when it dies.
//!
//! `gauntlet proxy` runs as its own process in its own session, so the controller can crash,
//! be killed or be upgraded while every request keeps flowing. At start the supervisor adopts
//! the proxy named by `<state-dir>/proxy/proxy.json` if that process is alive and answers the
//! admin API with this state directory's token; otherwise it starts one, which serves its
//! persisted configuration at once. It then checks ten times a second that the proxy lives
//! and restarts it when it does not: at once the first time, then after a backoff that doubles
//! from 1 s to 30 s while it keeps dying within 10 s of its start. Every start, adoption and
//! death is in the audit log. The process it serves from is published on a `watch` channel
//! that the controller's [`ProxyLink`](gauntlet_reconcile::proxy_link::ProxyLink) follows.
//!
//! A controller stopped normally leaves the proxy running, as it leaves instances; `down
//! --stop-instances` stops it too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gauntlet_proxy::persist;
use gauntlet_reconcile::proxy_link::ProxyProcess;
use gauntlet_runtime::local::os;
use gauntlet_store::{Actor, AuditRecord, Store};
use tokio::sync::watch;

/// How often the proxy's liveness is checked.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long a new proxy has to announce itself and answer.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// A proxy that dies sooner than this after its start makes the next restart wait.
const STABLE_RUN: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a stopping proxy may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

struct Running {
    process: ProxyProcess,
    start_time: u64,
    /// Our child when we started it (reaped here); `None` when adopted.
    child: Option<tokio::process::Child>,
    since: Instant,
}

/// Supervises one proxy process. Cheap to clone.
#[derive(Clone)]
pub struct Dataplane {
    inner: Arc<Inner>,
}

struct Inner {
    state_dir: PathBuf,
    admin: SocketAddr,
    token: String,
    store: Arc<Store>,
    published: watch::Sender<Option<ProxyProcess>>,
    running: Mutex<Option<Running>>,
    http: reqwest::Client,
}

impl Dataplane {
    /// Adopts the proxy of `state_dir` or starts one with its admin API on `admin`; fails
    /// when neither works (the error names the cause and the proxy's log).
    pub async fn start(
        state_dir: &Path,
        admin: SocketAddr,
        token: String,
        store: Arc<Store>,
    ) -> Result<(Dataplane, watch::Receiver<Option<ProxyProcess>>)> {
        let (published, receiver) = watch::channel(None);
        let dataplane = Dataplane {
            inner: Arc::new(Inner {
                state_dir: state_dir.to_path_buf(),
                admin,
                token,
                store,
                published,
                running: Mutex::new(None),
                http: reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .context("building the proxy admin client")?,
            }),
        };
        let running = match dataplane.adopt().await {
            Some(running) => {
                dataplane.audit(
                    "proxy-adopted",
                    format!(
                        "adopted the running proxy (pid {}, admin {})",
                        running.process.pid, running.process.admin
                    ),
                );
                running
            }
            None => {
                let running = dataplane.spawn().await?;
                dataplane.audit(
                    "proxy-started",
                    format!(
                        "started the proxy (pid {}, admin {})",
                        running.process.pid, running.process.admin
                    ),
                );
                running
            }
        };
        dataplane.publish(running);
        Ok((dataplane, receiver))
    }

    /// Watches the proxy until the future is dropped, restarting it whenever it dies.
    pub async fn supervise(self) {
        let mut quick_deaths: u32 = 0;
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let Some(ended) = self.check() else {
                continue;
            };
            let _ = self.inner.published.send(None);
            self.audit("proxy-exited", ended.describe());
            quick_deaths = if ended.ran < STABLE_RUN {
                quick_deaths.saturating_add(1)
            } else {
                0
            };
            let mut delay = restart_delay(quick_deaths);
            loop {
                tokio::time::sleep(delay).await;
                match self.spawn().await {
                    Ok(running) => {
                        self.audit(
                            "proxy-restarted",
                            format!(
                                "restarted the proxy (pid {}, admin {}); it serves its persisted configuration",
                                running.process.pid, running.process.admin
                            ),
                        );
                        self.publish(running);
                        break;
                    }
                    Err(e) => {
                        self.audit("proxy-error", format!("cannot restart the proxy: {e:#}"));
                        delay = (delay * 2).clamp(Duration::from_secs(1), BACKOFF_MAX);
                    }
                }
            }
        }
    }

    /// Stops the proxy (SIGTERM, then SIGKILL after a grace period). Call after the
    /// supervising future was dropped, or it restarts it.
    pub async fn stop(&self) {
        let running = self
            .inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let _ = self.inner.published.send(None);
        let Some(mut running) = running else {
            return;
        };
        os::stop_group(running.process.pid, running.start_time, STOP_GRACE).await;
        if let Some(child) = running.child.as_mut() {
            let _ = child.wait().await;
        }
        self.audit(
            "proxy-stopped",
            format!("stopped the proxy (pid {})", running.process.pid),
        );
    }

    fn publish(&self, running: Running) {
        let process = running.process;
        *self.inner.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(running);
        let _ = self.inner.published.send(Some(process));
    }

    /// `Some` when the proxy has died since the last check.
    fn check(&self) -> Option<Ended> {
        let mut guard = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        let running = guard.as_mut()?;
        let status = match running.child.as_mut() {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(os::describe_exit(status)),
                Ok(None) => None,
                Err(e) => Some(format!("cannot be waited for: {e}")),
            },
            None if os::is_alive(running.process.pid, running.start_time) => None,
            None => Some("status unknown (it was adopted, not started, by this controller)".into()),
        };
        let status = status?;
        let running = guard.take()?;
        Some(Ended {
            pid: running.process.pid,
            status,
            ran: running.since.elapsed(),
            log: self.log_path(),
        })
    }

    /// The proxy that announced itself in the state directory, if it lives and answers with
    /// our token (which also proves it is this state directory's proxy, not a reused pid).
    async fn adopt(&self) -> Option<Running> {
        let info = persist::read_process_info(&self.inner.state_dir)?;
        let start_time = os::start_time(info.pid)?;
        if !self.answers(info.admin).await {
            return None;
        }
        if info.admin != self.inner.admin && self.inner.admin.port() != 0 {
            tracing::warn!(
                "the running proxy's admin API is on {}, not {}; adopting it as it is",
                info.admin,
                self.inner.admin
            );
        }
        Some(Running {
            process: ProxyProcess {
                pid: info.pid,
                admin: info.admin,
            },
            start_time,
            child: None,
            since: Instant::now(),
        })
    }

    async fn answers(&self, admin: SocketAddr) -> bool {
        self.inner
            .http
            .get(format!("http://{admin}/admin/v1/config"))
            .bearer_auth(&self.inner.token)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    fn log_path(&self) -> PathBuf {
        self.inner.state_dir.join("proxy").join("proxy.log")
    }

    /// Starts `gauntlet proxy` in its own session and waits until it announces itself and
    /// answers.
    async fn spawn(&self) -> Result<Running> {
        let exe = crate::demo::gauntlet_exe()?;
        let dir = self.inner.state_dir.join("proxy");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = tokio::process::Command::new(&exe);
        command
            .arg("--state-dir")
            .arg(&self.inner.state_dir)
            .arg("proxy")
            .arg("--admin")
            .arg(self.inner.admin.to_string())
            // Instances are recognised by this variable; the proxy is not one of them.
            .env_remove("GAUNTLET_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(false);
        // SAFETY: runs in the forked child before exec and calls only setsid, which is
        // async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} proxy", exe.display()))?;
        let pid = child.id().context("the proxy exited at once")?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the proxy exited ({}) before it answered; see {}:\n{}",
                    os::describe_exit(status),
                    log_path.display(),
                    tail(&log_path)
                );
            }
            if let Some(info) = persist::read_process_info(&self.inner.state_dir) {
                if info.pid == pid && self.answers(info.admin).await {
                    let start_time = os::start_time(pid).unwrap_or_default();
                    return Ok(Running {
                        process: ProxyProcess {
                            pid,
                            admin: info.admin,
                        },
                        start_time,
                        child: Some(child),
                        since: Instant::now(),
                    });
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill().await;
                bail!(
                    "the proxy did not answer within {}s; see {}",
                    START_DEADLINE.as_secs(),
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Audit records are written off the async threads; a failure is logged, not fatal.
    fn audit(&self, action: &str, reason: String) {
        tracing::info!("{reason}");
        let store = self.inner.store.clone();
        let record = AuditRecord::now(Actor::Controller, "", action, reason);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.append(vec![record]) {
                tracing::error!("cannot write the audit log: {e}");
            }
        });
    }
}

struct Ended {
    pid: u32,
    status: String,
    ran: Duration,
    log: PathBuf,
}

impl Ended {
    fn describe(&self) -> String {
        format!(
            "the proxy (pid {}) exited after {}: {}; its log: {}",
            self.pid,
            humantime::format_duration(Duration::from_secs(self.ran.as_secs())),
            self.status,
            self.log.display()
        )
    }
}

/// No wait for the first death after a stable run; then 1 s, 2 s, 4 s… up to 30 s while the
/// proxy keeps dying soon after each start.
fn restart_delay(quick_deaths: u32) -> Duration {
    match quick_deaths {
        0 | 1 => Duration::ZERO,
        n => (Duration::from_secs(1) * 2u32.saturating_pow(n - 2)).min(BACKOFF_MAX),
    }
}

/// The last lines of the proxy's log, for a start error.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_immediate_once_then_back_off_to_thirty_seconds() {
        let delays: Vec<u64> = (0..10).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![0, 0, 1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
