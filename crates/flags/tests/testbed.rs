//! flagd's compliance suite: every scenario of `flagd-testbed/evaluator/gherkin` (flagd-testbed
//! 3.9.0, in `../shared` beside the workspace) against this evaluator, except the ones tagged
//! `@fractional-v1` (flagd's legacy bucketing, replaced by v2).
//!
//! The flags are `evaluator/flags/testkit-flags.json`, loaded with [`Validation::Lenient`]: the
//! suite checks flagd's behaviour for rules a strict load refuses (a `$ref` to a missing
//! evaluator must answer `PARSE_ERROR`, a `sem_ver` with a bad operator must yield null).
//!
//! The files are read as they are, with one adjustment: the Rust `gherkin` parser knows only the
//! `\n`, `\|` and `\\` escapes in table cells, and two files write JSON objects in cells with
//! `\"`, which the reference Gherkin parsers keep as written and the suites' own harnesses
//! unescape. Table rows get `\"` turned into `"` before parsing (see [`TestbedParser`]).
//!
//! A custom harness (`harness = false`) that speaks just enough of libtest's protocol for
//! `cargo test` and `cargo nextest`: `--list --format terse` lists one test, `flagd_testbed`,
//! and running it runs the whole suite, failing if any step fails or matches no step.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use cucumber::feature::Ext as _;
use cucumber::{cli, gherkin, parser, step, Cucumber, StatsWriter as _, World};
use futures::future::LocalBoxFuture;
use gauntlet_flags::{Context, ErrorCode, FlagSet, Flags, Reason, Resolution, Validation};
use regex::Regex;
use serde_json::{Map, Value};

const TEST_NAME: &str = "flagd_testbed";
const SKIPPED_TAG: &str = "fractional-v1";

fn testbed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/flagd-testbed/evaluator")
}

