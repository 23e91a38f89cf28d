//! The outbox: how queues hand deliveries to a connection.
//!
//! A queue dispatches synchronously, on whatever task published or acked: it picks a consumer
//! and pushes a [`Delivery`] into that consumer's connection outbox, under the queue's lock so
//! that deliveries keep the queue's order. The outbox is the AMQP connection's
//! [`DeliverySink`] (and its [`ReplySink`] for direct replies, and its [`ConnectionControl`]
//! for the broker): the broker sees only those traits. The connection task drains its outbox in batches,
//! assigns delivery tags, encodes the frames and writes them to the socket in one go. The
//! outbox also carries credit: the bytes handed to a connection and not yet written to its
//! socket. Past `limit_bytes` the connection is full and queues skip its consumers until it
//! has written half of that, so a slow client holds back its queues, not the broker's memory.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::broker::connections::ConnectionControl;
use crate::broker::message::Message;
use crate::broker::queue::delivery::{BySource, ConsumerId, Delivery, DeliverySink};
use crate::broker::reply_to::ReplySink;
use crate::broker::stats::ConnectionInfo;

/// Something other than a delivery that a connection must act on.
#[derive(Debug)]
pub enum OutboxEvent {
    /// A queue was deleted under this consumer; the channel forgets it and, if the client
    /// asked for consumer_cancel_notify, sends Basic.Cancel.
    ConsumerCancelled {
        channel: u16,
        /// Which consumer: a later one on the channel (or on a channel reopened with its
        /// number) may have taken the same tag since.
        consumer: ConsumerId,
        consumer_tag: Bytes,
    },
    /// The broker is shutting down or an operator closed the connection.
    Close { code: u16, text: String },
    /// A reply for the direct reply-to consumer `key` on `channel`.
    DirectReply {
        channel: u16,
        key: Bytes,
        message: Arc<Message>,
    },
}

/// Direct replies bypass queues and their credit; past this many times the outbox limit of
/// unwritten bytes, a connection that does not read takes no more replies.
const REPLY_LIMIT_FACTOR: usize = 4;

#[derive(Default)]
struct Items {
    deliveries: Vec<Delivery>,
    events: Vec<OutboxEvent>,
    closed: bool,
}

/// A connection's mailbox, shared with every queue it consumes from.
pub struct Outbox {
    /// The connection this outbox belongs to.
    pub connection_id: u64,
    /// What operators see of the connection.
    pub info: Arc<ConnectionInfo>,
    items: Mutex<Items>,
    /// Wakes the connection task when the outbox goes from empty to non-empty.
    notify: Notify,
    /// Bytes of deliveries pushed and not yet written to the socket (see module docs).
    pending_bytes: AtomicUsize,
    /// Past this many pending bytes the connection takes no more deliveries.
    limit_bytes: usize,
    /// Set when a queue skipped a consumer because this connection was full.
    starved: AtomicBool,
    /// Bytes of deliveries a closing channel took back ([`Outbox::take_channel`]): they
    /// leave `pending_bytes` with the connection's next written bytes, whose accounting
    /// also asks starved queues again.
    taken_back_bytes: AtomicUsize,
    /// An operator or the shutdown closed the connection ([`ConnectionControl::close`]):
    /// the connection acts on it before it looks at more input.
    close_requested: AtomicBool,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("connection_id", &self.connection_id)
            .finish_non_exhaustive()
    }
}

/// What the connection task takes out of its outbox in one go.
#[derive(Default)]
pub struct Drained {
    pub deliveries: Vec<Delivery>,
    pub events: Vec<OutboxEvent>,
}

