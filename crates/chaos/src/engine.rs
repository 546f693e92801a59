//! The experiment run: `step(spec, state, observations, now_ms) -> (state, actions)`, pure.
//!
//! One [`RunState`] per run. The shell calls [`step`] whenever something may have changed
//! (a probe answered, an action or injection reported back, an operator aborted, the wake-up
//! time [`Step::wake_at_ms`]), commits the new state to the store, then executes the actions.
//! Actions that expect an answer carry a `ticket`; the shell feeds the answer back with it.
//!
//! # Phases
//!
//! 1. **Before**: every probe runs once. Any probe outside its tolerance (or failing, or not
//!    answering within its timeout) ends the run **Failed**, not deviated: the system was not
//!    steady, so nothing is injected.
//! 2. **Method**: activities start in order. A foreground activity holds the next one until it
//!    is over: a pause for its duration, an action until its command returns (or times out:
//!    recorded, not fatal, as in Chaos Toolkit), a fault for its `duration`, or, without one,
//!    until the runtime or proxy confirmed it (it then stays in place until the run ends). A
//!    `background` activity starts and the next one starts with it; the method waits for every
//!    background activity before it ends. With `continuous`, every probe runs each `interval`;
//!    `failureThreshold` consecutive failures of one probe end the run **Aborted**, deviated.
//!    A fault that cannot be targeted (nothing to select, over the blast radius) or that the
//!    shell reports it could not inject ends the run **Aborted**: an experiment that did not
//!    do what it says proves nothing.
//! 3. **After**: every probe runs once more, with held faults still in place. A failure ends
//!    the run **Failed**, deviated; otherwise it is **Completed**.
//! 4. **Ending**, whatever the outcome: every fault still in place is removed (one
//!    [`Action::RemoveFault`] each, at once), then the rollbacks run one after the other, each
//!    until it returns or times out. Then the run is **Done** and [`Action::Finished`] reports
//!    it.
//!
//! An operator's or a rollout's abort ([`Observations::abort`]) and the deadline (start +
//! `duration`) end the run **Aborted** from any phase before Ending.
//!
//! # Faults always end
//!
//! Every injected fault has a lease: an absolute time after which the proxy or the runtime
//! removes it by itself. The lease is at most [`LEASE_MS`] ahead and never past the fault's
//! planned end or the run's deadline; the engine renews it ([`Action::RenewLease`]) while the
//! fault should stay. So a controller that dies leaves each fault in place for at most
//! `LEASE_MS`, and never past the deadline, whatever the shell does afterwards; a live
//! controller removes it explicitly as soon as it should end.
//!
//! # Restarts
//!
//! The state is committed before its actions run, so after a crash some actions of the last
//! step may never have happened. The first step after a restart ([`Observations::restarted`])
//! therefore ends a run that was before its Ending as **Interrupted** (removing every fault,
//! running every rollback) and repeats the idempotent actions that matter: removals of faults
//! whose lease has not run out, and the rollback that was in flight. A run already Ending keeps
//! its status and carries on.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::journal::{ActivityRecord, FaultRecord, Journal, ProbeRecord, RunStatus};
use crate::select::{choose_targets, Fleet, SplitMix64, Targets};
use crate::spec::{ActivityKind, ChaosExperimentSpec, CommandAction, Fault, Probe};
use crate::tolerance::ProbeOutput;

/// The longest a lease reaches ahead of now, by default (a run may carry a shorter one,
/// [`RunState::lease_ms`]); renewed at half of it.
pub const LEASE_MS: u64 = 30_000;
/// How long the shell has to confirm an injection that the method waits for (a kill, a
/// fault held until the end) before the run is aborted.
pub const ANSWER_TIMEOUT_MS: u64 = 30_000;
/// Characters of an action's output kept in the journal.
pub const OUTPUT_KEPT: usize = 2_000;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Created, not stepped yet.
    #[default]
    Pending,
    Before,
    Method,
    After,
    /// Faults removed; rollbacks running.
    Ending,
    Done,
}

/// When a probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbePhase {
    Before,
    During,
    After,
}

/// A probe asked for and not answered yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingProbe {
    pub ticket: u64,
    pub name: String,
    pub phase: ProbePhase,
    pub deadline_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunningKind {
    Pause,
    Action,
    Fault,
}

/// A method activity in progress. It is over once `ends_ms` (if any) has passed and no
/// answer is awaited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Running {
    /// Index in `spec.method`.
    pub index: usize,
    pub ticket: u64,
    pub kind: RunningKind,
    pub background: bool,
    /// Index in `journal.activities`.
    pub record: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_ms: Option<u64>,
    /// Waiting for the shell's answer until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_by_ms: Option<u64>,
}

/// A fault injected by this run (lease, targets and removal are in its journal record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultState {
    pub ticket: u64,
    /// Index in `journal.faults`.
    pub record: usize,
    /// Index in `journal.activities`.
    pub activity_record: usize,
    /// The planned end; `None`: held until the run ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_ms: Option<u64>,
}

/// A rollback command in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingRollback {
    pub ticket: u64,
    pub index: usize,
    /// Index in `journal.rollbacks`.
    pub record: usize,
    pub answer_by_ms: u64,
}

/// One run's state: committed to the store before the actions run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    pub phase: Phase,
    /// Target selection draws from it; seeded by the controller when the run is created.
    pub rng: SplitMix64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    pub next_ticket: u64,
    pub probes: Vec<PendingProbe>,
    /// The next method activity to start.
    pub next_activity: usize,
    pub running: Vec<Running>,
    pub faults: Vec<FaultState>,
    /// Consecutive failures of each probe during the method.
    pub failures: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_check_ms: Option<u64>,
    /// The next rollback to start.
    pub next_rollback: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<PendingRollback>,
    pub journal: Journal,
    /// How far ahead a lease reaches ([`LEASE_MS`] unless the controller is set otherwise).
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
}

fn default_lease_ms() -> u64 {
    LEASE_MS
}

impl Default for SplitMix64 {
    fn default() -> Self {
        SplitMix64::new(0)
    }
}

impl RunState {
    /// A new run; `run_id` names its faults (`{run_id}/method[2]`) so they are unique across
    /// runs, `seed` makes its target selection reproducible.
    pub fn new(run_id: impl Into<String>, seed: u64) -> RunState {
        RunState {
            rng: SplitMix64::new(seed),
            journal: Journal {
                run_id: run_id.into(),
                ..Journal::default()
            },
            lease_ms: LEASE_MS,
            ..RunState::default()
        }
    }

    /// Before the method, in it, or after it: the phases the deadline and aborts apply to.
    pub fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Before | Phase::Method | Phase::After)
    }
}

/// A probe's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    pub ticket: u64,
    /// The output, or why the probe could not run (connection refused, Prometheus down).
    pub outcome: Result<ProbeOutput, String>,
}

/// The answer to an injection, an action or a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityResult {
    pub ticket: u64,
    /// The output (a command's, or the runtime's report of the injection), or the error
    /// (non-zero exit with its output, an injection refused).
    pub outcome: Result<String, String>,
}

/// Stop the run: `gauntlet chaos abort`, `pause-all`, or the rollout that started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AbortRequest {
    pub actor: String,
    pub reason: String,
}

