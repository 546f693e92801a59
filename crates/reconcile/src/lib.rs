//! Reconciliation: keep what runs equal to what Git asks for.
//!
//! Two halves, after kube-rs controllers. [`plan`] is pure: it diffs the desired state of one
//! commit against the instances a runtime observes and returns actions and each application's
//! sync and health. [`Controller`] is the imperative shell: it polls the Git source (or is
//! woken by a webhook), validates each new commit as a whole, executes plans through a
//! [`gauntlet_runtime::Runtime`], and records every action in the audit log with the commit
//! or user that caused it. Level-triggered and idempotent: a crash between two actions is
//! repaired by the next plan.

pub mod command;
pub mod controller;
pub mod foreign;
pub mod live;
pub mod measure;
pub mod plan;
pub mod proxy_link;
pub mod rollouts;
pub mod status;
pub mod traffic;

pub use controller::{
    ChaosConfig, ChaosError, Controller, ControllerConfig, Gate, GateRun, RunSummary, RunView,
    ServedFlags,
};
pub use plan::{plan, Action, AppPlan, Cause, Health, Plan, SyncStatus};
pub use status::{
    AppStatus, Change, CommitInfo, Diff, Rejected, RolloutView, SourceStatus, Status,
};
