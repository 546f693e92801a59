//! Per (application, revision) request metrics: lock-free counters on the hot path, Prometheus
//! text for `/metrics`, and cheap snapshots and deltas for the controller.
//!
//! A [`RevisionMetrics`] is created when a configuration is compiled and carried over to the
//! next compiled configuration for the same (application, revision), so counters never reset on
//! a reload. The data path holds an `Arc<RevisionMetrics>` and only increments atomics; it never
//! looks anything up by name. The controller reads [`RevisionMetrics::snapshot`] several times a
//! second and judges the difference between two readings with [`delta`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets in microseconds: 0.25 ms to 10 s in a 1-2.5-5 series
/// (Prometheus's default buckets extended below 5 ms, where a local proxy lives). Requests
/// slower than the last bound fall into the `+Inf` bucket.
pub const LATENCY_BOUNDS_US: [u64; 15] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// [`LATENCY_BOUNDS_US`] in seconds, as Prometheus `le` labels.
const LATENCY_LE: [&str; 15] = [
    "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
    "1", "2.5", "5", "10",
];

/// Number of histogram buckets, `+Inf` included.
pub const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// Counters for one revision of one application. All updates are relaxed atomic increments.
#[derive(Debug, Default)]
pub struct RevisionMetrics {
    requests: AtomicU64,
    responses: [AtomicU64; 5],
    connect_errors: AtomicU64,
    timeouts: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    latency_sum_us: AtomicU64,
}

impl RevisionMetrics {
    /// A request was routed to this revision.
    pub fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The revision answered with `status` after `latency_us` (request received to response
    /// headers). A status outside 100..=599 counts towards latency only.
    pub fn record_response(&self, status: u16, latency_us: u64) {
        if let Some(class) = status_class(status) {
            self.responses[class].fetch_add(1, Ordering::Relaxed);
            if class == 4 {
                FAILURES.count();
            }
        }
        self.latency[bucket(latency_us)].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(latency_us, Ordering::Relaxed);
    }

    /// No connection to any endpoint of the revision could be made.
    pub fn record_connect_error(&self) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
        FAILURES.count();
    }

    /// The revision did not answer in time (the proxy answered 504).
    pub fn record_timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
        FAILURES.count();
    }

    /// The counters now, as plain numbers. Each counter is read once; counters are not read
    /// at one instant together, so a reading may count a response whose request it does not.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            requests: load(&self.requests),
            responses: self.responses.each_ref().map(load),
            connect_errors: load(&self.connect_errors),
            timeouts: load(&self.timeouts),
            latency: Histogram {
                buckets: self.latency.each_ref().map(load),
                sum_us: load(&self.latency_sum_us),
            },
        }
    }
}

/// Every failure the process has counted (5xx, connection errors, timeouts, over every
/// revision), and a wake-up for admin readers waiting for the next one: the controller's
/// sequential guard can only trip on a failure, so it reads the counters as soon as one is
/// counted instead of at its next tick. Process-wide, as a proxy is one per process; a second
/// proxy in the same process (tests) only causes an extra reading.
static FAILURES: FailureWatch = FailureWatch {
    seq: AtomicU64::new(0),
    waiting: AtomicUsize::new(0),
    notify: Notify::const_new(),
};

struct FailureWatch {
    seq: AtomicU64,
    /// Readers waiting: without any, counting a failure is one atomic add and one load.
    waiting: AtomicUsize,
    notify: Notify,
}

