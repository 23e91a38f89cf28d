//! Dispatch: handing ready messages to consumers with credit, in RabbitMQ's order, and the
//! bookkeeping of consumers that wait for credit.
//!
//! The first consumer in dispatch order that can take the head message gets it and moves to
//! the tail of its priority; one that cannot leaves the rotation until it gets back what it
//! lacked ([`super::consumers::Consumers`]). Deliveries are grouped per sink and pushed while
//! the lock is held, so every consumer sees the queue's order.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::consumer::Consumer;
use super::context::QueueCtx;
use super::delivery::{ConsumerId, Delivery, DeliverySink, Unblock};
use super::entry::QueueEntry;
use super::settings::QueueType;
use super::state::{Batch, State, with_delivery_count};
use crate::broker::timer::now_ms;

/// Up to this many sinks a dispatch finds a sink's batch by a scan; past it, by
/// `batch_index`.
const SCANNED_BATCHES: usize = 8;

/// The longest emptied batch buffer a queue keeps for its next batch
/// (`State::spare_deliveries`): enough for the one or few deliveries of a dispatch that
/// keeps up with publishes, and little for each of thousands of idle queues to hold.
const SPARE_DELIVERIES: usize = 16;

/// The address that identifies a sink (a connection), whichever consumer leads to it.
#[inline]
fn sink_key(sink: &Arc<dyn DeliverySink>) -> usize {
    Arc::as_ptr(sink) as *const () as usize
}

/// The batch of the sink at `key`, if this dispatch has one.
fn batch_of(batches: &[Batch], index: &HashMap<usize, usize>, key: usize) -> Option<usize> {
    if batches.len() > SCANNED_BATCHES {
        return index.get(&key).copied();
    }
    batches.iter().position(|b| sink_key(&b.sink) == key)
}

/// What a delivery needs from the consumer it goes to.
struct Recipient {
    id: ConsumerId,
    channel: u16,
    tag: Bytes,
    no_ack: bool,
    /// Its sink, by address: the sink itself is only cloned for a new batch.
    sink: *const (),
}

impl Recipient {
    fn of(c: &Consumer) -> Self {
        Recipient {
            id: c.id,
            channel: c.channel,
            tag: c.tag.clone(),
            no_ack: c.no_ack,
            sink: Arc::as_ptr(&c.sink) as *const (),
        }
    }
}

impl State {
    /// Hands ready messages to consumers, reading the tail back as the head drains.
    pub fn dispatch(&mut self, ctx: &QueueCtx) {
        if self.dispatch_holds > 0 {
            // Whoever holds it dispatches when they let go.
            return;
        }
        loop {
            // Past the bound on discards per lock hold, the timer goes on with the rest.
            if self.expire_heads(ctx) || self.dispatch_ready(ctx) {
                break;
            }
            // Keep the head fed from the tail while consumers take messages; what was read
            // back goes out in the next round.
            if !self.page_in(ctx) {
                break;
            }
        }
    }

    /// Returns true if it stopped at the bound on expiries per lock hold.
    fn dispatch_ready(&mut self, ctx: &QueueCtx) -> bool {
        if self.deleted || self.consumers.is_empty() {
            return false;
        }
        let mut capped = false;
        loop {
            // A priority level whose messages are all on disk may hold the real head.
            if self.paged_levels > 0 {
                self.page_in_levels(ctx);
            }
            let Some(head) = self.ready.front() else {
                break;
            };
            if head.expires_at.is_some_and(|at| at <= now_ms()) {
                // Expired on its way out.
                if self.expire_heads(ctx) {
                    capped = true;
                    break;
                }
                continue;
            }
            let size = head.message.wire_size();
            let Some(recipient) = self.choose_consumer(size) else {
                break;
            };
            let Some(entry) = self.pop_ready() else {
                break;
            };
            self.hand_over(ctx, recipient, entry, size);
        }
        if !self.acks_to_log.is_empty() {
            let acks = std::mem::take(&mut self.acks_to_log);
            self.append_acks(&acks);
            self.acks_to_log = acks;
            self.acks_to_log.clear();
        }
        if !self.batches.is_empty() {
            self.flush_batches();
        }
        self.ready.shrink_sparse_levels();
        capped
    }

    /// The consumer that gets a message of `size` bytes, having reserved the credit for it.
    fn choose_consumer(&mut self, size: usize) -> Option<Recipient> {
        let (batches, index) = (&self.batches, &self.batch_index);
        let batched = |c: &Consumer| {
            batch_of(batches, index, sink_key(&c.sink)).map_or(0, |i| batches[i].bytes)
        };
        self.consumers.pick(size, batched, Recipient::of)
    }

