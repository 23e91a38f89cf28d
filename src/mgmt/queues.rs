//! Queues: `/api/queues[/{vhost}[/{name}]]`, their contents (purge), `get` and bindings.

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::types::FieldTable;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::http::{
    ApiError, ApiResult, Caller, arguments_of, body_or_empty, created, durable, no_content,
    timestamp, visible_vhosts,
};
use super::list::{List, ListQuery, Row, list_of};
use super::rates::{self, Details, MessageStats, ObjectSample, QUEUE_FIELDS, Rate};
use super::state::Mgmt;
use crate::auth::access::{Permission, Resource};
use crate::broker::Broker;
use crate::broker::queue::consumers::Activity;
use crate::broker::queue::delivery::{DeliverySource, Requeue, Settled, Unblock};
use crate::broker::queue::settings::QueueType;
use crate::broker::queue::{ConsumerSnapshot, Queue, QueueSnapshot};
use crate::broker::stats::{ConnectionInfo, bump};
use crate::broker::vhost::VirtualHost;
use crate::broker::vhost::checks::{Check, no_checks};
use crate::broker::vhost::queues::{QueueDeclare, conditional_delete_refused};
use crate::store::definitions::encode_arguments;

pub fn routes() -> Router<Arc<Mgmt>> {
    Router::new()
        .route("/api/queues", get(list_all))
        .route("/api/queues/{vhost}", get(list_vhost))
        .route(
            "/api/queues/{vhost}/{name}",
            get(show).put(declare).delete(remove),
        )
        .route("/api/queues/{vhost}/{name}/contents", delete(purge))
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
        .route("/api/queues/{vhost}/{name}/bindings", get(bindings))
}

/// Live connections by id, to describe consumers' channels.
pub fn connections_by_id(broker: &Broker) -> HashMap<u64, Arc<ConnectionInfo>> {
    broker
        .connections
        .list()
        .into_iter()
        .map(|c| (c.info().id, c.info().clone()))
        .collect()
}

/// `channel_details` as RabbitMQ nests it in consumers.
pub fn channel_details(conn: Option<&Arc<ConnectionInfo>>, number: u16, node: &str) -> Value {
    let Some(conn) = conn else {
        return json!({});
    };
    let name = conn.name();
    json!({
        "connection_name": name,
        "name": format!("{name} ({number})"),
        "node": node,
        "number": number,
        "peer_host": conn.peer.ip().to_string(),
        "peer_port": conn.peer.port(),
        "user": conn.opened().map(|o| o.user.clone()).unwrap_or_default(),
    })
}

/// A consumer as RabbitMQ lists it, in a queue's `consumer_details` and in `/api/consumers`.
pub fn consumer_json(
    queue: &str,
    vhost: &str,
    c: &ConsumerSnapshot,
    conns: &HashMap<u64, Arc<ConnectionInfo>>,
    node: &str,
) -> Value {
    json!({
        "arguments": encode_arguments(&consumer_arguments(&c.arguments)).0,
        "ack_required": c.ack_required,
        "active": c.activity != Activity::Waiting,
        "activity_status": c.activity.name(),
        "channel_details": channel_details(conns.get(&c.connection), c.channel, node),
        "consumer_tag": c.tag,
        "exclusive": c.exclusive,
        "prefetch_count": c.prefetch_count,
        "queue": {"name": queue, "vhost": vhost},
    })
}

/// A queue as RabbitMQ's management API shows it; `details` adds its consumers, as the
/// single-queue GET does.
pub fn queue_json(
    m: &Mgmt,
    vhost: &Arc<VirtualHost>,
    q: &Arc<Queue>,
    stats: bool,
    conns: &HashMap<u64, Arc<ConnectionInfo>>,
    details: bool,
) -> Value {
    let row = QueueRow::new(m, vhost, q, stats, details);
    let consumers: Vec<Value> = row
        .gauges
        .consumers
        .iter()
        .map(|c| consumer_json(&q.name, &vhost.name, c, conns, m.node()))
        .collect();
    let mut out = row.into_value();
    if let (true, Value::Object(map)) = (details, &mut out) {
        map.insert("consumer_details".into(), Value::Array(consumers));
        map.insert("deliveries".into(), json!([]));
        map.insert("incoming".into(), json!([]));
    }
    out
}

