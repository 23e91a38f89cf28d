//! Dead-lettering: a message rejected, expired, pushed out by a length limit or returned too
//! often leaves its queue for the queue's dead-letter exchange, carrying the story of how it
//! died in its headers, exactly as RabbitMQ 3.10 writes it (`rabbit_dead_letter`):
//!
//! - `x-death` is an array of tables, newest first, one per (queue, reason): `count`,
//!   `reason`, `queue`, `time` (seconds), `exchange`, `routing-keys` and, if the message had a
//!   per-message TTL, `original-expiration`. Dying again for the same queue and reason bumps
//!   that entry's count and moves it to the front, keeping its first `time`.
//! - `x-first-death-reason`, `-queue` and `-exchange` are set once, on the first death.
//! - The `expiration` property is removed. With `x-dead-letter-routing-key` the message is
//!   routed with that key and its `CC` header is removed; without it, with its original
//!   routing keys (including `CC` and `BCC`).
//! - A message that would come back to a queue it already died in, with no rejection on the
//!   way, is dropped for that queue (cycle detection), except when the reason is `rejected`.
//!
//! This file makes the dead-lettered message; it routes nothing. Queues collect their dead
//! letters under their lock and hand them to their host (the vhost) when they release it; the
//! vhost queues them as work and routes them later, on the broker's dead-letter worker, so no
//! queue ever publishes into another from inside a call (see `broker::vhost::dead_letter`).

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use bytes::Bytes;

use crate::broker::message::Message;
use crate::protocol::properties;
use crate::protocol::table;

/// Why a message was dead-lettered, as `x-death` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message leaving a queue for its dead-letter exchange.
#[derive(Debug)]
pub struct DeadLetter {
    pub message: Arc<Message>,
    pub reason: Reason,
}

/// Where a queue's dead letters go: its dead-letter exchange and routing key.
#[derive(Debug, Clone)]
pub struct DlxTarget {
    pub exchange: String,
    pub routing_key: Option<Bytes>,
}

fn long_str(s: &[u8]) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_vec()))
}

fn entry_str<'a>(entry: &'a FieldTable, key: &str) -> Option<&'a [u8]> {
    table::get(entry, key).and_then(table::as_bytes)
}

fn same_death(entry: &FieldTable, queue: &[u8], reason: &[u8]) -> bool {
    entry_str(entry, "queue") == Some(queue) && entry_str(entry, "reason") == Some(reason)
}

fn with_count(mut entry: FieldTable, count: i64) -> FieldTable {
    entry.insert(ShortString::from("count"), AMQPValue::LongLongInt(count));
    entry
}

/// RabbitMQ's regrouping of existing `x-death` entries by (queue, reason): duplicates are
/// merged into the first one (counting them if it had no count). Like RabbitMQ's fold, the
/// result comes out in reverse order of first appearance. One pass with a map, so a message
/// that died in thousands of queues costs time linear in its entries.
fn group_by_queue_and_reason(tables: &[&FieldTable]) -> Vec<FieldTable> {
    if tables.len() <= 1 {
        return tables.iter().map(|t| (*t).clone()).collect();
    }
    // (queue, reason) -> (index of its first table, how many tables share it)
    let mut groups: HashMap<(&[u8], &[u8]), (usize, i64)> = HashMap::with_capacity(tables.len());
    let mut firsts: Vec<usize> = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let key = (
            entry_str(t, "queue").unwrap_or_default(),
            entry_str(t, "reason").unwrap_or_default(),
        );
        groups
            .entry(key)
            .and_modify(|(_, n)| *n += 1)
            .or_insert_with(|| {
                firsts.push(i);
                (i, 1)
            });
    }
    let mut counts = vec![0i64; tables.len()];
    for &(first, n) in groups.values() {
        counts[first] = n;
    }
    firsts
        .iter()
        .rev()
        .map(|&i| {
            let first = tables[i].clone();
            if table::get(&first, "count").is_none() {
                with_count(first, counts[i])
            } else {
                first
            }
        })
        .collect()
}

/// The `x-death` entry for this death, before its count.
fn death_info(
    message: &Message,
    props: &BasicProperties,
    headers: &FieldTable,
    reason: Reason,
    queue: &str,
    now_secs: u64,
) -> FieldTable {
    let mut death_keys = vec![long_str(&message.routing_key)];
    if let Some(AMQPValue::FieldArray(keys)) = table::get(headers, "CC") {
        death_keys.extend(
            keys.as_slice()
                .iter()
                .filter_map(table::as_bytes)
                .map(long_str),
        );
    }
    let mut info = FieldTable::default();
    info.insert("reason".into(), long_str(reason.as_str().as_bytes()));
    info.insert("queue".into(), long_str(queue.as_bytes()));
    info.insert("time".into(), AMQPValue::Timestamp(now_secs));
    info.insert("exchange".into(), long_str(&message.exchange));
    info.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(death_keys)),
    );
    if let Some(expiration) = props.expiration() {
        info.insert(
            "original-expiration".into(),
            long_str(expiration.as_str().as_bytes()),
        );
    }
    info
}

