//! Operating-system processes: turning an instance spec into a command line, starting it in
//! its own session, signalling its whole process group, and recognising a process again
//! after a controller restart.
//!
//! Every instance is started with `setsid`, so its process id is also its process-group id
//! and it has no controlling terminal: a Ctrl-C or SIGHUP aimed at the controller does not
//! reach it, and stopping it signals everything it forked. Its output goes straight to a log
//! file opened with `O_APPEND`; there are no pipes to the controller, so the instance keeps
//! running (and keeps logging) when the controller dies.
//!
//! Besides `PORT`, every instance gets `GAUNTLET_APP`, `GAUNTLET_REVISION`,
//! `GAUNTLET_INSTANCE` (its id) and `GAUNTLET_STATE_DIR` (the canonical state directory of the
//! runtime that started it) in its environment. The last two let a controller recognise its
//! instances in `/proc` even when their pids were never recorded (see `survivors.rs`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gauntlet_spec::substitute_port;

use crate::{InstanceId, InstanceSpec, RuntimeError};

/// The environment variable naming the application.
pub(crate) const APP_ENV: &str = "GAUNTLET_APP";
/// The environment variable naming the instance.
pub(crate) const INSTANCE_ENV: &str = "GAUNTLET_INSTANCE";
/// The environment variable naming the canonical state directory of the runtime.
pub(crate) const STATE_DIR_ENV: &str = "GAUNTLET_STATE_DIR";

/// Everything needed to start (or probe with `exec`) one instance: the resolved program,
/// arguments, extra environment and working directory, with `${PORT}` substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to the controller's inherited environment. Values are `OsString` because the
    /// state directory, a path, need not be UTF-8.
    pub env: BTreeMap<String, OsString>,
    /// `None` inherits the controller's working directory.
    pub cwd: Option<PathBuf>,
    pub port: u16,
}

/// Resolves `spec` for an instance listening on `port`, started by the runtime whose
/// canonical state directory is `state_dir`.
///
/// The command's first word is looked up inside `artifact_dir` first when it is a bare name
/// that exists there, joined to it when it is a relative path, and otherwise left to `PATH`.
/// A relative working directory is inside the artifact when there is one, else inside
/// `instance_dir`; without one the artifact directory (if any) is the working directory.
pub(crate) fn plan(
    spec: &InstanceSpec,
    id: &InstanceId,
    port: u16,
    artifact_dir: Option<&Path>,
    instance_dir: &Path,
    state_dir: &Path,
) -> Launch {
    let process = &spec.process;
    let mut words = process
        .command
        .iter()
        .chain(process.args.iter())
        .map(|w| substitute_port(w, port));
    // An empty command (refused by `start`, so only in a hand-edited record) fails at spawn.
    let first = words.next().unwrap_or_default();
    let program = resolve_program(&first, artifact_dir);

    let mut env: BTreeMap<String, OsString> = process
        .env
        .iter()
        .map(|(k, v)| (k.clone(), substitute_port(v, port).into()))
        .collect();
    // Set last so a manifest cannot make the instance disagree with the runtime about them.
    env.insert("PORT".into(), port.to_string().into());
    env.insert(APP_ENV.into(), spec.app.clone().into());
    env.insert("GAUNTLET_REVISION".into(), spec.revision.clone().into());
    env.insert(INSTANCE_ENV.into(), id.0.clone().into());
    env.insert(STATE_DIR_ENV.into(), state_dir.as_os_str().to_owned());

    let cwd = match (&process.working_dir, artifact_dir) {
        (Some(dir), base) => {
            let dir = PathBuf::from(substitute_port(dir, port));
            if dir.is_absolute() {
                Some(dir)
            } else {
                Some(base.unwrap_or(instance_dir).join(dir))
            }
        }
        (None, Some(base)) => Some(base.to_path_buf()),
        (None, None) => None,
    };

    Launch {
        program,
        args: words.collect(),
        env,
        cwd,
        port,
    }
}

