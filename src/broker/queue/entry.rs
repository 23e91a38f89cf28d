//! A message in a queue, or on its way to a consumer.

use std::sync::Arc;

use crate::broker::message::Message;
use crate::store::record::{FLAG_PERSISTED, FLAG_REDELIVERED, Stamp};

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

    /// What a log record of this entry says besides the message: paged out and read back,
    /// or logged again, it comes back as it went.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            flags: if self.persisted { FLAG_PERSISTED } else { 0 }
                | if self.redelivered {
                    FLAG_REDELIVERED
                } else {
                    0
                },
            expires_at: self.expires_at,
            delivery_count: self.delivery_count,
        }
    }
}
