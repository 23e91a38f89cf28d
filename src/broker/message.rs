//! A published message, shared by every queue it is routed to.

use std::sync::Arc;

use bytes::Bytes;

use super::memory::{Charge, Memory};
use crate::protocol::properties::{self, PropertySummary};
use crate::store::record::{MessageParts, StoredMessage};

/// A message as it was published. Queues hold it behind an `Arc`, so a message routed to ten
/// queues is stored once. Its parts live in one allocation of their own (a small message is
/// copied out of the read buffer once complete), or, for a large body, in the buffer it was
/// read into; either way what it keeps alive is charged to the broker's memory gauge until
/// the last reference to it is dropped.
#[derive(Debug, Clone)]
pub struct Message {
    /// The exchange the publisher named; deliveries report it.
    pub exchange: Bytes,
    /// The routing key the publisher gave; deliveries report it.
    pub routing_key: Bytes,
    /// The raw property list (flags and values), forwarded to consumers byte for byte.
    pub properties: Bytes,
    /// The body, reassembled if it came in several frames.
    pub body: Bytes,
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
}

impl Message {
    pub fn new(
        exchange: Bytes,
        routing_key: Bytes,
        properties: Bytes,
        body: Bytes,
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
            body,
            persistent: summary.persistent(),
            priority: summary.priority,
            ttl_ms,
            extra_routing_keys: None,
            charge: Charge::default(),
        }
    }

    /// A message assembled from `parts` copied into one allocation of their own, so that it
    /// keeps nothing else alive (not the read buffer its frames came in).
    pub fn copied(
        exchange: &[u8],
        routing_key: &[u8],
        properties: Bytes,
        body: &[u8],
        summary: &PropertySummary,
    ) -> Self {
        let total = exchange.len() + routing_key.len() + properties.len() + body.len();
        let mut buf = Vec::with_capacity(total);
        for part in [exchange, routing_key, &properties[..], body] {
            buf.extend_from_slice(part);
        }
        let buf = Bytes::from(buf);
        let mut at = 0;
        let mut take = |len: usize| {
            let part = buf.slice(at..at + len);
            at += len;
            part
        };
        let exchange = take(exchange.len());
        let routing_key = take(routing_key.len());
        let props = take(properties.len());
        let body = take(body.len());
        Message::new(exchange, routing_key, props, body, summary)
    }

    /// Charges what this message keeps alive to `memory`: its parts, plus `pinned` bytes of
    /// a buffer it shares (a large body read in place).
    pub fn charge_to(&mut self, memory: &Arc<Memory>, pinned: usize) {
        self.charge = Charge::new(memory, self.parts_size() + pinned);
    }

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
            body: &self.body,
        }
    }

    /// Bytes this message adds to a connection's outbox: the body and properties plus an
    /// estimate of the frame overhead.
    pub fn wire_size(&self) -> usize {
        self.body.len() + self.properties.len() + self.exchange.len() + self.routing_key.len() + 64
    }

    /// Bytes this message keeps alive in memory: what it is charged, or, for a message that
    /// is not charged (tests, tools), its parts.
    pub fn memory_size(&self) -> usize {
        match self.charge.bytes() {
            0 => self.parts_size(),
            charged => charged,
        }
    }

    /// Its parts, the `Message` itself, and the `Arc` and shared-buffer headers around them.
    fn parts_size(&self) -> usize {
        /// The allocation counts of the `Arc` holding a message and of the shared buffer.
        const HEADERS_BYTES: usize = 16 + 32;
        self.body.len()
            + self.properties.len()
            + self.exchange.len()
            + self.routing_key.len()
            + HEADERS_BYTES
            + std::mem::size_of::<Message>()
    }
}
