//! What a queue is made with and works with besides its own state: what it was declared
//! with, the store, the memory budget, the timer thread, and its host (the vhost) for what
//! it cannot do itself.
//!
//! The host is a trait, so that the queue does not import the vhost: a queue never routes a
//! message or deletes itself from inside its own call; it tells its host, which does it later.

use std::sync::{Arc, Weak};

use super::dead_letter::{DeadLetter, DlxTarget};
use super::delivery::DeliverySource;
use amq_protocol::types::FieldTable;

use crate::broker::budget::Share;
use crate::broker::memory::Memory;
use crate::broker::timer::{Timed, Timers};
use crate::store::Store;

/// What a queue was declared with.
#[derive(Debug)]
pub struct QueueConfig {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    pub auto_delete: bool,
    /// The connection an exclusive queue belongs to.
    pub exclusive_owner: Option<u64>,
    pub arguments: FieldTable,
    /// A durable queue's log directory number (0 for transient queues).
    pub id: u64,
    /// What it keeps ([`QueueConfig::kept_bytes`]), held against the broker's topology budget
    /// while it lives; none in unit tests and benchmarks.
    pub share: Option<Share>,
}

/// What a queue keeps besides its name and arguments: its record, state, counters and timer
/// (measured: 1.6 KB per transient queue, resident).
const QUEUE_KEPT_BYTES: usize = 1536;

/// What a durable queue keeps besides: its log, and its definition (measured: 1.6 KB more).
const DURABLE_QUEUE_KEPT_BYTES: usize = 1536;

impl QueueConfig {
    /// What a queue declared with these keeps, as its topology budget counts it: its record,
    /// its name in a few places, and its arguments decoded (a durable one's twice: the
    /// definitions keep them too).
    pub fn kept_bytes(name: &str, durable: bool, arguments: &FieldTable) -> usize {
        let mut kept =
            QUEUE_KEPT_BYTES + 4 * name.len() + crate::broker::arguments::kept_bytes(arguments);
        if durable {
            kept += DURABLE_QUEUE_KEPT_BYTES + crate::broker::arguments::kept_bytes(arguments);
        }
        kept
    }
}

/// What a queue asks of the vhost it lives in.
pub trait QueueHost: Send + Sync {
    /// Messages left `queue` for its dead-letter exchange. The host routes them later, with no
    /// queue lock held and never inside this call.
    fn dead_letter(&self, queue: &str, target: DlxTarget, letters: Vec<DeadLetter>);
    /// The queue named `name` (the object at address `identity`) was unused for its
    /// `x-expires`: the host deletes it, if it is still that queue.
    fn queue_expired(&self, name: &str, identity: usize);
}

/// The broker services a new queue is given.
#[derive(Clone)]
pub struct QueueServices {
    pub store: Arc<Store>,
    pub memory: &'static Memory,
    pub timers: Arc<Timers>,
    /// The vhost; weak, as the vhost owns its queues.
    pub host: Weak<dyn QueueHost>,
    /// How long an at-least-once dead letter waits before it is routed again.
    pub dead_letter_retry_ms: u64,
}

impl std::fmt::Debug for QueueServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueServices").finish_non_exhaustive()
    }
}

/// A queue's own view of itself and its services, handed to the code that runs under its lock.
pub struct QueueCtx {
    /// The queue's name, for logs.
    pub name: String,
    /// Persistent messages are written to the queue's log.
    pub durable: bool,
    pub services: QueueServices,
    /// The queue itself, as deliveries refer to it.
    pub source: Weak<dyn DeliverySource>,
    /// The queue itself, as the timer thread wakes it.
    pub timed: Weak<dyn Timed>,
}

impl QueueCtx {
    pub fn store(&self) -> &Store {
        &self.services.store
    }

    pub fn memory(&self) -> &'static Memory {
        self.services.memory
    }
}
