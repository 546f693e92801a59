//! Runtimes run application instances and keep each one alive.
//!
//! The reconciler decides *which* instances should exist (application, revision, how many);
//! a [`Runtime`] makes them exist and supervises each one, as a kubelet does for containers:
//! it restarts an instance that dies (with exponential backoff, entering a crash loop when it
//! keeps dying), probes readiness, and stops instances gracefully. The reconciler only reads
//! [`Runtime::instances`] and calls [`Runtime::start`] and [`Runtime::stop`].
//!
//! Two implementations: [`local::LocalRuntime`] runs operating-system processes on this host
//! and re-adopts them after a controller restart; [`recording::RecordingRuntime`] only records
//! what it was asked to do, for planning benchmarks and tests of the reconciler.

use std::path::PathBuf;

use gauntlet_spec::{Probe, ProcessSpec};
use serde::{Deserialize, Serialize};

pub mod local;
pub mod recording;

/// Identifies one instance for its whole life, across restarts of its process and of the
/// controller: `{app}-{revision}-{suffix}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(pub String);

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the reconciler asks a runtime to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub app: String,
    /// The revision hash (see `gauntlet_spec::Application::revision`).
    pub revision: String,
    pub process: ProcessSpec,
    pub readiness: Option<Probe>,
}

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "phase",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Phase {
    /// Preparing (artifact download) or started and not yet ready.
    Starting,
    /// Running and passing its readiness probe (or running, without one).
    Ready,
    /// Running but failing its readiness probe after having been ready.
    Unready { reason: String },
    /// Died and waiting out its backoff before the next start.
    CrashLoop {
        /// How the last process ended, e.g. `exit status 1` or `signal 9 (SIGKILL)`.
        last_exit: String,
        /// The last lines of its log.
        log_tail: Vec<String>,
        /// Unix milliseconds of the next start attempt.
        next_start_ms: u64,
    },
    /// Could not be started at all (bad command, artifact checksum mismatch); retried with
    /// backoff like a crash.
    Failed { reason: String },
    /// Being stopped (SIGTERM sent, waiting for the grace period).
    Stopping,
}

/// An instance as the runtime observes it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub id: InstanceId,
    pub app: String,
    pub revision: String,
    /// The port assigned at creation; kept across restarts of the process.
    pub port: u16,
    /// Current process, if one is running.
    pub pid: Option<u32>,
    pub phase: Phase,
    /// Times the process was restarted after dying.
    pub restarts: u32,
    /// Unix milliseconds when the instance was created.
    pub created_ms: u64,
}

impl Instance {
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready)
    }
}

/// Something the runtime did on its own, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeEvent {
    pub app: String,
    pub instance: InstanceId,
    /// `restarted`, `crashloop`, `adopted`, `lost`, `ready`, `unready`, `orphan-stopped` (a
    /// process of an instance the controller never recorded was stopped on open).
    pub action: String,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("instance {0} is not known to the runtime")]
    UnknownInstance(InstanceId),
    #[error("artifact {url}: {reason}")]
    Artifact { url: String, reason: String },
    #[error("cannot start {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("runtime state in {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The instance spec cannot be run as given (empty command, an application name that is
    /// not usable as a file name).
    #[error("invalid instance spec: {0}")]
    InvalidSpec(String),
    /// [`local::LocalRuntime::shutdown`] was called; open the runtime again to manage
    /// instances.
    #[error("the runtime was shut down; open it again to manage instances")]
    ShutDown,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs and supervises instances. Implementations are cheap to share (`Arc` inside).
pub trait Runtime: Send + Sync + 'static {
    /// Every instance the runtime knows, in any phase. Cheap: no I/O.
    fn instances(&self) -> Vec<Instance>;

    /// Creates an instance and starts supervising it. Returns once it is created (its phase is
    /// `Starting`); it becomes `Ready` later.
    fn start(
        &self,
        spec: InstanceSpec,
    ) -> impl std::future::Future<Output = Result<Instance, RuntimeError>> + Send;

    /// Stops an instance gracefully (SIGTERM, grace period, SIGKILL to its whole process
    /// group) and forgets it. Idempotent: stopping an unknown instance is `Ok`.
    fn stop(
        &self,
        id: &InstanceId,
    ) -> impl std::future::Future<Output = Result<(), RuntimeError>> + Send;

    /// Events since the last call (restarts, crash loops, adoptions), oldest first.
    fn drain_events(&self) -> Vec<RuntimeEvent>;
}
