//! The controller: the imperative shell around [`crate::plan`].
//!
//! Two loops share one [`State`]:
//! - the **source loop** asks the Git server for the head of the tracked ref (every
//!   `interval`, at once on a webhook or `gauntlet sync`), fetches a new head, validates the
//!   whole tree and either makes it the desired state or rejects it, keeping the last good
//!   commit. Failures back off exponentially up to five minutes; the error is in the status.
//! - the **reconcile loop** plans against the runtime's instances twice a second (and at once
//!   when the desired state changes), executes the actions and records them in the audit log.
//!
//! Feature flags need no reconciling: when a commit is applied, its merged flags replace the
//! served ones in one swap of an `Arc` ([`Controller::flags`]), so an evaluation sees one
//! commit's flags, never a mixture, and no instance restarts for a flag change.
//!
//! What must survive a crash is written before it is acted on: an applied commit together with
//! its `apply` record (one transaction), a rejection with its `reject` record, and each pass's
//! health changes and action records before the actions run. So a restarted controller knows
//! what to run before the Git server answers, never prunes because a server is down, and has a
//! record of everything it did. Store writes and parsing run off the async threads.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use gauntlet_proxy::config::AppRoute;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use gauntlet_runtime::{InstanceId, Runtime, RuntimeEvent};
use gauntlet_source::{GitSource, SourceConfig};
use gauntlet_spec::{DeclaredFlags, DesiredState, Parser, SourceFile};
use gauntlet_store::{now_ms, Actor, AuditRecord, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::foreign;

mod chaos;
use crate::live::{self, Readings};
use crate::measure::{self, MeasureContext};
use crate::plan::{plan, Action, Cause, Health, Plan, SyncStatus};
use crate::plan::{plan_with, RolloutTargets};
use crate::proxy_link::{LinkError, ProxyLink};
use crate::rollouts::{self, AppRollout, Pending};
use crate::status::{
    AppStatus, Change, CommitInfo, Diff, Rejected, RolloutView, SourceStatus, Status, TrafficShare,
};
use crate::traffic;
pub use chaos::{ChaosConfig, ChaosError, Gate, GateRun, RunSummary, RunView};
use gauntlet_rollout::engine::{self, Traffic};

const SNAPSHOT_KEY: &str = "source.snapshot";
const REJECTED_KEY: &str = "source.rejected";
const RECONCILE_PERIOD: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const CONFLICT_CHECK_EVERY: u32 = 10;
/// How long an instance being stopped may keep requests in flight at the proxy before it is
/// stopped anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest time between two readings of the proxy's metrics, however fast failures come.
const FAILURE_READ_GAP: Duration = Duration::from_millis(10);

/// The flags being served: one applied commit's, replaced whole when another is applied.
#[derive(Debug, Clone, Default)]
pub struct ServedFlags {
    pub flags: Arc<gauntlet_flags::Flags>,
    /// [`DeclaredFlags::digest`]: equal digests serve equal flags.
    pub digest: String,
    /// The commit they come from; empty before the first commit is known.
    pub commit: String,
}

impl ServedFlags {
    fn of(declared: &DeclaredFlags, commit: &str) -> Self {
        ServedFlags {
            flags: declared.flags.clone(),
            digest: declared.digest.clone(),
            commit: commit.to_string(),
        }
    }
}

/// How the controller is set up.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub source: SourceConfig,
    /// Time between polls of the Git server.
    pub interval: Duration,
    /// Apply a commit that defines no application even while instances run (pruning them
    /// all). Off by default, as Argo CD's `allowEmpty`: an emptied tree is more often a
    /// mistake (a wrong path, a bad force-push) than a wish to stop everything.
    pub allow_empty: bool,
    /// The proxy serving the applications' `service.listen` addresses, if one runs.
    pub proxy: Option<ProxyLink>,
    /// Author of the commits `onFailure: revert` pushes (`Name <email>`); `None` for
    /// `Gauntlet <gauntlet@localhost>`.
    pub revert_author: Option<String>,
    /// Where chaos experiments' process faults live; `None` refuses chaos runs.
    pub chaos: Option<ChaosConfig>,
}

/// Which source a stored commit came from: a restart with another `--repo`, `--branch` or
/// `--path` must not run the old source's commit under the new one's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SourceIdentity {
    repo: String,
    reference: String,
    path: String,
}

impl SourceIdentity {
    fn of(config: &SourceConfig) -> Self {
        SourceIdentity {
            repo: gauntlet_source::redact_url(&config.repo),
            reference: config.reference.clone(),
            path: config.path.clone(),
        }
    }
}

/// The last good commit, as persisted in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    source: SourceIdentity,
    commit: CommitInfo,
    files: Vec<(String, String)>,
}

/// The newest rejected commit, so a restart neither forgets nor re-reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredRejection {
    source: SourceIdentity,
    rejected: Rejected,
}

