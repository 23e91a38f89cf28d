//! A channel: the unit of work inside a connection. It assembles published messages from their
//! frames, runs every channel method, tracks the deliveries its consumers have not
//! acknowledged and numbers publishes for confirms.
//!
//! A channel belongs to its connection's task and is never shared. Queues reach it only
//! through the connection's outbox; the channel reaches queues by calling them directly.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, exchange, queue, tx};
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use bytes::{Bytes, BytesMut};

use crate::amqp_error;
use crate::confirm::Confirms;
use crate::consumer::{Consumer, ConsumerId};
use crate::direct_reply_to;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::Exchange;
use crate::message::Message;
use crate::naming;
use crate::outbox::Delivery;
use crate::output::Output;
use crate::prefetch::ChannelPrefetch;
use crate::protocol::basic::{
    ContentHeader, Publish, Settle, write_deliver, write_get_ok, write_return,
};
use crate::protocol::method::write_method;
use crate::protocol::properties;
use crate::protocol::table;
use crate::queue::{Enqueued, Queue, QueueEntry, Settled, Unblock};
use crate::session::Session;
use crate::vhost::{ExchangeDeclare, QueueDeclare};

static NEXT_CONSUMER_ID: AtomicU64 = AtomicU64::new(1);

/// Routes remembered per channel; publishers usually repeat a few exchange/key pairs.
const ROUTE_CACHE_ENTRIES: usize = 64;

/// Where a channel is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    Open,
    /// The broker sent Channel.Close and waits for Close-Ok; everything else is ignored.
    Closing,
}

/// A consumer as its channel knows it.
#[derive(Debug)]
struct ChannelConsumer {
    id: ConsumerId,
    queue: Arc<Queue>,
    /// How long its deliveries may stay unacknowledged.
    timeout_ms: Option<u64>,
}

/// A delivery the client has not settled yet.
#[derive(Debug)]
struct Unacked {
    tag: u64,
    queue: Arc<Queue>,
    /// The consumer it went to; None for basic.get.
    consumer: Option<ConsumerId>,
    entry: QueueEntry,
    /// When the channel is closed if this is still unacknowledged, and the timeout (ms)
    /// that deadline came from.
    deadline: Option<(Instant, u64)>,
}

/// A message being assembled from its frames.
#[derive(Debug)]
struct Content {
    publish: Publish,
    header: Option<ContentHeader>,
    body: Body,
    received: u64,
}

#[derive(Debug)]
enum Body {
    Empty,
    /// A body that came in one frame: a slice of the read buffer, no copy.
    One(Bytes),
    /// A body in several frames, copied together.
    Many(BytesMut),
}

/// A publish held back by a transaction until commit.
#[derive(Debug)]
struct TxPublish {
    exchange: Bytes,
    routing_key: Bytes,
    mandatory: bool,
    routing_keys: Vec<Bytes>,
    message: Arc<Message>,
    headers: Option<FieldTable>,
}

/// Settlements held back by a transaction until commit.
#[derive(Debug)]
enum TxSettle {
    Ack(Vec<Unacked>),
    Reject(Vec<Unacked>, bool),
}

#[derive(Debug, Default)]
struct Transaction {
    publishes: Vec<TxPublish>,
    settles: Vec<TxSettle>,
}

/// Routes remembered by a channel, valid while the vhost's topology version is unchanged.
#[derive(Debug, Default)]
struct RouteCache {
    version: u64,
    routes: HashMap<(Bytes, Bytes), CachedRoute>,
}

#[derive(Debug)]
struct CachedRoute {
    exchange: Arc<Exchange>,
    /// None when the route depends on message headers and must be worked out each time.
    queues: Option<Arc<[Arc<Queue>]>>,
}

/// The queues a message goes to.
type Route = Arc<[Arc<Queue>]>;

/// Settlements for one queue, in delivery order.
type QueueSettlements = (Arc<Queue>, Vec<(Settled, QueueEntry)>);

/// This channel's consumer of the direct reply-to pseudo-queue.
#[derive(Debug)]
struct ReplyConsumer {
    tag: Bytes,
    /// Its key in the broker's map; its reply name is `amq.rabbitmq.reply-to.<key>`.
    key: String,
}

/// A channel.
#[derive(Debug)]
pub struct Channel {
    pub id: u16,
    pub state: ChannelState,
    content: Option<Content>,
    consumers: HashMap<Bytes, ChannelConsumer>,
    /// Deliveries awaiting settlement, ordered by delivery tag.
    unacked: VecDeque<Unacked>,
    /// The last delivery tag used.
    last_tag: u64,
    /// Channel-wide credit, shared with the queues this channel consumes from.
    prefetch: Arc<ChannelPrefetch>,
    /// Prefetch given to consumers created from now on (basic.qos global=false).
    consumer_prefetch: u32,
    confirms: Option<Confirms>,
    tx: Option<Transaction>,
    /// The queue most recently declared on this channel, used for empty queue names.
    last_queue: Option<String>,
    routes: RouteCache,
    /// At most one direct reply-to consumer per channel, as in RabbitMQ.
    reply_consumer: Option<ReplyConsumer>,
    /// No unacknowledged delivery times out before this (the earliest deadline when it was
    /// last worked out; acks since may have made it earlier than needed).
    timeout_check: Option<Instant>,
}

/// What a channel method asks the connection to do afterwards.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Nothing,
    /// The client closed the channel: it is cleaned up, send Close-Ok and forget it.
    Closed,
}

