//! The chaos shell: runs `ChaosExperiment`s with the pure engine ([`gauntlet_chaos::engine`])
//! and carries out its actions.
//!
//! Each run's state is committed to the store before its actions run, with the journal's
//! events as audit records (`chaos-*`), so a controller killed at any point resumes the run:
//! the first step after a restart marks it Interrupted, removes what may still be in place and
//! runs its rollbacks. Faults are never held by the controller:
//!
//! - **process faults** (pause, cpu, memory, disk fill) are held by fault agents
//!   (`gauntlet fault run`, [`gauntlet_runtime::local::faults`]) in sessions of their own, each
//!   ending its fault at its lease; the controller renews a lease by rewriting the agent's
//!   record and removes a fault by SIGTERM to its agent, and at start it sweeps the records of
//!   agents that died;
//! - **kill** is one signal to the instance's process group; the runtime restarts it;
//! - **traffic faults** (http, dependency) are proxy fault rules with the lease as their expiry,
//!   which the proxy enforces by itself.
//!
//! Runs are stored under `chaos.run.{id}` while active and as journals under
//! `chaos.journal.{id}` once finished; `chaos.index` lists every run, newest last.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gauntlet_chaos::cron::{self, Cron};
use gauntlet_chaos::engine::{
    self, AbortRequest, Action, ActivityResult, Observations, ProbeResult, RunState,
};
use gauntlet_chaos::journal::{Journal, RunStatus};
use gauntlet_chaos::select::{Fleet, Instance as FleetInstance, Targets};
use gauntlet_chaos::spec::{ChaosExperimentSpec, Fault, Probe, Target, TargetRevision};
use gauntlet_chaos::tolerance::ProbeOutput;
use gauntlet_proxy::config::{FaultKind, FaultRule};
use gauntlet_rollout::engine::ChaosVerdict;
use gauntlet_runtime::local::faults as agents;
use gauntlet_runtime::Runtime;
use gauntlet_store::{Actor, AuditRecord};
use serde::{Deserialize, Serialize};

use super::{lock, now_ms, read, Controller};
use crate::measure::{self, MeasureContext};
use crate::rollouts::kebab;

/// In an http probe's url, the address of one instance of the target: a probe of the target
/// itself, past the proxy (see [`gauntlet_chaos::spec::HttpProbe`]).
const TARGET_VAR: &str = "${TARGET}";

/// Runs kept in `chaos.index`.
const INDEX_KEPT: usize = 500;
/// How long an abort waits for agents to end their faults before it kills them.
const AGENT_GRACE: Duration = Duration::from_secs(1);

/// Where process faults live: the agents' records directory and the binary that runs agents.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub faults_dir: PathBuf,
    /// `gauntlet`, run as `gauntlet fault run …`.
    pub agent_bin: PathBuf,
    /// How far ahead a fault's lease reaches (see [`engine::LEASE_MS`], the default).
    pub lease: Duration,
}

/// Why a run cannot start or be found.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("no ChaosExperiment named `{0}` in the applied commit")]
    UnknownExperiment(String),
    #[error("experiment `{experiment}` is already running as {run}; runs of one experiment never overlap")]
    AlreadyRunning { experiment: String, run: String },
    #[error("chaos is paused (gauntlet chaos pause-all); resume it first")]
    Paused,
    #[error("no chaos run `{0}`")]
    UnknownRun(String),
    #[error(
        "chaos needs the local runtime's fault agents, which this controller was started without"
    )]
    Unavailable,
    #[error("cannot store the run: {0}")]
    Store(String),
}

/// A run in the store while it is active.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredRun {
    experiment: String,
    actor: String,
    spec: ChaosExperimentSpec,
    state: RunState,
    /// The rollout step this run judges, if it is a gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gate: Option<Gate>,
}

/// A rollout's `chaos` step: the candidate `revision` of `app` at canary step `step` (from 0),
/// judged by one run of the step's experiment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gate {
    pub app: String,
    pub revision: String,
    pub step: usize,
}

/// Where a gate stands, as `rollout get` shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateRun {
    pub experiment: String,
    /// The run judging the candidate (`gauntlet chaos report RUN`); `None` until one starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Why no run has started yet (chaos paused, a run of the experiment still going).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The finished run's verdict, handed to the rollout until it leaves the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<ChaosVerdict>,
}

/// One line of `chaos list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub id: String,
    pub experiment: String,
    /// The rollout step the run judged, if it was a gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    pub status: RunStatus,
    pub deviated: bool,
    pub started_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
}

/// What `chaos get` shows: the journal, and for an active run its live state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    pub id: String,
    pub experiment: String,
    pub actor: String,
    pub journal: Journal,
    /// The engine's state while the run is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
}

/// The shell's memory of one active run.
pub(super) struct ActiveRun {
    stored: StoredRun,
    pending: Observations,
    wake_at_ms: Option<u64>,
    /// Something arrived (or the run is new): step it at the next pass.
    due: bool,
}

/// Every active run and the faults they hold in the proxy.
#[derive(Default)]
pub(super) struct ChaosRuns {
    runs: BTreeMap<String, ActiveRun>,
    paused: bool,
    /// Proxy fault rules by fault id.
    proxy_faults: BTreeMap<String, ProxyFault>,
    /// Rollouts' chaos steps and their runs, while the rollout is at that step.
    gates: BTreeMap<Gate, GateRun>,
    /// Each scheduled experiment's next fire.
    schedules: BTreeMap<String, ScheduleEntry>,
    loaded: bool,
}

/// When a scheduled experiment fires next, and the expression that time is from (a changed
/// schedule starts afresh).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScheduleEntry {
    expression: String,
    next_fire_ms: u64,
}

