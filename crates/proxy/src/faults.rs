//! Chaos fault hooks: which fault, if any, a request to a revision gets.
//!
//! Rules come from the configuration with a lease (`expires_at_ms`) that the proxy enforces
//! itself: a rule is active while `now_ms < expires_at_ms` and never after, so a fault cannot
//! outlive its experiment even when the controller that set it has died.
//!
//! A rule with `callers` applies only to requests whose connection one of those processes
//! opened (a dependency fault between two applications); for other clients it does not exist.
//!
//! The active rules of a revision share the percentage space in configuration order, as bands:
//! with "delay 10 %" then "abort 5 %", a request is delayed with probability 10 %, aborted with
//! probability 5 %, and never both. An expired rule gives up its band, so the others keep their
//! percentages. Bands past 100 % never fire.

use std::sync::Arc;

use crate::config::{FaultKind, TOTAL_WEIGHT};
use crate::draw::{below, mix};

/// A compiled fault rule: the revision by index into its application's revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub revision: usize,
    pub kind: FaultKind,
    /// Units of 0.01 %.
    pub percent: u32,
    /// Unix milliseconds; the rule is inactive from this instant on.
    pub expires_at_ms: u64,
    /// The processes whose requests it applies to; `None`: every client's.
    pub callers: Option<Arc<[u32]>>,
}

impl Fault {
    pub fn is_active(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }

    /// Whether the rule applies to a client, given which processes own its connection.
    pub fn applies_to(&self, caller: &mut impl FnMut(&[u32]) -> bool) -> bool {
        self.callers
            .as_deref()
            .is_none_or(|pids| !pids.is_empty() && caller(pids))
    }
}

/// The pids named by the active rules of `revision`, when some rule is limited to callers:
/// what must be known of a client before [`fault_for`] can decide.
pub fn callers_to_check(rules: &[Fault], revision: usize, now_ms: u64) -> Vec<u32> {
    let mut pids: Vec<u32> = rules
        .iter()
        .filter(|r| r.revision == revision && r.is_active(now_ms))
        .filter_map(|r| r.callers.as_deref())
        .flatten()
        .copied()
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// What the data path does to one request instead of, or before, forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Wait this long, then forward as usual.
    Delay { ms: u64 },
    /// Answer with this status without forwarding.
    Abort { status: u16 },
    /// Close the client connection without answering.
    Reset,
    /// Hold the request while a rule like `rule` (same revision, kind and callers) is in force,
    /// then forward it; see [`holds`].
    Blackhole { rule: usize },
}

/// The fault for a request routed to `revision` at `now_ms`, given one random `draw`; `caller`
/// tells whether the client's connection belongs to one of a set of processes.
pub fn fault_for(
    rules: &[Fault],
    revision: usize,
    now_ms: u64,
    draw: u64,
    caller: &mut impl FnMut(&[u32]) -> bool,
) -> Option<FaultAction> {
    let position = below(draw, TOTAL_WEIGHT);
    let mut band_end = 0u32;
    for (index, rule) in rules.iter().enumerate() {
        if rule.revision != revision || !rule.is_active(now_ms) || !rule.applies_to(caller) {
            continue;
        }
        if rule.kind == FaultKind::Blackhole {
            band_end = band_end.saturating_add(rule.percent);
            if position < band_end {
                return Some(FaultAction::Blackhole { rule: index });
            }
            continue;
        }
        band_end = band_end.saturating_add(rule.percent);
        if position < band_end {
            return Some(action(rule.kind, draw));
        }
    }
    None
}

/// Whether a request held by `held` (a black-hole rule of an earlier table) is still held by
/// `rules` at `now_ms`: the same rule, by revision name, kind and callers, is still active.
/// Returns its expiry, the latest the hold may last without a new configuration.
pub fn holds(
    held: &Fault,
    held_revision: &str,
    rules: &[Fault],
    revision_name: impl Fn(usize) -> Option<String>,
    now_ms: u64,
) -> Option<u64> {
    rules
        .iter()
        .filter(|r| {
            r.kind == held.kind
                && r.callers == held.callers
                && r.is_active(now_ms)
                && revision_name(r.revision).as_deref() == Some(held_revision)
        })
        .map(|r| r.expires_at_ms)
        .max()
}

/// The earliest expiry among rules still active at `now_ms`: when the data path may drop its
/// fault hooks, and what the admin API reports.
pub fn next_expiry(rules: &[Fault], now_ms: u64) -> Option<u64> {
    rules
        .iter()
        .filter(|rule| rule.is_active(now_ms))
        .map(|rule| rule.expires_at_ms)
        .min()
}

