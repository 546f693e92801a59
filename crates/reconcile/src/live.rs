//! Live traffic per (application, revision), from the proxy's counters.
//!
//! The controller reads the proxy's metrics snapshot every [`READ_EVERY`] (ten times a
//! second) and keeps the readings of the last [`WINDOW`] per revision. Rates, error rates and
//! latency quantiles are the difference between the newest and the oldest reading of the
//! window, so they are exact counts over a known interval, not samples: a revision that got 200
//! requests in the last 10 s shows 20 requests a second. A counter that went down (the proxy
//! restarted) counts from zero, as Prometheus's `increase()` does.
//!
//! [`Readings`] is plain data with the time passed in, so the window arithmetic is tested
//! without a proxy or a clock. The rollout engine reads the same deltas for its analysis.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use gauntlet_proxy::metrics::{delta, MetricsSnapshot};
use serde::{Deserialize, Serialize};

/// How often the controller reads the proxy's metrics.
pub const READ_EVERY: Duration = Duration::from_millis(100);
/// The window rates and quantiles are computed over.
pub const WINDOW: Duration = Duration::from_secs(10);

/// A revision's traffic over the window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRates {
    pub requests_per_second: f64,
    /// Failures (5xx, connection errors, timeouts) over requests; `None` without requests.
    pub error_rate: Option<f64>,
    /// Latency quantiles in milliseconds; `None` without responses.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The interval the figures cover, in seconds.
    pub window_seconds: f64,
}

/// The readings of the last window, per (application, revision).
#[derive(Debug, Default)]
pub struct Readings {
    by_revision: BTreeMap<(String, String), VecDeque<(u64, MetricsSnapshot)>>,
}

impl Readings {
    /// Adds one reading taken at `now_ms`; revisions absent from it are forgotten.
    pub fn record(&mut self, now_ms: u64, reading: &[(String, String, MetricsSnapshot)]) {
        let window = WINDOW.as_millis() as u64;
        let mut kept = BTreeMap::new();
        for (app, revision, snapshot) in reading {
            let key = (app.clone(), revision.clone());
            let mut series = self.by_revision.remove(&key).unwrap_or_default();
            series.push_back((now_ms, *snapshot));
            // Keep one reading at or before the window's start, so the window is covered.
            while series.len() > 2 && series[1].0 + window <= now_ms {
                series.pop_front();
            }
            kept.insert(key, series);
        }
        self.by_revision = kept;
    }

    /// The newest reading of every revision of `app`.
    pub fn latest(&self, app: &str) -> BTreeMap<String, MetricsSnapshot> {
        self.by_revision
            .iter()
            .filter(|((a, _), _)| a == app)
            .filter_map(|((_, revision), series)| Some((revision.clone(), series.back()?.1)))
            .collect()
    }

    /// What each revision of `app` did over the window: the newest reading minus the oldest.
    /// A revision seen once has done everything in its one reading since it was added.
    pub fn window(&self, app: &str) -> BTreeMap<String, MetricsSnapshot> {
        self.by_revision
            .iter()
            .filter(|((a, _), _)| a == app)
            .filter_map(|((_, revision), series)| {
                let (_, first) = series.front()?;
                let (_, last) = series.back()?;
                let d = if series.len() == 1 {
                    *last
                } else {
                    delta(first, last)
                };
                Some((revision.clone(), d))
            })
            .collect()
    }

    /// The rates of one revision over the window; `None` before two readings.
    pub fn rates(&self, app: &str, revision: &str) -> Option<RevisionRates> {
        let series = self
            .by_revision
            .get(&(app.to_string(), revision.to_string()))?;
        let (first_ms, first) = series.front()?;
        let (last_ms, last) = series.back()?;
        if last_ms <= first_ms {
            return None;
        }
        Some(rates(&delta(first, last), last_ms - first_ms))
    }
}

/// Rates from the counters' increase over `elapsed_ms`.
pub fn rates(d: &MetricsSnapshot, elapsed_ms: u64) -> RevisionRates {
    let seconds = elapsed_ms as f64 / 1000.0;
    RevisionRates {
        requests_per_second: d.requests as f64 / seconds,
        error_rate: (d.requests > 0).then(|| d.failures() as f64 / d.requests as f64),
        p50_ms: d.latency.quantile_us(0.50).map(|us| us / 1000.0),
        p99_ms: d.latency.quantile_us(0.99).map(|us| us / 1000.0),
        window_seconds: seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(requests: u64, errors: u64) -> MetricsSnapshot {
        let mut s = MetricsSnapshot {
            requests,
            ..MetricsSnapshot::default()
        };
        s.responses[1] = requests - errors;
        s.responses[4] = errors;
        s
    }

    fn reading(requests: u64, errors: u64) -> Vec<(String, String, MetricsSnapshot)> {
        vec![("web".into(), "v2".into(), snapshot(requests, errors))]
    }

    #[test]
    fn rates_are_the_increase_over_the_window() {
        let mut r = Readings::default();
        assert_eq!(r.rates("web", "v2"), None);
        r.record(1_000, &reading(100, 0));
        assert_eq!(r.rates("web", "v2"), None, "one reading is no interval");
        r.record(3_000, &reading(500, 8));
        let rates = r.rates("web", "v2").unwrap();
        assert_eq!(rates.requests_per_second, 200.0);
        assert_eq!(rates.error_rate, Some(0.02));
        assert_eq!(rates.window_seconds, 2.0);
    }

    #[test]
    fn old_readings_leave_the_window_and_absent_revisions_are_forgotten() {
        let mut r = Readings::default();
        for i in 0..=60u64 {
            r.record(i * 250, &reading(i * 50, 0));
        }
        let rates = r.rates("web", "v2").unwrap();
        assert_eq!(rates.window_seconds, 10.0);
        assert_eq!(rates.requests_per_second, 200.0);
        r.record(20_000, &[]);
        assert_eq!(r.rates("web", "v2"), None);
    }

    #[test]
    fn a_restarted_proxy_counts_from_zero() {
        let mut r = Readings::default();
        r.record(0, &reading(1_000, 0));
        r.record(1_000, &reading(40, 2));
        let rates = r.rates("web", "v2").unwrap();
        assert_eq!(rates.requests_per_second, 40.0);
        assert_eq!(rates.error_rate, Some(0.05));
    }
}