/// A traffic fault held by the proxy.
struct ProxyFault {
    /// The application whose listener serves the faulty requests.
    app: String,
    /// With the callers left out: they are the pids of `callers`' instances when pushed.
    rules: Vec<FaultRule>,
    /// A dependency fault: only calls from these revisions of this application.
    callers: Option<(String, Vec<String>)>,
}

impl ChaosRuns {
    /// The proxy rules of every fault of `app`, for the routes pushed to the proxy; a
    /// dependency fault's callers are the processes of its target's instances now, so an
    /// instance restarted under the fault stays under it.
    pub(super) fn rules_for(
        &self,
        app: &str,
        instances: &[gauntlet_runtime::Instance],
    ) -> Vec<FaultRule> {
        let mut rules = Vec::new();
        for fault in self.proxy_faults.values().filter(|f| f.app == app) {
            let callers = fault.callers.as_ref().map(|(caller, revisions)| {
                instances
                    .iter()
                    .filter(|i| &i.app == caller && revisions.contains(&i.revision))
                    .filter_map(|i| i.pid)
                    .collect::<Vec<u32>>()
            });
            rules.extend(fault.rules.iter().map(|rule| FaultRule {
                callers: callers.clone(),
                ..rule.clone()
            }));
        }
        rules
    }
}

fn run_key(id: &str) -> String {
    format!("chaos.run.{id}")
}

fn journal_key(id: &str) -> String {
    format!("chaos.journal.{id}")
}

const INDEX_KEY: &str = "chaos.index";
const ACTIVE_KEY: &str = "chaos.active";
const PAUSED_KEY: &str = "chaos.paused";
const SCHEDULES_KEY: &str = "chaos.schedules";

/// An agent id for fault `id` on its `n`th target: the engine's ids may hold characters a
/// file name must not.
fn agent_id(id: &str, n: usize) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let clean = clean.get(..56).unwrap_or(&clean).to_string();
    format!("{clean}--{n}")
}

fn belongs_to(agent: &str, id: &str) -> bool {
    agent
        .rsplit_once("--")
        .is_some_and(|(prefix, _)| prefix == agent_id(id, 0).trim_end_matches("--0"))
}

impl<R: Runtime + Clone> Controller<R> {
    fn chaos_config(&self) -> Result<&ChaosConfig, ChaosError> {
        self.inner.chaos.as_ref().ok_or(ChaosError::Unavailable)
    }

    /// Starts a run of `experiment` (by `actor`); returns its id.
    pub async fn chaos_run(&self, experiment: &str, actor: &str) -> Result<String, ChaosError> {
        self.start_run(experiment, actor, None).await
    }

    async fn start_run(
        &self,
        experiment: &str,
        actor: &str,
        gate: Option<Gate>,
    ) -> Result<String, ChaosError> {
        let lease_ms = self.chaos_config()?.lease.as_millis() as u64;
        self.load_chaos();
        let mut spec = self
            .experiment(experiment)
            .ok_or_else(|| ChaosError::UnknownExperiment(experiment.to_string()))?;
        if let Some(gate) = &gate {
            // Validation holds a gate's experiment to this; a run never acts elsewhere.
            spec.target.application = gate.app.clone();
            spec.target.revision = TargetRevision::Candidate;
        }
        let id = {
            let chaos = lock(&self.inner.chaos_runs);
            if chaos.paused {
                return Err(ChaosError::Paused);
            }
            if let Some((run, _)) = chaos
                .runs
                .iter()
                .find(|(_, r)| r.stored.experiment == experiment)
            {
                return Err(ChaosError::AlreadyRunning {
                    experiment: experiment.to_string(),
                    run: run.clone(),
                });
            }
            format!("{experiment}-{}", now_ms())
        };
        let seed = now_ms() ^ u64::from(std::process::id()).rotate_left(32);
        let stored = StoredRun {
            experiment: experiment.to_string(),
            actor: actor.to_string(),
            spec,
            state: RunState {
                lease_ms,
                ..RunState::new(id.clone(), seed)
            },
            gate: gate.clone(),
        };
        self.inner
            .store
            .put(&run_key(&id), &stored)
            .map_err(|e| ChaosError::Store(e.to_string()))?;
        let summary = RunSummary {
            id: id.clone(),
            experiment: experiment.to_string(),
            gate: gate.clone(),
            status: RunStatus::Running,
            deviated: false,
            started_ms: now_ms(),
            ended_ms: None,
        };
        self.update_index(summary);
        {
            let mut chaos = lock(&self.inner.chaos_runs);
            chaos.runs.insert(
                id.clone(),
                ActiveRun {
                    stored,
                    pending: Observations::default(),
                    wake_at_ms: None,
                    due: true,
                },
            );
            self.persist_active(&chaos);
        }
        let (app, why) = match &gate {
            Some(g) => (
                g.app.as_str(),
                format!(" to judge candidate {} at step {}", g.revision, g.step + 1),
            ),
            None => ("", String::new()),
        };
        let who = match &gate {
            Some(_) => Actor::Controller,
            None => Actor::User(actor.to_string()),
        };
        let _ = self
            .audit(vec![AuditRecord::now(
                who,
                app,
                "chaos-run",
                format!("experiment {experiment} started as run {id}{why}"),
            )])
            .await;
        self.inner.chaos_now.notify_one();
        Ok(id)
    }

