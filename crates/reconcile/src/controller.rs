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
//! The last good snapshot is kept in the store, so a restarted controller knows what to run
//! before the Git server answers, and never prunes applications because a server is down.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use gauntlet_runtime::{InstanceId, Runtime, RuntimeEvent};
use gauntlet_source::{GitSource, SourceConfig};
use gauntlet_spec::{DesiredState, Parser, SourceFile};
use gauntlet_store::{now_ms, Actor, AuditRecord, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::foreign;
use crate::plan::{plan, Action, Cause, Health, Plan, SyncStatus};
use crate::status::{AppStatus, Change, CommitInfo, Diff, Rejected, SourceStatus, Status};

const SNAPSHOT_KEY: &str = "source.snapshot";
const RECONCILE_PERIOD: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const CONFLICT_CHECK_EVERY: u32 = 10;

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
}

/// The last good commit, as persisted in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    commit: CommitInfo,
    files: Vec<(String, String)>,
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
    health: BTreeMap<String, Health>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Source(#[from] gauntlet_source::SourceError),
    #[error("timed out waiting for the controller to {0}")]
    Timeout(&'static str),
}

struct Inner<R> {
    runtime: R,
    store: Arc<Store>,
    source: GitSource,
    interval: Duration,
    state: RwLock<State>,
    fetch_now: Notify,
    reconcile_now: Notify,
    /// Passes started and finished, so `sync` can wait for one that began after it asked.
    fetch_started: AtomicU64,
    fetched: watch::Sender<u64>,
    reconcile_started: AtomicU64,
    reconciled: watch::Sender<u64>,
    stopping: Mutex<HashSet<InstanceId>>,
    /// Remembers parsed files, so a commit re-reads only the files it changed.
    parser: Mutex<Parser>,
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
        let mut parser = Parser::default();
        match store.get::<StoredSnapshot>(SNAPSHOT_KEY) {
            Ok(Some(snap)) => {
                let files = to_source_files(&snap.files);
                match parser.parse(&files) {
                    Ok(desired) => {
                        state.desired = Some(Arc::new(desired));
                        state.seen_head = Some(snap.commit.sha.clone());
                        state.source.applied = Some(snap.commit);
                    }
                    Err(e) => tracing::warn!("the stored commit no longer validates: {e}"),
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot read the last good commit: {e}"),
        }
        Controller {
            inner: Arc::new(Inner {
                runtime,
                store,
                source: GitSource::new(config.source),
                interval: config.interval,
                state: RwLock::new(state),
                fetch_now: Notify::new(),
                reconcile_now: Notify::new(),
                fetch_started: AtomicU64::new(0),
                fetched: watch::channel(0).0,
                reconcile_started: AtomicU64::new(0),
                reconciled: watch::channel(0).0,
                stopping: Mutex::new(HashSet::new()),
                parser: Mutex::new(parser),
            }),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub fn runtime(&self) -> &R {
        &self.inner.runtime
    }

    /// Runs both loops until the returned future is dropped.
    pub async fn run(self) {
        let source = self.clone();
        let reconcile = self.clone();
        tokio::join!(source.source_loop(), reconcile.reconcile_loop());
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
        )]);
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
        Status {
            source: state.source.clone(),
            apps: state.apps.clone(),
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
        let desired = match gauntlet_spec::parse(&snapshot.files) {
            Ok(d) => d,
            Err(diags) => {
                return Ok(Diff {
                    commit,
                    errors: diags.0.iter().map(|d| d.to_string()).collect(),
                    changes: vec![],
                })
            }
        };
        let planned = plan(&desired, &self.inner.runtime.instances());
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
                state.source.next_check_ms = now_ms() + backoff.as_millis() as u64;
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
        let result = async {
            let head = self.inner.source.remote_head().await?;
            if read(&self.inner.state).seen_head.as_deref() == Some(head.as_str()) {
                return Ok(None);
            }
            let snapshot = self.inner.source.fetch(&head).await?;
            Ok::<_, gauntlet_source::SourceError>(Some(snapshot))
        }
        .await;
        let snapshot = match result {
            Ok(s) => {
                let recovered = {
                    let mut state = write(&self.inner.state);
                    state.source.last_check_ms = now_ms();
                    state.source.failures = 0;
                    state.source.error.take()
                };
                if let Some(was) = recovered {
                    self.audit(vec![AuditRecord::now(
                        Actor::Controller,
                        "",
                        "source-recovered",
                        format!("the Git source answers again (was: {was})"),
                    )]);
                }
                match s {
                    Some(s) => s,
                    None => return,
                }
            }
            Err(e) => {
                let message = e.to_string();
                let first = {
                    let mut state = write(&self.inner.state);
                    state.source.last_check_ms = now_ms();
                    state.source.failures += 1;
                    state.source.error.replace(message.clone()).is_none()
                };
                tracing::warn!("fetch failed: {message}");
                if first {
                    self.audit(vec![AuditRecord::now(
                        Actor::Controller,
                        "",
                        "source-error",
                        format!("{message}; the last good commit keeps running"),
                    )]);
                }
                return;
            }
        };

        let commit = CommitInfo {
            sha: snapshot.commit.clone(),
            message: snapshot.message.clone(),
            author: snapshot.author.clone(),
        };
        let parsed = lock(&self.inner.parser).parse(&snapshot.files);
        match parsed {
            Ok(desired) => {
                let stored = StoredSnapshot {
                    commit: commit.clone(),
                    files: snapshot
                        .files
                        .iter()
                        .map(|f| (f.path.clone(), f.contents.clone()))
                        .collect(),
                };
                // Persist before applying: after a crash the controller resumes from it.
                if let Err(e) = self.inner.store.put(SNAPSHOT_KEY, &stored) {
                    tracing::error!("cannot persist commit {}: {e}", commit.sha);
                    write(&self.inner.state).source.error = Some(e.to_string());
                    return;
                }
                let count = desired.applications.len();
                let before = {
                    let mut state = write(&self.inner.state);
                    state.desired = Some(Arc::new(desired));
                    state.seen_head = Some(commit.sha.clone());
                    state.source.rejected = None;
                    state.source.applied.replace(commit.clone())
                };
                tracing::info!(commit = %commit.sha, "applying {count} applications");
                self.audit(vec![AuditRecord::now(
                    Actor::Commit(commit.sha.clone()),
                    "",
                    "apply",
                    format!("{} ({count} applications)", commit.message),
                )
                .change(
                    before.map(|c| c.sha).unwrap_or_default(),
                    commit.sha.clone(),
                )]);
                self.inner.reconcile_now.notify_one();
            }
            Err(diags) => {
                let errors: Vec<String> = diags.0.iter().map(|d| d.to_string()).collect();
                tracing::warn!(commit = %commit.sha, "commit rejected:\n{diags}");
                {
                    let mut state = write(&self.inner.state);
                    state.seen_head = Some(commit.sha.clone());
                    state.source.rejected = Some(Rejected {
                        commit: commit.clone(),
                        errors: errors.clone(),
                    });
                }
                self.audit(vec![AuditRecord::now(
                    Actor::Commit(commit.sha.clone()),
                    "",
                    "reject",
                    format!(
                        "commit rejected, the previous commit stays live: {}",
                        errors.join("; ")
                    ),
                )]);
            }
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
    pub async fn reconcile_once(&self, check_conflicts: bool) {
        let events = self.inner.runtime.drain_events();
        if !events.is_empty() {
            self.audit(events.into_iter().map(event_record).collect());
        }
        let (desired, commit) = {
            let state = read(&self.inner.state);
            match &state.desired {
                Some(d) => (
                    d.clone(),
                    state
                        .source
                        .applied
                        .as_ref()
                        .map(|c| c.sha.clone())
                        .unwrap_or_default(),
                ),
                None => return,
            }
        };
        let observed = {
            let stopping = lock(&self.inner.stopping);
            let mut all = self.inner.runtime.instances();
            for inst in &mut all {
                if stopping.contains(&inst.id) {
                    inst.phase = gauntlet_runtime::Phase::Stopping;
                }
            }
            all
        };
        let planned = plan(&desired, &observed);

        let mut records = Vec::new();
        let mut errors: BTreeMap<String, String> = BTreeMap::new();
        for action in &planned.actions {
            records.push(action_record(action, &commit));
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
            Some(find_conflicts(&desired, &observed))
        } else {
            None
        };
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
        for (app, p) in &planned.apps {
            let before = state.health.insert(app.clone(), p.health.clone());
            if before.as_ref() != Some(&p.health) {
                records.push(
                    AuditRecord::now(Actor::Controller, app, "health", describe(&p.health)).change(
                        before.map(|h| health_word(&h)).unwrap_or_default(),
                        health_word(&p.health),
                    ),
                );
            }
        }
        state.health.retain(|app, _| planned.apps.contains_key(app));
        state.apps = app_statuses(&desired, &planned, &observed, &state, &commit);
        drop(state);
        self.audit(records);
    }

    fn stop_in_background(&self, id: InstanceId) {
        if !lock(&self.inner.stopping).insert(id.clone()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.inner.runtime.stop(&id).await {
                tracing::error!("cannot stop {id}: {e}");
            }
            lock(&this.inner.stopping).remove(&id);
            this.inner.reconcile_now.notify_one();
        });
    }

    fn audit(&self, records: Vec<AuditRecord>) {
        if records.is_empty() {
            return;
        }
        if let Err(e) = self.inner.store.append(records) {
            tracing::error!("cannot write the audit log: {e}");
        }
    }
}

fn app_statuses(
    desired: &DesiredState,
    planned: &Plan,
    observed: &[gauntlet_runtime::Instance],
    state: &State,
    commit: &str,
) -> Vec<AppStatus> {
    let mut out = Vec::with_capacity(planned.apps.len());
    for (name, p) in &planned.apps {
        let Some(app) = desired.applications.get(name) else {
            continue;
        };
        let mut warnings = Vec::new();
        let mut sync = p.sync;
        if let Some(err) = state.action_errors.get(name) {
            warnings.push(err.clone());
            sync = SyncStatus::Error;
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
            health: p.health.clone(),
            service: app.value.spec.service.as_ref().map(|s| s.listen.clone()),
            warnings,
            instances: observed
                .iter()
                .filter(|i| &i.app == name)
                .cloned()
                .collect(),
        });
    }
    out
}

/// Applications whose `service.listen` is taken by a process none of its instances is.
fn find_conflicts(
    desired: &DesiredState,
    observed: &[gauntlet_runtime::Instance],
) -> BTreeMap<String, String> {
    let ours: HashSet<u32> = observed.iter().filter_map(|i| i.pid).collect();
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
