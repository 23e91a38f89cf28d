//! A virtual host: a namespace of exchanges, queues and the bindings between them.
//!
//! Lookups (every publish) read lock-free maps. Changes (declare, bind, delete) are rare and
//! take the vhost's topology lock, so that related changes never interleave: a queue being
//! deleted cannot gain a binding halfway. Every change bumps `version`, which is how
//! channels know their cached routes went stale.
//!
//! Changes to durable objects are recorded in the definitions journal; the methods that
//! make them return the store epoch to wait for before telling the client (`Option<u64>`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use amq_protocol::types::FieldTable;
use dashmap::DashMap;

use crate::amqp_error;
use crate::arguments::{self, exchange_desc, queue_desc};
use crate::binding::{Binding, Destination};
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Exchange, ExchangeKind};
use crate::outbox::OutboxEvent;
use crate::policy::{self, Policy};
use crate::queue::{Queue, QueueConfig, QueueContext};
use crate::store::Store;
use crate::store::definitions::{
    BindingDef, Change, DefinitionsStore, ExchangeDef, PolicyDef, QueueDef, encode_arguments,
};
use crate::timer::Timers;

/// The store epoch a change becomes durable in, when it had to be written.
pub type Sync = Option<u64>;

/// What exchange.declare asks for.
#[derive(Debug, Clone)]
pub struct ExchangeDeclare {
    pub name: String,
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// What queue.declare asks for (with the name already chosen).
#[derive(Debug, Clone)]
pub struct QueueDeclare {
    pub name: String,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// A virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    exchanges: DashMap<String, Arc<Exchange>>,
    queues: DashMap<String, Arc<Queue>>,
    /// Serialises changes to exchanges, queues and bindings.
    topology: Mutex<Topology>,
    /// Bumped by every change that could alter where a message is routed.
    version: AtomicU64,
    /// Where durable queues keep their messages.
    pub store: Arc<Store>,
    /// Where durable definitions are recorded.
    defs: Arc<DefinitionsStore>,
    /// Wakes queues for message and queue expiry.
    timers: Arc<Timers>,
    /// The policies of this vhost.
    policies: RwLock<Vec<Policy>>,
    /// This vhost, for the queues it creates (they route dead letters through it).
    me: Weak<VirtualHost>,
}

/// The reverse index of bindings, kept under the topology lock.
#[derive(Debug, Default)]
struct Topology {
    /// For each destination (by identity), the bindings that lead to it and their source.
    incoming: HashMap<usize, Vec<(Arc<Exchange>, Binding)>>,
    /// The epoch of the last definitions change made under this lock.
    sync: Sync,
}

/// The exchanges every vhost starts with, as in RabbitMQ: (name, type, internal).
const PREDECLARED: &[(&str, ExchangeKind, bool)] = &[
    ("", ExchangeKind::Direct, false),
    ("amq.direct", ExchangeKind::Direct, false),
    ("amq.fanout", ExchangeKind::Fanout, false),
    ("amq.topic", ExchangeKind::Topic, false),
    ("amq.headers", ExchangeKind::Headers, false),
    ("amq.match", ExchangeKind::Headers, false),
    ("amq.rabbitmq.trace", ExchangeKind::Topic, true),
];

fn default_exchange_refused() -> AmqpError {
    amqp_error!(
        AccessRefused,
        "operation not permitted on the default exchange"
    )
}

impl VirtualHost {
    pub fn new(
        name: &str,
        store: Arc<Store>,
        defs: Arc<DefinitionsStore>,
        timers: Arc<Timers>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| {
            let vhost = VirtualHost {
                name: name.to_owned(),
                exchanges: DashMap::new(),
                queues: DashMap::new(),
                topology: Mutex::new(Topology::default()),
                version: AtomicU64::new(0),
                store,
                defs,
                timers,
                policies: RwLock::new(Vec::new()),
                me: me.clone(),
            };
            vhost.predeclare();
            vhost
        })
    }

    /// Creates the exchanges every vhost has.
    fn predeclare(&self) {
        let vhost = self;
        for &(x, kind, internal) in PREDECLARED {
            vhost.exchanges.insert(
                x.to_owned(),
                Arc::new(Exchange::new(
                    x.to_owned(),
                    kind,
                    true,
                    false,
                    internal,
                    FieldTable::default(),
                )),
            );
        }
    }

