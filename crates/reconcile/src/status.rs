//! What the controller reports: the source's state and each application's sync and health.
//! These are the API's response bodies, so every field name is part of the public contract.

use gauntlet_runtime::Instance;
use serde::{Deserialize, Serialize};

use crate::plan::{Health, SyncStatus};

/// A commit as applied or rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitInfo {
    pub sha: String,
    pub message: String,
    pub author: String,
}

/// A commit that failed validation and was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejected {
    pub commit: CommitInfo,
    /// One `file:line:column: field: message` per problem.
    pub errors: Vec<String>,
}

/// The Git source as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    pub repo: String,
    pub reference: String,
    pub path: String,
    /// The last commit that was validated and applied.
    pub applied: Option<CommitInfo>,
    /// The newest commit seen that failed validation, if it is still the remote head.
    pub rejected: Option<Rejected>,
    /// The last fetch error; `None` once a fetch succeeds again.
    pub error: Option<String>,
    /// Consecutive failed fetches (drives the retry backoff).
    pub failures: u32,
    /// Fetch passes completed since the controller started (each asks the server for the
    /// head once).
    pub checks: u64,
    /// Unix milliseconds of the last fetch attempt and of the next scheduled one.
    pub last_check_ms: u64,
    pub next_check_ms: u64,
}

/// One application, as `gauntlet status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    pub name: String,
    /// The commit the desired state came from.
    pub commit: String,
    /// The desired revision (hash of the workload).
    pub revision: String,
    pub replicas: usize,
    pub ready: usize,
    pub sync: SyncStatus,
    pub health: Health,
    /// `service.listen`, if any.
    pub service: Option<String>,
    /// A problem the controller cannot fix by itself (a start error, a port taken by a
    /// process Gauntlet did not start).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// How the proxy splits the application's traffic now, per revision (empty when the
    /// application has no `service.listen` or nothing serves it yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficShare>,
    pub instances: Vec<Instance>,
}

/// One revision's share of an application's traffic at the proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficShare {
    pub revision: String,
    /// In units of 0.01 % (10,000 is all of it).
    pub weight: u32,
    /// Endpoints taking new requests.
    pub endpoints: usize,
    /// Endpoints finishing their requests before their instance stops.
    pub draining: usize,
    /// Requests per second, error rate and latency over the last 10 s, from the proxy's
    /// counters (read ten times a second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<crate::live::RevisionRates>,
}

impl TrafficShare {
    pub fn of(route: &gauntlet_proxy::config::RevisionRoute) -> TrafficShare {
        let draining = route.endpoints.iter().filter(|e| e.draining).count();
        TrafficShare {
            revision: route.name.clone(),
            weight: route.weight,
            endpoints: route.endpoints.len() - draining,
            draining,
            live: None,
        }
    }
}

impl std::fmt::Display for TrafficShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = &self.revision[..self.revision.len().min(8)];
        write!(
            f,
            "{short} {}.{:02}% ({} serving",
            self.weight / 100,
            self.weight % 100,
            self.endpoints
        )?;
        if self.draining > 0 {
            write!(f, ", {} draining", self.draining)?;
        }
        f.write_str(")")
    }
}

/// The whole controller.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub source: SourceStatus,
    pub apps: Vec<AppStatus>,
    /// The proxy serving `service.listen` addresses, when the controller runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<crate::proxy_link::ProxyStatus>,
}

/// What applying the remote head would change, as `gauntlet diff` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Diff {
    pub commit: CommitInfo,
    /// Validation errors: non-empty means the commit would be rejected.
    pub errors: Vec<String>,
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub app: String,
    /// `create`, `update`, `scale`, `prune`, `retire`.
    pub action: String,
    pub detail: String,
}

/// One application's rollout, as `gauntlet rollout get` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    pub app: String,
    /// The revision Git asks for.
    pub desired: String,
    /// Steps of the canary (0 for blue/green).
    pub steps: usize,
    /// The engine's committed state: phase, stable, candidate, step, traffic, pause, analysis
    /// runs, the abort with its evidence.
    pub state: gauntlet_rollout::engine::RolloutState,
    /// The sequential guard's progress toward either boundary, while a candidate runs.
    pub guard: Option<gauntlet_rollout::guard::GuardEvidence>,
    pub stable_rates: Option<crate::live::RevisionRates>,
    pub candidate_rates: Option<crate::live::RevisionRates>,
    /// The chaos step the candidate is at: its experiment's run (`gauntlet chaos report RUN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos: Option<crate::GateRun>,
}
