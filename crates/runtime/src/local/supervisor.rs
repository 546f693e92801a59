//! One task per instance that keeps its process running, as a kubelet does for a container.
//!
//! The loop: obtain a process (adopt the recorded one, or fetch the artifact and spawn), then
//! wait for whichever comes first: the process dies, the instance is stopped, or the runtime
//! shuts down. Meanwhile the readiness probe and log rotation run beside it. A death is
//! recorded (`exit status 3`, `signal 9 (SIGKILL)`), stragglers in the process group are
//! killed (they could hold the port), and the next start waits out the backoff decided by
//! [`policy::Backoff`]. A stop sends SIGTERM to the group, waits out the grace period and
//! sends SIGKILL. A shutdown simply returns: the process keeps running for the next
//! controller to adopt.
//!
//! A child of this controller is reaped with `Child::wait`, so it never lingers as a zombie.
//! An adopted process is not our child, so its death is noticed by polling `/proc`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::sync::watch;

use super::logs;
use super::policy::{Backoff, Became, Readiness};
use super::probe;
use super::process::{self, Launch};
use super::{now_ms, Inner, DEFAULT_GRACE_PERIOD, LOG_TAIL_LINES};
use crate::{Instance, InstanceId, InstanceSpec, Phase, RuntimeError};

/// What the runtime wants from a supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Run,
    /// Stop the process for good, then report through `done`.
    Stop,
}

/// How a supervisor begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Initial {
    /// A new instance, or a recorded one that never had a process.
    Fresh,
    /// The recorded process still runs: watch it, do not start another. `ready`: the record
    /// says the instance was ready, so it resumes as ready.
    Adopt {
        pid: u32,
        start_time: u64,
        ready: bool,
    },
    /// No recorded process runs, but one carrying this instance's identity does (the
    /// controller died before recording it): watch it, do not start another. `ready` as for
    /// `Adopt`.
    Found {
        pid: u32,
        start_time: u64,
        ready: bool,
    },
    /// The recorded process is gone (or its pid was reused): start a new one.
    Lost { pid: u32 },
}

impl Initial {
    /// The process the supervisor begins by watching, as `(pid, start_time)`.
    pub fn running(&self) -> Option<(u32, u64)> {
        match *self {
            Initial::Adopt {
                pid, start_time, ..
            }
            | Initial::Found {
                pid, start_time, ..
            } => Some((pid, start_time)),
            Initial::Fresh | Initial::Lost { .. } => None,
        }
    }

    /// Whether the instance begins in `Phase::Ready`: only an adopted process whose record
    /// says it was ready. Its probe keeps running and demotes it like any ready instance.
    pub fn ready(&self) -> bool {
        match *self {
            Initial::Adopt { ready, .. } | Initial::Found { ready, .. } => ready,
            Initial::Fresh | Initial::Lost { .. } => false,
        }
    }
}

enum Proc {
    Child { pid: u32, child: Child },
    Adopted { pid: u32, start_time: u64 },
}

impl Proc {
    fn pid(&self) -> u32 {
        match self {
            Proc::Child { pid, .. } | Proc::Adopted { pid, .. } => *pid,
        }
    }
}

/// Why supervision of a running process ended.
enum Ended {
    Exited(String),
    Interrupted(Wake),
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Elapsed,
    Stop,
    Shutdown,
}

pub(crate) struct Supervisor {
    rt: Arc<Inner>,
    id: InstanceId,
    app: String,
    port: u16,
    spec: InstanceSpec,
    log: PathBuf,
    control: watch::Receiver<Control>,
    shutdown: watch::Receiver<bool>,
    done: watch::Sender<bool>,
}

impl Supervisor {
    pub fn new(
        rt: Arc<Inner>,
        instance: &Instance,
        spec: InstanceSpec,
        control: watch::Receiver<Control>,
        shutdown: watch::Receiver<bool>,
        done: watch::Sender<bool>,
    ) -> Self {
        let log = logs::log_file(&rt.state_dir, &instance.app, &instance.id.0);
        Supervisor {
            rt,
            id: instance.id.clone(),
            app: instance.app.clone(),
            port: instance.port,
            spec,
            log,
            control,
            shutdown,
            done,
        }
    }

