//! A virtual host: a namespace of exchanges, queues and the bindings between them.
//!
//! Lookups (every publish) read lock-free maps. Changes (declare, bind, delete) are rare and
//! take the vhost's topology lock, so that related changes never interleave: a queue being
//! deleted cannot gain a binding halfway. Every change bumps `version`, which is how
//! channels know their cached routes went stale.
//!
//! Changes to durable objects are recorded in the definitions journal; the methods that
//! make them return the store epoch to wait for before telling the client ([`SyncEpoch`]).
//!
//! This file holds the vhost's state and lookups; its operations are beside it: exchanges
//! ([`exchanges`]), queues ([`queues`]), bindings ([`bindings`]), routing ([`route`]) and the
//! routing of dead letters ([`dead_letter`]).

pub mod bindings;
pub mod checks;
pub mod dead_letter;
pub mod exchanges;
pub mod queues;
pub mod route;
mod unbinding;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use amq_protocol::types::FieldTable;
use dashmap::DashMap;

use crate::amqp_error;
use crate::broker::arguments::queue_desc;
use crate::broker::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::broker::memory::Memory;
use crate::broker::policy::{self, Policy};
use crate::broker::queue::Queue;
use crate::broker::queue::context::{QueueHost, QueueServices};
use crate::broker::timer::Timers;
use crate::broker::worker::Worker;
use crate::protocol::error::AmqpError;
use crate::store::Store;
use crate::store::definitions::{
    BindingDef, Change, DefinitionsStore, ExchangeDef, PolicyDef, QueueDef, VhostLimits,
    encode_arguments,
};

/// The store epoch a change becomes durable in, when it had to be written.
pub type SyncEpoch = Option<u64>;

/// The broker services a vhost and its queues work with.
#[derive(Clone)]
pub struct VhostServices {
    /// Where durable queues keep their messages.
    pub store: Arc<Store>,
    /// Where durable definitions are recorded.
    pub defs: Arc<DefinitionsStore>,
    /// Wakes queues for message and queue expiry.
    pub timers: Arc<Timers>,
    /// The memory budget queues page against.
    pub memory: &'static Memory,
    /// Runs the routing of dead letters, outside the calls that caused them.
    pub worker: Arc<Worker>,
    /// Broker-wide limits on what clients create.
    pub limits: CreationLimits,
    /// The broker's running totals, where queue churn is counted.
    pub ledger: Arc<crate::broker::stats::Ledger>,
    /// How long an at-least-once dead letter waits before it is routed again.
    pub dead_letter_retry_ms: u64,
    /// The largest frame the broker takes (`frame_max_bytes`): a dead letter whose properties
    /// would not fit in one is dropped (see `route_dead_letters`).
    pub frame_max_bytes: u32,
    /// The broker's direct reply-to consumers: a dead letter or a management publish routed
    /// through the default exchange with a reply name reaches them, as a client's publish
    /// does (RabbitMQ's default exchange delivers replies whoever routes through it).
    pub replies: Arc<crate::broker::reply_to::ReplyConsumers>,
}

/// The end of a refusal by the topology budget (`broker_topology_bytes`) of `bytes`.
pub(crate) fn topology_full(bytes: usize) -> String {
    format!(
        "queues, exchanges and bindings of this broker would hold more than {bytes} bytes (broker_topology_bytes)"
    )
}

/// Limits on what clients create, shared by every vhost of a broker.
#[derive(Clone, Debug)]
pub struct CreationLimits {
    /// Queues in the whole broker, and how many there are.
    pub max_queues: usize,
    pub queues: Arc<AtomicUsize>,
    pub max_exchanges_per_vhost: usize,
    pub max_bindings_per_exchange: usize,
    /// What every queue, exchange and binding of the broker keeps, against
    /// `broker_topology_bytes`.
    pub topology: Arc<crate::broker::budget::Budget>,
}

impl CreationLimits {
    pub fn new(limits: &crate::config::Limits) -> Self {
        CreationLimits {
            max_queues: limits.max_queues,
            queues: Default::default(),
            max_exchanges_per_vhost: limits.max_exchanges_per_vhost,
            max_bindings_per_exchange: limits.max_bindings_per_exchange,
            topology: crate::broker::budget::Budget::broker(limits.broker_topology_bytes, None),
        }
    }
}

