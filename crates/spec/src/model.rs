//! The manifest types: what a user writes in Git, as Rust types.
//!
//! Field names follow Kubernetes and Argo where they already name the thing, so a user coming
//! from them feels at home. Every struct denies unknown fields; the JSON Schema printed by
//! `gauntlet schema` is generated from these types.

use std::collections::BTreeMap;

use gauntlet_chaos::spec::ChaosExperimentSpec;
use gauntlet_rollout::analysis::AnalysisTemplateSpec;
use gauntlet_rollout::engine::Strategy;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The only `apiVersion` this release understands.
pub const API_VERSION: &str = "gauntlet.dev/v1alpha1";

/// `metadata` of every document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// Unique among documents of the same kind; a DNS-label-like name (`[a-z0-9-]`, at most 63).
    pub name: String,
    /// Free-form labels, shown in status.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `kind: Application`: a workload kept running on this machine.
// Not `Eq`: a strategy's weights and guard rates are floating point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Application {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ApplicationSpec,
}

/// The desired state of one application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApplicationSpec {
    /// How many instances of the current revision run. Default 1; 0 keeps the app defined but
    /// stopped.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// The local workload: one operating-system process per instance.
    pub process: ProcessSpec,
    /// When an instance counts as ready. Without it, an instance is ready once it is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// Where the proxy serves this application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    /// Applications that must be healthy before this one is applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// How a new revision reaches users: `canary` steps or `blueGreen`. Without one, a new
    /// revision replaces the old once it is ready (a rolling update). Needs `service.listen`,
    /// where the proxy splits traffic. Not part of the revision: editing it restarts nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// What happens after a revision fails its rollout. Default `rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
}

/// `spec.onFailure`: what Gauntlet does once a rollout has aborted and traffic is back on the
/// stable revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnFailure {
    /// Keep serving stable and do not try the failed revision again until Git changes (or an
    /// operator runs `gauntlet rollout retry`); the application shows Degraded meanwhile.
    #[default]
    Rollback,
    /// As `rollback`, and Gauntlet also commits a revert of the offending change to Git, so
    /// that Git and what runs agree again.
    Revert,
}

fn default_replicas() -> u32 {
    1
}

/// The process that makes one instance. `${PORT}` in `command`, `args`, `env` values and
/// `workingDir` is replaced by the instance's port; `PORT` is also set in its environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProcessSpec {
    /// Program and leading arguments. A bare name is looked up in `PATH` (and, with an
    /// artifact, inside the unpacked artifact first).
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory; relative paths are relative to the unpacked artifact when there is
    /// one, else to the instance's own directory under the state directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// An archive or executable fetched, verified and cached before the first start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// Seconds between SIGTERM and SIGKILL when an instance is stopped. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<u32>,
}

impl ProcessSpec {
    /// A process that runs `command` with nothing else set.
    ///
    /// ```
    /// let p = gauntlet_spec::ProcessSpec::new(["sleep", "1"]);
    /// assert_eq!(p.command, ["sleep", "1"]);
    /// ```
    pub fn new<S: Into<String>>(command: impl IntoIterator<Item = S>) -> Self {
        ProcessSpec {
            command: command.into_iter().map(Into::into).collect(),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            artifact: None,
            termination_grace_period_seconds: None,
        }
    }
}

/// A downloadable build of the application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Artifact {
    /// `http://`, `https://` or `file://`. A `.tar.gz`/`.tgz` is unpacked; anything else is
    /// stored as an executable file named after the URL's last segment.
    pub url: String,
    /// Lower-case hex SHA-256 of the downloaded bytes; a mismatch refuses to start.
    pub sha256: String,
}

/// A readiness probe, after Kubernetes: exactly one of `httpGet`, `tcpSocket`, `exec`.
// Named apart in the schema from a ChaosExperiment's hypothesis `Probe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "ReadinessProbe")]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    /// Seconds after start before the first probe. Default 0.
    #[serde(default)]
    pub initial_delay_seconds: u32,
    /// Seconds between probes. Default 1 (Kubernetes: 10; local processes start fast).
    #[serde(default = "default_period")]
    pub period_seconds: u32,
    /// Seconds before a probe counts as failed. Default 1.
    #[serde(default = "default_one")]
    pub timeout_seconds: u32,
    /// Consecutive successes to become ready. Default 1.
    #[serde(default = "default_one")]
    pub success_threshold: u32,
    /// Consecutive failures to become unready. Default 3.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
}

fn default_period() -> u32 {
    1
}
fn default_one() -> u32 {
    1
}
fn default_failure_threshold() -> u32 {
    3
}

/// HTTP GET against the instance; 200-399 is success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpGetAction {
    #[serde(default = "default_path")]
    pub path: String,
    /// Port to probe; defaults to the instance's `${PORT}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Default 127.0.0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

fn default_path() -> String {
    "/".to_string()
}

/// A TCP connect to the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSocketAction {
    /// Defaults to the instance's `${PORT}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A command run on this host; exit status 0 is success. `${PORT}` is substituted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecAction {
    pub command: Vec<String>,
}

/// Where the application is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    /// `host:port`, for example `127.0.0.1:8080`.
    pub listen: String,
    /// Serve TLS (HTTP/2 and HTTP/1.1 by ALPN) on `listen` with these PEM files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServiceTls>,
}

/// A certificate chain (leaf first) and its private key, as PEM files on the host that runs
/// the proxy. They are kept out of Git on purpose: the manifest names them, the host holds
/// them. Absolute paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceTls {
    pub cert_file: String,
    pub key_file: String,
}

/// `kind: AnalysisTemplate`: metrics that judge a revision, named by `analysis` steps (and
/// blue/green's pre- and post-promotion analysis) through `templateName`.
///
/// `spec` is Argo Rollouts' template: `args`, `metrics` (each with `interval`, `count`,
/// `initialDelay`, `successCondition`, `failureCondition`, the limits and a `provider`) and
/// `dryRun`. Templates are not part of any revision: editing one restarts nothing, and a run
/// already started keeps the metrics it started with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalysisTemplate {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: AnalysisTemplateSpec,
}

/// `kind: ChaosExperiment`: a steady-state hypothesis, a method of faults, actions and pauses,
/// and rollbacks, run against one application on a schedule, on demand, or as a rollout's
/// `chaos` step.
///
/// `spec` is `gauntlet-chaos`'s [`ChaosExperimentSpec`], with its rules. Experiments are not
/// part of any revision: editing one restarts nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChaosExperiment {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ChaosExperimentSpec,
}

/// `kind: FeatureFlags`: one flag set in flagd's format, served over OFREP.
///
/// `spec` is exactly flagd's flag-set schema (<https://flagd.dev/schema/v0/flags.json>),
/// written as YAML: `flags` by key, optional `$evaluators` and `metadata`. A plain flagd file
/// named `*.flagd.json` under the configured path is read the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FeatureFlags {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    /// A flagd flag set: `flags`, `$evaluators`, `metadata`.
    #[schemars(schema_with = "flag_set_schema")]
    pub spec: serde_json::Value,
}

fn flag_set_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "A flagd flag set, as in https://flagd.dev/schema/v0/flags.json",
        "type": "object",
        "required": ["flags"],
        "properties": {
            "flags": {"type": "object", "additionalProperties": {"type": "object"}},
            "$evaluators": {"type": "object"},
            "metadata": {"type": "object"},
            "$schema": {"type": "string"}
        },
        "additionalProperties": false
    })
}
