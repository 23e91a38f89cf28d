//! A published message, shared by every queue it is routed to.

use std::sync::Arc;

use bytes::Bytes;

use super::body::Body;
use super::memory::{Charge, Memory};
use crate::auth::User;
use amq_protocol::types::{AMQPValue, FieldTable};

use crate::amqp_error;
use crate::protocol::error::{AmqpError, AmqpResult, ReplyCode};
use crate::protocol::properties::{self, PropertySummary, ScanError};
use crate::protocol::{raw_table, table};
use crate::store::record::{MessageParts, StoredMessage};

/// Parts of a message at least this large are left in their read buffers when it is
/// `compacted`: reads this large become buffers of their own (`amqp::input`), which such a
/// part fills at least an eighth of.
pub const COMPACT_PARTS_BELOW_BYTES: usize = 32 * 1024;

/// A message as it was published. Queues hold it behind an `Arc`, so a message routed to ten
/// queues is stored once; its bytes are slices of the chunks its frames were read into
/// (`amqp::input`), so it was copied once, from the socket. The chunks are charged to the
/// broker's memory gauge while any slice of them lives, and the message charges itself (and
/// any buffer of its own) until its last reference is dropped.
#[derive(Debug, Clone)]
pub struct Message {
    /// The exchange the publisher named; deliveries report it.
    pub exchange: Bytes,
    /// The routing key the publisher gave; deliveries report it.
    pub routing_key: Bytes,
    /// The raw property list (flags and values), forwarded to consumers byte for byte.
    pub properties: Bytes,
    /// The body: one slice, or the slices of the frames it came in (never reassembled).
    pub body: Body,
    /// delivery_mode 2: the message should survive a restart on a durable queue.
    pub persistent: bool,
    /// The `priority` property, if set.
    pub priority: Option<u8>,
    /// The `expiration` property as milliseconds, if set (validated at publish).
    pub ttl_ms: Option<u64>,
    /// Routing keys from the `CC` and `BCC` headers: dead-lettering routes with them again
    /// (the `BCC` header itself is gone from the properties).
    pub extra_routing_keys: Option<Arc<[Bytes]>>,
    /// What this message keeps alive, charged to the memory gauge while it lives.
    pub charge: Charge,
    /// The publisher confirm it is held for, if its publisher is in confirm mode: once it is
    /// acknowledged from every queue that logged it, the confirm need not wait for the disk.
    pub confirm: Option<ConfirmWatch>,
    /// The copies dead-lettering has made of the message this one is or descends from,
    /// beyond one per dead letter: shared by the message and every dead letter made of it,
    /// and made when it is first dead-lettered (`vhost::dead_letter`).
    pub dead_letter_copies: std::sync::OnceLock<Arc<std::sync::atomic::AtomicU64>>,
    /// Its parts are slices of a buffer that is charged itself and that it keeps alive
    /// whole: the read buffers its frames arrived in (`amqp::input`), or the buffer a queue
    /// log was read back into (`memory::charged_buffer`). A queue that holds it while
    /// memory runs short copies it out of them (`compacted`).
    pub in_read_buffers: bool,
}

/// What a message's dead-letter copy budget takes: an `Arc<AtomicU64>` allocation.
const DEAD_LETTER_BUDGET_BYTES: usize = 32;

/// One pass of compaction over the queues (`Broker::relieve_memory`): a message in several
/// queues is copied once, and each queue gets the same copy.
pub struct Compaction {
    memory: &'static Memory,
    /// Copies made so far of messages other holders may hold, by the address of the
    /// original. The original is kept with its copy until the pass ends, so that its
    /// address is not reused meanwhile by a message published since.
    copies: std::collections::HashMap<usize, (Arc<Message>, Arc<Message>)>,
    /// Messages copied in this pass.
    pub copied: usize,
}

impl Compaction {
    pub fn new(memory: &'static Memory) -> Self {
        Compaction {
            memory,
            copies: Default::default(),
            copied: 0,
        }
    }

