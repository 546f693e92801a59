//! The write side of a Git source: a working copy in which Gauntlet changes a manifest, commits
//! and pushes, for `onFailure: revert` ([`crate::revert`]) and `gauntlet release`.
//!
//! It runs the same `git` with the same environment as the read side (credentials only through
//! git's environment, never a prompt, a timeout on every call). A push is never forced: if the
//! branch moved on since the fetch, the push fails with an error that says so and the caller
//! decides what to do (nothing here retries or rebases).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::auth::ResolvedAuth;
use crate::git::Git;
use crate::{mirror, snapshot, Auth, SourceError, SourceFile, DEFAULT_TIMEOUT};

/// A commit author, `Name <email>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub email: String,
}

impl Identity {
    /// Gauntlet's own identity when none is configured: `Gauntlet <gauntlet@localhost>`.
    pub fn gauntlet() -> Self {
        Identity {
            name: "Gauntlet".into(),
            email: "gauntlet@localhost".into(),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} <{}>", self.name, self.email)
    }
}

impl std::str::FromStr for Identity {
    type Err = String;

    /// Reads `Name <email>`, as git prints authors.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an author of the form \"Name <email>\"");
        let s = s.trim();
        let (name, rest) = s.split_once('<').ok_or_else(bad)?;
        let email = rest.strip_suffix('>').ok_or_else(bad)?.trim();
        let name = name.trim();
        let forbidden = |t: &str| t.contains(['<', '>']) || t.chars().any(char::is_control);
        if name.is_empty() || email.is_empty() || forbidden(name) || forbidden(email) {
            return Err(bad());
        }
        Ok(Identity {
            name: name.to_string(),
            email: email.to_string(),
        })
    }
}

/// One commit of a branch's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSummary {
    pub sha: String,
    pub subject: String,
}

/// A checked-out branch that can be changed, committed and pushed.
pub struct WorkingCopy {
    dir: PathBuf,
    git: Git,
    /// Where pushes go: a URL or path, or the name of a remote of the user's working copy.
    remote: String,
    branch: String,
    auth: Option<Auth>,
}

impl WorkingCopy {
    /// Fetches `branch` of `repo` into a new working copy at `dir` (created; it must not exist
    /// or be empty) and checks it out. `depth: None` fetches the whole history, which finding
    /// a change to undo needs; one commit is enough to make a new one.
    pub async fn clone(
        repo: &str,
        branch: &str,
        auth: Option<Auth>,
        dir: &Path,
        depth: Option<u32>,
    ) -> Result<Self, SourceError> {
        check_argument("repository", repo)?;
        check_argument("branch", branch)?;
        let dir = std::path::absolute(dir).map_err(|source| SourceError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|source| SourceError::Io {
                path: dir.clone(),
                source,
            })?;
        let copy = WorkingCopy {
            git: git_for(&dir, repo),
            dir,
            remote: repo.to_string(),
            branch: branch.to_string(),
            auth,
        };
        let auth = copy.resolve_auth().await?;
        let work_tree = copy.work_tree_arg();
        copy.git
            .run(&[&work_tree, "init", "--quiet"], None, None)
            .await?;
        let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        let depth_arg = depth.map(|d| format!("--depth={d}"));
        let mut args = vec!["fetch", "--quiet", "--no-tags"];
        if let Some(d) = &depth_arg {
            args.push(d);
        }
        args.extend(["--", repo, &refspec]);
        copy.git.run(&args, auth.as_ref(), None).await?;
        let tracking = format!("refs/remotes/origin/{branch}");
        copy.git
            .run(
                &[&work_tree, "checkout", "--quiet", "-B", branch, &tracking],
                None,
                None,
            )
            .await?;
        Ok(copy)
    }

