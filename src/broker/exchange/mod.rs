//! Exchanges: where a published message goes.
//!
//! An exchange keeps the bindings whose source it is in a [`Bindings`] index shaped by its
//! type, so that routing answers "which destinations match this routing key" without scanning
//! every binding: a hash map for direct, a trie for topic ([`topic`]), a plain list for fanout,
//! matchers for headers ([`headers`]).

pub mod bindings;
pub mod destinations;
pub mod headers;
pub mod topic;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use amq_protocol::types::FieldTable;

use bindings::Bindings;
pub use bindings::{BindLimits, BindRefused, BindingKey, ExchangeKind, LazyHeaders};

use crate::broker::queue::Queue;
use crate::protocol::error::{AmqpError, AmqpResult};
use crate::protocol::table;

/// Where a binding leads.
#[derive(Clone)]
pub enum Destination {
    Queue(Arc<Queue>),
    Exchange(Arc<Exchange>),
}

impl Destination {
    /// A key that identifies the destination object (not its name: a queue deleted and
    /// declared again is a different destination).
    pub fn identity(&self) -> usize {
        match self {
            Destination::Queue(q) => Arc::as_ptr(q) as usize,
            Destination::Exchange(x) => Arc::as_ptr(x) as usize,
        }
    }

    /// Whether it is being deleted (see `Queue::detach`, `Exchange::detach`).
    pub fn is_detached(&self) -> bool {
        match self {
            Destination::Queue(q) => q.is_detached(),
            Destination::Exchange(x) => x.is_detached(),
        }
    }

    /// Whether it survives a restart (its bindings from durable exchanges are recorded).
    pub fn durable(&self) -> bool {
        match self {
            Destination::Queue(q) => q.durable,
            Destination::Exchange(x) => x.durable,
        }
    }
}

impl Eq for Destination {}

impl std::hash::Hash for Destination {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Queue(q) => write!(f, "queue {:?}", q.name),
            Destination::Exchange(x) => write!(f, "exchange {:?}", x.name),
        }
    }
}

/// A binding to a queue or an exchange.
pub type Binding = bindings::Binding<Destination>;

/// An exchange.
#[derive(Debug)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    /// Deleted when its last binding as a source goes away.
    pub auto_delete: bool,
    /// Clients may not publish to it directly; other exchanges may route to it.
    pub internal: bool,
    /// Arguments as declared (`alternate-exchange` is the one RabbitMQ interprets).
    pub arguments: FieldTable,
    /// The name of the alternate exchange, if the arguments name one.
    pub alternate_exchange: Option<String>,
    /// The alternate exchange a policy names, used when the arguments name none. Only read
    /// for messages the exchange's own bindings did not route.
    policy_alternate_exchange: Mutex<Option<String>>,
    bindings: RwLock<Bindings<Destination>>,
    /// Messages published into the exchange and routed out of it.
    pub counters: crate::broker::stats::ExchangeCounters,
    /// Who declared it (the management API's `user_who_performed_action`): a user's name, or
    /// [`INTERNAL_USER`] for what the broker made itself. A declare of an exchange that
    /// exists changes nothing, as in RabbitMQ.
    pub declared_by: String,
    /// Deleted: out of its vhost, its bindings being removed a batch at a time
    /// (`vhost::unbinding`). Routing treats it as gone, as RabbitMQ does once the deletion
    /// is done: a message reaching it through another exchange's binding goes to that
    /// exchange's alternate, or is unroutable.
    detached: AtomicBool,
    /// What it keeps ([`Exchange::kept_bytes`]), held against the broker's topology budget
    /// while it lives (`Exchange::charged_to`); none in unit tests and benchmarks.
    share: Option<crate::broker::budget::Share>,
}

/// What an exchange keeps besides its name, arguments and bindings (measured: 550 bytes per
/// topic exchange, resident).
const EXCHANGE_KEPT_BYTES: usize = 512;

/// Bindings `Exchange::in_use` looks at, at most: a batch of a deletion's unbinding.
const IN_USE_SCAN_MAX: usize = 4096;

/// Who RabbitMQ says made what it made itself (the predeclared exchanges) or what its CLI
/// made (`rabbitmqctl import_definitions`, and definitions loaded at boot): `rmq-internal`.
pub const INTERNAL_USER: &str = "rmq-internal";

