//! A queue: messages waiting in order, the consumers waiting for them, and the dispatch that
//! brings the two together.
//!
//! There is no queue task. Whoever changes a queue (a publisher's connection enqueuing, a
//! consumer's connection acking or consuming, the timer thread expiring messages) takes the
//! queue's lock, makes the change and dispatches what can be dispatched right there, pushing
//! deliveries into consumers' outboxes. This keeps a message's path free of task hops:
//! publish, route, enqueue and hand over to the consumer's connection happen in one call on
//! the publisher's task.
//!
//! A durable queue writes each persistent message to its log ([`crate::store::QueueLog`])
//! before the publisher's confirm; any FIFO queue moves the newest part of its backlog into a
//! log (its *tail*) when the broker holds more message bytes in memory than its budget, and
//! reads it back in order as the head drains.
//!
//! What a queue does beyond FIFO (TTLs, dead-lettering, length limits, priorities, single
//! active consumer, delivery limits) is set by [`settings::QueueSettings`]. Messages that
//! leave for the dead-letter exchange are collected under the lock and published by
//! [`crate::dead_letter`] after it is released, so no queue lock is ever held while another
//! queue's is taken.
//!
//! Invariants, all under the lock:
//! - Each priority level of `ready` is sorted by `seq`; a requeued message goes back to the
//!   place its `seq` gives it.
//! - Every message in the tail comes after every message in `ready` (higher `seq`), and the
//!   tail is read back in `seq` order. Only FIFO queues page.
//! - A message is in exactly one place: `ready`, the tail, a channel's unacked list (the
//!   queue only counts those), or an outbox on its way to a channel.
//! - A persistent message of a durable queue has a log record until it leaves the queue for
//!   good (ack, expiry, drop, dead-lettering), when an Ack record is logged.
//! - Deliveries are pushed into outboxes while the lock is held, so every consumer sees the
//!   queue's order.

pub mod ready;
pub mod settings;

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::amqp_error;
use crate::consumer::Consumer;
pub use crate::consumer::ConsumerId;
use crate::dead_letter::{self, DeadLetter, Reason};
use crate::error::AmqpResult;
use crate::message::Message;
use crate::outbox::{Delivery, Outbox};
use crate::policy::Policy;
use crate::prefetch::ChannelPrefetch;
use crate::protocol::properties;
use crate::store::record::{FLAG_PERSISTED, FLAG_REDELIVERED};
use crate::store::{QueueLog, Recovered, Store, TailReader};
use crate::timer::{Timed, Timers, now_ms};
use crate::vhost::VirtualHost;
use ready::Ready;
use settings::{Overflow, QueueSettings, QueueType};

/// Paging thresholds, in bytes of messages a queue holds in memory. Over the broker's budget,
/// a queue holding more than `PAGE_OUT_ABOVE` moves all but its oldest `PAGE_KEEP` to disk;
/// it reads `PAGE_IN_BATCH` back whenever it is down to `PAGE_IN_BELOW`. The gap between the
/// two keeps a queue from writing out what it would read straight back.
const PAGE_OUT_ABOVE: usize = 1024 * 1024;
const PAGE_KEEP: usize = 512 * 1024;
const PAGE_IN_BELOW: usize = 256 * 1024;
const PAGE_IN_BATCH: usize = 256 * 1024;

/// A message in a queue, or on its way to a consumer.
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
    /// Bytes this entry holds in memory, for the store's budget.
    fn size(&self) -> usize {
        self.message.memory_size() + std::mem::size_of::<QueueEntry>()
    }
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
    /// A durable queue's log directory number (0 for transient queues).
    pub id: u64,
}

/// The broker services a queue works with.
#[derive(Debug, Clone)]
pub struct QueueContext {
    pub store: Arc<Store>,
    pub timers: Arc<Timers>,
    /// The vhost the queue lives in: dead letters are routed there, and an expired queue
    /// deletes itself from it.
    pub vhost: Weak<VirtualHost>,
}

/// What became of a message handed to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The queue was deleted meanwhile.
    Deleted,
    /// In the queue (or delivered, or dropped by its length limit or TTL).
    Accepted,
    /// In the queue and in its log; durable once the store has synced this epoch.
    Persisted(u64),
    /// The queue is full and refuses new messages (`x-overflow` reject-publish): the
    /// publisher's confirm is a nack.
    Rejected,
    /// Writing it to the log failed: the publisher's confirm is a nack.
    Failed,
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
    /// A durable queue's log directory number (0 for transient queues).
    pub id: u64,
    store: Arc<Store>,
    timers: Arc<Timers>,
    vhost_ref: Weak<VirtualHost>,
    /// This queue, for the timer thread.
    me: Weak<Queue>,
    state: Mutex<State>,
}

