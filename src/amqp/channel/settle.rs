//! Settlement: basic.ack, basic.nack and basic.reject from the client (and basic.recover,
//! and channel close), handed to the queues the deliveries came from.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Channel, ChannelState, TxSettle, Unacked};
use crate::amqp::outbox::return_to_queues;
use crate::amqp::session::Session;
use crate::amqp_error;
use crate::broker::message::SettledConfirms;
use crate::broker::queue::DispatchHold;
use crate::broker::queue::delivery::{BySource, DeliverySource, Requeue, Settled, Unblock};
use crate::broker::queue::entry::QueueEntry;
use crate::protocol::basic::Settle;
use crate::protocol::error::{AmqpError, AmqpResult};

/// What becomes of settled deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Acknowledged: they leave their queues.
    Ack,
    /// Back into their queues, marked redelivered.
    Requeue(Requeue),
    /// Rejected without requeue: dead-lettered or dropped.
    Discard,
}

impl Verdict {
    /// The verdict of a basic.ack (`is_ack`), or of a basic.nack or basic.reject and its
    /// requeue flag.
    pub(super) fn of(is_ack: bool, requeue: bool) -> Verdict {
        match (is_ack, requeue) {
            (true, _) => Verdict::Ack,
            (false, true) => Verdict::Requeue(Requeue::Refused),
            (false, false) => Verdict::Discard,
        }
    }
}

/// Settlements for one queue, in delivery order.
type QueueSettlements = (Arc<dyn DeliverySource>, Vec<(Settled, QueueEntry)>);

impl Channel {
    pub(super) fn unknown_tag(tag: u64) -> AmqpError {
        amqp_error!(PreconditionFailed, "unknown delivery tag {}", tag)
    }

    /// Takes the deliveries an ack/nack/reject names, with RabbitMQ's rules: tag 0 with
    /// multiple means all; otherwise the tag itself must be outstanding.
    pub(super) fn take_unacked(&mut self, tag: u64, multiple: bool) -> AmqpResult<Vec<Unacked>> {
        let taken = if multiple && tag == 0 {
            self.unacked.take_all()
        } else {
            self.unacked
                .take(tag, multiple)
                .map_err(|_| Self::unknown_tag(tag))?
        };
        self.work += taken.len();
        Ok(taken)
    }

    /// basic.ack, basic.reject or basic.nack from the client.
    pub fn on_settle(&mut self, method_id: u16, settle: Settle) -> AmqpResult<()> {
        let err_method = |e: AmqpError| e.on_method(60, method_id);
        self.expect_method().map_err(err_method)?;
        let taken = self
            .take_unacked(settle.delivery_tag, settle.multiple)
            .map_err(err_method)?;
        let is_ack = method_id == crate::protocol::basic::ACK;
        if let Some(tx) = self.tx.as_mut() {
            // Kept until the commit, so never an entry per settle that took nothing (an ack
            // of tag 0 with multiple, sent forever, grew the list without end) and one entry
            // for a run of settles of one kind, as RabbitMQ's `ack_cons` keeps them: the
            // list is as long as the deliveries it holds at most.
            if taken.is_empty() {
                return Ok(());
            }
            tx.settled += taken.len();
            match (tx.settles.last_mut(), is_ack) {
                (Some(TxSettle::Ack(list)), true) => list.extend(taken),
                (Some(TxSettle::Reject(list, requeue)), false) if *requeue == settle.requeue => {
                    list.extend(taken)
                }
                (_, true) => tx.settles.push(TxSettle::Ack(taken)),
                (_, false) => tx.settles.push(TxSettle::Reject(taken, settle.requeue)),
            }
            self.note_gauges();
            return Ok(());
        }
        self.settle(taken, Verdict::of(is_ack, settle.requeue));
        Ok(())
    }

    /// Settles deliveries with their queues.
    pub(super) fn settle(&mut self, taken: Vec<Unacked>, verdict: Verdict) {
        if taken.is_empty() {
            return;
        }
        let counted = taken.iter().filter(|u| u.consumer.is_some()).count() as u32;
        // When channel-wide credit comes back to a channel that ran out of it, the queues
        // just settled do not wake their consumers that wait for it: the queues that waited
        // are asked in turn afterwards (`kick_in_turn`).
        let channel_unblocked = self.prefetch.release(counted);
        let unblock = Unblock::Nobody;
        // Group by queue, keeping delivery order within each queue.
        let mut by_queue = BySource::new();
        for u in taken {
            let settled = Settled::of(&u.entry, u.consumer);
            by_queue.push(&u.queue, (settled, u.entry));
        }
        let groups: Vec<QueueSettlements> = by_queue.into_groups();
        if verdict == Verdict::Ack {
            let acked = groups.iter().map(|(_, l)| l.len() as u64).sum();
            crate::broker::stats::bump(&self.stats.info.messages.ack, acked);
        }
        if verdict == Verdict::Ack {
            // Acknowledged: the publishers' confirms of these messages need not wait for the
            // disk (see `broker::message::ConfirmSink`).
            let mut confirms = SettledConfirms::default();
            for (settled, entry) in groups.iter().flat_map(|(_, l)| l) {
                if settled.persisted {
                    confirms.add(&entry.message);
                }
            }
            confirms.report();
        }
        for (queue, list) in groups {
            match verdict {
                Verdict::Requeue(why) => queue.requeue(list, why, unblock),
                Verdict::Discard => queue.reject(list, unblock),
                Verdict::Ack => queue.ack(
                    list.into_iter().map(|(settled, _)| settled).collect(),
                    unblock,
                ),
            }
        }
        if channel_unblocked {
            self.kick_in_turn();
        }
        self.note_gauges();
    }

