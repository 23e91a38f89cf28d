//! `/metrics/detailed`: only the metric families a scraper asks for (`family=`, repeated),
//! the queue families only for the vhosts it names (`vhost=`, repeated), under RabbitMQ
//! 3.10's names: `rabbitmq_detailed_*`, and `rabbitmq_cluster_*` for exchanges and vhosts.
//! Without a family it answers the build and identity info only, as RabbitMQ does.
//!
//! RabbitMQ's documentation sends large deployments here
//! (`?family=queue_coarse_metrics&vhost=...`), so a dashboard built on these names must
//! find them. The families that count per channel and exchange or queue
//! (`channel_exchange_metrics`, `channel_queue_metrics`,
//! `channel_queue_exchange_metrics`) answer nothing: Lepus counts per channel and per queue,
//! not per pair.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::{Labels, Metric, counter, encode_identity, gauge};
use crate::broker::alarms;
use crate::broker::queue::QueueSnapshot;
use crate::broker::stats::ChannelInfo;
use crate::mgmt::state::Mgmt;

/// The families this endpoint knows, by RabbitMQ's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    QueueCoarse,
    QueueConsumerCount,
    Queue,
    ConnectionCoarse,
    Connection,
    Channel,
    ChannelProcess,
    ExchangeNames,
    ExchangeBindings,
    VhostStatus,
    NodeCoarse,
    Node,
    NodePersister,
}

const FAMILIES: &[(&str, Family)] = &[
    ("queue_coarse_metrics", Family::QueueCoarse),
    ("queue_consumer_count", Family::QueueConsumerCount),
    ("queue_metrics", Family::Queue),
    ("connection_coarse_metrics", Family::ConnectionCoarse),
    ("connection_metrics", Family::Connection),
    ("channel_metrics", Family::Channel),
    ("channel_process_metrics", Family::ChannelProcess),
    ("exchange_names", Family::ExchangeNames),
    ("exchange_bindings", Family::ExchangeBindings),
    ("vhost_status", Family::VhostStatus),
    ("node_coarse_metrics", Family::NodeCoarse),
    ("node_metrics", Family::Node),
    ("node_persister_metrics", Family::NodePersister),
];

/// What one scrape asks for.
#[derive(Debug, Default)]
pub struct Request {
    /// Each family once, in the order asked; unknown names are left out, as RabbitMQ does.
    families: Vec<Family>,
    /// Queue families only for these vhosts; all when empty.
    vhosts: Vec<String>,
}

impl Request {
    /// From the query string: `family=` and `vhost=`, each repeatable, values
    /// percent-encoded.
    pub fn parse(query: Option<&str>) -> Request {
        let mut request = Request::default();
        for pair in query.unwrap_or_default().split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = crate::mgmt::bindings::unquote_plus(value);
            match key {
                "family" => {
                    let known = FAMILIES.iter().find(|(name, _)| *name == value);
                    if let Some((_, family)) = known
                        && !request.families.contains(family)
                    {
                        request.families.push(*family);
                    }
                }
                "vhost" => request.vhosts.push(value),
                _ => {}
            }
        }
        request
    }
}

/// One scrape of `/metrics/detailed`.
#[derive(Debug)]
pub struct DetailedMetrics {
    pub mgmt: Arc<Mgmt>,
    pub request: Request,
}

/// A family's metric names written so far: `queue_consumer_count` and `queue_metrics` both
/// hold `rabbitmq_detailed_queue_consumers`, and a scrape with a name twice is refused.
type Written = HashSet<&'static str>;

impl Collector for DetailedMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let mut written = Written::new();
        let queues = self.queues();
        for family in &self.request.families {
            let enc = &mut enc;
            match family {
                Family::QueueCoarse => queue_coarse(enc, &queues, &mut written)?,
                Family::QueueConsumerCount => queue_consumers(enc, &queues, &mut written)?,
                Family::Queue => {
                    queue_consumers(enc, &queues, &mut written)?;
                    queue_details(enc, &queues, &mut written)?;
                }
                Family::ConnectionCoarse | Family::Connection => self.connections(enc, *family)?,
                Family::Channel | Family::ChannelProcess => self.channels(enc, *family)?,
                Family::ExchangeNames | Family::ExchangeBindings => self.exchanges(enc, *family)?,
                Family::VhostStatus => self.vhosts(enc)?,
                Family::NodeCoarse | Family::Node | Family::NodePersister => {
                    self.node(enc, *family)?
                }
            }
        }
        encode_identity(&self.mgmt, &mut enc)
    }
}

