//! A queue's state, behind its lock, and what every operation on it shares: accounting for
//! ready messages, logging acks and deliveries, taking messages in and letting them go.
//!
//! The rest of the state's behaviour lives beside it, one concern per file: dispatch to
//! consumers (`dispatch.rs`), length limits and expiry (`limits.rs`), paging (`paging.rs`).
//! Everything here runs with the queue's lock held and is handed the queue's [`QueueCtx`]; it
//! never calls into another queue.

use std::sync::Arc;

use amq_protocol::types::AMQPValue;

use super::consumers::Consumers;
use super::context::QueueCtx;
use super::dead_letter::{DeadLetter, DlxTarget, Reason};
use super::delivery::{Delivery, DeliverySink};
use super::entry::QueueEntry;
use super::held::Held;
use super::pace::Pace;
use super::ready::Ready;
use super::settings::{Overflow, QueueSettings};
use crate::broker::message::Message;
use crate::broker::stats::QueueCounters;
use crate::broker::timer::now_ms;
use crate::protocol::properties;
use crate::store::record::Stamp;
use crate::store::{Position, QueueLog, ReadBack, TailReader};

/// Paging thresholds, in bytes of messages a queue holds in memory. Over the broker's budget,
/// a queue holding more than `PAGE_OUT_ABOVE` moves all but its oldest `PAGE_KEEP` to disk;
/// it reads `PAGE_IN_BATCH` back whenever it is down to `PAGE_IN_BELOW`. The gap between the
/// two keeps a queue from writing out what it would read straight back.
pub const PAGE_OUT_ABOVE: usize = 1024 * 1024;
pub const PAGE_KEEP: usize = 512 * 1024;
pub const PAGE_IN_BELOW: usize = 256 * 1024;
pub const PAGE_IN_BATCH: usize = 256 * 1024;

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

/// Messages of a queue that live only in its log, after everything in `ready`.
#[derive(Debug)]
pub struct Tail {
    pub reader: TailReader,
    /// How many messages the tail holds.
    pub count: u64,
}

/// The part of one priority level that lives on disk, in a paging log of its own (see
/// `levels`).
#[derive(Debug)]
pub struct LevelTail {
    pub log: Arc<QueueLog>,
    pub tail: Tail,
}

/// Reading the tail back without holding the queue's lock: the batch is read after the lock
/// is released, and taken in under it the next time the head runs short.
#[derive(Debug, Default)]
pub enum ReadAhead {
    #[default]
    Idle,
    /// The head is short: read the next batch once the lock is released.
    Wanted,
    /// A read is running outside the lock.
    Reading,
    /// A batch read from `from`, with the reader as it left off.
    Ready {
        from: Position,
        reader: TailReader,
        batch: Vec<ReadBack>,
    },
}

/// A read of the tail to do outside the lock.
pub struct ReadJob {
    pub log: Arc<QueueLog>,
    pub reader: TailReader,
}

/// Deliveries picked in one dispatch round for one sink, pushed together.
pub struct Batch {
    pub sink: Arc<dyn DeliverySink>,
    pub deliveries: Vec<Delivery>,
    pub bytes: usize,
}

/// Dead letters taken out from under the lock, with where they go.
pub type Letters = Option<(DlxTarget, Vec<DeadLetter>)>;

/// Messages and their body bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub messages: u64,
    pub bytes: u64,
}

impl Tally {
    pub fn add(&mut self, messages: u64, bytes: u64) {
        self.messages += messages;
        self.bytes += bytes;
    }

