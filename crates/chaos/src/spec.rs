//! `kind: ChaosExperiment`: the types of its `spec`, and the rules they cannot say themselves.
//!
//! Read strictly (unknown fields are errors, camelCase), so a misspelt key or a duration that
//! does not parse is already a diagnostic of the manifest parser. [`ChaosExperimentSpec::validate`]
//! then returns every remaining problem at once, each with its field path
//! (`spec.method[2].fault.cpu.cores: must be at least 1`), for the spec crate to place at a
//! file and line.
//!
//! ```yaml
//! spec:
//!   target: {application: checkout, revision: candidate, mode: one}
//!   hypothesis:
//!     probes:
//!     - {name: healthy, http: {url: "http://127.0.0.1:8080/healthz"}, tolerance: {status: 200}}
//!     - {name: errors, metric: {builtin: errorRate, revision: candidate}, tolerance: {range: [0, 0.01]}}
//!     continuous: {interval: 2s, failureThreshold: 3}
//!   method:
//!   - {fault: {kill: {signal: KILL}}}
//!   - {fault: {http: {delay: {latency: 200ms, jitter: 50ms}, percent: 10}}, duration: 30s, background: true}
//!   - {pause: 10s}
//!   rollbacks: []
//!   duration: 5m
//! ```
//!
//! # Faults and their durations
//!
//! Process faults (`kill`, `pause`, `cpu`, `memory`, `diskFill`) act on the instances the
//! target selects; traffic faults (`http`, `dependency`) act on the selected revisions as a
//! whole, through the proxy, for `percent` of their requests. A fault with a `duration` is
//! removed when it has lasted that long; a fault without one stays until the experiment ends
//! (through the hypothesis after the method, so that hypothesis judges the system under the
//! fault, as Chaos Toolkit's does), and is removed before the rollbacks run. `kill` is
//! instantaneous and takes no duration.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use gauntlet_rollout::analysis::DurationStr;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cron::Cron;
use crate::tolerance::{ProbeKind, Tolerance, ToleranceProblem};

/// The longest an experiment runs when `duration` is not given.
pub const DEFAULT_DURATION: &str = "5m";
/// How long a probe may take when its `timeout` is not given.
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 10_000;
/// How long an action or rollback command may take when its `timeout` is not given.
pub const DEFAULT_ACTION_TIMEOUT_MS: u64 = 60_000;
/// Consecutive failures of one probe during the method that abort it, by default (as Chaos
/// Mesh's status checks).
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// The most memory a `memory` fault may hold: enough to push an application into swapping
/// or its limits, not enough to take a host down by a typo.
pub const MAX_MEMORY_BYTES: u64 = 16 << 30;
/// The most a `diskFill` fault may write. The runtime also keeps free space in reserve.
pub const MAX_DISK_FILL_BYTES: u64 = 10 << 30;
/// The most CPU workers a `cpu` fault may start.
pub const MAX_CPU_CORES: u32 = 1024;

fn default_duration() -> DurationStr {
    DurationStr::try_from(DEFAULT_DURATION.to_string()).unwrap_or_else(|_| unreachable!())
}

fn default_failure_threshold() -> u32 {
    DEFAULT_FAILURE_THRESHOLD
}

fn default_percent() -> f64 {
    100.0
}

fn default_method() -> String {
    "GET".into()
}

/// The `spec` of a `ChaosExperiment` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChaosExperimentSpec {
    pub target: Target,
    /// The steady state: checked before the method (the experiment does not start unless it
    /// holds), during it if `continuous` is set, and after it.
    #[serde(default)]
    pub hypothesis: Hypothesis,
    /// Faults, actions and pauses, in order; `background` ones run alongside the next.
    pub method: Vec<Activity>,
    /// Commands run when the experiment ends, however it ends, after every fault is removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollbacks: Vec<Rollback>,
    /// The longest the experiment may run, hypotheses included; at this deadline it is
    /// aborted, and no fault's lease reaches past it.
    #[serde(default = "default_duration")]
    pub duration: DurationStr,
    /// A 5-field cron expression in UTC; runs never overlap (a fire during a run is skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default)]
    pub blast_radius: BlastRadius,
}

/// What the experiment acts on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    pub application: String,
    pub revision: TargetRevision,
    /// How many of the revision's instances, as Chaos Mesh's selector modes.
    pub mode: SelectorMode,
    /// `fixed`: a count; `fixed-percent`, `random-max-percent`: a percentage (0.1 steps).
    /// A number or, as Chaos Mesh writes it, a string (`"50"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<SelectorValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TargetRevision {
    Candidate,
    Stable,
    /// Every instance of the application, whatever its revision.
    All,
}

impl fmt::Display for TargetRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetRevision::Candidate => "candidate",
            TargetRevision::Stable => "stable",
            TargetRevision::All => "all",
        })
    }
}

/// Chaos Mesh's selector modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SelectorMode {
    One,
    All,
    Fixed,
    FixedPercent,
    RandomMaxPercent,
}

impl fmt::Display for SelectorMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SelectorMode::One => "one",
            SelectorMode::All => "all",
            SelectorMode::Fixed => "fixed",
            SelectorMode::FixedPercent => "fixed-percent",
            SelectorMode::RandomMaxPercent => "random-max-percent",
        })
    }
}

/// `value: 2` or `value: "2"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SelectorValue {
    Number(f64),
    Text(String),
}

impl SelectorValue {
    pub fn number(&self) -> Option<f64> {
        match self {
            SelectorValue::Number(n) => Some(*n),
            SelectorValue::Text(text) => text.trim().parse().ok(),
        }
    }
}

