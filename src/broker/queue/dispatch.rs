//! Dispatch: handing ready messages to consumers with credit, in RabbitMQ's order, and the
//! bookkeeping of consumers that wait for credit.
//!
//! The first consumer in dispatch order that can take the head message gets it and moves to
//! the tail of its priority; one that cannot is marked blocked and skipped until it gets
//! credit back ([`State::unblock`]). Deliveries are grouped per sink and pushed while the lock
//! is held, so every consumer sees the queue's order.

use std::sync::Arc;

use super::consumer::{Blocked, Consumer};
use super::context::QueueCtx;
use super::dead_letter::Reason;
use super::delivery::{ConsumerId, Delivery, DeliverySink, Unblock};
use super::entry::QueueEntry;
use super::settings::QueueType;
use super::state::{Batch, State, with_delivery_count};
use crate::broker::timer::now_ms;

/// Whether two consumers deliver to the same sink (connection).
#[inline]
fn same_sink(a: &Arc<dyn DeliverySink>, b: &Arc<dyn DeliverySink>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

impl State {
    /// Hands ready messages to consumers, reading the tail back as the head drains.
    pub fn dispatch(&mut self, ctx: &QueueCtx) {
        loop {
            self.expire_heads(ctx);
            self.dispatch_ready(ctx);
            // Keep the head fed from the tail while consumers take messages; what was read
            // back goes out in the next round.
            if !self.page_in(ctx) {
                break;
            }
        }
    }

    fn dispatch_ready(&mut self, ctx: &QueueCtx) {
        if self.deleted || self.consumers.is_empty() {
            return;
        }
        let sac = self.settings.single_active_consumer;
        while let Some(head) = self.ready.front() {
            if head.expires_at.is_some_and(|at| at <= now_ms()) {
                // Expired on its way out.
                self.expire_heads(ctx);
                continue;
            }
            let size = head.message.wire_size();
            let Some(i) = self.choose_consumer(size, sac) else {
                break;
            };
            let Some(entry) = self.pop_ready(ctx) else {
                break;
            };
            let consumer = self.consumers.remove(i);
            self.hand_over(ctx, &consumer, entry, size);
            self.insert_consumer(consumer);
        }
        if !self.batches.is_empty() {
            self.flush_batches(ctx);
        }
    }

    /// The index of the first consumer in dispatch order that can take a message of `size`
    /// bytes now; it has reserved the credit. Consumers that cannot are marked blocked.
    fn choose_consumer(&mut self, size: usize, sac: bool) -> Option<usize> {
        for (i, consumer) in self.consumers.iter_mut().enumerate() {
            if consumer.blocked.is_some() || (sac && self.active != Some(consumer.id)) {
                continue;
            }
            let batched = self
                .batches
                .iter()
                .find(|b| same_sink(&b.sink, &consumer.sink))
                .map_or(0, |b| b.bytes);
            match consumer.try_reserve(size, batched) {
                Ok(()) => return Some(i),
                Err(why) => consumer.blocked = Some(why),
            }
        }
        None
    }

    /// Gives `entry` to `consumer`: logs what must be logged and adds it to the consumer's
    /// sink's batch.
    fn hand_over(
        &mut self,
        ctx: &QueueCtx,
        consumer: &Consumer,
        mut entry: QueueEntry,
        mut size: usize,
    ) {
        if !consumer.no_ack {
            self.unacked += 1;
        }
        self.mark_delivered(&entry);
        if consumer.no_ack && entry.persisted {
            // Settled on delivery.
            self.log_ack(entry.seq);
        }
        if self.settings.queue_type == QueueType::Quorum && entry.delivery_count > 0 {
            entry.message = with_delivery_count(&entry.message, entry.delivery_count);
            entry.redelivered = true;
            // The connection accounts for the message as it goes out.
            size = entry.message.wire_size();
        }
        // The queue is alive while its method runs: the upgrade cannot fail. It costs what
        // cloning an `Arc` costs, one atomic operation per delivery.
        let Some(source) = ctx.source.upgrade() else {
            return;
        };
        let delivery = Delivery {
            channel: consumer.channel,
            consumer_id: consumer.id,
            consumer_tag: consumer.tag.clone(),
            source,
            entry,
            no_ack: consumer.no_ack,
        };
        match self
            .batches
            .iter_mut()
            .find(|b| same_sink(&b.sink, &consumer.sink))
        {
            Some(batch) => {
                batch.bytes += size;
                batch.deliveries.push(delivery);
            }
            None => self.batches.push(Batch {
                sink: consumer.sink.clone(),
                deliveries: vec![delivery],
                bytes: size,
            }),
        }
    }

    fn flush_batches(&mut self, ctx: &QueueCtx) {
        let mut batches = std::mem::take(&mut self.batches);
        let mut lost_active = false;
        for mut batch in batches.drain(..) {
            if let Err(undelivered) = batch
                .sink
                .push_deliveries(&mut batch.deliveries, batch.bytes)
            {
                // The connection closed under us: its consumers are going away. Put the
                // messages back where they were and stop sending to those consumers.
                let mut back = Vec::with_capacity(undelivered.len());
                for d in undelivered {
                    if let Some(c) = self.consumers.iter_mut().find(|c| c.id == d.consumer_id) {
                        c.dead = true;
                        if !d.no_ack {
                            c.release();
                            c.channel_prefetch.release(1);
                        }
                    }
                    if self.active == Some(d.consumer_id) {
                        lost_active = true;
                    }
                    if !d.no_ack {
                        self.unacked = self.unacked.saturating_sub(1);
                    }
                    back.push(d.entry);
                }
                self.insert_in_order(ctx, back);
            }
        }
        if lost_active {
            self.choose_active();
        }
        // Keep the allocation for the next dispatch.
        self.batches = batches;
    }

    /// Gives a consumer back the credit of one settled delivery.
    pub fn release_consumer(
        &mut self,
        consumer: Option<ConsumerId>,
        released: &mut Vec<ConsumerId>,
    ) {
        if let Some(id) = consumer
            && let Some(c) = self.consumers.iter_mut().find(|c| c.id == id)
        {
            c.release();
            if c.blocked == Some(Blocked::Own) && !released.contains(&id) {
                released.push(id);
            }
        }
    }

    /// Single active consumer: after the active one left, the next is the live consumer of
    /// the highest priority, the earliest registered among equals, as in RabbitMQ.
    pub fn choose_active(&mut self) {
        self.active = self
            .consumers
            .iter()
            .filter(|c| !c.dead)
            .max_by(|a, b| a.priority.cmp(&b.priority).then(b.id.cmp(&a.id)))
            .map(|c| c.id);
    }

    /// Where a consumer of `priority` joins: behind every consumer of the same or a higher
    /// priority.
    fn tail_of(&self, priority: i64) -> usize {
        self.consumers.partition_point(|c| c.priority >= priority)
    }

    pub fn insert_consumer(&mut self, consumer: Consumer) {
        let at = self.tail_of(consumer.priority);
        self.consumers.insert(at, consumer);
    }

    /// Moves blocked consumers that got back the credit they waited for to the tail of their
    /// priority, keeping their relative order, as RabbitMQ re-appends unblocked consumers.
    pub fn unblock(&mut self, released: &[ConsumerId], unblock: Unblock) {
        let wakes = |c: &Consumer| match (c.blocked, unblock) {
            (Some(Blocked::Own), _) => released.contains(&c.id),
            (Some(Blocked::Channel), Unblock::Channel(p)) => Arc::ptr_eq(p, &c.channel_prefetch),
            (Some(Blocked::Sink), Unblock::Sink(id)) => c.sink.sink_id() == id,
            _ => false,
        };
        if !self.consumers.iter().any(wakes) {
            return;
        }
        let (mut woken, rest): (Vec<Consumer>, Vec<Consumer>) = std::mem::take(&mut self.consumers)
            .into_iter()
            .partition(wakes);
        self.consumers = rest;
        for mut c in woken.drain(..) {
            c.blocked = None;
            self.insert_consumer(c);
        }
    }

    /// Messages coming back from consumers: a quorum queue counts the return and
    /// dead-letters what came back more often than its delivery limit; the rest go back to
    /// their places. A message with TTL 0 went out the moment it arrived, so its expiry (its
    /// enqueue time, as in RabbitMQ) has passed: it is expired when it reaches the head.
    pub fn return_entries(&mut self, ctx: &QueueCtx, entries: Vec<QueueEntry>) {
        let quorum = self.settings.queue_type == QueueType::Quorum;
        let limit = self.settings.delivery_limit;
        let mut back = Vec::with_capacity(entries.len());
        for mut entry in entries {
            if entry.expires_at.is_none() && self.ttl_of(&entry.message) == Some(0) {
                entry.expires_at = Some(now_ms());
            }
            if quorum {
                entry.delivery_count += 1;
                if limit.is_some_and(|l| u64::from(entry.delivery_count) > l) {
                    self.discard(entry, Reason::DeliveryLimit);
                    continue;
                }
            }
            back.push(entry);
        }
        self.insert_in_order(ctx, back);
    }

    /// Inserts entries at the positions their sequence numbers give them.
    pub fn insert_in_order(&mut self, ctx: &QueueCtx, mut entries: Vec<QueueEntry>) {
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
        for entry in entries {
            let size = entry.size();
            self.ready_bytes += size;
            self.body_bytes += entry.message.body.len() as u64;
            ctx.memory().add(size as isize);
            self.ready.insert_in_order(entry);
        }
    }
}
