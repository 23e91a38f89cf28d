//! Routing: where a message published to an exchange of this vhost goes.

use std::collections::HashSet;
use std::sync::Arc;

use amq_protocol::types::FieldTable;

use super::VirtualHost;
use crate::broker::exchange::topic::MAX_ROUTE_TOPIC_STATES;
use crate::broker::exchange::{Destination, Exchange, ExchangeKind, LazyHeaders};
use crate::broker::queue::Queue;
use crate::protocol::error::AmqpError;

/// A route refused for the work it would take: its topic matching passed through more trie
/// states, with the arguments its headers matching looked at, than
/// [`MAX_ROUTE_TOPIC_STATES`] (bindings and keys a client built to make one publish cost
/// seconds under the exchange's lock). RabbitMQ has no such limit, and runs such a route to
/// its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefused {
    /// The budget ran out in a headers exchange (else a topic exchange).
    pub headers: bool,
}

impl RouteRefused {
    /// The channel error a publish gets for it.
    pub fn error(self, exchange: &str, vhost: &str) -> AmqpError {
        let what = match self.headers {
            true => "headers binding arguments and topic binding states",
            false => "topic binding states",
        };
        crate::amqp_error!(
            PreconditionFailed,
            "routing a message through exchange '{}' in vhost '{}' passes more than {} {}",
            exchange,
            vhost,
            MAX_ROUTE_TOPIC_STATES,
            what
        )
    }
}

/// What a route came to besides its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// The result did not depend on the message's headers: it may be cached.
    pub cacheable: bool,
    /// The work it took (trie states, headers arguments, keys looked up in each exchange): a
    /// connection counts it toward its turn, so that a read full of costly publishes lets
    /// other tasks run.
    pub work: usize,
}

impl VirtualHost {
    /// Routes a message published to `exchange`: follows exchange-to-exchange bindings and
    /// alternate exchanges, and appends each matching queue to `out` once. Says whether the
    /// result depended on message headers (and so must not be cached), and the work it
    /// took. The topic and headers exchanges it reaches share one budget of work; a route
    /// past it is refused.
    pub fn route(
        &self,
        exchange: &Arc<Exchange>,
        routing_keys: &[&[u8]],
        headers: &mut dyn FnMut() -> Option<FieldTable>,
        out: &mut Vec<Arc<Queue>>,
    ) -> Result<Routed, RouteRefused> {
        let mut cacheable = true;
        let mut budget = MAX_ROUTE_TOPIC_STATES;
        // Exchanges reached besides the first; nothing is allocated unless the message goes
        // on through exchange-to-exchange bindings or an alternate exchange.
        let origin = Arc::as_ptr(exchange);
        // A set, not a list: a fanout bound to 100,000 exchanges reaches each once, in
        // linear time. Made on the first hop (most routes never leave their exchange).
        let mut seen: Option<HashSet<*const Exchange>> = None;
        let mut headers = LazyHeaders::new(headers);
        let mut pending: Vec<Arc<Exchange>> = Vec::new();
        let mut first = Some(exchange.clone());
        // Each exchange reached looks up each routing key (a publish may carry thousands of
        // CC keys): counted as work besides the topic states.
        let mut lookups = 0usize;
        while let Some(x) = first.take().or_else(|| pending.pop()) {
            lookups += routing_keys.len().max(1);
            let mut matched = false;
            if x.name.is_empty() {
                // The default exchange: every queue is bound by its own name. As in RabbitMQ,
                // it never hands a message to an alternate exchange (a policy may name one),
                // and, reached as another exchange's alternate, it routes nothing: RabbitMQ
                // routes that through the bindings it stores, which are none.
                if Arc::as_ptr(&x) == origin {
                    for key in routing_keys {
                        if let Ok(name) = std::str::from_utf8(key)
                            && let Some(q) = self.queues.get(name)
                        {
                            out.push(q.value().clone());
                        }
                    }
                }
                continue;
            } else {
                if x.kind == ExchangeKind::Headers {
                    cacheable = false;
                }
                // A queue or exchange being deleted is gone already: its bindings are
                // removed in batches after it leaves the vhost (`vhost::unbinding`).
                let within = x.route(routing_keys, &mut headers, &mut budget, &mut |d| match d {
                    Destination::Queue(q) if !q.is_detached() => {
                        matched = true;
                        out.push(q.clone());
                    }
                    Destination::Exchange(next) if !next.is_detached() => {
                        matched = true;
                        let at = Arc::as_ptr(next);
                        if at != origin && seen.get_or_insert_default().insert(at) {
                            pending.push(next.clone());
                        }
                    }
                    _ => {}
                });
                if !within {
                    out.clear();
                    return Err(RouteRefused {
                        headers: x.kind == ExchangeKind::Headers,
                    });
                }
            }
            // An exchange whose own bindings matched nothing hands the message to its
            // alternate exchange, looked up by name each time.
            if !matched
                && let Some(ae) = x.alternate()
                && let Some(next) = self.exchange(&ae)
                && Arc::as_ptr(&next) != origin
                && seen.get_or_insert_default().insert(Arc::as_ptr(&next))
            {
                pending.push(next);
            }
        }
        let work = (MAX_ROUTE_TOPIC_STATES - budget) + lookups;
        // A queue reached through several bindings or paths gets the message once.
        if out.len() > 1 {
            out.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
            out.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
        Ok(Routed { cacheable, work })
    }
}

/// What became of a message published by the broker's operators rather than a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Some queue took it.
    pub routed: bool,
    /// The store epoch that makes it durable, if a durable queue logged it.
    pub sync: Option<u64>,
}

