//! A queue: messages waiting in order, the consumers waiting for them, and the dispatch that
//! brings the two together.
//!
//! There is no queue task. Whoever changes a queue (a publisher's connection enqueuing, a
//! consumer's connection acking or consuming, the timer thread expiring messages, the
//! dead-letter worker) takes the queue's lock, makes the change and dispatches what can be
//! dispatched right there, pushing deliveries into consumers' sinks ([`delivery`]). This keeps
//! a message's path free of task hops: publish, route, enqueue and hand over to the consumer's
//! connection happen in one call on the publisher's task.
//!
//! This file is the queue's public face; the state behind its lock and what runs under it are
//! in [`state`], [`dispatch`], [`requeue`], [`limits`] and [`paging`]. A durable queue writes each
//! persistent message to its log ([`crate::store::QueueLog`]) before the publisher's confirm.
//! What a queue does beyond FIFO (TTLs, dead-lettering, length limits, priorities, single
//! active consumer, delivery limits) is set by [`settings::QueueSettings`].
//!
//! A queue never calls another queue. Messages that leave for the dead-letter exchange are
//! collected under the lock and handed to the queue's host (the vhost) after it is released;
//! the host routes them later, as work, so a chain of queues cannot recurse.
//!
//! Invariants, all under the lock:
//! - Each priority level of `ready` is sorted by `seq`; a requeued message goes back to the
//!   place its `seq` gives it, or, refused by the consumer of a quorum queue without a
//!   delivery limit, takes the next `seq` at the back ([`requeue`]).
//! - Every message in the tail comes after every message in `ready` (higher `seq`), and the
//!   tail is read back in `seq` order. Only FIFO queues page.
//! - A message is in exactly one place: `ready`, the tail, a channel's unacked list (the
//!   queue only counts those), or a sink on its way to a channel.
//! - A persistent message of a durable queue has a log record until it leaves the queue for
//!   good (ack, expiry, drop, dead-lettering), when an Ack record is logged.
//! - Deliveries are pushed into sinks while the lock is held, so every consumer sees the
//!   queue's order.

mod at_least_once;
pub mod consumer;
pub mod consumers;
pub mod context;
pub mod dead_letter;
pub mod delivery;
mod dispatch;
pub mod entry;
pub mod held;
pub mod levels;
mod limits;
mod pace;
mod paging;
pub mod prefetch;
pub mod purge;
pub mod ready;
mod requeue;
pub mod settings;
mod snapshot;
pub mod state;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use amq_protocol::types::FieldTable;

use crate::amqp_error;
use crate::broker::budget::Share;
use crate::broker::message::{Compaction, Message};
use crate::broker::policy::Policy;
use crate::broker::timer::{Timed, now_ms};
use crate::protocol::error::AmqpResult;
use crate::store::{QueueLog, Recovered};
use consumer::Consumer;
use consumers::Consumers;
use context::{QueueCtx, QueueServices};
use dead_letter::Reason;
use delivery::{ConsumerId, Delivery, DeliverySource, Requeue, Settled, Unblock};
use entry::QueueEntry;
use ready::Ready;
use settings::{QueueSettings, QueueType};
pub use snapshot::{ConsumerSnapshot, QueueSnapshot};
use state::{Enqueued, PAGE_OUT_ABOVE, State, Tail, with_delivery_count};

pub use context::QueueConfig;

/// A message queue.
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
    /// What the code under the lock needs to know about the queue and its services.
    ctx: QueueCtx,
    state: Mutex<State>,
    /// Deleted: out of its vhost, its bindings being removed a batch at a time
    /// (`vhost::unbinding`). Routing treats it as gone, as RabbitMQ does once the deletion
    /// is done: a message for it alone goes to the exchange's alternate, or is unroutable.
    detached: AtomicBool,
    /// What it keeps, held against the topology budget while it lives.
    _share: Option<Share>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

/// What removing a consumer left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerRemoved {
    /// The consumer was found and removed.
    pub removed: bool,
    /// The queue is auto-delete and that was its last consumer: the caller deletes it.
    pub delete_queue: bool,
}

/// A hold on a queue's dispatching ([`Queue::hold_dispatch`]); dropping it dispatches, even
/// while unwinding, so a hold never outlives its holder.
#[must_use]
pub struct DispatchHold {
    queue: Arc<Queue>,
}