/// A virtual host.
pub struct VirtualHost {
    pub name: String,
    exchanges: DashMap<String, Arc<Exchange>>,
    /// The default exchange, also in `exchanges` under "": it can be neither declared nor
    /// deleted, and most publishes name it. Looked up in the map, its empty name went to
    /// `memcmp`, whose masked load of an empty slice's dangling pointer takes a slow assist
    /// on this kind of Intel core (4-6% of a many-queues run).
    default_exchange: Arc<Exchange>,
    queues: DashMap<String, Arc<Queue>>,
    /// Serialises changes to exchanges, queues and bindings. Fair where it matters: a large
    /// deletion hands it to a waiter between its batches (`vhost::unbinding`).
    topology: parking_lot::Mutex<Topology>,
    /// Bumped by every change that could alter where a message is routed.
    version: AtomicU64,
    services: VhostServices,
    /// The policies of this vhost.
    policies: RwLock<Vec<Policy>>,
    /// The operator policies of this vhost (limits only; see [`policy::with_operator`]).
    operator_policies: RwLock<Vec<Policy>>,
    /// Bumped by every change of policies, after they are replaced and before they are
    /// applied: a queue declared meanwhile sees it moved and applies them again.
    policy_epoch: AtomicU64,
    /// Held while the recorded policies are read and applied, so that of two changes made
    /// at once the later snapshot is applied last.
    applying_policies: Mutex<()>,
    /// `max-queues` and `max-connections`, as `set_vhost_limits` sets them.
    limits: RwLock<VhostLimits>,
    /// Open client connections to this vhost.
    connections: AtomicUsize,
    /// The message counters of this vhost's closed channels, so that its totals never go
    /// backwards.
    pub retired: crate::broker::stats::MessageCounters,
    /// This vhost, for the queues it creates (they hand it their dead letters) and for the
    /// dead-letter jobs it submits.
    me: Weak<VirtualHost>,
}

impl std::fmt::Debug for VirtualHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualHost")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The reverse index of bindings, and the exclusive queues of each connection, kept under
/// the topology lock.
#[derive(Debug, Default)]
struct Topology {
    /// For each destination (by identity), the bindings that lead to it and their source,
    /// keyed so that forgetting one is a lookup (a queue may have 100,000 bindings). The key
    /// holds the arguments encoded, never decoded: kept decoded, an array of 4,095 empty
    /// values (4 KiB sent) took 130 KiB per binding.
    incoming: HashMap<usize, HashMap<IncomingKey, Arc<Exchange>>>,
    /// The names of the exclusive queues each connection (by id) owns: a connection that
    /// closes deletes those without a pass over every queue of the vhost (a million
    /// queues made each close of any connection cost that much).
    exclusive: HashMap<u64, std::collections::HashSet<String>>,
    /// The epoch of the last definitions change made under this lock.
    sync: SyncEpoch,
    /// The vhost was deleted (`VirtualHost::retire`): nothing more is declared or bound in
    /// it by a channel or an API request that still holds it, or what it made would outlive
    /// the deletion, its shares of the topology budget held and its definitions recorded.
    retired: bool,
}

/// Identifies a binding among those leading to one destination: its source (by identity),
/// routing key and encoded arguments.
type IncomingKey = (usize, String, Vec<u8>);