    /// What a new queue of this vhost works with.
    pub fn queue_context(&self) -> QueueContext {
        QueueContext {
            store: self.store.clone(),
            timers: self.timers.clone(),
            vhost: self.me.clone(),
        }
    }

    fn read_policies(&self) -> std::sync::RwLockReadGuard<'_, Vec<Policy>> {
        self.policies.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The policy that applies to a queue named `name`.
    pub fn queue_policy(&self, name: &str) -> Option<Policy> {
        policy::matching(&self.read_policies(), policy::Target::Queue, name).cloned()
    }

    /// Replaces the vhost's policies and applies them to existing queues and exchanges.
    pub fn set_policies(&self, defs: &[PolicyDef]) {
        let compiled: Vec<Policy> = defs
            .iter()
            .filter(|d| d.vhost == self.name)
            .filter_map(Policy::compile)
            .collect();
        *self.policies.write().unwrap_or_else(|e| e.into_inner()) = compiled;
        let policies = self.read_policies().clone();
        for x in self.exchanges.iter() {
            let ae = policy::matching(&policies, policy::Target::Exchange, &x.name)
                .and_then(|p| p.string("alternate-exchange"))
                .map(str::to_owned);
            x.set_policy_alternate(ae);
        }
        for q in self.queues() {
            q.apply_policy(policy::matching(&policies, policy::Target::Queue, &q.name));
        }
        self.changed();
    }

    /// Applies the policy matching a new exchange.
    fn apply_exchange_policy(&self, x: &Exchange) {
        let ae = policy::matching(&self.read_policies(), policy::Target::Exchange, &x.name)
            .and_then(|p| p.string("alternate-exchange"))
            .map(str::to_owned);
        x.set_policy_alternate(ae);
    }

    fn lock(&self) -> MutexGuard<'_, Topology> {
        self.topology.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Records a change to durable definitions.
    fn record(&self, topology: &mut Topology, change: Change) {
        let epoch = self.defs.record(change);
        topology.sync = Some(topology.sync.map_or(epoch, |e| e.max(epoch)));
    }

    fn exchange_def(&self, x: &Exchange) -> ExchangeDef {
        let (arguments, lepus_arguments) = encode_arguments(&x.arguments);
        ExchangeDef {
            name: x.name.clone(),
            vhost: self.name.clone(),
            kind: x.kind.name().to_owned(),
            durable: x.durable,
            auto_delete: x.auto_delete,
            internal: x.internal,
            arguments,
            lepus_arguments,
        }
    }

    fn queue_def(&self, q: &Queue) -> QueueDef {
        let (arguments, lepus_arguments) = encode_arguments(&q.arguments);
        QueueDef {
            name: q.name.clone(),
            vhost: self.name.clone(),
            durable: q.durable,
            auto_delete: q.auto_delete,
            arguments,
            lepus_arguments,
            lepus_id: q.id,
        }
    }

    /// The definition of a binding, if it is durable (both ends durable, as in RabbitMQ).
    fn binding_def(&self, source: &Exchange, b: &Binding) -> Option<BindingDef> {
        let (destination, destination_type, durable) = match &b.destination {
            Destination::Queue(q) => (q.name.clone(), "queue", q.durable),
            Destination::Exchange(x) => (x.name.clone(), "exchange", x.durable),
        };
        if !(durable && source.durable) {
            return None;
        }
        let (arguments, lepus_arguments) = encode_arguments(&b.arguments);
        Some(BindingDef {
            source: source.name.clone(),
            vhost: self.name.clone(),
            destination,
            destination_type: destination_type.to_owned(),
            routing_key: b.routing_key.clone(),
            arguments,
            lepus_arguments,
        })
    }

