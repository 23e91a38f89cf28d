//! Per-user limits in the shapes of RabbitMQ's management API: `/api/user-limits`,
//! `/api/user-limits/{user}` and `/api/user-limits/{user}/{name}` (`max-connections`,
//! `max-channels`). Every management user may read them, as in RabbitMQ; administrators
//! change them.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use serde_json::{Value, json};

use super::http::{ApiError, ApiResult, Caller, no_content};
use super::state::Mgmt;
use crate::auth::User;
use crate::store::definitions::UserLimits;

pub fn routes() -> Router<Arc<Mgmt>> {
    Router::new()
        .route("/api/user-limits", get(all_limits))
        .route("/api/user-limits/{user}", get(user_limits))
        .route(
            "/api/user-limits/{user}/{name}",
            put(set_limit).delete(clear_limit),
        )
}

/// `{"user": …, "value": {…}}`, for a user with limits; RabbitMQ lists no others.
fn limits_json(user: &User) -> Option<Value> {
    (!user.limits.is_empty()).then(|| json!({"user": user.name, "value": user.limits}))
}

async fn all_limits(State(m): State<Arc<Mgmt>>, _caller: Caller) -> ApiResult {
    let items: Vec<Value> = m
        .broker
        .users()
        .iter()
        .filter_map(|u| limits_json(u))
        .collect();
    Ok(Json(items).into_response())
}

async fn user_limits(
    State(m): State<Arc<Mgmt>>,
    _caller: Caller,
    Path(user): Path<String>,
) -> ApiResult {
    let user = m.broker.user(&user).ok_or_else(ApiError::not_found)?;
    Ok(Json(limits_json(&user).into_iter().collect::<Vec<_>>()).into_response())
}

/// How RabbitMQ prints a value it did not take: a string as an Erlang binary.
fn erlang_term(value: &Value) -> String {
    match value {
        Value::String(s) => format!("<<\"{s}\">>"),
        other => other.to_string(),
    }
}

/// `PUT` with `{"value": N}`: an integer, as RabbitMQ takes it (not a string of digits).
async fn set_limit(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((user, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require_admin()?;
    super::http::check_json_values(&body)?;
    let body: Value =
        serde_json::from_slice(&body).map_err(|_| ApiError::bad_request("not_json"))?;
    let value = body
        .get("value")
        .ok_or_else(|| ApiError::bad_request("[{key_missing,value}]"))?;
    let mut limits = UserLimits::default();
    let Some(slot) = limits.slot(&name) else {
        return Err(ApiError::bad_request(format!(
            "Unrecognised terms [{{<<\"{name}\">>,{}}}] in user-limits",
            erlang_term(value)
        )));
    };
    let number = value.as_i64().ok_or_else(|| {
        ApiError::bad_request(format!(
            "{name} should be a number, actually was {}",
            erlang_term(value)
        ))
    })?;
    *slot = Some(number);
    m.broker
        .set_user_limits(&user, limits)
        .map_err(ApiError::bad_request)?;
    Ok(no_content())
}

/// `DELETE`: a limit that was not set clears nothing and is no error, as in RabbitMQ.
async fn clear_limit(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((user, name)): Path<(String, String)>,
) -> ApiResult {
    caller.require_admin()?;
    m.broker
        .clear_user_limit(&user, Some(&name))
        .map_err(ApiError::from_message)?;
    Ok(no_content())
}