    pub async fn run(self, initial: Initial) {
        let mut backoff = Backoff::default();
        let mut adopted = None;
        // The adopted process resumes as ready (the runtime shows it `Ready` already).
        let resumed_ready = initial.ready();
        // How the previous process ended; `Some` makes the next start a restart.
        let mut previous_exit: Option<String> = None;
        match initial {
            Initial::Fresh => {}
            Initial::Adopt {
                pid, start_time, ..
            } => {
                self.emit(
                    "adopted",
                    format!("pid {pid} still runs; supervising it again"),
                );
                adopted = Some(Proc::Adopted { pid, start_time });
            }
            Initial::Found {
                pid, start_time, ..
            } => {
                self.emit(
                    "adopted",
                    format!(
                        "pid {pid} was never recorded (the controller stopped before saving \
                         it) but runs as this instance; supervising it"
                    ),
                );
                adopted = Some(Proc::Adopted { pid, start_time });
            }
            Initial::Lost { pid } => {
                self.emit(
                    "lost",
                    format!("pid {pid} no longer runs (or was reused); starting a new process"),
                );
                previous_exit = Some(format!("lost pid {pid} while no controller was running"));
            }
        }

        loop {
            let (mut proc, launch, ready) = match adopted.take() {
                Some(proc) => (proc, self.plan(self.cached_artifact_dir()), resumed_ready),
                None => {
                    let launched = tokio::select! {
                        biased;
                        wake = self.interrupted() => Err(wake),
                        result = self.launch() => Ok(result),
                    };
                    match launched {
                        Err(Wake::Shutdown) => return,
                        Err(_) => break,
                        Ok(Ok((proc, launch))) => {
                            self.started(&proc, previous_exit.take());
                            (proc, launch, false)
                        }
                        Ok(Err(e)) => {
                            let restart = backoff.on_start_failure();
                            let reason = e.to_string();
                            tracing::warn!(instance = %self.id, %reason, "instance failed to start");
                            // Queued before the phase shows, as for a crash loop after exits.
                            if restart.entered_crash_loop {
                                self.emit(
                                    "crashloop",
                                    format!(
                                        "{reason}; retrying in {}",
                                        humantime::format_duration(restart.delay)
                                    ),
                                );
                            }
                            self.rt.set_phase(&self.id, Phase::Failed { reason });
                            match self.sleep(restart.delay).await {
                                Wake::Elapsed => continue,
                                Wake::Stop => break,
                                Wake::Shutdown => return,
                            }
                        }
                    }
                }
            };

            let running_since = Instant::now();
            let how = match self.supervise(&mut proc, &launch, ready).await {
                Ended::Exited(how) => how,
                Ended::Interrupted(Wake::Shutdown) => return,
                Ended::Interrupted(_) => {
                    self.terminate(proc).await;
                    break;
                }
            };

            let pid = proc.pid();
            // The leader is gone; whatever it forked must not keep the port or keep running.
            let _ = process::signal_group(pid, libc::SIGKILL);
            let restart = backoff.on_exit(running_since.elapsed());
            let phase = if restart.crash_loop {
                Phase::CrashLoop {
                    last_exit: how.clone(),
                    log_tail: logs::tail(&self.log, LOG_TAIL_LINES),
                    next_start_ms: now_ms().saturating_add(restart.delay.as_millis() as u64),
                }
            } else {
                Phase::Starting
            };
            // Queue the event before the phase shows, so whoever sees the crash loop finds it.
            if restart.entered_crash_loop {
                self.emit(
                    "crashloop",
                    format!(
                        "{how}; died {} times in a row; next start in {}",
                        super::CRASH_LOOP_AFTER,
                        humantime::format_duration(restart.delay)
                    ),
                );
            }
            self.rt.update(&self.id, |slot| {
                slot.instance.pid = None;
                slot.start_time = None;
                if slot.instance.phase != Phase::Stopping {
                    slot.instance.phase = phase;
                }
            });
            self.rt.persist_or_warn();
            tracing::info!(instance = %self.id, pid, %how, "instance process ended");
            previous_exit = Some(how);
            match self.sleep(restart.delay).await {
                Wake::Elapsed => {}
                Wake::Stop => break,
                Wake::Shutdown => return,
            }
        }
        self.done.send_replace(true);
    }

