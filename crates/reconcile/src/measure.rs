//! Measurements: the I/O behind an analysis metric's `provider`.
//!
//! The analysis core ([`gauntlet_rollout::analysis`]) decides what a value means; this shell
//! only fetches it. [`measure`] takes one provider and a [`MeasureContext`] and returns the
//! measurement as a JSON value, or an error message that the run records as an Error
//! (retried after 10 s; `consecutiveErrorLimit` decides when that ends the run).
//!
//! # Values
//!
//! - **builtin**: a number from the proxy's counters for the application's `candidate`
//!   (default) or `stable` revision over the controller's live window ([`crate::live::WINDOW`],
//!   10 s): `errorRate` (failures over requests, 0 to 1), `requestRate` (requests a second),
//!   `latencyP50` and `latencyP99` (milliseconds). A revision without traffic in the window
//!   is an error (there is nothing to judge yet), except for `requestRate`, which is then 0.
//!   Only the live window exists: a `window` other than 10 s is an error.
//! - **prometheus**: an instant query through `GET {address}/api/v1/query`. A scalar, or an
//!   instant vector with one sample, is a number; a vector with several samples is an array
//!   of numbers in Prometheus's order (`result[0]`; sort in the query when order matters); an
//!   empty vector is an error ("the query returned no data"), as is a range vector. Samples
//!   that are not JSON numbers (`NaN`, `+Inf`, `-Inf`) become the strings Prometheus writes,
//!   so `isNaN(result)` is true for NaN and `result < 0.01` is an evaluation Error rather
//!   than a Failure. A Prometheus error is an error carrying its `error` field.
//! - **web**: `GET url` with `headers`; a non-2xx status or a body that is not JSON is an
//!   error. Without `jsonPath` the value is the whole body; with it, the value at the path,
//!   which may be written `$.data.ratio`, `$.items[0].value`, `$['odd key']` or Argo's
//!   `{$.data.ratio}`. A path that leads nowhere is an error naming where it stopped.
//! - **command**: the argv runs without a shell, stdin from `/dev/null`, in a process group
//!   of its own. Exit 0: stdout parsed as JSON (`0.5`, `true`, `{"p99": 120}`), else its last
//!   non-empty line parsed as JSON (so a script may log before printing its number), else
//!   `true`. Any other exit (a code or a signal) is `false`, so `successCondition: result ==
//!   true` fails with the command, while `result < 0.01` on a failed command is an
//!   evaluation Error. Stdout and stderr are captured up to their last 64 KiB; stderr's tail
//!   is logged when the command fails. The output is read until it closes, so a background
//!   process left holding stdout keeps the measurement open. When the timeout passes the
//!   whole process group is killed and the measurement is an error naming the timeout; a
//!   command that cannot be started is an error.
//!
//! Timeouts default to 10 s for prometheus and web and to 30 s for command.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use gauntlet_rollout::analysis::{
    BuiltinProvider, CommandProvider, DurationStr, PrometheusProvider, Provider, WebProvider,
};
use serde::Deserialize;
use serde_json::Value;

use crate::live::{Readings, RevisionRates, WINDOW};

/// The default timeout of a prometheus or web measurement.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The default timeout of a command measurement.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What a measurement may need to know about the application being rolled out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeasureContext {
    pub app: String,
    /// The revision serving users before the rollout; `None` on a first deployment.
    pub stable: Option<String>,
    /// The revision being rolled out; `None` outside a rollout.
    pub candidate: Option<String>,
    /// The live rates of the application's revisions, by revision id. Revisions without a
    /// full reading are absent.
    pub rates: BTreeMap<String, RevisionRates>,
}

impl MeasureContext {
    /// A context for `app` whose rates are the stable and candidate revisions' current
    /// readings: two map entries at most, copied out of `readings`.
    pub fn from_readings(
        app: &str,
        stable: Option<&str>,
        candidate: Option<&str>,
        readings: &Readings,
    ) -> MeasureContext {
        let rates = stable
            .into_iter()
            .chain(candidate)
            .filter_map(|rev| Some((rev.to_string(), readings.rates(app, rev)?)))
            .collect();
        MeasureContext {
            app: app.to_string(),
            stable: stable.map(str::to_string),
            candidate: candidate.map(str::to_string),
            rates,
        }
    }
}

