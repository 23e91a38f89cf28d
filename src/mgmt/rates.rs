//! Message rates and totals: the `message_stats` of queues, exchanges, channels, vhosts and
//! the overview.
//!
//! Totals are read from the live counters whenever asked. Rates (`*_details.rate`, per
//! second) come from a background task that samples every counter every
//! `collect_statistics_interval` (5 s) while the management listener runs, and keeps only the previous
//! sample of each object: the cost is one pass over the broker's objects every few seconds,
//! nothing per message, and nothing at all without the listener.
//!
//! The same samples tell which objects are at rest (`idle_since`: nothing they count moved
//! between two samples) and give the node's gauges their rates (`mem_used_details`, ...).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Map, Value, json};

use crate::broker::Broker;
use crate::broker::stats::{ChannelInfo, MessageTotals};

/// Overview samples kept for the web UI's charts (10 minutes at the default 5 s interval,
/// `collect_statistics_interval`).
pub const HISTORY_SAMPLES: usize = 120;

/// The last sample of every object, and the rates it gave.
#[derive(Debug, Default)]
pub struct Rates {
    objects: Mutex<HashMap<String, Sampled>>,
    /// The overview's recent rates, oldest first, for charts.
    history: Mutex<VecDeque<Value>>,
}

#[derive(Debug)]
struct Sampled {
    at: Instant,
    /// `at` on the wall clock (milliseconds since the epoch).
    at_ms: u64,
    values: Vec<(&'static str, u64)>,
    rates: Vec<(&'static str, f64)>,
    /// The sampling round that last saw the object; objects gone are forgotten.
    round: u64,
    /// See [`ObjectSample::idle_since_ms`].
    idle_since_ms: Option<u64>,
}

impl Sampled {
    /// The sample of an object taken at `(now, now_ms)`, after `prev` if it was seen before.
    fn after(
        prev: Option<&Sampled>,
        values: Vec<(&'static str, u64)>,
        (now, now_ms): (Instant, u64),
        round: u64,
    ) -> Sampled {
        let (rates, idle_since_ms) = match prev {
            Some(prev) => (
                rates_between(prev, &values, now),
                (prev.values == values).then(|| prev.idle_since_ms.unwrap_or(prev.at_ms)),
            ),
            // Seen for the first time: idle only if nothing was ever counted; otherwise the
            // next sample tells.
            None => {
                let untouched = values.iter().all(|(_, v)| *v == 0);
                let rates = values.iter().map(|(f, _)| (*f, 0.0)).collect();
                (rates, untouched.then_some(0))
            }
        };
        Sampled {
            at: now,
            at_ms: now_ms,
            values,
            rates,
            round,
            idle_since_ms,
        }
    }
}

/// What the sampler knows of one object.
#[derive(Debug, Default)]
pub struct ObjectSample {
    /// The rate of each field, per second (none before two samples).
    pub rates: Vec<(&'static str, f64)>,
    /// Since when its counters and depths have not moved (0: nothing was ever counted),
    /// or `None` if they moved between the last two samples or it is too new to tell.
    /// RabbitMQ shows `idle_since` only on an object at rest (its process hibernated), and
    /// an operator's clean-up script reads it so: a queue taking messages must not look
    /// idle, so when in doubt it does not.
    pub idle_since_ms: Option<u64>,
}

impl Rates {
    pub fn new() -> Arc<Rates> {
        Arc::new(Rates::default())
    }

    /// The rate of `field` of the object `key`, per second (0 before two samples).
    pub fn rate(&self, key: &str, field: &str) -> f64 {
        let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        objects
            .get(key)
            .and_then(|s| s.rates.iter().find(|(f, _)| *f == field))
            .map_or(0.0, |(_, r)| *r)
    }

    /// Every rate of the object `key`, and whether it is idle: one look-up for all the
    /// fields of an object, where [`Rates::rate`] takes the lock for each.
    pub fn sample_of(&self, key: &str) -> ObjectSample {
        let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        objects
            .get(key)
            .map(|s| ObjectSample {
                rates: s.rates.clone(),
                idle_since_ms: s.idle_since_ms,
            })
            .unwrap_or_default()
    }

    /// The rates of the objects `keys`, added up field by field (one look-up for all).
    pub fn summed(&self, keys: impl Iterator<Item = String>) -> Vec<(&'static str, f64)> {
        let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        let mut sum: Vec<(&'static str, f64)> = Vec::new();
        for sample in keys.filter_map(|k| objects.get(&k)) {
            for &(field, rate) in &sample.rates {
                match sum.iter_mut().find(|(f, _)| *f == field) {
                    Some((_, total)) => *total += rate,
                    None => sum.push((field, rate)),
                }
            }
        }
        sum
    }

    /// The overview's recent rates, oldest first.
    pub fn history(&self) -> Vec<Value> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.iter().cloned().collect()
    }

    /// Samples until aborted.
    pub fn spawn(self: &Arc<Self>, broker: Arc<Broker>) -> tokio::task::JoinHandle<()> {
        let rates = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(broker.config.limits.stats_interval_ms.max(100));
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut round = 0;
            loop {
                tick.tick().await;
                round += 1;
                // A pass takes time in the number of objects (tens of milliseconds for
                // 50,000 queues) and reads the disk's free space: off the runtime's
                // workers, which the AMQP connections run on.
                let (r, b) = (rates.clone(), broker.clone());
                let _ = tokio::task::spawn_blocking(move || r.sample(&b, round)).await;
            }
        })
    }

    /// One pass over every object.
    pub fn sample(&self, broker: &Broker, round: u64) {
        let now = Instant::now();
        let mut seen: Vec<(String, Vec<(&'static str, u64)>)> = Vec::new();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        // Bytes each vhost's connections read and wrote.
        let mut vhost_bytes: HashMap<String, (u64, u64)> = HashMap::new();
        for conn in broker.connections.list() {
            let info = conn.info();
            let (recv, send) = (load(&info.recv_oct), load(&info.send_oct));
            if let Some(opened) = info.opened() {
                let bytes = vhost_bytes.entry(opened.vhost.clone()).or_default();
                bytes.0 += recv;
                bytes.1 += send;
            }
            seen.push((
                connection_key(info.id),
                vec![("recv_oct", recv), ("send_oct", send)],
            ));
            for ch in info.channels() {
                seen.push((
                    channel_key(info.id, ch.number),
                    totals_fields(&ch.messages.snapshot()),
                ));
            }
        }
        let (mut ready, mut unacked) = (0u64, 0u64);
        let open = channels(broker);
        for vhost in broker.vhosts() {
            let (mut vhost_ready, mut vhost_unacked) = (0u64, 0u64);
            for q in vhost.queues() {
                let s = q.gauges();
                vhost_ready += u64::from(s.ready);
                vhost_unacked += u64::from(s.unacked);
                let mut values = totals_fields(&s.counters.totals());
                values.extend(depth_fields(u64::from(s.ready), u64::from(s.unacked)));
                seen.push((queue_key(&vhost.name, &q.name), values));
            }
            for x in vhost.exchanges() {
                let c = &x.counters;
                seen.push((
                    exchange_key(&vhost.name, &x.name),
                    vec![
                        ("publish_in", load(&c.publish_in)),
                        ("publish_out", load(&c.publish_out)),
                    ],
                ));
            }
            let mut values = totals_fields(&vhost_totals_in(broker, &vhost.name, &open));
            values.extend(depth_fields(vhost_ready, vhost_unacked));
            let (recv, send) = vhost_bytes.get(&vhost.name).copied().unwrap_or_default();
            values.extend([("recv_oct", recv), ("send_oct", send)]);
            seen.push((vhost_key(&vhost.name), values));
            ready += vhost_ready;
            unacked += vhost_unacked;
        }
        let mut overview = totals_fields(&broker.ledger.total(None, open.all()));
        overview.extend(depth_fields(ready, unacked));
        overview.extend(broker.ledger.churn.fields());
        seen.push(("overview".into(), overview));
        seen.push(("node".into(), node_gauges(broker).to_vec()));
        let now_ms = crate::broker::timer::now_ms();
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        for (key, values) in seen {
            let next = Sampled::after(objects.get(&key), values, (now, now_ms), round);
            objects.insert(key, next);
        }
        objects.retain(|_, s| s.round == round);
        if let Some(o) = objects.get("overview") {
            // The message rates, and the depth as it is (not its rate).
            let message_fields = totals_fields(&MessageTotals::default());
            let mut point: Map<String, Value> = o
                .rates
                .iter()
                .filter(|(f, _)| message_fields.iter().any(|(m, _)| m == f))
                .map(|(f, r)| ((*f).to_owned(), json!(r)))
                .collect();
            point.insert("timestamp".into(), json!(crate::broker::timer::now_ms()));
            point.insert("messages_ready".into(), json!(ready));
            point.insert("messages_unacknowledged".into(), json!(unacked));
            drop(objects);
            let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
            if history.len() == HISTORY_SAMPLES {
                history.pop_front();
            }
            history.push_back(Value::Object(point));
        }
    }
}

/// The node's gauges, each with its rate in `/api/nodes` (`mem_used_details`, ...): resident
/// memory, open file descriptors, client connections, processes (none: Lepus has no Erlang
/// processes) and free disk.
pub fn node_gauges(broker: &Broker) -> [(&'static str, u64); 5] {
    use crate::broker::alarms;
    [
        ("mem_used", alarms::resident_bytes().unwrap_or(0)),
        ("fd_used", alarms::file_descriptors().0),
        ("sockets_used", broker.connection_count() as u64),
        ("proc_used", 0),
        (
            "disk_free",
            alarms::free_disk_bytes(&broker.config.data_dir).unwrap_or(0),
        ),
    ]
}

/// Whether `field` is a level that goes down as well as up (a depth, a gauge), not a count.
fn is_level(field: &str) -> bool {
    field.starts_with("messages") || NODE_GAUGE_FIELDS.contains(&field)
}

const NODE_GAUGE_FIELDS: &[&str] = &[
    "mem_used",
    "fd_used",
    "sockets_used",
    "proc_used",
    "disk_free",
];

/// A queue's (or a sum of queues') depth, whose rates show how fast it grows or drains.
fn depth_fields(ready: u64, unacked: u64) -> [(&'static str, u64); 3] {
    [
        ("messages", ready + unacked),
        ("messages_ready", ready),
        ("messages_unacknowledged", unacked),
    ]
}

fn rates_between(
    prev: &Sampled,
    values: &[(&'static str, u64)],
    now: Instant,
) -> Vec<(&'static str, f64)> {
    let secs = now.duration_since(prev.at).as_secs_f64().max(0.001);
    values
        .iter()
        .map(|(f, v)| {
            let before = prev
                .values
                .iter()
                .find(|(pf, _)| pf == f)
                .map_or(*v, |(_, pv)| *pv);
            // Depths go down as well as up; a counter that went down was a new object.
            let delta = *v as f64 - before as f64;
            let rate = if is_level(f) { delta } else { delta.max(0.0) };
            (*f, (rate / secs * 10.0).round() / 10.0)
        })
        .collect()
}

fn totals_fields(t: &MessageTotals) -> Vec<(&'static str, u64)> {
    vec![
        ("publish", t.publish),
        ("confirm", t.confirm),
        ("deliver", t.deliver),
        ("deliver_no_ack", t.deliver_no_ack),
        ("get", t.get),
        ("get_no_ack", t.get_no_ack),
        ("get_empty", t.get_empty),
        ("deliver_get", t.deliver_get()),
        ("ack", t.ack),
        ("redeliver", t.redeliver),
        ("return_unroutable", t.return_unroutable),
        ("drop_unroutable", t.drop_unroutable),
    ]
}

pub fn queue_key(vhost: &str, name: &str) -> String {
    format!("queue\0{vhost}\0{name}")
}

pub fn exchange_key(vhost: &str, name: &str) -> String {
    format!("exchange\0{vhost}\0{name}")
}

pub fn vhost_key(vhost: &str) -> String {
    format!("vhost\0{vhost}")
}

pub fn connection_key(id: u64) -> String {
    format!("connection\0{id}")
}

pub fn channel_key(connection: u64, number: u16) -> String {
    format!("channel\0{connection}\0{number}")
}

/// What RabbitMQ's `message_stats` of each kind of object holds.
pub const QUEUE_FIELDS: &[&str] = &[
    "ack",
    "deliver",
    "deliver_get",
    "deliver_no_ack",
    "get",
    "get_empty",
    "get_no_ack",
    "publish",
    "redeliver",
];
pub const PUBLISHER_FIELDS: &[&str] =
    &["confirm", "drop_unroutable", "publish", "return_unroutable"];
pub const CONSUMER_FIELDS: &[&str] = &[
    "ack",
    "deliver",
    "deliver_get",
    "deliver_no_ack",
    "get",
    "get_empty",
    "get_no_ack",
    "redeliver",
];
pub const ALL_FIELDS: &[&str] = &[
    "ack",
    "confirm",
    "deliver",
    "deliver_get",
    "deliver_no_ack",
    "drop_unroutable",
    "get",
    "get_empty",
    "get_no_ack",
    "publish",
    "redeliver",
    "return_unroutable",
];

/// `message_stats` for `fields` of `totals`, each with its `_details.rate` from the sample of
/// `key` (left out when `with_rates` is false, as `disable_stats` asks).
pub fn message_stats(
    rates: &Rates,
    key: &str,
    totals: &MessageTotals,
    fields: &[&str],
    with_rates: bool,
) -> Value {
    let rates = with_rates.then(|| rates.sample_of(key).rates);
    let stats = MessageStats {
        totals,
        fields,
        rates: rates.as_deref(),
    };
    serde_json::to_value(stats).unwrap_or_default()
}

/// `message_stats`, written as JSON where it is serialized, without a `Value` built first.
pub struct MessageStats<'a> {
    pub totals: &'a MessageTotals,
    /// The fields this kind of object shows (`QUEUE_FIELDS`, ...).
    pub fields: &'a [&'a str],
    /// The object's rates ([`Rates::sample_of`]); `None` leaves the `_details` out, as
    /// `disable_stats` asks.
    pub rates: Option<&'a [(&'static str, f64)]>,
}

impl Serialize for MessageStats<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let values = totals_fields(self.totals);
        let mut map = s.serialize_map(None)?;
        for f in self.fields {
            let v = values.iter().find(|(n, _)| n == f).map_or(0, |(_, v)| *v);
            map.serialize_entry(f, &v)?;
            if let Some(rates) = self.rates {
                map.serialize_entry(&Details(f), &Rate::of(rates, f))?;
            }
        }
        map.end()
    }
}

/// The key `<field>_details`, written without being built.
pub struct Details<'a>(pub &'a str);

impl Serialize for Details<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}_details", self.0))
    }
}