    /// Brings the runs of rollouts' chaos steps in line with `wanted` (each gate with its
    /// experiment), level-triggered as the rest of the controller: a wanted gate without a run
    /// gets one, a run whose gate is no longer wanted (the rollout aborted, was promoted past
    /// the step, or has a new candidate) is aborted. Returns each application's verdicts of
    /// finished gates, for its rollout's next step.
    pub(super) async fn sync_gates(
        &self,
        wanted: &BTreeMap<Gate, String>,
    ) -> BTreeMap<String, Vec<ChaosVerdict>> {
        let mut verdicts: BTreeMap<String, Vec<ChaosVerdict>> = BTreeMap::new();
        if self.inner.chaos.is_none() {
            for (gate, experiment) in wanted {
                verdicts
                    .entry(gate.app.clone())
                    .or_default()
                    .push(ChaosVerdict {
                        experiment: experiment.clone(),
                        passed: false,
                        message: ChaosError::Unavailable.to_string(),
                    });
            }
            return verdicts;
        }
        self.load_chaos();
        let mut to_start = Vec::new();
        {
            let mut chaos = lock(&self.inner.chaos_runs);
            let mut aborted = false;
            for run in chaos.runs.values_mut() {
                let Some(gate) = &run.stored.gate else {
                    continue;
                };
                if !wanted.contains_key(gate)
                    && run.pending.abort.is_none()
                    && run.stored.state.is_active()
                {
                    run.pending.abort = Some(AbortRequest {
                        actor: format!("rollout {}", gate.app),
                        reason: format!("the rollout of `{}` left its chaos step", gate.app),
                    });
                    run.due = true;
                    aborted = true;
                }
            }
            chaos.gates.retain(|gate, _| wanted.contains_key(gate));
            for (gate, experiment) in wanted {
                let entry = chaos.gates.entry(gate.clone()).or_insert_with(|| GateRun {
                    experiment: experiment.clone(),
                    ..GateRun::default()
                });
                match (&entry.verdict, &entry.run) {
                    (Some(verdict), _) => verdicts
                        .entry(gate.app.clone())
                        .or_default()
                        .push(verdict.clone()),
                    (None, Some(_)) => {}
                    (None, None) => to_start.push((gate.clone(), experiment.clone())),
                }
            }
            if aborted {
                self.inner.chaos_now.notify_one();
            }
        }
        for (gate, experiment) in to_start {
            let actor = format!("rollout {}", gate.app);
            let started = self
                .start_run(&experiment, &actor, Some(gate.clone()))
                .await;
            let mut chaos = lock(&self.inner.chaos_runs);
            let Some(entry) = chaos.gates.get_mut(&gate) else {
                continue;
            };
            match started {
                Ok(run) => {
                    entry.run = Some(run);
                    entry.waiting = None;
                }
                // The step waits: pause-all holds gates too, and runs never overlap.
                Err(e @ (ChaosError::Paused | ChaosError::AlreadyRunning { .. })) => {
                    entry.waiting = Some(e.to_string());
                }
                Err(e) => {
                    let verdict = ChaosVerdict {
                        experiment: experiment.clone(),
                        passed: false,
                        message: format!("could not start: {e}"),
                    };
                    entry.verdict = Some(verdict.clone());
                    verdicts.entry(gate.app.clone()).or_default().push(verdict);
                }
            }
        }
        verdicts
    }

    /// The chaos step `app`'s rollout is at, if any: its experiment, run and verdict.
    pub fn chaos_gate(&self, app: &str) -> Option<GateRun> {
        lock(&self.inner.chaos_runs)
            .gates
            .iter()
            .find(|(gate, _)| gate.app == app)
            .map(|(_, run)| run.clone())
    }

    /// What a run of `experiment` would do now, touching nothing (`--dry-run`).
    pub fn chaos_plan(&self, experiment: &str) -> Result<engine::Plan, ChaosError> {
        let spec = self
            .experiment(experiment)
            .ok_or_else(|| ChaosError::UnknownExperiment(experiment.to_string()))?;
        let fleet = self.fleet(&spec.target.application);
        Ok(engine::plan(&spec, &fleet, now_ms()))
    }

    /// Asks run `id` to stop: its faults are removed and its rollbacks run.
    pub fn chaos_abort(&self, id: &str, actor: &str) -> Result<(), ChaosError> {
        self.load_chaos();
        let mut chaos = lock(&self.inner.chaos_runs);
        let run = chaos
            .runs
            .get_mut(id)
            .ok_or_else(|| ChaosError::UnknownRun(id.to_string()))?;
        run.pending.abort = Some(AbortRequest {
            actor: actor.to_string(),
            reason: format!("aborted by {actor}"),
        });
        run.due = true;
        drop(chaos);
        self.inner.chaos_now.notify_one();
        Ok(())
    }

    /// Stops every run and refuses new ones until [`Controller::chaos_resume_all`].
    pub fn chaos_pause_all(&self, actor: &str) -> Vec<String> {
        self.load_chaos();
        let mut chaos = lock(&self.inner.chaos_runs);
        chaos.paused = true;
        let _ = self.inner.store.put(PAUSED_KEY, &true);
        let mut aborted = Vec::new();
        for (id, run) in chaos.runs.iter_mut() {
            run.pending.abort = Some(AbortRequest {
                actor: actor.to_string(),
                reason: format!("chaos paused by {actor}"),
            });
            run.due = true;
            aborted.push(id.clone());
        }
        drop(chaos);
        self.inner.chaos_now.notify_one();
        aborted
    }

    pub fn chaos_resume_all(&self) {
        self.load_chaos();
        lock(&self.inner.chaos_runs).paused = false;
        let _ = self.inner.store.put(PAUSED_KEY, &false);
    }

    pub fn chaos_paused(&self) -> bool {
        self.load_chaos();
        lock(&self.inner.chaos_runs).paused
    }

