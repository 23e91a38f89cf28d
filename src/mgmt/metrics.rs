//! The Prometheus endpoint (RabbitMQ's `rabbitmq_prometheus`, port 15692): `/metrics` with
//! every metric aggregated, `/metrics/per-object` with one series per queue, and
//! `/metrics/detailed` with the families asked for ([`detailed`]), under RabbitMQ's metric
//! names, types and labels, so that its Grafana dashboards and scrapers read Lepus
//! unchanged.
//!
//! Nothing is kept between scrapes: each scrape reads the live counters through a
//! `prometheus-client` collector, which writes the OpenMetrics text.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{ConnectInfo, Query, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod detailed;

use super::listener::{Peer, peer_key};
use super::state::Mgmt;
use crate::broker::alarms;
use crate::broker::stats::MessageTotals;

/// OpenMetrics text, which Prometheus asks for first.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the Prometheus listener and serves it until aborted.
pub async fn serve(
    mgmt: Arc<Mgmt>,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let listener = super::listener::Bounded::with_room(
        listener,
        mgmt.broker.connections.http_connections() / 2,
    );
    let app = Router::new()
        .route("/metrics", get(aggregated))
        .route("/metrics/per-object", get(per_object))
        .route("/metrics/detailed", get(detailed))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(axum::middleware::from_fn_with_state(
            mgmt.scrape_answers.clone(),
            super::answer_room::hold_answers,
        ))
        .with_state(mgmt);
    let app = tower::ServiceExt::map_request(app, super::http::normalise_path);
    Ok((
        local,
        tokio::spawn(super::listener::serve(
            listener,
            app,
            super::listener::HTTP_HEAD_TIMEOUT,
        )),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Filter {
    /// `/metrics/per-object?vhost=...`: only this vhost's queues.
    vhost: Option<String>,
}

async fn aggregated(State(m): State<Arc<Mgmt>>, ConnectInfo(peer): ConnectInfo<Peer>) -> Response {
    let metrics = BrokerMetrics {
        mgmt: m.clone(),
        per_object: false,
        vhost: None,
    };
    scrape(&m, peer, Box::new(metrics)).await
}

async fn per_object(
    State(m): State<Arc<Mgmt>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(f): Query<Filter>,
) -> Response {
    let metrics = BrokerMetrics {
        mgmt: m.clone(),
        per_object: true,
        vhost: f.vhost,
    };
    scrape(&m, peer, Box::new(metrics)).await
}

/// `family=` and `vhost=` repeat, which a `Query` struct cannot take: the query is read
/// as it came.
async fn detailed(
    State(m): State<Arc<Mgmt>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    RawQuery(query): RawQuery,
) -> Response {
    let metrics = detailed::DetailedMetrics {
        mgmt: m.clone(),
        request: detailed::Request::parse(query.as_deref()),
    };
    scrape(&m, peer, Box::new(metrics)).await
}

/// Scrapes run one at a time (`Mgmt::scraping`, each client's in turn) and off the
/// runtime's workers, which the AMQP connections run on: a scrape takes time in the number
/// of queues and channels.
async fn scrape(mgmt: &Mgmt, peer: Peer, metrics: Box<dyn Collector>) -> Response {
    // The turn goes with the work: a scraper that goes away does not free it while the
    // scrape it asked for goes on.
    let client = format!("peer:{}", peer_key(peer.0.ip()));
    let Some(turn) = mgmt.scraping.take(&client).await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    tokio::task::spawn_blocking(move || {
        let answer = render(metrics);
        drop(turn);
        answer
    })
    .await
    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn render(metrics: Box<dyn Collector>) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(metrics);
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// One scrape's view of the broker.
#[derive(Debug)]
struct BrokerMetrics {
    mgmt: Arc<Mgmt>,
    per_object: bool,
    vhost: Option<String>,
}

type Labels = Vec<(&'static str, String)>;

/// Writes one gauge family (whole numbers, or fractions and NaN, RabbitMQ's "none").
fn gauge<N: EncodeGaugeValue + Copy>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, N)],
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Writes one counter family (`name` without `_total`, which the encoder adds).
fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> std::fmt::Result {
    let metric = ConstCounter::new(0u64);
    let mut family = enc.encode_descriptor(name, help, None, metric.metric_type())?;
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// One queue's numbers.
struct QueueSample {
    labels: Labels,
    ready: i64,
    unacked: i64,
    consumers: i64,
    ready_bytes: i64,
    unacked_bytes: i64,
    persistent: i64,
    persistent_bytes: i64,
    published: u64,
}

/// What one scrape reads from the broker, before anything is written.
struct Scrape {
    queues: Vec<QueueSample>,
    totals: MessageTotals,
    connections: usize,
    channels: usize,
    bytes_in: u64,
    bytes_out: u64,
    /// Channels that have published (RabbitMQ's publishers).
    publishers: i64,
    /// Consumers summed over the channels (the Grafana dashboard's publishers are
    /// channels less these).
    channel_consumers: i64,
}

/// A metric: its name, its help text, and how to read it from `T`.
type Metric<T, V> = (&'static str, &'static str, fn(&T) -> V);

/// The queue gauges: name, help, and which number.
const QUEUE_GAUGES: &[Metric<QueueSample, i64>] = &[
    (
        "rabbitmq_queue_messages_ready",
        "Messages ready to be delivered to consumers",
        |q| q.ready,
    ),
    (
        "rabbitmq_queue_messages_unacked",
        "Messages delivered to consumers but not yet acknowledged",
        |q| q.unacked,
    ),
    (
        "rabbitmq_queue_messages",
        "Sum of ready and unacknowledged messages - total queue depth",
        |q| q.ready + q.unacked,
    ),
    ("rabbitmq_queue_consumers", "Consumers on a queue", |q| {
        q.consumers
    }),
    (
        "rabbitmq_queue_messages_bytes",
        "Size in bytes of ready and unacknowledged messages",
        |q| q.ready_bytes + q.unacked_bytes,
    ),
    (
        "rabbitmq_queue_messages_ready_bytes",
        "Size in bytes of ready messages",
        |q| q.ready_bytes,
    ),
    (
        "rabbitmq_queue_messages_unacked_bytes",
        "Size in bytes of all unacknowledged messages",
        |q| q.unacked_bytes,
    ),
    (
        "rabbitmq_queue_messages_persistent",
        "Persistent messages",
        |q| q.persistent,
    ),
    (
        "rabbitmq_queue_messages_persistent_bytes",
        "Size in bytes of persistent messages",
        |q| q.persistent_bytes,
    ),
];

/// The broker-wide message counters, by RabbitMQ's names (labelled `protocol="amqp091"`).
const MESSAGE_COUNTERS: &[Metric<MessageTotals, u64>] = &[
    (
        "rabbitmq_global_messages_received",
        "Total number of messages received from publishers",
        |t| t.publish,
    ),
    (
        "rabbitmq_global_messages_routed",
        "Total number of messages routed to queues or streams",
        |t| {
            t.publish
                .saturating_sub(t.drop_unroutable + t.return_unroutable)
        },
    ),
    (
        "rabbitmq_global_messages_delivered",
        "Total number of messages delivered to consumers",
        |t| t.deliver_get(),
    ),
    (
        "rabbitmq_global_messages_delivered_consume_manual_ack",
        "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
        |t| t.deliver,
    ),
    (
        "rabbitmq_global_messages_delivered_consume_auto_ack",
        "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
        |t| t.deliver_no_ack,
    ),
    (
        "rabbitmq_global_messages_delivered_get_manual_ack",
        "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
        |t| t.get,
    ),
    (
        "rabbitmq_global_messages_delivered_get_auto_ack",
        "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
        |t| t.get_no_ack,
    ),
    (
        "rabbitmq_global_messages_get_empty",
        "Total number of times basic.get operations fetched no message",
        |t| t.get_empty,
    ),
    (
        "rabbitmq_global_messages_acknowledged",
        "Total number of message acknowledgements received from consumers",
        |t| t.ack,
    ),
    (
        "rabbitmq_global_messages_received_confirm",
        "Total number of messages received from publishers expecting confirmations",
        |t| t.publish_confirm,
    ),
    (
        "rabbitmq_global_messages_confirmed",
        "Total number of messages confirmed to publishers",
        |t| t.confirm,
    ),
    (
        "rabbitmq_global_messages_redelivered",
        "Total number of messages redelivered to consumers",
        |t| t.redeliver,
    ),
    (
        "rabbitmq_global_messages_unroutable_dropped",
        "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
        |t| t.drop_unroutable,
    ),
    (
        "rabbitmq_global_messages_unroutable_returned",
        "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
        |t| t.return_unroutable,
    ),
];

impl Collector for BrokerMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let scrape = self.read();
        self.encode_queues(&mut enc, &scrape)?;
        self.encode_objects(&mut enc, &scrape)?;
        self.encode_node(&mut enc)?;
        encode_identity(&self.mgmt, &mut enc)
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn none() -> Labels {
    Labels::new()
}

impl BrokerMetrics {
    fn read(&self) -> Scrape {
        let broker = &self.mgmt.broker;
        let conns = broker.connections.list();
        let mut scrape = Scrape {
            queues: Vec::new(),
            totals: super::rates::broker_totals(broker),
            connections: conns.len(),
            channels: conns.iter().map(|c| c.info().channels().len()).sum(),
            bytes_in: conns.iter().map(|c| load(&c.info().recv_oct)).sum(),
            bytes_out: conns.iter().map(|c| load(&c.info().send_oct)).sum(),
            publishers: conns
                .iter()
                .flat_map(|c| c.info().channels())
                .filter(|ch| load(&ch.messages.publish) > 0)
                .count() as i64,
            channel_consumers: conns
                .iter()
                .flat_map(|c| c.info().channels())
                .map(|ch| i64::from(ch.consumers.load(Ordering::Relaxed)))
                .sum(),
        };
        for v in broker.vhosts() {
            if self.vhost.as_ref().is_some_and(|f| *f != v.name) {
                continue;
            }
            for q in v.queues() {
                let s = q.gauges();
                scrape.queues.push(QueueSample {
                    labels: vec![("vhost", v.name.clone()), ("queue", q.name.clone())],
                    ready: i64::from(s.ready),
                    unacked: i64::from(s.unacked),
                    consumers: s.consumer_count as i64,
                    ready_bytes: s.ready_bytes as i64,
                    unacked_bytes: s.unacked_bytes as i64,
                    persistent: s.persistent.messages as i64,
                    persistent_bytes: s.persistent.bytes as i64,
                    published: s.counters.publish,
                });
            }
        }
        scrape
    }

    /// Queue families: one series per queue, or their sum without labels.
    fn encode_queues(&self, enc: &mut DescriptorEncoder, s: &Scrape) -> std::fmt::Result {
        for (name, help, f) in QUEUE_GAUGES {
            let samples: Vec<(Labels, i64)> = match self.per_object {
                true => s.queues.iter().map(|q| (q.labels.clone(), f(q))).collect(),
                false => vec![(none(), s.queues.iter().map(f).sum())],
            };
            gauge(enc, name, help, &samples)?;
        }
        let published: Vec<(Labels, u64)> = match self.per_object {
            true => s
                .queues
                .iter()
                .map(|q| (q.labels.clone(), q.published))
                .collect(),
            false => vec![(none(), s.queues.iter().map(|q| q.published).sum())],
        };
        counter(
            enc,
            "rabbitmq_queue_messages_published",
            "Total number of messages published to queues",
            &published,
        )
    }

    /// Connections, channels, consumers and queues: how many, and how many came and went.
    fn encode_objects(&self, enc: &mut DescriptorEncoder, s: &Scrape) -> std::fmt::Result {
        let churn = &self.mgmt.broker.ledger.churn;
        let consumers: i64 = s.queues.iter().map(|q| q.consumers).sum();
        let amqp = || vec![("protocol", "amqp091".to_owned())];
        for (name, help, value) in [
            (
                "rabbitmq_connections",
                "Connections currently open",
                s.connections as i64,
            ),
            (
                "rabbitmq_channels",
                "Channels currently open",
                s.channels as i64,
            ),
            (
                "rabbitmq_consumers",
                "Consumers currently connected",
                consumers,
            ),
            (
                "rabbitmq_channel_consumers",
                "Consumers on a channel",
                s.channel_consumers,
            ),
            ("rabbitmq_queues", "Queues available", s.queues.len() as i64),
        ] {
            gauge(enc, name, help, &[(none(), value)])?;
        }
        for (name, help, value) in [
            (
                "rabbitmq_connections_opened",
                "Total number of connections opened",
                load(&churn.connections_opened),
            ),
            (
                "rabbitmq_connections_closed",
                "Total number of connections closed or terminated",
                load(&churn.connections_closed),
            ),
            (
                "rabbitmq_channels_opened",
                "Total number of channels opened",
                load(&churn.channels_opened),
            ),
            (
                "rabbitmq_channels_closed",
                "Total number of channels closed",
                load(&churn.channels_closed),
            ),
            (
                "rabbitmq_queues_declared",
                "Total number of queues declared",
                load(&churn.queues_declared),
            ),
            (
                "rabbitmq_queues_created",
                "Total number of queues created",
                load(&churn.queues_created),
            ),
            (
                "rabbitmq_queues_deleted",
                "Total number of queues deleted",
                load(&churn.queues_deleted),
            ),
            (
                "rabbitmq_connection_incoming_bytes",
                "Total number of bytes received on a connection",
                s.bytes_in,
            ),
            (
                "rabbitmq_connection_outgoing_bytes",
                "Total number of bytes sent on a connection",
                s.bytes_out,
            ),
        ] {
            counter(enc, name, help, &[(none(), value)])?;
        }
        for (name, help, f) in MESSAGE_COUNTERS {
            counter(enc, name, help, &[(amqp(), f(&s.totals))])?;
        }
        gauge(
            enc,
            "rabbitmq_global_publishers",
            "Current number of publishers",
            &[(amqp(), s.publishers)],
        )?;
        gauge(
            enc,
            "rabbitmq_global_consumers",
            "Current number of consumers",
            &[(amqp(), consumers)],
        )
    }

    /// Process, memory, disk and alarms.
    fn encode_node(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let broker = &self.mgmt.broker;
        let raised = broker.alarms.raised();
        let (fds, max_fds) = crate::broker::alarms::file_descriptors();
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (name, help, value) in [
            (
                "rabbitmq_process_resident_memory_bytes",
                "Memory used in bytes",
                alarms::resident_bytes().unwrap_or(0),
            ),
            (
                "rabbitmq_resident_memory_limit_bytes",
                "Memory high watermark in bytes",
                broker.alarms.memory_limit_bytes(),
            ),
            (
                "rabbitmq_disk_space_available_bytes",
                "Disk space available in bytes",
                alarms::free_disk_bytes(&broker.config.data_dir).unwrap_or(0),
            ),
            (
                "rabbitmq_disk_space_available_limit_bytes",
                "Free disk space low watermark in bytes",
                broker.alarms.disk_free_limit_bytes(),
            ),
            ("rabbitmq_process_open_fds", "Open file descriptors", fds),
            (
                "rabbitmq_process_max_fds",
                "Open file descriptors limit",
                max_fds,
            ),
            (
                "rabbitmq_process_open_tcp_sockets",
                "Open TCP sockets",
                broker.connection_count() as u64,
            ),
            (
                "rabbitmq_process_max_tcp_sockets",
                "Open TCP sockets limit",
                broker.config.limits.max_connections as u64,
            ),
            (
                "rabbitmq_alarms_memory_used_watermark",
                "is 1 if VM memory watermark alarm is in effect",
                u64::from(raised.memory),
            ),
            (
                "rabbitmq_alarms_free_disk_space_watermark",
                "is 1 if free disk space watermark alarm is in effect",
                u64::from(raised.disk),
            ),
            (
                "rabbitmq_alarms_file_descriptor_limit",
                "is 1 if file descriptor limit alarm is in effect",
                0,
            ),
            (
                "rabbitmq_erlang_uptime_seconds",
                "Node uptime",
                crate::broker::timer::now_ms().saturating_sub(broker.started_at_ms) / 1000,
            ),
        ] {
            gauge(enc, name, help, &[(none(), as_i64(value))])?;
        }
        Ok(())
    }
}

/// `rabbitmq_build_info` and `rabbitmq_identity_info`, which dashboards group by; on every
/// endpoint.
fn encode_identity(mgmt: &Mgmt, enc: &mut DescriptorEncoder) -> std::fmt::Result {
    let version = mgmt.broker.config.version.clone();
    let build = vec![
        ("rabbitmq_version", version.clone()),
        ("prometheus_plugin_version", version),
        ("prometheus_client_version", "prometheus-client 0.26".into()),
        ("erlang_version", "none".into()),
        ("lepus_version", env!("CARGO_PKG_VERSION").into()),
    ];
    gauge(
        enc,
        "rabbitmq_build_info",
        "RabbitMQ & Erlang/OTP version info",
        &[(build, 1)],
    )?;
    let cluster = mgmt.broker.cluster_name();
    let identity = vec![
        ("rabbitmq_node", mgmt.node().to_owned()),
        ("rabbitmq_cluster", cluster.clone()),
        ("rabbitmq_cluster_permanent_id", mgmt.broker.cluster_id()),
    ];
    gauge(
        enc,
        "rabbitmq_identity_info",
        "RabbitMQ node & cluster identity info",
        &[(identity, 1)],
    )
}
