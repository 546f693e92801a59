//! The rollout engine: `step(spec, state, observations, now_ms) -> (state, actions)`, pure.
//!
//! One [`RolloutState`] per application. The shell calls [`step`] whenever something may have
//! changed (a new commit, a metrics reading ten times a second, a measurement, an operator
//! command, the wake-up time [`Step::wake_at_ms`]), commits the new state to the store, then
//! executes the actions. Actions are level-triggered and idempotent: traffic is the whole
//! routing table ([`Traffic`]), scaling is an absolute replica count, so an action replayed
//! after a crash does no harm.
//!
//! # Canary
//!
//! A new desired revision becomes the candidate and is scaled to `replicas`; once all its
//! instances are ready, the steps run in order. `setWeight`, `setHeaderRoute` and
//! `setMirrorRoute` complete at once; `pause` waits for its duration or, without one, for
//! `promote`; `analysis` waits for its run (Successful: next step; Failed or Error: abort;
//! Inconclusive: pause for an operator, as Argo does); `chaos` waits for the experiment's
//! verdict. After the last step the candidate becomes stable with all traffic, and the old
//! stable is scaled down after `scaleDownDelaySeconds`. The sequential guard watches every
//! reading while the candidate has traffic, except during a `chaos` step, whose experiment
//! hurts the candidate on purpose and is its judge; background analysis starts at its step
//! index.
//!
//! - `promote` ends the current pause, analysis or chaos step and moves on; `promote --full`
//!   skips all remaining steps. `pause`/`resume` hold and release the rollout (the guard keeps
//!   watching while paused). `abort` rolls back. `retry` restarts an aborted revision from
//!   step one.
//! - **Abort** (guard trip, analysis failure, chaos failure, operator): one [`Action::SetTraffic`]
//!   sends all traffic back to stable (header route and mirror removed), analysis runs stop, the
//!   candidate is scaled down after `abortScaleDownDelaySeconds`, and [`RolloutState::aborted`]
//!   remembers the revision, the reason and the guard's evidence. While Git still asks for that
//!   revision the application is Degraded and nothing is retried; a different revision in Git
//!   or `retry` clears it.
//! - A new revision during a rollout replaces the candidate (the old candidate is scaled down
//!   at once); a desired revision equal to stable ends the rollout at once.
//! - Without a strategy the canary has no steps: a rolling update (ready, then switch).
//!
//! # Blue/green
//!
//! The candidate is scaled up and, once ready, served on `previewListen` only. It is promoted
//! when `prePromotionAnalysis` (if any) succeeded and either `autoPromotionEnabled` (after
//! `autoPromotionSeconds`, if set) or an operator's `promote`. Promotion switches all traffic;
//! the old revision keeps running until `postPromotionAnalysis` (if any) is Successful, then is
//! scaled down after `scaleDownDelaySeconds`. A failed post-promotion analysis switches traffic
//! back and aborts. The guard does not run for blue/green: the candidate never shares
//! production traffic with stable, so there is no baseline to compare with.
//!
//! # Time and restarts
//!
//! A timed pause stores its deadline (not its remaining time), and the state stores the time of
//! the last step. While the controller runs, the deadline is exact: no drift from subtracting
//! each tick, and the shell may sleep until [`Step::wake_at_ms`]. The first step after the
//! controller restarted carries [`Observations::restarted`]; it moves the deadline later by the
//! time between the last committed step and now. Nobody watched the candidate while the
//! controller was away, and a pause exists to watch it, so the pause keeps its remaining time
//! (to within one step). A deadline alone would end the pause as soon as the controller came
//! back; a remaining time alone would have to be rewritten on every tick. The same rule shifts
//! blue/green's auto-promotion time.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::analysis::{
    AnalysisRun, AnalysisTemplateSpec, Arg, DurationStr, Provider, RunPhase, TemplateRef,
};
use crate::guard::{
    Guard, GuardConfig, GuardEvidence, GuardTest, GuardVerdict, TrafficDelta, Verdict,
};

/// 100 % in the traffic units of [`Traffic`] (0.01 %).
pub const FULL_WEIGHT: u32 = 10_000;
/// A measurement not answered within this is asked for again.
pub const MEASUREMENT_TIMEOUT_MS: u64 = 60_000;

fn default_true() -> bool {
    true
}

fn default_delay() -> u64 {
    30
}

/// What the engine needs of an application's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    pub replicas: u32,
    /// `None`: a rolling update.
    #[serde(default)]
    pub strategy: Option<Strategy>,
    /// The `AnalysisTemplate`s the strategy may name, by name.
    #[serde(default)]
    pub templates: BTreeMap<String, AnalysisTemplateSpec>,
}

/// `spec.strategy` of an `Application`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Strategy {
    Canary(CanarySpec),
    BlueGreen(BlueGreenSpec),
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanarySpec {
    #[serde(default)]
    pub steps: Vec<CanaryStep>,
    #[serde(default)]
    pub guard: GuardConfig,
    /// Background analysis, running from `startingStep` until the rollout ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<BackgroundAnalysis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_scale_down_delay_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay_seconds: Option<u64>,
}

/// One canary step; exactly one key, as in Argo Rollouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum CanaryStep {
    /// Percent of traffic to the candidate; fractions down to 0.01 are kept.
    SetWeight(f64),
    Pause(PauseStep),
    Analysis(AnalysisStep),
    SetHeaderRoute(HeaderRoute),
    SetMirrorRoute(MirrorRoute),
    /// Represented here; the spec crate rejects it until the chaos issue lands.
    Chaos(ChaosStep),
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PauseStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<DurationStr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisStep {
    pub templates: Vec<TemplateRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Arg>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackgroundAnalysis {
    pub templates: Vec<TemplateRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Arg>,
    /// The index of the step from which it runs (0: from the start).
    #[serde(default)]
    pub starting_step: usize,
}

/// Requests matching every entry go to the candidate (A/B). An empty `match` removes the route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderRoute {
    #[serde(rename = "match", default)]
    pub matches: Vec<RouteMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// A header name, or `cookie:NAME` for a cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    pub value: StringMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// A copy of `percent` % of stable's requests goes to the candidate; responses are dropped.
/// `percent: 0` removes the mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorRoute {
    pub percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChaosStep {
    pub experiment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlueGreenSpec {
    /// Where the proxy serves the candidate before promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_listen: Option<String>,
    #[serde(default = "default_true")]
    pub auto_promotion_enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<AnalysisStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<AnalysisStep>,
    #[serde(default = "default_delay")]
    pub scale_down_delay_seconds: u64,
}

/// An operator's command, with who gave it (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Command {
    pub kind: CommandKind,
    pub actor: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CommandKind {
    Promote,
    PromoteFull,
    Abort,
    Retry,
    Pause,
    Resume,
}

/// Which analysis run a measurement belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunKey {
    /// The run of the `analysis` step at this index.
    Step(usize),
    Background,
    PrePromotion,
    PostPromotion,
}

impl std::fmt::Display for RunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Steps are shown from 1, as `rollout get` shows "step n of m".
            RunKey::Step(i) => write!(f, "step {} analysis", i + 1),
            RunKey::Background => f.write_str("background analysis"),
            RunKey::PrePromotion => f.write_str("pre-promotion analysis"),
            RunKey::PostPromotion => f.write_str("post-promotion analysis"),
        }
    }
}

/// A measurement taken by the shell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeasurementResult {
    pub run: RunKey,
    pub metric: String,
    pub at_ms: u64,
    /// The provider's value, or its error message.
    pub outcome: Result<Value, String>,
}

/// The verdict of a chaos step's experiment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChaosVerdict {
    pub experiment: String,
    pub passed: bool,
    pub message: String,
}

