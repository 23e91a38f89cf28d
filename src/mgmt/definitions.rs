//! Definitions export and import (`/api/definitions[/{vhost}]`), in RabbitMQ's shape: what
//! `rabbitmqadmin export`/`import` and `rabbitmqctl export_definitions` read and write.
//!
//! The export is users, vhosts, permissions and policies as recorded, and every exchange,
//! queue and binding clients declared, durable or not (RabbitMQ 3.10 exports transient ones
//! too; exclusive queues are left out). An import
//! merges into the running broker as RabbitMQ's does: what exists is updated or must be
//! equivalent, nothing is removed.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use super::http::{ApiError, ApiResult, Caller, no_content};
use super::state::Mgmt;
use crate::store::definitions::{Definitions, encode_arguments};

pub fn routes() -> Router<Arc<Mgmt>> {
    Router::new()
        .route("/api/definitions", get(export_all).post(import_all))
        .route(
            "/api/definitions/{vhost}",
            get(export_vhost).post(import_vhost),
        )
}

/// The recorded definitions in RabbitMQ's export shape, for one vhost or all.
pub fn export(m: &Mgmt, vhost: Option<&str>) -> Value {
    let defs = m.broker.definitions.current();
    let in_scope = |v: &str| vhost.is_none_or(|x| x == v);
    // Per-vhost exports leave the vhost out of each item, as RabbitMQ's do.
    let item = |mut v: Value| {
        if vhost.is_some()
            && let Value::Object(map) = &mut v
        {
            map.remove("vhost");
        }
        v
    };
    let (queues, exchanges, bindings) = live_objects(m, vhost);
    let (queues, exchanges, bindings): (Vec<Value>, Vec<Value>, Vec<Value>) = (
        queues.into_iter().map(item).collect(),
        exchanges.into_iter().map(item).collect(),
        bindings.into_iter().map(item).collect(),
    );
    let policies: Vec<Value> = defs
        .policies
        .iter()
        .filter(|p| in_scope(&p.vhost))
        .map(|p| {
            item(
                json!({"vhost": p.vhost, "name": p.name, "pattern": p.pattern,
                "apply-to": p.apply_to, "definition": p.definition, "priority": p.priority}),
            )
        })
        .collect();
    let version = &m.broker.config.version;
    if vhost.is_some() {
        return json!({
            "rabbit_version": version,
            "parameters": [],
            "policies": policies,
            "queues": queues,
            "exchanges": exchanges,
            "bindings": bindings,
        });
    }
    let users: Vec<Value> = defs
        .users
        .iter()
        .map(|u| {
            json!({"name": u.name, "password_hash": u.password_hash,
                "hashing_algorithm": u.hashing_algorithm, "tags": u.tags, "limits": u.limits})
        })
        .collect();
    let vhosts: Vec<Value> = defs.vhosts.iter().map(|v| json!(v)).collect();
    json!({
        "rabbit_version": version,
        "rabbitmq_version": version,
        "product_name": m.broker.config.product,
        "product_version": version,
        "users": users,
        "vhosts": vhosts,
        "permissions": defs.permissions,
        "topic_permissions": defs.topic_permissions,
        "parameters": [],
        // Same as RabbitMQ: the cluster's id, and its name once one was set.
        "global_parameters": defs.global_parameters,
        "policies": policies,
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })
}

async fn export_all(State(m): State<Arc<Mgmt>>, caller: Caller) -> ApiResult {
    caller.require_admin()?;
    m.build(&caller, |m| Ok(Json(export(m, None)).into_response()))
        .await
}

