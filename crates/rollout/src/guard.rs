//! The sequential guard: Wald's sequential probability ratio test (SPRT) on the candidate's
//! request outcomes, against the stable revision as the baseline.
//!
//! # The error test
//!
//! Each candidate request with an outcome is a Bernoulli trial: a failure is a 5xx, a
//! connection error or a timeout (the proxy's `MetricsSnapshot::failures()`). The test weighs
//! H0: p = p0 (the candidate is as good as stable) against H1: p = p1 (the candidate is bad).
//! After `n` outcomes with `f` failures the log-likelihood ratio is
//!
//! ```text
//! llr = f·ln(p1/p0) + (n − f)·ln((1 − p1)/(1 − p0))
//! ```
//!
//! It is a sum over requests, so the controller's counter deltas (read ten times a second) give
//! exactly the statistic individual requests would; the only difference is that the boundaries
//! are checked once per delta, which can only overshoot them a little (fewer looks means fewer
//! false alarms and slightly later decisions). Wald's boundaries are
//! `A = ln((1 − β)/α)` (trip: reject the candidate) and `B = ln(β/(1 − α))` (accept).
//!
//! **Baseline rule.** `p0` is recomputed before every delta from the stable traffic seen *before*
//! that delta (so each increment is a likelihood ratio with a predictable `p0`, and the running
//! product stays a martingale under H0):
//!
//! - with at least `minStableRequests` stable outcomes, `p0 = stable failures / stable outcomes`;
//! - with fewer (but some), the worst rate stable plausibly has: Wilson's 95 % upper bound on
//!   its observed rate, at least `baselineErrorRate` and at most `maxErrorRate / minErrorRatio`
//!   (2.5 % by default; above it the test could not tell a bad candidate from stable). A stable
//!   at 1 % seen over 200 requests often shows no failure, and judging a good candidate against
//!   0.1 % then would roll it back far more often than α;
//! - with none, `p0 = baselineErrorRate` (the configured absolute rate);
//! - either way `p0 ≥ errorRateFloor` (default 0.1 %) and `p0 ≤ 0.5`.
//!
//! The floor matters: at `p0 → 0` a single failed request is infinite evidence, so one 5xx in
//! a million would roll back a release. With the floor, one failure is worth `ln(p1/p0)` (3.9 at
//! 0.1 % vs 5 %), less than `A` (4.6 at α = β = 0.01), so at least two failures are needed.
//! The α guarantee is relative to `p0`: a candidate whose true error rate is at most
//! `max(floor, stable's rate)` is rolled back with probability at most α.
//!
//! `p1 = max(maxErrorRate, minErrorRatio × p0)`, capped below 1, so a stable revision that is
//! itself at 4 % errors is compared with 8 %, not with a `maxErrorRate` of 5 % it nearly meets.
//!
//! **After acceptance.** Crossing `B` records that the candidate looked good (the status shows
//! it), but the guard does not stop: it keeps adding evidence against the upper boundary only.
//! Under H0 the likelihood ratio is a non-negative martingale, so by Ville's inequality the
//! probability that it *ever* crosses `A` is at most `e^(−A) = α/(1 − β)`: the guard watches the
//! whole rollout (weights rise, a leak shows up late) without spending more than about α on
//! false rollbacks. The price: after a long good run the statistic sits far below zero, and a
//! candidate that turns bad late is caught more slowly than a fresh test would catch it.
//!
//! # The latency test
//!
//! A second SPRT on the fraction of candidate requests slower than stable's p99 (the quantile is
//! configurable): H0: q = 1 − quantile = 0.01 vs H1: q = `maxSlowFraction` (default 0.05).
//! Chosen over an always-valid mixture SPRT because it reuses the same machinery and counts,
//! has Wald's closed-form expectations for the status and the benchmark, and needs no tuning
//! of a mixing distribution; the histogram makes the comparison approximate anyway.
//!
//! **The approximation.** The proxy keeps latency as bucket counts, not samples. The threshold
//! is the upper bound of the bucket holding stable's quantile (from all stable responses seen
//! in this rollout, once there are `minStableRequests` of them); a candidate request is "slow"
//! when it lands in a bucket above it. Stable's own share above that bound is at most
//! 1 − quantile, so under H0 the real `q` is at most `q0` and false rollbacks stay below α. The
//! cost is power: with 1-2.5-5 buckets the bound may sit up to 2.5× above the true p99, so the
//! test catches regressions that push requests past that bound, not ones that stay inside the
//! p99's bucket. Until the threshold is known, candidate deltas are not counted by this test.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A revision's outcomes between two readings of the proxy's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficDelta {
    /// Requests with an outcome: responses of every class, connection errors and timeouts.
    /// Not requests routed: one in flight has no outcome yet and must not count as a success.
    pub requests: u64,
    /// 5xx responses, connection errors and timeouts; at most `requests` (extra are ignored).
    pub failures: u64,
    /// Latency of the responses; may be empty when the latency test is not wanted.
    #[serde(default)]
    pub latency: LatencyHistogram,
}

