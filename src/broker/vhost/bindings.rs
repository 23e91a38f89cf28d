//! Bindings of a vhost: bind and unbind, and the reverse index that finds every binding
//! leading to a queue or exchange being deleted.

use std::sync::Arc;

use amq_protocol::types::FieldTable;

use super::unbinding::Pending;
use super::{
    IncomingKey, SyncEpoch, Topology, VirtualHost, default_exchange_refused, incoming_key,
    topology_full,
};
use crate::amqp_error;
use crate::broker::arguments::{self, exchange_desc};
use crate::broker::exchange::topic::MAX_ROUTE_TOPIC_STATES;
use crate::broker::exchange::{
    BindLimits, BindRefused, Binding, BindingKey, Destination, Exchange,
};
use crate::protocol::error::AmqpResult;
use crate::store::definitions::Change;

/// What the durable definitions keep for a durable binding.
fn definition_bytes(binding: &Binding) -> usize {
    arguments::DEFINITION_KEPT_BYTES
        + binding.routing_key.len()
        + arguments::kept_bytes(&binding.arguments)
}

impl VirtualHost {
    /// Puts back a durable binding found in the definitions at start-up.
    pub fn restore_binding(
        &self,
        source: &str,
        binding_to: Destination,
        key: &str,
        args: FieldTable,
    ) {
        let mut topology = self.lock();
        let Some(src) = self.exchange(source) else {
            return;
        };
        let binding = Binding {
            destination: binding_to,
            routing_key: key.to_owned(),
            arguments: args,
        };
        // Recovered bindings were accepted once: the limits apply to new ones. They are
        // durable: the definitions keep them too.
        let unlimited = |_| amqp_error!(InternalError, "binding limit");
        let limits = BindLimits {
            definition_bytes: definition_bytes(&binding),
            ..BindLimits::NONE
        };
        if let Ok(true) = src.bind(binding.clone(), limits, unlimited) {
            topology
                .incoming
                .entry(binding.destination.identity())
                .or_default()
                .insert(incoming_key(&src, &binding), src.clone());
        }
        self.changed();
    }

    fn add_binding_locked(
        &self,
        topology: &mut Topology,
        source: &Arc<Exchange>,
        binding: Binding,
    ) -> AmqpResult<SyncEpoch> {
        self.refuse_if_retired(topology)?;
        arguments::check_kept_size(&binding.arguments, || {
            format!("a binding from {}", exchange_desc(&source.name, &self.name))
        })?;
        if binding.routing_key.len() > crate::protocol::SHORT_STRING_MAX_BYTES {
            // Only the management API and definitions can send one: AMQP's is a short
            // string. A topic binding's words are nested trie nodes, walked recursively.
            return Err(amqp_error!(
                PreconditionFailed,
                "binding key longer than {} bytes",
                crate::protocol::SHORT_STRING_MAX_BYTES
            ));
        }
        let limits = BindLimits {
            bindings: self.services.limits.max_bindings_per_exchange,
            headers_cost: MAX_ROUTE_TOPIC_STATES,
            within_budget: true,
            // The definitions keep a durable one too.
            definition_bytes: match source.durable && binding.destination.durable() {
                true => definition_bytes(&binding),
                false => 0,
            },
        };
        let full = |refused| match refused {
            BindRefused::Bindings => amqp_error!(
                PreconditionFailed,
                "cannot bind to {}: binding limit ({}) is reached",
                exchange_desc(&source.name, &self.name),
                limits.bindings
            ),
            BindRefused::HeadersCost => amqp_error!(
                PreconditionFailed,
                "cannot bind to {}: matching its headers bindings would take more than {} steps (one per binding and per argument matched)",
                exchange_desc(&source.name, &self.name),
                limits.headers_cost
            ),
            BindRefused::Budget(bytes) => amqp_error!(
                PreconditionFailed,
                "cannot bind to {}: {}",
                exchange_desc(&source.name, &self.name),
                topology_full(bytes)
            ),
        };
        if source.bind(binding.clone(), limits, full)? {
            if let Some(def) = self.binding_def(source, &binding) {
                self.record(topology, Change::PutBinding(def));
            }
            topology
                .incoming
                .entry(binding.destination.identity())
                .or_default()
                .insert(incoming_key(source, &binding), source.clone());
            self.changed();
        }
        Ok(topology.sync.take())
    }

