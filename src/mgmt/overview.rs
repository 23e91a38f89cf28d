//! The broker as a whole: `overview`, `whoami`, `nodes`, health checks and the cluster name.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, body::Bytes};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::http::{ApiError, ApiResult, Caller, body_or_empty, durable, no_content};
use super::list::{List, ListQuery};
use super::rates::{self, ALL_FIELDS};
use super::state::Mgmt;
use crate::auth::access::{Permission, Resource};
use crate::broker::Broker;
use crate::broker::alarms;

pub fn routes() -> Router<Arc<Mgmt>> {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{name}", get(node))
        .route("/api/aliveness-test/{vhost}", get(aliveness))
        .route("/api/healthchecks/node", get(healthcheck))
        .route("/api/healthchecks/node/{node}", get(healthcheck))
        .route("/api/cluster-name", get(cluster_name).put(set_cluster_name))
        .route("/api/extensions", get(|| async { Json(json!([])) }))
        .route("/api/rates/history", get(history))
}

const EXCHANGE_TYPES: &[(&str, &str)] = &[
    (
        "direct",
        "AMQP direct exchange, as per the AMQP specification",
    ),
    (
        "fanout",
        "AMQP fanout exchange, as per the AMQP specification",
    ),
    (
        "headers",
        "AMQP headers exchange, as per the AMQP specification",
    ),
    (
        "topic",
        "AMQP topic exchange, as per the AMQP specification",
    ),
];

