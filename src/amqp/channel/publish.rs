//! Publishing: assembling a message from its method, header and body frames, checking its
//! properties as RabbitMQ does, and handing it to the queues its route leads to.

use std::sync::Arc;

use amq_protocol::types::FieldTable;
use bytes::Bytes;

use super::{Channel, Content, Route, TxPublish};
use crate::amqp::confirm::Confirms;
use crate::amqp::output::Output;
use crate::amqp::session::Session;
use crate::amqp_error;
use crate::broker::body::Body;
use crate::broker::exchange::Exchange;
use crate::broker::memory::Charge;
use crate::broker::message::{ConfirmWatch, Message, cc_and_bcc, check_publisher_properties};
use crate::broker::queue::Queue;
use crate::broker::queue::state::Enqueued;
use crate::broker::reply_to;
use crate::broker::stats::bump;
use crate::protocol::basic::{ContentHeader, Publish, write_return};
use crate::protocol::error::{AmqpError, AmqpResult, ReplyCode};
use crate::protocol::properties::{self, PropertySummary, ScanError};
use crate::protocol::table;

/// What handing a message to its queues came to.
pub(super) struct Outcome {
    /// At least one queue took it.
    pub routed: bool,
    /// A queue refused it (full, with `x-overflow` reject-publish) or could not write it to
    /// its log: the publisher's confirm is a nack.
    pub failed: bool,
    /// Of those, a queue could not write it (its log or paging file refused): it is in no
    /// queue that should hold it, whatever a commit would say.
    pub write_failed: bool,
    /// The epoch that makes it durable, if a durable queue logged it.
    pub sync: Option<u64>,
    /// How many queues logged it: each reports it when it leaves for good
    /// (`broker::message::ConfirmSink`).
    pub logged: u32,
}

/// Where a publish goes: the exchange and key it named, and what routing adds.
pub(super) struct Destination<'a> {
    pub exchange: &'a Arc<Exchange>,
    /// The route the cache had, if any.
    pub cached: Option<Route>,
    pub exchange_name: &'a Bytes,
    pub routing_key: &'a Bytes,
    /// Routing keys from the CC and BCC headers.
    pub extra_keys: &'a [Bytes],
    /// The message's headers, for headers exchanges.
    pub headers: Option<FieldTable>,
    pub mandatory: bool,
    /// Published in a transaction: routed then, and its direct replies went then too.
    pub routed_at_publish: bool,
}

fn internal_error() -> AmqpError {
    AmqpError::bare(ReplyCode::InternalError)
}

/// RabbitMQ answers properties it cannot decode with a bare INTERNAL_ERROR; headers nested
/// deeper than Lepus decodes are an undecodable frame.
fn scan_error(e: ScanError) -> AmqpError {
    match e {
        ScanError::Malformed => internal_error(),
        ScanError::TooDeep => table::too_deep_error(),
    }
}