/// A target's mode with its value checked: what [`crate::select::select`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Selector {
    One,
    All,
    Fixed(u32),
    /// Percent, in 0.1 steps.
    FixedPercent(f64),
    RandomMaxPercent(f64),
}

impl Target {
    /// The selector, or why `mode` and `value` do not fit together.
    pub fn selector(&self) -> Result<Selector, Problem> {
        let number = match (&self.value, self.mode) {
            (Some(_), SelectorMode::One | SelectorMode::All) => {
                return Err(Problem::ValueNotUsed(self.mode))
            }
            (None, SelectorMode::One) => return Ok(Selector::One),
            (None, SelectorMode::All) => return Ok(Selector::All),
            (None, mode) => return Err(Problem::ValueNeeded(mode)),
            (Some(value), _) => value
                .number()
                .ok_or_else(|| Problem::NotANumber(value_text(value)))?,
        };
        match self.mode {
            SelectorMode::Fixed => {
                if number.fract() != 0.0 || number < 1.0 || number > f64::from(u32::MAX) {
                    return Err(Problem::Count(number.to_string()));
                }
                Ok(Selector::Fixed(number as u32))
            }
            SelectorMode::FixedPercent | SelectorMode::RandomMaxPercent => {
                if !(number > 0.0 && number <= 100.0) {
                    return Err(Problem::SelectorPercent(number.to_string()));
                }
                check_precision(number)?;
                Ok(if self.mode == SelectorMode::FixedPercent {
                    Selector::FixedPercent(number)
                } else {
                    Selector::RandomMaxPercent(number)
                })
            }
            SelectorMode::One | SelectorMode::All => unreachable!("handled above"),
        }
    }
}

fn value_text(value: &SelectorValue) -> String {
    match value {
        SelectorValue::Number(n) => n.to_string(),
        SelectorValue::Text(text) => text.clone(),
    }
}

/// How much of the application an experiment may take down at once.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlastRadius {
    /// Allow faults on every instance of the stable revision at once (off by default: that
    /// is an outage, not an experiment).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_all_stable: bool,
    /// At most this many instances under process faults at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// At most this percentage of the application's instances under process faults at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_percent: Option<f64>,
}

/// The steady-state hypothesis.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hypothesis {
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// Probe during the method too, and abort it early when a probe keeps failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous: Option<Continuous>,
}

/// Chaos Mesh's status checks: every `interval`, each probe runs; `failureThreshold`
/// consecutive failures of one probe abort the experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Continuous {
    pub interval: DurationStr,
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
}

/// One probe: exactly one of `http`, `metric`, `command`, and a tolerance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<MetricProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandProbe>,
    pub tolerance: Tolerance,
    /// No answer within this is a failure (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationStr>,
}

impl Probe {
    /// `None` when the probe does not say exactly one of `http`, `metric`, `command`.
    pub fn kind(&self) -> Option<ProbeKind> {
        match (&self.http, &self.metric, &self.command) {
            (Some(_), None, None) => Some(ProbeKind::Http),
            (None, Some(_), None) => Some(ProbeKind::Metric),
            (None, None, Some(_)) => Some(ProbeKind::Command),
            _ => None,
        }
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout
            .as_ref()
            .map_or(DEFAULT_PROBE_TIMEOUT_MS, DurationStr::as_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpProbe {
    /// `${TARGET}` in it becomes `127.0.0.1:PORT` of one running instance of the target's
    /// revision (ready ones first): a probe of the target itself, past the proxy, e.g.
    /// `http://${TARGET}/` to ask the candidate alone.
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// `{builtin: errorRate, revision: candidate}` (the proxy's own metrics) or
/// `{prometheus: {address, query}}`, over `window`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricProbe {
    /// `errorRate`, `requestRate`, `latencyP50`, `latencyP99`, …: the controller defines the
    /// list, as for analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusQuery>,
    /// Builtin metrics: whose (default: the target's revision, or stable for `all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<TargetRevision>,
    /// The range the value is computed over (builtin: the controller's live window, 10s;
    /// Prometheus: what `{{window}}` in the query becomes, in whole seconds, default 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<DurationStr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusQuery {
    pub address: String,
    pub query: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandProbe {
    pub command: Vec<String>,
}

/// One step of the method: exactly one of `fault`, `action`, `pause`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Activity {
    /// Shown in the journal; defaults to a description of the activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<CommandAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<DurationStr>,
    /// Faults only: how long the fault stays (without it: until the experiment ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<DurationStr>,
    /// Start it and go on with the next activity at once; the method still waits for it
    /// before the hypothesis after.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub background: bool,
}

/// An [`Activity`] seen through the one key it sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActivityKind<'a> {
    Fault(&'a Fault),
    Action(&'a CommandAction),
    Pause(&'a DurationStr),
}

impl Activity {
    /// `None` when not exactly one of `fault`, `action`, `pause` is set.
    pub fn kind(&self) -> Option<ActivityKind<'_>> {
        match (&self.fault, &self.action, &self.pause) {
            (Some(f), None, None) => Some(ActivityKind::Fault(f)),
            (None, Some(a), None) => Some(ActivityKind::Action(a)),
            (None, None, Some(p)) => Some(ActivityKind::Pause(p)),
            _ => None,
        }
    }

    /// The name given, or a description (`fault kill SIGKILL`, `pause 10s`).
    pub fn title(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match self.kind() {
            Some(ActivityKind::Fault(f)) => format!("fault {f}"),
            Some(ActivityKind::Action(a)) => format!("action {}", a.command.join(" ")),
            Some(ActivityKind::Pause(d)) => format!("pause {d}"),
            None => "invalid activity".into(),
        }
    }

    /// How long the activity lasts at least, for the method's time budget: a pause's or a
    /// timed fault's duration; 0 for the rest.
    fn min_ms(&self) -> u64 {
        match self.kind() {
            Some(ActivityKind::Pause(d)) => d.as_ms(),
            Some(ActivityKind::Fault(_)) => self.duration.as_ref().map_or(0, DurationStr::as_ms),
            _ => 0,
        }
    }
}

/// A command run by the controller (no shell), in the controller's working directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandAction {
    pub command: Vec<String>,
    /// Default 60s; the command is killed after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationStr>,
}

impl CommandAction {
    pub fn timeout_ms(&self) -> u64 {
        self.timeout
            .as_ref()
            .map_or(DEFAULT_ACTION_TIMEOUT_MS, DurationStr::as_ms)
    }
}

/// A rollback: a command run when the experiment ends, whatever the outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollback {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: CommandAction,
}

/// What a fault does. Each carries a lease when injected (see the engine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Fault {
    /// Send a signal to the instance's process group (the runtime restarts it as usual).
    Kill(KillFault),
    /// SIGSTOP the instance, SIGCONT it when the fault ends.
    Pause(PauseFault),
    Cpu(CpuFault),
    Memory(MemoryFault),
    /// Write a file into the instance's working directory, deleted when the fault ends.
    DiskFill(DiskFillFault),
    /// Through the proxy, for `percent` of the revision's requests.
    Http(HttpFault),
    /// Calls from the target to another application's service listener.
    Dependency(DependencyFault),
}

impl Fault {
    /// A kill happens and is over; other faults stay until removed.
    pub fn is_instant(&self) -> bool {
        matches!(self, Fault::Kill(_))
    }

