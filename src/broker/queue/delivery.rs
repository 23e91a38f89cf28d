//! The seam between a queue and whoever takes its messages.
//!
//! A queue hands [`Delivery`]s to a [`DeliverySink`]: an AMQP connection's outbox implements
//! it, and so can anything else that consumes (a management "get", a stream reader, a cluster
//! follower). The delivery carries its [`DeliverySource`], the queue it came from, so that
//! whoever holds it can settle it (ack, requeue, reject) or give it back undelivered without
//! knowing what kind of queue that is.
//!
//! This file is below the queue in the import graph: the queue implements the source trait and
//! calls sinks, and neither trait names the queue type.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::entry::QueueEntry;
use super::prefetch::ChannelPrefetch;

/// Identifies a consumer across the broker (tags are only unique per channel).
pub type ConsumerId = u64;

/// One message on its way to a consumer.
pub struct Delivery {
    pub channel: u16,
    pub consumer_id: ConsumerId,
    pub consumer_tag: Bytes,
    /// The queue it came from: where it is settled.
    pub source: Arc<dyn DeliverySource>,
    pub entry: QueueEntry,
    /// Delivered with no-ack: settled the moment it is sent.
    pub no_ack: bool,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("channel", &self.channel)
            .field("consumer_id", &self.consumer_id)
            .field("seq", &self.entry.seq)
            .finish_non_exhaustive()
    }
}

/// Where a queue pushes deliveries for a consumer: its connection, for AMQP.
///
/// Called with the queue's lock held, so implementations must be quick and must not call back
/// into any queue.
pub trait DeliverySink: Send + Sync {
    /// Identifies the sink (the connection id for AMQP), for [`Unblock::Sink`].
    fn sink_id(&self) -> u64;
    /// Whether the sink can take a delivery of `size` bytes on top of `batched` bytes already
    /// picked for it in this round. A sink that says no must remember that a queue went
    /// without, and ask it again (with [`Unblock::Sink`]) once it has room.
    fn has_room(&self, size: usize, batched: usize) -> bool;
    /// Takes deliveries, in order. Gives them all back if the sink is gone.
    fn push_deliveries(
        &self,
        deliveries: &mut Vec<Delivery>,
        bytes: usize,
    ) -> Result<(), Vec<Delivery>>;
    /// The queue of the consumer `consumer_tag` on `channel` was deleted.
    fn consumer_cancelled(&self, channel: u16, consumer: ConsumerId, consumer_tag: Bytes);
}

/// Why deliveries go back to their queue, which decides where a quorum queue puts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Their consumer turned them down: `basic.nack` or `basic.reject` with requeue, or
    /// `basic.recover`. Same as RabbitMQ 3.10, a quorum queue puts them behind every ready
    /// message, in the order they came back, so that a message its consumers keep refusing
    /// does not hold up the rest; a classic queue puts them back in their places.
    Refused,
    /// They were let go without a verdict: their channel closed, or the management API
    /// only looked at them. Every queue puts them back in their places.
    Released,
}

/// What a delivery is settled with: the queue it came from.
pub trait DeliverySource: Send + Sync {
    /// The deliveries were acknowledged: they leave the queue for good.
    fn ack(&self, settled: Vec<Settled>, unblock: Unblock);
    /// The deliveries go back into the queue, marked redelivered: where, `why` decides (see
    /// [`Requeue`]).
    fn requeue(&self, settled: Vec<(Settled, QueueEntry)>, why: Requeue, unblock: Unblock);
    /// The deliveries were rejected without requeue: dead-lettered or dropped.
    fn reject(&self, settled: Vec<(Settled, QueueEntry)>, unblock: Unblock);
    /// The deliveries never reached their consumer (it went away first).
    fn return_undelivered(&self, deliveries: Vec<Delivery>);
    /// Consumers got credit back outside the queue: try to dispatch again.
    fn kick(&self, unblock: Unblock);
}

/// Whether two sources are the same queue.
pub fn same_source(a: &Arc<dyn DeliverySource>, b: &Arc<dyn DeliverySource>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// Items grouped by the queue they came from, groups in order of first appearance and items
/// in order within each. A few groups are found by scanning (the usual case: one queue, no
/// allocation beyond the list); past `SCAN_GROUPS` a map finds them, so a channel holding
/// deliveries from 100,000 queues settles them in linear time.
pub struct BySource<T> {
    groups: Vec<(Arc<dyn DeliverySource>, Vec<T>)>,
    /// Each group's position by its queue's address, once there are too many to scan.
    index: Option<HashMap<usize, usize>>,
}

const SCAN_GROUPS: usize = 8;

fn source_key(source: &Arc<dyn DeliverySource>) -> usize {
    Arc::as_ptr(source) as *const () as usize
}

impl<T> BySource<T> {
    pub fn new() -> Self {
        BySource {
            groups: Vec::new(),
            index: None,
        }
    }

    pub fn push(&mut self, source: &Arc<dyn DeliverySource>, item: T) {
        let at = match &self.index {
            None => self.groups.iter().position(|(q, _)| same_source(q, source)),
            Some(index) => index.get(&source_key(source)).copied(),
        };
        if let Some(i) = at {
            self.groups[i].1.push(item);
            return;
        }
        self.groups.push((source.clone(), vec![item]));
        let last = self.groups.len() - 1;
        match &mut self.index {
            Some(index) => {
                index.insert(source_key(source), last);
            }
            None if self.groups.len() > SCAN_GROUPS => {
                let index = self
                    .groups
                    .iter()
                    .enumerate()
                    .map(|(i, (q, _))| (source_key(q), i))
                    .collect();
                self.index = Some(index);
            }
            None => {}
        }
    }

    pub fn into_groups(self) -> Vec<(Arc<dyn DeliverySource>, Vec<T>)> {
        self.groups
    }
}

impl<T> Default for BySource<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// A settled delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// The consumer it went to; None for basic.get.
    pub consumer: Option<ConsumerId>,
    pub seq: u64,
    /// Its durable record must be acknowledged in the log.
    pub persisted: bool,
    /// Its body's length: the queue counts the bytes its unacknowledged messages hold.
    pub body_bytes: u64,
}

impl Settled {
    /// The settlement of `entry`, delivered to `consumer` (None for basic.get).
    pub fn of(entry: &QueueEntry, consumer: Option<ConsumerId>) -> Settled {
        Settled {
            consumer,
            seq: entry.seq,
            persisted: entry.persisted,
            body_bytes: entry.message.body.len() as u64,
        }
    }
}

/// Which blocked consumers got credit back from outside the queue and should rejoin the
/// round-robin.
#[derive(Debug, Clone, Copy)]
pub enum Unblock<'a> {
    Nobody,
    /// Every consumer of this channel (its channel-wide prefetch allowed more).
    Channel(&'a Arc<ChannelPrefetch>),
    /// Every consumer on this sink (it has room again), by [`DeliverySink::sink_id`].
    Sink(u64),
}