impl TrafficDelta {
    /// A delta without latency.
    pub fn outcomes(requests: u64, failures: u64) -> Self {
        TrafficDelta {
            requests,
            failures,
            latency: LatencyHistogram::default(),
        }
    }

    fn successes(&self) -> u64 {
        self.requests - self.failures.min(self.requests)
    }
}

/// Per-bucket (not cumulative) latency counts: `counts[i]` counts responses at or below
/// `bounds_us[i]` and above the previous bound; the last count is the `+Inf` bucket, so
/// `counts.len() == bounds_us.len() + 1`. The proxy's `LATENCY_BOUNDS_US` and
/// `Histogram::buckets` map onto it directly; this crate does not depend on the proxy so that
/// the Kubernetes runtime (Prometheus histograms) can feed it too.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyHistogram {
    pub bounds_us: Vec<u64>,
    pub counts: Vec<u64>,
}

impl LatencyHistogram {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn is_well_formed(&self) -> bool {
        !self.bounds_us.is_empty() && self.counts.len() == self.bounds_us.len() + 1
    }

    /// Adds `other` bucket by bucket; a histogram over other bounds replaces this one.
    fn accumulate(&mut self, other: &LatencyHistogram) {
        if !other.is_well_formed() {
            return;
        }
        if self.bounds_us != other.bounds_us || self.counts.len() != other.counts.len() {
            *self = other.clone();
            return;
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    /// The index of the bucket holding the `quantile`, if it has a finite upper bound.
    fn quantile_bucket(&self, quantile: f64) -> Option<usize> {
        let total = self.total();
        if total == 0 || !self.is_well_formed() {
            return None;
        }
        let rank = quantile * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            below += n;
            if below as f64 >= rank {
                return (i < self.bounds_us.len()).then_some(i);
            }
        }
        None
    }
}

/// The guard's configuration (`strategy.canary.guard` in a manifest). Every field has a
/// default, so `guard: {}` is the default guard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GuardConfig {
    /// The guard is on unless disabled.
    pub enabled: bool,
    /// The error rate of a bad candidate (H1).
    pub max_error_rate: f64,
    /// H1 is at least this multiple of the baseline.
    pub min_error_ratio: f64,
    /// The baseline used while stable has served fewer than `min_stable_requests`.
    pub baseline_error_rate: f64,
    /// The baseline is never below this.
    pub error_rate_floor: f64,
    /// Stable outcomes needed before stable's own rate (and latency) becomes the baseline.
    pub min_stable_requests: u64,
    /// Probability of rolling back a good candidate.
    pub alpha: f64,
    /// Probability of promoting a bad one (of crossing the lower boundary first).
    pub beta: f64,
    /// When the steps are done, the candidate is promoted only once the error test has
    /// accepted it (crossed the lower boundary); until then the rollout waits at its last
    /// weight and the guard keeps judging. Without it the steps' durations decide, and a bad
    /// candidate that has not yet shown enough failures is promoted (the test is cut short,
    /// so β no longer bounds that). An operator's `promote` ends the wait.
    pub require_acceptance: bool,
    pub latency: LatencyGuardConfig,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            enabled: true,
            max_error_rate: 0.05,
            min_error_ratio: 2.0,
            baseline_error_rate: 0.001,
            error_rate_floor: 0.001,
            min_stable_requests: 1_000,
            alpha: 0.01,
            beta: 0.01,
            require_acceptance: false,
            latency: LatencyGuardConfig::default(),
        }
    }
}