/// A queue's labels and numbers, read once for every queue family.
struct QueueRow {
    labels: Labels,
    gauges: QueueSnapshot,
}

fn queue_coarse(
    enc: &mut DescriptorEncoder,
    queues: &[QueueRow],
    written: &mut Written,
) -> std::fmt::Result {
    let depths: [Metric<QueueSnapshot, i64>; 3] = [
        (
            "rabbitmq_detailed_queue_messages_ready",
            "Messages ready to be delivered to consumers",
            |q| i64::from(q.ready),
        ),
        (
            "rabbitmq_detailed_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            |q| i64::from(q.unacked),
        ),
        (
            "rabbitmq_detailed_queue_messages",
            "Sum of ready and unacknowledged messages - total queue depth",
            |q| i64::from(q.ready) + i64::from(q.unacked),
        ),
    ];
    for (name, help, f) in depths {
        if written.insert(name) {
            gauge(enc, name, help, &per_queue(queues, &f))?;
        }
    }
    // Lepus's queues are not Erlang processes: they do no reductions.
    let name = "rabbitmq_detailed_queue_process_reductions";
    if written.insert(name) {
        let zeros: Vec<(Labels, u64)> = queues.iter().map(|q| (q.labels.clone(), 0)).collect();
        counter(
            enc,
            name,
            "Total number of queue process reductions",
            &zeros,
        )?;
    }
    Ok(())
}

fn queue_consumers(
    enc: &mut DescriptorEncoder,
    queues: &[QueueRow],
    written: &mut Written,
) -> std::fmt::Result {
    let name = "rabbitmq_detailed_queue_consumers";
    if !written.insert(name) {
        return Ok(());
    }
    let samples = per_queue(queues, &|q| q.consumer_count as i64);
    gauge(enc, name, "Consumers on a queue", &samples)
}

/// `queue_metrics` besides the consumers.
/// `queue_metrics` gauges counted in whole numbers.
const QUEUE_DETAIL_GAUGES: &[Metric<QueueSnapshot, u64>] = &[
    (
        "rabbitmq_detailed_queue_process_memory_bytes",
        "Memory in bytes used by the Erlang queue process",
        |q| q.memory_bytes,
    ),
    (
        "rabbitmq_detailed_queue_messages_ram",
        "Ready and unacknowledged messages stored in memory",
        |q| (u64::from(q.ready) + u64::from(q.unacked)).saturating_sub(q.paged_out),
    ),
    (
        "rabbitmq_detailed_queue_messages_ram_bytes",
        "Size of ready and unacknowledged messages stored in memory",
        |q| match q.paged_out {
            0 => q.ready_bytes + q.unacked_bytes,
            _ => q.unacked_bytes,
        },
    ),
    (
        "rabbitmq_detailed_queue_messages_ready_ram",
        "Ready messages stored in memory",
        |q| u64::from(q.ready).saturating_sub(q.paged_out),
    ),
    (
        "rabbitmq_detailed_queue_messages_unacked_ram",
        "Unacknowledged messages stored in memory",
        |q| u64::from(q.unacked),
    ),
    (
        "rabbitmq_detailed_queue_messages_persistent",
        "Persistent messages",
        |q| q.persistent.messages,
    ),
    (
        "rabbitmq_detailed_queue_messages_persistent_bytes",
        "Size in bytes of persistent messages",
        |q| q.persistent.bytes,
    ),
    (
        "rabbitmq_detailed_queue_messages_bytes",
        "Size in bytes of ready and unacknowledged messages",
        |q| q.ready_bytes + q.unacked_bytes,
    ),
    (
        "rabbitmq_detailed_queue_messages_ready_bytes",
        "Size in bytes of ready messages",
        |q| q.ready_bytes,
    ),
    (
        "rabbitmq_detailed_queue_messages_unacked_bytes",
        "Size in bytes of all unacknowledged messages",
        |q| q.unacked_bytes,
    ),
    (
        "rabbitmq_detailed_queue_messages_paged_out",
        "Messages paged out to disk",
        |q| q.paged_out,
    ),
    // Bytes are not counted per place, as in the API's `message_bytes_paged_out`.
    (
        "rabbitmq_detailed_queue_messages_paged_out_bytes",
        "Size in bytes of messages paged out to disk",
        |_| 0,
    ),
];

