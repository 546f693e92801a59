//! The one error type of this crate. Each variant says what went wrong and what the user can do
//! about it; git's own words are included (first lines, secrets and URL passwords removed).

use std::path::PathBuf;
use std::time::Duration;

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The configuration cannot work (bad sub-path, a repository URL starting with `-`, ...).
    #[error("invalid source configuration: {reason}")]
    InvalidConfig { reason: String },

    /// The git server could not be reached at all (DNS, refused connection, TLS, dropped link).
    #[error("cannot reach git repository {repo}: {detail}; check the URL and the network")]
    Unreachable { repo: String, detail: String },

    /// The server answered, but has no repository at that address (or hides it from us).
    #[error("git repository {repo} not found: {detail}; check the URL (a private repository also looks missing without credentials)")]
    RepositoryNotFound { repo: String, detail: String },

    /// The server refused our credentials, or wanted some and we had none.
    #[error("authentication to git repository {repo} failed: {detail}; check the configured credentials")]
    Auth { repo: String, detail: String },

    /// A credential could not be read from its file or environment variable.
    #[error("cannot read git credential from {from}: {reason}")]
    Secret { from: String, reason: String },

    /// Neither a branch nor a tag of that name exists on the remote.
    #[error("reference {reference:?} not found in {repo}: no branch or tag of that name (a commit must be given as a full 40-character sha)")]
    RefNotFound { repo: String, reference: String },

    /// The commit is not (or no longer) available from the remote, e.g. force-pushed away.
    #[error("commit {commit} is not available from {repo}; it may have been force-pushed away, ask for the current head again")]
    CommitNotFound { repo: String, commit: String },

    /// The configured sub-path does not exist at that commit.
    #[error("path {path:?} does not exist in {repo} at commit {commit}")]
    PathNotFound {
        repo: String,
        commit: String,
        path: String,
    },

    /// A manifest file is larger than the limit; the whole commit is rejected rather than
    /// silently missing a file (which would prune whatever it defines).
    #[error("{path} at commit {commit} is {size} bytes, more than the {limit}-byte limit for a manifest file")]
    FileTooLarge {
        commit: String,
        path: String,
        size: u64,
        limit: u64,
    },

    /// A manifest file (or its path) is not UTF-8.
    #[error("{path} at commit {commit} is not valid UTF-8")]
    NotUtf8 { commit: String, path: String },

    /// A git command did not finish in time and was killed.
    #[error("`{command}` on {repo} did not finish within {after:?} and was stopped; the server may be overloaded or the repository too large for the timeout")]
    Timeout {
        repo: String,
        command: String,
        after: Duration,
    },

    /// The `git` program could not be started.
    #[error("cannot run `git`: {source}; is git installed and on PATH?")]
    GitNotRunnable { source: std::io::Error },

    /// Any other git failure.
    #[error("`{command}` failed: {stderr}")]
    Git { command: String, stderr: String },

    /// Local file system trouble, e.g. with the cache directory.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SourceError {
    /// Whether trying again later may succeed without anyone changing anything
    /// (network trouble, timeouts, a ref that moved under us).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Unreachable { .. }
                | SourceError::Timeout { .. }
                | SourceError::CommitNotFound { .. }
        )
    }
}