/// The latency half of the guard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LatencyGuardConfig {
    pub enabled: bool,
    /// Stable's quantile that defines "slow"; H0 is `q = 1 − quantile`.
    pub quantile: f64,
    /// The slow fraction of a bad candidate (H1).
    pub max_slow_fraction: f64,
}

impl Default for LatencyGuardConfig {
    fn default() -> Self {
        LatencyGuardConfig {
            enabled: true,
            quantile: 0.99,
            max_slow_fraction: 0.05,
        }
    }
}

/// A guard configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum GuardConfigError {
    #[error("guard.{field} must be strictly between 0 and 1, got {value}")]
    NotAProbability { field: &'static str, value: f64 },
    #[error("guard.minErrorRatio must be at least 1, got {0}")]
    Ratio(f64),
    #[error("guard.alpha + guard.beta must be below 1 (got {0}); try the default 0.01 each")]
    ErrorBudget(f64),
    #[error(
        "guard.latency.maxSlowFraction ({max}) must exceed 1 − quantile ({q0}), the slow \
         fraction of a candidate as good as stable"
    )]
    SlowFraction { max: f64, q0: f64 },
}

impl GuardConfig {
    /// Checks ranges; the spec crate calls this when it validates a manifest.
    pub fn validate(&self) -> Result<(), GuardConfigError> {
        let probabilities = [
            ("maxErrorRate", self.max_error_rate),
            ("baselineErrorRate", self.baseline_error_rate),
            ("errorRateFloor", self.error_rate_floor),
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("latency.quantile", self.latency.quantile),
            ("latency.maxSlowFraction", self.latency.max_slow_fraction),
        ];
        for (field, value) in probabilities {
            if !(value > 0.0 && value < 1.0) {
                return Err(GuardConfigError::NotAProbability { field, value });
            }
        }
        if self.min_error_ratio < 1.0 || self.min_error_ratio.is_nan() {
            return Err(GuardConfigError::Ratio(self.min_error_ratio));
        }
        if self.alpha + self.beta >= 1.0 {
            return Err(GuardConfigError::ErrorBudget(self.alpha + self.beta));
        }
        let q0 = 1.0 - self.latency.quantile;
        if self.latency.max_slow_fraction <= q0 {
            return Err(GuardConfigError::SlowFraction {
                max: self.latency.max_slow_fraction,
                q0,
            });
        }
        Ok(())
    }

    /// Wald's boundaries for this α and β.
    pub fn boundaries(&self) -> Boundaries {
        Boundaries::wald(self.alpha, self.beta)
    }

    /// H0 and H1 of the error test given the stable outcomes seen so far.
    pub fn error_hypotheses(&self, stable_requests: u64, stable_failures: u64) -> (f64, f64) {
        let rate = |n: u64| stable_failures.min(n) as f64 / n as f64;
        let observed = if stable_requests >= self.min_stable_requests && stable_requests > 0 {
            rate(stable_requests)
        } else if stable_requests > 0 {
            // Too little stable traffic to trust its rate: a stable at 1 % seen over a few
            // hundred requests often shows no failure, and a good candidate judged against
            // 0.1 % would be rolled back far more often than α. So judge against the worst
            // rate stable plausibly has (Wilson's 95 % upper bound), but never above the
            // baseline at which `maxErrorRate` is still `minErrorRatio` times worse: beyond
            // that the test could not tell a bad candidate from stable at all.
            let plausible = wilson_upper(stable_failures.min(stable_requests), stable_requests);
            let cap = (self.max_error_rate / self.min_error_ratio).max(self.baseline_error_rate);
            plausible.min(cap).max(self.baseline_error_rate)
        } else {
            self.baseline_error_rate
        };
        let p0 = observed.max(self.error_rate_floor).min(0.5);
        let p1 = self
            .max_error_rate
            .max(self.min_error_ratio * p0)
            .min(0.999);
        (p0, p1.max(p0 * 1.000_001))
    }
}

/// Wilson's score interval's upper bound at 95 % (one-sided) for `events` out of `n` trials.
fn wilson_upper(events: u64, n: u64) -> f64 {
    const Z: f64 = 1.644_853_626_951_472_2;
    let n = n as f64;
    let p = events as f64 / n;
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * n);
    let spread = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre + spread) / (1.0 + z2 / n)).min(1.0)
}

