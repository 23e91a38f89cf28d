//! Connections, channels and consumers: what clients are connected and what they do.
//!
//! Read from what each connection registered with the broker ([`ConnectionInfo`]); the API
//! never reaches into a connection's task. Closing one goes through
//! [`ConnectionControl::close`], as shutdown does.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::http::{ApiError, ApiResult, Caller, no_content, timestamp};
use super::list::{List, ListQuery, list_of};
use super::queues::{connections_by_id, consumer_json};
use super::rates::{self, CONSUMER_FIELDS, PUBLISHER_FIELDS};
use super::state::Mgmt;
use crate::broker::connections::ConnectionControl;
use crate::broker::stats::{ChannelInfo, ConnectionInfo, Opened};
use crate::store::definitions::encode_arguments;

pub fn routes() -> Router<Arc<Mgmt>> {
    Router::new()
        .route("/api/connections", get(list_connections))
        .route(
            "/api/vhosts/{vhost}/connections",
            get(list_vhost_connections),
        )
        .route(
            "/api/connections/{name}",
            get(show_connection).delete(close_connection),
        )
        .route("/api/connections/{name}/channels", get(connection_channels))
        .route("/api/channels", get(list_channels))
        .route("/api/vhosts/{vhost}/channels", get(list_vhost_channels))
        .route("/api/channels/{name}", get(show_channel))
        .route("/api/consumers", get(list_consumers))
        .route("/api/consumers/{vhost}", get(list_vhost_consumers))
}

/// The open connections the caller may see: monitors see all, others their own.
fn visible(m: &Mgmt, caller: &Caller) -> Vec<(Arc<dyn ConnectionControl>, Arc<Opened>)> {
    m.broker
        .connections
        .list()
        .into_iter()
        .filter_map(|c| {
            let opened = c.info().opened()?;
            let mine = caller.user().is_none_or(|u| u.name == opened.user);
            (caller.is_monitor() || mine).then_some((c, opened))
        })
        .collect()
}

/// The open connections the caller may see in vhost `vhost`.
fn visible_in(
    m: &Mgmt,
    caller: &Caller,
    vhost: &str,
) -> Vec<(Arc<dyn ConnectionControl>, Arc<Opened>)> {
    let mut conns = visible(m, caller);
    conns.retain(|(_, o)| o.vhost == vhost);
    conns
}

fn connection_json(m: &Mgmt, info: &ConnectionInfo, opened: &Opened, stats: bool) -> Value {
    let key = rates::connection_key(info.id);
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = Map::new();
    let fields = json!({
        "name": info.name(),
        "node": m.node(),
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "state": info.state(),
        "user": opened.user,
        "user_who_performed_action": opened.user,
        "vhost": opened.vhost,
        "auth_mechanism": opened.auth_mechanism,
        "client_properties": encode_arguments(
            &crate::protocol::raw_table::decode(&opened.client_properties).unwrap_or_default()
        )
        .0,
        "connected_at": info.connected_at_ms,
        "channel_max": opened.channel_max,
        "frame_max": opened.frame_max,
        "timeout": opened.heartbeat_s,
        "channels": info.channels().len(),
        "host": info.local.ip().to_string(),
        "port": info.local.port(),
        "peer_host": info.peer.ip().to_string(),
        "peer_port": info.peer.port(),
        "ssl": info.tls,
        "ssl_protocol": Value::Null,
        "ssl_cipher": Value::Null,
        "ssl_hash": Value::Null,
        "ssl_key_exchange": Value::Null,
        "peer_cert_issuer": Value::Null,
        "peer_cert_subject": Value::Null,
        "peer_cert_validity": Value::Null,
        "recv_cnt": load(&info.recv_cnt),
        "send_cnt": load(&info.send_cnt),
        "send_pend": 0,
    });
    if let Value::Object(f) = fields {
        out.extend(f);
    }
    for field in ["recv_oct", "send_oct"] {
        let value = match field {
            "recv_oct" => load(&info.recv_oct),
            _ => load(&info.send_oct),
        };
        out.insert(field.into(), json!(value));
        if stats {
            out.insert(
                format!("{field}_details"),
                json!({"rate": m.rates.rate(&key, field)}),
            );
        }
    }
    Value::Object(out)
}

/// Connections answered as a list: only those answered are made JSON (see [`list_of`]).
fn list_conns(
    m: &Arc<Mgmt>,
    conns: Vec<(Arc<dyn ConnectionControl>, Arc<Opened>)>,
    q: &ListQuery,
) -> ApiResult {
    let items: Vec<_> = conns.into_iter().map(|c| (c.0.info().name(), c)).collect();
    let (m, stats) = (m.clone(), q.stats());
    list_of(
        items,
        q,
        |(name, _)| Some(name),
        move |(_, (c, o))| connection_json(&m, c.info(), o, stats),
    )
}