fn queue_details(
    enc: &mut DescriptorEncoder,
    queues: &[QueueRow],
    written: &mut Written,
) -> std::fmt::Result {
    // Lepus's queues never hold back a message from a consumer with credit, as the API's
    // `consumer_capacity` says.
    let capacity: Vec<(Labels, f64)> = queues
        .iter()
        .map(|q| {
            (
                q.labels.clone(),
                if q.gauges.consumer_count > 0 {
                    1.0
                } else {
                    0.0
                },
            )
        })
        .collect();
    for (name, help) in [
        (
            "rabbitmq_detailed_queue_consumer_capacity",
            "Consumer capacity",
        ),
        (
            "rabbitmq_detailed_queue_consumer_utilisation",
            "Same as consumer capacity",
        ),
    ] {
        if written.insert(name) {
            gauge(enc, name, help, &capacity)?;
        }
    }
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for (name, help, f) in QUEUE_DETAIL_GAUGES {
        if written.insert(name) {
            gauge(enc, name, help, &per_queue(queues, &|q| as_i64(f(q))))?;
        }
    }
    // No head timestamp is kept: NaN, as RabbitMQ answers for a queue without one.
    let name = "rabbitmq_detailed_queue_head_message_timestamp";
    if written.insert(name) {
        let nan: Vec<(Labels, f64)> = queues
            .iter()
            .map(|q| (q.labels.clone(), f64::NAN))
            .collect();
        gauge(
            enc,
            name,
            "Timestamp of the first message in the queue, if any",
            &nan,
        )?;
    }
    // RabbitMQ's classic queue store counters; Lepus's logs have none of that kind.
    for (name, help) in [
        (
            "rabbitmq_detailed_queue_disk_reads",
            "Total number of times queue read messages from disk",
        ),
        (
            "rabbitmq_detailed_queue_disk_writes",
            "Total number of times queue wrote messages to disk",
        ),
    ] {
        if written.insert(name) {
            let zeros: Vec<(Labels, u64)> = queues.iter().map(|q| (q.labels.clone(), 0)).collect();
            counter(enc, name, help, &zeros)?;
        }
    }
    Ok(())
}

fn per_queue(queues: &[QueueRow], f: &dyn Fn(&QueueSnapshot) -> i64) -> Vec<(Labels, i64)> {
    queues
        .iter()
        .map(|q| (q.labels.clone(), f(&q.gauges)))
        .collect()
}

impl DetailedMetrics {
    /// Every queue of the vhosts asked for, if a queue family is asked for.
    fn queues(&self) -> Vec<QueueRow> {
        let wanted = self.request.families.iter().any(|f| {
            matches!(
                f,
                Family::QueueCoarse | Family::QueueConsumerCount | Family::Queue
            )
        });
        if !wanted {
            return Vec::new();
        }
        let mut rows = Vec::new();
        for v in self.mgmt.broker.vhosts() {
            if !self.request.vhosts.is_empty() && !self.request.vhosts.contains(&v.name) {
                continue;
            }
            for q in v.queues() {
                rows.push(QueueRow {
                    labels: vec![("vhost", v.name.clone()), ("queue", q.name.clone())],
                    gauges: q.gauges(),
                });
            }
        }
        rows
    }

