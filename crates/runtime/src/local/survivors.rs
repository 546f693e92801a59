//! Processes that outlived a controller without being recorded, and what to do with them.
//!
//! A supervisor records an instance's pid only after spawning it, and [`super::LocalRuntime`]'s
//! `start` records a new instance only after its supervisor began. A controller that dies in
//! between leaves a running process the records do not name. So when the runtime opens, it
//! scans `/proc` for *survivors*: process-group leaders (the process we started with
//! `setsid`, not something it forked) owned by our user whose environment carries
//! `GAUNTLET_INSTANCE` and this runtime's `GAUNTLET_STATE_DIR` (see `process.rs`).
//!
//! [`recover`] then decides, purely, how each recorded instance begins: adopt the recorded
//! process when it still runs, else adopt a survivor carrying its id, else start anew. A
//! survivor of an instance that is not recorded at all is an orphan, to be stopped.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::process::{self, APP_ENV, INSTANCE_ENV, STATE_DIR_ENV};
use super::records::InstanceRecord;
use super::supervisor::Initial;
use crate::InstanceId;

/// Who a process says it is, from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub instance: InstanceId,
    /// Empty when the environment does not name it (only for the audit event).
    pub app: String,
    pub state_dir: PathBuf,
}

/// A live process-group leader that belongs to this runtime's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Survivor {
    pub pid: u32,
    pub start_time: u64,
    pub instance: InstanceId,
    pub app: String,
}

/// How the runtime resumes: one [`Initial`] per record, in the records' order, and the
/// orphans to stop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Recovery {
    pub initial: Vec<Initial>,
    pub orphans: Vec<Survivor>,
}

/// Reads `GAUNTLET_INSTANCE` and `GAUNTLET_STATE_DIR` (and `GAUNTLET_APP`) from the contents
/// of `/proc/{pid}/environ`: `KEY=value` entries separated by NUL bytes. `None` unless both
/// are present, the instance id is UTF-8 and looks like one this runtime creates.
pub(crate) fn parse_environ(environ: &[u8]) -> Option<Identity> {
    let mut instance = None;
    let mut app = None;
    let mut state_dir = None;
    for entry in environ.split(|b| *b == 0) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (key, value) = (&entry[..eq], &entry[eq + 1..]);
        if key == INSTANCE_ENV.as_bytes() {
            instance = Some(value);
        } else if key == STATE_DIR_ENV.as_bytes() {
            state_dir = Some(value);
        } else if key == APP_ENV.as_bytes() {
            app = Some(value);
        }
    }
    let instance = std::str::from_utf8(instance?).ok()?;
    let state_dir = state_dir.filter(|d| !d.is_empty())?;
    if !super::is_instance_id(instance) {
        return None;
    }
    Some(Identity {
        instance: InstanceId(instance.to_string()),
        app: String::from_utf8_lossy(app.unwrap_or_default()).into_owned(),
        state_dir: PathBuf::from(OsStr::from_bytes(state_dir)),
    })
}

/// Every live process-group leader owned by this user (other than this process) whose
/// environment names the canonical `state_dir`. Processes that vanish or cannot be read
/// during the scan are skipped.
pub(crate) fn scan(state_dir: &Path) -> Vec<Survivor> {
    let me = std::process::id();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<Survivor> = entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            if pid == me || std::fs::metadata(format!("/proc/{pid}")).ok()?.uid() != uid {
                return None;
            }
            let stat = process::proc_stat(pid)?;
            if stat.pgid != pid || !stat.is_running() {
                return None;
            }
            let identity = parse_environ(&std::fs::read(format!("/proc/{pid}/environ")).ok()?)?;
            // The pid may have been reused between reading the stat and the environment.
            if identity.state_dir != state_dir || !process::is_alive(pid, stat.start_time) {
                return None;
            }
            Some(Survivor {
                pid,
                start_time: stat.start_time,
                instance: identity.instance,
                app: identity.app,
            })
        })
        .collect();
    found.sort_by_key(|s| (s.start_time, s.pid));
    found
}