    /// Each scheduled experiment with its schedule and next fire (Unix ms).
    pub fn chaos_schedules(&self) -> Vec<(String, String, u64)> {
        self.load_chaos();
        lock(&self.inner.chaos_runs)
            .schedules
            .iter()
            .map(|(name, e)| (name.clone(), e.expression.clone(), e.next_fire_ms))
            .collect()
    }

    /// Every run, newest last.
    pub fn chaos_runs(&self) -> Vec<RunSummary> {
        self.inner
            .store
            .get::<Vec<RunSummary>>(INDEX_KEY)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// One run: its journal (live while active).
    pub fn chaos_run_view(&self, id: &str) -> Option<RunView> {
        self.load_chaos();
        if let Some(run) = lock(&self.inner.chaos_runs).runs.get(id) {
            return Some(RunView {
                id: id.to_string(),
                experiment: run.stored.experiment.clone(),
                actor: run.stored.actor.clone(),
                journal: run.stored.state.journal.clone(),
                state: Some(run.stored.state.clone()),
            });
        }
        self.inner
            .store
            .get::<RunView>(&journal_key(id))
            .ok()
            .flatten()
    }

    fn experiment(&self, name: &str) -> Option<ChaosExperimentSpec> {
        let state = read(&self.inner.state);
        let desired = state.desired.as_ref()?;
        desired.experiments.get(name).map(|e| e.value.clone())
    }

    /// The application's revisions and instances, as the engine targets them.
    fn fleet(&self, app: &str) -> Fleet {
        let (stable, candidate) = match lock(&self.inner.rollouts).get(app) {
            Some((rollout, _)) => (
                rollout.state.stable.clone(),
                rollout.state.candidate.clone(),
            ),
            None => (
                read(&self.inner.state)
                    .desired
                    .as_ref()
                    .and_then(|d| d.applications.get(app))
                    .map(|d| d.revision.clone()),
                None,
            ),
        };
        let instances = self
            .inner
            .runtime
            .instances()
            .into_iter()
            .filter(|i| i.app == app && i.pid.is_some())
            .map(|i| FleetInstance {
                id: i.id.0.clone(),
                revision: i.revision.clone(),
            })
            .collect();
        Fleet {
            stable,
            candidate,
            instances,
        }
    }

    /// Loads active runs from the store once, marking them restarted, and sweeps the faults of
    /// agents that died while the controller was away.
    fn load_chaos(&self) {
        let mut chaos = lock(&self.inner.chaos_runs);
        if chaos.loaded {
            return;
        }
        chaos.loaded = true;
        chaos.paused = self
            .inner
            .store
            .get::<bool>(PAUSED_KEY)
            .ok()
            .flatten()
            .unwrap_or(false);
        chaos.schedules = self
            .inner
            .store
            .get(SCHEDULES_KEY)
            .ok()
            .flatten()
            .unwrap_or_default();
        let ids: Vec<String> = self
            .inner
            .store
            .get(ACTIVE_KEY)
            .ok()
            .flatten()
            .unwrap_or_default();
        for id in ids {
            if let Ok(Some(stored)) = self.inner.store.get::<StoredRun>(&run_key(&id)) {
                if let Some(gate) = &stored.gate {
                    chaos.gates.insert(
                        gate.clone(),
                        GateRun {
                            experiment: stored.experiment.clone(),
                            run: Some(id.clone()),
                            ..GateRun::default()
                        },
                    );
                }
                chaos.runs.insert(
                    id,
                    ActiveRun {
                        stored,
                        pending: Observations {
                            restarted: true,
                            ..Observations::default()
                        },
                        wake_at_ms: None,
                        due: true,
                    },
                );
            }
        }
        if let Some(cfg) = &self.inner.chaos {
            let swept = agents::sweep(&cfg.faults_dir);
            if !swept.is_empty() {
                tracing::warn!("removed faults whose agents had died: {swept:?}");
            }
        }
    }

    fn persist_active(&self, chaos: &ChaosRuns) {
        let ids: Vec<&String> = chaos.runs.keys().collect();
        if let Err(e) = self.inner.store.put(ACTIVE_KEY, &ids) {
            tracing::error!("cannot store the active chaos runs: {e}");
        }
    }

    fn update_index(&self, summary: RunSummary) {
        let mut index = self.chaos_runs();
        match index.iter_mut().find(|s| s.id == summary.id) {
            Some(s) => *s = summary,
            None => index.push(summary),
        }
        let extra = index.len().saturating_sub(INDEX_KEPT);
        index.drain(..extra);
        if let Err(e) = self.inner.store.put(INDEX_KEY, &index) {
            tracing::error!("cannot store the chaos index: {e}");
        }
    }

    /// Steps every run that is due, forever.
    pub(super) async fn chaos_loop(self) {
        if self.inner.chaos.is_none() {
            return;
        }
        self.load_chaos();
        loop {
            let fire = self.schedule_tick().await;
            self.step_chaos().await;
            let next = lock(&self.inner.chaos_runs)
                .runs
                .values()
                .filter_map(|r| r.wake_at_ms)
                .chain(fire)
                .min();
            let wait = next
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            let _ = tokio::time::timeout(wait, self.inner.chaos_now.notified()).await;
        }
    }

    /// Starts the scheduled experiments that are due ([`cron::tick`]: a fire while a run of
    /// the same experiment goes on, or while chaos is paused, is skipped and recorded, never
    /// queued; fires missed while the controller was away collapse into one). Returns the
    /// next fire of any schedule.
    async fn schedule_tick(&self) -> Option<u64> {
        let scheduled: Vec<(String, String, String)> = {
            let state = read(&self.inner.state);
            state
                .desired
                .as_ref()?
                .experiments
                .iter()
                .filter_map(|(name, e)| {
                    let schedule = e.value.schedule.clone()?;
                    Some((name.clone(), schedule, e.value.target.application.clone()))
                })
                .collect()
        };
        let now = now_ms();
        let mut starts = Vec::new();
        let mut records = Vec::new();
        let next = {
            let mut chaos = lock(&self.inner.chaos_runs);
            let before = chaos.schedules.clone();
            chaos
                .schedules
                .retain(|name, _| scheduled.iter().any(|(n, _, _)| n == name));
            for (name, expression, app) in &scheduled {
                let Ok(cron) = Cron::parse(expression) else {
                    continue;
                };
                let next = match chaos.schedules.get(name) {
                    Some(entry) if &entry.expression == expression => Some(entry.next_fire_ms),
                    _ => cron.next_after(now),
                };
                let Some(next) = next else {
                    continue;
                };
                let running = chaos.runs.values().any(|r| &r.stored.experiment == name);
                let tick = cron::tick(&cron, next, running || chaos.paused, now);
                if tick.start {
                    starts.push(name.clone());
                }
                if tick.skipped {
                    let why = if chaos.paused {
                        "chaos is paused"
                    } else {
                        "a run of it is still going"
                    };
                    records.push(AuditRecord::now(
                        Actor::Controller,
                        app,
                        "chaos-skipped",
                        format!("scheduled run of {name} skipped: {why}"),
                    ));
                }
                match tick.next_fire_ms {
                    Some(next_fire_ms) => {
                        chaos.schedules.insert(
                            name.clone(),
                            ScheduleEntry {
                                expression: expression.clone(),
                                next_fire_ms,
                            },
                        );
                    }
                    None => {
                        chaos.schedules.remove(name);
                    }
                }
            }
            if chaos.schedules != before {
                if let Err(e) = self.inner.store.put(SCHEDULES_KEY, &chaos.schedules) {
                    tracing::error!("cannot store the chaos schedules: {e}");
                }
            }
            chaos.schedules.values().map(|e| e.next_fire_ms).min()
        };
        let _ = self.audit(records).await;
        for name in starts {
            if let Err(e) = self.start_run(&name, "schedule", None).await {
                tracing::warn!("scheduled run of {name} did not start: {e}");
            }
        }
        next
    }

    async fn step_chaos(&self) {
        let now = now_ms();
        let due: Vec<String> = lock(&self.inner.chaos_runs)
            .runs
            .iter()
            .filter(|(_, r)| r.due || r.wake_at_ms.is_some_and(|w| w <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.step_run(&id).await;
        }
    }

    async fn step_run(&self, id: &str) {
        let (stored, mut obs) = {
            let mut chaos = lock(&self.inner.chaos_runs);
            let Some(run) = chaos.runs.get_mut(id) else {
                return;
            };
            run.due = false;
            (run.stored.clone(), std::mem::take(&mut run.pending))
        };
        obs.fleet = self.fleet(&stored.spec.target.application);
        let now = now_ms();
        let step = engine::step(&stored.spec, &stored.state, &obs, now);
        let app = stored.spec.target.application.clone();
        let records: Vec<AuditRecord> = step
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Journal(e) => Some(AuditRecord::now(
                    Actor::Controller,
                    &app,
                    &format!("chaos-{}", kebab(&e.reason)),
                    format!("run {id}: {}", e.message),
                )),
                _ => None,
            })
            .collect();
        let next = StoredRun {
            state: step.state.clone(),
            ..stored.clone()
        };
        // Committed before anything is done about it.
        if let Err(e) = self
            .inner
            .store
            .put_with_records(&run_key(id), &next, records)
        {
            tracing::error!("cannot store chaos run {id}: {e}; it is retried");
            let mut chaos = lock(&self.inner.chaos_runs);
            if let Some(run) = chaos.runs.get_mut(id) {
                run.pending = obs;
                run.pending.fleet = Fleet::default();
                run.due = true;
            }
            return;
        }
        // Removals and renewals first, the proxy's included, so that rollbacks run, and the
        // run reads as ended, only once its faults are gone.
        let (faults, actions): (Vec<Action>, Vec<Action>) = step
            .actions
            .into_iter()
            .partition(|a| matches!(a, Action::RemoveFault { .. } | Action::RenewLease { .. }));
        let mut proxy_changed = false;
        for action in faults {
            match action {
                Action::RenewLease {
                    id: fault_id,
                    lease_expires_ms,
                } => proxy_changed |= self.renew(&fault_id, lease_expires_ms),
                Action::RemoveFault { id: fault_id } => {
                    proxy_changed |= self.remove_fault(&fault_id).await
                }
                _ => {}
            }
        }
        if std::mem::take(&mut proxy_changed) {
            self.push_traffic().await;
        }
        {
            let mut chaos = lock(&self.inner.chaos_runs);
            if let Some(run) = chaos.runs.get_mut(id) {
                run.stored = next.clone();
                run.wake_at_ms = step.wake_at_ms;
            }
        }
        for action in actions {
            match action {
                Action::Probe { ticket, probe, .. } => {
                    let this = self.clone();
                    let id = id.to_string();
                    let fleet = obs.fleet.clone();
                    let target = stored.spec.target.clone();
                    tokio::spawn(async move {
                        let outcome = this.probe(&probe, &target, &fleet).await;
                        this.answer(&id, |p| p.probes.push(ProbeResult { ticket, outcome }));
                    });
                }
                Action::InjectFault {
                    ticket,
                    id: fault_id,
                    fault,
                    targets,
                    lease_expires_ms,
                } => {
                    if matches!(fault, Fault::Http(_) | Fault::Dependency(_)) {
                        let outcome =
                            self.proxy_fault(&fault_id, &fault, &targets, lease_expires_ms);
                        proxy_changed |= outcome.is_ok();
                        self.answer(id, |p| {
                            p.activities.push(ActivityResult { ticket, outcome })
                        });
                        continue;
                    }
                    let this = self.clone();
                    let id = id.to_string();
                    tokio::spawn(async move {
                        let outcome = this
                            .process_fault(&fault_id, &fault, &targets, lease_expires_ms)
                            .await;
                        this.answer(&id, |p| {
                            p.activities.push(ActivityResult { ticket, outcome })
                        });
                    });
                }
                Action::RenewLease { .. } | Action::RemoveFault { .. } => {}
                Action::RunAction {
                    ticket,
                    command,
                    timeout_ms,
                    ..
                }
                | Action::RunRollback {
                    ticket,
                    command,
                    timeout_ms,
                    ..
                } => {
                    let this = self.clone();
                    let id = id.to_string();
                    tokio::spawn(async move {
                        let outcome = run_command(&command, timeout_ms).await;
                        this.answer(&id, |p| {
                            p.activities.push(ActivityResult { ticket, outcome })
                        });
                    });
                }
                Action::Journal(_) => {}
                Action::Finished {
                    status, deviated, ..
                } => self.finish(id, &next, status, deviated),
            }
        }
        if proxy_changed {
            self.push_traffic().await;
        }
    }

