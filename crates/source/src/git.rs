//! Running the system `git`: one place that decides how every git process is started (protocol
//! version, C locale, never prompting, credentials through the environment), bounded by a timeout that
//! kills git's whole process group, and how its failures become [`SourceError`]s.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::ResolvedAuth;
use crate::SourceError;

/// How many lines of git's stderr an error keeps, and how many characters at most.
const STDERR_LINES: usize = 4;
const STDERR_CHARS: usize = 600;

/// Runs git against one bare cache repository, for one remote.
pub(crate) struct Git {
    pub git_dir: PathBuf,
    /// Wire protocol: 2 everywhere (fetch by any reachable sha), except `git://`, where
    /// `git daemon`'s v2 exchange stalls on loopback's delayed ACKs (measured here: ls-remote
    /// 40 ms in v2, under 5 ms in v0; a shallow fetch 100 ms against 50 ms). Gauntlet always
    /// fetches the tip it was just told about, which v0 serves too; if the tip moved meanwhile,
    /// the fetch-the-ref fallback takes over.
    pub protocol_version: u8,
    /// The remote as shown to users: any password in the URL replaced.
    pub repo_display: String,
    pub timeout: Duration,
}

/// What a finished git process left behind.
pub(crate) struct Output {
    pub success: bool,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Git {
    /// Runs `git <args>`; a non-zero exit is reported as an error classified from stderr.
    pub async fn run(
        &self,
        args: &[&str],
        auth: Option<&ResolvedAuth>,
        stdin: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, SourceError> {
        let output = self.output(args, auth, stdin).await?;
        if output.success {
            Ok(output.stdout)
        } else {
            Err(self.failure(args, &output.stderr))
        }
    }

    /// Runs `git <args>` and returns its output whatever the exit status; errors only when git
    /// could not be started, timed out, or its pipes failed.
    pub async fn output(
        &self,
        args: &[&str],
        auth: Option<&ResolvedAuth>,
        stdin: Option<Vec<u8>>,
    ) -> Result<Output, SourceError> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("-c")
            .arg(format!("protocol.version={}", self.protocol_version))
            // `ext::` runs arbitrary commands; a manifest source never needs it.
            .arg("-c")
            .arg("protocol.ext.allow=never")
            .arg("--git-dir")
            .arg(&self.git_dir)
            .args(args);
        configure_environment(&mut cmd, auth);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);

        tracing::debug!(command = %command_name(args), repo = %self.repo_display, "running git");
        let mut child = cmd
            .spawn()
            .map_err(|source| SourceError::GitNotRunnable { source })?;
        // Declared after `child`, so it is dropped (and kills the group) before `child` is reaped.
        let mut group = GroupKiller::new(child.id());

        let stdin_pipe = child.stdin.take();
        let stdout_pipe = child.stdout.take();
        let stderr_pipe = child.stderr.take();
        let work = async {
            let write = async move {
                if let (Some(mut pipe), Some(data)) = (stdin_pipe, stdin) {
                    // git may exit early (e.g. on a bad object); its exit status tells why.
                    let _ = pipe.write_all(&data).await;
                }
            };
            let read_out = read_all(stdout_pipe);
            let read_err = read_all(stderr_pipe);
            let ((), out, err, status) = tokio::join!(write, read_out, read_err, child.wait());
            (out, err, status)
        };
        let (out, err, status) = match tokio::time::timeout(self.timeout, work).await {
            Ok(finished) => {
                // git has been reaped: its pid (and group id) may be reused from now on.
                group.disarm();
                finished
            }
            Err(_) => {
                return Err(SourceError::Timeout {
                    repo: self.repo_display.clone(),
                    command: command_name(args),
                    after: self.timeout,
                })
            }
        };
        let io_err = |source| SourceError::Io {
            path: self.git_dir.clone(),
            source,
        };
        let status = status.map_err(io_err)?;
        let stdout = out.map_err(io_err)?;
        let stderr = String::from_utf8_lossy(&err.map_err(io_err)?).into_owned();
        let stderr = redact(&stderr, auth);
        Ok(Output {
            success: status.success(),
            stdout,
            stderr,
        })
    }