/// What the shell saw since the last step.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observations {
    /// The first step since the controller (re)started with this state from the store.
    #[serde(default)]
    pub restarted: bool,
    /// The target application now (read when a fault is targeted).
    #[serde(default)]
    pub fleet: Fleet,
    #[serde(default)]
    pub probes: Vec<ProbeResult>,
    #[serde(default)]
    pub activities: Vec<ActivityResult>,
    #[serde(default)]
    pub abort: Option<AbortRequest>,
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    /// Run the probe once; answer with a [`ProbeResult`] within its timeout.
    Probe {
        ticket: u64,
        phase: ProbePhase,
        probe: Box<Probe>,
    },
    /// Put the fault in place on `targets` until `lease_expires_ms` at the latest, enforced
    /// by the proxy or the runtime itself; answer with an [`ActivityResult`]. Idempotent by
    /// `id`.
    InjectFault {
        ticket: u64,
        id: String,
        fault: Fault,
        targets: Targets,
        lease_expires_ms: u64,
    },
    /// Move the lease of fault `id` to this time.
    RenewLease { id: String, lease_expires_ms: u64 },
    /// Remove fault `id` now. Idempotent; may come again after a restart.
    RemoveFault { id: String },
    /// Run a method action's command; answer with an [`ActivityResult`].
    RunAction {
        ticket: u64,
        index: usize,
        command: Vec<String>,
        timeout_ms: u64,
    },
    /// Run a rollback's command; answer with an [`ActivityResult`]. May come again after a
    /// restart with the same ticket.
    RunRollback {
        ticket: u64,
        index: usize,
        command: Vec<String>,
        timeout_ms: u64,
    },
    /// For the audit log and `chaos get`.
    Journal(Event),
    /// The run is done: store the journal, tell the rollout that waits for it.
    Finished {
        status: RunStatus,
        deviated: bool,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub at_ms: u64,
    pub reason: String,
    pub message: String,
}

/// The result of one [`step`].
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub state: RunState,
    pub actions: Vec<Action>,
    /// When to step again at the latest without new observations; `None` once done.
    pub wake_at_ms: Option<u64>,
}

/// Advances one run of `spec`.
pub fn step(spec: &ChaosExperimentSpec, state: &RunState, obs: &Observations, now_ms: u64) -> Step {
    let mut e = Engine {
        spec,
        s: state.clone(),
        actions: Vec::new(),
        now: now_ms,
    };
    e.run(obs);
    let wake_at_ms = e.wake_at();
    Step {
        state: e.s,
        actions: e.actions,
        wake_at_ms,
    }
}