async fn overview(State(m): State<Arc<Mgmt>>, caller: Caller, Query(q): List) -> Response {
    // The totals walk every queue, and dashboards ask for them every few seconds.
    let asking = caller.clone();
    m.build(&asking, move |m| Ok(overview_of(m, &caller, &q)))
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

fn overview_of(m: &Mgmt, caller: &Caller, q: &ListQuery) -> Response {
    let broker = &m.broker;
    let visible: Vec<_> = broker
        .vhosts()
        .into_iter()
        .filter(|v| caller.may_see(broker, &v.name))
        .collect();
    // Every vhost's totals, deleted ones' too, for whoever sees them all.
    let mut totals = match caller.is_monitor() {
        true => rates::broker_totals(broker),
        false => crate::broker::stats::MessageTotals::default(),
    };
    let (mut ready, mut unacked, mut queues, mut exchanges, mut consumers) = (0u64, 0u64, 0, 0, 0);
    let open = match caller.is_monitor() {
        true => rates::OpenChannels::default(),
        false => rates::channels(broker),
    };
    for v in &visible {
        if !caller.is_monitor() {
            totals.add(&rates::vhost_totals_in(broker, &v.name, &open));
        }
        for queue in v.queues() {
            let s = queue.gauges();
            ready += u64::from(s.ready);
            unacked += u64::from(s.unacked);
            consumers += s.consumer_count;
            queues += 1;
        }
        exchanges += v.exchanges().len();
    }
    // Same as RabbitMQ: a monitor counts every connection of the vhosts, anyone else only
    // their own.
    let conns: Vec<_> = broker
        .connections
        .list()
        .into_iter()
        .filter(|c| {
            c.info().opened().is_some_and(|o| {
                visible.iter().any(|v| v.name == o.vhost)
                    && (caller.is_monitor() || caller.user().is_none_or(|u| u.name == o.user))
            })
        })
        .collect();
    let channels: usize = conns.iter().map(|c| c.info().channels().len()).sum();
    // The rates of what the caller sees: the whole broker's for a monitor, the sum of its
    // vhosts' for anyone else (the broker's would tell them of vhosts they cannot see).
    let seen_rates = match caller.is_monitor() {
        true => m.rates.sample_of("overview").rates,
        false => m
            .rates
            .summed(visible.iter().map(|v| rates::vhost_key(&v.name))),
    };
    let queue_totals = queue_totals(&seen_rates, ready, unacked);
    let mut churn_rates = Map::new();
    for (field, value) in broker.ledger.churn.fields() {
        rates::with_rate(&mut churn_rates, &m.rates, "overview", field, value);
    }
    let version = &broker.config.version;
    let mut overview = json!({
        "management_version": version,
        "rates_mode": "basic",
        "sample_retention_policies": {"global": [600, 3600, 28800, 86400], "basic": [600, 3600], "detailed": [600]},
        "exchange_types": EXCHANGE_TYPES.iter().map(|(n, d)| json!({"name": n, "description": d, "enabled": true})).collect::<Vec<_>>(),
        "product_version": version,
        "product_name": broker.config.product,
        "rabbitmq_version": version,
        "cluster_name": read_cluster_name(m),
        "erlang_version": "none (Lepus is written in Rust)",
        "erlang_full_version": "none (Lepus is written in Rust)",
        "release_series_support_status": "supported",
        "disable_stats": false,
        "enable_queue_totals": false,
        "message_stats": overview_stats(&totals, q.stats().then_some(&seen_rates)),
        "churn_rates": churn_rates,
        "queue_totals": queue_totals,
        "object_totals": {
            "channels": channels,
            "connections": conns.len(),
            "exchanges": exchanges,
            "queues": queues,
        },
        "statistics_db_event_queue": 0,
    });
    if caller.is_monitor() {
        add_monitor_fields(m, &mut overview, consumers);
    }
    Json(overview).into_response()
}

/// Same as RabbitMQ: the node, its listeners and the consumer count are a monitor's.
fn add_monitor_fields(m: &Mgmt, overview: &mut Value, consumers: usize) {
    if let Value::Object(map) = overview {
        let node = m.node();
        map.insert("node".into(), json!(node));
        map.insert("listeners".into(), json!(m.listeners(node)));
        map.insert("contexts".into(), json!([]));
        if let Some(Value::Object(totals)) = map.get_mut("object_totals") {
            totals.insert("consumers".into(), json!(consumers));
        }
    }
}

/// The overview's `queue_totals`: the depth of the queues the caller sees, with `rates`.
fn queue_totals(rates: &[(&'static str, f64)], ready: u64, unacked: u64) -> Map<String, Value> {
    let rate_of = |field: &str| {
        rates
            .iter()
            .find(|(f, _)| *f == field)
            .map_or(0.0, |(_, r)| *r)
    };
    let mut totals = Map::new();
    for (field, value) in [
        ("messages", ready + unacked),
        ("messages_ready", ready),
        ("messages_unacknowledged", unacked),
    ] {
        totals.insert(field.into(), json!(value));
        totals.insert(format!("{field}_details"), json!({"rate": rate_of(field)}));
    }
    totals
}

/// The overview's `message_stats`: the vhosts' counters, and RabbitMQ's message store disk
/// counters (Lepus's logs have none of that kind; they are 0).
fn overview_stats(
    totals: &crate::broker::stats::MessageTotals,
    rates: Option<&Vec<(&'static str, f64)>>,
) -> Value {
    let with_rates = rates.is_some();
    let stats = rates::MessageStats {
        totals,
        fields: ALL_FIELDS,
        rates: rates.map(|r| r.as_slice()),
    };
    let mut stats = serde_json::to_value(stats).unwrap_or_default();
    if let Value::Object(map) = &mut stats {
        for field in ["disk_reads", "disk_writes"] {
            map.insert(field.into(), json!(0));
            if with_rates {
                map.insert(format!("{field}_details"), json!({"rate": 0.0}));
            }
        }
    }
    stats
}

async fn whoami(caller: Caller) -> Response {
    let tags = match &caller {
        Caller::Operator => vec!["administrator".to_owned()],
        Caller::User(u) => u.tags.clone(),
    };
    Json(json!({"name": caller.name(), "tags": tags})).into_response()
}

async fn nodes(State(m): State<Arc<Mgmt>>, caller: Caller) -> ApiResult {
    caller.require_monitor()?;
    Ok(Json(json!([node_json(&m)])).into_response())
}

async fn node(State(m): State<Arc<Mgmt>>, caller: Caller, Path(name): Path<String>) -> ApiResult {
    caller.require_monitor()?;
    if name != m.node() {
        return Err(ApiError::not_found());
    }
    Ok(Json(node_json(&m)).into_response())
}

/// Node counters RabbitMQ reports that have no meaning for Lepus (Erlang's garbage
/// collector, Mnesia, the message store's file handles): present, at 0, so that clients that
/// read them find them.
const NODE_ZEROS: &[&str] = &[
    "context_switches",
    "gc_bytes_reclaimed",
    "gc_num",
    "io_read_avg_time",
    "io_read_bytes",
    "io_read_count",
    "io_reopen_count",
    "io_seek_avg_time",
    "io_seek_count",
    "io_sync_avg_time",
    "io_sync_count",
    "io_write_avg_time",
    "io_write_bytes",
    "io_write_count",
    "mnesia_disk_tx_count",
    "mnesia_ram_tx_count",
    "msg_store_read_count",
    "msg_store_write_count",
    "queue_index_read_count",
    "queue_index_write_count",
];

fn node_json(m: &Mgmt) -> Value {
    let broker = &m.broker;
    let mut node = node_basics(broker);
    if let Value::Object(map) = &mut node {
        for (field, value) in broker.ledger.churn.fields() {
            rates::with_rate(map, &m.rates, "overview", field, value);
        }
        for field in NODE_ZEROS {
            map.insert((*field).into(), json!(0));
            map.insert(format!("{field}_details"), json!({"rate": 0.0}));
        }
        for (gauge, value) in rates::node_gauges(broker) {
            rates::with_rate(map, &m.rates, "node", gauge, value);
        }
        map.insert("contexts".into(), json!([]));
        map.insert("metrics_gc_queue_length".into(), json!({}));
        map.insert("ra_open_file_metrics".into(), json!({}));
    }
    node
}

fn node_basics(broker: &Broker) -> Value {
    let raised = broker.alarms.raised();
    let (_, fd_total) = alarms::file_descriptors();
    let uptime_ms = crate::broker::timer::now_ms().saturating_sub(broker.started_at_ms);
    let processors = std::thread::available_parallelism().map_or(1, |n| n.get());
    json!({
        "name": broker.config.node_name,
        "type": "disc",
        "running": true,
        "mem_limit": broker.alarms.memory_limit_bytes(),
        "mem_alarm": raised.memory,
        "mem_calculation_strategy": "rss",
        "disk_free_limit": broker.alarms.disk_free_limit_bytes(),
        "disk_free_alarm": raised.disk,
        "fd_total": fd_total,
        "sockets_total": broker.connections.max_connections(),
        "proc_total": 0,
        "run_queue": 0,
        "processors": processors,
        "uptime": uptime_ms,
        "os_pid": std::process::id().to_string(),
        "rates_mode": "basic",
        "partitions": [],
        "applications": [],
        "auth_mechanisms": broker.config.auth_mechanisms.iter().map(|m| json!({"name": m, "enabled": true})).collect::<Vec<_>>(),
        "exchange_types": EXCHANGE_TYPES.iter().map(|(n, d)| json!({"name": n, "description": d, "enabled": true})).collect::<Vec<_>>(),
        "db_dir": broker.config.data_dir.display().to_string(),
        "config_files": [],
        "log_files": [],
        "enabled_plugins": ["rabbitmq_management", "rabbitmq_prometheus"],
        "net_ticktime": 60,
        "cluster_links": [],
    })
}

/// Declares, publishes to, gets from and deletes a queue in the vhost, as RabbitMQ's
/// aliveness test does.
async fn aliveness(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult {
    let vhost = caller.vhost_to_change(&m.broker, &vhost)?;
    // Same as RabbitMQ, which runs the test over a channel of the caller's: the declare
    // needs configure on the queue, the publish write on the default exchange, the get read
    // on the queue, and a refusal is a 401 with the channel's whole text.
    if let Some(user) = caller.user() {
        let queue = Resource::Queue(super::queues::ALIVENESS_QUEUE);
        for (resource, permission) in [
            (queue, Permission::Configure),
            (Resource::Exchange(""), Permission::Write),
            (queue, Permission::Read),
        ] {
            m.broker
                .access
                .check(&user.name, &vhost.name, resource, permission)
                .map_err(|e| ApiError::not_authorised(e.text))?;
        }
    }
    match super::queues::aliveness(&vhost) {
        Ok(()) => Ok(Json(json!({"status": "ok"})).into_response()),
        Err(reason) => Ok((
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": reason})),
        )
            .into_response()),
    }
}

/// Fails with 503 while an alarm is raised or the store has stopped writing.
async fn healthcheck(State(m): State<Arc<Mgmt>>, _caller: Caller) -> Response {
    let raised = m.broker.alarms.raised();
    let reason = if !m.broker.store.shared.writable() {
        Some("the message store stopped writing after an fsync failed")
    } else if raised.any() {
        Some(raised.reason())
    } else {
        None
    };
    match reason {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": reason})),
        )
            .into_response(),
    }
}

fn read_cluster_name(m: &Mgmt) -> String {
    m.broker.cluster_name()
}

async fn cluster_name(State(m): State<Arc<Mgmt>>, _caller: Caller) -> Response {
    Json(json!({"name": read_cluster_name(&m)})).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct ClusterName {
    #[serde(default)]
    name: Option<String>,
}

async fn set_cluster_name(State(m): State<Arc<Mgmt>>, caller: Caller, body: Bytes) -> ApiResult {
    caller.require_admin()?;
    let req: ClusterName = body_or_empty(&body)?;
    // Same as RabbitMQ: the name must be given, and may be empty.
    let name = req
        .name
        .ok_or_else(|| ApiError::bad_request("[{key_missing,name}]"))?;
    let epoch = m
        .broker
        .set_cluster_name(name)
        .map_err(ApiError::bad_request)?;
    durable(&m.broker, Some(epoch)).await?;
    Ok(no_content())
}

/// The overview's message rates over the last minutes, oldest first, for the web UI.
/// The overview's rates and queue depth over the last minutes, oldest first, for the web
/// UI's charts. They cover every vhost, so only a monitor sees them (others get `[]`).
async fn history(State(m): State<Arc<Mgmt>>, caller: Caller) -> Response {
    if !caller.is_monitor() {
        return Json(Value::Array(Vec::new())).into_response();
    }
    Json(Value::Array(m.rates.history())).into_response()
}