/// A queue's JSON without its consumers, written field by field where it is serialized: a
/// whole `GET /api/queues` writes each straight into the response. Made a
/// `serde_json::Value` of some 60 keys first, 50,000 queues took 2-3 s and a gigabyte.
pub struct QueueRow {
    vhost: Arc<VirtualHost>,
    queue: Arc<Queue>,
    gauges: QueueSnapshot,
    /// The names of the policy and operator policy that apply.
    policies: (Option<String>, Option<String>),
    /// The definition they make together.
    policy_definition: Map<String, Value>,
    /// The queue's rates, read once, and whether it is idle.
    sample: ObjectSample,
    /// `disable_stats` leaves the rates of `message_stats` out.
    stats: bool,
    node: String,
}

impl QueueRow {
    /// With `details`, the consumers are copied under the queue's lock; without, they are
    /// only counted.
    pub fn new(
        m: &Mgmt,
        vhost: &Arc<VirtualHost>,
        queue: &Arc<Queue>,
        stats: bool,
        details: bool,
    ) -> QueueRow {
        let gauges = if details {
            queue.snapshot()
        } else {
            queue.gauges()
        };
        let sample = m
            .rates
            .sample_of(&rates::queue_key(&vhost.name, &queue.name));
        QueueRow {
            policies: vhost.queue_policy_names(&queue.name),
            policy_definition: vhost
                .queue_policy(&queue.name)
                .map(|p| p.definition)
                .unwrap_or_default(),
            vhost: vhost.clone(),
            queue: queue.clone(),
            gauges,
            sample,
            stats,
            node: m.node().to_owned(),
        }
    }
}

