//! The local runtime: every instance is an operating-system process on this host.
//!
//! [`LocalRuntime`] owns a table of instances and one supervisor task per instance
//! (`supervisor.rs`), which starts the process, restarts it with backoff when it dies
//! (`policy.rs`), probes readiness (`probe.rs`) and rotates its log (`logs.rs`). Processes
//! are started in their own session with their output going to a file (`process.rs`), so they
//! survive the controller. The table is persisted after every change (`records.rs`); when the
//! runtime opens again it re-adopts each recorded process that still runs (same pid and same
//! start time) and starts a new one for each that does not. A record also says whether the
//! instance was ready; an adopted process that was resumes as `Ready` at once (its probe keeps
//! running and demotes it as for any ready instance), so a controller restart never withdraws
//! serving instances. Artifacts are fetched, verified and cached by hash (`artifact.rs`).
//!
//! A controller can die after starting a process and before recording it. Every instance
//! therefore carries `GAUNTLET_INSTANCE={id}` and `GAUNTLET_STATE_DIR={canonical state
//! directory}` in its environment, and `open` scans `/proc` for them (`survivors.rs`): a
//! recorded instance whose recorded process is gone adopts the process that carries its id
//! instead of starting a duplicate, and a process of an instance that was never recorded is
//! stopped (SIGTERM, [`ORPHAN_GRACE_PERIOD`], SIGKILL to its group) with an `orphan-stopped`
//! event before `open` returns.
//!
//! Layout of the state directory:
//!
//! ```text
//! {state}/runtime/instances.json   records of every instance (atomic rewrite)
//! {state}/runtime/lock             held while a runtime has the directory open
//! {state}/logs/{app}/{id}.log      live log; {id}.log.1 .. .3 rotated copies
//! {state}/artifacts/{sha256}/      verified, unpacked artifacts
//! {state}/instances/{id}/          base of a relative workingDir without artifact
//! ```
//!
//! Only one runtime may open a state directory at a time (an `flock` on `runtime/lock`), so
//! two controllers can never supervise, and start duplicates of, the same instance.

mod artifact;
pub mod faults;
mod logs;
mod policy;
mod probe;
mod process;
mod records;
mod supervisor;
mod survivors;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Process identity and stopping, shared with the controller's supervision of the proxy.
pub mod os {
    pub use super::process::{describe_exit, is_alive, signal_group, start_time, stop_group};
}
pub use logs::{log_dir, log_file, log_files, DEFAULT_LOG_MAX_BYTES, ROTATED_LOGS_KEPT};
pub use policy::{BACKOFF_INITIAL, BACKOFF_MAX, CRASH_LOOP_AFTER, STABLE_RUN};

use crate::{Instance, InstanceId, InstanceSpec, Phase, Runtime, RuntimeError, RuntimeEvent};
use records::InstanceRecord;
use supervisor::{Control, Initial, Supervisor};

/// Default seconds between SIGTERM and SIGKILL when a spec does not say.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);
/// Seconds between SIGTERM and SIGKILL for a process of an instance that was never recorded
/// (its spec, and so its grace period, is unknown).
pub const ORPHAN_GRACE_PERIOD: Duration = Duration::from_secs(3);
/// Characters of the random suffix of an [`InstanceId`].
const ID_SUFFIX_LEN: usize = 5;
/// Lines of log shown in `Phase::CrashLoop`.
pub const LOG_TAIL_LINES: usize = 20;
/// Events kept when nobody drains them; the oldest are dropped first.
pub const MAX_QUEUED_EVENTS: usize = 10_000;

/// Tunables of a [`LocalRuntime`]. The defaults suit production; tests shrink them.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// A live log larger than this is rotated.
    pub log_max_bytes: u64,
    /// How often each supervisor checks its log's size.
    pub log_check_interval: Duration,
    /// How often an adopted process (not our child, so no exit notification) is checked.
    pub adopted_poll_interval: Duration,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            log_check_interval: Duration::from_secs(10),
            adopted_poll_interval: Duration::from_millis(500),
        }
    }
}

