//! `gauntlet`: the one binary. The controller (`up`), the CLI that talks to it, offline tools
//! (`validate`, `schema`), the demo and the demo application all live here; each subcommand is
//! a thin layer over the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod chaos_cmd;
mod client;
mod commands;
mod dataplane;
mod demo;
mod demo_app;
mod fault_cmd;
mod flags_cmd;
mod git_auth;
mod load;
mod paths;
mod proxy_cmd;
mod release;
mod rollout_cmd;
mod up;

#[global_allocator]
static ALLOCATOR: gauntlet_proxy::Allocator = gauntlet_proxy::Allocator;

/// GitOps, progressive delivery, chaos and feature flags in one binary.
///
/// The desired state of every application lives as YAML in a Git repository; `gauntlet up`
/// keeps the processes on this machine equal to it, heals drift, prunes what was removed and
/// records every action with the commit that caused it.
#[derive(Parser)]
#[command(name = "gauntlet", version, about, long_about)]
struct Cli {
    /// The controller's state directory (store, token, logs, runtime records). Commands find
    /// the running controller's address and token there.
    #[arg(long, global = true, env = "GAUNTLET_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Command {
    /// Start the controller: follow a Git repository and keep this machine equal to it.
    Up(Box<up::UpArgs>),
    /// Stop the running controller (instances keep running unless --stop-instances).
    Down {
        /// Stop every application instance too.
        #[arg(long)]
        stop_instances: bool,
    },
    /// Show the source and each application's sync status, health and instances.
    Status {
        /// Only this application.
        app: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Fetch the repository now, apply a new commit and reconcile; prints the result.
    ///
    /// The fetch and the reconcile always cover every application: the repository is applied
    /// as a whole commit. APP only narrows what is printed afterwards.
    Sync {
        /// Print only this application afterwards (the sync itself covers every application).
        app: Option<String>,
    },
    /// Show what applying the repository's current head would change, without applying it.
    Diff {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show the audit log: every action, who or which commit caused it, and why.
    History {
        /// Only this application.
        app: Option<String>,
        /// How many of the newest records.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Print an application's instance logs (read from the state directory).
    Logs {
        app: String,
        /// Keep printing new lines as they are written.
        #[arg(short, long)]
        follow: bool,
        /// Lines from the end of each log to start with.
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
    /// Check a directory of manifests offline; exits non-zero with file:line errors.
    Validate {
        /// A directory (searched recursively for *.yaml/*.yml/*.json; *.flagd.json are flag
        /// sets) or a single file.
        path: PathBuf,
    },
    /// Print the JSON Schema of the manifests, for editors.
    Schema,
    /// The feature flags the controller serves: list them, show one, evaluate one.
    #[command(subcommand)]
    Flags(flags_cmd::FlagsCommand),
    /// Watch and steer progressive delivery: get [--watch], promote [--full], abort, retry,
    /// pause, resume.
    #[command(subcommand)]
    Rollout(rollout_cmd::RolloutCommand),
    /// Run the whole loop on a temporary repository and show each stage.
    Demo(demo::DemoArgs),
    /// A small HTTP service whose knobs make good and bad releases, for demos and tests.
    DemoApp(demo_app::DemoAppArgs),
    /// Run the data plane: serve every application's listen address and split its traffic.
    Proxy(proxy_cmd::ProxyArgs),
    /// Send GET requests at a fixed rate for a fixed time and print a JSON summary of the
    /// answers (statuses, errors, bodies); bounded, for tests and demos.
    Load(load::LoadArgs),
    /// Change fields of an application's manifest in Git as one commit (the CI hand-off):
    /// `release APP --set FIELD=VALUE [--push]`; prints the new commit.
    Release(Box<release::ReleaseArgs>),
    /// Chaos experiments: run [--dry-run] [--wait], list, get, report, abort, pause-all,
    /// resume-all.
    #[command(subcommand)]
    Chaos(chaos_cmd::ChaosCommand),
    /// The chaos fault agent and its sweeps (run by the controller).
    #[command(subcommand, hide = true)]
    Fault(fault_cmd::FaultCommand),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Resolved only by the commands that use it, so offline ones work without HOME.
    let state_dir = || paths::state_dir(cli.state_dir.clone());
    match cli.command {
        Command::Up(args) => up::run(*args, state_dir()?),
        Command::Down { stop_instances } => commands::down(&state_dir()?, stop_instances),
        Command::Status { app, output } => commands::status(&state_dir()?, app.as_deref(), output),
        Command::Sync { app } => commands::sync(&state_dir()?, app.as_deref()),
        Command::Diff { output } => commands::diff(&state_dir()?, output),
        Command::History { app, limit, output } => {
            commands::history(&state_dir()?, app.as_deref(), limit, output)
        }
        Command::Logs { app, follow, tail } => commands::logs(&state_dir()?, &app, follow, tail),
        Command::Validate { path } => commands::validate(&path),
        Command::Schema => commands::schema(),
        Command::Flags(command) => flags_cmd::run(&state_dir()?, command),
        Command::Rollout(command) => rollout_cmd::run(&state_dir()?, command),
        Command::Demo(args) => demo::run(args),
        Command::DemoApp(args) => demo_app::run(args),
        Command::Proxy(args) => proxy_cmd::run(args, state_dir()?),
        Command::Load(args) => load::run(args),
        Command::Release(args) => release::run(*args),
        Command::Fault(command) => fault_cmd::run(command),
        Command::Chaos(command) => chaos_cmd::run(&state_dir()?, command),
    }
}
