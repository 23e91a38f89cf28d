//! The basic class's cold path: qos, consume (including the direct reply-to pseudo-queue),
//! cancel, get and recover.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use bytes::Bytes;

use super::{Channel, ChannelConsumer, ReplyConsumer, Unacked, reply};
use crate::amqp::naming;
use crate::amqp::output::Output;
use crate::amqp::session::{Session, Share};
use crate::amqp_error;
use crate::auth::access::{Permission, Resource};
use crate::broker::arguments::queue_desc;
use crate::broker::budget::Refused;
use crate::broker::queue::consumer::Consumer;
use crate::broker::queue::delivery::Requeue;
use crate::broker::queue::settings::QueueType;
use crate::broker::reply_to::{self, ReplySink};
use crate::protocol::basic::write_get_ok;
use crate::protocol::error::AmqpResult;
use crate::protocol::table;

static NEXT_CONSUMER_ID: AtomicU64 = AtomicU64::new(1);

/// The id the next consumer will have (a later one's is larger).
pub(super) fn next_consumer_id() -> crate::broker::queue::delivery::ConsumerId {
    NEXT_CONSUMER_ID.load(Ordering::Relaxed)
}

impl Channel {
    pub(super) fn basic_method(
        &mut self,
        s: &Session,
        out: &mut Output,
        method: basic::AMQPMethod,
    ) -> AmqpResult<()> {
        let id = self.id;
        match method {
            basic::AMQPMethod::Qos(q) => {
                // prefetch_size is checked by the connection: amq-protocol does not keep it.
                let before = self.prefetch.global_limit();
                let info = &self.stats.info;
                if q.global {
                    self.prefetch.set_global_limit(q.prefetch_count as u32);
                    info.global_prefetch_count
                        .store(q.prefetch_count as u32, Ordering::Relaxed);
                } else {
                    // Like RabbitMQ, a per-consumer qos also lifts any channel-wide limit.
                    self.consumer_prefetch = q.prefetch_count as u32;
                    self.prefetch.set_global_limit(0);
                    info.prefetch_count
                        .store(q.prefetch_count as u32, Ordering::Relaxed);
                    info.global_prefetch_count.store(0, Ordering::Relaxed);
                }
                reply(
                    out,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
                // Queues are asked again only when the channel-wide credit grew and some
                // queue went without it, as RabbitMQ's limiter tells its queues only when a
                // blocked channel is unblocked: a stream of basic.qos on a channel consuming
                // from 65,536 queues asked every one of them at each frame.
                let after = self.prefetch.global_limit();
                let widened = before != 0 && (after == 0 || after > before);
                if widened && self.prefetch.take_starved() {
                    self.kick_in_turn();
                }
            }
            basic::AMQPMethod::Consume(c) => self.consume(s, out, c)?,
            basic::AMQPMethod::Cancel(c) => self.cancel(s, out, c),
            basic::AMQPMethod::Get(g) => self.get(s, out, g)?,
            basic::AMQPMethod::Recover(r) => {
                if !r.requeue {
                    return Err(amqp_error!(NotImplemented, "requeue=false"));
                }
                reply(
                    out,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
                self.requeue_all(Requeue::Refused);
            }
            basic::AMQPMethod::RecoverAsync(r) => {
                if !r.requeue {
                    return Err(amqp_error!(NotImplemented, "requeue=false"));
                }
                self.requeue_all(Requeue::Refused);
            }
            _ => return Err(amqp_error!(CommandInvalid, "unimplemented method")),
        }
        Ok(())
    }

    pub(super) fn consume(
        &mut self,
        s: &Session,
        out: &mut Output,
        c: basic::Consume,
    ) -> AmqpResult<()> {
        let name = self.queue_name(c.queue.as_str())?;
        let tag = if c.consumer_tag.as_str().is_empty() {
            naming::consumer_tag()
        } else {
            c.consumer_tag.to_string()
        };
        let tag_bytes = Bytes::from(tag.clone().into_bytes());
        if self.consumers.contains_key(&tag_bytes)
            || self
                .reply_consumer
                .as_ref()
                .is_some_and(|r| r.tag == tag_bytes)
        {
            return Err(amqp_error!(
                NotAllowed,
                "attempt to reuse consumer tag '{}'",
                tag
            ));
        }
        if name == reply_to::PSEUDO_QUEUE {
            return self.consume_replies(s, out, c, tag, tag_bytes);
        }
        s.authorize(Resource::Queue(&name), Permission::Read)?;
        let max = s.broker.config.limits.max_consumers_per_channel;
        if self.consumers.len() >= max {
            // Same as RabbitMQ 3.12's `consumer_max_per_channel`: a connection error.
            return Err(amqp_error!(
                NotAllowed,
                "reached maximum ({}) of consumers per channel",
                max
            ));
        }
        let q = s.vhost.usable_queue(&name, s.connection_id)?;
        let priority = consumer_priority(&c, &queue_desc(&q.name, &s.vhost.name))?;
        if self.prefetch.global_limit() > 0 && q.settings().queue_type == QueueType::Quorum {
            // Same as RabbitMQ 3.10 (a connection error), for a channel-wide prefetch set
            // before the consume; one set after it is accepted, and shared as usual.
            return Err(amqp_error!(
                NotImplemented,
                "{} does not support global qos",
                queue_desc(&q.name, &s.vhost.name)
            ));
        }
        let (arguments, share) = consumer_share(s, &tag_bytes, &c.arguments)?;
        let consumer_id = NEXT_CONSUMER_ID.fetch_add(1, Ordering::Relaxed);
        // RabbitMQ 3.12's per-consumer and per-queue timeouts, else the broker's.
        let timeout_ms = table::get(&c.arguments, "x-consumer-timeout")
            .and_then(table::as_int)
            .and_then(|v| u64::try_from(v).ok())
            .or(q.settings().consumer_timeout_ms)
            .or(s.broker.config.limits.consumer_timeout_ms);
        self.consumers.insert(
            tag_bytes.clone(),
            ChannelConsumer {
                id: consumer_id,
                queue: q.clone(),
                timeout_ms,
                _share: share,
            },
        );
        let added = q.add_consumer(Consumer {
            id: consumer_id,
            tag: tag_bytes.clone(),
            channel: self.id,
            sink: s.outbox.clone(),
            channel_prefetch: self.prefetch.clone(),
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch_count: self.consumer_prefetch,
            in_flight: 0,
            priority,
            arguments,
            blocked: None,
            dead: false,
        });
        if let Err(e) = added {
            self.forget_consumer(&tag_bytes);
            return Err(e);
        }
        // Deliveries the queue just pushed wait in the outbox, which the connection drains
        // after this frame: consume-ok reaches the client first.
        if !c.nowait {
            reply(
                out,
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: ShortString::from(tag),
                })),
            );
        }
        Ok(())
    }

    /// `basic.consume` from `amq.rabbitmq.reply-to`: becomes this channel's reply consumer.
    pub(super) fn consume_replies(
        &mut self,
        s: &Session,
        out: &mut Output,
        c: basic::Consume,
        tag: String,
        tag_bytes: Bytes,
    ) -> AmqpResult<()> {
        if !c.no_ack {
            return Err(amqp_error!(
                PreconditionFailed,
                "reply consumer cannot acknowledge"
            ));
        }
        if self.reply_consumer.is_some() {
            return Err(amqp_error!(
                PreconditionFailed,
                "reply consumer already set"
            ));
        }
        let sink: Arc<dyn ReplySink> = s.outbox.clone();
        let key = s.broker.reply_consumers.register(sink, self.id);
        self.reply_consumer = Some(ReplyConsumer {
            tag: tag_bytes,
            key,
        });
        if !c.nowait {
            reply(
                out,
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: ShortString::from(tag),
                })),
            );
        }
        Ok(())
    }

    /// Takes consumer `tag` out of the channel's books, and out of the consumers waiting for
    /// its credit.
    pub(super) fn forget_consumer(&mut self, tag: &Bytes) -> Option<ChannelConsumer> {
        self.last_consumer = None;
        let gone = self.consumers.remove(tag)?;
        self.prefetch.forget_starved(gone.id);
        Some(gone)
    }

    /// basic.cancel: of a consumer, of the reply consumer, or of nothing (still cancel-ok).
    pub(super) fn cancel(&mut self, s: &Session, out: &mut Output, c: basic::Cancel) {
        let tag = Bytes::copy_from_slice(c.consumer_tag.as_str().as_bytes());
        let mut delete_queue = None;
        if self.reply_consumer.as_ref().is_some_and(|r| r.tag == tag) {
            if let Some(reply) = self.reply_consumer.take() {
                s.broker.reply_consumers.unregister(&reply.key);
            }
        } else if let Some(consumer) = self.forget_consumer(&tag) {
            // Forgotten again once out of its queue: a dispatch before that could still
            // mark it starved.
            let removed = consumer.queue.remove_consumer(consumer.id);
            self.prefetch.forget_starved(consumer.id);
            if removed.delete_queue {
                delete_queue = Some(consumer.queue);
            }
        }
        if !c.nowait {
            reply(
                out,
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                    consumer_tag: c.consumer_tag,
                })),
            );
        }
        if let Some(q) = delete_queue {
            s.vhost.remove_queue(&q);
        }
    }

    /// basic.get: the head message, or get-empty.
    pub(super) fn get(&mut self, s: &Session, out: &mut Output, g: basic::Get) -> AmqpResult<()> {
        let id = self.id;
        let name = self.queue_name(g.queue.as_str())?;
        s.authorize(Resource::Queue(&name), Permission::Read)?;
        let q = s.vhost.usable_queue(&name, s.connection_id)?;
        // The safety net consumers have (their credit stops at it) holds for gets too:
        // gets never acknowledged would otherwise pull a whole backlog into memory.
        let max = s.broker.config.limits.max_unacked_per_channel;
        if !g.no_ack && self.unacked.len() >= max as usize {
            return Err(amqp_error!(
                PreconditionFailed,
                "channel {} holds {} unacknowledged deliveries, the most one channel may (max_unacked_per_channel)",
                id,
                max
            ));
        }
        let Some((entry, remaining)) = q.get(g.no_ack) else {
            crate::broker::stats::bump(&self.stats.info.messages.get_empty, 1);
            reply(
                out,
                id,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            );
            return Ok(());
        };
        self.last_tag += 1;
        let tag = self.last_tag;
        let m = &entry.message;
        let counters = &self.stats.info.messages;
        let counter = match g.no_ack {
            true => &counters.get_no_ack,
            false => &counters.get,
        };
        crate::broker::stats::bump(counter, 1);
        if entry.redelivered {
            crate::broker::stats::bump(&counters.redeliver, 1);
        }
        write_get_ok(
            out.buf(),
            id,
            tag,
            entry.redelivered,
            &m.exchange,
            &m.routing_key,
            remaining,
        );
        out.content(id, &m.properties, &m.body, s.frame_max);
        if !g.no_ack {
            let timeout_ms =
                q.settings()
                    .consumer_timeout_ms
                    .or(s.broker.config.limits.consumer_timeout_ms);
            let deadline = self.deadline(Instant::now(), timeout_ms);
            self.unacked.push_back(Unacked {
                tag,
                queue: q,
                consumer: None,
                entry,
                deadline,
            });
        }
        Ok(())
    }
}

