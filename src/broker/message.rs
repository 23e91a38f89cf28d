//! A published message, shared by every queue it is routed to.

use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::properties::{self, PropertySummary};
use crate::store::record::{MessageParts, StoredMessage};

/// A message as it was published. Queues hold it behind an `Arc`, so a message routed to ten
/// queues is stored once; its bytes are slices of the buffer the publisher's frames were read
/// into, so it was copied once, from the socket.
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
        }
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

    /// Bytes this message keeps alive in memory, for the memory budget: its fields point into
    /// the frames it arrived in, so the frame headers and method fields around them count too,
    /// as do the `Message` itself and its `Arc`.
    pub fn memory_size(&self) -> usize {
        /// Frame headers and end bytes of the method, header and body frames, and the method's
        /// and header's fixed fields, all kept alive with the slices.
        const FRAMING_BYTES: usize = 3 * 8 + 16;
        /// The allocation counts of the `Arc` holding a message.
        const ARC_BYTES: usize = 16;
        self.body.len()
            + self.properties.len()
            + self.exchange.len()
            + self.routing_key.len()
            + FRAMING_BYTES
            + ARC_BYTES
            + std::mem::size_of::<Message>()
    }
}
