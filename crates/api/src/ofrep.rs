//! OFREP v1, the OpenFeature Remote Evaluation Protocol: how applications with an OpenFeature
//! SDK and its OFREP provider read the flags of the applied commit.
//!
//! - `POST /ofrep/v1/evaluate/flags/{key}`: one flag. 200 with `key`, `value`, `reason`,
//!   `variant`, `metadata` (no `value` nor `variant` when the caller's default applies, for a
//!   flag without default variant); 404 `FLAG_NOT_FOUND` for an unknown flag and, as flagd
//!   answers, for a disabled one (so every provider uses its default); 400 with `errorCode` and
//!   `errorDetails` for a request that is not a JSON object or a context that is not an
//!   object (`INVALID_CONTEXT`) and for a flag whose evaluation failed (`PARSE_ERROR`,
//!   `GENERAL`).
//! - `POST /ofrep/v1/evaluate/flags`: every enabled flag, `{"flags": [...]}` with per-flag
//!   errors in place, and an `ETag` (the commit's flags and the request's context); a request
//!   whose `If-None-Match` names it gets 304 and no body.
//! - `GET /ofrep/v1/configuration`: what this server supports, for providers that ask.
//!
//! Every request holds one `Arc` of the served flags from start to end, so it sees one
//! commit's flags. Evaluation keys (`Authorization: Bearer KEY` or `X-API-Key: KEY`) are read
//! only; the admin token is not one of them. With no keys configured, evaluation is open, as
//! flagd's is. CORS answers browsers' preflights and lets them read `ETag`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gauntlet_flags::{Context, ErrorCode, Evaluation, Flags, Reason};
use gauntlet_reconcile::ServedFlags;
use gauntlet_runtime::Runtime;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Shared;

/// Read-only keys that may evaluate flags; empty means evaluation is open.
#[derive(Clone, Default)]
pub struct EvaluationKeys(Arc<Vec<String>>);

impl EvaluationKeys {
    /// Keys from a key file's text: one per line; blank lines and `#` comments are skipped.
    ///
    /// ```
    /// let keys = gauntlet_api::EvaluationKeys::parse("# web\nk-1\n\n  k-2  \n");
    /// assert_eq!(keys.len(), 2);
    /// ```
    pub fn parse(text: &str) -> Self {
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        EvaluationKeys(Arc::new(keys))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|k| k == key)
    }

    /// Whether `presented` is one of the keys, comparing each in constant time.
    fn accepts(&self, presented: &str) -> bool {
        let mut ok = false;
        for key in self.0.iter() {
            ok |= bool::from(presented.as_bytes().ct_eq(key.as_bytes()));
        }
        ok
    }
}

/// The key a request presents: a bearer token or `X-API-Key`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
}

pub(crate) async fn require_key<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    request: Request,
    next: Next,
) -> Response {
    let keys = &state.config.evaluation_keys;
    if keys.is_empty() {
        return next.run(request).await;
    }
    match presented_key(request.headers()) {
        Some(key) if keys.accepts(key.trim()) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"errorDetails": "missing or unknown evaluation key: send `Authorization: Bearer KEY` or `X-API-Key: KEY` with a key from the controller's --flags-keys-file"})),
        )
            .into_response(),
    }
}

const ALLOWED_HEADERS: &str = "Authorization, X-API-Key, If-None-Match, Content-Type";

/// CORS for browser providers: preflights are answered here (before any key is asked for,
/// as browsers send none), and every answer lets any origin read it and its `ETag`.
pub(crate) async fn cors(request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let mut response = if request.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(request).await
    };
    if origin.is_some() {
        let h = response.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("ETag"),
        );
    }
    response
}

/// A request body: `{"context": {...}}`, the context optional. The context's JSON text is
/// kept for the bulk ETag.
struct EvaluationRequest {
    context: Value,
}

/// An OFREP error answer: `{"key"?, "errorCode", "errorDetails"}`.
fn failure(status: StatusCode, key: Option<&str>, code: ErrorCode, details: String) -> Response {
    let mut body = Map::new();
    if let Some(key) = key {
        body.insert("key".into(), key.into());
    }
    body.insert("errorCode".into(), code.as_str().into());
    body.insert("errorDetails".into(), details.into());
    (status, Json(Value::Object(body))).into_response()
}

