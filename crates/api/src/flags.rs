//! The admin API's view of the served flags (`gauntlet flags list` and `gauntlet flags get`),
//! behind the admin token, and `gauntlet flags eval`'s evaluation.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use gauntlet_flags::{Flag, State as FlagState};
use gauntlet_runtime::Runtime;
use serde_json::{json, Value};

use crate::{ApiError, Shared};

/// One flag as the admin API shows it.
fn describe(flag: &Flag) -> Value {
    let variants: serde_json::Map<String, Value> = flag
        .variants()
        .map(|(name, value)| (name.to_string(), value.clone()))
        .collect();
    json!({
        "key": flag.key(),
        "state": match flag.state() {
            FlagState::Enabled => "ENABLED",
            FlagState::Disabled => "DISABLED",
        },
        "type": flag.value_type().as_str(),
        "variants": variants,
        "defaultVariant": flag.default_variant(),
        "targeting": flag.targeting(),
        "metadata": flag.metadata(),
        "source": flag.source(),
    })
}

/// `GET /api/v1/flags`: the commit the served flags come from, their digest, every flag.
pub(crate) async fn list<R: Runtime + Clone>(State(state): State<Shared<R>>) -> Json<Value> {
    let served = state.controller.flags();
    let flags: Vec<Value> = served.flags.iter().map(describe).collect();
    Json(json!({
        "commit": served.commit,
        "digest": served.digest,
        "flags": flags,
    }))
}

/// `GET /api/v1/flags/{key}`.
pub(crate) async fn get<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let served = state.controller.flags();
    served
        .flags
        .get(&key)
        .map(|flag| Json(describe(flag)))
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no flag named {key} in the applied commit"),
            )
        })
}

/// `POST /api/v1/flags/{key}/evaluate` with `{"context": {...}}`: the evaluation as OFREP
/// would serve it, with `errorCode` and `errorDetails` in the body (200) when the flag's
/// evaluation failed; 404 for an unknown flag and 400 for a bad context, as `{"error": ...}`.
pub(crate) async fn evaluate<R: Runtime + Clone>(
    State(state): State<Shared<R>>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let context =
        crate::ofrep::parse_context(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let served = state.controller.flags();
    if served.flags.get(&key).is_none() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no flag named {key} in the applied commit"),
        ));
    }
    let evaluation = served.flags.evaluate(&key, &context);
    let mut body = crate::ofrep::success(&key, &evaluation);
    if let (Some(error), Value::Object(fields)) = (&evaluation.error, &mut body) {
        fields.insert("errorCode".into(), error.code.as_str().into());
        fields.insert("errorDetails".into(), error.message.clone().into());
    }
    Ok(Json(body))
}
