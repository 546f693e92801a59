//! `onFailure: revert`: after a rollout aborted, put the application's manifest in Git back to
//! the revision that still runs, so that Git and reality agree again.
//!
//! How the change to undo is found: the branch is cloned with its history, and the commits
//! that touched the source's path are walked from the head back (first parents only). At each
//! one the tree is parsed as the controller would and the application's revision computed. The
//! newest commit whose revision is the stable one is the last good state; the commit just
//! after it on that walk brought the change.
//!
//! How it is undone: not with `git revert` of that commit, which may also carry changes to
//! other applications (or other documents of the same file) that were fine and are running.
//! Instead the application's document alone is restored, text for text, to what it was at the
//! last good commit; the rest of the file and of the tree stay as they are at the head. The
//! result must parse, and give the application the stable revision, before it is committed.
//!
//! It refuses, and changes nothing, when that cannot be done safely: the source follows a
//! tag, a commit or `HEAD` rather than a branch; the head no longer asks for the failed
//! revision (someone already fixed or changed it); no commit within [`MAX_WALK`] has the
//! stable revision; the document moved to another file; or the result does not validate. The
//! push is a plain fast-forward: if the branch moved meanwhile, it fails and is reported.

use std::ops::Range;
use std::path::Path;

use gauntlet_spec::SourceFile;

use crate::working_copy::{Identity, WorkingCopy};
use crate::{SourceConfig, SourceError};

/// How many commits touching the path are examined, newest first, to find the last good one.
pub const MAX_WALK: usize = 200;

/// What to revert.
#[derive(Debug, Clone)]
pub struct RevertRequest<'a> {
    pub source: &'a SourceConfig,
    /// The application whose rollout aborted.
    pub app: &'a str,
    /// The revision that failed.
    pub failed_revision: &'a str,
    /// The revision that runs and that Git should ask for again.
    pub stable_revision: &'a str,
    /// Why the rollout aborted, for the commit message.
    pub reason: &'a str,
    /// Author and committer of the revert.
    pub author: &'a Identity,
    /// A scratch directory for the working copy; emptied before and removed after.
    pub work_dir: &'a Path,
}

/// A revert that was pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reverted {
    /// The new commit, now the head of the branch.
    pub commit: String,
    /// The commit that brought the failed revision.
    pub offending: String,
    /// The last good commit whose document was restored.
    pub restored_from: String,
    /// The file that was changed, relative to the repository root.
    pub file: String,
}

/// Why no revert was pushed.
#[derive(Debug, thiserror::Error)]
pub enum RevertError {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Reverting would not be safe or would not help; nothing was changed.
    #[error("not reverting {app}: {reason}")]
    Refused { app: String, reason: String },
}

/// Clones the source's branch, restores `app`'s document to its last good text, commits it as
/// `author` and pushes. See the module documentation for how, and when it refuses.
pub async fn revert(request: &RevertRequest<'_>) -> Result<Reverted, RevertError> {
    let work_dir = request.work_dir;
    let _ = tokio::fs::remove_dir_all(work_dir).await;
    let result = revert_in(request).await;
    let _ = tokio::fs::remove_dir_all(work_dir).await;
    result
}