fn read_request(body: &Bytes) -> Result<EvaluationRequest, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(EvaluationRequest {
            context: Value::Null,
        });
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    let Value::Object(mut fields) = value else {
        return Err("the request body must be a JSON object: {\"context\": {...}}".into());
    };
    let context = fields.remove("context").unwrap_or(Value::Null);
    if !matches!(context, Value::Object(_) | Value::Null) {
        return Err(format!(
            "`context` must be an object of attributes, not {}",
            json_type(&context)
        ));
    }
    Ok(EvaluationRequest { context })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn context_of(request: EvaluationRequest) -> Result<Context, String> {
    Context::from_value(request.context).map_err(|e| e.to_string())
}

/// The context of a request body `{"context": {...}}`.
pub(crate) fn parse_context(body: &Bytes) -> Result<Context, String> {
    read_request(body).and_then(context_of)
}

/// The OFREP body of one successful evaluation (no `value` when the caller's default applies).
pub(crate) fn success(key: &str, e: &Evaluation<'_>) -> Value {
    let mut body = Map::new();
    body.insert("key".into(), key.into());
    if let Some(value) = e.value {
        body.insert("value".into(), value.clone());
    }
    body.insert("reason".into(), e.reason.as_str().into());
    if let Some(variant) = e.variant {
        body.insert("variant".into(), variant.into());
    }
    body.insert("metadata".into(), Value::Object(e.metadata.clone()));
    Value::Object(body)
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub(crate) async fn evaluate_one<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let served = state.controller.flags();
    evaluate_in(&served.flags, &key, &body)
}

fn evaluate_in(flags: &Flags, key: &str, body: &Bytes) -> Response {
    let context = match read_request(body).and_then(context_of) {
        Ok(c) => c,
        Err(details) => {
            return failure(
                StatusCode::BAD_REQUEST,
                Some(key),
                ErrorCode::InvalidContext,
                details,
            )
        }
    };
    let evaluation = flags.evaluate(key, &context);
    if evaluation.reason == Reason::Disabled {
        return failure(
            StatusCode::NOT_FOUND,
            Some(key),
            ErrorCode::FlagNotFound,
            format!("flag `{key}` is disabled"),
        );
    }
    match &evaluation.error {
        None => (StatusCode::OK, Json(success(key, &evaluation))).into_response(),
        Some(error) => {
            let status = if error.code == ErrorCode::FlagNotFound {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
            failure(status, Some(key), error.code, error.message.clone())
        }
    }
}

/// `POST /ofrep/v1/evaluate/flags`.
pub(crate) async fn evaluate_all<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let served = state.controller.flags();
    bulk(&served, &headers, &body)
}

fn bulk(served: &ServedFlags, headers: &HeaderMap, body: &Bytes) -> Response {
    let request = match read_request(body) {
        Ok(r) => r,
        Err(details) => {
            return failure(
                StatusCode::BAD_REQUEST,
                None,
                ErrorCode::InvalidContext,
                details,
            )
        }
    };
    let etag = etag(&served.digest, &request.context);
    if if_none_match(headers, &etag) {
        return Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .header(header::ETAG, &etag)
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::NOT_MODIFIED.into_response());
    }
    let context = match context_of(request) {
        Ok(c) => c,
        Err(details) => {
            return failure(
                StatusCode::BAD_REQUEST,
                None,
                ErrorCode::InvalidContext,
                details,
            )
        }
    };
    let flags: Vec<Value> = served
        .flags
        .evaluate_all(&context)
        // flagd leaves disabled flags out of bulk answers: the provider then uses its default.
        .filter(|(_, e)| e.reason != Reason::Disabled)
        .map(|(flag, e)| match &e.error {
            None => success(flag.key(), &e),
            Some(error) => json!({
                "key": flag.key(),
                "errorCode": error.code.as_str(),
                "errorDetails": error.message,
            }),
        })
        .collect();
    (
        StatusCode::OK,
        [(header::ETAG, etag)],
        Json(json!({ "flags": flags })),
    )
        .into_response()
}

/// A strong ETag of the served flags and the context: either changing changes the answer.
fn etag(digest: &str, context: &Value) -> String {
    let mut hash = Sha256::new();
    hash.update(digest.as_bytes());
    hash.update([0]);
    hash.update(context.to_string().as_bytes());
    let hex = hex::encode(hash.finalize());
    format!("\"{}\"", &hex[..32])
}