    /// Gives `entry` to the chosen consumer: logs what must be logged and adds it to the
    /// consumer's sink's batch.
    fn hand_over(
        &mut self,
        ctx: &QueueCtx,
        consumer: Recipient,
        mut entry: QueueEntry,
        mut size: usize,
    ) {
        if !consumer.no_ack {
            self.unacked += 1;
            self.unacked_bytes += entry.message.body.len() as u64;
        }
        if !(consumer.no_ack && entry.persisted) {
            self.mark_delivered(&entry);
        }
        if self.settings.queue_type == QueueType::Quorum && entry.delivery_count > 0 {
            entry.message = with_delivery_count(&entry.message, entry.delivery_count);
            entry.redelivered = true;
            // The connection accounts for the message as it goes out.
            size = entry.message.wire_size();
        }
        // The queue is alive while its method runs: the upgrade cannot fail (if it did, the
        // message goes back). It costs what cloning an `Arc` costs, one atomic operation.
        let Some(source) = ctx.source.upgrade() else {
            self.insert_in_order(vec![entry]);
            return;
        };
        if consumer.no_ack && entry.persisted {
            // Settled on delivery: the Ack alone says all a Delivered mark would (it lands in
            // the same epoch), so a no-ack drain writes one record per message, not two. The
            // dispatch logs its Acks together before it hands the deliveries over. It leaves
            // the persistent count now.
            self.persistent.remove(1, entry.message.body.len() as u64);
            self.acks_to_log.push(entry.seq);
        }
        match consumer.no_ack {
            true => self.counters.deliver_no_ack += 1,
            false => self.counters.deliver += 1,
        }
        self.counters.redeliver += entry.redelivered as u64;
        let delivery = Delivery {
            channel: consumer.channel,
            consumer_id: consumer.id,
            consumer_tag: consumer.tag,
            source,
            entry,
            no_ack: consumer.no_ack,
        };
        match batch_of(&self.batches, &self.batch_index, consumer.sink as usize) {
            Some(i) => {
                let batch = &mut self.batches[i];
                batch.bytes += size;
                batch.deliveries.push(delivery);
            }
            None => {
                match self.consumers.get_mut(consumer.id).map(|c| c.sink.clone()) {
                    Some(sink) => {
                        let mut deliveries = std::mem::take(&mut self.spare_deliveries);
                        deliveries.push(delivery);
                        self.batches.push(Batch {
                            sink,
                            deliveries,
                            bytes: size,
                        });
                        if self.batches.len() > SCANNED_BATCHES {
                            if self.batch_index.is_empty() {
                                for (i, b) in self.batches.iter().enumerate() {
                                    self.batch_index.insert(sink_key(&b.sink), i);
                                }
                            } else {
                                self.batch_index
                                    .insert(consumer.sink as usize, self.batches.len() - 1);
                            }
                        }
                    }
                    // The consumer was just chosen, so this cannot happen; if it did, the
                    // message goes back rather than being lost.
                    None => self.insert_in_order(vec![delivery.entry]),
                }
            }
        }
    }

    fn flush_batches(&mut self) {
        self.batch_index.clear();
        let mut batches = std::mem::take(&mut self.batches);
        for mut batch in batches.drain(..) {
            if let Err(undelivered) = batch
                .sink
                .push_deliveries(&mut batch.deliveries, batch.bytes)
            {
                // The connection closed under us: its consumers are going away. Put the
                // messages back where they were and stop sending to those consumers.
                let mut back = Vec::with_capacity(undelivered.len());
                for mut d in undelivered {
                    // Its Ack is logged (see `Queue::return_undelivered`).
                    d.entry.persisted &= !d.no_ack;
                    if let Some(c) = self.consumers.get_mut(d.consumer_id)
                        && !d.no_ack
                    {
                        c.release();
                        c.channel_prefetch.release(1);
                    }
                    self.consumers.mark_dead(d.consumer_id);
                    if !d.no_ack {
                        self.unacked = self.unacked.saturating_sub(1);
                        self.unacked_bytes = self
                            .unacked_bytes
                            .saturating_sub(d.entry.message.body.len() as u64);
                    }
                    back.push(d.entry);
                }
                self.insert_in_order(back);
            } else if batch.deliveries.capacity() <= SPARE_DELIVERIES
                && batch.deliveries.capacity() > self.spare_deliveries.capacity()
            {
                // Emptied by the push (or swapped for the outbox's empty buffer).
                batch.deliveries.clear();
                self.spare_deliveries = std::mem::take(&mut batch.deliveries);
            }
        }
        // Keep the allocation for the next dispatch.
        self.batches = batches;
    }

    /// Consumers that got back the credit they waited for rejoin the rotation.
    pub fn wake(&mut self, unblock: Unblock) {
        match unblock {
            Unblock::Nobody => {}
            Unblock::Channel(p) => self.consumers.wake_channel(Arc::as_ptr(p) as usize),
            Unblock::Sink(id) => self.consumers.wake_sink(id),
        }
    }
}