impl Outbox {
    pub fn new(info: Arc<ConnectionInfo>, limit_bytes: usize) -> Self {
        Outbox {
            connection_id: info.id,
            info,
            items: Mutex::new(Items::default()),
            notify: Notify::new(),
            pending_bytes: AtomicUsize::new(0),
            limit_bytes,
            starved: AtomicBool::new(false),
            close_requested: AtomicBool::new(false),
            taken_back_bytes: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Items> {
        // A panic while holding this lock would be a bug in a few lines of Vec pushes; the
        // data is still consistent, so carry on rather than poison every queue.
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the connection can take a delivery of `size` bytes on top of `batched` bytes
    /// already picked for it. When it cannot, the outbox remembers that a queue went without,
    /// to ask it again once there is room.
    #[inline]
    pub fn has_room(&self, size: usize, batched: usize) -> bool {
        let fits = |pending: usize| {
            let pending = pending + batched;
            // One delivery always fits an empty outbox, however large, or it would never go.
            pending == 0 || pending + size <= self.limit_bytes
        };
        if fits(self.pending_bytes.load(Ordering::SeqCst)) {
            return true;
        }
        // Announce the shortage, then look again: a write that raced with us either sees the
        // flag (and asks the queue again) or left room that we see here.
        self.starved.store(true, Ordering::SeqCst);
        fits(self.pending_bytes.load(Ordering::SeqCst))
    }

    /// Pushes deliveries, in order. Returns them back if the connection is gone, so the queue
    /// can put them back where they were.
    pub fn push_deliveries(
        &self,
        deliveries: &mut Vec<Delivery>,
        bytes: usize,
    ) -> Result<(), Vec<Delivery>> {
        let was_empty;
        {
            let mut items = self.lock();
            if items.closed {
                return Err(std::mem::take(deliveries));
            }
            was_empty = items.deliveries.is_empty() && items.events.is_empty();
            // Whichever buffer is larger stays here: the caller's is dropped after the push,
            // and regrowing the outbox's from one element for every batch made the allocator
            // fault fresh pages in all the time.
            if items.deliveries.is_empty() && deliveries.capacity() >= items.deliveries.capacity() {
                std::mem::swap(&mut items.deliveries, deliveries);
            } else {
                items.deliveries.append(deliveries);
            }
        }
        self.pending_bytes.fetch_add(bytes, Ordering::SeqCst);
        if was_empty {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Queues an event for the connection.
    /// Wakes the connection task with nothing to drain: something it looks at on every turn
    /// changed (a channel's early confirms, `amqp::confirm::EarlyConfirms`).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    pub fn push_event(&self, event: OutboxEvent) {
        let was_empty;
        {
            let mut items = self.lock();
            if items.closed {
                return;
            }
            was_empty = items.deliveries.is_empty() && items.events.is_empty();
            items.events.push(event);
        }
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Queues a direct reply of `bytes` bytes, counted like deliveries until written.
    /// Returns false, dropping it, when the connection is gone or far behind.
    fn push_reply_event(&self, event: OutboxEvent, bytes: usize) -> bool {
        if self.pending_bytes.load(Ordering::SeqCst) > REPLY_LIMIT_FACTOR * self.limit_bytes {
            return false;
        }
        let was_empty;
        {
            let mut items = self.lock();
            if items.closed {
                return false;
            }
            was_empty = items.deliveries.is_empty() && items.events.is_empty();
            items.events.push(event);
        }
        self.pending_bytes.fetch_add(bytes, Ordering::SeqCst);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Takes everything queued so far. `into` is reused to keep its allocation.
    pub fn drain(&self, into: &mut Drained) {
        let mut items = self.lock();
        std::mem::swap(&mut items.deliveries, &mut into.deliveries);
        std::mem::swap(&mut items.events, &mut into.events);
    }

    /// Takes back the deliveries waiting for `channel`, which is closing: it gives them
    /// back to their queues with what it held, before those queues hand over to other
    /// consumers. Their bytes leave the pending count with the next written bytes
    /// ([`Outbox::take_taken_back_bytes`]).
    pub fn take_channel(&self, channel: u16) -> Vec<Delivery> {
        let mut taken = Vec::new();
        {
            let mut items = self.lock();
            if items.deliveries.iter().any(|d| d.channel == channel) {
                let (mine, others): (Vec<Delivery>, Vec<Delivery>) =
                    std::mem::take(&mut items.deliveries)
                        .into_iter()
                        .partition(|d| d.channel == channel);
                items.deliveries = others;
                taken = mine;
            }
        }
        let bytes: usize = taken.iter().map(|d| d.entry.message.wire_size()).sum();
        self.taken_back_bytes.fetch_add(bytes, Ordering::SeqCst);
        taken
    }

    /// Bytes of deliveries taken back since the last call: the connection counts them with
    /// what it wrote.
    pub fn take_taken_back_bytes(&self) -> usize {
        self.taken_back_bytes.swap(0, Ordering::SeqCst)
    }

    /// Waits until something is pushed.
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// The connection wrote `bytes` of deliveries to its socket. Returns true when queues that
    /// skipped it should be asked to dispatch again.
    pub fn written(&self, bytes: usize) -> bool {
        if bytes == 0 {
            return false;
        }
        // Saturating: an accounting slip must not wrap into an outbox that never has room.
        let before = self
            .pending_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                Some(p.saturating_sub(bytes))
            })
            .unwrap_or(0);
        let after = before.saturating_sub(bytes);
        after < self.limit_bytes / 2 && self.starved.swap(false, Ordering::SeqCst)
    }

    /// Closes the outbox: later pushes are refused. Returns what was still queued.
    pub fn close_and_drain(&self) -> Drained {
        let mut items = self.lock();
        items.closed = true;
        Drained {
            deliveries: std::mem::take(&mut items.deliveries),
            events: std::mem::take(&mut items.events),
        }
    }
}

impl DeliverySink for Outbox {
    fn sink_id(&self) -> u64 {
        self.connection_id
    }

    #[inline]
    fn has_room(&self, size: usize, batched: usize) -> bool {
        Outbox::has_room(self, size, batched)
    }

    fn push_deliveries(
        &self,
        deliveries: &mut Vec<Delivery>,
        bytes: usize,
    ) -> Result<(), Vec<Delivery>> {
        Outbox::push_deliveries(self, deliveries, bytes)
    }

    fn consumer_cancelled(&self, channel: u16, consumer: ConsumerId, consumer_tag: Bytes) {
        self.push_event(OutboxEvent::ConsumerCancelled {
            channel,
            consumer,
            consumer_tag,
        });
    }
}

impl Outbox {
    /// Whether the connection was closed from outside ([`ConnectionControl::close`]).
    #[inline]
    pub fn close_requested(&self) -> bool {
        self.close_requested.load(Ordering::Relaxed)
    }
}

impl ReplySink for Outbox {
    fn sink_id(&self) -> u64 {
        self.connection_id
    }

    fn push_reply(&self, channel: u16, key: Bytes, message: Arc<Message>) -> bool {
        let bytes = message.wire_size();
        self.push_reply_event(
            OutboxEvent::DirectReply {
                channel,
                key,
                message,
            },
            bytes,
        )
    }
}

impl ConnectionControl for Outbox {
    fn close(&self, code: u16, text: String) {
        self.push_event(OutboxEvent::Close { code, text });
        self.close_requested.store(true, Ordering::SeqCst);
    }

    fn info(&self) -> &Arc<ConnectionInfo> {
        &self.info
    }
}

/// Gives deliveries that never reached their channel back to their queues.
pub fn return_to_queues(deliveries: Vec<Delivery>) {
    let mut groups = BySource::new();
    for d in deliveries {
        let source = d.source.clone();
        groups.push(&source, d);
    }
    for (q, list) in groups.into_groups() {
        q.return_undelivered(list);
    }
}
