//! Property: `fractional` splits traffic in proportion to its weights. For several weight
//! vectors, 100,000 random targeting keys (from fixed seeds, so the test is deterministic) are
//! bucketed, and every variant's share must lie within 4 standard deviations of
//! `n * weight / total` (binomial: sigma = sqrt(n p (1 - p))).

use gauntlet_flags::{Context, FlagSet, Flags};
use serde_json::{json, Value};

const KEYS: usize = 100_000;

/// SplitMix64: a small, well-mixed generator, enough for random identifiers.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A user id like the ones applications send: 12 characters of [a-z0-9].
    fn key(&mut self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..12)
            .map(|_| ALPHABET[(self.next() % ALPHABET.len() as u64) as usize] as char)
            .collect()
    }
}

fn flag_with(weights: &[u64], bucket_on_email: bool) -> Flags {
    let names: Vec<String> = (0..weights.len()).map(|i| format!("v{i}")).collect();
    let variants: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| (n.clone(), Value::from(n.as_str())))
        .collect();
    let mut buckets: Vec<Value> = names
        .iter()
        .zip(weights)
        .map(|(n, w)| json!([n, w]))
        .collect();
    if bucket_on_email {
        buckets.insert(0, json!({"var": "email"}));
    }
    let set = json!({"flags": {"split": {
        "state": "ENABLED", "variants": variants, "defaultVariant": "v0",
        "targeting": {"fractional": buckets}
    }}});
    let set = FlagSet::from_value(set).unwrap_or_else(|e| panic!("{e}"));
    Flags::from_sets([("split", set)]).unwrap_or_else(|e| panic!("{e}"))
}

/// Counts how many of `KEYS` random subjects land in each variant.
fn counts(weights: &[u64], bucket_on_email: bool, seed: u64) -> Vec<usize> {
    let flags = flag_with(weights, bucket_on_email);
    let mut rng = SplitMix64(seed);
    let mut counts = vec![0; weights.len()];
    for _ in 0..KEYS {
        let key = rng.key();
        let ctx = if bucket_on_email {
            Context::new().with("email", format!("{key}@example.com"))
        } else {
            Context::new().with_targeting_key(key)
        };
        let variant = flags.evaluate("split", &ctx).variant.unwrap_or("none");
        let index: usize = variant
            .strip_prefix('v')
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("no variant for {ctx:?}"));
        counts[index] += 1;
    }
    counts
}

fn assert_within_4_sigma(weights: &[u64], bucket_on_email: bool, seed: u64) {
    let counts = counts(weights, bucket_on_email, seed);
    let total: u64 = weights.iter().sum();
    let n = KEYS as f64;
    for (i, (&w, &count)) in weights.iter().zip(&counts).enumerate() {
        let p = w as f64 / total as f64;
        let expected = n * p;
        let sigma = (n * p * (1.0 - p)).sqrt();
        let off = (count as f64 - expected).abs();
        assert!(
            off <= 4.0 * sigma,
            "weights {weights:?}: v{i} got {count}, expected {expected:.0} ± {:.0} (4σ)",
            4.0 * sigma
        );
    }
}

#[test]
fn ten_ninety_split_matches_its_weights() {
    assert_within_4_sigma(&[10, 90], false, 1);
}

#[test]
fn five_ninety_five_split_matches_its_weights() {
    assert_within_4_sigma(&[5, 95], false, 2);
}

#[test]
fn three_way_split_matches_its_weights() {
    assert_within_4_sigma(&[1, 1, 1], false, 3);
    assert_within_4_sigma(&[20, 30, 50], false, 4);
}

#[test]
fn fine_grained_weights_match_too() {
    assert_within_4_sigma(&[1, 999], false, 5);
    assert_within_4_sigma(&[2500, 2500, 2500, 2500], false, 6);
}

#[test]
fn split_on_a_bucketing_value_matches_its_weights() {
    assert_within_4_sigma(&[10, 90], true, 7);
}

#[test]
fn a_zero_weight_bucket_gets_nobody() {
    let counts = counts(&[0, 1], false, 8);
    assert_eq!(counts, [0, KEYS]);
}
