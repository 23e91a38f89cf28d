//! RabbitMQ's health checks (`/api/health/checks/...`), as Kubernetes probes, rabbit-hole's
//! `HealthCheck*` and monitoring templates call them: 200 with `{"status":"ok"}` when the
//! check passes, 503 with `{"status":"failed","reason":...}` and what failed when it does,
//! in RabbitMQ 3.10's words (checked on a node). A single node has no mirrors and no
//! quorum to lose. (`certificate-expiration` is not served: see `conformance/DIFFERENCES.md`.)

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::http::{ApiError, ApiResult, Caller};
use super::state::{Mgmt, node_name};

pub fn routes() -> Router<Arc<Mgmt>> {
    Router::new()
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/health/checks/local-alarms", get(local_alarms))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(protocol_listener),
        )
        .route("/api/health/checks/virtual-hosts", get(ok))
        .route(
            "/api/health/checks/node-is-mirror-sync-critical",
            get(single_node),
        )
        .route(
            "/api/health/checks/node-is-quorum-critical",
            get(single_node),
        )
}

fn failed(body: Value) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn ok(_caller: Caller) -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn single_node(_caller: Caller) -> Response {
    Json(json!({"status": "ok", "reason": "single node cluster"})).into_response()
}

/// The memory and disk alarms in effect, as RabbitMQ lists them.
fn alarms_in_effect(m: &Mgmt) -> Vec<Value> {
    let raised = m.broker.alarms.raised();
    let node = node_name();
    [(raised.memory, "memory"), (raised.disk, "disk")]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, resource)| json!({"node": node, "resource": resource}))
        .collect()
}

fn alarms_check(m: &Mgmt, reason: &str) -> Response {
    let alarms = alarms_in_effect(m);
    if alarms.is_empty() {
        return Json(json!({"status": "ok"})).into_response();
    }
    failed(json!({"status": "failed", "reason": reason, "alarms": alarms}))
}

async fn alarms(State(m): State<Arc<Mgmt>>, _caller: Caller) -> Response {
    alarms_check(&m, "There are alarms in effect in the cluster")
}

async fn local_alarms(State(m): State<Arc<Mgmt>>, _caller: Caller) -> Response {
    alarms_check(&m, "There are alarms in effect on the node")
}

async fn port_listener(
    State(m): State<Arc<Mgmt>>,
    _caller: Caller,
    Path(port): Path<String>,
) -> ApiResult {
    let port: u16 = port
        .parse()
        .map_err(|_| ApiError::bad_request("Invalid port"))?;
    let mut ports: Vec<u16> = m
        .listeners
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, addr)| addr.port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    if ports.contains(&port) {
        return Ok(Json(json!({"status": "ok", "port": port})).into_response());
    }
    Ok(failed(json!({
        "status": "failed",
        "reason": "No active listener",
        "missing": port,
        "ports": ports,
    })))
}

/// A protocol as RabbitMQ names its listeners, from the names it takes for it (checked on
/// a node: `amqp091` and `amqp0-9-1` are `amqp`, `amqps` is `amqp/ssl`, `management` is
/// `http`), case aside.
fn normalize_protocol(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    let normal = match name.as_str() {
        "amqp091" | "amqp0.9.1" | "amqp0-9-1" | "amqp10" | "amqp1.0" | "amqp1-0" => "amqp",
        "amqps" | "amqp091/ssl" | "amqp0-9-1/ssl" => "amqp/ssl",
        "http1.1" | "management" | "ui" => "http",
        "management/ssl" | "ui/ssl" | "https1.1" => "https",
        "prometheus" => "http/prometheus",
        "prometheus/ssl" => "https/prometheus",
        _ => return name,
    };
    normal.to_owned()
}

async fn protocol_listener(
    State(m): State<Arc<Mgmt>>,
    _caller: Caller,
    Path(protocol): Path<String>,
) -> Response {
    let protocol = normalize_protocol(&protocol);
    let mut protocols: Vec<&'static str> = m
        .listeners
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(protocol, _)| *protocol)
        .collect();
    protocols.sort_unstable();
    protocols.dedup();
    if protocols.contains(&protocol.as_str()) {
        return Json(json!({"status": "ok", "protocol": protocol})).into_response();
    }
    failed(json!({
        "status": "failed",
        "reason": "No active listener",
        "missing": protocol,
        "protocols": protocols,
    }))
}