    /// Connection families, labelled `channel` with an id shaped as RabbitMQ's process ids
    /// (`<0.ID.0>`, ID the connection's), where RabbitMQ puts the connection's process id.
    /// Not its name: the endpoint asks for no login, and a name is the client's address and
    /// port.
    fn connections(&self, enc: &mut DescriptorEncoder, family: Family) -> std::fmt::Result {
        let conns = self.mgmt.broker.connections.list();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let each =
            |f: &dyn Fn(&crate::broker::stats::ConnectionInfo) -> u64| -> Vec<(Labels, u64)> {
                conns
                    .iter()
                    .map(|c| (vec![("channel", process_id(c.info().id, 0))], f(c.info())))
                    .collect()
            };
        if family == Family::ConnectionCoarse {
            counter(
                enc,
                "rabbitmq_detailed_connection_incoming_bytes",
                "Total number of bytes received on a connection",
                &each(&|c| load(&c.recv_oct)),
            )?;
            counter(
                enc,
                "rabbitmq_detailed_connection_outgoing_bytes",
                "Total number of bytes sent on a connection",
                &each(&|c| load(&c.send_oct)),
            )?;
            return counter(
                enc,
                "rabbitmq_detailed_connection_process_reductions",
                "Total number of connection process reductions",
                &each(&|_| 0),
            );
        }
        counter(
            enc,
            "rabbitmq_detailed_connection_incoming_packets",
            "Total number of packets received on a connection",
            &each(&|c| load(&c.recv_cnt)),
        )?;
        counter(
            enc,
            "rabbitmq_detailed_connection_outgoing_packets",
            "Total number of packets sent on a connection",
            &each(&|c| load(&c.send_cnt)),
        )?;
        let as_gauge = |samples: Vec<(Labels, u64)>| -> Vec<(Labels, i64)> {
            samples.into_iter().map(|(l, v)| (l, v as i64)).collect()
        };
        gauge(
            enc,
            "rabbitmq_detailed_connection_pending_packets",
            "Number of packets waiting to be sent on a connection",
            &as_gauge(each(&|_| 0)),
        )?;
        gauge(
            enc,
            "rabbitmq_detailed_connection_channels",
            "Channels on a connection",
            &as_gauge(each(&|c| c.channels().len() as u64)),
        )
    }

    /// Channel families, labelled `channel` with an id shaped as RabbitMQ's process ids
    /// (`<0.ID.N>`: the connection's id and the channel's number), for the reason above.
    fn channels(&self, enc: &mut DescriptorEncoder, family: Family) -> std::fmt::Result {
        let mut channels = Vec::new();
        for c in self.mgmt.broker.connections.list() {
            let id = c.info().id;
            for ch in c.info().channels() {
                channels.push((vec![("channel", process_id(id, ch.number))], ch));
            }
        }
        if family == Family::ChannelProcess {
            let zeros: Vec<(Labels, u64)> = channels.iter().map(|(l, _)| (l.clone(), 0)).collect();
            return counter(
                enc,
                "rabbitmq_detailed_channel_process_reductions",
                "Total number of channel process reductions",
                &zeros,
            );
        }
        let metrics: [Metric<ChannelInfo, i64>; 7] = [
            (
                "rabbitmq_detailed_channel_consumers",
                "Consumers on a channel",
                |ch| load(&ch.consumers),
            ),
            (
                "rabbitmq_detailed_channel_messages_unacked",
                "Delivered but not yet acknowledged messages",
                |ch| load(&ch.unacked),
            ),
            (
                "rabbitmq_detailed_channel_messages_unconfirmed",
                "Published but not yet confirmed messages",
                |ch| load(&ch.unconfirmed),
            ),
            (
                "rabbitmq_detailed_channel_messages_uncommitted",
                "Messages received in a transaction but not yet committed",
                |ch| load(&ch.uncommitted_messages),
            ),
            (
                "rabbitmq_detailed_channel_acks_uncommitted",
                "Message acknowledgements in a transaction not yet committed",
                |ch| load(&ch.uncommitted_acks),
            ),
            (
                "rabbitmq_detailed_consumer_prefetch",
                "Limit of unacknowledged messages for each consumer",
                |ch| load(&ch.prefetch_count),
            ),
            (
                "rabbitmq_detailed_channel_prefetch",
                "Total limit of unacknowledged messages for all consumers on a channel",
                |ch| load(&ch.global_prefetch_count),
            ),
        ];
        for (name, help, f) in metrics {
            let samples: Vec<(Labels, i64)> =
                channels.iter().map(|(l, ch)| (l.clone(), f(ch))).collect();
            gauge(enc, name, help, &samples)?;
        }
        Ok(())
    }