    pub fn remove(&mut self, messages: u64, bytes: u64) {
        self.messages = self.messages.saturating_sub(messages);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

#[derive(Default)]
pub struct State {
    pub settings: QueueSettings,
    /// Messages waiting for a consumer, by priority level, each level sorted by `seq`.
    pub ready: Ready,
    /// Sequence number of the next message enqueued.
    pub next_seq: u64,
    /// Consumers in dispatch order (see [`Consumers`]).
    pub consumers: Consumers,
    /// Messages delivered and awaiting an ack.
    pub unacked: usize,
    /// Body bytes of the messages delivered and awaiting an ack.
    pub unacked_bytes: u64,
    /// The messages with a durable record, ready or unacknowledged: what the management
    /// API calls persistent. Counted in when written, out when their ack is logged.
    pub persistent: Tally,
    /// The queue was deleted: it takes no more messages or consumers.
    pub deleted: bool,
    /// The queue has had a consumer (auto-delete only applies after the first one).
    pub had_consumers: bool,
    /// Holds on dispatching ([`super::DispatchHold`]): while any is out, nothing is handed
    /// to consumers, so a closing channel can give everything it held back first.
    pub dispatch_holds: u32,
    /// Reused per dispatch: deliveries grouped by destination sink.
    pub batches: Vec<Batch>,
    /// Where each sink's batch is in `batches` (by the sink's address), once a dispatch
    /// serves more sinks than a scan is cheap for: a work queue with thousands of
    /// consumers on as many connections would scan its batches per delivery.
    pub batch_index: std::collections::HashMap<usize, usize>,
    /// An emptied batch's buffer, for the next batch (at most `dispatch::SPARE_DELIVERIES` long): a
    /// publish to a queue whose consumer keeps up dispatches one delivery, and making and
    /// freeing its one-element buffer was half the allocations of every message.
    pub spare_deliveries: Vec<Delivery>,
    /// Reused per dispatch: durable messages delivered to no-ack consumers, whose Ack
    /// records are logged together when the dispatch ends.
    pub acks_to_log: Vec<u64>,
    /// A durable queue's log, or a transient queue's paging log once it needed one.
    pub log: Option<Arc<QueueLog>>,
    /// Messages after `ready` that live only in the log.
    pub tail: Option<Tail>,
    /// The next batch of the tail, read outside the lock (see `paging`).
    pub read_ahead: ReadAhead,
    /// A priority queue's levels that page on their own, by level (see `levels`).
    pub levels: Vec<Option<LevelTail>>,
    /// How many of `levels` have a tail.
    pub paged_levels: usize,
    /// Purged tails of `log` still being read through to log their acks, each with where
    /// its read stands (see `purge`): the log keeps what they have yet to read.
    pub purging: Vec<(u64, Position)>,
    /// The next purged tail's number in `purging`.
    pub next_purge_pin: u64,
    /// Bytes of `ready` held in memory, counted in the broker's memory budget.
    pub ready_bytes: usize,
    /// Body bytes of every ready message, in memory or in the tail (`x-max-length-bytes`).
    pub body_bytes: u64,
    /// When the queue was last used (`x-expires`): declared, consumed from, polled.
    pub last_used_ms: u64,
    /// The deadline the timer thread will next wake this queue at, if one is set.
    pub timer_at: Option<u64>,
    /// The highest sequence number taken out of `ready` (delivered, fetched or dropped),
    /// for a FIFO queue; `max_taken_by_level` holds it per level for a priority queue (kept
    /// apart so that a FIFO pop touches no other allocation). Paging keeps in memory every
    /// ready message of the level up to it: those are requeued ones, and more may come back
    /// among them, which a tail could not take in order.
    pub max_taken_seq: u64,
    pub max_taken_by_level: Vec<u64>,
    /// What this hold of the lock may still discard (`limits::MAX_DISCARDS_PER_TURN`, set
    /// when the lock is taken).
    pub discards_left: usize,
    /// Drop-head stopped at its bound per lock hold with the queue still over its limit:
    /// the timer thread goes on at once (`limits::MAX_DISCARDS_PER_TURN`).
    pub over_limit_pending: bool,
    /// Messages leaving for the dead-letter exchange, handed to the host once the lock is
    /// released.
    pub dead: Vec<DeadLetter>,
    /// Dead letters kept until their queues have them (at-least-once, see `held`).
    pub held: Held,
    /// Messages in, delivered, fetched and acknowledged, for the management API.
    pub counters: QueueCounters,
    /// How fast consumers take messages: a queue they keep pace with is not paged early.
    pub pace: Pace,
    /// A quorum queue with `reject-publish` went over its length limit: it refuses
    /// publishes until it is down to 80% of the limit (`limits::quorum_refuses`).
    pub refusing_publishes: bool,
}

impl State {
    pub fn message_count(&self) -> u32 {
        let paged = if self.paged_levels > 0 {
            self.level_tail_count()
        } else {
            0
        };
        (self.ready.len() as u64 + self.tail.as_ref().map_or(0, |t| t.count) + paged) as u32
    }

    /// Dead letters to hand over once the lock is released, if the queue has a dead-letter
    /// exchange.
    pub fn take_dead(&mut self) -> Letters {
        if self.dead.is_empty() {
            return None;
        }
        let letters = std::mem::take(&mut self.dead);
        let exchange = self.settings.dead_letter_exchange.clone()?;
        Some((
            DlxTarget {
                exchange,
                routing_key: self.settings.dead_letter_routing_key.clone(),
            },
            letters,
        ))
    }

    /// A message leaves the queue for good without being acknowledged: expired, dropped by
    /// the length limit, rejected or returned too often. It goes to the dead-letter exchange
    /// if there is one.
    pub fn discard(&mut self, entry: QueueEntry, reason: Reason) {
        // `maxlen` never is: at-least-once needs reject-publish, which drops nothing.
        if self.settings.dead_letter_at_least_once && reason != Reason::Maxlen {
            self.hold(entry, reason);
            return;
        }
        if entry.persisted {
            self.log_ack(&entry);
        }
        if self.settings.dead_letter_exchange.is_some() {
            let message = match self.settings.queue_type {
                // Same as RabbitMQ, which adds `x-delivery-count` to what it delivers, not
                // to the message it keeps and dead-letters.
                super::settings::QueueType::Quorum => without_delivery_count(&entry.message),
                _ => entry.message,
            };
            self.dead.push(DeadLetter {
                message,
                reason,
                ticket: None,
            });
        }
    }

    /// The TTL a message has in this queue: the smaller of the queue's and its own.
    pub fn ttl_of(&self, message: &Message) -> Option<u64> {
        match (self.settings.message_ttl_ms, message.ttl_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Enqueues a message and dispatches it.
    pub fn publish(&mut self, ctx: &QueueCtx, message: Arc<Message>) -> Enqueued {
        if self.deleted {
            return Enqueued::Deleted;
        }
        let size = message.body.len() as u64;
        self.counters.publish += 1;
        if self.settings.overflow != Overflow::DropHead && self.refuses(size) {
            if self.settings.overflow == Overflow::RejectPublishDlx
                && self.settings.dead_letter_exchange.is_some()
            {
                self.dead.push(DeadLetter {
                    message,
                    reason: Reason::Maxlen,
                    ticket: None,
                });
            }
            return Enqueued::Rejected;
        }
        let ttl = self.ttl_of(&message);
        // TTL 0 is "now or never": such a message gets no expiry while it is offered to the
        // consumers below, and is dropped if none took it. (The clock is only read for
        // messages that can expire.)
        let mut expires_at = ttl.filter(|&t| t > 0).map(|t| now_ms().saturating_add(t));
        let level_paged = self.paged_levels > 0 && self.level_paged(message.priority);
        let behind = ttl == Some(0) && (self.tail.is_some() || level_paged);
        if behind && self.settings.dead_letter_at_least_once {
            // A dead letter this queue must keep: it is logged behind the backlog and
            // expires when it gets to the head (only heads expire, as in RabbitMQ).
            expires_at = Some(now_ms());
        } else if behind {
            // Behind a paged-out backlog no consumer can take it now.
            if self.settings.dead_letter_exchange.is_some() {
                self.dead.push(DeadLetter {
                    message,
                    reason: Reason::Expired,
                    ticket: None,
                });
            }
            return Enqueued::Accepted;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let disk_expiry = expires_at.or_else(|| (ttl == Some(0)).then(now_ms));
        let Some(outcome) = self.log_published(ctx, seq, &message, disk_expiry) else {
            return Enqueued::Failed;
        };
        let persisted = matches!(outcome, Enqueued::Persisted(_));
        self.body_bytes += size;
        if self.tail.is_some() {
            return self.publish_behind_tail(ctx, seq, &message, persisted, expires_at, outcome);
        }
        let entry = QueueEntry {
            seq,
            message,
            redelivered: false,
            persisted,
            expires_at,
            delivery_count: 0,
        };
        if level_paged {
            // Its level is on disk: it goes after the level's tail.
            if !self.append_to_level(ctx, &entry) {
                self.body_bytes -= size;
                if persisted {
                    // Refused: its durable record must not bring it back after a restart.
                    self.log_ack(&entry);
                }
                return Enqueued::Failed;
            }
            self.dispatch(ctx);
            self.enforce_length_limit(ctx);
            return outcome;
        }
        self.push_ready(entry);
        // An idle consumer takes the message before the limit is looked at, as in RabbitMQ.
        self.dispatch(ctx);
        self.enforce_length_limit(ctx);
        if ttl == Some(0) {
            self.expire_untaken(seq);
        }
        self.page_out_if_short(ctx);
        outcome
    }

    /// Moves the newest part of the backlog to disk if memory is short (`should_page_out`):
    /// after a publish, and when the memory monitor asks every queue (`Queue::relieve`), so
    /// that a queue nobody publishes to pages too.
    pub fn page_out_if_short(&mut self, ctx: &QueueCtx) {
        if self.should_page_out(ctx) {
            if self.ready.prioritised() {
                self.page_out_levels(ctx);
            } else {
                self.page_out(ctx);
            }
        }
    }

    /// TTL 0 means "now or never": the message `seq`, if no consumer took it at once,
    /// expires now at the head. Behind other messages it expires when it gets there, as in
    /// RabbitMQ (only heads expire): its expiry is now.
    fn expire_untaken(&mut self, seq: u64) {
        let at_head = self.ready.front().is_some_and(|e| e.seq == seq);
        let Some(mut entry) = self.ready.take_seq(seq) else {
            return;
        };
        if at_head {
            self.forget_ready(&entry);
            self.discard(entry, Reason::Expired);
        } else {
            entry.expires_at = Some(now_ms());
            self.ready.insert_in_order(entry);
        }
    }

    /// Writes a published message to the queue's log if it is to survive a restart: a
    /// persistent message of a durable queue, and (same as RabbitMQ, whose quorum queues
    /// have no transient messages) every message of a quorum queue, which keeps its
    /// delivery mode. `expires_at` is its expiry on disk: a TTL-0 message's is its publish,
    /// as RabbitMQ stores it, so one a restart finds expires at the head rather than being
    /// delivered long after its "now or never". `None` if the write failed.
    fn log_published(
        &mut self,
        ctx: &QueueCtx,
        seq: u64,
        message: &Message,
        expires_at: Option<u64>,
    ) -> Option<Enqueued> {
        let kept_on_disk =
            message.persistent || self.settings.queue_type == super::settings::QueueType::Quorum;
        // The log's `Arc` is cloned only for a message that goes into it: a clone is two
        // atomic operations, per queue per publish (7% of a fanout's rate when it was not).
        if !(ctx.durable && kept_on_disk) {
            return Some(Enqueued::Accepted);
        }
        let Some(log) = self.log.clone() else {
            return Some(Enqueued::Accepted);
        };
        let stamp = Stamp {
            expires_at,
            ..Stamp::default()
        };
        match log.append_message(seq, &message.parts(), true, &stamp) {
            Ok(epoch) => {
                self.persistent.add(1, message.body.len() as u64);
                Some(Enqueued::Persisted(epoch))
            }
            Err(e) => {
                tracing::error!(queue = %ctx.name, error = %e, "cannot write a persistent message");
                None
            }
        }
    }

    /// Paging: a new message goes after the tail, in the log only.
    fn publish_behind_tail(
        &mut self,
        ctx: &QueueCtx,
        seq: u64,
        message: &Message,
        persisted: bool,
        expires_at: Option<u64>,
        outcome: Enqueued,
    ) -> Enqueued {
        if !persisted {
            let stamp = Stamp {
                expires_at,
                ..Stamp::default()
            };
            let written = self
                .log
                .as_ref()
                .map(|log| log.append_message(seq, &message.parts(), false, &stamp));
            if !matches!(written, Some(Ok(_))) {
                tracing::error!(queue = %ctx.name, "cannot page a message out");
                self.body_bytes -= message.body.len() as u64;
                return Enqueued::Failed;
            }
        }
        if let Some(tail) = self.tail.as_mut() {
            tail.count += 1;
        }
        self.dispatch(ctx);
        self.enforce_length_limit(ctx);
        outcome
    }

    /// Whether to move the newest part of the backlog to disk now: the queue holds more than
    /// `PAGE_OUT_ABOVE` (asked first: summing the gauge is the dearer question) and memory is
    /// short for it (`memory_short`).
    fn should_page_out(&mut self, ctx: &QueueCtx) -> bool {
        self.ready_bytes > PAGE_OUT_ABOVE && self.memory_short(ctx)
    }

    /// Whether memory is short for this queue: the broker is over its memory budget, and the
    /// queue is not a stream its consumers keep pace with (`pace`), or the broker holds more
    /// than the paced limit. Such a queue pages, and has its messages copied out of their
    /// read buffers (`Queue::relieve`); a stream passing through does neither, since what
    /// it holds is gone within a second.
    pub fn memory_short(&mut self, ctx: &QueueCtx) -> bool {
        self.memory_short_asked_every(ctx, 0)
    }

    /// [`State::memory_short`] for an asker whose questions come `asked_every_ms` apart
    /// (see [`Pace::keeps_up`]).
    pub fn memory_short_asked_every(&mut self, ctx: &QueueCtx, asked_every_ms: u64) -> bool {
        let (backlog, consumed, pace) =
            (self.ready_bytes, !self.consumers.is_empty(), &mut self.pace);
        ctx.memory()
            .should_page(|| consumed && pace.keeps_up(backlog, now_ms(), asked_every_ms))
    }

    pub fn push_ready(&mut self, entry: QueueEntry) {
        let size = entry.size();
        self.ready_bytes += size;
        self.ready.push_back(entry);
    }

    /// Takes the head message out of the queue.
    pub fn pop_ready(&mut self) -> Option<QueueEntry> {
        let entry = self.ready.pop_front()?;
        if self.ready.prioritised() {
            let level = self.ready.level_index(entry.message.priority);
            if self.max_taken_by_level.len() <= level {
                self.max_taken_by_level.resize(level + 1, 0);
            }
            self.max_taken_by_level[level] = self.max_taken_by_level[level].max(entry.seq);
        } else {
            self.max_taken_seq = self.max_taken_seq.max(entry.seq);
        }
        self.forget_ready(&entry);
        Some(entry)
    }

    /// How many of a level's first messages paging must keep in memory: requeued ones
    /// older than a message taken from it (`max_taken_seq`), which others may yet come
    /// back among.
    pub fn requeued_to_keep<'a>(
        &self,
        level: usize,
        entries: impl Iterator<Item = &'a QueueEntry>,
    ) -> usize {
        let max = match self.ready.prioritised() {
            true => self.max_taken_by_level.get(level).copied().unwrap_or(0),
            false => self.max_taken_seq,
        };
        entries.take_while(|e| e.seq <= max).count()
    }

    /// Accounts for a message that left `ready` (and the queue).
    pub fn forget_ready(&mut self, entry: &QueueEntry) {
        let size = entry.size();
        self.ready_bytes = self.ready_bytes.saturating_sub(size);
        self.pace.took(size);
        self.body_bytes = self
            .body_bytes
            .saturating_sub(entry.message.body.len() as u64);
    }

    /// Logs that the durable message `entry` left the queue.
    pub fn log_ack(&mut self, entry: &QueueEntry) {
        self.log_acks(&[entry.seq], entry.message.body.len() as u64);
    }

    /// Logs that the durable messages `seqs`, of `body_bytes` together, left the queue, with
    /// one append.
    pub fn log_acks(&mut self, seqs: &[u64], body_bytes: u64) {
        self.persistent.remove(seqs.len() as u64, body_bytes);
        self.append_acks(seqs);
    }

    /// Appends the Ack records of `seqs`, whose messages were already counted out.
    pub fn append_acks(&self, seqs: &[u64]) {
        if let Some(log) = &self.log
            && !seqs.is_empty()
            && let Err(e) = log.ack_all(seqs)
        {
            tracing::error!(error = %e, "cannot log an acknowledgement");
        }
    }

    /// Logs the first delivery of a durable message, so that it comes back redelivered
    /// after a restart.
    pub fn mark_delivered(&self, entry: &QueueEntry) {
        if entry.persisted
            && !entry.redelivered
            && let Some(log) = &self.log
            && let Err(e) = log.delivered(entry.seq)
        {
            tracing::error!(error = %e, "cannot log a delivery");
        }
    }

    /// Deletes log segments nothing needs any more.
    pub fn collect_garbage(&self) {
        if let Some(log) = &self.log {
            let tail = self.tail.as_ref().map(|t| t.reader.pos);
            let read_pos = match (tail, self.purge_floor()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            log.collect_garbage(read_pos);
        }
    }
}

/// The message with an `x-delivery-count` header, as quorum queues deliver it.
/// `message` without the `x-delivery-count` header a quorum queue adds to what it delivers
/// (itself if it has none).
pub fn without_delivery_count(message: &Arc<Message>) -> Arc<Message> {
    let Some(props) = properties::decode_all(&message.properties) else {
        return message.clone();
    };
    let Some(headers) = props.headers().as_ref() else {
        return message.clone();
    };
    if headers.inner().get("x-delivery-count").is_none() {
        return message.clone();
    }
    // Dead-lettering writes the headers again (`x-death`): an empty table left here is
    // never seen.
    let mut kept = amq_protocol::types::FieldTable::default();
    for (k, v) in headers
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "x-delivery-count")
    {
        kept.insert(k.clone(), v.clone());
    }
    let props = props.clone().with_headers(kept);
    let Some(raw) = properties::encode_all(&props) else {
        return message.clone();
    };
    let mut m = (**message).clone();
    m.properties = raw;
    Arc::new(m)
}

pub fn with_delivery_count(message: &Arc<Message>, count: u32) -> Arc<Message> {
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
