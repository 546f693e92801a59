//! `GitSource` against real repositories: local paths, `file://`, and `git://` through a real
//! `git daemon`, including force-pushes and unreachable servers.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{closed_port, git, Daemon, Remote};
use gauntlet_source::{GitSource, SourceConfig, SourceError};

fn source(repo: String, reference: &str, path: &str, cache: &Path) -> GitSource {
    GitSource::new(SourceConfig {
        repo,
        reference: reference.into(),
        path: path.into(),
        auth: None,
        cache_dir: cache.join("cache"),
    })
}

fn paths(snapshot: &gauntlet_source::Snapshot) -> Vec<&str> {
    snapshot.files.iter().map(|f| f.path.as_str()).collect()
}

const APP_V1: &str = "kind: Application\nmetadata: {name: checkout}\n# v1\n";
const APP_V2: &str = "kind: Application\nmetadata: {name: checkout}\n# v2\n";

#[tokio::test]
async fn local_path_snapshot_holds_only_manifests_under_the_sub_path() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("remote"));
    let head = remote.commit(
        &[
            ("apps/checkout.yaml", APP_V1),
            ("apps/flags/flags.json", "{}"),
            ("apps/web.yml", "kind: Application\n"),
            ("apps/README.md", "not a manifest"),
            ("other/db.yaml", "kind: Application\n"),
            ("root.yaml", "kind: Application\n"),
        ],
        &[],
        "Add checkout\n\nLonger explanation.",
    );
    let source = source(
        remote.dir.display().to_string(),
        "main",
        "./apps/",
        tmp.path(),
    );

    assert_eq!(source.remote_head().await.unwrap(), head);
    let snapshot = source.fetch(&head).await.unwrap();

    assert_eq!(snapshot.commit, head);
    assert_eq!(snapshot.message, "Add checkout");
    assert_eq!(snapshot.author, "Tess Ter <tess@example.com>");
    assert_eq!(
        paths(&snapshot),
        [
            "apps/checkout.yaml",
            "apps/flags/flags.json",
            "apps/web.yml"
        ]
    );
    assert_eq!(snapshot.files[0].contents, APP_V1);
}

#[tokio::test]
async fn whole_repository_is_read_when_the_sub_path_is_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("remote"));
    let head = remote.commit(&[("a/x.yaml", "a"), ("b.json", "{}")], &[], "init");
    let source = source(remote.dir.display().to_string(), "main", "", tmp.path());
    let snapshot = source.fetch(&head).await.unwrap();
    assert_eq!(paths(&snapshot), ["a/x.yaml", "b.json"]);
}

#[tokio::test]
async fn file_url_source_sees_and_fetches_a_new_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("remote"));
    let first = remote.commit(&[("apps/checkout.yaml", APP_V1)], &[], "v1");
    let source = source(remote.file_url(), "main", "apps", tmp.path());
    assert_eq!(source.remote_head().await.unwrap(), first);
    assert_eq!(
        source.fetch(&first).await.unwrap().files[0].contents,
        APP_V1
    );

    let second = remote.commit(
        &[("apps/checkout.yaml", APP_V2), ("apps/web.yaml", "w")],
        &[],
        "v2",
    );
    assert_eq!(source.remote_head().await.unwrap(), second);
    let snapshot = source.fetch(&second).await.unwrap();
    assert_eq!(snapshot.commit, second);
    assert_eq!(snapshot.message, "v2");
    assert_eq!(snapshot.files[0].contents, APP_V2);
    assert_eq!(paths(&snapshot), ["apps/checkout.yaml", "apps/web.yaml"]);

    let third = remote.commit(&[], &["apps/web.yaml"], "remove web");
    assert_eq!(
        paths(&source.fetch(&third).await.unwrap()),
        ["apps/checkout.yaml"]
    );
}

#[tokio::test]
async fn force_push_to_an_older_commit_or_an_unrelated_history_is_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("remote"));
    let old = remote.commit(&[("apps/checkout.yaml", APP_V1)], &[], "v1");
    let new = remote.commit(&[("apps/checkout.yaml", APP_V2)], &[], "v2");
    let source = source(remote.file_url(), "main", "apps", tmp.path());
    // Only `new` is fetched (shallow), so `old` is not in the cache yet.
    assert_eq!(
        source
            .fetch(&source.remote_head().await.unwrap())
            .await
            .unwrap()
            .commit,
        new
    );

    remote.force_main_to(&old);
    assert_eq!(source.remote_head().await.unwrap(), old);
    let snapshot = source.fetch(&old).await.unwrap();
    assert_eq!(snapshot.files[0].contents, APP_V1);

    let unrelated = remote.replace_history(&[("apps/other.yaml", "o")], "rewrite");
    assert_eq!(source.remote_head().await.unwrap(), unrelated);
    let snapshot = source.fetch(&unrelated).await.unwrap();
    assert_eq!(paths(&snapshot), ["apps/other.yaml"]);
    assert_eq!(snapshot.message, "rewrite");
}