impl Drop for DispatchHold {
    fn drop(&mut self) {
        let queue = &self.queue;
        // While unwinding, let go and leave the dispatch to the timer thread: a panic in it
        // here would abort the process.
        let dispatch = !std::thread::panicking();
        queue.with_state(|state| {
            state.dispatch_holds = state.dispatch_holds.saturating_sub(1);
            if dispatch {
                state.dispatch(&queue.ctx);
            } else {
                let now = now_ms();
                state.timer_at = Some(now);
                queue
                    .ctx
                    .services
                    .timers
                    .schedule(now, queue.ctx.timed.clone());
            }
        });
    }
}

impl Queue {
    /// Whether it was deleted (see [`Queue::detached`]).
    pub fn is_detached(&self) -> bool {
        self.detached.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks it deleted, before the routing version moves (routes are cached by it).
    pub fn detach(&self) {
        self.detached
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// A new queue; durable queues bring their (empty) log.
    pub fn new(
        config: QueueConfig,
        services: QueueServices,
        log: Option<Arc<QueueLog>>,
        policy: Option<&Policy>,
    ) -> Arc<Self> {
        let settings = QueueSettings::new(&config.arguments, policy);
        let services_retry_ms = services.dead_letter_retry_ms;
        let queue = Arc::new_cyclic(|me: &Weak<Queue>| {
            let source: Weak<dyn DeliverySource> = me.clone();
            let timed: Weak<dyn Timed> = me.clone();
            Queue {
                ctx: QueueCtx {
                    name: config.name.clone(),
                    durable: config.durable,
                    services,
                    source,
                    timed,
                },
                name: config.name,
                vhost: config.vhost,
                durable: config.durable,
                auto_delete: config.auto_delete,
                exclusive_owner: config.exclusive_owner,
                arguments: config.arguments,
                id: config.id,
                detached: AtomicBool::new(false),
                _share: config.share,
                state: Mutex::new(State {
                    ready: Ready::new(settings.max_priority),
                    consumers: Consumers::new(
                        settings.single_active_consumer,
                        settings.queue_type != QueueType::Quorum,
                    ),
                    held: held::Held::new(services_retry_ms, me.as_ptr() as usize),
                    settings,
                    log,
                    last_used_ms: now_ms(),
                    ..State::default()
                }),
            }
        });
        // `x-expires` counts from the declaration.
        queue.with_state(|_| ());
        queue
    }

    /// A durable queue brought back from its log after a restart. Its messages stay in the
    /// log and are read back in order as consumers need them.
    pub fn recovered(
        config: QueueConfig,
        services: QueueServices,
        log: Arc<QueueLog>,
        recovered: Recovered,
        policy: Option<&Policy>,
    ) -> Arc<Self> {
        let queue = Queue::new(config, services, Some(log), policy);
        queue.with_state(|state| {
            state.next_seq = recovered.next_seq;
            state.body_bytes = recovered.bytes;
            state.persistent.add(recovered.count, recovered.bytes);
            // Dead letters held when the broker stopped are held again (at-least-once),
            // still durable and counted as such until settled.
            for (back, code) in recovered.held {
                let reason = Reason::from_code(code).unwrap_or_else(|| {
                    tracing::warn!(queue = %queue.name, code, "a held dead letter's reason is unknown; taken as rejected");
                    Reason::Rejected
                });
                let (seq, bytes) = (back.seq, back.message.body.len() as u64);
                match paging::entry_read_back(&queue.ctx, back, paging::Parts::Own) {
                    Some(entry) => {
                        state.persistent.add(1, bytes);
                        state.hold_recovered(entry, reason);
                    }
                    // Dropped (and said): its record need not be read at every start.
                    None => state.append_acks(&[seq]),
                }
            }
            if recovered.count == 0 {
                // No tail to read: the log may drop what is acknowledged from the front.
                state.collect_garbage();
            }
            if recovered.count > 0 {
                state.tail = Some(Tail {
                    reader: recovered.reader,
                    count: recovered.count,
                });
            }
            // Messages with a TTL and the queue's own expiry get their timers. A priority
            // queue reads everything back through its levels, so that priorities order all
            // of it; levels page out as memory runs short.
            if state.ready.prioritised() {
                while state.page_in_always(&queue.ctx) {
                    if state.ready_bytes > PAGE_OUT_ABOVE && queue.ctx.memory().over_budget() {
                        state.page_out_levels(&queue.ctx);
                    }
                }
            } else {
                state.page_in(&queue.ctx);
            }
        });
        queue
    }

    /// What the memory monitor asks of every queue, every `asked_every_ms`, while the broker
    /// holds more than its budget: if memory is short for it (`State::memory_short`), page
    /// out as a publish would have, then copy the ready messages left in memory out of the
    /// read buffers they arrived in (`Ready::compact`). Paging first: copying a backlog
    /// that then goes to disk raised memory before anything was freed, all of it under the
    /// queue's lock.
    pub fn relieve(&self, compaction: &mut Compaction, asked_every_ms: u64) {
        {
            // Most queues have nothing to copy and too little to page: they cost a look under
            // the lock, not a sum of the memory gauge (a broker may have a million queues).
            let state = self.lock();
            if state.ready.in_read_buffers() == 0 && state.ready_bytes <= PAGE_OUT_ABOVE {
                return;
            }
        }
        self.with_state(|state| {
            if state.memory_short_asked_every(&self.ctx, asked_every_ms) {
                state.page_out_if_short(&self.ctx);
                state.ready.compact(compaction);
            }
        });
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // State stays consistent across a panic in these short critical sections; keep going.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Each hold of the lock may discard this many messages (expiry, drop-head), however
        // many calls it makes.
        state.discards_left = limits::MAX_DISCARDS_PER_TURN;
        state
    }

    /// Runs `f` under the lock, then hands whatever it dead-lettered to the host and reads
    /// the tail ahead if the head ran short.
    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, letters, read) = {
            let mut state = self.lock();
            let result = f(&mut state);
            state.arm_timer(&self.ctx);
            (result, state.take_dead(), state.start_read_ahead())
        };
        self.hand_over(letters);
        if let Some(job) = read {
            self.read_ahead(job);
        }
        result
    }