    /// Acts on revisions through the proxy rather than on instances.
    pub fn is_traffic(&self) -> bool {
        matches!(self, Fault::Http(_) | Fault::Dependency(_))
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(k) => write!(f, "kill {}", k.signal),
            Fault::Pause(_) => f.write_str("pause (SIGSTOP)"),
            Fault::Cpu(c) => write!(f, "cpu {} core(s) at {}%", c.cores, c.load),
            Fault::Memory(m) => write!(f, "memory {}", m.size),
            Fault::DiskFill(d) => write!(f, "diskFill {}", d.size),
            Fault::Http(h) => write!(f, "http {} for {}% of requests", h.effect(), h.percent),
            Fault::Dependency(d) => write!(
                f,
                "dependency {} {} for {}% of calls",
                d.application,
                d.effect(),
                d.percent
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Signal {
    #[serde(alias = "SIGKILL")]
    Kill,
    #[serde(alias = "SIGTERM")]
    Term,
    #[serde(alias = "SIGINT")]
    Int,
    #[serde(alias = "SIGHUP")]
    Hup,
    #[serde(alias = "SIGQUIT")]
    Quit,
    #[serde(alias = "SIGUSR1")]
    Usr1,
    #[serde(alias = "SIGUSR2")]
    Usr2,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Kill => "SIGKILL",
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
            Signal::Hup => "SIGHUP",
            Signal::Quit => "SIGQUIT",
            Signal::Usr1 => "SIGUSR1",
            Signal::Usr2 => "SIGUSR2",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KillFault {
    #[serde(default = "default_signal")]
    pub signal: Signal,
}

fn default_signal() -> Signal {
    Signal::Kill
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseFault {}

/// `cores` busy workers, each at `load` percent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpuFault {
    pub cores: u32,
    #[serde(default = "default_load")]
    pub load: u32,
}

fn default_load() -> u32 {
    100
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryFault {
    pub size: ByteSize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskFillFault {
    pub size: ByteSize,
    /// A directory below the working directory to fill (default: the directory itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Exactly one of `delay`, `abort`, `reset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<HttpAbort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<Switch>,
    /// Of the revision's requests, 0 to 100 in 0.1 steps (default 100).
    #[serde(default = "default_percent")]
    pub percent: f64,
}

impl HttpFault {
    fn effect(&self) -> String {
        match (&self.delay, &self.abort, &self.reset) {
            (Some(d), _, _) => d.to_string(),
            (_, Some(a), _) => format!("abort {}", a.status),
            (_, _, Some(_)) => "reset".into(),
            _ => "(no effect)".into(),
        }
    }
}

/// `{latency: 200ms, jitter: 50ms}`: each affected request waits `latency` plus a uniform
/// `0..=jitter`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    pub latency: DurationStr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<DurationStr>,
}

impl fmt::Display for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "delay {}", self.latency)?;
        if let Some(jitter) = &self.jitter {
            write!(f, " ± {jitter}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpAbort {
    pub status: u16,
}

/// A key whose presence is the setting: `reset: {}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Switch {}

/// Calls from the target to `application`'s service listener are refused (connection
/// refused at once), black-holed (accepted, never answered) or delayed. Exactly one of
/// `refuse`, `blackhole`, `delay`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DependencyFault {
    pub application: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuse: Option<Switch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blackhole: Option<Switch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    /// Of the calls, 0 to 100 in 0.1 steps (default 100).
    #[serde(default = "default_percent")]
    pub percent: f64,
}

impl DependencyFault {
    fn effect(&self) -> String {
        match (&self.refuse, &self.blackhole, &self.delay) {
            (Some(_), _, _) => "refused".into(),
            (_, Some(_), _) => "black-holed".into(),
            (_, _, Some(d)) => d.to_string(),
            _ => "(no effect)".into(),
        }
    }
}

/// A size in bytes: a number, or `512Mi`, `1Gi`, `100MB`, `64k` (binary `Ki Mi Gi Ti`,
/// decimal `k`/`K`/`KB`, `M`/`MB`, `G`/`GB`, `T`/`TB`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "ByteSizeText", into = "u64")]
pub struct ByteSize(pub u64);

/// How a [`ByteSize`] may be written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ByteSizeText {
    Bytes(u64),
    Text(String),
}

impl TryFrom<ByteSizeText> for ByteSize {
    type Error = String;

    fn try_from(text: ByteSizeText) -> Result<ByteSize, String> {
        match text {
            ByteSizeText::Bytes(n) => Ok(ByteSize(n)),
            ByteSizeText::Text(s) => ByteSize::parse(&s),
        }
    }
}

impl From<ByteSize> for u64 {
    fn from(size: ByteSize) -> u64 {
        size.0
    }
}

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let bad = || format!("`{text}` is not a size like 512Mi, 1Gi or 100MB");
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "k" | "K" | "KB" => 1_000,
            "M" | "MB" => 1_000_000,
            "G" | "GB" => 1_000_000_000,
            "T" | "TB" => 1_000_000_000_000,
            "Ki" | "KiB" => 1 << 10,
            "Mi" | "MiB" => 1 << 20,
            "Gi" | "GiB" => 1 << 30,
            "Ti" | "TiB" => 1 << 40,
            _ => return Err(bad()),
        };
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            (1u64 << 40, "Ti"),
            (1 << 30, "Gi"),
            (1 << 20, "Mi"),
            (1 << 10, "Ki"),
        ];
        for (size, unit) in units {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// A percentage as the proxy counts it, in 0.01 % units (10,000 is everything).
pub fn percent_units(percent: f64) -> u32 {
    (percent * 100.0).round().clamp(0.0, 10_000.0) as u32
}

/// What is wrong with one field, and what to write instead.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Problem {
    #[error("must not be empty")]
    Empty,
    #[error("must be at least {0}")]
    AtLeast(u64),
    #[error("must be at most {0}")]
    AtMost(u64),
    #[error("must be from {lo} to {hi}, got {got}")]
    Between { lo: u64, hi: u64, got: u64 },
    #[error("give exactly one of {keys}; found {found}")]
    OneOf { keys: &'static str, found: usize },
    #[error("mode `{0}` selects without a value: remove `value`")]
    ValueNotUsed(SelectorMode),
    #[error("mode `{0}` needs a value (a count for fixed, a percentage for the percent modes)")]
    ValueNeeded(SelectorMode),
    #[error("`{0}` is not a number")]
    NotANumber(String),
    #[error("a fixed count must be a whole number of at least 1, got {0}")]
    Count(String),
    #[error("a percentage of instances must be above 0 and at most 100, got {0}")]
    SelectorPercent(String),
    #[error("must be from 0 to 100, got {0}")]
    Percent(String),
    #[error("{0} has more than one decimal: percentages go in steps of 0.1")]
    Precision(String),
    #[error("must be longer than 0")]
    ZeroDuration,
    #[error("{what} {got} is longer than the experiment's duration {max}")]
    LongerThanExperiment {
        what: &'static str,
        got: String,
        max: String,
    },
    #[error(
        "the method takes at least {needed} in the foreground, more than the experiment's \
         duration {max}: raise spec.duration"
    )]
    MethodTooLong { needed: String, max: String },
    #[error("a kill is instantaneous and takes no duration")]
    KillDuration,
    #[error("only faults take a duration (an action has `timeout`, a pause is its own duration)")]
    DurationNotFault,
    #[error("a pause in the background waits for nothing: remove `background`")]
    BackgroundPause,
    #[error("`{0}` is not an http:// or https:// URL")]
    Url(String),
    #[error("duplicate probe name `{0}`")]
    DuplicateProbe(String),
    #[error("{0}")]
    Tolerance(ToleranceProblem),
    #[error("{got} is over the limit of {max}")]
    TooLarge { got: ByteSize, max: ByteSize },
    #[error("must be a relative path inside the working directory, without `..`: `{0}`")]
    Path(String),
    #[error("status {0} is not an HTTP status; expected 100..=599")]
    Status(u16),
    #[error("an application cannot be its own dependency")]
    SelfDependency,
    #[error(
        "a traffic fault on every request of the stable revision is an outage: lower percent, \
         target the candidate, or set spec.blastRadius.allowAllStable"
    )]
    AllStableTraffic,
    #[error("{0}")]
    Schedule(String),
}