async fn list_connections(State(m): State<Arc<Mgmt>>, caller: Caller, Query(q): List) -> ApiResult {
    let asking = caller.clone();
    m.build(&asking, move |m| list_conns(m, visible(m, &caller), &q))
        .await
}

async fn list_vhost_connections(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): List,
) -> ApiResult {
    let vhost = caller.vhost(&m.broker, &vhost)?;
    let asking = caller.clone();
    m.build(&asking, move |m| {
        list_conns(m, visible_in(m, &caller, &vhost.name), &q)
    })
    .await
}

/// The connection named `name`, found among all of them: called within [`Mgmt::build`],
/// off the runtime's workers, as a list is.
fn find(
    m: &Mgmt,
    caller: &Caller,
    name: &str,
) -> Result<(Arc<dyn ConnectionControl>, Arc<Opened>), ApiError> {
    visible(m, caller)
        .into_iter()
        .find(|(c, _)| c.info().name() == name)
        .ok_or_else(ApiError::not_found)
}

async fn show_connection(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): List,
) -> ApiResult {
    let asking = caller.clone();
    m.build(&asking, move |m| {
        let (c, opened) = find(m, &caller, &name)?;
        Ok(Json(connection_json(m, c.info(), &opened, q.stats())).into_response())
    })
    .await
}

/// DELETE: the client is sent `320 CONNECTION_FORCED - <X-Reason>` ("Closed via management
/// plugin" without one), as RabbitMQ does, cut to what a reply text holds.
async fn close_connection(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .filter(|r| !r.is_empty())
        .unwrap_or("Closed via management plugin")
        .to_owned();
    let asking = caller.clone();
    m.build(&asking, move |m| {
        let (c, opened) = find(m, &caller, &name)?;
        // Same as RabbitMQ: monitors see everyone's connections but close only their own.
        let mine = caller.user().is_none_or(|u| u.name == opened.user);
        if !mine && caller.require_admin().is_err() {
            return Err(ApiError::not_authorised(
                "User not authorised to access object",
            ));
        }
        c.close(320, format!("CONNECTION_FORCED - {reason}"));
        Ok(no_content())
    })
    .await
}

fn channel_json(
    m: &Mgmt,
    conn: &ConnectionInfo,
    opened: &Opened,
    ch: &ChannelInfo,
    stats: bool,
) -> Value {
    let load32 = |a: &std::sync::atomic::AtomicU32| a.load(Ordering::Relaxed);
    let flag = |a: &std::sync::atomic::AtomicBool| a.load(Ordering::Relaxed);
    let name = conn.name();
    let mut out = json!({
        "name": format!("{name} ({})", ch.number),
        "node": m.node(),
        "number": ch.number,
        "state": "running",
        "user": opened.user,
        "user_who_performed_action": opened.user,
        "vhost": opened.vhost,
        "connection_details": {
            "name": name,
            "peer_host": conn.peer.ip().to_string(),
            "peer_port": conn.peer.port(),
        },
        "confirm": flag(&ch.confirm),
        "transactional": flag(&ch.transactional),
        "consumer_count": load32(&ch.consumers),
        "prefetch_count": load32(&ch.prefetch_count),
        "global_prefetch_count": load32(&ch.global_prefetch_count),
        "messages_unacknowledged": load32(&ch.unacked),
        "messages_unconfirmed": load32(&ch.unconfirmed),
        "messages_uncommitted": load32(&ch.uncommitted_messages),
        "acks_uncommitted": load32(&ch.uncommitted_acks),
        "pending_raft_commands": 0,
    });
    let totals = ch.messages.snapshot();
    let key = rates::channel_key(conn.id, ch.number);
    // Shown only on a channel at rest, as RabbitMQ shows it on a hibernated one.
    if let Some(idle) = m.rates.sample_of(&key).idle_since_ms {
        out["idle_since"] = json!(timestamp(idle.max(conn.connected_at_ms)));
    }
    let mut fields: Vec<&str> = Vec::new();
    if totals.publish + totals.confirm + totals.return_unroutable + totals.drop_unroutable > 0 {
        fields.extend(PUBLISHER_FIELDS);
    }
    if totals.deliver_get() + totals.get_empty + totals.ack + totals.redeliver > 0 {
        fields.extend(CONSUMER_FIELDS);
    }
    if !fields.is_empty() {
        out["message_stats"] = rates::message_stats(&m.rates, &key, &totals, &fields, stats);
    }
    out
}