    fn hand_over(&self, letters: state::Letters) {
        if let Some((target, letters)) = letters
            && let Some(host) = self.ctx.services.host.upgrade()
        {
            host.dead_letter(&self.name, target, letters);
        }
    }

    /// The host routed dead letters this queue holds (at-least-once): settles those every
    /// queue they went to has.
    pub fn dead_letters_routed(&self, reports: Vec<held::Routed>) {
        self.with_state(|state| state.held_routed(&self.ctx, reports));
    }

    /// Reads the next batch of the tail with the lock released, then takes the lock again
    /// to keep it and dispatch. One batch per call: a further read waits for the next call
    /// (and an empty head is always read under the lock, so nothing stalls).
    fn read_ahead(&self, job: state::ReadJob) {
        let result = job.run(self.ctx.services.memory);
        let letters = {
            let mut state = self.lock();
            match result {
                Ok((from, reader, batch)) => state.finish_read_ahead(from, reader, batch),
                Err(e) => {
                    tracing::error!(queue = %self.name, error = %e, "cannot read the queue log");
                    state.fail_read_ahead();
                }
            }
            state.dispatch(&self.ctx);
            state.arm_timer(&self.ctx);
            state.take_dead()
        };
        self.hand_over(letters);
    }

    /// Routes the dead letters a restart brought back held, now that the exchanges and
    /// bindings they go through are restored (or drops them, if at-least-once is off now).
    pub fn route_held_again(&self) {
        self.with_state(|state| state.held_settings_changed(&self.ctx));
    }

    /// Re-reads settings after the policies changed.
    pub fn apply_policy(&self, policy: Option<&Policy>) {
        self.with_state(|state| {
            let settings = QueueSettings::new(&self.arguments, policy);
            // Same as RabbitMQ, where a queue sets its expiry timer afresh when it takes a
            // new policy: an unused queue's `expires` counts from now, not from when it was
            // last used (a policy giving an idle queue an hour would delete it at once).
            if settings != state.settings {
                state.last_used_ms = now_ms();
            }
            // Priorities come from arguments only, so `ready` keeps its shape.
            state.settings = settings;
            state.held_settings_changed(&self.ctx);
            state.enforce_length_limit(&self.ctx);
            state.dispatch(&self.ctx);
            state.arm_timer(&self.ctx);
        });
    }

    /// The settings in force.
    pub fn settings(&self) -> QueueSettings {
        self.lock().settings.clone()
    }

    /// Enqueues a message and dispatches.
    pub fn publish(&self, message: Arc<Message>) -> Enqueued {
        self.with_state(|state| state.publish(&self.ctx, message))
    }

