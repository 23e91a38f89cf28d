//! The admin socket: operator commands for `lepusctl` over HTTP on a Unix socket.
//!
//! The socket is created in the data directory, readable and writable by the broker's user
//! only: whoever can open it may administer the broker, as whoever can run `rabbitmqctl` as
//! the broker's user may. Requests and answers are JSON.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::definitions::VhostLimits;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use super::http::Caller;
use super::state::Mgmt;
use crate::broker::Broker;
use crate::config::{DiskFreeLimit, MemoryWatermark, parse_size};

/// The admin socket's file name in the data directory.
pub const SOCKET_NAME: &str = "lepus.sock";

/// Where the admin socket of a broker with data in `data_dir` is.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Binds the admin socket (replacing a stale one) and serves it until aborted.
pub fn serve(mgmt: Arc<Mgmt>, path: &Path) -> std::io::Result<JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let app = tower::ServiceExt::map_request(router(mgmt), super::http::normalise_path);
    let app = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the admin socket stopped");
        }
    }))
}

/// The management API's routes and the operator commands only `lepusctl` uses, every
/// request made as the operator.
fn router(mgmt: Arc<Mgmt>) -> Router {
    Router::new()
        .route("/api/lepus/status", get(status))
        .route(
            "/api/lepus/vm_memory_high_watermark",
            put(set_memory_watermark),
        )
        .route("/api/lepus/disk_free_limit", put(set_disk_free_limit))
        .route(
            "/api/lepus/authenticate",
            axum::routing::post(authenticate_user),
        )
        .route(
            "/api/lepus/vhost_limits/{vhost}",
            put(set_vhost_limits).delete(clear_vhost_limits),
        )
        .merge(super::api::routes())
        .layer(axum::Extension(Caller::Operator))
        .with_state(mgmt)
}

/// An error answer with RabbitMQ's error body shape.
fn bad_request(reason: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "bad_request", "reason": reason.into()})),
    )
        .into_response()
}

async fn status(State(m): State<Arc<Mgmt>>) -> Response {
    let broker = &m.broker;
    let raised = broker.alarms.raised();
    Json(json!({
        "product": broker.config.product,
        "lepus_version": env!("CARGO_PKG_VERSION"),
        "connections": broker.connection_count(),
        "mem_used": crate::broker::alarms::resident_bytes().unwrap_or(0),
        "mem_limit": broker.alarms.memory_limit_bytes(),
        "mem_alarm": raised.memory,
        "disk_free": crate::broker::alarms::free_disk_bytes(&broker.config.data_dir).unwrap_or(0),
        "disk_free_limit": broker.alarms.disk_free_limit_bytes(),
        "disk_free_alarm": raised.disk,
    }))
    .into_response()
}

/// `{"relative": 0.4}` or `{"absolute": "2GB"}`, as `rabbitmqctl set_vm_memory_high_watermark`
/// takes it.
#[derive(Debug, Deserialize)]
struct WatermarkRequest {
    relative: Option<f64>,
    absolute: Option<String>,
}

async fn set_memory_watermark(
    State(m): State<Arc<Mgmt>>,
    Json(req): Json<WatermarkRequest>,
) -> Response {
    let broker = &m.broker;
    let watermark = match (req.relative, req.absolute) {
        (Some(r), None) if (0.0..=1.0).contains(&r) => MemoryWatermark::Relative(r),
        (None, Some(a)) => match parse_size(&a) {
            Some(bytes) => MemoryWatermark::Absolute(bytes),
            None => return bad_request(format!("not a size: {a}")),
        },
        _ => return bad_request("expected a fraction between 0 and 1, or an absolute size"),
    };
    broker.alarms.set_memory_watermark(watermark);
    StatusCode::NO_CONTENT.into_response()
}

/// `{"absolute": "50MB"}` or `{"mem_relative": 1.0}`, as `rabbitmqctl set_disk_free_limit`.
#[derive(Debug, Deserialize)]
struct DiskLimitRequest {
    absolute: Option<String>,
    mem_relative: Option<f64>,
}

async fn set_disk_free_limit(
    State(m): State<Arc<Mgmt>>,
    Json(req): Json<DiskLimitRequest>,
) -> Response {
    let broker = &m.broker;
    let limit = match (req.absolute, req.mem_relative) {
        (Some(a), None) => match parse_size(&a) {
            Some(bytes) => DiskFreeLimit::Absolute(bytes),
            None => return bad_request(format!("not a size: {a}")),
        },
        (None, Some(r)) if r >= 0.0 => DiskFreeLimit::MemRelative(r),
        _ => return bad_request("expected an absolute size or mem_relative"),
    };
    broker.alarms.set_disk_free_limit(limit);
    StatusCode::NO_CONTENT.into_response()
}

/// `{"user": ..., "password": ...}`, as `rabbitmqctl authenticate_user` takes them.
#[derive(Debug, Deserialize)]
struct Credentials {
    user: String,
    password: String,
}

/// 204 if the password is the user's, 401 otherwise (no user and a wrong password alike).
async fn authenticate_user(State(m): State<Arc<Mgmt>>, Json(c): Json<Credentials>) -> Response {
    match m.broker.user(&c.user) {
        Some(u) if u.password_matches(&c.password) => StatusCode::NO_CONTENT.into_response(),
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// `{"max-queues": N, "max-connections": N}`, as `rabbitmqctl set_vhost_limits` takes it.
async fn set_vhost_limits(
    State(m): State<Arc<Mgmt>>,
    UrlPath(vhost): UrlPath<String>,
    Json(limits): Json<VhostLimits>,
) -> Response {
    let broker = &m.broker;
    vhost_limits(broker, &vhost, limits)
}

async fn clear_vhost_limits(
    State(m): State<Arc<Mgmt>>,
    UrlPath(vhost): UrlPath<String>,
) -> Response {
    let broker = &m.broker;
    vhost_limits(broker, &vhost, VhostLimits::default())
}

fn vhost_limits(broker: &Broker, vhost: &str, limits: VhostLimits) -> Response {
    match broker.set_vhost_limits(vhost, limits) {
        Some(()) => StatusCode::NO_CONTENT.into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not_found", "reason": format!("vhost {vhost} not found")})),
        )
            .into_response(),
    }
}
