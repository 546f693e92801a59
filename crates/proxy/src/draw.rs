//! Turning one random `u64` into routing decisions, and the stable hash used for stickiness.
//!
//! Every random decision in the proxy takes a `draw: u64` from the caller (the data path's
//! fast thread-local generator, a test's fixed sequence), so the decisions are pure functions.
//! A decision that needs more than one independent value derives the others with [`mix`].

/// Maps `draw` uniformly onto `0..n` by multiply-and-shift (Lemire): it uses the draw's high
/// bits, needs no division, and its bias is at most `n / 2^64`.
pub fn below(draw: u64, n: u32) -> u32 {
    ((u128::from(draw) * u128::from(n)) >> 64) as u32
}

/// SplitMix64's finalizer: a bijection that turns a draw (or a hash) into an independent-looking
/// one, so one caller draw can serve several decisions.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a, 64 bits: stable across processes, platforms and releases, so a sticky header value
/// lands on the same spot of the weight space after a proxy restart.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash = 0xCBF2_9CE4_8422_2325u64;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_covers_the_whole_range_and_never_reaches_n() {
        assert_eq!(below(0, 10_000), 0);
        assert_eq!(below(u64::MAX, 10_000), 9_999);
        assert_eq!(below(u64::MAX / 2 + 1, 10_000), 5_000);
        assert_eq!(below(u64::MAX, 0), 0);
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xAF63_DC4C_8601_EC8C);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_F739_67E8);
    }

    #[test]
    fn mix_separates_neighbouring_inputs() {
        assert_ne!(below(mix(1), 10_000), below(mix(2), 10_000));
        assert_eq!(mix(42), mix(42));
    }
}
