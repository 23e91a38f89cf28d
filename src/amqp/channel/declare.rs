//! The exchange and queue classes: declare, delete, bind, unbind (purge is in `purge`).

use amq_protocol::protocol::{AMQPClass, exchange, queue};
use amq_protocol::types::ShortString;

use super::{After, Channel, reply, strip_cr_lf};
use crate::amqp::naming;
use crate::amqp::output::Output;
use crate::amqp::session::Session;
use crate::amqp_error;
use crate::auth::access::{Permission, Resource};
use crate::broker::exchange::ExchangeKind;
use crate::broker::reply_to;
use crate::broker::vhost::checks::{Check, binding_checks};
use crate::broker::vhost::exchanges::ExchangeDeclare;
use crate::broker::vhost::queues::QueueDeclare;
use crate::protocol::error::AmqpResult;

impl Channel {
    pub(super) fn exchange_method(
        &mut self,
        s: &Session,
        out: &mut Output,
        method: exchange::AMQPMethod,
    ) -> AmqpResult<()> {
        let id = self.id;
        match method {
            exchange::AMQPMethod::Declare(d) => {
                let name = strip_cr_lf(d.exchange.as_str());
                authorize_exchange_declare(s, &name, &d)?;
                let declare = ExchangeDeclare {
                    name,
                    kind: d.kind.to_string(),
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments,
                    user: s.user.name.clone(),
                };
                let authorize_new = |checks: Vec<Check<'_>>| s.authorize_all(checks);
                out.hold_until_synced(s.vhost.declare_exchange(&declare, &authorize_new)?);
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
                let name = strip_cr_lf(d.exchange.as_str());
                // As in RabbitMQ, the default and `amq.*` exchanges are refused for what
                // they are before anyone's permissions are looked at.
                if !name.is_empty() && !name.starts_with("amq.") {
                    s.authorize(Resource::Exchange(&name), Permission::Configure)?;
                }
                let sync = s.vhost.delete_exchange(&name, d.if_unused)?;
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
                let (destination, source) = (
                    strip_cr_lf(b.destination.as_str()),
                    strip_cr_lf(b.source.as_str()),
                );
                let key = b.routing_key.as_str();
                authorize_binding(s, Resource::Exchange(&destination), &source, key)?;
                let sync = s.vhost.bind_exchange(
                    &destination,
                    &source,
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
                let (destination, source) = (
                    strip_cr_lf(b.destination.as_str()),
                    strip_cr_lf(b.source.as_str()),
                );
                let key = b.routing_key.as_str();
                authorize_binding(s, Resource::Exchange(&destination), &source, key)?;
                let sync = s.vhost.unbind_exchange(
                    &destination,
                    &source,
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
    pub(super) fn queue_name(&self, name: &str) -> AmqpResult<String> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| amqp_error!(NotFound, "no previously declared queue"))
    }

    pub(super) fn queue_method(
        &mut self,
        s: &Session,
        out: &mut Output,
        method: queue::AMQPMethod,
    ) -> AmqpResult<After> {
        let id = self.id;
        match method {
            queue::AMQPMethod::Declare(d) => self.queue_declare(s, out, d)?,
            queue::AMQPMethod::Bind(b) => {
                let queue = self.queue_name(&strip_cr_lf(b.queue.as_str()))?;
                let routing_key =
                    if b.queue.as_str().is_empty() && b.routing_key.as_str().is_empty() {
                        queue.clone()
                    } else {
                        b.routing_key.to_string()
                    };
                let exchange = strip_cr_lf(b.exchange.as_str());
                authorize_binding(s, Resource::Queue(&queue), &exchange, &routing_key)?;
                let sync = s.vhost.bind_queue(
                    &queue,
                    &exchange,
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
                let exchange = strip_cr_lf(b.exchange.as_str());
                authorize_binding(s, Resource::Queue(&queue), &exchange, &routing_key)?;
                let sync = s.vhost.unbind_queue(
                    &queue,
                    &exchange,
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
            queue::AMQPMethod::Purge(p) => return self.purge(s, out, p),
            queue::AMQPMethod::Delete(d) => {
                let name = self.queue_name(&strip_cr_lf(d.queue.as_str()))?;
                s.authorize(Resource::Queue(&name), Permission::Configure)?;
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
        Ok(After::Nothing)
    }

    /// queue.declare, including the direct reply-to pseudo-queue.
    pub(super) fn queue_declare(
        &mut self,
        s: &Session,
        out: &mut Output,
        d: queue::Declare,
    ) -> AmqpResult<()> {
        let id = self.id;
        let requested = strip_cr_lf(d.queue.as_str());
        if requested.starts_with(reply_to::PSEUDO_QUEUE) {
            // The pseudo-queue, or a live reply name, "exists" with one consumer
            // whatever the flags say, as in RabbitMQ.
            if requested != reply_to::PSEUDO_QUEUE && !s.broker.reply_consumers.is_live(&requested)
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
        if !d.passive {
            // As in RabbitMQ, a server-named queue needs configure permission on the name
            // the server chose; a new queue with a dead-letter exchange also needs read on
            // itself and write on that exchange (checked by the declare, once it knows it
            // makes the queue).
            s.authorize(Resource::Queue(&name), Permission::Configure)?;
        }
        let declare = QueueDeclare {
            nowait: d.nowait,
            name,
            passive: d.passive,
            durable: d.durable,
            exclusive: d.exclusive,
            auto_delete: d.auto_delete,
            arguments: d.arguments,
        };
        let authorize_new = |checks: Vec<Check<'_>>| s.authorize_all(checks);
        let (q, messages, consumers, sync) =
            s.vhost
                .declare_queue(&declare, s.connection_id, &authorize_new)?;
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
        Ok(())
    }
}

/// What RabbitMQ checks before declaring an exchange: configure on it (once its type and name
/// are known to be acceptable). Passive declares check nothing. A new exchange with an
/// alternate exchange also needs read on it and write on the alternate: the declare checks
/// that, once it knows it makes the exchange.
fn authorize_exchange_declare(s: &Session, name: &str, d: &exchange::Declare) -> AmqpResult<()> {
    if d.passive || name.is_empty() || ExchangeKind::parse(d.kind.as_str()).is_none() {
        return Ok(());
    }
    s.authorize(Resource::Exchange(name), Permission::Configure)
}

/// What RabbitMQ checks before binding or unbinding: write on the destination, then (unless
/// either end is the default exchange, which is refused for that) read on the source and,
/// for a topic source, the user's topic read permission on the routing key.
fn authorize_binding(
    s: &Session,
    destination: Resource<'_>,
    source: &str,
    routing_key: &str,
) -> AmqpResult<()> {
    for (resource, permission) in binding_checks(destination, source) {
        s.authorize(resource, permission)?;
    }
    if source.is_empty() || destination == Resource::Exchange("") {
        return Ok(());
    }
    if let Some(x) = s.vhost.exchange(source) {
        s.authorize_topic(&x, routing_key.as_bytes(), Permission::Read)?;
    }
    Ok(())
}
