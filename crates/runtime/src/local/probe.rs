//! Readiness probes, after Kubernetes: `httpGet` (status 200-399, redirects not followed),
//! `tcpSocket` (a connection is accepted) and `exec` (exit status 0), each bounded by the
//! probe's timeout. One call runs one probe and says why it failed; the supervisor turns a
//! series of outcomes into ready/unready with [`super::policy::Readiness`].

use std::process::Stdio;
use std::time::Duration;

use gauntlet_spec::{substitute_port, Probe};

use super::process::Launch;

/// Runs `probe` once against an instance started as `launch`.
pub(crate) async fn check(
    probe: &Probe,
    launch: &Launch,
    client: &reqwest::Client,
) -> Result<(), String> {
    let timeout = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
    let port = launch.port;
    if let Some(http) = &probe.http_get {
        let host = http.host.as_deref().unwrap_or("127.0.0.1");
        let path = substitute_port(&http.path, port);
        let sep = if path.starts_with('/') { "" } else { "/" };
        let url = format!("http://{host}:{}{sep}{path}", http.port.unwrap_or(port));
        let response = client
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        return if (200..400).contains(&status.as_u16()) {
            Ok(())
        } else {
            Err(format!("GET {url}: status {status}"))
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let host = tcp.host.as_deref().unwrap_or("127.0.0.1");
        let addr = format!("{host}:{}", tcp.port.unwrap_or(port));
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
            Err(_) => Err(format!("connect {addr}: timed out after {timeout:?}")),
        };
    }
    if let Some(exec) = &probe.exec {
        let words: Vec<String> = exec
            .command
            .iter()
            .map(|w| substitute_port(w, port))
            .collect();
        let Some((program, args)) = words.split_first() else {
            return Err("exec probe has an empty command".into());
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .envs(&launch.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A probe that outlives its timeout is abandoned; do not leave it running.
            .kill_on_drop(true);
        if let Some(cwd) = &launch.cwd {
            cmd.current_dir(cwd);
        }
        let shown = words.join(" ");
        return match tokio::time::timeout(timeout, cmd.status()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!(
                "`{shown}`: {}",
                super::process::describe_exit(status)
            )),
            Ok(Err(e)) => Err(format!("`{shown}`: {e}")),
            Err(_) => Err(format!("`{shown}`: timed out after {timeout:?}")),
        };
    }
    // Manifest validation requires one action; a probe without one checks nothing.
    Ok(())
}