#[tokio::test]
async fn git_daemon_source_follows_new_commits_and_force_pushes() {
    let tmp = tempfile::tempdir().unwrap();
    let served = tmp.path().join("served");
    let remote = Remote::init(served.join("deploy"));
    let first = remote.commit(&[("apps/checkout.yaml", APP_V1)], &[], "v1");
    let daemon = Daemon::start(&served);
    let source = source(daemon.url("deploy"), "main", "apps", tmp.path());

    assert_eq!(source.remote_head().await.unwrap(), first);
    assert_eq!(
        source.fetch(&first).await.unwrap().files[0].contents,
        APP_V1
    );

    let second = remote.commit(&[("apps/checkout.yaml", APP_V2)], &[], "v2");
    assert_eq!(source.remote_head().await.unwrap(), second);
    assert_eq!(
        source.fetch(&second).await.unwrap().files[0].contents,
        APP_V2
    );

    let unrelated = remote.replace_history(&[("apps/checkout.yaml", "reborn")], "rewrite");
    assert_eq!(source.remote_head().await.unwrap(), unrelated);
    assert_eq!(
        source.fetch(&unrelated).await.unwrap().files[0].contents,
        "reborn"
    );
}

#[tokio::test]
async fn tags_resolve_to_their_commits_and_branches_win_over_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("remote"));
    let tagged = remote.commit(&[("apps/checkout.yaml", APP_V1)], &[], "v1");
    git(&remote.dir, &["tag", "-a", "v1.0.0", "-m", "release 1"]);
    git(&remote.dir, &["tag", "light"]);
    git(
        &remote.dir,
        &["tag", "-a", "stable", "-m", "a tag named like a branch"],
    );
    let tip = remote.commit(&[("apps/checkout.yaml", APP_V2)], &[], "v2");
    git(&remote.dir, &["branch", "stable"]);

    let annotated = source(remote.file_url(), "v1.0.0", "apps", tmp.path());
    assert_eq!(annotated.remote_head().await.unwrap(), tagged);
    assert_eq!(
        annotated.fetch(&tagged).await.unwrap().files[0].contents,
        APP_V1
    );

    let light = source(remote.file_url(), "light", "apps", tmp.path());
    assert_eq!(light.remote_head().await.unwrap(), tagged);

    let both = source(remote.file_url(), "stable", "apps", tmp.path());
    assert_eq!(both.remote_head().await.unwrap(), tip);
    let tag_only = source(remote.file_url(), "refs/tags/stable", "apps", tmp.path());
    assert_eq!(tag_only.remote_head().await.unwrap(), tagged);
}

#[tokio::test]
async fn a_sha_reference_needs_no_lookup_and_fetches_that_exact_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("remote"));
    let pinned = remote.commit(&[("apps/checkout.yaml", APP_V1)], &[], "v1");
    remote.commit(&[("apps/checkout.yaml", APP_V2)], &[], "v2");
    let source = source(
        remote.file_url(),
        &pinned.to_uppercase(),
        "apps",
        tmp.path(),
    );

    assert_eq!(source.remote_head().await.unwrap(), pinned);
    let snapshot = source.fetch(&pinned).await.unwrap();
    assert_eq!(snapshot.commit, pinned);
    assert_eq!(snapshot.files[0].contents, APP_V1);
}

#[tokio::test]
async fn a_cached_commit_is_read_without_the_remote() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("remote"));
    let head = remote.commit(&[("apps/checkout.yaml", APP_V1)], &[], "v1");
    let source = source(remote.file_url(), "main", "apps", tmp.path());
    source.fetch(&head).await.unwrap();

    std::fs::remove_dir_all(&remote.dir).unwrap();
    assert_eq!(source.fetch(&head).await.unwrap().files[0].contents, APP_V1);
}

#[tokio::test]
async fn a_commit_force_pushed_away_and_collected_is_reported_as_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("remote"));
    let kept = remote.commit(&[("apps/checkout.yaml", APP_V1)], &[], "v1");
    let source = source(remote.file_url(), "main", "apps", tmp.path());
    source.fetch(&kept).await.unwrap();
    let doomed = remote.commit(&[("apps/checkout.yaml", APP_V2)], &[], "v2");
    remote.force_main_to(&kept);
    git(&remote.dir, &["reflog", "expire", "--expire=now", "--all"]);
    git(&remote.dir, &["gc", "--quiet", "--prune=now"]);

    let err = source.fetch(&doomed).await.err().unwrap();
    assert!(matches!(err, SourceError::CommitNotFound { .. }), "{err}");
    assert!(err.is_transient());
    // The cache still serves the current head afterwards.
    assert_eq!(source.fetch(&kept).await.unwrap().files[0].contents, APP_V1);
}