    /// Queues an answer for run `id` and wakes the loop.
    fn answer(&self, id: &str, f: impl FnOnce(&mut Observations)) {
        let mut chaos = lock(&self.inner.chaos_runs);
        if let Some(run) = chaos.runs.get_mut(id) {
            f(&mut run.pending);
            run.due = true;
        }
        drop(chaos);
        self.inner.chaos_now.notify_one();
    }

    /// Files a finished run's journal (the engine's `Finished` event is its audit record)
    /// and hands a gate's verdict to its rollout.
    fn finish(&self, id: &str, stored: &StoredRun, status: RunStatus, deviated: bool) {
        let view = RunView {
            id: id.to_string(),
            experiment: stored.experiment.clone(),
            actor: stored.actor.clone(),
            journal: stored.state.journal.clone(),
            state: None,
        };
        if let Err(e) = self.inner.store.put(&journal_key(id), &view) {
            tracing::error!("cannot store the journal of chaos run {id}: {e}");
        }
        self.update_index(RunSummary {
            id: id.to_string(),
            experiment: stored.experiment.clone(),
            gate: stored.gate.clone(),
            status,
            deviated,
            started_ms: stored.state.journal.started_ms.unwrap_or(0),
            ended_ms: Some(now_ms()),
        });
        {
            let mut chaos = lock(&self.inner.chaos_runs);
            chaos.runs.remove(id);
            self.persist_active(&chaos);
            if let Some(gate) = &stored.gate {
                if let Some(entry) = chaos.gates.get_mut(gate) {
                    if status == RunStatus::Interrupted {
                        // The controller restarted under it: the candidate was not judged, so
                        // the step runs the experiment again.
                        entry.run = None;
                    } else if let Some(verdict) = stored.state.journal.gate() {
                        entry.verdict = Some(ChaosVerdict {
                            experiment: stored.experiment.clone(),
                            passed: verdict.passed,
                            message: format!("run {id}: {}", verdict.message),
                        });
                    }
                }
            }
        }
        if stored.gate.is_some() {
            self.inner.reconcile_now.notify_one();
        }
    }