/// Messages of a queue that live only in its log, after everything in `ready`.
#[derive(Debug)]
struct Tail {
    reader: TailReader,
    /// How many messages the tail holds.
    count: u64,
}

#[derive(Debug, Default)]
struct State {
    settings: QueueSettings,
    /// Messages waiting for a consumer, by priority level, each level sorted by `seq`.
    ready: Ready,
    /// Sequence number of the next message enqueued.
    next_seq: u64,
    /// Consumers in dispatch order: by priority, highest first, and within a priority in
    /// round-robin order (the next to get a message first).
    consumers: Vec<Consumer>,
    /// Single active consumer: the one consumer that gets messages.
    active: Option<ConsumerId>,
    /// Messages delivered and awaiting an ack.
    unacked: usize,
    /// The queue was deleted: it takes no more messages or consumers.
    deleted: bool,
    /// The queue has had a consumer (auto-delete only applies after the first one).
    had_consumers: bool,
    /// Reused per dispatch: deliveries grouped by destination connection.
    batches: Vec<Batch>,
    /// A durable queue's log, or a transient queue's paging log once it needed one.
    log: Option<Arc<QueueLog>>,
    /// Messages after `ready` that live only in the log.
    tail: Option<Tail>,
    /// Bytes of `ready` held in memory, counted in the store's budget.
    ready_bytes: usize,
    /// Body bytes of every ready message, in memory or in the tail (`x-max-length-bytes`).
    body_bytes: u64,
    /// When the queue was last used (`x-expires`): declared, consumed from, polled.
    last_used_ms: u64,
    /// The deadline the timer thread will next wake this queue at, if one is set.
    timer_at: Option<u64>,
    /// Messages leaving for the dead-letter exchange, published once the lock is released.
    dead: Vec<DeadLetter>,
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

/// A settled delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// The consumer it went to; None for basic.get.
    pub consumer: Option<ConsumerId>,
    pub seq: u64,
    /// Its durable record must be acknowledged in the log.
    pub persisted: bool,
}

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

/// Dead letters taken out from under the lock, with where they go.
type Letters = Option<(dead_letter::Destination, Vec<DeadLetter>)>;

impl Queue {
    /// A new queue; durable queues bring their (empty) log.
    pub fn new(
        config: QueueConfig,
        context: QueueContext,
        log: Option<Arc<QueueLog>>,
        policy: Option<&Policy>,
    ) -> Arc<Self> {
        let settings = QueueSettings::new(&config.arguments, policy);
        Arc::new_cyclic(|me| Queue {
            name: config.name,
            vhost: config.vhost,
            durable: config.durable,
            auto_delete: config.auto_delete,
            exclusive_owner: config.exclusive_owner,
            arguments: config.arguments,
            id: config.id,
            store: context.store,
            timers: context.timers,
            vhost_ref: context.vhost,
            me: me.clone(),
            state: Mutex::new(State {
                ready: Ready::new(settings.max_priority),
                settings,
                log,
                last_used_ms: now_ms(),
                ..State::default()
            }),
        })
    }

    /// A durable queue brought back from its log after a restart. Its messages stay in the
    /// log and are read back in order as consumers need them.
    pub fn recovered(
        config: QueueConfig,
        context: QueueContext,
        log: Arc<QueueLog>,
        recovered: Recovered,
        policy: Option<&Policy>,
    ) -> Arc<Self> {
        let queue = Queue::new(config, context, Some(log), policy);
        {
            let mut state = queue.lock();
            state.next_seq = recovered.next_seq;
            state.body_bytes = recovered.bytes;
            if recovered.count > 0 {
                state.tail = Some(Tail {
                    reader: recovered.reader,
                    count: recovered.count,
                });
            }
            // Messages with a TTL and the queue's own expiry get their timers. A priority
            // queue reads everything back, so that priorities order all of it.
            if state.ready.prioritised() {
                while state.page_in_always(&queue) {}
            } else {
                state.page_in(&queue);
            }
            state.arm_timer(&queue);
        }
        queue
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // State stays consistent across a panic in these short critical sections; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes dead letters taken out of the state, with no lock held.
    fn dead_letter(&self, letters: Letters) {
        if let Some((destination, letters)) = letters
            && let Some(vhost) = self.vhost_ref.upgrade()
        {
            dead_letter::publish(&vhost, &self.name, &destination, letters);
        }
    }

    /// Runs `f` under the lock, then publishes whatever it dead-lettered.
    fn with_state<R>(self: &Arc<Self>, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, letters) = {
            let mut state = self.lock();
            let result = f(&mut state);
            state.arm_timer(self);
            (result, state.take_dead())
        };
        self.dead_letter(letters);
        result
    }

