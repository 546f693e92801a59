//! Which instances a fault hits: Chaos Mesh's selector modes, and the blast-radius limit.
//!
//! Selection is random but reproducible: the caller passes the generator ([`Random`]), and the
//! engine keeps its [`SplitMix64`] in the run's state, so a dry run with the same seed shows
//! the same targets and a resumed run continues the same sequence.
//!
//! | mode                 | selects                                                      |
//! |----------------------|--------------------------------------------------------------|
//! | `one`                | one instance at random                                       |
//! | `all`                | every instance                                               |
//! | `fixed`              | `value` instances at random (all of them if fewer)           |
//! | `fixed-percent`      | ⌊n × value / 100⌋ at random; none is an error                |
//! | `random-max-percent` | ⌊n × p / 100⌋ for p drawn from 0 to `value`, at least one     |
//!
//! Chaos Mesh's `random-max-percent` may draw 0 % and then fails for want of a target; here it
//! hits at least one instance, because a scheduled run failing at random tests nothing.
//!
//! The blast radius is checked on everything under process faults at once (what is already
//! faulted plus the new selection): by default never every instance of the stable revision,
//! plus the experiment's own `maxInstances` and `maxPercent`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::spec::{BlastRadius, Fault, Selector, Target, TargetRevision};

/// A source of uniform random numbers.
pub trait Random {
    /// Uniform in `0..n`; `n` is at least 1.
    fn below(&mut self, n: u64) -> u64;
}

/// Sebastiano Vigna's SplitMix64: small, fast, and its whole state is one `u64` that
/// serializes with the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    pub state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Random for SplitMix64 {
    fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift; the bias for the small n used here is negligible.
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }
}

/// An instance of the target application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub id: String,
    /// The revision (workload hash) it runs.
    pub revision: String,
}

/// The target application as the controller sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fleet {
    /// The stable revision's name (workload hash), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// Every running instance of the application.
    #[serde(default)]
    pub instances: Vec<Instance>,
}

impl Fleet {
    /// The revisions `revision` names that exist now.
    pub fn revisions(&self, revision: TargetRevision) -> Vec<String> {
        let (stable, candidate) = (self.stable.clone(), self.candidate.clone());
        match revision {
            TargetRevision::Stable => stable.into_iter().collect(),
            TargetRevision::Candidate => candidate.into_iter().collect(),
            TargetRevision::All => stable.into_iter().chain(candidate).collect(),
        }
    }
}

/// What one injected fault acts on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Targets {
    pub application: String,
    /// Traffic faults: the revisions whose requests are affected. Process faults: the
    /// revisions of the chosen instances.
    pub revisions: Vec<String>,
    /// Process faults: the chosen instances (empty for traffic faults).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
}

/// The targets of `fault` now. `affected` holds the instances already under process faults of
/// this run; the blast radius is checked on them together with the new selection.
pub fn choose_targets(
    target: &Target,
    fault: &Fault,
    limit: &BlastRadius,
    fleet: &Fleet,
    affected: &BTreeSet<String>,
    rng: &mut impl Random,
) -> Result<Targets, SelectError> {
    let revisions = fleet.revisions(target.revision);
    if revisions.is_empty() {
        return Err(SelectError::NoRevision(target.revision));
    }
    if fault.is_traffic() {
        return Ok(Targets {
            application: target.application.clone(),
            revisions,
            instances: Vec::new(),
        });
    }
    let selector = target
        .selector()
        .map_err(|problem| SelectError::InvalidTarget(problem.to_string()))?;
    let candidates: Vec<String> = fleet
        .instances
        .iter()
        .filter(|i| revisions.contains(&i.revision))
        .map(|i| i.id.clone())
        .collect();
    let instances = select(selector, &candidates, rng)?;
    let mut all = affected.clone();
    all.extend(instances.iter().cloned());
    check_blast_radius(limit, &all, &fleet.instances, fleet.stable.as_deref())?;
    let mut hit: Vec<String> = fleet
        .instances
        .iter()
        .filter(|i| instances.contains(&i.id))
        .map(|i| i.revision.clone())
        .collect();
    hit.sort();
    hit.dedup();
    Ok(Targets {
        application: target.application.clone(),
        revisions: hit,
        instances,
    })
}