    async fn probe(
        &self,
        probe: &Probe,
        target: &Target,
        fleet: &Fleet,
    ) -> Result<ProbeOutput, String> {
        let app = target.application.as_str();
        let timeout =
            Duration::from_millis(probe.timeout.as_ref().map(|t| t.as_ms()).unwrap_or(10_000));
        if let Some(http) = &probe.http {
            let url = match http.url.contains(TARGET_VAR) {
                true => http
                    .url
                    .replace(TARGET_VAR, &self.target_addr(target, fleet)?),
                false => http.url.clone(),
            };
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .no_proxy()
                .build()
                .map_err(|e| e.to_string())?;
            let method = reqwest::Method::from_bytes(http.method.as_bytes())
                .map_err(|e| format!("method {}: {e}", http.method))?;
            let mut request = client.request(method, &url);
            for (name, value) in &http.headers {
                request = request.header(name, value);
            }
            if let Some(body) = &http.body {
                request = request.body(body.clone());
            }
            let started = Instant::now();
            let response = request.send().await.map_err(|e| {
                // reqwest's own message hides the cause (a timeout reads "error sending request").
                let timeout = humantime::format_duration(timeout).to_string();
                measure::request_error(&format!("{} {url}", http.method), &timeout, e)
            })?;
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            return Ok(ProbeOutput::Http {
                status,
                body,
                latency_ms: started.elapsed().as_millis() as u64,
            });
        }
        if let Some(metric) = &probe.metric {
            let provider: gauntlet_rollout::analysis::Provider =
                match (&metric.builtin, &metric.prometheus) {
                    (Some(name), _) => {
                        // Whose: as said, else the target's revision (stable for `all`).
                        let revision = match metric.revision.unwrap_or(target.revision) {
                            TargetRevision::Candidate => "candidate",
                            TargetRevision::Stable | TargetRevision::All => "stable",
                        };
                        let mut builtin = serde_json::json!({"metric": name, "revision": revision});
                        if let Some(window) = &metric.window {
                            builtin["window"] = serde_json::json!(window.to_string());
                        }
                        serde_json::from_value(serde_json::json!({ "builtin": builtin }))
                            .map_err(|e| e.to_string())?
                    }
                    (None, Some(q)) => {
                        // PromQL durations are whole: `{{window}}` in seconds (default 1m).
                        let window = metric
                            .window
                            .as_ref()
                            .map_or(60, |w| w.as_ms().div_ceil(1000));
                        let query = q.query.replace("{{window}}", &format!("{window}s"));
                        serde_json::from_value(serde_json::json!({"prometheus": {
                            "address": q.address, "query": query,
                        }}))
                        .map_err(|e| e.to_string())?
                    }
                    (None, None) => return Err("a metric probe needs builtin or prometheus".into()),
                };
            let ctx = {
                let live = lock(&self.inner.live);
                MeasureContext::from_readings(
                    app,
                    fleet.stable.as_deref(),
                    fleet.candidate.as_deref(),
                    &live,
                )
            };
            let value = tokio::time::timeout(timeout, measure::measure(&provider, &ctx))
                .await
                .map_err(|_| format!("no value within {timeout:?}"))??;
            let value = value.as_f64().unwrap_or(f64::NAN);
            return Ok(ProbeOutput::Metric { value });
        }
        if let Some(command) = &probe.command {
            let (exit_code, stdout) = command_output(&command.command, timeout).await?;
            return Ok(ProbeOutput::Command { exit_code, stdout });
        }
        Err("the probe has no http, metric or command".into())
    }