async fn revert_in(request: &RevertRequest<'_>) -> Result<Reverted, RevertError> {
    let app = request.app;
    let refuse = |reason: String| RevertError::Refused {
        app: app.to_string(),
        reason,
    };
    let branch = branch_of(&request.source.reference).ok_or_else(|| {
        refuse(format!(
            "the source follows {:?}, not a branch; a revert can only be pushed to a branch",
            request.source.reference
        ))
    })?;
    let copy = WorkingCopy::clone(
        &request.source.repo,
        branch,
        request.source.auth.clone(),
        request.work_dir,
        None,
    )
    .await?;
    copy.set_committer(request.author).await?;
    let head = copy.head().await?;
    let path = &request.source.path;

    let head_files = copy.manifests(&head, path).await?;
    let (head_revision, head_origin) = locate(&head_files, app).ok_or_else(|| {
        refuse(format!(
            "the head {head} does not validate or does not define it"
        ))
    })?;
    if head_revision != request.failed_revision {
        return Err(refuse(format!(
            "the head {head} no longer asks for the failed revision {} (it asks for {head_revision})",
            request.failed_revision
        )));
    }

    let history = copy.history(path, MAX_WALK).await?;
    let mut offending = None;
    let mut good = None;
    for commit in &history {
        let files = copy.manifests(&commit.sha, path).await?;
        match locate(&files, app) {
            Some((revision, origin)) if revision == request.stable_revision => {
                good = Some((commit, files, origin));
                break;
            }
            _ => offending = Some(commit),
        }
    }
    let Some((good, good_files, good_origin)) = good else {
        return Err(refuse(format!(
            "none of the last {} commits touching the path gives it the stable revision {}",
            history.len(),
            request.stable_revision
        )));
    };
    let offending = offending.unwrap_or(good);
    if good_origin.0 != head_origin.0 {
        return Err(refuse(format!(
            "its manifest moved from {} (at {}) to {} since; restore it by hand",
            good_origin.0, good.sha, head_origin.0
        )));
    }
    let file = head_origin.0.clone();
    let contents_at = |files: &[SourceFile]| {
        files
            .iter()
            .find(|f| f.path == file)
            .map(|f| f.contents.clone())
    };
    let (Some(now), Some(then)) = (contents_at(&head_files), contents_at(&good_files)) else {
        return Err(refuse(format!("{file} is missing at one of the commits")));
    };
    let restored_doc = &then[document_range(&then, good_origin.1)];
    let range = document_range(&now, head_origin.1);
    let mut restored = String::with_capacity(now.len());
    restored.push_str(&now[..range.start]);
    restored.push_str(restored_doc);
    restored.push_str(&now[range.end..]);

    let mut tree = head_files.clone();
    if let Some(f) = tree.iter_mut().find(|f| f.path == file) {
        f.contents = restored.clone();
    }
    match locate(&tree, app) {
        Some((revision, _)) if revision == request.stable_revision => {}
        Some((revision, _)) => {
            return Err(refuse(format!(
                "restoring its document from {} gives revision {revision}, not the stable {}",
                good.sha, request.stable_revision
            )))
        }
        None => {
            return Err(refuse(format!(
                "the tree does not validate with its document restored from {}",
                good.sha
            )))
        }
    }

    copy.write(&file, &restored).await?;
    let message = format!(
        "Revert {app} to revision {stable}\n\n\
         The rollout of revision {failed} of {app} aborted: {reason}.\n\
         This restores the manifest of {app} in {file} as it was at commit {good}.\n\
         Reverts the change to {app} in commit {offending} (\"{subject}\").\n",
        stable = short(request.stable_revision),
        failed = short(request.failed_revision),
        reason = request.reason,
        good = good.sha,
        offending = offending.sha,
        subject = offending.subject,
    );
    let commit = copy
        .commit(&[&file], &message, Some(request.author))
        .await?;
    copy.push().await?;
    Ok(Reverted {
        commit,
        offending: offending.sha.clone(),
        restored_from: good.sha.clone(),
        file,
    })
}

/// The branch a reference names, if it names one (`main`, `refs/heads/main`).
fn branch_of(reference: &str) -> Option<&str> {
    let name = reference.trim();
    let name = name.strip_prefix("refs/heads/").unwrap_or(name);
    let is_sha = name.len() >= 40 && name.chars().all(|c| c.is_ascii_hexdigit());
    if name.is_empty() || name == "HEAD" || name.starts_with("refs/") || is_sha {
        return None;
    }
    Some(name)
}

/// The application's revision and where its document starts (file, line), if the tree is
/// valid and defines it.
fn locate(files: &[SourceFile], app: &str) -> Option<(String, (String, usize))> {
    let state = gauntlet_spec::parse(files).ok()?;
    let declared = state.applications.get(app)?;
    Some((
        declared.revision.clone(),
        (declared.origin.file.clone(), declared.origin.line),
    ))
}

fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

/// The byte range of the YAML document of `text` whose content starts at 1-based line
/// `first_line`: from just after the `---` line before it (or the top of the file) to just
/// before the next `---` or `...` line (or the end of the file).
pub fn document_range(text: &str, first_line: usize) -> Range<usize> {
    let mut start = 0;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let number = index + 1;
        let marker = is_marker(line, "---") || is_marker(line, "...");
        if number < first_line && marker {
            start = offset + line.len();
        } else if number > first_line && marker {
            return start..offset;
        }
        offset += line.len();
    }
    start..text.len()
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_spans_from_its_marker_to_the_next() {
        let text = "# top\na: 1\n---\n# about b\nb: 2\nc: 3\n--- \nd: 4\n";
        assert_eq!(&text[document_range(text, 2)], "# top\na: 1\n");
        assert_eq!(&text[document_range(text, 5)], "# about b\nb: 2\nc: 3\n");
        assert_eq!(&text[document_range(text, 8)], "d: 4\n");
    }

    #[test]
    fn only_branches_can_take_a_revert() {
        assert_eq!(branch_of("main"), Some("main"));
        assert_eq!(branch_of("refs/heads/release/1"), Some("release/1"));
        assert_eq!(branch_of("HEAD"), None);
        assert_eq!(branch_of("refs/tags/v1"), None);
        assert_eq!(branch_of(&"a".repeat(40)), None);
    }
}
