//! Choosing an endpoint within a revision, and passive health.
//!
//! [`choose`] is power of two choices on in-flight requests: draw two distinct available
//! endpoints at random and take the one with fewer requests in flight. It spreads load nearly
//! as well as least-requests over all endpoints at the cost of two reads, and never herds every
//! request onto the one endpoint that just became least loaded.
//!
//! Passive health follows the circuit-breaker shape of Envoy's outlier detection: an endpoint
//! that refuses [`HealthPolicy::failures_to_eject`] connections in a row is ejected for a
//! window that doubles with each ejection in a row (capped). When the window ends the endpoint
//! is half-open: it is chosen again, one more failure ejects it for the next, longer window,
//! and one success restores it fully. The transitions are pure functions of `now_ms`.

use crate::draw::{below, mix};

/// When to eject an endpoint and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive connect failures that eject a healthy endpoint.
    pub failures_to_eject: u32,
    /// The first ejection's length; each further ejection in a row doubles it.
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
}

impl Default for HealthPolicy {
    /// Three refusals eject for 1 s, then 2 s, 4 s… up to 30 s: a local instance that is
    /// restarting comes back within its restart backoff, and one that stays down costs one
    /// refused connect (retried elsewhere) every 30 s.
    fn default() -> Self {
        HealthPolicy {
            failures_to_eject: 3,
            base_ejection_ms: 1_000,
            max_ejection_ms: 30_000,
        }
    }
}

/// What the balancer knows about one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointState {
    /// Set from configuration: a draining endpoint gets no new requests.
    pub draining: bool,
    /// Requests sent to the endpoint and not yet finished.
    pub in_flight: u32,
    consecutive_failures: u32,
    /// Ejections since the last success; drives the doubling.
    ejections: u32,
    ejected_until_ms: Option<u64>,
}

/// An endpoint's health as seen at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Not chosen until `until_ms`.
    Ejected {
        until_ms: u64,
    },
    /// The ejection window has passed: chosen again, on probation.
    HalfOpen,
}

impl EndpointState {
    pub fn health(&self, now_ms: u64) -> Health {
        match self.ejected_until_ms {
            None => Health::Healthy,
            Some(until_ms) if now_ms < until_ms => Health::Ejected { until_ms },
            Some(_) => Health::HalfOpen,
        }
    }

    /// Whether [`choose`] may pick this endpoint at `now_ms`.
    pub fn is_available(&self, now_ms: u64) -> bool {
        !self.draining && !matches!(self.health(now_ms), Health::Ejected { .. })
    }

    /// A connection to the endpoint was refused or failed before a request was sent.
    pub fn record_connect_failure(&mut self, policy: &HealthPolicy, now_ms: u64) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let eject = match self.health(now_ms) {
            Health::Healthy => self.consecutive_failures >= policy.failures_to_eject,
            Health::HalfOpen => true,
            // A request sent before the ejection failed late; the window stands.
            Health::Ejected { .. } => false,
        };
        if eject {
            let doublings = self.ejections.min(63);
            let window = policy
                .base_ejection_ms
                .saturating_mul(1u64 << doublings)
                .min(policy.max_ejection_ms);
            self.ejected_until_ms = Some(now_ms.saturating_add(window));
            self.ejections = self.ejections.saturating_add(1);
        }
    }

    /// A connection to the endpoint succeeded: it is healthy again, with a clean record.
    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
        self.ejections = 0;
        self.ejected_until_ms = None;
    }
}