/// The two boundaries of a Wald SPRT on the log-likelihood ratio.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Boundaries {
    /// `A = ln((1 − β)/α)`: at or above, reject H0 (trip).
    pub upper: f64,
    /// `B = ln(β/(1 − α))`: at or below, accept H0.
    pub lower: f64,
}

impl Boundaries {
    pub fn wald(alpha: f64, beta: f64) -> Self {
        Boundaries {
            upper: ((1.0 - beta) / alpha).ln(),
            lower: (beta / (1.0 - alpha)).ln(),
        }
    }
}

/// What a sequential test says so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Neither boundary crossed yet.
    Continue,
    /// The lower boundary was crossed: the candidate looks as good as the baseline.
    Accept,
    /// The upper boundary was crossed: the candidate is bad. Final.
    Reject,
}

/// One Bernoulli SPRT, fed counts. `p0`/`p1` are passed with each update so the caller may
/// refine the baseline between updates.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sprt {
    /// Trials counted.
    pub n: u64,
    /// Trials that were events (failures, slow requests).
    pub events: u64,
    /// The log-likelihood ratio of H1 over H0.
    pub llr: f64,
    /// Trials counted when the lower boundary was first crossed.
    pub accepted_after: Option<u64>,
    /// Trials counted when the upper boundary was crossed.
    pub rejected_after: Option<u64>,
}

impl Sprt {
    /// Adds `events` and `non_events` under H0 `p0` and H1 `p1` (0 < p0 < p1 < 1). After a
    /// rejection the test is final and further counts are ignored.
    pub fn update(
        &mut self,
        events: u64,
        non_events: u64,
        p0: f64,
        p1: f64,
        bounds: Boundaries,
    ) -> Verdict {
        if self.rejected_after.is_some() || events + non_events == 0 {
            return self.verdict();
        }
        self.llr +=
            events as f64 * (p1 / p0).ln() + non_events as f64 * ((1.0 - p1) / (1.0 - p0)).ln();
        self.n += events + non_events;
        self.events += events;
        if self.llr >= bounds.upper {
            self.rejected_after = Some(self.n);
        } else if self.llr <= bounds.lower && self.accepted_after.is_none() {
            self.accepted_after = Some(self.n);
        }
        self.verdict()
    }

    pub fn verdict(&self) -> Verdict {
        if self.rejected_after.is_some() {
            Verdict::Reject
        } else if self.accepted_after.is_some() {
            Verdict::Accept
        } else {
            Verdict::Continue
        }
    }
}

/// Which of the guard's tests tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GuardTest {
    Errors,
    Latency,
}

/// The guard's verdict on the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "test", rename_all = "camelCase")]
pub enum GuardVerdict {
    Continue,
    /// Every active test crossed its lower boundary; the guard keeps watching.
    Accept,
    /// A test crossed its upper boundary: roll back.
    Trip(GuardTest),
}

/// The guard's state for one candidate: serializable, committed with the rollout's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Guard {
    pub errors: Sprt,
    pub latency: Sprt,
    /// Stable outcomes seen since the guard started (the baseline's sample).
    pub stable_requests: u64,
    pub stable_failures: u64,
    pub stable_latency: LatencyHistogram,
}

/// What the status shows about one test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestEvidence {
    pub requests: u64,
    /// Failures (error test) or slow requests (latency test).
    pub events: u64,
    pub llr: f64,
    pub upper: f64,
    pub lower: f64,
    /// The hypotheses the next update will use.
    pub p0: f64,
    pub p1: f64,
    /// `llr / upper` clamped to 0..=1: how close the candidate is to a rollback.
    pub toward_reject: f64,
    /// `llr / lower` clamped to 0..=1: how close it is to being accepted.
    pub toward_accept: f64,
    pub verdict: Verdict,
}

/// Where the error baseline comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BaselineSource {
    /// Stable's observed rate (or the floor above it).
    Stable,
    /// Too little stable traffic: the configured `baselineErrorRate`.
    Configured,
}

/// The guard's evidence, for the status, the events and the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardEvidence {
    pub verdict: GuardVerdict,
    pub errors: TestEvidence,
    /// `None` when disabled or before stable's quantile is known.
    pub latency: Option<TestEvidence>,
    pub baseline: BaselineSource,
    pub stable_requests: u64,
    pub stable_failures: u64,
    /// The "slow" threshold in microseconds, once known.
    pub latency_threshold_us: Option<u64>,
}

