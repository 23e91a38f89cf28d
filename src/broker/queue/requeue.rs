//! Messages coming back from consumers: requeued by a nack, a reject or a recover, or let go
//! when their channel closed.
//!
//! A classic queue puts them back in their places, by `seq`. A quorum queue without a
//! delivery limit puts the ones its consumer turned down ([`Requeue::Refused`]) behind every
//! ready message, as RabbitMQ 3.10's does (with a limit, RabbitMQ keeps them as returns,
//! served before the ready messages, so they go back to their places here as in a classic
//! queue; checked on a node): the message gets the next `seq`, and, if it has a durable
//! record, a new record under that `seq` is logged before the Ack of the old one, so that a
//! restart finds it at the back too. The log keeps the old record until the new one is synced. (A crash
//! that keeps the new record and not the Ack brings the message back twice: at least once,
//! as a lazy ack does.)

use super::context::QueueCtx;
use super::dead_letter::Reason;
use super::delivery::Requeue;
use super::entry::QueueEntry;
use super::settings::QueueType;
use super::state::State;
use crate::broker::timer::now_ms;
use crate::store::record::{FLAG_REDELIVERED, Stamp};

impl State {
    /// Messages coming back from consumers: a quorum queue counts the return and
    /// dead-letters what came back more often than its delivery limit; the rest go back to
    /// their places, or to the back (see the module's doc). A message with TTL 0 went out
    /// the moment it arrived, so its expiry (its enqueue time, as in RabbitMQ) has passed: it
    /// is expired when it reaches the head.
    pub fn return_entries(&mut self, ctx: &QueueCtx, entries: Vec<QueueEntry>, why: Requeue) {
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
        // Quorum queues take no priorities; a queue with levels keeps to their order.
        if quorum && limit.is_none() && why == Requeue::Refused && !self.ready.prioritised() {
            for entry in back {
                self.requeue_at_back(ctx, entry);
            }
            self.page_out_if_short(ctx);
        } else {
            if quorum {
                self.log_returned(ctx, &back);
            }
            self.insert_in_order(back);
        }
    }

    /// Logs the delivery counts of durable messages going back to their places, so that a
    /// restart brings them back with these counts (and `x-delivery-limit` holds across it),
    /// as RabbitMQ's Raft log does. Lazily, as acknowledgements: a crash within
    /// `LAZY_WRITE_MS` of a return forgets that return.
    fn log_returned(&self, ctx: &QueueCtx, entries: &[QueueEntry]) {
        let Some(log) = &self.log else {
            return;
        };
        let counts: Vec<(u64, u32)> = entries
            .iter()
            .filter(|e| e.persisted)
            .map(|e| (e.seq, e.delivery_count))
            .collect();
        if !counts.is_empty()
            && let Err(e) = log.returned(&counts)
        {
            tracing::error!(queue = %ctx.name, error = %e, "cannot log the delivery counts of returned messages");
        }
    }

    /// Inserts entries at the positions their sequence numbers give them.
    pub fn insert_in_order(&mut self, entries: Vec<QueueEntry>) {
        for entry in &entries {
            self.ready_bytes += entry.size();
            self.body_bytes += entry.message.body.len() as u64;
        }
        self.ready.insert_all_in_order(entries);
    }

    /// Puts a returned message behind every other, under the next sequence number: in
    /// memory, or after the tail if the queue's backlog is paged out. A message whose new
    /// record cannot be written goes back to its place instead: it is never lost.
    fn requeue_at_back(&mut self, ctx: &QueueCtx, mut entry: QueueEntry) {
        let seq = self.next_seq;
        let size = entry.message.body.len() as u64;
        // Logged under its new number (durable), or copied behind the paged-out tail
        // (transient): either way the log has it where a reader of the tail or a restart
        // looks for it.
        let durable = entry.persisted;
        if durable || self.tail.is_some() {
            let written = self.log.as_ref().map(|log| {
                let stamp = Stamp {
                    flags: FLAG_REDELIVERED,
                    ..entry.stamp()
                };
                log.append_message(seq, &entry.message.parts(), durable, &stamp)
            });
            let Some(Ok(epoch)) = written else {
                tracing::error!(queue = %ctx.name, "cannot log a requeued message at the back; it keeps its place");
                self.insert_in_order(vec![entry]);
                return;
            };
            // The old record leaves (the message stays counted as persistent), but the log
            // keeps it until the new one is on disk (`QueueLog::ack_superseded`).
            if durable
                && let Some(log) = &self.log
                && let Err(e) = log.ack_superseded(entry.seq, epoch)
            {
                tracing::error!(queue = %ctx.name, error = %e, "cannot log an acknowledgement");
            }
        }
        self.next_seq += 1;
        entry.seq = seq;
        self.body_bytes += size;
        match self.tail.as_mut() {
            Some(tail) => tail.count += 1,
            None => self.push_ready(entry),
        }
    }
}
