//! The bindings whose source is one exchange, indexed the way its type routes: a hash map
//! for direct, a trie for topic, a list for fanout, matchers for headers. Each binding is also
//! kept in a list, for equivalence, unbinding and auto-delete.
//!
//! Generic over the destination so that it knows nothing of queues and exchanges.

use std::collections::HashMap;

use amq_protocol::types::FieldTable;

use super::headers::HeadersMatch;
use super::topic::TopicTrie;
use crate::protocol::error::AmqpResult;

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

/// A binding from some source exchange. Two bindings are the same binding when destination,
/// routing key and arguments (with their types) are equal, as in RabbitMQ.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding<D> {
    pub destination: D,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// The bindings of one exchange.
#[derive(Debug)]
pub struct Bindings<D> {
    kind: ExchangeKind,
    /// Every binding, for identity checks and listing.
    list: Vec<Binding<D>>,
    /// Index for the routing key of a direct exchange.
    direct: HashMap<Box<[u8]>, Vec<D>>,
    /// Index for a topic exchange.
    topic: TopicTrie<D>,
    /// Matchers of a headers exchange, one per binding in `list` order.
    headers: Vec<(HeadersMatch, D)>,
}

impl<D: Clone + PartialEq> Bindings<D> {
    pub fn new(kind: ExchangeKind) -> Self {
        Bindings {
            kind,
            list: Vec::new(),
            direct: HashMap::new(),
            topic: TopicTrie::default(),
            headers: Vec::new(),
        }
    }

    /// Adds a binding. Returns false if it already existed (binding twice is not an error).
    /// Headers bindings are checked first, with RabbitMQ's texts.
    pub fn bind(&mut self, binding: Binding<D>) -> AmqpResult<bool> {
        let matcher = match self.kind {
            ExchangeKind::Headers => Some(HeadersMatch::new(&binding.arguments)?),
            _ => None,
        };
        if self.list.contains(&binding) {
            return Ok(false);
        }
        let destination = binding.destination.clone();
        match self.kind {
            ExchangeKind::Direct => self
                .direct
                .entry(binding.routing_key.as_bytes().into())
                .or_default()
                .push(destination),
            ExchangeKind::Topic => self
                .topic
                .insert(binding.routing_key.as_bytes(), destination),
            ExchangeKind::Headers => {
                if let Some(m) = matcher {
                    self.headers.push((m, destination));
                }
            }
            ExchangeKind::Fanout => {}
        }
        self.list.push(binding);
        Ok(true)
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&mut self, binding: &Binding<D>) -> bool {
        let Some(index) = self.list.iter().position(|x| x == binding) else {
            return false;
        };
        self.list.remove(index);
        match self.kind {
            ExchangeKind::Direct => {
                let key = binding.routing_key.as_bytes();
                if let Some(dests) = self.direct.get_mut(key) {
                    if let Some(i) = dests.iter().position(|d| *d == binding.destination) {
                        dests.swap_remove(i);
                    }
                    if dests.is_empty() {
                        self.direct.remove(key);
                    }
                }
            }
            ExchangeKind::Topic => {
                self.topic
                    .remove(binding.routing_key.as_bytes(), &binding.destination);
            }
            ExchangeKind::Headers => {
                // Headers matchers were pushed in list order, one per binding.
                if index < self.headers.len() {
                    self.headers.remove(index);
                }
            }
            ExchangeKind::Fanout => {}
        }
        true
    }

    /// Every binding, in the order they were made.
    pub fn list(&self) -> &[Binding<D>] {
        &self.list
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Calls `found` for each destination matching a message. `routing_keys` holds the
    /// publish routing key followed by any CC/BCC keys; `headers` is only decoded by headers
    /// exchanges. Destinations may be reported more than once.
    pub fn route(
        &self,
        routing_keys: &[&[u8]],
        headers: &mut dyn FnMut() -> Option<FieldTable>,
        found: &mut dyn FnMut(&D),
    ) {
        match self.kind {
            ExchangeKind::Direct => {
                for key in routing_keys {
                    if let Some(dests) = self.direct.get(*key) {
                        dests.iter().for_each(&mut *found);
                    }
                }
            }
            ExchangeKind::Fanout => self.list.iter().for_each(|x| found(&x.destination)),
            ExchangeKind::Topic => {
                for key in routing_keys {
                    self.topic.matches(key, &mut |d| found(d));
                }
            }
            ExchangeKind::Headers => {
                if self.headers.is_empty() {
                    return;
                }
                let table = headers();
                for (matcher, dest) in &self.headers {
                    if matcher.matches(table.as_ref()) {
                        found(dest);
                    }
                }
            }
        }
    }
}
