//! The supervisor's decisions as pure functions over plain data: how long to wait before the
//! next start after a death, when repeated deaths become a crash loop, and when probe results
//! flip an instance between ready and unready. No clock and no I/O, so they are tested
//! exhaustively in microseconds; the supervisor feeds them durations and probe outcomes.

use std::time::Duration;

/// Wait before the first restart after a death; doubled after each further quick death.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The longest wait between two starts (Kubernetes caps its CrashLoopBackOff at 5 minutes;
/// local processes are cheap to retry, so Gauntlet retries at least once a minute).
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A process that stayed up at least this long was healthy: its death resets the backoff
/// and the count of quick deaths, as the kubelet does after 10 minutes of running.
pub const STABLE_RUN: Duration = Duration::from_secs(60);
/// This many consecutive quick deaths (or failed starts) put an instance in `CrashLoop`.
pub const CRASH_LOOP_AFTER: u32 = 3;

/// Restart backoff of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backoff {
    next_delay: Duration,
    quick_deaths: u32,
}

/// What to do after a death.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Restart {
    /// Wait this long before starting again.
    pub delay: Duration,
    /// The instance is crash looping (show `Phase::CrashLoop`).
    pub crash_loop: bool,
    /// This death is the one that entered the crash loop (emit the `crashloop` event once).
    pub entered_crash_loop: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next_delay: BACKOFF_INITIAL,
            quick_deaths: 0,
        }
    }
}

impl Backoff {
    /// A process died after running for `uptime`.
    pub fn on_exit(&mut self, uptime: Duration) -> Restart {
        if uptime >= STABLE_RUN {
            *self = Backoff::default();
            return Restart {
                delay: BACKOFF_INITIAL,
                crash_loop: false,
                entered_crash_loop: false,
            };
        }
        self.on_quick_failure()
    }

    /// The process could not be started at all; counts like a quick death.
    pub fn on_start_failure(&mut self) -> Restart {
        self.on_quick_failure()
    }

    fn on_quick_failure(&mut self) -> Restart {
        let delay = self.next_delay;
        self.next_delay = (self.next_delay * 2).min(BACKOFF_MAX);
        self.quick_deaths = self.quick_deaths.saturating_add(1);
        Restart {
            delay,
            crash_loop: self.quick_deaths >= CRASH_LOOP_AFTER,
            entered_crash_loop: self.quick_deaths == CRASH_LOOP_AFTER,
        }
    }
}

/// Readiness of one running process, after Kubernetes: not ready until `success_threshold`
/// consecutive successes; once ready, unready after `failure_threshold` consecutive failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Readiness {
    success_threshold: u32,
    failure_threshold: u32,
    ready: bool,
    successes: u32,
    failures: u32,
}

/// A change of readiness that the supervisor reports as a phase and an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Became {
    Ready,
    Unready { reason: String },
}

impl Readiness {
    pub fn new(success_threshold: u32, failure_threshold: u32) -> Self {
        Readiness {
            success_threshold: success_threshold.max(1),
            failure_threshold: failure_threshold.max(1),
            ready: false,
            successes: 0,
            failures: 0,
        }
    }

    /// This readiness, but beginning as ready: for a process adopted after a controller
    /// restart that was ready before it. No success is needed to stay ready;
    /// `failure_threshold` consecutive failures make it unready.
    pub fn resumed_ready(mut self) -> Self {
        self.ready = true;
        self
    }

    /// Records one probe outcome; returns the transition it causes, if any.
    pub fn observe(&mut self, outcome: Result<(), String>) -> Option<Became> {
        match outcome {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if !self.ready && self.successes >= self.success_threshold {
                    self.ready = true;
                    return Some(Became::Ready);
                }
            }
            Err(reason) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.ready && self.failures >= self.failure_threshold {
                    self.ready = false;
                    return Some(Became::Unready { reason });
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_millis(10);

    #[test]
    fn backoff_doubles_from_one_second_and_caps_at_sixty() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| b.on_exit(QUICK).delay.as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn third_quick_death_enters_crash_loop_once() {
        let mut b = Backoff::default();
        let r: Vec<Restart> = (0..4).map(|_| b.on_exit(QUICK)).collect();
        assert_eq!(
            r.iter().map(|r| r.crash_loop).collect::<Vec<_>>(),
            vec![false, false, true, true]
        );
        assert_eq!(
            r.iter().map(|r| r.entered_crash_loop).collect::<Vec<_>>(),
            vec![false, false, true, false]
        );
    }

    #[test]
    fn a_stable_run_resets_backoff_and_crash_loop() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.on_exit(QUICK);
        }
        let r = b.on_exit(STABLE_RUN);
        assert_eq!(r.delay, BACKOFF_INITIAL);
        assert!(!r.crash_loop);
        assert_eq!(b.on_exit(QUICK).delay, BACKOFF_INITIAL);
    }

    #[test]
    fn start_failures_count_as_quick_deaths() {
        let mut b = Backoff::default();
        b.on_start_failure();
        b.on_exit(QUICK);
        assert!(b.on_start_failure().entered_crash_loop);
    }

    #[test]
    fn ready_after_success_threshold_and_unready_after_failure_threshold() {
        let mut r = Readiness::new(2, 3);
        assert_eq!(r.observe(Ok(())), None);
        assert_eq!(r.observe(Ok(())), Some(Became::Ready));
        assert_eq!(r.observe(Ok(())), None);
        assert_eq!(r.observe(Err("a".into())), None);
        assert_eq!(r.observe(Err("b".into())), None);
        assert_eq!(
            r.observe(Err("c".into())),
            Some(Became::Unready { reason: "c".into() })
        );
        assert_eq!(r.observe(Err("d".into())), None);
    }

    #[test]
    fn failures_before_first_ready_do_not_report_unready() {
        let mut r = Readiness::new(1, 1);
        assert_eq!(r.observe(Err("refused".into())), None);
        assert_eq!(r.observe(Ok(())), Some(Became::Ready));
    }

    #[test]
    fn resumed_ready_stays_ready_on_success_and_is_demoted_by_the_failure_threshold() {
        let mut r = Readiness::new(3, 2).resumed_ready();
        assert_eq!(r.observe(Ok(())), None);
        assert_eq!(r.observe(Err("a".into())), None);
        assert_eq!(
            r.observe(Err("b".into())),
            Some(Became::Unready { reason: "b".into() })
        );
        // Ready again only after the success threshold, as for any process.
        assert_eq!(r.observe(Ok(())), None);
        assert_eq!(r.observe(Ok(())), None);
        assert_eq!(r.observe(Ok(())), Some(Became::Ready));
    }

    #[test]
    fn a_failure_resets_the_success_streak() {
        let mut r = Readiness::new(2, 1);
        r.observe(Ok(()));
        r.observe(Err("x".into()));
        assert_eq!(r.observe(Ok(())), None);
        assert_eq!(r.observe(Ok(())), Some(Became::Ready));
    }
}
