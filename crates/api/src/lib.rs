//! The controller's HTTP API (JSON over HTTP/1.1, default `127.0.0.1:7070`).
//!
//! Every route but `GET /api/v1/healthz` and the signed `POST /api/v1/webhooks/git` needs
//! `Authorization: Bearer <token>`, compared in constant time. The routes are documented in
//! `docs/api.md`; the CLI is a thin client of them.
//!
//! Flags are served on the same listener: OFREP under `/ofrep/v1/` (`ofrep.rs`), with its own
//! read-only evaluation keys and CORS, and the admin view under `/api/v1/flags` (`flags.rs`).
//!
//! The router only answers; serving it is the caller's job. `POST /api/v1/shutdown` sets
//! [`ApiConfig::shutdown`] and answers 202 at once, so the caller should serve with
//! `axum::serve(..).with_graceful_shutdown(..)` on that signal: the 202 and every call in
//! flight are then answered before the controller stops.

use std::sync::Arc;

mod chaos;
mod flags;
mod ofrep;

pub use ofrep::EvaluationKeys;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gauntlet_reconcile::Controller;
use gauntlet_runtime::Runtime;
use gauntlet_source::webhook;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

/// Header the CLI sets to name the person acting, for the audit log. It is self-declared by
/// whoever holds the token and not verified: the audit log records it as a claim.
pub const USER_HEADER: &str = "x-gauntlet-user";

/// How a running controller is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Stop the controller; instances keep running and are re-adopted on the next start.
    Controller,
    /// Stop every instance first, then the controller.
    Everything,
}

/// What the API needs besides the controller.
#[derive(Clone)]
pub struct ApiConfig {
    /// The admin bearer token.
    pub token: String,
    /// Secret shared with the Git host for webhooks; without one, webhooks are refused.
    pub webhook_secret: Option<Vec<u8>>,
    /// Set when a client asks the controller to stop, just before the handler answers 202;
    /// serve the router with a graceful shutdown on it so that answer is delivered.
    pub shutdown: watch::Sender<Option<Shutdown>>,
    /// Keys that may evaluate flags over OFREP (never the admin API); empty: OFREP is open.
    pub evaluation_keys: EvaluationKeys,
}

struct AppState<R> {
    controller: Controller<R>,
    config: ApiConfig,
}

pub(crate) type Shared<R> = Arc<AppState<R>>;

/// The API's routes.
pub fn router<R: Runtime + Clone>(controller: Controller<R>, config: ApiConfig) -> Router {
    let state: Shared<R> = Arc::new(AppState { controller, config });
    let authed = Router::new()
        .route("/api/v1/status", get(status::<R>))
        .route("/api/v1/apps/{name}", get(app::<R>))
        .route("/api/v1/apps/{name}/rollout", get(rollout::<R>))
        .route(
            "/api/v1/apps/{name}/rollout/{command}",
            post(rollout_command::<R>),
        )
        .route("/api/v1/sync", post(sync::<R>))
        .route("/api/v1/diff", get(diff::<R>))
        .route("/api/v1/history", get(history::<R>))
        .route("/api/v1/shutdown", post(shutdown::<R>))
        .route("/api/v1/flags", get(flags::list::<R>))
        .route("/api/v1/flags/{key}", get(flags::get::<R>))
        .route("/api/v1/flags/{key}/evaluate", post(flags::evaluate::<R>))
        .route(
            "/api/v1/chaos/experiments/{name}/run",
            post(chaos::run::<R>),
        )
        .route("/api/v1/chaos/runs", get(chaos::list::<R>))
        .route("/api/v1/chaos/runs/{id}", get(chaos::get::<R>))
        .route("/api/v1/chaos/runs/{id}/abort", post(chaos::abort::<R>))
        .route("/api/v1/chaos/pause-all", post(chaos::pause_all::<R>))
        .route("/api/v1/chaos/resume-all", post(chaos::resume_all::<R>))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_token::<R>,
        ));
    let ofrep = Router::new()
        .route(
            "/ofrep/v1/evaluate/flags/{key}",
            post(ofrep::evaluate_one::<R>),
        )
        .route("/ofrep/v1/evaluate/flags", post(ofrep::evaluate_all::<R>))
        .route("/ofrep/v1/configuration", get(ofrep::configuration))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ofrep::require_key::<R>,
        ))
        .layer(middleware::from_fn(ofrep::cors));
    Router::new()
        .route(
            "/api/v1/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/api/v1/webhooks/git", post(webhook_git::<R>))
        .merge(authed)
        .merge(ofrep)
        .with_state(state)
}