    /// Every exchange of every vhost (RabbitMQ does not filter these by `vhost`).
    fn exchanges(&self, enc: &mut DescriptorEncoder, family: Family) -> std::fmt::Result {
        let mut samples: Vec<(Labels, i64)> = Vec::new();
        for v in self.mgmt.broker.vhosts() {
            for x in v.exchanges() {
                let labels = vec![
                    ("vhost", v.name.clone()),
                    ("exchange", x.name.clone()),
                    ("type", x.kind.name().to_owned()),
                ];
                let value = match family {
                    Family::ExchangeNames => 1,
                    _ => x.binding_count() as i64,
                };
                samples.push((labels, value));
            }
        }
        match family {
            Family::ExchangeNames => gauge(
                enc,
                "rabbitmq_cluster_exchange_name",
                "Enumerates exchanges without any additional info. This value is cluster-wide. A cheaper alternative to `exchange_bindings`",
                &samples,
            ),
            _ => gauge(
                enc,
                "rabbitmq_cluster_exchange_bindings",
                "Number of bindings for an exchange. This value is cluster-wide.",
                &samples,
            ),
        }
    }

    fn vhosts(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let samples: Vec<(Labels, i64)> = self
            .mgmt
            .broker
            .vhosts()
            .iter()
            .map(|v| (vec![("vhost", v.name.clone())], 1))
            .collect();
        gauge(
            enc,
            "rabbitmq_cluster_vhost_status",
            "Whether a given vhost is running",
            &samples,
        )
    }

    /// The node families; what Erlang counts (processes, garbage collection, the
    /// persister's I/O) is 0, as on the API's node.
    fn node(&self, enc: &mut DescriptorEncoder, family: Family) -> std::fmt::Result {
        let broker = &self.mgmt.broker;
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let one = |value: u64| [(Labels::new(), as_i64(value))];
        let fds = alarms::file_descriptors().0;
        match family {
            Family::NodeCoarse => {
                for (name, help, value) in [
                    (
                        "rabbitmq_detailed_process_open_fds",
                        "Open file descriptors",
                        fds,
                    ),
                    (
                        "rabbitmq_detailed_process_open_tcp_sockets",
                        "Open TCP sockets",
                        broker.connection_count() as u64,
                    ),
                    (
                        "rabbitmq_detailed_process_resident_memory_bytes",
                        "Memory used in bytes",
                        alarms::resident_bytes().unwrap_or(0),
                    ),
                    (
                        "rabbitmq_detailed_disk_space_available_bytes",
                        "Disk space available in bytes",
                        alarms::free_disk_bytes(&broker.config.data_dir).unwrap_or(0),
                    ),
                    (
                        "rabbitmq_detailed_erlang_processes_used",
                        "Erlang processes used",
                        0,
                    ),
                ] {
                    gauge(enc, name, help, &one(value))?;
                }
                for (name, help) in [
                    (
                        "rabbitmq_detailed_erlang_gc_runs",
                        "Total number of Erlang garbage collector runs",
                    ),
                    (
                        "rabbitmq_detailed_erlang_gc_reclaimed_bytes",
                        "Total number of bytes of memory reclaimed by Erlang garbage collector",
                    ),
                    (
                        "rabbitmq_detailed_erlang_scheduler_context_switches",
                        "Total number of Erlang scheduler context switches",
                    ),
                ] {
                    counter(enc, name, help, &[(Labels::new(), 0)])?;
                }
                Ok(())
            }
            Family::Node => self.node_limits(enc),
            _ => {
                for (name, help) in PERSISTER_COUNTERS {
                    counter(enc, name, help, &[(Labels::new(), 0)])?;
                }
                Ok(())
            }
        }
    }

