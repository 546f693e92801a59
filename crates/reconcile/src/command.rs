//! Commands from the repository that the controller runs: analysis `command` metrics, and chaos
//! `command` probes, actions and rollbacks.
//!
//! Every command runs the same way. It gets a process group of its own and a closed stdin, and
//! keeps only the last [`OUTPUT_LIMIT`] bytes of each of stdout and stderr, so a chatty command
//! cannot fill the controller's memory. When its timeout passes, the whole group is killed, so
//! whatever the command started in the background ends with it: a chaos action that hangs
//! leaves nothing behind.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of a command's stdout and of its stderr is kept (the last bytes).
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// A command that ran to its end.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// The last [`OUTPUT_LIMIT`] bytes of stdout.
    pub stdout: Vec<u8>,
    /// The last [`OUTPUT_LIMIT`] bytes of stderr.
    pub stderr: Vec<u8>,
}

/// Runs `command` (program and arguments) for at most `timeout`. The error says why it did not
/// finish: it could not start, or it was killed at its timeout (`timeout_text` names the
/// timeout as the manifest gave it).
pub async fn run(
    command: &[String],
    timeout: Duration,
    timeout_text: &str,
) -> Result<Finished, String> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| "the command is empty".to_string())?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, so a timeout ends everything the command started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    let pgid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let run = async {
        let (out, err, status) = tokio::join!(tail(stdout), tail(stderr), child.wait());
        (out, err, status)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok((stdout, stderr, status)) => {
            let status = status.map_err(|e| format!("waiting for `{program}`: {e}"))?;
            Ok(Finished {
                status,
                stdout,
                stderr,
            })
        }
        Err(_) => {
            // The leader is not reaped yet, so its pid still names our group.
            if let Some(pgid) = pgid {
                kill_group(pgid);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            Err(format!(
                "`{program}` did not finish within the timeout ({timeout_text}): killed"
            ))
        }
    }
}

/// The byte length of the longest suffix of `s` of at most `max` bytes on a char boundary.
pub fn tail_len(s: &str, max: usize) -> usize {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s.len() - start
}

/// Reads `r` to its end, keeping the last [`OUTPUT_LIMIT`] bytes.
async fn tail(r: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut r) = r else { return kept };
    let mut chunk = [0u8; 8192];
    while let Ok(n @ 1..) = r.read(&mut chunk).await {
        kept.extend_from_slice(&chunk[..n]);
        if kept.len() > OUTPUT_LIMIT {
            kept.drain(..kept.len() - OUTPUT_LIMIT);
        }
    }
    kept
}

fn kill_group(pgid: u32) {
    // kill(-0) would signal our own group and kill(-1) everything we may signal.
    let Some(pgid) = libc::pid_t::try_from(pgid).ok().filter(|p| *p > 1) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn a_finished_command_gives_its_status_and_both_outputs() {
        let done = run(
            &sh("echo out; echo err >&2; exit 3"),
            Duration::from_secs(10),
            "10s",
        )
        .await
        .expect("it ran");
        assert_eq!(done.status.code(), Some(3));
        assert_eq!(done.stdout, b"out\n");
        assert_eq!(done.stderr, b"err\n");
    }

    #[tokio::test]
    async fn output_is_kept_to_its_last_bytes() {
        let done = run(
            &sh("head -c 200000 /dev/zero | tr '\\0' a; echo end"),
            Duration::from_secs(10),
            "10s",
        )
        .await
        .expect("it ran");
        assert_eq!(done.stdout.len(), OUTPUT_LIMIT);
        assert!(done.stdout.ends_with(b"aend\n"));
    }

    #[tokio::test]
    async fn at_its_timeout_the_command_and_what_it_started_in_the_background_are_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        let script = format!(
            "sleep 60 & echo $! > {}; wait",
            pidfile.to_str().expect("utf-8 path")
        );
        let err = run(&sh(&script), Duration::from_millis(300), "300ms")
            .await
            .expect_err("timed out");
        assert!(
            err.contains("did not finish within the timeout (300ms)"),
            "{err}"
        );
        let pid: libc::pid_t = std::fs::read_to_string(&pidfile)
            .expect("the background sleep wrote its pid")
            .trim()
            .parse()
            .expect("a pid");
        // The group was SIGKILLed; the orphaned sleep is reaped by init, so wait for it to go.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        };
        while alive() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!alive(), "the background sleep {pid} outlived the timeout");
    }

    #[tokio::test]
    async fn an_empty_or_missing_program_is_an_error_naming_it() {
        let err = run(&[], Duration::from_secs(1), "1s")
            .await
            .expect_err("empty");
        assert_eq!(err, "the command is empty");
        let err = run(&["/nonexistent/probe".into()], Duration::from_secs(1), "1s")
            .await
            .expect_err("missing");
        assert!(err.contains("cannot run `/nonexistent/probe`"), "{err}");
    }
}
