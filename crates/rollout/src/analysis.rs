//! Analysis runs: Argo Rollouts' `AnalysisTemplate` metric semantics as a pure state machine.
//!
//! The shell resolves a template with its arguments ([`AnalysisTemplateSpec::resolve`]), starts
//! an [`AnalysisRun`], asks it which metrics are [`due`](AnalysisRun::due), takes those
//! measurements through their providers (the I/O: builtin, prometheus, web, command), and
//! feeds each back with [`record`](AnalysisRun::record) as a JSON value or an error message.
//! The run says when to look again ([`next_due_ms`](AnalysisRun::next_due_ms)) and its
//! [`phase`](AnalysisRun::phase). A run is plain serializable data holding its resolved
//! metrics, so a run survives a controller restart and a template edited in Git mid-run does
//! not change it.
//!
//! # One measurement
//!
//! As Argo's `EvaluateResult`: with neither condition, any value is Successful; with only
//! `successCondition`, false is Failed; with only `failureCondition`, false is Successful; with
//! both, `failureCondition` true is Failed (it wins), `successCondition` true is Successful, and
//! both false is Inconclusive. A provider error, or a condition that cannot be evaluated on the
//! value (`null < 0.01`), is an Error.
//!
//! # When a metric trips (limits are the number *tolerated*)
//!
//! Checked after every measurement, in this order, the later overriding the earlier exactly as
//! Argo's `assessMetricFailureInconclusiveOrError` does:
//!
//! - **Failed** when failed measurements `> failureLimit` (default 0: the first failure fails);
//! - **Inconclusive** when inconclusive measurements `> inconclusiveLimit` (default 0);
//! - **Error** when *consecutive* errors `> consecutiveErrorLimit` (default 4: the fifth error in
//!   a row); any non-error measurement resets the streak.
//!
//! Otherwise a metric is **Successful** once it has taken `count` measurements (errors do not
//! count towards `count`, as in Argo). Without `count`, a metric without `interval` measures
//! once; a metric with `interval` runs until the run is terminated, then it is Successful.
//! Argo's documentation describes the limits loosely as "the maximum number of failures
//! allowed" and in places reads as if the run fails *at* the limit; its code trips only when
//! the count *exceeds* the limit. Gauntlet follows the code, so templates behave as they do in
//! Argo: `failureLimit: 2` fails on the third failed measurement.
//!
//! # Timing
//!
//! The first measurement is due at start + `initialDelay`; the next at the previous
//! measurement + `interval`, or + 10 s after an Error (Argo's error retry interval).
//!
//! # The run
//!
//! The run's phase is the worst of its metrics (Successful < Inconclusive < Error < Failed),
//! once all are complete. Unlike Argo, the run completes as soon as any metric is Failed or
//! Error: no later measurement could make the verdict good, and the rollout should not wait.
//! Metrics named in `dryRun` are measured and shown but never affect the run's phase.
//!
//! A metric keeps its last [`MEASUREMENTS_KEPT`] measurements in the run (what `gauntlet
//! rollout get` shows); the engine records every measurement as a `Measured` event, which the
//! controller stores in the audit log.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::expr::{Condition, ParseError};

/// Measurements a metric keeps in the run (Argo's default `measurementRetention`). The counts
/// that decide the verdict cover every measurement; older ones are dropped from the run so its
/// state stays small however long a background analysis runs, and each one remains in the
/// audit log (`rollout-measured`).
pub const MEASUREMENTS_KEPT: usize = 10;

/// How long to wait after an Error before measuring again.
pub const ERROR_RETRY_MS: u64 = 10_000;
/// Default `consecutiveErrorLimit`.
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: u32 = 4;

/// A duration written as in a manifest (`"10s"`, `"1m30s"`), parsed with humantime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
pub struct DurationStr {
    text: String,
    ms: u64,
}

impl DurationStr {
    pub fn as_ms(&self) -> u64 {
        self.ms
    }
}

impl TryFrom<String> for DurationStr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let d = humantime::parse_duration(text.trim())
            .map_err(|e| format!("`{text}` is not a duration like 30s or 5m: {e}"))?;
        Ok(DurationStr {
            ms: d.as_millis().min(u128::from(u64::MAX)) as u64,
            text,
        })
    }
}