/// Decides how each recorded instance resumes, given the survivors found and whether a
/// recorded `(pid, start_time)` still runs.
///
/// A recorded process that runs is adopted, ready if its record says the instance was.
/// Otherwise the oldest survivor carrying the
/// instance's id is (a leader that started later can only be something the instance forked
/// into its own session). Other survivors of a recorded instance are left alone, for the same
/// reason; it too resumes ready if the record says the instance was. A process that is
/// started anew is never ready. Survivors of ids without a record are orphans.
pub(crate) fn recover(
    records: &[InstanceRecord],
    survivors: Vec<Survivor>,
    alive: impl Fn(u32, u64) -> bool,
) -> Recovery {
    let mut by_instance: BTreeMap<InstanceId, Vec<Survivor>> = BTreeMap::new();
    for survivor in survivors {
        by_instance
            .entry(survivor.instance.clone())
            .or_default()
            .push(survivor);
    }
    let initial = records
        .iter()
        .map(|record| {
            let mut found = by_instance.remove(&record.id).unwrap_or_default();
            match (record.pid, record.start_time) {
                (Some(pid), Some(start_time)) if alive(pid, start_time) => {
                    return Initial::Adopt {
                        pid,
                        start_time,
                        ready: record.ready,
                    };
                }
                _ => {}
            }
            found.sort_by_key(|s| (s.start_time, s.pid));
            match (found.first(), record.pid) {
                (Some(s), _) => Initial::Found {
                    pid: s.pid,
                    start_time: s.start_time,
                    ready: record.ready,
                },
                (None, Some(pid)) => Initial::Lost { pid },
                (None, None) => Initial::Fresh,
            }
        })
        .collect();
    Recovery {
        initial,
        orphans: by_instance.into_values().flatten().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InstanceSpec;
    use gauntlet_spec::ProcessSpec;

    const ID: &str = "web-abc-k3x9q";

    fn environ(entries: &[&str]) -> Vec<u8> {
        let mut bytes = entries.join("\0").into_bytes();
        bytes.push(0);
        bytes
    }

    fn record(id: &str, pid: Option<u32>, start_time: Option<u64>) -> InstanceRecord {
        InstanceRecord {
            id: InstanceId(id.into()),
            spec: InstanceSpec {
                app: "web".into(),
                revision: "abc".into(),
                process: ProcessSpec::new(["sleep"]),
                readiness: None,
            },
            port: 1,
            pid,
            start_time,
            restarts: 0,
            created_ms: 0,
            ready: false,
        }
    }

    fn survivor(id: &str, pid: u32, start_time: u64) -> Survivor {
        Survivor {
            pid,
            start_time,
            instance: InstanceId(id.into()),
            app: "web".into(),
        }
    }

    #[test]
    fn environ_with_instance_and_state_dir_identifies_the_process() {
        let bytes = environ(&[
            "PATH=/bin",
            "GAUNTLET_APP=web",
            &format!("GAUNTLET_INSTANCE={ID}"),
            "GAUNTLET_STATE_DIR=/var/lib/gauntlet",
            "EMPTY=",
        ]);
        assert_eq!(
            parse_environ(&bytes),
            Some(Identity {
                instance: InstanceId(ID.into()),
                app: "web".into(),
                state_dir: PathBuf::from("/var/lib/gauntlet"),
            })
        );
    }

    #[test]
    fn environ_without_both_variables_identifies_nothing() {
        let instance = format!("GAUNTLET_INSTANCE={ID}");
        assert_eq!(parse_environ(&environ(&[&instance])), None);
        assert_eq!(parse_environ(&environ(&["GAUNTLET_STATE_DIR=/s"])), None);
        assert_eq!(
            parse_environ(&environ(&[&instance, "GAUNTLET_STATE_DIR="])),
            None
        );
        assert_eq!(parse_environ(b""), None);
    }

    #[test]
    fn only_exact_keys_count_not_prefixes_or_values() {
        let bytes = environ(&[
            &format!("GAUNTLET_INSTANCE_X={ID}"),
            &format!("X=GAUNTLET_INSTANCE={ID}"),
            "GAUNTLET_STATE_DIR=/s",
        ]);
        assert_eq!(parse_environ(&bytes), None);
    }

    #[test]
    fn ids_this_runtime_would_not_create_are_ignored() {
        for id in [
            "",
            "web",
            "web-abc",
            "web-abc-TOOLONG",
            "../x-abc-k3x9q",
            "web-abc-k3x9",
        ] {
            let bytes = environ(&[&format!("GAUNTLET_INSTANCE={id}"), "GAUNTLET_STATE_DIR=/s"]);
            assert_eq!(parse_environ(&bytes), None, "{id:?}");
        }
    }

    #[test]
    fn a_state_dir_that_is_not_utf8_is_kept_byte_for_byte() {
        let mut bytes = format!("GAUNTLET_INSTANCE={ID}\0GAUNTLET_STATE_DIR=/s/").into_bytes();
        bytes.extend_from_slice(b"\xff\0");
        let identity = parse_environ(&bytes).expect("identity");
        assert_eq!(identity.state_dir.as_os_str().as_bytes(), b"/s/\xff");
    }

    #[test]
    fn a_recorded_process_that_runs_is_adopted_and_its_other_survivors_left_alone() {
        let records = [record(ID, Some(10), Some(100))];
        let survivors = vec![survivor(ID, 10, 100), survivor(ID, 11, 200)];
        let r = recover(&records, survivors, |pid, start| (pid, start) == (10, 100));
        assert_eq!(
            r,
            Recovery {
                initial: vec![Initial::Adopt {
                    pid: 10,
                    start_time: 100,
                    ready: false,
                }],
                orphans: vec![],
            }
        );
    }

    #[test]
    fn an_unrecorded_pid_is_found_by_identity_instead_of_starting_a_duplicate() {
        let records = [record(ID, None, None)];
        let r = recover(&records, vec![survivor(ID, 12, 300)], |_, _| false);
        assert_eq!(
            r.initial,
            vec![Initial::Found {
                pid: 12,
                start_time: 300,
                ready: false,
            }]
        );
        assert!(r.orphans.is_empty());
    }

    #[test]
    fn a_dead_or_reused_recorded_pid_gives_way_to_the_oldest_survivor() {
        let records = [record(ID, Some(10), Some(100))];
        let survivors = vec![survivor(ID, 13, 400), survivor(ID, 12, 300)];
        let r = recover(&records, survivors, |_, _| false);
        assert_eq!(
            r.initial,
            vec![Initial::Found {
                pid: 12,
                start_time: 300,
                ready: false,
            }]
        );
        assert!(r.orphans.is_empty());
    }

    #[test]
    fn without_a_survivor_a_lost_or_never_started_instance_starts_anew() {
        let records = [
            record(ID, Some(10), Some(100)),
            record("web-abc-00000", None, None),
        ];
        let r = recover(&records, vec![], |_, _| false);
        assert_eq!(r.initial, vec![Initial::Lost { pid: 10 }, Initial::Fresh]);
    }

    #[test]
    fn only_an_adopted_process_resumes_ready_and_only_if_its_record_was_ready() {
        let ready = |mut r: InstanceRecord| {
            r.ready = true;
            r
        };
        let records = [
            ready(record(ID, Some(10), Some(100))),
            ready(record("web-abc-00001", Some(11), Some(110))),
            ready(record("web-abc-00002", Some(12), Some(120))),
            record("web-abc-00003", Some(13), Some(130)),
        ];
        let survivors = vec![survivor("web-abc-00001", 21, 210)];
        let r = recover(&records, survivors, |pid, start| {
            [(10, 100), (13, 130)].contains(&(pid, start))
        });
        assert_eq!(
            r.initial,
            vec![
                Initial::Adopt {
                    pid: 10,
                    start_time: 100,
                    ready: true
                },
                Initial::Found {
                    pid: 21,
                    start_time: 210,
                    ready: true
                },
                Initial::Lost { pid: 12 },
                Initial::Adopt {
                    pid: 13,
                    start_time: 130,
                    ready: false
                },
            ]
        );
        assert_eq!(
            r.initial.iter().map(Initial::ready).collect::<Vec<_>>(),
            vec![true, true, false, false]
        );
    }

    #[test]
    fn survivors_of_unrecorded_instances_are_orphans() {
        let records = [record(ID, None, None)];
        let survivors = vec![survivor("web-abc-zzzzz", 14, 500), survivor(ID, 12, 300)];
        let r = recover(&records, survivors, |_, _| false);
        assert_eq!(r.orphans, vec![survivor("web-abc-zzzzz", 14, 500)]);
    }

    #[tokio::test]
    async fn scan_finds_a_session_leader_of_this_state_dir_but_not_its_child_or_others() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().canonicalize().expect("canonical");
        let marker = state.join("child.pid");
        let spawn = |id: &str, state: &Path, script: &str| {
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", script])
                .env(INSTANCE_ENV, id)
                .env(STATE_DIR_ENV, state);
            // SAFETY: only the async-signal-safe setsid runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
            cmd.spawn().expect("spawn")
        };
        let script = format!("sleep 1000 & echo $! > {}; wait", marker.display());
        let mut ours = spawn(ID, &state, &script);
        let mut theirs = spawn("web-abc-other", &state.join("elsewhere"), "exec sleep 1000");
        let start = std::time::Instant::now();
        while !std::fs::read_to_string(&marker).is_ok_and(|s| s.trim().parse::<u32>().is_ok()) {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "no child"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }

        let found = scan(&state);

        for pid in [ours.id(), theirs.id()] {
            let _ = process::signal_group(pid, libc::SIGKILL);
        }
        let _ = ours.wait();
        let _ = theirs.wait();
        assert_eq!(
            found
                .iter()
                .map(|s| (s.pid, &s.instance.0[..]))
                .collect::<Vec<_>>(),
            vec![(ours.id(), ID)]
        );
    }
}