    /// Takes the message at the head for basic.get. Returns it and the number of messages
    /// left ready. More expired heads than one lock hold discards are discarded over more
    /// holds, letting the lock go between them (at most [`limits::MAX_GET_TURNS`]): the
    /// fetch finds what is behind them, as RabbitMQ's does.
    pub fn get(&self, no_ack: bool) -> Option<(QueueEntry, u32)> {
        for turn in 1..=limits::MAX_GET_TURNS {
            if let Ok(got) = self.get_turn(no_ack, turn == limits::MAX_GET_TURNS) {
                return got;
            }
        }
        None
    }

    /// One hold of the lock for [`Queue::get`]: `Err` if it stopped at the discard bound
    /// with expired heads left, having counted nothing (the `last` turn counts an empty
    /// fetch instead).
    fn get_turn(&self, no_ack: bool, last: bool) -> Result<Option<(QueueEntry, u32)>, ()> {
        let ctx = &self.ctx;
        self.with_state(|state| {
            state.last_used_ms = now_ms();
            let mut capped = state.expire_heads(ctx);
            // What is read back may have expired on disk, and the head may expire while we
            // look: it is expired before it is taken (a priority level has no read-ahead).
            while !capped
                && (state.page_in(ctx)
                    || state.ready.next_expiry().is_some_and(|at| at <= now_ms()))
            {
                capped = state.expire_heads(ctx);
                if state.ready.next_expiry().is_none_or(|at| at > now_ms()) {
                    break;
                }
            }
            // More expired heads than one lock hold discards: an expired message is never
            // handed out, so this turn ends here and the next goes on.
            if capped && !last {
                return Err(());
            }
            if capped {
                state.counters.get_empty += 1;
                return Ok(None);
            }
            let Some(mut entry) = state.pop_ready() else {
                state.counters.get_empty += 1;
                return Ok(None);
            };
            match no_ack {
                true => state.counters.get_no_ack += 1,
                false => state.counters.get += 1,
            }
            state.counters.redeliver += entry.redelivered as u64;
            // Expired messages now at the head go right after a fetch, as in RabbitMQ.
            state.expire_heads(ctx);
            if !no_ack {
                state.unacked += 1;
                state.unacked_bytes += entry.message.body.len() as u64;
            }
            state.mark_delivered(&entry);
            if no_ack && entry.persisted {
                state.log_ack(&entry);
            }
            if state.settings.queue_type == QueueType::Quorum {
                // Quorum queues always tell basic.get how often the message came back.
                entry.message = with_delivery_count(&entry.message, entry.delivery_count);
            }
            state.page_in(ctx);
            let left = state.message_count();
            Ok(Some((entry, left)))
        })
    }

