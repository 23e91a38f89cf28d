//! Transactions: publishes and settlements held back until tx.commit, dropped (settlements
//! put back) on tx.rollback.

use amq_protocol::protocol::{AMQPClass, tx};

use super::publish::{Destination, Outcome};
use super::settle::Verdict;
use super::{After, Channel, Transaction, TxPublish, TxSettle, Unacked, reply};
use crate::amqp::output::Output;
use crate::amqp::session::Session;
use crate::amqp_error;
use crate::protocol::error::AmqpResult;

/// Publishes a tx.commit enqueues per turn of its connection's task. A transaction holds
/// up to `max_uncommitted_per_channel` (a million) publishes; enqueued in one go, they
/// kept the runtime worker, and every connection waiting for it, for seconds. Between
/// batches the task yields, and reads nothing more until the commit is done, so what the
/// client sent after tx.commit still comes after it.
pub const COMMIT_BATCH: usize = 4096;

/// A tx.commit under way.
pub(super) struct Committing {
    /// The publishes not yet enqueued, in the order they were published.
    publishes: std::vec::IntoIter<TxPublish>,
    /// Applied after the last publish, as before.
    settles: Vec<TxSettle>,
    /// The latest store epoch a publish so far waits for: commit-ok waits for its sync.
    sync: Option<u64>,
    write_failed: bool,
    refused: bool,
}

impl Channel {
    pub(super) fn tx_method(
        &mut self,
        s: &Session,
        out: &mut Output,
        method: tx::AMQPMethod,
    ) -> AmqpResult<After> {
        let id = self.id;
        match method {
            tx::AMQPMethod::Select(_) => {
                if self.confirms.is_some() {
                    return Err(amqp_error!(
                        PreconditionFailed,
                        "cannot switch from confirm to tx mode"
                    ));
                }
                if self.tx.is_none() {
                    self.tx = Some(Transaction::default());
                    self.stats
                        .info
                        .transactional
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                reply(
                    out,
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(tx) = self.tx.as_mut() else {
                    return Err(amqp_error!(
                        PreconditionFailed,
                        "channel is not transactional"
                    ));
                };
                let work = std::mem::take(tx);
                self.committing = Some(Committing {
                    publishes: work.publishes.into_iter(),
                    settles: work.settles,
                    sync: None,
                    write_failed: false,
                    refused: false,
                });
                return Ok(match self.continue_commit(s, out)? {
                    true => After::Nothing,
                    false => After::Continues,
                });
            }
            tx::AMQPMethod::Rollback(_) => {
                let Some(tx) = self.tx.as_mut() else {
                    return Err(amqp_error!(
                        PreconditionFailed,
                        "channel is not transactional"
                    ));
                };
                let work = std::mem::take(tx);
                self.roll_back(work);
                reply(
                    out,
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
            }
            _ => return Err(amqp_error!(CommandInvalid, "unimplemented method")),
        }
        Ok(After::Nothing)
    }

    /// Whether a tx.commit or a queue.purge is under way.
    pub fn is_continuing(&self) -> bool {
        self.committing.is_some() || self.purging.is_some()
    }

    /// Takes the next step of the tx.commit or queue.purge under way. Returns whether it
    /// is done.
    pub fn continue_work(&mut self, s: &Session, out: &mut Output) -> AmqpResult<bool> {
        // A channel has one or the other: its input is paused while either is under way.
        if self.purging.is_some() {
            return Ok(self.continue_purge(out) && self.committing.is_none());
        }
        self.continue_commit(s, out)
    }

    /// Enqueues the next [`COMMIT_BATCH`] publishes of the commit under way; after the last,
    /// applies its settlements and answers. Returns whether the commit is done.
    fn continue_commit(&mut self, s: &Session, out: &mut Output) -> AmqpResult<bool> {
        let Some(mut c) = self.committing.take() else {
            return Ok(true);
        };
        for p in c.publishes.by_ref().take(COMMIT_BATCH) {
            let outcome = self.commit_publish(s, out, p);
            c.write_failed |= outcome.write_failed;
            c.refused |= outcome.failed;
            if let Some(e) = outcome.sync {
                c.sync = Some(c.sync.map_or(e, |x| x.max(e)));
            }
        }
        if c.publishes.len() > 0 {
            self.committing = Some(c);
            return Ok(false);
        }
        for settle in c.settles {
            match settle {
                TxSettle::Ack(list) => self.settle(list, Verdict::Ack),
                TxSettle::Reject(list, requeue) => self.settle(list, Verdict::of(false, requeue)),
            }
        }
        if c.write_failed {
            // Commit-ok would promise messages that no queue holds.
            return Err(amqp_error!(
                InternalError,
                "the data directory refused a write; the transaction's publishes were not all enqueued"
            )
            .on_method(90, 20));
        }
        if c.refused {
            // Same as RabbitMQ: a queue refused a message (full, with reject-publish), so
            // the transaction did not complete; commit-ok would say it did.
            return Err(amqp_error!(PreconditionFailed, "partial tx completion").on_method(90, 20));
        }
        // Commit-ok promises the persistent messages are on disk.
        out.hold_until_synced(c.sync);
        reply(
            out,
            self.id,
            AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        );
        Ok(true)
    }

    /// Stops a commit under way because the channel closes: the publishes not yet enqueued
    /// are dropped, and the deliveries it acked or rejected are unacknowledged again (the
    /// client saw no commit-ok). The batches enqueued before stay: unlike RabbitMQ's
    /// commit, which runs in one step, a commit cut short by a closing channel can leave
    /// part of its publishes delivered, which a client that retries without commit-ok
    /// sees as duplicates.
    pub(super) fn abandon_commit(&mut self) {
        if let Some(c) = self.committing.take() {
            self.roll_back(Transaction {
                settles: c.settles,
                ..Transaction::default()
            });
        }
    }

    /// Undoes a transaction: its publishes are dropped, and the deliveries it acked or
    /// rejected are unacknowledged again, in tag order. Also what closing a channel does to
    /// an open transaction, as in RabbitMQ.
    pub(super) fn roll_back(&mut self, work: Transaction) {
        let mut back: Vec<Unacked> = Vec::new();
        for settle in work.settles {
            match settle {
                TxSettle::Ack(list) | TxSettle::Reject(list, _) => back.extend(list),
            }
        }
        self.work += back.len();
        if !back.is_empty() {
            // Their consumer timeouts run on: a deadline that passed while the transaction
            // held them is due now (a check that found nothing unacked stopped looking).
            if let Some(at) = back
                .iter()
                .filter_map(|u| u.deadline)
                .map(|(at, _)| at)
                .min()
            {
                self.timeout_check = Some(self.timeout_check.map_or(at, |t| t.min(at)));
            }
            self.unacked.put_back(back);
        }
    }

    /// Enqueues a publish held by a transaction into the queues it was routed to when
    /// published (a queue deleted since takes nothing, and a mandatory message that reached
    /// none comes back).
    pub(super) fn commit_publish(
        &mut self,
        s: &Session,
        out: &mut Output,
        p: TxPublish,
    ) -> Outcome {
        let destination = Destination {
            exchange: &p.target,
            cached: None,
            exchange_name: &p.exchange,
            routing_key: &p.routing_key,
            extra_keys: &p.routing_keys[1..],
            headers: None,
            mandatory: p.mandatory,
            routed_at_publish: true,
        };
        self.hand_to_queues(s, out, destination, p.route, &p.message)
    }
}
