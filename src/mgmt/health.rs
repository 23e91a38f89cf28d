//! RabbitMQ's health checks (`/api/health/checks/...`), as Kubernetes probes, rabbit-hole's
//! `HealthCheck*` and monitoring templates call them: 200 with `{"status":"ok"}` when the
//! check passes, 503 with `{"status":"failed","reason":...}` and what failed when it does,
//! in RabbitMQ 3.10's words (checked on a node). A single node has no mirrors and no
//! quorum to lose.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::http::{ApiError, ApiResult, Caller, calendar_time};
use super::state::Mgmt;

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
            "/api/health/checks/certificate-expiration/{within}/{unit}",
            get(certificate_expiration),
        )
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
    let node = m.node();
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

/// RabbitMQ's window of `within` `unit`s in seconds (a month is a twelfth of 365 days), or
/// its refusal: the number is read first.
fn expiration_window_s(within: &str, unit: &str) -> Result<i64, &'static str> {
    let n: i64 = within.parse().map_err(|_| "Invalid expiration value.")?;
    let unit_s: i64 = match unit.to_ascii_lowercase().as_str() {
        "days" => 86_400,
        "weeks" => 7 * 86_400,
        "months" => 365 * 86_400 / 12,
        "years" => 365 * 86_400,
        _ => {
            return Err("Time unit not recognised. Supported units: days, weeks, months, years.");
        }
    };
    Ok(n.saturating_mul(unit_s))
}

/// The certificates of a PEM file that are not valid through `deadline` (seconds since the
/// epoch): their expiry as RabbitMQ prints it, or why they cannot be read.
fn expiring(path: &std::path::Path, now: i64, deadline: i64) -> Vec<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) => return vec![format!("{}: {e}", path.display())],
    };
    let mut found = Vec::new();
    let mut any = false;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        any = true;
        match cert.ok().and_then(|c| crate::auth::x509::validity(&c)) {
            None => found.push("The certificate cannot be decoded".to_owned()),
            Some((not_before, _)) if not_before > now => {
                found.push("Certificate is not yet valid".to_owned())
            }
            Some((_, not_after)) if not_after < deadline => found.push(calendar_time(not_after)),
            Some(_) => {}
        }
    }
    if !any {
        found.push("The certificate file provided does not contain any PEM entry.".to_owned());
    }
    found
}

/// Same as RabbitMQ's: every TLS listener whose certificate file, or CA file, holds a
/// certificate that expires within the window fails the check (503, each listener with the
/// expiry dates); otherwise 200.
async fn certificate_expiration(
    State(m): State<Arc<Mgmt>>,
    _caller: Caller,
    Path((within, unit)): Path<(String, String)>,
) -> ApiResult {
    let window = expiration_window_s(&within, &unit).map_err(ApiError::bad_request)?;
    let Some(tls) = m.broker.config.tls.clone() else {
        return Ok(Json(json!({"status": "ok"})).into_response());
    };
    let listeners: Vec<(&'static str, std::net::SocketAddr)> = m
        .listeners
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(protocol, _)| protocol.ends_with("/ssl") || protocol.starts_with("https"))
        .copied()
        .collect();
    let now = crate::broker::timer::now_ms() as i64 / 1000;
    let deadline = now.saturating_add(window);
    // Files are read off the runtime's threads.
    let files = tls.clone();
    let (cert, ca) = tokio::task::spawn_blocking(move || {
        let cert = expiring(&files.cert_file, now, deadline);
        let ca = match &files.ca_file {
            Some(path) => expiring(path, now, deadline),
            None => Vec::new(),
        };
        (cert, ca)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    if cert.is_empty() && ca.is_empty() {
        return Ok(Json(json!({"status": "ok"})).into_response());
    }
    let expired: Vec<Value> = listeners
        .iter()
        .map(|(protocol, addr)| {
            json!({
                "node": m.node(),
                "protocol": protocol,
                "interface": addr.ip().to_string(),
                "port": addr.port(),
                "certfile": tls.cert_file.display().to_string(),
                "cacertfile": tls.ca_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                "certfile_expires_on": cert,
                "cacertfile_expires_on": ca,
            })
        })
        .collect();
    if expired.is_empty() {
        return Ok(Json(json!({"status": "ok"})).into_response());
    }
    Ok(failed(json!({
        "status": "failed",
        "reason": "Certificates expiring",
        "expired": expired,
    })))
}
