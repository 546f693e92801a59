//! The rollout shell: feeds [`gauntlet_rollout::engine::step`] and keeps what it decides.
//!
//! Each application with a `strategy` has an [`AppRollout`]: the engine's state and the
//! instances per revision its `Scale` actions asked for. Every reconcile pass (and at once
//! after each reading of the proxy's counters while a candidate takes traffic) the shell
//! builds the engine's observations (ready instances per revision, the stable and candidate
//! counter deltas since the last step, finished measurements, operator commands), steps the
//! engine, **commits the new state with the audit records of its events to the store in one
//! transaction**, and only then lets the controller act: the planner follows the targets
//! ([`RolloutTargets`]) and the proxy's routes follow the engine's traffic. A controller killed
//! at any point restarts from the last committed state, and the engine is told it restarted so
//! a pause keeps its remaining time.
//!
//! The guard's deltas come from the counters the controller reads ten times a second
//! ([`crate::live`]): the first reading of a revision after a (re)start is a baseline, never a
//! delta, so requests counted before the candidate was watched are not judged.

use std::collections::BTreeMap;

use gauntlet_proxy::metrics::{MetricsSnapshot, LATENCY_BOUNDS_US};
use gauntlet_rollout::engine::{
    self, Action as RolloutAction, ChaosVerdict, Command, MeasurementResult, Observations, Phase,
    RolloutSpec, RolloutState, Traffic,
};
use gauntlet_rollout::guard::{LatencyHistogram, TrafficDelta};
use gauntlet_runtime::Instance;
use gauntlet_store::{Actor, AuditRecord};
use serde::{Deserialize, Serialize};

use crate::plan::{Health, RolloutTargets};

/// The store key of an application's rollout.
pub fn store_key(app: &str) -> String {
    format!("rollout.{app}")
}

/// What is committed per application.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppRollout {
    pub state: RolloutState,
    /// Instances each revision must have, as the engine's `Scale` actions set them.
    pub targets: BTreeMap<String, u32>,
}

impl AppRollout {
    /// A rollout for an application already running `revision` (e.g. a strategy added to a
    /// running application): it is stable, so the next revision is a canary.
    pub fn seeded(observed: &[&Instance]) -> AppRollout {
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for inst in observed.iter().filter(|i| i.is_ready()) {
            *counts.entry(inst.revision.as_str()).or_default() += 1;
        }
        let Some((stable, n)) = counts.into_iter().max_by_key(|(_, n)| *n) else {
            return AppRollout::default();
        };
        AppRollout {
            state: RolloutState {
                stable: Some(stable.to_string()),
                traffic: Traffic {
                    active: stable.to_string(),
                    ..Traffic::default()
                },
                ..RolloutState::default()
            },
            targets: BTreeMap::from([(stable.to_string(), n)]),
        }
    }

    /// What the planner must do for this application.
    pub fn targets(&self, desired_revision: &str, steps: usize) -> RolloutTargets {
        let s = &self.state;
        let health = match s.phase {
            Phase::Healthy => None,
            Phase::Progressing => Some(Health::Progressing(progress(s, steps))),
            Phase::Paused => Some(Health::Progressing(format!(
                "paused: {}",
                s.pause
                    .as_ref()
                    .map(|p| p.reason.as_str())
                    .unwrap_or("waiting")
            ))),
            Phase::Degraded => Some(Health::Degraded(match &s.aborted {
                // "revision X failed its error guard: …", "revision X: aborted by ana".
                Some(a) if a.reason.starts_with("failed") => {
                    format!("rolled back: revision {} {}", a.revision, a.reason)
                }
                Some(a) => format!("rolled back: revision {}: {}", a.revision, a.reason),
                None => "rolled back".into(),
            })),
        };
        RolloutTargets {
            replicas: self.targets.clone(),
            active: s.traffic.active.clone(),
            health,
            complete: s.candidate.is_none() && s.stable.as_deref() == Some(desired_revision),
        }
    }
}

fn progress(s: &RolloutState, steps: usize) -> String {
    let weight = s.traffic.candidate_weight;
    let candidate = s.candidate.as_deref().unwrap_or("?");
    if !s.candidate_ready {
        return format!("starting candidate {candidate}");
    }
    format!(
        "canary {candidate}: step {} of {steps}, {}.{:02}% of traffic",
        (s.step_index + 1).min(steps.max(1)),
        weight / 100,
        weight % 100
    )
}