    /// The compacted copy of `message`: the one already made in this pass, or a new one.
    pub fn copy_of(&mut self, message: &Arc<Message>) -> Arc<Message> {
        if Arc::strong_count(message) == 1 {
            // Nothing else holds it: no other queue will ask for its copy.
            self.copied += 1;
            return Arc::new(message.compacted(self.memory));
        }
        let key = Arc::as_ptr(message) as usize;
        if let Some((_, copy)) = self.copies.get(&key) {
            return copy.clone();
        }
        self.copied += 1;
        let copy = Arc::new(message.compacted(self.memory));
        self.copies.insert(key, (message.clone(), copy.clone()));
        copy
    }
}

/// Where a consumer's channel tells a publisher that a message it holds a confirm for was
/// acknowledged, wherever the message's disk write stands.
///
/// Same as RabbitMQ's message store, which confirms a message removed before it was
/// written ("ignored") without waiting for the write: a message a consumer has acknowledged
/// needs the disk no more, so a publisher whose consumers keep pace is confirmed at their
/// pace and not at the pace of `fdatasync`. A message is reported once per queue that logged
/// it, and its publisher counts the queues (`amqp::confirm`). Stricter than RabbitMQ, a
/// delivery without acknowledgement is not reported: when the queue lets go of it, its bytes
/// have not reached the consumer's socket yet.
pub trait ConfirmSink: Send + Sync + std::fmt::Debug {
    /// The messages with these confirm tags were acknowledged from one of their queues.
    fn settled(&self, tags: &[u64]);
}

/// A message's publisher confirm: the publishing channel's sink and the publish's tag.
#[derive(Debug, Clone)]
pub struct ConfirmWatch {
    pub sink: Arc<dyn ConfirmSink>,
    pub tag: u64,
}

/// Collects the confirm tags of settled messages and reports them to their sinks, one call
/// per run of messages from the same publishing channel.
#[derive(Default)]
pub struct SettledConfirms {
    sink: Option<Arc<dyn ConfirmSink>>,
    tags: Vec<u64>,
}

impl SettledConfirms {
    /// Notes that `message` was acknowledged from a queue that logged it.
    pub fn add(&mut self, message: &Message) {
        let Some(watch) = &message.confirm else {
            return;
        };
        if let Some(sink) = &self.sink
            && !Arc::ptr_eq(sink, &watch.sink)
        {
            self.report();
        }
        if self.sink.is_none() {
            self.sink = Some(watch.sink.clone());
        }
        self.tags.push(watch.tag);
    }

    /// Reports what was collected.
    pub fn report(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink.settled(&self.tags);
        }
        self.tags.clear();
    }
}

impl Drop for SettledConfirms {
    fn drop(&mut self) {
        self.report();
    }
}

impl Message {
    pub fn new(
        exchange: Bytes,
        routing_key: Bytes,
        properties: Bytes,
        body: impl Into<Body>,
        summary: &PropertySummary,
    ) -> Self {
        let ttl_ms = summary
            .expiration
            .as_ref()
            .and_then(|r| properties.get(r.clone()))
            .and_then(|raw| std::str::from_utf8(raw).ok())
            .and_then(|s| s.parse::<u64>().ok());
        Message {
            exchange,
            routing_key,
            properties,
            body: body.into(),
            persistent: summary.persistent(),
            priority: summary.priority,
            ttl_ms,
            extra_routing_keys: None,
            charge: Charge::default(),
            confirm: None,
            dead_letter_copies: std::sync::OnceLock::new(),
            in_read_buffers: false,
        }
    }

    /// Charges what this message keeps alive to `memory`: itself, and `owned` bytes of
    /// buffers that are its alone (slices of the input's chunks are charged by the chunks).
    pub fn charge_to(&mut self, memory: &'static Memory, owned: usize) {
        self.charge = Charge::new(memory, Self::OVERHEAD_BYTES + owned);
        self.in_read_buffers = true;
    }

