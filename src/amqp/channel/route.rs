//! The route cache: a channel remembers where its recent publishes went, valid while the
//! vhost's topology and the broker's grants are unchanged, so a publisher repeating an
//! exchange and routing key skips the permission checks, the exchange lookup and the routing.

use std::sync::Arc;

use amq_protocol::types::FieldTable;
use bytes::Bytes;

use super::{CachedRoute, Channel, ROUTE_CACHE_ENTRIES, Route};
use crate::amqp::session::Session;
use crate::amqp_error;
use crate::auth::access::{Permission, Resource};
use crate::broker::exchange::Exchange;
use crate::broker::queue::Queue;
use crate::protocol::error::AmqpResult;

impl Channel {
    /// Finds the exchange a publish names, and the queues it routes to if the channel has
    /// routed the same exchange and key since the topology last changed.
    pub(super) fn resolve(
        &mut self,
        s: &Session,
        exchange: &Bytes,
        routing_key: &Bytes,
    ) -> AmqpResult<(Arc<Exchange>, Option<Route>)> {
        let version = s.vhost.version();
        let access_version = s.broker.access.version();
        if self.routes.version != version || self.routes.access_version != access_version {
            self.routes.routes.clear();
            self.routes.version = version;
            self.routes.access_version = access_version;
        }
        if let Some(hit) = self
            .routes
            .routes
            .get(&(exchange.clone(), routing_key.clone()))
        {
            return Ok((hit.exchange.clone(), hit.queues.clone()));
        }
        // RabbitMQ's order: write permission on the exchange, its existence, that it is not
        // internal, then the user's topic permission on the routing key. A cached route has
        // passed all four under the same topology and grants.
        let name = std::str::from_utf8(exchange).unwrap_or("\u{fffd}");
        s.authorize(Resource::Exchange(name), Permission::Write)?;
        let found = s.vhost.exchange(name).ok_or_else(|| {
            amqp_error!(
                NotFound,
                "no exchange '{}' in vhost '{}'",
                name,
                s.vhost.name
            )
        })?;
        if found.internal {
            return Err(amqp_error!(
                AccessRefused,
                "cannot publish to internal exchange '{}' in vhost '{}'",
                found.name,
                s.vhost.name
            ));
        }
        let key = String::from_utf8_lossy(routing_key);
        s.authorize_topic(&found, &key, Permission::Write)?;
        Ok((found, None))
    }

    /// Routes a message and remembers the result when it does not depend on the message's
    /// headers or CC/BCC keys.
    pub(super) fn route(
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
            // Copies of the names: slices of the publish frame would keep its whole read
            // buffer alive for as long as the route is cached.
            self.routes.routes.insert(
                (
                    Bytes::copy_from_slice(exchange_key),
                    Bytes::copy_from_slice(routing_key),
                ),
                CachedRoute {
                    exchange: exchange.clone(),
                    queues: cacheable.then(|| found.clone()),
                },
            );
        }
        found
    }
}
