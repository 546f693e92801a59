//! Shared pieces of the benchmarks: Git fixtures, statistics and peak memory.
//!
//! Each benchmark is a binary in `src/bin/` that runs Gauntlet (and, where one runs here, the
//! anchor) on this machine in the same run and prints its figures next to the anchor's, with
//! the ratio. Nothing here asserts on time: benchmarks measure, tests check behaviour.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// Runs git in `repo` with a fixed identity; returns trimmed stdout.
pub fn git(repo: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=Bench",
            "-c",
            "user.email=bench@example.com",
        ])
        .args(args)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Peak resident memory of this process so far (VmHWM), in bytes.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The `q` quantile (0..=1) of `samples` by nearest rank.
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut s = samples.to_vec();
    s.sort();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The `gauntlet` binary next to the running benchmark: bench binaries live beside it in
/// `<target dir>/<profile>/`, so both must be built with the same target directory.
pub fn gauntlet_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .map(|d| d.join("gauntlet"))
        .ok_or_else(|| anyhow!("no parent directory"))?;
    if !bin.exists() {
        bail!(
            "{} not found: build it with the same target directory \
             (cargo build --release -p gauntlet -p gauntlet-bench)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Live processes whose environment carries `GAUNTLET_STATE_DIR={state}`: the instances a
/// controller with that state directory started, whether or not it still runs.
pub fn instance_processes(state: &Path) -> Vec<u32> {
    let Ok(canonical) = std::fs::canonicalize(state) else {
        return Vec::new();
    };
    let mut marker = b"GAUNTLET_STATE_DIR=".to_vec();
    marker.extend_from_slice(canonical.as_os_str().as_encoded_bytes());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == marker.as_slice()))
        })
        .collect()
}

/// Stops a controller with its instances, as a user would (`POST /api/v1/shutdown` with
/// `stopInstances`), waits up to 20 s for its process to exit, and kills it if it did not.
pub fn shut_down(
    http: &reqwest::blocking::Client,
    api: &str,
    token: &str,
    child: Option<std::process::Child>,
) {
    let _ = http
        .post(format!("http://{api}/api/v1/shutdown"))
        .bearer_auth(token)
        .json(&serde_json::json!({"stopInstances": true}))
        .send();
    if let Some(mut child) = child {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A port nothing listens on now, on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `limit`.
pub fn wait<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_uses_the_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&s, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&s, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&s, 1.0), Duration::from_millis(100));
    }
}