    /// The same message with its small parts (every part under `COMPACT_PARTS_BELOW_BYTES`)
    /// copied together into one buffer of its own, and charged for it.
    ///
    /// A message's parts are slices of the read buffers they arrived in (64 or 256 KiB), and
    /// any slice keeps its whole buffer alive. A small message kept in a queue can therefore
    /// hold hundreds of times its size; a client that sends a tiny message and then bytes
    /// the broker drops, over and over, fills memory with buffers the queue counts as a few
    /// bytes each, and that paging cannot free. Its copy holds what it is. Larger parts stay
    /// where they are: such a part fills at least an eighth of its buffer, and a queue counts
    /// it at its size. Its parts keep their lengths and number, so `memory_size` is unchanged.
    pub fn compacted(&self, memory: &'static Memory) -> Message {
        let small = |p: &Bytes| !p.is_empty() && p.len() < COMPACT_PARTS_BELOW_BYTES;
        let names = [&self.exchange, &self.routing_key, &self.properties];
        let parts = || {
            names
                .into_iter()
                .chain(self.body.parts())
                .filter(|p| small(p))
        };
        let mut buf = Vec::with_capacity(parts().map(Bytes::len).sum());
        for p in parts() {
            buf.extend_from_slice(p);
        }
        let own = buf.len();
        let shared = Bytes::from(buf);
        let mut at = 0;
        let mut copy = |p: &Bytes| {
            if p.is_empty() {
                // An empty part can still be a slice of a read buffer, holding all of it.
                return Bytes::new();
            }
            if !small(p) {
                return p.clone();
            }
            at += p.len();
            shared.slice(at - p.len()..at)
        };
        let (exchange, routing_key) = (copy(&self.exchange), copy(&self.routing_key));
        let properties = copy(&self.properties);
        let body: Vec<Bytes> = self.body.parts().iter().map(copy).collect();
        // Buffers of its own the original was charged for (a body sent in small frames,
        // copied together at publish) stay with the copy when they are large: it is charged
        // for them, as the original is no longer once dropped. (If they were small, they
        // were copied again and this overcounts them; and while the original lives on
        // elsewhere both count them. Both err on the safe side: paging a little early.)
        let keeps_large_parts = names
            .into_iter()
            .chain(self.body.parts())
            .any(|p| !p.is_empty() && !small(p));
        let kept_own = if keeps_large_parts {
            self.own_buffers_bytes()
        } else {
            0
        };
        // Made now if not yet (a small allocation, charged to the copy).
        let budget_made = if self.dead_letter_copies.get().is_none() {
            DEAD_LETTER_BUDGET_BYTES
        } else {
            0
        };
        let dead_letter_copies = self.dead_letter_copies.get_or_init(Default::default);
        Message {
            exchange,
            routing_key,
            properties,
            body: Body::from_parts(body),
            persistent: self.persistent,
            priority: self.priority,
            ttl_ms: self.ttl_ms,
            extra_routing_keys: self.extra_routing_keys.clone(),
            // The CC and BCC keys are shared with the original, and outlive it in the copy.
            charge: Charge::new(
                memory,
                Self::OVERHEAD_BYTES
                    + own
                    + kept_own
                    + budget_made
                    + self.body.list_bytes()
                    + self.extra_keys_size(),
            ),
            confirm: self.confirm.clone(),
            // One budget for the original and its copy, which may both live on: made now,
            // or the copy would get one of its own.
            dead_letter_copies: std::sync::OnceLock::from(dead_letter_copies.clone()),
            in_read_buffers: false,
        }
    }

    /// Bytes of buffers of its own its charge holds beyond itself, its parts list and its
    /// CC and BCC keys: a body sent in small frames, copied together at publish
    /// (`charge_to`); for a message charged whole (`charge_all_to`), its parts.
    fn own_buffers_bytes(&self) -> usize {
        self.charge
            .bytes()
            .saturating_sub(Self::OVERHEAD_BYTES + self.body.list_bytes() + self.extra_keys_size())
    }

    /// Charges a message whose parts are all its own (a held dead letter recovered at start,
    /// one rebuilt for dead-lettering).
    pub fn charge_all_to(&mut self, memory: &'static Memory) {
        self.charge = Charge::new(memory, self.parts_size());
    }