    /// The routing generation: a cached route is valid while this is unchanged.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.get(name).map(|x| x.value().clone())
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|q| q.value().clone())
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.iter().map(|q| q.value().clone()).collect()
    }

    fn no_exchange(&self, name: &str) -> AmqpError {
        amqp_error!(NotFound, "no exchange '{}' in vhost '{}'", name, self.name)
    }

    fn no_queue(&self, name: &str) -> AmqpError {
        amqp_error!(NotFound, "no queue '{}' in vhost '{}'", name, self.name)
    }

    /// RabbitMQ's refusal to touch another connection's exclusive queue.
    pub fn resource_locked(&self, name: &str) -> AmqpError {
        amqp_error!(
            ResourceLocked,
            "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            queue_desc(name, &self.name)
        )
    }

    // ---- exchanges ------------------------------------------------------------------------

    /// exchange.declare, with RabbitMQ's checks in RabbitMQ's order.
    pub fn declare_exchange(&self, d: &ExchangeDeclare) -> AmqpResult<Sync> {
        let kind =
            if d.passive {
                None
            } else {
                Some(ExchangeKind::parse(&d.kind).ok_or_else(|| {
                    amqp_error!(CommandInvalid, "unknown exchange type '{}'", d.kind)
                })?)
            };
        if d.name.is_empty() {
            return Err(default_exchange_refused());
        }
        let mut topology = self.lock();
        let existing = self.exchange(&d.name);
        let Some(kind) = kind else {
            return existing
                .map(|_| None)
                .ok_or_else(|| self.no_exchange(&d.name));
        };
        let desc = exchange_desc(&d.name, &self.name);
        if let Some(x) = existing {
            if x.kind != kind {
                return Err(amqp_error!(
                    PreconditionFailed,
                    "inequivalent arg 'type' for {}: received '{}' but current is '{}'",
                    desc,
                    kind.name(),
                    x.kind.name()
                ));
            }
            for (key, received, current) in [
                ("durable", d.durable, x.durable),
                ("auto_delete", d.auto_delete, x.auto_delete),
                ("internal", d.internal, x.internal),
            ] {
                if received != current {
                    return Err(arguments::inequivalent_flag(key, &desc, received, current));
                }
            }
            return arguments::assert_exchange_equivalence(&x.arguments, &d.arguments, &desc)
                .map(|_| None);
        }
        if d.name.starts_with("amq.") {
            return Err(amqp_error!(
                AccessRefused,
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            ));
        }
        arguments::validate_exchange_arguments(&d.arguments, &desc)?;
        let x = Arc::new(Exchange::new(
            d.name.clone(),
            kind,
            d.durable,
            d.auto_delete,
            d.internal,
            d.arguments.clone(),
        ));
        if x.durable {
            let def = self.exchange_def(&x);
            self.record(&mut topology, Change::PutExchange(def));
        }
        self.apply_exchange_policy(&x);
        self.exchanges.insert(d.name.clone(), x);
        self.changed();
        Ok(topology.sync.take())
    }

    /// Puts back a durable exchange found in the definitions at start-up.
    pub fn restore_exchange(&self, x: Exchange) {
        self.apply_exchange_policy(&x);
        self.exchanges.insert(x.name.clone(), Arc::new(x));
        self.changed();
    }

    /// Puts back a durable queue recovered at start-up.
    pub fn restore_queue(&self, q: Arc<Queue>) {
        self.queues.insert(q.name.clone(), q);
        self.changed();
    }

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
        if let Ok(true) = src.bind(binding.clone()) {
            topology
                .incoming
                .entry(binding.destination.identity())
                .or_default()
                .push((src.clone(), binding));
        }
        self.changed();
    }

    /// exchange.delete. Deleting a missing exchange succeeds, as in RabbitMQ.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> AmqpResult<Sync> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(amqp_error!(
                AccessRefused,
                "deletion of system exchange '{}' in vhost '{}' not allowed",
                name,
                self.name
            ));
        }
        let mut topology = self.lock();
        let Some(x) = self.exchange(name) else {
            return Ok(None);
        };
        if if_unused && x.has_bindings() {
            return Err(amqp_error!(
                PreconditionFailed,
                "{} in use",
                exchange_desc(name, &self.name)
            ));
        }
        self.remove_exchange_locked(&mut topology, &x);
        Ok(topology.sync.take())
    }

    /// Removes an exchange and every binding from or to it, deleting auto-delete sources
    /// left without bindings.
    fn remove_exchange_locked(&self, topology: &mut Topology, x: &Arc<Exchange>) {
        self.exchanges.remove_if(&x.name, |_, v| Arc::ptr_eq(v, x));
        if x.durable {
            // Also forgets the bindings from and to it in the definitions.
            self.record(
                topology,
                Change::DeleteExchange {
                    vhost: self.name.clone(),
                    name: x.name.clone(),
                },
            );
        }
        let me = Destination::Exchange(x.clone());
        // Bindings out of it: forget them in the destinations' reverse index.
        for binding in x.bindings() {
            x.unbind(&binding);
            Self::forget_incoming(topology, &binding, x);
        }
        // Bindings into it: remove them from their sources.
        self.remove_incoming_locked(topology, &me);
        self.changed();
    }

    fn forget_incoming(topology: &mut Topology, binding: &Binding, source: &Arc<Exchange>) {
        let id = binding.destination.identity();
        if let Some(list) = topology.incoming.get_mut(&id) {
            list.retain(|(s, b)| !(Arc::ptr_eq(s, source) && b == binding));
            if list.is_empty() {
                topology.incoming.remove(&id);
            }
        }
    }

    /// Removes every binding leading to `destination`; sources that are auto-delete and
    /// lose their last binding are deleted in turn.
    fn remove_incoming_locked(&self, topology: &mut Topology, destination: &Destination) {
        let Some(incoming) = topology.incoming.remove(&destination.identity()) else {
            return;
        };
        for (source, binding) in incoming {
            source.unbind(&binding);
            if let Some(def) = self.binding_def(&source, &binding) {
                self.record(topology, Change::DeleteBinding(def));
            }
            self.maybe_auto_delete(topology, &source);
        }
    }

    fn maybe_auto_delete(&self, topology: &mut Topology, source: &Arc<Exchange>) {
        if source.auto_delete && !source.has_bindings() && self.exchange_is(source) {
            self.remove_exchange_locked(topology, source);
        }
    }

    fn exchange_is(&self, x: &Arc<Exchange>) -> bool {
        self.exchanges
            .get(&x.name)
            .is_some_and(|v| Arc::ptr_eq(v.value(), x))
    }

    fn add_binding_locked(
        &self,
        topology: &mut Topology,
        source: &Arc<Exchange>,
        binding: Binding,
    ) -> AmqpResult<Sync> {
        if source.bind(binding.clone())? {
            if let Some(def) = self.binding_def(source, &binding) {
                self.record(topology, Change::PutBinding(def));
            }
            topology
                .incoming
                .entry(binding.destination.identity())
                .or_default()
                .push((source.clone(), binding));
            self.changed();
        }
        Ok(topology.sync.take())
    }

    fn remove_binding_locked(
        &self,
        topology: &mut Topology,
        source: &Arc<Exchange>,
        binding: &Binding,
    ) {
        if source.unbind(binding) {
            if let Some(def) = self.binding_def(source, binding) {
                self.record(topology, Change::DeleteBinding(def));
            }
            Self::forget_incoming(topology, binding, source);
            self.changed();
            self.maybe_auto_delete(topology, source);
        }
    }

    /// exchange.bind: routes from `source` to `destination`.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> AmqpResult<Sync> {
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
    ) -> AmqpResult<Sync> {
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
        self.remove_binding_locked(&mut topology, &src, &binding);
        Ok(topology.sync.take())
    }

    // ---- queues ---------------------------------------------------------------------------

    /// Finds a queue the connection may use: it exists and is not another connection's
    /// exclusive queue.
    pub fn usable_queue(&self, name: &str, connection: u64) -> AmqpResult<Arc<Queue>> {
        let q = self.queue(name).ok_or_else(|| self.no_queue(name))?;
        if q.exclusive_owner.is_some_and(|owner| owner != connection) {
            return Err(self.resource_locked(name));
        }
        Ok(q)
    }

    /// queue.declare. Returns the queue with its ready-message and consumer counts. The
    /// channel has already refused client-chosen names in the reserved `amq.` namespace.
    pub fn declare_queue(
        &self,
        d: &QueueDeclare,
        connection: u64,
    ) -> AmqpResult<(Arc<Queue>, u32, u32, Sync)> {
        let desc = queue_desc(&d.name, &self.name);
        let mut topology = self.lock();
        if let Some(q) = self.queue(&d.name) {
            let owned_by_other = q.exclusive_owner.is_some_and(|o| o != connection);
            if owned_by_other || (!d.passive && d.exclusive != q.exclusive_owner.is_some()) {
                return Err(self.resource_locked(&d.name));
            }
            if !d.passive {
                // Exclusive queues are never durable; RabbitMQ accepts either on redeclare.
                if d.durable != q.durable && q.exclusive_owner.is_none() {
                    return Err(arguments::inequivalent_flag(
                        "durable", &desc, d.durable, q.durable,
                    ));
                }
                if d.auto_delete != q.auto_delete {
                    return Err(arguments::inequivalent_flag(
                        "auto_delete",
                        &desc,
                        d.auto_delete,
                        q.auto_delete,
                    ));
                }
                arguments::assert_queue_equivalence(&q.arguments, &d.arguments, &desc)?;
            }
            q.touch();
            let (messages, consumers) = q.counts();
            return Ok((q, messages, consumers, None));
        }
        if d.passive {
            return Err(self.no_queue(&d.name));
        }
        arguments::validate_queue_arguments(&d.arguments, &desc)?;
        if crate::protocol::table::get(&d.arguments, "x-queue-type")
            .and_then(crate::protocol::table::as_bytes)
            == Some(b"quorum".as_slice())
        {
            // RabbitMQ's quorum queues are durable, shared and permanent.
            for (refused, property) in [
                (d.auto_delete, "auto-delete"),
                (d.exclusive, "exclusive-owner"),
                (!d.durable, "non-durable"),
            ] {
                if refused {
                    return Err(amqp_error!(
                        PreconditionFailed,
                        "invalid property '{}' for {}",
                        property,
                        desc
                    ));
                }
            }
        }
        // Like RabbitMQ, an exclusive queue is never durable.
        let durable = d.durable && !d.exclusive;
        let (id, log) = if durable {
            let id = self.defs.next_queue_id();
            let log = self.store.create_queue_log(id).map_err(|e| {
                tracing::error!(queue = %d.name, error = %e, "cannot create the queue's log");
                AmqpError::bare(crate::error::ReplyCode::InternalError)
            })?;
            (id, Some(log))
        } else {
            (0, None)
        };
        let policy = self.queue_policy(&d.name);
        let queue = Queue::new(
            QueueConfig {
                name: d.name.clone(),
                vhost: self.name.clone(),
                durable,
                auto_delete: d.auto_delete,
                exclusive_owner: d.exclusive.then_some(connection),
                arguments: d.arguments.clone(),
                id,
            },
            self.queue_context(),
            log,
            policy.as_ref(),
        );
        if durable {
            let def = self.queue_def(&queue);
            self.record(&mut topology, Change::PutQueue(def));
        }
        self.queues.insert(d.name.clone(), queue.clone());
        self.changed();
        Ok((queue, 0, 0, topology.sync.take()))
    }

    /// queue.delete. Deleting a missing queue succeeds with a count of 0, as in RabbitMQ.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: u64,
    ) -> AmqpResult<(u32, Sync)> {
        let q = match self.usable_queue(name, connection) {
            Ok(q) => q,
            Err(e) if e.code == crate::error::ReplyCode::NotFound => return Ok((0, None)),
            Err(e) => return Err(e),
        };
        let (messages, consumers) = q.counts();
        let desc = queue_desc(name, &self.name);
        if if_unused && consumers > 0 {
            return Err(amqp_error!(PreconditionFailed, "{} in use", desc));
        }
        if if_empty && messages > 0 {
            return Err(amqp_error!(PreconditionFailed, "{} not empty", desc));
        }
        Ok(self.remove_queue(&q))
    }

    /// Deletes a queue unconditionally (auto-delete, exclusive owner gone, queue.delete):
    /// removes its bindings and its log and tells its consumers. Returns the ready messages
    /// it held and the epoch its deletion is durable in.
    pub fn remove_queue(&self, queue: &Arc<Queue>) -> (u32, Sync) {
        let mut topology = self.lock();
        let removed = self
            .queues
            .remove_if(&queue.name, |_, v| Arc::ptr_eq(v, queue))
            .is_some();
        if !removed {
            return (0, None);
        }
        self.remove_incoming_locked(&mut topology, &Destination::Queue(queue.clone()));
        if queue.durable {
            self.record(
                &mut topology,
                Change::DeleteQueue {
                    vhost: self.name.clone(),
                    name: queue.name.clone(),
                },
            );
        }
        self.changed();
        let sync = topology.sync.take();
        drop(topology);
        let (messages, mut consumers) = queue.mark_deleted();
        // RabbitMQ cancels a deleted queue's consumers in consumer-tag order.
        consumers.sort_by(|a, b| a.tag.cmp(&b.tag));
        for c in consumers {
            c.outbox.push_event(OutboxEvent::ConsumerCancelled {
                channel: c.channel,
                consumer_tag: c.tag.clone(),
            });
        }
        (messages, sync)
    }

    /// queue.bind.
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
        connection: u64,
    ) -> AmqpResult<Sync> {
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
    ) -> AmqpResult<Sync> {
        if exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        let mut topology = self.lock();
        let Some(x) = self.exchange(exchange) else {
            return Ok(None);
        };
        let q = match self.usable_queue(queue, connection) {
            Ok(q) => q,
            Err(e) if e.code == crate::error::ReplyCode::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let binding = Binding {
            destination: Destination::Queue(q),
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        };
        self.remove_binding_locked(&mut topology, &x, &binding);
        Ok(topology.sync.take())
    }

    /// Deletes the exclusive queues of a connection that closed.
    pub fn remove_exclusive_queues(&self, connection: u64) {
        let owned: Vec<Arc<Queue>> = self
            .queues
            .iter()
            .filter(|q| q.exclusive_owner == Some(connection))
            .map(|q| q.value().clone())
            .collect();
        for q in owned {
            self.remove_queue(&q);
        }
    }

    // ---- routing --------------------------------------------------------------------------

    /// Routes a message published to `exchange`: follows exchange-to-exchange bindings and
    /// alternate exchanges, and appends each matching queue to `out` once. Returns false
    /// if the result depended on message headers (and so must not be cached).
    pub fn route(
        &self,
        exchange: &Arc<Exchange>,
        routing_keys: &[&[u8]],
        headers: &mut dyn FnMut() -> Option<FieldTable>,
        out: &mut Vec<Arc<Queue>>,
    ) -> bool {
        let mut cacheable = true;
        let mut seen: Vec<*const Exchange> = vec![Arc::as_ptr(exchange)];
        let mut pending: Vec<Arc<Exchange>> = vec![exchange.clone()];
        while let Some(x) = pending.pop() {
            let mut matched = false;
            if x.name.is_empty() {
                // The default exchange: every queue is bound by its own name.
                for key in routing_keys {
                    if let Ok(name) = std::str::from_utf8(key)
                        && let Some(q) = self.queues.get(name)
                    {
                        matched = true;
                        out.push(q.value().clone());
                    }
                }
            } else {
                if x.kind == ExchangeKind::Headers {
                    cacheable = false;
                }
                x.route(routing_keys, headers, &mut |d| {
                    matched = true;
                    match d {
                        Destination::Queue(q) => out.push(q.clone()),
                        Destination::Exchange(next) => {
                            if !seen.contains(&Arc::as_ptr(next)) {
                                seen.push(Arc::as_ptr(next));
                                pending.push(next.clone());
                            }
                        }
                    }
                });
            }
            // An exchange whose own bindings matched nothing hands the message to its
            // alternate exchange, looked up by name each time.
            if !matched
                && let Some(ae) = x.alternate()
                && let Some(next) = self.exchange(&ae)
                && !seen.contains(&Arc::as_ptr(&next))
            {
                seen.push(Arc::as_ptr(&next));
                pending.push(next);
            }
        }
        // A queue reached through several bindings or paths gets the message once.
        if out.len() > 1 {
            out.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
            out.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
        cacheable
    }
}