impl Channel {
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
            body: None,
            received: 0,
            charge: Charge::default(),
        });
        Ok(())
    }

    pub(super) fn no_method() -> AmqpError {
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
            return self.complete_publish(s, out, (Body::default(), 0));
        }
        Ok(())
    }

    /// A content body frame: its payload in one slice, or in two (`rest`) when its start
    /// and end came in different reads.
    pub fn on_body(
        &mut self,
        s: &Session,
        out: &mut Output,
        chunk: Bytes,
        rest: Option<Bytes>,
    ) -> AmqpResult<()> {
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
        let frame = chunk.len() + rest.as_ref().map_or(0, Bytes::len);
        content.received += frame as u64;
        if content.received > size {
            // Like RabbitMQ, a body longer than announced never completes: the next method
            // frame is refused. Nothing more is buffered meanwhile, and what was is no longer
            // charged (the gauge counted it for as long as the client kept sending).
            content.body = None;
            content.charge = Charge::default();
            return Ok(());
        }
        if content.received == size && content.body.is_none() {
            // The common case, a body in one frame: kept as it came, nothing to assemble
            // (but the list of its two slices, if it straddled reads).
            let body = match rest {
                None => (Body::from(chunk), 0),
                Some(rest) => {
                    let both = Body::from_parts(vec![chunk, rest]);
                    let owned = both.list_bytes();
                    (both, owned)
                }
            };
            return self.complete_publish(s, out, body);
        }
        let body = content.body.get_or_insert_with(Box::default);
        let keep = frame >= KEEP_FRAME_BYTES || content.received == size && body.small.is_empty();
        for piece in std::iter::once(chunk).chain(rest) {
            if piece.is_empty() {
                continue;
            }
            if keep {
                // Kept as it came: a large frame (its one or two slices), or the last of a
                // body.
                body.flush_small();
                body.pieces.push(piece);
            } else {
                body.small = grown(std::mem::take(&mut body.small), &piece, size);
            }
        }
        let held = body.copied + body.small.capacity() + body.pieces.capacity() * PIECE_BYTES;
        charge(&mut content.charge, s, held);
        if content.received == size {
            let Some(mut body) = content.body.take() else {
                return Ok(());
            };
            body.flush_small();
            let whole = Body::from_parts(body.pieces);
            let owned = body.copied + whole.list_bytes();
            return self.complete_publish(s, out, (whole, owned));
        }
        Ok(())
    }

    /// Publishes the message being assembled, now that its body is complete: `owned` bytes
    /// of it are buffers of its own rather than slices of the input's chunks.
    pub(super) fn complete_publish(
        &mut self,
        s: &Session,
        out: &mut Output,
        (body, owned): (Body, usize),
    ) -> AmqpResult<()> {
        let Some(content) = self.content.take() else {
            return Ok(());
        };
        let Some(header) = content.header else {
            return Ok(());
        };
        self.publish(s, out, content.publish, header.properties, (body, owned))
            .map_err(|e| e.on_method(60, 40))
    }

    pub(super) fn publish(
        &mut self,
        s: &Session,
        out: &mut Output,
        publish: Publish,
        properties: Bytes,
        (body, owned): (Body, usize),
    ) -> AmqpResult<()> {
        if publish.immediate {
            return Err(amqp_error!(NotImplemented, "immediate=true"));
        }
        let (exchange, cached) = self.resolve(s, &publish.exchange, &publish.routing_key)?;
        let (properties, summary) = self.check_properties(s, properties)?;
        let (properties, summary, headers, extra_keys) = cc_and_bcc(properties, summary)?;
        // Confirm mode and transactions exclude each other: a channel with confirms numbers
        // every publish here.
        let confirm_tag = self.confirms.as_mut().map(Confirms::next_tag);
        // The names move into the message, and routing reads them there: a clone of each
        // would be two more atomic operations on their chunk's count per publish.
        let Publish {
            exchange: exchange_name,
            routing_key,
            mandatory,
            ..
        } = publish;
        let mut message = Message::new(exchange_name, routing_key, properties, body, &summary);
        if !extra_keys.is_empty() {
            message.extra_routing_keys = Some(extra_keys.clone().into());
        }
        // Its names, properties and the body's frames are slices of the input's chunks, which
        // are charged already; small frames copied together, and the CC and BCC keys, are
        // the message's own.
        message.charge_to(s.broker.memory, owned + message.extra_keys_size());
        if message.persistent
            && let (Some(confirms), Some(tag)) = (&self.confirms, confirm_tag)
        {
            message.confirm = confirms.early_sink().map(|sink| ConfirmWatch { sink, tag });
        }
        let message = Arc::new(message);
        let mut destination = Destination {
            routed_at_publish: false,
            exchange: &exchange,
            cached,
            exchange_name: &message.exchange,
            routing_key: &message.routing_key,
            extra_keys: &extra_keys,
            headers,
            mandatory,
        };
        if self.tx.is_some() {
            return self.hold_for_commit(s, destination, Arc::clone(&message));
        }
        let queues = self.queues_for(s, &mut destination)?;
        let outcome = self.hand_to_queues(s, out, destination, queues, &message);
        if let (Some(confirms), Some(tag)) = (self.confirms.as_mut(), confirm_tag) {
            if outcome.failed {
                confirms.nack(tag);
            } else if let Some(epoch) = outcome.sync {
                // A persistent message on a durable queue: confirmed once it is on disk, or
                // once every queue that logged it saw it acknowledged.
                confirms.hold(tag, epoch, outcome.logged);
            } else {
                confirms.ack(tag);
            }
        }
        Ok(())
    }

    /// A publish in a transaction: routed now, as RabbitMQ routes it, and held until the
    /// commit enqueues it into the queues it was routed to (those still there). A binding or
    /// exchange deleted meanwhile changes nothing.
    fn hold_for_commit(
        &mut self,
        s: &Session,
        d: Destination,
        message: Arc<Message>,
    ) -> AmqpResult<()> {
        let max = s.broker.config.limits.max_uncommitted_per_channel;
        if self.tx.as_ref().is_some_and(|tx| tx.publishes.len() >= max) {
            return Err(amqp_error!(
                PreconditionFailed,
                "transaction exceeds max_uncommitted_per_channel ({} messages)",
                max
            ));
        }
        let (route, route_charge) = match d.cached {
            // The cache's route, shared.
            Some(queues) if d.extra_keys.is_empty() => (queues, Charge::default()),
            // A route of its own, charged while it is held (a headers exchange bound to
            // many queues, times a million held publishes, is memory).
            _ => {
                let route = self.route(
                    s,
                    d.exchange,
                    d.exchange_name,
                    d.routing_key,
                    d.extra_keys,
                    d.headers,
                )?;
                let bytes = route.len() * std::mem::size_of::<Arc<Queue>>();
                (route, Charge::new(s.broker.memory, bytes))
            }
        };
        // Same as RabbitMQ: a direct reply goes to its requester now, not at the commit, and
        // a rollback does not take it back (it is no queue's message).
        direct_replies(s, d.exchange_name, d.routing_key, d.extra_keys, &message);
        // Held until commit: keep the message's own copies of the names, not slices of the
        // frame they came in.
        let mut routing_keys = vec![message.routing_key.clone()];
        routing_keys.extend_from_slice(d.extra_keys);
        if let Some(tx) = self.tx.as_mut() {
            tx.publishes.push(TxPublish {
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
                mandatory: d.mandatory,
                routing_keys,
                target: d.exchange.clone(),
                route,
                _route_charge: route_charge,
                message,
            });
        }
        self.note_gauges();
        Ok(())
    }

    /// Checks the properties RabbitMQ checks at publish (user_id, expiration) and names this
    /// channel's reply consumer in a request that expects a direct reply.
    pub(super) fn check_properties(
        &self,
        s: &Session,
        mut properties: Bytes,
    ) -> AmqpResult<(Bytes, PropertySummary)> {
        let mut summary = properties::scan(&properties).map_err(scan_error)?;
        if let Some(range) = &summary.reply_to
            && &properties[range.clone()] == reply_to::PSEUDO_QUEUE.as_bytes()
        {
            let Some(consumer) = &self.reply_consumer else {
                return Err(amqp_error!(
                    PreconditionFailed,
                    "fast reply consumer does not exist"
                ));
            };
            let name = format!("{}{}", reply_to::PREFIX, consumer.key);
            properties = properties::replace_reply_to(&properties, &summary, &name)
                .ok_or_else(internal_error)?;
            summary = properties::scan(&properties).map_err(scan_error)?;
        }
        check_publisher_properties(&properties, &summary, &s.user)?;
        Ok((properties, summary))
    }

    /// The queues a publish goes to: the cache's route, or one worked out now.
    fn queues_for(&mut self, s: &Session, d: &mut Destination) -> AmqpResult<Route> {
        match d.cached.take() {
            Some(queues) if d.extra_keys.is_empty() => Ok(queues),
            _ => self.route(
                s,
                d.exchange,
                d.exchange_name,
                d.routing_key,
                d.extra_keys,
                d.headers.take(),
            ),
        }
    }

    /// Enqueues a message into the queues it was routed to; hands it to direct reply
    /// consumers; returns it to the publisher if it is mandatory and went nowhere.
    pub(super) fn hand_to_queues(
        &mut self,
        s: &Session,
        out: &mut Output,
        d: Destination,
        queues: Route,
        message: &Arc<Message>,
    ) -> Outcome {
        let outcome = enqueue(&queues, message);
        // A fanout to thousands of queues, cached or not, is that many enqueues: counted
        // toward the connection's turn, as the routing was.
        self.work += queues.len();
        if !d.routed_at_publish {
            // A transaction's direct replies went when they were published.
            direct_replies(s, d.exchange_name, d.routing_key, d.extra_keys, message);
        }
        let counters = &self.stats.info.messages;
        bump(&counters.publish, 1);
        if self.confirms.is_some() {
            bump(&counters.publish_confirm, 1);
        }
        bump(&d.exchange.counters.publish_in, 1);
        if outcome.routed || d.exchange_name.is_empty() {
            // Same as RabbitMQ: the default exchange counts every message as routed out
            // (to the queue its key names, whether or not there is one).
            bump(&d.exchange.counters.publish_out, 1);
        }
        match (outcome.routed, d.mandatory) {
            (true, _) => {}
            (false, true) => bump(&counters.return_unroutable, 1),
            (false, false) => bump(&counters.drop_unroutable, 1),
        }
        if !outcome.routed && d.mandatory {
            write_return(
                out.buf(),
                self.id,
                312,
                "NO_ROUTE",
                d.exchange_name,
                d.routing_key,
            );
            out.content(self.id, &message.properties, &message.body, s.frame_max);
        }
        outcome
    }
}

