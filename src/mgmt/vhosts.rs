//! Virtual hosts, their limits and policies: `/api/vhosts`, `/api/vhost-limits`,
//! `/api/policies`, `/api/operator-policies`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::http::{
    ApiError, ApiResult, Caller, body_or_empty, created, durable, no_content, visible_vhosts,
};
use super::list::{List, ListQuery, list};
use super::rates::{self, ALL_FIELDS};
use super::state::Mgmt;
use crate::broker::vhost::VirtualHost;
use crate::store::definitions::{PolicyDef, VhostDef};

pub fn routes() -> Router<Arc<Mgmt>> {
    Router::new()
        .route("/api/vhosts", get(list_vhosts))
        .route("/api/vhosts/{vhost}", get(show).put(add).delete(remove))
        .route("/api/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route(
            "/api/vhosts/{vhost}/topic-permissions",
            get(vhost_topic_permissions),
        )
        // Runtime parameters belong to plugins Lepus does not have (shovels, federation):
        // there are none.
        .route("/api/parameters", get(no_parameters))
        .route("/api/parameters/{component}", get(no_parameters))
        .route("/api/parameters/{component}/{vhost}", get(no_parameters))
        .route("/api/global-parameters", get(global_parameters))
        .route("/api/global-parameters/{name}", get(global_parameter))
        .route("/api/vhost-limits", get(all_limits))
        .route("/api/vhost-limits/{vhost}", get(vhost_limits))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            put(set_limit).delete(clear_limit),
        )
        .route("/api/policies", get(policies::<false>))
        .route("/api/policies/{vhost}", get(vhost_policies::<false>))
        .route(
            "/api/policies/{vhost}/{name}",
            get(show_policy::<false>)
                .put(put_policy::<false>)
                .delete(delete_policy::<false>),
        )
        .route("/api/operator-policies", get(policies::<true>))
        .route(
            "/api/operator-policies/{vhost}",
            get(vhost_policies::<true>),
        )
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(show_policy::<true>)
                .put(put_policy::<true>)
                .delete(delete_policy::<true>),
        )
}

async fn no_parameters(_caller: Caller) -> ApiResult {
    Ok(Json(json!([])).into_response())
}

/// Same as RabbitMQ, for administrators: the global parameters Lepus keeps (the cluster's
/// permanent id, and its name once one was set).
async fn global_parameters(State(m): State<Arc<Mgmt>>, caller: Caller) -> ApiResult {
    caller.require_admin()?;
    Ok(Json(m.broker.definitions.global_parameters()).into_response())
}

async fn global_parameter(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    caller.require_admin()?;
    let found = m
        .broker
        .definitions
        .global_parameters()
        .into_iter()
        .find(|p| p.name == name);
    match found {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(ApiError::not_found()),
    }
}

fn vhost_json(m: &Mgmt, v: &VirtualHost, q: &ListQuery, open: &rates::OpenChannels) -> Value {
    let def = m
        .broker
        .definitions
        .vhost(&v.name)
        .unwrap_or_else(|| VhostDef::named(&v.name));
    let description = match (def.description.as_str(), v.name.as_str()) {
        ("", "/") => "Default virtual host".to_owned(),
        (d, _) => d.to_owned(),
    };
    let key = rates::vhost_key(&v.name);
    let (mut ready, mut unacked) = (0u64, 0u64);
    for queue in v.queues() {
        let s = queue.gauges();
        ready += u64::from(s.ready);
        unacked += u64::from(s.unacked);
    }
    let (mut recv, mut send) = (0u64, 0u64);
    for c in m.broker.connections.list() {
        if c.info().opened().is_some_and(|o| o.vhost == v.name) {
            recv += c.info().recv_oct.load(std::sync::atomic::Ordering::Relaxed);
            send += c.info().send_oct.load(std::sync::atomic::Ordering::Relaxed);
        }
    }
    let mut out = Map::new();
    out.insert("name".into(), json!(v.name));
    out.insert("description".into(), json!(description));
    out.insert("tags".into(), json!(def.tags));
    out.insert("default_queue_type".into(), json!("undefined"));
    out.insert(
        "metadata".into(),
        json!({"description": description, "tags": def.tags}),
    );
    out.insert("tracing".into(), json!(false));
    out.insert("cluster_state".into(), json!({m.node(): "running"}));
    rates::with_rate(&mut out, &m.rates, &key, "messages", ready + unacked);
    rates::with_rate(&mut out, &m.rates, &key, "messages_ready", ready);
    rates::with_rate(&mut out, &m.rates, &key, "messages_unacknowledged", unacked);
    rates::with_rate(&mut out, &m.rates, &key, "recv_oct", recv);
    rates::with_rate(&mut out, &m.rates, &key, "send_oct", send);
    let totals = rates::vhost_totals_in(&m.broker, &v.name, open);
    out.insert(
        "message_stats".into(),
        rates::message_stats(&m.rates, &key, &totals, ALL_FIELDS, q.stats()),
    );
    Value::Object(out)
}

