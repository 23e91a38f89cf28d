//! Exchanges: `/api/exchanges[/{vhost}[/{name}]]`, `publish`, and their bindings.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::bindings::Select;
use super::http::{
    ApiError, ApiResult, Caller, arguments_of, body_or_empty, created, durable, exchange_name,
    no_content, visible_vhosts,
};
use super::list::{List, ListQuery, list_of};
use super::rates;
use super::state::Mgmt;
use crate::auth::access::{Permission, Resource};
use crate::broker::exchange::Exchange;
use crate::broker::vhost::VirtualHost;
use crate::broker::vhost::checks::Check;
use crate::broker::vhost::exchanges::ExchangeDeclare;
use crate::protocol::error::ReplyCode;
use crate::store::definitions::encode_arguments;

pub fn routes() -> Router<Arc<Mgmt>> {
    Router::new()
        .route("/api/exchanges", get(list_all))
        .route("/api/exchanges/{vhost}", get(list_vhost))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(show).put(declare).delete(remove),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(as_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(as_destination),
        )
}

fn exchange_json(m: &Mgmt, vhost: &VirtualHost, x: &Exchange, stats: bool) -> Value {
    let key = rates::exchange_key(&vhost.name, &x.name);
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = json!({
        "name": x.name,
        "vhost": vhost.name,
        "type": x.kind.name(),
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": encode_arguments(&x.arguments).0,
        "user_who_performed_action": x.declared_by,
    });
    let (publish_in, publish_out) = (load(&x.counters.publish_in), load(&x.counters.publish_out));
    if publish_in > 0 {
        let mut stats_json = serde_json::Map::new();
        for (field, value) in [("publish_in", publish_in), ("publish_out", publish_out)] {
            stats_json.insert(field.into(), json!(value));
            if stats {
                stats_json.insert(
                    format!("{field}_details"),
                    json!({"rate": m.rates.rate(&key, field)}),
                );
            }
        }
        out["message_stats"] = Value::Object(stats_json);
    }
    out
}

/// The exchanges of `vhosts`, each vhost's by name, answered as a list: only the exchanges
/// answered are made JSON (see [`list_of`]).
fn list_exchanges(m: &Arc<Mgmt>, vhosts: &[Arc<VirtualHost>], q: &ListQuery) -> ApiResult {
    let mut items = Vec::new();
    for v in vhosts {
        let mut exchanges = v.exchanges();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        items.extend(exchanges.into_iter().map(|x| (v.clone(), x)));
    }
    let (m, stats) = (m.clone(), q.stats());
    list_of(
        items,
        q,
        |(_, x)| Some(&x.name),
        move |(v, x)| exchange_json(&m, v, x, stats),
    )
}

async fn list_all(State(m): State<Arc<Mgmt>>, caller: Caller, Query(q): List) -> ApiResult {
    let vhosts = visible_vhosts(&m.broker, &caller);
    m.build(&caller, move |m| list_exchanges(m, &vhosts, &q))
        .await
}

async fn list_vhost(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): List,
) -> ApiResult {
    let vhost = caller.vhost(&m.broker, &vhost)?;
    m.build(&caller, move |m| list_exchanges(m, &[vhost], &q))
        .await
}

async fn show(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): List,
) -> ApiResult {
    let vhost = caller.vhost(&m.broker, &vhost)?;
    let x = vhost
        .exchange(exchange_name(&name))
        .ok_or_else(ApiError::not_found)?;
    let mut out = exchange_json(&m, &vhost, &x, q.stats());
    out["incoming"] = json!([]);
    out["outgoing"] = json!([]);
    Ok(Json(out).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeclareBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(deserialize_with = "super::http::lenient_bool")]
    durable: Option<bool>,
    #[serde(deserialize_with = "super::http::lenient_bool")]
    auto_delete: Option<bool>,
    #[serde(deserialize_with = "super::http::lenient_bool")]
    internal: Option<bool>,
    arguments: Option<Value>,
}