    /// Re-reads settings after the policies changed.
    pub fn apply_policy(self: &Arc<Self>, policy: Option<&Policy>) {
        self.with_state(|state| {
            let settings = QueueSettings::new(&self.arguments, policy);
            // Priorities come from arguments only, so `ready` keeps its shape.
            state.settings = settings;
            state.enforce_length_limit(self);
            state.dispatch(self);
        });
    }

    /// The settings in force.
    pub fn settings(&self) -> QueueSettings {
        self.lock().settings.clone()
    }

    /// Enqueues a message and dispatches.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) -> Enqueued {
        self.with_state(|state| state.publish(self, message))
    }

    /// Takes the message at the head for basic.get. Returns it and the number of messages
    /// left ready.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(QueueEntry, u32)> {
        self.with_state(|state| {
            state.last_used_ms = now_ms();
            state.expire_heads(self);
            state.page_in(self);
            let mut entry = state.pop_ready(&self.store)?;
            // Expired messages now at the head go right after a fetch, as in RabbitMQ.
            state.expire_heads(self);
            if !no_ack {
                state.unacked += 1;
            }
            state.mark_delivered(&entry);
            if no_ack && entry.persisted {
                state.log_ack(entry.seq);
            }
            if state.settings.queue_type == QueueType::Quorum {
                // Quorum queues always tell basic.get how often the message came back.
                entry.message = with_delivery_count(&entry.message, entry.delivery_count);
            }
            state.page_in(self);
            let left = state.message_count();
            Some((entry, left))
        })
    }

    /// Adds a consumer and dispatches to it. Enforces exclusive consumers the way RabbitMQ
    /// does: an exclusive consumer needs an otherwise unused queue, and nobody joins it; a
    /// single-active-consumer queue takes no exclusive consumer at all.
    pub fn add_consumer(self: &Arc<Self>, consumer: Consumer) -> AmqpResult<()> {
        self.with_state(|state| {
            if state.deleted {
                return Err(amqp_error!(
                    NotFound,
                    "no queue '{}' in vhost '{}'",
                    self.name,
                    self.vhost
                ));
            }
            let in_use = || {
                amqp_error!(
                    AccessRefused,
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name,
                    self.vhost
                )
            };
            if state.settings.single_active_consumer {
                if consumer.exclusive {
                    return Err(in_use());
                }
            } else {
                let mut live = state.consumers.iter().filter(|c| !c.dead).peekable();
                if live.peek().is_some() && (consumer.exclusive || live.any(|c| c.exclusive)) {
                    return Err(in_use());
                }
            }
            if state.settings.single_active_consumer && state.active.is_none() {
                state.active = Some(consumer.id);
            }
            state.insert_consumer(consumer);
            state.had_consumers = true;
            state.dispatch(self);
            Ok(())
        })
    }

    /// Removes a consumer. Its unacknowledged deliveries stay with its channel.
    pub fn remove_consumer(self: &Arc<Self>, id: ConsumerId) -> ConsumerRemoved {
        self.with_state(|state| {
            let Some(index) = state.consumers.iter().position(|c| c.id == id) else {
                return ConsumerRemoved {
                    removed: false,
                    delete_queue: false,
                };
            };
            state.consumers.remove(index);
            state.last_used_ms = now_ms();
            if state.active == Some(id) {
                state.choose_active();
                state.dispatch(self);
            }
            ConsumerRemoved {
                removed: true,
                delete_queue: self.auto_delete
                    && state.had_consumers
                    && state.consumers.is_empty()
                    && !state.deleted,
            }
        })
    }

    /// Acknowledges deliveries: they leave the queue for good.
    pub fn ack(self: &Arc<Self>, settled: impl IntoIterator<Item = Settled>, unblock: Unblock) {
        self.with_state(|state| {
            let mut released = Vec::new();
            let mut logged = false;
            for s in settled {
                state.unacked = state.unacked.saturating_sub(1);
                state.release_consumer(s.consumer, &mut released);
                if s.persisted {
                    state.log_ack(s.seq);
                    logged = true;
                }
            }
            if logged {
                state.collect_garbage();
            }
            state.unblock(&released, unblock);
            state.dispatch(self);
        });
    }

    /// Rejects deliveries without requeueing them: they leave the queue, for its dead-letter
    /// exchange if it has one.
    pub fn reject(
        self: &Arc<Self>,
        entries: impl IntoIterator<Item = (Settled, QueueEntry)>,
        unblock: Unblock,
    ) {
        self.with_state(|state| {
            let mut released = Vec::new();
            for (s, entry) in entries {
                state.unacked = state.unacked.saturating_sub(1);
                state.release_consumer(s.consumer, &mut released);
                state.discard(entry, Reason::Rejected);
            }
            state.collect_garbage();
            state.unblock(&released, unblock);
            state.dispatch(self);
        });
    }

    /// Puts delivered messages back in their original positions, marked redelivered.
    pub fn requeue(
        self: &Arc<Self>,
        entries: impl IntoIterator<Item = (Settled, QueueEntry)>,
        unblock: Unblock,
    ) {
        self.with_state(|state| {
            let mut released = Vec::new();
            let mut back = Vec::new();
            for (settled, mut entry) in entries {
                state.unacked = state.unacked.saturating_sub(1);
                state.release_consumer(settled.consumer, &mut released);
                entry.redelivered = true;
                back.push(entry);
            }
            if state.deleted {
                return;
            }
            state.return_entries(back, &self.store);
            state.enforce_length_limit(self);
            state.unblock(&released, unblock);
            state.dispatch(self);
        });
    }

    /// Puts back deliveries that never reached their consumer (its channel closed while they
    /// were in the outbox). They keep their redelivered flag.
    pub fn return_undelivered(self: &Arc<Self>, deliveries: Vec<Delivery>) {
        self.with_state(|state| {
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
            state.return_entries(back, &self.store);
            state.unblock(&released, Unblock::Nobody);
            state.dispatch(self);
        });
    }

    /// Tries to dispatch again after consumers got credit back outside this queue.
    pub fn kick(self: &Arc<Self>, unblock: Unblock) {
        self.with_state(|state| {
            state.unblock(&[], unblock);
            state.dispatch(self);
        });
    }

    /// Drops every ready message, in memory or paged out; returns how many there were.
    pub fn purge(self: &Arc<Self>) -> u32 {
        self.with_state(|state| {
            let n = state.message_count();
            while let Some(e) = state.pop_ready(&self.store) {
                if e.persisted {
                    state.log_ack(e.seq);
                }
            }
            if let Some(mut tail) = state.tail.take()
                && let Some(log) = state.log.clone()
            {
                // Durable messages in the tail need their acks logged: read them through.
                loop {
                    match log.read_back(&mut tail.reader, 4 * PAGE_IN_BATCH) {
                        Ok(batch) if batch.is_empty() => break,
                        Ok(batch) => {
                            for m in batch.into_iter().filter(|m| m.persisted) {
                                state.log_ack(m.seq);
                            }
                        }
                        Err(e) => {
                            tracing::error!(queue = %self.name, error = %e, "cannot read the queue log");
                            break;
                        }
                    }
                }
            }
            state.body_bytes = 0;
            state.collect_garbage();
            n
        })
    }

    /// Ready messages and consumers, as queue.declare-ok reports them.
    pub fn counts(&self) -> (u32, u32) {
        let state = self.lock();
        (
            state.message_count(),
            state.consumers.iter().filter(|c| !c.dead).count() as u32,
        )
    }

    /// A declare (active or passive) counts as use for `x-expires`.
    pub fn touch(self: &Arc<Self>) {
        self.with_state(|state| state.last_used_ms = now_ms());
    }

    pub fn message_count(&self) -> u32 {
        self.lock().message_count()
    }

    pub fn consumer_count(&self) -> u32 {
        self.counts().1
    }

    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    /// Marks the queue deleted, drops its messages and its log, and hands back its
    /// consumers (to be told) and the number of ready messages it held.
    pub fn mark_deleted(&self) -> (u32, Vec<Consumer>) {
        let mut state = self.lock();
        state.deleted = true;
        let n = state.message_count();
        while state.pop_ready(&self.store).is_some() {}
        state.tail = None;
        state.body_bytes = 0;
        if let Some(log) = state.log.take() {
            log.destroy();
        }
        state.active = None;
        (n, std::mem::take(&mut state.consumers))
    }
}