    /// `node_metrics`: the node's limits.
    fn node_limits(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let broker = &self.mgmt.broker;
        let one = |value: u64| [(Labels::new(), i64::try_from(value).unwrap_or(i64::MAX))];
        let max_fds = alarms::file_descriptors().1;
        let uptime_s = crate::broker::timer::now_ms().saturating_sub(broker.started_at_ms) / 1000;
        for (name, help, value) in [
            (
                "rabbitmq_detailed_process_max_fds",
                "Open file descriptors limit",
                max_fds,
            ),
            (
                "rabbitmq_detailed_process_max_tcp_sockets",
                "Open TCP sockets limit",
                broker.config.limits.max_connections as u64,
            ),
            (
                "rabbitmq_detailed_resident_memory_limit_bytes",
                "Memory high watermark in bytes",
                broker.alarms.memory_limit_bytes(),
            ),
            (
                "rabbitmq_detailed_disk_space_available_limit_bytes",
                "Free disk space low watermark in bytes",
                broker.alarms.disk_free_limit_bytes(),
            ),
            (
                "rabbitmq_detailed_erlang_processes_limit",
                "Erlang processes limit",
                0,
            ),
            (
                "rabbitmq_detailed_erlang_scheduler_run_queue",
                "Erlang scheduler run queue",
                0,
            ),
            (
                "rabbitmq_detailed_erlang_net_ticktime_seconds",
                "Inter-node heartbeat interval",
                60,
            ),
            (
                "rabbitmq_detailed_erlang_uptime_seconds",
                "Node uptime",
                uptime_s,
            ),
        ] {
            gauge(enc, name, help, &one(value))?;
        }
        Ok(())
    }
}

/// `node_persister_metrics`: RabbitMQ's file, Mnesia, message store and queue index
/// counters. Lepus's logs have none of these kinds; all are 0.
const PERSISTER_COUNTERS: &[(&str, &str)] = &[
    (
        "rabbitmq_detailed_io_read_ops",
        "Total number of I/O read operations",
    ),
    (
        "rabbitmq_detailed_io_read_bytes",
        "Total number of I/O bytes read",
    ),
    (
        "rabbitmq_detailed_io_write_ops",
        "Total number of I/O write operations",
    ),
    (
        "rabbitmq_detailed_io_write_bytes",
        "Total number of I/O bytes written",
    ),
    (
        "rabbitmq_detailed_io_sync_ops",
        "Total number of I/O sync operations",
    ),
    (
        "rabbitmq_detailed_io_seek_ops",
        "Total number of I/O seek operations",
    ),
    (
        "rabbitmq_detailed_io_reopen_ops",
        "Total number of times files have been reopened",
    ),
    (
        "rabbitmq_detailed_schema_db_ram_tx",
        "Total number of Schema DB memory transactions",
    ),
    (
        "rabbitmq_detailed_schema_db_disk_tx",
        "Total number of Schema DB disk transactions",
    ),
    (
        "rabbitmq_detailed_msg_store_read",
        "Total number of Message Store read operations",
    ),
    (
        "rabbitmq_detailed_msg_store_write",
        "Total number of Message Store write operations",
    ),
    (
        "rabbitmq_detailed_queue_index_read_ops",
        "Total number of Queue Index read operations",
    ),
    (
        "rabbitmq_detailed_queue_index_write_ops",
        "Total number of Queue Index write operations",
    ),
    (
        "rabbitmq_detailed_io_read_time_seconds",
        "Total I/O read time",
    ),
    (
        "rabbitmq_detailed_io_write_time_seconds",
        "Total I/O write time",
    ),
    (
        "rabbitmq_detailed_io_sync_time_seconds",
        "Total I/O sync time",
    ),
    (
        "rabbitmq_detailed_io_seek_time_seconds",
        "Total I/O seek time",
    ),
];

fn load(a: &std::sync::atomic::AtomicU32) -> i64 {
    i64::from(a.load(Ordering::Relaxed))
}

/// A label shaped as an Erlang process id, `<0.CONNECTION.CHANNEL>` (channel 0 for the
/// connection itself): unique while the connection lives, and naming no address.
fn process_id(connection: u64, channel: u16) -> String {
    format!("<0.{connection}.{channel}>")
}