/// A consumer's `x-priority` argument, checked as RabbitMQ checks it; also refuses a
/// non-boolean `x-cancel-on-ha-failover`.
fn consumer_priority(c: &basic::Consume, desc: &str) -> AmqpResult<i64> {
    let priority = match table::get(&c.arguments, "x-priority") {
        None => 0,
        Some(v) => table::as_int(v)
            .filter(|_| !matches!(v, AMQPValue::Timestamp(_)))
            .ok_or_else(|| {
                amqp_error!(
                    PreconditionFailed,
                    "invalid arg 'x-priority' for {}: \"expected integer, got {}\"",
                    desc,
                    table::type_name(v)
                )
            })?,
    };
    if let Some(v) = table::get(&c.arguments, "x-cancel-on-ha-failover")
        && table::as_bool(v).is_none()
    {
        return Err(amqp_error!(
            PreconditionFailed,
            "invalid arg 'x-cancel-on-ha-failover' for {}: {{unacceptable_type,{}}}",
            desc,
            table::type_name(v)
        ));
    }
    Ok(priority)
}

/// What a consumer costs besides its tag and arguments: its record in the queue and in its
/// channel, and their map entries.
const CONSUMER_RECORD_BYTES: usize =
    size_of::<Consumer>() + size_of::<ChannelConsumer>() + 2 * size_of::<Bytes>() + 64;

/// A new consumer's arguments as they are kept (encoded), and its share of its
/// connection's consumer budget; past the budget, a connection error naming the limit, as
/// for `max_consumers_per_channel`.
fn consumer_share(s: &Session, tag: &Bytes, arguments: &FieldTable) -> AmqpResult<(Bytes, Share)> {
    let arguments = match arguments.inner().is_empty() {
        true => Bytes::new(),
        // Exactly sized: `Bytes` keeps a vector's whole allocation, which its growth may
        // have made up to twice what is counted.
        false => Bytes::from(table::encode(arguments).into_boxed_slice()),
    };
    let bytes = CONSUMER_RECORD_BYTES + tag.len() + arguments.len();
    let share = s.consumer_budget.take(bytes).map_err(|refused| match refused {
        Refused::Connection(limit) => amqp_error!(
            NotAllowed,
            "consumers of this connection would hold more than {} bytes (connection_consumer_bytes)",
            limit
        ),
        Refused::Broker(limit) => amqp_error!(
            NotAllowed,
            "consumers of this broker would hold more than {} bytes (broker_consumer_bytes)",
            limit
        ),
    })?;
    Ok((arguments, share))
}