async fn export_vhost(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult {
    caller.require_admin()?;
    m.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    m.build(&caller, move |m| {
        Ok(Json(export(m, Some(&vhost))).into_response())
    })
    .await
}

/// The queues, exchanges and bindings an export lists: every one a client declared, durable
/// or not, as RabbitMQ exports them; exclusive queues, the predeclared exchanges and the
/// default exchange's implicit bindings are left out.
fn live_objects(m: &Mgmt, only: Option<&str>) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let (mut queues, mut exchanges, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    let mut vhosts = m.broker.vhosts();
    vhosts.retain(|v| only.is_none_or(|o| o == v.name));
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    for v in &vhosts {
        let mut qs = v.queues();
        qs.retain(|q| q.exclusive_owner.is_none());
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        // A set: checked once per binding, of which there may be 100,000s.
        let exclusive: std::collections::HashSet<String> = v
            .queues()
            .iter()
            .filter(|q| q.exclusive_owner.is_some())
            .map(|q| q.name.clone())
            .collect();
        queues.extend(qs.iter().map(|q| {
            json!({"name": q.name, "vhost": v.name, "durable": q.durable,
                "auto_delete": q.auto_delete, "arguments": encode_arguments(&q.arguments).0})
        }));
        let mut xs = v.exchanges();
        xs.retain(|x| !x.name.is_empty() && !x.name.starts_with("amq."));
        xs.sort_by(|a, b| a.name.cmp(&b.name));
        exchanges.extend(xs.iter().map(|x| {
            json!({"name": x.name, "vhost": v.name, "type": x.kind.name(), "durable": x.durable,
                "auto_delete": x.auto_delete, "internal": x.internal,
                "arguments": encode_arguments(&x.arguments).0})
        }));
        for b in super::bindings::all_bindings(v, super::bindings::Select::ALL) {
            if b.source.is_empty()
                || (b.destination_type == "queue" && exclusive.contains(&b.destination))
            {
                continue;
            }
            bindings.push(
                json!({"source": b.source, "vhost": v.name, "destination": b.destination,
                "destination_type": b.destination_type, "routing_key": b.routing_key,
                "arguments": encode_arguments(&b.arguments).0}),
            );
        }
    }
    (queues, exchanges, bindings)
}

/// Reads an import; a per-vhost one gets its vhost written into every item.
fn parse(body: &[u8], vhost: Option<&str>) -> Result<Definitions, ApiError> {
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(vhost) = vhost {
        for key in ["queues", "exchanges", "bindings", "policies"] {
            if let Some(Value::Array(items)) = value.get_mut(key) {
                for item in items {
                    if let Value::Object(map) = item {
                        map.insert("vhost".into(), json!(vhost));
                    }
                }
            }
        }
        if let Value::Object(map) = &mut value {
            // And the node's settings: same as RabbitMQ, a vhost's import leaves them be.
            for key in [
                "users",
                "vhosts",
                "permissions",
                "topic_permissions",
                "global_parameters",
            ] {
                map.remove(key);
            }
        }
    }
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn import(m: &Arc<Mgmt>, caller: &Caller, body: Bytes, vhost: Option<String>) -> ApiResult {
    caller.require_admin()?;
    if let Some(v) = &vhost {
        m.broker.vhost(v).ok_or_else(ApiError::not_found)?;
    }
    // Declaring thousands of queues (each durable one a directory and a file) is work for
    // the blocking pool, not for the workers the AMQP connections run on.
    let user = caller.acting_user().to_owned();
    m.build_change(move |m| {
        let defs = parse(&body, vhost.as_deref())?;
        m.broker
            .import_definitions(&defs, &user)
            .map(|_| ())
            .map_err(ApiError::bad_request)
    })
    .await?;
    // Durable before the answer, as each declare would be.
    let epoch = m.broker.definitions.last_epoch();
    super::http::durable(&m.broker, Some(epoch)).await?;
    Ok(no_content())
}

async fn import_all(State(m): State<Arc<Mgmt>>, caller: Caller, body: Bytes) -> ApiResult {
    import(&m, &caller, body, None).await
}

async fn import_vhost(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult {
    import(&m, &caller, body, Some(vhost)).await
}
