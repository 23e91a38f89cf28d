//! A queue: messages waiting in order, the consumers waiting for them, and the dispatch that
//! brings the two together.
//!
//! There is no queue task. Whoever changes a queue (a publisher's connection enqueuing, a
//! consumer's connection acking or consuming) takes the queue's lock, makes the change and
//! dispatches what can be dispatched right there, pushing deliveries into consumers'
//! outboxes. This keeps a message's path free of task hops: publish, route, enqueue and hand
//! over to the consumer's connection happen in one call on the publisher's task.
//!
//! Invariants, all under the lock:
//! - `ready` is sorted by `seq`; a requeued message goes back to the place its `seq` gives it.
//! - A message is in exactly one place: `ready`, or a channel's unacked list (the queue only
//!   counts those), or an outbox on its way to a channel.
//! - Deliveries are pushed into outboxes while the lock is held, so every consumer sees the
//!   queue's order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use amq_protocol::types::FieldTable;

use crate::amqp_error;
use crate::consumer::Consumer;
pub use crate::consumer::ConsumerId;
use crate::error::AmqpResult;
use crate::message::Message;
use crate::outbox::{Delivery, Outbox};
use crate::prefetch::ChannelPrefetch;

/// A message in a queue, or on its way to a consumer.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    /// Position in the queue; requeued messages go back to where this says.
    pub seq: u64,
    pub message: Arc<Message>,
    /// The message was delivered before (and requeued).
    pub redelivered: bool,
}

/// What a queue was declared with.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    pub auto_delete: bool,
    /// The connection an exclusive queue belongs to.
    pub exclusive_owner: Option<u64>,
    pub arguments: FieldTable,
}

/// A message queue.
#[derive(Debug)]
pub struct Queue {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    pub auto_delete: bool,
    /// Set for exclusive queues: only this connection may use the queue, and the queue is
    /// deleted when the connection closes.
    pub exclusive_owner: Option<u64>,
    /// Arguments as declared, for redeclare equivalence.
    pub arguments: FieldTable,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Messages waiting for a consumer, oldest first, sorted by `seq`.
    ready: VecDeque<QueueEntry>,
    /// Sequence number of the next message enqueued.
    next_seq: u64,
    /// Consumers in dispatch order: by priority, highest first, and within a priority in
    /// round-robin order (the next to get a message first).
    consumers: Vec<Consumer>,
    /// Messages delivered and awaiting an ack.
    unacked: usize,
    /// The queue was deleted: it takes no more messages or consumers.
    deleted: bool,
    /// The queue has had a consumer (auto-delete only applies after the first one).
    had_consumers: bool,
    /// Reused per dispatch: deliveries grouped by destination connection.
    batches: Vec<Batch>,
}

#[derive(Debug)]
struct Batch {
    outbox: Arc<Outbox>,
    deliveries: Vec<Delivery>,
    bytes: usize,
}

/// What removing a consumer left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerRemoved {
    /// The consumer was found and removed.
    pub removed: bool,
    /// The queue is auto-delete and that was its last consumer: the caller deletes it.
    pub delete_queue: bool,
}

/// A settled delivery: which consumer had it (None for basic.get).
pub type Settled = Option<ConsumerId>;