/// Runs instances as local processes and supervises them. Cheap to clone.
///
/// ```no_run
/// # async fn demo(spec: gauntlet_runtime::InstanceSpec) -> Result<(), gauntlet_runtime::RuntimeError> {
/// use gauntlet_runtime::{local::LocalRuntime, Runtime};
/// let runtime = LocalRuntime::open(std::path::Path::new("/var/lib/gauntlet")).await?;
/// let instance = runtime.start(spec).await?;
/// // ... later, when the controller exits without stopping the applications:
/// runtime.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LocalRuntime {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    state_dir: PathBuf,
    /// `state_dir` with symlinks resolved: what instances carry in `GAUNTLET_STATE_DIR`.
    canonical_state_dir: PathBuf,
    records_path: PathBuf,
    options: LocalOptions,
    table: Mutex<Table>,
    events: Mutex<VecDeque<RuntimeEvent>>,
    /// Serialises writers of `instances.json`, so a stale snapshot never overwrites a newer.
    persist_lock: Mutex<()>,
    artifacts: artifact::ArtifactStore,
    probe_client: reqwest::Client,
    shutdown: watch::Sender<bool>,
    /// The `flock` on `runtime/lock`; released by `shutdown` or when the runtime is dropped.
    lock_file: Mutex<Option<File>>,
    suffix_seed: AtomicU64,
}

#[derive(Default)]
struct Table {
    slots: BTreeMap<InstanceId, Slot>,
    shut_down: bool,
}

struct Slot {
    instance: Instance,
    spec: InstanceSpec,
    start_time: Option<u64>,
    control: watch::Sender<Control>,
    /// Becomes `true` when the supervisor has stopped the process after `Control::Stop`.
    done: watch::Receiver<bool>,
    task: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind, still consistent enough to read.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl LocalRuntime {
    /// Opens the runtime on `state_dir` with default options, re-adopting the instances a
    /// previous controller left running.
    pub async fn open(state_dir: &Path) -> Result<LocalRuntime, RuntimeError> {
        Self::open_with(state_dir, LocalOptions::default()).await
    }

    /// [`LocalRuntime::open`] with explicit options.
    pub async fn open_with(
        state_dir: &Path,
        options: LocalOptions,
    ) -> Result<LocalRuntime, RuntimeError> {
        let state_error = |path: &Path, source| RuntimeError::State {
            path: path.to_path_buf(),
            source,
        };
        let runtime_dir = state_dir.join("runtime");
        std::fs::create_dir_all(&runtime_dir).map_err(|e| state_error(&runtime_dir, e))?;
        let canonical_state_dir =
            std::fs::canonicalize(state_dir).map_err(|e| state_error(state_dir, e))?;
        let lock_path = runtime_dir.join("lock");
        let lock_file = File::create(&lock_path).map_err(|e| state_error(&lock_path, e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let os = std::io::Error::last_os_error();
            let source = if os.raw_os_error() == Some(libc::EWOULDBLOCK) {
                std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "another Gauntlet controller has this state directory open",
                )
            } else {
                os
            };
            return Err(state_error(&lock_path, source));
        }

        let records_path = runtime_dir.join("instances.json");
        let records = records::load(&records_path)?;
        let artifacts = artifact::ArtifactStore::new(
            state_dir.join("artifacts"),
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| RuntimeError::Io(std::io::Error::other(e)))?,
        );
        artifacts.remove_partials();
        // Probes target this host: never route them through an HTTP proxy from the
        // environment, and judge a redirect by its own status, as the kubelet does.
        let probe_client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RuntimeError::Io(std::io::Error::other(e)))?;

        let inner = Arc::new(Inner {
            state_dir: state_dir.to_path_buf(),
            canonical_state_dir,
            records_path,
            options,
            table: Mutex::new(Table::default()),
            events: Mutex::new(VecDeque::new()),
            persist_lock: Mutex::new(()),
            artifacts,
            probe_client,
            shutdown: watch::Sender::new(false),
            lock_file: Mutex::new(Some(lock_file)),
            suffix_seed: AtomicU64::new(
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish(),
            ),
        });