fn action(kind: FaultKind, draw: u64) -> FaultAction {
    match kind {
        FaultKind::Delay {
            fixed_ms,
            jitter_ms,
        } => {
            let jitter = if jitter_ms == 0 {
                0
            } else {
                ((u128::from(mix(draw)) * (u128::from(jitter_ms) + 1)) >> 64) as u64
            };
            FaultAction::Delay {
                ms: fixed_ms.saturating_add(jitter),
            }
        }
        FaultKind::Abort { status } => FaultAction::Abort { status },
        FaultKind::Reset => FaultAction::Reset,
        // Decided by `fault_for`, which knows the rule's index.
        FaultKind::Blackhole => FaultAction::Reset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(revision: usize, kind: FaultKind, percent: u32, expires_at_ms: u64) -> Fault {
        Fault {
            revision,
            kind,
            percent,
            expires_at_ms,
            callers: None,
        }
    }

    fn anyone(_: &[u32]) -> bool {
        true
    }

    const ABORT: FaultKind = FaultKind::Abort { status: 503 };

    /// The draw whose position in the 0..10_000 space is `p`.
    fn at(p: u32) -> u64 {
        ((u128::from(p) << 64) / u128::from(TOTAL_WEIGHT) + 1) as u64
    }

    #[test]
    fn an_active_rule_fires_exactly_for_its_percentage() {
        let rules = [rule(0, ABORT, 500, 1_000)];
        assert_eq!(below(at(499), TOTAL_WEIGHT), 499);
        assert_eq!(
            fault_for(&rules, 0, 0, at(499), &mut anyone),
            Some(FaultAction::Abort { status: 503 })
        );
        assert_eq!(fault_for(&rules, 0, 0, at(500), &mut anyone), None);
    }

    #[test]
    fn expiry_is_exact_at_the_boundary() {
        let rules = [rule(0, FaultKind::Reset, TOTAL_WEIGHT, 1_000)];
        assert_eq!(
            fault_for(&rules, 0, 999, 0, &mut anyone),
            Some(FaultAction::Reset)
        );
        assert_eq!(fault_for(&rules, 0, 1_000, 0, &mut anyone), None);
        assert_eq!(fault_for(&rules, 0, 1_001, 0, &mut anyone), None);
    }

    #[test]
    fn rules_of_other_revisions_do_not_fire() {
        let rules = [rule(1, ABORT, TOTAL_WEIGHT, u64::MAX)];
        assert_eq!(fault_for(&rules, 0, 0, 0, &mut anyone), None);
        assert!(fault_for(&rules, 1, 0, 0, &mut anyone).is_some());
    }

    #[test]
    fn rules_share_the_space_as_bands_and_an_expired_rule_gives_up_its_band() {
        let delay = FaultKind::Delay {
            fixed_ms: 100,
            jitter_ms: 0,
        };
        let rules = [rule(0, delay, 1_000, 500), rule(0, ABORT, 500, 2_000)];
        assert_eq!(
            fault_for(&rules, 0, 0, at(999), &mut anyone),
            Some(FaultAction::Delay { ms: 100 })
        );
        assert_eq!(
            fault_for(&rules, 0, 0, at(1_499), &mut anyone),
            Some(FaultAction::Abort { status: 503 })
        );
        assert_eq!(fault_for(&rules, 0, 0, at(1_500), &mut anyone), None);
        // After the delay's lease, the abort keeps its 5 %, now from the bottom.
        assert_eq!(
            fault_for(&rules, 0, 500, at(499), &mut anyone),
            Some(FaultAction::Abort { status: 503 })
        );
        assert_eq!(fault_for(&rules, 0, 500, at(500), &mut anyone), None);
    }

    #[test]
    fn delay_jitter_stays_within_fixed_plus_jitter_and_varies() {
        let rules = [rule(
            0,
            FaultKind::Delay {
                fixed_ms: 100,
                jitter_ms: 50,
            },
            TOTAL_WEIGHT,
            u64::MAX,
        )];
        let mut seen = std::collections::BTreeSet::new();
        for draw in 0..2_000u64 {
            let Some(FaultAction::Delay { ms }) = fault_for(
                &rules,
                0,
                0,
                draw.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                &mut anyone,
            ) else {
                panic!("no delay");
            };
            assert!((100..=150).contains(&ms), "{ms}");
            seen.insert(ms);
        }
        assert!(seen.contains(&100) && seen.contains(&150), "{seen:?}");
    }

    #[test]
    fn next_expiry_ignores_expired_rules() {
        let rules = [rule(0, ABORT, 1, 100), rule(1, ABORT, 1, 300)];
        assert_eq!(next_expiry(&rules, 0), Some(100));
        assert_eq!(next_expiry(&rules, 100), Some(300));
        assert_eq!(next_expiry(&rules, 300), None);
    }

    #[test]
    fn a_rule_for_callers_fires_only_for_their_connections() {
        let mut scoped = rule(0, ABORT, TOTAL_WEIGHT, u64::MAX);
        scoped.callers = Some(Arc::from([41, 42]));
        let rules = [scoped.clone()];
        assert_eq!(callers_to_check(&rules, 0, 0), [41, 42]);
        assert!(callers_to_check(&rules, 1, 0).is_empty());
        let mut from_42 = |pids: &[u32]| pids.contains(&42);
        assert!(fault_for(&rules, 0, 0, 0, &mut from_42).is_some());
        let mut from_7 = |pids: &[u32]| pids.contains(&7);
        assert_eq!(fault_for(&rules, 0, 0, 0, &mut from_7), None);
        // Nobody: the callers have no process now.
        scoped.callers = Some(Arc::from([]));
        assert_eq!(fault_for(&[scoped], 0, 0, 0, &mut anyone), None);
    }

    #[test]
    fn a_black_hole_holds_while_the_same_rule_is_in_force() {
        let hole = rule(1, FaultKind::Blackhole, TOTAL_WEIGHT, 1_000);
        let rules = [rule(0, ABORT, 1, 100), hole.clone()];
        assert_eq!(
            fault_for(&rules, 1, 0, 0, &mut anyone),
            Some(FaultAction::Blackhole { rule: 1 })
        );
        let names = |i: usize| Some(["v1", "v2"][i].to_string());
        assert_eq!(holds(&hole, "v2", &rules, names, 10), Some(1_000));
        // Renewed in a new table where v2 moved to index 0: still held, to the new lease.
        let renewed = [rule(0, FaultKind::Blackhole, TOTAL_WEIGHT, 5_000)];
        let moved = |i: usize| Some(["v2"][i].to_string());
        assert_eq!(holds(&hole, "v2", &renewed, moved, 10), Some(5_000));
        // Expired, or removed: released.
        assert_eq!(holds(&hole, "v2", &rules, names, 1_000), None);
        assert_eq!(holds(&hole, "v2", &rules[..1], names, 10), None);
    }
}