    fn emit(&self, action: &str, detail: String) {
        self.rt.emit(&self.app, &self.id, action, detail);
    }

    fn instance_dir(&self) -> PathBuf {
        self.rt.state_dir.join("instances").join(&self.id.0)
    }

    fn cached_artifact_dir(&self) -> Option<PathBuf> {
        let artifact = self.spec.process.artifact.as_ref()?;
        let dir = self
            .rt
            .state_dir
            .join("artifacts")
            .join(artifact.sha256.to_ascii_lowercase());
        dir.is_dir().then_some(dir)
    }

    fn plan(&self, artifact_dir: Option<PathBuf>) -> Launch {
        process::plan(
            &self.spec,
            &self.id,
            self.port,
            artifact_dir.as_deref(),
            &self.instance_dir(),
            &self.rt.canonical_state_dir,
        )
    }

    async fn launch(&self) -> Result<(Proc, Launch), RuntimeError> {
        let artifact_dir = match &self.spec.process.artifact {
            Some(artifact) => Some(self.rt.artifacts.fetch(artifact).await?),
            None => None,
        };
        let launch = self.plan(artifact_dir);
        let child = process::spawn(&launch, &self.log)?;
        let pid = child.id().ok_or_else(|| RuntimeError::Spawn {
            command: launch.program.display().to_string(),
            source: std::io::Error::other("the process ended before its pid could be read"),
        })?;
        Ok((Proc::Child { pid, child }, launch))
    }

    /// Records a freshly spawned process and, after a death, reports the restart.
    fn started(&self, proc: &Proc, previous_exit: Option<String>) {
        let pid = proc.pid();
        let start_time = process::proc_stat(pid).map(|s| s.start_time);
        let mut restarts = 0;
        self.rt.update(&self.id, |slot| {
            slot.instance.pid = Some(pid);
            slot.start_time = start_time;
            if previous_exit.is_some() {
                slot.instance.restarts = slot.instance.restarts.saturating_add(1);
            }
            restarts = slot.instance.restarts;
            if slot.instance.phase != Phase::Stopping {
                slot.instance.phase = Phase::Starting;
            }
        });
        // Persisted before anything else happens, so a controller killed now still knows
        // this pid and adopts it instead of starting a duplicate.
        self.rt.persist_or_warn();
        if let Some(how) = previous_exit {
            self.emit(
                "restarted",
                format!("{how}; started again as pid {pid} (restart {restarts})"),
            );
        }
    }

    /// Waits until the process dies or the supervisor is interrupted, probing readiness and
    /// rotating the log meanwhile. `ready`: the process resumes as ready (see
    /// [`Supervisor::probe_readiness`]).
    async fn supervise(&self, proc: &mut Proc, launch: &Launch, ready: bool) -> Ended {
        let poll = self.rt.options.adopted_poll_interval;
        tokio::select! {
            biased;
            wake = self.interrupted() => Ended::Interrupted(wake),
            how = wait_exit(proc, poll) => Ended::Exited(how),
            never = self.probe_readiness(launch, ready) => match never {},
            never = self.rotate_logs() => match never {},
        }
    }

    /// Resolves only on a stop request (preferred) or a shutdown, never with `Elapsed`.
    async fn interrupted(&self) -> Wake {
        let mut control = self.control.clone();
        let mut shutdown = self.shutdown.clone();
        loop {
            if *control.borrow_and_update() == Control::Stop {
                return Wake::Stop;
            }
            if *shutdown.borrow_and_update() {
                return Wake::Shutdown;
            }
            tokio::select! {
                changed = control.changed() => if changed.is_err() { return Wake::Stop },
                changed = shutdown.changed() => if changed.is_err() { return Wake::Shutdown },
            }
        }
    }

    async fn sleep(&self, delay: Duration) -> Wake {
        tokio::select! {
            biased;
            wake = self.interrupted() => wake,
            _ = tokio::time::sleep(delay) => Wake::Elapsed,
        }
    }