    /// Adds a consumer and dispatches to it. Enforces exclusive consumers the way RabbitMQ
    /// does: an exclusive consumer needs an otherwise unused queue, and nobody joins it; a
    /// single-active-consumer queue takes no exclusive consumer at all.
    pub fn add_consumer(&self, consumer: Consumer) -> AmqpResult<()> {
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
                let consumers = &state.consumers;
                if consumers.live() > 0 && (consumer.exclusive || consumers.exclusive().is_some()) {
                    return Err(in_use());
                }
            }
            state.consumers.insert(consumer);
            state.had_consumers = true;
            // A use, as the management API's `idle_since` shows it (the queue's expiry
            // waits while it has consumers anyway).
            state.last_used_ms = now_ms();
            state.dispatch(&self.ctx);
            Ok(())
        })
    }

    /// Holds the queue's dispatching until the hold is dropped, which dispatches. A closing
    /// channel holds its queues while it gives back everything it held (its unacked
    /// deliveries and those still on their way in the outbox). Same as RabbitMQ (its queue
    /// requeues a dead channel's messages, then runs): a single active consumer's successor
    /// gets the messages its predecessor held before any later ones.
    pub fn hold_dispatch(self: &Arc<Self>) -> DispatchHold {
        self.with_state(|state| state.dispatch_holds += 1);
        DispatchHold {
            queue: self.clone(),
        }
    }

    /// Removes a consumer. Its unacknowledged deliveries stay with its channel.
    pub fn remove_consumer(&self, id: ConsumerId) -> ConsumerRemoved {
        self.with_state(|state| {
            let Some((_, was_active)) = state.consumers.remove(id) else {
                return ConsumerRemoved {
                    removed: false,
                    delete_queue: false,
                };
            };
            state.last_used_ms = now_ms();
            if was_active {
                state.dispatch(&self.ctx);
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

    /// Ready messages and consumers, as queue.declare-ok reports them.
    pub fn counts(&self) -> (u32, u32) {
        let state = self.lock();
        (state.message_count(), state.consumers.live() as u32)
    }

    /// A redeclare counts as use for `x-expires` when RabbitMQ 3.10's would (checked on a
    /// node): on a classic queue, one the client awaits an answer to (RabbitMQ counts the
    /// `stat` that makes Declare-Ok, passive or not; a `nowait` one makes none); on a quorum
    /// queue, an active one, awaited or not (a passive one only reads the queue's counts).
    pub fn touch_on_declare(&self, passive: bool, nowait: bool) {
        self.with_state(|state| {
            let used = match state.settings.queue_type {
                QueueType::Quorum => !passive,
                _ => !nowait,
            };
            if used {
                state.last_used_ms = now_ms();
            }
        });
    }

    pub fn message_count(&self) -> u32 {
        self.lock().message_count()
    }

    pub fn consumer_count(&self) -> u32 {
        self.counts().1
    }

    /// What the management API shows of the queue, read under one lock.
    pub fn snapshot(&self) -> QueueSnapshot {
        self.snapshot_of(true)
    }

    /// The snapshot without the consumers' details (`consumers` is empty, their number is
    /// in `consumer_count`): what a scrape or a total over many queues needs, read without
    /// copying every consumer's tag and arguments under the queue's lock.
    pub fn gauges(&self) -> QueueSnapshot {
        self.snapshot_of(false)
    }

    fn snapshot_of(&self, with_consumers: bool) -> QueueSnapshot {
        let state = self.lock();
        let tag_of = |id: Option<ConsumerId>| {
            let consumer = state.consumers.get(id?)?;
            Some(String::from_utf8_lossy(&consumer.tag).into_owned())
        };
        let live = || state.consumers.iter().filter(|c| !c.dead);
        QueueSnapshot {
            consumer_count: state.consumers.live(),
            ready: state.message_count(),
            unacked: state.unacked as u32,
            ready_bytes: state.body_bytes,
            unacked_bytes: state.unacked_bytes,
            persistent: state.persistent,
            memory_bytes: state.ready_bytes as u64,
            consumers: live()
                .filter(|_| with_consumers)
                .map(|c| ConsumerSnapshot {
                    tag: String::from_utf8_lossy(&c.tag).into_owned(),
                    channel: c.channel,
                    connection: c.sink.sink_id(),
                    ack_required: !c.no_ack,
                    exclusive: c.exclusive,
                    prefetch_count: c.prefetch_count,
                    arguments: c.arguments.clone(),
                    activity: state.consumers.activity(c.id),
                })
                .collect(),
            exclusive_consumer: tag_of(state.consumers.exclusive()),
            single_active_consumer: tag_of(state.consumers.active()),
            counters: state.counters,
            last_used_ms: state.last_used_ms,
            paged_out: state.tail.as_ref().map_or(0, |t| t.count) + state.level_tail_count(),
            held: state.held.count,
            held_bytes: state.held.bytes,
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    /// Marks the queue deleted, drops its messages and its log, and hands back its
    /// consumers (to be told) and the number of ready messages it held.
    pub fn mark_deleted(&self) -> (u32, Vec<Consumer>) {
        let mut state = self.lock();
        state.deleted = true;
        state.clear_held();
        let n = state.message_count();
        while state.pop_ready().is_some() {}
        state.tail = None;
        state.drop_level_tails();
        state.body_bytes = 0;
        if let Some(log) = state.log.take() {
            log.destroy();
        }
        (n, state.consumers.take_all())
    }

    /// Gives back the credit of settled deliveries and lets waiting consumers rejoin.
    fn settle_credit(state: &mut State, settled: &[Settled], unblock: Unblock) {
        for s in settled {
            state.unacked = state.unacked.saturating_sub(1);
            state.unacked_bytes = state.unacked_bytes.saturating_sub(s.body_bytes);
            if let Some(id) = s.consumer {
                state.consumers.release(id);
            }
        }
        state.wake(unblock);
    }
}

impl DeliverySource for Queue {
    /// Acknowledged deliveries leave the queue for good.
    fn ack(&self, settled: Vec<Settled>, unblock: Unblock) {
        self.with_state(|state| {
            Queue::settle_credit(state, &settled, unblock);
            state.counters.ack += settled.len() as u64;
            let persisted: Vec<u64> = settled
                .iter()
                .filter(|s| s.persisted)
                .map(|s| s.seq)
                .collect();
            if !persisted.is_empty() {
                let bytes = settled
                    .iter()
                    .filter(|s| s.persisted)
                    .map(|s| s.body_bytes)
                    .sum();
                state.log_acks(&persisted, bytes);
                state.collect_garbage();
            }
            state.dispatch(&self.ctx);
        });
    }

    /// Rejected deliveries leave the queue, for its dead-letter exchange if it has one.
    fn reject(&self, entries: Vec<(Settled, QueueEntry)>, unblock: Unblock) {
        self.with_state(|state| {
            let settled: Vec<Settled> = entries.iter().map(|(s, _)| *s).collect();
            Queue::settle_credit(state, &settled, unblock);
            if state.deleted {
                // Same as RabbitMQ, where a deleted queue's deliveries settle with nothing:
                // they are not dead-lettered.
                return;
            }
            for (_, entry) in entries {
                state.discard(entry, Reason::Rejected);
            }
            state.collect_garbage();
            state.dispatch(&self.ctx);
        });
    }

    /// Puts delivered messages back, marked redelivered: in their original positions, or,
    /// in a quorum queue whose consumer refused them, at the back (`requeue`).
    fn requeue(&self, entries: Vec<(Settled, QueueEntry)>, why: Requeue, unblock: Unblock) {
        self.with_state(|state| {
            let settled: Vec<Settled> = entries.iter().map(|(s, _)| *s).collect();
            Queue::settle_credit(state, &settled, unblock);
            if state.deleted {
                return;
            }
            let back = entries
                .into_iter()
                .map(|(_, mut entry)| {
                    entry.redelivered = true;
                    entry
                })
                .collect();
            state.return_entries(&self.ctx, back, why);
            state.enforce_length_limit(&self.ctx);
            state.dispatch(&self.ctx);
        });
    }

    /// Puts back deliveries that never reached their consumer (its channel closed while they
    /// were on their way). They keep their redelivered flag. A no-ack delivery's Ack is in the
    /// log already (it was settled when handed over): it comes back as a message held in
    /// memory only, whose settlement logs nothing. (Logged twice, its Ack took a second
    /// message off its segment's live count, and the segment could be deleted under a
    /// confirmed message nobody had acked.)
    fn return_undelivered(&self, deliveries: Vec<Delivery>) {
        self.with_state(|state| {
            let mut back = Vec::with_capacity(deliveries.len());
            for mut d in deliveries {
                d.entry.persisted &= !d.no_ack;
                if !d.no_ack {
                    state.unacked = state.unacked.saturating_sub(1);
                    state.unacked_bytes = state
                        .unacked_bytes
                        .saturating_sub(d.entry.message.body.len() as u64);
                    state.consumers.release(d.consumer_id);
                }
                back.push(d.entry);
            }
            if state.deleted {
                return;
            }
            state.return_entries(&self.ctx, back, Requeue::Released);
            state.dispatch(&self.ctx);
        });
    }

    /// Tries to dispatch again after consumers got credit back outside this queue.
    fn kick(&self, unblock: Unblock) {
        self.with_state(|state| {
            state.wake(unblock);
            state.dispatch(&self.ctx);
        });
    }
}

impl Timed for Queue {
    /// A deadline passed: expire messages at the head, and tell the host if the queue has
    /// been unused for its `x-expires`.
    fn on_timer(&self, now: u64) {
        let expired = self.with_state(|state| {
            state.timer_at = None;
            if state.deleted {
                return false;
            }
            state.held_tick(&self.ctx, now);
            if state.over_limit_pending {
                state.enforce_length_limit(&self.ctx);
            }
            if !state.expire_heads(&self.ctx) {
                state.dispatch(&self.ctx);
            }
            state.settings.expires_ms.is_some_and(|ttl| {
                state.consumers.is_empty() && now >= state.last_used_ms.saturating_add(ttl)
            })
        });
        if expired && let Some(host) = self.ctx.services.host.upgrade() {
            tracing::debug!(queue = %self.name, "deleting an unused queue (x-expires)");
            host.queue_expired(&self.name, self as *const Queue as usize);
        }
    }
}