/// Everything the controller knows; read by the API.
#[derive(Debug, Default)]
struct State {
    /// `None` until a commit is known (from the store or the first fetch): nothing is
    /// reconciled before, so an unreachable server never prunes anything.
    desired: Option<Arc<DesiredState>>,
    /// The newest remote head already handled (applied or rejected).
    seen_head: Option<String>,
    source: SourceStatus,
    apps: Vec<AppStatus>,
    /// Errors from executing actions, per application, until the next successful plan.
    action_errors: BTreeMap<String, String>,
    /// Ports taken by processes Gauntlet did not start, per application.
    conflicts: BTreeMap<String, String>,
    /// Each application's last audited health word.
    health: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Source(#[from] gauntlet_source::SourceError),
    #[error("timed out waiting for the controller to {0}")]
    Timeout(&'static str),
    #[error("internal task failed: {0}")]
    Task(String),
    #[error("application {0} has no rollout: it is unknown or has no strategy")]
    NoRollout(String),
}

struct Inner<R> {
    runtime: R,
    store: Arc<Store>,
    source: GitSource,
    interval: Duration,
    allow_empty: bool,
    identity: SourceIdentity,
    state: RwLock<State>,
    fetch_now: Notify,
    reconcile_now: Notify,
    /// Passes started and finished, so `sync` can wait for one that began after it asked.
    fetch_started: AtomicU64,
    fetched: watch::Sender<u64>,
    reconcile_started: AtomicU64,
    reconciled: watch::Sender<u64>,
    stopping: Mutex<HashSet<InstanceId>>,
    proxy: Option<ProxyLink>,
    revert_author: Option<String>,
    /// Serialises pushes to the proxy with their audit records.
    traffic: tokio::sync::Mutex<()>,
    /// The proxy's counters over the last window.
    live: Mutex<Readings>,
    /// Each application under a rollout: its committed state and what awaits the next step.
    rollouts: Mutex<BTreeMap<String, (AppRollout, Pending)>>,
    /// The traffic each rollout asks the proxy for, as of the last step.
    rollout_traffic: RwLock<BTreeMap<String, Traffic>>,
    /// Remembers parsed files, so a commit re-reads only the files it changed.
    parser: Mutex<Parser>,
    /// The flags OFREP serves; readers clone the `Arc` and evaluate without holding the lock.
    flags: RwLock<Arc<ServedFlags>>,
    /// Bumped each time the served flags change, for clients that wait for changes.
    flags_changed: watch::Sender<u64>,
    chaos: Option<ChaosConfig>,
    /// Active chaos runs and the proxy fault rules they hold.
    chaos_runs: Mutex<chaos::ChaosRuns>,
    /// Wakes the chaos loop: a run started, an answer arrived, an abort.
    chaos_now: Notify,
}

/// A handle to the controller; cheap to clone.
pub struct Controller<R> {
    inner: Arc<Inner<R>>,
}

impl<R> Clone for Controller<R> {
    fn clone(&self) -> Self {
        Controller {
            inner: self.inner.clone(),
        }
    }
}

impl<R: Runtime + Clone> Controller<R> {
    /// Builds a controller and loads the last good commit from the store.
    pub fn new(config: ControllerConfig, runtime: R, store: Arc<Store>) -> Self {
        let mut state = State {
            source: SourceStatus {
                repo: config.source.repo.clone(),
                reference: config.source.reference.clone(),
                path: config.source.path.clone(),
                ..SourceStatus::default()
            },
            ..State::default()
        };
        let identity = SourceIdentity::of(&config.source);
        let mut parser = Parser::default();
        let mut flags = ServedFlags::default();
        match store.get::<StoredSnapshot>(SNAPSHOT_KEY) {
            Ok(Some(snap)) if snap.source != identity => {
                tracing::warn!(
                    "the stored commit {} is from another source ({}); waiting for the first fetch",
                    snap.commit.sha,
                    snap.source.repo
                );
            }
            Ok(Some(snap)) => {
                let files = to_source_files(&snap.files);
                match parser.parse(&files) {
                    Ok(desired) => {
                        flags = ServedFlags::of(&desired.flags, &snap.commit.sha);
                        state.desired = Some(Arc::new(desired));
                        state.seen_head = Some(snap.commit.sha.clone());
                        state.source.applied = Some(snap.commit);
                    }
                    Err(e) => {
                        state.source.error = Some(format!(
                            "the last applied commit {} no longer validates with this version; nothing is reconciled until a valid commit is fetched: {e}",
                            snap.commit.sha
                        ));
                    }
                }
            }
            Ok(None) => {}
            Err(e) => state.source.error = Some(format!("cannot read the last good commit: {e}")),
        }
        match store.get::<Option<StoredRejection>>(REJECTED_KEY) {
            Ok(Some(Some(r))) if r.source == identity => {
                state.seen_head = Some(r.rejected.commit.sha.clone());
                state.source.rejected = Some(r.rejected);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot read the last rejected commit: {e}"),
        }
        state.source.repo = gauntlet_source::redact_url(&config.source.repo);
        Controller {
            inner: Arc::new(Inner {
                runtime,
                store,
                source: GitSource::new(config.source),
                interval: config.interval,
                allow_empty: config.allow_empty,
                identity,
                state: RwLock::new(state),
                fetch_now: Notify::new(),
                reconcile_now: Notify::new(),
                fetch_started: AtomicU64::new(0),
                fetched: watch::channel(0).0,
                reconcile_started: AtomicU64::new(0),
                reconciled: watch::channel(0).0,
                stopping: Mutex::new(HashSet::new()),
                proxy: config.proxy,
                revert_author: config.revert_author,
                traffic: tokio::sync::Mutex::new(()),
                live: Mutex::new(Readings::default()),
                rollouts: Mutex::new(BTreeMap::new()),
                rollout_traffic: RwLock::new(BTreeMap::new()),
                parser: Mutex::new(parser),
                flags: RwLock::new(Arc::new(flags)),
                flags_changed: watch::channel(0).0,
                chaos: config.chaos,
                chaos_runs: Mutex::new(chaos::ChaosRuns::default()),
                chaos_now: Notify::new(),
            }),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub fn runtime(&self) -> &R {
        &self.inner.runtime
    }

    /// The flags being served now: all of one applied commit's. Cheap (an `Arc` clone); hold
    /// it for the whole of a request so the request sees one commit.
    pub fn flags(&self) -> Arc<ServedFlags> {
        read(&self.inner.flags).clone()
    }

    /// Changes each time the served flags change (a new commit with other flags).
    pub fn flags_changed(&self) -> watch::Receiver<u64> {
        self.inner.flags_changed.subscribe()
    }

    /// Runs both loops until the returned future is dropped.
    pub async fn run(self) {
        let source = self.clone();
        let reconcile = self.clone();
        let metrics = self.clone();
        let chaos = self.clone();
        tokio::join!(
            source.source_loop(),
            reconcile.reconcile_loop(),
            metrics.metrics_loop(),
            chaos.chaos_loop()
        );
    }

    /// Asks for an immediate fetch (webhook); returns at once.
    pub fn trigger_fetch(&self) {
        self.inner.fetch_now.notify_one();
    }

    /// Fetches, applies and reconciles now, and returns when done (`gauntlet sync`).
    pub async fn sync(&self, actor: &str) -> Result<Status, ControllerError> {
        self.audit(vec![AuditRecord::now(
            Actor::User(actor.to_string()),
            "",
            "sync",
            "sync requested",
        )])
        .await?;
        // Wait for a pass that *started* after this request: one already running may have
        // looked at the repository before the commit being synced.
        let want = self.inner.fetch_started.load(Ordering::SeqCst) + 1;
        self.inner.fetch_now.notify_one();
        wait_for(&self.inner.fetched, want, "fetch").await?;
        let want = self.inner.reconcile_started.load(Ordering::SeqCst) + 1;
        self.inner.reconcile_now.notify_one();
        wait_for(&self.inner.reconciled, want, "reconcile").await?;
        Ok(self.status())
    }

    /// Everything the controller reports.
    pub fn status(&self) -> Status {
        let state = read(&self.inner.state);
        let mut apps = state.apps.clone();
        drop(state);
        let proxy = self.inner.proxy.as_ref().map(|link| {
            let served = link.served_routes();
            for app in &mut apps {
                if let Some(route) = served.iter().find(|r| r.name == app.name) {
                    let live = lock(&self.inner.live);
                    app.traffic = route
                        .revisions
                        .iter()
                        .map(|r| TrafficShare {
                            live: live.rates(&app.name, &r.name),
                            ..TrafficShare::of(r)
                        })
                        .collect();
                }
            }
            link.status()
        });
        Status {
            source: read(&self.inner.state).source.clone(),
            apps,
            proxy,
        }
    }

    /// What applying the remote head would change, without applying it.
    pub async fn diff(&self) -> Result<Diff, ControllerError> {
        let head = self.inner.source.remote_head().await?;
        let snapshot = self.inner.source.fetch(&head).await?;
        let commit = CommitInfo {
            sha: snapshot.commit.clone(),
            message: snapshot.message.clone(),
            author: snapshot.author.clone(),
        };
        let files = snapshot.files;
        let parsed = tokio::task::spawn_blocking(move || gauntlet_spec::parse(&files))
            .await
            .map_err(|e| ControllerError::Task(e.to_string()))?;
        let desired = match parsed {
            Ok(d) => d,
            Err(diags) => {
                return Ok(Diff {
                    commit,
                    errors: diags.0.iter().map(|d| d.to_string()).collect(),
                    changes: vec![],
                })
            }
        };
        let planned = plan(&desired, &self.observed());
        Ok(Diff {
            commit,
            errors: vec![],
            changes: summarize(&planned),
        })
    }

    async fn source_loop(self) {
        loop {
            let pass = self.inner.fetch_started.fetch_add(1, Ordering::SeqCst) + 1;
            self.fetch_once().await;
            write(&self.inner.state).source.checks = pass;
            self.inner.fetched.send_replace(pass);
            let delay = {
                let mut state = write(&self.inner.state);
                let backoff = backoff(self.inner.interval, state.source.failures);
                state.source.next_check_ms = now_ms().saturating_add(backoff.as_millis() as u64);
                backoff
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.inner.fetch_now.notified() => {}
            }
        }
    }

    /// One poll of the Git server: apply a new valid head, reject an invalid one.
    async fn fetch_once(&self) {
        let head = match self.inner.source.remote_head().await {
            Ok(head) => head,
            Err(e) => return self.source_failed(e.to_string()).await,
        };
        self.source_answered().await;
        if read(&self.inner.state).seen_head.as_deref() == Some(head.as_str()) {
            return;
        }
        let snapshot = match self.inner.source.fetch(&head).await {
            Ok(s) => s,
            // The server answered; the commit itself is unusable (a file too large or not
            // UTF-8, the path gone): that is a bad commit, not a server to retry.
            Err(e) if is_about_the_commit(&e) => {
                let commit = CommitInfo {
                    sha: head,
                    message: String::new(),
                    author: String::new(),
                };
                return self.reject(commit, vec![e.to_string()]).await;
            }
            Err(e) => return self.source_failed(e.to_string()).await,
        };
        let commit = CommitInfo {
            sha: snapshot.commit.clone(),
            message: snapshot.message.clone(),
            author: snapshot.author.clone(),
        };
        let this = self.clone();
        let (parsed, files) = match tokio::task::spawn_blocking(move || {
            let parsed = lock(&this.inner.parser).parse(&snapshot.files);
            (parsed, snapshot.files)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => return self.source_failed(format!("parsing failed: {e}")).await,
        };
        let desired = match parsed {
            Ok(d) => d,
            Err(diags) => {
                let errors = diags.0.iter().map(|d| d.to_string()).collect();
                return self.reject(commit, errors).await;
            }
        };
        let running = self.inner.runtime.instances().len();
        if desired.applications.is_empty() && running > 0 && !self.inner.allow_empty {
            let error = format!(
                "the commit defines no application while {running} instances run; the previous commit stays live (start the controller with --allow-empty to apply an empty tree and prune everything)"
            );
            return self.reject(commit, vec![error]).await;
        }

        let count = desired.applications.len();
        let flag_count = desired.flags.flags.len();
        let served = self.flags();
        let flags_differ = served.digest != desired.flags.digest;
        let first_and_none = served.flags.is_empty() && flag_count == 0;
        let flags_record = (flags_differ && !first_and_none).then(|| {
            AuditRecord::now(
                Actor::Commit(commit.sha.clone()),
                "",
                "flags",
                format!("serving {flag_count} flags"),
            )
            .change(
                short_digest(&served.digest),
                short_digest(&desired.flags.digest),
            )
        });
        let before = read(&self.inner.state)
            .source
            .applied
            .as_ref()
            .map(|c| c.sha.clone())
            .unwrap_or_default();
        let stored = StoredSnapshot {
            source: self.inner.identity.clone(),
            commit: commit.clone(),
            files: files.into_iter().map(|f| (f.path, f.contents)).collect(),
        };
        let record = AuditRecord::now(
            Actor::Commit(commit.sha.clone()),
            "",
            "apply",
            format!(
                "{} ({count} applications, {flag_count} flags)",
                commit.message
            ),
        )
        .change(before, commit.sha.clone());
        let records: Vec<AuditRecord> = std::iter::once(record).chain(flags_record).collect();
        // The commit and its record are persisted together, before anything acts on it: after
        // a crash the controller resumes from exactly this commit.
        let store = self.inner.store.clone();
        let written = tokio::task::spawn_blocking(move || {
            let json = serde_json::to_string(&stored)
                .map_err(|e| StoreError::Db(format!("encoding the commit: {e}")))?;
            // Applying a commit also clears the stored rejection of an older one.
            store.commit(
                &[(SNAPSHOT_KEY, json.as_str()), (REJECTED_KEY, "null")],
                records,
            )
        })
        .await;
        if let Err(e) = flatten(written) {
            tracing::error!("cannot persist commit {}: {e}", commit.sha);
            return self
                .source_failed(format!("cannot record commit {}: {e}", commit.sha))
                .await;
        }
        tracing::info!(commit = %commit.sha, "applying {count} applications, {flag_count} flags");
        {
            // Flags first: they need no reconcile, and are served from this instant on.
            if flags_differ || served.commit.is_empty() {
                *write(&self.inner.flags) = Arc::new(ServedFlags::of(&desired.flags, &commit.sha));
                self.inner.flags_changed.send_modify(|n| *n += 1);
            }
            let mut state = write(&self.inner.state);
            state.desired = Some(Arc::new(desired));
            state.seen_head = Some(commit.sha.clone());
            state.source.rejected = None;
            state.source.applied = Some(commit);
        }
        self.inner.reconcile_now.notify_one();
    }

    /// Records a rejected commit; the applied one stays live.
    async fn reject(&self, commit: CommitInfo, errors: Vec<String>) {
        tracing::warn!(commit = %commit.sha, "commit rejected:\n{}", errors.join("\n"));
        let rejected = Rejected {
            commit: commit.clone(),
            errors: errors.clone(),
        };
        let stored = StoredRejection {
            source: self.inner.identity.clone(),
            rejected: rejected.clone(),
        };
        let record = AuditRecord::now(
            Actor::Commit(commit.sha.clone()),
            "",
            "reject",
            format!(
                "commit rejected, the previous commit stays live: {}",
                errors.join("; ")
            ),
        );
        let store = self.inner.store.clone();
        let written = tokio::task::spawn_blocking(move || {
            store.put_with_records(REJECTED_KEY, &stored, vec![record])
        })
        .await;
        if let Err(e) = flatten(written) {
            // Not marking it seen makes the next poll try again.
            tracing::error!("cannot record the rejection of {}: {e}", commit.sha);
            return;
        }
        let mut state = write(&self.inner.state);
        state.seen_head = Some(commit.sha);
        state.source.rejected = Some(rejected);
    }

    async fn source_failed(&self, message: String) {
        let first = {
            let mut state = write(&self.inner.state);
            state.source.last_check_ms = now_ms();
            state.source.failures += 1;
            state.source.error.replace(message.clone()).is_none()
        };
        tracing::warn!("fetch failed: {message}");
        if first {
            let _ = self
                .audit(vec![AuditRecord::now(
                    Actor::Controller,
                    "",
                    "source-error",
                    format!("{message}; the last good commit keeps running"),
                )])
                .await;
        }
    }

    async fn source_answered(&self) {
        let recovered = {
            let mut state = write(&self.inner.state);
            state.source.last_check_ms = now_ms();
            state.source.failures = 0;
            state.source.error.take()
        };
        if let Some(was) = recovered {
            let _ = self
                .audit(vec![AuditRecord::now(
                    Actor::Controller,
                    "",
                    "source-recovered",
                    format!("the Git source answers again (was: {was})"),
                )])
                .await;
        }
    }

    async fn reconcile_loop(self) {
        let mut round: u32 = 0;
        loop {
            let pass = self.inner.reconcile_started.fetch_add(1, Ordering::SeqCst) + 1;
            self.reconcile_once(round.is_multiple_of(CONFLICT_CHECK_EVERY))
                .await;
            self.inner.reconciled.send_replace(pass);
            round = round.wrapping_add(1);
            tokio::select! {
                _ = tokio::time::sleep(RECONCILE_PERIOD) => {}
                _ = self.inner.reconcile_now.notified() => {}
            }
        }
    }

    /// One level-triggered pass: observe, plan, act, report.
    ///
    /// The records of the actions are committed to the audit log before the actions run; if
    /// they cannot be written, nothing is done this pass.
    pub async fn reconcile_once(&self, check_conflicts: bool) {
        let events = self.inner.runtime.drain_events();
        let (desired, commit) = {
            let state = read(&self.inner.state);
            let commit = state
                .source
                .applied
                .as_ref()
                .map(|c| c.sha.clone())
                .unwrap_or_default();
            (state.desired.clone(), commit)
        };
        let mut intent: Vec<AuditRecord> = events.into_iter().map(event_record).collect();
        let Some(desired) = desired else {
            let _ = self.audit(intent).await;
            return;
        };
        let observed = self.observed();
        let Some(rollout_targets) = self.step_rollouts(&desired, &observed).await else {
            let _ = self.audit(intent).await;
            return;
        };
        let planned = plan_with(&desired, &observed, &rollout_targets);
        // Health changes first: a dependency becoming healthy is what lets its dependents
        // start in this same pass, and the log must read in that order.
        intent.extend(write(&self.inner.state).refresh(&desired, &planned, &observed, &commit));
        intent.extend(planned.actions.iter().map(|a| action_record(a, &commit)));
        if let Err(e) = self.audit(intent).await {
            tracing::error!("not acting this pass: {e}");
            return;
        }

        // Instances that became ready take traffic before anything this pass stops drains:
        // start new, ready, shift traffic, drain old, stop old.
        if planned
            .actions
            .iter()
            .any(|a| matches!(a, Action::Stop { .. }))
        {
            self.push_traffic().await;
        }
        let mut records = Vec::new();
        let mut errors: BTreeMap<String, String> = BTreeMap::new();
        for action in &planned.actions {
            match action {
                Action::Start { spec, .. } => {
                    if let Err(e) = self.inner.runtime.start((**spec).clone()).await {
                        errors.insert(spec.app.clone(), e.to_string());
                        records.push(
                            AuditRecord::now(
                                Actor::Controller,
                                &spec.app,
                                "error",
                                format!("cannot start revision {}: {e}", spec.revision),
                            )
                            .change("", spec.revision.clone()),
                        );
                    }
                }
                Action::Stop { id, .. } => self.stop_in_background(id.clone()),
            }
        }

        let conflicts = if check_conflicts {
            let d = desired.clone();
            let o = observed.clone();
            let proxy_pid = self
                .inner
                .proxy
                .as_ref()
                .and_then(|l| l.process())
                .map(|p| p.pid);
            tokio::task::spawn_blocking(move || find_conflicts(&d, &o, proxy_pid))
                .await
                .ok()
        } else {
            None
        };
        {
            let mut state = write(&self.inner.state);
            if let Some(c) = conflicts {
                for (app, who) in &c {
                    if state.conflicts.get(app) != Some(who) {
                        records.push(AuditRecord::now(
                            Actor::Controller,
                            app,
                            "conflict",
                            who.clone(),
                        ));
                    }
                }
                state.conflicts = c;
            }
            for (app, err) in &errors {
                state.action_errors.insert(app.clone(), err.clone());
            }
            for (app, p) in &planned.apps {
                if !errors.contains_key(app) && p.sync == SyncStatus::Synced {
                    state.action_errors.remove(app);
                }
            }
            records.extend(state.refresh(&desired, &planned, &observed, &commit));
        }
        let _ = self.audit(records).await;
        self.push_traffic().await;
    }

    /// Steps the rollout of every application with a strategy and commits the new states,
    /// with the records of their events, before anything acts on them. `None` when the
    /// store refused the commit: nothing is done this pass.
    async fn step_rollouts(
        &self,
        desired: &DesiredState,
        observed: &[gauntlet_runtime::Instance],
    ) -> Option<BTreeMap<String, RolloutTargets>> {
        let now = now_ms();
        let mut targets = BTreeMap::new();
        let mut puts: Vec<(String, String)> = Vec::new();
        let mut records = Vec::new();
        let mut traffic = BTreeMap::new();
        let mut measurements = Vec::new();
        let mut reverts = Vec::new();
        {
            let live = lock(&self.inner.live);
            let mut rollouts = lock(&self.inner.rollouts);
            rollouts.retain(|name, _| {
                desired
                    .applications
                    .get(name)
                    .is_some_and(|d| d.value.spec.strategy.is_some())
            });
            for (name, declared) in &desired.applications {
                let Some(strategy) = &declared.value.spec.strategy else {
                    continue;
                };
                let instances: Vec<&gauntlet_runtime::Instance> = observed
                    .iter()
                    .filter(|i| &i.app == name && i.phase != gauntlet_runtime::Phase::Stopping)
                    .collect();
                let (rollout, pending) = rollouts.entry(name.clone()).or_insert_with(|| match self
                    .inner
                    .store
                    .get::<AppRollout>(&rollouts::store_key(name))
                {
                    Ok(Some(r)) => (
                        r,
                        Pending {
                            restarted: true,
                            ..Pending::default()
                        },
                    ),
                    _ => (AppRollout::seeded(&instances), Pending::default()),
                });
                let spec = rollouts::spec(
                    declared.value.spec.replicas,
                    strategy,
                    desired.templates_of(name),
                );
                let steps = match strategy {
                    gauntlet_rollout::engine::Strategy::Canary(c) => c.steps.len(),
                    gauntlet_rollout::engine::Strategy::BlueGreen(_) => 1,
                };
                let obs = rollouts::observations(
                    rollout,
                    pending,
                    &declared.revision,
                    &instances,
                    &live.latest(name),
                    &live.window(name),
                );
                let step = engine::step(&spec, &rollout.state, &obs, now);
                let before = rollout.clone();
                records.extend(rollouts::absorb(rollout, name, &step));
                // The time of the last step alone is not worth a write every pass.
                let mut unchanged = rollout.clone();
                unchanged.state.last_step_ms = before.state.last_step_ms;
                if unchanged != before || !records.is_empty() {
                    if let Ok(json) = serde_json::to_string(&*rollout) {
                        puts.push((rollouts::store_key(name), json));
                    }
                }
                for action in &step.actions {
                    if let (engine::Action::Aborted(abort), Some(stable)) =
                        (action, &rollout.state.stable)
                    {
                        if declared.value.spec.on_failure == Some(gauntlet_spec::OnFailure::Revert)
                        {
                            reverts.push((name.clone(), abort.clone(), stable.clone()));
                        }
                    }
                    if let engine::Action::Measure {
                        run,
                        metric,
                        provider,
                    } = action
                    {
                        let context = MeasureContext::from_readings(
                            name,
                            rollout.state.stable.as_deref(),
                            rollout.state.candidate.as_deref(),
                            &live,
                        );
                        measurements.push((
                            name.clone(),
                            run.clone(),
                            metric.clone(),
                            provider.clone(),
                            context,
                        ));
                    }
                }
                targets.insert(name.clone(), rollout.targets(&declared.revision, steps));
                traffic.insert(name.clone(), rollout.state.traffic.clone());
            }
        }
        if !puts.is_empty() || !records.is_empty() {
            let store = self.inner.store.clone();
            let written = tokio::task::spawn_blocking(move || {
                let refs: Vec<(&str, &str)> =
                    puts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                store.commit(&refs, records)
            })
            .await;
            if let Err(e) = flatten(written) {
                tracing::error!("cannot commit the rollouts' state; not acting this pass: {e}");
                return None;
            }
        }
        *write(&self.inner.rollout_traffic) = traffic;
        let wanted = self.wanted_gates(desired);
        let verdicts = self.sync_gates(&wanted).await;
        if !verdicts.is_empty() {
            let mut rollouts = lock(&self.inner.rollouts);
            for (app, verdicts) in verdicts {
                if let Some((_, pending)) = rollouts.get_mut(&app) {
                    pending.chaos = verdicts;
                }
            }
            self.inner.reconcile_now.notify_one();
        }
        for (app, abort, stable) in reverts {
            tokio::spawn(self.clone().revert(app, abort, stable));
        }
        for (app, run, metric, provider, context) in measurements {
            let this = self.clone();
            tokio::spawn(async move {
                let outcome = measure::measure(&provider, &context).await;
                let result = engine::MeasurementResult {
                    run,
                    metric,
                    at_ms: now_ms(),
                    outcome,
                };
                if let Some((_, pending)) = lock(&this.inner.rollouts).get_mut(&app) {
                    pending.measurements.push(result);
                }
                this.inner.reconcile_now.notify_one();
            });
        }
        Some(targets)
    }

    /// The chaos steps rollouts are at: each candidate waiting on its step's experiment.
    fn wanted_gates(&self, desired: &DesiredState) -> BTreeMap<chaos::Gate, String> {
        let rollouts = lock(&self.inner.rollouts);
        let mut wanted = BTreeMap::new();
        for (app, (rollout, _)) in rollouts.iter() {
            let state = &rollout.state;
            let (Some(candidate), true) = (&state.candidate, state.chaos_started) else {
                continue;
            };
            let strategy = desired
                .applications
                .get(app)
                .and_then(|d| d.value.spec.strategy.as_ref());
            let Some(engine::Strategy::Canary(canary)) = strategy else {
                continue;
            };
            if let Some(engine::CanaryStep::Chaos(step)) = canary.steps.get(state.step_index) {
                let gate = chaos::Gate {
                    app: app.clone(),
                    revision: candidate.clone(),
                    step: state.step_index,
                };
                wanted.insert(gate, step.experiment.clone());
            }
        }
        wanted
    }

    /// `onFailure: revert`: commits and pushes the restoration of `app`'s stable manifest (see
    /// `gauntlet_source::revert`), audits the outcome and fetches at once, so the revert
    /// becomes the applied commit.
    async fn revert(self, app: String, abort: engine::Abort, stable: String) {
        let source = self.inner.source.config();
        let author = match self.inner.revert_author.as_deref().map(str::parse) {
            Some(Ok(author)) => author,
            Some(Err(e)) => {
                tracing::warn!("--revert-author: {e}; using Gauntlet's own");
                gauntlet_source::Identity::gauntlet()
            }
            None => gauntlet_source::Identity::gauntlet(),
        };
        let work_dir = source.cache_dir.with_extension(format!("revert-{app}"));
        let request = gauntlet_source::revert::RevertRequest {
            source,
            app: &app,
            failed_revision: &abort.revision,
            stable_revision: &stable,
            reason: &abort.reason,
            author: &author,
            work_dir: &work_dir,
        };
        let record = match gauntlet_source::revert::revert(&request).await {
            Ok(done) => AuditRecord::now(
                Actor::Controller,
                &app,
                "rollout-reverted",
                format!(
                    "pushed {} restoring {} as of {} (the failed revision came with {})",
                    done.commit, done.file, done.restored_from, done.offending
                ),
            ),
            Err(e) => AuditRecord::now(Actor::Controller, &app, "revert-error", e.to_string()),
        };
        let _ = self.audit(vec![record]).await;
        self.trigger_fetch();
    }

    /// The rollout of `app` as `gauntlet rollout get` shows it; `None` when the application
    /// has no strategy (or is unknown).
    pub fn rollout(&self, app: &str) -> Option<RolloutView> {
        let desired = read(&self.inner.state).desired.clone()?;
        let declared = desired.applications.get(app)?;
        let strategy = declared.value.spec.strategy.as_ref()?;
        let rollouts = lock(&self.inner.rollouts);
        let (rollout, _) = rollouts.get(app)?;
        let guard = match strategy {
            engine::Strategy::Canary(c) if rollout.state.candidate.is_some() => {
                Some(rollout.state.guard.evidence(&c.guard))
            }
            _ => None,
        };
        let steps = match strategy {
            engine::Strategy::Canary(c) => c.steps.len(),
            engine::Strategy::BlueGreen(_) => 0,
        };
        let live = lock(&self.inner.live);
        let rates = |r: &Option<String>| r.as_deref().and_then(|r| live.rates(app, r));
        Some(RolloutView {
            app: app.to_string(),
            desired: declared.revision.clone(),
            steps,
            stable_rates: rates(&rollout.state.stable),
            candidate_rates: rates(&rollout.state.candidate),
            guard,
            chaos: self.chaos_gate(app),
            state: rollout.state.clone(),
        })
    }

    /// Queues an operator's command for `app`'s rollout and records it with its actor.
    pub async fn rollout_command(
        &self,
        app: &str,
        kind: engine::CommandKind,
        actor: &str,
    ) -> Result<(), ControllerError> {
        {
            let rollouts = lock(&self.inner.rollouts);
            if !rollouts.contains_key(app) {
                return Err(ControllerError::NoRollout(app.to_string()));
            }
        }
        self.audit(vec![AuditRecord::now(
            Actor::User(actor.to_string()),
            app,
            "rollout-command",
            format!("{kind:?} requested"),
        )])
        .await?;
        if let Some((_, pending)) = lock(&self.inner.rollouts).get_mut(app) {
            pending.commands.push(engine::Command {
                kind,
                actor: actor.to_string(),
            });
        }
        self.inner.reconcile_now.notify_one();
        Ok(())
    }

    /// Reads the proxy's counters into the live window every [`live::READ_EVERY`] and, while a
    /// candidate is judged, also as soon as the proxy counts a failed request: the guard's
    /// statistic can only cross its rollback boundary on a failure, so reading then judges
    /// each failure with every outcome before it, as a test run request by request would.
    async fn metrics_loop(self) {
        let Some(link) = self.inner.proxy.clone() else {
            return;
        };
        let mut next = tokio::time::Instant::now();
        // The proxy's failure count at the last reading, once it has reported one.
        let mut failures: Option<u64> = None;
        loop {
            let judging = lock(&self.inner.rollouts)
                .values()
                .any(|(r, _)| r.state.candidate.is_some());
            let wait = next.saturating_duration_since(tokio::time::Instant::now());
            let reading = match failures {
                Some(seen) if judging && !wait.is_zero() => {
                    link.metrics_on_failure(seen, wait).await
                }
                _ => {
                    tokio::time::sleep_until(next).await;
                    link.metrics().await
                }
            };
            let now = tokio::time::Instant::now();
            if now >= next {
                next = (next + live::READ_EVERY).max(now);
            }
            match reading {
                Ok(report) => {
                    failures = report.failure_seq;
                    lock(&self.inner.live).record(now_ms(), &report.revisions);
                    // A candidate taking traffic is judged on every reading.
                    if judging {
                        self.inner.reconcile_now.notify_one();
                    }
                    // A burst of failures must not become a busy loop of readings.
                    tokio::time::sleep(FAILURE_READ_GAP).await;
                }
                Err(e) => tracing::debug!("cannot read the proxy's metrics: {e}"),
            }
        }
    }

    /// Pushes the routes of the current desired state and instances to the proxy (nothing
    /// when they are unchanged) and records each application whose traffic changed. Returns
    /// the version the proxy serves, if it answered. Pushes and their records are serialised,
    /// so a change is in the audit log before anything that waited on it.
    async fn push_traffic(&self) -> Option<u64> {
        let link = self.inner.proxy.as_ref()?;
        let _serialised = self.inner.traffic.lock().await;
        let (version, records) = self.push_routes(link).await;
        let _ = self.audit(records).await;
        version
    }

    async fn push_routes(&self, link: &ProxyLink) -> (Option<u64>, Vec<AuditRecord>) {
        let (desired, conflicts) = {
            let state = read(&self.inner.state);
            let conflicts: BTreeSet<String> = state.conflicts.keys().cloned().collect();
            (state.desired.clone(), conflicts)
        };
        let Some(desired) = desired else {
            return (None, Vec::new());
        };
        // Each refused bind leaves that application out; there are at most as many as apps.
        for _ in 0..=desired.applications.len().min(16) {
            let mut excluded = conflicts.clone();
            excluded.extend(link.unbindable());
            let rollouts = read(&self.inner.rollout_traffic).clone();
            let observed = self.observed();
            let mut routes = traffic::routes_with(&desired, &observed, &excluded, &rollouts);
            {
                // Chaos experiments' traffic faults, each with its lease as its expiry.
                let chaos = lock(&self.inner.chaos_runs);
                for route in &mut routes {
                    route.faults.extend(chaos.rules_for(&route.name, &observed));
                }
            }
            match link.push(routes.clone()).await {
                Ok(pushed) => {
                    let records = pushed
                        .previous
                        .map(|before| traffic_records(&before, &routes, pushed.version))
                        .unwrap_or_default();
                    return (Some(pushed.version), records);
                }
                Err(LinkError::Bind { app, reason }) => {
                    tracing::warn!("leaving app `{app}` out of the proxy: {reason}");
                }
                Err(e) => {
                    tracing::debug!("cannot configure the proxy: {e}");
                    return (None, Vec::new());
                }
            }
        }
        (None, Vec::new())
    }

    /// The runtime's instances, with those being stopped shown as stopping.
    fn observed(&self) -> Vec<gauntlet_runtime::Instance> {
        let stopping = lock(&self.inner.stopping);
        let mut all = self.inner.runtime.instances();
        for inst in &mut all {
            if stopping.contains(&inst.id) {
                inst.phase = gauntlet_runtime::Phase::Stopping;
            }
        }
        all
    }

    /// Stops an instance: first its proxy endpoint drains (no new requests, in-flight ones
    /// finish, up to [`DRAIN_TIMEOUT`]), then the runtime stops its process.
    fn stop_in_background(&self, id: InstanceId) {
        if !lock(&self.inner.stopping).insert(id.clone()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.drain(&id).await;
            if let Err(e) = this.inner.runtime.stop(&id).await {
                tracing::error!("cannot stop {id}: {e}");
            }
            lock(&this.inner.stopping).remove(&id);
            this.inner.reconcile_now.notify_one();
        });
    }

    /// Marks the instance's endpoint draining at the proxy and waits until nothing is in
    /// flight on it. Instances of applications without a `service.listen` return at once.
    async fn drain(&self, id: &InstanceId) {
        let Some(link) = &self.inner.proxy else {
            return;
        };
        let Some(inst) = self
            .inner
            .runtime
            .instances()
            .into_iter()
            .find(|i| &i.id == id)
        else {
            return;
        };
        let served = link.served_routes().iter().any(|r| r.name == inst.app);
        if !served {
            return;
        }
        let Some(version) = self.push_traffic().await else {
            return;
        };
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, inst.port));
        let started = std::time::Instant::now();
        let (action, reason) = match link.wait_drained(addr, version, DRAIN_TIMEOUT).await {
            Ok(()) => (
                "drained",
                format!(
                    "{id} drained at the proxy in {} ms",
                    started.elapsed().as_millis()
                ),
            ),
            Err(e) => ("drain-timeout", format!("{id}: {e}; stopping it anyway")),
        };
        let _ = self
            .audit(vec![AuditRecord::now(
                Actor::Controller,
                &inst.app,
                action,
                reason,
            )])
            .await;
    }

    /// Appends to the audit log off the async threads (each write is an fsync'd commit).
    async fn audit(&self, records: Vec<AuditRecord>) -> Result<(), ControllerError> {
        if records.is_empty() {
            return Ok(());
        }
        let store = self.inner.store.clone();
        let written = tokio::task::spawn_blocking(move || store.append(records)).await;
        flatten(written).map(drop).map_err(|e| {
            tracing::error!("cannot write the audit log: {e}");
            e
        })
    }
}

impl State {
    /// Recomputes every application's status and returns an audit record for each whose
    /// health word changed (not at every new reason, such as "1 of 2 ready").
    fn refresh(
        &mut self,
        desired: &DesiredState,
        planned: &Plan,
        observed: &[gauntlet_runtime::Instance],
        commit: &str,
    ) -> Vec<AuditRecord> {
        self.apps = app_statuses(desired, planned, observed, self, commit);
        let mut records = Vec::new();
        let mut health = BTreeMap::new();
        for app in &self.apps {
            let word = health_word(&app.health);
            let before = self.health.get(&app.name).cloned();
            if before.as_deref() != Some(word.as_str()) {
                records.push(
                    AuditRecord::now(
                        Actor::Controller,
                        &app.name,
                        "health",
                        describe(&app.health),
                    )
                    .change(before.unwrap_or_default(), word.clone()),
                );
            }
            health.insert(app.name.clone(), word);
        }
        self.health = health;
        records
    }
}

/// Whether a fetch error is about the commit's content rather than the server.
fn is_about_the_commit(e: &gauntlet_source::SourceError) -> bool {
    use gauntlet_source::SourceError::*;
    matches!(
        e,
        FileTooLarge { .. } | NotUtf8 { .. } | PathNotFound { .. }
    )
}

fn flatten<T>(
    r: Result<Result<T, StoreError>, tokio::task::JoinError>,
) -> Result<T, ControllerError> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ControllerError::Store(e)),
        Err(e) => Err(ControllerError::Task(e.to_string())),
    }
}