/// Whether `If-None-Match` names `etag` (or is `*`); weak tags compare equal too (RFC 9110's
/// weak comparison, which `If-None-Match` uses).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// `GET /ofrep/v1/configuration`.
pub(crate) async fn configuration() -> Json<Value> {
    Json(json!({
        "name": "gauntlet",
        "capabilities": {
            "cacheInvalidation": {"polling": {"enabled": true, "minPollingIntervalMs": 1000}},
            "flagEvaluation": {"supportedTypes": ["boolean", "string", "int", "float", "object"]}
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gauntlet_flags::FlagSet;

    fn flags() -> ServedFlags {
        let set = FlagSet::from_json(
            r#"{"flags": {
              "on-off": {"state": "ENABLED", "variants": {"on": true, "off": false},
                         "defaultVariant": "off",
                         "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "on"]}},
              "gone": {"state": "DISABLED", "variants": {"a": 1}, "defaultVariant": "a"}
            }}"#,
        )
        .unwrap();
        ServedFlags {
            flags: Arc::new(Flags::from_sets([("f.yaml", set)]).unwrap()),
            digest: "d1".into(),
            commit: "c1".into(),
        }
    }

    async fn body_of(r: Response) -> (StatusCode, Value) {
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, value)
    }

    #[tokio::test]
    async fn one_flag_answers_value_variant_and_reason() {
        let f = flags();
        let body = Bytes::from(r#"{"context": {"targetingKey": "u1", "plan": "pro"}}"#);
        let (status, v) = body_of(evaluate_in(&f.flags, "on-off", &body)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            v,
            json!({"key": "on-off", "value": true, "variant": "on",
                   "reason": "TARGETING_MATCH", "metadata": {}})
        );
    }

    #[tokio::test]
    async fn a_disabled_flag_is_not_found_as_flagd_answers() {
        let f = flags();
        let (status, v) = body_of(evaluate_in(&f.flags, "gone", &Bytes::new())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(v["errorCode"], "FLAG_NOT_FOUND");
        assert_eq!(v["errorDetails"], "flag `gone` is disabled");
    }

    #[tokio::test]
    async fn unknown_flag_is_404_and_bad_context_is_400() {
        let f = flags();
        let (status, v) = body_of(evaluate_in(&f.flags, "nope", &Bytes::from("{}"))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(v["errorCode"], "FLAG_NOT_FOUND");
        assert_eq!(v["key"], "nope");
        for bad in [r#"{"context": 3}"#, "not json", "[1]"] {
            let (status, v) = body_of(evaluate_in(&f.flags, "on-off", &Bytes::from(bad))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(v["errorCode"], "INVALID_CONTEXT", "{bad}");
        }
    }

    #[tokio::test]
    async fn bulk_leaves_disabled_flags_out_and_honours_if_none_match() {
        let f = flags();
        let body = Bytes::from(r#"{"context": {"targetingKey": "u1"}}"#);
        let r = bulk(&f, &HeaderMap::new(), &body);
        let etag = r.headers()[header::ETAG].to_str().unwrap().to_string();
        let (status, v) = body_of(r).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["flags"].as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v["flags"][0]["reason"], "DEFAULT");

        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"x\", W/{etag}")).unwrap(),
        );
        let (status, v) = body_of(bulk(&f, &headers, &body)).await;
        assert_eq!((status, v), (StatusCode::NOT_MODIFIED, Value::Null));

        let other = Bytes::from(r#"{"context": {"targetingKey": "u2"}}"#);
        assert_eq!(bulk(&f, &headers, &other).status(), StatusCode::OK);
        let changed = ServedFlags {
            digest: "d2".into(),
            ..f.clone()
        };
        assert_eq!(bulk(&changed, &headers, &body).status(), StatusCode::OK);
    }

    #[test]
    fn keys_are_read_one_per_line_and_compared_whole() {
        let keys = EvaluationKeys::parse("a-key\n# comment\n\nb-key\n");
        assert!(keys.accepts("a-key") && keys.accepts("b-key"));
        assert!(!keys.accepts("a-ke") && !keys.accepts("") && !keys.accepts("# comment"));
    }
}
