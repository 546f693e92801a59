//! Prints the sequential guard's expected and simulated detection cost for a few baselines and
//! bad rates: `cargo run -p gauntlet-rollout --release --example asn_table`.

use gauntlet_rollout::guard::{
    fixed_sample_size, simulate_canary, wald_asn, Boundaries, SplitMix64, Verdict,
};

fn main() {
    let (alpha, beta) = (0.01, 0.01);
    let bounds = Boundaries::wald(alpha, beta);
    let runs = 10_000u64;
    println!("α = β = {alpha}; {runs} simulated canaries per row, one request per update");
    println!(
        "{:>6} {:>6} | {:>8} {:>9} {:>6} | {:>8} {:>9} {:>6} | {:>7} {:>9} | {:>6}",
        "p0",
        "p1",
        "Wald n",
        "observed",
        "ratio",
        "Wald f",
        "observed",
        "ratio",
        "power",
        "false rej",
        "fixed n"
    );
    let mut rng = SplitMix64::new(42);
    for (p0, p1) in [
        (0.001, 1.0 - 1e-9),
        (0.001, 0.05),
        (0.001, 0.02),
        (0.01, 0.05),
        (0.01, 0.02),
    ] {
        let asn = wald_asn(p0, p1, alpha, beta).under_h1;
        let (mut caught, mut n, mut f) = (0u64, 0u64, 0u64);
        let mut false_rejections = 0u64;
        for _ in 0..runs {
            let bad = simulate_canary(&mut rng, p1, p0, p1, bounds, 1, 1_000_000);
            if bad.verdict == Verdict::Reject {
                caught += 1;
                n += bad.requests;
                f += bad.failures;
            }
            let good = simulate_canary(&mut rng, p0, p0, p1, bounds, 1, 1_000_000);
            false_rejections += u64::from(good.verdict == Verdict::Reject);
        }
        let obs_n = n as f64 / caught as f64;
        let obs_f = f as f64 / caught as f64;
        println!(
            "{:>6} {:>6.3} | {:>8.1} {:>9.1} {:>6.2} | {:>8.2} {:>9.2} {:>6.2} | {:>7.4} {:>9.4} | {:>6.0}",
            p0,
            p1,
            asn,
            obs_n,
            obs_n / asn,
            asn * p1,
            obs_f,
            obs_f / (asn * p1),
            caught as f64 / runs as f64,
            false_rejections as f64 / runs as f64,
            fixed_sample_size(p0, p1, alpha, beta),
        );
    }
}