    /// Channel-wide credit came back: the queues that went without it may send again. Only
    /// those are asked, as RabbitMQ's limiter asks only the queues it blocked (asking every
    /// queue of the channel at each ack made a run of acks cost acks x queues, up to 65,536
    /// queue locks an ack). They are asked in turn, each round starting after where the
    /// last one stopped, so that under a channel-wide prefetch each queue gets its share
    /// (RabbitMQ's limiter notifies its queues in a shuffled order for the same reason); a
    /// round stops once the credit is gone again, and the queues it did not reach wait for
    /// the next (`ChannelConsumers::waiting`). A round costs the queues it asks and the
    /// consumers refused since the last one; each queue asked counts as work against the
    /// connection's turn.
    pub(crate) fn kick_in_turn(&mut self) {
        let refused = self.prefetch.take_starved_consumers();
        self.consumers.note_waiting(refused);
        let mut asked = 0usize;
        loop {
            if asked > 0 && !self.prefetch.has_credit() {
                // The queues not reached are asked when credit comes back.
                if self.consumers.has_waiting() {
                    self.prefetch.note_starved();
                }
                break;
            }
            let Some(key) = self.consumers.take_next_waiting(self.kick_after) else {
                break;
            };
            if let Some(q) = self.consumers.queue(key) {
                q.kick(Unblock::Channel(&self.prefetch));
            }
            self.kick_after = Some(key);
            asked += 1;
        }
        self.work += asked;
    }

    /// Requeues everything unacknowledged: `Requeue::Released` when the channel closes,
    /// `Requeue::Refused` for basic.recover.
    pub(super) fn requeue_all(&mut self, why: Requeue) {
        let all = self.unacked.take_all();
        self.settle(all, Verdict::Requeue(why));
    }

    /// Releases everything the channel holds: consumers leave their queues (auto-delete
    /// queues that lose their last consumer are deleted) and unacknowledged deliveries go
    /// back to their queues, including those acked in a transaction that was never
    /// committed. Called when the channel closes for any reason.
    pub fn shutdown(&mut self, s: &Session) {
        self.content = None;
        // An open transaction is rolled back: what it acked goes back to the queues below.
        if let Some(tx) = self.tx.take() {
            self.roll_back(tx);
        }
        self.abandon_commit();
        // A purge under way reads the rest of its tails through now, without its purge-ok.
        self.purging = None;
        if let Some(reply) = self.reply_consumer.take() {
            s.broker.reply_consumers.unregister(&reply.key);
        }
        self.last_consumer = None;
        // The queues this channel consumes from hand nothing to their consumers until what
        // the channel held is back in its place: its unacked deliveries and those still in
        // the outbox. So a single active consumer's successor gets them before anything
        // after them, as in RabbitMQ. The holds dispatch when they drop, at the end.
        let mut holds: HashMap<usize, DispatchHold> = HashMap::new();
        for c in self.consumers.values() {
            holds
                .entry(Arc::as_ptr(&c.queue) as usize)
                .or_insert_with(|| c.queue.hold_dispatch());
        }
        for c in self.consumers.drain() {
            let removed = c.queue.remove_consumer(c.id);
            if removed.delete_queue {
                s.vhost.remove_queue(&c.queue);
            }
        }
        self.requeue_all(Requeue::Released);
        return_to_queues(s.outbox.take_channel(self.id));
        drop(holds);
        // Confirms still waiting are never sent (nothing follows a Channel.Close), and must
        // not hold the connection's reading back as unconfirmed publishes.
        if self.confirms.take().is_some() {
            self.stats
                .info
                .unconfirmed
                .store(0, std::sync::atomic::Ordering::Relaxed);
        }
        // Nothing is left to time out. A deadline kept past this point would stay in the
        // past for as long as the client takes to send Close-Ok (no check looks at a closing
        // channel), and the connection would find it due on every turn.
        self.timeout_check = None;
        self.state = ChannelState::Closing;
    }
}
