//! The journal: what one run of an experiment did and saw, kept when it ends.
//!
//! It lives inside the run's state (so it is committed with every step and survives a
//! restart) and is stored as the run's record when the run is done: the status, whether the
//! hypothesis deviated, every activity with its start, end and output, every fault with its
//! lease and the time it was removed, and the probes' values before, during and after the
//! method. It is what `gauntlet chaos get` shows and what a rollout's chaos step is judged on
//! ([`Journal::gate`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::select::Targets;

/// Probe readings during the method kept in the journal (the latest ones). A long
/// experiment with a short interval would otherwise grow the state committed at every step;
/// the count of those dropped is kept.
pub const DURING_KEPT: usize = 200;

/// How a run ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunStatus {
    #[default]
    Running,
    /// The method ran and the hypothesis held before, during and after.
    Completed,
    /// The hypothesis did not hold: before the method (nothing was injected), or after it.
    Failed,
    /// Stopped early: by an operator or a rollout, by a continuous check over its threshold,
    /// by a fault that could not be injected, or by the deadline.
    Aborted,
    /// The controller restarted mid-run; faults were removed and rollbacks run on restart.
    Interrupted,
}

/// The run record.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    pub run_id: String,
    pub status: RunStatus,
    /// The system left its steady state while or after faults were in place (a failed
    /// hypothesis after the method, or a continuous check over its threshold). A hypothesis
    /// that fails *before* the method is not a deviation: the system was not steady to begin
    /// with.
    pub deviated: bool,
    /// Why the run ended as it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    pub steady_state: SteadyState,
    /// The method's activities in the order they started.
    pub activities: Vec<ActivityRecord>,
    pub faults: Vec<FaultRecord>,
    pub rollbacks: Vec<ActivityRecord>,
}

/// The probes' readings, by phase.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SteadyState {
    /// `None` until every probe before the method answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met_before: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met_after: Option<bool>,
    pub before: Vec<ProbeRecord>,
    pub during: Vec<ProbeRecord>,
    /// Readings during the method dropped from `during` (the oldest), see [`DURING_KEPT`].
    #[serde(default)]
    pub during_dropped: u64,
    pub after: Vec<ProbeRecord>,
}

/// One probe reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeRecord {
    pub name: String,
    pub at_ms: u64,
    pub passed: bool,
    /// What the probe returned (see `ProbeOutput::summary`), `null` on an error.
    pub value: Value,
    /// The tolerance's reason, or the probe's error.
    pub reason: String,
}

/// One activity of the method, or one rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityRecord {
    /// Its index in `spec.method` or `spec.rollbacks`.
    pub index: usize,
    pub title: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub background: bool,
    pub start_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
    /// The command's output, or the runtime's or proxy's report of an injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One injected fault's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultRecord {
    pub id: String,
    /// Index in `spec.method`.
    pub activity: usize,
    pub title: String,
    pub targets: Targets,
    pub injected_ms: u64,
    /// The latest lease given.
    pub lease_expires_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_ms: Option<u64>,
}

/// A finished run's verdict as a rollout's chaos step reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gate {
    pub passed: bool,
    pub message: String,
}

impl Journal {
    pub fn is_finished(&self) -> bool {
        self.ended_ms.is_some()
    }

    /// `None` while the run is going (rollbacks included). Only a Completed run passes: a
    /// candidate that was not tested because the run was aborted or interrupted has not
    /// survived anything.
    pub fn gate(&self) -> Option<Gate> {
        if !self.is_finished() {
            return None;
        }
        let why = self.message.clone().unwrap_or_default();
        let message = match self.status {
            RunStatus::Completed => "the hypothesis held".to_string(),
            RunStatus::Failed if !self.deviated => format!("not steady before the method: {why}"),
            RunStatus::Failed => format!("the hypothesis deviated: {why}"),
            RunStatus::Aborted => format!("aborted: {why}"),
            RunStatus::Interrupted => format!("interrupted: {why}"),
            RunStatus::Running => return None,
        };
        Some(Gate {
            passed: self.status == RunStatus::Completed,
            message,
        })
    }

    pub(crate) fn record_during(&mut self, record: ProbeRecord) {
        let during = &mut self.steady_state.during;
        if during.len() >= DURING_KEPT {
            during.remove(0);
            self.steady_state.during_dropped += 1;
        }
        during.push(record);
    }
}
