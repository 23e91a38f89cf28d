//! AMQP 0-9-1 wire format: frame splitting and the hand-written hot path (publish, content,
//! deliver, ack) next to amq-protocol for everything else.
//!
//! Nothing in here knows about queues or connections; it turns bytes into methods and back.

pub mod basic;
pub mod error;
pub mod frame;
pub mod method;
pub mod properties;
pub mod raw_table;
pub mod table;