impl Guard {
    /// Adds one reading's deltas. Hypotheses for the candidate's delta come from the stable
    /// traffic seen before it; then the stable delta joins the baseline.
    pub fn observe(
        &mut self,
        cfg: &GuardConfig,
        stable: &TrafficDelta,
        candidate: &TrafficDelta,
    ) -> GuardVerdict {
        let bounds = cfg.boundaries();
        let (p0, p1) = cfg.error_hypotheses(self.stable_requests, self.stable_failures);
        let failures = candidate.failures.min(candidate.requests);
        self.errors
            .update(failures, candidate.successes(), p0, p1, bounds);

        if cfg.latency.enabled {
            if let Some((bucket, _)) = self.latency_threshold(cfg) {
                let h = &candidate.latency;
                if h.is_well_formed() && h.bounds_us == self.stable_latency.bounds_us {
                    let slow: u64 = h.counts[bucket + 1..].iter().sum();
                    let fast = h.total() - slow;
                    let q0 = 1.0 - cfg.latency.quantile;
                    self.latency
                        .update(slow, fast, q0, cfg.latency.max_slow_fraction, bounds);
                }
            }
        }

        self.stable_requests += stable.requests;
        self.stable_failures += stable.failures.min(stable.requests);
        self.stable_latency.accumulate(&stable.latency);
        self.verdict(cfg)
    }

    /// The bucket index and bound of stable's quantile, once stable has enough responses.
    pub fn latency_threshold(&self, cfg: &GuardConfig) -> Option<(usize, u64)> {
        if self.stable_latency.total() < cfg.min_stable_requests.max(1) {
            return None;
        }
        let i = self.stable_latency.quantile_bucket(cfg.latency.quantile)?;
        Some((i, self.stable_latency.bounds_us[i]))
    }

    pub fn verdict(&self, cfg: &GuardConfig) -> GuardVerdict {
        if self.errors.verdict() == Verdict::Reject {
            return GuardVerdict::Trip(GuardTest::Errors);
        }
        if self.latency.verdict() == Verdict::Reject {
            return GuardVerdict::Trip(GuardTest::Latency);
        }
        let latency_done = !cfg.latency.enabled || self.latency.verdict() == Verdict::Accept;
        if self.errors.verdict() == Verdict::Accept && latency_done {
            GuardVerdict::Accept
        } else {
            GuardVerdict::Continue
        }
    }

    pub fn evidence(&self, cfg: &GuardConfig) -> GuardEvidence {
        let bounds = cfg.boundaries();
        let (p0, p1) = cfg.error_hypotheses(self.stable_requests, self.stable_failures);
        let threshold = if cfg.latency.enabled {
            self.latency_threshold(cfg)
        } else {
            None
        };
        GuardEvidence {
            verdict: self.verdict(cfg),
            errors: test_evidence(&self.errors, bounds, p0, p1),
            latency: threshold.map(|_| {
                test_evidence(
                    &self.latency,
                    bounds,
                    1.0 - cfg.latency.quantile,
                    cfg.latency.max_slow_fraction,
                )
            }),
            baseline: if self.stable_requests >= cfg.min_stable_requests {
                BaselineSource::Stable
            } else {
                BaselineSource::Configured
            },
            stable_requests: self.stable_requests,
            stable_failures: self.stable_failures,
            latency_threshold_us: threshold.map(|(_, us)| us),
        }
    }
}

fn test_evidence(t: &Sprt, bounds: Boundaries, p0: f64, p1: f64) -> TestEvidence {
    TestEvidence {
        requests: t.n,
        events: t.events,
        llr: t.llr,
        upper: bounds.upper,
        lower: bounds.lower,
        p0,
        p1,
        toward_reject: (t.llr / bounds.upper).clamp(0.0, 1.0),
        toward_accept: (t.llr / bounds.lower).clamp(0.0, 1.0),
        verdict: t.verdict(),
    }
}

/// Wald's approximations of the expected number of trials to a decision, ignoring overshoot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Asn {
    /// When the truth is `p0`.
    pub under_h0: f64,
    /// When the truth is `p1`.
    pub under_h1: f64,
}

