//! Transactions: publishes and settlements held back until tx.commit, dropped (settlements
//! put back) on tx.rollback.

use amq_protocol::protocol::{AMQPClass, tx};

use super::publish::{Destination, Outcome};
use super::settle::Verdict;
use super::{Channel, Transaction, TxPublish, TxSettle, Unacked, reply};
use crate::amqp::output::Output;
use crate::amqp::session::Session;
use crate::amqp_error;
use crate::protocol::error::AmqpResult;

impl Channel {
    pub(super) fn tx_method(
        &mut self,
        s: &Session,
        out: &mut Output,
        method: tx::AMQPMethod,
    ) -> AmqpResult<()> {
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
                let mut sync: Option<u64> = None;
                let mut write_failed = false;
                let mut refused = false;
                for p in work.publishes {
                    let outcome = self.commit_publish(s, out, p);
                    write_failed |= outcome.write_failed;
                    refused |= outcome.failed;
                    if let Some(e) = outcome.sync {
                        sync = Some(sync.map_or(e, |x: u64| x.max(e)));
                    }
                }
                for settle in work.settles {
                    match settle {
                        TxSettle::Ack(list) => self.settle(list, Verdict::Ack),
                        TxSettle::Reject(list, requeue) => {
                            self.settle(list, Verdict::of(false, requeue))
                        }
                    }
                }
                if write_failed {
                    // Commit-ok would promise messages that no queue holds.
                    return Err(amqp_error!(
                        InternalError,
                        "the data directory refused a write; the transaction's publishes were not all enqueued"
                    ));
                }
                if refused {
                    // Same as RabbitMQ: a queue refused a message (full, with reject-publish),
                    // so the transaction did not complete; commit-ok would say it did.
                    return Err(amqp_error!(PreconditionFailed, "partial tx completion"));
                }
                // Commit-ok promises the persistent messages are on disk.
                out.hold_until_synced(sync);
                reply(
                    out,
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                );
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
        Ok(())
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
            back.extend(self.unacked.drain(..));
            back.sort_by_key(|u| u.tag);
            self.unacked = back.into();
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
            cached: Some(p.route),
            exchange_name: &p.exchange,
            routing_key: &p.routing_key,
            extra_keys: &p.routing_keys[1..],
            headers: None,
            mandatory: p.mandatory,
            routed_at_publish: true,
        };
        self.hand_to_queues(s, out, destination, &p.message)
    }
}