/// Writes this death into the headers as RabbitMQ 3.10 does: the first death also sets the
/// `x-first-death-*` headers; a later one regroups the existing entries and puts this death's
/// entry (counted up if it died here for this reason before) in front.
fn record_death(headers: &mut FieldTable, info: FieldTable, message: &Message, queue: &str) {
    let reason = entry_str(&info, "reason").unwrap_or_default().to_vec();
    let deaths = match table::get(headers, "x-death") {
        None => {
            headers.insert("x-first-death-reason".into(), long_str(&reason));
            headers.insert("x-first-death-queue".into(), long_str(queue.as_bytes()));
            headers.insert("x-first-death-exchange".into(), long_str(&message.exchange));
            vec![with_count(info, 1)]
        }
        Some(AMQPValue::FieldArray(existing)) => {
            let tables: Vec<&FieldTable> = existing
                .as_slice()
                .iter()
                .filter_map(|v| match v {
                    AMQPValue::FieldTable(t) => Some(t),
                    _ => None,
                })
                .collect();
            let grouped = group_by_queue_and_reason(&tables);
            let (matches, others): (Vec<FieldTable>, Vec<FieldTable>) = grouped
                .into_iter()
                .partition(|t| same_death(t, queue.as_bytes(), &reason));
            let updated = match matches.into_iter().next() {
                None => with_count(info, 1),
                Some(m) => {
                    let count = table::get(&m, "count").and_then(table::as_int).unwrap_or(0);
                    with_count(m, count + 1)
                }
            };
            std::iter::once(updated).chain(others).collect()
        }
        Some(_) => vec![with_count(info, 1)],
    };
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(
            deaths
                .into_iter()
                .map(AMQPValue::FieldTable)
                .collect::<Vec<_>>(),
        )),
    );
}

/// A message on its way from a queue to its dead-letter exchange.
pub struct DeadMessage {
    pub message: Message,
    /// The keys it is routed with: the dead-letter routing key, or its own and its CC/BCC.
    pub routing_keys: Vec<Bytes>,
    /// Its headers, with the updated `x-death`: for headers exchanges and cycle detection.
    pub headers: FieldTable,
}

/// The message as it leaves `queue` for its dead-letter exchange.
pub fn make_message(
    message: &Message,
    reason: Reason,
    queue: &str,
    destination: &DlxTarget,
    now_secs: u64,
) -> Option<DeadMessage> {
    let props = properties::decode_all(&message.properties)?;
    let mut headers = props.headers().clone().unwrap_or_default();
    let info = death_info(message, &props, &headers, reason, queue, now_secs);
    record_death(&mut headers, info, message, queue);
    let routing_keys: Vec<Bytes> = match &destination.routing_key {
        Some(key) => {
            headers = without_key(&headers, "CC");
            vec![key.clone()]
        }
        None => {
            let mut keys = vec![message.routing_key.clone()];
            keys.extend(
                message
                    .extra_routing_keys
                    .iter()
                    .flat_map(|k| k.iter().cloned()),
            );
            keys
        }
    };
    // amq-protocol has no way to clear a property; rebuild without the expiration.
    let props = without_expiration(props.with_headers(headers.clone()));
    let raw = properties::encode_all(&props)?;
    let summary = properties::scan(&raw).ok()?;
    let mut dead = Message::new(
        Bytes::copy_from_slice(destination.exchange.as_bytes()),
        routing_keys[0].clone(),
        raw,
        message.body.clone(),
        &summary,
    );
    if routing_keys.len() > 1 {
        dead.extra_routing_keys = Some(routing_keys[1..].to_vec().into());
    }
    Some(DeadMessage {
        message: dead,
        routing_keys,
        headers,
    })
}