/// Wald's expected sample numbers: `E[N] = (P(reject)·A + P(accept)·B) / E[z]`, with
/// `E[z] = p·ln(p1/p0) + (1 − p)·ln((1 − p1)/(1 − p0))` the mean increment per trial. The
/// expected number of events is `p·E[N]` (Wald's identity).
pub fn wald_asn(p0: f64, p1: f64, alpha: f64, beta: f64) -> Asn {
    let b = Boundaries::wald(alpha, beta);
    let drift = |p: f64| p * (p1 / p0).ln() + (1.0 - p) * ((1.0 - p1) / (1.0 - p0)).ln();
    Asn {
        under_h0: (alpha * b.upper + (1.0 - alpha) * b.lower) / drift(p0),
        under_h1: ((1.0 - beta) * b.upper + beta * b.lower) / drift(p1),
    }
}

/// The sample size a one-sided fixed-sample test of `p0` vs `p1` needs at the same α and β
/// (normal approximation), for comparison with the SPRT.
pub fn fixed_sample_size(p0: f64, p1: f64, alpha: f64, beta: f64) -> f64 {
    let za = normal_quantile(1.0 - alpha);
    let zb = normal_quantile(1.0 - beta);
    let root = za * (p0 * (1.0 - p0)).sqrt() + zb * (p1 * (1.0 - p1)).sqrt();
    (root / (p1 - p0)).powi(2)
}

/// The standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    const LOW: f64 = 0.02425;
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

/// A small deterministic PRNG (SplitMix64) for the simulations in tests and examples; not for
/// anything that needs unpredictability.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }
}

/// The outcome of simulating one canary request by request with a two-boundary Wald SPRT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulatedCanary {
    pub verdict: Verdict,
    pub requests: u64,
    pub failures: u64,
}