struct Engine<'a> {
    spec: &'a ChaosExperimentSpec,
    s: RunState,
    actions: Vec<Action>,
    now: u64,
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(OUTPUT_KEPT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

impl Engine<'_> {
    fn run(&mut self, obs: &Observations) {
        match self.s.phase {
            Phase::Done => return,
            Phase::Pending => {
                if let Some(abort) = &obs.abort {
                    self.abort_unstarted(abort);
                    return;
                }
                self.start();
            }
            _ if obs.restarted => self.restarted(),
            _ => {}
        }
        for result in &obs.probes {
            if let Some(i) = self.s.probes.iter().position(|p| p.ticket == result.ticket) {
                let pending = self.s.probes.remove(i);
                self.judge(pending, result.outcome.clone());
            }
        }
        for result in &obs.activities {
            self.answer(result.ticket, &result.outcome);
        }
        if let Some(abort) = &obs.abort {
            let message = format!("aborted by {}: {}", abort.actor, abort.reason);
            self.end(RunStatus::Aborted, false, message);
        }
        if let Some(deadline) = self.s.deadline_ms.filter(|d| *d <= self.now) {
            let message = format!(
                "the deadline passed ({} after the start, at {deadline})",
                self.spec.duration
            );
            self.end(RunStatus::Aborted, false, message);
        }
        self.timeouts();
        self.advance(obs);
        self.renew_leases();
    }

    fn event(&mut self, reason: &str, message: String) {
        self.actions.push(Action::Journal(Event {
            at_ms: self.now,
            reason: reason.to_string(),
            message,
        }));
    }

    fn ticket(&mut self) -> u64 {
        self.s.next_ticket += 1;
        self.s.next_ticket
    }

    fn deadline(&self) -> u64 {
        self.s.deadline_ms.unwrap_or(u64::MAX)
    }

    fn start(&mut self) {
        self.s.deadline_ms = Some(self.now.saturating_add(self.spec.duration.as_ms()));
        self.s.journal.started_ms = Some(self.now);
        self.s.phase = Phase::Before;
        let message = format!(
            "run {} started; deadline in {}",
            self.s.journal.run_id, self.spec.duration
        );
        self.event("Started", message);
        self.issue_probes(ProbePhase::Before);
    }

    fn abort_unstarted(&mut self, abort: &AbortRequest) {
        let message = format!(
            "aborted by {} before it started: {}",
            abort.actor, abort.reason
        );
        self.s.journal.status = RunStatus::Aborted;
        self.s.journal.message = Some(message.clone());
        self.s.journal.ended_ms = Some(self.now);
        self.s.phase = Phase::Done;
        self.event("Aborted", message.clone());
        self.actions.push(Action::Finished {
            status: RunStatus::Aborted,
            deviated: false,
            message,
        });
    }

    fn restarted(&mut self) {
        // Removals committed before the crash may not have reached the proxy or runtime;
        // while their lease runs, say them again.
        let lingering: Vec<String> = self
            .s
            .journal
            .faults
            .iter()
            .filter(|f| f.removed_ms.is_some() && f.lease_expires_ms > self.now)
            .map(|f| f.id.clone())
            .collect();
        for id in lingering {
            self.actions.push(Action::RemoveFault { id });
        }
        if self.s.is_active() {
            self.end(
                RunStatus::Interrupted,
                false,
                "the controller restarted mid-run".into(),
            );
        } else if let Some(r) = self.s.rollback.clone() {
            self.event(
                "Resumed",
                format!("rollback {} again after a controller restart", r.index + 1),
            );
            self.run_rollback(r.ticket, r.index);
            if let Some(pending) = self.s.rollback.as_mut() {
                pending.answer_by_ms = self.now + self.spec.rollbacks[r.index].action.timeout_ms();
            }
        }
    }

    fn issue_probes(&mut self, phase: ProbePhase) {
        for probe in &self.spec.hypothesis.probes {
            let busy = self
                .s
                .probes
                .iter()
                .any(|p| p.name == probe.name && p.phase == phase);
            if busy {
                continue;
            }
            self.s.next_ticket += 1;
            let ticket = self.s.next_ticket;
            self.s.probes.push(PendingProbe {
                ticket,
                name: probe.name.clone(),
                phase,
                deadline_ms: self.now.saturating_add(probe.timeout_ms()),
            });
            self.actions.push(Action::Probe {
                ticket,
                phase,
                probe: Box::new(probe.clone()),
            });
        }
    }

    fn judge(&mut self, pending: PendingProbe, outcome: Result<ProbeOutput, String>) {
        let Some(probe) = self
            .spec
            .hypothesis
            .probes
            .iter()
            .find(|p| p.name == pending.name)
        else {
            return;
        };
        let (passed, value, reason) = match outcome {
            Ok(output) => {
                let judgement = probe.tolerance.evaluate(&output);
                (judgement.passed, output.summary(), judgement.reason)
            }
            Err(error) => (false, Value::Null, format!("probe error: {error}")),
        };
        let record = ProbeRecord {
            name: pending.name.clone(),
            at_ms: self.now,
            passed,
            value,
            reason: reason.clone(),
        };
        let steady = &mut self.s.journal.steady_state;
        match pending.phase {
            ProbePhase::Before => steady.before.push(record),
            ProbePhase::After => steady.after.push(record),
            ProbePhase::During => {
                self.s.journal.record_during(record);
                let count = self.s.failures.entry(pending.name.clone()).or_insert(0);
                *count = if passed { 0 } else { *count + 1 };
                let count = *count;
                let threshold = self
                    .spec
                    .hypothesis
                    .continuous
                    .as_ref()
                    .map_or(u32::MAX, |c| c.failure_threshold);
                if count >= threshold && self.s.phase == Phase::Method {
                    let message = format!(
                        "probe {} failed {count} time(s) in a row during the method: {reason}",
                        pending.name
                    );
                    self.end(RunStatus::Aborted, true, message);
                }
            }
        }
    }

    fn answer(&mut self, ticket: u64, outcome: &Result<String, String>) {
        if let Some(i) = self.s.running.iter().position(|r| r.ticket == ticket) {
            let (kind, record) = (self.s.running[i].kind, self.s.running[i].record);
            self.record_outcome(record, outcome);
            self.s.running[i].answer_by_ms = None;
            if let (RunningKind::Fault, Err(error)) = (kind, outcome) {
                self.injection_failed(record, error);
            }
            return;
        }
        if let Some(f) = self.s.faults.iter().find(|f| f.ticket == ticket).cloned() {
            self.record_outcome(f.activity_record, outcome);
            if let Err(error) = outcome {
                self.injection_failed(f.activity_record, error);
            }
            return;
        }
        if let Some(r) = self.s.rollback.clone().filter(|r| r.ticket == ticket) {
            let rec = &mut self.s.journal.rollbacks[r.record];
            rec.end_ms = Some(self.now);
            match outcome {
                Ok(output) => rec.output = Some(shorten(output)),
                Err(error) => rec.error = Some(shorten(error)),
            }
            self.s.rollback = None;
        }
    }

    fn record_outcome(&mut self, record: usize, outcome: &Result<String, String>) {
        let rec = &mut self.s.journal.activities[record];
        match outcome {
            Ok(output) => rec.output = Some(shorten(output)),
            Err(error) => rec.error = Some(shorten(error)),
        }
    }

    fn injection_failed(&mut self, record: usize, error: &str) {
        let title = self.s.journal.activities[record].title.clone();
        self.end(
            RunStatus::Aborted,
            false,
            format!("{title} could not be injected: {error}"),
        );
    }

    fn timeouts(&mut self) {
        let now = self.now;
        let (late, kept): (Vec<PendingProbe>, Vec<PendingProbe>) =
            std::mem::take(&mut self.s.probes)
                .into_iter()
                .partition(|p| p.deadline_ms <= now);
        self.s.probes = kept;
        for pending in late {
            let timeout = self
                .spec
                .hypothesis
                .probes
                .iter()
                .find(|p| p.name == pending.name)
                .map_or(0, Probe::timeout_ms);
            self.judge(pending, Err(format!("no answer within {timeout}ms")));
        }
        for i in 0..self.s.running.len() {
            let Some(r) = self.s.running.get(i).cloned() else {
                break;
            };
            if r.answer_by_ms.is_none_or(|t| t > now) {
                continue;
            }
            self.s.running[i].answer_by_ms = None;
            let rec = &mut self.s.journal.activities[r.record];
            match r.kind {
                RunningKind::Fault => {
                    let title = rec.title.clone();
                    rec.error = Some("no confirmation from the runtime or proxy".into());
                    self.end(
                        RunStatus::Aborted,
                        false,
                        format!("{title}: no confirmation within {ANSWER_TIMEOUT_MS}ms that it was injected"),
                    );
                    return;
                }
                _ => rec.error = Some("timed out".into()),
            }
        }
        if let Some(r) = self.s.rollback.clone().filter(|r| r.answer_by_ms <= now) {
            let rec = &mut self.s.journal.rollbacks[r.record];
            rec.error = Some("timed out".into());
            rec.end_ms = Some(now);
            self.s.rollback = None;
        }
    }

    fn advance(&mut self, obs: &Observations) {
        loop {
            match self.s.phase {
                Phase::Before => {
                    if self.pending(ProbePhase::Before) {
                        return;
                    }
                    let failed = first_failure(&self.s.journal.steady_state.before);
                    self.s.journal.steady_state.met_before = Some(failed.is_none());
                    if let Some(reason) = failed {
                        let message = format!(
                            "the steady state did not hold before the method, so nothing was \
                             injected: {reason}"
                        );
                        self.end(RunStatus::Failed, false, message);
                        continue;
                    }
                    self.event(
                        "SteadyState",
                        "the hypothesis holds before the method".into(),
                    );
                    self.s.phase = Phase::Method;
                    self.s.next_check_ms = self
                        .spec
                        .hypothesis
                        .continuous
                        .as_ref()
                        .map(|c| self.now + c.interval.as_ms());
                }
                Phase::Method => {
                    if let Some(due) = self.s.next_check_ms.filter(|t| *t <= self.now) {
                        let interval = self
                            .spec
                            .hypothesis
                            .continuous
                            .as_ref()
                            .map_or(u64::MAX, |c| c.interval.as_ms());
                        // Never in a burst: a controller that was slow checks once.
                        self.s.next_check_ms = Some(due.saturating_add(interval).max(self.now + 1));
                        self.issue_probes(ProbePhase::During);
                    }
                    self.finish_activities();
                    if self.s.phase != Phase::Method {
                        continue;
                    }
                    let foreground = self.s.running.iter().any(|r| !r.background);
                    if !foreground && self.s.next_activity < self.spec.method.len() {
                        let index = self.s.next_activity;
                        self.s.next_activity += 1;
                        self.start_activity(index, obs);
                        continue;
                    }
                    if self.s.next_activity < self.spec.method.len() || !self.s.running.is_empty() {
                        return;
                    }
                    self.s.phase = Phase::After;
                    self.s.next_check_ms = None;
                    self.s.probes.retain(|p| p.phase != ProbePhase::During);
                    self.event("MethodEnded", "every activity of the method is over".into());
                    self.issue_probes(ProbePhase::After);
                }
                Phase::After => {
                    if self.pending(ProbePhase::After) {
                        return;
                    }
                    let failed = first_failure(&self.s.journal.steady_state.after);
                    self.s.journal.steady_state.met_after = Some(failed.is_none());
                    match failed {
                        Some(reason) => self.end(
                            RunStatus::Failed,
                            true,
                            format!("the hypothesis deviated after the method: {reason}"),
                        ),
                        None => self.end(
                            RunStatus::Completed,
                            false,
                            "the hypothesis held before, during and after the method".into(),
                        ),
                    }
                }
                Phase::Ending => {
                    if self.s.rollback.is_some() {
                        return;
                    }
                    if self.s.next_rollback < self.spec.rollbacks.len() {
                        let index = self.s.next_rollback;
                        self.s.next_rollback += 1;
                        let ticket = self.ticket();
                        self.run_rollback(ticket, index);
                        return;
                    }
                    self.done();
                    return;
                }
                Phase::Pending | Phase::Done => return,
            }
        }
    }

    fn pending(&self, phase: ProbePhase) -> bool {
        self.s.probes.iter().any(|p| p.phase == phase)
    }

    /// Ends the activities that are over; a timed fault is removed as it ends.
    fn finish_activities(&mut self) {
        let now = self.now;
        let (over, going): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.s.running)
            .into_iter()
            .partition(|r| r.answer_by_ms.is_none() && r.ends_ms.is_none_or(|t| t <= now));
        self.s.running = going;
        for r in over {
            if r.kind == RunningKind::Fault && r.ends_ms.is_some() {
                if let Some(f) = self.s.faults.iter().find(|f| f.ticket == r.ticket).cloned() {
                    self.remove_fault(f.record);
                }
            }
            self.s.journal.activities[r.record].end_ms = Some(now);
        }
    }

    fn start_activity(&mut self, index: usize, obs: &Observations) {
        let activity = &self.spec.method[index];
        let title = activity.title();
        let record = self.s.journal.activities.len();
        self.s.journal.activities.push(ActivityRecord {
            index,
            title: title.clone(),
            background: activity.background,
            start_ms: self.now,
            end_ms: None,
            output: None,
            error: None,
        });
        let ticket = self.ticket();
        let mut running = Running {
            index,
            ticket,
            kind: RunningKind::Pause,
            background: activity.background,
            record,
            ends_ms: None,
            answer_by_ms: None,
        };
        match activity.kind() {
            None => {
                self.s.journal.activities[record].error = Some("invalid activity".into());
                let message = format!("spec.method[{index}] is not a valid activity");
                self.end(RunStatus::Aborted, false, message);
                return;
            }
            Some(ActivityKind::Pause(d)) => running.ends_ms = Some(self.now + d.as_ms()),
            Some(ActivityKind::Action(action)) => {
                running.kind = RunningKind::Action;
                running.answer_by_ms = Some(self.now + action.timeout_ms());
                let CommandAction { command, .. } = action;
                self.actions.push(Action::RunAction {
                    ticket,
                    index,
                    command: command.clone(),
                    timeout_ms: action.timeout_ms(),
                });
            }
            Some(ActivityKind::Fault(fault)) => {
                running.kind = RunningKind::Fault;
                let affected = self.affected_instances();
                let targets = match choose_targets(
                    &self.spec.target,
                    fault,
                    &self.spec.blast_radius,
                    &obs.fleet,
                    &affected,
                    &mut self.s.rng,
                ) {
                    Ok(targets) => targets,
                    Err(error) => {
                        self.s.journal.activities[record].error = Some(error.to_string());
                        self.s.journal.activities[record].end_ms = Some(self.now);
                        self.end(RunStatus::Aborted, false, format!("{title}: {error}"));
                        return;
                    }
                };
                let deadline = self.deadline();
                let ends_ms = activity
                    .duration
                    .as_ref()
                    .map(|d| (self.now + d.as_ms()).min(deadline));
                let cap = ends_ms.unwrap_or(deadline);
                let lease_expires_ms = (self.now + self.s.lease_ms).min(cap);
                let id = format!("{}/method[{index}]", self.s.journal.run_id);
                running.ends_ms = ends_ms;
                if ends_ms.is_none() {
                    running.answer_by_ms = Some(self.now + ANSWER_TIMEOUT_MS);
                }
                if !fault.is_instant() {
                    self.s.faults.push(FaultState {
                        ticket,
                        record: self.s.journal.faults.len(),
                        activity_record: record,
                        ends_ms,
                    });
                    self.s.journal.faults.push(FaultRecord {
                        id: id.clone(),
                        activity: index,
                        title: title.clone(),
                        targets: targets.clone(),
                        injected_ms: self.now,
                        lease_expires_ms,
                        removed_ms: None,
                    });
                }
                let on = if targets.instances.is_empty() {
                    targets.revisions.join(", ")
                } else {
                    targets.instances.join(", ")
                };
                self.event("FaultInjected", format!("{title} on {on}"));
                self.actions.push(Action::InjectFault {
                    ticket,
                    id,
                    fault: fault.clone(),
                    targets,
                    lease_expires_ms,
                });
            }
        }
        self.s.running.push(running);
    }

    /// Instances under this run's process faults now.
    fn affected_instances(&self) -> BTreeSet<String> {
        self.s
            .journal
            .faults
            .iter()
            .filter(|f| f.removed_ms.is_none())
            .flat_map(|f| f.targets.instances.iter().cloned())
            .collect()
    }

    fn remove_fault(&mut self, record: usize) {
        let fault = &mut self.s.journal.faults[record];
        if fault.removed_ms.is_some() {
            return;
        }
        // A fault whose lease ran out (its controller was away) ended by itself then: the
        // proxy and the agents enforce the lease without the controller.
        let by_lease = fault.lease_expires_ms <= self.now;
        fault.removed_ms = Some(self.now.min(fault.lease_expires_ms));
        let id = fault.id.clone();
        let message = if by_lease {
            format!("{id} (ended by its lease)")
        } else {
            id.clone()
        };
        self.event("FaultRemoved", message);
        self.actions.push(Action::RemoveFault { id });
    }

    fn run_rollback(&mut self, ticket: u64, index: usize) {
        let rollback = &self.spec.rollbacks[index];
        let timeout_ms = rollback.action.timeout_ms();
        if self.s.rollback.as_ref().is_none_or(|r| r.ticket != ticket) {
            let record = self.s.journal.rollbacks.len();
            self.s.journal.rollbacks.push(ActivityRecord {
                index,
                title: rollback
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("rollback {}", rollback.action.command.join(" "))),
                background: false,
                start_ms: self.now,
                end_ms: None,
                output: None,
                error: None,
            });
            self.s.rollback = Some(PendingRollback {
                ticket,
                index,
                record,
                answer_by_ms: self.now + timeout_ms,
            });
        }
        self.actions.push(Action::RunRollback {
            ticket,
            index,
            command: rollback.action.command.clone(),
            timeout_ms,
        });
    }

    /// Ends the run with `status` (the first ending wins): stops what is in flight, removes
    /// every fault, and hands over to the rollbacks.
    fn end(&mut self, status: RunStatus, deviated: bool, message: String) {
        if !self.s.is_active() {
            return;
        }
        let journal = &mut self.s.journal;
        journal.status = status;
        journal.deviated = deviated;
        journal.message = Some(message.clone());
        for r in std::mem::take(&mut self.s.running) {
            let rec = &mut journal.activities[r.record];
            rec.end_ms.get_or_insert(self.now);
            if r.answer_by_ms.is_some() && rec.error.is_none() {
                rec.error = Some("cancelled: the run ended".into());
            }
        }
        self.s.probes.clear();
        self.s.next_check_ms = None;
        self.s.phase = Phase::Ending;
        self.event(&format!("{status:?}"), message);
        let records: Vec<usize> = self.s.faults.iter().map(|f| f.record).collect();
        for record in records {
            self.remove_fault(record);
        }
    }

    fn done(&mut self) {
        self.s.phase = Phase::Done;
        let journal = &mut self.s.journal;
        journal.ended_ms = Some(self.now);
        let message = journal.message.clone().unwrap_or_default();
        let (status, deviated) = (journal.status, journal.deviated);
        self.event("Finished", format!("{status:?}: {message}"));
        self.actions.push(Action::Finished {
            status,
            deviated,
            message,
        });
    }

    fn renew_leases(&mut self) {
        if !self.s.is_active() {
            return;
        }
        let deadline = self.deadline();
        for f in &self.s.faults {
            let record = &mut self.s.journal.faults[f.record];
            if record.removed_ms.is_some() {
                continue;
            }
            let cap = f.ends_ms.unwrap_or(deadline).min(deadline);
            let lease = record.lease_expires_ms;
            if lease < cap && self.now + self.s.lease_ms / 2 >= lease {
                let renewed = (self.now + self.s.lease_ms).min(cap);
                if renewed > lease {
                    record.lease_expires_ms = renewed;
                    self.actions.push(Action::RenewLease {
                        id: record.id.clone(),
                        lease_expires_ms: renewed,
                    });
                }
            }
        }
    }

    fn wake_at(&self) -> Option<u64> {
        if self.s.phase == Phase::Done {
            return None;
        }
        let s = &self.s;
        let deadline = s.is_active().then(|| self.deadline());
        let probes = s.probes.iter().map(|p| p.deadline_ms);
        let running = s
            .running
            .iter()
            .flat_map(|r| r.ends_ms.into_iter().chain(r.answer_by_ms));
        let renewals = s.faults.iter().filter_map(|f| {
            let record = &s.journal.faults[f.record];
            let cap = f.ends_ms.unwrap_or(self.deadline()).min(self.deadline());
            (s.is_active() && record.removed_ms.is_none() && record.lease_expires_ms < cap)
                .then(|| record.lease_expires_ms.saturating_sub(self.s.lease_ms / 2))
        });
        let rollback = s.rollback.as_ref().map(|r| r.answer_by_ms);
        deadline
            .into_iter()
            .chain(probes)
            .chain(running)
            .chain(s.next_check_ms)
            .chain(renewals)
            .chain(rollback)
            .min()
    }
}

