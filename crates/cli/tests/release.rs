//! `gauntlet release` against real git repositories: the CI hand-off edits one manifest as one
//! commit, keeps the rest of the file byte for byte, refuses what would not validate, and
//! pushes to a bare repository.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// Two documents in one file, comments and mixed styles: all of it must survive an edit.
const MANIFEST: &str = r#"# Web tier. Edited by CI: keep this comment.
apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata:
  name: web   # the public name
spec:
  replicas: 2
  process:
    command: ["/usr/bin/env", "web"]
    args: ["--listen", "127.0.0.1:${PORT}", "--version", "v1"]  # version last
    env:
      VERSION: v1
      MODE:    'fast'
---
# The worker stays as it is.
apiVersion: gauntlet.dev/v1alpha1
kind: Application
metadata: {name: worker}
spec:
  process:
    command: [worker, "--version", "v1"]
"#;

fn release(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("release")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("gauntlet release runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

fn repo_with_manifest() -> Repo {
    let repo = Repo::new();
    repo.write("apps/web.yaml", MANIFEST);
    repo.commit("web v1");
    repo
}

#[test]
fn release_sets_an_arg_and_an_env_value_as_one_commit_keeping_the_rest_byte_for_byte() {
    let repo = repo_with_manifest();
    let before = repo.git(&["rev-parse", "HEAD"]);
    let out = release(
        repo.path(),
        &[
            "web",
            "--set",
            "spec.process.args[3]=v2",
            "--set",
            "spec.process.env.VERSION=v2",
            "--path",
            "apps",
            "--author",
            "CI Bot <ci@example.com>",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sha = text(&out.stdout);
    assert_eq!(repo.git(&["rev-parse", "HEAD"]), sha);
    assert_eq!(repo.git(&["rev-parse", "HEAD~1"]), before, "one commit");
    let expected = MANIFEST
        .replacen(r#""--version", "v1"]  #"#, r#""--version", "v2"]  #"#, 1)
        .replacen("VERSION: v1", "VERSION: v2", 1);
    assert_ne!(expected, MANIFEST);
    assert_eq!(
        repo.git(&["show", "HEAD:apps/web.yaml"]),
        expected.trim_end()
    );
    assert_eq!(
        std::fs::read_to_string(repo.path().join("apps/web.yaml")).unwrap(),
        expected,
        "the working copy holds the commit"
    );
    assert_eq!(
        repo.git(&["log", "-1", "--format=%an <%ae>|%s"]),
        "CI Bot <ci@example.com>|release web: spec.process.args[3]=v2, spec.process.env.VERSION=v2"
    );
    assert_eq!(
        repo.git(&["diff", "--name-only", "HEAD~1", "HEAD"]),
        "apps/web.yaml"
    );
}

#[test]
fn release_refuses_invalid_values_and_unknown_fields_and_commits_nothing() {
    let repo = repo_with_manifest();
    let before = repo.git(&["rev-parse", "HEAD"]);
    for (set, expect) in [
        // The tree would not validate: replicas is a count.
        ("spec.replicas=many", "invalid"),
        // The field does not exist in the model.
        ("spec.process.comand=web", "comand"),
        // Out of range, with the file and line.
        (
            "spec.process.args[7]=x",
            "apps/web.yaml:10: spec.process.args[7]",
        ),
        ("spec.nothing.deeper=x", "no `nothing`"),
    ] {
        let out = release(repo.path(), &["web", "--set", set, "--path", "apps"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{set}: {stderr}");
        assert!(stderr.contains(expect), "{set}: {stderr}");
        assert_eq!(repo.git(&["rev-parse", "HEAD"]), before, "{set}");
        assert_eq!(repo.git(&["status", "--porcelain"]), "", "{set}");
    }
    let out = release(repo.path(), &["api", "--set", "spec.replicas=1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no Application named \"api\""));
}

#[test]
fn release_pushes_to_a_bare_repository_from_a_temporary_clone() {
    let repo = repo_with_manifest();
    let remote = tempfile::tempdir().unwrap();
    let bare = remote.path().join("deploy.git");
    let status = Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(&bare)
        .status()
        .unwrap();
    assert!(status.success());
    repo.git(&["push", "-q", bare.to_str().unwrap(), "main"]);
    let url = format!("file://{}", bare.display());

    let elsewhere = tempfile::tempdir().unwrap();
    let out = release(
        elsewhere.path(),
        &[
            "web",
            "--repo",
            &url,
            "--set",
            "spec.process.env.VERSION=v3",
            "--author",
            "CI Bot <ci@example.com>",
            "--push",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sha = text(&out.stdout);
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&bare)
            .args(args)
            .output()
            .unwrap();
        text(&out.stdout)
    };
    assert_eq!(git(&["rev-parse", "main"]), sha);
    assert_eq!(
        git(&["show", "main:apps/web.yaml"]),
        MANIFEST
            .replacen("VERSION: v1", "VERSION: v3", 1)
            .trim_end()
    );

    // Without --push a remote repository is a dry run: nothing reaches it.
    let out = release(
        elsewhere.path(),
        &[
            "web",
            "--repo",
            &url,
            "--set",
            "spec.process.env.VERSION=v4",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("dry run"));
    assert_eq!(git(&["rev-parse", "main"]), sha);
}