/// Simulates one canary whose true error rate is `p`, in batches of `batch` requests, until the
/// first boundary is crossed or `max_requests` have been served (then `Continue`).
pub fn simulate_canary(
    rng: &mut SplitMix64,
    p: f64,
    p0: f64,
    p1: f64,
    bounds: Boundaries,
    batch: u64,
    max_requests: u64,
) -> SimulatedCanary {
    let mut sprt = Sprt::default();
    while sprt.n < max_requests {
        let mut failures = 0;
        for _ in 0..batch {
            failures += u64::from(rng.bernoulli(p));
        }
        let verdict = sprt.update(failures, batch - failures, p0, p1, bounds);
        if verdict != Verdict::Continue {
            return SimulatedCanary {
                verdict,
                requests: sprt.n,
                failures: sprt.events,
            };
        }
    }
    SimulatedCanary {
        verdict: Verdict::Continue,
        requests: sprt.n,
        failures: sprt.events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P0: f64 = 0.001;
    const P1: f64 = 0.05;

    /// Binomial tolerance: the observed rate of `n` trials may exceed `p` by 3 standard errors.
    fn upper_tolerance(p: f64, n: u64) -> f64 {
        p + 3.0 * (p * (1.0 - p) / n as f64).sqrt()
    }

    #[test]
    fn wald_boundaries_and_asn_match_the_brief() {
        let b = Boundaries::wald(0.01, 0.01);
        assert!((b.upper - 99f64.ln()).abs() < 1e-12);
        assert!((b.lower + 99f64.ln()).abs() < 1e-12);
        let asn = wald_asn(P0, P1, 0.01, 0.01);
        assert!((29.0..32.0).contains(&asn.under_h1), "{asn:?}");
        let fixed = fixed_sample_size(P0, P1, 0.01, 0.01);
        assert!((135.0..145.0).contains(&fixed), "{fixed}");
        assert!((normal_quantile(0.99) - 2.326_347_874).abs() < 1e-6);
        assert!((normal_quantile(0.5)).abs() < 1e-9);
    }

    #[test]
    fn a_good_candidate_is_rejected_at_most_alpha_of_the_time() {
        let bounds = Boundaries::wald(0.01, 0.01);
        let mut rng = SplitMix64::new(0x5EED_0001);
        let runs = 2_000u64;
        let mut rejected = 0u64;
        for _ in 0..runs {
            let sim = simulate_canary(&mut rng, P0, P0, P1, bounds, 1, 20_000);
            rejected += u64::from(sim.verdict == Verdict::Reject);
        }
        let rate = rejected as f64 / runs as f64;
        let limit = upper_tolerance(0.01, runs);
        println!("false rejections: {rejected}/{runs} = {rate:.4} (α = 0.01, limit {limit:.4})");
        assert!(rate <= limit, "{rate} > {limit}");
    }

    #[test]
    fn the_open_ended_guard_keeps_false_rollbacks_below_alpha_over_a_long_canary() {
        // After accepting, the guard keeps watching; Ville's inequality bounds the chance of
        // ever tripping by α/(1 − β) however long the canary runs.
        let cfg = GuardConfig::default();
        let mut rng = SplitMix64::new(0x5EED_0002);
        let runs = 1_000u64;
        let mut tripped = 0u64;
        for _ in 0..runs {
            let mut guard = Guard::default();
            for _ in 0..2_000 {
                let mut failures = 0;
                for _ in 0..5 {
                    failures += u64::from(rng.bernoulli(P0));
                }
                let stable = TrafficDelta::outcomes(100, 0);
                let v = guard.observe(&cfg, &stable, &TrafficDelta::outcomes(5, failures));
                if matches!(v, GuardVerdict::Trip(_)) {
                    tripped += 1;
                    break;
                }
            }
        }
        let rate = tripped as f64 / runs as f64;
        let limit = upper_tolerance(0.01 / 0.99, runs);
        println!("open-ended false rollbacks over 10,000 requests: {tripped}/{runs} = {rate:.4}");
        assert!(rate <= limit, "{rate} > {limit}");
    }

    fn detection(p: f64, p0: f64, p1: f64, batch: u64, seed: u64) -> (f64, f64, f64) {
        let bounds = Boundaries::wald(0.01, 0.01);
        let mut rng = SplitMix64::new(seed);
        let runs = 2_000u64;
        let (mut caught, mut requests, mut failures) = (0u64, 0u64, 0u64);
        for _ in 0..runs {
            let sim = simulate_canary(&mut rng, p, p0, p1, bounds, batch, 100_000);
            if sim.verdict == Verdict::Reject {
                caught += 1;
                requests += sim.requests;
                failures += sim.failures;
            }
        }
        (
            caught as f64 / runs as f64,
            requests as f64 / caught as f64,
            failures as f64 / caught as f64,
        )
    }

    #[test]
    fn a_bad_candidate_is_caught_with_power_and_within_1_5x_of_walds_asn() {
        let (power, requests, failures) = detection(P1, P0, P1, 1, 0x5EED_0003);
        let asn = wald_asn(P0, P1, 0.01, 0.01).under_h1;
        println!(
            "power {power:.4}; requests to detection {requests:.1} (Wald {asn:.1}), \
             failed requests {failures:.2} (Wald {:.2})",
            asn * P1
        );
        assert!(power >= 0.99 - 3.0 * (0.01f64 * 0.99 / 2_000.0).sqrt());
        assert!(requests <= 1.5 * asn, "{requests} > 1.5 × {asn}");
        assert!(
            failures <= 1.5 * asn * P1,
            "{failures} > 1.5 × {}",
            asn * P1
        );
    }

    #[test]
    fn batched_deltas_decide_like_single_requests_within_overshoot() {
        // Four readings a second at 10 canary requests a second: batches of about 3.
        let (power, requests, _) = detection(P1, P0, P1, 3, 0x5EED_0004);
        let asn = wald_asn(P0, P1, 0.01, 0.01).under_h1;
        println!("batches of 3: power {power:.4}, requests {requests:.1} (Wald {asn:.1})");
        assert!(power >= 0.98);
        assert!(requests <= 1.5 * asn + 3.0);
    }

    #[test]
    fn the_baseline_is_stable_above_the_floor_or_the_configured_rate() {
        let cfg = GuardConfig::default();
        assert_eq!(
            cfg.error_hypotheses(0, 0),
            (0.001, 0.05),
            "no stable traffic: the configured baseline"
        );
        assert_eq!(
            cfg.error_hypotheses(100, 0),
            (0.025, 0.05),
            "100 clean stable requests do not rule out 2.5 %: judged against the cap"
        );
        let (p0, _) = cfg.error_hypotheses(900, 0);
        assert!(
            (0.002..0.004).contains(&p0),
            "900 clean requests: Wilson's upper bound, {p0}"
        );
        let (p0, _) = cfg.error_hypotheses(900, 9);
        assert!((0.015..0.02).contains(&p0), "1 % over 900: {p0}");
        assert_eq!(
            cfg.error_hypotheses(999, 999),
            (0.025, 0.05),
            "never above maxErrorRate / minErrorRatio"
        );
        assert_eq!(cfg.error_hypotheses(10_000, 0), (0.001, 0.05), "the floor");
        let (p0, p1) = cfg.error_hypotheses(10_000, 400);
        assert!(
            (p0 - 0.04).abs() < 1e-12 && (p1 - 0.08).abs() < 1e-12,
            "{p0} {p1}"
        );
        let (p0, p1) = cfg.error_hypotheses(1_000, 1_000);
        assert!(p0 == 0.5 && p1 < 1.0);
    }

    #[test]
    fn one_failure_does_not_trip_but_two_early_ones_do() {
        let cfg = GuardConfig::default();
        let mut guard = Guard::default();
        let none = TrafficDelta::default();
        let v = guard.observe(&cfg, &none, &TrafficDelta::outcomes(1, 1));
        assert_eq!(v, GuardVerdict::Continue);
        let v = guard.observe(&cfg, &none, &TrafficDelta::outcomes(5, 1));
        assert_eq!(v, GuardVerdict::Trip(GuardTest::Errors));
        let e = guard.evidence(&cfg);
        assert_eq!((e.errors.requests, e.errors.events), (6, 2));
        assert!(e.errors.llr >= e.errors.upper);
        assert_eq!(e.errors.toward_reject, 1.0);
        assert_eq!(e.baseline, BaselineSource::Configured);
    }

    fn histogram(counts: [u64; 4]) -> LatencyHistogram {
        LatencyHistogram {
            bounds_us: vec![1_000, 10_000, 100_000],
            counts: counts.to_vec(),
        }
    }

    #[test]
    fn the_latency_test_counts_candidate_requests_above_stables_p99_bucket() {
        let cfg = GuardConfig::default();
        let mut guard = Guard::default();
        // Stable: 99.5 % under 1 ms, the rest under 10 ms; p99 is in the first bucket.
        let stable = TrafficDelta {
            requests: 2_000,
            failures: 0,
            latency: histogram([1_990, 10, 0, 0]),
        };
        let quiet = TrafficDelta::default();
        guard.observe(&cfg, &stable, &quiet);
        assert_eq!(guard.latency_threshold(&cfg), Some((0, 1_000)));
        let mut verdict = GuardVerdict::Continue;
        for _ in 0..10 {
            let slow_candidate = TrafficDelta {
                requests: 5,
                failures: 0,
                latency: histogram([3, 2, 0, 0]),
            };
            verdict = guard.observe(&cfg, &stable, &slow_candidate);
            if verdict != GuardVerdict::Continue {
                break;
            }
        }
        assert_eq!(verdict, GuardVerdict::Trip(GuardTest::Latency));
        let e = guard.evidence(&cfg);
        assert_eq!(e.latency_threshold_us, Some(1_000));
        assert!(e.latency.is_some_and(|l| l.events >= 2));
    }

    #[test]
    fn a_good_candidate_is_accepted_and_the_state_round_trips() {
        let cfg = GuardConfig::default();
        let mut guard = Guard::default();
        for _ in 0..100 {
            guard.observe(
                &cfg,
                &TrafficDelta {
                    requests: 200,
                    failures: 0,
                    latency: histogram([195, 5, 0, 0]),
                },
                &TrafficDelta {
                    requests: 10,
                    failures: 0,
                    latency: histogram([10, 0, 0, 0]),
                },
            );
        }
        assert_eq!(guard.verdict(&cfg), GuardVerdict::Accept);
        let json = serde_json::to_string(&guard).unwrap();
        let back: Guard = serde_json::from_str(&json).unwrap();
        assert_eq!(back, guard);
    }

    #[test]
    fn bad_configurations_are_explained() {
        let cfg = GuardConfig {
            alpha: 0.0,
            ..GuardConfig::default()
        };
        assert_eq!(
            cfg.validate(),
            Err(GuardConfigError::NotAProbability {
                field: "alpha",
                value: 0.0
            })
        );
        let cfg: GuardConfig = serde_json::from_str(r#"{"maxErrorRate": 0.1}"#).unwrap();
        assert_eq!(cfg.max_error_rate, 0.1);
        assert!(cfg.validate().is_ok());
        assert!(serde_json::from_str::<GuardConfig>(r#"{"maxErrorRat": 0.1}"#).is_err());
    }
}
