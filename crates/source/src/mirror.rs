//! The bare cache repository ("mirror") a source fetches into: created on first use, never
//! checked out, shallow where the server allows it. The commit being read is kept under the
//! private ref `refs/gauntlet/head`, overwritten with a `+` refspec, so that a force-push (to an
//! older or unrelated history) simply becomes the new truth, and the objects of the commit stay
//! safe from `git gc`. Everything git does to one cache directory is serialized by a lock shared
//! by all sources of this process that use it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::auth::ResolvedAuth;
use crate::git::Git;
use crate::reference::{self, Reference};
use crate::snapshot::{self, Snapshot, SourceFile, TreeFile};
use crate::SourceError;

/// Where the commit being read is pinned.
const HEAD_REF: &str = "refs/gauntlet/head";

type CacheLock = Arc<tokio::sync::Mutex<()>>;

/// The lock for a cache directory, shared by every source of this process that uses it.
pub(crate) fn lock_for(dir: &Path) -> CacheLock {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let key = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    // A poisoned map is still a valid map: the panic happened elsewhere.
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    locks.retain(|_, lock| lock.strong_count() > 0);
    if let Some(lock) = locks.get(&key).and_then(Weak::upgrade) {
        return lock;
    }
    let lock = CacheLock::default();
    locks.insert(key, Arc::downgrade(&lock));
    lock
}

/// Creates the bare repository unless it exists. Callers hold the cache lock.
pub(crate) async fn ensure_initialized(git: &Git) -> Result<(), SourceError> {
    if tokio::fs::try_exists(git.git_dir.join("HEAD"))
        .await
        .unwrap_or(false)
    {
        return Ok(());
    }
    tokio::fs::create_dir_all(&git.git_dir)
        .await
        .map_err(|source| SourceError::Io {
            path: git.git_dir.clone(),
            source,
        })?;
    git.run(&["init", "--bare", "--quiet"], None, None).await?;
    Ok(())
}

/// Whether the commit's objects are already in the cache.
async fn has_commit(git: &Git, commit: &str) -> Result<bool, SourceError> {
    let spec = format!("{commit}^{{commit}}");
    let out = git
        .output(&["rev-parse", "--quiet", "--verify", &spec], None, None)
        .await?;
    Ok(out.success)
}

/// `git ls-remote` for the refs a name may mean; returns (full ref name, commit).
pub(crate) async fn resolve_remote(
    git: &Git,
    repo: &str,
    name: &str,
    auth: Option<&ResolvedAuth>,
) -> Result<(String, String), SourceError> {
    let candidates = reference::candidates(name);
    let mut args = vec!["ls-remote", "--", repo];
    args.extend(candidates.iter().map(String::as_str));
    let out = git.run(&args, auth, None).await?;
    reference::resolve(&String::from_utf8_lossy(&out), &candidates).ok_or_else(|| {
        SourceError::RefNotFound {
            repo: git.repo_display.clone(),
            reference: name.to_string(),
        }
    })
}

/// Makes `commit` available in the cache, fetching as little as the server allows.
/// Callers hold the cache lock.
pub(crate) async fn ensure_commit(
    git: &Git,
    repo: &str,
    reference: &Reference,
    commit: &str,
    auth: Option<&ResolvedAuth>,
) -> Result<(), SourceError> {
    if has_commit(git, commit).await? {
        // Re-pin it: the private ref may point at another commit by now.
        return git
            .run(&["update-ref", "--no-deref", HEAD_REF, commit], None, None)
            .await
            .map(drop);
    }
    // Protocol v2 servers (git ≥ 2.18 with v2 enabled, GitHub, GitLab, git daemon) accept any
    // reachable commit as a want, so one shallow fetch of exactly that commit is enough.
    let by_sha = format!("+{commit}:{HEAD_REF}");
    let fetch = [
        "fetch",
        "--depth=1",
        "--no-tags",
        "--no-write-fetch-head",
        "--quiet",
        "--",
        repo,
        &by_sha,
    ];
    let out = git.output(&fetch, auth, None).await?;
    if out.success && has_commit(git, commit).await? {
        return Ok(());
    }
    let first_failure = git.failure(&fetch, &out.stderr);
    if matches!(
        first_failure,
        SourceError::Unreachable { .. }
            | SourceError::Auth { .. }
            | SourceError::RepositoryNotFound { .. }
    ) {
        return Err(first_failure);
    }
    tracing::debug!(repo = %git.repo_display, error = %first_failure, "fetching by sha refused; fetching refs instead");

    // Older servers (protocol v0 without `uploadpack.allowReachableSHA1InWant`, dumb HTTP) only
    // serve advertised refs: fetch the ref, with its history since the commit may be older.
    let refspecs: Vec<String> = match reference {
        Reference::Name(name) => {
            let (full_ref, _) = resolve_remote(git, repo, name, auth).await?;
            vec![format!("+{full_ref}:{HEAD_REF}")]
        }
        Reference::Commit(_) => vec![
            "+refs/heads/*:refs/gauntlet/all/heads/*".to_string(),
            "+refs/tags/*:refs/gauntlet/all/tags/*".to_string(),
        ],
    };
    let shallow = git
        .run(&["rev-parse", "--is-shallow-repository"], None, None)
        .await?;
    let mut args = vec!["fetch", "--no-tags", "--no-write-fetch-head", "--quiet"];
    if String::from_utf8_lossy(&shallow).trim() == "true" {
        args.push("--unshallow");
    }
    args.extend(["--", repo]);
    args.extend(refspecs.iter().map(String::as_str));
    git.run(&args, auth, None).await?;
    if !has_commit(git, commit).await? {
        return Err(SourceError::CommitNotFound {
            repo: git.repo_display.clone(),
            commit: commit.to_string(),
        });
    }
    git.run(&["update-ref", "--no-deref", HEAD_REF, commit], None, None)
        .await
        .map(drop)
}

