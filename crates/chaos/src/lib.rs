//! Chaos engineering, pure core: what Gauntlet decides while an experiment runs.
//!
//! No I/O, no clock (time comes in as `now_ms`), no ambient randomness (the run carries its
//! seeded generator). The controller shell executes the actions (probes, injections through
//! the runtime and the proxy, commands) and feeds back what it saw; everything here is plain
//! serializable data, tested on simulated time.
//!
//! An experiment is Chaos Toolkit's shape with Chaos Mesh's targeting: a steady-state
//! **hypothesis** (probes with tolerances) checked before the **method** (faults, actions,
//! pauses, some in the background), continuously during it if asked, and after it; then
//! **rollbacks**. It runs on a schedule, on demand, or as a gate inside a rollout, where only
//! a Completed run lets the candidate through.
//!
//! - [`spec`]: `kind: ChaosExperiment` (serde, camelCase, unknown fields rejected; the spec
//!   crate embeds [`spec::ChaosExperimentSpec`]) and [`spec::ChaosExperimentSpec::validate`],
//!   every problem with its field path.
//! - [`tolerance`]: Chaos Toolkit's tolerances (value, range, regex, JSON path) and the HTTP
//!   specifics (status, body, latency), judged with a reason an operator can read.
//! - [`select`]: Chaos Mesh's selector modes over the target's instances with a caller-seeded
//!   generator, and the blast-radius limit (by default, never every stable instance at once).
//! - [`cron`]: 5-field cron schedules in UTC and the scheduler's no-overlap rule.
//! - [`engine`]: the run as a state machine, [`engine::step`]`(spec, state, observations,
//!   now_ms) -> Step { state, actions, wake_at_ms }`, and [`engine::plan`] for dry runs.
//! - [`journal`]: the run record (status, deviation, activities, faults, probe readings) and
//!   its verdict for a rollout's chaos step.
//!
//! # Guarantees
//!
//! - **Faults always end.** Every injected fault carries a lease that the proxy or the runtime
//!   enforces by itself. The engine keeps leases short ([`engine::LEASE_MS`]) and renews them
//!   while the fault should stay, never past the fault's planned end or the run's deadline. A
//!   controller that dies leaves each fault for at most one lease; one that lives removes it
//!   explicitly when it should end.
//! - **Rollbacks always run.** Every ending (completed, failed, aborted by an operator, a
//!   rollout or a continuous check, the deadline, an interrupted run after a restart) goes
//!   through the same path: remove every fault still in place, then run every rollback.
//! - **Resumable.** The state is committed before its actions run and the actions are
//!   idempotent (faults by id, rollbacks by ticket), so a crash at any point is safe: the
//!   first step after a restart marks an unfinished run Interrupted and repeats what may have
//!   been lost.
//! - **A blast radius.** Process faults never cover every stable instance at once unless the
//!   experiment says so, nor more than its `maxInstances` / `maxPercent`.

pub mod cron;
pub mod engine;
pub mod journal;
pub mod select;
pub mod spec;
pub mod tolerance;