impl Exchange {
    pub fn new(
        name: String,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        let alternate_exchange = table::get(&arguments, "alternate-exchange")
            .and_then(table::as_str)
            .map(str::to_owned);
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            alternate_exchange,
            policy_alternate_exchange: Mutex::new(None),
            bindings: RwLock::new(Bindings::new(kind)),
            counters: Default::default(),
            declared_by: String::new(),
            detached: AtomicBool::new(false),
            share: None,
        }
    }

    /// What an exchange declared with these keeps, as its topology budget counts it: its
    /// record, its name in a few places, and its arguments decoded (a durable one's twice:
    /// the definitions keep them too).
    pub fn kept_bytes(name: &str, durable: bool, arguments: &FieldTable) -> usize {
        let args = crate::broker::arguments::kept_bytes(arguments);
        let mut kept = EXCHANGE_KEPT_BYTES + 3 * name.len() + args;
        if durable {
            kept += crate::broker::arguments::DEFINITION_KEPT_BYTES + args;
        }
        kept
    }

    /// The same, holding `share` (what it keeps itself, from `budget`) and what each of its
    /// bindings keeps against `budget` (the broker's topology budget) while they live.
    pub fn charged_to(
        mut self,
        budget: &Arc<crate::broker::budget::Budget>,
        share: crate::broker::budget::Share,
    ) -> Self {
        self.share = Some(share);
        self.bindings
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .charge_to(budget);
        self
    }

    /// Whether it was deleted (see [`Exchange::detached`]).
    pub fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }

    /// Marks it deleted, before the routing version moves (routes are cached by it).
    pub fn detach(&self) {
        self.detached.store(true, Ordering::Release);
    }

    /// The exchange, declared by `user` (see [`Exchange::declared_by`]).
    pub fn declared_by(mut self, user: &str) -> Self {
        user.clone_into(&mut self.declared_by);
        self
    }

    fn read(&self) -> RwLockReadGuard<'_, Bindings<Destination>> {
        self.bindings.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Bindings<Destination>> {
        self.bindings.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The alternate exchange in force: the argument's, else the policy's.
    pub fn alternate(&self) -> Option<String> {
        self.alternate_exchange.clone().or_else(|| {
            self.policy_alternate_exchange
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }

    /// Sets the alternate exchange a policy names (None when no policy applies).
    pub fn set_policy_alternate(&self, name: Option<String>) {
        *self
            .policy_alternate_exchange
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = name;
    }

    /// Adds a binding from this exchange, unless it has `max` already. Returns false if it
    /// already existed.
    pub fn bind(
        &self,
        binding: Binding,
        limits: BindLimits,
        full: impl FnOnce(BindRefused) -> AmqpError,
    ) -> AmqpResult<bool> {
        self.write().bind(binding, limits, full)
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&self, binding: &Binding) -> bool {
        self.write().unbind(binding)
    }

    /// Removes a binding by its key, without decoding its arguments.
    pub fn unbind_key(&self, key: &BindingKey<Destination>) -> bool {
        self.write().unbind_key(key)
    }

    /// The keys of this exchange's bindings, their arguments still encoded.
    pub fn binding_keys(&self) -> Vec<Arc<BindingKey<Destination>>> {
        self.read().keys_where(|_| true)
    }

    /// How many bindings this exchange is the source of.
    pub fn binding_count(&self) -> usize {
        self.read().len()
    }

    /// Whether this exchange is the source of any binding.
    pub fn has_bindings(&self) -> bool {
        !self.read().is_empty()
    }

    /// Whether `exchange.delete if-unused` finds it in use: the source of a binding to a
    /// queue or exchange that is not being deleted. A binding whose destination's deletion
    /// is still removing it does not count, as in RabbitMQ, where such bindings go at once;
    /// past `IN_USE_SCAN_MAX` of them it counts as in use rather than scanning on under the
    /// vhost's lock.
    pub fn in_use(&self) -> bool {
        let bindings = self.read();
        let mut scanned = 0;
        bindings.destinations().any(|d| {
            scanned += 1;
            scanned > IN_USE_SCAN_MAX || !d.is_detached()
        })
    }

    /// A copy of this exchange's bindings.
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings_where(|_| true)
    }

    /// A copy of this exchange's bindings to the destinations `keep` selects (the others are
    /// not copied). Their arguments are decoded after the lock is let go: a writer waiting
    /// for it would otherwise hold up routing through the exchange meanwhile.
    pub fn bindings_where(&self, keep: impl Fn(&Destination) -> bool) -> Vec<Binding> {
        let keys = self.read().keys_where(keep);
        keys.iter().map(|k| k.binding()).collect()
    }

    /// Calls `found` for each destination matching a message (see [`Bindings::route`]);
    /// false if the route used `budget` up.
    pub fn route(
        &self,
        routing_keys: &[&[u8]],
        headers: &mut LazyHeaders,
        budget: &mut usize,
        found: &mut dyn FnMut(&Destination),
    ) -> bool {
        self.read().route(routing_keys, headers, budget, found)
    }
}

impl PartialEq for Exchange {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