    /// Bytes of memory the CC and BCC routing keys take (a header of many short keys takes
    /// several times its wire size: each key is a `Bytes` of 32 bytes, into a shared buffer).
    pub fn extra_keys_size(&self) -> usize {
        self.extra_routing_keys.as_ref().map_or(0, |keys| {
            16 + keys
                .iter()
                .map(|k| std::mem::size_of::<Bytes>() + k.len())
                .sum::<usize>()
        })
    }

    /// The `Message` itself, and the `Arc` around it.
    const OVERHEAD_BYTES: usize = std::mem::size_of::<Message>() + 16;

    /// Rebuilds a message a queue log kept, decoding what routing and queueing need. None if
    /// its properties no longer scan (the record passed its checksum, so this means a bug).
    ///
    /// The routing keys its `CC` header added come back from the header, which the message
    /// keeps: dead-lettering routes with them again, as RabbitMQ does with the routing keys
    /// it stores. (Those of `BCC`, a header no message keeps, are not stored.)
    pub fn from_stored(stored: StoredMessage) -> Option<Self> {
        let summary = properties::scan(&stored.properties).ok()?;
        let cc: Vec<Bytes> = summary
            .headers
            .as_ref()
            .and_then(|range| stored.properties.get(range.clone()))
            .and_then(|headers| raw_table::get(headers, b"CC"))
            .map(|cc| {
                raw_table::items(cc)
                    .filter(|v| v.first() == Some(&b'S'))
                    .filter_map(raw_table::as_bytes)
                    .map(Bytes::copy_from_slice)
                    .collect()
            })
            .unwrap_or_default();
        let mut message = Message::new(
            stored.exchange,
            stored.routing_key,
            stored.properties,
            stored.body,
            &summary,
        );
        if !cc.is_empty() {
            message.extra_routing_keys = Some(cc.into());
        }
        Some(message)
    }

    /// The bytes a queue log writes for this message.
    pub fn parts(&self) -> MessageParts<'_> {
        MessageParts {
            exchange: &self.exchange,
            routing_key: &self.routing_key,
            properties: &self.properties,
            body: self.body.parts(),
        }
    }

    /// Bytes this message adds to a connection's outbox: the body and properties plus an
    /// estimate of the frame overhead.
    pub fn wire_size(&self) -> usize {
        self.body.len() + self.properties.len() + self.exchange.len() + self.routing_key.len() + 64
    }

    /// Bytes of memory this message stands for, for a queue's decision to page: its parts
    /// and itself (whether or not its bytes are shared with other messages of its chunk).
    pub fn memory_size(&self) -> usize {
        self.parts_size()
    }

    /// Its parts, the `Message` itself, and the `Arc` and shared-buffer headers around them.
    fn parts_size(&self) -> usize {
        /// The allocation counts of the `Arc` holding a message and of the shared buffer.
        const HEADERS_BYTES: usize = 16 + 32;
        self.body.len()
            + self.body.list_bytes()
            + self.extra_keys_size()
            + self.properties.len()
            + self.exchange.len()
            + self.routing_key.len()
            + HEADERS_BYTES
            + std::mem::size_of::<Message>()
    }
}

/// What RabbitMQ checks of a message's properties when it is published, whichever way it comes
/// in (AMQP, the management API): that `user_id` names the publishing user (unless it may
/// impersonate), and that `expiration` is a valid TTL.
pub fn check_publisher_properties(
    properties: &[u8],
    summary: &PropertySummary,
    user: &User,
) -> AmqpResult<()> {
    if let Some(user_id) = summary
        .user_id
        .as_ref()
        .and_then(|r| properties.get(r.clone()))
        && user_id != user.name.as_bytes()
        && !user.has_tag("impersonator")
    {
        return Err(crate::amqp_error!(
            PreconditionFailed,
            "user_id property set to '{}' but authenticated user was '{}'",
            String::from_utf8_lossy(user_id),
            user.name
        ));
    }
    if let Some(expiration) = summary
        .expiration
        .as_ref()
        .and_then(|r| properties.get(r.clone()))
    {
        check_expiration(expiration)?;
    }
    Ok(())
}

