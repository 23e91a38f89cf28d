//! AMQP 0-9-1 wire format: frame splitting and the hand-written hot path (publish, content,
//! deliver, ack) next to amq-protocol for everything else.
//!
//! Nothing in here knows about queues or connections; it turns bytes into methods and back.

/// The most bytes a short string holds on the wire (names, routing and binding keys). What
/// reaches the broker by other ways (the management API, a definitions file) is held to it
/// too: every such string can end up in a frame.
pub const SHORT_STRING_MAX_BYTES: usize = 255;

pub mod basic;
pub mod error;
pub mod frame;
pub mod method;
pub mod properties;
pub mod raw_table;
pub mod table;