/// Why nothing, or too much, would be hit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SelectError {
    #[error("there is no {0} revision to target")]
    NoRevision(TargetRevision),
    #[error("spec.target: {0}")]
    InvalidTarget(String),
    #[error("no instance to choose from: the targeted revision has no running instance")]
    NoCandidates,
    #[error(
        "{percent}% of {count} instance(s) is less than one: raise the percentage or use \
         mode one"
    )]
    NoneSelected { percent: String, count: usize },
    #[error(
        "this would put all {0} instance(s) of the stable revision under faults at once; \
         set spec.blastRadius.allowAllStable to allow it"
    )]
    AllStable(usize),
    #[error(
        "this would put {got} instance(s) under faults at once; blastRadius.maxInstances is {max}"
    )]
    MaxInstances { got: usize, max: u32 },
    #[error(
        "this would put {got} of {total} instance(s) under faults at once, over \
         blastRadius.maxPercent {max}%"
    )]
    MaxPercent {
        got: usize,
        total: usize,
        max: String,
    },
}

/// The ids `selector` picks from `candidates`, in the candidates' order.
pub fn select(
    selector: Selector,
    candidates: &[String],
    rng: &mut impl Random,
) -> Result<Vec<String>, SelectError> {
    let n = candidates.len();
    if n == 0 {
        return Err(SelectError::NoCandidates);
    }
    // Percentages are in 0.1 steps: work in tenths so floors are exact.
    let tenths = |percent: f64| (percent * 10.0).round() as u64;
    let count = match selector {
        Selector::One => 1,
        Selector::All => n,
        Selector::Fixed(k) => (k as usize).min(n),
        Selector::FixedPercent(p) => {
            let k = (n as u64 * tenths(p) / 1_000) as usize;
            if k == 0 {
                return Err(SelectError::NoneSelected {
                    percent: p.to_string(),
                    count: n,
                });
            }
            k
        }
        Selector::RandomMaxPercent(max) => {
            let drawn = rng.below(tenths(max) + 1);
            ((n as u64 * drawn / 1_000) as usize).max(1)
        }
    };
    if count >= n {
        return Ok(candidates.to_vec());
    }
    // A partial Fisher-Yates shuffle of the indices picks `count` without repetition.
    let mut indices: Vec<usize> = (0..n).collect();
    for i in 0..count {
        let j = i + rng.below((n - i) as u64) as usize;
        indices.swap(i, j);
    }
    let mut chosen = indices[..count].to_vec();
    chosen.sort_unstable();
    Ok(chosen.into_iter().map(|i| candidates[i].clone()).collect())
}

