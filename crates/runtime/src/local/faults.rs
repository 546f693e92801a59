//! Faults injected into local instances by chaos experiments, each held by a *fault agent*: a
//! small `gauntlet fault run …` process in its own session that applies one fault, holds it
//! until its lease expires or it is told to stop (SIGTERM or SIGINT), removes it and exits. The
//! controller never holds a fault itself, so a controller that crashes, is killed or is upgraded
//! leaves no fault behind past its lease: the agent ends it on its own clock.
//!
//! Kinds ([`Fault`]):
//! - **pause**: SIGSTOP to the instance's process group, SIGCONT at the end;
//! - **cpu**: `cores` threads, each busy for `loadPercent` of every 100 ms;
//! - **memory**: `bytes` allocated and every page written, so they are resident;
//! - **disk fill**: a file of `bytes` in a directory (the application's working directory),
//!   written and fsynced, deleted at the end; refused when it would leave less than
//!   [`DISK_HEADROOM`] free.
//!
//! Killing an instance needs no agent: it is one signal, and the runtime's supervisor restarts
//! the instance as it would after a crash. HTTP faults and dependency outages live in the proxy,
//! whose rules carry their own expiry.
//!
//! **Records.** Before it applies its fault an agent writes `{dir}/{id}.json` (atomically:
//! temporary file, fsync, rename) and it removes the record once the fault is removed. A record
//! whose agent is gone therefore names a fault nobody holds: [`sweep`] removes those (SIGCONT
//! for a pause, the file for a disk fill; CPU and memory ended with the agent's process). The
//! controller sweeps when it starts and after an abort, so even a SIGKILLed agent leaves
//! nothing behind once the controller looks. [`stop_all`] is the abort: SIGTERM to every agent,
//! which ends its fault at once, then a sweep of any that did not exit in time.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::process::{is_alive, proc_stat, signal_group, start_time};

/// A disk fill never leaves less than this free on the filesystem it fills.
pub const DISK_HEADROOM: u64 = 256 * 1024 * 1024;
/// How often an agent looks at its lease and its stop flag.
const TICK: Duration = Duration::from_millis(5);
/// The CPU burner's duty cycle.
const CPU_SLICE: Duration = Duration::from_millis(100);

/// One fault an agent holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Fault {
    /// SIGSTOP the process group led by `pid` (an instance's), SIGCONT at the end. `start_time`
    /// (from `/proc`) makes sure a reused pid is never signalled.
    Pause { pid: u32, start_time: u64 },
    /// `cores` busy threads at `load_percent` each.
    Cpu { cores: u32, load_percent: u32 },
    /// `bytes` held resident.
    Memory { bytes: u64 },
    /// A file of `bytes` in `dir`.
    DiskFill { dir: PathBuf, bytes: u64 },
}

/// What an agent writes before it applies its fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultRecord {
    pub id: String,
    pub fault: Fault,
    pub agent_pid: u32,
    pub agent_start_time: u64,
    /// The lease: the agent removes the fault at this Unix time (ms) at the latest.
    pub until_ms: u64,
    pub started_ms: u64,
    /// The disk fill's file, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// Why a fault could not be applied.
#[derive(Debug, Error)]
pub enum FaultError {
    #[error("fault id `{0}` must be 1-64 characters of letters, digits, `-` and `_`")]
    BadId(String),
    #[error("process {0} is not running (or its pid was reused)")]
    NoProcess(u32),
    #[error("cpu fault: cores must be at least 1 and loadPercent 1-100, got {cores} and {load}")]
    Cpu { cores: u32, load: u32 },
    #[error(
        "disk fill of {bytes} bytes in {dir} would leave less than {headroom} bytes free \
         ({available} available)"
    )]
    DiskFull {
        dir: PathBuf,
        bytes: u64,
        available: u64,
        headroom: u64,
    },
    #[error("memory fault: cannot allocate {0} bytes")]
    Memory(u64),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FaultError {
    let what = what.into();
    move |source| FaultError::Io { what, source }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn record_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

fn write_record(dir: &Path, record: &FaultRecord) -> Result<(), FaultError> {
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let path = record_path(dir, &record.id);
    let tmp = dir.join(format!(".{}.json.tmp", record.id));
    let json = serde_json::to_vec_pretty(record).expect("a fault record serializes");
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(io_err(format!("writing {}", path.display())))
}

/// The record of agent `id`, if it has written one (and it can be read).
pub fn record(dir: &Path, id: &str) -> Option<FaultRecord> {
    let bytes = fs::read(record_path(dir, id)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every record in `dir` (unreadable ones are skipped with a warning).
pub fn records(dir: &Path) -> Vec<FaultRecord> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<FaultRecord> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter_map(|p| match fs::read(&p).map(|b| serde_json::from_slice(&b)) {
            Ok(Ok(r)) => Some(r),
            Ok(Err(e)) => {
                tracing::warn!("ignoring unreadable fault record {}: {e}", p.display());
                None
            }
            Err(_) => None,
        })
        .collect();
    out.sort_by(|a: &FaultRecord, b| a.id.cmp(&b.id));
    out
}

/// Set by SIGTERM or SIGINT in an agent.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Makes SIGTERM and SIGINT end the agent's fault instead of killing it with the fault in place.
pub fn install_stop_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
    }
}