impl FailureWatch {
    /// Called after the failure's own counter was incremented, so a reader woken by it sees it.
    fn count(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// Failures counted since the process started.
pub fn failure_seq() -> u64 {
    FAILURES.seq.load(Ordering::SeqCst)
}

/// Returns once more than `after` failures have been counted, or after `timeout`; the count
/// then.
pub async fn wait_for_failure(after: u64, timeout: Duration) -> u64 {
    if failure_seq() > after || timeout.is_zero() {
        return failure_seq();
    }
    struct Waiting;
    impl Drop for Waiting {
        fn drop(&mut self) {
            FAILURES.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
    // Registered (waiting, then enabled) before the count is checked again: a failure counted
    // in between either shows in the count or finds this reader to wake.
    FAILURES.waiting.fetch_add(1, Ordering::SeqCst);
    let _waiting = Waiting;
    let mut notified = std::pin::pin!(FAILURES.notify.notified());
    notified.as_mut().enable();
    if failure_seq() <= after {
        let _ = tokio::time::timeout(timeout, notified).await;
    }
    failure_seq()
}

fn status_class(status: u16) -> Option<usize> {
    match status {
        100..=599 => Some(usize::from(status / 100 - 1)),
        _ => None,
    }
}

fn bucket(latency_us: u64) -> usize {
    LATENCY_BOUNDS_US.partition_point(|&bound| bound < latency_us)
}

/// A reading of one revision's counters (or the difference of two readings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSnapshot {
    pub requests: u64,
    /// Responses by status class: index 0 is 1xx, index 4 is 5xx.
    pub responses: [u64; 5],
    pub connect_errors: u64,
    pub timeouts: u64,
    pub latency: Histogram,
}

impl MetricsSnapshot {
    /// Outcomes the sequential guard counts as failures: 5xx, connection errors, timeouts.
    pub fn failures(&self) -> u64 {
        self.responses[4] + self.connect_errors + self.timeouts
    }
}

/// A latency histogram over [`LATENCY_BOUNDS_US`]; bucket counts are per bucket, not
/// cumulative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Histogram {
    pub buckets: [u64; BUCKETS],
    pub sum_us: u64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Estimates the `q` quantile (0.0..=1.0) in microseconds as Prometheus's
    /// `histogram_quantile` does: linear within the bucket holding the rank, the highest finite
    /// bound when that is `+Inf`. `None` when the histogram is empty.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = LATENCY_BOUNDS_US.get(i) else {
                    return Some(LATENCY_BOUNDS_US[LATENCY_BOUNDS_US.len() - 1] as f64);
                };
                let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_US[i - 1] };
                let within = (rank - below as f64) / n as f64;
                return Some(lower as f64 + (upper - lower) as f64 * within);
            }
            below += n;
        }
        None
    }
}

/// What happened between two readings of the same counters. A counter that went down was
/// reset (the proxy restarted), so its whole new value is the increase, as Prometheus's
/// `increase()` assumes.
pub fn delta(prev: &MetricsSnapshot, next: &MetricsSnapshot) -> MetricsSnapshot {
    let d = |p: u64, n: u64| if n >= p { n - p } else { n };
    MetricsSnapshot {
        requests: d(prev.requests, next.requests),
        responses: std::array::from_fn(|i| d(prev.responses[i], next.responses[i])),
        connect_errors: d(prev.connect_errors, next.connect_errors),
        timeouts: d(prev.timeouts, next.timeouts),
        latency: Histogram {
            buckets: std::array::from_fn(|i| d(prev.latency.buckets[i], next.latency.buckets[i])),
            sum_us: d(prev.latency.sum_us, next.latency.sum_us),
        },
    }
}