impl From<DurationStr> for String {
    fn from(d: DurationStr) -> String {
        d.text
    }
}

impl fmt::Display for DurationStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The `spec` of an `AnalysisTemplate` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisTemplateSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ArgSpec>,
    pub metrics: Vec<MetricSpec>,
    /// Metrics measured and shown but never failing the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<DryRun>,
}

/// A template argument, with an optional default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArgSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `dryRun: [{metricName: error-rate}]`; `"*"` names every metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DryRun {
    pub metric_name: String,
}

/// One metric of a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationStr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<DurationStr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_error_limit: Option<u32>,
    pub provider: Provider,
}

impl MetricSpec {
    /// `count`, or 1 for a metric without `interval`, or `None`: until terminated.
    pub fn effective_count(&self) -> Option<u32> {
        match (self.count, &self.interval) {
            (Some(c), _) => Some(c),
            (None, None) => Some(1),
            (None, Some(_)) => None,
        }
    }

    /// Checks both conditions parse.
    pub fn validate(&self) -> Result<(), AnalysisError> {
        for (field, cond) in [
            ("successCondition", &self.success_condition),
            ("failureCondition", &self.failure_condition),
        ] {
            if let Some(src) = cond {
                Condition::parse(src).map_err(|error| AnalysisError::Condition {
                    metric: self.name.clone(),
                    field,
                    error,
                })?;
            }
        }
        Ok(())
    }
}

/// Where a measurement comes from. The shell implements these; the core only carries them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Provider {
    /// The proxy's own per-revision metrics.
    Builtin(BuiltinProvider),
    Prometheus(PrometheusProvider),
    Web(WebProvider),
    Command(CommandProvider),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuiltinProvider {
    /// `errorRate`, `requestRate`, `latencyP50`, `latencyP99`, …: the shell defines the list.
    pub metric: String,
    /// `candidate` (default) or `stable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<DurationStr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusProvider {
    pub address: String,
    pub query: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebProvider {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationStr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandProvider {
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationStr>,
}

/// `{templateName: success-rate}` in an `analysis` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateRef {
    pub template_name: String,
}

/// An argument passed by a step to its templates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Arg {
    pub name: String,
    pub value: String,
}

/// Why a template cannot be run.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AnalysisError {
    #[error("argument `{0}` has no value: pass it in the step's `args` or give it a default")]
    MissingArg(String),
    #[error("`{{{{args.{0}}}}}` is used but the template declares no argument `{0}`")]
    UndeclaredArg(String),
    #[error("metric `{metric}`: {field}: {error}")]
    Condition {
        metric: String,
        field: &'static str,
        error: ParseError,
    },
    #[error("no metric named `{0}` in this run")]
    UnknownMetric(String),
    #[error("template does not round-trip after substitution: {0}")]
    Substitution(String),
}

impl AnalysisTemplateSpec {
    /// The metrics with `{{args.NAME}}` replaced in every string (conditions, provider fields),
    /// each marked dry-run or not, ready for [`AnalysisRun::start`].
    pub fn resolve(&self, args: &[Arg]) -> Result<Vec<ResolvedMetric>, AnalysisError> {
        let mut values = BTreeMap::new();
        for spec in &self.args {
            let given = args.iter().rev().find(|a| a.name == spec.name);
            let value = given
                .map(|a| a.value.clone())
                .or_else(|| spec.value.clone())
                .ok_or_else(|| AnalysisError::MissingArg(spec.name.clone()))?;
            values.insert(spec.name.clone(), value);
        }
        let mut out = Vec::new();
        for metric in &self.metrics {
            let mut json = serde_json::to_value(metric)
                .map_err(|e| AnalysisError::Substitution(e.to_string()))?;
            substitute(&mut json, &values)?;
            let metric: MetricSpec = serde_json::from_value(json)
                .map_err(|e| AnalysisError::Substitution(e.to_string()))?;
            metric.validate()?;
            let dry_run = self
                .dry_run
                .iter()
                .any(|d| d.metric_name == "*" || d.metric_name == metric.name);
            out.push(ResolvedMetric { metric, dry_run });
        }
        Ok(out)
    }
}