fn flags() -> &'static Flags {
    static FLAGS: OnceLock<Flags> = OnceLock::new();
    FLAGS.get_or_init(|| {
        let path = testbed().join("flags/testkit-flags.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let set = FlagSet::from_json_with(&text, Validation::Lenient)
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        Flags::from_sets([("testkit-flags.json", set)]).unwrap_or_else(|e| panic!("{e}"))
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FlagType {
    Boolean,
    String,
    Integer,
    Float,
    Object,
}

impl FlagType {
    fn parse(s: &str) -> FlagType {
        match s {
            "Boolean" => FlagType::Boolean,
            "String" => FlagType::String,
            "Integer" => FlagType::Integer,
            "Float" => FlagType::Float,
            "Object" => FlagType::Object,
            other => panic!("unknown flag type {other}"),
        }
    }

    /// The JSON value a table cell stands for, for this type.
    fn value(self, cell: &str) -> Value {
        match self {
            FlagType::Boolean => Value::Bool(parse(cell, self)),
            FlagType::String => Value::String(cell.to_owned()),
            FlagType::Integer => Value::from(parse::<i64>(cell, self)),
            FlagType::Float => Value::from(parse::<f64>(cell, self)),
            FlagType::Object => parse(cell, self),
        }
    }
}

fn parse<T: std::str::FromStr>(cell: &str, ty: FlagType) -> T {
    match cell.parse() {
        Ok(v) => v,
        Err(_) => panic!("{cell:?} is not a {ty:?}"),
    }
}

#[derive(Debug)]
struct Requested {
    ty: FlagType,
    key: String,
    fallback: Value,
}

#[derive(Debug)]
struct Outcome {
    value: Value,
    reason: Reason,
    error: Option<ErrorCode>,
    metadata: Map<String, Value>,
}

impl Outcome {
    fn from<T>(r: Resolution<'_, T>, to_json: impl FnOnce(T) -> Value) -> Outcome {
        Outcome {
            value: to_json(r.value),
            reason: r.reason,
            error: r.error.map(|e| e.code),
            metadata: r.metadata.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Testbed {
    flag: Option<Requested>,
    context: Context,
    outcome: Option<Outcome>,
}

impl World for Testbed {
    type Error = Infallible;

    async fn new() -> Result<Self, Infallible> {
        Ok(Testbed::default())
    }
}

impl Testbed {
    fn outcome(&self) -> &Outcome {
        self.outcome
            .as_ref()
            .expect("a 'the flag was evaluated' step comes first")
    }
}

fn capture(ctx: &step::Context, i: usize) -> &str {
    &ctx.matches[i].1
}

fn an_evaluator(_: &mut Testbed, _: &step::Context) {
    flags();
}

fn a_flag(w: &mut Testbed, ctx: &step::Context) {
    let ty = FlagType::parse(capture(ctx, 1));
    w.flag = Some(Requested {
        ty,
        key: capture(ctx, 2).to_owned(),
        fallback: ty.value(capture(ctx, 3)),
    });
}

fn a_context_key(w: &mut Testbed, ctx: &step::Context) {
    let value = FlagType::parse(capture(ctx, 2)).value(capture(ctx, 3));
    w.context.insert(capture(ctx, 1), value);
}

fn a_nested_context_key(w: &mut Testbed, ctx: &step::Context) {
    let mut inner = Map::new();
    inner.insert(capture(ctx, 2).to_owned(), Value::from(capture(ctx, 3)));
    w.context.insert(capture(ctx, 1), inner);
}

fn a_targeting_key(w: &mut Testbed, ctx: &step::Context) {
    w.context.insert("targetingKey", capture(ctx, 1));
}

fn evaluated(w: &mut Testbed, _: &step::Context) {
    let req = w.flag.as_ref().expect("a flag step comes first");
    let (flags, key, ctx) = (flags(), req.key.as_str(), &w.context);
    let outcome = match (&req.ty, &req.fallback) {
        (FlagType::Boolean, Value::Bool(d)) => {
            Outcome::from(flags.resolve_boolean(key, ctx, *d), Value::Bool)
        }
        (FlagType::String, Value::String(d)) => {
            Outcome::from(flags.resolve_string(key, ctx, d), Value::from)
        }
        (FlagType::Integer, d) => Outcome::from(
            flags.resolve_integer(key, ctx, d.as_i64().unwrap_or_default()),
            Value::from,
        ),
        (FlagType::Float, d) => Outcome::from(
            flags.resolve_float(key, ctx, d.as_f64().unwrap_or_default()),
            Value::from,
        ),
        (FlagType::Object, Value::Object(d)) => Outcome::from(
            flags.resolve_object(key, ctx, d),
            |m: &Map<String, Value>| Value::Object(m.clone()),
        ),
        (ty, d) => panic!("fallback {d} does not fit a {ty:?} flag"),
    };
    w.outcome = Some(outcome);
}

fn value_is(w: &mut Testbed, ctx: &step::Context) {
    let ty = w.flag.as_ref().expect("a flag step comes first").ty;
    let expected = ty.value(capture(ctx, 1));
    let got = &w.outcome().value;
    let same = match ty {
        FlagType::Float => got.as_f64() == expected.as_f64(),
        _ => *got == expected,
    };
    assert!(
        same,
        "value: expected {expected}, got {got} ({:?})",
        w.outcome()
    );
}

fn reason_is(w: &mut Testbed, ctx: &step::Context) {
    let o = w.outcome();
    assert_eq!(o.reason.as_str(), capture(ctx, 1), "reason ({o:?})");
}

fn error_code_is(w: &mut Testbed, ctx: &step::Context) {
    let o = w.outcome();
    let code = o.error.map_or("", ErrorCode::as_str);
    assert_eq!(code, capture(ctx, 1), "error code ({o:?})");
}

fn metadata_contains(w: &mut Testbed, ctx: &step::Context) {
    let table = ctx.step.table.as_ref().expect("a metadata table");
    let metadata = &w.outcome().metadata;
    for row in table.rows.iter().skip(1) {
        let [key, ty, value] = row.as_slice() else {
            panic!("metadata rows are | key | metadata_type | value |, not {row:?}");
        };
        let expected = FlagType::parse(ty).value(value);
        let got = metadata.get(key);
        let same = match got {
            Some(v) if ty == "Float" => v.as_f64() == expected.as_f64(),
            Some(v) => *v == expected,
            None => false,
        };
        assert!(same, "metadata {key}: expected {expected}, got {got:?}");
    }
}

fn metadata_is_empty(w: &mut Testbed, _: &step::Context) {
    let metadata = &w.outcome().metadata;
    assert!(
        metadata.is_empty(),
        "metadata: expected none, got {metadata:?}"
    );
}

/// Adapts a plain step function to cucumber's async step signature.
macro_rules! step_fn {
    ($f:ident) => {{
        fn run(w: &mut Testbed, ctx: step::Context) -> LocalBoxFuture<'_, ()> {
            Box::pin(async move { $f(w, &ctx) })
        }
        run as step::Step<Testbed>
    }};
}

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| panic!("step pattern {pattern}: {e}"))
}

/// Reads every `.feature` file of a directory, in name order, unescaping `\"` in table rows.
struct TestbedParser;

impl<I: AsRef<Path>> cucumber::Parser<I> for TestbedParser {
    type Cli = cli::Empty;
    type Output = futures::stream::Iter<std::vec::IntoIter<parser::Result<gherkin::Feature>>>;

    fn parse(self, input: I, _: cli::Empty) -> Self::Output {
        let dir = input.as_ref();
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "feature"))
            .collect();
        paths.sort();
        futures::stream::iter(paths.iter().map(|p| parse_feature(p)).collect::<Vec<_>>())
    }
}

fn parse_feature(path: &Path) -> parser::Result<gherkin::Feature> {
    let text =
        std::fs::read_to_string(path).map_err(|source| gherkin::ParseFileError::Reading {
            path: path.to_owned(),
            source,
        })?;
    let text = unescape_quotes_in_tables(&text);
    let mut feature =
        gherkin::Feature::parse(&text, gherkin::GherkinEnv::default()).map_err(|source| {
            gherkin::ParseFileError::Parsing {
                path: path.to_owned(),
                error: None,
                source,
            }
        })?;
    feature.path = Some(path.to_owned());
    Ok(feature.expand_examples()?)
}

fn unescape_quotes_in_tables(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.trim_start().starts_with('|') {
            out.push_str(&line.replace("\\\"", "\""));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn run_suite() -> bool {
    static FILTERED_OUT: AtomicUsize = AtomicUsize::new(0);
    let features = testbed().join("gherkin");
    let cucumber = Cucumber::<Testbed, _, PathBuf, _, _, _>::new()
        .with_parser(TestbedParser)
        .given(re(r"^an evaluator$"), step_fn!(an_evaluator))
        .given(
            re(r#"^an? (Boolean|String|Integer|Float|Object)-flag with key "([^"]*)" and a fallback value "(.*)"$"#),
            step_fn!(a_flag),
        )
        .given(
            re(r#"^a context containing a key "([^"]*)", with type "([^"]*)" and with value "(.*)"$"#),
            step_fn!(a_context_key),
        )
        .given(
            re(r#"^a context containing a nested property with outer key "([^"]*)" and inner key "([^"]*)", with value "(.*)"$"#),
            step_fn!(a_nested_context_key),
        )
        .given(
            re(r#"^a context containing a targeting key with value "(.*)"$"#),
            step_fn!(a_targeting_key),
        )
        .when(re(r"^the flag was evaluated with details$"), step_fn!(evaluated))
        .then(re(r#"^the resolved details value should be "(.*)"$"#), step_fn!(value_is))
        .then(re(r#"^the reason should be "([^"]*)"$"#), step_fn!(reason_is))
        .then(re(r#"^the error-code should be "([^"]*)"$"#), step_fn!(error_code_is))
        .then(re(r"^the resolved metadata should contain$"), step_fn!(metadata_contains))
        .then(re(r"^the resolved metadata is empty$"), step_fn!(metadata_is_empty))
        .fail_on_skipped()
        .with_default_cli();
    let writer = futures::executor::block_on(cucumber.filter_run(
        features,
        |feature: &gherkin::Feature, rule: Option<&gherkin::Rule>, scenario: &gherkin::Scenario| {
            let tagged = feature
                .tags
                .iter()
                .chain(rule.into_iter().flat_map(|r| r.tags.iter()))
                .chain(scenario.tags.iter())
                .any(|t| t == SKIPPED_TAG);
            if tagged {
                FILTERED_OUT.fetch_add(1, Ordering::Relaxed);
            }
            !tagged
        },
    ));
    let scenarios = writer.scenarios_stats();
    println!(
        "flagd-testbed: {} scenarios passed, {} failed, {} skipped by cucumber; {} left out as @{SKIPPED_TAG}",
        scenarios.passed,
        scenarios.failed,
        scenarios.skipped,
        FILTERED_OUT.load(Ordering::Relaxed),
    );
    !writer.execution_has_failed() && scenarios.passed > 0
}

/// Whether libtest-style arguments select this binary's one test.
fn selected(args: &[String]) -> bool {
    const TAKES_VALUE: [&str; 5] = [
        "--test-threads",
        "--format",
        "--color",
        "--skip",
        "--logfile",
    ];
    let exact = args.iter().any(|a| a == "--exact");
    let mut filters = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if TAKES_VALUE.contains(&arg.as_str()) {
            iter.next();
        } else if !arg.starts_with('-') {
            filters.push(arg.as_str());
        }
    }
    let only_ignored = args.iter().any(|a| a == "--ignored");
    !only_ignored
        && (filters.is_empty()
            || filters.iter().any(|f| {
                if exact {
                    *f == TEST_NAME
                } else {
                    TEST_NAME.contains(f)
                }
            }))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("{TEST_NAME}: test");
        }
        return;
    }
    if !selected(&args) {
        println!("0 passed, 0 failed");
        return;
    }
    if !run_suite() {
        std::process::exit(101);
    }
}