impl Timed for Queue {
    /// A deadline passed: expire messages at the head, and delete the queue if it has been
    /// unused for its `x-expires`.
    fn on_timer(&self, now: u64) {
        let Some(queue) = self.me.upgrade() else {
            return;
        };
        let expired = queue.with_state(|state| {
            state.timer_at = None;
            if state.deleted {
                return false;
            }
            state.expire_heads(&queue);
            state.dispatch(&queue);
            state.settings.expires_ms.is_some_and(|ttl| {
                state.consumers.is_empty() && now >= state.last_used_ms.saturating_add(ttl)
            })
        });
        if expired && let Some(vhost) = self.vhost_ref.upgrade() {
            tracing::debug!(queue = %self.name, "deleting an unused queue (x-expires)");
            vhost.remove_queue(&queue);
        }
    }
}

/// The message with an `x-delivery-count` header, as quorum queues deliver it.
fn with_delivery_count(message: &Arc<Message>, count: u32) -> Arc<Message> {
    let Some(props) = properties::decode_all(&message.properties) else {
        return message.clone();
    };
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        "x-delivery-count".into(),
        AMQPValue::LongLongInt(i64::from(count)),
    );
    let props = props.with_headers(headers);
    let Some(raw) = properties::encode_all(&props) else {
        return message.clone();
    };
    let mut m = (**message).clone();
    m.properties = raw;
    Arc::new(m)
}