fn substitute(v: &mut Value, args: &BTreeMap<String, String>) -> Result<(), AnalysisError> {
    match v {
        Value::String(s) => *s = substitute_str(s, args)?,
        Value::Array(items) => {
            for item in items {
                substitute(item, args)?;
            }
        }
        Value::Object(map) => {
            for item in map.values_mut() {
                substitute(item, args)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Replaces each `{{args.NAME}}` (spaces inside the braces allowed) in `s`.
pub fn substitute_str(s: &str, args: &BTreeMap<String, String>) -> Result<String, AnalysisError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        let inner = rest[start + 2..start + len].trim();
        out.push_str(&rest[..start]);
        match inner.strip_prefix("args.") {
            Some(name) => out.push_str(
                args.get(name)
                    .ok_or_else(|| AnalysisError::UndeclaredArg(name.to_string()))?,
            ),
            None => out.push_str(&rest[start..start + len + 2]),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A metric ready to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedMetric {
    pub metric: MetricSpec,
    #[serde(default)]
    pub dry_run: bool,
}

/// The phase of one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeasurementPhase {
    Successful,
    Failed,
    Inconclusive,
    Error,
}

/// The phase of a metric or a run; the terminal ones are ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RunPhase {
    Running,
    Successful,
    Inconclusive,
    Error,
    Failed,
}

impl RunPhase {
    pub fn is_complete(self) -> bool {
        self != RunPhase::Running
    }
}

/// One measurement, stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    pub phase: MeasurementPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub at_ms: u64,
}

/// The state of one metric within a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricRun {
    pub spec: ResolvedMetric,
    pub phase: RunPhase,
    /// Why the phase is what it is, e.g. `failed (1) > failureLimit (0)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub measurements: Vec<Measurement>,
    /// Measurements that were not errors.
    pub count: u32,
    pub successful: u32,
    pub failed: u32,
    pub inconclusive: u32,
    pub errors: u32,
    pub consecutive_errors: u32,
    /// When the next measurement is due; `None` once complete.
    pub next_due_ms: Option<u64>,
}

/// One analysis run: a step's, a background's, or a blue/green pre/post-promotion's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRun {
    pub started_at_ms: u64,
    pub metrics: Vec<MetricRun>,
    pub terminated: bool,
}

