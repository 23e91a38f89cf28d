//! A published message, shared by every queue it is routed to.

use std::sync::Arc;

use bytes::Bytes;

use super::body::Body;
use super::memory::{Charge, Memory};
use crate::auth::User;
use crate::protocol::error::AmqpResult;
use crate::protocol::properties::{self, PropertySummary};
use crate::store::record::{MessageParts, StoredMessage};

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
        }
    }

    /// Charges what this message keeps alive to `memory`: itself, and `owned` bytes of
    /// buffers that are its alone (slices of the input's chunks are charged by the chunks).
    pub fn charge_to(&mut self, memory: &'static Memory, owned: usize) {
        self.charge = Charge::new(memory, Self::OVERHEAD_BYTES + owned);
    }

    /// Charges a message whose parts are all its own (read back from a log, rebuilt for
    /// dead-lettering).
    pub fn charge_all_to(&mut self, memory: &'static Memory) {
        self.charge = Charge::new(memory, self.parts_size());
    }

    /// The `Message` itself, and the `Arc` around it.
    const OVERHEAD_BYTES: usize = std::mem::size_of::<Message>() + 16;

    /// Rebuilds a message a queue log kept, decoding what routing and queueing need. None if
    /// its properties no longer scan (the record passed its checksum, so this means a bug).
    pub fn from_stored(stored: StoredMessage) -> Option<Self> {
        let summary = properties::scan(&stored.properties).ok()?;
        Some(Message::new(
            stored.exchange,
            stored.routing_key,
            stored.properties,
            stored.body,
            &summary,
        ))
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