/// One problem, at its field path from the document (`spec.method[2].fault.cpu.cores`).
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{path}: {problem}")]
pub struct Invalid {
    pub path: String,
    pub problem: Problem,
}

fn check_precision(percent: f64) -> Result<(), Problem> {
    let tenths = percent * 10.0;
    if (tenths - tenths.round()).abs() > 1e-6 {
        return Err(Problem::Precision(percent.to_string()));
    }
    Ok(())
}

fn percent_problem(percent: f64) -> Option<Problem> {
    if !(0.0..=100.0).contains(&percent) {
        return Some(Problem::Percent(percent.to_string()));
    }
    check_precision(percent).err()
}

fn is_url(url: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        url.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty())
    })
}

impl ChaosExperimentSpec {
    /// Every problem, each at its field path; empty when the experiment can run.
    pub fn validate(&self) -> Vec<Invalid> {
        let mut problems = Vec::new();
        let mut report = |path: String, problem: Problem| problems.push(Invalid { path, problem });
        let max_ms = self.duration.as_ms();
        let longer = |what: &'static str, d: &DurationStr| {
            (d.as_ms() > max_ms).then(|| Problem::LongerThanExperiment {
                what,
                got: d.to_string(),
                max: self.duration.to_string(),
            })
        };

        if max_ms == 0 {
            report("spec.duration".into(), Problem::ZeroDuration);
        }
        if self.target.application.trim().is_empty() {
            report("spec.target.application".into(), Problem::Empty);
        }
        if let Err(problem) = self.target.selector() {
            let field = if matches!(problem, Problem::ValueNotUsed(_) | Problem::ValueNeeded(_)) {
                "spec.target"
            } else {
                "spec.target.value"
            };
            report(field.into(), problem);
        }