fn incoming_key(source: &Arc<Exchange>, binding: &Binding) -> IncomingKey {
    (
        Arc::as_ptr(source) as usize,
        binding.routing_key.clone(),
        crate::protocol::table::encode(&binding.arguments),
    )
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

/// The default exchange's line of [`PREDECLARED`], which comes first.
const DEFAULT_EXCHANGE: (&str, ExchangeKind, bool) = PREDECLARED[0];

/// One of the exchanges every vhost has.
fn predeclared((name, kind, internal): (&str, ExchangeKind, bool)) -> Exchange {
    Exchange::new(
        name.to_owned(),
        kind,
        true,
        false,
        internal,
        FieldTable::default(),
    )
    .declared_by(crate::broker::exchange::INTERNAL_USER)
}

fn default_exchange_refused() -> AmqpError {
    amqp_error!(
        AccessRefused,
        "operation not permitted on the default exchange"
    )
}

/// A queue or exchange named over HTTP or in a definitions file must fit the AMQP short
/// string that names it in frames (deliveries name their exchange): AMQP's own declares are
/// held to it by the parser. RabbitMQ 3.10.8's HTTP API refuses such a queue with this text
/// (and a trailing newline), but takes such an exchange, and either from a definitions file.
fn name_fits_amqp(kind: &str, name: &str) -> Result<(), AmqpError> {
    let max = crate::protocol::SHORT_STRING_MAX_BYTES;
    match name.len() <= max {
        true => Ok(()),
        false => Err(amqp_error!(
            PreconditionFailed,
            "{kind} should be less than {max} bytes, actually was {}",
            name.len()
        )),
    }
}

impl VirtualHost {
    pub fn new(name: &str, services: VhostServices) -> Arc<Self> {
        Arc::new_cyclic(|me| {
            let vhost = VirtualHost {
                name: name.to_owned(),
                exchanges: DashMap::new(),
                default_exchange: Arc::new(predeclared(DEFAULT_EXCHANGE)),
                queues: DashMap::new(),
                topology: parking_lot::Mutex::new(Topology::default()),
                version: AtomicU64::new(0),
                services,
                policies: RwLock::new(Vec::new()),
                operator_policies: RwLock::new(Vec::new()),
                policy_epoch: AtomicU64::new(0),
                applying_policies: Mutex::new(()),
                limits: RwLock::new(VhostLimits::default()),
                connections: AtomicUsize::new(0),
                retired: Default::default(),
                me: me.clone(),
            };
            vhost.predeclare();
            vhost
        })
    }

    /// Creates the exchanges every vhost has.
    fn predeclare(&self) {
        self.exchanges
            .insert(String::new(), self.default_exchange.clone());
        for &(x, kind, internal) in &PREDECLARED[1..] {
            self.exchanges.insert(
                x.to_owned(),
                Arc::new(
                    predeclared((x, kind, internal)).charged_to(
                        &self.services.limits.topology,
                        self.services
                            .limits
                            .topology
                            .take_anyway(Exchange::kept_bytes(x, true, &FieldTable::default())),
                    ),
                ),
            );
        }
    }

    /// What a new queue of this vhost works with.
    pub fn queue_services(&self) -> QueueServices {
        let host: Weak<dyn QueueHost> = self.me.clone();
        QueueServices {
            store: self.services.store.clone(),
            memory: self.services.memory,
            timers: self.services.timers.clone(),
            host,
            dead_letter_retry_ms: self.services.dead_letter_retry_ms,
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.services.store
    }

    fn read_policies(&self) -> std::sync::RwLockReadGuard<'_, Vec<Policy>> {
        self.policies.read().unwrap_or_else(|e| e.into_inner())
    }

    fn read_operator_policies(&self) -> std::sync::RwLockReadGuard<'_, Vec<Policy>> {
        self.operator_policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The policy in force for a queue named `name`: its user policy with any operator
    /// policy's limits over it.
    pub fn queue_policy(&self, name: &str) -> Option<Policy> {
        let (user, operator) = self.queue_policy_names(name);
        let policies = self.read_policies();
        let operators = self.read_operator_policies();
        let find = |all: &[Policy], n: Option<String>| {
            n.and_then(|n| all.iter().find(|p| p.name == n).cloned())
        };
        policy::with_operator(
            find(&policies, user).as_ref(),
            find(&operators, operator).as_ref(),
        )
    }

    /// The names of the user and operator policies that match a queue named `name`.
    pub fn queue_policy_names(&self, name: &str) -> (Option<String>, Option<String>) {
        let user = policy::matching(&self.read_policies(), policy::Target::Queue, name)
            .map(|p| p.name.clone());
        let operator =
            policy::matching(&self.read_operator_policies(), policy::Target::Queue, name)
                .map(|p| p.name.clone());
        (user, operator)
    }

    /// The name of the policy that applies to an exchange named `name`.
    pub fn exchange_policy_name(&self, name: &str) -> Option<String> {
        policy::matching(&self.read_policies(), policy::Target::Exchange, name)
            .map(|p| p.name.clone())
    }

    fn compile(&self, defs: &[PolicyDef]) -> Vec<Policy> {
        defs.iter()
            .filter(|d| d.vhost == self.name)
            .filter_map(Policy::compile)
            .collect()
    }

    /// Replaces the vhost's operator policies and applies them to existing queues. At boot;
    /// a running broker goes through [`VirtualHost::reload_policies`].
    pub(crate) fn set_operator_policies(&self, defs: &[PolicyDef]) {
        let compiled = self.compile(defs);
        *self
            .operator_policies
            .write()
            .unwrap_or_else(|e| e.into_inner()) = compiled;
        self.policy_epoch.fetch_add(1, Ordering::SeqCst);
        for q in self.queues() {
            q.apply_policy(self.queue_policy(&q.name).as_ref());
        }
        self.changed();
    }

    /// Replaces the vhost's policies and applies them to existing queues and exchanges. At
    /// boot; a running broker goes through [`VirtualHost::reload_policies`].
    pub(crate) fn set_policies(&self, defs: &[PolicyDef]) {
        let compiled = self.compile(defs);
        *self.policies.write().unwrap_or_else(|e| e.into_inner()) = compiled;
        self.policy_epoch.fetch_add(1, Ordering::SeqCst);
        let policies = self.read_policies().clone();
        for x in self.exchanges.iter() {
            let ae = policy::matching(&policies, policy::Target::Exchange, &x.name)
                .and_then(|p| p.string("alternate-exchange"))
                .map(str::to_owned);
            x.set_policy_alternate(ae);
        }
        for q in self.queues() {
            q.apply_policy(self.queue_policy(&q.name).as_ref());
        }
        self.changed();
    }

    /// Applies the policies (or operator policies) recorded in the definitions now. Two
    /// changes made at once each record theirs and then apply what is recorded, one after
    /// the other: the one applied last read the other's too.
    pub fn reload_policies(&self, operator: bool) {
        let _applying = self
            .applying_policies
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match operator {
            true => self.set_operator_policies(&self.services.defs.operator_policies()),
            false => self.set_policies(&self.services.defs.policies()),
        }
    }

    /// Where policy changes stand, for a declaration to tell whether one happened while it
    /// made its queue.
    fn policy_epoch(&self) -> u64 {
        self.policy_epoch.load(Ordering::SeqCst)
    }

    /// A queue just put in the vhost, made with the policies of epoch `seen`: changes since
    /// did not find it, so it applies the policies again, until no change overtakes that
    /// (each bumps the epoch before it goes over the queues).
    fn catch_up_with_policies(&self, queue: &Queue, mut seen: u64) {
        loop {
            let now = self.policy_epoch();
            if now == seen {
                return;
            }
            seen = now;
            queue.apply_policy(self.queue_policy(&queue.name).as_ref());
        }
    }

    /// Applies the policy matching a new exchange, once it is in the vhost: a policy change
    /// from then on finds it there, and one before has replaced the policies this reads.
    /// Applied again if a change overtook it: it could have set what it read over what the
    /// change had set.
    fn apply_exchange_policy(&self, x: &Exchange) {
        loop {
            let seen = self.policy_epoch();
            let ae = policy::matching(&self.read_policies(), policy::Target::Exchange, &x.name)
                .and_then(|p| p.string("alternate-exchange"))
                .map(str::to_owned);
            x.set_policy_alternate(ae);
            if self.policy_epoch() == seen {
                break;
            }
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Topology> {
        self.topology.lock()
    }

    fn changed(&self) {
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Records a change to durable definitions.
    fn record(&self, topology: &mut Topology, change: Change) {
        let epoch = self.services.defs.record(change);
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
            lepus_user: x.declared_by.clone(),
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

    /// Marks the vhost deleted: declares and binds are refused from now on (see
    /// `Topology::retired`). Called once it has left the broker's map, before its
    /// connections are closed.
    pub fn retire(&self) {
        self.lock().retired = true;
    }

    /// Refuses what would add to a deleted vhost: its connections are being closed with the
    /// same code and text.
    fn refuse_if_retired(&self, topology: &Topology) -> crate::protocol::error::AmqpResult<()> {
        if topology.retired {
            return Err(amqp_error!(
                ConnectionForced,
                "vhost '{}' is deleted",
                self.name
            ));
        }
        Ok(())
    }

    /// Takes `bytes` from the topology budget for a new queue, exchange or binding, or
    /// refuses it: 406, `what` ("cannot declare queue 'q'") and the budget.
    fn topology_share(
        &self,
        bytes: usize,
        what: impl FnOnce() -> String,
    ) -> crate::protocol::error::AmqpResult<crate::broker::budget::Share> {
        self.services
            .limits
            .topology
            .take(bytes)
            .map_err(|refused| {
                amqp_error!(
                    PreconditionFailed,
                    "{}: {}",
                    what(),
                    topology_full(refused.limit_bytes())
                )
            })
    }

    /// The routing generation: a cached route is valid while this is unchanged.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        if name.is_empty() {
            return Some(self.default_exchange.clone());
        }
        self.exchanges.get(name).map(|x| x.value().clone())
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|q| q.value().clone())
    }

    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.iter().map(|x| x.value().clone()).collect()
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

    /// The vhost's limits.
    pub fn limits(&self) -> VhostLimits {
        self.limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets the vhost's limits (recorded by the caller with the vhost's definition).
    pub fn set_limits(&self, limits: VhostLimits) {
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    /// A client opens a connection to this vhost, unless its `max-connections` is reached
    /// (the limit that refused it is the error). The slot counts the connection until dropped.
    pub fn open_connection(self: &Arc<Self>) -> Result<ConnectionSlot, i64> {
        let max = self.limits().max_connections.filter(|&m| m >= 0);
        let mut now = self.connections.load(Ordering::Relaxed);
        loop {
            if let Some(max) = max
                && now as i64 >= max
            {
                return Err(max);
            }
            match self.connections.compare_exchange_weak(
                now,
                now + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(ConnectionSlot(self.clone())),
                Err(actual) => now = actual,
            }
        }
    }

    /// Open client connections to this vhost.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// RabbitMQ's refusal to touch another connection's exclusive queue.
    pub fn resource_locked(&self, name: &str) -> AmqpError {
        amqp_error!(
            ResourceLocked,
            "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            queue_desc(name, &self.name)
        )
    }
}

/// One open connection counted against its vhost's `max-connections`; dropping it frees the
/// slot, so every way a connection ends (close, error, vanished peer) gives it back.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<VirtualHost>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let _ = self
            .0
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}