fn reply(out: &mut Output, channel: u16, method: AMQPClass) {
    write_method(out.buf(), channel, &method);
}

/// Strips CR and LF from a name, as RabbitMQ does for exchange and queue names.
fn strip_cr_lf(name: &str) -> String {
    name.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

impl Channel {
    pub fn new(id: u16, max_unacked: u32) -> Self {
        Channel {
            id,
            state: ChannelState::Open,
            content: None,
            consumers: HashMap::new(),
            unacked: VecDeque::new(),
            last_tag: 0,
            prefetch: Arc::new(ChannelPrefetch::new(max_unacked)),
            consumer_prefetch: 0,
            confirms: None,
            tx: None,
            last_queue: None,
            routes: RouteCache::default(),
            reply_consumer: None,
            timeout_check: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.state == ChannelState::Open
    }

    // ---- content assembly -----------------------------------------------------------------

    /// Refuses a method frame while a message's content is still expected.
    pub fn expect_method(&self) -> AmqpResult<()> {
        match &self.content {
            None => Ok(()),
            Some(c) if c.header.is_none() => Err(amqp_error!(
                UnexpectedFrame,
                "expected content header for class 60, got non content header frame instead"
            )
            .on_method(60, 40)),
            Some(_) => Err(amqp_error!(
                UnexpectedFrame,
                "expected content body, got non content body frame instead"
            )
            .on_method(60, 40)),
        }
    }

    /// basic.publish: remember it until its content has arrived.
    pub fn on_publish(&mut self, publish: Publish) -> AmqpResult<()> {
        self.expect_method()?;
        self.content = Some(Content {
            publish,
            header: None,
            body: Body::Empty,
            received: 0,
        });
        Ok(())
    }

    fn no_method() -> AmqpError {
        amqp_error!(
            UnexpectedFrame,
            "expected method frame, got non method frame instead"
        )
    }

    /// A content header frame.
    pub fn on_header(
        &mut self,
        s: &Session,
        out: &mut Output,
        header: ContentHeader,
    ) -> AmqpResult<()> {
        let Some(content) = self.content.as_mut() else {
            return Err(Self::no_method());
        };
        if content.header.is_some() {
            return Err(amqp_error!(
                UnexpectedFrame,
                "expected content body, got non content body frame instead"
            )
            .on_method(60, 40));
        }
        if header.weight != 0 {
            return Err(amqp_error!(
                UnexpectedFrame,
                "expected content header for class 60, got non content header frame instead"
            )
            .on_method(60, 40));
        }
        if header.class_id != 60 {
            return Err(amqp_error!(
                UnexpectedFrame,
                "expected content header for class 60, got one for class {} instead",
                header.class_id
            )
            .on_method(60, 40));
        }
        let max = s.broker.config.limits.max_message_size_bytes;
        if header.body_size > max {
            // RabbitMQ checks once the body is in; checking from the header spares the
            // memory. The body frames that follow are ignored by the closing channel.
            self.content = None;
            return Err(amqp_error!(
                PreconditionFailed,
                "message size {} is larger than configured max size {}",
                header.body_size,
                max
            )
            .on_method(60, 40));
        }
        let complete = header.body_size == 0;
        content.header = Some(header);
        if complete {
            return self.complete_publish(s, out);
        }
        Ok(())
    }

    /// A content body frame.
    pub fn on_body(&mut self, s: &Session, out: &mut Output, chunk: Bytes) -> AmqpResult<()> {
        let Some(content) = self.content.as_mut() else {
            return Err(Self::no_method());
        };
        let Some(header) = &content.header else {
            return Err(amqp_error!(
                UnexpectedFrame,
                "expected content header for class 60, got non content header frame instead"
            )
            .on_method(60, 40));
        };
        let size = header.body_size;
        let before = content.received;
        content.received += chunk.len() as u64;
        if content.received > size {
            // Like RabbitMQ, a body longer than announced never completes: the next method
            // frame is refused. Nothing more is buffered meanwhile.
            content.body = Body::Empty;
            return Ok(());
        }
        content.body = match std::mem::replace(&mut content.body, Body::Empty) {
            Body::Empty if content.received == size => Body::One(chunk),
            Body::Empty => {
                let mut buf = BytesMut::with_capacity(size as usize);
                buf.extend_from_slice(&chunk);
                Body::Many(buf)
            }
            Body::One(first) => {
                let mut buf = BytesMut::with_capacity(size as usize);
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&chunk);
                Body::Many(buf)
            }
            Body::Many(mut buf) => {
                buf.extend_from_slice(&chunk);
                Body::Many(buf)
            }
        };
        let _ = before;
        if content.received == size {
            return self.complete_publish(s, out);
        }
        Ok(())
    }

    // ---- publishing -----------------------------------------------------------------------

    fn complete_publish(&mut self, s: &Session, out: &mut Output) -> AmqpResult<()> {
        let Some(content) = self.content.take() else {
            return Ok(());
        };
        let Some(header) = content.header else {
            return Ok(());
        };
        let body = match content.body {
            Body::Empty => Bytes::new(),
            Body::One(b) => b,
            Body::Many(b) => b.freeze(),
        };
        self.publish(s, out, content.publish, header.properties, body)
            .map_err(|e| e.on_method(60, 40))
    }

    fn publish(
        &mut self,
        s: &Session,
        out: &mut Output,
        publish: Publish,
        mut properties: Bytes,
        body: Bytes,
    ) -> AmqpResult<()> {
        if publish.immediate {
            return Err(amqp_error!(NotImplemented, "immediate=true"));
        }
        let (exchange, cached) = self.resolve(s, &publish.exchange, &publish.routing_key)?;
        if exchange.internal {
            return Err(amqp_error!(
                AccessRefused,
                "cannot publish to internal exchange '{}' in vhost '{}'",
                exchange.name,
                s.vhost.name
            ));
        }
        let mut summary = properties::scan(&properties)
            .map_err(|_| AmqpError::bare(crate::error::ReplyCode::InternalError))?;
        if let Some(range) = &summary.reply_to
            && &properties[range.clone()] == direct_reply_to::PSEUDO_QUEUE.as_bytes()
        {
            // A request expecting a direct reply: name this channel's reply consumer.
            let Some(consumer) = &self.reply_consumer else {
                return Err(amqp_error!(
                    PreconditionFailed,
                    "fast reply consumer does not exist"
                ));
            };
            let name = format!("{}{}", direct_reply_to::PREFIX, consumer.key);
            properties = properties::replace_reply_to(&properties, &summary, &name)
                .ok_or_else(|| AmqpError::bare(crate::error::ReplyCode::InternalError))?;
            summary = properties::scan(&properties)
                .map_err(|_| AmqpError::bare(crate::error::ReplyCode::InternalError))?;
        }
        if let Some(range) = &summary.user_id {
            let user_id = &properties[range.clone()];
            if user_id != s.user.name.as_bytes() {
                return Err(amqp_error!(
                    PreconditionFailed,
                    "user_id property set to '{}' but authenticated user was '{}'",
                    String::from_utf8_lossy(user_id),
                    s.user.name
                ));
            }
        }
        if let Some(range) = &summary.expiration {
            check_expiration(&properties[range.clone()])?;
        }
        // CC and BCC headers add routing keys; BCC is removed from the message.
        let mut headers = None;
        let mut extra_keys: Vec<Bytes> = Vec::new();
        if let Some(range) = &summary.headers {
            let table = properties::decode_headers(&properties, range)
                .ok_or_else(|| AmqpError::bare(crate::error::ReplyCode::InternalError))?;
            let (cc, bcc) = (table::get(&table, "CC"), table::get(&table, "BCC"));
            if cc.is_some() || bcc.is_some() {
                for (name, value) in [("CC", cc), ("BCC", bcc)] {
                    match value {
                        None => {}
                        Some(AMQPValue::FieldArray(keys)) => {
                            for k in keys.as_slice() {
                                if let AMQPValue::LongString(k) = k {
                                    extra_keys.push(Bytes::copy_from_slice(k.as_bytes()));
                                }
                            }
                        }
                        Some(other) => {
                            return Err(amqp_error!(
                                PreconditionFailed,
                                "invalid message: {{unacceptable_type_in_header,\"{}\",{}}}",
                                name,
                                table::type_name(other)
                            ));
                        }
                    }
                }
                if bcc.is_some() {
                    let mut stripped = FieldTable::default();
                    for (k, v) in table.inner() {
                        if k.as_str() != "BCC" {
                            stripped.insert(k.clone(), v.clone());
                        }
                    }
                    properties = properties::replace_headers(&properties, &summary, &stripped)
                        .ok_or_else(|| AmqpError::bare(crate::error::ReplyCode::InternalError))?;
                    headers = Some(stripped);
                } else {
                    headers = Some(table);
                }
            } else {
                headers = Some(table);
            }
        }
        let summary = if summary.headers.is_some() && headers.is_some() {
            properties::scan(&properties)
                .map_err(|_| AmqpError::bare(crate::error::ReplyCode::InternalError))?
        } else {
            summary
        };
        let mut message = Message::new(
            publish.exchange.clone(),
            publish.routing_key.clone(),
            properties,
            body,
            &summary,
        );
        if !extra_keys.is_empty() {
            message.extra_routing_keys = Some(extra_keys.clone().into());
        }
        let message = Arc::new(message);
        if let Some(tx) = self.tx.as_mut() {
            let mut routing_keys = vec![publish.routing_key.clone()];
            routing_keys.extend(extra_keys);
            tx.publishes.push(TxPublish {
                exchange: publish.exchange,
                routing_key: publish.routing_key,
                mandatory: publish.mandatory,
                routing_keys,
                message,
                headers,
            });
            return Ok(());
        }
        let confirm_tag = self.confirms.as_mut().map(Confirms::next_tag);
        let queues = match cached {
            Some(queues) if extra_keys.is_empty() => queues,
            _ => self.route(
                s,
                &exchange,
                &publish.exchange,
                &publish.routing_key,
                &extra_keys,
                headers,
            ),
        };
        let outcome = enqueue(&queues, &message);
        direct_replies(
            s,
            &publish.exchange,
            &publish.routing_key,
            &extra_keys,
            &message,
        );
        if !outcome.routed && publish.mandatory {
            write_return(
                out.buf(),
                self.id,
                312,
                "NO_ROUTE",
                &publish.exchange,
                &publish.routing_key,
            );
            out.content(self.id, &message.properties, &message.body, s.frame_max);
        }
        if let (Some(confirms), Some(tag)) = (self.confirms.as_mut(), confirm_tag) {
            if outcome.failed {
                confirms.nack(tag);
            } else if let Some(epoch) = outcome.sync {
                // A persistent message on a durable queue: confirmed once it is on disk.
                confirms.hold(tag, epoch);
            } else {
                confirms.ack(tag);
            }
        }
        Ok(())
    }

    /// Finds the exchange a publish names, and the queues it routes to if the channel has
    /// routed the same exchange and key since the topology last changed.
    fn resolve(
        &mut self,
        s: &Session,
        exchange: &Bytes,
        routing_key: &Bytes,
    ) -> AmqpResult<(Arc<Exchange>, Option<Route>)> {
        let version = s.vhost.version();
        if self.routes.version != version {
            self.routes.routes.clear();
            self.routes.version = version;
        }
        if let Some(hit) = self
            .routes
            .routes
            .get(&(exchange.clone(), routing_key.clone()))
        {
            return Ok((hit.exchange.clone(), hit.queues.clone()));
        }
        let name = std::str::from_utf8(exchange).unwrap_or("\u{fffd}");
        let found = s.vhost.exchange(name).ok_or_else(|| {
            amqp_error!(
                NotFound,
                "no exchange '{}' in vhost '{}'",
                name,
                s.vhost.name
            )
        })?;
        Ok((found, None))
    }

    /// Routes a message and remembers the result when it does not depend on the message's
    /// headers or CC/BCC keys.
    fn route(
        &mut self,
        s: &Session,
        exchange: &Arc<Exchange>,
        exchange_key: &Bytes,
        routing_key: &Bytes,
        extra_keys: &[Bytes],
        headers: Option<FieldTable>,
    ) -> Arc<[Arc<Queue>]> {
        let mut keys: Vec<&[u8]> = Vec::with_capacity(1 + extra_keys.len());
        keys.push(routing_key);
        keys.extend(extra_keys.iter().map(|k| &k[..]));
        let mut headers = headers;
        let mut found = Vec::new();
        let cacheable = s
            .vhost
            .route(exchange, &keys, &mut || headers.take(), &mut found);
        let found: Arc<[Arc<Queue>]> = found.into();
        if extra_keys.is_empty() {
            if self.routes.routes.len() >= ROUTE_CACHE_ENTRIES {
                self.routes.routes.clear();
            }
            self.routes.routes.insert(
                (exchange_key.clone(), routing_key.clone()),
                CachedRoute {
                    exchange: exchange.clone(),
                    queues: cacheable.then(|| found.clone()),
                },
            );
        }
        found
    }

    /// Writes the confirms resolved since the last call, including publishes whose
    /// messages the store has now synced.
    pub fn flush_confirms(&mut self, out: &mut Output, synced: u64) {
        if let Some(c) = self.confirms.as_mut() {
            c.release_synced(synced);
            c.flush(out, self.id);
        }
    }

    /// Whether confirms wait for the store to sync.
    pub fn waiting_for_sync(&self) -> bool {
        self.confirms
            .as_ref()
            .is_some_and(Confirms::waiting_for_sync)
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
        let timeout_ms = match self.consumers.get(&d.consumer_tag) {
            Some(c) if c.id == d.consumer_id => c.timeout_ms,
            _ => return Err(d),
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
        if !d.no_ack {
            let deadline = self.deadline(now, timeout_ms);
            self.unacked.push_back(Unacked {
                tag,
                queue: d.queue,
                consumer: Some(d.consumer_id),
                entry: d.entry,
                deadline,
            });
        }
        Ok(size)
    }

    /// The deadline of a delivery made `now` under `timeout_ms`, noted for the timer.
    fn deadline(&mut self, now: Instant, timeout_ms: Option<u64>) -> Option<(Instant, u64)> {
        let ms = timeout_ms?;
        let at = now + std::time::Duration::from_millis(ms);
        if self.timeout_check.is_none_or(|t| at < t) {
            self.timeout_check = Some(at);
        }
        Some((at, ms))
    }

    /// When the connection should call [`Channel::check_timeouts`].
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
        for u in &self.unacked {
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
        self.timeout_check = next;
        None
    }

    /// A consumer's queue was deleted. Returns true if the client should hear of it.
    pub fn consumer_cancelled(&mut self, tag: &Bytes) -> bool {
        self.consumers.remove(tag).is_some()
    }

    /// The channel's prefetch, to give back credit for deliveries that never went out.
    pub fn prefetch(&self) -> &Arc<ChannelPrefetch> {
        &self.prefetch
    }

    /// The queues this channel's consumers read from.
    pub fn consumed_queues(&self) -> Vec<Arc<Queue>> {
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        for c in self.consumers.values() {
            if !queues.iter().any(|q| Arc::ptr_eq(q, &c.queue)) {
                queues.push(c.queue.clone());
            }
        }
        queues
    }

    // ---- settlement -----------------------------------------------------------------------

    fn unknown_tag(tag: u64) -> AmqpError {
        amqp_error!(PreconditionFailed, "unknown delivery tag {}", tag)
    }

    /// Takes the deliveries an ack/nack/reject names, with RabbitMQ's rules: tag 0 with
    /// multiple means all; otherwise the tag itself must be outstanding.
    fn take_unacked(&mut self, tag: u64, multiple: bool) -> AmqpResult<Vec<Unacked>> {
        if multiple && tag == 0 {
            return Ok(self.unacked.drain(..).collect());
        }
        let Ok(index) = self.unacked.binary_search_by_key(&tag, |u| u.tag) else {
            return Err(Self::unknown_tag(tag));
        };
        if multiple {
            Ok(self.unacked.drain(..=index).collect())
        } else {
            Ok(self.unacked.remove(index).into_iter().collect())
        }
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
            tx.settles.push(if is_ack {
                TxSettle::Ack(taken)
            } else {
                TxSettle::Reject(taken, settle.requeue)
            });
            return Ok(());
        }
        if is_ack {
            self.settle(taken, None);
        } else {
            self.settle(taken, Some(settle.requeue));
        }
        Ok(())
    }

    /// Settles deliveries with their queues: `None` acks, `Some(true)` requeues,
    /// `Some(false)` discards.
    fn settle(&mut self, taken: Vec<Unacked>, reject: Option<bool>) {
        if taken.is_empty() {
            return;
        }
        let counted = taken.iter().filter(|u| u.consumer.is_some()).count() as u32;
        let channel_unblocked = self.prefetch.release(counted);
        let unblock = if channel_unblocked {
            Unblock::Channel(&self.prefetch)
        } else {
            Unblock::Nobody
        };
        // Group by queue, keeping delivery order within each queue.
        let mut groups: Vec<QueueSettlements> = Vec::new();
        for u in taken {
            let settled = Settled {
                consumer: u.consumer,
                seq: u.entry.seq,
                persisted: u.entry.persisted,
            };
            match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
                Some((_, list)) => list.push((settled, u.entry)),
                None => groups.push((u.queue, vec![(settled, u.entry)])),
            }
        }
        for (queue, list) in &groups {
            match reject {
                Some(true) => queue.requeue(list.iter().cloned(), unblock),
                Some(false) => queue.reject(list.iter().cloned(), unblock),
                None => queue.ack(list.iter().map(|(settled, _)| *settled), unblock),
            }
        }
        if channel_unblocked {
            // Channel-wide credit came back: every queue this channel consumes from may now
            // send again, not only those just settled.
            for q in self.consumed_queues() {
                if !groups.iter().any(|(g, _)| Arc::ptr_eq(g, &q)) {
                    q.kick(Unblock::Channel(&self.prefetch));
                }
            }
        }
    }

    /// Requeues everything unacknowledged (channel close, basic.recover).
    fn requeue_all(&mut self) {
        let all: Vec<Unacked> = self.unacked.drain(..).collect();
        self.settle(all, Some(true));
    }

    // ---- teardown -------------------------------------------------------------------------

    /// Releases everything the channel holds: consumers leave their queues (auto-delete
    /// queues that lose their last consumer are deleted) and unacknowledged deliveries go
    /// back to their queues. Called when the channel closes for any reason.
    pub fn shutdown(&mut self, s: &Session) {
        self.content = None;
        self.tx = None;
        if let Some(reply) = self.reply_consumer.take() {
            s.broker.reply_consumers.unregister(&reply.key);
        }
        for (_, c) in self.consumers.drain() {
            let removed = c.queue.remove_consumer(c.id);
            if removed.delete_queue {
                s.vhost.remove_queue(&c.queue);
            }
        }
        self.requeue_all();
        self.state = ChannelState::Closing;
    }

    // ---- the cold path --------------------------------------------------------------------

    /// Runs a channel method other than publish and ack/nack/reject.
    pub fn handle(
        &mut self,
        s: &Session,
        out: &mut Output,
        method: AMQPClass,
    ) -> AmqpResult<After> {
        let (class_id, method_id) = (method.get_amqp_class_id(), method.get_amqp_method_id());
        self.expect_method()?;
        self.dispatch(s, out, method)
            .map_err(|e| e.on_method(class_id, method_id))
    }

    fn dispatch(&mut self, s: &Session, out: &mut Output, method: AMQPClass) -> AmqpResult<After> {
        let id = self.id;
        match method {
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                self.shutdown(s);
                return Ok(After::Closed);
            }
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) => {
                if !flow.active {
                    return Err(amqp_error!(NotImplemented, "active=false"));
                }
                reply(
                    out,
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: true,
                    })),
                );
            }
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                return Err(amqp_error!(ChannelError, "second 'channel.open' seen"));
            }
            AMQPClass::Access(_) => {
                reply(
                    out,
                    id,
                    AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(
                        amq_protocol::protocol::access::RequestOk {},
                    )),
                );
            }
            AMQPClass::Exchange(m) => self.exchange_method(s, out, m)?,
            AMQPClass::Queue(m) => self.queue_method(s, out, m)?,
            AMQPClass::Basic(m) => self.basic_method(s, out, m)?,
            AMQPClass::Tx(m) => self.tx_method(s, out, m)?,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(select)) => {
                if self.tx.is_some() {
                    return Err(amqp_error!(
                        PreconditionFailed,
                        "cannot switch from tx to confirm mode"
                    ));
                }
                if self.confirms.is_none() {
                    self.confirms = Some(Confirms::default());
                }
                if !select.nowait {
                    reply(
                        out,
                        id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
            }
            _ => return Err(amqp_error!(CommandInvalid, "unimplemented method")),
        }
        Ok(After::Nothing)
    }

    fn exchange_method(
        &mut self,
        s: &Session,
        out: &mut Output,
        method: exchange::AMQPMethod,
    ) -> AmqpResult<()> {
        let id = self.id;
        match method {
            exchange::AMQPMethod::Declare(d) => {
                let declare = ExchangeDeclare {
                    name: strip_cr_lf(d.exchange.as_str()),
                    kind: d.kind.to_string(),
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments,
                };
                out.hold_until_synced(s.vhost.declare_exchange(&declare)?);
                if !d.nowait {
                    reply(
                        out,
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        )),
                    );
                }
            }
            exchange::AMQPMethod::Delete(d) => {
                let sync = s
                    .vhost
                    .delete_exchange(&strip_cr_lf(d.exchange.as_str()), d.if_unused)?;
                out.hold_until_synced(sync);
                if !d.nowait {
                    reply(
                        out,
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                    );
                }
            }
            exchange::AMQPMethod::Bind(b) => {
                let sync = s.vhost.bind_exchange(
                    &strip_cr_lf(b.destination.as_str()),
                    &strip_cr_lf(b.source.as_str()),
                    b.routing_key.as_str(),
                    &b.arguments,
                )?;
                out.hold_until_synced(sync);
                if !b.nowait {
                    reply(
                        out,
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                    );
                }
            }
            exchange::AMQPMethod::Unbind(b) => {
                let sync = s.vhost.unbind_exchange(
                    &strip_cr_lf(b.destination.as_str()),
                    &strip_cr_lf(b.source.as_str()),
                    b.routing_key.as_str(),
                    &b.arguments,
                )?;
                out.hold_until_synced(sync);
                if !b.nowait {
                    reply(
                        out,
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                    );
                }
            }
            _ => return Err(amqp_error!(CommandInvalid, "unimplemented method")),
        }
        Ok(())
    }

    /// Resolves an empty queue name to the channel's most recently declared queue.
    fn queue_name(&self, name: &str) -> AmqpResult<String> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| amqp_error!(NotFound, "no previously declared queue"))
    }

    fn queue_method(
        &mut self,
        s: &Session,
        out: &mut Output,
        method: queue::AMQPMethod,
    ) -> AmqpResult<()> {
        let id = self.id;
        match method {
            queue::AMQPMethod::Declare(d) => {
                let requested = strip_cr_lf(d.queue.as_str());
                if requested.starts_with(direct_reply_to::PSEUDO_QUEUE) {
                    // The pseudo-queue, or a live reply name, "exists" with one consumer
                    // whatever the flags say, as in RabbitMQ.
                    if requested != direct_reply_to::PSEUDO_QUEUE
                        && !s.broker.reply_consumers.is_live(&requested)
                    {
                        return Err(amqp_error!(
                            NotFound,
                            "no queue '{}' in vhost '{}'",
                            requested,
                            s.vhost.name
                        ));
                    }
                    self.last_queue = Some(requested.clone());
                    if !d.nowait {
                        reply(
                            out,
                            id,
                            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                                queue: ShortString::from(requested),
                                message_count: 0,
                                consumer_count: 1,
                            })),
                        );
                    }
                    return Ok(());
                }
                if !d.passive && requested.starts_with("amq.") {
                    return Err(amqp_error!(
                        AccessRefused,
                        "queue name '{}' contains reserved prefix 'amq.*'",
                        requested
                    ));
                }
                let name = if requested.is_empty() && !d.passive {
                    naming::queue_name()
                } else {
                    requested
                };
                let declare = QueueDeclare {
                    name,
                    passive: d.passive,
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments,
                };
                let (q, messages, consumers, sync) =
                    s.vhost.declare_queue(&declare, s.connection_id)?;
                self.last_queue = Some(q.name.clone());
                out.hold_until_synced(sync);
                if !d.nowait {
                    reply(
                        out,
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: ShortString::from(q.name.clone()),
                            message_count: messages,
                            consumer_count: consumers,
                        })),
                    );
                }
            }
            queue::AMQPMethod::Bind(b) => {
                let queue = self.queue_name(&strip_cr_lf(b.queue.as_str()))?;
                let routing_key =
                    if b.queue.as_str().is_empty() && b.routing_key.as_str().is_empty() {
                        queue.clone()
                    } else {
                        b.routing_key.to_string()
                    };
                let sync = s.vhost.bind_queue(
                    &queue,
                    &strip_cr_lf(b.exchange.as_str()),
                    &routing_key,
                    &b.arguments,
                    s.connection_id,
                )?;
                out.hold_until_synced(sync);
                if !b.nowait {
                    reply(
                        out,
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                    );
                }
            }
            queue::AMQPMethod::Unbind(b) => {
                let queue = self.queue_name(&strip_cr_lf(b.queue.as_str()))?;
                let routing_key =
                    if b.queue.as_str().is_empty() && b.routing_key.as_str().is_empty() {
                        queue.clone()
                    } else {
                        b.routing_key.to_string()
                    };
                let sync = s.vhost.unbind_queue(
                    &queue,
                    &strip_cr_lf(b.exchange.as_str()),
                    &routing_key,
                    &b.arguments,
                    s.connection_id,
                )?;
                out.hold_until_synced(sync);
                reply(
                    out,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                );
            }
            queue::AMQPMethod::Purge(p) => {
                let name = self.queue_name(p.queue.as_str())?;
                let q = s.vhost.usable_queue(&name, s.connection_id)?;
                let count = q.purge();
                if !p.nowait {
                    reply(
                        out,
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count: count,
                        })),
                    );
                }
            }
            queue::AMQPMethod::Delete(d) => {
                let name = self.queue_name(&strip_cr_lf(d.queue.as_str()))?;
                let (count, sync) =
                    s.vhost
                        .delete_queue(&name, d.if_unused, d.if_empty, s.connection_id)?;
                out.hold_until_synced(sync);
                if !d.nowait {
                    reply(
                        out,
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                            message_count: count,
                        })),
                    );
                }
            }
            _ => return Err(amqp_error!(CommandInvalid, "unimplemented method")),
        }
        Ok(())
    }

    fn basic_method(
        &mut self,
        s: &Session,
        out: &mut Output,
        method: basic::AMQPMethod,
    ) -> AmqpResult<()> {
        let id = self.id;
        match method {
            basic::AMQPMethod::Qos(q) => {
                // prefetch_size is checked by the connection: amq-protocol does not keep it.
                if q.global {
                    self.prefetch.set_global_limit(q.prefetch_count as u32);
                } else {
                    // Like RabbitMQ, a per-consumer qos also lifts any channel-wide limit.
                    self.consumer_prefetch = q.prefetch_count as u32;
                    self.prefetch.set_global_limit(0);
                }
                reply(
                    out,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
                for queue in self.consumed_queues() {
                    queue.kick(Unblock::Channel(&self.prefetch));
                }
            }
            basic::AMQPMethod::Consume(c) => self.consume(s, out, c)?,
            basic::AMQPMethod::Cancel(c) => {
                let tag = Bytes::copy_from_slice(c.consumer_tag.as_str().as_bytes());
                if self.reply_consumer.as_ref().is_some_and(|r| r.tag == tag) {
                    if let Some(reply) = self.reply_consumer.take() {
                        s.broker.reply_consumers.unregister(&reply.key);
                    }
                    if !c.nowait {
                        reply(
                            out,
                            id,
                            AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                                consumer_tag: c.consumer_tag,
                            })),
                        );
                    }
                } else if let Some(consumer) = self.consumers.remove(&tag) {
                    let removed = consumer.queue.remove_consumer(consumer.id);
                    if !c.nowait {
                        reply(
                            out,
                            id,
                            AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                                consumer_tag: c.consumer_tag.clone(),
                            })),
                        );
                    }
                    if removed.delete_queue {
                        s.vhost.remove_queue(&consumer.queue);
                    }
                } else if !c.nowait {
                    reply(
                        out,
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
            }
            basic::AMQPMethod::Get(g) => {
                let name = self.queue_name(g.queue.as_str())?;
                let q = s.vhost.usable_queue(&name, s.connection_id)?;
                match q.get(g.no_ack) {
                    Some((entry, remaining)) => {
                        self.last_tag += 1;
                        let tag = self.last_tag;
                        let m = &entry.message;
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
                            let timeout_ms = q.settings().consumer_timeout_ms.or(s
                                .broker
                                .config
                                .limits
                                .consumer_timeout_ms);
                            let deadline = self.deadline(Instant::now(), timeout_ms);
                            self.unacked.push_back(Unacked {
                                tag,
                                queue: q,
                                consumer: None,
                                entry,
                                deadline,
                            });
                        }
                    }
                    None => reply(
                        out,
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                    ),
                }
            }
            basic::AMQPMethod::Recover(r) => {
                if !r.requeue {
                    return Err(amqp_error!(NotImplemented, "requeue=false"));
                }
                reply(
                    out,
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
                self.requeue_all();
            }
            basic::AMQPMethod::RecoverAsync(r) => {
                if !r.requeue {
                    return Err(amqp_error!(NotImplemented, "requeue=false"));
                }
                self.requeue_all();
            }
            _ => return Err(amqp_error!(CommandInvalid, "unimplemented method")),
        }
        Ok(())
    }

    fn consume(&mut self, s: &Session, out: &mut Output, c: basic::Consume) -> AmqpResult<()> {
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
        if name == direct_reply_to::PSEUDO_QUEUE {
            return self.consume_replies(s, out, c, tag, tag_bytes);
        }
        if self.consumers.len() >= s.broker.config.limits.max_consumers_per_channel {
            return Err(amqp_error!(
                NotAllowed,
                "number of consumers on channel {} has reached the limit of {}",
                self.id,
                s.broker.config.limits.max_consumers_per_channel
            ));
        }
        let q = s.vhost.usable_queue(&name, s.connection_id)?;
        let desc = crate::arguments::queue_desc(&q.name, &s.vhost.name);
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
            },
        );
        let added = q.add_consumer(Consumer {
            id: consumer_id,
            tag: tag_bytes.clone(),
            channel: self.id,
            outbox: s.outbox.clone(),
            channel_prefetch: self.prefetch.clone(),
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch_count: self.consumer_prefetch,
            in_flight: 0,
            priority,
            arguments: c.arguments,
            blocked: false,
            dead: false,
        });
        if let Err(e) = added {
            self.consumers.remove(&tag_bytes);
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
    fn consume_replies(
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
        let key = s.broker.reply_consumers.register(s.outbox.clone(), self.id);
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

    fn tx_method(
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
                for p in work.publishes {
                    if let Some(e) = self.commit_publish(s, out, p) {
                        sync = Some(sync.map_or(e, |x: u64| x.max(e)));
                    }
                }
                for settle in work.settles {
                    match settle {
                        TxSettle::Ack(list) => self.settle(list, None),
                        TxSettle::Reject(list, requeue) => self.settle(list, Some(requeue)),
                    }
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
                // Acks taken back: those deliveries are unacknowledged again.
                let mut back: Vec<Unacked> = Vec::new();
                for settle in work.settles {
                    match settle {
                        TxSettle::Ack(list) | TxSettle::Reject(list, _) => back.extend(list),
                    }
                }
                if !back.is_empty() {
                    back.extend(self.unacked.drain(..));
                    back.sort_by_key(|u| u.tag);
                    self.unacked = back.into();
                }
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

    /// Routes a publish held by a transaction. Returns the epoch that makes it durable.
    fn commit_publish(&mut self, s: &Session, out: &mut Output, p: TxPublish) -> Option<u64> {
        let Ok((exchange, cached)) = self.resolve(s, &p.exchange, &p.routing_key) else {
            // The exchange was deleted before the commit: the message is unroutable.
            return None;
        };
        let extra: Vec<Bytes> = p.routing_keys[1..].to_vec();
        let queues = match cached {
            Some(queues) if extra.is_empty() => queues,
            _ => self.route(s, &exchange, &p.exchange, &p.routing_key, &extra, p.headers),
        };
        let outcome = enqueue(&queues, &p.message);
        direct_replies(s, &p.exchange, &p.routing_key, &extra, &p.message);
        if !outcome.routed && p.mandatory {
            write_return(
                out.buf(),
                self.id,
                312,
                "NO_ROUTE",
                &p.exchange,
                &p.routing_key,
            );
            out.content(self.id, &p.message.properties, &p.message.body, s.frame_max);
        }
        outcome.sync
    }
}

/// Hands a message published to the default exchange with a direct reply-to name as a
/// routing key (or CC/BCC key) to that reply consumer. As in RabbitMQ, this does not count
/// as routed: a mandatory reply is also returned.
fn direct_replies(
    s: &Session,
    exchange: &Bytes,
    routing_key: &Bytes,
    extra_keys: &[Bytes],
    message: &Arc<Message>,
) {
    if !exchange.is_empty() {
        return;
    }
    let prefix = direct_reply_to::PREFIX.as_bytes();
    for key in std::iter::once(routing_key).chain(extra_keys) {
        if key.starts_with(prefix) {
            s.broker.reply_consumers.deliver(key, message);
        }
    }
}

/// What handing a message to its queues came to.
struct Outcome {
    /// At least one queue took it.
    routed: bool,
    /// A queue refused it (full, with `x-overflow` reject-publish) or could not write it to
    /// its log: the publisher's confirm is a nack.
    failed: bool,
    /// The epoch that makes it durable, if a durable queue logged it.
    sync: Option<u64>,
}

fn enqueue(queues: &[Arc<Queue>], message: &Arc<Message>) -> Outcome {
    let mut outcome = Outcome {
        routed: false,
        failed: false,
        sync: None,
    };
    for q in queues {
        match q.publish(message.clone()) {
            Enqueued::Deleted => {}
            Enqueued::Accepted => outcome.routed = true,
            Enqueued::Persisted(epoch) => {
                outcome.routed = true;
                outcome.sync = Some(outcome.sync.map_or(epoch, |e| e.max(epoch)));
            }
            Enqueued::Failed | Enqueued::Rejected => {
                // Routed all the same: a mandatory message is not returned.
                outcome.routed = true;
                outcome.failed = true;
            }
        }
    }
    outcome
}

/// Validates a per-message `expiration` the way RabbitMQ parses it.
fn check_expiration(raw: &[u8]) -> AmqpResult<()> {
    let text = String::from_utf8_lossy(raw);
    let invalid = |reason: String| {
        amqp_error!(
            PreconditionFailed,
            "invalid expiration '{}': {}",
            text,
            reason
        )
    };
    let bytes = text.as_bytes();
    let (negative, digits_start) = match bytes.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    let digits_end = bytes[digits_start..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map_or(bytes.len(), |p| p + digits_start);
    if digits_end == digits_start {
        return Err(invalid("no_integer".into()));
    }
    let magnitude: i128 = text[digits_start..digits_end].parse().unwrap_or(i128::MAX);
    let value = if negative { -magnitude } else { magnitude };
    if digits_end != bytes.len() {
        return Err(invalid(format!(
            "{{leftover_string,\"{}\"}}",
            &text[digits_end..]
        )));
    }
    if value < 0 {
        return Err(invalid(format!("{{value_negative,{value}}}")));
    }
    if value > crate::arguments::MAX_TTL_MS as i128 {
        return Err(invalid(format!("{{value_too_large,{value}}}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_as_rabbitmq_expiration_texts() {
        let text = |s: &str| check_expiration(s.as_bytes()).unwrap_err().text;
        assert_eq!(
            text("abc"),
            "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"
        );
        assert_eq!(
            text(""),
            "PRECONDITION_FAILED - invalid expiration '': no_integer"
        );
        assert_eq!(
            text("-1"),
            "PRECONDITION_FAILED - invalid expiration '-1': {value_negative,-1}"
        );
        assert_eq!(
            text("10x"),
            "PRECONDITION_FAILED - invalid expiration '10x': {leftover_string,\"x\"}"
        );
        assert_eq!(
            text("315360000001"),
            "PRECONDITION_FAILED - invalid expiration '315360000001': {value_too_large,315360000001}"
        );
        assert!(check_expiration(b"+5").is_ok());
        assert!(check_expiration(b"0").is_ok());
    }

    #[test]
    fn names_lose_cr_and_lf() {
        assert_eq!(strip_cr_lf("a\r\nb"), "ab");
    }
}