fn without_key(table: &FieldTable, key: &str) -> FieldTable {
    let mut out = FieldTable::default();
    for (k, v) in table.inner() {
        if k.as_str() != key {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// The same properties without `expiration`.
fn without_expiration(
    p: amq_protocol::protocol::BasicProperties,
) -> amq_protocol::protocol::BasicProperties {
    let mut out = amq_protocol::protocol::BasicProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.headers() {
        out = out.with_headers(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

/// RabbitMQ's cycle rule: routing back into `queue` is a cycle if `queue` appears in the
/// (updated) deaths and no death from the newest up to and including its first appearance
/// was a rejection.
pub fn is_cycle(queue: &str, headers: &FieldTable) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = table::get(headers, "x-death") else {
        return false;
    };
    for d in deaths.as_slice() {
        let AMQPValue::FieldTable(d) = d else {
            continue;
        };
        if entry_str(d, "reason") == Some(b"rejected".as_slice()) {
            return false;
        }
        if entry_str(d, "queue") == Some(queue.as_bytes()) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(props: BasicProperties) -> Message {
        let raw = properties::encode_all(&props).unwrap();
        let summary = properties::scan(&raw).unwrap();
        Message::new(
            Bytes::from_static(b"orders"),
            Bytes::from_static(b"eu"),
            raw,
            Bytes::from_static(b"body"),
            &summary,
        )
    }

    fn headers(m: &Message) -> FieldTable {
        properties::decode_all(&m.properties)
            .unwrap()
            .headers()
            .clone()
            .unwrap()
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        match table::get(&headers(m), "x-death") {
            Some(AMQPValue::FieldArray(a)) => a
                .as_slice()
                .iter()
                .filter_map(|v| match v {
                    AMQPValue::FieldTable(t) => Some(t.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    fn dead(
        m: &Message,
        reason: Reason,
        queue: &str,
        dest: &DlxTarget,
        now: u64,
    ) -> (Message, Vec<Bytes>) {
        let d = make_message(m, reason, queue, dest, now).unwrap();
        (d.message, d.routing_keys)
    }

    #[test]
    fn same_as_rabbitmq_the_first_death_writes_x_death_and_first_death_headers() {
        let m = message(
            BasicProperties::default()
                .with_expiration("5000".into())
                .with_delivery_mode(2),
        );
        let dest = DlxTarget {
            exchange: "dlx".into(),
            routing_key: None,
        };
        let (dead, keys) = dead(&m, Reason::Expired, "work", &dest, 1700);
        assert_eq!(keys, vec![Bytes::from_static(b"eu")]);
        assert_eq!(&dead.exchange[..], b"dlx");
        assert!(dead.ttl_ms.is_none(), "expiration is removed");
        assert!(dead.persistent);
        let h = headers(&dead);
        assert_eq!(entry_str(&h, "x-first-death-reason"), Some(&b"expired"[..]));
        assert_eq!(entry_str(&h, "x-first-death-queue"), Some(&b"work"[..]));
        assert_eq!(
            entry_str(&h, "x-first-death-exchange"),
            Some(&b"orders"[..])
        );
        let d = deaths(&dead);
        assert_eq!(d.len(), 1);
        assert_eq!(table::get(&d[0], "count"), Some(&AMQPValue::LongLongInt(1)));
        assert_eq!(table::get(&d[0], "time"), Some(&AMQPValue::Timestamp(1700)));
        assert_eq!(entry_str(&d[0], "original-expiration"), Some(&b"5000"[..]));
    }

    #[test]
    fn same_as_rabbitmq_dying_again_bumps_the_count_and_keeps_the_first_time() {
        let m = message(BasicProperties::default());
        let dest = DlxTarget {
            exchange: "dlx".into(),
            routing_key: Some(Bytes::from_static(b"retry")),
        };
        let (once, keys) = dead(&m, Reason::Rejected, "work", &dest, 100);
        assert_eq!(keys, vec![Bytes::from_static(b"retry")]);
        let (twice, _) = dead(&once, Reason::Expired, "wait", &dest, 200);
        let (thrice, _) = dead(&twice, Reason::Rejected, "work", &dest, 300);
        let d = deaths(&thrice);
        assert_eq!(d.len(), 2);
        assert_eq!(entry_str(&d[0], "queue"), Some(&b"work"[..]));
        assert_eq!(table::get(&d[0], "count"), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(table::get(&d[0], "time"), Some(&AMQPValue::Timestamp(100)));
        assert_eq!(entry_str(&d[1], "queue"), Some(&b"wait"[..]));
        // The first death is remembered.
        assert_eq!(
            entry_str(&headers(&thrice), "x-first-death-queue"),
            Some(&b"work"[..])
        );
    }

    #[test]
    fn same_as_rabbitmq_cycles_without_a_rejection_are_detected() {
        let m = message(BasicProperties::default());
        let dest = DlxTarget {
            exchange: "dlx".into(),
            routing_key: None,
        };
        let (a, _) = dead(&m, Reason::Expired, "a", &dest, 1);
        let (b, _) = dead(&a, Reason::Expired, "b", &dest, 2);
        assert!(is_cycle("a", &headers(&b)));
        assert!(!is_cycle("c", &headers(&b)));
        let (r, _) = dead(&a, Reason::Rejected, "b", &dest, 2);
        assert!(
            !is_cycle("a", &headers(&r)),
            "a rejection on the way breaks the cycle"
        );
    }

    #[test]
    fn same_as_rabbitmq_each_death_reverses_the_older_entries() {
        // RabbitMQ 3.10 regroups existing entries with a fold that reverses them, then puts
        // the new death in front: q1; q2 q1; q3 q1 q2; q4 q2 q1 q3.
        let dest = DlxTarget {
            exchange: "dlx".into(),
            routing_key: None,
        };
        let mut m = message(BasicProperties::default());
        for q in ["q1", "q2", "q3", "q4"] {
            m = dead(&m, Reason::Expired, q, &dest, 1).0;
        }
        let order: Vec<Vec<u8>> = deaths(&m)
            .iter()
            .map(|d| entry_str(d, "queue").unwrap().to_vec())
            .collect();
        assert_eq!(
            order,
            vec![
                b"q4".to_vec(),
                b"q2".to_vec(),
                b"q1".to_vec(),
                b"q3".to_vec()
            ]
        );
    }
}