    /// Turns a failed git call into the most specific error its stderr allows.
    pub fn failure(&self, args: &[&str], stderr: &str) -> SourceError {
        let detail = summarize(stderr);
        let repo = self.repo_display.clone();
        match classify(stderr) {
            Class::Auth => SourceError::Auth { repo, detail },
            Class::NotFound => SourceError::RepositoryNotFound { repo, detail },
            Class::Unreachable => SourceError::Unreachable { repo, detail },
            Class::Other => SourceError::Git {
                command: command_name(args),
                stderr: detail,
            },
        }
    }
}

/// The environment every git call gets: deterministic messages, never a prompt, no inherited
/// repository, credentials as config entries appended after any the user already passes.
fn configure_environment(cmd: &mut tokio::process::Command, auth: Option<&ResolvedAuth>) {
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "SSH_ASKPASS",
        "SSH_ASKPASS_REQUIRE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("LC_ALL", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        // Empty (not unset) so that git also ignores `core.askPass` and `SSH_ASKPASS`.
        .env("GIT_ASKPASS", "")
        .env("GCM_INTERACTIVE", "never");
    if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
        // Fail instead of asking for a passphrase or to trust a new host key.
        cmd.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    if let Some(auth) = auth {
        let base = std::env::var("GIT_CONFIG_COUNT")
            .ok()
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0);
        cmd.env(format!("GIT_CONFIG_KEY_{base}"), "http.extraHeader")
            .env(format!("GIT_CONFIG_VALUE_{base}"), &auth.header)
            .env("GIT_CONFIG_COUNT", (base + 1).to_string());
    }
}

async fn read_all<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// Kills a child's whole process group if dropped while armed: git forks ssh, remote helpers
/// and upload-pack, which killing git alone would leave running.
struct GroupKiller(Option<u32>);

impl GroupKiller {
    fn new(pid: Option<u32>) -> Self {
        GroupKiller(pid)
    }
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pgid) = self.0.and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: kill(2) has no memory-safety preconditions. The group leader has not been
            // reaped yet (we disarm once it is), so the id cannot belong to anyone else.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// `git fetch`, `git ls-remote`, ...: the subcommand, without arguments that may carry URLs.
pub(crate) fn command_name(args: &[&str]) -> String {
    match args.iter().find(|a| !a.starts_with('-')) {
        Some(sub) => format!("git {sub}"),
        None => "git".to_string(),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Auth,
    NotFound,
    Unreachable,
    Other,
}

/// Sorts git's (C-locale) stderr into what the user has to fix.
fn classify(stderr: &str) -> Class {
    let s = stderr.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| s.contains(n));
    if any(&[
        "authentication failed",
        "could not read username",
        "could not read password",
        "terminal prompts disabled",
        "permission denied (publickey",
        "host key verification failed",
        "invalid username or password",
        "requested url returned error: 401",
        "requested url returned error: 403",
    ]) {
        Class::Auth
    } else if any(&[
        "does not appear to be a git repository",
        "repository not exported",
        "requested url returned error: 404",
        "' not found",
        "repository not found",
        "no such repository",
    ]) {
        Class::NotFound
    } else if any(&[
        "unable to connect",
        "connection refused",
        "could not resolve host",
        "could not resolve hostname",
        "couldn't connect to server",
        "connection timed out",
        "operation timed out",
        "network is unreachable",
        "no route to host",
        "unable to access",
        "connection reset",
        "the remote end hung up unexpectedly",
        "could not read from remote repository",
        "ssl",
    ]) {
        Class::Unreachable
    } else {
        Class::Other
    }
}

/// The first meaningful lines of git's stderr, on one line.
fn summarize(stderr: &str) -> String {
    // git's generic advice after a failed connection adds nothing to the first line.
    const BOILERPLATE: [&str; 3] = [
        "could not read from remote repository.",
        "please make sure you have the correct access rights",
        "and the repository exists.",
    ];
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| {
            let l = l.trim();
            l.strip_prefix("fatal: ")
                .or_else(|| l.strip_prefix("error: "))
                .unwrap_or(l)
        })
        .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
        .filter(|l| !BOILERPLATE.iter().any(|b| l.eq_ignore_ascii_case(b)))
        .take(STDERR_LINES)
        .collect();
    if lines.is_empty() {
        return "git gave no reason".to_string();
    }
    let joined = lines.join("; ");
    match joined.char_indices().nth(STDERR_CHARS) {
        Some((cut, _)) => format!("{}...", &joined[..cut]),
        None => joined,
    }
}