#[tokio::test]
async fn a_missing_branch_is_ref_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("remote"));
    remote.commit(&[("a.yaml", "a")], &[], "init");
    let err = source(remote.file_url(), "nope", "", tmp.path())
        .remote_head()
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, SourceError::RefNotFound { ref reference, .. } if reference == "nope"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_sub_path_names_the_path_and_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("remote"));
    let head = remote.commit(&[("apps/checkout.yaml", APP_V1)], &[], "init");
    let err = source(remote.file_url(), "main", "envs/prod", tmp.path())
        .fetch(&head)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, SourceError::PathNotFound { ref path, .. } if path == "envs/prod"),
        "{err}"
    );
    assert!(err.to_string().contains(&head), "{err}");
}

#[tokio::test]
async fn a_sub_path_with_glob_characters_is_taken_literally() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("remote"));
    let head = remote.commit(&[("apps/a.yaml", "a"), ("apps-x/b.yaml", "b")], &[], "init");
    let err = source(remote.file_url(), "main", "apps*", tmp.path())
        .fetch(&head)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SourceError::PathNotFound { .. }), "{err}");
}

#[tokio::test]
async fn an_oversized_manifest_rejects_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("remote"));
    let big = "#".repeat(1024 * 1024 + 1);
    let head = remote.commit(
        &[("apps/ok.yaml", "a"), ("apps/big.yaml", &big)],
        &[],
        "init",
    );
    let err = source(remote.file_url(), "main", "apps", tmp.path())
        .fetch(&head)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, SourceError::FileTooLarge { ref path, .. } if path == "apps/big.yaml"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_local_repository_is_reported_as_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("nowhere").display().to_string();
    let err = source(repo, "main", "", tmp.path())
        .remote_head()
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, SourceError::RepositoryNotFound { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_closed_port_is_unreachable_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("git://127.0.0.1:{}/deploy", closed_port());
    let err = source(url, "main", "", tmp.path())
        .remote_head()
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SourceError::Unreachable { .. }), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_stopped_daemon_is_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    let served = tmp.path().join("served");
    let remote = Remote::init(served.join("deploy"));
    let head = remote.commit(&[("a.yaml", "a")], &[], "init");
    let daemon = Daemon::start(&served);
    let source = source(daemon.url("deploy"), "main", "", tmp.path());
    assert_eq!(source.remote_head().await.unwrap(), head);

    drop(daemon);
    let err = source.remote_head().await.err().unwrap();
    assert!(matches!(err, SourceError::Unreachable { .. }), "{err}");
    let other = remote.commit(&[("b.yaml", "b")], &[], "more");
    let err = source.fetch(&other).await.err().unwrap();
    assert!(matches!(err, SourceError::Unreachable { .. }), "{err}");
}

#[tokio::test]
async fn a_server_that_never_answers_is_stopped_by_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts connections and holds them open without a word.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let source = source(
        format!("git://127.0.0.1:{port}/deploy"),
        "main",
        "",
        tmp.path(),
    )
    .with_timeout(Duration::from_secs(1));
    let err = source.remote_head().await.err().unwrap();
    assert!(
        matches!(err, SourceError::Timeout { ref command, .. } if command == "git ls-remote"),
        "{err}"
    );
    silent.abort();
}

#[tokio::test]
async fn concurrent_fetches_through_one_cache_all_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("remote"));
    let first = remote.commit(&[("apps/checkout.yaml", APP_V1)], &[], "v1");
    let second = remote.commit(&[("apps/checkout.yaml", APP_V2)], &[], "v2");
    let sources: Vec<_> = (0..4)
        .map(|i| {
            std::sync::Arc::new(source(
                remote.file_url(),
                if i % 2 == 0 { &first } else { "main" },
                "apps",
                tmp.path(),
            ))
        })
        .collect();
    let mut tasks = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let src = src.clone();
        let commit = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move { src.fetch(&commit).await }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let snapshot = task.await.unwrap().unwrap();
        let expected = if i % 2 == 0 { APP_V1 } else { APP_V2 };
        assert_eq!(snapshot.files[0].contents, expected);
    }
}

#[tokio::test]
async fn a_repository_url_that_looks_like_an_option_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let err = source(
        "--upload-pack=touch /tmp/pwned".into(),
        "main",
        "",
        tmp.path(),
    )
    .remote_head()
    .await
    .err()
    .unwrap();
    assert!(matches!(err, SourceError::InvalidConfig { .. }), "{err}");
}