async fn declare(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let vhost = caller.vhost_to_change(&m.broker, &vhost)?;
    let req: DeclareBody = body_or_empty(&body)?;
    let name = exchange_name(&name).to_owned();
    caller.authorize(
        &m.broker,
        &vhost.name,
        Resource::Exchange(&name),
        Permission::Configure,
    )?;
    // Same as RabbitMQ (checked on a node), whose declare starts from `exchange.declare`'s
    // defaults: no `type` is a direct exchange.
    let kind = req.kind.unwrap_or_else(|| "direct".into());
    let arguments = arguments_of(req.arguments.as_ref())?;
    let existed = vhost.exchange(&name).is_some();
    let declare = ExchangeDeclare {
        name,
        kind,
        passive: false,
        // Absent flags are false, as in an AMQP declare (and RabbitMQ's API).
        durable: req.durable.unwrap_or(false),
        auto_delete: req.auto_delete.unwrap_or(false),
        internal: req.internal.unwrap_or(false),
        arguments,
        user: caller.acting_user().to_owned(),
    };
    let authorize_new = |checks: Vec<Check<'_>>| caller.check_all(&m.broker, &vhost.name, checks);
    let epoch = vhost.declare_exchange(&declare, &authorize_new)?;
    durable(&m.broker, epoch).await?;
    Ok(created(!existed))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeleteQuery {
    #[serde(rename = "if-unused")]
    if_unused: Option<String>,
}

async fn remove(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(dq): Query<DeleteQuery>,
) -> ApiResult {
    let vhost = caller.vhost_to_change(&m.broker, &vhost)?;
    let name = exchange_name(&name);
    vhost.exchange(name).ok_or_else(ApiError::not_found)?;
    caller.authorize(
        &m.broker,
        &vhost.name,
        Resource::Exchange(name),
        Permission::Configure,
    )?;
    let epoch = vhost.delete_exchange(name, dq.if_unused.as_deref() == Some("true"))?;
    durable(&m.broker, epoch).await?;
    Ok(no_content())
}

#[derive(Debug, Deserialize)]
struct PublishBody {
    #[serde(default)]
    properties: Option<Value>,
    routing_key: String,
    payload: String,
    payload_encoding: String,
}

/// POST `publish`: routes one message and says whether any queue took it.
async fn publish(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let vhost = caller.vhost_to_change(&m.broker, &vhost)?;
    let name = exchange_name(&name);
    let x = vhost.exchange(name).ok_or_else(ApiError::not_found)?;
    let req: PublishBody = super::http::parse_json(&body)?;
    // Same as RabbitMQ 3.10.8, whose publish learns of a refusal as its channel closing:
    // each is a 400 with the code before the channel's text.
    caller
        .check(
            &m.broker,
            &vhost.name,
            Resource::Exchange(name),
            Permission::Write,
        )
        .map_err(ApiError::from_closed_channel)?;
    if let Some(user) = caller.user()
        && x.kind == crate::broker::exchange::ExchangeKind::Topic
    {
        m.broker
            .access
            .check_topic(
                &user.name,
                &vhost.name,
                name,
                req.routing_key.as_bytes(),
                Permission::Write,
            )
            .map_err(ApiError::from_closed_channel)?;
    }
    if x.internal {
        return Err(ApiError::from_closed_channel(crate::amqp_error!(
            AccessRefused,
            "cannot publish to internal {}",
            crate::broker::arguments::exchange_desc(name, &vhost.name)
        )));
    }
    let properties = super::messages::properties_from_json(req.properties.as_ref())?;
    properties_fit_a_frame(&m, &properties)?;
    let payload = super::messages::payload_from_json(&req.payload, &req.payload_encoding)?;
    let max = m.broker.config.limits.max_message_size_bytes;
    if payload.len() as u64 > max {
        return Err(ApiError::bad_request(format!(
            "message size {} is larger than configured max size {max}",
            payload.len()
        )));
    }
    let user = caller.user().map(|u| &**u);
    let published = vhost
        .publish_message(name, &req.routing_key, properties, payload, user)
        .map_err(|e| match e.code {
            // RabbitMQ publishes on a channel of its own, whose closing reason it shows.
            ReplyCode::PreconditionFailed | ReplyCode::AccessRefused => {
                ApiError::from_closed_channel(e)
            }
            _ => ApiError::from_amqp(e),
        })?;
    durable(&m.broker, published.sync).await?;
    Ok(Json(json!({"routed": published.routed})).into_response())
}

/// An AMQP publisher's content header fits in one frame of the broker's `frame_max`; so
/// must the properties of a message published here, or every consumer that holds the
/// broker to its `frame_max` would close its connection on the message, and get it again.
fn properties_fit_a_frame(m: &Mgmt, encoded: &[u8]) -> Result<(), ApiError> {
    // A content header's payload: class, weight and body size, then the properties.
    const CONTENT_HEADER_FIXED_BYTES: usize = 12;
    let room = match m.broker.config.limits.frame_max_bytes {
        0 => usize::MAX,
        frame_max => (frame_max as usize)
            .saturating_sub(crate::protocol::frame::FRAME_OVERHEAD + CONTENT_HEADER_FIXED_BYTES),
    };
    match encoded.len() <= room {
        true => Ok(()),
        false => Err(ApiError::bad_request(format!(
            "properties longer than {room} bytes once encoded (frame_max_bytes)"
        ))),
    }
}

async fn as_source(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): List,
) -> ApiResult {
    let vhost = caller.vhost(&m.broker, &vhost)?;
    vhost
        .exchange(exchange_name(&name))
        .ok_or_else(ApiError::not_found)?;
    m.build(&caller, move |_| {
        let select = Select {
            source: Some(exchange_name(&name)),
            destination: None,
        };
        super::bindings::list_bindings(&[vhost], select, &q)
    })
    .await
}

async fn as_destination(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): List,
) -> ApiResult {
    let vhost = caller.vhost(&m.broker, &vhost)?;
    vhost
        .exchange(exchange_name(&name))
        .ok_or_else(ApiError::not_found)?;
    m.build(&caller, move |_| {
        let select = Select {
            source: None,
            destination: Some(("exchange", exchange_name(&name))),
        };
        super::bindings::list_bindings(&[vhost], select, &q)
    })
    .await
}