/// Checks that `affected` (every instance under a process fault once the new one is in,
/// ids) stays inside `limit`. `instances` is every instance of the application.
pub fn check_blast_radius(
    limit: &BlastRadius,
    affected: &BTreeSet<String>,
    instances: &[Instance],
    stable: Option<&str>,
) -> Result<(), SelectError> {
    if let Some(stable) = stable {
        let stable_ids: Vec<&Instance> =
            instances.iter().filter(|i| i.revision == stable).collect();
        let all_hit = !stable_ids.is_empty() && stable_ids.iter().all(|i| affected.contains(&i.id));
        if all_hit && !limit.allow_all_stable {
            return Err(SelectError::AllStable(stable_ids.len()));
        }
    }
    if let Some(max) = limit.max_instances {
        if affected.len() > max as usize {
            return Err(SelectError::MaxInstances {
                got: affected.len(),
                max,
            });
        }
    }
    if let Some(max) = limit.max_percent {
        let total = instances.len();
        if total > 0 && affected.len() as f64 * 100.0 > max * total as f64 + 1e-9 {
            return Err(SelectError::MaxPercent {
                got: affected.len(),
                total,
                max: max.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("i{i}")).collect()
    }

    /// A generator that plays back fixed draws (each taken modulo `n`).
    struct Script(Vec<u64>);

    impl Random for Script {
        fn below(&mut self, n: u64) -> u64 {
            self.0.remove(0) % n
        }
    }

    #[test]
    fn one_and_all() {
        let mut rng = SplitMix64::new(7);
        let one = select(Selector::One, &ids(5), &mut rng).unwrap();
        assert_eq!(one.len(), 1);
        assert!(ids(5).contains(&one[0]));
        assert_eq!(select(Selector::All, &ids(3), &mut rng).unwrap(), ids(3));
        assert_eq!(
            select(Selector::One, &[], &mut rng),
            Err(SelectError::NoCandidates)
        );
    }

    #[test]
    fn fixed_picks_distinct_instances_and_caps_at_all() {
        let mut rng = SplitMix64::new(1);
        for _ in 0..100 {
            let two = select(Selector::Fixed(2), &ids(4), &mut rng).unwrap();
            assert_eq!(two.len(), 2);
            assert_ne!(two[0], two[1]);
        }
        assert_eq!(
            select(Selector::Fixed(9), &ids(3), &mut rng).unwrap(),
            ids(3)
        );
        // The script picks index 2 then, from the rest, index 1 + 2 = 3; shown in order.
        let mut script = Script(vec![2, 2]);
        assert_eq!(
            select(Selector::Fixed(2), &ids(5), &mut script).unwrap(),
            ["i2", "i3"]
        );
    }

    #[test]
    fn fixed_percent_floors_and_refuses_to_select_none() {
        let mut rng = SplitMix64::new(3);
        assert_eq!(
            select(Selector::FixedPercent(50.0), &ids(5), &mut rng)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            select(Selector::FixedPercent(33.4), &ids(3), &mut rng)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            select(Selector::FixedPercent(100.0), &ids(3), &mut rng).unwrap(),
            ids(3)
        );
        assert_eq!(
            select(Selector::FixedPercent(10.0), &ids(3), &mut rng),
            Err(SelectError::NoneSelected {
                percent: "10".into(),
                count: 3
            })
        );
    }

    #[test]
    fn random_max_percent_stays_within_its_maximum_and_hits_at_least_one() {
        let mut rng = SplitMix64::new(11);
        let mut sizes = BTreeSet::new();
        for _ in 0..500 {
            let n = select(Selector::RandomMaxPercent(50.0), &ids(10), &mut rng)
                .unwrap()
                .len();
            assert!((1..=5).contains(&n), "{n}");
            sizes.insert(n);
        }
        assert_eq!(sizes, (1..=5).collect());
        // A draw of 0 % still hits one.
        let mut zero = Script(vec![0, 0]);
        assert_eq!(
            select(Selector::RandomMaxPercent(50.0), &ids(10), &mut zero)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn the_same_seed_selects_the_same_instances() {
        let pick = |seed| select(Selector::Fixed(3), &ids(10), &mut SplitMix64::new(seed)).unwrap();
        assert_eq!(pick(42), pick(42));
        assert!((0..20).map(pick).collect::<BTreeSet<_>>().len() > 1);
    }

    fn fleet() -> Vec<Instance> {
        [("s1", "v1"), ("s2", "v1"), ("c1", "v2")]
            .iter()
            .map(|(id, revision)| Instance {
                id: (*id).into(),
                revision: (*revision).into(),
            })
            .collect()
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_blast_radius_never_takes_all_of_stable_by_default() {
        let open = BlastRadius::default();
        assert_eq!(
            check_blast_radius(&open, &set(&["s1", "c1"]), &fleet(), Some("v1")),
            Ok(())
        );
        assert_eq!(
            check_blast_radius(&open, &set(&["s1", "s2"]), &fleet(), Some("v1")),
            Err(SelectError::AllStable(2))
        );
        let allowed = BlastRadius {
            allow_all_stable: true,
            ..BlastRadius::default()
        };
        assert_eq!(
            check_blast_radius(&allowed, &set(&["s1", "s2"]), &fleet(), Some("v1")),
            Ok(())
        );
        // Without stable instances there is nothing to protect.
        assert_eq!(
            check_blast_radius(&open, &set(&["c1"]), &fleet(), Some("v9")),
            Ok(())
        );
    }

    #[test]
    fn max_instances_and_max_percent_limit_what_is_faulted_at_once() {
        let two = BlastRadius {
            max_instances: Some(1),
            ..BlastRadius::default()
        };
        assert_eq!(
            check_blast_radius(&two, &set(&["s1", "c1"]), &fleet(), Some("v1")),
            Err(SelectError::MaxInstances { got: 2, max: 1 })
        );
        let third = BlastRadius {
            max_percent: Some(33.4),
            ..BlastRadius::default()
        };
        assert_eq!(
            check_blast_radius(&third, &set(&["c1"]), &fleet(), Some("v1")),
            Ok(())
        );
        assert!(matches!(
            check_blast_radius(&third, &set(&["s1", "c1"]), &fleet(), Some("v1")),
            Err(SelectError::MaxPercent {
                got: 2,
                total: 3,
                ..
            })
        ));
    }
}
