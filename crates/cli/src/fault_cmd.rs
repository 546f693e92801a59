//! `gauntlet fault`: the fault agent chaos experiments start (see
//! `gauntlet_runtime::local::faults`), and the sweeps that end faults whose agent is gone.
//! Hidden from the help: the controller runs these, and an operator only in an emergency
//! (`gauntlet fault stop-all --dir <state-dir>/faults`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use gauntlet_runtime::local::faults::{self, Fault};

#[derive(Subcommand)]
pub enum FaultCommand {
    /// Apply one fault, hold it until `--until-ms` (Unix ms) or SIGTERM, remove it, exit.
    Run {
        /// The records directory (`<state-dir>/faults`).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: String,
        /// The lease: the fault is removed at this Unix time in ms at the latest.
        #[arg(long)]
        until_ms: u64,
        /// The fault as JSON, e.g. `{"kind":"pause","pid":42,"startTime":123}`.
        #[arg(long)]
        fault: String,
    },
    /// End the faults of agents that are gone (SIGKILLed); print their ids.
    Sweep {
        #[arg(long)]
        dir: PathBuf,
    },
    /// End every fault now: SIGTERM every agent, then sweep; print the ids.
    StopAll {
        #[arg(long)]
        dir: PathBuf,
    },
}

pub fn run(command: FaultCommand) -> Result<ExitCode> {
    match command {
        FaultCommand::Run {
            dir,
            id,
            until_ms,
            fault,
        } => {
            let fault: Fault = serde_json::from_str(&fault).context("--fault")?;
            faults::install_stop_handlers();
            let ended = faults::run_agent(&dir, &id, fault, until_ms)?;
            println!("{}", serde_json::json!({"id": id, "ended": ended}));
        }
        FaultCommand::Sweep { dir } => {
            for id in faults::sweep(&dir) {
                println!("{id}");
            }
        }
        FaultCommand::StopAll { dir } => {
            for id in faults::stop_all(&dir, Duration::from_secs(1)) {
                println!("{id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
