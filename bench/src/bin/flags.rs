//! In-process flag evaluation: nanoseconds per evaluation for a static flag, a targeting rule
//! and a fractional split, next to flagd's published figures (about 1,400, 7,000 and 10,400 ns
//! per evaluation, Go, in process).
//!
//! The flags are compiled once, as the controller does when a commit loads. Each measured round
//! evaluates one flag by key through [`Flags::evaluate`] (what OFREP serves) for `N` contexts
//! taken in turn from 1,024 prepared ones (different targeting keys and emails, five
//! attributes each, a mix of rule matches and misses); the figure is the median of 7 rounds.
//! One more row adds building the context from its JSON text on every evaluation, which a
//! server pays once per request.
//!
//! `cargo run --release -p gauntlet-bench --bin flags [-- N [CONTEXTS]]` (defaults 2,000,000
//! and 1,024)

use std::hint::black_box;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use gauntlet_flags::{Context, FlagSet, Flags, Reason};
use serde_json::{json, Value};

const ROUNDS: usize = 7;
const CONTEXTS: usize = 1024;

const FLAG_SET: &str = r#"{
  "flags": {
    "static-flag": {
      "state": "ENABLED",
      "variants": {"on": true, "off": false},
      "defaultVariant": "on"
    },
    "targeting-flag": {
      "state": "ENABLED",
      "variants": {"on": true, "off": false},
      "defaultVariant": "off",
      "targeting": {
        "if": [
          {"or": [
            {"in": [{"var": "email"}, ["ada@example.com", "grace@example.com", "linus@example.com"]]},
            {"ends_with": [{"var": "email"}, "@staff.example.com"]}
          ]},
          "on",
          "off"
        ]
      }
    },
    "fractional-flag": {
      "state": "ENABLED",
      "variants": {"on": true, "off": false},
      "defaultVariant": "off",
      "targeting": {"fractional": [["on", 10], ["off", 90]]}
    }
  }
}"#;

struct Case {
    name: &'static str,
    flag: &'static str,
    flagd_ns: f64,
}

const CASES: [Case; 3] = [
    Case {
        name: "static flag",
        flag: "static-flag",
        flagd_ns: 1_400.0,
    },
    Case {
        name: "targeting rule (if/or/in/ends_with on email)",
        flag: "targeting-flag",
        flagd_ns: 7_000.0,
    },
    Case {
        name: "fractional split 10/90",
        flag: "fractional-flag",
        flagd_ns: 10_400.0,
    },
];

const COUNTRIES: [&str; 4] = ["DE", "FR", "US", "JP"];

/// The prepared contexts as JSON: a quarter match the targeting rule.
fn context_json(i: usize) -> Value {
    let email = match i % 8 {
        0 => "ada@example.com".to_owned(),
        1 => format!("user{i}@staff.example.com"),
        _ => format!("user{i}@customer.example.org"),
    };
    json!({
        "targetingKey": format!("user-{i:08x}-{:04x}", i * 7919 % 65_536),
        "email": email,
        "country": COUNTRIES[i % COUNTRIES.len()],
        "plan": if i.is_multiple_of(3) { "pro" } else { "free" },
        "age": 18 + i % 60,
    })
}

/// Nanoseconds per evaluation of `flag` over `n` evaluations.
fn round(flags: &Flags, flag: &str, contexts: &[Context], n: usize) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        let ctx = &contexts[i % contexts.len()];
        black_box(flags.evaluate(black_box(flag), ctx).variant);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// The same, building each context from its JSON text first.
fn round_with_parse(flags: &Flags, flag: &str, texts: &[String], n: usize) -> Result<f64> {
    let start = Instant::now();
    for i in 0..n {
        let value: Value = serde_json::from_str(&texts[i % texts.len()])?;
        let ctx = Context::from_value(value)?;
        black_box(flags.evaluate(black_box(flag), &ctx).variant);
    }
    Ok(start.elapsed().as_nanos() as f64 / n as f64)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Checks that every prepared context evaluates without error, and returns the share that
/// got `on`, so the figures are known to measure real resolutions.
fn check(flags: &Flags, flag: &str, contexts: &[Context]) -> Result<f64> {
    let mut on = 0;
    for ctx in contexts {
        let e = flags.evaluate(flag, ctx);
        if let Some(err) = e.error {
            bail!("{flag}: {err}");
        }
        if !matches!(e.reason, Reason::Static | Reason::TargetingMatch) {
            bail!("{flag}: unexpected reason {}", e.reason);
        }
        if e.variant == Some("on") {
            on += 1;
        }
    }
    Ok(on as f64 / contexts.len() as f64)
}

fn main() -> Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().context("N must be a number of evaluations")?,
        None => 2_000_000,
    };
    let set = FlagSet::from_json(FLAG_SET)?;
    let flags = Flags::from_sets([("bench", set)])?;
    let pool: usize = match std::env::args().nth(2) {
        Some(arg) => arg.parse().context("CONTEXTS must be a number")?,
        None => CONTEXTS,
    };
    let texts: Vec<String> = (0..pool).map(|i| context_json(i).to_string()).collect();
    let contexts = (0..pool)
        .map(|i| Context::from_value(context_json(i)))
        .collect::<Result<Vec<_>, _>>()?;

    println!(
        "in-process evaluation, {n} evaluations per round over {pool} contexts, median of {ROUNDS} rounds"
    );
    println!();
    println!(
        "{:<46} {:>10} {:>10} {:>12} {:>9}",
        "case", "gauntlet", "best", "flagd (pub.)", "ratio"
    );
    let mut rows = Vec::new();
    for case in &CASES {
        let on = check(&flags, case.flag, &contexts)?;
        round(&flags, case.flag, &contexts, n / 10);
        let rounds: Vec<f64> = (0..ROUNDS)
            .map(|_| round(&flags, case.flag, &contexts, n))
            .collect();
        let best = rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let ns = median(rounds);
        println!(
            "{:<46} {:>7.1} ns {:>7.1} ns {:>9.0} ns {:>8.0}×",
            case.name,
            ns,
            best,
            case.flagd_ns,
            case.flagd_ns / ns
        );
        rows.push((case.name, on));
    }
    let fractional = &CASES[2];
    let parse_rounds = (0..ROUNDS)
        .map(|_| round_with_parse(&flags, fractional.flag, &texts, n / 10))
        .collect::<Result<Vec<_>>>()?;
    let best = parse_rounds.iter().copied().fold(f64::INFINITY, f64::min);
    let ns = median(parse_rounds);
    println!(
        "{:<46} {:>7.1} ns {:>7.1} ns {:>9.0} ns {:>8.0}×",
        "fractional, context parsed from JSON each time",
        ns,
        best,
        fractional.flagd_ns,
        fractional.flagd_ns / ns
    );
    println!();
    for (name, on) in rows {
        println!("  {name}: {:.1} % of the contexts get \"on\"", on * 100.0);
    }
    println!(
        "\nratio = flagd's published ns per evaluation / Gauntlet's median here; target: at least 10×"
    );
    Ok(())
}