        let found = survivors::scan(&inner.canonical_state_dir);
        let recovery = survivors::recover(&records, found, process::is_alive);
        let runtime = LocalRuntime { inner };
        for (record, initial) in records.into_iter().zip(recovery.initial) {
            let running = initial.running();
            // An adopted process that was ready stays ready: a controller restart must not
            // withdraw a serving instance. Its probe keeps running and demotes it as usual.
            let phase = if initial.ready() {
                Phase::Ready
            } else {
                Phase::Starting
            };
            let instance = Instance {
                id: record.id,
                app: record.spec.app.clone(),
                revision: record.spec.revision.clone(),
                port: record.port,
                pid: running.map(|(pid, _)| pid),
                phase,
                restarts: record.restarts,
                created_ms: record.created_ms,
            };
            let start_time = running.map(|(_, start_time)| start_time);
            runtime.insert_and_supervise(instance, record.spec, start_time, initial);
        }
        // The supervisors already run; a failed write is retried at their next change.
        runtime.inner.persist_or_warn();
        runtime.inner.stop_orphans(recovery.orphans).await;
        Ok(runtime)
    }

    /// Stops supervising without stopping any process, as when the controller exits or is
    /// upgraded: instances keep running and the next [`LocalRuntime::open`] adopts them.
    /// Waits for every supervisor to finish and releases the state directory.
    pub async fn shutdown(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut table = lock(&self.inner.table);
            table.shut_down = true;
            table
                .slots
                .values_mut()
                .filter_map(|s| s.task.take())
                .collect()
        };
        self.inner.shutdown.send_replace(true);
        for task in tasks {
            let _ = task.await;
        }
        if let Err(e) = self.inner.persist() {
            tracing::warn!(error = %e, "could not save runtime state at shutdown");
        }
        lock(&self.inner.lock_file).take();
    }

    /// The state directory this runtime was opened on.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// The live log files of `app`'s instances (see [`log_files`]).
    pub fn log_files(&self, app: &str) -> Vec<PathBuf> {
        log_files(&self.inner.state_dir, app)
    }

    /// The live log file of one instance, whether or not it exists yet.
    pub fn log_file(&self, instance: &Instance) -> PathBuf {
        log_file(&self.inner.state_dir, &instance.app, &instance.id.0)
    }

    fn insert_and_supervise(
        &self,
        instance: Instance,
        spec: InstanceSpec,
        start_time: Option<u64>,
        initial: Initial,
    ) {
        let (control_tx, control_rx) = watch::channel(Control::Run);
        let (done_tx, done_rx) = watch::channel(false);
        let supervisor = Supervisor::new(
            self.inner.clone(),
            &instance,
            spec.clone(),
            control_rx,
            self.inner.shutdown.subscribe(),
            done_tx,
        );
        let id = instance.id.clone();
        let mut table = lock(&self.inner.table);
        table.slots.insert(
            id.clone(),
            Slot {
                instance,
                spec,
                start_time,
                control: control_tx,
                done: done_rx,
                task: None,
            },
        );
        // Spawned under the lock so the task handle is in the slot before anyone can stop it.
        let task = tokio::spawn(supervisor.run(initial));
        if let Some(slot) = table.slots.get_mut(&id) {
            slot.task = Some(task);
        }
    }

    fn new_id(&self, spec: &InstanceSpec, table: &Table) -> InstanceId {
        loop {
            // A per-process random seed stepped by a large odd constant: distinct suffixes
            // without a random-number dependency.
            let n = self
                .inner
                .suffix_seed
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
            let id = InstanceId(format!("{}-{}-{}", spec.app, spec.revision, id_suffix(n)));
            if !table.slots.contains_key(&id) {
                return id;
            }
        }
    }

    /// A free port on 127.0.0.1 that no other instance of this runtime holds.
    fn free_port(&self) -> Result<u16, RuntimeError> {
        for _ in 0..20 {
            let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
                .local_addr()?
                .port();
            let taken = lock(&self.inner.table)
                .slots
                .values()
                .any(|s| s.instance.port == port);
            if !taken {
                return Ok(port);
            }
        }
        Err(RuntimeError::Io(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no free port on 127.0.0.1 after 20 attempts",
        )))
    }
}