/// Reads the commit's metadata and the manifests under `sub_path` from the cache.
///
/// `blobs` holds the contents of the previous snapshot's files by object id: only objects not
/// in it are read, so a commit that changes one file of ten thousand reads one blob. On
/// success it holds exactly this snapshot's files.
pub(crate) async fn read_snapshot(
    git: &Git,
    commit: &str,
    sub_path: Option<&str>,
    blobs: &mut HashMap<String, Arc<str>>,
) -> Result<Snapshot, SourceError> {
    let mut args = vec!["--literal-pathspecs", "ls-tree", "-r", "-l", "-z", commit];
    if let Some(path) = sub_path {
        args.extend(["--", path]);
    }
    let listing = git.run(&args, None, None).await?;
    let (entries, seen) = snapshot::manifest_entries(&listing, commit)?;
    if seen == 0 {
        if let Some(path) = sub_path {
            return Err(SourceError::PathNotFound {
                repo: git.repo_display.clone(),
                commit: commit.to_string(),
                path: path.to_string(),
            });
        }
    }

    let mut request = format!("{commit}\n");
    let wanted: Vec<&TreeFile> = entries
        .iter()
        .filter(|e| !blobs.contains_key(&e.object))
        .collect();
    for entry in &wanted {
        request.push_str(&entry.object);
        request.push('\n');
    }
    let out = git
        .run(&["cat-file", "--batch"], None, Some(request.into_bytes()))
        .await?;
    let objects = snapshot::parse_batch(&out)?;
    let missing = |what: &str| SourceError::Git {
        command: "git cat-file".into(),
        stderr: format!(
            "{what} is missing from the cache at {}; the cache may be damaged",
            git.git_dir.display()
        ),
    };
    let mut objects = objects.into_iter();
    let (author, message) = match objects.next().flatten() {
        Some(object) if object.kind == "commit" => snapshot::parse_commit(object.content),
        _ => return Err(missing(&format!("commit {commit}"))),
    };
    let mut read: HashMap<String, Arc<str>> = HashMap::with_capacity(entries.len());
    for entry in wanted {
        let Some(object) = objects.next().flatten() else {
            return Err(missing(&entry.path));
        };
        let contents = std::str::from_utf8(object.content).map_err(|_| SourceError::NotUtf8 {
            commit: commit.to_string(),
            path: entry.path.clone(),
        })?;
        read.insert(entry.object.clone(), Arc::from(contents));
    }
    let mut files = Vec::with_capacity(entries.len());
    let mut kept = HashMap::with_capacity(entries.len());
    for entry in entries {
        let contents = match read.get(&entry.object).or_else(|| blobs.get(&entry.object)) {
            Some(c) => c.clone(),
            None => return Err(missing(&entry.path)),
        };
        files.push(SourceFile {
            path: entry.path,
            contents: contents.to_string(),
        });
        kept.insert(entry.object, contents);
    }
    *blobs = kept;
    Ok(Snapshot {
        commit: commit.to_string(),
        message,
        author,
        files,
    })
}
