//! Users and permissions in the shapes of RabbitMQ's management API (`/api/users`,
//! `/api/permissions`, `/api/topic-permissions`). Administrators only.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{ApiError, ApiResult, Caller, body_or_empty, created, no_content};
use super::list::{List, list};
use super::state::Mgmt;
use crate::auth;
use crate::broker::Broker;
use crate::store::definitions::UserLimits;

pub fn routes() -> Router<Arc<Mgmt>> {
    Router::new()
        .route("/api/users", get(list_users))
        .route(
            "/api/users/without-permissions",
            get(users_without_permissions),
        )
        .route("/api/users/bulk-delete", post(bulk_delete))
        .route(
            "/api/users/{name}",
            get(show_user).put(put_user).delete(delete_user),
        )
        .route("/api/users/{name}/permissions", get(user_permissions))
        .route(
            "/api/users/{name}/topic-permissions",
            get(user_topic_permissions),
        )
        .route("/api/permissions", get(list_permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(show_permissions)
                .put(put_permissions)
                .delete(delete_permissions),
        )
        .route("/api/topic-permissions", get(list_topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(show_topic_permissions)
                .put(put_topic_permissions)
                .delete(delete_topic_permissions),
        )
        .route(
            "/api/topic-permissions/{vhost}/{user}/{exchange}",
            delete(delete_topic_permissions_on),
        )
}

fn user_json(u: &auth::User) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing.name(),
        "tags": u.tags,
        "limits": u.limits,
    })
}

fn users_json(broker: &Broker) -> Vec<Value> {
    let mut users = broker.users();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    users.iter().map(|u| user_json(u)).collect()
}

async fn list_users(State(m): State<Arc<Mgmt>>, caller: Caller, Query(q): List) -> ApiResult {
    caller.require_admin()?;
    list(users_json(&m.broker), &q)
}

async fn users_without_permissions(State(m): State<Arc<Mgmt>>, caller: Caller) -> ApiResult {
    caller.require_admin()?;
    let items: Vec<Value> = users_json(&m.broker)
        .into_iter()
        .filter(|u| {
            let name = u["name"].as_str().unwrap_or_default();
            m.broker
                .access
                .grants(name)
                .is_none_or(|g| g.vhosts.is_empty())
        })
        .collect();
    Ok(Json(items).into_response())
}

async fn show_user(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    caller.require_admin()?;
    let user = m.broker.user(&name).ok_or_else(ApiError::not_found)?;
    Ok(Json(user_json(&user)).into_response())
}

/// The body of `PUT /api/users/{name}`: `tags` as a list or a comma-separated string.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PutUser {
    password: Option<String>,
    password_hash: Option<String>,
    hashing_algorithm: Option<String>,
    tags: Option<Value>,
    /// Merged into the user's limits, as RabbitMQ's `put_user` does.
    limits: Option<UserLimits>,
}