/// The random part of an instance id: [`ID_SUFFIX_LEN`] base-36 digits of `n`.
fn id_suffix(n: u64) -> String {
    (0..ID_SUFFIX_LEN)
        .map(|i| {
            let digit = ((n >> (i * 6)) % 36) as u32;
            char::from_digit(digit, 36).unwrap_or('0')
        })
        .collect()
}

/// Whether `id` has the shape [`LocalRuntime`] gives instance ids: `{app}-{revision}-{suffix}`
/// with names [`check_name`] accepts and a suffix of lowercase letters and digits.
fn is_instance_id(id: &str) -> bool {
    let Some((name, suffix)) = id.rsplit_once('-') else {
        return false;
    };
    let Some((app, revision)) = name.rsplit_once('-') else {
        return false;
    };
    suffix.len() == ID_SUFFIX_LEN
        && suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        && check_name("application", app).is_ok()
        && check_name("revision", revision).is_ok()
}

/// Application names and revisions become file names; refuse anything that could escape the
/// state directory.
fn check_name(what: &str, value: &str) -> Result<(), RuntimeError> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec(format!(
            "{what} {value:?} must be non-empty and use only letters, digits, '-', '_' and '.'"
        )))
    }
}

impl Runtime for LocalRuntime {
    fn instances(&self) -> Vec<Instance> {
        lock(&self.inner.table)
            .slots
            .values()
            .map(|s| s.instance.clone())
            .collect()
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Instance, RuntimeError> {
        check_name("application", &spec.app)?;
        check_name("revision", &spec.revision)?;
        if spec.process.command.first().is_none_or(|c| c.is_empty()) {
            return Err(RuntimeError::InvalidSpec(format!(
                "application {}: the command is empty",
                spec.app
            )));
        }
        let port = self.free_port()?;
        let instance = {
            let table = lock(&self.inner.table);
            if table.shut_down {
                return Err(RuntimeError::ShutDown);
            }
            Instance {
                id: self.new_id(&spec, &table),
                app: spec.app.clone(),
                revision: spec.revision.clone(),
                port,
                pid: None,
                phase: Phase::Starting,
                restarts: 0,
                created_ms: now_ms(),
            }
        };
        self.insert_and_supervise(instance.clone(), spec, None, Initial::Fresh);
        self.inner.persist()?;
        Ok(instance)
    }

    async fn stop(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        let mut done = {
            let mut table = lock(&self.inner.table);
            if table.shut_down {
                return Err(RuntimeError::ShutDown);
            }
            let Some(slot) = table.slots.get_mut(id) else {
                return Ok(());
            };
            slot.instance.phase = Phase::Stopping;
            slot.control.send_replace(Control::Stop);
            slot.done.clone()
        };
        // An error means the supervisor ended without stopping the process: the runtime shut
        // down meanwhile. Keep the record so the next controller adopts the instance.
        if done.wait_for(|d| *d).await.is_err() {
            return Err(RuntimeError::ShutDown);
        }
        let removed = lock(&self.inner.table).slots.remove(id);
        if let Some(slot) = removed {
            self.inner.persist()?;
            let dir = self
                .inner
                .state_dir
                .join("instances")
                .join(&slot.instance.id.0);
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        Ok(())
    }

    fn drain_events(&self) -> Vec<RuntimeEvent> {
        lock(&self.inner.events).drain(..).collect()
    }
}

impl Inner {
    fn persist(&self) -> Result<(), RuntimeError> {
        let _writer = lock(&self.persist_lock);
        let records: Vec<InstanceRecord> = lock(&self.table)
            .slots
            .values()
            .map(|s| InstanceRecord {
                id: s.instance.id.clone(),
                spec: s.spec.clone(),
                port: s.instance.port,
                pid: s.instance.pid,
                start_time: s.start_time,
                restarts: s.instance.restarts,
                created_ms: s.instance.created_ms,
                ready: s.instance.phase == Phase::Ready,
            })
            .collect();
        records::save(&self.records_path, records)
    }

    /// Persists, logging instead of failing: a supervisor cannot do anything better with the
    /// error, and the next change retries the write.
    fn persist_or_warn(&self) {
        if let Err(e) = self.persist() {
            tracing::warn!(error = %e, "could not save runtime state");
        }
    }

    /// Applies `f` to the instance; false when it is no longer known.
    fn update(&self, id: &InstanceId, f: impl FnOnce(&mut Slot)) -> bool {
        match lock(&self.table).slots.get_mut(id) {
            Some(slot) => {
                f(slot);
                true
            }
            None => false,
        }
    }

    /// The instance's current phase; `None` when it is no longer known.
    fn phase(&self, id: &InstanceId) -> Option<Phase> {
        lock(&self.table)
            .slots
            .get(id)
            .map(|slot| slot.instance.phase.clone())
    }

    /// Sets the phase unless the instance is being stopped (stopping is final); true when it
    /// changed. When the instance becomes ready or stops being ready the records are saved,
    /// so the next controller knows whether an adopted process was serving.
    fn set_phase(&self, id: &InstanceId, phase: Phase) -> bool {
        let mut changed = false;
        let mut readiness_changed = false;
        self.update(id, |slot| {
            if slot.instance.phase != Phase::Stopping && slot.instance.phase != phase {
                readiness_changed =
                    (slot.instance.phase == Phase::Ready) != (phase == Phase::Ready);
                slot.instance.phase = phase;
                changed = true;
            }
        });
        if readiness_changed {
            self.persist_or_warn();
        }
        changed
    }

    /// Stops the process groups of instances that were never recorded, all at once, and
    /// reports each one stopped.
    async fn stop_orphans(&self, orphans: Vec<survivors::Survivor>) {
        let mut stopping = tokio::task::JoinSet::new();
        for orphan in orphans {
            stopping.spawn(async move {
                let gone =
                    process::stop_group(orphan.pid, orphan.start_time, ORPHAN_GRACE_PERIOD).await;
                (orphan, gone)
            });
        }
        while let Some(joined) = stopping.join_next().await {
            let Ok((orphan, gone)) = joined else {
                continue;
            };
            if gone {
                self.emit(
                    &orphan.app,
                    &orphan.instance,
                    "orphan-stopped",
                    format!(
                        "pid {} runs as an instance that was never recorded (the controller \
                         stopped before saving it); stopped its process group",
                        orphan.pid
                    ),
                );
            } else {
                tracing::warn!(
                    instance = %orphan.instance,
                    pid = orphan.pid,
                    "an unrecorded instance's process survived SIGKILL"
                );
            }
        }
    }

    fn emit(&self, app: &str, id: &InstanceId, action: &str, detail: String) {
        tracing::info!(app, instance = %id, action, %detail, "runtime event");
        let mut events = lock(&self.events);
        if events.len() >= MAX_QUEUED_EVENTS {
            events.pop_front();
        }
        events.push_back(RuntimeEvent {
            app: app.to_string(),
            instance: id.clone(),
            action: action.to_string(),
            detail,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_the_state_directory_are_refused() {
        assert!(check_name("application", "checkout-2").is_ok());
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(check_name("application", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_this_runtime_creates_are_recognised_and_others_are_not() {
        for n in [0, 1, u64::MAX, 0x9E37_79B9_7F4A_7C15] {
            let id = format!("check-out-3f2a-{}", id_suffix(n));
            assert!(is_instance_id(&id), "{id}");
        }
        for bad in [
            "",
            "abc12",
            "web-abc12",
            "web-abc-ABCDE",
            "web--abcde",
            "a/b-c-abcde",
        ] {
            assert!(!is_instance_id(bad), "{bad:?}");
        }
    }
}