/// Renders `(application, revision, metrics)` entries in the Prometheus text exposition format
/// (version 0.0.4), families in a fixed order and entries in the given order.
pub fn render_prometheus(entries: &[(&str, &str, &RevisionMetrics)]) -> String {
    let readings: Vec<(String, MetricsSnapshot)> = entries
        .iter()
        .map(|(app, revision, metrics)| {
            (
                format!("app=\"{}\",revision=\"{}\"", escape(app), escape(revision)),
                metrics.snapshot(),
            )
        })
        .collect();
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, value: fn(&MetricsSnapshot) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, s) in &readings {
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(s));
        }
    };
    counter(
        &mut out,
        "gauntlet_proxy_requests_total",
        "Requests routed to the revision.",
        |s| s.requests,
    );
    let name = "gauntlet_proxy_responses_total";
    let _ = writeln!(
        out,
        "# HELP {name} Responses from the revision by status class.\n# TYPE {name} counter"
    );
    for (labels, s) in &readings {
        for (i, n) in s.responses.iter().enumerate() {
            let _ = writeln!(out, "{name}{{{labels},class=\"{}xx\"}} {n}", i + 1);
        }
    }
    counter(
        &mut out,
        "gauntlet_proxy_upstream_connect_errors_total",
        "Requests for which no connection to the revision could be made.",
        |s| s.connect_errors,
    );
    counter(
        &mut out,
        "gauntlet_proxy_upstream_timeouts_total",
        "Requests the revision did not answer in time.",
        |s| s.timeouts,
    );
    let name = "gauntlet_proxy_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from request received to response headers from the revision.\n\
         # TYPE {name} histogram"
    );
    for (labels, s) in &readings {
        let mut cumulative = 0;
        for (i, n) in s.latency.buckets.iter().enumerate() {
            cumulative += n;
            let le = LATENCY_LE.get(i).copied().unwrap_or("+Inf");
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = s.latency.sum_us as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
    out
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_whose_bound_is_not_below_it() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(250), 0);
        assert_eq!(bucket(251), 1);
        assert_eq!(bucket(10_000_000), 14);
        assert_eq!(bucket(10_000_001), 15);
        assert_eq!(LATENCY_LE.len(), LATENCY_BOUNDS_US.len());
        for (le, us) in LATENCY_LE.iter().zip(LATENCY_BOUNDS_US) {
            assert_eq!(le.parse::<f64>().expect("number"), us as f64 / 1e6);
        }
    }

    #[test]
    fn small_set_renders_exactly() {
        let stable = RevisionMetrics::default();
        stable.record_request();
        stable.record_request();
        stable.record_response(200, 800);
        stable.record_response(503, 700);
        let canary = RevisionMetrics::default();
        canary.record_request();
        canary.record_connect_error();
        canary.record_timeout();

        let text = render_prometheus(&[
            ("checkout", "stable", &stable),
            ("check\"out", "canary", &canary),
        ]);

        let mut expected = String::from(
            "# HELP gauntlet_proxy_requests_total Requests routed to the revision.
# TYPE gauntlet_proxy_requests_total counter
gauntlet_proxy_requests_total{app=\"checkout\",revision=\"stable\"} 2
gauntlet_proxy_requests_total{app=\"check\\\"out\",revision=\"canary\"} 1
# HELP gauntlet_proxy_responses_total Responses from the revision by status class.
# TYPE gauntlet_proxy_responses_total counter
gauntlet_proxy_responses_total{app=\"checkout\",revision=\"stable\",class=\"1xx\"} 0
gauntlet_proxy_responses_total{app=\"checkout\",revision=\"stable\",class=\"2xx\"} 1
gauntlet_proxy_responses_total{app=\"checkout\",revision=\"stable\",class=\"3xx\"} 0
gauntlet_proxy_responses_total{app=\"checkout\",revision=\"stable\",class=\"4xx\"} 0
gauntlet_proxy_responses_total{app=\"checkout\",revision=\"stable\",class=\"5xx\"} 1
gauntlet_proxy_responses_total{app=\"check\\\"out\",revision=\"canary\",class=\"1xx\"} 0
gauntlet_proxy_responses_total{app=\"check\\\"out\",revision=\"canary\",class=\"2xx\"} 0
gauntlet_proxy_responses_total{app=\"check\\\"out\",revision=\"canary\",class=\"3xx\"} 0
gauntlet_proxy_responses_total{app=\"check\\\"out\",revision=\"canary\",class=\"4xx\"} 0
gauntlet_proxy_responses_total{app=\"check\\\"out\",revision=\"canary\",class=\"5xx\"} 0
# HELP gauntlet_proxy_upstream_connect_errors_total Requests for which no connection to the revision could be made.
# TYPE gauntlet_proxy_upstream_connect_errors_total counter
gauntlet_proxy_upstream_connect_errors_total{app=\"checkout\",revision=\"stable\"} 0
gauntlet_proxy_upstream_connect_errors_total{app=\"check\\\"out\",revision=\"canary\"} 1
# HELP gauntlet_proxy_upstream_timeouts_total Requests the revision did not answer in time.
# TYPE gauntlet_proxy_upstream_timeouts_total counter
gauntlet_proxy_upstream_timeouts_total{app=\"checkout\",revision=\"stable\"} 0
gauntlet_proxy_upstream_timeouts_total{app=\"check\\\"out\",revision=\"canary\"} 1
# HELP gauntlet_proxy_request_duration_seconds Time from request received to response headers from the revision.
# TYPE gauntlet_proxy_request_duration_seconds histogram
",
        );
        for (labels, counts, sum) in [
            (
                "app=\"checkout\",revision=\"stable\"",
                [0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
                "0.0015",
            ),
            ("app=\"check\\\"out\",revision=\"canary\"", [0; 16], "0"),
        ] {
            let les = LATENCY_LE.iter().copied().chain(["+Inf"]);
            for (le, n) in les.zip(counts) {
                expected.push_str(&format!(
                    "gauntlet_proxy_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}\n"
                ));
            }
            expected.push_str(&format!(
                "gauntlet_proxy_request_duration_seconds_sum{{{labels}}} {sum}\n\
                 gauntlet_proxy_request_duration_seconds_count{{{labels}}} {}\n",
                counts[15]
            ));
        }
        assert_eq!(text, expected);
    }

    #[test]
    fn delta_is_the_difference_between_readings() {
        let metrics = RevisionMetrics::default();
        metrics.record_request();
        metrics.record_response(200, 300);
        let before = metrics.snapshot();
        for _ in 0..3 {
            metrics.record_request();
        }
        metrics.record_response(502, 20_000);
        metrics.record_response(204, 100);
        metrics.record_timeout();
        let after = metrics.snapshot();

        let d = delta(&before, &after);
        assert_eq!(d.requests, 3);
        assert_eq!(d.responses, [0, 1, 0, 0, 1]);
        assert_eq!(d.timeouts, 1);
        assert_eq!(d.connect_errors, 0);
        assert_eq!(d.failures(), 2);
        assert_eq!(d.latency.count(), 2);
        assert_eq!(d.latency.buckets[0], 1);
        assert_eq!(d.latency.buckets[6], 1);
        assert_eq!(d.latency.sum_us, 20_100);
        assert_eq!(delta(&after, &after), MetricsSnapshot::default());
    }

    #[test]
    fn delta_after_a_counter_reset_counts_the_new_value() {
        let before = MetricsSnapshot {
            requests: 1_000,
            responses: [0, 990, 0, 0, 0],
            ..MetricsSnapshot::default()
        };
        let after = MetricsSnapshot {
            requests: 7,
            responses: [0, 995, 0, 0, 0],
            ..MetricsSnapshot::default()
        };
        let d = delta(&before, &after);
        assert_eq!(d.requests, 7);
        assert_eq!(d.responses[1], 5);
    }

    #[test]
    fn quantiles_are_estimated_within_the_right_bucket() {
        let metrics = RevisionMetrics::default();
        // 98 fast requests at 3 ms, 2 slow ones at 700 ms.
        for _ in 0..98 {
            metrics.record_response(200, 3_000);
        }
        for _ in 0..2 {
            metrics.record_response(200, 700_000);
        }
        let histogram = metrics.snapshot().latency;
        let p50 = histogram.quantile_us(0.5).expect("non-empty");
        let p99 = histogram.quantile_us(0.99).expect("non-empty");
        assert!((2_500.0..=5_000.0).contains(&p50), "p50 {p50}");
        assert!((500_000.0..=1_000_000.0).contains(&p99), "p99 {p99}");
        assert_eq!(histogram.quantile_us(0.0), Some(2_500.0));
        assert_eq!(Histogram::default().quantile_us(0.5), None);
    }

    #[test]
    fn quantile_in_the_overflow_bucket_is_the_highest_bound() {
        let metrics = RevisionMetrics::default();
        metrics.record_response(200, 60_000_000);
        assert_eq!(
            metrics.snapshot().latency.quantile_us(0.99),
            Some(10_000_000.0)
        );
    }

    #[test]
    fn statuses_outside_http_range_count_only_towards_latency() {
        let metrics = RevisionMetrics::default();
        metrics.record_response(99, 10);
        metrics.record_response(600, 10);
        let s = metrics.snapshot();
        assert_eq!(s.responses, [0; 5]);
        assert_eq!(s.latency.count(), 2);
    }
}
