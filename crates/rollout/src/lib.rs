//! Progressive delivery, pure core: what Gauntlet decides while a revision reaches users.
//!
//! No I/O, no clock (time comes in as `now_ms`), no randomness. The controller shell feeds
//! observations and executes actions; everything here is plain serializable data, tested on
//! simulated time.
//!
//! - [`guard`]: the sequential guard. Wald's SPRT on candidate request outcomes against the
//!   stable revision's error rate, and on the fraction of candidate requests slower than
//!   stable's p99. The controller calls [`guard::Guard::observe`] with counter deltas
//!   ([`guard::TrafficDelta`], mapped from the proxy's `MetricsSnapshot` deltas: `requests` =
//!   responses + connection errors + timeouts, `failures` = `failures()`, `latency` =
//!   `LATENCY_BOUNDS_US` + `Histogram::buckets`). [`guard::GuardEvidence`] is what `rollout get`
//!   and the abort event show. [`guard::wald_asn`] and [`guard::simulate_canary`] feed the
//!   detection benchmark (`examples/asn_table.rs`).
//! - [`expr`]: the condition language of analysis metrics (`result[0] >= 0.95 && result[1] <
//!   300`), parsed once with column-accurate errors, evaluated on `serde_json::Value`.
//! - [`analysis`]: `AnalysisTemplate` types (serde, camelCase, unknown fields rejected; the spec
//!   crate embeds [`analysis::AnalysisTemplateSpec`]), `{{args.x}}` substitution, and
//!   [`analysis::AnalysisRun`], Argo Rollouts' measurement and limit semantics as a state
//!   machine.
//! - [`engine`]: the rollout state machine, [`engine::step`]`(spec, state, observations, now_ms)
//!   -> Step { state, actions, wake_at_ms }` for canary and blue/green strategies. The spec crate
//!   embeds [`engine::Strategy`] as `spec.strategy`; the controller builds a
//!   [`engine::RolloutSpec`] (replicas, strategy, the templates by name), commits
//!   [`engine::RolloutState`] to the store, then runs the [`engine::Action`]s: `Scale` to the
//!   runtime, `SetTraffic` to the proxy's configuration (one push per routing change),
//!   `Measure` to a provider, `Event`/`Aborted`/`Completed` to the audit log and the API.
//!
//! The crate deliberately does not depend on the proxy crate: the Kubernetes runtime will feed
//! the guard from Prometheus histograms, and the pure core stays quick to build.

pub mod analysis;
pub mod engine;
pub mod expr;
pub mod guard;
