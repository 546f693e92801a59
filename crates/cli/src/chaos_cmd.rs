//! `gauntlet chaos`: run chaos experiments and read their journals.
//!
//! `run EXP` starts a run (`--dry-run` prints the targets and the plan and touches nothing;
//! `--wait` follows it to the end and exits non-zero unless it Completed); `list` shows every
//! run; `get RUN` the live journal; `report RUN` a readable report (or `-o json`); `abort RUN`
//! ends a run at once (faults removed, rollbacks run); `pause-all` stops every run and refuses
//! new ones until `resume-all`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Subcommand;
use gauntlet_chaos::journal::{ActivityRecord, ProbeRecord, RunStatus};
use gauntlet_reconcile::{RunSummary, RunView};

use crate::client::Client;
use crate::Output;

#[derive(Subcommand)]
pub enum ChaosCommand {
    /// Start a run of an experiment.
    Run {
        experiment: String,
        /// Print the targets and the plan; touch nothing.
        #[arg(long)]
        dry_run: bool,
        /// Follow the run to its end; exit non-zero unless it Completed.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30m")]
        timeout: Duration,
    },
    /// Every run, newest last.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// One run's journal, live while it runs.
    Get {
        run: String,
        #[arg(short, long, value_enum, default_value = "json")]
        output: Output,
    },
    /// A readable report of a run: status, the hypothesis before, during and after, each
    /// activity and fault, the rollbacks.
    Report {
        run: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// End a run now: every fault removed, its rollbacks run.
    Abort { run: String },
    /// Stop every run and refuse new ones until resume-all.
    PauseAll,
    /// Allow runs again after pause-all.
    ResumeAll,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct RunList {
    paused: bool,
    #[serde(default)]
    schedules: Vec<Scheduled>,
    runs: Vec<RunSummary>,
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Scheduled {
    experiment: String,
    schedule: String,
    next_fire_ms: u64,
}

pub fn run(state_dir: &Path, command: ChaosCommand) -> Result<ExitCode> {
    let client = Client::from_state_dir(state_dir)?;
    match command {
        ChaosCommand::Run {
            experiment,
            dry_run,
            wait,
            timeout,
        } => {
            let path = format!("/api/v1/chaos/experiments/{experiment}/run");
            if dry_run {
                let plan: serde_json::Value =
                    client.post(&format!("{path}?dryRun=true"), serde_json::json!({}))?;
                println!("{}", serde_json::to_string_pretty(&plan["plan"])?);
                return Ok(ExitCode::SUCCESS);
            }
            let started: serde_json::Value = client.post(&path, serde_json::json!({}))?;
            let id = started["run"].as_str().unwrap_or_default().to_string();
            println!("{id}");
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            let deadline = Instant::now() + timeout;
            loop {
                let view: RunView = client.get(&format!("/api/v1/chaos/runs/{id}"))?;
                if view.journal.is_finished() {
                    report(&mut std::io::stdout().lock(), &view)?;
                    return Ok(if view.journal.status == RunStatus::Completed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    });
                }
                if Instant::now() >= deadline {
                    bail!("run {id} did not finish within {timeout:?}; it goes on");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        ChaosCommand::List { output } => {
            let list: RunList = client.get("/api/v1/chaos/runs")?;
            crate::commands::print_structured(&list, output, |out| {
                if list.paused {
                    writeln!(out, "chaos is paused (gauntlet chaos resume-all)")?;
                }
                for s in &list.schedules {
                    writeln!(
                        out,
                        "scheduled {:<24} {:<16} next {}",
                        s.experiment,
                        s.schedule,
                        at(s.next_fire_ms)
                    )?;
                }
                for r in &list.runs {
                    let gate = r
                        .gate
                        .as_ref()
                        .map(|g| format!("gate of {} step {}", g.app, g.step + 1))
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "{:<40} {:<24} {:<12} {:<9}{gate}",
                        r.id,
                        r.experiment,
                        format!("{:?}", r.status),
                        if r.deviated { "deviated" } else { "" }
                    )?;
                }
                Ok(())
            })?;
        }
        ChaosCommand::Get { run, output } => {
            let view: RunView = client.get(&format!("/api/v1/chaos/runs/{run}"))?;
            crate::commands::print_structured(&view, output, |out| report(out, &view))?;
        }
        ChaosCommand::Report { run, output } => {
            let view: RunView = client.get(&format!("/api/v1/chaos/runs/{run}"))?;
            crate::commands::print_structured(&view.journal, output, |out| report(out, &view))?;
        }
        ChaosCommand::Abort { run } => {
            let _: serde_json::Value = client.post(
                &format!("/api/v1/chaos/runs/{run}/abort"),
                serde_json::json!({}),
            )?;
            println!("abort requested for {run}");
        }
        ChaosCommand::PauseAll => {
            let answer: serde_json::Value =
                client.post("/api/v1/chaos/pause-all", serde_json::json!({}))?;
            println!("chaos paused; runs aborted: {}", answer["aborted"]);
        }
        ChaosCommand::ResumeAll => {
            let _: serde_json::Value =
                client.post("/api/v1/chaos/resume-all", serde_json::json!({}))?;
            println!("chaos resumed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn at(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn report(out: &mut dyn Write, view: &RunView) -> std::io::Result<()> {
    let j = &view.journal;
    writeln!(out, "run         {}", view.id)?;
    writeln!(
        out,
        "experiment  {} (started by {})",
        view.experiment, view.actor
    )?;
    writeln!(
        out,
        "status      {:?}{}{}",
        j.status,
        if j.deviated {
            ", hypothesis deviated"
        } else {
            ""
        },
        j.message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    )?;
    if let Some(s) = j.started_ms {
        writeln!(out, "started     {}", at(s))?;
    }
    if let Some(e) = j.ended_ms {
        writeln!(out, "ended       {}", at(e))?;
    }
    let probes = |out: &mut dyn Write, label: &str, records: &[ProbeRecord]| {
        for p in records {
            writeln!(
                out,
                "  {label:<7} {} {:<16} {}  {}  {}",
                at(p.at_ms),
                p.name,
                if p.passed { "ok  " } else { "FAIL" },
                p.value,
                p.reason
            )?;
        }
        Ok::<(), std::io::Error>(())
    };
    writeln!(out, "hypothesis")?;
    probes(out, "before", &j.steady_state.before)?;
    if j.steady_state.during_dropped > 0 {
        writeln!(
            out,
            "  (during: {} older readings not kept)",
            j.steady_state.during_dropped
        )?;
    }
    probes(out, "during", &j.steady_state.during)?;
    probes(out, "after", &j.steady_state.after)?;
    let activities = |out: &mut dyn Write, label: &str, records: &[ActivityRecord]| {
        if !records.is_empty() {
            writeln!(out, "{label}")?;
        }
        for a in records {
            writeln!(
                out,
                "  [{}] {}{}  {} -> {}",
                a.index,
                a.title,
                if a.background { " (background)" } else { "" },
                at(a.start_ms),
                a.end_ms.map(at).unwrap_or_else(|| "…".into())
            )?;
            if let Some(o) = a.output.as_deref().filter(|o| !o.is_empty()) {
                writeln!(out, "      output: {o}")?;
            }
            if let Some(e) = &a.error {
                writeln!(out, "      error: {e}")?;
            }
        }
        Ok::<(), std::io::Error>(())
    };
    activities(out, "method", &j.activities)?;
    if !j.faults.is_empty() {
        writeln!(out, "faults")?;
    }
    for f in &j.faults {
        writeln!(
            out,
            "  {} on {} {:?} {:?}: injected {}, lease to {}, removed {}",
            f.title,
            f.targets.application,
            f.targets.revisions,
            f.targets.instances,
            at(f.injected_ms),
            at(f.lease_expires_ms),
            f.removed_ms.map(at).unwrap_or_else(|| "not yet".into())
        )?;
    }
    activities(out, "rollbacks", &j.rollbacks)?;
    Ok(())
}
