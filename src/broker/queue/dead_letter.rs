//! Dead-lettering: a message rejected, expired, pushed out by a length limit or returned too
//! often leaves its queue for the queue's dead-letter exchange, carrying the story of how it
//! died in its headers, exactly as RabbitMQ 3.10 writes it (`rabbit_dead_letter`):
//!
//! - `x-death` is an array of tables, newest first, one per (queue, reason): `count`,
//!   `reason`, `queue`, `time` (seconds), `exchange`, `routing-keys` and, if the message had a
//!   per-message TTL, `original-expiration`. Dying again for the same queue and reason bumps
//!   that entry's count and moves it to the front, keeping its first `time`.
//! - `x-first-death-reason`, `-queue` and `-exchange` are set once, on the first death.
//! - The headers table comes out sorted by name, and an entry counted up with its fields
//!   sorted: RabbitMQ edits tables with `set_table_value`, which sorts them. Clients that keep
//!   a table's order (pika, amqplib) show it.
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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use bytes::Bytes;

use crate::broker::message::Message;
use crate::protocol::properties;
use crate::protocol::raw_table;
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

    /// The byte a queue log keeps for a held letter's reason (`store::record::Kind::Held`).
    /// Written to disk: the values never change.
    pub fn code(self) -> u8 {
        match self {
            Reason::Rejected => 0,
            Reason::Expired => 1,
            Reason::Maxlen => 2,
            Reason::DeliveryLimit => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<Reason> {
        Some(match code {
            0 => Reason::Rejected,
            1 => Reason::Expired,
            2 => Reason::Maxlen,
            3 => Reason::DeliveryLimit,
            _ => return None,
        })
    }
}

/// A message leaving a queue for its dead-letter exchange.
#[derive(Debug)]
pub struct DeadLetter {
    pub message: Arc<Message>,
    pub reason: Reason,
    /// An at-least-once letter its queue holds until every queue routed to has it: the
    /// host reports back what became of it.
    pub ticket: Option<Ticket>,
}

/// What a held letter (`held`) carries to the host: which letter it is, of which queue,
/// and which queues have it already.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub id: u64,
    /// The address of the queue holding it.
    pub owner: usize,
    pub have: Vec<String>,
}

/// Where a queue's dead letters go: its dead-letter exchange and routing key.
#[derive(Debug, Clone)]
pub struct DlxTarget {
    pub exchange: String,
    pub routing_key: Option<Bytes>,
}

/// The string value named `name` in an encoded `x-death` entry.
fn entry_field<'a>(entry: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    raw_table::get(entry, name).and_then(raw_table::as_bytes)
}

/// An entry as a table value (tag `F`), keys sorted as RabbitMQ sorts the entry it writes.
fn table_value(entry: &FieldTable) -> Vec<u8> {
    let encoded = table::encode(entry);
    let mut value = Vec::with_capacity(1 + encoded.len());
    value.push(b'F');
    value.extend_from_slice(&encoded);
    value
}

fn with_count(mut entry: FieldTable, count: i64) -> FieldTable {
    entry.insert(ShortString::from("count"), AMQPValue::LongLongInt(count));
    entry
}

/// An existing `x-death` entry after regrouping: the encoded table, and the count to give
/// it if it has none.
struct Grouped<'a> {
    entry: &'a [u8],
    missing_count: Option<i64>,
}

impl Grouped<'_> {
    /// The entry decoded, with its count filled in if it was missing.
    fn decoded(&self) -> Option<FieldTable> {
        let table = raw_table::decode(self.entry)?;
        Some(match self.missing_count {
            Some(n) => with_count(table, n),
            None => table,
        })
    }

    fn push_to(&self, out: &mut raw_table::Builder) -> Option<()> {
        if self.missing_count.is_some() {
            out.item(&table_value(&self.decoded()?));
        } else {
            out.item(b"F");
            out.item(self.entry);
        }
        Some(())
    }
}