impl Row for QueueRow {
    fn into_value(self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl Serialize for QueueRow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (q, s) = (&self.queue, &self.gauges);
        let kind = match q.settings().queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        let (ready, unacked) = (u64::from(s.ready), u64::from(s.unacked));
        // Same as RabbitMQ: dead letters a quorum queue holds (at-least-once) are among its
        // messages, not ready nor unacknowledged.
        let total = ready + unacked + s.held;
        // Bytes are not counted per place: while part of a queue is paged out, none are
        // shown in memory.
        let bytes_in_memory = |n: u64| if s.paged_out > 0 { 0 } else { n };
        // Lepus's queues never hold back a message from a consumer with credit.
        let (utilisation, capacity) = match s.consumer_count {
            0 => (None, 0.0),
            _ => (Some(1.0), 1.0),
        };
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("name", &q.name)?;
        map.serialize_entry("vhost", &self.vhost.name)?;
        map.serialize_entry("type", kind)?;
        map.serialize_entry("durable", &q.durable)?;
        map.serialize_entry("auto_delete", &q.auto_delete)?;
        map.serialize_entry("exclusive", &q.exclusive_owner.is_some())?;
        map.serialize_entry("arguments", &encode_arguments(&q.arguments).0)?;
        map.serialize_entry("node", &self.node)?;
        map.serialize_entry("state", "running")?;
        map.serialize_entry("policy", &self.policies.0)?;
        map.serialize_entry("operator_policy", &self.policies.1)?;
        map.serialize_entry("effective_policy_definition", &self.policy_definition)?;
        map.serialize_entry("consumers", &s.consumer_count)?;
        map.serialize_entry("consumer_utilisation", &utilisation)?;
        map.serialize_entry("consumer_capacity", &capacity)?;
        if kind == "quorum" {
            // Same fields as RabbitMQ 3.10's quorum queues, as a cluster of one node: it
            // leads and is the only member, online.
            let node = std::slice::from_ref(&self.node);
            map.serialize_entry("leader", &self.node)?;
            map.serialize_entry("members", node)?;
            map.serialize_entry("online", node)?;
            map.serialize_entry(
                "open_files",
                &[(&self.node, 0)]
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )?;
            map.serialize_entry("single_active_consumer_ctag", &s.single_active_consumer)?;
            map.serialize_entry("messages_dlx", &s.held)?;
            map.serialize_entry("message_bytes_dlx", &s.held_bytes)?;
        } else {
            map.serialize_entry("exclusive_consumer_tag", &s.exclusive_consumer)?;
            map.serialize_entry("single_active_consumer_tag", &s.single_active_consumer)?;
            map.serialize_entry("head_message_timestamp", &())?;
            map.serialize_entry("recoverable_slaves", &())?;
            map.serialize_entry("messages_ready_ram", &ready.saturating_sub(s.paged_out))?;
            map.serialize_entry("messages_unacknowledged_ram", &unacked)?;
            map.serialize_entry("messages_paged_out", &s.paged_out)?;
            map.serialize_entry("message_bytes_paged_out", &0)?;
        }
        map.serialize_entry("messages_ram", &total.saturating_sub(s.paged_out))?;
        map.serialize_entry("messages_persistent", &s.persistent.messages)?;
        map.serialize_entry(
            "message_bytes",
            &(s.ready_bytes + s.unacked_bytes + s.held_bytes),
        )?;
        map.serialize_entry("message_bytes_ready", &s.ready_bytes)?;
        map.serialize_entry("message_bytes_unacknowledged", &s.unacked_bytes)?;
        map.serialize_entry(
            "message_bytes_ram",
            &(bytes_in_memory(s.ready_bytes) + s.unacked_bytes),
        )?;
        map.serialize_entry("message_bytes_persistent", &s.persistent.bytes)?;
        map.serialize_entry("memory", &s.memory_bytes)?;
        let totals = s.counters.totals();
        let stats = MessageStats {
            totals: &totals,
            fields: QUEUE_FIELDS,
            rates: self.stats.then_some(&self.sample.rates[..]),
        };
        map.serialize_entry("message_stats", &stats)?;
        for (field, value) in [
            ("messages", total),
            ("messages_ready", ready),
            ("messages_unacknowledged", unacked),
        ] {
            map.serialize_entry(field, &value)?;
            map.serialize_entry(&Details(field), &Rate::of(&self.sample.rates, field))?;
        }
        // At rest since the later of the sampler's finding and its last use (a consumer,
        // a get, a declare), as RabbitMQ shows it on a hibernated queue only.
        if let Some(idle) = self.sample.idle_since_ms {
            map.serialize_entry("idle_since", &timestamp(idle.max(s.last_used_ms)))?;
        }
        map.end()
    }
}

/// The queues of `vhosts`, each vhost's by name, answered as a list: only the queues
/// answered are made JSON (see [`list_of`]).
fn list_queues(m: &Arc<Mgmt>, vhosts: &[Arc<VirtualHost>], q: &ListQuery) -> ApiResult {
    let mut items = Vec::new();
    for v in vhosts {
        let mut queues = v.queues();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        items.extend(queues.into_iter().map(|queue| (v.clone(), queue)));
    }
    let (m, stats) = (m.clone(), q.stats());
    list_of(
        items,
        q,
        |(_, queue)| Some(&queue.name),
        move |(v, queue)| QueueRow::new(&m, v, queue, stats, false),
    )
}

async fn list_all(State(m): State<Arc<Mgmt>>, caller: Caller, Query(q): List) -> ApiResult {
    let vhosts = visible_vhosts(&m.broker, &caller);
    m.build(&caller, move |m| list_queues(m, &vhosts, &q)).await
}

async fn list_vhost(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): List,
) -> ApiResult {
    let vhost = caller.vhost(&m.broker, &vhost)?;
    m.build(&caller, move |m| list_queues(m, &[vhost], &q))
        .await
}