fn resolve_program(first: &str, artifact_dir: Option<&Path>) -> PathBuf {
    let path = Path::new(first);
    match artifact_dir {
        Some(base) if path.is_relative() => {
            let inside = base.join(path);
            // A bare name falls back to PATH when the artifact does not contain it, so
            // `command: [python3, app.py]` works with an artifact holding only `app.py`.
            if first.contains('/') || inside.is_file() {
                inside
            } else {
                path.to_path_buf()
            }
        }
        _ => path.to_path_buf(),
    }
}

/// Starts `launch` in a new session with stdin from `/dev/null` and stdout and stderr
/// appended to `log`.
pub(crate) fn spawn(launch: &Launch, log: &Path) -> Result<tokio::process::Child, RuntimeError> {
    let spawn_error = |source: io::Error| RuntimeError::Spawn {
        command: launch.program.display().to_string(),
        source,
    };
    let out = super::logs::open_for_append(log).map_err(|source| RuntimeError::State {
        path: log.to_path_buf(),
        source,
    })?;
    let err = out.try_clone().map_err(spawn_error)?;
    if let Some(cwd) = &launch.cwd {
        std::fs::create_dir_all(cwd).map_err(spawn_error)?;
    }

    let mut cmd = tokio::process::Command::new(&launch.program);
    cmd.args(&launch.args)
        .envs(&launch.env)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // The instance must outlive the controller; dropping the handle must not kill it.
        .kill_on_drop(false);
    if let Some(cwd) = &launch.cwd {
        cmd.current_dir(cwd);
    }
    // SAFETY: the closure runs in the forked child before exec and calls only setsid, which
    // is async-signal-safe, and reads errno through `last_os_error`.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(spawn_error)
}

/// Sends `signal` to the process group led by `pgid`. A group that no longer exists is not
/// an error: the goal (the group is gone or signalled) is reached either way.
pub fn signal_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    // kill(-0) signals our own group and kill(-1) every process we may signal: never do that.
    let pgid = libc::pid_t::try_from(pgid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing to signal process group {pgid}"),
            )
        })?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// The fields of `/proc/{pid}/stat` the runtime needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 5: the process group. Equal to the pid for a process started with `setsid`.
    pub pgid: u32,
    /// Field 22: clock ticks after boot when the process started. With the pid it identifies
    /// a process uniquely, because a reused pid has a later start time.
    pub start_time: u64,
}

/// When `pid` started (field 22 of its `/proc` stat), which with the pid identifies a process
/// for its whole life; `None` when there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|s| s.start_time)
}

pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses `/proc/{pid}/stat`. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so the fields are counted after its last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field 5 is `fields[2]` and field 22 `fields[19]`.
    let state = fields.first()?.chars().next()?;
    let pgid = fields.get(2)?.parse().ok()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(ProcStat {
        state,
        pgid,
        start_time,
    })
}