/// Validates a per-message `expiration` the way RabbitMQ parses it.
pub fn check_expiration(raw: &[u8]) -> AmqpResult<()> {
    let text = String::from_utf8_lossy(raw);
    let invalid = |reason: String| {
        crate::amqp_error!(
            PreconditionFailed,
            "invalid expiration '{}': {}",
            text,
            reason
        )
    };
    let bytes = text.as_bytes();
    let (negative, digits_start) = match bytes.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    let digits_end = bytes[digits_start..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map_or(bytes.len(), |p| p + digits_start);
    if digits_end == digits_start {
        return Err(invalid("no_integer".into()));
    }
    let magnitude: i128 = text[digits_start..digits_end].parse().unwrap_or(i128::MAX);
    let value = if negative { -magnitude } else { magnitude };
    if digits_end != bytes.len() {
        return Err(invalid(format!(
            "{{leftover_string,\"{}\"}}",
            &text[digits_end..]
        )));
    }
    if value < 0 {
        return Err(invalid(format!("{{value_negative,{value}}}")));
    }
    if value > crate::broker::arguments::MAX_TTL_MS as i128 {
        return Err(invalid(format!("{{value_too_large,{value}}}")));
    }
    Ok(())
}

/// CC and BCC headers add routing keys; BCC is removed from the message. Returns the
/// properties (rewritten without BCC), their summary, the decoded headers for headers
/// exchanges, and the extra routing keys. Properties that do not decode are a bare
/// INTERNAL_ERROR, as in RabbitMQ; headers nested deeper than Lepus decodes an undecodable
/// frame.
#[allow(clippy::type_complexity)]
pub fn cc_and_bcc(
    mut properties: Bytes,
    summary: PropertySummary,
) -> AmqpResult<(Bytes, PropertySummary, Option<FieldTable>, Vec<Bytes>)> {
    let Some(range) = &summary.headers else {
        return Ok((properties, summary, None, Vec::new()));
    };
    let table = properties::decode_headers(&properties, range)
        .ok_or_else(|| AmqpError::bare(ReplyCode::InternalError))?;
    let (cc, bcc) = (table::get(&table, "CC"), table::get(&table, "BCC"));
    if cc.is_none() && bcc.is_none() {
        return Ok((properties, summary, Some(table), Vec::new()));
    }
    let mut keys: Vec<&[u8]> = Vec::new();
    for (name, value) in [("CC", cc), ("BCC", bcc)] {
        match value {
            None => {}
            Some(AMQPValue::FieldArray(values)) => {
                for k in values.as_slice() {
                    if let AMQPValue::LongString(k) = k {
                        keys.push(k.as_bytes());
                    }
                }
            }
            Some(other) => {
                return Err(amqp_error!(
                    PreconditionFailed,
                    "invalid message: {{unacceptable_type_in_header,\"{}\",{}}}",
                    name,
                    table::type_name(other)
                ));
            }
        }
    }
    // The keys are slices of one buffer: thousands of short keys are not as many
    // allocations.
    let joined = Bytes::from(keys.concat());
    let mut at = 0;
    let extra_keys: Vec<Bytes> = keys
        .iter()
        .map(|k| {
            at += k.len();
            joined.slice(at - k.len()..at)
        })
        .collect();
    if bcc.is_none() {
        return Ok((properties, summary, Some(table), extra_keys));
    }
    let mut stripped = FieldTable::default();
    for (k, v) in table.inner() {
        if k.as_str() != "BCC" {
            stripped.insert(k.clone(), v.clone());
        }
    }
    properties = properties::replace_headers(&properties, &summary, &stripped)
        .ok_or_else(|| AmqpError::bare(ReplyCode::InternalError))?;
    let summary = properties::scan(&properties).map_err(|e| match e {
        ScanError::Malformed => AmqpError::bare(ReplyCode::InternalError),
        ScanError::TooDeep => table::too_deep_error(),
    })?;
    Ok((properties, summary, Some(stripped), extra_keys))
}