/// Takes one measurement through `provider`. See the module documentation for the values.
///
/// ```no_run
/// # async fn f() {
/// use gauntlet_reconcile::measure::{measure, MeasureContext};
/// use gauntlet_rollout::analysis::Provider;
/// let provider: Provider =
///     serde_json::from_value(serde_json::json!({"command": {"command": ["sh", "-c", "echo 0.5"]}}))
///         .unwrap();
/// assert_eq!(measure(&provider, &MeasureContext::default()).await, Ok(serde_json::json!(0.5)));
/// # }
/// ```
pub async fn measure(provider: &Provider, ctx: &MeasureContext) -> Result<Value, String> {
    match provider {
        Provider::Builtin(p) => builtin(p, ctx),
        Provider::Prometheus(p) => prometheus(p).await,
        Provider::Web(p) => web(p).await,
        Provider::Command(p) => command(p).await,
    }
}

fn builtin(p: &BuiltinProvider, ctx: &MeasureContext) -> Result<Value, String> {
    let window_s = WINDOW.as_secs();
    if let Some(w) = &p.window {
        if u128::from(w.as_ms()) != WINDOW.as_millis() {
            return Err(format!(
                "builtin metrics cover the live {window_s}s window only; window `{w}` is not \
                 supported yet: remove it or set {window_s}s"
            ));
        }
    }
    let role = p.revision.as_deref().unwrap_or("candidate");
    let revision = match role {
        "candidate" => ctx.candidate.as_deref(),
        "stable" => ctx.stable.as_deref(),
        other => {
            return Err(format!(
                "unknown builtin revision `{other}`: use candidate or stable"
            ))
        }
    }
    .ok_or_else(|| format!("{} has no {role} revision now", ctx.app))?;
    let rates = ctx.rates.get(revision);
    let no_traffic = || format!("no traffic to {revision} in the last {window_s}s");
    let value = match p.metric.as_str() {
        "requestRate" => rates.map_or(0.0, |r| r.requests_per_second),
        "errorRate" => rates.and_then(|r| r.error_rate).ok_or_else(no_traffic)?,
        "latencyP50" => rates.and_then(|r| r.p50_ms).ok_or_else(no_traffic)?,
        "latencyP99" => rates.and_then(|r| r.p99_ms).ok_or_else(no_traffic)?,
        other => {
            return Err(format!(
                "unknown builtin metric `{other}`: use errorRate, requestRate, latencyP50 or \
                 latencyP99"
            ))
        }
    };
    Ok(number(value))
}

/// A JSON number, or for NaN and the infinities the string Prometheus writes for them.
fn number(x: f64) -> Value {
    match serde_json::Number::from_f64(x) {
        Some(n) => Value::Number(n),
        None if x.is_nan() => Value::String("NaN".into()),
        None if x > 0.0 => Value::String("+Inf".into()),
        None => Value::String("-Inf".into()),
    }
}

fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

fn timeout_of(d: &Option<DurationStr>, default: Duration) -> (Duration, String) {
    match d {
        Some(d) => (Duration::from_millis(d.as_ms()), d.to_string()),
        None => (default, humantime::format_duration(default).to_string()),
    }
}

pub(crate) fn request_error(what: &str, timeout: &str, e: reqwest::Error) -> String {
    if e.is_timeout() {
        format!("{what}: no answer within the timeout ({timeout})")
    } else {
        // reqwest's own message omits the cause ("error sending request"): add the chain.
        let mut message = format!("{what}: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        message
    }
}

/// A Prometheus HTTP API answer; `data` for success, `error` otherwise.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromResponse {
    status: String,
    #[serde(default)]
    data: Option<PromData>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "camelCase")]
enum PromData {
    Scalar((f64, String)),
    String((f64, String)),
    Vector(Vec<PromSample>),
    Matrix(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct PromSample {
    value: (f64, String),
}

async fn prometheus(p: &PrometheusProvider) -> Result<Value, String> {
    let url = format!("{}/api/v1/query", p.address.trim_end_matches('/'));
    // The provider has no `timeout` field (Argo's has none either): the default applies.
    let (timeout, timeout_text) = timeout_of(&None, HTTP_TIMEOUT);
    let what = format!("prometheus at {}", p.address);
    let response = http()
        .get(&url)
        .query(&[("query", p.query.as_str())])
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| request_error(&what, &timeout_text, e))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| request_error(&what, &timeout_text, e))?;
    let answer: PromResponse = serde_json::from_str(&body).map_err(|e| {
        format!(
            "{what}: HTTP {status}, not a Prometheus API answer ({e}): {}",
            snippet(&body)
        )
    })?;
    if answer.status != "success" {
        return Err(format!(
            "{what}: {}: {}",
            answer.error_type.as_deref().unwrap_or("error"),
            answer.error.as_deref().unwrap_or("no error message")
        ));
    }
    let data = answer
        .data
        .ok_or_else(|| format!("{what}: success without data"))?;
    prom_value(data)
}