fn tags_of(value: &Option<Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => auth::parse_tags(s),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

async fn put_user(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require_admin()?;
    let req: PutUser = body_or_empty(&body)?;
    let broker = &m.broker;
    // Same as RabbitMQ 3.10 (checked on a node): `tags` must be given, even empty. Taking
    // a missing one as none stripped `administrator` from whoever only changed a password.
    if req.tags.is_none() {
        return Err(ApiError::bad_request("tags_not_present"));
    }
    let tags = tags_of(&req.tags);
    let new = broker.user(&name).is_none();
    let result = match (&req.password, &req.password_hash) {
        (Some(p), _) if new => broker.add_user(&name, p),
        (Some(p), _) => broker.change_password(&name, p),
        (None, Some(hash)) => {
            let algorithm = req
                .hashing_algorithm
                .as_deref()
                .unwrap_or(auth::HASHING_ALGORITHM);
            let hashing = auth::Hashing::from_name(algorithm).ok_or_else(|| {
                ApiError::bad_request(format!("unknown hashing_algorithm {algorithm}"))
            })?;
            broker.put_user_hash(&name, hash, hashing)
        }
        // Same as RabbitMQ: no password, no hash means none, for a new user and an
        // existing one alike (a user who logs in by certificate only).
        (None, None) => broker.put_user_hash(&name, "", auth::Hashing::Sha256),
    };
    result.map_err(ApiError::bad_request)?;
    broker
        .set_user_tags(&name, tags)
        .map_err(ApiError::from_message)?;
    if let Some(limits) = req.limits.filter(|l| !l.is_empty()) {
        broker
            .set_user_limits(&name, limits)
            .map_err(ApiError::from_message)?;
    }
    Ok(created(new))
}

async fn delete_user(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    caller.require_admin()?;
    m.broker.user(&name).ok_or_else(ApiError::not_found)?;
    m.broker
        .delete_user(&name)
        .map_err(ApiError::from_message)?;
    Ok(no_content())
}

#[derive(Debug, Deserialize)]
struct BulkDelete {
    users: Vec<String>,
}

/// `POST /api/users/bulk-delete` with `{"users": [...]}`: users that do not exist are
/// skipped, as in RabbitMQ.
async fn bulk_delete(State(m): State<Arc<Mgmt>>, caller: Caller, body: Bytes) -> ApiResult {
    caller.require_admin()?;
    let req: BulkDelete = super::http::parse_json(&body)?;
    for name in req.users {
        let _ = m.broker.delete_user(&name);
    }
    Ok(no_content())
}

/// Every vhost permission, ordered by vhost then user.
pub fn permissions_json(broker: &Broker) -> Vec<Value> {
    let mut out = Vec::new();
    for (user, grants) in broker.access.all() {
        for (vhost, p) in &grants.vhosts {
            out.push(json!({
                "user": user,
                "vhost": vhost,
                "configure": p.configure.source,
                "write": p.write.source,
                "read": p.read.source,
            }));
        }
    }
    out.sort_by_key(|v| (v["vhost"].to_string(), v["user"].to_string()));
    out
}

/// Every topic permission, ordered by vhost, user and exchange.
pub fn topic_permissions_json(broker: &Broker) -> Vec<Value> {
    let mut out = Vec::new();
    for (user, grants) in broker.access.all() {
        for (vhost, exchanges) in &grants.topics {
            for (exchange, t) in exchanges {
                out.push(json!({
                    "user": user,
                    "vhost": vhost,
                    "exchange": exchange,
                    "write": t.write.source,
                    "read": t.read.source,
                }));
            }
        }
    }
    out.sort_by_key(|v| {
        (
            v["vhost"].to_string(),
            v["user"].to_string(),
            v["exchange"].to_string(),
        )
    });
    out
}

async fn list_permissions(State(m): State<Arc<Mgmt>>, caller: Caller, Query(q): List) -> ApiResult {
    caller.require_admin()?;
    list(permissions_json(&m.broker), &q)
}

async fn user_permissions(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(user): Path<String>,
    Query(q): List,
) -> ApiResult {
    caller.require_admin()?;
    m.broker.user(&user).ok_or_else(ApiError::not_found)?;
    let items = permissions_json(&m.broker)
        .into_iter()
        .filter(|p| p["user"] == user.as_str())
        .collect();
    list(items, &q)
}

async fn user_topic_permissions(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(user): Path<String>,
    Query(q): List,
) -> ApiResult {
    caller.require_admin()?;
    m.broker.user(&user).ok_or_else(ApiError::not_found)?;
    let items = topic_permissions_json(&m.broker)
        .into_iter()
        .filter(|p| p["user"] == user.as_str())
        .collect();
    list(items, &q)
}

async fn show_permissions(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    caller.require_admin()?;
    permissions_json(&m.broker)
        .into_iter()
        .find(|p| p["user"] == user.as_str() && p["vhost"] == vhost.as_str())
        .map(|p| Json(p).into_response())
        .ok_or_else(ApiError::not_found)
}

#[derive(Debug, Deserialize)]
struct PutPermissions {
    configure: String,
    write: String,
    read: String,
}

async fn put_permissions(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require_admin()?;
    let broker = &m.broker;
    // Same as RabbitMQ (`rabbit_mgmt_wm_permission:accept_content`): a user or vhost that
    // does not exist is a bad request, said before the body is looked at.
    let not_found = || ApiError::bad_request("vhost_or_user_not_found");
    if broker.user(&user).is_none() || broker.vhost(&vhost).is_none() {
        return Err(not_found());
    }
    let req: PutPermissions = super::http::parse_json(&body)?;
    let new = broker
        .access
        .grants(&user)
        .is_none_or(|g| !g.vhosts.contains_key(&vhost));
    broker
        .set_permissions(&user, &vhost, &req.configure, &req.write, &req.read)
        .map_err(|e| match e.contains("does not exist") {
            true => not_found(),
            false => ApiError::bad_request(e),
        })?;
    Ok(created(new))
}

async fn delete_permissions(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    caller.require_admin()?;
    let granted = m
        .broker
        .access
        .grants(&user)
        .is_some_and(|g| g.vhosts.contains_key(&vhost));
    if !granted {
        return Err(ApiError::not_found());
    }
    m.broker
        .clear_permissions(&user, &vhost)
        .map_err(ApiError::from_message)?;
    Ok(no_content())
}

async fn list_topic_permissions(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Query(q): List,
) -> ApiResult {
    caller.require_admin()?;
    list(topic_permissions_json(&m.broker), &q)
}

async fn show_topic_permissions(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    caller.require_admin()?;
    let items: Vec<Value> = topic_permissions_json(&m.broker)
        .into_iter()
        .filter(|p| p["user"] == user.as_str() && p["vhost"] == vhost.as_str())
        .collect();
    if items.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(Json(items).into_response())
}

#[derive(Debug, Deserialize)]
struct PutTopicPermissions {
    exchange: String,
    write: String,
    read: String,
}

async fn put_topic_permissions(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require_admin()?;
    // As for permissions (`rabbit_mgmt_wm_topic_permission:accept_content`).
    let not_found = || ApiError::bad_request("vhost_or_user_not_found");
    if m.broker.user(&user).is_none() || m.broker.vhost(&vhost).is_none() {
        return Err(not_found());
    }
    let req: PutTopicPermissions = super::http::parse_json(&body)?;
    m.broker
        .set_topic_permissions(&user, &vhost, &req.exchange, &req.write, &req.read)
        .map_err(|e| match e.contains("does not exist") {
            true => not_found(),
            false => ApiError::bad_request(e),
        })?;
    Ok(created(true))
}

async fn delete_topic_permissions(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    caller.require_admin()?;
    m.broker
        .clear_topic_permissions(&user, &vhost, None)
        .map_err(ApiError::from_message)?;
    Ok(no_content())
}

async fn delete_topic_permissions_on(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, user, exchange)): Path<(String, String, String)>,
) -> ApiResult {
    caller.require_admin()?;
    m.broker
        .clear_topic_permissions(&user, &vhost, Some(&exchange))
        .map_err(ApiError::from_message)?;
    Ok(no_content())
}