/// What the shell saw since the last step.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observations {
    /// The revision Git asks for (the workload template's hash).
    pub desired: String,
    /// This is the first step since the controller (re)started with this state from the store.
    #[serde(default)]
    pub restarted: bool,
    /// Ready instances per revision.
    #[serde(default)]
    pub ready: BTreeMap<String, u32>,
    /// Counter deltas since the previous reading; `None` without a new reading.
    #[serde(default)]
    pub stable_traffic: Option<TrafficDelta>,
    #[serde(default)]
    pub candidate_traffic: Option<TrafficDelta>,
    #[serde(default)]
    pub measurements: Vec<MeasurementResult>,
    #[serde(default)]
    pub chaos: Vec<ChaosVerdict>,
    #[serde(default)]
    pub commands: Vec<Command>,
}

/// The whole routing table of one application, in 0.01 % units.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    /// The revision that takes the traffic not sent to the candidate.
    pub active: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    pub candidate_weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_route: Option<HeaderRoute>,
    #[serde(default)]
    pub mirror_percent: u32,
    /// The revision served on the preview listener (blue/green).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    /// Run exactly `replicas` instances of `revision`.
    Scale {
        revision: String,
        replicas: u32,
    },
    /// Push this routing table to the proxy in one configuration change.
    SetTraffic(Traffic),
    StartAnalysis {
        run: RunKey,
    },
    StopAnalysis {
        run: RunKey,
    },
    /// Take one measurement and feed it back as a [`MeasurementResult`].
    Measure {
        run: RunKey,
        metric: String,
        provider: Provider,
    },
    StartChaos {
        experiment: String,
    },
    /// For the audit log and `rollout get`.
    Event(Event),
    Completed {
        revision: String,
    },
    Aborted(Abort),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub at_ms: u64,
    /// `None` when the engine decided on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub reason: String,
    pub message: String,
}

/// Why and on what evidence a revision was rolled back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Abort {
    pub revision: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<GuardEvidence>,
    pub at_ms: u64,
}

/// Where the rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// No candidate; stable serves everything.
    #[default]
    Healthy,
    Progressing,
    Paused,
    /// The desired revision was rolled back and is not retried.
    Degraded,
}

/// Why the rollout waits for an operator or a clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    pub reason: String,
    /// `None`: until `promote` or `resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Paused by `pause` (released by `resume`), not by a step.
    #[serde(default)]
    pub by_operator: bool,
}

/// Blue/green progress for the candidate.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenState {
    /// When the preview was ready (auto-promotion counts from here).
    pub preview_since_ms: Option<u64>,
    /// An operator asked to promote (skips pre-promotion analysis and auto-promotion).
    pub promote_requested: bool,
    /// `promote --full`: skip post-promotion analysis too.
    pub skip_post_analysis: bool,
    pub promoted: bool,
}

/// A scale-down that waits for its delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDown {
    pub revision: String,
    pub at_ms: u64,
}

/// Ended analysis runs kept in the state for the status.
pub const ENDED_RUNS_KEPT: usize = 5;

/// An analysis run that ended, with the revision it judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndedRun {
    pub revision: String,
    pub key: RunKey,
    pub run: AnalysisRun,
}

/// A measurement asked for and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlight {
    pub run: RunKey,
    pub metric: String,
    pub since_ms: u64,
}

/// The rollout's state: committed to the store before the actions run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    pub stable: Option<String>,
    pub candidate: Option<String>,
    pub phase: Phase,
    /// The canary step being executed (`steps.len()` when all are done).
    pub step_index: usize,
    pub candidate_ready: bool,
    pub pause: Option<Pause>,
    /// The routing table last pushed.
    pub traffic: Traffic,
    pub runs: Vec<(RunKey, AnalysisRun)>,
    /// The latest runs that ended (passed, failed, or stopped with their rollout), newest
    /// last, at most [`ENDED_RUNS_KEPT`]: what an operator looks at after a rollback.
    #[serde(default)]
    pub ended_runs: Vec<EndedRun>,
    pub in_flight: Vec<InFlight>,
    pub chaos_started: bool,
    pub guard: Guard,
    /// An operator promoted past the guard's `requireAcceptance` wait.
    #[serde(default)]
    pub guard_waived: bool,
    pub blue_green: BlueGreenState,
    pub scale_downs: Vec<ScaleDown>,
    /// The last revision rolled back; not retried while Git asks for it.
    pub aborted: Option<Abort>,
    /// `now_ms` of the previous step, to notice a controller that was away.
    pub last_step_ms: Option<u64>,
}

/// The result of one [`step`].
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub state: RolloutState,
    pub actions: Vec<Action>,
    /// When to step again at the latest without new observations (pause deadlines,
    /// measurements, scale-downs); `None` when only observations matter.
    pub wake_at_ms: Option<u64>,
}

/// Advances the rollout of one application.
pub fn step(spec: &RolloutSpec, state: &RolloutState, obs: &Observations, now_ms: u64) -> Step {
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
    spec: &'a RolloutSpec,
    s: RolloutState,
    actions: Vec<Action>,
    now: u64,
}

