//! The route cache: a channel remembers where its recent publishes went, valid while the
//! vhost's topology and the broker's grants are unchanged, so a publisher repeating an
//! exchange and routing key skips the permission checks, the exchange lookup and the routing.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use amq_protocol::types::FieldTable;
use bytes::Bytes;

use super::{Channel, ROUTE_CACHE_ENTRIES, Route};
use crate::amqp::session::Session;
use crate::amqp_error;
use crate::auth::access::{Permission, Resource};
use crate::broker::exchange::Exchange;
use crate::broker::queue::Queue;
use crate::protocol::error::AmqpResult;

/// Routes remembered by a channel, valid while the vhost's topology and the broker's grants
/// are unchanged.
#[derive(Debug, Default)]
pub(super) struct RouteCache {
    /// The vhost's topology version the routes were computed under.
    version: u64,
    /// The broker's grants version the routes were authorised under: a cached route also
    /// stands for the write and topic permission checks its first publish passed.
    access_version: u64,
    routes: HashMap<RouteKey, CachedRoute>,
    /// The last route used: a publisher repeating one exchange and key finds it with two
    /// comparisons, without hashing.
    last: Option<(RouteKey, Arc<Exchange>, Option<Route>)>,
    /// Exchanges the user may write to under the same grants: a publisher spreading over
    /// more routing keys than the cache holds still checks its permission once.
    writable: Vec<Bytes>,
    /// Hits since the routes were last dropped for room.
    hits: usize,
    /// Publishes that will not be cached: after a round of the cache in which few routes
    /// were used twice, a publisher spreading over many keys would only copy names into it.
    skip: usize,
    /// Queues in the cached routes' lists, at most `MAX_CACHED_ROUTE_QUEUES`.
    queues: usize,
}

/// Publishes left uncached after a round of the cache with fewer than a quarter hits.
const SKIP_AFTER_THRASH: usize = 16 * ROUTE_CACHE_ENTRIES;

/// Queues the cached routes of a channel may list in all: the lists are memory no gauge
/// counts, and without a bound 64 routes through a fanout to 100,000 queues held 51 MB per
/// channel (a hundred gigabytes on a connection's 2,047 channels). A route there is no room for
/// is worked out on each publish, which costs little beside delivering to every queue it lists.
const MAX_CACHED_ROUTE_QUEUES: usize = 1024;

/// Exchanges remembered as writable per channel.
const WRITABLE_ENTRIES: usize = 8;

#[derive(Debug)]
struct CachedRoute {
    exchange: Arc<Exchange>,
    /// None when the route depends on message headers and must be worked out each time.
    queues: Option<Route>,
}

/// An exchange name and routing key, as the cache keeps them (copies, see `route`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteKey {
    exchange: Bytes,
    routing_key: Bytes,
}

/// The cache is searched with the publish's own slices: no key is built (and no reference
/// count touched) to look one up.
trait KeyParts {
    fn parts(&self) -> (&[u8], &[u8]);
}

impl KeyParts for RouteKey {
    fn parts(&self) -> (&[u8], &[u8]) {
        (&self.exchange, &self.routing_key)
    }
}

impl KeyParts for (&[u8], &[u8]) {
    fn parts(&self) -> (&[u8], &[u8]) {
        (self.0, self.1)
    }
}

impl Hash for RouteKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state)
    }
}

impl Hash for dyn KeyParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state)
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyParts + '_ {}