/// How an agent's fault ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Ended {
    /// The lease expired.
    Expired,
    /// SIGTERM or SIGINT (an abort).
    Stopped,
    /// The paused process exited by itself (killed by someone else).
    TargetGone,
}

/// The agent: applies `fault` under `id`, holds it until `until_ms` (Unix ms) or a stop
/// signal, removes it and its record. Call [`install_stop_handlers`] first.
pub fn run_agent(dir: &Path, id: &str, fault: Fault, until_ms: u64) -> Result<Ended, FaultError> {
    if !valid_id(id) {
        return Err(FaultError::BadId(id.to_string()));
    }
    let me = std::process::id();
    let mut record = FaultRecord {
        id: id.to_string(),
        fault: fault.clone(),
        agent_pid: me,
        agent_start_time: start_time(me).unwrap_or(0),
        until_ms,
        started_ms: now_ms(),
        file: None,
    };
    // Checks that need no record come first, so a refused fault leaves nothing.
    match &fault {
        Fault::Pause { pid, start_time } if !is_alive(*pid, *start_time) => {
            return Err(FaultError::NoProcess(*pid));
        }
        Fault::Cpu {
            cores,
            load_percent,
        } if *cores == 0 || !(1..=100).contains(load_percent) => {
            return Err(FaultError::Cpu {
                cores: *cores,
                load: *load_percent,
            });
        }
        Fault::DiskFill { dir: target, bytes } => {
            let available = available_bytes(target).map_err(io_err(format!(
                "reading free space of {}",
                target.display()
            )))?;
            if bytes.saturating_add(DISK_HEADROOM) > available {
                return Err(FaultError::DiskFull {
                    dir: target.clone(),
                    bytes: *bytes,
                    available,
                    headroom: DISK_HEADROOM,
                });
            }
            record.file = Some(target.join(format!(".gauntlet-fault-{id}.fill")));
        }
        _ => {}
    }
    write_record(dir, &record)?;
    let held = apply(&record);
    let ended = match held {
        Ok(held) => {
            let ended = hold(dir, &record);
            drop(held);
            ended
        }
        Err(e) => {
            undo(&record);
            let _ = fs::remove_file(record_path(dir, id));
            return Err(e);
        }
    };
    undo(&record);
    let _ = fs::remove_file(record_path(dir, id));
    Ok(ended)
}

