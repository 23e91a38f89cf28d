//! A consumer, as its queue sees it: where to send deliveries and how much credit it has.

use std::sync::Arc;

use bytes::Bytes;

use super::delivery::{ConsumerId, DeliverySink};
use super::prefetch::ChannelPrefetch;

/// A queue's record of one consumer.
pub struct Consumer {
    /// Broker-wide id; the channel uses it to settle deliveries.
    pub id: ConsumerId,
    /// The consumer tag, as sent in every Basic.Deliver.
    pub tag: Bytes,
    /// The channel the consumer lives on.
    pub channel: u16,
    /// Where deliveries for this consumer go: its connection's outbox, for AMQP.
    pub sink: Arc<dyn DeliverySink>,
    /// Credit shared by all consumers of the channel (basic.qos global=true).
    pub channel_prefetch: Arc<ChannelPrefetch>,
    /// Deliveries need no ack and take no credit.
    pub no_ack: bool,
    /// The consumer asked to be the queue's only consumer.
    pub exclusive: bool,
    /// Per-consumer prefetch (basic.qos global=false before basic.consume); 0 = unlimited.
    pub prefetch_count: u32,
    /// Deliveries this consumer has not settled yet.
    pub in_flight: u32,
    /// `x-priority`: consumers of a higher priority get messages first.
    pub priority: i64,
    /// The arguments given to basic.consume, kept as RabbitMQ keeps them (the management API
    /// shows them), encoded: decoded, a table takes 32 to 64 times its size on the wire (a
    /// 128 KiB array of voids, 4-8 MiB per consumer).
    pub arguments: Bytes,
    /// Why the consumer could not take a message when its turn came. It is skipped until
    /// that credit comes back, and then rejoins the round-robin at the tail, as in RabbitMQ.
    pub blocked: Option<Blocked>,
    /// The connection is gone; skip this consumer until the channel removes it.
    pub dead: bool,
}

/// What a consumer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// Its own prefetch is used up: an ack of one of its deliveries frees it.
    Own,
    /// Its channel's prefetch is used up: the channel asks its queues again when it has
    /// credit (in turn, so that no queue always goes first).
    Channel,
    /// Its sink (the connection's outbox) is full: the sink asks again when it drains.
    Sink,
    /// Its connection is gone.
    Dead,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("id", &self.id)
            .field("tag", &self.tag)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Takes credit for one more delivery of `size` bytes on top of `batched` bytes already
    /// picked for the same connection in this round. Says what is missing when the consumer
    /// must wait.
    #[inline]
    pub fn try_reserve(&mut self, size: usize, batched: usize) -> Result<(), Blocked> {
        if self.dead {
            return Err(Blocked::Dead);
        }
        if !self.sink.has_room(size, batched) {
            return Err(Blocked::Sink);
        }
        if self.no_ack {
            return match self.channel_prefetch.blocks_no_ack(self.id) {
                true => Err(Blocked::Channel),
                false => Ok(()),
            };
        }
        if self.prefetch_count != 0 && self.in_flight >= self.prefetch_count {
            return Err(Blocked::Own);
        }
        if !self.channel_prefetch.try_acquire(self.id) {
            return Err(Blocked::Channel);
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Gives back the credit of one delivery that was reserved but not sent, or was settled.
    pub fn release(&mut self) {
        if !self.no_ack {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
    }
}