fn prom_value(data: PromData) -> Result<Value, String> {
    let sample = |s: &str| match s.parse::<f64>() {
        Ok(x) => Ok(number(x)),
        Err(_) => Err(format!("the query returned `{s}`, not a number")),
    };
    match data {
        PromData::Scalar((_, v)) => sample(&v),
        PromData::String((_, s)) => Ok(Value::String(s)),
        PromData::Vector(samples) => match samples.as_slice() {
            [] => Err("the query returned no data".to_string()),
            [one] => sample(&one.value.1),
            many => many
                .iter()
                .map(|s| sample(&s.value.1))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
        },
        PromData::Matrix(_) => Err(
            "the query returned a range vector: use an instant query, e.g. wrap the range in \
             rate() or avg_over_time()"
                .to_string(),
        ),
    }
}

fn snippet(body: &str) -> &str {
    let body = body.trim();
    match body.char_indices().nth(200) {
        Some((i, _)) => &body[..i],
        None => body,
    }
}

async fn web(p: &WebProvider) -> Result<Value, String> {
    let (timeout, timeout_text) = timeout_of(&p.timeout, HTTP_TIMEOUT);
    let what = format!("GET {}", p.url);
    let path = p.json_path.as_deref().map(JsonPath::parse).transpose()?;
    let mut request = http().get(&p.url).timeout(timeout);
    for (name, value) in &p.headers {
        request = request.header(name, value);
    }
    let response = request
        .send()
        .await
        .map_err(|e| request_error(&what, &timeout_text, e))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| request_error(&what, &timeout_text, e))?;
    if !status.is_success() {
        return Err(format!("{what}: HTTP {status}: {}", snippet(&body)));
    }
    let json: Value = serde_json::from_str(&body)
        .map_err(|e| format!("{what}: the body is not JSON ({e}): {}", snippet(&body)))?;
    match path {
        None => Ok(json),
        Some(path) => path.select(&json).cloned(),
    }
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
}

/// The JSON path subset web metrics use: `$`, `.field`, `['field']`, `[n]`.
#[derive(Debug, Clone, PartialEq)]
struct JsonPath {
    source: String,
    steps: Vec<Step>,
}

impl JsonPath {
    fn parse(source: &str) -> Result<JsonPath, String> {
        let bad = |why: &str| format!("jsonPath `{source}`: {why}");
        let mut text = source.trim();
        // Argo (Kubernetes' jsonpath) writes `{$.data.ok}`.
        if let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            text = inner.trim();
        }
        let mut rest = text
            .strip_prefix('$')
            .ok_or_else(|| bad("must start with `$`"))?;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                if end == 0 {
                    return Err(bad("a `.` must be followed by a field name"));
                }
                steps.push(Step::Field(after[..end].to_string()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let close = after.find(']').ok_or_else(|| bad("`[` without `]`"))?;
                let inner = after[..close].trim();
                let quoted = ['\'', '"'].iter().find_map(|q| {
                    inner
                        .strip_prefix(*q)
                        .and_then(|s| s.strip_suffix(*q))
                        .filter(|_| inner.len() >= 2)
                });
                let step = match quoted {
                    Some(field) => Step::Field(field.to_string()),
                    None => Step::Index(inner.parse().map_err(|_| {
                        bad(&format!(
                            "`[{inner}]` is neither an index nor a quoted field name"
                        ))
                    })?),
                };
                steps.push(step);
                rest = &after[close + 1..];
            } else {
                return Err(bad(&format!(
                    "unexpected `{rest}`: use .field, ['field'] or [n]"
                )));
            }
        }
        Ok(JsonPath {
            source: source.to_string(),
            steps,
        })
    }

    fn select<'v>(&self, mut value: &'v Value) -> Result<&'v Value, String> {
        let mut at = String::from("$");
        for step in &self.steps {
            let next = match step {
                Step::Field(name) => value.get(name.as_str()),
                Step::Index(i) => value.get(*i),
            };
            value = next.ok_or_else(|| {
                let missing = match step {
                    Step::Field(name) => format!("no field `{name}`"),
                    Step::Index(i) => format!("no element [{i}]"),
                };
                format!(
                    "jsonPath `{}`: {missing} in {} at `{at}`",
                    self.source,
                    kind(value)
                )
            })?;
            match step {
                Step::Field(name) => at.push_str(&format!(".{name}")),
                Step::Index(i) => at.push_str(&format!("[{i}]")),
            }
        }
        Ok(value)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