/// RabbitMQ's regrouping of existing `x-death` entries by (queue, reason): duplicates are
/// merged into the first one, which gets their number as its count if it had none. Like
/// RabbitMQ's fold, the result comes out in reverse order of first appearance. One pass with
/// a map over the encoded entries, which stay encoded: a message that died in thousands of
/// queues costs time linear in its entries.
fn group_by_queue_and_reason<'a>(entries: &[&'a [u8]]) -> Vec<Grouped<'a>> {
    if entries.len() <= 1 {
        return entries
            .iter()
            .map(|&entry| Grouped {
                entry,
                missing_count: None,
            })
            .collect();
    }
    // (queue, reason) -> (index of its first entry, how many entries share it)
    type Groups<'a> = HashMap<(&'a [u8], &'a [u8]), (usize, i64)>;
    let mut groups: Groups = HashMap::with_capacity(entries.len());
    let mut firsts: Vec<usize> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let key = (
            entry_field(entry, b"queue").unwrap_or_default(),
            entry_field(entry, b"reason").unwrap_or_default(),
        );
        groups
            .entry(key)
            .and_modify(|(_, n)| *n += 1)
            .or_insert_with(|| {
                firsts.push(i);
                (i, 1)
            });
    }
    let mut counts = vec![0i64; entries.len()];
    for &(first, n) in groups.values() {
        counts[first] = n;
    }
    firsts
        .iter()
        .rev()
        .map(|&i| Grouped {
            entry: entries[i],
            missing_count: raw_table::get(entries[i], b"count")
                .is_none()
                .then_some(counts[i]),
        })
        .collect()
}

/// The `x-death` array after this death, as RabbitMQ 3.10 writes it: the existing entries
/// regrouped, this death's entry (counted up if it died here for this reason before) in
/// front of the others.
fn x_death_after(
    existing: Option<&[u8]>,
    new_entry: Vec<u8>,
    queue: &[u8],
    reason: &[u8],
) -> Option<Vec<u8>> {
    let entries: Vec<&[u8]> = existing
        .map(|array| {
            raw_table::items(array)
                .filter_map(raw_table::as_table)
                .collect()
        })
        .unwrap_or_default();
    let grouped = group_by_queue_and_reason(&entries);
    let matching = grouped.iter().position(|g| {
        entry_field(g.entry, b"queue") == Some(queue)
            && entry_field(g.entry, b"reason") == Some(reason)
    });
    let updated = match matching {
        // Same as RabbitMQ: a new entry keeps its field order only as the first of a new
        // array; put in front of an existing one (even an empty one), its fields are sorted.
        None if existing.is_some() => table_value(&raw_table::decode(new_entry.get(1..)?)?),
        None => new_entry,
        Some(i) => {
            let m = grouped[i].decoded()?;
            let count = table::get(&m, "count").and_then(table::as_int).unwrap_or(0);
            table_value(&with_count(m, count + 1))
        }
    };
    let capacity = existing.map_or(0, <[u8]>::len) + 256;
    let mut out = raw_table::Builder::new(Some(b'A'), capacity);
    out.item(&updated);
    for (i, g) in grouped.iter().enumerate() {
        if Some(i) != matching {
            g.push_to(&mut out)?;
        }
    }
    out.finish()
}

/// The `x-death` entry for a first death in this queue for this reason, encoded as a table
/// value with its fields in the order RabbitMQ 3.10 writes them (`rabbit_dead_letter`):
/// `count`, `reason`, `queue`, `time`, `exchange`, `routing-keys`, then
/// `original-expiration` if the message had one. (An entry added to an existing `x-death`,
/// or counted up again, comes out with its keys sorted, as RabbitMQ leaves it: see
/// `x_death_after`.)
fn new_death_entry(
    message: &Message,
    expiration: Option<&[u8]>,
    cc: Option<&[u8]>,
    reason: Reason,
    queue: &str,
    now_secs: u64,
) -> Option<Vec<u8>> {
    let mut keys = raw_table::Builder::new(Some(b'A'), 64 + message.routing_key.len());
    keys.item(&raw_table::long_str(&message.routing_key));
    for key in cc
        .into_iter()
        .flat_map(raw_table::items)
        .filter_map(raw_table::as_bytes)
    {
        keys.item(&raw_table::long_str(key));
    }
    let mut count = vec![b'l'];
    count.extend_from_slice(&1i64.to_be_bytes());
    let mut time = vec![b'T'];
    time.extend_from_slice(&now_secs.to_be_bytes());
    let mut entry = raw_table::Builder::new(Some(b'F'), 256 + message.exchange.len());
    entry.entry(b"count", &count);
    entry.long_str(b"reason", reason.as_str().as_bytes());
    entry.long_str(b"queue", queue.as_bytes());
    entry.entry(b"time", &time);
    entry.long_str(b"exchange", &message.exchange);
    entry.entry(b"routing-keys", &keys.finish()?);
    if let Some(expiration) = expiration {
        entry.long_str(b"original-expiration", expiration);
    }
    entry.finish()
}

/// The headers RabbitMQ sets on the first death only.
const FIRST_DEATH: [&[u8]; 3] = [
    b"x-first-death-reason",
    b"x-first-death-queue",
    b"x-first-death-exchange",
];

