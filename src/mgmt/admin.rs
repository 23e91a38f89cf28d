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
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use super::http::Caller;
use super::state::Mgmt;
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
    // The broker's own user: the one the socket file it just made belongs to.
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path)?);
    let app = tower::ServiceExt::map_request(router(mgmt), super::http::normalise_path);
    let app = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(OwnerOnly { listener, owner }, app).await {
            tracing::error!(error = %e, "the admin socket stopped");
        }
    }))
}

/// The admin socket's listener: it serves only processes of the broker's own user (or
/// root). The file's mode says as much, but it is set just after the socket is bound, and a
/// connection made in between would otherwise be served as the operator.
struct OwnerOnly {
    listener: UnixListener,
    /// The broker's user id.
    owner: u32,
}

impl axum::serve::Listener for OwnerOnly {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
            match stream.peer_cred() {
                Ok(peer) if peer.uid() == self.owner || peer.uid() == 0 => return (stream, addr),
                Ok(peer) => {
                    tracing::warn!(
                        uid = peer.uid(),
                        "refused an admin socket connection from another user"
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, "refused an admin socket connection: no peer credentials")
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// The management API's routes and the operator commands only `lepusctl` uses, every
/// request made as the operator.
fn router(mgmt: Arc<Mgmt>) -> Router {
    Router::new()
        .route("/api/lepus/status", get(status))
        .route("/api/lepus/app", get(app_state).put(set_app_state))
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
        .layer(axum::middleware::from_fn_with_state(
            mgmt.clone(),
            refuse_while_stopped,
        ))
        .layer(axum::Extension(Caller::Operator))
        .with_state(mgmt)
}

/// After `stop_app`, only `start_app`, `stop_app` and `await_startup` (`/api/lepus/app`)
/// are served, as rabbitmqctl refuses every other command while the `rabbit` app is
/// stopped; `lepusctl` prints RabbitMQ's words for the 503.
async fn refuse_while_stopped(
    State(m): State<Arc<Mgmt>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if m.broker.connections.app_running() || req.uri().path() == "/api/lepus/app" {
        return next.run(req).await;
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "app_stopped", "reason": "the broker's AMQP side is stopped (stop_app)"})),
    )
        .into_response()
}

async fn app_state(State(m): State<Arc<Mgmt>>) -> Response {
    Json(json!({
        "node": m.node(),
        "running": m.broker.connections.app_running(),
    }))
    .into_response()
}

/// How long `start_app` waits for the AMQP listeners to open again before it says they did
/// not (they go on trying: another process may hold the port for a while).
const LISTENERS_REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Deserialize)]
struct AppRequest {
    running: bool,
}

/// `stop_app` (`{"running": false}`): AMQP listeners close and every connection is closed
/// with 320 CONNECTION_FORCED, as RabbitMQ's; `start_app` opens them again. Queues, their
/// messages and the management listeners stay.
async fn set_app_state(State(m): State<Arc<Mgmt>>, Json(req): Json<AppRequest>) -> Response {
    let connections = &m.broker.connections;
    if req.running {
        connections.start_app();
        // As `rabbitmqctl start_app`, answer once clients can connect again.
        if tokio::time::timeout(LISTENERS_REOPEN_WAIT, connections.listening())
            .await
            .is_err()
        {
            let reason = format!(
                "the AMQP listeners are not open again after {} s (is another process holding the port?)",
                LISTENERS_REOPEN_WAIT.as_secs()
            );
            tracing::warn!("start_app: {reason}");
            let body = json!({"error": "listeners_closed", "reason": reason});
            return (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response();
        }
        tracing::info!("start_app: accepting AMQP connections again");
    } else {
        connections.stop_app();
        tracing::info!("stop_app: AMQP connections closed and refused until start_app");
    }
    app_state(State(m)).await
}

/// An error answer with RabbitMQ's error body shape.
fn bad_request(reason: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "bad_request", "reason": reason.into()})),
    )
        .into_response()
}