/// Picks an endpoint by power of two choices on in-flight requests, among endpoints that are
/// neither draining nor ejected at `now_ms`. `None` when there is none: the data path answers
/// 503. Allocates nothing; two passes over the slice.
pub fn choose(endpoints: &[EndpointState], draw: u64, now_ms: u64) -> Option<usize> {
    let available = endpoints.iter().filter(|e| e.is_available(now_ms)).count();
    let nth_available = |n: usize| {
        endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_available(now_ms))
            .nth(n)
            .map(|(i, _)| i)
    };
    match available {
        0 => None,
        1 => nth_available(0),
        n => {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            let first = below(draw, n);
            let mut second = below(mix(draw), n - 1);
            if second >= first {
                second += 1;
            }
            let a = nth_available(first as usize)?;
            let b = nth_available(second as usize)?;
            // Ties go to the first draw, so equal loads spread at random.
            if endpoints[b].in_flight < endpoints[a].in_flight {
                Some(b)
            } else {
                Some(a)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(in_flight: &[u32]) -> Vec<EndpointState> {
        in_flight
            .iter()
            .map(|&n| EndpointState {
                in_flight: n,
                ..EndpointState::default()
            })
            .collect()
    }

    /// A tiny deterministic generator for draws.
    fn draws(mut x: u64) -> impl Iterator<Item = u64> {
        std::iter::from_fn(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Some(x)
        })
    }

    #[test]
    fn the_less_loaded_of_the_two_candidates_is_chosen() {
        let pool = endpoints(&[5, 1]);
        for draw in draws(1).take(100) {
            assert_eq!(choose(&pool, draw, 0), Some(1));
        }
    }

    #[test]
    fn the_most_loaded_endpoint_is_never_chosen_out_of_three() {
        let pool = endpoints(&[0, 9, 0]);
        let mut seen = [0; 3];
        for draw in draws(7).take(3_000) {
            seen[choose(&pool, draw, 0).expect("available")] += 1;
        }
        assert_eq!(seen[1], 0);
        assert!(seen[0] > 1_000 && seen[2] > 1_000, "{seen:?}");
    }

    #[test]
    fn equally_loaded_endpoints_share_requests() {
        let pool = endpoints(&[2, 2, 2, 2]);
        let mut seen = [0u32; 4];
        for draw in draws(3).take(40_000) {
            seen[choose(&pool, draw, 0).expect("available")] += 1;
        }
        for n in seen {
            assert!((9_000..11_000).contains(&n), "{seen:?}");
        }
    }

    #[test]
    fn draining_endpoints_are_skipped() {
        let mut pool = endpoints(&[0, 7]);
        pool[0].draining = true;
        for draw in draws(5).take(100) {
            assert_eq!(choose(&pool, draw, 0), Some(1));
        }
        pool[1].draining = true;
        assert_eq!(choose(&pool, 1, 0), None);
        assert_eq!(choose(&[], 1, 0), None);
    }

    #[test]
    fn consecutive_connect_failures_eject_for_the_base_window() {
        let policy = HealthPolicy::default();
        let mut pool = endpoints(&[0, 3]);
        pool[0].record_connect_failure(&policy, 100);
        pool[0].record_connect_failure(&policy, 110);
        assert_eq!(pool[0].health(110), Health::Healthy);
        pool[0].record_connect_failure(&policy, 120);
        assert_eq!(pool[0].health(120), Health::Ejected { until_ms: 1_120 });
        for draw in draws(9).take(100) {
            assert_eq!(choose(&pool, draw, 1_119), Some(1));
        }
        assert_eq!(pool[0].health(1_120), Health::HalfOpen);
        assert!(pool[0].is_available(1_120));
        pool[0].record_connect_failure(&policy, 1_130);
        assert_eq!(pool[0].health(1_130), Health::Ejected { until_ms: 3_130 });
    }

    #[test]
    fn a_success_between_failures_resets_the_count() {
        let policy = HealthPolicy::default();
        let mut endpoint = EndpointState::default();
        endpoint.record_connect_failure(&policy, 0);
        endpoint.record_connect_failure(&policy, 0);
        endpoint.record_success();
        endpoint.record_connect_failure(&policy, 0);
        endpoint.record_connect_failure(&policy, 0);
        assert_eq!(endpoint.health(0), Health::Healthy);
    }

    #[test]
    fn a_half_open_failure_ejects_again_for_double_the_window_up_to_the_cap() {
        let policy = HealthPolicy {
            failures_to_eject: 1,
            base_ejection_ms: 1_000,
            max_ejection_ms: 5_000,
        };
        let mut endpoint = EndpointState::default();
        let mut now = 0;
        let mut windows = Vec::new();
        for _ in 0..5 {
            endpoint.record_connect_failure(&policy, now);
            let Health::Ejected { until_ms } = endpoint.health(now) else {
                panic!("not ejected: {:?}", endpoint.health(now));
            };
            windows.push(until_ms - now);
            now = until_ms;
            assert_eq!(endpoint.health(now), Health::HalfOpen);
        }
        assert_eq!(windows, [1_000, 2_000, 4_000, 5_000, 5_000]);
    }

    #[test]
    fn a_late_failure_while_ejected_does_not_extend_the_window() {
        let policy = HealthPolicy {
            failures_to_eject: 1,
            ..HealthPolicy::default()
        };
        let mut endpoint = EndpointState::default();
        endpoint.record_connect_failure(&policy, 0);
        endpoint.record_connect_failure(&policy, 500);
        assert_eq!(endpoint.health(500), Health::Ejected { until_ms: 1_000 });
    }

    #[test]
    fn a_half_open_success_restores_the_endpoint_and_the_base_window() {
        let policy = HealthPolicy {
            failures_to_eject: 1,
            ..HealthPolicy::default()
        };
        let mut endpoint = EndpointState::default();
        endpoint.record_connect_failure(&policy, 0);
        endpoint.record_connect_failure(&policy, 1_000);
        endpoint.record_success();
        assert_eq!(endpoint.health(1_500), Health::Healthy);
        endpoint.record_connect_failure(&policy, 3_000);
        assert_eq!(endpoint.health(3_000), Health::Ejected { until_ms: 4_000 });
    }
}
