//! Credentials reach an HTTP git server: `git http-backend` behind a minimal CGI server on
//! 127.0.0.1 that demands one `Authorization` header.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{git, Remote};
use gauntlet_source::{Auth, GitSource, Secret, SourceConfig, SourceError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves smart HTTP for every repository under `root`, answering 401 unless the request
/// carries exactly `authorization`. Stops when the returned handle is aborted or dropped.
async fn serve(root: PathBuf, authorization: String) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = PathBuf::from(git(&root, &["--exec-path"])).join("git-http-backend");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(
                stream,
                root.clone(),
                backend.clone(),
                authorization.clone(),
            ));
        }
    });
    (port, task)
}

async fn handle(mut stream: TcpStream, root: PathBuf, backend: PathBuf, authorization: String) {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let request_line: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let (method, target) = (request_line[0], request_line.get(1).copied().unwrap_or("/"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert!(
        header("transfer-encoding").is_none(),
        "the test server does not speak chunked bodies"
    );

    if header("authorization").as_deref() != Some(authorization.as_str()) {
        let reply = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let _ = stream.write_all(reply.as_bytes()).await;
        return;
    }

    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut cgi = tokio::process::Command::new(backend);
    cgi.env_clear()
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(content_type) = header("content-type") {
        cgi.env("CONTENT_TYPE", content_type);
    }
    if let Some(protocol) = header("git-protocol") {
        cgi.env("GIT_PROTOCOL", protocol);
    }
    let mut child = cgi.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&body).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap().stdout;
    // CGI output: headers (with an optional `Status:`), a blank line, the body.
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    let split = split.or_else(|| {
        out.windows(2)
            .position(|w| w == b"\n\n")
            .map(|i| (i, i + 2))
    });
    let Some((cgi_head_end, body_start)) = split else {
        return;
    };
    let cgi_head = String::from_utf8_lossy(&out[..cgi_head_end]).into_owned();
    let status = cgi_head
        .lines()
        .find_map(|l| l.strip_prefix("Status:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "200 OK".to_string());
    let mut reply = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for line in cgi_head.lines().filter(|l| !l.starts_with("Status:")) {
        reply.push_str(line.trim_end());
        reply.push_str("\r\n");
    }
    reply.push_str(&format!(
        "Content-Length: {}\r\n\r\n",
        out.len() - body_start
    ));
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.write_all(&out[body_start..]).await;
}

fn http_source(port: u16, auth: Option<Auth>, cache: &Path) -> GitSource {
    GitSource::new(SourceConfig {
        repo: format!("http://127.0.0.1:{port}/deploy"),
        reference: "main".into(),
        path: "apps".into(),
        auth,
        cache_dir: cache.join("cache"),
    })
}

#[tokio::test]
async fn a_bearer_token_from_a_file_authenticates_ls_remote_and_fetch() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("served/deploy"));
    let head = remote.commit(
        &[("apps/checkout.yaml", "kind: Application\n")],
        &[],
        "init",
    );
    let (port, server) = serve(tmp.path().join("served"), "Bearer tok-123".into()).await;
    let token = tmp.path().join("token");
    std::fs::write(&token, "tok-123\n").unwrap();

    let source = http_source(port, Some(Auth::Bearer(Secret::File(token))), tmp.path());
    assert_eq!(source.remote_head().await.unwrap(), head);
    let snapshot = source.fetch(&head).await.unwrap();
    assert_eq!(snapshot.files[0].path, "apps/checkout.yaml");
    server.abort();
}

#[tokio::test]
async fn basic_credentials_from_the_environment_authenticate() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("served/deploy"));
    let head = remote.commit(
        &[("apps/checkout.yaml", "kind: Application\n")],
        &[],
        "init",
    );
    // base64("deployer:pa55")
    let (port, server) = serve(
        tmp.path().join("served"),
        "Basic ZGVwbG95ZXI6cGE1NQ==".into(),
    )
    .await;
    std::env::set_var("GAUNTLET_SOURCE_TEST_PASSWORD", "pa55");

    let auth = Auth::Basic {
        username: "deployer".into(),
        password: Secret::Env("GAUNTLET_SOURCE_TEST_PASSWORD".into()),
    };
    let source = http_source(port, Some(auth), tmp.path());
    assert_eq!(source.remote_head().await.unwrap(), head);
    assert_eq!(source.fetch(&head).await.unwrap().commit, head);
    server.abort();
}

#[tokio::test]
async fn missing_or_wrong_credentials_fail_as_auth_without_revealing_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Remote::init(tmp.path().join("served/deploy"));
    remote.commit(
        &[("apps/checkout.yaml", "kind: Application\n")],
        &[],
        "init",
    );
    let (port, server) = serve(tmp.path().join("served"), "Bearer right".into()).await;

    let err = http_source(port, None, tmp.path())
        .remote_head()
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SourceError::Auth { .. }), "{err}");

    let token = tmp.path().join("token");
    std::fs::write(&token, "wrong-token-value").unwrap();
    let source = http_source(port, Some(Auth::Bearer(Secret::File(token))), tmp.path());
    let err = source.remote_head().await.err().unwrap();
    assert!(matches!(err, SourceError::Auth { .. }), "{err}");
    assert!(!err.to_string().contains("wrong-token-value"), "{err}");
    server.abort();
}
