//! The bindings whose source is one exchange, indexed the way its type routes: a hash map
//! for direct, a trie for topic, a list for fanout, matchers for headers. Each binding is also
//! kept in a hash index, so that binding and unbinding cost the same with 10 bindings or
//! 100,000.
//!
//! Generic over the destination so that it knows nothing of queues and exchanges.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};

use super::destinations::Destinations;
use super::headers::HeadersMatch;
use super::topic::TopicTrie;
use crate::broker::budget::{Budget, Share};
use crate::protocol::error::{AmqpError, AmqpResult};
use crate::protocol::{raw_table, table};

/// A message's headers for headers exchanges: decoded the first time one asks, and kept for
/// the next one on the same route (an exchange-to-exchange chain may pass several).
pub struct LazyHeaders<'a> {
    decode: &'a mut dyn FnMut() -> Option<FieldTable>,
    decoded: Option<Option<FieldTable>>,
}

impl<'a> LazyHeaders<'a> {
    pub fn new(decode: &'a mut dyn FnMut() -> Option<FieldTable>) -> Self {
        LazyHeaders {
            decode,
            decoded: None,
        }
    }

    pub fn get(&mut self) -> Option<&FieldTable> {
        self.decoded.get_or_insert_with(&mut self.decode).as_ref()
    }
}

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
    /// Every binding, with its headers matcher on a headers exchange. Unbinding moves the
    /// last entry into the hole, so the order is that of binding only until the first unbind.
    entries: Vec<Entry<D>>,
    /// Where each binding is in `entries`, so that binding twice and unbinding cost a hash
    /// lookup, not a scan: exchanges may hold hundreds of thousands of bindings. Its keys are
    /// the entries' own, shared.
    index: HashMap<Arc<BindingKey<D>>, usize>,
    /// Index for the routing key of a direct exchange.
    direct: HashMap<Box<[u8]>, Destinations<D>>,
    /// Index for a topic exchange.
    topic: TopicTrie<D>,
    /// What matching a message against every headers binding costs a route's budget
    /// (`HeadersMatch::cost`, summed): kept within it as bindings are made, so that no
    /// publish to the exchange alone is refused for its bindings' arguments.
    headers_cost: usize,
    /// The broker's topology budget, which each binding's memory is held against
    /// (`Bindings::charge_to`); none in unit tests and benchmarks.
    budget: Option<Arc<Budget>>,
}

/// What a new binding may not take an exchange past.
#[derive(Debug, Clone, Copy)]
pub struct BindLimits {
    /// Bindings of the exchange.
    pub bindings: usize,
    /// The cost of its headers bindings ([`super::topic::MAX_ROUTE_TOPIC_STATES`]).
    pub headers_cost: usize,
    /// Whether the broker's topology budget may refuse it (it still counts it if not).
    pub within_budget: bool,
    /// What the durable definitions keep for it (0 for a transient binding), held against
    /// the budget with what the exchange keeps.
    pub definition_bytes: usize,
}

impl BindLimits {
    /// For bindings accepted once already (recovered at a start).
    pub const NONE: BindLimits = BindLimits {
        bindings: usize::MAX,
        headers_cost: usize::MAX,
        within_budget: false,
        definition_bytes: 0,
    };
}

/// Which limit a refused binding would have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindRefused {
    Bindings,
    HeadersCost,
    /// The broker's topology budget, of this many bytes (`broker_topology_bytes`).
    Budget(usize),
}

#[derive(Debug)]
struct Entry<D> {
    /// Where the binding's messages go, beside the key so that fanout routing reads it
    /// without following another pointer.
    destination: D,
    key: Arc<BindingKey<D>>,
    matcher: Option<HeadersMatch>,
    /// What it keeps, held against the broker's topology budget while it lives; none in unit
    /// tests and benchmarks.
    _share: Option<Share>,
}