/// A `_details` object: `{"rate": per second}`.
#[derive(Serialize)]
pub struct Rate {
    pub rate: f64,
}

impl Rate {
    /// The rate of `field` among an object's `rates` (0 before two samples).
    pub fn of(rates: &[(&'static str, f64)], field: &str) -> Rate {
        let rate = rates
            .iter()
            .find(|(f, _)| *f == field)
            .map_or(0.0, |(_, r)| *r);
        Rate { rate }
    }
}

/// A gauge or counter with its `_details.rate`, into `out`.
pub fn with_rate(out: &mut Map<String, Value>, rates: &Rates, key: &str, field: &str, value: u64) {
    out.insert(field.to_owned(), json!(value));
    out.insert(
        format!("{field}_details"),
        json!({"rate": rates.rate(key, field)}),
    );
}

/// The live channels of every open connection, by the vhost their connection opened:
/// listed once for a pass over many vhosts, each of which then adds up its own only.
/// Picking each vhost's out of all of them cost vhosts x channels, under the ledger's lock,
/// which every closing channel waits for.
#[derive(Default)]
pub struct OpenChannels(HashMap<String, Vec<Arc<ChannelInfo>>>);

impl OpenChannels {
    fn of(&self, vhost: &str) -> impl Iterator<Item = &ChannelInfo> {
        self.0.get(vhost).into_iter().flatten().map(|ch| &**ch)
    }

    fn all(&self) -> impl Iterator<Item = &ChannelInfo> {
        self.0.values().flatten().map(|ch| &**ch)
    }
}

/// The live channels of every open connection.
pub fn channels(broker: &Broker) -> OpenChannels {
    let mut out = OpenChannels::default();
    for conn in broker.connections.list() {
        let Some(opened) = conn.info().opened() else {
            continue;
        };
        let channels = conn.info().channels();
        if !channels.is_empty() {
            out.0
                .entry(opened.vhost.clone())
                .or_default()
                .extend(channels);
        }
    }
    out
}

/// A vhost's message totals: its open channels' counters and those of the ones closed.
pub fn vhost_totals(broker: &Broker, vhost: &str) -> MessageTotals {
    vhost_totals_in(broker, vhost, &channels(broker))
}

/// [`vhost_totals`] with the live channels listed once for many vhosts.
pub fn vhost_totals_in(broker: &Broker, vhost: &str, open: &OpenChannels) -> MessageTotals {
    let Some(v) = broker.vhost(vhost) else {
        return MessageTotals::default();
    };
    broker.ledger.total(Some(&v.retired), open.of(vhost))
}

/// The broker's message totals, every vhost's (deleted ones' too): they never go backwards.
pub fn broker_totals(broker: &Broker) -> MessageTotals {
    broker.ledger.total(None, channels(broker).all())
}