        let mut names = BTreeSet::new();
        for (i, probe) in self.hypothesis.probes.iter().enumerate() {
            let at = format!("spec.hypothesis.probes[{i}]");
            if probe.name.trim().is_empty() {
                report(format!("{at}.name"), Problem::Empty);
            } else if !names.insert(probe.name.as_str()) {
                report(
                    format!("{at}.name"),
                    Problem::DuplicateProbe(probe.name.clone()),
                );
            }
            if let Some(timeout) = &probe.timeout {
                if timeout.as_ms() == 0 {
                    report(format!("{at}.timeout"), Problem::ZeroDuration);
                }
                if let Some(p) = longer("timeout", timeout) {
                    report(format!("{at}.timeout"), p);
                }
            }
            let Some(kind) = probe.kind() else {
                let found = [
                    probe.http.is_some(),
                    probe.metric.is_some(),
                    probe.command.is_some(),
                ]
                .iter()
                .filter(|set| **set)
                .count();
                report(
                    at,
                    Problem::OneOf {
                        keys: "http, metric, command",
                        found,
                    },
                );
                continue;
            };
            if let Some(http) = &probe.http {
                if !is_url(&http.url) {
                    report(format!("{at}.http.url"), Problem::Url(http.url.clone()));
                }
            }
            if let Some(metric) = &probe.metric {
                let found = usize::from(metric.builtin.is_some())
                    + usize::from(metric.prometheus.is_some());
                if found != 1 {
                    report(
                        format!("{at}.metric"),
                        Problem::OneOf {
                            keys: "builtin, prometheus",
                            found,
                        },
                    );
                }
                if metric
                    .builtin
                    .as_deref()
                    .is_some_and(|b| b.trim().is_empty())
                {
                    report(format!("{at}.metric.builtin"), Problem::Empty);
                }
                if let Some(prometheus) = &metric.prometheus {
                    if !is_url(&prometheus.address) {
                        report(
                            format!("{at}.metric.prometheus.address"),
                            Problem::Url(prometheus.address.clone()),
                        );
                    }
                    if prometheus.query.trim().is_empty() {
                        report(format!("{at}.metric.prometheus.query"), Problem::Empty);
                    }
                }
                if metric.window.as_ref().is_some_and(|w| w.as_ms() == 0) {
                    report(format!("{at}.metric.window"), Problem::ZeroDuration);
                }
            }
            if probe.command.as_ref().is_some_and(|c| c.command.is_empty()) {
                report(format!("{at}.command.command"), Problem::Empty);
            }
            for (path, problem) in probe.tolerance.validate(kind) {
                report(format!("{at}.tolerance{path}"), Problem::Tolerance(problem));
            }
        }
        if let Some(continuous) = &self.hypothesis.continuous {
            let at = "spec.hypothesis.continuous";
            if continuous.interval.as_ms() == 0 {
                report(format!("{at}.interval"), Problem::ZeroDuration);
            }
            if continuous.failure_threshold == 0 {
                report(format!("{at}.failureThreshold"), Problem::AtLeast(1));
            }
        }