/// An error as the API returns it: a status and `{"error": "..."}`.
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({"error": self.1}))).into_response()
    }
}

async fn require_token<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok: bool = presented
        .as_bytes()
        .ct_eq(state.config.token.as_bytes())
        .into();
    if !ok {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (see the token file in the state directory, or GAUNTLET_TOKEN)".into(),
        ));
    }
    Ok(next.run(request).await)
}

fn user(headers: &HeaderMap) -> String {
    headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .unwrap_or("api")
        .to_string()
}

async fn status<R: Runtime + Clone>(State(state): State<Shared<R>>) -> impl IntoResponse {
    Json(state.controller.status())
}

async fn app<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    Path(name): Path<String>,
) -> Result<Json<gauntlet_reconcile::AppStatus>, ApiError> {
    state
        .controller
        .status()
        .apps
        .into_iter()
        .find(|a| a.name == name)
        .map(Json)
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no application named {name} in the applied commit"),
            )
        })
}

async fn rollout<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    Path(name): Path<String>,
) -> Result<Json<gauntlet_reconcile::RolloutView>, ApiError> {
    state.controller.rollout(&name).map(Json).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("application {name} has no rollout: it is unknown or has no strategy"),
        )
    })
}

/// `promote`, `promote-full`, `abort`, `retry`, `pause` or `resume`, recorded with the caller.
async fn rollout_command<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    Path((name, command)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    use gauntlet_rollout::engine::CommandKind;
    let kind = match command.as_str() {
        "promote" => CommandKind::Promote,
        "promote-full" => CommandKind::PromoteFull,
        "abort" => CommandKind::Abort,
        "retry" => CommandKind::Retry,
        "pause" => CommandKind::Pause,
        "resume" => CommandKind::Resume,
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown rollout command `{other}`: use promote, promote-full, abort, retry, pause or resume"
                ),
            ))
        }
    };
    state
        .controller
        .rollout_command(&name, kind, &user(&headers))
        .await
        .map_err(|e| match e {
            gauntlet_reconcile::controller::ControllerError::NoRollout(_) => {
                ApiError(StatusCode::NOT_FOUND, e.to_string())
            }
            other => ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"status": format!("{command} requested")})),
    ))
}

async fn sync<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    state
        .controller
        .sync(&user(&headers))
        .await
        .map(Json)
        .map_err(|e| ApiError(StatusCode::GATEWAY_TIMEOUT, e.to_string()))
}

async fn diff<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
) -> Result<impl IntoResponse, ApiError> {
    state
        .controller
        .diff()
        .await
        .map(Json)
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))
}

#[derive(Deserialize)]
struct HistoryQuery {
    app: Option<String>,
    limit: Option<usize>,
}

async fn history<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    Query(q): Query<HistoryQuery>,
) -> Result<impl IntoResponse, ApiError> {
    state
        .controller
        .store()
        .history(q.app.as_deref(), q.limit.unwrap_or(100))
        .map(Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ShutdownRequest {
    #[serde(default)]
    stop_instances: bool,
}

async fn shutdown<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    body: Option<Json<ShutdownRequest>>,
) -> impl IntoResponse {
    let req = body.map(|b| b.0).unwrap_or_default();
    let what = if req.stop_instances {
        Shutdown::Everything
    } else {
        Shutdown::Controller
    };
    state.config.shutdown.send_replace(Some(what));
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"status": "stopping"})),
    )
}

/// A push webhook from GitHub (`X-Hub-Signature-256`) or GitLab (`X-Gitlab-Token`). A valid
/// one triggers an immediate fetch; the body is not trusted for anything else.
async fn webhook_git<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let Some(secret) = &state.config.webhook_secret else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "webhooks are disabled: start the controller with --webhook-secret-file or GAUNTLET_WEBHOOK_SECRET".into(),
        ));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let valid = if let Some(sig) = header("x-hub-signature-256") {
        webhook::verify_github(secret, &body, sig)
    } else if let Some(token) = header("x-gitlab-token") {
        webhook::verify_gitlab(secret, token)
    } else {
        false
    };
    if !valid {
        tracing::warn!("webhook with a missing or bad signature refused");
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or bad webhook signature".into(),
        ));
    }
    state.controller.trigger_fetch();
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"status": "fetch triggered"})),
    ))
}
