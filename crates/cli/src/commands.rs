//! The CLI commands that talk to a running controller (`status`, `sync`, `diff`, `history`,
//! `down`) or work offline (`logs`, `validate`, `schema`), and how they print.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use gauntlet_reconcile::{AppStatus, Diff, Health, Status};
use gauntlet_store::AuditRecord;
use serde::Serialize;

use crate::client::Client;
use crate::Output;

pub fn down(state_dir: &Path, stop_instances: bool) -> Result<ExitCode> {
    let client = Client::from_state_dir(state_dir)?;
    let _: serde_json::Value = client.post(
        "/api/v1/shutdown",
        serde_json::json!({"stopInstances": stop_instances}),
    )?;
    println!(
        "controller stopping{}",
        if stop_instances {
            " with every instance"
        } else {
            "; instances keep running"
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn status(state_dir: &Path, app: Option<&str>, output: Output) -> Result<ExitCode> {
    let client = Client::from_state_dir(state_dir)?;
    match app {
        Some(name) => {
            let app: AppStatus = client.get(&format!("/api/v1/apps/{name}"))?;
            print_structured(&app, output, |out| print_app_detail(out, &app))?;
        }
        None => {
            let status: Status = client.get("/api/v1/status")?;
            print_structured(&status, output, |out| print_status(out, &status))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Syncs every application (a commit is applied whole); `app` only narrows what is printed.
pub fn sync(state_dir: &Path, app: Option<&str>) -> Result<ExitCode> {
    let client = Client::from_state_dir(state_dir)?;
    let mut status = client.sync()?;
    if let Some(name) = app {
        status.apps.retain(|a| a.name == name);
    }
    let mut out = std::io::stdout().lock();
    print_status(&mut out, &status)?;
    Ok(
        if status.source.rejected.is_some() || status.source.error.is_some() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}

pub fn diff(state_dir: &Path, output: Output) -> Result<ExitCode> {
    let client = Client::from_state_dir(state_dir)?;
    let diff: Diff = client.get("/api/v1/diff")?;
    print_structured(&diff, output, |out| {
        writeln!(
            out,
            "head {} \"{}\"",
            short(&diff.commit.sha),
            diff.commit.message
        )?;
        for e in &diff.errors {
            writeln!(out, "  invalid: {e}")?;
        }
        if diff.errors.is_empty() && diff.changes.is_empty() {
            writeln!(out, "  no changes: what runs matches this commit")?;
        }
        for c in &diff.changes {
            writeln!(out, "  {:<10} {:<20} {}", c.action, c.app, c.detail)?;
        }
        Ok(())
    })?;
    Ok(if diff.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn history(
    state_dir: &Path,
    app: Option<&str>,
    limit: usize,
    output: Output,
) -> Result<ExitCode> {
    let client = Client::from_state_dir(state_dir)?;
    let mut path = format!("/api/v1/history?limit={limit}");
    if let Some(a) = app {
        path.push_str(&format!("&app={a}"));
    }
    let records: Vec<AuditRecord> = client.get(&path)?;
    print_structured(&records, output, |out| {
        for r in &records {
            let change = if r.before.is_empty() && r.after.is_empty() {
                String::new()
            } else {
                format!(" [{} -> {}]", short(&r.before), short(&r.after))
            };
            writeln!(
                out,
                "{:>5} {} {:<18} {:<12} {:<16} {}{change}",
                r.seq,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_millis(r.time_ms)
                ),
                r.actor.to_string(),
                if r.app.is_empty() { "-" } else { &r.app },
                r.action,
                r.reason
            )?;
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn logs(state_dir: &Path, app: &str, follow: bool, tail: usize) -> Result<ExitCode> {
    let dir = gauntlet_runtime::local::log_dir(state_dir, app);
    let mut offsets: BTreeMap<PathBuf, u64> = BTreeMap::new();
    let files = live_logs(&dir);
    if files.is_empty() && !follow {
        anyhow::bail!(
            "no logs for {app} in {} (is the application deployed, and is --state-dir right?)",
            dir.display()
        );
    }
    let mut out = std::io::stdout().lock();
    for f in &files {
        let text = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        let prefix = instance_of(f);
        for line in &lines[lines.len().saturating_sub(tail)..] {
            writeln!(out, "[{prefix}] {line}")?;
        }
        offsets.insert(f.clone(), text.len() as u64);
    }
    out.flush()?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        for f in live_logs(&dir) {
            let Ok(mut file) = std::fs::File::open(&f) else {
                continue;
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let offset = offsets.entry(f.clone()).or_insert(0);
            if len < *offset {
                // Rotated by copy-truncate: start over from the top of the live file.
                *offset = 0;
            }
            if len == *offset {
                continue;
            }
            file.seek(SeekFrom::Start(*offset))?;
            let mut buf = Vec::new();
            file.read_to_end(&mut buf)?;
            *offset += buf.len() as u64;
            let prefix = instance_of(&f);
            for line in String::from_utf8_lossy(&buf).lines() {
                writeln!(out, "[{prefix}] {line}")?;
            }
            out.flush()?;
        }
    }
}

fn live_logs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn instance_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn validate(path: &Path) -> Result<ExitCode> {
    let files = if path.is_file() {
        let contents =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        vec![gauntlet_spec::SourceFile {
            path: path.display().to_string(),
            contents,
        }]
    } else {
        gauntlet_spec::read_dir(path).with_context(|| format!("reading {}", path.display()))?
    };
    match gauntlet_spec::parse(&files) {
        Ok(desired) => {
            println!(
                "ok: {} applications, {} analysis templates, {} chaos experiments and {} flags \
                 in {} files",
                desired.applications.len(),
                desired.templates.len(),
                desired.experiments.len(),
                desired.flags.flags.len(),
                files.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(diags) => {
            eprintln!("{diags}");
            eprintln!("{} problems", diags.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn schema() -> Result<ExitCode> {
    println!(
        "{}",
        serde_json::to_string_pretty(&gauntlet_spec::schema())?
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn print_structured<T: Serialize>(
    value: &T,
    output: Output,
    table: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
        Output::Yaml => write!(
            out,
            "{}",
            serde_saphyr::to_string(value).context("rendering YAML")?
        )?,
        Output::Table => table(&mut out)?,
    }
    Ok(())
}

/// A commit SHA cut to its first 10 digits; anything else (a revision, a health word) whole.
pub fn short(sha: &str) -> &str {
    let is_commit = sha.len() >= 40 && sha.bytes().all(|b| b.is_ascii_hexdigit());
    if is_commit {
        &sha[..10]
    } else {
        sha
    }
}

fn health_cell(h: &Health) -> (&'static str, &str) {
    match h {
        Health::Healthy => ("Healthy", ""),
        Health::Progressing(r) => ("Progressing", r),
        Health::Degraded(r) => ("Degraded", r),
    }
}

pub fn print_status(out: &mut dyn Write, s: &Status) -> std::io::Result<()> {
    let src = &s.source;
    writeln!(
        out,
        "source   {} ({}{})",
        src.repo,
        src.reference,
        if src.path.is_empty() {
            String::new()
        } else {
            format!(", path {}", src.path)
        }
    )?;
    match &src.applied {
        Some(c) => writeln!(
            out,
            "applied  {} \"{}\" by {}",
            short(&c.sha),
            c.message,
            c.author
        )?,
        None => writeln!(out, "applied  nothing yet")?,
    }
    if let Some(r) = &src.rejected {
        writeln!(
            out,
            "rejected {} \"{}\": the applied commit stays live",
            short(&r.commit.sha),
            r.commit.message
        )?;
        for e in &r.errors {
            writeln!(out, "         {e}")?;
        }
    }
    if let Some(e) = &src.error {
        writeln!(
            out,
            "error    {e} ({} failed fetches; retrying with backoff)",
            src.failures
        )?;
    }
    if let Some(p) = &s.proxy {
        match (p.pid, p.admin) {
            (Some(pid), Some(admin)) => writeln!(
                out,
                "proxy    pid {pid}, admin {admin}, configuration {}",
                p.version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "unknown".into())
            )?,
            _ => writeln!(out, "proxy    not running (the controller restarts it)")?,
        }
        if let Some(e) = &p.error {
            writeln!(out, "         error: {e}")?;
        }
        for (app, reason) in &p.unbound {
            writeln!(out, "         {app} not served: {reason}")?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<20} {:<10} {:<12} {:<11} {:<6} {:<22} REASON",
        "APP", "SYNC", "HEALTH", "REVISION", "READY", "SERVICE"
    )?;
    for a in &s.apps {
        let (health, reason) = health_cell(&a.health);
        let mut reason = reason.to_string();
        for w in &a.warnings {
            if !reason.is_empty() {
                reason.push_str("; ");
            }
            reason.push_str(w);
        }
        writeln!(
            out,
            "{:<20} {:<10} {:<12} {:<11} {:<6} {:<22} {}",
            a.name,
            format!("{:?}", a.sync),
            health,
            a.revision,
            format!("{}/{}", a.ready, a.replicas),
            a.service.as_deref().unwrap_or("-"),
            reason
        )?;
    }
    Ok(())
}

fn print_app_detail(out: &mut dyn Write, a: &AppStatus) -> std::io::Result<()> {
    let (health, reason) = health_cell(&a.health);
    writeln!(out, "name      {}", a.name)?;
    writeln!(out, "commit    {}", short(&a.commit))?;
    writeln!(out, "revision  {}", a.revision)?;
    writeln!(out, "sync      {:?}", a.sync)?;
    writeln!(out, "health    {health} {reason}")?;
    writeln!(out, "ready     {}/{}", a.ready, a.replicas)?;
    if let Some(s) = &a.service {
        writeln!(out, "service   {s}")?;
    }
    for t in &a.traffic {
        match &t.live {
            Some(l) => writeln!(
                out,
                "traffic   {t}: {:.1} req/s, errors {}, p50 {}, p99 {} (last {:.0}s)",
                l.requests_per_second,
                l.error_rate
                    .map(|e| format!("{:.2}%", e * 100.0))
                    .unwrap_or_else(|| "-".into()),
                l.p50_ms
                    .map(|v| format!("{v:.1} ms"))
                    .unwrap_or_else(|| "-".into()),
                l.p99_ms
                    .map(|v| format!("{v:.1} ms"))
                    .unwrap_or_else(|| "-".into()),
                l.window_seconds
            )?,
            None => writeln!(out, "traffic   {t}")?,
        }
    }
    for w in &a.warnings {
        writeln!(out, "warning   {w}")?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<36} {:<11} {:<10} {:<8} {:<6} RESTARTS",
        "INSTANCE", "REVISION", "PHASE", "PID", "PORT"
    )?;
    for i in &a.instances {
        let phase = serde_json::to_value(&i.phase)
            .ok()
            .and_then(|v| v.get("phase").and_then(|p| p.as_str()).map(str::to_string))
            .unwrap_or_default();
        writeln!(
            out,
            "{:<36} {:<11} {:<10} {:<8} {:<6} {}",
            i.id.0,
            i.revision,
            phase,
            i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            i.port,
            i.restarts
        )?;
        if let gauntlet_runtime::Phase::CrashLoop {
            last_exit,
            log_tail,
            ..
        } = &i.phase
        {
            writeln!(out, "    last exit: {last_exit}")?;
            for l in log_tail.iter().rev().take(5).rev() {
                writeln!(out, "    | {l}")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_commit_shas_are_shortened() {
        let sha = "1e29bc69be0123456789abcdef0123456789abcd";
        assert_eq!(short(sha), "1e29bc69be");
        assert_eq!(short("Progressing"), "Progressing");
        assert_eq!(short("9aeca644ae"), "9aeca644ae");
    }
}