        if self.method.is_empty() {
            report("spec.method".into(), Problem::Empty);
        }
        let mut foreground_ms = 0u64;
        for (i, activity) in self.method.iter().enumerate() {
            let at = format!("spec.method[{i}]");
            foreground_ms = foreground_ms.saturating_add(if activity.background {
                0
            } else {
                activity.min_ms()
            });
            let Some(kind) = activity.kind() else {
                let found = [
                    activity.fault.is_some(),
                    activity.action.is_some(),
                    activity.pause.is_some(),
                ]
                .iter()
                .filter(|set| **set)
                .count();
                report(
                    at,
                    Problem::OneOf {
                        keys: "fault, action, pause",
                        found,
                    },
                );
                continue;
            };
            if let Some(duration) = &activity.duration {
                match kind {
                    ActivityKind::Fault(Fault::Kill(_)) => {
                        report(format!("{at}.duration"), Problem::KillDuration)
                    }
                    ActivityKind::Fault(_) => {
                        if duration.as_ms() == 0 {
                            report(format!("{at}.duration"), Problem::ZeroDuration);
                        }
                        if let Some(p) = longer("duration", duration) {
                            report(format!("{at}.duration"), p);
                        }
                    }
                    _ => report(format!("{at}.duration"), Problem::DurationNotFault),
                }
            }
            match kind {
                ActivityKind::Fault(fault) => {
                    for (path, problem) in self.fault_problems(fault) {
                        report(format!("{at}.fault{path}"), problem);
                    }
                }
                ActivityKind::Action(action) => {
                    for (path, problem) in action_problems(action, &longer) {
                        report(format!("{at}.action{path}"), problem);
                    }
                }
                ActivityKind::Pause(d) => {
                    if activity.background {
                        report(format!("{at}.background"), Problem::BackgroundPause);
                    }
                    if d.as_ms() == 0 {
                        report(format!("{at}.pause"), Problem::ZeroDuration);
                    }
                }
            }
        }
        if foreground_ms > max_ms && max_ms > 0 {
            report(
                "spec.method".into(),
                Problem::MethodTooLong {
                    needed: format!("{}ms", foreground_ms),
                    max: self.duration.to_string(),
                },
            );
        }
        for (i, rollback) in self.rollbacks.iter().enumerate() {
            for (path, problem) in action_problems(&rollback.action, &|_, _| None) {
                report(format!("spec.rollbacks[{i}].action{path}"), problem);
            }
        }
        if let Some(schedule) = &self.schedule {
            if let Err(error) = Cron::parse(schedule) {
                report("spec.schedule".into(), Problem::Schedule(error.to_string()));
            }
        }
        let radius = &self.blast_radius;
        if radius.max_instances == Some(0) {
            report("spec.blastRadius.maxInstances".into(), Problem::AtLeast(1));
        }
        if let Some(p) = radius.max_percent.and_then(percent_problem) {
            report("spec.blastRadius.maxPercent".into(), p);
        }
        problems
    }

    /// Problems of one fault, with paths below `fault`.
    fn fault_problems(&self, fault: &Fault) -> Vec<(String, Problem)> {
        let mut problems = Vec::new();
        let mut report = |path: &str, problem| problems.push((path.to_string(), problem));
        let on_stable = matches!(
            self.target.revision,
            TargetRevision::Stable | TargetRevision::All
        );
        let traffic = |path: &str, percent: f64, report: &mut dyn FnMut(&str, Problem)| {
            if let Some(p) = percent_problem(percent) {
                report(&format!("{path}.percent"), p);
            } else if on_stable && percent >= 100.0 && !self.blast_radius.allow_all_stable {
                report(&format!("{path}.percent"), Problem::AllStableTraffic);
            }
        };
        match fault {
            Fault::Kill(_) | Fault::Pause(_) => {}
            Fault::Cpu(cpu) => {
                if cpu.cores == 0 {
                    report(".cpu.cores", Problem::AtLeast(1));
                } else if cpu.cores > MAX_CPU_CORES {
                    report(".cpu.cores", Problem::AtMost(u64::from(MAX_CPU_CORES)));
                }
                if !(1..=100).contains(&cpu.load) {
                    report(
                        ".cpu.load",
                        Problem::Between {
                            lo: 1,
                            hi: 100,
                            got: u64::from(cpu.load),
                        },
                    );
                }
            }
            Fault::Memory(m) => {
                if let Some(p) = size_problem(m.size, MAX_MEMORY_BYTES) {
                    report(".memory.size", p);
                }
            }
            Fault::DiskFill(d) => {
                if let Some(p) = size_problem(d.size, MAX_DISK_FILL_BYTES) {
                    report(".diskFill.size", p);
                }
                if let Some(path) = &d.path {
                    let escapes = path.starts_with('/')
                        || path.contains('\\')
                        || path.split('/').any(|part| part == "..");
                    if path.trim().is_empty() || escapes {
                        report(".diskFill.path", Problem::Path(path.clone()));
                    }
                }
            }
            Fault::Http(h) => {
                let found = usize::from(h.delay.is_some())
                    + usize::from(h.abort.is_some())
                    + usize::from(h.reset.is_some());
                if found != 1 {
                    report(
                        ".http",
                        Problem::OneOf {
                            keys: "delay, abort, reset",
                            found,
                        },
                    );
                }
                if let Some(d) = &h.delay {
                    if d.latency.as_ms() == 0 && d.jitter.as_ref().is_none_or(|j| j.as_ms() == 0) {
                        report(".http.delay.latency", Problem::ZeroDuration);
                    }
                }
                if let Some(a) = &h.abort {
                    if !(100..=599).contains(&a.status) {
                        report(".http.abort.status", Problem::Status(a.status));
                    }
                }
                traffic(".http", h.percent, &mut report);
            }
            Fault::Dependency(d) => {
                if d.application.trim().is_empty() {
                    report(".dependency.application", Problem::Empty);
                } else if d.application == self.target.application {
                    report(".dependency.application", Problem::SelfDependency);
                }
                let found = usize::from(d.refuse.is_some())
                    + usize::from(d.blackhole.is_some())
                    + usize::from(d.delay.is_some());
                if found != 1 {
                    report(
                        ".dependency",
                        Problem::OneOf {
                            keys: "refuse, blackhole, delay",
                            found,
                        },
                    );
                }
                if let Some(p) = percent_problem(d.percent) {
                    report(".dependency.percent", p);
                }
            }
        }
        problems
    }
}

fn size_problem(size: ByteSize, max: u64) -> Option<Problem> {
    if size.0 == 0 {
        Some(Problem::AtLeast(1))
    } else if size.0 > max {
        Some(Problem::TooLarge {
            got: size,
            max: ByteSize(max),
        })
    } else {
        None
    }
}

