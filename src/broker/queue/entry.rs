//! A message in a queue, or on its way to a consumer.

use std::sync::Arc;

use crate::broker::message::Message;

/// A message in a queue, with what the queue knows about it.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    /// Position in the queue; requeued messages go back to where this says.
    pub seq: u64,
    pub message: Arc<Message>,
    /// The message was delivered before (and requeued).
    pub redelivered: bool,
    /// The message has a durable record in the queue's log: its ack must be logged.
    pub persisted: bool,
    /// When the message expires (Unix milliseconds), fixed when it was enqueued.
    pub expires_at: Option<u64>,
    /// Quorum queues: how many times the message came back undelivered or unacked.
    pub delivery_count: u32,
}

impl QueueEntry {
    /// Bytes this entry holds in memory, for the memory budget.
    pub fn size(&self) -> usize {
        self.message.memory_size() + std::mem::size_of::<QueueEntry>()
    }
}