async fn list_vhosts(State(m): State<Arc<Mgmt>>, caller: Caller, Query(q): List) -> ApiResult {
    // Each vhost's totals walk its queues.
    let asking = caller.clone();
    m.build(&asking, move |m| {
        let open = rates::channels(&m.broker);
        let items = visible_vhosts(&m.broker, &caller)
            .iter()
            .map(|v| vhost_json(m, v, &q, &open))
            .collect();
        list(items, &q)
    })
    .await
}

async fn show(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): List,
) -> ApiResult {
    let vhost = caller.vhost(&m.broker, &vhost)?;
    // Its totals walk its queues.
    m.build(&caller, move |m| {
        let open = rates::channels(&m.broker);
        Ok(Json(vhost_json(m, &vhost, &q, &open)).into_response())
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct VhostBody {
    description: Option<String>,
    /// A list, or a comma-separated string as rabbitmqadmin sends it.
    tags: Option<Value>,
}

async fn add(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require_admin()?;
    let req: VhostBody = body_or_empty(&body)?;
    let tags = match req.tags {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => crate::auth::parse_tags(&s),
        _ => Vec::new(),
    };
    let def = VhostDef {
        description: req.description.unwrap_or_default(),
        tags,
        ..VhostDef::named(&name)
    };
    // Off the runtime: the lock of vhost changes may be held by a deletion.
    let created_now = m
        .build_change(move |m| m.broker.add_vhost(&def).map_err(ApiError::bad_request))
        .await?;
    if created_now && let Some(user) = caller.user() {
        // RabbitMQ gives the user who created a vhost full permissions in it.
        let _ = m
            .broker
            .set_permissions(&user.name, &name, ".*", ".*", ".*");
    }
    Ok(created(created_now))
}

async fn remove(State(m): State<Arc<Mgmt>>, caller: Caller, Path(name): Path<String>) -> ApiResult {
    caller.require_admin()?;
    m.broker.vhost(&name).ok_or_else(ApiError::not_found)?;
    // Every queue of it goes, with its files.
    let epoch = m
        .build_change(move |m| m.broker.delete_vhost(&name).map_err(ApiError::from_message))
        .await?;
    durable(&m.broker, Some(epoch)).await?;
    Ok(no_content())
}

async fn vhost_permissions(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): List,
) -> ApiResult {
    caller.require_admin()?;
    m.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    let items = super::users::permissions_json(&m.broker)
        .into_iter()
        .filter(|p| p["vhost"] == vhost.as_str())
        .collect();
    list(items, &q)
}

async fn vhost_topic_permissions(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): List,
) -> ApiResult {
    caller.require_admin()?;
    m.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    let items = super::users::topic_permissions_json(&m.broker)
        .into_iter()
        .filter(|p| p["vhost"] == vhost.as_str())
        .collect();
    list(items, &q)
}

fn limits_json(v: &VirtualHost) -> Option<Value> {
    let limits = v.limits();
    if limits.is_empty() {
        return None;
    }
    Some(json!({"vhost": v.name, "value": limits}))
}

/// Same as RabbitMQ (`rabbit_mgmt_wm_limits`, authorised by vhost visibility): any
/// management user sees the limits of the vhosts it may see.
async fn all_limits(State(m): State<Arc<Mgmt>>, caller: Caller) -> ApiResult {
    let items: Vec<Value> = visible_vhosts(&m.broker, &caller)
        .iter()
        .filter_map(|v| limits_json(v))
        .collect();
    Ok(Json(items).into_response())
}

async fn vhost_limits(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult {
    let vhost = caller.vhost(&m.broker, &vhost)?;
    Ok(Json(limits_json(&vhost).into_iter().collect::<Vec<_>>()).into_response())
}

#[derive(Debug, Deserialize)]
struct LimitBody {
    #[serde(deserialize_with = "super::http::lenient_int")]
    value: Option<i64>,
}

async fn set_limit(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require_admin()?;
    let v = m.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    let req: LimitBody = super::http::parse_json(&body)?;
    let value = req
        .value
        .ok_or_else(|| ApiError::bad_request("Missing key: value"))?;
    if !matches!(name.as_str(), "max-queues" | "max-connections") {
        return Err(ApiError::bad_request(format!(
            "Validation failed\n\n{name} is not a valid limit\n"
        )));
    }
    drop(v);
    // Off the runtime: the lock of vhost changes may be held by a deletion.
    m.build_change(move |m| {
        m.broker
            .update_vhost_limits(&vhost, |limits| match name.as_str() {
                "max-queues" => limits.max_queues = Some(value),
                _ => limits.max_connections = Some(value),
            });
        Ok(())
    })
    .await?;
    Ok(no_content())
}

async fn clear_limit(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    caller.require_admin()?;
    m.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    if !matches!(name.as_str(), "max-queues" | "max-connections") {
        return Err(ApiError::not_found());
    }
    m.build_change(move |m| {
        m.broker
            .update_vhost_limits(&vhost, |limits| match name.as_str() {
                "max-queues" => limits.max_queues = None,
                _ => limits.max_connections = None,
            });
        Ok(())
    })
    .await?;
    Ok(no_content())
}

fn policy_json(p: &PolicyDef) -> Value {
    json!({
        "vhost": p.vhost,
        "name": p.name,
        "pattern": p.pattern,
        "apply-to": p.apply_to,
        "definition": p.definition,
        "priority": p.priority,
    })
}

fn recorded(m: &Mgmt, operator: bool) -> Vec<PolicyDef> {
    let mut all = match operator {
        true => m.broker.definitions.operator_policies(),
        false => m.broker.definitions.policies(),
    };
    all.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    all
}

/// Every policy the caller may see (operator policies when `OPERATOR`).
async fn policies<const OPERATOR: bool>(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Query(q): List,
) -> ApiResult {
    let asking = caller.clone();
    m.build(&asking, move |m| {
        policies_in(m, &caller, &q, None, OPERATOR)
    })
    .await
}

async fn vhost_policies<const OPERATOR: bool>(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): List,
) -> ApiResult {
    let asking = caller.clone();
    m.build(&asking, move |m| {
        policies_in(m, &caller, &q, Some(vhost), OPERATOR)
    })
    .await
}

fn policies_in(
    m: &Mgmt,
    caller: &Caller,
    q: &ListQuery,
    vhost: Option<String>,
    operator: bool,
) -> ApiResult {
    if let Some(v) = &vhost {
        caller.vhost_for_policies(&m.broker, v)?;
    }
    let items = recorded(m, operator)
        .iter()
        .filter(|p| vhost.as_ref().is_none_or(|v| *v == p.vhost))
        .filter(|p| caller.may_see_policies(&m.broker, &p.vhost))
        .map(policy_json)
        .collect();
    list(items, q)
}

async fn show_policy<const OPERATOR: bool>(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let operator = OPERATOR;
    // Same as RabbitMQ: a list of policies needs only the vhost; one policy needs a
    // policymaker (an operator policy, an administrator).
    match operator {
        true => caller.require_admin()?,
        false => caller.require_policymaker()?,
    }
    caller.vhost_for_policies(&m.broker, &vhost)?;
    recorded(&m, operator)
        .iter()
        .find(|p| p.vhost == vhost && p.name == name)
        .map(|p| Json(policy_json(p)).into_response())
        .ok_or_else(ApiError::not_found)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PolicyBody {
    pattern: Option<String>,
    definition: Option<Value>,
    #[serde(deserialize_with = "super::http::lenient_int")]
    priority: Option<i64>,
    #[serde(rename = "apply-to")]
    apply_to: Option<String>,
}

/// PUT a policy: validated as RabbitMQ validates it, then applied to every live queue and
/// exchange it matches before the answer.
async fn put_policy<const OPERATOR: bool>(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let operator = OPERATOR;
    match operator {
        true => caller.require_admin()?,
        false => caller.require_policymaker()?,
    }
    caller.vhost_for_policies(&m.broker, &vhost)?;
    let req: PolicyBody = body_or_empty(&body)?;
    let def = PolicyDef {
        vhost,
        name,
        pattern: req
            .pattern
            .ok_or_else(|| ApiError::bad_request("Missing key: pattern"))?,
        apply_to: req.apply_to.unwrap_or_else(|| "all".into()),
        definition: req
            .definition
            .ok_or_else(|| ApiError::bad_request("Missing key: definition"))?,
        priority: req.priority.unwrap_or(0),
    };
    // Applied to every queue and exchange of the vhost it matches. Whether it existed is
    // asked on the change's own turn: of two PUTs of a new policy at once, one creates it.
    let (epoch, existed) = m
        .build_change(move |m| {
            let existed = recorded(m, operator)
                .iter()
                .any(|p| p.vhost == def.vhost && p.name == def.name);
            m.broker
                .put_policy(def, operator)
                .map(|epoch| (epoch, existed))
                .map_err(ApiError::from_message)
        })
        .await?;
    durable(&m.broker, Some(epoch)).await?;
    Ok(created(!existed))
}

async fn delete_policy<const OPERATOR: bool>(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let operator = OPERATOR;
    match operator {
        true => caller.require_admin()?,
        false => caller.require_policymaker()?,
    }
    caller.vhost_for_policies(&m.broker, &vhost)?;
    let epoch = m
        .build_change(move |m| {
            m.broker
                .delete_policy(&vhost, &name, operator)
                .map_err(|_| ApiError::not_found())
        })
        .await?;
    durable(&m.broker, Some(epoch)).await?;
    Ok(no_content())
}
