//! `gauntlet rollout`: watch and steer an application's progressive delivery.
//!
//! `get` shows where the rollout is (step n of m, traffic, each revision's live rates, the
//! sequential guard's progress toward either boundary, the analysis runs, an abort with its
//! evidence); `--watch` redraws it every second until interrupted. The other subcommands queue
//! an operator command, which the controller records with the caller's name and applies at its
//! next pass.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use gauntlet_reconcile::live::RevisionRates;
use gauntlet_reconcile::RolloutView;
use gauntlet_rollout::analysis::AnalysisRun;

use crate::client::Client;
use crate::Output;

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Show the rollout: step, weights, live rates per revision, the guard, analysis runs.
    Get {
        app: String,
        /// Redraw every second until interrupted.
        #[arg(long)]
        watch: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// End the current pause, analysis or chaos step and go on (`--full`: skip every
    /// remaining step and make the candidate stable).
    Promote {
        app: String,
        #[arg(long)]
        full: bool,
    },
    /// Roll back: all traffic to stable, the candidate scaled down, not retried until Git
    /// changes or `retry`.
    Abort { app: String },
    /// Start the aborted revision's rollout again from the first step.
    Retry { app: String },
    /// Hold the rollout at its current step (the guard keeps watching).
    Pause { app: String },
    /// Release a paused rollout.
    Resume { app: String },
}

pub fn run(state_dir: &Path, command: RolloutCommand) -> Result<ExitCode> {
    let client = Client::from_state_dir(state_dir)?;
    let (app, verb) = match command {
        RolloutCommand::Get { app, watch, output } => {
            loop {
                let view: RolloutView = client.get(&format!("/api/v1/apps/{app}/rollout"))?;
                if watch {
                    // Clear the screen and go home, as `watch` does.
                    print!("\x1b[2J\x1b[H");
                }
                crate::commands::print_structured(&view, output, |out| print(out, &view))?;
                if !watch {
                    return Ok(ExitCode::SUCCESS);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        RolloutCommand::Promote { app, full } => {
            (app, if full { "promote-full" } else { "promote" })
        }
        RolloutCommand::Abort { app } => (app, "abort"),
        RolloutCommand::Retry { app } => (app, "retry"),
        RolloutCommand::Pause { app } => (app, "pause"),
        RolloutCommand::Resume { app } => (app, "resume"),
    };
    let _: serde_json::Value = client.post(
        &format!("/api/v1/apps/{app}/rollout/{verb}"),
        serde_json::json!({}),
    )?;
    println!("{verb} requested for {app}");
    Ok(ExitCode::SUCCESS)
}

fn print(out: &mut dyn Write, v: &RolloutView) -> std::io::Result<()> {
    let s = &v.state;
    writeln!(out, "app        {}", v.app)?;
    writeln!(out, "phase      {:?}", s.phase)?;
    writeln!(out, "stable     {}", s.stable.as_deref().unwrap_or("-"))?;
    writeln!(out, "candidate  {}", s.candidate.as_deref().unwrap_or("-"))?;
    if v.steps > 0 && s.candidate.is_some() {
        writeln!(
            out,
            "step       {} of {}",
            (s.step_index + 1).min(v.steps),
            v.steps
        )?;
    }
    let w = s.traffic.candidate_weight;
    writeln!(
        out,
        "weights    stable {}.{:02}%, candidate {}.{:02}%{}{}",
        (10_000 - w) / 100,
        (10_000 - w) % 100,
        w / 100,
        w % 100,
        if s.traffic.header_route.is_some() {
            ", header route to candidate"
        } else {
            ""
        },
        if s.traffic.mirror_percent > 0 {
            format!(", mirroring {}%", s.traffic.mirror_percent)
        } else {
            String::new()
        }
    )?;
    if let Some(p) = &s.pause {
        writeln!(out, "paused     {}", p.reason)?;
    }
    rates(out, "stable", v.stable_rates.as_ref())?;
    rates(out, "candidate", v.candidate_rates.as_ref())?;
    if let Some(g) = &v.guard {
        let e = &g.errors;
        writeln!(
            out,
            "guard      {} failed of {} requests; llr {:.2} (rollback at ≥ {:.2}, accept at ≤ {:.2}); p0 {:.4}, p1 {:.4}",
            e.events, e.requests, e.llr, e.upper, e.lower, e.p0, e.p1
        )?;
        if let (Some(l), Some(us)) = (&g.latency, g.latency_threshold_us) {
            writeln!(
                out,
                "latency    {} slower than {:.1} ms of {} requests; llr {:.2} (rollback at ≥ {:.2}, accept at ≤ {:.2})",
                l.events,
                us as f64 / 1000.0,
                l.requests,
                l.llr,
                l.upper,
                l.lower
            )?;
        }
    }
    if let Some(gate) = &v.chaos {
        let state = match (&gate.verdict, &gate.waiting) {
            (Some(v), _) if v.passed => format!("passed: {}", v.message),
            (Some(v), _) => format!("failed: {}", v.message),
            (None, Some(why)) => format!("waiting: {why}"),
            (None, None) => "running".to_string(),
        };
        writeln!(out, "chaos      experiment {}: {state}", gate.experiment)?;
        if let Some(run) = &gate.run {
            writeln!(out, "           journal: gauntlet chaos report {run}")?;
        }
    }
    for (key, run) in &s.runs {
        analysis(out, &key.to_string(), run)?;
    }
    for ended in &s.ended_runs {
        let revision = ended.revision.get(..10).unwrap_or(&ended.revision);
        analysis(
            out,
            &format!("{} of {revision}, ended", ended.key),
            &ended.run,
        )?;
    }
    if let Some(a) = &s.aborted {
        writeln!(out, "aborted    {}: {}", a.revision, a.reason)?;
    }
    Ok(())
}

/// A run, each metric's tally and verdict, and its latest measurements (the audit log has every
/// one: `gauntlet history APP`).
fn analysis(out: &mut dyn Write, label: &str, run: &AnalysisRun) -> std::io::Result<()> {
    writeln!(out, "analysis   {label}: {:?}", run.phase())?;
    for m in &run.metrics {
        writeln!(
            out,
            "  {}{}: {:?}, {} successful, {} failed, {} inconclusive, {} errors{}",
            m.spec.metric.name,
            if m.spec.dry_run { " (dry run)" } else { "" },
            m.phase,
            m.successful,
            m.failed,
            m.inconclusive,
            m.errors,
            m.message
                .as_deref()
                .map(|msg| format!(" ({msg})"))
                .unwrap_or_default()
        )?;
        for measured in &m.measurements {
            let at = humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(measured.at_ms),
            );
            let value = measured
                .value
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "-".into());
            let note = measured
                .message
                .as_deref()
                .map(|msg| format!(" ({msg})"))
                .unwrap_or_default();
            writeln!(out, "    {at}  {value}  {:?}{note}", measured.phase)?;
        }
    }
    Ok(())
}

fn rates(out: &mut dyn Write, who: &str, r: Option<&RevisionRates>) -> std::io::Result<()> {
    let Some(r) = r else {
        return Ok(());
    };
    writeln!(
        out,
        "{who:<10} {:.1} req/s, errors {}, p99 {}",
        r.requests_per_second,
        r.error_rate
            .map(|e| format!("{:.2}%", e * 100.0))
            .unwrap_or_else(|| "-".into()),
        r.p99_ms
            .map(|v| format!("{v:.1} ms"))
            .unwrap_or_else(|| "-".into())
    )
}