fn action_problems(
    action: &CommandAction,
    longer: &dyn Fn(&'static str, &DurationStr) -> Option<Problem>,
) -> Vec<(String, Problem)> {
    let mut problems = Vec::new();
    if action.command.is_empty() || action.command[0].trim().is_empty() {
        problems.push((".command".to_string(), Problem::Empty));
    }
    if let Some(timeout) = &action.timeout {
        if timeout.as_ms() == 0 {
            problems.push((".timeout".to_string(), Problem::ZeroDuration));
        }
        if let Some(p) = longer("timeout", timeout) {
            problems.push((".timeout".to_string(), p));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The BRIEF's example, as JSON.
    fn example() -> Value {
        json!({
            "target": {"application": "checkout", "revision": "candidate", "mode": "one"},
            "hypothesis": {"probes": [
                {"name": "healthy", "http": {"url": "http://127.0.0.1:8080/healthz"}, "tolerance": {"status": 200}},
                {"name": "errors", "metric": {"builtin": "errorRate", "revision": "candidate"}, "tolerance": {"range": [0, 0.01]}}
            ]},
            "method": [{"fault": {"kill": {"signal": "KILL"}}}, {"pause": "10s"}],
            "rollbacks": []
        })
    }

    fn parse(value: Value) -> ChaosExperimentSpec {
        serde_json::from_value(value).unwrap()
    }

    fn problems(value: Value) -> Vec<String> {
        parse(value)
            .validate()
            .into_iter()
            .map(|i| i.to_string())
            .collect()
    }

    fn with_method(method: Value) -> Value {
        let mut spec = example();
        spec["method"] = method;
        spec
    }

    #[test]
    fn the_brief_example_parses_with_defaults_and_validates() {
        let spec = parse(example());
        assert_eq!(spec.duration.as_ms(), 300_000);
        assert_eq!(spec.target.selector(), Ok(Selector::One));
        assert_eq!(
            spec.method[0].fault,
            Some(Fault::Kill(KillFault {
                signal: Signal::Kill
            }))
        );
        assert_eq!(spec.method[1].title(), "pause 10s");
        assert!(spec.validate().is_empty(), "{:?}", spec.validate());
        let round = serde_json::to_value(&spec).unwrap();
        assert_eq!(parse(round), spec);
    }

    #[test]
    fn unknown_fields_and_modes_are_rejected_by_the_parser() {
        let mut spec = example();
        spec["target"]["mode"] = json!("some");
        assert!(serde_json::from_value::<ChaosExperimentSpec>(spec).is_err());
        let mut spec = example();
        spec["method"][0]["fault"]["kill"]["sig"] = json!("TERM");
        assert!(serde_json::from_value::<ChaosExperimentSpec>(spec).is_err());
        let mut spec = example();
        spec["ttl"] = json!("1m");
        assert!(serde_json::from_value::<ChaosExperimentSpec>(spec).is_err());
    }

    #[test]
    fn every_fault_kind_parses_and_validates() {
        let method = json!([
            {"fault": {"kill": {"signal": "SIGTERM"}}},
            {"fault": {"pause": {}}, "duration": "5s"},
            {"fault": {"cpu": {"cores": 2, "load": 80}}, "duration": "10s", "background": true},
            {"fault": {"memory": {"size": "256Mi"}}, "duration": "10s"},
            {"fault": {"diskFill": {"size": "1Gi", "path": "tmp/fill"}}, "duration": "10s"},
            {"fault": {"http": {"delay": {"latency": "200ms", "jitter": "50ms"}, "percent": 12.5}}, "duration": "10s"},
            {"fault": {"http": {"abort": {"status": 503}, "percent": 5}}},
            {"fault": {"http": {"reset": {}, "percent": 0.1}}},
            {"fault": {"dependency": {"application": "payments", "refuse": {}}}, "duration": "5s"},
            {"fault": {"dependency": {"application": "payments", "blackhole": {}, "percent": 50}}},
            {"fault": {"dependency": {"application": "payments", "delay": {"latency": "2s"}}}},
            {"action": {"command": ["curl", "-X", "POST", "http://127.0.0.1:9000/flush"], "timeout": "5s"}},
            {"pause": "1s"}
        ]);
        let spec = parse(with_method(method));
        assert!(spec.validate().is_empty(), "{:?}", spec.validate());
        let titles: Vec<String> = spec.method.iter().map(Activity::title).collect();
        assert_eq!(
            titles,
            [
                "fault kill SIGTERM",
                "fault pause (SIGSTOP)",
                "fault cpu 2 core(s) at 80%",
                "fault memory 256Mi",
                "fault diskFill 1Gi",
                "fault http delay 200ms ± 50ms for 12.5% of requests",
                "fault http abort 503 for 5% of requests",
                "fault http reset for 0.1% of requests",
                "fault dependency payments refused for 100% of calls",
                "fault dependency payments black-holed for 50% of calls",
                "fault dependency payments delay 2s for 100% of calls",
                "action curl -X POST http://127.0.0.1:9000/flush",
                "pause 1s",
            ]
        );
    }

    #[test]
    fn broken_faults_are_reported_each_at_its_path() {
        let method = json!([
            {"fault": {"kill": {}}, "duration": "5s"},
            {"fault": {"cpu": {"cores": 0, "load": 101}}},
            {"fault": {"memory": {"size": "64Gi"}}},
            {"fault": {"diskFill": {"size": 0, "path": "../etc"}}},
            {"fault": {"http": {"delay": {"latency": "1s"}, "abort": {"status": 600}, "percent": 12.55}}},
            {"fault": {"http": {"reset": {}, "percent": 101}}},
            {"fault": {"dependency": {"application": "checkout"}}},
            {"pause": "1s", "duration": "2s", "background": true},
            {"action": {"command": []}},
            {}
        ]);
        assert_eq!(
            problems(with_method(method)),
            [
                "spec.method[0].duration: a kill is instantaneous and takes no duration",
                "spec.method[1].fault.cpu.cores: must be at least 1",
                "spec.method[1].fault.cpu.load: must be from 1 to 100, got 101",
                "spec.method[2].fault.memory.size: 64Gi is over the limit of 16Gi",
                "spec.method[3].fault.diskFill.size: must be at least 1",
                "spec.method[3].fault.diskFill.path: must be a relative path inside the working directory, without `..`: `../etc`",
                "spec.method[4].fault.http: give exactly one of delay, abort, reset; found 2",
                "spec.method[4].fault.http.abort.status: status 600 is not an HTTP status; expected 100..=599",
                "spec.method[4].fault.http.percent: 12.55 has more than one decimal: percentages go in steps of 0.1",
                "spec.method[5].fault.http.percent: must be from 0 to 100, got 101",
                "spec.method[6].fault.dependency.application: an application cannot be its own dependency",
                "spec.method[6].fault.dependency: give exactly one of refuse, blackhole, delay; found 0",
                "spec.method[7].duration: only faults take a duration (an action has `timeout`, a pause is its own duration)",
                "spec.method[7].background: a pause in the background waits for nothing: remove `background`",
                "spec.method[8].action.command: must not be empty",
                "spec.method[9]: give exactly one of fault, action, pause; found 0",
            ]
        );
    }

    #[test]
    fn sizes_read_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("512Mi"), Ok(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("100MB"), Ok(ByteSize(100_000_000)));
        assert_eq!(ByteSize::parse("64k"), Ok(ByteSize(64_000)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert!(ByteSize::parse("1.5Gi").is_err());
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert_eq!(ByteSize(3 << 30).to_string(), "3Gi");
        assert_eq!(ByteSize(1500).to_string(), "1500B");
    }

    #[test]
    fn selector_values_follow_the_mode() {
        let target = |mode: &str, value: Value| -> Result<Selector, Problem> {
            let mut t = json!({"application": "a", "revision": "stable", "mode": mode});
            if !value.is_null() {
                t["value"] = value;
            }
            serde_json::from_value::<Target>(t).unwrap().selector()
        };
        assert_eq!(target("all", Value::Null), Ok(Selector::All));
        assert_eq!(target("fixed", json!("2")), Ok(Selector::Fixed(2)));
        assert_eq!(
            target("fixed-percent", json!(33.3)),
            Ok(Selector::FixedPercent(33.3))
        );
        assert_eq!(
            target("random-max-percent", json!("50")),
            Ok(Selector::RandomMaxPercent(50.0))
        );
        assert_eq!(
            target("one", json!(1)),
            Err(Problem::ValueNotUsed(SelectorMode::One))
        );
        assert_eq!(
            target("fixed", Value::Null),
            Err(Problem::ValueNeeded(SelectorMode::Fixed))
        );
        assert_eq!(
            target("fixed", json!(1.5)),
            Err(Problem::Count("1.5".into()))
        );
        assert_eq!(
            target("fixed-percent", json!(0)),
            Err(Problem::SelectorPercent("0".into()))
        );
        assert_eq!(
            target("fixed-percent", json!(10.05)),
            Err(Problem::Precision("10.05".into()))
        );
        assert_eq!(
            target("fixed", json!("two")),
            Err(Problem::NotANumber("two".into()))
        );
    }

    #[test]
    fn probes_hypothesis_and_timing_are_checked() {
        let mut spec = example();
        spec["duration"] = json!("20s");
        spec["schedule"] = json!("*/15 * * * * *");
        spec["hypothesis"] = json!({
            "probes": [
                {"name": "healthy", "http": {"url": "localhost:8080"}, "tolerance": {"status": 200, "exitCode": 0}},
                {"name": "healthy", "metric": {"builtin": "errorRate", "prometheus": {"address": "http://p", "query": "up"}}, "tolerance": {"range": [0, 1]}},
                {"name": "x", "http": {"url": "http://a"}, "command": {"command": ["true"]}, "tolerance": {"value": 1}, "timeout": "1m"}
            ],
            "continuous": {"interval": "0s", "failureThreshold": 0}
        });
        spec["method"] = json!([{"fault": {"pause": {}}, "duration": "15s"}, {"pause": "10s"}]);
        spec["blastRadius"] = json!({"maxInstances": 0, "maxPercent": 150});
        assert_eq!(
            problems(spec),
            [
                "spec.hypothesis.probes[0].http.url: `localhost:8080` is not an http:// or https:// URL",
                "spec.hypothesis.probes[0].tolerance.exitCode: applies to command probes only, not to http probes",
                "spec.hypothesis.probes[1].name: duplicate probe name `healthy`",
                "spec.hypothesis.probes[1].metric: give exactly one of builtin, prometheus; found 2",
                "spec.hypothesis.probes[2].timeout: timeout 1m is longer than the experiment's duration 20s",
                "spec.hypothesis.probes[2]: give exactly one of http, metric, command; found 2",
                "spec.hypothesis.continuous.interval: must be longer than 0",
                "spec.hypothesis.continuous.failureThreshold: must be at least 1",
                "spec.method: the method takes at least 25000ms in the foreground, more than the experiment's duration 20s: raise spec.duration",
                "spec.schedule: expected 5 fields (minute hour day-of-month month day-of-week), found 6",
                "spec.blastRadius.maxInstances: must be at least 1",
                "spec.blastRadius.maxPercent: must be from 0 to 100, got 150",
            ]
        );
    }

    #[test]
    fn a_full_traffic_fault_on_stable_needs_allow_all_stable() {
        let mut spec = with_method(json!([{"fault": {"http": {"abort": {"status": 503}}}}]));
        spec["target"]["revision"] = json!("stable");
        assert_eq!(
            problems(spec.clone()),
            ["spec.method[0].fault.http.percent: a traffic fault on every request of the stable \
              revision is an outage: lower percent, target the candidate, or set \
              spec.blastRadius.allowAllStable"]
        );
        spec["blastRadius"] = json!({"allowAllStable": true});
        assert!(problems(spec).is_empty());
    }

    #[test]
    fn the_json_schema_describes_the_spec() {
        let schema = serde_json::to_value(schemars::schema_for!(ChaosExperimentSpec)).unwrap();
        let required = schema["required"].as_array().unwrap();
        assert!(required.contains(&json!("target")) && required.contains(&json!("method")));
        assert_eq!(schema["additionalProperties"], json!(false));
        assert_eq!(schema["properties"]["duration"]["default"], json!("5m"));
    }

    #[test]
    fn percent_units_are_the_proxys() {
        assert_eq!(percent_units(12.5), 1_250);
        assert_eq!(percent_units(0.1), 10);
        assert_eq!(percent_units(100.0), 10_000);
    }
}