/// Removes credential values from text git printed (e.g. with `GIT_TRACE` set by the user).
fn redact(text: &str, auth: Option<&ResolvedAuth>) -> String {
    let mut text = text.to_string();
    for secret in auth.iter().flat_map(|a| a.redact.iter()) {
        if !secret.is_empty() {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

/// A URL fit for logs and errors: a password (or an HTTP token given as user name) is hidden.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let host_and_path = &rest[at..];
    let is_http = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{host_and_path}"),
        None if is_http => format!("{scheme}://***{host_and_path}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connections_are_unreachable() {
        let stderr = "fatal: unable to connect to 127.0.0.1:\n127.0.0.1[0: 127.0.0.1]: errno=Connection refused\n";
        assert_eq!(classify(stderr), Class::Unreachable);
        let http = "fatal: unable to access 'http://127.0.0.1:1/x/': Failed to connect to 127.0.0.1 port 1 after 0 ms: Couldn't connect to server";
        assert_eq!(classify(http), Class::Unreachable);
    }

    #[test]
    fn a_missing_local_repository_is_not_found_rather_than_unreachable() {
        let stderr = "fatal: './nonexist' does not appear to be a git repository\nfatal: Could not read from remote repository.\n";
        assert_eq!(classify(stderr), Class::NotFound);
    }

    #[test]
    fn credential_prompts_are_authentication_failures() {
        let stderr =
            "fatal: could not read Username for 'https://example.com': terminal prompts disabled";
        assert_eq!(classify(stderr), Class::Auth);
        assert_eq!(
            classify("git@github.com: Permission denied (publickey)."),
            Class::Auth
        );
    }

    #[test]
    fn summary_keeps_the_first_lines_without_hints() {
        let stderr = "hint: noise\nfatal: one\n\nerror: two\nthree\nfour\nfive\n";
        assert_eq!(summarize(stderr), "one; two; three; four");
        let missing = "fatal: '/x' does not appear to be a git repository\nfatal: Could not read from remote repository.\n\nPlease make sure you have the correct access rights\nand the repository exists.\n";
        assert_eq!(
            summarize(missing),
            "'/x' does not appear to be a git repository"
        );
        assert_eq!(summarize(""), "git gave no reason");
        assert!(summarize(&"x".repeat(5000)).len() < 700);
    }

    #[test]
    fn url_passwords_and_http_tokens_are_hidden() {
        assert_eq!(
            redact_url("https://bob:hunter2@example.com/r.git"),
            "https://bob:***@example.com/r.git"
        );
        assert_eq!(
            redact_url("https://ghp_token@github.com/o/r"),
            "https://***@github.com/o/r"
        );
        assert_eq!(
            redact_url("ssh://git@example.com/r.git"),
            "ssh://git@example.com/r.git"
        );
        assert_eq!(
            redact_url("git@example.com:o/r.git"),
            "git@example.com:o/r.git"
        );
        assert_eq!(redact_url("/srv/git/r.git"), "/srv/git/r.git");
        assert_eq!(
            redact_url("https://example.com/a@b"),
            "https://example.com/a@b"
        );
    }

    #[test]
    fn credential_values_are_cut_from_git_output() {
        let auth = ResolvedAuth {
            header: String::new(),
            redact: vec!["tok123".into()],
        };
        assert_eq!(
            redact("trace: Authorization: Bearer tok123", Some(&auth)),
            "trace: Authorization: Bearer ***"
        );
    }

    #[test]
    fn command_names_omit_urls() {
        assert_eq!(
            command_name(&["ls-remote", "--", "https://u:p@h/r"]),
            "git ls-remote"
        );
        assert_eq!(
            command_name(&["--literal-pathspecs", "ls-tree", "-r"]),
            "git ls-tree"
        );
    }
}