impl VirtualHost {
    /// Publishes a message as the management API's publish does: routed like any other,
    /// counted by the exchange, confirmed to nobody; `user` (the caller, if not an operator)
    /// is checked against `user_id` as an AMQP publisher is.
    pub fn publish_message(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: bytes::Bytes,
        body: bytes::Bytes,
        user: Option<&crate::auth::User>,
    ) -> crate::protocol::error::AmqpResult<Published> {
        use crate::broker::queue::state::Enqueued;
        let x = self
            .exchange(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        if routing_key.len() > crate::protocol::SHORT_STRING_MAX_BYTES {
            // A short string on the wire and in the log's records.
            return Err(crate::amqp_error!(
                PreconditionFailed,
                "routing key longer than 255 bytes"
            ));
        }
        let summary = crate::protocol::properties::scan(&properties)
            .map_err(|_| crate::amqp_error!(PreconditionFailed, "invalid message properties"))?;
        if let Some(user) = user {
            crate::broker::message::check_publisher_properties(&properties, &summary, user)?;
        }
        // Same as RabbitMQ, whose management publish goes through the same routing as a
        // client's: the CC and BCC headers add routing keys, and BCC is removed.
        let (properties, summary, headers, extra_keys) =
            crate::broker::message::cc_and_bcc(properties, summary)?;
        let mut message = crate::broker::message::Message::new(
            bytes::Bytes::copy_from_slice(exchange.as_bytes()),
            bytes::Bytes::copy_from_slice(routing_key.as_bytes()),
            properties,
            body,
            &summary,
        );
        if !extra_keys.is_empty() {
            message.extra_routing_keys = Some(extra_keys.clone().into());
        }
        message.charge_all_to(self.services.memory);
        let message = Arc::new(message);
        let mut headers = headers;
        let mut keys: Vec<&[u8]> = vec![routing_key.as_bytes()];
        keys.extend(extra_keys.iter().map(|k| &k[..]));
        let mut queues = Vec::new();
        self.route(&x, &keys, &mut || headers.take(), &mut queues)
            .map_err(|refused| refused.error(exchange, &self.name))?;
        if x.name.is_empty() {
            // Same as RabbitMQ: a reply name reaches its direct reply-to consumer, and does
            // not count as routed.
            self.services
                .replies
                .deliver_named(keys.iter().copied(), &message, |_| {});
        }
        let mut published = Published {
            routed: false,
            sync: None,
        };
        let mut write_failed = false;
        for q in &queues {
            match q.publish(message.clone()) {
                Enqueued::Deleted => {}
                Enqueued::Persisted(epoch) => {
                    published.routed = true;
                    published.sync = Some(published.sync.map_or(epoch, |e| e.max(epoch)));
                }
                Enqueued::Failed => write_failed = true,
                Enqueued::Accepted | Enqueued::Rejected => published.routed = true,
            }
        }
        use crate::broker::stats::bump;
        bump(&x.counters.publish_in, 1);
        if published.routed || exchange.is_empty() {
            bump(&x.counters.publish_out, 1);
        }
        // Same as RabbitMQ, which publishes on a channel of its own with confirms and
        // `mandatory`.
        self.services.ledger.count_unlisted(&self.retired, |c| {
            bump(&c.publish, 1);
            bump(&c.confirm, 1);
            if !published.routed {
                bump(&c.return_unroutable, 1);
            }
        });
        if write_failed {
            return Err(crate::amqp_error!(
                InternalError,
                "the data directory refused a write; the message is not in every queue it was routed to"
            ));
        }
        Ok(published)
    }
}
