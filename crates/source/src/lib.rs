//! Gauntlet's view of a Git repository: (repository URL, reference, sub-path) → [`Snapshot`]s
//! of the manifest files at a commit, plus verification of push webhooks.
//!
//! Everything goes through the system `git` program rather than a Git library: it speaks every
//! transport users already have working (local paths, `file://`, `git://`, HTTP(S) with their
//! proxies and CA bundles, SSH with their keys and `~/.ssh/config`) and keeps the build lean.
//!
//! The pieces:
//! - [`GitSource::remote_head`] asks the remote which commit the reference points to now
//!   (`git ls-remote`, one round trip): cheap enough to poll every second.
//! - [`GitSource::fetch`] brings that commit into a bare cache repository (shallow, no working
//!   tree; nothing at all if it is already there) and reads the `*.yaml`, `*.yml` and `*.json`
//!   files under the sub-path ([`snapshot`]).
//! - [`webhook`] checks that a push notification really comes from GitHub or GitLab, so that it
//!   can trigger an immediate `remote_head`.
//! - [`WorkingCopy`] is the write side: a branch checked out to change a manifest, commit and
//!   push (never forced), used by [`revert`] (`onFailure: revert`) and `gauntlet release`.
//!
//! Credentials ([`Auth`]) are read at each call and handed to git through its environment only.
//! Every git call runs with a timeout and is killed, with whatever it spawned, when it expires.
//!
//! ```no_run
//! # async fn demo() -> Result<(), gauntlet_source::SourceError> {
//! use gauntlet_source::{GitSource, SourceConfig};
//!
//! let source = GitSource::new(SourceConfig {
//!     repo: "https://github.com/example/deploy.git".into(),
//!     reference: "main".into(),
//!     path: "apps".into(),
//!     auth: None,
//!     cache_dir: "/var/lib/gauntlet/git/deploy".into(),
//! });
//! let head = source.remote_head().await?;
//! let snapshot = source.fetch(&head).await?;
//! for file in &snapshot.files {
//!     println!("{} ({} bytes)", file.path, file.contents.len());
//! }
//! # Ok(()) }
//! ```

mod auth;
mod error;
mod git;
mod mirror;
mod reference;
pub mod revert;
pub mod snapshot;
pub mod webhook;
mod working_copy;

use std::path::PathBuf;
use std::time::Duration;

pub use auth::{Auth, Secret};
pub use error::SourceError;
pub use git::redact_url;
pub use snapshot::{Snapshot, SourceFile};
pub use working_copy::{CommitSummary, Identity, WorkingCopy};

use git::Git;
use reference::Reference;

/// How long one git command may run before it is killed, unless set with
/// [`GitSource::with_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the manifests live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// Anything `git fetch` accepts: a local path, `file://`, `git://`, `http(s)://`, `ssh://` or
    /// `user@host:path`.
    pub repo: String,
    /// A branch, a tag (annotated tags are peeled), `HEAD`, a full ref name, or a full commit sha.
    /// A branch wins over a tag of the same name.
    pub reference: String,
    /// The directory (or single file) to read, relative to the repository root; `""` or `"."`
    /// for the whole repository.
    pub path: String,
    /// Credentials for HTTP(S) remotes.
    pub auth: Option<Auth>,
    /// Directory of the bare cache repository, owned by Gauntlet; created on first use. Sources
    /// for different repositories should use different directories.
    pub cache_dir: PathBuf,
}

/// A Git repository read as a stream of snapshots.
pub struct GitSource {
    config: SourceConfig,
    reference: Reference,
    git: Git,
    /// Serializes git operations on `cache_dir` across all sources of this process.
    cache_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The last snapshot's file contents by object id, so the next reads only what changed.
    blobs: tokio::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<str>>>,
}