/// The phase of a measurement from its value, as Argo's `EvaluateResult` decides it.
pub fn evaluate(metric: &MetricSpec, value: &Value) -> (MeasurementPhase, Option<String>) {
    let eval = |src: &Option<String>| -> Result<Option<bool>, String> {
        match src {
            None => Ok(None),
            Some(s) => Condition::parse(s)
                .map_err(|e| e.to_string())?
                .eval(value)
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    };
    let (success, failure) = match (
        eval(&metric.success_condition),
        eval(&metric.failure_condition),
    ) {
        (Ok(s), Ok(f)) => (s, f),
        (Err(e), _) | (_, Err(e)) => return (MeasurementPhase::Error, Some(e)),
    };
    let phase = match (success, failure) {
        (None, None) => MeasurementPhase::Successful,
        (Some(s), None) => {
            if s {
                MeasurementPhase::Successful
            } else {
                MeasurementPhase::Failed
            }
        }
        (None, Some(f)) => {
            if f {
                MeasurementPhase::Failed
            } else {
                MeasurementPhase::Successful
            }
        }
        (Some(s), Some(f)) => {
            if f {
                MeasurementPhase::Failed
            } else if s {
                MeasurementPhase::Successful
            } else {
                MeasurementPhase::Inconclusive
            }
        }
    };
    (phase, None)
}

impl MetricRun {
    fn assess(&mut self) {
        let m = &self.spec.metric;
        let mut verdict = None;
        let failure_limit = m.failure_limit.unwrap_or(0);
        if self.failed > failure_limit {
            verdict = Some((
                RunPhase::Failed,
                format!("failed ({}) > failureLimit ({failure_limit})", self.failed),
            ));
        }
        let inconclusive_limit = m.inconclusive_limit.unwrap_or(0);
        if self.inconclusive > inconclusive_limit {
            verdict = Some((
                RunPhase::Inconclusive,
                format!(
                    "inconclusive ({}) > inconclusiveLimit ({inconclusive_limit})",
                    self.inconclusive
                ),
            ));
        }
        let error_limit = m
            .consecutive_error_limit
            .unwrap_or(DEFAULT_CONSECUTIVE_ERROR_LIMIT);
        if self.consecutive_errors > error_limit {
            verdict = Some((
                RunPhase::Error,
                format!(
                    "consecutiveErrors ({}) > consecutiveErrorLimit ({error_limit})",
                    self.consecutive_errors
                ),
            ));
        }
        if verdict.is_none() {
            if let Some(count) = m.effective_count() {
                if self.count >= count {
                    verdict = Some((
                        RunPhase::Successful,
                        format!("count ({}) reached", self.count),
                    ));
                }
            }
        }
        if let Some((phase, message)) = verdict {
            self.phase = phase;
            self.message = Some(message);
            self.next_due_ms = None;
        }
    }
}

impl AnalysisRun {
    /// Starts a run at `now_ms`; each metric's first measurement is due after its
    /// `initialDelay`.
    pub fn start(metrics: Vec<ResolvedMetric>, now_ms: u64) -> Self {
        let metrics = metrics
            .into_iter()
            .map(|spec| {
                let delay = spec.metric.initial_delay.as_ref().map_or(0, |d| d.as_ms());
                MetricRun {
                    spec,
                    phase: RunPhase::Running,
                    message: None,
                    measurements: Vec::new(),
                    count: 0,
                    successful: 0,
                    failed: 0,
                    inconclusive: 0,
                    errors: 0,
                    consecutive_errors: 0,
                    next_due_ms: Some(now_ms.saturating_add(delay)),
                }
            })
            .collect();
        AnalysisRun {
            started_at_ms: now_ms,
            metrics,
            terminated: false,
        }
    }

    /// Names of the metrics whose measurement is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> Vec<&str> {
        self.metrics
            .iter()
            .filter(|m| m.next_due_ms.is_some_and(|t| t <= now_ms))
            .map(|m| m.spec.metric.name.as_str())
            .collect()
    }

    /// The earliest time a measurement is due; `None` when nothing more will be measured.
    pub fn next_due_ms(&self) -> Option<u64> {
        if self.phase().is_complete() {
            return None;
        }
        self.metrics.iter().filter_map(|m| m.next_due_ms).min()
    }

    /// Records a measurement of `metric` taken at `now_ms`: its value, or the provider's error.
    pub fn record(
        &mut self,
        metric: &str,
        now_ms: u64,
        outcome: Result<Value, String>,
    ) -> Result<MeasurementPhase, AnalysisError> {
        let m = self
            .metrics
            .iter_mut()
            .find(|m| m.spec.metric.name == metric)
            .ok_or_else(|| AnalysisError::UnknownMetric(metric.to_string()))?;
        let (phase, value, message) = match outcome {
            Ok(value) => {
                let (phase, message) = evaluate(&m.spec.metric, &value);
                (phase, Some(value), message)
            }
            Err(message) => (MeasurementPhase::Error, None, Some(message)),
        };
        m.measurements.push(Measurement {
            phase,
            value,
            message,
            at_ms: now_ms,
        });
        if m.measurements.len() > MEASUREMENTS_KEPT {
            let extra = m.measurements.len() - MEASUREMENTS_KEPT;
            m.measurements.drain(..extra);
        }
        if m.phase.is_complete() {
            return Ok(phase);
        }
        match phase {
            MeasurementPhase::Error => {
                m.errors += 1;
                m.consecutive_errors += 1;
            }
            other => {
                m.count += 1;
                m.consecutive_errors = 0;
                match other {
                    MeasurementPhase::Successful => m.successful += 1,
                    MeasurementPhase::Failed => m.failed += 1,
                    _ => m.inconclusive += 1,
                }
            }
        }
        let wait = if phase == MeasurementPhase::Error {
            Some(ERROR_RETRY_MS)
        } else {
            m.spec.metric.interval.as_ref().map(|i| i.as_ms())
        };
        m.next_due_ms = wait.map(|w| now_ms.saturating_add(w));
        m.assess();
        if m.phase == RunPhase::Running && m.next_due_ms.is_none() {
            // Without interval the metric measures `count` times back to back.
            m.next_due_ms = Some(now_ms);
        }
        Ok(phase)
    }

    /// Stops the run (the rollout moved on or ended): running metrics are assessed as if
    /// complete, so one that has not tripped is Successful.
    pub fn terminate(&mut self) {
        self.terminated = true;
        for m in &mut self.metrics {
            if !m.phase.is_complete() {
                m.phase = RunPhase::Successful;
                m.message = Some("run terminated".into());
                m.next_due_ms = None;
            }
        }
    }

    /// The run's phase: the worst of its non-dry-run metrics once all are complete, or at
    /// once when one is Failed or Error.
    pub fn phase(&self) -> RunPhase {
        let counted = self.metrics.iter().filter(|m| !m.spec.dry_run);
        let worst = counted.clone().map(|m| m.phase).max();
        match worst {
            None => {
                if self.metrics.iter().all(|m| m.phase.is_complete()) {
                    RunPhase::Successful
                } else {
                    RunPhase::Running
                }
            }
            Some(w @ (RunPhase::Failed | RunPhase::Error)) => w,
            Some(_) if counted.clone().any(|m| m.phase == RunPhase::Running) => RunPhase::Running,
            Some(w) => w,
        }
    }

    /// The message of the metric that decided the phase, for the status and events.
    pub fn message(&self) -> Option<String> {
        let phase = self.phase();
        self.metrics
            .iter()
            .filter(|m| !m.spec.dry_run && m.phase == phase)
            .find_map(|m| {
                m.message
                    .as_ref()
                    .map(|msg| format!("metric `{}`: {msg}", m.spec.metric.name))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(yaml_like_json: Value) -> AnalysisTemplateSpec {
        serde_json::from_value(yaml_like_json).unwrap()
    }

    fn run_of(metric: Value) -> AnalysisRun {
        let t = template(json!({"metrics": [metric]}));
        AnalysisRun::start(t.resolve(&[]).unwrap(), 0)
    }

    fn metric(extra: Value) -> Value {
        let mut m = json!({
            "name": "error-rate",
            "successCondition": "result < 0.01",
            "provider": {"builtin": {"metric": "errorRate"}}
        });
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        m
    }

    /// Feeds values (or `Err`) at each due time; returns the phase after each.
    fn feed(run: &mut AnalysisRun, outcomes: &[Result<f64, &str>]) -> Vec<RunPhase> {
        outcomes
            .iter()
            .map(|o| {
                let now = run.next_due_ms().expect("a measurement is due");
                let name = run.due(now)[0].to_string();
                run.record(&name, now, o.map(|v| json!(v)).map_err(|e| e.to_string()))
                    .unwrap();
                run.phase()
            })
            .collect()
    }

    use RunPhase::*;

    #[test]
    fn failure_limit_trips_when_failures_exceed_it() {
        // failureLimit 2: the third failed measurement fails the metric.
        let mut run = run_of(metric(
            json!({"interval": "10s", "count": 5, "failureLimit": 2}),
        ));
        let phases = feed(&mut run, &[Ok(0.5), Ok(0.5), Ok(0.001), Ok(0.5)]);
        assert_eq!(phases, [Running, Running, Running, Failed]);
        assert_eq!(
            run.message().unwrap(),
            "metric `error-rate`: failed (3) > failureLimit (2)"
        );
        assert_eq!(run.next_due_ms(), None);
    }

    #[test]
    fn default_failure_limit_fails_on_the_first_failure() {
        let mut run = run_of(metric(json!({"interval": "10s", "count": 3})));
        assert_eq!(feed(&mut run, &[Ok(0.5)]), [Failed]);
    }

    #[test]
    fn a_long_run_keeps_its_latest_measurements_and_counts_them_all() {
        let mut run = run_of(metric(json!({"interval": "1s"})));
        let values: Vec<Result<f64, &str>> = (0..25).map(|i| Ok(f64::from(i) / 1e6)).collect();
        feed(&mut run, &values);
        let m = &run.metrics[0];
        assert_eq!((m.count, m.successful), (25, 25));
        assert_eq!(m.measurements.len(), MEASUREMENTS_KEPT);
        assert_eq!(
            m.measurements.last().and_then(|x| x.value.clone()),
            Some(json!(24e-6)),
            "the newest is kept"
        );
    }

    #[test]
    fn count_reached_without_a_trip_is_successful_and_measurements_follow_the_interval() {
        let mut run = run_of(metric(
            json!({"interval": "10s", "count": 3, "initialDelay": "5s"}),
        ));
        assert_eq!(run.next_due_ms(), Some(5_000));
        assert!(run.due(4_999).is_empty());
        let phases = feed(&mut run, &[Ok(0.0), Ok(0.0), Ok(0.0)]);
        assert_eq!(phases, [Running, Running, Successful]);
        let times: Vec<u64> = run.metrics[0]
            .measurements
            .iter()
            .map(|m| m.at_ms)
            .collect();
        assert_eq!(times, [5_000, 15_000, 25_000]);
    }

    #[test]
    fn consecutive_errors_trip_on_the_fifth_by_default_and_reset_on_a_good_measurement() {
        let mut run = run_of(metric(
            json!({"interval": "10s", "count": 10, "failureLimit": 9}),
        ));
        let e = Err("prometheus unreachable");
        let phases = feed(&mut run, &[e, e, e, e, Ok(0.0), e, e, e, e]);
        assert!(phases.iter().all(|p| *p == Running), "{phases:?}");
        assert_eq!(run.metrics[0].count, 1, "errors do not count towards count");
        assert_eq!(feed(&mut run, &[e]), [Error]);
        assert_eq!(
            run.message().unwrap(),
            "metric `error-rate`: consecutiveErrors (5) > consecutiveErrorLimit (4)"
        );
    }

    #[test]
    fn an_error_is_retried_after_ten_seconds() {
        let mut run = run_of(metric(json!({"interval": "1m", "count": 2})));
        run.record("error-rate", 0, Err("timeout".into())).unwrap();
        assert_eq!(run.next_due_ms(), Some(ERROR_RETRY_MS));
    }

    #[test]
    fn inconclusive_needs_both_conditions_and_trips_past_its_limit() {
        let m = json!({"interval": "10s", "count": 4, "failureCondition": "result > 0.05",
                       "inconclusiveLimit": 1});
        let mut run = run_of(metric(m));
        // 0.02 is neither < 0.01 nor > 0.05.
        assert_eq!(
            feed(&mut run, &[Ok(0.02), Ok(0.02)]),
            [Running, Inconclusive]
        );
    }

    #[test]
    fn measurement_phases_follow_argos_evaluate_result() {
        let spec = |s: Option<&str>, f: Option<&str>| MetricSpec {
            success_condition: s.map(str::to_string),
            failure_condition: f.map(str::to_string),
            ..serde_json::from_value(metric(json!({}))).unwrap()
        };
        use MeasurementPhase as M;
        let v = json!(0.5);
        assert_eq!(evaluate(&spec(None, None), &v).0, M::Successful);
        assert_eq!(
            evaluate(&spec(Some("result < 1"), None), &v).0,
            M::Successful
        );
        assert_eq!(evaluate(&spec(Some("result > 1"), None), &v).0, M::Failed);
        assert_eq!(
            evaluate(&spec(None, Some("result > 1")), &v).0,
            M::Successful
        );
        assert_eq!(evaluate(&spec(None, Some("result < 1")), &v).0, M::Failed);
        let both_true = spec(Some("result < 1"), Some("result < 1"));
        assert_eq!(evaluate(&both_true, &v).0, M::Failed, "failure wins");
        let (phase, msg) = evaluate(&spec(Some("result < 1"), None), &json!(null));
        assert_eq!(phase, M::Error);
        assert!(msg.unwrap().contains("needs a number"));
    }

    #[test]
    fn a_metric_without_interval_measures_once() {
        let mut run = run_of(metric(json!({})));
        assert_eq!(feed(&mut run, &[Ok(0.0)]), [Successful]);
    }

    #[test]
    fn an_open_ended_metric_runs_until_terminated() {
        let mut run = run_of(metric(json!({"interval": "10s"})));
        let phases = feed(&mut run, &[Ok(0.0); 20]);
        assert!(phases.iter().all(|p| *p == Running));
        run.terminate();
        assert_eq!(run.phase(), Successful);
        assert_eq!(run.next_due_ms(), None);
    }

    #[test]
    fn dry_run_metrics_never_fail_the_run() {
        let t = template(json!({
            "metrics": [metric(json!({})), {
                "name": "latency", "successCondition": "result < 100",
                "provider": {"builtin": {"metric": "latencyP99"}}
            }],
            "dryRun": [{"metricName": "latency"}]
        }));
        let mut run = AnalysisRun::start(t.resolve(&[]).unwrap(), 0);
        run.record("latency", 0, Ok(json!(500))).unwrap();
        assert_eq!(run.metrics[1].phase, Failed);
        assert_eq!(run.phase(), Running);
        run.record("error-rate", 0, Ok(json!(0.0))).unwrap();
        assert_eq!(run.phase(), Successful);
    }

    #[test]
    fn the_worst_metric_decides_and_a_failure_decides_at_once() {
        let t = template(json!({"metrics": [
            metric(json!({"interval": "10s", "count": 3})),
            {"name": "up", "provider": {"builtin": {"metric": "requestRate"}},
             "interval": "10s", "count": 3}
        ]}));
        let mut run = AnalysisRun::start(t.resolve(&[]).unwrap(), 0);
        run.record("up", 0, Ok(json!(3))).unwrap();
        run.record("error-rate", 0, Ok(json!(0.9))).unwrap();
        assert_eq!(run.phase(), Failed);
        assert_eq!(run.next_due_ms(), None);
    }

    #[test]
    fn args_are_substituted_everywhere_and_missing_ones_are_named() {
        let t = template(json!({
            "args": [{"name": "service"}, {"name": "threshold", "value": "0.01"}],
            "metrics": [{
                "name": "errors",
                "successCondition": "result < {{ args.threshold }}",
                "provider": {"prometheus": {"address": "http://127.0.0.1:9090",
                    "query": "sum(rate(errors{service=\"{{args.service}}\"}[1m]))"}}
            }]
        }));
        let arg = |n: &str, v: &str| Arg {
            name: n.into(),
            value: v.into(),
        };
        let resolved = t.resolve(&[arg("service", "checkout")]).unwrap();
        let m = &resolved[0].metric;
        assert_eq!(m.success_condition.as_deref(), Some("result < 0.01"));
        let Provider::Prometheus(p) = &m.provider else {
            panic!("{:?}", m.provider)
        };
        assert_eq!(p.query, "sum(rate(errors{service=\"checkout\"}[1m]))");
        assert_eq!(
            t.resolve(&[]).unwrap_err(),
            AnalysisError::MissingArg("service".into())
        );
        let overridden = t
            .resolve(&[arg("service", "x"), arg("threshold", "0.5")])
            .unwrap();
        assert_eq!(
            overridden[0].metric.success_condition.as_deref(),
            Some("result < 0.5")
        );
    }

    #[test]
    fn templates_reject_unknown_fields_bad_durations_and_bad_conditions() {
        let bad_field = json!({"metrics": [metric(json!({"failureLimt": 1}))]});
        assert!(serde_json::from_value::<AnalysisTemplateSpec>(bad_field).is_err());
        let bad_duration = json!({"metrics": [metric(json!({"interval": "ten seconds"}))]});
        let err = serde_json::from_value::<AnalysisTemplateSpec>(bad_duration).unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
        let t = template(json!({"metrics": [metric(json!({"successCondition": "result <"}))]}));
        let err = t.resolve(&[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("metric `error-rate`: successCondition: column 9"),
            "{err}"
        );
    }

    #[test]
    fn a_run_round_trips_through_json() {
        let mut run = run_of(metric(json!({"interval": "10s", "count": 3})));
        feed(&mut run, &[Ok(0.0)]);
        let back: AnalysisRun =
            serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
        assert_eq!(back, run);
    }
}