/// What an applied fault keeps alive while it is held.
enum Held {
    Nothing,
    Threads(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>),
    Memory(#[allow(dead_code)] Vec<u8>),
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::Threads(stop, threads) = self {
            stop.store(true, Ordering::SeqCst);
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

fn apply(record: &FaultRecord) -> Result<Held, FaultError> {
    match &record.fault {
        Fault::Pause { pid, .. } => {
            signal_group(*pid, libc::SIGSTOP).map_err(io_err(format!("SIGSTOP to {pid}")))?;
            Ok(Held::Nothing)
        }
        Fault::Cpu {
            cores,
            load_percent,
        } => {
            let stop = Arc::new(AtomicBool::new(false));
            let busy = CPU_SLICE * *load_percent / 100;
            let threads = (0..*cores)
                .map(|_| {
                    let stop = Arc::clone(&stop);
                    std::thread::spawn(move || burn(&stop, busy))
                })
                .collect();
            Ok(Held::Threads(stop, threads))
        }
        Fault::Memory { bytes } => {
            let len = usize::try_from(*bytes).map_err(|_| FaultError::Memory(*bytes))?;
            let mut block: Vec<u8> = Vec::new();
            block
                .try_reserve_exact(len)
                .map_err(|_| FaultError::Memory(*bytes))?;
            // Written, not just reserved: untouched pages are not resident.
            block.resize(len, 0xA5);
            Ok(Held::Memory(std::hint::black_box(block)))
        }
        Fault::DiskFill { bytes, .. } => {
            let path = record
                .file
                .as_ref()
                .expect("set before the record is written");
            fill(path, *bytes).map_err(io_err(format!("filling {}", path.display())))?;
            Ok(Held::Nothing)
        }
    }
}

fn burn(stop: &AtomicBool, busy: Duration) {
    while !stop.load(Ordering::Relaxed) {
        let slice = Instant::now();
        while slice.elapsed() < busy && !stop.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
        if let Some(rest) = CPU_SLICE.checked_sub(slice.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

fn fill(path: &Path, bytes: u64) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// How often an agent re-reads its record for a renewed lease.
const RENEWAL_CHECK: Duration = Duration::from_millis(100);

fn hold(dir: &Path, record: &FaultRecord) -> Ended {
    let mut until_ms = record.until_ms;
    let mut checked = Instant::now();
    loop {
        if STOP.load(Ordering::SeqCst) {
            return Ended::Stopped;
        }
        if checked.elapsed() >= RENEWAL_CHECK {
            checked = Instant::now();
            // The controller renews a lease by rewriting the record (see `renew`); a record
            // that is gone or unreadable keeps the lease the agent has.
            if let Some(r) = self::record(dir, &record.id) {
                until_ms = r.until_ms;
            }
        }
        if now_ms() >= until_ms {
            return Ended::Expired;
        }
        if let Fault::Pause { pid, start_time } = record.fault {
            if !is_alive(pid, start_time) {
                return Ended::TargetGone;
            }
        }
        std::thread::sleep(TICK);
    }
}

/// Removes a record's fault; safe to repeat, and safe for a fault never applied.
fn undo(record: &FaultRecord) {
    match &record.fault {
        Fault::Pause { pid, start_time } => {
            if is_alive(*pid, *start_time) {
                if let Err(e) = signal_group(*pid, libc::SIGCONT) {
                    tracing::warn!("cannot resume process group {pid}: {e}");
                }
            }
        }
        Fault::DiskFill { .. } => {
            if let Some(file) = &record.file {
                match fs::remove_file(file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!("cannot remove {}: {e}", file.display()),
                }
            }
        }
        // Threads and memory end with the agent's process.
        Fault::Cpu { .. } | Fault::Memory { .. } => {}
    }
}

fn agent_alive(record: &FaultRecord) -> bool {
    record.agent_pid != 0 && is_alive(record.agent_pid, record.agent_start_time)
}

/// Removes the fault of every record whose agent is gone, and the record; returns their ids.
pub fn sweep(dir: &Path) -> Vec<String> {
    let mut swept = Vec::new();
    for record in records(dir) {
        if agent_alive(&record) {
            continue;
        }
        undo(&record);
        let _ = fs::remove_file(record_path(dir, &record.id));
        swept.push(record.id);
    }
    swept
}

/// Ends every fault in `dir`: SIGTERM to every agent (each removes its fault within a few
/// milliseconds), up to `grace` for them to exit, then SIGKILL to any left and a sweep. Returns
/// the ids of the faults ended.
pub fn stop_all(dir: &Path, grace: Duration) -> Vec<String> {
    stop_records(dir, grace, records(dir))
}

fn stop_records(dir: &Path, grace: Duration, all: Vec<FaultRecord>) -> Vec<String> {
    for r in all.iter().filter(|r| agent_alive(r)) {
        // SAFETY: kill has no memory-safety preconditions; the pid was checked against its
        // start time just above.
        unsafe {
            libc::kill(r.agent_pid as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && all.iter().any(agent_alive) {
        std::thread::sleep(Duration::from_millis(2));
    }
    for r in all.iter().filter(|r| agent_alive(r)) {
        // SAFETY: as above.
        unsafe {
            libc::kill(r.agent_pid as libc::pid_t, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && all.iter().any(agent_alive) {
        std::thread::sleep(Duration::from_millis(2));
    }
    // Only these records: other agents keep their faults.
    for r in &all {
        if !agent_alive(r) && record_path(dir, &r.id).exists() {
            undo(r);
            let _ = fs::remove_file(record_path(dir, &r.id));
        }
    }
    all.into_iter().map(|r| r.id).collect()
}

/// Moves the lease of agent `id` to `until_ms` (earlier or later); the agent picks it up within
/// 100 ms. An agent that is gone is left alone: its record is for [`sweep`].
pub fn renew(dir: &Path, id: &str, until_ms: u64) -> Result<(), FaultError> {
    let Some(mut record) = record(dir, id) else {
        return Ok(());
    };
    if !agent_alive(&record) {
        return Ok(());
    }
    record.until_ms = until_ms;
    write_record(dir, &record)
}

/// [`stop_all`] for the agents whose id `matches`.
pub fn stop_matching(dir: &Path, grace: Duration, matches: impl Fn(&str) -> bool) -> Vec<String> {
    stop_records(
        dir,
        grace,
        records(dir)
            .into_iter()
            .filter(|r| matches(&r.id))
            .collect(),
    )
}

/// Whether `pid` is stopped (SIGSTOP), from `/proc`.
pub fn is_stopped(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state == 'T')
}

fn available_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_file_name_safe() {
        assert!(valid_id("exp-1_run-2"));
        assert!(!valid_id(""));
        assert!(!valid_id("../x"));
        assert!(!valid_id(&"a".repeat(65)));
    }

    #[test]
    fn a_record_whose_agent_is_gone_is_swept_and_its_file_removed() {
        let dir = tempfile::tempdir().unwrap();
        let fill = dir.path().join(".gauntlet-fault-x.fill");
        fs::write(&fill, b"junk").unwrap();
        let record = FaultRecord {
            id: "x".into(),
            fault: Fault::DiskFill {
                dir: dir.path().to_path_buf(),
                bytes: 4,
            },
            // Pid 0 is never an agent: this record's agent is gone.
            agent_pid: 0,
            agent_start_time: 0,
            until_ms: u64::MAX,
            started_ms: 0,
            file: Some(fill.clone()),
        };
        write_record(dir.path(), &record).unwrap();
        assert_eq!(records(dir.path()), [record]);
        assert_eq!(sweep(dir.path()), ["x"]);
        assert!(!fill.exists());
        assert!(records(dir.path()).is_empty());
    }

    #[test]
    fn a_live_agents_record_is_not_swept() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let record = FaultRecord {
            id: "mine".into(),
            fault: Fault::Memory { bytes: 1 },
            agent_pid: me,
            agent_start_time: start_time(me).unwrap(),
            until_ms: u64::MAX,
            started_ms: 0,
            file: None,
        };
        write_record(dir.path(), &record).unwrap();
        assert!(sweep(dir.path()).is_empty());
        assert_eq!(records(dir.path()).len(), 1);
    }

    #[test]
    fn refused_faults_leave_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let err = run_agent(
            dir.path(),
            "cpu",
            Fault::Cpu {
                cores: 0,
                load_percent: 50,
            },
            now_ms() + 1_000,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("cores must be at least 1"),
            "{err}"
        );
        let err = run_agent(
            dir.path(),
            "disk",
            Fault::DiskFill {
                dir: dir.path().to_path_buf(),
                bytes: u64::MAX / 2,
            },
            now_ms() + 1_000,
        )
        .unwrap_err();
        assert!(err.to_string().contains("would leave less than"), "{err}");
        let err = run_agent(
            dir.path(),
            "pause",
            Fault::Pause {
                pid: u32::MAX - 1,
                start_time: 1,
            },
            now_ms() + 1_000,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not running"), "{err}");
        assert!(records(dir.path()).is_empty());
    }

    #[test]
    fn a_held_fault_ends_at_its_lease() {
        let dir = tempfile::tempdir().unwrap();
        let ended = run_agent(
            dir.path(),
            "mem",
            Fault::Memory { bytes: 1 << 20 },
            now_ms() + 50,
        )
        .unwrap();
        assert_eq!(ended, Ended::Expired);
        assert!(records(dir.path()).is_empty(), "the record is removed");
    }
}