/// What the shell remembers between steps without committing it: readings already fed to
/// the guard, and inputs that arrived since the last step.
#[derive(Debug, Default)]
pub struct Pending {
    /// The counters of each revision at the last step.
    pub fed: BTreeMap<String, MetricsSnapshot>,
    pub measurements: Vec<MeasurementResult>,
    pub commands: Vec<Command>,
    /// The verdict of the chaos step's run, once it finished.
    pub chaos: Vec<ChaosVerdict>,
    /// The state was loaded from the store: the engine is told the controller was away.
    pub restarted: bool,
}

/// The observations of one step, taking the pending inputs. `counters` are each revision's
/// newest counters, `window` what each did over the live window: the first time a revision is
/// watched, its window is its delta, so the stable baseline starts with the last seconds of
/// stable traffic and a new candidate's first requests are judged too; stable's window is
/// also what a guard without a baseline yet starts from. After a restart the first reading is
/// only a baseline: the window's requests were judged before it.
pub fn observations(
    rollout: &AppRollout,
    pending: &mut Pending,
    desired_revision: &str,
    instances: &[&Instance],
    counters: &BTreeMap<String, MetricsSnapshot>,
    window: &BTreeMap<String, MetricsSnapshot>,
) -> Observations {
    let mut ready: BTreeMap<String, u32> = BTreeMap::new();
    for inst in instances.iter().filter(|i| i.is_ready()) {
        *ready.entry(inst.revision.clone()).or_default() += 1;
    }
    let restarted = pending.restarted;
    let mut delta_of = |revision: Option<&String>, whole_window: bool| -> Option<TrafficDelta> {
        let revision = revision?;
        let now = counters.get(revision)?;
        let d = match pending.fed.insert(revision.clone(), *now) {
            _ if whole_window => *window.get(revision)?,
            Some(before) => gauntlet_proxy::metrics::delta(&before, now),
            None if restarted => return None,
            None => *window.get(revision)?,
        };
        let outcomes: u64 = d.responses.iter().sum::<u64>() + d.connect_errors + d.timeouts;
        Some(TrafficDelta {
            requests: outcomes,
            failures: d.failures(),
            latency: LatencyHistogram {
                bounds_us: LATENCY_BOUNDS_US.to_vec(),
                counts: d.latency.buckets.to_vec(),
            },
        })
    };
    // A guard that has no stable baseline yet (a new candidate, after a rollback or a
    // promotion) starts from stable's live window, as the first rollout does: otherwise a
    // second rollout would judge its candidate against a few readings of stable.
    let fresh_baseline = rollout.state.guard.stable_requests == 0 && !restarted;
    let stable_traffic = delta_of(rollout.state.stable.as_ref(), fresh_baseline);
    let candidate_traffic = delta_of(rollout.state.candidate.as_ref(), false);
    Observations {
        desired: desired_revision.to_string(),
        restarted: std::mem::take(&mut pending.restarted),
        ready,
        stable_traffic,
        candidate_traffic,
        measurements: std::mem::take(&mut pending.measurements),
        chaos: std::mem::take(&mut pending.chaos),
        commands: std::mem::take(&mut pending.commands),
    }
}

/// Applies one step's `Scale` actions to the targets and turns its events into audit records.
pub fn absorb(rollout: &mut AppRollout, app: &str, step: &engine::Step) -> Vec<AuditRecord> {
    rollout.state = step.state.clone();
    let mut records = Vec::new();
    for action in &step.actions {
        match action {
            RolloutAction::Scale { revision, replicas } => {
                if *replicas == 0 {
                    rollout.targets.remove(revision);
                } else {
                    rollout.targets.insert(revision.clone(), *replicas);
                }
            }
            // The `Aborted` action below records the abort with its evidence.
            RolloutAction::Event(e) if e.reason == "Aborted" => {}
            RolloutAction::Event(e) => {
                let actor = match &e.actor {
                    Some(user) => Actor::User(user.clone()),
                    None => Actor::Controller,
                };
                let reason = kebab(&e.reason);
                let action = if reason.starts_with("rollout-") {
                    reason
                } else {
                    format!("rollout-{reason}")
                };
                records.push(AuditRecord::now(actor, app, &action, e.message.clone()));
            }
            RolloutAction::Aborted(a) => {
                let evidence = a
                    .evidence
                    .as_ref()
                    .and_then(|e| serde_json::to_string(e).ok())
                    .map(|e| format!("; evidence {e}"))
                    .unwrap_or_default();
                records.push(
                    AuditRecord::now(
                        Actor::Controller,
                        app,
                        "rollout-aborted",
                        format!("{}{evidence}", a.reason),
                    )
                    .change(a.revision.clone(), rollout.state.traffic.active.clone()),
                );
            }
            RolloutAction::Completed { revision } => records.push(AuditRecord::now(
                Actor::Controller,
                app,
                "rollout-completed",
                format!("revision {revision} is stable and serves all traffic"),
            )),
            RolloutAction::SetTraffic(_)
            | RolloutAction::StartAnalysis { .. }
            | RolloutAction::StopAnalysis { .. }
            | RolloutAction::Measure { .. }
            | RolloutAction::StartChaos { .. } => {}
        }
    }
    // The controller's log tells a rollout's story too, without the audit log at hand.
    for r in &records {
        if r.action == "rollout-measured" {
            tracing::debug!(app, action = %r.action, reason = %r.reason, "rollout event");
        } else {
            tracing::info!(app, action = %r.action, reason = %r.reason, "rollout event");
        }
    }
    records
}