/// Which blocked consumers got credit back from outside the queue and should rejoin the
/// round-robin.
#[derive(Debug, Clone, Copy)]
pub enum Unblock<'a> {
    Nobody,
    /// Every consumer of this channel (its channel-wide prefetch or flow allowed more).
    Channel(&'a Arc<ChannelPrefetch>),
    /// Every consumer on this connection (its outbox has room again).
    Connection(&'a Arc<Outbox>),
}

impl Queue {
    pub fn new(config: QueueConfig) -> Self {
        Queue {
            name: config.name,
            vhost: config.vhost,
            durable: config.durable,
            auto_delete: config.auto_delete,
            exclusive_owner: config.exclusive_owner,
            arguments: config.arguments,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // State stays consistent across a panic in these short critical sections; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enqueues a message and dispatches. Returns false if the queue was deleted meanwhile.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) -> bool {
        let mut state = self.lock();
        if state.deleted {
            return false;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.ready.push_back(QueueEntry {
            seq,
            message,
            redelivered: false,
        });
        state.dispatch(self);
        true
    }

    /// Takes the message at the head for basic.get. Returns it and the number of messages
    /// left ready.
    pub fn get(&self, no_ack: bool) -> Option<(QueueEntry, u32)> {
        let mut state = self.lock();
        let entry = state.ready.pop_front()?;
        if !no_ack {
            state.unacked += 1;
        }
        Some((entry, state.ready.len() as u32))
    }

    /// Adds a consumer and dispatches to it. Enforces exclusive consumers the way RabbitMQ
    /// does: an exclusive consumer needs an otherwise unused queue, and nobody joins it.
    pub fn add_consumer(self: &Arc<Self>, consumer: Consumer) -> AmqpResult<()> {
        let mut state = self.lock();
        if state.deleted {
            return Err(amqp_error!(
                NotFound,
                "no queue '{}' in vhost '{}'",
                self.name,
                self.vhost
            ));
        }
        let live = state.consumers.iter().filter(|c| !c.dead);
        let mut live = live.peekable();
        if live.peek().is_some() && (consumer.exclusive || live.any(|c| c.exclusive)) {
            return Err(amqp_error!(
                AccessRefused,
                "queue '{}' in vhost '{}' in exclusive use",
                self.name,
                self.vhost
            ));
        }
        state.insert_consumer(consumer);
        state.had_consumers = true;
        state.dispatch(self);
        Ok(())
    }

    /// Removes a consumer. Its unacknowledged deliveries stay with its channel.
    pub fn remove_consumer(&self, id: ConsumerId) -> ConsumerRemoved {
        let mut state = self.lock();
        let Some(index) = state.consumers.iter().position(|c| c.id == id) else {
            return ConsumerRemoved {
                removed: false,
                delete_queue: false,
            };
        };
        state.consumers.remove(index);
        ConsumerRemoved {
            removed: true,
            delete_queue: self.auto_delete
                && state.had_consumers
                && state.consumers.is_empty()
                && !state.deleted,
        }
    }

    /// Acknowledges deliveries: they leave the queue for good.
    pub fn ack(self: &Arc<Self>, settled: impl IntoIterator<Item = Settled>, unblock: Unblock) {
        let mut state = self.lock();
        let mut released = Vec::new();
        for consumer in settled {
            state.unacked = state.unacked.saturating_sub(1);
            state.release_consumer(consumer, &mut released);
        }
        state.unblock(&released, unblock);
        state.dispatch(self);
    }

    /// Puts delivered messages back in their original positions, marked redelivered.
    pub fn requeue(
        self: &Arc<Self>,
        entries: impl IntoIterator<Item = (Settled, QueueEntry)>,
        unblock: Unblock,
    ) {
        let mut state = self.lock();
        let mut released = Vec::new();
        let mut back = Vec::new();
        for (consumer, mut entry) in entries {
            state.unacked = state.unacked.saturating_sub(1);
            state.release_consumer(consumer, &mut released);
            entry.redelivered = true;
            back.push(entry);
        }
        if state.deleted {
            return;
        }
        state.insert_in_order(back);
        state.unblock(&released, unblock);
        state.dispatch(self);
    }

    /// Puts back deliveries that never reached their consumer (its channel closed while they
    /// were in the outbox). They keep their redelivered flag.
    pub fn return_undelivered(self: &Arc<Self>, deliveries: Vec<Delivery>) {
        let mut state = self.lock();
        let mut released = Vec::new();
        let mut back = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            if !d.no_ack {
                state.unacked = state.unacked.saturating_sub(1);
                state.release_consumer(Some(d.consumer_id), &mut released);
            }
            back.push(d.entry);
        }
        if state.deleted {
            return;
        }
        state.insert_in_order(back);
        state.unblock(&released, Unblock::Nobody);
        state.dispatch(self);
    }

    /// Tries to dispatch again after consumers got credit back outside this queue.
    pub fn kick(self: &Arc<Self>, unblock: Unblock) {
        let mut state = self.lock();
        state.unblock(&[], unblock);
        state.dispatch(self);
    }

    /// Drops every ready message; returns how many there were.
    pub fn purge(&self) -> u32 {
        let mut state = self.lock();
        let n = state.ready.len();
        state.ready.clear();
        n as u32
    }

    /// Ready messages and consumers, as queue.declare-ok reports them.
    pub fn counts(&self) -> (u32, u32) {
        let state = self.lock();
        (
            state.ready.len() as u32,
            state.consumers.iter().filter(|c| !c.dead).count() as u32,
        )
    }

    pub fn message_count(&self) -> u32 {
        self.lock().ready.len() as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.counts().1
    }

    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    /// Marks the queue deleted and hands back its consumers (to be told) and the number of
    /// ready messages it held.
    pub fn mark_deleted(&self) -> (u32, Vec<Consumer>) {
        let mut state = self.lock();
        state.deleted = true;
        let n = state.ready.len() as u32;
        state.ready.clear();
        (n, std::mem::take(&mut state.consumers))
    }
}

impl State {
    /// Gives a consumer back the credit of one settled delivery.
    fn release_consumer(&mut self, consumer: Settled, released: &mut Vec<ConsumerId>) {
        if let Some(id) = consumer
            && let Some(c) = self.consumers.iter_mut().find(|c| c.id == id)
        {
            c.release();
            if c.blocked && !released.contains(&id) {
                released.push(id);
            }
        }
    }

    /// Where a consumer of `priority` joins: behind every consumer of the same or a higher
    /// priority.
    fn tail_of(&self, priority: i64) -> usize {
        self.consumers.partition_point(|c| c.priority >= priority)
    }

    fn insert_consumer(&mut self, consumer: Consumer) {
        let at = self.tail_of(consumer.priority);
        self.consumers.insert(at, consumer);
    }

    /// Moves blocked consumers that got credit back to the tail of their priority, keeping
    /// their relative order, as RabbitMQ re-appends unblocked consumers.
    fn unblock(&mut self, released: &[ConsumerId], unblock: Unblock) {
        let wakes = |c: &Consumer| {
            c.blocked
                && (released.contains(&c.id)
                    || match unblock {
                        Unblock::Nobody => false,
                        Unblock::Channel(p) => Arc::ptr_eq(p, &c.channel_prefetch),
                        Unblock::Connection(o) => Arc::ptr_eq(o, &c.outbox),
                    })
        };
        if !self.consumers.iter().any(wakes) {
            return;
        }
        let (mut woken, rest): (Vec<Consumer>, Vec<Consumer>) = std::mem::take(&mut self.consumers)
            .into_iter()
            .partition(wakes);
        self.consumers = rest;
        for mut c in woken.drain(..) {
            c.blocked = false;
            self.insert_consumer(c);
        }
    }

    /// Inserts entries at the positions their sequence numbers give them.
    fn insert_in_order(&mut self, mut entries: Vec<QueueEntry>) {
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
        for entry in entries {
            // Requeued messages almost always belong before everything still ready.
            match self.ready.front() {
                None => self.ready.push_front(entry),
                Some(front) if entry.seq < front.seq => self.ready.push_front(entry),
                Some(_) => {
                    let at = self.ready.partition_point(|e| e.seq < entry.seq);
                    self.ready.insert(at, entry);
                }
            }
        }
    }

    /// Hands ready messages to consumers with credit and pushes them into the consumers'
    /// outboxes. The first consumer in dispatch order that can take the head message gets
    /// it and moves to the tail of its priority; one that cannot is marked blocked and
    /// skipped until it gets credit back (see [`State::unblock`]).
    fn dispatch(&mut self, queue: &Arc<Queue>) {
        if self.deleted {
            return;
        }
        while let Some(head) = self.ready.front() {
            let size = head.message.wire_size();
            let mut chosen = None;
            for (i, consumer) in self.consumers.iter_mut().enumerate() {
                if consumer.blocked {
                    continue;
                }
                let batched = self
                    .batches
                    .iter()
                    .find(|b| Arc::ptr_eq(&b.outbox, &consumer.outbox))
                    .map_or(0, |b| b.bytes);
                if consumer.try_reserve(size, batched) {
                    chosen = Some(i);
                    break;
                }
                consumer.blocked = true;
            }
            let Some(i) = chosen else {
                break;
            };
            let Some(entry) = self.ready.pop_front() else {
                break;
            };
            let consumer = self.consumers.remove(i);
            if !consumer.no_ack {
                self.unacked += 1;
            }
            let delivery = Delivery {
                channel: consumer.channel,
                consumer_id: consumer.id,
                consumer_tag: consumer.tag.clone(),
                queue: queue.clone(),
                entry,
                no_ack: consumer.no_ack,
            };
            match self
                .batches
                .iter_mut()
                .find(|b| Arc::ptr_eq(&b.outbox, &consumer.outbox))
            {
                Some(batch) => {
                    batch.bytes += size;
                    batch.deliveries.push(delivery);
                }
                None => self.batches.push(Batch {
                    outbox: consumer.outbox.clone(),
                    deliveries: vec![delivery],
                    bytes: size,
                }),
            }
            self.insert_consumer(consumer);
        }
        if !self.batches.is_empty() {
            self.flush_batches();
        }
    }

    fn flush_batches(&mut self) {
        let mut batches = std::mem::take(&mut self.batches);
        for mut batch in batches.drain(..) {
            if let Err(undelivered) = batch
                .outbox
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
                    if !d.no_ack {
                        self.unacked = self.unacked.saturating_sub(1);
                    }
                    back.push(d.entry);
                }
                self.insert_in_order(back);
            }
        }
        // Keep the allocation for the next dispatch.
        self.batches = batches;
    }
}