/// The channels of `conns` answered as a list: only those answered are made JSON (see
/// [`list_of`]).
fn list_channels_of(
    m: &Arc<Mgmt>,
    conns: Vec<(Arc<dyn ConnectionControl>, Arc<Opened>)>,
    q: &ListQuery,
) -> ApiResult {
    let mut items = Vec::new();
    for conn in conns {
        let mut channels = conn.0.info().channels();
        channels.sort_by_key(|ch| ch.number);
        let name = conn.0.info().name();
        items.extend(
            channels
                .into_iter()
                .map(|ch| (format!("{name} ({})", ch.number), conn.clone(), ch)),
        );
    }
    let (m, stats) = (m.clone(), q.stats());
    list_of(
        items,
        q,
        |(name, _, _)| Some(name),
        move |(_, (c, opened), ch)| channel_json(&m, c.info(), opened, ch, stats),
    )
}

async fn connection_channels(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): List,
) -> ApiResult {
    let asking = caller.clone();
    m.build(&asking, move |m| {
        let found = find(m, &caller, &name)?;
        list_channels_of(m, vec![found], &q)
    })
    .await
}

async fn list_channels(State(m): State<Arc<Mgmt>>, caller: Caller, Query(q): List) -> ApiResult {
    let asking = caller.clone();
    m.build(&asking, move |m| {
        list_channels_of(m, visible(m, &caller), &q)
    })
    .await
}

async fn list_vhost_channels(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): List,
) -> ApiResult {
    let vhost = caller.vhost(&m.broker, &vhost)?;
    let asking = caller.clone();
    m.build(&asking, move |m| {
        list_channels_of(m, visible_in(m, &caller, &vhost.name), &q)
    })
    .await
}

/// A channel by its name, `<connection name> (<number>)`.
async fn show_channel(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): List,
) -> ApiResult {
    let (conn_name, number) = name
        .rsplit_once(" (")
        .and_then(|(c, n)| Some((c, n.strip_suffix(')')?.parse::<u16>().ok()?)))
        .ok_or_else(ApiError::not_found)?;
    let conn_name = conn_name.to_owned();
    let asking = caller.clone();
    m.build(&asking, move |m| {
        let (c, opened) = find(m, &caller, &conn_name)?;
        let ch = c
            .info()
            .channels()
            .into_iter()
            .find(|ch| ch.number == number)
            .ok_or_else(ApiError::not_found)?;
        Ok(Json(channel_json(m, c.info(), &opened, &ch, q.stats())).into_response())
    })
    .await
}

/// The consumers of the queues of `vhosts` that `caller` may see, answered as a list (see
/// [`list_of`]): a monitor sees all, others only the consumers of their own connections'
/// channels, as RabbitMQ's `rabbit_mgmt_wm_consumers:filter_user` (their channel details
/// name the user, the peer and the connection).
fn list_consumers_of(
    m: &Mgmt,
    caller: &Caller,
    vhosts: &[Arc<crate::broker::vhost::VirtualHost>],
    q: &ListQuery,
) -> ApiResult {
    let conns = connections_by_id(&m.broker);
    let sees = |c: &crate::broker::queue::ConsumerSnapshot| {
        caller.is_monitor()
            || caller.user().is_some_and(|u| {
                conns
                    .get(&c.connection)
                    .and_then(|info| info.opened())
                    .is_some_and(|opened| opened.user == u.name)
            })
    };
    let mut items = Vec::new();
    for v in vhosts {
        let mut queues = v.queues();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        for queue in queues {
            let consumers = queue.snapshot().consumers;
            items.extend(
                consumers
                    .into_iter()
                    .filter(|c| sees(c))
                    .map(|c| (v.clone(), queue.clone(), c)),
            );
        }
    }
    let node = m.node().to_owned();
    // Consumers have no name to filter or sort by, as in RabbitMQ.
    list_of(
        items,
        q,
        |_| None,
        move |(v, queue, c)| consumer_json(&queue.name, &v.name, c, &conns, &node),
    )
}

/// Same as RabbitMQ (`rabbit_mgmt_wm_consumers`): every vhost's consumers, filtered by
/// user rather than by vhost (a user's own consumers show even in a vhost whose permission
/// was taken from them while they consumed).
async fn list_consumers(State(m): State<Arc<Mgmt>>, caller: Caller, Query(q): List) -> ApiResult {
    let mut vhosts = m.broker.vhosts();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    m.build(&caller.clone(), move |m| {
        list_consumers_of(m, &caller, &vhosts, &q)
    })
    .await
}

async fn list_vhost_consumers(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): List,
) -> ApiResult {
    let vhost = m.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    m.build(&caller.clone(), move |m| {
        list_consumers_of(m, &caller, &[vhost], &q)
    })
    .await
}