/// What a binding keeps besides its routing key and arguments: its entry, its key's
/// allocation, the index slots that find it, and its entry in the vhost's reverse index
/// (measured: 400 to 430 bytes per binding of a fanout exchange, resident).
const BINDING_KEPT_BYTES: usize = 384;

/// What a direct exchange's index keeps for a routing key besides its bytes (measured: 190
/// bytes more than a fanout's binding).
const DIRECT_KEY_BYTES: usize = 192;

/// What a topic exchange's trie keeps for each word of a binding key besides its bytes: a
/// node, unless another key shares it (measured: 138 bytes per word of a 120-word key).
/// Counted for every word, shared or not: a count of the nodes a binding made would miss
/// those another binding made and then let go, which a client can repeat without end.
const TOPIC_WORD_BYTES: usize = 160;

/// What makes a binding itself: its destination, routing key and encoded arguments.
///
/// A binding keeps its arguments encoded, as they came, and decodes them only to show them.
/// Decoded, a table or array of small values takes 30 to 60 times its wire size (a 128 KiB
/// array of voids became 4 MiB), and a client may make a million bindings per exchange.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BindingKey<D> {
    destination: D,
    routing_key: String,
    arguments: Box<[u8]>,
}

impl<D: Clone> BindingKey<D> {
    /// A binding's key from its parts, its arguments as `table::encode` writes them.
    pub fn new(destination: D, routing_key: String, arguments: Box<[u8]>) -> Self {
        BindingKey {
            destination,
            routing_key,
            arguments,
        }
    }

    pub fn destination(&self) -> &D {
        &self.destination
    }

    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The arguments, encoded.
    pub fn encoded_arguments(&self) -> &[u8] {
        &self.arguments
    }

    fn of(binding: &Binding<D>) -> Self {
        BindingKey {
            destination: binding.destination.clone(),
            routing_key: binding.routing_key.clone(),
            arguments: table::encode(&binding.arguments).into(),
        }
    }

    /// The binding, its arguments decoded.
    pub fn binding(&self) -> Binding<D> {
        Binding {
            destination: self.destination.clone(),
            routing_key: self.routing_key.clone(),
            arguments: raw_table::decode(&self.arguments).unwrap_or_default(),
        }
    }
}

impl<D: Clone + Eq + Hash> Bindings<D> {
    pub fn new(kind: ExchangeKind) -> Self {
        Bindings {
            kind,
            entries: Vec::new(),
            index: HashMap::new(),
            direct: HashMap::new(),
            topic: TopicTrie::default(),
            headers_cost: 0,
            budget: None,
        }
    }

    /// Holds what each binding made from now on keeps against `budget`.
    pub fn charge_to(&mut self, budget: &Arc<Budget>) {
        self.budget = Some(budget.clone());
    }