impl GitSource {
    /// A source for `config`. Nothing is touched until the first call.
    pub fn new(config: SourceConfig) -> Self {
        let git = Git {
            git_dir: config.cache_dir.clone(),
            protocol_version: if config.repo.trim_start().starts_with("git://") {
                0
            } else {
                2
            },
            repo_display: git::redact_url(&config.repo),
            timeout: DEFAULT_TIMEOUT,
        };
        GitSource {
            reference: Reference::parse(&config.reference),
            cache_lock: mirror::lock_for(&config.cache_dir),
            blobs: Default::default(),
            git,
            config,
        }
    }

    /// Sets the time limit of each git command (default [`DEFAULT_TIMEOUT`]). A first fetch of a
    /// large repository over a slow link may need more.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.git.timeout = timeout;
        self
    }

    pub fn config(&self) -> &SourceConfig {
        &self.config
    }

    /// The commit the reference points to on the remote right now: one `git ls-remote` round
    /// trip, or no network at all when the reference is a commit sha.
    pub async fn remote_head(&self) -> Result<String, SourceError> {
        self.check_repo()?;
        let name = match &self.reference {
            Reference::Commit(sha) => return Ok(sha.clone()),
            Reference::Name(name) => name,
        };
        let auth = self.resolve_auth().await?;
        {
            let _guard = self.cache_lock.lock().await;
            mirror::ensure_initialized(&self.git).await?;
        }
        let (full_ref, commit) =
            mirror::resolve_remote(&self.git, &self.config.repo, name, auth.as_ref()).await?;
        tracing::debug!(repo = %self.git.repo_display, reference = %full_ref, %commit, "remote head");
        Ok(commit)
    }

    /// The snapshot of `commit` (normally a value from [`remote_head`](Self::remote_head)).
    ///
    /// Fetches only if the commit is not cached yet, with `--depth 1` by sha where the server
    /// allows it, otherwise the reference with its history. Reads the `*.yaml`, `*.yml` and
    /// `*.json` regular files under the sub-path (symlinks and submodules are ignored). A file
    /// over [`snapshot::MAX_FILE_BYTES`] or not in UTF-8 fails the whole snapshot, as does a
    /// sub-path that does not exist at that commit.
    pub async fn fetch(&self, commit: &str) -> Result<Snapshot, SourceError> {
        self.check_repo()?;
        let commit = commit.trim().to_ascii_lowercase();
        if !reference::is_full_sha(&commit) {
            return Err(SourceError::InvalidConfig {
                reason: format!("{commit:?} is not a full commit sha (40 or 64 hex digits)"),
            });
        }
        let sub_path = snapshot::normalize_sub_path(&self.config.path)?;
        let auth = self.resolve_auth().await?;

        let _guard = self.cache_lock.lock().await;
        mirror::ensure_initialized(&self.git).await?;
        mirror::ensure_commit(
            &self.git,
            &self.config.repo,
            &self.reference,
            &commit,
            auth.as_ref(),
        )
        .await?;
        let mut blobs = self.blobs.lock().await;
        let snapshot =
            mirror::read_snapshot(&self.git, &commit, sub_path.as_deref(), &mut blobs).await?;
        tracing::debug!(repo = %self.git.repo_display, %commit, files = snapshot.files.len(), "snapshot read");
        Ok(snapshot)
    }

    fn check_repo(&self) -> Result<(), SourceError> {
        let repo = self.config.repo.trim();
        // A leading dash would be read by git as an option.
        if repo.is_empty() || repo.starts_with('-') || repo.chars().any(char::is_control) {
            return Err(SourceError::InvalidConfig {
                reason: format!(
                    "{:?} is not a repository URL or path",
                    self.git.repo_display
                ),
            });
        }
        Ok(())
    }

    async fn resolve_auth(&self) -> Result<Option<auth::ResolvedAuth>, SourceError> {
        match &self.config.auth {
            Some(auth) => auth.resolve().await.map(Some),
            None => Ok(None),
        }
    }
}