impl ProcStat {
    /// Not a zombie waiting for its parent and not dead.
    pub fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Whether the process that had `start_time` still runs as `pid` (not a zombie, not a new
/// process that reused the pid).
pub fn is_alive(pid: u32, start_time: u64) -> bool {
    matches!(proc_stat(pid), Some(s) if s.start_time == start_time && s.is_running())
}

/// Stops a process that is not our child, and its process group: SIGTERM, up to `grace` for
/// the leader to exit, then SIGKILL. Its exit status is not ours to see, so `/proc` is
/// polled. Returns whether the leader is gone.
pub async fn stop_group(pid: u32, start_time: u64, grace: Duration) -> bool {
    if let Err(e) = signal_group(pid, libc::SIGTERM) {
        tracing::warn!(pid, error = %e, "cannot send SIGTERM");
    }
    let mut gone = wait_gone(pid, start_time, grace, Duration::from_millis(50)).await;
    if !gone {
        let _ = signal_group(pid, libc::SIGKILL);
        // SIGKILL cannot be ignored; this only waits for the kernel to finish.
        gone = wait_gone(
            pid,
            start_time,
            Duration::from_secs(10),
            Duration::from_millis(20),
        )
        .await;
    }
    // Anything the leader forked that ignored SIGTERM is in its group: end it too.
    let _ = signal_group(pid, libc::SIGKILL);
    gone
}

async fn wait_gone(pid: u32, start_time: u64, within: Duration, poll: Duration) -> bool {
    let deadline = Instant::now() + within;
    while is_alive(pid, start_time) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(poll).await;
    }
    true
}

/// How a process ended, as users read it: `exit status 3` or `signal 9 (SIGKILL)`.
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(sig) => match signal_name(sig) {
            Some(name) => format!("signal {sig} ({name})"),
            None => format!("signal {sig}"),
        },
        None => status.to_string(),
    }
}

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gauntlet_spec::ProcessSpec;

    fn spec(command: &[&str], args: &[&str]) -> InstanceSpec {
        InstanceSpec {
            app: "web".into(),
            revision: "abc".into(),
            process: ProcessSpec {
                command: command.iter().map(|s| s.to_string()).collect(),
                args: args.iter().map(|s| s.to_string()).collect(),
                env: [("URL".to_string(), "http://127.0.0.1:${PORT}/".to_string())].into(),
                working_dir: None,
                artifact: None,
                termination_grace_period_seconds: None,
            },
            readiness: None,
        }
    }

    #[test]
    fn plan_substitutes_port_everywhere_and_sets_gauntlet_env() {
        let id = InstanceId("web-abc-x1".into());
        let mut s = spec(&["srv", "--port=${PORT}"], &["${PORT}"]);
        s.process.working_dir = Some("run-${PORT}".into());
        let l = plan(
            &s,
            &id,
            4242,
            None,
            Path::new("/state/instances/web-abc-x1"),
            Path::new("/state"),
        );
        assert_eq!(l.program, PathBuf::from("srv"));
        assert_eq!(l.args, vec!["--port=4242", "4242"]);
        assert_eq!(l.env["URL"], "http://127.0.0.1:4242/");
        assert_eq!(l.env["PORT"], "4242");
        assert_eq!(l.env["GAUNTLET_INSTANCE"], "web-abc-x1");
        assert_eq!(l.env["GAUNTLET_REVISION"], "abc");
        assert_eq!(l.env["GAUNTLET_STATE_DIR"], "/state");
        assert_eq!(
            l.cwd,
            Some(PathBuf::from("/state/instances/web-abc-x1/run-4242"))
        );
    }

    #[test]
    fn plan_resolves_relative_command_and_cwd_inside_the_artifact() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app"), "").unwrap();
        let id = InstanceId("i".into());
        let l = plan(
            &spec(&["app"], &[]),
            &id,
            1,
            Some(dir.path()),
            Path::new("/x"),
            Path::new("/state"),
        );
        assert_eq!(l.program, dir.path().join("app"));
        assert_eq!(l.cwd.as_deref(), Some(dir.path()));
        let l = plan(
            &spec(&["sh"], &[]),
            &id,
            1,
            Some(dir.path()),
            Path::new("/x"),
            Path::new("/state"),
        );
        assert_eq!(l.program, PathBuf::from("sh"));
        let l = plan(
            &spec(&["bin/run"], &[]),
            &id,
            1,
            Some(dir.path()),
            Path::new("/x"),
            Path::new("/state"),
        );
        assert_eq!(l.program, dir.path().join("bin/run"));
    }

    #[test]
    fn parse_stat_handles_parentheses_in_the_command_name() {
        let text = "1234 (we ird) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                state: 'S',
                pgid: 1234,
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_is_alive_with_its_start_time_and_not_with_another() {
        let me = std::process::id();
        let stat = proc_stat(me).unwrap();
        assert!(is_alive(me, stat.start_time));
        assert!(!is_alive(me, stat.start_time + 1));
    }

    #[test]
    fn exits_are_described_as_users_read_them() {
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "signal 9 (SIGKILL)");
    }

    #[test]
    fn signalling_group_zero_or_one_is_refused() {
        assert!(signal_group(0, 0).is_err());
        assert!(signal_group(1, 0).is_err());
    }
}
