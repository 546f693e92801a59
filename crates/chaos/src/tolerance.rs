//! Tolerances: whether one probe's output is inside the steady state, and why (not).
//!
//! The forms are Chaos Toolkit's (an exact value, a range, a regex, a JSON path with an
//! expected value, range or regex) written as keys of one object, plus the HTTP specifics a
//! health check needs (`status`, `body`, `maxLatency`) and a command's `exitCode`. Every key
//! present must hold; a [`Judgement`] names what was seen and what was expected, because it is
//! what an operator reads in the journal when a hypothesis deviated.
//!
//! What a key is checked against depends on the probe:
//!
//! | probe     | `value`, `range`, `regex`, `jsonPath` apply to | also                      |
//! |-----------|------------------------------------------------|---------------------------|
//! | `http`    | the response body                              | `status`, `body`, `maxLatency` |
//! | `metric`  | the number                                     |                           |
//! | `command` | standard output, trimmed                       | `exitCode` (default 0)    |
//!
//! A command probe without `exitCode` must exit 0, as a shell's `&&` would: a probe that
//! crashed says nothing about the system, whatever it printed. Regexes search (they are not
//! anchored), as Chaos Toolkit's do; write `^…$` to match the whole text.

use std::fmt;

use gauntlet_rollout::analysis::DurationStr;
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// `tolerance:` of a probe. At least one key; `value`, `range`, `regex` and `jsonPath` are
/// alternatives (at most one of them).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tolerance {
    /// Exactly this number, string or boolean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// A number from `lo` to `hi`, both included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path: Option<JsonPathTolerance>,
    /// HTTP probes: the status, or one of a list of statuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusCodes>,
    /// HTTP probes: a regex the body must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// HTTP probes: the slowest acceptable answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency: Option<DurationStr>,
    /// Command probes: the expected exit code (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// `jsonPath: {path: "$.checks[0].status", value: "up"}`: the value at `path` of a JSON
/// output, checked with exactly one of `value`, `range`, `regex`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonPathTolerance {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// `status: 200` or `status: [200, 204]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusCodes {
    One(u16),
    AnyOf(Vec<u16>),
}

impl StatusCodes {
    pub fn codes(&self) -> &[u16] {
        match self {
            StatusCodes::One(code) => std::slice::from_ref(code),
            StatusCodes::AnyOf(codes) => codes,
        }
    }
}

/// The kind of probe a tolerance is written for (it decides which keys make sense).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbeKind {
    Http,
    Metric,
    Command,
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeKind::Http => "http",
            ProbeKind::Metric => "metric",
            ProbeKind::Command => "command",
        })
    }
}

/// What a probe returned, as the shell reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ProbeOutput {
    Http {
        status: u16,
        body: String,
        latency_ms: u64,
    },
    /// A metric's value; `NaN` when the source had no data (never within a tolerance).
    Metric {
        value: f64,
    },
    Command {
        exit_code: i32,
        stdout: String,
    },
}

impl ProbeOutput {
    /// A compact JSON form for the journal (bodies and outputs cut to [`SHOWN_CHARS`]).
    pub fn summary(&self) -> Value {
        match self {
            ProbeOutput::Http {
                status,
                body,
                latency_ms,
            } => {
                serde_json::json!({"status": status, "body": shorten(body), "latencyMs": latency_ms})
            }
            ProbeOutput::Metric { value } => {
                serde_json::Number::from_f64(*value).map_or(Value::Null, Value::Number)
            }
            ProbeOutput::Command { exit_code, stdout } => {
                serde_json::json!({"exitCode": exit_code, "stdout": shorten(stdout)})
            }
        }
    }
}

/// Characters of a body or output kept in journals and reasons.
pub const SHOWN_CHARS: usize = 200;

fn shorten(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// A tolerance's verdict on one output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Judgement {
    pub passed: bool,
    /// Every check when passed (`status 200 is 200; latency 12ms <= 500ms`), the failing
    /// ones when not.
    pub reason: String,
}