/// A message on its way from a queue to its dead-letter exchange.
pub struct DeadMessage {
    pub message: Message,
    /// The keys it is routed with: the dead-letter routing key, or its own and its CC/BCC.
    pub routing_keys: Vec<Bytes>,
    /// Its headers, encoded, with the updated `x-death`: for headers exchanges and cycle
    /// detection.
    pub headers: Bytes,
}

/// The message as it leaves `queue` for its dead-letter exchange. Its headers are edited in
/// their encoded form: the existing `x-death` entries are copied, not decoded, so the cost
/// is the copy of the headers whatever they hold.
pub fn make_message(
    message: &Message,
    reason: Reason,
    queue: &str,
    destination: &DlxTarget,
    now_secs: u64,
) -> Option<DeadMessage> {
    const EMPTY_TABLE: &[u8] = &[0, 0, 0, 0];
    let raw = &message.properties;
    let summary = properties::scan(raw).ok()?;
    let old_headers = match &summary.headers {
        Some(range) => raw.get(range.clone())?,
        None => EMPTY_TABLE,
    };
    let expiration = summary.expiration.as_ref().and_then(|r| raw.get(r.clone()));
    let x_death = raw_table::get(old_headers, b"x-death");
    let new_entry = new_death_entry(
        message,
        expiration,
        raw_table::get(old_headers, b"CC"),
        reason,
        queue,
        now_secs,
    )?;
    let first_death = x_death.is_none();
    // Same as RabbitMQ: an `x-death` that is not an array is replaced.
    let existing = x_death.filter(|v| v.first() == Some(&b'A'));
    let deaths = x_death_after(
        existing,
        new_entry,
        queue.as_bytes(),
        reason.as_str().as_bytes(),
    )?;
    let drop_cc = destination.routing_key.is_some();
    let first_values = [
        raw_table::long_str(reason.as_str().as_bytes()),
        raw_table::long_str(queue.as_bytes()),
        raw_table::long_str(&message.exchange),
    ];
    let mut entries: Vec<(&[u8], &[u8])> = raw_table::entries(old_headers)
        .filter(|&(name, _)| {
            !(name == b"x-death"
                || (drop_cc && name == b"CC")
                || (first_death && FIRST_DEATH.contains(&name)))
        })
        .collect();
    if first_death {
        entries.extend(
            FIRST_DEATH
                .iter()
                .copied()
                .zip(first_values.iter().map(Vec::as_slice)),
        );
    }
    entries.push((b"x-death", &deaths));
    // Same as RabbitMQ: the headers come out sorted by name (bytewise), as its
    // `set_table_value` leaves a table; the sort is stable, so repeated names keep their order.
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut headers = raw_table::Builder::new(None, old_headers.len() + deaths.len() + 128);
    for (name, value) in entries {
        headers.entry(name, value);
    }
    let headers = headers.finish()?;
    let routing_keys: Vec<Bytes> = match &destination.routing_key {
        Some(key) => vec![key.clone()],
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
    let raw = properties::dead_letter_properties(raw, &summary, &headers)?;
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
    let copies = message.dead_letter_copies.get_or_init(Default::default);
    dead.dead_letter_copies = std::sync::OnceLock::from(copies.clone());
    // Its body and routing key are still slices of the read buffers the original arrived
    // in, if its were: a queue short of memory copies it out of them as it would the
    // original.
    dead.in_read_buffers = message.in_read_buffers;
    Some(DeadMessage {
        message: dead,
        routing_keys,
        headers: headers.into(),
    })
}

/// RabbitMQ's cycle rule: routing back into `queue` is a cycle if `queue` appears in the
/// (updated) deaths and no death from the newest up to and including its first appearance
/// was a rejection. `headers` is the encoded headers table.
pub fn is_cycle(queue: &str, headers: &[u8]) -> bool {
    cycle_queues(headers).contains(queue.as_bytes())
}

/// The queues `is_cycle` is true of, found in one pass over the x-death entries: a dead
/// letter checks every queue its exchange reaches against this set, where a scan per queue
/// cost the queues times the entries (a long-cycled message and a wide fanout: 10^8 steps).
pub fn cycle_queues(headers: &[u8]) -> HashSet<&[u8]> {
    let mut queues = HashSet::new();
    let Some(deaths) = raw_table::get(headers, b"x-death") else {
        return queues;
    };
    for entry in raw_table::items(deaths).filter_map(raw_table::as_table) {
        if entry_field(entry, b"reason") == Some(b"rejected".as_slice()) {
            break;
        }
        if let Some(queue) = entry_field(entry, b"queue") {
            queues.insert(queue);
        }
    }
    queues
}

#[cfg(test)]
mod tests;