    /// Adds a binding. Returns false if it already existed (binding twice is not an error).
    /// Headers bindings are checked first, with RabbitMQ's texts; a new binding past
    /// `limits` is refused with the error `full` makes.
    pub fn bind(
        &mut self,
        binding: Binding<D>,
        limits: BindLimits,
        full: impl FnOnce(BindRefused) -> AmqpError,
    ) -> AmqpResult<bool> {
        let matcher = match self.kind {
            ExchangeKind::Headers => Some(HeadersMatch::new(&binding.arguments)?),
            _ => None,
        };
        let key = Arc::new(BindingKey::of(&binding));
        if self.index.contains_key(&key) {
            return Ok(false);
        }
        if self.entries.len() >= limits.bindings {
            return Err(full(BindRefused::Bindings));
        }
        let cost = matcher.as_ref().map_or(0, HeadersMatch::cost);
        let headers_cost = self.headers_cost.saturating_add(cost);
        if headers_cost > limits.headers_cost {
            return Err(full(BindRefused::HeadersCost));
        }
        // Its routing key and encoded arguments twice (here and in the vhost's reverse
        // index), what the exchange's index keeps for its key, and a headers matcher's
        // arguments decoded.
        let decoded = match &matcher {
            Some(_) => table::value_count(&binding.arguments) * std::mem::size_of::<AMQPValue>(),
            None => 0,
        };
        let index = match self.kind {
            ExchangeKind::Direct => DIRECT_KEY_BYTES + key.routing_key.len(),
            ExchangeKind::Topic => {
                super::topic::words(key.routing_key.as_bytes()).count() * TOPIC_WORD_BYTES
                    + key.routing_key.len()
            }
            ExchangeKind::Headers | ExchangeKind::Fanout => 0,
        };
        let kept = BINDING_KEPT_BYTES
            + 2 * (key.routing_key.len() + key.arguments.len())
            + index
            + decoded
            + limits.definition_bytes;
        let share = match &self.budget {
            None => None,
            Some(budget) if limits.within_budget => match budget.take(kept) {
                Ok(share) => Some(share),
                Err(refused) => return Err(full(BindRefused::Budget(refused.limit_bytes()))),
            },
            Some(budget) => Some(budget.take_anyway(kept)),
        };
        self.headers_cost = headers_cost;
        let destination = binding.destination.clone();
        match self.kind {
            ExchangeKind::Direct => self
                .direct
                .entry(binding.routing_key.as_bytes().into())
                .or_default()
                .insert(destination),
            ExchangeKind::Topic => self
                .topic
                .insert(binding.routing_key.as_bytes(), destination),
            ExchangeKind::Headers | ExchangeKind::Fanout => {}
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push(Entry {
            destination: binding.destination,
            key,
            matcher,
            _share: share,
        });
        Ok(true)
    }

    /// Whether a binding exists.
    pub fn contains(&self, binding: &Binding<D>) -> bool {
        self.index.contains_key(&BindingKey::of(binding))
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&mut self, binding: &Binding<D>) -> bool {
        self.unbind_key(&BindingKey::of(binding))
    }

    /// Removes a binding by its key, its arguments left encoded; returns whether it existed.
    pub fn unbind_key(&mut self, binding: &BindingKey<D>) -> bool {
        let Some(index) = self.index.remove(binding) else {
            return false;
        };
        let removed = self.entries.swap_remove(index);
        let cost = removed.matcher.as_ref().map_or(0, HeadersMatch::cost);
        self.headers_cost = self.headers_cost.saturating_sub(cost);
        if let Some(moved) = self.entries.get(index)
            && let Some(slot) = self.index.get_mut(&*moved.key)
        {
            *slot = index;
        }
        match self.kind {
            ExchangeKind::Direct => {
                let key = binding.routing_key.as_bytes();
                if let Some(dests) = self.direct.get_mut(key) {
                    dests.remove(&binding.destination);
                    if dests.is_empty() {
                        self.direct.remove(key);
                    }
                }
            }
            ExchangeKind::Topic => {
                self.topic
                    .remove(binding.routing_key.as_bytes(), &binding.destination);
            }
            ExchangeKind::Headers | ExchangeKind::Fanout => {}
        }
        true
    }

    /// Every binding to a destination `keep` selects, still encoded: what a caller holding
    /// the exchange's lock takes, to decode once it has let go.
    pub fn keys_where(&self, keep: impl Fn(&D) -> bool) -> Vec<Arc<BindingKey<D>>> {
        self.entries
            .iter()
            .filter(|e| keep(&e.destination))
            .map(|e| e.key.clone())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Each binding's destination, in no particular order.
    pub fn destinations(&self) -> impl Iterator<Item = &D> {
        self.entries.iter().map(|e| &e.destination)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Calls `found` for each destination matching a message. `routing_keys` holds the
    /// publish routing key followed by any CC/BCC keys; `headers` is only decoded by headers
    /// exchanges. Destinations may be reported more than once. False if a topic exchange's
    /// matching, or a headers exchange's, used `budget` up (see
    /// [`super::topic::MAX_ROUTE_TOPIC_STATES`]): the route is refused, whatever was found.
    pub fn route(
        &self,
        routing_keys: &[&[u8]],
        headers: &mut LazyHeaders,
        budget: &mut usize,
        found: &mut dyn FnMut(&D),
    ) -> bool {
        match self.kind {
            ExchangeKind::Direct => {
                let lookup = |key: &[u8], found: &mut dyn FnMut(&D)| {
                    if let Some(dests) = self.direct.get(key) {
                        dests.iter().for_each(found);
                    }
                };
                if let [key] = routing_keys {
                    lookup(key, found);
                    return true;
                }
                // A key given twice (CC and BCC may repeat one thousands of times) is looked
                // up once, so each binding is reported at most once.
                let mut keys = routing_keys.to_vec();
                keys.sort_unstable();
                keys.dedup();
                for key in keys {
                    lookup(key, found);
                }
            }
            ExchangeKind::Fanout => self.entries.iter().for_each(|e| found(&e.destination)),
            ExchangeKind::Topic => {
                return match routing_keys {
                    [key] => self.topic.matches(key, budget, &mut |d| found(d)),
                    keys => {
                        // A key given twice is walked once, as in the direct case.
                        let mut keys = keys.to_vec();
                        keys.sort_unstable();
                        keys.dedup();
                        self.topic.matches_any(&keys, budget, &mut |d| found(d))
                    }
                };
            }
            ExchangeKind::Headers => {
                if self.entries.is_empty() {
                    return true;
                }
                let table = headers.get();
                for e in &self.entries {
                    let Some(m) = e.matcher.as_ref() else {
                        continue;
                    };
                    // Every binding's arguments are looked at for every message: a million
                    // bindings of 4,096 arguments each made one publish cost seconds.
                    let Some(left) = budget.checked_sub(m.cost()) else {
                        *budget = 0;
                        return false;
                    };
                    *budget = left;
                    if m.matches(table) {
                        found(&e.destination);
                    }
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldArray};

    fn args(value: AMQPValue) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("n".into(), value);
        t
    }

    /// Arguments are kept encoded and decoded to be listed: same as RabbitMQ, values of
    /// different types are different bindings, and each is listed with its own.
    #[test]
    fn bindings_are_listed_with_the_arguments_they_were_made_with() {
        let mut bindings = Bindings::new(ExchangeKind::Fanout);
        let nested = AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(args(
            AMQPValue::Void,
        ))]));
        let made: Vec<Binding<u8>> = [AMQPValue::LongInt(1), AMQPValue::LongLongInt(1), nested]
            .into_iter()
            .map(|v| Binding {
                destination: 1,
                routing_key: "k".into(),
                arguments: args(v),
            })
            .collect();
        for b in &made {
            assert_eq!(
                bindings.bind(b.clone(), BindLimits::NONE, |_| unreachable!()),
                Ok(true)
            );
        }
        assert_eq!(
            bindings.bind(made[1].clone(), BindLimits::NONE, |_| unreachable!()),
            Ok(false)
        );
        let listed: Vec<_> = bindings
            .keys_where(|_| true)
            .iter()
            .map(|k| k.binding())
            .collect();
        assert_eq!(listed, made);
        assert!(bindings.unbind(&made[0]));
        assert!(!bindings.contains(&made[0]));
        assert!(bindings.contains(&made[2]));
        assert!(bindings.keys_where(|&d| d == 2).is_empty());
    }

    /// What bindings keep is held against the broker's budget: one past it is refused, one
    /// recovered at a start is counted but never refused, and unbinding gives it back.
    #[test]
    fn bindings_are_held_against_the_brokers_budget() {
        // Each keeps its routing key and its arguments (an empty table: 4 bytes) twice, and
        // its key in the direct index.
        let kept =
            |key: &str| BINDING_KEPT_BYTES + 2 * (key.len() + 4) + DIRECT_KEY_BYTES + key.len();
        let budget = Budget::broker(kept("a") + kept("bb") - 1, None);
        let mut bindings = Bindings::new(ExchangeKind::Direct);
        bindings.charge_to(&budget);
        let limits = BindLimits {
            bindings: 100,
            headers_cost: 100,
            within_budget: true,
            definition_bytes: 0,
        };
        let binding = |key: &str| Binding {
            destination: 1u8,
            routing_key: key.into(),
            arguments: FieldTable::default(),
        };
        assert_eq!(
            bindings.bind(binding("a"), limits, |_| unreachable!()),
            Ok(true)
        );
        assert_eq!(budget.held_bytes(), kept("a"));
        let mut refused = None;
        let full = |r| {
            refused = Some(r);
            crate::amqp_error!(PreconditionFailed, "full")
        };
        assert!(bindings.bind(binding("bb"), limits, full).is_err());
        assert_eq!(
            refused,
            Some(BindRefused::Budget(kept("a") + kept("bb") - 1))
        );
        assert_eq!(bindings.len(), 1);
        assert_eq!(
            bindings.bind(binding("bb"), BindLimits::NONE, |_| unreachable!()),
            Ok(true)
        );
        assert_eq!(budget.held_bytes(), kept("a") + kept("bb"));
        assert!(bindings.unbind(&binding("a")));
        assert!(bindings.unbind(&binding("bb")));
        assert_eq!(budget.held_bytes(), 0);
    }

    /// A topic binding is charged for every word of its key: each may be a trie node of its
    /// own, and a 120-word key once took 85 KB charged as 700 bytes.
    #[test]
    fn a_topic_binding_is_charged_for_each_word_of_its_key() {
        let budget = Budget::broker(usize::MAX, None);
        let mut bindings = Bindings::new(ExchangeKind::Topic);
        bindings.charge_to(&budget);
        let key = format!("0{}", ".a".repeat(120));
        let binding = Binding {
            destination: 1u8,
            routing_key: key.clone(),
            arguments: FieldTable::default(),
        };
        assert_eq!(
            bindings.bind(binding.clone(), BindLimits::NONE, |_| unreachable!()),
            Ok(true)
        );
        assert_eq!(
            budget.held_bytes(),
            BINDING_KEPT_BYTES + 2 * (key.len() + 4) + 121 * TOPIC_WORD_BYTES + key.len()
        );
        assert!(bindings.unbind(&binding));
        assert_eq!(budget.held_bytes(), 0);
    }

    /// A headers binding that would take its exchange's bindings past the cost a route may
    /// spend is refused when it is made, and unbinding gives its cost back.
    #[test]
    fn headers_bindings_are_kept_within_a_routes_budget() {
        let mut bindings = Bindings::new(ExchangeKind::Headers);
        let limits = BindLimits {
            bindings: 100,
            headers_cost: 4,
            within_budget: true,
            definition_bytes: 0,
        };
        // Each costs 2: one argument and the binding.
        let binding = |key: &str| Binding {
            destination: 1u8,
            routing_key: key.into(),
            arguments: args(AMQPValue::LongInt(1)),
        };
        assert_eq!(
            bindings.bind(binding("a"), limits, |_| unreachable!()),
            Ok(true)
        );
        assert_eq!(
            bindings.bind(binding("b"), limits, |_| unreachable!()),
            Ok(true)
        );
        let refused = bindings.bind(binding("c"), limits, |why| {
            assert_eq!(why, BindRefused::HeadersCost);
            crate::amqp_error!(PreconditionFailed, "full")
        });
        assert!(refused.is_err());
        assert!(bindings.unbind(&binding("a")));
        assert_eq!(
            bindings.bind(binding("c"), limits, |_| unreachable!()),
            Ok(true)
        );
    }
}
