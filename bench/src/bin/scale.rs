//! Control-plane scale: a synthetic repository of N applications (default 10,000), loaded,
//! validated and planned from cold, then one application changed and re-planned.
//!
//! The runtime is the recording one (nothing is spawned), so this measures the control plane
//! alone: Git fetch into a fresh cache, parsing and validating every document, planning, and
//! applying the plan's actions to the runtime. Anchor: Flux's published figure of 1,000
//! applications reconciled in 4 min 16 s at 175 MiB.
//!
//! `cargo run --release -p gauntlet-bench --bin scale [-- N]`

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gauntlet_bench::{git, ms, peak_rss};
use gauntlet_reconcile::{plan, Action};
use gauntlet_runtime::recording::RecordingRuntime;
use gauntlet_runtime::Runtime;
use gauntlet_source::{GitSource, SourceConfig};

const FLUX_APPS: f64 = 1000.0;
const FLUX_SECONDS: f64 = 256.0;
const FLUX_MIB: f64 = 175.0;

fn app(i: usize, version: &str) -> String {
    format!(
        "apiVersion: gauntlet.dev/v1alpha1\nkind: Application\nmetadata:\n  name: app-{i:05}\n  labels: {{team: t{}}}\nspec:\n  replicas: {}\n  process:\n    command: [\"/usr/bin/app\"]\n    args: [\"--listen\", \"127.0.0.1:${{PORT}}\", \"--version\", \"{version}\"]\n    env: {{LOG_LEVEL: info}}\n  readiness:\n    httpGet: {{path: /healthz}}\n",
        i % 50,
        1 + i % 3
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("N must be a number")?
        .unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("apps"))?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    for i in 0..n {
        std::fs::write(repo.join(format!("apps/app-{i:05}.yaml")), app(i, "v1"))?;
    }
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "many apps"])?;
    println!("synthetic repository: {n} applications, one file each");

    let source = GitSource::new(SourceConfig {
        repo: repo.display().to_string(),
        reference: "main".into(),
        path: String::new(),
        auth: None,
        cache_dir: dir.path().join("cache"),
    });
    let runtime = RecordingRuntime::new();
    let rss_before = peak_rss();

    // Cold: fetch, parse + validate, plan, apply.
    let t = Instant::now();
    let head = source.remote_head().await?;
    let snapshot = source.fetch(&head).await?;
    let fetched = t.elapsed();
    let t1 = Instant::now();
    let mut parser = gauntlet_spec::Parser::default();
    let desired = parser
        .parse(&snapshot.files)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let parsed = t1.elapsed();
    let t2 = Instant::now();
    let first = plan(&desired, &runtime.instances());
    let planned = t2.elapsed();
    let t3 = Instant::now();
    for a in &first.actions {
        if let Action::Start { spec, .. } = a {
            runtime.start((**spec).clone()).await?;
        }
    }
    let applied = t3.elapsed();
    let settled = plan(&desired, &runtime.instances());
    let cold = t.elapsed();
    assert!(settled.actions.is_empty(), "the second plan is empty");
    let peak = peak_rss();

    // One application changes.
    std::fs::write(repo.join("apps/app-00042.yaml"), app(42, "v2"))?;
    git(&repo, &["commit", "-q", "-am", "app-00042 v2"])?;
    let t = Instant::now();
    let head = source.remote_head().await?;
    let snapshot = source.fetch(&head).await?;
    let refetched = t.elapsed();
    let t1 = Instant::now();
    let desired2 = parser
        .parse(&snapshot.files)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let reparsed = t1.elapsed();
    let t2 = Instant::now();
    let second = plan(&desired2, &runtime.instances());
    let replanned = t2.elapsed();
    let one_app = t.elapsed();
    let changed: std::collections::BTreeSet<&str> =
        second.actions.iter().map(|a| a.app()).collect();
    assert_eq!(changed.into_iter().collect::<Vec<_>>(), vec!["app-00042"]);

    // Steady state: nothing changed, the reconcile loop's plan.
    let t = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        std::hint::black_box(plan(&desired2, &runtime.instances()));
    }
    let steady = t.elapsed() / rounds;

    println!();
    println!("cold load of {n} applications: {} total", ms(cold));
    println!("  git fetch + read tree   {}", ms(fetched));
    println!("  parse + validate        {}", ms(parsed));
    println!(
        "  plan                    {}  ({} start actions)",
        ms(planned),
        first.actions.len()
    );
    println!("  apply to the runtime    {}", ms(applied));
    println!(
        "  peak memory             {:.1} MiB (process), {:.1} MiB above the pre-load baseline",
        peak as f64 / 1048576.0,
        peak.saturating_sub(rss_before) as f64 / 1048576.0
    );
    println!("one-app commit re-planned: {} total", ms(one_app));
    println!("  ls-remote + fetch       {}", ms(refetched));
    println!("  parse + validate        {}", ms(reparsed));
    println!("  plan                    {}", ms(replanned));
    println!("steady-state plan (no change): {}", ms(steady));

    let flux_per_app = FLUX_SECONDS / FLUX_APPS;
    let ours_per_app = cold.as_secs_f64() / n as f64;
    println!();
    println!(
        "anchor Flux (published): {FLUX_APPS} apps in {FLUX_SECONDS} s, {FLUX_MIB} MiB -> {:.1} ms per app",
        flux_per_app * 1000.0
    );
    println!(
        "gauntlet: {n} apps in {:.3} s, {:.1} MiB -> {:.3} ms per app; {:.0}x faster per app",
        cold.as_secs_f64(),
        peak as f64 / 1048576.0,
        ours_per_app * 1000.0,
        flux_per_app / ours_per_app
    );
    println!(
        "targets: 10,000 apps < 2 s ({}), < 300 MB ({}), one-app change < 50 ms ({})",
        verdict(n == 10_000 && cold < Duration::from_secs(2)),
        verdict(peak < 300_000_000),
        verdict(one_app < Duration::from_millis(50))
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}