fn app_statuses(
    desired: &DesiredState,
    planned: &Plan,
    observed: &[gauntlet_runtime::Instance],
    state: &State,
    commit: &str,
) -> Vec<AppStatus> {
    let instances_of = |name: &str| -> Vec<gauntlet_runtime::Instance> {
        observed.iter().filter(|i| i.app == name).cloned().collect()
    };
    let mut out = Vec::with_capacity(planned.apps.len() + planned.pruned.len());
    for (name, p) in &planned.apps {
        let Some(app) = desired.applications.get(name) else {
            continue;
        };
        let mut warnings = Vec::new();
        let mut sync = p.sync;
        let mut health = p.health.clone();
        if let Some(err) = state.action_errors.get(name) {
            warnings.push(err.clone());
            sync = SyncStatus::Error;
            health = Health::Degraded(format!("cannot start: {err}"));
        }
        if let Some(c) = state.conflicts.get(name) {
            warnings.push(c.clone());
        }
        out.push(AppStatus {
            name: name.clone(),
            commit: commit.to_string(),
            revision: p.revision.clone(),
            replicas: p.replicas,
            ready: p.ready,
            sync,
            health,
            service: app.value.spec.service.as_ref().map(|s| s.listen.clone()),
            warnings,
            traffic: Vec::new(),
            instances: instances_of(name),
        });
    }
    // Removed from Git but not yet stopped: shown until its last instance is gone.
    for name in &planned.pruned {
        let instances = instances_of(name);
        out.push(AppStatus {
            name: name.clone(),
            commit: commit.to_string(),
            revision: String::new(),
            replicas: 0,
            ready: 0,
            sync: SyncStatus::OutOfSync,
            health: Health::Progressing(format!(
                "pruning: removed from Git, {} instances stopping",
                instances.len()
            )),
            service: None,
            warnings: Vec::new(),
            traffic: Vec::new(),
            instances,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Applications whose `service.listen` is taken by a process none of its instances is.
fn find_conflicts(
    desired: &DesiredState,
    observed: &[gauntlet_runtime::Instance],
    proxy_pid: Option<u32>,
) -> BTreeMap<String, String> {
    let mut ours: HashSet<u32> = observed.iter().filter_map(|i| i.pid).collect();
    ours.extend(proxy_pid);
    let mut out = BTreeMap::new();
    for (name, app) in &desired.applications {
        let Some(service) = &app.value.spec.service else {
            continue;
        };
        let Ok(addr) = service.listen.parse() else {
            continue;
        };
        if let Some(l) = foreign::listener_on(addr) {
            if l.pid
                .is_some_and(|p| ours.contains(&p) || p == std::process::id())
            {
                continue;
            }
            out.insert(
                name.clone(),
                format!(
                    "{} is taken by {l}, which Gauntlet did not start",
                    service.listen
                ),
            );
        }
    }
    out
}

/// One `traffic` record per application whose routes changed between `before` and `after`.
fn traffic_records(before: &[AppRoute], after: &[AppRoute], version: u64) -> Vec<AuditRecord> {
    let describe = |route: Option<&AppRoute>| -> String {
        let Some(route) = route else {
            return "not served".into();
        };
        route
            .revisions
            .iter()
            .map(|r| TrafficShare::of(r).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let names: BTreeSet<&str> = before
        .iter()
        .chain(after)
        .map(|r| r.name.as_str())
        .collect();
    names
        .into_iter()
        .filter_map(|name| {
            let old = before.iter().find(|r| r.name == name);
            let new = after.iter().find(|r| r.name == name);
            if old == new {
                return None;
            }
            let (old, new) = (describe(old), describe(new));
            Some(
                AuditRecord::now(
                    Actor::Controller,
                    name,
                    "traffic",
                    format!("proxy configuration {version}: {new}"),
                )
                .change(old, new),
            )
        })
        .collect()
}

fn summarize(planned: &Plan) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    for action in &planned.actions {
        let (verb, detail) = match action {
            Action::Start { spec, cause } => (cause.verb(), cause_detail(cause, &spec.revision)),
            Action::Stop {
                cause, revision, ..
            } => (cause.verb(), cause_detail(cause, revision)),
        };
        if let Some(last) = out.last_mut() {
            if last.app == action.app() && last.action == verb {
                continue;
            }
        }
        out.push(Change {
            app: action.app().to_string(),
            action: verb.to_string(),
            detail,
        });
    }
    out
}

fn cause_detail(cause: &Cause, revision: &str) -> String {
    match cause {
        Cause::Create => format!("start revision {revision}"),
        Cause::Update { from, to } => format!("revision {} -> {to}", from.join(",")),
        Cause::Scale { from, to } => format!("replicas {from} -> {to}"),
        Cause::Replaced { by } => format!("stop revision {revision}, replaced by {by}"),
        Cause::Prune => format!("stop revision {revision}: removed from Git"),
    }
}

fn action_record(action: &Action, commit: &str) -> AuditRecord {
    let actor = Actor::Commit(commit.to_string());
    match action {
        Action::Start { spec, cause } => {
            let rec = AuditRecord::now(
                actor,
                &spec.app,
                cause.verb(),
                format!("start an instance: {}", cause_detail(cause, &spec.revision)),
            );
            match cause {
                Cause::Update { from, to } => rec.change(from.join(","), to.clone()),
                Cause::Scale { from, to } => rec.change(from.to_string(), to.to_string()),
                _ => rec.change("", spec.revision.clone()),
            }
        }
        Action::Stop {
            app,
            id,
            revision,
            cause,
        } => AuditRecord::now(
            actor,
            app,
            cause.verb(),
            format!("stop {id}: {}", cause_detail(cause, revision)),
        )
        .change(revision.clone(), ""),
    }
}

fn event_record(e: RuntimeEvent) -> AuditRecord {
    AuditRecord::now(
        Actor::Controller,
        &e.app,
        &e.action,
        format!("{}: {}", e.instance, e.detail),
    )
}

fn health_word(h: &Health) -> String {
    match h {
        Health::Healthy => "Healthy",
        Health::Progressing(_) => "Progressing",
        Health::Degraded(_) => "Degraded",
    }
    .to_string()
}

fn describe(h: &Health) -> String {
    match h {
        Health::Healthy => "all instances ready".to_string(),
        Health::Progressing(r) | Health::Degraded(r) => r.clone(),
    }
}

/// The first 12 hex digits of a flags digest, for the audit log; empty for no flags yet.
fn short_digest(digest: &str) -> String {
    digest[..digest.len().min(12)].to_string()
}

fn backoff(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    let factor = 1u32 << failures.min(16);
    interval
        .saturating_mul(factor)
        .min(MAX_BACKOFF.max(interval))
}

/// Waits until the pass counter in `done` reaches `want`.
async fn wait_for(
    done: &watch::Sender<u64>,
    want: u64,
    what: &'static str,
) -> Result<(), ControllerError> {
    let mut rx = done.subscribe();
    let reached = tokio::time::timeout(Duration::from_secs(120), rx.wait_for(|n| *n >= want))
        .await
        .is_ok_and(|r| r.is_ok());
    if reached {
        Ok(())
    } else {
        Err(ControllerError::Timeout(what))
    }
}

fn to_source_files(files: &[(String, String)]) -> Vec<SourceFile> {
    files
        .iter()
        .map(|(path, contents)| SourceFile {
            path: path.clone(),
            contents: contents.clone(),
        })
        .collect()
}

// A poisoned lock means a panic elsewhere already failed loudly; the data is still usable.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_backoff_doubles_from_the_interval_and_caps_at_five_minutes() {
        let i = Duration::from_secs(10);
        assert_eq!(backoff(i, 0), i);
        assert_eq!(backoff(i, 1), Duration::from_secs(20));
        assert_eq!(backoff(i, 3), Duration::from_secs(80));
        assert_eq!(backoff(i, 30), MAX_BACKOFF);
    }
}