async fn command(p: &CommandProvider) -> Result<Value, String> {
    let (timeout, timeout_text) = timeout_of(&p.timeout, COMMAND_TIMEOUT);
    let done = crate::command::run(&p.command, timeout, &timeout_text).await?;
    if !done.status.success() {
        let err = String::from_utf8_lossy(&done.stderr);
        let err = err.trim();
        let stderr_tail = &err[err.len() - crate::command::tail_len(err, 1024)..];
        tracing::warn!(
            command = ?p.command,
            exit = %gauntlet_runtime::local::os::describe_exit(done.status),
            stderr = stderr_tail,
            "analysis command failed: the measurement is false"
        );
        return Ok(Value::Bool(false));
    }
    Ok(command_value(&String::from_utf8_lossy(&done.stdout)))
}

/// The value of a successful command's stdout.
fn command_value(stdout: &str) -> Value {
    let stdout = stdout.trim();
    if let Ok(v) = serde_json::from_str(stdout) {
        return v;
    }
    stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Bool(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(rates: &[(&str, RevisionRates)]) -> MeasureContext {
        MeasureContext {
            app: "web".into(),
            stable: Some("v1".into()),
            candidate: Some("v2".into()),
            rates: rates.iter().map(|(r, x)| (r.to_string(), *x)).collect(),
        }
    }

    fn busy(rps: f64, errors: f64, p50: f64, p99: f64) -> RevisionRates {
        RevisionRates {
            requests_per_second: rps,
            error_rate: Some(errors),
            p50_ms: Some(p50),
            p99_ms: Some(p99),
            window_seconds: 10.0,
        }
    }

    fn builtin_of(v: Value) -> BuiltinProvider {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn builtin_reads_the_candidate_by_default_and_the_stable_on_request() {
        let c = ctx(&[
            ("v1", busy(100.0, 0.001, 4.0, 20.0)),
            ("v2", busy(5.0, 0.05, 6.0, 250.0)),
        ]);
        let m = |v| builtin(&builtin_of(v), &c);
        assert_eq!(m(json!({"metric": "errorRate"})), Ok(json!(0.05)));
        assert_eq!(m(json!({"metric": "requestRate"})), Ok(json!(5.0)));
        assert_eq!(m(json!({"metric": "latencyP50"})), Ok(json!(6.0)));
        assert_eq!(m(json!({"metric": "latencyP99"})), Ok(json!(250.0)));
        assert_eq!(
            m(json!({"metric": "errorRate", "revision": "stable"})),
            Ok(json!(0.001))
        );
        assert_eq!(
            m(json!({"metric": "latencyP99", "revision": "stable", "window": "10s"})),
            Ok(json!(20.0))
        );
    }

    #[test]
    fn builtin_without_traffic_is_an_error_but_a_request_rate_of_zero() {
        let idle = RevisionRates {
            requests_per_second: 0.0,
            error_rate: None,
            p50_ms: None,
            p99_ms: None,
            window_seconds: 10.0,
        };
        for c in [ctx(&[]), ctx(&[("v2", idle)])] {
            let m = |v| builtin(&builtin_of(v), &c);
            assert_eq!(
                m(json!({"metric": "errorRate"})),
                Err("no traffic to v2 in the last 10s".into())
            );
            assert_eq!(
                m(json!({"metric": "latencyP99"})),
                Err("no traffic to v2 in the last 10s".into())
            );
            assert_eq!(m(json!({"metric": "requestRate"})), Ok(json!(0.0)));
        }
    }

    #[test]
    fn builtin_rejects_other_windows_unknown_metrics_and_missing_revisions() {
        let c = ctx(&[("v2", busy(1.0, 0.0, 1.0, 1.0))]);
        let err = builtin(
            &builtin_of(json!({"metric": "errorRate", "window": "1m"})),
            &c,
        )
        .unwrap_err();
        assert!(err.contains("window `1m` is not supported yet"), "{err}");
        let err = builtin(&builtin_of(json!({"metric": "errors"})), &c).unwrap_err();
        assert!(err.starts_with("unknown builtin metric `errors`"), "{err}");
        let err = builtin(
            &builtin_of(json!({"metric": "errorRate", "revision": "v2"})),
            &c,
        )
        .unwrap_err();
        assert!(err.contains("use candidate or stable"), "{err}");
        let first = MeasureContext { stable: None, ..c };
        assert_eq!(
            builtin(
                &builtin_of(json!({"metric": "errorRate", "revision": "stable"})),
                &first
            ),
            Err("web has no stable revision now".into())
        );
    }

    #[test]
    fn the_context_copies_only_the_stable_and_candidate_rates() {
        use gauntlet_proxy::metrics::MetricsSnapshot;
        let snap = |requests| MetricsSnapshot {
            requests,
            ..MetricsSnapshot::default()
        };
        let mut readings = Readings::default();
        for (at, n) in [(0, 0), (2_000, 100)] {
            let reading: Vec<_> = ["v1", "v2", "v0"]
                .iter()
                .map(|r| ("web".to_string(), r.to_string(), snap(n)))
                .collect();
            readings.record(at, &reading);
        }
        let c = MeasureContext::from_readings("web", Some("v1"), Some("v2"), &readings);
        assert_eq!(c.rates.keys().collect::<Vec<_>>(), ["v1", "v2"]);
        assert_eq!(c.rates["v2"].requests_per_second, 50.0);
    }

    #[test]
    fn prometheus_results_map_to_numbers_arrays_and_errors() {
        let data = |v: Value| prom_value(serde_json::from_value(v).unwrap());
        assert_eq!(
            data(json!({"resultType": "scalar", "result": [1.0, "2.5"]})),
            Ok(json!(2.5))
        );
        let sample = |v: &str| json!({"metric": {}, "value": [1.0, v]});
        assert_eq!(
            data(json!({"resultType": "vector", "result": [sample("0.5")]})),
            Ok(json!(0.5))
        );
        assert_eq!(
            data(json!({"resultType": "vector", "result": [sample("0.5"), sample("NaN")]})),
            Ok(json!([0.5, "NaN"]))
        );
        assert_eq!(
            data(json!({"resultType": "vector", "result": [sample("+Inf")]})),
            Ok(json!("+Inf"))
        );
        assert_eq!(
            data(json!({"resultType": "vector", "result": []})),
            Err("the query returned no data".into())
        );
        assert!(data(json!({"resultType": "matrix", "result": []}))
            .unwrap_err()
            .contains("range vector"));
    }

    #[test]
    fn json_paths_follow_fields_and_indexes() {
        let doc = json!({"data": {"ratio": 0.97, "odd key": [1, 2]}, "items": [{"value": 3}]});
        let at = |p: &str| JsonPath::parse(p).and_then(|p| p.select(&doc).cloned());
        assert_eq!(at("$"), Ok(doc.clone()));
        assert_eq!(at("$.data.ratio"), Ok(json!(0.97)));
        assert_eq!(at("{$.data.ratio}"), Ok(json!(0.97)));
        assert_eq!(at("$.items[0].value"), Ok(json!(3)));
        assert_eq!(at("$['data'][\"odd key\"][1]"), Ok(json!(2)));
        assert_eq!(
            at("$.data.missing"),
            Err("jsonPath `$.data.missing`: no field `missing` in an object at `$.data`".into())
        );
        assert_eq!(
            at("$.items[3]"),
            Err("jsonPath `$.items[3]`: no element [3] in an array at `$.items`".into())
        );
        assert!(at("data.ratio")
            .unwrap_err()
            .contains("must start with `$`"));
        assert!(at("$.items[x]").unwrap_err().contains("neither an index"));
        assert!(at("$..x").unwrap_err().contains("field name"));
    }

    #[test]
    fn command_output_is_json_or_its_last_line_or_true() {
        assert_eq!(command_value("0.5\n"), json!(0.5));
        assert_eq!(command_value("{\"p99\": 120}"), json!({"p99": 120}));
        assert_eq!(command_value("checking...\n0.02\n\n"), json!(0.02));
        assert_eq!(command_value("all good"), json!(true));
        assert_eq!(command_value(""), json!(true));
    }
}