async fn show(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): List,
) -> ApiResult {
    let vhost = caller.vhost(&m.broker, &vhost)?;
    let queue = vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    // Its consumers' channels are found among every connection: off the runtime's workers.
    m.build(&caller, move |m| {
        let conns = connections_by_id(&m.broker);
        Ok(Json(queue_json(m, &vhost, &queue, q.stats(), &conns, true)).into_response())
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeclareBody {
    #[serde(deserialize_with = "super::http::lenient_bool")]
    durable: Option<bool>,
    #[serde(deserialize_with = "super::http::lenient_bool")]
    auto_delete: Option<bool>,
    arguments: Option<Value>,
}

/// PUT: declares the queue (201), or finds an equivalent one (204); an inequivalent one is a
/// 400 with the AMQP error's text, as RabbitMQ answers.
async fn declare(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let vhost = caller.vhost_to_change(&m.broker, &vhost)?;
    let req: DeclareBody = body_or_empty(&body)?;
    caller.authorize(
        &m.broker,
        &vhost.name,
        Resource::Queue(&name),
        Permission::Configure,
    )?;
    if name.starts_with("amq.") {
        return Err(ApiError::from_amqp(crate::amqp_error!(
            AccessRefused,
            "queue name '{}' contains reserved prefix 'amq.*'",
            name
        )));
    }
    let arguments = arguments_of(req.arguments.as_ref())?;
    let existed = vhost.queue(&name).is_some();
    let declare = QueueDeclare {
        nowait: false,
        name: name.clone(),
        passive: false,
        // Absent flags are false, as in an AMQP declare (and RabbitMQ's API).
        durable: req.durable.unwrap_or(false),
        exclusive: false,
        auto_delete: req.auto_delete.unwrap_or(false),
        arguments,
    };
    let authorize_new = |checks: Vec<Check<'_>>| caller.check_all(&m.broker, &vhost.name, checks);
    let (_, _, _, epoch) = vhost.declare_queue(&declare, 0, &authorize_new)?;
    durable(&m.broker, epoch).await?;
    Ok(created(!existed))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeleteQuery {
    #[serde(rename = "if-unused")]
    if_unused: Option<String>,
    #[serde(rename = "if-empty")]
    if_empty: Option<String>,
}

async fn remove(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(dq): Query<DeleteQuery>,
) -> ApiResult {
    let vhost = caller.vhost_to_change(&m.broker, &vhost)?;
    let queue = vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    caller.authorize(
        &m.broker,
        &vhost.name,
        Resource::Queue(&name),
        Permission::Configure,
    )?;
    // Same as RabbitMQ, whose API does this over a channel of its own: another
    // connection's exclusive queue is locked (405, answered as a 400).
    vhost.usable_queue(&name, 0)?;
    let (ready, consumers) = queue.counts();
    let desc = crate::broker::arguments::queue_desc(&name, &vhost.name);
    let (if_unused, if_empty) = (
        dq.if_unused.as_deref() == Some("true"),
        dq.if_empty.as_deref() == Some("true"),
    );
    if let Some(reason) = conditional_delete_refused(&queue, &desc, if_unused, if_empty) {
        return Err(ApiError::bad_request(reason));
    }
    if if_unused && consumers > 0 {
        return Err(ApiError::bad_request(format!("{desc} in use")));
    }
    if if_empty && ready > 0 {
        return Err(ApiError::bad_request(format!("{desc} not empty")));
    }
    let (_, epoch) = vhost.remove_queue(&queue);
    durable(&m.broker, epoch).await?;
    Ok(no_content())
}

async fn purge(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let vhost = caller.vhost_to_change(&m.broker, &vhost)?;
    let queue = vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    caller.authorize(
        &m.broker,
        &vhost.name,
        Resource::Queue(&name),
        Permission::Read,
    )?;
    vhost.usable_queue(&name, 0)?;
    // A paged tail is read through to log its acks: off the runtime's workers.
    m.build_change(move |_| Ok(queue.purge().finish())).await?;
    Ok(no_content())
}

#[derive(Debug, Deserialize)]
struct GetBody {
    #[serde(default, deserialize_with = "super::http::lenient_int")]
    count: Option<i64>,
    ackmode: String,
    encoding: String,
    #[serde(default, deserialize_with = "super::http::lenient_int")]
    truncate: Option<i64>,
}

/// The most messages one `get` takes, whatever `count` asks.
pub const MAX_GET_COUNT: u64 = 10_000;

/// A `get` takes no more messages once what it shows of them adds up to this (each body
/// shown as JSON, up to six times its size): what one request can make the broker hold.
pub const MAX_GET_SHOWN_BYTES: u64 = 16 * 1024 * 1024;

/// The most bytes one UTF-8 character takes: a `get` copies this much past what it can show,
/// so that a cut falls at a character's start within what it copied.
const UTF8_CHAR_MAX_BYTES: usize = 4;

/// What a message's properties count towards `MAX_GET_SHOWN_BYTES`, per byte: they are
/// shown decoded, as JSON values, and a header of small values (an array of voids, one
/// byte each) takes about this many times its wire size decoded. Counting only bodies, a
/// `get` of 10,000 messages with empty bodies and 128 KiB headers built tens of gigabytes.
const SHOWN_BYTES_PER_PROPERTY_BYTE: u64 = 32;

/// POST `get`: fetches up to `count` messages; `ackmode` says whether they go back
/// (`ack_requeue_true`, `reject_requeue_true`) or leave the queue (`ack_requeue_false`,
/// `reject_requeue_false`, which dead-letters as a reject does).
async fn get_messages(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let vhost = caller.vhost_to_change(&m.broker, &vhost)?;
    let queue = vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    let req: GetBody = super::http::parse_json(&body)?;
    // Same as RabbitMQ 3.10.8, which runs a `get` over a channel of its own (unlike delete
    // and purge): its errors carry the channel's text.
    caller
        .check(
            &m.broker,
            &vhost.name,
            Resource::Queue(&name),
            Permission::Read,
        )
        .and_then(|()| vhost.usable_queue(&name, 0))
        .map_err(ApiError::from_channel)?;
    let (requeue, reject) = match req.ackmode.as_str() {
        "ack_requeue_true" => (true, false),
        "reject_requeue_true" => (true, true),
        "ack_requeue_false" => (false, false),
        "reject_requeue_false" => (false, true),
        other => return Err(ApiError::bad_request(format!("unknown ackmode: {other}"))),
    };
    let base64 = match req.encoding.as_str() {
        "auto" => false,
        "base64" => true,
        other => return Err(ApiError::bad_request(format!("unknown encoding: {other}"))),
    };
    let count = req.count.unwrap_or(1).clamp(0, MAX_GET_COUNT as i64) as u64;
    let truncate = req.truncate.and_then(|t| u64::try_from(t).ok());
    let mut taken = Vec::new();
    let mut out = Vec::new();
    let mut shown_bytes = 0u64;
    for _ in 0..count {
        if shown_bytes >= MAX_GET_SHOWN_BYTES {
            // One answer holds a bounded amount; the caller asks again for more.
            break;
        }
        // Messages that leave are taken without an ack; those that go back are held (as
        // unacknowledged) until all are read, so that each is seen once.
        let Some((entry, left)) = queue.get(!requeue && !reject) else {
            break;
        };
        let m = &entry.message;
        let around = m.properties.len() as u64 * SHOWN_BYTES_PER_PROPERTY_BYTE
            + (m.exchange.len() + m.routing_key.len()) as u64;
        // The payload is shown whole (or as `truncate` asks) if its JSON fits in what is
        // left of the bound, and cut to fit otherwise: a body of control bytes shows as
        // six times its size, and one 128 MiB message made most of a gigabyte of JSON.
        let room = MAX_GET_SHOWN_BYTES.saturating_sub(shown_bytes + around);
        // Only what can be shown is copied together, however large the body: at most
        // `room` bytes and a character's (a byte is at least one byte of JSON). Whether it
        // is text is for the payload as `truncate` cuts it, as RabbitMQ decides, checked
        // where it lies. Copying the whole body took 128 MiB, uncounted, per request.
        let payload = truncate.map_or(usize::MAX, |t| usize::try_from(t).unwrap_or(usize::MAX));
        let utf8 = !base64 && m.body.head_is_utf8(payload);
        let copied = usize::try_from(room)
            .unwrap_or(usize::MAX)
            .saturating_add(UTF8_CHAR_MAX_BYTES);
        let shown = m.body.head(payload.min(copied));
        let (cut, json_bytes, as_text) =
            super::messages::payload_fitting(&shown, utf8, base64, room);
        shown_bytes += around + json_bytes;
        out.push(super::messages::message_json(
            &entry,
            left,
            &shown[..cut],
            as_text,
        ));
        let bound_reached = cut < shown.len();
        taken.push(entry);
        if bound_reached {
            // One answer holds a bounded amount; the caller asks again for more.
            break;
        }
    }
    // Same as RabbitMQ, which gets them on a channel of its own.
    m.broker.ledger.count_unlisted(&vhost.retired, |c| {
        let no_ack = !requeue && !reject;
        bump(
            if no_ack { &c.get_no_ack } else { &c.get },
            taken.len() as u64,
        );
        let redelivered = taken.iter().filter(|e| e.redelivered).count() as u64;
        bump(&c.redeliver, redelivered);
    });
    let settled = |e: &crate::broker::queue::entry::QueueEntry| Settled::of(e, None);
    if requeue {
        let list = taken.into_iter().map(|e| (settled(&e), e)).collect();
        queue.requeue(list, Requeue::Released, Unblock::Nobody);
    } else if reject {
        let list = taken.into_iter().map(|e| (settled(&e), e)).collect();
        queue.reject(list, Unblock::Nobody);
    }
    Ok(Json(Value::Array(out)).into_response())
}

async fn bindings(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): List,
) -> ApiResult {
    let vhost = caller.vhost(&m.broker, &vhost)?;
    vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    m.build(&caller, move |_| {
        let select = super::bindings::Select {
            source: None,
            destination: Some(("queue", &name)),
        };
        super::bindings::list_bindings(&[vhost], select, &q)
    })
    .await
}

/// A consumer's arguments, kept encoded (an empty table as no bytes).
fn consumer_arguments(raw: &[u8]) -> FieldTable {
    crate::protocol::raw_table::decode(raw).unwrap_or_default()
}

/// The queue RabbitMQ's aliveness test uses.
pub const ALIVENESS_QUEUE: &str = "aliveness-test";

/// RabbitMQ's aliveness test: a queue named `aliveness-test` is declared, a message
/// published to it and fetched back. The queue stays, as in RabbitMQ.
pub fn aliveness(vhost: &VirtualHost) -> Result<(), String> {
    const NAME: &str = ALIVENESS_QUEUE;
    let declare = QueueDeclare {
        nowait: false,
        name: NAME.into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: FieldTable::default(),
    };
    let (queue, _, _, _) = vhost
        .declare_queue(&declare, 0, &no_checks)
        .map_err(|e| e.text)?;
    let props = crate::protocol::properties::encode_all(&Default::default())
        .ok_or_else(|| "cannot encode properties".to_owned())?;
    vhost
        .publish_message(
            "",
            NAME,
            props,
            bytes::Bytes::from_static(b"test_message"),
            None,
        )
        .map_err(|e| e.text)?;
    match queue.get(true) {
        Some((entry, _)) if entry.message.body == b"test_message"[..] => Ok(()),
        _ => Err("the test message did not come back".into()),
    }
}