    /// `127.0.0.1:PORT` of one running instance of the target's revisions (ready ones
    /// first): what `${TARGET}` in an http probe's url becomes.
    fn target_addr(&self, target: &Target, fleet: &Fleet) -> Result<String, String> {
        let revisions = fleet.revisions(target.revision);
        let mut instances: Vec<_> = self
            .inner
            .runtime
            .instances()
            .into_iter()
            .filter(|i| {
                i.app == target.application && i.pid.is_some() && revisions.contains(&i.revision)
            })
            .collect();
        instances.sort_by_key(|i| (!i.is_ready(), i.id.0.clone()));
        instances
            .first()
            .map(|i| format!("127.0.0.1:{}", i.port))
            .ok_or_else(|| {
                format!(
                    "{TARGET_VAR}: `{}` has no running instance of its {} revision",
                    target.application, target.revision
                )
            })
    }

    fn proxy_fault(
        &self,
        fault_id: &str,
        fault: &Fault,
        targets: &Targets,
        lease_expires_ms: u64,
    ) -> Result<String, String> {
        let delay = |d: &gauntlet_chaos::spec::Delay| FaultKind::Delay {
            fixed_ms: d.latency.as_ms(),
            jitter_ms: d.jitter.as_ref().map(|j| j.as_ms()).unwrap_or(0),
        };
        let (app, revisions, kind, percent, callers) = match fault {
            Fault::Http(http) => {
                let kind = match (&http.delay, &http.abort) {
                    (Some(d), _) => delay(d),
                    (None, Some(a)) => FaultKind::Abort { status: a.status },
                    (None, None) => FaultKind::Reset,
                };
                let app = targets.application.clone();
                (app, targets.revisions.clone(), kind, http.percent, None)
            }
            Fault::Dependency(dep) => {
                let kind = match (&dep.delay, &dep.blackhole) {
                    (Some(d), _) => delay(d),
                    (None, Some(_)) => FaultKind::Blackhole,
                    // Refused: the connection is closed before any answer.
                    (None, None) => FaultKind::Reset,
                };
                // Every revision of the dependency serves the target's calls.
                let fleet = self.fleet(&dep.application);
                let revisions: Vec<String> =
                    fleet.stable.into_iter().chain(fleet.candidate).collect();
                let callers = (targets.application.clone(), targets.revisions.clone());
                (
                    dep.application.clone(),
                    revisions,
                    kind,
                    dep.percent,
                    Some(callers),
                )
            }
            _ => return Err("not a traffic fault".into()),
        };
        if revisions.is_empty() {
            return Err(format!(
                "application `{app}` has no revision serving traffic"
            ));
        }
        let rules: Vec<FaultRule> = revisions
            .iter()
            .map(|revision| FaultRule {
                revision: revision.clone(),
                kind,
                percent: gauntlet_chaos::spec::percent_units(percent),
                expires_at_ms: lease_expires_ms,
                callers: None,
            })
            .collect();
        let from = match &callers {
            Some((caller, revisions)) => format!(" for calls from `{caller}` {revisions:?}"),
            None => String::new(),
        };
        let shown = format!(
            "{kind:?} on {percent} % of `{app}` {revisions:?}{from} until {lease_expires_ms}"
        );
        lock(&self.inner.chaos_runs).proxy_faults.insert(
            fault_id.to_string(),
            ProxyFault {
                app,
                rules,
                callers,
            },
        );
        Ok(shown)
    }