impl State {
    fn message_count(&self) -> u32 {
        (self.ready.len() as u64 + self.tail.as_ref().map_or(0, |t| t.count)) as u32
    }

    /// Dead letters to publish once the lock is released, if the queue has a dead-letter
    /// exchange.
    fn take_dead(&mut self) -> Letters {
        if self.dead.is_empty() {
            return None;
        }
        let letters = std::mem::take(&mut self.dead);
        let exchange = self.settings.dead_letter_exchange.clone()?;
        Some((
            dead_letter::Destination {
                exchange,
                routing_key: self.settings.dead_letter_routing_key.clone(),
            },
            letters,
        ))
    }

    /// A message leaves the queue for good without being acknowledged: expired, dropped by
    /// the length limit, rejected or returned too often. It goes to the dead-letter exchange
    /// if there is one.
    fn discard(&mut self, entry: QueueEntry, reason: Reason) {
        if entry.persisted {
            self.log_ack(entry.seq);
        }
        if self.settings.dead_letter_exchange.is_some() {
            self.dead.push(DeadLetter {
                message: entry.message,
                reason,
            });
        }
    }

    fn publish(&mut self, queue: &Arc<Queue>, message: Arc<Message>) -> Enqueued {
        if self.deleted {
            return Enqueued::Deleted;
        }
        let size = message.body.len() as u64;
        if self.settings.overflow != Overflow::DropHead && self.would_overflow(size) {
            if self.settings.overflow == Overflow::RejectPublishDlx
                && self.settings.dead_letter_exchange.is_some()
            {
                self.dead.push(DeadLetter {
                    message,
                    reason: Reason::Maxlen,
                });
            }
            return Enqueued::Rejected;
        }
        let ttl = match (self.settings.message_ttl_ms, message.ttl_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // TTL 0 is "now or never": such a message gets no expiry while it is offered to the
        // consumers below, and is dropped if none took it. (The clock is only read for
        // messages that can expire.)
        let expires_at = ttl.filter(|&t| t > 0).map(|t| now_ms().saturating_add(t));
        if ttl == Some(0) && self.tail.is_some() {
            // Behind a paged-out backlog no consumer can take it now.
            if self.settings.dead_letter_exchange.is_some() {
                self.dead.push(DeadLetter {
                    message,
                    reason: Reason::Expired,
                });
            }
            return Enqueued::Accepted;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut outcome = Enqueued::Accepted;
        let mut persisted = false;
        if queue.durable
            && message.persistent
            && let Some(log) = self.log.clone()
        {
            match log.append_message(seq, &message, true, 0, expires_at) {
                Ok(epoch) => {
                    persisted = true;
                    outcome = Enqueued::Persisted(epoch);
                }
                Err(e) => {
                    tracing::error!(queue = %queue.name, error = %e, "cannot write a persistent message");
                    return Enqueued::Failed;
                }
            }
        }
        self.body_bytes += size;
        if self.tail.is_some() {
            // Paging: the message goes after the tail, in the log only.
            if !persisted {
                let written = self
                    .log
                    .as_ref()
                    .map(|log| log.append_message(seq, &message, false, 0, expires_at));
                if !matches!(written, Some(Ok(_))) {
                    tracing::error!(queue = %queue.name, "cannot page a message out");
                    self.body_bytes -= size;
                    return Enqueued::Failed;
                }
            }
            if let Some(tail) = self.tail.as_mut() {
                tail.count += 1;
            }
            self.dispatch(queue);
            self.enforce_length_limit(queue);
            return outcome;
        }
        self.push_ready(
            QueueEntry {
                seq,
                message,
                redelivered: false,
                persisted,
                expires_at,
                delivery_count: 0,
            },
            &queue.store,
        );
        // An idle consumer takes the message before the limit is looked at, as in RabbitMQ.
        self.dispatch(queue);
        self.enforce_length_limit(queue);
        if ttl == Some(0) {
            // TTL 0 means "now or never": what no consumer took at once expires.
            if let Some(entry) = self.ready.take_seq(seq) {
                self.forget_ready(&entry, &queue.store);
                self.discard(entry, Reason::Expired);
            }
        }
        if !self.ready.prioritised()
            && queue.store.shared.over_budget()
            && self.ready_bytes > PAGE_OUT_ABOVE
        {
            self.page_out(queue);
        }
        outcome
    }

    /// Whether one more message of `size` body bytes would exceed a length limit.
    fn would_overflow(&self, size: u64) -> bool {
        let count = u64::from(self.message_count());
        self.settings.max_length.is_some_and(|max| count + 1 > max)
            || self
                .settings
                .max_length_bytes
                .is_some_and(|max| self.body_bytes + size > max)
    }

    /// Drop-head: while the queue is over a length limit, drops (or dead-letters) the oldest
    /// messages.
    fn enforce_length_limit(&mut self, queue: &Arc<Queue>) {
        if !self.settings.limited() || self.settings.overflow != Overflow::DropHead {
            return;
        }
        loop {
            let count = u64::from(self.message_count());
            let over = self.settings.max_length.is_some_and(|max| count > max)
                || self
                    .settings
                    .max_length_bytes
                    .is_some_and(|max| self.body_bytes > max);
            if !over {
                break;
            }
            if self.ready.is_empty() && !self.page_in_always(queue) {
                break;
            }
            let Some(entry) = self.pop_ready(&queue.store) else {
                break;
            };
            self.discard(entry, Reason::Maxlen);
        }
        self.collect_garbage();
    }

    /// Expires messages at the heads of the priority levels.
    fn expire_heads(&mut self, queue: &Arc<Queue>) {
        let Some(first) = self.ready.next_expiry() else {
            return;
        };
        let now = now_ms();
        if first > now {
            return;
        }
        let mut expired = false;
        while let Some(entry) = self.ready.pop_expired(now) {
            self.forget_ready(&entry, &queue.store);
            self.discard(entry, Reason::Expired);
            expired = true;
            if self.ready.is_empty() {
                self.page_in(queue);
            }
        }
        if expired {
            self.collect_garbage();
        }
    }

    /// Schedules the timer thread for the next head expiry, or for `x-expires` while the
    /// queue has no consumers.
    fn arm_timer(&mut self, queue: &Queue) {
        if self.deleted {
            return;
        }
        let queue_expiry = self
            .settings
            .expires_ms
            .filter(|_| self.consumers.is_empty())
            .map(|ttl| self.last_used_ms.saturating_add(ttl));
        let next = match (self.ready.next_expiry(), queue_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(next) = next else {
            return;
        };
        if self.timer_at.is_some_and(|at| at <= next) {
            return;
        }
        self.timer_at = Some(next);
        let target: Weak<dyn Timed> = queue.me.clone();
        queue.timers.schedule(next, target);
    }

    fn push_ready(&mut self, entry: QueueEntry, store: &Store) {
        let size = entry.size();
        self.ready_bytes += size;
        store.shared.add_memory(size as isize);
        self.ready.push_back(entry);
    }

    /// Takes the head message out of the queue.
    fn pop_ready(&mut self, store: &Store) -> Option<QueueEntry> {
        let entry = self.ready.pop_front()?;
        self.forget_ready(&entry, store);
        Some(entry)
    }

    /// Accounts for a message that left `ready` (and the queue).
    fn forget_ready(&mut self, entry: &QueueEntry, store: &Store) {
        let size = entry.size();
        self.ready_bytes = self.ready_bytes.saturating_sub(size);
        self.body_bytes = self
            .body_bytes
            .saturating_sub(entry.message.body.len() as u64);
        store.shared.add_memory(-(size as isize));
    }

    fn log_ack(&self, seq: u64) {
        if let Some(log) = &self.log
            && let Err(e) = log.ack(seq)
        {
            tracing::error!(error = %e, "cannot log an acknowledgement");
        }
    }

    /// Logs the first delivery of a durable message, so that it comes back redelivered
    /// after a restart.
    fn mark_delivered(&self, entry: &QueueEntry) {
        if entry.persisted
            && !entry.redelivered
            && let Some(log) = &self.log
            && let Err(e) = log.delivered(entry.seq)
        {
            tracing::error!(error = %e, "cannot log a delivery");
        }
    }

    /// Deletes log segments nothing needs any more.
    fn collect_garbage(&self) {
        if let Some(log) = &self.log {
            log.collect_garbage(self.tail.as_ref().map(|t| t.reader.pos));
        }
    }

    /// Moves the newest part of `ready` into the log, keeping a window in memory.
    fn page_out(&mut self, queue: &Arc<Queue>) {
        if self.tail.is_some() || self.deleted || self.ready.prioritised() {
            return;
        }
        let mut keep = 0usize;
        let mut kept = 0usize;
        for e in self.ready.iter() {
            if kept + e.size() > PAGE_KEEP && keep > 0 {
                break;
            }
            kept += e.size();
            keep += 1;
        }
        if keep >= self.ready.len() {
            return;
        }
        if self.log.is_none() {
            match queue.store.create_paging_log() {
                Ok(log) => self.log = Some(log),
                Err(e) => {
                    tracing::error!(queue = %queue.name, error = %e, "cannot create a paging log");
                    return;
                }
            }
        }
        let Some(log) = self.log.clone() else {
            return;
        };
        let start = log.end();
        let mut moved = 0u64;
        let paged = self.ready.split_off(keep);
        for e in &paged {
            let flags = if e.persisted { FLAG_PERSISTED } else { 0 }
                | if e.redelivered { FLAG_REDELIVERED } else { 0 };
            if let Err(err) = log.append_message(e.seq, &e.message, false, flags, e.expires_at) {
                tracing::error!(queue = %queue.name, error = %err, "cannot page messages out");
                // Keep what could not be written in memory.
                break;
            }
            moved += 1;
        }
        let (written, kept_back) = paged.split_at(moved as usize);
        for e in written {
            let size = e.size();
            self.ready_bytes = self.ready_bytes.saturating_sub(size);
            queue.store.shared.add_memory(-(size as isize));
        }
        if !kept_back.is_empty() {
            // The log refused writes part way: nothing after a failed write is in the
            // tail, so the unwritten messages stay in memory and paging stops.
            self.ready.extend_back(kept_back.iter().cloned());
            if moved == 0 {
                return;
            }
        }
        self.tail = Some(Tail {
            reader: TailReader {
                pos: start,
                ..TailReader::default()
            },
            count: moved,
        });
    }

    /// Reads the tail back while the in-memory head is short. Returns whether it read
    /// anything.
    fn page_in(&mut self, queue: &Arc<Queue>) -> bool {
        if self.deleted || self.ready_bytes >= PAGE_IN_BELOW {
            return false;
        }
        self.page_in_always(queue)
    }

    /// Reads a batch of the tail back, however much is in memory.
    fn page_in_always(&mut self, queue: &Arc<Queue>) -> bool {
        if self.deleted {
            return false;
        }
        let (Some(tail), Some(log)) = (self.tail.as_mut(), self.log.clone()) else {
            return false;
        };
        let batch = match log.read_back(&mut tail.reader, PAGE_IN_BATCH) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue = %queue.name, error = %e, "cannot read the queue log");
                return false;
            }
        };
        let read = batch.len() as u64;
        let exhausted = read == 0 || read >= tail.count;
        tail.count = tail.count.saturating_sub(read);
        for m in batch {
            self.push_ready(
                QueueEntry {
                    seq: m.seq,
                    message: Arc::new(m.message),
                    redelivered: m.redelivered,
                    persisted: m.persisted,
                    expires_at: m.expires_at,
                    delivery_count: 0,
                },
                &queue.store,
            );
        }
        if exhausted {
            self.tail = None;
        }
        self.collect_garbage();
        read > 0
    }