impl Engine<'_> {
    fn canary(&self) -> Option<&CanarySpec> {
        match &self.spec.strategy {
            Some(Strategy::Canary(c)) => Some(c),
            _ => None,
        }
    }

    fn blue_green(&self) -> Option<&BlueGreenSpec> {
        match &self.spec.strategy {
            Some(Strategy::BlueGreen(b)) => Some(b),
            _ => None,
        }
    }

    fn steps(&self) -> &[CanaryStep] {
        self.canary().map_or(&[], |c| c.steps.as_slice())
    }

    fn event(&mut self, actor: Option<&str>, reason: &str, message: String) {
        self.actions.push(Action::Event(Event {
            at_ms: self.now,
            actor: actor.map(str::to_string),
            reason: reason.to_string(),
            message,
        }));
    }

    fn set_traffic(&mut self, traffic: Traffic) {
        if self.s.traffic != traffic {
            self.s.traffic = traffic.clone();
            self.actions.push(Action::SetTraffic(traffic));
        }
    }

    fn stable_only(&self) -> Traffic {
        Traffic {
            active: self.s.stable.clone().unwrap_or_default(),
            ..Traffic::default()
        }
    }

    fn run(&mut self, obs: &Observations) {
        if let (true, Some(last)) = (obs.restarted, self.s.last_step_ms) {
            self.shift_clocks(self.now.saturating_sub(last));
        }
        self.s.last_step_ms = Some(self.now);
        self.due_scale_downs();

        let Some(stable) = self.s.stable.clone() else {
            // The first revision: nothing to protect, so it is simply started and served.
            self.s.stable = Some(obs.desired.clone());
            self.actions.push(Action::Scale {
                revision: obs.desired.clone(),
                replicas: self.spec.replicas,
            });
            let traffic = self.stable_only();
            self.set_traffic(traffic);
            self.event(
                None,
                "Created",
                format!("revision {} is stable", obs.desired),
            );
            return;
        };

        for cmd in &obs.commands {
            if cmd.kind == CommandKind::Retry {
                if let Some(a) = self.s.aborted.take() {
                    self.event(
                        Some(&cmd.actor),
                        "Retry",
                        format!("retrying revision {}", a.revision),
                    );
                    if self.s.phase == Phase::Degraded {
                        self.s.phase = Phase::Healthy;
                    }
                }
            }
        }

        if obs.desired == stable {
            if let Some(c) = self.s.candidate.clone() {
                self.drop_candidate(&c, 0);
                let traffic = self.stable_only();
                self.set_traffic(traffic);
                self.event(
                    None,
                    "RolloutEnded",
                    format!("Git returned to stable {stable}; candidate {c} removed"),
                );
            }
            self.s.aborted = None;
            self.s.phase = Phase::Healthy;
            return;
        }
        if self
            .s
            .aborted
            .as_ref()
            .is_some_and(|a| a.revision == obs.desired)
        {
            self.s.phase = Phase::Degraded;
            return;
        }
        if self.s.candidate.as_deref() != Some(obs.desired.as_str()) {
            self.new_candidate(&obs.desired);
        }
        let candidate = obs.desired.clone();

        if !self.s.candidate_ready {
            let ready = obs.ready.get(&candidate).copied().unwrap_or(0);
            if ready < self.spec.replicas {
                return;
            }
            self.s.candidate_ready = true;
            self.event(
                None,
                "CandidateReady",
                format!("{ready} instance(s) of {candidate} ready"),
            );
        }

        for m in &obs.measurements {
            self.s
                .in_flight
                .retain(|f| !(f.run == m.run && f.metric == m.metric));
            let Some((_, run)) = self.s.runs.iter_mut().find(|(k, _)| *k == m.run) else {
                continue;
            };
            // A measurement for a metric the run no longer knows is stale; ignore it.
            let Ok(phase) = run.record(&m.metric, m.at_ms, m.outcome.clone()) else {
                continue;
            };
            // The run keeps only the latest measurements; the audit log keeps every one.
            let shown = match &m.outcome {
                Ok(value) => value.to_string(),
                Err(error) => format!("error: {error}"),
            };
            let message = format!("{} {}: {shown} is {phase:?}", m.run, m.metric);
            self.event(None, "Measured", message);
        }

        for cmd in &obs.commands {
            match cmd.kind {
                CommandKind::Abort => {
                    self.abort(format!("aborted by {}", cmd.actor), Some(&cmd.actor), None);
                    return;
                }
                CommandKind::Pause => {
                    self.s.pause = Some(Pause {
                        reason: format!("paused by {}", cmd.actor),
                        deadline_ms: None,
                        by_operator: true,
                    });
                    self.event(Some(&cmd.actor), "Paused", "rollout paused".into());
                }
                CommandKind::Resume => {
                    if self.s.pause.as_ref().is_some_and(|p| p.by_operator) {
                        self.s.pause = None;
                        self.event(Some(&cmd.actor), "Resumed", "rollout resumed".into());
                    }
                }
                CommandKind::Promote | CommandKind::PromoteFull => {
                    let full = cmd.kind == CommandKind::PromoteFull;
                    self.promote_command(full, &cmd.actor);
                }
                CommandKind::Retry => {}
            }
        }

        if self.blue_green().is_some() {
            self.blue_green_step(&candidate);
        } else {
            if self.guard(obs) {
                return;
            }
            if self.background_analysis() {
                return;
            }
            self.canary_steps(obs, &candidate);
        }
        self.measurements_due();
        self.s.phase = match (&self.s.candidate, &self.s.pause) {
            (None, _) => Phase::Healthy,
            (Some(_), Some(_)) => Phase::Paused,
            (Some(_), None) => Phase::Progressing,
        };
    }

    fn shift_clocks(&mut self, gap: u64) {
        if let Some(d) = self.s.pause.as_mut().and_then(|p| p.deadline_ms.as_mut()) {
            *d += gap;
        }
        if let Some(t) = self.s.blue_green.preview_since_ms.as_mut() {
            *t += gap;
        }
    }

    fn due_scale_downs(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) =
            self.s.scale_downs.drain(..).partition(|d| d.at_ms <= now);
        self.s.scale_downs = later;
        for d in due {
            if self.s.stable.as_ref() != Some(&d.revision)
                && self.s.candidate.as_ref() != Some(&d.revision)
            {
                self.actions.push(Action::Scale {
                    revision: d.revision,
                    replicas: 0,
                });
            }
        }
    }

    fn stop_runs(&mut self) {
        for (key, mut run) in std::mem::take(&mut self.s.runs) {
            run.terminate();
            self.actions.push(Action::StopAnalysis { run: key.clone() });
            self.keep_ended(key, run);
        }
        self.s.in_flight.clear();
    }

    /// Removes one run that is over (its step passed, or the operator skipped it).
    fn retire_run(&mut self, key: &RunKey) {
        if let Some(i) = self.s.runs.iter().position(|(k, _)| k == key) {
            let (key, mut run) = self.s.runs.remove(i);
            run.terminate();
            self.keep_ended(key, run);
        }
    }

    fn keep_ended(&mut self, key: RunKey, run: AnalysisRun) {
        let revision = self.s.candidate.clone().unwrap_or_default();
        self.s.ended_runs.push(EndedRun { revision, key, run });
        let extra = self.s.ended_runs.len().saturating_sub(ENDED_RUNS_KEPT);
        self.s.ended_runs.drain(..extra);
    }

    /// Forgets the candidate; it is scaled down after `delay_s` (at once for 0).
    fn drop_candidate(&mut self, revision: &str, delay_s: u64) {
        self.stop_runs();
        if delay_s == 0 {
            self.actions.push(Action::Scale {
                revision: revision.to_string(),
                replicas: 0,
            });
        } else {
            self.s.scale_downs.push(ScaleDown {
                revision: revision.to_string(),
                at_ms: self.now + delay_s * 1_000,
            });
        }
        self.s.candidate = None;
        self.s.candidate_ready = false;
        self.s.pause = None;
        self.s.step_index = 0;
        self.s.chaos_started = false;
        self.s.guard = Guard::default();
        self.s.guard_waived = false;
        self.s.blue_green = BlueGreenState::default();
    }

    fn new_candidate(&mut self, revision: &str) {
        if let Some(old) = self.s.candidate.clone() {
            self.drop_candidate(&old, 0);
            self.event(
                None,
                "CandidateReplaced",
                format!("{revision} replaces candidate {old}"),
            );
            let traffic = self.stable_only();
            self.set_traffic(traffic);
        }
        self.s.aborted = None;
        self.s.candidate = Some(revision.to_string());
        self.s.phase = Phase::Progressing;
        self.actions.push(Action::Scale {
            revision: revision.to_string(),
            replicas: self.spec.replicas,
        });
        self.event(None, "RolloutStarted", format!("candidate {revision}"));
    }

    fn abort(&mut self, reason: String, actor: Option<&str>, evidence: Option<GuardEvidence>) {
        let Some(candidate) = self.s.candidate.clone() else {
            return;
        };
        let traffic = self.stable_only();
        self.set_traffic(traffic);
        let delay = self
            .canary()
            .and_then(|c| c.abort_scale_down_delay_seconds)
            .unwrap_or(30);
        self.drop_candidate(&candidate, delay);
        let abort = Abort {
            revision: candidate.clone(),
            reason: reason.clone(),
            evidence,
            at_ms: self.now,
        };
        self.s.aborted = Some(abort.clone());
        self.s.phase = Phase::Degraded;
        self.event(
            actor,
            "Aborted",
            format!("rolled back: revision {candidate} {reason}"),
        );
        self.actions.push(Action::Aborted(abort));
    }

    fn complete(&mut self) {
        let Some(candidate) = self.s.candidate.clone() else {
            return;
        };
        let old = self.s.stable.replace(candidate.clone());
        self.stop_runs();
        self.set_traffic(Traffic {
            active: candidate.clone(),
            ..Traffic::default()
        });
        let delay = match &self.spec.strategy {
            Some(Strategy::BlueGreen(b)) => b.scale_down_delay_seconds,
            Some(Strategy::Canary(c)) => c.scale_down_delay_seconds.unwrap_or(30),
            None => 0,
        };
        if let Some(old) = old {
            self.s.candidate = Some(old.clone());
            self.drop_candidate(&old, delay);
        }
        self.s.candidate = None;
        self.s.phase = Phase::Healthy;
        self.event(None, "Completed", format!("revision {candidate} is stable"));
        self.actions.push(Action::Completed {
            revision: candidate,
        });
    }

    fn promote_command(&mut self, full: bool, actor: &str) {
        let verb = if full { "promote --full" } else { "promote" };
        self.event(Some(actor), "Promoted", format!("{verb} by {actor}"));
        self.s.pause = None;
        if self.blue_green().is_some() {
            // Both forms promote; pre-promotion analysis is skipped by the operator's word.
            self.s.blue_green.promote_requested = true;
            self.s.blue_green.skip_post_analysis |= full;
            if full {
                self.retire_run(&RunKey::PostPromotion);
            }
            return;
        }
        if full || self.s.step_index >= self.steps().len() {
            self.s.guard_waived = true;
        }
        if full {
            self.s.step_index = self.steps().len();
        } else if self.s.step_index < self.steps().len() {
            let key = RunKey::Step(self.s.step_index);
            if let Some(pos) = self.s.runs.iter().position(|(k, _)| *k == key) {
                self.s.runs.remove(pos);
                self.actions.push(Action::StopAnalysis { run: key });
            }
            self.s.chaos_started = false;
            self.s.step_index += 1;
        }
    }

    /// Feeds the guard; true when it tripped and the rollout aborted.
    fn guard(&mut self, obs: &Observations) -> bool {
        let Some(cfg) = self
            .canary()
            .map(|c| c.guard.clone())
            .or_else(|| self.spec.strategy.is_none().then(GuardConfig::default))
        else {
            return false;
        };
        if !cfg.enabled || self.in_chaos_step() {
            return false;
        }
        let Some(candidate) = &obs.candidate_traffic else {
            return false;
        };
        let empty = TrafficDelta::default();
        let stable = obs.stable_traffic.as_ref().unwrap_or(&empty);
        let verdict = self.s.guard.observe(&cfg, stable, candidate);
        match verdict {
            GuardVerdict::Trip(test) => {
                let ev = self.s.guard.evidence(&cfg);
                let (name, what, t) = match (test, &ev.latency) {
                    (GuardTest::Latency, Some(l)) => ("latency", "slow", l),
                    _ => ("error", "failed", &ev.errors),
                };
                let reason = format!(
                    "failed its {name} guard: {} {what} of {} requests, llr {:.2} ≥ {:.2} \
                     (p0 {:.4}, p1 {:.4})",
                    t.events, t.requests, t.llr, t.upper, t.p0, t.p1
                );
                self.abort(reason, None, Some(ev));
                true
            }
            _ => false,
        }
    }

    /// With `requireAcceptance`, true while the error test has not accepted the candidate
    /// after the last step: the rollout waits (paused, at its last weight) and says why once.
    fn awaiting_acceptance(&mut self) -> bool {
        let Some(cfg) = self
            .canary()
            .map(|c| &c.guard)
            .filter(|g| g.enabled && g.require_acceptance)
        else {
            return false;
        };
        if self.s.guard_waived || self.s.guard.errors.verdict() == Verdict::Accept {
            return false;
        }
        if self.s.pause.is_none() {
            let ev = self.s.guard.evidence(cfg).errors;
            self.s.pause = Some(Pause {
                reason: "steps done: waiting for the guard to accept the candidate \
                         (requireAcceptance)"
                    .into(),
                deadline_ms: None,
                by_operator: false,
            });
            self.event(
                None,
                "AwaitingGuard",
                format!(
                    "steps done; the error test has judged {} requests ({} failed, llr {:.2}) \
                     and accepts at ≤ {:.2}",
                    ev.requests, ev.events, ev.llr, ev.lower
                ),
            );
        }
        true
    }

    /// A chaos step's experiment is judging the candidate: its faults are meant to hurt, so
    /// the guard looks away until the step is over (the readings in between are dropped).
    fn in_chaos_step(&self) -> bool {
        self.s.chaos_started
            && matches!(
                self.steps().get(self.s.step_index),
                Some(CanaryStep::Chaos(_))
            )
    }

    fn start_run(&mut self, key: RunKey, templates: &[TemplateRef], args: &[Arg]) -> bool {
        let mut metrics = Vec::new();
        for t in templates {
            let resolved = self
                .spec
                .templates
                .get(&t.template_name)
                .ok_or_else(|| format!("analysis template `{}` not found", t.template_name))
                .and_then(|tpl| tpl.resolve(args).map_err(|e| e.to_string()));
            match resolved {
                Ok(m) => metrics.extend(m),
                Err(e) => {
                    self.abort(format!("could not start analysis: {e}"), None, None);
                    return false;
                }
            }
        }
        self.s
            .runs
            .push((key.clone(), AnalysisRun::start(metrics, self.now)));
        self.actions.push(Action::StartAnalysis { run: key });
        true
    }

    fn run_phase(&self, key: &RunKey) -> Option<(RunPhase, Option<String>)> {
        self.s
            .runs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, r)| (r.phase(), r.message()))
    }

    /// Starts or judges the background analysis; true when the rollout aborted.
    fn background_analysis(&mut self) -> bool {
        let Some(bg) = self.canary().and_then(|c| c.analysis.clone()) else {
            return false;
        };
        if self.s.step_index < bg.starting_step {
            return false;
        }
        match self.run_phase(&RunKey::Background) {
            None => !self.start_run(RunKey::Background, &bg.templates, &bg.args),
            Some((RunPhase::Failed | RunPhase::Error, msg)) => {
                self.abort(
                    format!("failed background analysis: {}", msg.unwrap_or_default()),
                    None,
                    None,
                );
                true
            }
            Some((RunPhase::Inconclusive, msg)) if self.s.pause.is_none() => {
                self.s.pause = Some(Pause {
                    reason: format!(
                        "background analysis inconclusive: {}",
                        msg.unwrap_or_default()
                    ),
                    deadline_ms: None,
                    by_operator: false,
                });
                false
            }
            _ => false,
        }
    }

    fn canary_steps(&mut self, obs: &Observations, candidate: &str) {
        loop {
            if self.s.pause.as_ref().is_some_and(|p| p.by_operator) {
                return;
            }
            let Some(step) = self.steps().get(self.s.step_index).cloned() else {
                if !self.awaiting_acceptance() {
                    self.complete();
                }
                return;
            };
            let index = self.s.step_index;
            let done = match step {
                CanaryStep::SetWeight(percent) => {
                    let w = (percent * 100.0).round().clamp(0.0, f64::from(FULL_WEIGHT)) as u32;
                    let traffic = Traffic {
                        candidate: Some(candidate.to_string()),
                        candidate_weight: w,
                        ..self.s.traffic.clone()
                    };
                    self.set_traffic(Traffic {
                        active: self.s.stable.clone().unwrap_or_default(),
                        ..traffic
                    });
                    true
                }
                CanaryStep::SetHeaderRoute(route) => {
                    let header_route = (!route.matches.is_empty()).then_some(route);
                    let traffic = Traffic {
                        candidate: Some(candidate.to_string()),
                        header_route,
                        ..self.s.traffic.clone()
                    };
                    self.set_traffic(traffic);
                    true
                }
                CanaryStep::SetMirrorRoute(m) => {
                    let traffic = Traffic {
                        candidate: Some(candidate.to_string()),
                        mirror_percent: m.percent.min(100),
                        ..self.s.traffic.clone()
                    };
                    self.set_traffic(traffic);
                    true
                }
                CanaryStep::Pause(p) => match &self.s.pause {
                    None => {
                        let deadline_ms = p.duration.as_ref().map(|d| self.now + d.as_ms());
                        self.s.pause = Some(Pause {
                            reason: match &p.duration {
                                Some(d) => format!("step {}: pause {d}", index + 1),
                                None => format!("step {}: waiting for promote", index + 1),
                            },
                            deadline_ms,
                            by_operator: false,
                        });
                        deadline_ms.is_some_and(|d| d <= self.now)
                    }
                    Some(pause) => pause.deadline_ms.is_some_and(|d| d <= self.now),
                },
                CanaryStep::Analysis(a) => {
                    let key = RunKey::Step(index);
                    match self.run_phase(&key) {
                        None => {
                            if !self.start_run(key, &a.templates, &a.args) {
                                return;
                            }
                            false
                        }
                        Some((RunPhase::Successful, _)) => {
                            self.retire_run(&RunKey::Step(index));
                            true
                        }
                        Some((RunPhase::Failed | RunPhase::Error, msg)) => {
                            self.abort(
                                format!(
                                    "failed analysis at step {}: {}",
                                    index + 1,
                                    msg.unwrap_or_default()
                                ),
                                None,
                                None,
                            );
                            return;
                        }
                        Some((RunPhase::Inconclusive, msg)) => {
                            if self.s.pause.is_none() {
                                self.s.pause = Some(Pause {
                                    reason: format!(
                                        "analysis inconclusive: {}",
                                        msg.unwrap_or_default()
                                    ),
                                    deadline_ms: None,
                                    by_operator: false,
                                });
                            }
                            false
                        }
                        Some((RunPhase::Running, _)) => false,
                    }
                }
                CanaryStep::Chaos(c) => {
                    if let Some(v) = obs
                        .chaos
                        .iter()
                        .find(|v| v.experiment == c.experiment && self.s.chaos_started)
                    {
                        if !v.passed {
                            self.abort(
                                format!(
                                    "did not survive chaos experiment {}: {}",
                                    c.experiment, v.message
                                ),
                                None,
                                None,
                            );
                            return;
                        }
                        self.s.chaos_started = false;
                        true
                    } else {
                        if !self.s.chaos_started {
                            self.s.chaos_started = true;
                            self.actions.push(Action::StartChaos {
                                experiment: c.experiment.clone(),
                            });
                        }
                        false
                    }
                }
            };
            if !done {
                return;
            }
            self.s.pause = None;
            self.s.step_index += 1;
            self.event(
                None,
                "StepCompleted",
                format!("step {} of {}", index + 1, self.steps().len()),
            );
        }
    }

    fn blue_green_step(&mut self, candidate: &str) {
        let Some(bg) = self.blue_green().cloned() else {
            return;
        };
        if !self.s.blue_green.promoted {
            let preview = Traffic {
                preview: Some(candidate.to_string()),
                ..self.stable_only()
            };
            self.set_traffic(preview);
            let since = *self.s.blue_green.preview_since_ms.get_or_insert(self.now);
            if !self.s.blue_green.promote_requested {
                if let Some(pre) = &bg.pre_promotion_analysis {
                    match self.run_phase(&RunKey::PrePromotion) {
                        None => {
                            self.start_run(RunKey::PrePromotion, &pre.templates, &pre.args);
                            return;
                        }
                        Some((RunPhase::Successful, _)) => {}
                        Some((RunPhase::Running, _)) => return,
                        Some((_, msg)) => {
                            self.abort(
                                format!(
                                    "failed pre-promotion analysis: {}",
                                    msg.unwrap_or_default()
                                ),
                                None,
                                None,
                            );
                            return;
                        }
                    }
                }
                if !bg.auto_promotion_enabled {
                    if self.s.pause.is_none() {
                        self.s.pause = Some(Pause {
                            reason: "preview ready: waiting for promote".into(),
                            deadline_ms: None,
                            by_operator: false,
                        });
                    }
                    return;
                }
                let at = since + bg.auto_promotion_seconds.unwrap_or(0) * 1_000;
                if self.now < at {
                    self.s.pause = Some(Pause {
                        reason: "auto-promotion".into(),
                        deadline_ms: Some(at),
                        by_operator: false,
                    });
                    return;
                }
            }
            self.s.pause = None;
            self.s.blue_green.promoted = true;
            self.set_traffic(Traffic {
                active: candidate.to_string(),
                ..Traffic::default()
            });
            self.event(None, "Promoted", format!("traffic switched to {candidate}"));
            if let Some(post) = &bg.post_promotion_analysis {
                if !self.s.blue_green.skip_post_analysis
                    && !self.start_run(RunKey::PostPromotion, &post.templates, &post.args)
                {
                    return;
                }
            }
        }
        if bg.post_promotion_analysis.is_some() && !self.s.blue_green.skip_post_analysis {
            match self.run_phase(&RunKey::PostPromotion) {
                Some((RunPhase::Running, _)) => return,
                Some((RunPhase::Failed | RunPhase::Error | RunPhase::Inconclusive, msg)) => {
                    self.abort(
                        format!(
                            "failed post-promotion analysis: {}; traffic switched back",
                            msg.unwrap_or_default()
                        ),
                        None,
                        None,
                    );
                    return;
                }
                _ => {}
            }
        }
        self.complete();
    }

    fn measurements_due(&mut self) {
        let now = self.now;
        self.s
            .in_flight
            .retain(|f| f.since_ms + MEASUREMENT_TIMEOUT_MS > now);
        let mut asks = Vec::new();
        for (key, run) in &self.s.runs {
            for name in run.due(now) {
                if self
                    .s
                    .in_flight
                    .iter()
                    .any(|f| f.run == *key && f.metric == name)
                {
                    continue;
                }
                if let Some(m) = run.metrics.iter().find(|m| m.spec.metric.name == name) {
                    asks.push((
                        key.clone(),
                        name.to_string(),
                        m.spec.metric.provider.clone(),
                    ));
                }
            }
        }
        for (run, metric, provider) in asks {
            self.s.in_flight.push(InFlight {
                run: run.clone(),
                metric: metric.clone(),
                since_ms: now,
            });
            self.actions.push(Action::Measure {
                run,
                metric,
                provider,
            });
        }
    }

    fn wake_at(&self) -> Option<u64> {
        let pause = self.s.pause.as_ref().and_then(|p| p.deadline_ms);
        let runs = self.s.runs.iter().filter_map(|(_, r)| r.next_due_ms());
        let retries = self
            .s
            .in_flight
            .iter()
            .map(|f| f.since_ms + MEASUREMENT_TIMEOUT_MS);
        let downs = self.s.scale_downs.iter().map(|d| d.at_ms);
        pause
            .into_iter()
            .chain(runs)
            .chain(retries)
            .chain(downs)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const STABLE: &str = "v1";
    const CANDIDATE: &str = "v2";

    fn spec(strategy: Value) -> RolloutSpec {
        let template = json!({"metrics": [{
            "name": "error-rate", "interval": "10s", "count": 2,
            "successCondition": "result < 0.01",
            "provider": {"builtin": {"metric": "errorRate"}}
        }]});
        RolloutSpec {
            replicas: 2,
            strategy: serde_json::from_value(strategy).unwrap(),
            templates: [(
                "success-rate".to_string(),
                serde_json::from_value(template).unwrap(),
            )]
            .into(),
        }
    }

    fn obs(desired: &str) -> Observations {
        Observations {
            desired: desired.into(),
            ready: [(STABLE.to_string(), 2), (CANDIDATE.to_string(), 2)].into(),
            ..Observations::default()
        }
    }

    fn cmd(kind: CommandKind) -> Observations {
        Observations {
            commands: vec![Command {
                kind,
                actor: "alice".into(),
            }],
            ..obs(CANDIDATE)
        }
    }

    /// A state with `v1` stable, as after the first step.
    fn stable_state(spec: &RolloutSpec) -> RolloutState {
        step(spec, &RolloutState::default(), &obs(STABLE), 0).state
    }

    fn traffic(actions: &[Action]) -> Vec<&Traffic> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SetTraffic(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    fn weight(w: u32) -> Traffic {
        Traffic {
            active: STABLE.into(),
            candidate: Some(CANDIDATE.into()),
            candidate_weight: w,
            ..Traffic::default()
        }
    }

    fn stable_only() -> Traffic {
        Traffic {
            active: STABLE.into(),
            ..Traffic::default()
        }
    }

    fn canary(steps: Value) -> RolloutSpec {
        spec(json!({"canary": {"steps": steps}}))
    }

    #[test]
    fn the_first_revision_becomes_stable_at_once() {
        let s = step(
            &canary(json!([])),
            &RolloutState::default(),
            &obs(STABLE),
            0,
        );
        assert_eq!(s.state.stable.as_deref(), Some(STABLE));
        assert_eq!(
            s.actions[..2],
            [
                Action::Scale {
                    revision: STABLE.into(),
                    replicas: 2
                },
                Action::SetTraffic(stable_only())
            ]
        );
    }

    #[test]
    fn steps_wait_for_the_candidate_to_be_ready() {
        let spec = canary(json!([{"setWeight": 5}]));
        let mut o = obs(CANDIDATE);
        o.ready.insert(CANDIDATE.into(), 1);
        let s = step(&spec, &stable_state(&spec), &o, 1_000);
        assert!(s.actions.contains(&Action::Scale {
            revision: CANDIDATE.into(),
            replicas: 2
        }));
        assert!(traffic(&s.actions).is_empty());
        assert_eq!(s.state.phase, Phase::Progressing);
    }

    #[test]
    fn set_weight_and_timed_pause_then_an_indefinite_pause_waits_for_promote() {
        let spec = canary(json!([
            {"setWeight": 5}, {"pause": {"duration": "30s"}},
            {"setWeight": 50}, {"pause": {}}, {"setWeight": 0.25}
        ]));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        assert_eq!(traffic(&s.actions), [&weight(500)]);
        assert_eq!(s.state.phase, Phase::Paused);
        assert_eq!(s.wake_at_ms, Some(31_000));
        let s2 = step(&spec, &s.state, &obs(CANDIDATE), 30_999);
        assert!(traffic(&s2.actions).is_empty(), "still paused");
        let s3 = step(&spec, &s2.state, &obs(CANDIDATE), 31_000);
        assert_eq!(traffic(&s3.actions), [&weight(5_000)]);
        assert_eq!(s3.state.step_index, 3);
        assert_eq!(s3.wake_at_ms, None, "an indefinite pause has no deadline");
        let s4 = step(&spec, &s3.state, &obs(CANDIDATE), 900_000);
        assert_eq!(s4.state.phase, Phase::Paused);
        let s5 = step(&spec, &s4.state, &cmd(CommandKind::Promote), 900_100);
        assert_eq!(
            traffic(&s5.actions)[0],
            &weight(25),
            "0.25 % in 0.01 % units"
        );
        assert_eq!(s5.state.stable.as_deref(), Some(CANDIDATE));
    }

    #[test]
    fn completing_the_steps_makes_the_candidate_stable_and_retires_the_old_one_later() {
        let spec = canary(json!([{"setWeight": 50}]));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        assert_eq!(s.state.stable.as_deref(), Some(CANDIDATE));
        assert_eq!(s.state.phase, Phase::Healthy);
        assert!(s.actions.contains(&Action::Completed {
            revision: CANDIDATE.into()
        }));
        let last = traffic(&s.actions).pop().unwrap().clone();
        assert_eq!(
            last,
            Traffic {
                active: CANDIDATE.into(),
                ..Traffic::default()
            }
        );
        assert_eq!(s.wake_at_ms, Some(31_000));
        let later = step(&spec, &s.state, &obs(CANDIDATE), 31_000);
        assert_eq!(
            later.actions,
            [Action::Scale {
                revision: STABLE.into(),
                replicas: 0
            }]
        );
    }

    #[test]
    fn promote_full_skips_every_remaining_step() {
        let spec =
            canary(json!([{"setWeight": 5}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        let s = step(&spec, &s.state, &cmd(CommandKind::PromoteFull), 2_000);
        assert_eq!(s.state.stable.as_deref(), Some(CANDIDATE));
        assert!(s.actions.iter().any(|a| matches!(a, Action::Event(e)
            if e.actor.as_deref() == Some("alice") && e.message.contains("--full"))));
    }

    #[test]
    fn a_pause_keeps_its_remaining_time_across_a_controller_restart() {
        let spec =
            canary(json!([{"setWeight": 5}, {"pause": {"duration": "30s"}}, {"setWeight": 50}]));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        let s = step(&spec, &s.state, &obs(CANDIDATE), 11_000); // 20 s left
        let stored = serde_json::to_string(&s.state).unwrap();
        // The controller is killed and comes back 5 minutes later.
        let restored: RolloutState = serde_json::from_str(&stored).unwrap();
        assert_eq!(restored, s.state);
        let back = 311_000;
        let first = Observations {
            restarted: true,
            ..obs(CANDIDATE)
        };
        let r = step(&spec, &restored, &first, back);
        assert_eq!(r.state.phase, Phase::Paused);
        assert_eq!(r.wake_at_ms, Some(back + 20_000), "20 s of pause remain");
        let r = step(&spec, &r.state, &obs(CANDIDATE), back + 20_000);
        assert_eq!(traffic(&r.actions)[0], &weight(5_000));
    }

    #[test]
    fn operator_pause_holds_and_resume_releases() {
        let spec =
            canary(json!([{"setWeight": 5}, {"pause": {"duration": "10s"}}, {"setWeight": 50}]));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        let s = step(&spec, &s.state, &cmd(CommandKind::Pause), 1_500);
        let s = step(&spec, &s.state, &obs(CANDIDATE), 2_000);
        let s = step(&spec, &s.state, &obs(CANDIDATE), 60_000);
        assert!(traffic(&s.actions).is_empty(), "held by the operator");
        assert_eq!(s.state.phase, Phase::Paused);
        let s = step(&spec, &s.state, &cmd(CommandKind::Resume), 60_250);
        let s = step(&spec, &s.state, &obs(CANDIDATE), 70_500);
        assert_eq!(
            traffic(&s.actions)[0],
            &weight(5_000),
            "then the last step completes"
        );
    }

    fn aborted(spec: &RolloutSpec) -> Step {
        let s = step(spec, &stable_state(spec), &obs(CANDIDATE), 1_000);
        step(spec, &s.state, &cmd(CommandKind::Abort), 2_000)
    }

    #[test]
    fn abort_sends_all_traffic_to_stable_in_one_push_and_scales_down_later() {
        let spec =
            canary(json!([{"setWeight": 20}, {"setMirrorRoute": {"percent": 10}}, {"pause": {}}]));
        let s = aborted(&spec);
        assert_eq!(traffic(&s.actions), [&stable_only()]);
        assert_eq!(s.state.phase, Phase::Degraded);
        let a = s.state.aborted.clone().unwrap();
        assert_eq!(
            (a.revision.as_str(), a.reason.as_str()),
            (CANDIDATE, "aborted by alice")
        );
        assert!(!s.actions.contains(&Action::Scale {
            revision: CANDIDATE.into(),
            replicas: 0
        }));
        let later = step(&spec, &s.state, &obs(CANDIDATE), 32_000);
        assert!(later.actions.contains(&Action::Scale {
            revision: CANDIDATE.into(),
            replicas: 0
        }));
        assert_eq!(
            later.state.phase,
            Phase::Degraded,
            "the bad revision is not retried"
        );
        assert!(!later
            .actions
            .iter()
            .any(|a| matches!(a, Action::Scale { replicas: 2, .. })));
    }

    #[test]
    fn retry_restarts_an_aborted_revision_and_a_new_revision_clears_the_abort() {
        let spec = canary(json!([{"setWeight": 20}, {"pause": {}}]));
        let s = aborted(&spec);
        let r = step(&spec, &s.state, &cmd(CommandKind::Retry), 3_000);
        assert_eq!(r.state.aborted, None);
        assert_eq!(traffic(&r.actions), [&weight(2_000)]);
        let mut o = obs("v3");
        o.ready.insert("v3".into(), 2);
        let n = step(&spec, &s.state, &o, 3_000);
        assert_eq!(n.state.candidate.as_deref(), Some("v3"));
        assert_eq!(n.state.aborted, None);
    }

    #[test]
    fn a_new_revision_replaces_the_candidate_and_returning_to_stable_ends_the_rollout() {
        let spec = canary(json!([{"setWeight": 20}, {"pause": {}}]));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        let mut o = obs("v3");
        o.ready.insert("v3".into(), 0);
        let n = step(&spec, &s.state, &o, 2_000);
        assert!(n.actions.contains(&Action::Scale {
            revision: CANDIDATE.into(),
            replicas: 0
        }));
        assert!(n.actions.contains(&Action::Scale {
            revision: "v3".into(),
            replicas: 2
        }));
        assert_eq!(traffic(&n.actions), [&stable_only()]);
        let back = step(&spec, &s.state, &obs(STABLE), 2_000);
        assert_eq!(back.state.candidate, None);
        assert_eq!(back.state.phase, Phase::Healthy);
        assert_eq!(traffic(&back.actions), [&stable_only()]);
        assert!(back.actions.contains(&Action::Scale {
            revision: CANDIDATE.into(),
            replicas: 0
        }));
    }

    #[test]
    fn header_and_mirror_routes_are_part_of_the_routing_table() {
        let spec = canary(json!([
            {"setHeaderRoute": {"match": [{"header": "x-canary", "value": {"exact": "yes"}}]}},
            {"setMirrorRoute": {"percent": 20}},
            {"pause": {}}
        ]));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        let t = traffic(&s.actions);
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].candidate_weight, 0);
        assert_eq!(t[1].mirror_percent, 20);
        let route = t[1].header_route.as_ref().unwrap();
        assert_eq!(route.matches[0].value, StringMatch::Exact("yes".into()));
    }

    fn bad_reading(requests: u64, failures: u64) -> Observations {
        Observations {
            stable_traffic: Some(TrafficDelta::outcomes(2_000, 0)),
            candidate_traffic: Some(TrafficDelta::outcomes(requests, failures)),
            ..obs(CANDIDATE)
        }
    }

    #[test]
    fn a_guard_trip_aborts_with_weights_back_to_stable_in_one_action_and_evidence() {
        let spec = canary(json!([{"setWeight": 5}, {"pause": {}}]));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        let s = step(&spec, &s.state, &bad_reading(10, 1), 1_250);
        assert_eq!(s.state.phase, Phase::Paused, "one failure is not enough");
        let s = step(&spec, &s.state, &bad_reading(10, 1), 1_500);
        assert_eq!(traffic(&s.actions), [&stable_only()]);
        let abort = s.actions.iter().find_map(|a| match a {
            Action::Aborted(a) => Some(a),
            _ => None,
        });
        let abort = abort.expect("aborted");
        assert!(
            abort
                .reason
                .starts_with("failed its error guard: 2 failed of 20 requests"),
            "{}",
            abort.reason
        );
        let ev = abort.evidence.as_ref().unwrap();
        assert_eq!((ev.errors.requests, ev.errors.events), (20, 2));
        assert!(ev.errors.llr >= ev.errors.upper);
        assert_eq!(s.state.phase, Phase::Degraded);
    }

    fn waiting_for_the_guard() -> RolloutSpec {
        spec(json!({"canary": {
            "steps": [{"setWeight": 50}],
            "guard": {"requireAcceptance": true},
        }}))
    }

    fn completed(actions: &[Action]) -> bool {
        actions
            .iter()
            .any(|a| matches!(a, Action::Completed { .. }))
    }

    #[test]
    fn with_require_acceptance_the_last_step_waits_for_the_error_test_to_accept() {
        let spec = waiting_for_the_guard();
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        assert!(!completed(&s.actions), "no evidence yet");
        assert_eq!(s.state.phase, Phase::Paused);
        let reason = &s.state.pause.as_ref().unwrap().reason;
        assert!(reason.contains("waiting for the guard"), "{reason}");
        assert_eq!(traffic(&s.actions), [&weight(5_000)], "at its last weight");
        // Twenty good requests are not enough to accept against a 5 % alternative.
        let s = step(&spec, &s.state, &bad_reading(20, 0), 1_250);
        assert!(!completed(&s.actions));
        assert_eq!(s.state.step_index, 1);
        // A few hundred are: the error test crosses its lower boundary and the rollout ends.
        let s = step(&spec, &s.state, &bad_reading(400, 0), 1_500);
        assert!(completed(&s.actions), "{:?}", s.state.guard.errors);
        assert_eq!(s.state.stable.as_deref(), Some(CANDIDATE));
        assert_eq!(s.state.phase, Phase::Healthy);
    }

    #[test]
    fn with_require_acceptance_a_bad_candidate_waits_and_is_rolled_back_not_promoted() {
        let spec = waiting_for_the_guard();
        let mut s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        // One failure in 80 (1.25 %, against 0.1 % and 5 %): neither boundary is crossed for
        // a while, and the time the steps took no longer matters.
        for i in 0..5 {
            s = step(&spec, &s.state, &bad_reading(80, 1), 2_000 + i * 1_000_000);
            assert!(
                !completed(&s.actions),
                "promoted while undecided at reading {i}"
            );
        }
        let s = step(&spec, &s.state, &bad_reading(40, 4), 9_000_000);
        assert!(!completed(&s.actions));
        assert_eq!(traffic(&s.actions), [&stable_only()], "rolled back");
        assert_eq!(s.state.phase, Phase::Degraded);
    }

    #[test]
    fn an_operators_promote_ends_the_wait_for_the_guard_and_a_new_candidate_waits_again() {
        let spec = waiting_for_the_guard();
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        assert!(!completed(&s.actions));
        let s = step(&spec, &s.state, &cmd(CommandKind::Promote), 2_000);
        assert!(completed(&s.actions), "promote ends the wait");
        assert!(!s.state.guard_waived, "the waiver goes with the candidate");
        // Without requireAcceptance the steps alone decide.
        let plain = canary(json!([{"setWeight": 50}]));
        let s = step(&plain, &stable_state(&plain), &obs(CANDIDATE), 1_000);
        assert!(completed(&s.actions));
    }

    fn measure_actions(actions: &[Action]) -> Vec<(RunKey, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Measure { run, metric, .. } => Some((run.clone(), metric.clone())),
                _ => None,
            })
            .collect()
    }

    fn measured(run: RunKey, at_ms: u64, value: f64) -> Observations {
        Observations {
            measurements: vec![MeasurementResult {
                run,
                metric: "error-rate".into(),
                at_ms,
                outcome: Ok(json!(value)),
            }],
            ..obs(CANDIDATE)
        }
    }

    #[test]
    fn an_analysis_step_measures_on_its_interval_and_advances_when_successful() {
        let spec = canary(json!([{"setWeight": 5},
            {"analysis": {"templates": [{"templateName": "success-rate"}]}}, {"setWeight": 50}, {"pause": {}}]));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        assert!(s.actions.contains(&Action::StartAnalysis {
            run: RunKey::Step(1)
        }));
        assert_eq!(
            measure_actions(&s.actions),
            [(RunKey::Step(1), "error-rate".into())]
        );
        let again = step(&spec, &s.state, &obs(CANDIDATE), 1_250);
        assert!(
            measure_actions(&again.actions).is_empty(),
            "already in flight"
        );
        let s = step(
            &spec,
            &again.state,
            &measured(RunKey::Step(1), 1_300, 0.001),
            1_300,
        );
        assert_eq!(s.wake_at_ms, Some(11_300));
        let recorded: Vec<&str> = s
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Event(e) if e.reason == "Measured" => Some(e.message.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            recorded,
            ["step 2 analysis error-rate: 0.001 is Successful"],
            "every measurement is an event, for the audit log"
        );
        let s = step(&spec, &s.state, &obs(CANDIDATE), 11_300);
        assert_eq!(measure_actions(&s.actions).len(), 1);
        let s = step(
            &spec,
            &s.state,
            &measured(RunKey::Step(1), 11_400, 0.0),
            11_400,
        );
        assert_eq!(traffic(&s.actions), [&weight(5_000)]);
    }

    #[test]
    fn a_failed_analysis_step_aborts() {
        let spec = canary(json!([{"setWeight": 5},
            {"analysis": {"templates": [{"templateName": "success-rate"}]}}]));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        let s = step(
            &spec,
            &s.state,
            &measured(RunKey::Step(1), 1_100, 0.2),
            1_100,
        );
        assert_eq!(traffic(&s.actions), [&stable_only()]);
        let a = s.state.aborted.unwrap();
        assert!(
            a.reason.contains("failed (1) > failureLimit (0)"),
            "{}",
            a.reason
        );
    }

    #[test]
    fn background_analysis_starts_at_its_step_and_fails_the_rollout() {
        let spec = spec(json!({"canary": {
            "steps": [{"setWeight": 5}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}],
            "analysis": {"templates": [{"templateName": "success-rate"}], "startingStep": 2}
        }}));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        assert!(s.state.runs.is_empty());
        let s = step(&spec, &s.state, &cmd(CommandKind::Promote), 2_000);
        assert!(s.actions.contains(&Action::StartAnalysis {
            run: RunKey::Background
        }));
        let s = step(
            &spec,
            &s.state,
            &measured(RunKey::Background, 2_100, 0.5),
            2_100,
        );
        assert!(s
            .state
            .aborted
            .unwrap()
            .reason
            .contains("background analysis"));
    }

    #[test]
    fn a_chaos_step_waits_for_its_experiment() {
        let spec = canary(
            json!([{"setWeight": 5}, {"chaos": {"experiment": "kill-one"}}, {"setWeight": 50}, {"pause": {}}]),
        );
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        assert!(s.actions.contains(&Action::StartChaos {
            experiment: "kill-one".into()
        }));
        let again = step(&spec, &s.state, &obs(CANDIDATE), 1_250);
        assert!(!again
            .actions
            .iter()
            .any(|a| matches!(a, Action::StartChaos { .. })));
        let verdict = |passed| Observations {
            chaos: vec![ChaosVerdict {
                experiment: "kill-one".into(),
                passed,
                message: "probe errors failed".into(),
            }],
            ..obs(CANDIDATE)
        };
        let ok = step(&spec, &again.state, &verdict(true), 5_000);
        assert_eq!(traffic(&ok.actions), [&weight(5_000)]);
        let bad = step(&spec, &again.state, &verdict(false), 5_000);
        assert!(bad
            .state
            .aborted
            .unwrap()
            .reason
            .contains("did not survive chaos"));
    }

    #[test]
    fn the_guard_looks_away_while_a_chaos_step_hurts_the_candidate() {
        let spec = canary(json!([{"chaos": {"experiment": "slow-db"}}, {"pause": {}}]));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        assert!(s.state.chaos_started);
        let s = step(&spec, &s.state, &bad_reading(100, 100), 1_250);
        assert!(
            s.state.aborted.is_none(),
            "the experiment judges, not the guard"
        );
        let passed = Observations {
            chaos: vec![ChaosVerdict {
                experiment: "slow-db".into(),
                passed: true,
                message: "the hypothesis held".into(),
            }],
            ..obs(CANDIDATE)
        };
        let s = step(&spec, &s.state, &passed, 1_500);
        let s = step(&spec, &s.state, &bad_reading(100, 100), 1_750);
        assert!(
            s.state.aborted.is_some(),
            "the guard watches again after the step"
        );
    }

    #[test]
    fn without_a_strategy_a_ready_candidate_replaces_stable() {
        let spec = RolloutSpec {
            replicas: 2,
            strategy: None,
            templates: BTreeMap::new(),
        };
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        assert_eq!(s.state.stable.as_deref(), Some(CANDIDATE));
    }

    fn blue_green(extra: Value) -> RolloutSpec {
        let mut bg = json!({"previewListen": "127.0.0.1:8081"});
        for (k, v) in extra.as_object().unwrap() {
            bg[k] = v.clone();
        }
        spec(json!({"blueGreen": bg}))
    }

    fn preview() -> Traffic {
        Traffic {
            preview: Some(CANDIDATE.into()),
            ..stable_only()
        }
    }

    fn active(revision: &str) -> Traffic {
        Traffic {
            active: revision.into(),
            ..Traffic::default()
        }
    }

    #[test]
    fn blue_green_previews_then_auto_promotes_after_its_delay() {
        let spec = blue_green(json!({"autoPromotionSeconds": 60, "scaleDownDelaySeconds": 10}));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        assert_eq!(traffic(&s.actions), [&preview()]);
        assert_eq!(s.wake_at_ms, Some(61_000));
        let s = step(&spec, &s.state, &obs(CANDIDATE), 61_000);
        assert_eq!(traffic(&s.actions), [&active(CANDIDATE)]);
        assert_eq!(s.state.stable.as_deref(), Some(CANDIDATE));
        assert_eq!(
            s.wake_at_ms,
            Some(71_000),
            "old revision scaled down after 10 s"
        );
    }

    #[test]
    fn blue_green_without_auto_promotion_waits_for_promote() {
        let spec = blue_green(json!({"autoPromotionEnabled": false}));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        let s = step(&spec, &s.state, &obs(CANDIDATE), 999_000);
        assert_eq!(s.state.phase, Phase::Paused);
        let s = step(&spec, &s.state, &cmd(CommandKind::Promote), 999_100);
        assert_eq!(traffic(&s.actions), [&active(CANDIDATE)]);
    }

    #[test]
    fn blue_green_post_promotion_failure_switches_traffic_back() {
        let spec = blue_green(json!({
            "postPromotionAnalysis": {"templates": [{"templateName": "success-rate"}]}
        }));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        assert_eq!(traffic(&s.actions), [&preview(), &active(CANDIDATE)]);
        assert!(s.actions.contains(&Action::StartAnalysis {
            run: RunKey::PostPromotion
        }));
        assert_eq!(
            s.state.stable.as_deref(),
            Some(STABLE),
            "not complete before the analysis"
        );
        let s = step(
            &spec,
            &s.state,
            &measured(RunKey::PostPromotion, 1_100, 0.3),
            1_100,
        );
        assert_eq!(traffic(&s.actions), [&stable_only()]);
        assert!(s.state.aborted.unwrap().reason.contains("post-promotion"));
    }

    #[test]
    fn blue_green_pre_promotion_analysis_gates_promotion() {
        let spec = blue_green(json!({
            "prePromotionAnalysis": {"templates": [{"templateName": "success-rate"}]}
        }));
        let s = step(&spec, &stable_state(&spec), &obs(CANDIDATE), 1_000);
        assert_eq!(traffic(&s.actions), [&preview()]);
        let s = step(
            &spec,
            &s.state,
            &measured(RunKey::PrePromotion, 1_100, 0.0),
            1_100,
        );
        assert!(traffic(&s.actions).is_empty());
        let s = step(
            &spec,
            &s.state,
            &measured(RunKey::PrePromotion, 11_100, 0.0),
            11_100,
        );
        assert_eq!(traffic(&s.actions), [&active(CANDIDATE)]);
        assert_eq!(s.state.stable.as_deref(), Some(CANDIDATE));
    }

    #[test]
    fn the_state_round_trips_mid_rollout() {
        let spec = spec(json!({"canary": {
            "steps": [{"setWeight": 5}, {"analysis": {"templates": [{"templateName": "success-rate"}]}}],
            "analysis": {"templates": [{"templateName": "success-rate"}]}
        }}));
        let s = step(&spec, &stable_state(&spec), &bad_reading(10, 0), 1_000);
        let json = serde_json::to_string(&s.state).unwrap();
        assert_eq!(
            serde_json::from_str::<RolloutState>(&json).unwrap(),
            s.state
        );
    }
}