/// What is wrong with a tolerance as written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ToleranceProblem {
    #[error("a tolerance needs at least one of value, range, regex, jsonPath, status, body, maxLatency, exitCode")]
    Empty,
    #[error("give only one of value, range, regex, jsonPath; found {0}")]
    Alternatives(String),
    #[error("applies to http probes only, not to {0} probes")]
    HttpOnly(ProbeKind),
    #[error("applies to command probes only, not to {0} probes")]
    CommandOnly(ProbeKind),
    #[error("applies to http and command output, not to a metric's number")]
    NotForMetric,
    #[error("a metric is a number: compare it with a number")]
    MetricValue,
    #[error("must be a number, string or boolean")]
    ValueType,
    #[error("[{lo}, {hi}] is empty: write [low, high]")]
    Range { lo: String, hi: String },
    #[error("`{pattern}` is not a valid regular expression: {error}")]
    Regex { pattern: String, error: String },
    #[error("{0}")]
    JsonPath(JsonPathError),
    #[error("status {0} is not an HTTP status; expected 100..=599")]
    Status(u16),
    #[error("must list at least one status")]
    NoStatus,
    #[error("give exactly one of value, range, regex to compare the value at the path with")]
    JsonPathCheck,
}

impl Tolerance {
    /// Every problem of this tolerance on a probe of `kind`, each with its path below the
    /// tolerance (`.range`, `.jsonPath.path`; `""` for the tolerance itself).
    pub fn validate(&self, kind: ProbeKind) -> Vec<(String, ToleranceProblem)> {
        let mut problems = Vec::new();
        let mut report = |path: &str, problem| problems.push((path.to_string(), problem));
        let alternatives: Vec<&str> = [
            ("value", self.value.is_some()),
            ("range", self.range.is_some()),
            ("regex", self.regex.is_some()),
            ("jsonPath", self.json_path.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        let others = self.status.is_some()
            || self.body.is_some()
            || self.max_latency.is_some()
            || self.exit_code.is_some();
        if alternatives.is_empty() && !others {
            report("", ToleranceProblem::Empty);
        }
        if alternatives.len() > 1 {
            report("", ToleranceProblem::Alternatives(alternatives.join(", ")));
        }
        if let Some(value) = &self.value {
            if !matches!(value, Value::Number(_) | Value::String(_) | Value::Bool(_)) {
                report(".value", ToleranceProblem::ValueType);
            } else if kind == ProbeKind::Metric && !value.is_number() {
                report(".value", ToleranceProblem::MetricValue);
            }
        }
        if let Some(range) = &self.range {
            if let Some(problem) = range_problem(range) {
                report(".range", problem);
            }
        }
        for (path, pattern) in [(".regex", &self.regex), (".body", &self.body)] {
            if let Some(problem) = pattern.as_deref().and_then(regex_problem) {
                report(path, problem);
            }
        }
        if let Some(jp) = &self.json_path {
            if kind == ProbeKind::Metric {
                report(".jsonPath", ToleranceProblem::NotForMetric);
            }
            if let Err(error) = JsonPath::parse(&jp.path) {
                report(".jsonPath.path", ToleranceProblem::JsonPath(error));
            }
            let checks = [jp.value.is_some(), jp.range.is_some(), jp.regex.is_some()];
            if checks.iter().filter(|set| **set).count() != 1 {
                report(".jsonPath", ToleranceProblem::JsonPathCheck);
            }
            if let Some(problem) = jp.range.as_ref().and_then(range_problem) {
                report(".jsonPath.range", problem);
            }
            if let Some(problem) = jp.regex.as_deref().and_then(regex_problem) {
                report(".jsonPath.regex", problem);
            }
        }
        if kind != ProbeKind::Http {
            for (path, set) in [
                (".status", self.status.is_some()),
                (".body", self.body.is_some()),
                (".maxLatency", self.max_latency.is_some()),
            ] {
                if set {
                    report(path, ToleranceProblem::HttpOnly(kind));
                }
            }
        }
        if kind != ProbeKind::Command && self.exit_code.is_some() {
            report(".exitCode", ToleranceProblem::CommandOnly(kind));
        }
        if let Some(status) = &self.status {
            if status.codes().is_empty() {
                report(".status", ToleranceProblem::NoStatus);
            }
            for code in status.codes() {
                if !(100..=599).contains(code) {
                    report(".status", ToleranceProblem::Status(*code));
                }
            }
        }
        problems
    }

    /// Judges one output. A tolerance that does not validate is judged as written: an invalid
    /// regex or path fails with its error as the reason rather than passing silently.
    pub fn evaluate(&self, output: &ProbeOutput) -> Judgement {
        let mut checks: Vec<(bool, String)> = Vec::new();
        match output {
            ProbeOutput::Http {
                status,
                body,
                latency_ms,
            } => {
                if let Some(expected) = &self.status {
                    let codes = expected.codes();
                    let ok = codes.contains(status);
                    let want = match codes {
                        [one] => one.to_string(),
                        many => format!("one of {many:?}"),
                    };
                    let verb = if ok { "is" } else { "is not" };
                    checks.push((ok, format!("status {status} {verb} {want}")));
                }
                if let Some(pattern) = &self.body {
                    checks.push(regex_check("body", pattern, body));
                }
                if let Some(max) = &self.max_latency {
                    let ok = *latency_ms <= max.as_ms();
                    let op = if ok { "<=" } else { ">" };
                    checks.push((ok, format!("latency {latency_ms}ms {op} {max}")));
                }
                self.subject_checks(&Subject::Text(body), &mut checks);
            }
            ProbeOutput::Metric { value } => {
                self.subject_checks(&Subject::Number(*value), &mut checks);
            }
            ProbeOutput::Command { exit_code, stdout } => {
                let expected = self.exit_code.unwrap_or(0);
                let ok = *exit_code == expected;
                let verb = if ok { "is" } else { "is not" };
                checks.push((ok, format!("exit code {exit_code} {verb} {expected}")));
                self.subject_checks(&Subject::Text(stdout.trim()), &mut checks);
            }
        }
        let passed = checks.iter().all(|(ok, _)| *ok);
        let reason = checks
            .into_iter()
            .filter(|(ok, _)| *ok == passed)
            .map(|(_, reason)| reason)
            .collect::<Vec<_>>()
            .join("; ");
        Judgement { passed, reason }
    }

    fn subject_checks(&self, subject: &Subject<'_>, checks: &mut Vec<(bool, String)>) {
        if let Some(expected) = &self.value {
            checks.push(value_check("value", subject, expected));
        }
        if let Some(range) = &self.range {
            checks.push(range_check("value", subject, range));
        }
        if let Some(pattern) = &self.regex {
            checks.push(regex_check("output", pattern, &subject.text()));
        }
        if let Some(jp) = &self.json_path {
            checks.push(json_path_check(jp, subject));
        }
    }
}

/// What `value`, `range`, `regex` compare: a metric's number or a body or output's text.
enum Subject<'a> {
    Number(f64),
    Text(&'a str),
}

impl Subject<'_> {
    fn number(&self) -> Option<f64> {
        match self {
            Subject::Number(n) => Some(*n),
            Subject::Text(text) => text.trim().parse().ok(),
        }
    }

    fn text(&self) -> String {
        match self {
            Subject::Number(n) => n.to_string(),
            Subject::Text(text) => (*text).to_string(),
        }
    }
}

fn range_problem(range: &[f64; 2]) -> Option<ToleranceProblem> {
    let [lo, hi] = *range;
    (lo.is_nan() || hi.is_nan() || lo > hi).then(|| ToleranceProblem::Range {
        lo: lo.to_string(),
        hi: hi.to_string(),
    })
}

fn regex_problem(pattern: &str) -> Option<ToleranceProblem> {
    Regex::new(pattern)
        .err()
        .map(|error| ToleranceProblem::Regex {
            pattern: pattern.to_string(),
            error: error.to_string(),
        })
}

fn regex_check(what: &str, pattern: &str, text: &str) -> (bool, String) {
    match Regex::new(pattern) {
        Ok(re) if re.is_match(text) => (true, format!("{what} matches `{pattern}`")),
        Ok(_) => (
            false,
            format!("{what} {:?} does not match `{pattern}`", shorten(text)),
        ),
        Err(error) => (false, format!("`{pattern}` is not a valid regex: {error}")),
    }
}

fn range_check(what: &str, subject: &Subject<'_>, range: &[f64; 2]) -> (bool, String) {
    let [lo, hi] = *range;
    match subject.number() {
        Some(n) if n >= lo && n <= hi => (true, format!("{what} {n} is within [{lo}, {hi}]")),
        Some(n) => (false, format!("{what} {n} is outside [{lo}, {hi}]")),
        None => (
            false,
            format!(
                "{what} {:?} is not a number to compare with [{lo}, {hi}]",
                shorten(&subject.text())
            ),
        ),
    }
}

fn value_check(what: &str, subject: &Subject<'_>, expected: &Value) -> (bool, String) {
    let ok = match expected {
        Value::Number(n) => subject
            .number()
            .zip(n.as_f64())
            .is_some_and(|(a, b)| a == b),
        Value::String(s) => match subject {
            Subject::Text(text) => text == s,
            Subject::Number(n) => s.trim().parse::<f64>().is_ok_and(|s| s == *n),
        },
        Value::Bool(b) => matches!(subject, Subject::Text(text) if text.trim() == b.to_string()),
        _ => false,
    };
    let seen = shorten(&subject.text());
    if ok {
        (true, format!("{what} is {expected}"))
    } else {
        (false, format!("{what} {seen:?} is not {expected}"))
    }
}

fn json_path_check(jp: &JsonPathTolerance, subject: &Subject<'_>) -> (bool, String) {
    let path = match JsonPath::parse(&jp.path) {
        Ok(path) => path,
        Err(error) => return (false, format!("jsonPath `{}`: {error}", jp.path)),
    };
    let text = subject.text();
    let document: Value = match serde_json::from_str(&text) {
        Ok(document) => document,
        Err(error) => {
            return (
                false,
                format!(
                    "output is not JSON ({error}), so `{}` has no value",
                    jp.path
                ),
            )
        }
    };
    let Some(found) = path.get(&document) else {
        return (false, format!("`{}` is not in the output", jp.path));
    };
    let what = format!("`{}`", jp.path);
    let found_text;
    let subject = match found {
        Value::Number(n) => Subject::Number(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Subject::Text(s),
        other => {
            found_text = other.to_string();
            Subject::Text(&found_text)
        }
    };
    if let Some(expected) = &jp.value {
        if !matches!(
            expected,
            Value::Number(_) | Value::String(_) | Value::Bool(_)
        ) {
            let ok = found == expected;
            let verb = if ok { "is" } else { "is not" };
            return (ok, format!("{what} {found} {verb} {expected}"));
        }
        value_check(&what, &subject, expected)
    } else if let Some(range) = &jp.range {
        range_check(&what, &subject, range)
    } else if let Some(pattern) = &jp.regex {
        regex_check(&what, pattern, &subject.text())
    } else {
        (
            false,
            format!("{what}: no value, range or regex to compare with"),
        )
    }
}

/// A small JSONPath: `$`, then `.name`, `['name']` or `[index]` steps (`[-1]` is the last
/// element). Enough to reach one value of a health or status document; filters and wildcards
/// would select several, and a tolerance judges one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    steps: Vec<PathStep>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathStep {
    Key(String),
    Index(i64),
}

/// Where and why a JSON path does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("at character {position}: {message}")]
pub struct JsonPathError {
    /// 1-based.
    pub position: usize,
    pub message: String,
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, JsonPathError> {
        let chars: Vec<char> = text.chars().collect();
        let error = |position: usize, message: &str| JsonPathError {
            position: position + 1,
            message: message.to_string(),
        };
        if chars.first() != Some(&'$') {
            return Err(error(0, "a path starts with `$`"));
        }
        let mut steps = Vec::new();
        let mut i = 1;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    let start = i + 1;
                    let mut end = start;
                    while end < chars.len() && !matches!(chars[end], '.' | '[') {
                        end += 1;
                    }
                    if end == start {
                        return Err(error(start, "expected a name after `.`"));
                    }
                    let name: String = chars[start..end].iter().collect();
                    if name == "*" {
                        return Err(error(start, "wildcards are not supported: name one value"));
                    }
                    steps.push(PathStep::Key(name));
                    i = end;
                }
                '[' => {
                    let Some(close) = chars[i..].iter().position(|c| *c == ']').map(|p| p + i)
                    else {
                        return Err(error(i, "`[` is not closed"));
                    };
                    let inner: String = chars[i + 1..close].iter().collect();
                    let inner = inner.trim();
                    let quoted = inner.len() >= 2
                        && ((inner.starts_with('\'') && inner.ends_with('\''))
                            || (inner.starts_with('"') && inner.ends_with('"')));
                    if quoted {
                        steps.push(PathStep::Key(inner[1..inner.len() - 1].to_string()));
                    } else {
                        let index = inner.parse::<i64>().map_err(|_| {
                            error(
                                i + 1,
                                "expected an index like [0] or a quoted name like ['a-b']",
                            )
                        })?;
                        steps.push(PathStep::Index(index));
                    }
                    i = close + 1;
                }
                _ => return Err(error(i, "expected `.name` or `[...]`")),
            }
        }
        Ok(JsonPath { steps })
    }

    /// The value at this path, if there is one.
    pub fn get<'v>(&self, document: &'v Value) -> Option<&'v Value> {
        self.steps
            .iter()
            .try_fold(document, |value, step| match (step, value) {
                (PathStep::Key(key), Value::Object(map)) => map.get(key),
                (PathStep::Index(index), Value::Array(items)) => {
                    let at = if *index < 0 {
                        items.len().checked_sub(index.unsigned_abs() as usize)?
                    } else {
                        usize::try_from(*index).ok()?
                    };
                    items.get(at)
                }
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tolerance(value: Value) -> Tolerance {
        serde_json::from_value(value).unwrap()
    }

    fn http(status: u16, body: &str, latency_ms: u64) -> ProbeOutput {
        ProbeOutput::Http {
            status,
            body: body.into(),
            latency_ms,
        }
    }

    fn metric(value: f64) -> ProbeOutput {
        ProbeOutput::Metric { value }
    }

    fn command(exit_code: i32, stdout: &str) -> ProbeOutput {
        ProbeOutput::Command {
            exit_code,
            stdout: stdout.into(),
        }
    }

    #[test]
    fn exact_values_compare_numbers_strings_and_booleans() {
        assert!(tolerance(json!({"value": 3})).evaluate(&metric(3.0)).passed);
        assert!(!tolerance(json!({"value": 3})).evaluate(&metric(3.5)).passed);
        assert!(
            tolerance(json!({"value": 42}))
                .evaluate(&command(0, "42\n"))
                .passed
        );
        assert!(
            tolerance(json!({"value": "ok"}))
                .evaluate(&command(0, " ok \n"))
                .passed
        );
        assert!(
            tolerance(json!({"value": true}))
                .evaluate(&command(0, "true"))
                .passed
        );
        let j = tolerance(json!({"value": "ok"})).evaluate(&command(0, "degraded"));
        assert!(!j.passed);
        assert_eq!(j.reason, r#"value "degraded" is not "ok""#);
    }

    #[test]
    fn a_range_includes_both_ends_and_rejects_what_is_not_a_number() {
        let t = tolerance(json!({"range": [0, 0.01]}));
        assert!(t.evaluate(&metric(0.0)).passed);
        assert!(t.evaluate(&metric(0.01)).passed);
        let over = t.evaluate(&metric(0.02));
        assert!(!over.passed);
        assert_eq!(over.reason, "value 0.02 is outside [0, 0.01]");
        assert!(!t.evaluate(&metric(f64::NAN)).passed);
        assert!(!t.evaluate(&command(0, "n/a")).passed);
    }

    #[test]
    fn a_regex_searches_the_output_unanchored() {
        let t = tolerance(json!({"regex": "ready|ok"}));
        assert!(t.evaluate(&command(0, "status: ok")).passed);
        assert!(!t.evaluate(&command(0, "status: down")).passed);
        assert!(
            !tolerance(json!({"regex": "^ok$"}))
                .evaluate(&command(0, "not ok"))
                .passed
        );
    }

    #[test]
    fn json_path_reaches_nested_values_and_compares_them() {
        let body = r#"{"checks": [{"name": "db", "status": "up", "ms": 12}], "ready": true}"#;
        let at = |path: &str, check: Value| {
            let mut jp = json!({"path": path});
            jp.as_object_mut()
                .unwrap()
                .extend(check.as_object().unwrap().clone());
            tolerance(json!({"jsonPath": jp})).evaluate(&http(200, body, 5))
        };
        assert!(at("$.checks[0].status", json!({"value": "up"})).passed);
        assert!(at("$.checks[-1].ms", json!({"range": [0, 50]})).passed);
        assert!(at("$['ready']", json!({"value": true})).passed);
        assert!(at("$.checks[0].name", json!({"regex": "^d"})).passed);
        let slow = at("$.checks[0].ms", json!({"range": [0, 10]}));
        assert!(!slow.passed);
        assert_eq!(slow.reason, "`$.checks[0].ms` 12 is outside [0, 10]");
        let missing = at("$.checks[3].status", json!({"value": "up"}));
        assert_eq!(missing.reason, "`$.checks[3].status` is not in the output");
        let not_json = tolerance(json!({"jsonPath": {"path": "$.a", "value": 1}}))
            .evaluate(&http(200, "<html>", 1));
        assert!(!not_json.passed);
        assert!(not_json.reason.starts_with("output is not JSON"));
    }

    #[test]
    fn json_paths_that_do_not_parse_say_where() {
        assert_eq!(JsonPath::parse("a.b").unwrap_err().position, 1);
        let e = JsonPath::parse("$.a[x]").unwrap_err();
        assert_eq!(e.position, 5);
        assert!(JsonPath::parse("$.a[0").is_err());
        assert!(JsonPath::parse("$..a").is_err());
        assert!(JsonPath::parse("$.*").is_err());
        assert_eq!(
            JsonPath::parse("$").unwrap().get(&json!(1)),
            Some(&json!(1))
        );
    }

    #[test]
    fn http_status_body_and_latency_must_all_hold() {
        let t = tolerance(json!({"status": [200, 204], "body": "ok", "maxLatency": "500ms"}));
        let pass = t.evaluate(&http(204, "all ok", 120));
        assert!(pass.passed);
        assert_eq!(
            pass.reason,
            "status 204 is one of [200, 204]; body matches `ok`; latency 120ms <= 500ms"
        );
        let slow = t.evaluate(&http(200, "ok", 900));
        assert!(!slow.passed);
        assert_eq!(slow.reason, "latency 900ms > 500ms");
        let down = tolerance(json!({"status": 200})).evaluate(&http(503, "", 3));
        assert_eq!(down.reason, "status 503 is not 200");
    }

    #[test]
    fn a_command_probe_must_exit_zero_unless_told_otherwise() {
        let t = tolerance(json!({"regex": "ok"}));
        let crashed = t.evaluate(&command(1, "ok"));
        assert!(!crashed.passed);
        assert_eq!(crashed.reason, "exit code 1 is not 0");
        assert!(
            tolerance(json!({"exitCode": 3}))
                .evaluate(&command(3, ""))
                .passed
        );
    }

    #[test]
    fn validation_names_each_misplaced_or_broken_key() {
        let problems = |t: Value, kind| {
            tolerance(t)
                .validate(kind)
                .into_iter()
                .map(|(path, problem)| format!("{path}: {problem}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(problems(json!({}), ProbeKind::Http).len(), 1);
        assert_eq!(
            problems(json!({"range": [1, 0], "regex": "("}), ProbeKind::Command),
            [
                ": give only one of value, range, regex, jsonPath; found range, regex",
                ".range: [1, 0] is empty: write [low, high]",
                ".regex: `(` is not a valid regular expression: regex parse error:\n    (\n    ^\nerror: unclosed group",
            ]
        );
        assert_eq!(
            problems(json!({"status": 200, "value": "x"}), ProbeKind::Metric),
            [
                ".value: a metric is a number: compare it with a number",
                ".status: applies to http probes only, not to metric probes"
            ]
        );
        assert_eq!(
            problems(json!({"status": [700]}), ProbeKind::Http),
            [".status: status 700 is not an HTTP status; expected 100..=599"]
        );
        assert_eq!(
            problems(json!({"jsonPath": {"path": "$.a"}}), ProbeKind::Http),
            [".jsonPath: give exactly one of value, range, regex to compare the value at the path with"]
        );
        assert_eq!(
            problems(json!({"exitCode": 0}), ProbeKind::Http),
            [".exitCode: applies to command probes only, not to http probes"]
        );
        assert!(problems(
            json!({"status": 200, "body": "ok", "maxLatency": "1s"}),
            ProbeKind::Http
        )
        .is_empty());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(serde_json::from_value::<Tolerance>(json!({"equals": 1})).is_err());
    }
}