/// What `rabbitmqctl status --formatter json` shows, with RabbitMQ's keys; the Erlang VM's
/// own (processes, run queue, crypto library, Raft) are left out.
async fn status(State(m): State<Arc<Mgmt>>) -> Response {
    let broker = &m.broker;
    let config = &broker.config;
    let raised = broker.alarms.raised();
    let node = m.node().to_owned();
    let (fd_used, fd_total) = crate::broker::alarms::file_descriptors();
    let mut alarms = Vec::new();
    if raised.memory {
        alarms.push(json!({"resource_alarm": "memory", "node": node}));
    }
    if raised.disk {
        alarms.push(json!({"resource_alarm": "disk", "node": node}));
    }
    let watermark = match broker.alarms.memory_watermark() {
        MemoryWatermark::Relative(share) => json!({"relative": share}),
        MemoryWatermark::Absolute(bytes) => json!({"absolute": bytes}),
    };
    let listeners: Vec<_> = m
        .listeners(&node)
        .into_iter()
        .map(|l| {
            let protocol = l["protocol"].as_str().unwrap_or_default().to_owned();
            json!({
                "interface": interface(l["ip_address"].as_str().unwrap_or_default()),
                "node": node,
                "port": l["port"],
                "purpose": listener_purpose(&protocol),
                "protocol": protocol,
            })
        })
        .collect();
    let queues: usize = broker.vhosts().iter().map(|v| v.queues().len()).sum();
    let resident = crate::broker::alarms::resident_bytes().unwrap_or(0);
    Json(json!({
        "pid": std::process::id(),
        "os": "Linux",
        "uptime": crate::broker::timer::now_ms().saturating_sub(broker.started_at_ms) / 1000,
        "is_under_maintenance": false,
        "rabbitmq_version": config.version,
        "product_name": config.product,
        "product_version": config.version,
        "lepus_version": env!("CARGO_PKG_VERSION"),
        "data_directory": config.data_dir.display().to_string(),
        "config_files": [],
        "log_files": ["<stdout>"],
        "active_plugins": ["rabbitmq_management", "rabbitmq_prometheus"],
        "alarms": alarms,
        "memory": {"strategy": "rss", "total": {"rss": resident}},
        "vm_memory_calculation_strategy": "rss",
        "vm_memory_high_watermark_setting": watermark,
        "vm_memory_high_watermark_limit": broker.alarms.memory_limit_bytes(),
        "disk_free_limit": broker.alarms.disk_free_limit_bytes(),
        "disk_free": crate::broker::alarms::free_disk_bytes(&config.data_dir).unwrap_or(0),
        "file_descriptors": {
            "total_used": fd_used,
            "total_limit": fd_total,
            "sockets_used": broker.connection_count(),
            "sockets_limit": config.limits.max_connections,
        },
        // Lepus's own: what the budgets past which declares, binds and consumers are
        // refused hold.
        "lepus_budgets": {
            "topology_bytes": budget(&broker.creation_limits.topology),
            "consumer_bytes": budget(&broker.consumers),
        },
        "totals": {
            "virtual_host_count": broker.vhosts().len(),
            "connection_count": broker.connection_count(),
            "queue_count": queues,
        },
        "listeners": listeners,
    }))
    .into_response()
}

/// A budget as the status shows it.
fn budget(b: &crate::broker::budget::Budget) -> Value {
    json!({"used": b.held_bytes(), "limit": b.limit_bytes()})
}

/// An address as rabbitmqctl prints a listener's interface (`[::]`, `0.0.0.0`).
fn interface(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    }
}

/// RabbitMQ's description of each kind of listener.
fn listener_purpose(protocol: &str) -> &'static str {
    match protocol {
        "amqp" => "AMQP 0-9-1 and AMQP 1.0",
        "amqp/ssl" => "AMQP 0-9-1 and AMQP 1.0 over TLS",
        "http" => "HTTP API",
        "http/prometheus" => "Prometheus exporter API over HTTP",
        _ => "",
    }
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
    vhost_limits(&m, vhost, limits).await
}

async fn clear_vhost_limits(
    State(m): State<Arc<Mgmt>>,
    UrlPath(vhost): UrlPath<String>,
) -> Response {
    vhost_limits(&m, vhost, VhostLimits::default()).await
}

/// Off the runtime: the lock of vhost changes may be held by a deletion.
async fn vhost_limits(m: &Arc<Mgmt>, vhost: String, limits: VhostLimits) -> Response {
    let name = vhost.clone();
    let set = m.build_change(move |m| Ok(m.broker.set_vhost_limits(&name, limits)));
    match set.await {
        Err(e) => e.into_response(),
        Ok(Some(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not_found", "reason": format!("vhost {vhost} not found")})),
        )
            .into_response(),
    }
}
