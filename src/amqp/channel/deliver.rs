//! Deliveries: what a queue pushed for this channel's consumers goes out with a delivery tag
//! and is remembered until settled; deliveries held past their consumer timeout close the
//! channel. Also the channel's side of confirms and direct replies on their way out.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{Channel, ChannelState, Unacked};
use std::sync::atomic::Ordering;

use crate::amqp::confirm::Confirms;
use crate::amqp::output::Output;
use crate::amqp::session::Session;
use crate::amqp_error;
use crate::broker::message::Message;
use crate::broker::queue::Queue;

/// The least time between two scans of a channel's unacknowledged deliveries for a consumer
/// timeout.
const TIMEOUT_RESCAN: std::time::Duration = std::time::Duration::from_secs(1);
use crate::broker::queue::delivery::{ConsumerId, Delivery};
use crate::broker::queue::prefetch::ChannelPrefetch;
use crate::broker::stats::bump;
use crate::protocol::basic::write_deliver;
use crate::protocol::error::AmqpError;

impl Channel {
    /// Writes the confirms resolved since the last call, including publishes whose
    /// messages the store has now synced.
    pub fn flush_confirms(&mut self, out: &mut Output, synced: u64, failed: &dyn Fn(u64) -> bool) {
        // Same as RabbitMQ (`send_confirms` sends nothing on a closing channel): nothing
        // follows a Channel.Close. A client that has forgotten the channel, or opened it
        // again, would take stray acks for its own (amqp091-go closes the connection).
        if !self.is_open() {
            return;
        }
        if let Some(c) = self.confirms.as_mut() {
            c.take_early();
            c.release_synced(synced, failed);
            let confirmed = c.pending_acks();
            c.flush(out, self.id);
            let info = &self.stats.info;
            bump(&info.messages.confirm, confirmed as u64);
            info.unconfirmed
                .store(c.unresolved_len() as u32, Ordering::Relaxed);
        }
    }

    /// Writes the confirms already resolved (unroutable, transient, early, or synced by
    /// now) before the channel closes: as RabbitMQ, which sends them after each method,
    /// before the close.
    pub fn flush_resolved_confirms(&mut self, s: &Session, out: &mut Output) {
        let shared = &s.broker.store.shared;
        self.flush_confirms(out, shared.synced(), &|epoch| shared.failed(epoch));
    }

    /// Whether confirms wait for the store to sync.
    pub fn waiting_for_sync(&self) -> bool {
        self.confirms
            .as_ref()
            .is_some_and(Confirms::waiting_for_sync)
    }

    /// Publishes waiting for the store before they can be confirmed.
    pub fn unconfirmed(&self) -> usize {
        self.confirms.as_ref().map_or(0, Confirms::unresolved_len)
    }

    // ---- deliveries -----------------------------------------------------------------------

    /// Sends a delivery a queue pushed to this channel. Gives it back if its consumer is gone.
    pub fn deliver(
        &mut self,
        d: Delivery,
        out: &mut Output,
        frame_max: u32,
        now: Instant,
    ) -> Result<usize, Delivery> {
        if self.state != ChannelState::Open {
            return Err(d);
        }
        // Consumer ids are never reused, so a match with the last one means it still exists.
        let timeout_ms = match self.last_consumer {
            Some((id, timeout_ms)) if id == d.consumer_id => timeout_ms,
            _ => match self.consumers.get(&d.consumer_tag) {
                Some(c) if c.id == d.consumer_id => {
                    self.last_consumer = Some((c.id, c.timeout_ms));
                    c.timeout_ms
                }
                _ => return Err(d),
            },
        };
        self.last_tag += 1;
        let tag = self.last_tag;
        let m = &d.entry.message;
        write_deliver(
            out.buf(),
            self.id,
            &d.consumer_tag,
            tag,
            d.entry.redelivered,
            &m.exchange,
            &m.routing_key,
        );
        out.content(self.id, &m.properties, &m.body, frame_max);
        let size = m.wire_size();
        let counters = &self.stats.info.messages;
        bump(
            match d.no_ack {
                true => &counters.deliver_no_ack,
                false => &counters.deliver,
            },
            1,
        );
        if d.entry.redelivered {
            bump(&counters.redeliver, 1);
        }
        if !d.no_ack {
            let deadline = self.deadline(now, timeout_ms);
            self.unacked.push_back(Unacked {
                tag,
                queue: d.source,
                consumer: Some(d.consumer_id),
                entry: d.entry,
                deadline,
            });
            self.note_gauges();
        }
        Ok(size)
    }