    async fn process_fault(
        &self,
        fault_id: &str,
        fault: &Fault,
        targets: &Targets,
        lease_expires_ms: u64,
    ) -> Result<String, String> {
        let cfg = self.chaos_config().map_err(|e| e.to_string())?.clone();
        let instances = self.inner.runtime.instances();
        let mut done = Vec::new();
        for (n, target) in targets.instances.iter().enumerate() {
            let Some(inst) = instances.iter().find(|i| &i.id.0 == target) else {
                return Err(format!("instance {target} is gone"));
            };
            let Some(pid) = inst.pid else {
                return Err(format!("instance {target} has no process"));
            };
            let agent_fault = match fault {
                Fault::Kill(kill) => {
                    let signal = signal_number(&kill.signal.to_string());
                    gauntlet_runtime::local::os::signal_group(pid, signal)
                        .map_err(|e| format!("{} to {target}: {e}", kill.signal))?;
                    done.push(format!("{} to {target} (pid {pid})", kill.signal));
                    continue;
                }
                Fault::Pause(_) => {
                    let start_time = gauntlet_runtime::local::os::start_time(pid)
                        .ok_or_else(|| format!("instance {target} is not running"))?;
                    agents::Fault::Pause { pid, start_time }
                }
                Fault::Cpu(cpu) => agents::Fault::Cpu {
                    cores: cpu.cores,
                    load_percent: cpu.load,
                },
                Fault::Memory(m) => agents::Fault::Memory { bytes: m.size.0 },
                Fault::DiskFill(d) => {
                    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
                        .map_err(|e| format!("the working directory of {target}: {e}"))?;
                    let dir = match &d.path {
                        Some(sub) => cwd.join(sub),
                        None => cwd,
                    };
                    agents::Fault::DiskFill {
                        dir,
                        bytes: d.size.0,
                    }
                }
                Fault::Http(_) | Fault::Dependency(_) => return Err("not a process fault".into()),
            };
            let agent = agent_id(fault_id, n);
            spawn_agent(&cfg, &agent, &agent_fault, lease_expires_ms)
                .await
                .map_err(|e| format!("{target}: {e}"))?;
            done.push(format!("{agent} on {target}"));
        }
        Ok(done.join("; "))
    }

    /// Moves fault `id`'s lease; returns whether the proxy's rules changed.
    fn renew(&self, fault_id: &str, lease_expires_ms: u64) -> bool {
        let mut chaos = lock(&self.inner.chaos_runs);
        if let Some(fault) = chaos.proxy_faults.get_mut(fault_id) {
            for rule in &mut fault.rules {
                rule.expires_at_ms = lease_expires_ms;
            }
            return true;
        }
        drop(chaos);
        if let Some(cfg) = &self.inner.chaos {
            for record in agents::records(&cfg.faults_dir) {
                if belongs_to(&record.id, fault_id) {
                    if let Err(e) = agents::renew(&cfg.faults_dir, &record.id, lease_expires_ms) {
                        tracing::warn!("cannot renew fault {}: {e}", record.id);
                    }
                }
            }
        }
        false
    }

    /// Removes fault `id` wherever it is; returns whether the proxy's rules changed.
    async fn remove_fault(&self, fault_id: &str) -> bool {
        if lock(&self.inner.chaos_runs)
            .proxy_faults
            .remove(fault_id)
            .is_some()
        {
            return true;
        }
        if let Some(cfg) = self.inner.chaos.clone() {
            let fault_id = fault_id.to_string();
            let _ = tokio::task::spawn_blocking(move || {
                agents::stop_matching(&cfg.faults_dir, AGENT_GRACE, |agent| {
                    belongs_to(agent, &fault_id)
                })
            })
            .await;
        }
        false
    }
}

async fn spawn_agent(
    cfg: &ChaosConfig,
    id: &str,
    fault: &agents::Fault,
    until_ms: u64,
) -> Result<(), String> {
    let fault_json = serde_json::to_string(fault).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&cfg.faults_dir).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(cfg.faults_dir.join(format!("{id}.log")))
        .map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new(&cfg.agent_bin);
    cmd.args(["fault", "run", "--dir"])
        .arg(&cfg.faults_dir)
        .args(["--id", id, "--until-ms", &until_ms.to_string()])
        .args(["--fault", &fault_json])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // Its own session: the agent outlives the controller and ends its fault on its own clock.
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting the fault agent: {e}"))?;
    // The agent's record appears once the fault is applied or about to be; a refusal exits.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if agents::record(&cfg.faults_dir, id).is_some() {
            // Reaped in the background when it ends.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(cfg.faults_dir.join(format!("{id}.log")))
                .unwrap_or_default();
            return Err(format!("the fault agent exited ({status}): {}", log.trim()));
        }
        if Instant::now() >= deadline {
            let _ = child.start_kill();
            return Err("the fault agent did not start within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn signal_number(name: &str) -> libc::c_int {
    match name {
        "SIGTERM" => libc::SIGTERM,
        "SIGINT" => libc::SIGINT,
        "SIGHUP" => libc::SIGHUP,
        "SIGQUIT" => libc::SIGQUIT,
        "SIGUSR1" => libc::SIGUSR1,
        "SIGUSR2" => libc::SIGUSR2,
        _ => libc::SIGKILL,
    }
}

/// Runs `command` (no shell) with a timeout: its stdout, or the failure with its output.
async fn run_command(command: &[String], timeout_ms: u64) -> Result<String, String> {
    let (code, stdout) = command_output(command, Duration::from_millis(timeout_ms)).await?;
    if code == 0 {
        Ok(stdout)
    } else {
        Err(format!("exit status {code}: {stdout}"))
    }
}

/// Runs a probe's, action's or rollback's command (see [`crate::command`]): its exit code
/// and its output, stdout then stderr.
async fn command_output(command: &[String], timeout: Duration) -> Result<(i32, String), String> {
    let text = humantime::format_duration(timeout).to_string();
    let done = crate::command::run(command, timeout, &text).await?;
    let mut out = String::from_utf8_lossy(&done.stdout).into_owned();
    if !done.stderr.is_empty() {
        out.push_str(&String::from_utf8_lossy(&done.stderr));
    }
    Ok((done.status.code().unwrap_or(-1), out.trim_end().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_are_file_safe_and_belong_to_their_fault() {
        let a = agent_id("kill-one/run-1/f2", 0);
        assert_eq!(a, "kill-one_run-1_f2--0");
        assert!(belongs_to(&a, "kill-one/run-1/f2"));
        assert!(belongs_to(
            &agent_id("kill-one/run-1/f2", 3),
            "kill-one/run-1/f2"
        ));
        assert!(!belongs_to(&a, "kill-one/run-1/f"));
    }
}