    fn remove_binding_locked(
        &self,
        topology: &mut Topology,
        source: &Arc<Exchange>,
        binding: &Binding,
        pending: &mut Pending,
    ) {
        if source.unbind(binding) {
            if let Some(def) = self.binding_def(source, binding) {
                self.record(topology, Change::DeleteBinding(def));
            }
            Self::forget_incoming(topology, binding, source);
            self.changed();
            self.maybe_auto_delete(topology, source, pending);
        }
    }

    pub(super) fn forget_incoming(
        topology: &mut Topology,
        binding: &Binding,
        source: &Arc<Exchange>,
    ) {
        let id = binding.destination.identity();
        Self::forget_incoming_as(topology, id, &incoming_key(source, binding));
    }

    /// [`VirtualHost::forget_incoming`] for a binding known by its key.
    pub(super) fn forget_incoming_key(
        topology: &mut Topology,
        binding: &BindingKey<Destination>,
        source: &Arc<Exchange>,
    ) {
        let key = (
            Arc::as_ptr(source) as usize,
            binding.routing_key().to_owned(),
            binding.encoded_arguments().to_vec(),
        );
        Self::forget_incoming_as(topology, binding.destination().identity(), &key);
    }

    fn forget_incoming_as(topology: &mut Topology, id: usize, key: &IncomingKey) {
        if let Some(list) = topology.incoming.get_mut(&id) {
            list.remove(key);
            if list.is_empty() {
                topology.incoming.remove(&id);
            }
        }
    }

    /// exchange.bind: routes from `source` to `destination`.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> AmqpResult<SyncEpoch> {
        if destination.is_empty() || source.is_empty() {
            return Err(default_exchange_refused());
        }
        let mut topology = self.lock();
        let src = self
            .exchange(source)
            .ok_or_else(|| self.no_exchange(source))?;
        let dst = self
            .exchange(destination)
            .ok_or_else(|| self.no_exchange(destination))?;
        let binding = Binding {
            destination: Destination::Exchange(dst),
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        };
        self.add_binding_locked(&mut topology, &src, binding)
    }

    /// exchange.unbind; unbinding what is not bound succeeds.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> AmqpResult<SyncEpoch> {
        if destination.is_empty() || source.is_empty() {
            return Err(default_exchange_refused());
        }
        let mut topology = self.lock();
        let (Some(src), Some(dst)) = (self.exchange(source), self.exchange(destination)) else {
            return Ok(None);
        };
        let binding = Binding {
            destination: Destination::Exchange(dst),
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        };
        let mut pending = Pending::new();
        self.remove_binding_locked(&mut topology, &src, &binding, &mut pending);
        let sync = topology.sync.take();
        drop(topology);
        Ok(sync.max(self.settle_unbinding(Vec::new(), pending)))
    }

    /// queue.bind.
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
        connection: u64,
    ) -> AmqpResult<SyncEpoch> {
        if exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        let mut topology = self.lock();
        let x = self
            .exchange(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        let q = self.usable_queue(queue, connection)?;
        let binding = Binding {
            destination: Destination::Queue(q),
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        };
        self.add_binding_locked(&mut topology, &x, binding)
    }

    /// queue.unbind; unbinding what is not bound succeeds.
    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
        connection: u64,
    ) -> AmqpResult<SyncEpoch> {
        if exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        let mut topology = self.lock();
        let Some(x) = self.exchange(exchange) else {
            return Ok(None);
        };
        let Some(q) = self.queue(queue) else {
            return Ok(None);
        };
        let locked = q.exclusive_owner.is_some_and(|owner| owner != connection);
        let binding = Binding {
            destination: Destination::Queue(q),
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        };
        // Same as RabbitMQ: only a binding that exists meets the exclusivity check, so
        // unbinding what is not bound succeeds even on another connection's exclusive queue.
        let bound = topology
            .incoming
            .get(&binding.destination.identity())
            .is_some_and(|from| from.contains_key(&incoming_key(&x, &binding)));
        if !bound {
            return Ok(None);
        }
        if locked {
            return Err(self.resource_locked(queue));
        }
        let mut pending = Pending::new();
        self.remove_binding_locked(&mut topology, &x, &binding, &mut pending);
        let sync = topology.sync.take();
        drop(topology);
        Ok(sync.max(self.settle_unbinding(Vec::new(), pending)))
    }
}