/// Body frames at least this large are kept as they came, slices of the chunk they were read
/// into; smaller ones are copied together, so that a body sent in many tiny frames is not a
/// list of as many slices (each of which would also pin its read buffer).
const KEEP_FRAME_BYTES: usize = 16 * 1024;

/// Bytes one piece takes in a body's list of pieces.
const PIECE_BYTES: usize = std::mem::size_of::<Bytes>();

/// Appends `chunk` to a body being assembled, growing the buffer by doubling but never past
/// the announced `size`: memory follows what arrived, and a complete body fills its buffer.
fn grown(mut buf: Vec<u8>, chunk: &[u8], size: u64) -> Vec<u8> {
    let need = buf.len() + chunk.len();
    if need > buf.capacity() {
        let target = (buf.len() * 2).max(need).min(size as usize).max(need);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(chunk);
    buf
}

/// Sets a half-received message's charge to `bytes`.
fn charge(c: &mut Charge, s: &Session, bytes: usize) {
    if c.bytes() == 0 {
        *c = Charge::new(s.broker.memory, bytes);
    } else {
        c.set(bytes);
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
    let keys = std::iter::once(routing_key).chain(extra_keys);
    s.broker
        .reply_consumers
        .deliver_named(keys.map(|k| &k[..]), message, |_| {});
}

fn enqueue(queues: &[Arc<Queue>], message: &Arc<Message>) -> Outcome {
    let mut outcome = Outcome {
        routed: false,
        failed: false,
        write_failed: false,
        sync: None,
        logged: 0,
    };
    for q in queues {
        match q.publish(message.clone()) {
            Enqueued::Deleted => {}
            Enqueued::Accepted => outcome.routed = true,
            Enqueued::Persisted(epoch) => {
                outcome.routed = true;
                outcome.sync = Some(outcome.sync.map_or(epoch, |e| e.max(epoch)));
                outcome.logged += 1;
            }
            Enqueued::Rejected => {
                // Routed all the same: a mandatory message is not returned.
                outcome.routed = true;
                outcome.failed = true;
            }
            Enqueued::Failed => {
                outcome.routed = true;
                outcome.failed = true;
                outcome.write_failed = true;
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use crate::broker::message::check_expiration;

    #[test]
    pub(super) fn same_as_rabbitmq_expiration_texts() {
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
}