/// An event's reason as an audit action: `CandidateReady` → `candidate-ready`.
pub(crate) fn kebab(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The spec the engine needs for one application.
pub fn spec(
    replicas: u32,
    strategy: &engine::Strategy,
    templates: BTreeMap<String, gauntlet_rollout::analysis::AnalysisTemplateSpec>,
) -> RolloutSpec {
    RolloutSpec {
        replicas,
        strategy: Some(strategy.clone()),
        templates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gauntlet_runtime::{InstanceId, Phase as InstancePhase};

    fn inst(revision: &str, n: u16, ready: bool) -> Instance {
        Instance {
            id: InstanceId(format!("web-{revision}-{n}")),
            app: "web".into(),
            revision: revision.into(),
            port: 9000 + n,
            pid: Some(u32::from(n)),
            phase: if ready {
                InstancePhase::Ready
            } else {
                InstancePhase::Starting
            },
            restarts: 0,
            created_ms: 0,
        }
    }

    #[test]
    fn a_running_application_seeds_its_stable_revision() {
        let (a, b, c) = (inst("s", 1, true), inst("s", 2, true), inst("x", 3, false));
        let seeded = AppRollout::seeded(&[&a, &b, &c]);
        assert_eq!(seeded.state.stable.as_deref(), Some("s"));
        assert_eq!(seeded.targets, BTreeMap::from([("s".to_string(), 2)]));
        assert_eq!(AppRollout::seeded(&[]), AppRollout::default());
    }

    #[test]
    fn the_first_reading_of_a_revision_is_its_window_and_later_ones_are_deltas() {
        let mut rollout = AppRollout::seeded(&[&inst("s", 1, true)]);
        let mut pending = Pending::default();
        let snapshot = |requests: u64, errors: u64| {
            let mut s = MetricsSnapshot {
                requests,
                ..MetricsSnapshot::default()
            };
            s.responses[1] = requests - errors;
            s.responses[4] = errors;
            s
        };
        let a = inst("s", 1, true);
        let counters = BTreeMap::from([("s".to_string(), snapshot(100, 1))]);
        let obs = observations(&rollout, &mut pending, "s", &[&a], &counters, &counters);
        let first = obs.stable_traffic.unwrap();
        assert_eq!(
            (first.requests, first.failures),
            (100, 1),
            "the first reading judges the window"
        );
        assert_eq!(obs.ready["s"], 1);
        let counters = BTreeMap::from([("s".to_string(), snapshot(150, 3))]);
        let obs = observations(&rollout, &mut pending, "s", &[&a], &counters, &counters);
        let d = obs.stable_traffic.unwrap();
        assert_eq!(
            (d.requests, d.failures),
            (150, 3),
            "until the guard has a baseline, stable's window is its baseline"
        );
        rollout.state.guard.stable_requests = 150;
        let counters = BTreeMap::from([("s".to_string(), snapshot(200, 4))]);
        let obs = observations(&rollout, &mut pending, "s", &[&a], &counters, &counters);
        let d = obs.stable_traffic.unwrap();
        assert_eq!((d.requests, d.failures), (50, 1), "then deltas");
    }

    #[test]
    fn reasons_become_kebab_case_actions() {
        assert_eq!(kebab("CandidateReady"), "candidate-ready");
        assert_eq!(kebab("Created"), "created");
    }
}