    /// Gives a consumer back the credit of one settled delivery.
    fn release_consumer(&mut self, consumer: Option<ConsumerId>, released: &mut Vec<ConsumerId>) {
        if let Some(id) = consumer
            && let Some(c) = self.consumers.iter_mut().find(|c| c.id == id)
        {
            c.release();
            if c.blocked && !released.contains(&id) {
                released.push(id);
            }
        }
    }

    /// Single active consumer: after the active one left, the next is the live consumer of
    /// the highest priority, the earliest registered among equals, as in RabbitMQ.
    fn choose_active(&mut self) {
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

    /// Messages coming back from consumers: a quorum queue counts the return and
    /// dead-letters what came back more often than its delivery limit; the rest go back to
    /// their places.
    fn return_entries(&mut self, entries: Vec<QueueEntry>, store: &Store) {
        let quorum = self.settings.queue_type == QueueType::Quorum;
        let limit = self.settings.delivery_limit;
        let mut back = Vec::with_capacity(entries.len());
        for mut entry in entries {
            if quorum {
                entry.delivery_count += 1;
                if limit.is_some_and(|l| u64::from(entry.delivery_count) > l) {
                    self.discard(entry, Reason::DeliveryLimit);
                    continue;
                }
            }
            back.push(entry);
        }
        self.insert_in_order(back, store);
    }

    /// Inserts entries at the positions their sequence numbers give them.
    fn insert_in_order(&mut self, mut entries: Vec<QueueEntry>, store: &Store) {
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
        for entry in entries {
            let size = entry.size();
            self.ready_bytes += size;
            self.body_bytes += entry.message.body.len() as u64;
            store.shared.add_memory(size as isize);
            self.ready.insert_in_order(entry);
        }
    }

    /// Hands ready messages to consumers with credit and pushes them into the consumers'
    /// outboxes. The first consumer in dispatch order that can take the head message gets
    /// it and moves to the tail of its priority; one that cannot is marked blocked and
    /// skipped until it gets credit back (see [`State::unblock`]).
    fn dispatch(&mut self, queue: &Arc<Queue>) {
        loop {
            self.expire_heads(queue);
            self.dispatch_ready(queue);
            // Keep the head fed from the tail while consumers take messages; what was read
            // back goes out in the next round.
            if !self.page_in(queue) {
                break;
            }
        }
    }

    fn dispatch_ready(&mut self, queue: &Arc<Queue>) {
        if self.deleted {
            return;
        }
        let sac = self.settings.single_active_consumer;
        let quorum = self.settings.queue_type == QueueType::Quorum;
        while let Some(head) = self.ready.front() {
            if head.expires_at.is_some_and(|at| at <= now_ms()) {
                // Expired on its way out.
                self.expire_heads(queue);
                continue;
            }
            let size = head.message.wire_size();
            let mut chosen = None;
            for (i, consumer) in self.consumers.iter_mut().enumerate() {
                if consumer.blocked || (sac && self.active != Some(consumer.id)) {
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
            let Some(mut entry) = self.pop_ready(&queue.store) else {
                break;
            };
            let consumer = self.consumers.remove(i);
            if !consumer.no_ack {
                self.unacked += 1;
            }
            self.mark_delivered(&entry);
            if consumer.no_ack && entry.persisted {
                // Settled on delivery.
                self.log_ack(entry.seq);
            }
            let mut size = size;
            if quorum && entry.delivery_count > 0 {
                entry.message = with_delivery_count(&entry.message, entry.delivery_count);
                entry.redelivered = true;
                // The connection accounts for the message as it goes out.
                size = entry.message.wire_size();
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
            self.flush_batches(&queue.store);
        }
    }

    fn flush_batches(&mut self, store: &Store) {
        let mut batches = std::mem::take(&mut self.batches);
        let mut lost_active = false;
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
                    if self.active == Some(d.consumer_id) {
                        lost_active = true;
                    }
                    if !d.no_ack {
                        self.unacked = self.unacked.saturating_sub(1);
                    }
                    back.push(d.entry);
                }
                self.insert_in_order(back, store);
            }
        }
        if lost_active {
            self.choose_active();
        }
        // Keep the allocation for the next dispatch.
        self.batches = batches;
    }
}
