//! The admin API: how the controller configures the proxy and reads its metrics.
//!
//! - `GET /admin/v1/config`: the configuration being served (its `version` included).
//! - `PUT /admin/v1/config`: validate, compile, persist, then serve a new configuration;
//!   `400` with every problem (the old configuration keeps serving), `409` naming the
//!   application whose `listen` address cannot be bound, or `200` with the version.
//! - `GET /admin/v1/metrics`: a JSON snapshot per (application, revision), with the served
//!   `version` and `failureSeq`, the failures (5xx, connection errors, timeouts) counted since
//!   the proxy started. Cheap (atomic loads, no lock held across applications): the controller
//!   reads it ten times a second and takes deltas between reads. With
//!   `?afterFailure=N&waitMs=M` the answer waits until more than `N` failures were counted or
//!   `M` ms (at most 1,000) have passed, so a reader learns of a failure within a
//!   millisecond without polling faster.
//! - `GET /admin/v1/endpoints`: every endpoint with its requests in flight and whether it is
//!   draining or ejected, with the served `version`: the drain report the controller waits on
//!   before it stops an instance.
//! - `GET /metrics`: Prometheus text. Unauthenticated, as exporters usually are: it reveals
//!   application and revision names and counts, never configuration or addresses. Bind the
//!   admin address to loopback (the default) to keep it local.
//!
//! Every `/admin/v1` route requires `Authorization: Bearer <token>` (`401` otherwise); the
//! token is compared in constant time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::ProxyConfig;
use crate::metrics::{self, render_prometheus};
use crate::persist;
use crate::server::{ApplyError, Proxy};

struct Admin {
    proxy: Proxy,
    token: String,
    state_dir: PathBuf,
}

/// The admin API's routes over `proxy`, persisting accepted configurations under `state_dir`.
pub fn router(proxy: Proxy, token: String, state_dir: PathBuf) -> Router {
    let admin = Arc::new(Admin {
        proxy,
        token,
        state_dir,
    });
    let authenticated = Router::new()
        .route("/admin/v1/config", get(get_config).put(put_config))
        .route("/admin/v1/metrics", get(get_metrics))
        .route("/admin/v1/endpoints", get(get_endpoints))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&admin),
            require_token,
        ));
    Router::new()
        .route("/metrics", get(prometheus))
        .merge(authenticated)
        .with_state(admin)
}

async fn require_token(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let valid =
        !admin.token.is_empty() && bool::from(presented.as_bytes().ct_eq(admin.token.as_bytes()));
    if valid {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "missing or wrong bearer token"})),
        )
            .into_response()
    }
}

async fn get_config(State(admin): State<Arc<Admin>>) -> Json<ProxyConfig> {
    Json(admin.proxy.config())
}

async fn put_config(State(admin): State<Arc<Admin>>, body: Bytes) -> Response {
    let config: ProxyConfig = match serde_json::from_slice(&body) {
        Ok(config) => config,
        Err(e) => return bad_request(vec![e.to_string()]),
    };
    let prepared = match admin.proxy.prepare(config).await {
        Ok(prepared) => prepared,
        Err(ApplyError::Invalid(invalid)) => {
            return bad_request(invalid.0.iter().map(ToString::to_string).collect())
        }
        Err(ApplyError::Bind { app, addr, source }) => {
            // Not a malformed configuration: the address is held by someone else. The
            // controller leaves this application out and pushes the rest.
            let error = format!("cannot listen on {addr} for app `{app}`: {source}");
            return (
                StatusCode::CONFLICT,
                Json(json!({"errors": [error], "bind": {"app": app, "addr": addr}})),
            )
                .into_response();
        }
    };
    let state_dir = admin.state_dir.clone();
    let to_save = prepared.config().clone();
    let saved = tokio::task::spawn_blocking(move || persist::save(&state_dir, &to_save)).await;
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return internal(e.to_string()),
        Err(e) => return internal(e.to_string()),
    }
    let version = prepared.config().version;
    admin.proxy.commit(prepared);
    Json(json!({"version": version})).into_response()
}

/// `?afterFailure=N&waitMs=M` on `GET /admin/v1/metrics`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetricsQuery {
    after_failure: Option<u64>,
    wait_ms: Option<u64>,
}

/// The longest a metrics reader may wait for a failure.
const MAX_FAILURE_WAIT: Duration = Duration::from_secs(1);

async fn get_metrics(
    State(admin): State<Arc<Admin>>,
    Query(query): Query<MetricsQuery>,
) -> Json<serde_json::Value> {
    let failure_seq = match query.after_failure {
        Some(after) => {
            let wait = Duration::from_millis(query.wait_ms.unwrap_or(0)).min(MAX_FAILURE_WAIT);
            metrics::wait_for_failure(after, wait).await
        }
        None => metrics::failure_seq(),
    };
    Json(admin.proxy.with_metrics(|version, entries| {
        let revisions: Vec<_> = entries
            .iter()
            .map(|(app, revision, metrics)| {
                json!({"app": app, "revision": revision, "metrics": metrics.snapshot()})
            })
            .collect();
        json!({"version": version, "failureSeq": failure_seq, "revisions": revisions})
    }))
}

async fn get_endpoints(State(admin): State<Arc<Admin>>) -> Json<serde_json::Value> {
    // The version read on both sides of the loads: equal, and they belong to that version.
    let mut attempts = 0;
    loop {
        let version = admin.proxy.version();
        let endpoints = admin.proxy.endpoint_loads();
        attempts += 1;
        if admin.proxy.version() == version || attempts == 3 {
            return Json(json!({"version": version, "endpoints": endpoints}));
        }
    }
}

async fn prometheus(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let text = admin
        .proxy
        .with_metrics(|_, entries| render_prometheus(entries));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

fn bad_request(errors: Vec<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid proxy configuration; the previous one is still served", "errors": errors})),
    )
        .into_response()
}

fn internal(error: String) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": format!("the configuration was not applied: {error}")})),
    )
        .into_response()
}
