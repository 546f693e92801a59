//! `/api/v1/chaos`: start, watch, abort and pause chaos experiment runs.
//!
//! - `POST /api/v1/chaos/experiments/{name}/run`: start a run (`202 {"run": ID}`); with
//!   `?dryRun=true`, the plan (targets, activities, timing) and nothing touched.
//! - `GET /api/v1/chaos/runs`: every run, newest last, whether chaos is paused, and each
//!   scheduled experiment with its next fire.
//! - `GET /api/v1/chaos/runs/{id}`: one run's journal (live while it runs).
//! - `POST /api/v1/chaos/runs/{id}/abort`: end the run: faults removed, rollbacks run.
//! - `POST /api/v1/chaos/pause-all` and `/resume-all`: stop every run and refuse new ones,
//!   or allow them again.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use gauntlet_reconcile::ChaosError;
use gauntlet_runtime::Runtime;
use serde::Deserialize;

use crate::{user, ApiError, Shared};

fn status_of(e: &ChaosError) -> StatusCode {
    match e {
        ChaosError::UnknownExperiment(_) | ChaosError::UnknownRun(_) => StatusCode::NOT_FOUND,
        ChaosError::AlreadyRunning { .. } | ChaosError::Paused => StatusCode::CONFLICT,
        ChaosError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ChaosError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn api_error(e: ChaosError) -> ApiError {
    ApiError(status_of(&e), e.to_string())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunQuery {
    #[serde(default)]
    dry_run: bool,
}

pub(crate) async fn run<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    Path(name): Path<String>,
    Query(query): Query<RunQuery>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let controller = &state.controller;
    if query.dry_run {
        let plan = controller.chaos_plan(&name).map_err(api_error)?;
        return Ok((StatusCode::OK, Json(serde_json::json!({"plan": plan}))));
    }
    let id = controller
        .chaos_run(&name, &user(&headers))
        .await
        .map_err(api_error)?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"run": id}))))
}

pub(crate) async fn list<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
) -> Json<serde_json::Value> {
    let controller = &state.controller;
    let schedules: Vec<serde_json::Value> = controller
        .chaos_schedules()
        .into_iter()
        .map(|(experiment, schedule, next)| {
            serde_json::json!({"experiment": experiment, "schedule": schedule, "nextFireMs": next})
        })
        .collect();
    Json(serde_json::json!({
        "paused": controller.chaos_paused(),
        "schedules": schedules,
        "runs": controller.chaos_runs(),
    }))
}

pub(crate) async fn get<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    state
        .controller
        .chaos_run_view(&id)
        .map(Json)
        .ok_or_else(|| api_error(ChaosError::UnknownRun(id)))
}

pub(crate) async fn abort<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    state
        .controller
        .chaos_abort(&id, &user(&headers))
        .map_err(api_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"status": "abort requested"})),
    ))
}

pub(crate) async fn pause_all<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let aborted = state.controller.chaos_pause_all(&user(&headers));
    Json(serde_json::json!({"paused": true, "aborted": aborted}))
}

pub(crate) async fn resume_all<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
) -> Json<serde_json::Value> {
    state.controller.chaos_resume_all();
    Json(serde_json::json!({"paused": false}))
}
