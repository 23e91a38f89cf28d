//! Exchanges and their bindings: where a published message goes.
//!
//! Each exchange keeps its bindings twice: a list that says which bindings exist (for
//! equivalence, unbinding and auto-delete) and an index shaped by the exchange type that
//! answers "which destinations match this routing key" without scanning every binding: a hash
//! map for direct, a trie for topic, a plain list for fanout and headers.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use amq_protocol::types::FieldTable;

use crate::binding::{Binding, Destination};
use crate::error::AmqpResult;
use crate::headers::HeadersMatch;
use crate::topic::TopicTrie;

/// The four exchange types of AMQP 0-9-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

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
    policy_alternate_exchange: std::sync::Mutex<Option<String>>,
    bindings: RwLock<Bindings>,
}

/// The bindings whose source is one exchange.
#[derive(Debug, Default)]
pub struct Bindings {
    /// Every binding, for identity checks and listing.
    list: Vec<Binding>,
    /// Index for the routing key of a direct exchange.
    direct: HashMap<Box<[u8]>, Vec<Destination>>,
    /// Index for a topic exchange.
    topic: TopicTrie<Destination>,
    /// Matchers of a headers exchange, one per binding in `list` order.
    headers: Vec<(HeadersMatch, Destination)>,
}

impl Exchange {
    pub fn new(
        name: String,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        let alternate_exchange = crate::protocol::table::get(&arguments, "alternate-exchange")
            .and_then(crate::protocol::table::as_str)
            .map(str::to_owned);
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            alternate_exchange,
            policy_alternate_exchange: std::sync::Mutex::new(None),
            bindings: RwLock::new(Bindings::default()),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Bindings> {
        self.bindings.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Bindings> {
        self.bindings.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a binding from this exchange. Returns false if it already existed (binding twice
    /// is not an error). Headers bindings are checked first, with RabbitMQ's texts.
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

    pub fn bind(&self, binding: Binding) -> AmqpResult<bool> {
        let matcher = match self.kind {
            ExchangeKind::Headers => Some(HeadersMatch::new(&binding.arguments)?),
            _ => None,
        };
        let mut b = self.write();
        if b.list.contains(&binding) {
            return Ok(false);
        }
        let destination = binding.destination.clone();
        match self.kind {
            ExchangeKind::Direct => b
                .direct
                .entry(binding.routing_key.as_bytes().into())
                .or_default()
                .push(destination),
            ExchangeKind::Topic => b.topic.insert(binding.routing_key.as_bytes(), destination),
            ExchangeKind::Headers => {
                if let Some(m) = matcher {
                    b.headers.push((m, destination));
                }
            }
            ExchangeKind::Fanout => {}
        }
        b.list.push(binding);
        Ok(true)
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&self, binding: &Binding) -> bool {
        let mut b = self.write();
        let Some(index) = b.list.iter().position(|x| x == binding) else {
            return false;
        };
        b.list.remove(index);
        match self.kind {
            ExchangeKind::Direct => {
                let key = binding.routing_key.as_bytes();
                if let Some(dests) = b.direct.get_mut(key) {
                    if let Some(i) = dests.iter().position(|d| *d == binding.destination) {
                        dests.swap_remove(i);
                    }
                    if dests.is_empty() {
                        b.direct.remove(key);
                    }
                }
            }
            ExchangeKind::Topic => {
                b.topic
                    .remove(binding.routing_key.as_bytes(), &binding.destination);
            }
            ExchangeKind::Headers => {
                // Headers matchers were pushed in list order, one per binding.
                if index < b.headers.len() {
                    b.headers.remove(index);
                }
            }
            ExchangeKind::Fanout => {}
        }
        true
    }

    /// Removes every binding to `destination`; returns how many there were.
    pub fn unbind_destination(&self, destination: &Destination) -> usize {
        let doomed: Vec<Binding> = self
            .read()
            .list
            .iter()
            .filter(|b| b.destination == *destination)
            .cloned()
            .collect();
        doomed.iter().filter(|b| self.unbind(b)).count()
    }

    /// Whether this exchange is the source of any binding.
    pub fn has_bindings(&self) -> bool {
        !self.read().list.is_empty()
    }

    /// A copy of this exchange's bindings.
    pub fn bindings(&self) -> Vec<Binding> {
        self.read().list.clone()
    }

    /// Calls `found` for each destination matching a message. `routing_keys` holds the
    /// publish routing key followed by any CC/BCC keys; `headers` is only decoded by headers
    /// exchanges. Destinations may be reported more than once.
    pub fn route(
        &self,
        routing_keys: &[&[u8]],
        headers: &mut dyn FnMut() -> Option<FieldTable>,
        found: &mut dyn FnMut(&Destination),
    ) {
        let b = self.read();
        match self.kind {
            ExchangeKind::Direct => {
                for key in routing_keys {
                    if let Some(dests) = b.direct.get(*key) {
                        dests.iter().for_each(&mut *found);
                    }
                }
            }
            ExchangeKind::Fanout => b.list.iter().for_each(|x| found(&x.destination)),
            ExchangeKind::Topic => {
                for key in routing_keys {
                    b.topic.matches(key, &mut |d| found(d));
                }
            }
            ExchangeKind::Headers => {
                if b.headers.is_empty() {
                    return;
                }
                let table = headers();
                for (matcher, dest) in &b.headers {
                    if matcher.matches(table.as_ref()) {
                        found(dest);
                    }
                }
            }
        }
    }
}

impl PartialEq for Exchange {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

/// Shorthand used by the routing cache: an exchange by identity.
pub type ExchangeRef = Arc<Exchange>;
