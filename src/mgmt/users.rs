//! Users and permissions over HTTP, in the shapes of RabbitMQ's management API
//! (`/api/users`, `/api/permissions`, `/api/topic-permissions`), so that `lepusctl` today and
//! the management listener tomorrow share one implementation.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth;
use crate::broker::Broker;

/// The routes, to be merged into a router whose state is the broker.
pub fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/api/users", get(list_users))
        .route(
            "/api/users/{name}",
            get(show_user).put(put_user).delete(delete_user),
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
            axum::routing::put(put_topic_permissions).delete(delete_topic_permissions),
        )
        .route(
            "/api/topic-permissions/{vhost}/{user}/{exchange}",
            delete(delete_topic_permissions_on),
        )
}

fn error(status: StatusCode, error: &str, reason: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": error, "reason": reason.into()})),
    )
        .into_response()
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
}

fn bad_request(reason: String) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", reason)
}

fn done(result: Result<(), String>, created: bool) -> Response {
    match result {
        Ok(()) if created => StatusCode::CREATED.into_response(),
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(reason) if reason.contains("does not exist") => {
            error(StatusCode::NOT_FOUND, "Object Not Found", reason)
        }
        Err(reason) => bad_request(reason),
    }
}

fn user_json(u: &auth::User) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing.name(),
        "tags": u.tags,
        "limits": {},
    })
}

async fn list_users(State(broker): State<Arc<Broker>>) -> Json<Value> {
    Json(Value::Array(
        broker.users().iter().map(|u| user_json(u)).collect(),
    ))
}

async fn show_user(State(broker): State<Arc<Broker>>, Path(name): Path<String>) -> Response {
    match broker.user(&name) {
        Some(u) => Json(user_json(&u)).into_response(),
        None => not_found(),
    }
}

/// The body of `PUT /api/users/{name}`: `tags` as a list or a comma-separated string.
#[derive(Debug, Deserialize)]
struct PutUser {
    password: Option<String>,
    password_hash: Option<String>,
    #[serde(default)]
    hashing_algorithm: String,
    #[serde(default)]
    tags: Option<Value>,
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
    State(broker): State<Arc<Broker>>,
    Path(name): Path<String>,
    Json(req): Json<PutUser>,
) -> Response {
    let tags = tags_of(&req.tags);
    let created = broker.user(&name).is_none();
    let result = match (&req.password, &req.password_hash) {
        (Some(p), _) if created => broker.add_user(&name, p),
        (Some(p), _) => broker.change_password(&name, p),
        (None, Some(hash)) => match auth::Hashing::from_name(&req.hashing_algorithm) {
            Some(hashing) => broker.put_user_hash(&name, hash, hashing),
            None => {
                return bad_request(format!(
                    "unknown hashing_algorithm {}",
                    req.hashing_algorithm
                ));
            }
        },
        // No password: an existing user keeps theirs; a new one cannot log in with one.
        (None, None) if created => broker.put_user_hash(&name, "", auth::Hashing::Sha256),
        (None, None) => Ok(()),
    };
    if let Err(e) = result {
        return bad_request(e);
    }
    done(broker.set_user_tags(&name, tags), created)
}

async fn delete_user(State(broker): State<Arc<Broker>>, Path(name): Path<String>) -> Response {
    done(broker.delete_user(&name), false)
}

fn permissions_json(broker: &Broker, filter: impl Fn(&str, &str) -> bool) -> Vec<Value> {
    let mut out = Vec::new();
    for (user, grants) in broker.access.all() {
        for (vhost, p) in &grants.vhosts {
            if filter(&user, vhost) {
                out.push(json!({
                    "user": user,
                    "vhost": vhost,
                    "configure": p.configure.source,
                    "write": p.write.source,
                    "read": p.read.source,
                }));
            }
        }
    }
    out.sort_by_key(|v| (v["vhost"].to_string(), v["user"].to_string()));
    out
}

async fn list_permissions(State(broker): State<Arc<Broker>>) -> Json<Value> {
    Json(Value::Array(permissions_json(&broker, |_, _| true)))
}

async fn show_permissions(
    State(broker): State<Arc<Broker>>,
    Path((vhost, user)): Path<(String, String)>,
) -> Response {
    match permissions_json(&broker, |u, v| u == user && v == vhost).pop() {
        Some(p) => Json(p).into_response(),
        None => not_found(),
    }
}

#[derive(Debug, Deserialize)]
struct PutPermissions {
    configure: String,
    write: String,
    read: String,
}

async fn put_permissions(
    State(broker): State<Arc<Broker>>,
    Path((vhost, user)): Path<(String, String)>,
    Json(req): Json<PutPermissions>,
) -> Response {
    let created = broker
        .access
        .grants(&user)
        .is_none_or(|g| !g.vhosts.contains_key(&vhost));
    let result = broker.set_permissions(&user, &vhost, &req.configure, &req.write, &req.read);
    done(result, created)
}

async fn delete_permissions(
    State(broker): State<Arc<Broker>>,
    Path((vhost, user)): Path<(String, String)>,
) -> Response {
    done(broker.clear_permissions(&user, &vhost), false)
}

async fn list_topic_permissions(State(broker): State<Arc<Broker>>) -> Json<Value> {
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
    Json(Value::Array(out))
}

#[derive(Debug, Deserialize)]
struct PutTopicPermissions {
    exchange: String,
    write: String,
    read: String,
}

async fn put_topic_permissions(
    State(broker): State<Arc<Broker>>,
    Path((vhost, user)): Path<(String, String)>,
    Json(req): Json<PutTopicPermissions>,
) -> Response {
    let result = broker.set_topic_permissions(&user, &vhost, &req.exchange, &req.write, &req.read);
    done(result, true)
}

async fn delete_topic_permissions(
    State(broker): State<Arc<Broker>>,
    Path((vhost, user)): Path<(String, String)>,
) -> Response {
    done(broker.clear_topic_permissions(&user, &vhost, None), false)
}

async fn delete_topic_permissions_on(
    State(broker): State<Arc<Broker>>,
    Path((vhost, user, exchange)): Path<(String, String, String)>,
) -> Response {
    done(
        broker.clear_topic_permissions(&user, &vhost, Some(&exchange)),
        false,
    )
}