    /// The deadline of a delivery made `now` under `timeout_ms`, noted for the timer.
    pub(super) fn deadline(
        &mut self,
        now: Instant,
        timeout_ms: Option<u64>,
    ) -> Option<(Instant, u64)> {
        let ms = timeout_ms?;
        let at = now + std::time::Duration::from_millis(ms);
        if self.timeout_check.is_none_or(|t| at < t) {
            self.timeout_check = Some(at);
        }
        Some((at, ms))
    }

    /// When the connection should call [`Channel::check_timeouts`].
    ///
    /// After a scan the next one is at least [`TIMEOUT_RESCAN`] away.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timeout_check
    }

    /// Closes the channel's account with a consumer that holds a delivery past its timeout,
    /// as RabbitMQ does: the error closes the channel.
    pub fn check_timeouts(&mut self, now: Instant) -> Option<AmqpError> {
        if self.timeout_check.is_none_or(|t| t > now) {
            return None;
        }
        self.timeout_check = None;
        let mut next: Option<Instant> = None;
        for u in self.unacked.iter() {
            let Some((at, ms)) = u.deadline else {
                continue;
            };
            if at <= now {
                return Some(amqp_error!(
                    PreconditionFailed,
                    "delivery acknowledgement on channel {} timed out. Timeout value used: {} ms. This timeout value can be configured, see consumers doc guide to learn more",
                    self.id,
                    ms
                ));
            }
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        // A scan walks every unacknowledged delivery: at most one a second, or a consumer
        // acking in time with 100,000 in flight would have the channel scan them all at
        // each delivery's deadline. (RabbitMQ checks about once a minute.)
        self.timeout_check = next.map(|n| n.max(now + TIMEOUT_RESCAN));
        None
    }

    /// The queue of consumer `id` cancelled it (it was deleted). Returns whether the channel
    /// still had it: not if the client cancelled it meanwhile, and a later consumer that took
    /// the same tag stays.
    pub fn consumer_cancelled(&mut self, tag: &Bytes, id: ConsumerId) -> bool {
        if self.consumers.get(tag).is_none_or(|c| c.id != id) {
            return false;
        }
        self.forget_consumer(tag);
        self.note_gauges();
        true
    }

    /// Whether consumer `id` was made on this channel, not on an earlier one that had its
    /// number (consumer ids only grow).
    pub fn made_consumer(&self, id: ConsumerId) -> bool {
        id >= self.first_consumer_id
    }

    /// The channel's prefetch, to give back credit for deliveries that never went out.
    pub fn prefetch(&self) -> &Arc<ChannelPrefetch> {
        &self.prefetch
    }

    /// The queues this channel's consumers read from.
    pub fn consumed_queues(&self) -> Vec<Arc<Queue>> {
        self.consumers.queues().cloned().collect()
    }

    /// Sends a direct reply to this channel's reply consumer, if it is still the one the
    /// reply was addressed to. Like RabbitMQ, it carries the channel's next delivery tag
    /// without taking it: replies are never acknowledged.
    pub fn direct_reply(
        &mut self,
        key: &[u8],
        message: &Message,
        out: &mut Output,
        frame_max: u32,
    ) {
        let Some(consumer) = &self.reply_consumer else {
            return;
        };
        if self.state != ChannelState::Open || consumer.key.as_bytes() != key {
            return;
        }
        write_deliver(
            out.buf(),
            self.id,
            &consumer.tag,
            self.last_tag + 1,
            false,
            &message.exchange,
            &message.routing_key,
        );
        out.content(self.id, &message.properties, &message.body, frame_max);
    }
}