    /// Probes for as long as the process runs. A process that resumes as ready (adopted, and
    /// ready before the controller restarted) is probed at once, without the initial delay
    /// meant for a process that just started, and is demoted only after
    /// `failure_threshold` consecutive failures, like any ready instance.
    async fn probe_readiness(&self, launch: &Launch, ready: bool) -> std::convert::Infallible {
        let probe = self
            .spec
            .readiness
            .as_ref()
            .filter(|p| p.http_get.is_some() || p.tcp_socket.is_some() || p.exec.is_some());
        let Some(probe) = probe else {
            self.became_ready("running; no readiness probe");
            return std::future::pending().await;
        };
        let mut readiness = Readiness::new(probe.success_threshold, probe.failure_threshold);
        if ready {
            readiness = readiness.resumed_ready();
        } else {
            tokio::time::sleep(Duration::from_secs(u64::from(probe.initial_delay_seconds))).await;
        }
        let mut ticker =
            tokio::time::interval(Duration::from_secs(u64::from(probe.period_seconds.max(1))));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let outcome = probe::check(probe, launch, &self.rt.probe_client).await;
            match readiness.observe(outcome) {
                Some(Became::Ready) => self.became_ready("readiness probe succeeded"),
                Some(Became::Unready { reason }) => {
                    let phase = Phase::Unready {
                        reason: reason.clone(),
                    };
                    // As for `ready`: the event is queued before the phase shows.
                    if self
                        .rt
                        .phase(&self.id)
                        .is_some_and(|p| p != phase && p != Phase::Stopping)
                    {
                        self.emit("unready", reason);
                        self.rt.set_phase(&self.id, phase);
                    }
                }
                None => {}
            }
        }
    }

    /// The event is queued before the phase shows, so a pass that sees the instance ready
    /// (and retires the old revision) also finds the event that explains it.
    fn became_ready(&self, detail: &str) {
        if self
            .rt
            .phase(&self.id)
            .is_some_and(|p| p != Phase::Ready && p != Phase::Stopping)
        {
            self.emit("ready", detail.to_string());
            self.rt.set_phase(&self.id, Phase::Ready);
        }
    }

    async fn rotate_logs(&self) -> std::convert::Infallible {
        let every = self.rt.options.log_check_interval;
        let max = self.rt.options.log_max_bytes;
        loop {
            tokio::time::sleep(every).await;
            let path = self.log.clone();
            match tokio::task::spawn_blocking(move || logs::rotate_if_needed(&path, max)).await {
                Ok(Ok(true)) => tracing::debug!(instance = %self.id, "log rotated"),
                Ok(Err(e)) => {
                    tracing::warn!(instance = %self.id, error = %e, "log rotation failed")
                }
                _ => {}
            }
        }
    }

    /// SIGTERM to the process group, the grace period, then SIGKILL to the group.
    async fn terminate(&self, proc: Proc) {
        let pid = proc.pid();
        let grace = self
            .spec
            .process
            .termination_grace_period_seconds
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(DEFAULT_GRACE_PERIOD);
        match proc {
            Proc::Child { mut child, .. } => {
                if let Err(e) = process::signal_group(pid, libc::SIGTERM) {
                    tracing::warn!(instance = %self.id, pid, error = %e, "cannot send SIGTERM");
                }
                if tokio::time::timeout(grace, child.wait()).await.is_err() {
                    let _ = process::signal_group(pid, libc::SIGKILL);
                    let _ = child.wait().await;
                }
                // Anything the instance forked that ignored SIGTERM is in its group.
                let _ = process::signal_group(pid, libc::SIGKILL);
            }
            Proc::Adopted { pid, start_time } => {
                process::stop_group(pid, start_time, grace).await;
            }
        }
        self.rt.update(&self.id, |slot| {
            slot.instance.pid = None;
            slot.start_time = None;
        });
    }
}

async fn wait_exit(proc: &mut Proc, poll: Duration) -> String {
    match proc {
        Proc::Child { child, .. } => match child.wait().await {
            Ok(status) => process::describe_exit(status),
            Err(e) => format!("lost track of the process: {e}"),
        },
        Proc::Adopted { pid, start_time } => loop {
            tokio::time::sleep(poll).await;
            if !process::is_alive(*pid, *start_time) {
                return "exited (an adopted process: its exit status is not visible to this \
                        controller)"
                    .to_string();
            }
        },
    }
}