    /// The user's own working copy at `dir` (with a `.git` directory), which must be on
    /// `branch`; pushes go to `remote` (a remote's name such as `origin`, or a URL).
    pub async fn open(
        dir: &Path,
        branch: &str,
        remote: &str,
        auth: Option<Auth>,
    ) -> Result<Self, SourceError> {
        check_argument("remote", remote)?;
        check_argument("branch", branch)?;
        let dir = std::path::absolute(dir).map_err(|source| SourceError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if !dir.join(".git").is_dir() {
            return Err(SourceError::InvalidConfig {
                reason: format!(
                    "{} is not the top of a git working copy (no .git directory)",
                    dir.display()
                ),
            });
        }
        let copy = WorkingCopy {
            git: git_for(&dir, remote),
            dir,
            remote: remote.to_string(),
            branch: branch.to_string(),
            auth,
        };
        let out = copy
            .git
            .output(&["symbolic-ref", "--quiet", "--short", "HEAD"], None, None)
            .await?;
        let current = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.success || current != branch {
            let on = if out.success {
                format!("branch {current}")
            } else {
                "a detached HEAD".to_string()
            };
            return Err(SourceError::InvalidConfig {
                reason: format!(
                    "the working copy {} is on {on}, not {branch}; check out {branch} or pass --branch",
                    copy.dir.display()
                ),
            });
        }
        Ok(copy)
    }

    /// The top directory of the working copy.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The commit checked out.
    pub async fn head(&self) -> Result<String, SourceError> {
        let out = self
            .git
            .run(&["rev-parse", "--verify", "HEAD^{commit}"], None, None)
            .await?;
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }

    /// The manifest files under `sub_path` at `commit`, with paths relative to the repository
    /// root, as the controller reads them.
    pub async fn manifests(
        &self,
        commit: &str,
        sub_path: &str,
    ) -> Result<Vec<SourceFile>, SourceError> {
        let sub_path = snapshot::normalize_sub_path(sub_path)?;
        let snapshot =
            mirror::read_snapshot(&self.git, commit, sub_path.as_deref(), &mut HashMap::new())
                .await?;
        Ok(snapshot.files)
    }

    /// The commits of the checked-out branch that changed something under `sub_path`, newest
    /// first, following first parents (the branch's own line), at most `limit`.
    pub async fn history(
        &self,
        sub_path: &str,
        limit: usize,
    ) -> Result<Vec<CommitSummary>, SourceError> {
        let sub_path = snapshot::normalize_sub_path(sub_path)?;
        let max = format!("--max-count={limit}");
        let mut args = vec![
            "--literal-pathspecs",
            "log",
            "--first-parent",
            "--format=%H%x00%s",
            &max,
            "HEAD",
        ];
        if let Some(path) = &sub_path {
            args.extend(["--", path]);
        }
        let out = self.git.run(&args, None, None).await?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|line| {
                let (sha, subject) = line.split_once('\0')?;
                Some(CommitSummary {
                    sha: sha.to_string(),
                    subject: subject.to_string(),
                })
            })
            .collect())
    }

    /// Whether the file (relative to the top) has neither staged nor unstaged changes.
    pub async fn is_unmodified(&self, path: &str) -> Result<bool, SourceError> {
        let work_tree = self.work_tree_arg();
        let absolute = self.absolute(path)?;
        let out = self
            .git
            .run(
                &[
                    &work_tree,
                    "--literal-pathspecs",
                    "status",
                    "--porcelain",
                    "--",
                    &absolute,
                ],
                None,
                None,
            )
            .await?;
        Ok(out.iter().all(u8::is_ascii_whitespace))
    }

    /// Replaces the contents of a file (relative to the top) of the working tree.
    pub async fn write(&self, path: &str, contents: &str) -> Result<(), SourceError> {
        let absolute = PathBuf::from(self.absolute(path)?);
        tokio::fs::write(&absolute, contents)
            .await
            .map_err(|source| SourceError::Io {
                path: absolute,
                source,
            })
    }

    /// Commits the given files (relative to the top; already tracked) and nothing else, even
    /// if other changes are staged, as `author` (or git's configured user). Returns the new
    /// commit.
    pub async fn commit(
        &self,
        paths: &[&str],
        message: &str,
        author: Option<&Identity>,
    ) -> Result<String, SourceError> {
        let work_tree = self.work_tree_arg();
        let author_arg = author.map(|a| format!("--author={a}"));
        let mut args = vec![
            work_tree.as_str(),
            "--literal-pathspecs",
            "commit",
            "--quiet",
            "--no-verify",
            "--file=-",
        ];
        if let Some(a) = &author_arg {
            args.push(a);
        }
        args.extend(["--only", "--"]);
        let absolute: Vec<String> = paths
            .iter()
            .map(|p| self.absolute(p))
            .collect::<Result<_, _>>()?;
        args.extend(absolute.iter().map(String::as_str));
        self.git
            .run(&args, None, Some(message.as_bytes().to_vec()))
            .await?;
        self.head().await
    }

    /// Sets the committer of this working copy's future commits (repository config: only
    /// for a working copy Gauntlet made itself).
    pub async fn set_committer(&self, identity: &Identity) -> Result<(), SourceError> {
        self.git
            .run(&["config", "user.name", &identity.name], None, None)
            .await?;
        self.git
            .run(&["config", "user.email", &identity.email], None, None)
            .await?;
        Ok(())
    }

    /// Pushes the checked-out branch to the same branch of the remote, fast-forward only.
    pub async fn push(&self) -> Result<(), SourceError> {
        let auth = self.resolve_auth().await?;
        let refspec = format!("HEAD:refs/heads/{}", self.branch);
        let args = [
            "push",
            "--quiet",
            "--porcelain",
            "--",
            &self.remote,
            &refspec,
        ];
        let out = self.git.output(&args, auth.as_ref(), None).await?;
        if out.success {
            return Ok(());
        }
        let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), out.stderr);
        if text.contains("[rejected]") || text.contains("non-fast-forward") {
            return Err(SourceError::Git {
                command: "git push".into(),
                stderr: format!(
                    "branch {} of {} moved on since it was fetched; the push was not a fast-forward and is not forced",
                    self.branch, self.git.repo_display
                ),
            });
        }
        Err(self.git.failure(&args, &out.stderr))
    }

    /// `--work-tree=<dir>`, one argument, so that git's error messages name the command.
    fn work_tree_arg(&self) -> String {
        format!("--work-tree={}", self.dir.display())
    }

    /// The absolute path of a file of the working copy; refuses paths that leave it.
    fn absolute(&self, path: &str) -> Result<String, SourceError> {
        let relative = Path::new(path);
        let escapes = relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)));
        if escapes {
            return Err(SourceError::InvalidConfig {
                reason: format!("{path:?} is not a path inside the repository"),
            });
        }
        Ok(self.dir.join(relative).display().to_string())
    }

    async fn resolve_auth(&self) -> Result<Option<ResolvedAuth>, SourceError> {
        match &self.auth {
            Some(auth) => auth.resolve().await.map(Some),
            None => Ok(None),
        }
    }
}

fn git_for(dir: &Path, remote: &str) -> Git {
    Git {
        git_dir: dir.join(".git"),
        protocol_version: if remote.trim_start().starts_with("git://") {
            0
        } else {
            2
        },
        repo_display: crate::redact_url(remote),
        timeout: DEFAULT_TIMEOUT,
    }
}

/// Refuses values git would read as options, or that carry control characters.
fn check_argument(what: &str, value: &str) -> Result<(), SourceError> {
    if value.trim().is_empty() || value.starts_with('-') || value.chars().any(char::is_control) {
        return Err(SourceError::InvalidConfig {
            reason: format!("{:?} is not a {what}", crate::redact_url(value)),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authors_are_read_as_git_prints_them() {
        let id: Identity = "Release Bot <bot@example.com>".parse().unwrap();
        assert_eq!(id.name, "Release Bot");
        assert_eq!(id.email, "bot@example.com");
        assert_eq!(id.to_string(), "Release Bot <bot@example.com>");
        assert!("bot@example.com".parse::<Identity>().is_err());
        assert!("<bot@example.com>".parse::<Identity>().is_err());
        assert!("A <b> <c>".parse::<Identity>().is_err());
    }
}