impl<'a> Borrow<dyn KeyParts + 'a> for RouteKey {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

/// Whether two names are the same, without a call to `memcmp`: the one `==` makes took
/// 2.8% of a confirm run, nearly all of it on its first, masked, load (of the default
/// exchange's empty name, whose pointer dangles: such a load takes a slow assist on this
/// kind of Intel core).
#[inline]
fn same_name(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

impl RouteCache {
    fn get(
        &mut self,
        exchange: &[u8],
        routing_key: &[u8],
    ) -> Option<(Arc<Exchange>, Option<Route>)> {
        if let Some((k, x, q)) = &self.last
            && same_name(&k.routing_key, routing_key)
            && same_name(&k.exchange, exchange)
        {
            return Some((x.clone(), q.clone()));
        }
        let probe: &dyn KeyParts = &(exchange, routing_key);
        let (k, hit) = self.routes.get_key_value(probe)?;
        self.hits += 1;
        self.last = Some((k.clone(), hit.exchange.clone(), hit.queues.clone()));
        Some((hit.exchange.clone(), hit.queues.clone()))
    }

    /// Forgets the routes (the topology or the grants changed).
    fn clear(&mut self) {
        self.routes.clear();
        self.last = None;
        self.writable.clear();
        self.queues = 0;
    }

    /// Whether a new route listing `queues` is worth keeping, counting them if so: room is
    /// made when the cache is full, a cache that was mostly missed stops taking routes for a
    /// while, and a route the queues already listed leave no room for is not kept.
    fn should_cache(&mut self, queues: usize) -> bool {
        if queues > MAX_CACHED_ROUTE_QUEUES {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        if self.routes.len() >= ROUTE_CACHE_ENTRIES {
            if self.hits < ROUTE_CACHE_ENTRIES / 4 {
                self.skip = SKIP_AFTER_THRASH;
            }
            self.routes.clear();
            self.last = None;
            self.hits = 0;
            self.queues = 0;
            if self.skip > 0 {
                return false;
            }
        }
        if self.queues + queues > MAX_CACHED_ROUTE_QUEUES {
            return false;
        }
        self.queues += queues;
        true
    }
}

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
            self.routes.clear();
            self.routes.version = version;
            self.routes.access_version = access_version;
        }
        if let Some(hit) = self.routes.get(exchange, routing_key) {
            return Ok(hit);
        }
        // RabbitMQ's order: write permission on the exchange, its existence, that it is not
        // internal, then the user's topic permission on the routing key. A cached route has
        // passed all four under the same topology and grants.
        // Same as RabbitMQ, which takes any bytes here: a name that is not UTF-8 is shown
        // with replacement characters, and names no exchange (every exchange's is UTF-8).
        let shown = String::from_utf8_lossy(exchange);
        let name: &str = &shown;
        if !self.routes.writable.iter().any(|x| same_name(x, exchange)) {
            s.authorize(Resource::Exchange(name), Permission::Write)?;
            if self.routes.writable.len() >= WRITABLE_ENTRIES {
                self.routes.writable.clear();
            }
            self.routes.writable.push(Bytes::copy_from_slice(exchange));
        }
        let utf8 = matches!(shown, std::borrow::Cow::Borrowed(_));
        let found = s.vhost.exchange(name).filter(|_| utf8).ok_or_else(|| {
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
        s.authorize_topic(&found, routing_key, Permission::Write)?;
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
    ) -> AmqpResult<Arc<[Arc<Queue>]>> {
        let one: [&[u8]; 1] = [routing_key];
        let many: Vec<&[u8]>;
        let keys: &[&[u8]] = if extra_keys.is_empty() {
            &one
        } else {
            many = one
                .into_iter()
                .chain(extra_keys.iter().map(|k| &k[..]))
                .collect();
            &many
        };
        let mut headers = headers;
        let mut found = Vec::new();
        let routed = s
            .vhost
            .route(exchange, keys, &mut || headers.take(), &mut found)
            .map_err(|refused| refused.error(&exchange.name, &s.vhost.name))?;
        self.work += routed.work;
        let cacheable = routed.cacheable;
        let found: Arc<[Arc<Queue>]> = found.into();
        let listed = if cacheable { found.len() } else { 0 };
        if extra_keys.is_empty() && self.routes.should_cache(listed) {
            // Copies of the names: slices of the publish frame would keep its whole read
            // buffer alive for as long as the route is cached.
            self.routes.routes.insert(
                RouteKey {
                    exchange: Bytes::copy_from_slice(exchange_key),
                    routing_key: Bytes::copy_from_slice(routing_key),
                },
                CachedRoute {
                    exchange: exchange.clone(),
                    queues: cacheable.then(|| found.clone()),
                },
            );
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached routes list a bounded number of queues: a route they leave no room for is
    /// not cached, and the room comes back when the cache is emptied.
    #[test]
    fn cached_routes_list_at_most_so_many_queues() {
        let mut cache = RouteCache::default();
        assert!(!cache.should_cache(MAX_CACHED_ROUTE_QUEUES + 1));
        assert_eq!(cache.queues, 0);
        for _ in 0..4 {
            assert!(cache.should_cache(MAX_CACHED_ROUTE_QUEUES / 4));
        }
        assert_eq!(cache.queues, MAX_CACHED_ROUTE_QUEUES);
        assert!(!cache.should_cache(1), "no room left");
        assert!(
            cache.should_cache(0),
            "a route listing no queues still fits"
        );
        cache.clear();
        assert!(cache.should_cache(2));
        assert_eq!(cache.queues, 2);
    }
}