fn first_failure(records: &[ProbeRecord]) -> Option<String> {
    records
        .iter()
        .find(|r| !r.passed)
        .map(|r| format!("probe {}: {}", r.name, r.reason))
}

/// What `gauntlet chaos run --dry-run` shows: the targets each fault would get now, and the
/// plan's timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub probes: Vec<String>,
    pub activities: Vec<PlannedActivity>,
    pub rollbacks: Vec<String>,
    /// The experiment's deadline after its start.
    pub max_duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedActivity {
    pub index: usize,
    pub title: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub background: bool,
    /// The earliest it starts after the method starts (pauses and timed faults before it).
    pub starts_after_ms: u64,
    /// Faults only: the targets, or why there would be none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Result<Targets, String>>,
}

/// The plan of `spec` on `fleet` with the run's `seed`: a run started now with the same seed
/// and fleet targets the same instances.
pub fn plan(spec: &ChaosExperimentSpec, fleet: &Fleet, seed: u64) -> Plan {
    let mut rng = SplitMix64::new(seed);
    let mut affected = BTreeSet::new();
    let mut offset = 0u64;
    let mut activities = Vec::new();
    for (index, activity) in spec.method.iter().enumerate() {
        let mut planned = PlannedActivity {
            index,
            title: activity.title(),
            background: activity.background,
            starts_after_ms: offset,
            targets: None,
        };
        match activity.kind() {
            Some(ActivityKind::Fault(fault)) => {
                let targets = choose_targets(
                    &spec.target,
                    fault,
                    &spec.blast_radius,
                    fleet,
                    &affected,
                    &mut rng,
                );
                if let Ok(t) = &targets {
                    // Held and background faults are still in place when the next starts.
                    if !fault.is_instant() && (activity.duration.is_none() || activity.background) {
                        affected.extend(t.instances.iter().cloned());
                    }
                }
                planned.targets = Some(targets.map_err(|e| e.to_string()));
                if !activity.background {
                    offset += activity.duration.as_ref().map_or(0, |d| d.as_ms());
                }
            }
            Some(ActivityKind::Pause(d)) => offset += d.as_ms(),
            _ => {}
        }
        activities.push(planned);
    }
    Plan {
        probes: spec
            .hypothesis
            .probes
            .iter()
            .map(|p| p.name.clone())
            .collect(),
        activities,
        rollbacks: spec
            .rollbacks
            .iter()
            .map(|r| r.name.clone().unwrap_or_else(|| r.action.command.join(" ")))
            .collect(),
        max_duration_ms: spec.duration.as_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::Instance;
    use serde_json::json;

    const SEED: u64 = 42;

    fn fleet() -> Fleet {
        let instance = |id: &str, revision: &str| Instance {
            id: id.into(),
            revision: revision.into(),
        };
        Fleet {
            stable: Some("v1".into()),
            candidate: Some("v2".into()),
            instances: vec![
                instance("s1", "v1"),
                instance("s2", "v1"),
                instance("c1", "v2"),
                instance("c2", "v2"),
            ],
        }
    }

    /// The BRIEF's example with `extra` merged into its spec.
    fn spec(extra: Value) -> ChaosExperimentSpec {
        let mut spec = json!({
            "target": {"application": "checkout", "revision": "candidate", "mode": "one"},
            "hypothesis": {"probes": [
                {"name": "healthy", "http": {"url": "http://127.0.0.1:8080/healthz"}, "tolerance": {"status": 200}},
                {"name": "errors", "metric": {"builtin": "errorRate", "revision": "candidate"}, "tolerance": {"range": [0, 0.01]}}
            ]},
            "method": [{"fault": {"kill": {"signal": "KILL"}}}, {"pause": "10s"}],
            "rollbacks": [{"action": {"command": ["./restore.sh"]}}]
        });
        for (key, value) in extra.as_object().unwrap() {
            spec[key] = value.clone();
        }
        let spec: ChaosExperimentSpec = serde_json::from_value(spec).unwrap();
        assert!(spec.validate().is_empty(), "{:?}", spec.validate());
        spec
    }

    /// A simulated controller: steps the engine and keeps what it asked for.
    struct Sim {
        spec: ChaosExperimentSpec,
        state: RunState,
        now: u64,
        wake: Option<u64>,
        /// Every action so far.
        log: Vec<Action>,
    }

    impl Sim {
        fn new(spec: ChaosExperimentSpec) -> Sim {
            Sim {
                spec,
                state: RunState::new("kill-one/1", SEED),
                now: 0,
                wake: None,
                log: Vec::new(),
            }
        }

        fn step_at(&mut self, now: u64, obs: Observations) -> Vec<Action> {
            self.now = now;
            let s = step(&self.spec, &self.state, &obs, now);
            // What the store would hold must read back as the same state.
            let stored = serde_json::to_string(&s.state).unwrap();
            assert_eq!(serde_json::from_str::<RunState>(&stored).unwrap(), s.state);
            self.state = s.state;
            self.wake = s.wake_at_ms;
            self.log.extend(s.actions.clone());
            s.actions
        }

        fn tick(&mut self, now: u64) -> Vec<Action> {
            self.step_at(now, observe())
        }

        /// Answers every probe in `actions`; `healthy` decides each one's output.
        fn answer_probes(&mut self, now: u64, actions: &[Action], healthy: bool) -> Vec<Action> {
            let probes = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Probe { ticket, probe, .. } => Some(ProbeResult {
                        ticket: *ticket,
                        outcome: Ok(output(&probe.name, healthy)),
                    }),
                    _ => None,
                })
                .collect();
            self.step_at(
                now,
                Observations {
                    probes,
                    ..observe()
                },
            )
        }

        /// Confirms every injection, action and rollback in `actions`.
        fn confirm(&mut self, now: u64, actions: &[Action]) -> Vec<Action> {
            let activities = tickets(actions)
                .into_iter()
                .map(|ticket| ActivityResult {
                    ticket,
                    outcome: Ok("done".into()),
                })
                .collect();
            self.step_at(
                now,
                Observations {
                    activities,
                    ..observe()
                },
            )
        }
    }

    fn observe() -> Observations {
        Observations {
            fleet: fleet(),
            ..Observations::default()
        }
    }

    fn output(probe: &str, healthy: bool) -> ProbeOutput {
        match (probe, healthy) {
            ("healthy", true) => ProbeOutput::Http {
                status: 200,
                body: "ok".into(),
                latency_ms: 3,
            },
            ("healthy", false) => ProbeOutput::Http {
                status: 503,
                body: "down".into(),
                latency_ms: 3,
            },
            (_, true) => ProbeOutput::Metric { value: 0.001 },
            (_, false) => ProbeOutput::Metric { value: 0.2 },
        }
    }

    fn tickets(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::InjectFault { ticket, .. }
                | Action::RunAction { ticket, .. }
                | Action::RunRollback { ticket, .. } => Some(*ticket),
                _ => None,
            })
            .collect()
    }

    fn probes(actions: &[Action]) -> Vec<(String, ProbePhase)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Probe { probe, phase, .. } => Some((probe.name.clone(), *phase)),
                _ => None,
            })
            .collect()
    }

    fn injected(actions: &[Action]) -> Vec<(String, Targets, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::InjectFault {
                    id,
                    targets,
                    lease_expires_ms,
                    ..
                } => Some((id.clone(), targets.clone(), *lease_expires_ms)),
                _ => None,
            })
            .collect()
    }

    fn removed(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::RemoveFault { id } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    fn rollbacks(actions: &[Action]) -> Vec<usize> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::RunRollback { index, .. } => Some(*index),
                _ => None,
            })
            .collect()
    }

    fn finished(actions: &[Action]) -> Option<(RunStatus, bool, String)> {
        actions.iter().find_map(|a| match a {
            Action::Finished {
                status,
                deviated,
                message,
            } => Some((*status, *deviated, message.clone())),
            _ => None,
        })
    }

    /// Runs the before-hypothesis, all healthy, from a new run at `t`.
    fn started(spec: ChaosExperimentSpec, t: u64) -> (Sim, Vec<Action>) {
        let mut sim = Sim::new(spec);
        let first = sim.tick(t);
        assert_eq!(
            probes(&first),
            [
                ("healthy".to_string(), ProbePhase::Before),
                ("errors".to_string(), ProbePhase::Before)
            ]
        );
        let method = sim.answer_probes(t + 100, &first, true);
        (sim, method)
    }

    #[test]
    fn the_happy_path_checks_injects_waits_checks_again_and_rolls_back() {
        let (mut sim, method) = started(spec(json!({})), 1_000);
        let faults = injected(&method);
        assert_eq!(faults.len(), 1);
        let (id, targets, _) = &faults[0];
        assert_eq!(id, "kill-one/1/method[0]");
        assert_eq!(targets.revisions, ["v2"]);
        assert_eq!(targets.instances.len(), 1);
        assert!(targets.instances[0].starts_with('c'));
        // The pause waits for the kill to be confirmed.
        assert_eq!(sim.state.running[0].kind, RunningKind::Fault);
        let paused = sim.confirm(1_200, &method);
        assert!(probes(&paused).is_empty());
        assert_eq!(sim.wake, Some(11_200));
        assert!(sim.tick(11_199).is_empty());
        let after = sim.tick(11_200);
        assert_eq!(
            probes(&after),
            [
                ("healthy".to_string(), ProbePhase::After),
                ("errors".to_string(), ProbePhase::After)
            ]
        );
        let ending = sim.answer_probes(11_300, &after, true);
        assert_eq!(rollbacks(&ending), [0]);
        assert_eq!(finished(&ending), None);
        let done = sim.confirm(11_400, &ending);
        let (status, deviated, _) = finished(&done).unwrap();
        assert_eq!((status, deviated), (RunStatus::Completed, false));
        assert_eq!(sim.wake, None);

        let journal = &sim.state.journal;
        assert_eq!(journal.started_ms, Some(1_000));
        assert_eq!(journal.ended_ms, Some(11_400));
        assert_eq!(journal.steady_state.met_before, Some(true));
        assert_eq!(journal.steady_state.met_after, Some(true));
        assert_eq!(journal.steady_state.before.len(), 2);
        assert_eq!(journal.steady_state.after[1].value, json!(0.001));
        let spans: Vec<_> = journal
            .activities
            .iter()
            .map(|a| (a.title.as_str(), a.start_ms, a.end_ms, a.output.as_deref()))
            .collect();
        assert_eq!(
            spans,
            [
                ("fault kill SIGKILL", 1_100, Some(1_200), Some("done")),
                ("pause 10s", 1_200, Some(11_200), None),
            ]
        );
        assert_eq!(journal.rollbacks[0].end_ms, Some(11_400));
        // A kill is over once done: nothing to remove.
        assert!(journal.faults.is_empty());
        assert!(removed(&sim.log).is_empty());
        assert!(journal.gate().unwrap().passed);
        // A finished run stays finished.
        assert!(sim.tick(20_000).is_empty());
    }

    #[test]
    fn a_hypothesis_failing_before_does_not_start_the_method_but_rollbacks_run() {
        let mut sim = Sim::new(spec(json!({})));
        let first = sim.tick(0);
        let ending = sim.answer_probes(50, &first, false);
        assert!(injected(&sim.log).is_empty());
        assert_eq!(rollbacks(&ending), [0]);
        let done = sim.confirm(60, &ending);
        let (status, deviated, message) = finished(&done).unwrap();
        assert_eq!((status, deviated), (RunStatus::Failed, false));
        assert_eq!(
            message,
            "the steady state did not hold before the method, so nothing was injected: probe \
             healthy: status 503 is not 200"
        );
        let journal = &sim.state.journal;
        assert_eq!(journal.steady_state.met_before, Some(false));
        assert!(journal.activities.is_empty());
        let gate = journal.gate().unwrap();
        assert!(!gate.passed);
        assert!(gate.message.starts_with("not steady before the method"));
    }

    #[test]
    fn a_probe_that_does_not_answer_fails_at_its_timeout() {
        let mut sim = Sim::new(spec(json!({})));
        sim.tick(0);
        assert_eq!(sim.wake, Some(10_000));
        let ending = sim.tick(10_000);
        assert_eq!(rollbacks(&ending), [0]);
        assert_eq!(
            sim.state.journal.steady_state.before[0].reason,
            "probe error: no answer within 10000ms"
        );
    }

    fn continuous_spec() -> ChaosExperimentSpec {
        spec(json!({
            "hypothesis": {
                "probes": [{"name": "errors", "metric": {"builtin": "errorRate"}, "tolerance": {"range": [0, 0.01]}}],
                "continuous": {"interval": "1s", "failureThreshold": 3}
            },
            "method": [{"fault": {"http": {"abort": {"status": 503}, "percent": 50}}, "duration": "60s"}]
        }))
    }

    #[test]
    fn a_continuous_check_aborts_after_its_threshold_of_consecutive_failures() {
        let mut sim = Sim::new(continuous_spec());
        let first = sim.tick(0);
        let method = sim.answer_probes(100, &first, true);
        let (id, targets, _) = injected(&method).remove(0);
        assert_eq!(targets.revisions, ["v2"]);
        assert!(targets.instances.is_empty());
        sim.confirm(150, &method);
        assert_eq!(sim.wake, Some(1_100));
        // fail, fail, pass, fail, fail: never three in a row.
        let mut t = 1_100;
        for healthy in [false, false, true, false, false] {
            let check = sim.tick(t);
            assert_eq!(probes(&check), [("errors".to_string(), ProbePhase::During)]);
            let answered = sim.answer_probes(t + 10, &check, healthy);
            assert!(finished(&answered).is_none() && rollbacks(&answered).is_empty());
            t += 1_000;
        }
        let check = sim.tick(t);
        let aborted = sim.answer_probes(t + 10, &check, false);
        assert_eq!(removed(&aborted), [id]);
        assert_eq!(rollbacks(&aborted), [0]);
        let done = sim.confirm(t + 20, &aborted);
        let (status, deviated, message) = finished(&done).unwrap();
        assert_eq!((status, deviated), (RunStatus::Aborted, true));
        assert_eq!(
            message,
            "probe errors failed 3 time(s) in a row during the method: value 0.2 is outside [0, 0.01]"
        );
        let steady = &sim.state.journal.steady_state;
        assert_eq!(steady.during.len(), 6);
        assert_eq!(steady.met_after, None);
        assert!(!sim.state.journal.gate().unwrap().passed);
    }

    fn held_spec() -> ChaosExperimentSpec {
        spec(json!({
            "method": [
                {"fault": {"cpu": {"cores": 2, "load": 90}}},
                {"fault": {"http": {"delay": {"latency": "200ms"}, "percent": 10}}, "duration": "20s", "background": true},
                {"pause": "60s"}
            ],
            "rollbacks": [
                {"action": {"command": ["./restore.sh"]}},
                {"name": "flush", "action": {"command": ["./flush.sh"], "timeout": "5s"}}
            ]
        }))
    }

    #[test]
    fn an_abort_mid_method_removes_every_fault_and_runs_every_rollback() {
        let (mut sim, method) = started(held_spec(), 0);
        assert_eq!(injected(&method).len(), 1);
        let next = sim.confirm(200, &method);
        // The held cpu fault is confirmed, so the background delay and the pause start.
        assert_eq!(injected(&next).len(), 1);
        let abort = Observations {
            abort: Some(AbortRequest {
                actor: "alice".into(),
                reason: "gauntlet chaos abort".into(),
            }),
            ..observe()
        };
        let ending = sim.step_at(5_000, abort);
        assert_eq!(
            removed(&ending),
            ["kill-one/1/method[0]", "kill-one/1/method[1]"]
        );
        // Removals come before the first rollback, in the same step.
        let first_rollback = ending
            .iter()
            .position(|a| matches!(a, Action::RunRollback { .. }))
            .unwrap();
        let last_removal = ending
            .iter()
            .rposition(|a| matches!(a, Action::RemoveFault { .. }))
            .unwrap();
        assert!(last_removal < first_rollback);
        assert_eq!(rollbacks(&ending), [0]);
        // A rollback that fails is recorded and the next one still runs.
        let failed = Observations {
            activities: vec![ActivityResult {
                ticket: tickets(&ending)[0],
                outcome: Err("exit status 1: no backup".into()),
            }],
            ..observe()
        };
        let second = sim.step_at(5_100, failed);
        assert_eq!(rollbacks(&second), [1]);
        // The second one never answers: it times out after 5s and the run is done.
        assert_eq!(sim.wake, Some(10_100));
        let done = sim.tick(10_100);
        let (status, deviated, message) = finished(&done).unwrap();
        assert_eq!((status, deviated), (RunStatus::Aborted, false));
        assert_eq!(message, "aborted by alice: gauntlet chaos abort");
        let journal = &sim.state.journal;
        assert!(journal.faults.iter().all(|f| f.removed_ms == Some(5_000)));
        let errors: Vec<_> = journal
            .rollbacks
            .iter()
            .map(|r| r.error.as_deref())
            .collect();
        assert_eq!(
            errors,
            [Some("exit status 1: no backup"), Some("timed out")]
        );
        assert_eq!(journal.activities[2].title, "pause 60s");
        assert_eq!(journal.activities[2].end_ms, Some(5_000));
    }

    #[test]
    fn background_activities_run_alongside_and_the_method_waits_for_them() {
        let spec = spec(json!({
            "method": [
                {"fault": {"http": {"delay": {"latency": "200ms", "jitter": "50ms"}, "percent": 10}}, "duration": "20s", "background": true},
                {"action": {"command": ["./load.sh"]}},
                {"pause": "5s"}
            ]
        }));
        let (mut sim, method) = started(spec, 0);
        // The background fault and the action start in the same step.
        assert_eq!(injected(&method).len(), 1);
        assert!(method
            .iter()
            .any(|a| matches!(a, Action::RunAction { index: 1, .. })));
        let action_ticket = method
            .iter()
            .find_map(|a| match a {
                Action::RunAction { ticket, .. } => Some(*ticket),
                _ => None,
            })
            .unwrap();
        let answered = sim.step_at(
            1_000,
            Observations {
                activities: vec![ActivityResult {
                    ticket: action_ticket,
                    outcome: Ok("200 requests sent".into()),
                }],
                ..observe()
            },
        );
        assert!(probes(&answered).is_empty());
        // The pause ends at 6s, but the background fault lasts until 20.1s.
        assert!(probes(&sim.tick(6_000)).is_empty());
        assert_eq!(sim.state.phase, Phase::Method);
        let after = sim.tick(20_100);
        assert_eq!(removed(&after), ["kill-one/1/method[0]"]);
        assert_eq!(probes(&after).len(), 2);
        let journal = &sim.state.journal;
        assert_eq!(
            journal.activities[1].output.as_deref(),
            Some("200 requests sent")
        );
        assert!(journal.activities[0].background);
        assert_eq!(journal.activities[0].end_ms, Some(20_100));
    }

    #[test]
    fn the_deadline_ends_the_run_and_removes_its_faults() {
        let spec = spec(json!({
            "duration": "30s",
            "method": [
                {"fault": {"memory": {"size": "256Mi"}}},
                {"action": {"command": ["./slow.sh"], "timeout": "25s"}},
                {"pause": "4s"}
            ]
        }));
        let (mut sim, method) = started(spec, 0);
        let (id, _, lease) = injected(&method).remove(0);
        // Held until the end, leased to the deadline at most.
        assert_eq!(lease, 30_000);
        sim.confirm(200, &method);
        // The action answers late; the pause ends after the deadline.
        let slow = sim.log.iter().find_map(|a| match a {
            Action::RunAction { ticket, .. } => Some(*ticket),
            _ => None,
        });
        sim.step_at(
            24_000,
            Observations {
                activities: vec![ActivityResult {
                    ticket: slow.unwrap(),
                    outcome: Ok(String::new()),
                }],
                ..observe()
            },
        );
        assert_eq!(sim.wake, Some(28_000));
        sim.tick(28_000);
        assert_eq!(sim.wake, Some(30_000));
        let ending = sim.tick(30_000);
        assert_eq!(removed(&ending), [id]);
        assert_eq!(rollbacks(&ending), [0]);
        let done = sim.confirm(30_100, &ending);
        let (status, _, message) = finished(&done).unwrap();
        assert_eq!(status, RunStatus::Aborted);
        assert_eq!(
            message,
            "the deadline passed (30s after the start, at 30000)"
        );
    }

    #[test]
    fn leases_are_short_renewed_while_needed_and_never_past_the_end_or_deadline() {
        let spec = spec(json!({
            "duration": "100s",
            "method": [
                {"fault": {"pause": {}}, "duration": "70s"},
                {"fault": {"diskFill": {"size": "1Gi"}}}
            ]
        }));
        let (mut sim, method) = started(spec, 0);
        let (first, _, lease) = injected(&method).remove(0);
        assert_eq!(lease, 100 + LEASE_MS);
        sim.confirm(200, &method);
        // Step at every wake-up, as the shell does, and watch every lease given.
        let mut leases: Vec<(String, u64, u64)> = Vec::new();
        while let Some(wake) = sim.wake.filter(|_| sim.state.phase == Phase::Method) {
            let actions = sim.tick(wake);
            for a in &actions {
                match a {
                    Action::RenewLease {
                        id,
                        lease_expires_ms,
                    } => leases.push((id.clone(), wake, *lease_expires_ms)),
                    Action::InjectFault {
                        id,
                        lease_expires_ms,
                        ..
                    } => leases.push((id.clone(), wake, *lease_expires_ms)),
                    _ => {}
                }
            }
            sim.confirm(wake, &actions);
        }
        let ours: Vec<_> = leases.iter().filter(|l| l.0 == first).collect();
        // Renewed at half a lease, up to the fault's own end at 70.1s.
        assert_eq!(
            ours.iter().map(|l| (l.1, l.2)).collect::<Vec<_>>(),
            [(15_100, 45_100), (30_100, 60_100), (45_100, 70_100)]
        );
        let second: Vec<_> = leases
            .iter()
            .filter(|l| l.0 == "kill-one/1/method[1]")
            .map(|l| l.2)
            .collect();
        // The held fault, injected at 70.1s: its lease ends at the run's deadline.
        assert_eq!(second, [100_000]);
        assert_eq!(sim.state.deadline_ms, Some(100_000));
        assert!(leases.iter().all(|(_, _, lease)| *lease <= 100_000));
    }

    #[test]
    fn no_lease_reaches_past_the_deadline() {
        let spec = spec(json!({
            "duration": "60s",
            "method": [{"fault": {"http": {"reset": {}, "percent": 1}}, "duration": "55s"}]
        }));
        let mut sim = Sim::new(spec);
        let first = sim.tick(0);
        // The fault would end at 65s; the run's deadline is 60s.
        let method = sim.answer_probes(10_000, &first, true);
        let (_, _, lease) = injected(&method).remove(0);
        let mut leases = vec![lease];
        while let Some(wake) = sim.wake.filter(|_| sim.state.is_active()) {
            for a in sim.tick(wake) {
                if let Action::RenewLease {
                    lease_expires_ms, ..
                } = a
                {
                    leases.push(lease_expires_ms);
                }
            }
        }
        assert_eq!(leases, [40_000, 55_000, 60_000]);
        assert_eq!(sim.state.journal.status, RunStatus::Aborted);
        assert_eq!(sim.state.journal.faults[0].removed_ms, Some(60_000));
    }

    #[test]
    fn a_restart_mid_method_interrupts_the_run_removes_faults_and_runs_rollbacks() {
        let (mut sim, method) = started(held_spec(), 0);
        sim.confirm(200, &method);
        // The controller dies; a new one reads the state back from the store.
        let stored = serde_json::to_vec(&sim.state).unwrap();
        sim.state = serde_json::from_slice(&stored).unwrap();
        let ending = sim.step_at(
            9_000,
            Observations {
                restarted: true,
                ..observe()
            },
        );
        assert_eq!(
            removed(&ending),
            ["kill-one/1/method[0]", "kill-one/1/method[1]"]
        );
        assert_eq!(rollbacks(&ending), [0]);
        let rollback_ticket = tickets(&ending)[0];
        // It dies again before the rollback answered: the rollback and the removals (whose
        // leases still run) are asked for again, with the same ticket.
        let again = sim.step_at(
            9_500,
            Observations {
                restarted: true,
                ..observe()
            },
        );
        assert_eq!(
            removed(&again),
            ["kill-one/1/method[0]", "kill-one/1/method[1]"]
        );
        assert_eq!(tickets(&again), [rollback_ticket]);
        let next = sim.confirm(9_600, &again);
        assert_eq!(rollbacks(&next), [1]);
        let done = sim.confirm(9_700, &next);
        let (status, deviated, message) = finished(&done).unwrap();
        assert_eq!((status, deviated), (RunStatus::Interrupted, false));
        assert_eq!(message, "the controller restarted mid-run");
        assert_eq!(sim.state.journal.rollbacks.len(), 2);
        assert!(!sim.state.journal.gate().unwrap().passed);
    }

    #[test]
    fn a_fault_whose_lease_ran_out_while_the_controller_was_away_ended_at_its_lease() {
        let (mut sim, method) = started(held_spec(), 0);
        sim.confirm(200, &method);
        let lease = sim.state.journal.faults[0].lease_expires_ms;
        let stored = serde_json::to_vec(&sim.state).unwrap();
        sim.state = serde_json::from_slice(&stored).unwrap();
        // Back an hour later.
        sim.step_at(
            lease + 3_600_000,
            Observations {
                restarted: true,
                ..observe()
            },
        );
        let fault = &sim.state.journal.faults[0];
        assert_eq!(
            fault.removed_ms,
            Some(lease),
            "removed by its lease, not an hour late"
        );
    }

    #[test]
    fn the_hypothesis_deviating_after_the_method_fails_the_run() {
        let (mut sim, method) = started(spec(json!({})), 0);
        sim.confirm(100, &method);
        let after = sim.tick(10_100);
        let ending = sim.answer_probes(10_200, &after, false);
        let done = sim.confirm(10_300, &ending);
        let (status, deviated, _) = finished(&done).unwrap();
        assert_eq!((status, deviated), (RunStatus::Failed, true));
        assert_eq!(sim.state.journal.steady_state.met_after, Some(false));
        let gate = sim.state.journal.gate().unwrap();
        assert_eq!(
            gate.message,
            "the hypothesis deviated: the hypothesis deviated after the method: probe healthy: \
             status 503 is not 200"
        );
    }

    #[test]
    fn a_fault_over_the_blast_radius_aborts_before_anything_is_injected() {
        let spec = spec(json!({
            "target": {"application": "checkout", "revision": "stable", "mode": "all"},
            "method": [{"fault": {"pause": {}}, "duration": "5s"}]
        }));
        let (mut sim, method) = started(spec, 0);
        assert!(injected(&method).is_empty());
        let done = sim.confirm(200, &method);
        let (status, _, message) = finished(&done).unwrap();
        assert_eq!(status, RunStatus::Aborted);
        assert_eq!(
            message,
            "fault pause (SIGSTOP): this would put all 2 instance(s) of the stable revision \
             under faults at once; set spec.blastRadius.allowAllStable to allow it"
        );
    }

    #[test]
    fn faults_held_at_once_count_together_against_the_blast_radius() {
        let spec = spec(json!({
            "target": {"application": "checkout", "revision": "stable", "mode": "one"},
            "method": [{"fault": {"pause": {}}}, {"fault": {"cpu": {"cores": 1}}}]
        }));
        // Two stable instances, one held fault each time: a second fault on the other one
        // would take all of stable at once, so it aborts; on the same one it goes ahead.
        let mut aborted = 0;
        for seed in 0..20 {
            let mut sim = Sim::new(spec.clone());
            sim.state.rng = SplitMix64::new(seed);
            let first = sim.tick(0);
            let method = sim.answer_probes(100, &first, true);
            let next = sim.confirm(200, &method);
            let held = sim.state.journal.faults[0].targets.instances.clone();
            match injected(&next).first() {
                Some((_, targets, _)) => assert_eq!(targets.instances, held),
                None => {
                    aborted += 1;
                    assert_eq!(sim.state.journal.status, RunStatus::Aborted);
                    assert!(sim
                        .state
                        .journal
                        .message
                        .as_deref()
                        .unwrap()
                        .contains("all 2"));
                    assert_eq!(removed(&next), ["kill-one/1/method[0]"]);
                }
            }
        }
        assert!((1..20).contains(&aborted), "{aborted}");
    }

    #[test]
    fn an_injection_the_shell_could_not_make_aborts_the_run() {
        let (mut sim, method) = started(held_spec(), 0);
        let ticket = tickets(&method)[0];
        let ending = sim.step_at(
            300,
            Observations {
                activities: vec![ActivityResult {
                    ticket,
                    outcome: Err("instance c1 is not running".into()),
                }],
                ..observe()
            },
        );
        assert_eq!(removed(&ending), ["kill-one/1/method[0]"]);
        assert_eq!(rollbacks(&ending), [0]);
        assert_eq!(
            sim.state.journal.message.as_deref(),
            Some("fault cpu 2 core(s) at 90% could not be injected: instance c1 is not running")
        );
    }

    #[test]
    fn an_abort_before_the_first_step_ends_the_run_without_doing_anything() {
        let mut sim = Sim::new(spec(json!({})));
        let done = sim.step_at(
            0,
            Observations {
                abort: Some(AbortRequest {
                    actor: "rollout checkout".into(),
                    reason: "the rollout was aborted".into(),
                }),
                ..observe()
            },
        );
        assert_eq!(finished(&done).unwrap().0, RunStatus::Aborted);
        assert!(probes(&done).is_empty() && rollbacks(&done).is_empty());
    }

    #[test]
    fn a_dry_run_plan_shows_the_targets_the_run_would_choose() {
        let spec = spec(json!({
            "target": {"application": "checkout", "revision": "all", "mode": "fixed", "value": 2},
            "method": [
                {"fault": {"pause": {}}, "duration": "5s"},
                {"pause": "10s"},
                {"fault": {"http": {"abort": {"status": 500}, "percent": 1}}}
            ]
        }));
        let plan = plan(&spec, &fleet(), SEED);
        assert_eq!(plan.probes, ["healthy", "errors"]);
        assert_eq!(plan.rollbacks, ["./restore.sh"]);
        let starts: Vec<u64> = plan.activities.iter().map(|a| a.starts_after_ms).collect();
        assert_eq!(starts, [0, 5_000, 15_000]);
        let planned = plan.activities[0].targets.clone().unwrap().unwrap();
        let (_, method) = started(spec, 0);
        assert_eq!(injected(&method)[0].1, planned);
        let traffic = plan.activities[2].targets.clone().unwrap().unwrap();
        assert_eq!(traffic.revisions, ["v1", "v2"]);
    }
}
