//! Topic matching: a trie of binding-key words, so a publish walks the words of its routing
//! key instead of testing every binding.
//!
//! The rules are RabbitMQ's, checked against RabbitMQ 3.10.8: keys split on `.` keeping empty
//! words, the empty key is zero words, `*` matches exactly one word (which may be empty), `#`
//! matches zero or more words, and `*` or `#` are wildcards only as whole words.
//!
//! Matching runs the trie as a set of states (an NFA): after each word of the routing key, the
//! set of trie nodes the words so far can have led to. A `#` node stays in the set as it
//! absorbs words and brings its children in without consuming one. Each node enters the set
//! at most once per word, so matching costs at most (words in the key) x (trie nodes the key
//! can reach), however many `#` a binding has: `#.#.#.#.z` against a 100-word key is 500
//! steps, where trying every split of the key between the `#`s would be exponential.
//!
//! That product is still the client's to choose (4,096 bindings mixing `a` and `*` over their
//! first twelve words keep 4,096 states for each later word of a long key, and a publish may
//! carry a thousand CC keys), so a route has a budget of states ([`MAX_ROUTE_TOPIC_STATES`]):
//! a route past it is refused rather than run for seconds under the exchange's lock.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::destinations::Destinations;

/// The trie states one route may pass through, over all its keys and every topic exchange it
/// reaches: a million hash lookups at most. Ordinary routes take tens; one past it is
/// refused.
pub const MAX_ROUTE_TOPIC_STATES: usize = 1 << 20;

/// Splits a topic key into words; the empty key has no words at all.
pub fn words(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    let empty = key.is_empty();
    key.split(|&b| b == b'.').filter(move |_| !empty)
}

/// A trie of binding keys whose leaves hold values of type `T` (the bindings' destinations).
#[derive(Debug)]
pub struct TopicTrie<T> {
    root: Node<T>,
}

#[derive(Debug)]
struct Node<T> {
    /// Literal words.
    children: Children<T>,
    /// The `*` edge.
    star: Option<Box<Node<T>>>,
    /// The `#` edge.
    hash: Option<Box<Node<T>>>,
    /// Values of bindings whose key ends here, each once.
    values: Destinations<T>,
    /// This node is the end of a `#` edge: it matches any number of further words.
    is_hash: bool,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: Children::Few(Box::default()),
            star: None,
            hash: None,
            values: Destinations::default(),
            is_hash: false,
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.children.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }
}

/// Up to this many literal words follow a node in a list, scanned; more go in a hash map.
const FEW_CHILDREN: usize = 8;

/// The literal words that follow a node, each with its node.
///
/// Most nodes have one or two: a key's words below its first few are usually its own. A
/// hash map allocates room for four entries at least, and a node inline in it took some 700
/// bytes for one child, so a binding key of 120 words took 85 KB. A few children live in a
/// slice of exactly their number instead, and are found by comparing the words, which costs
/// no more than hashing one.
#[derive(Debug)]
enum Children<T> {
    Few(Box<[(Word, Node<T>)]>),
    /// Boxed, so that a node with few words keeps no empty map inline.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<Word, Node<T>>>),
}

/// A literal word of a binding key.
type Word = Box<[u8]>;

impl<T> Children<T> {
    fn is_empty(&self) -> bool {
        match self {
            Children::Few(few) => few.is_empty(),
            Children::Many(many) => many.is_empty(),
        }
    }

    #[inline]
    fn get(&self, word: &[u8]) -> Option<&Node<T>> {
        match self {
            Children::Few(few) => few.iter().find(|(w, _)| **w == *word).map(|(_, n)| n),
            Children::Many(many) => many.get(word),
        }
    }

    fn get_mut(&mut self, word: &[u8]) -> Option<&mut Node<T>> {
        match self {
            Children::Few(few) => few.iter_mut().find(|(w, _)| **w == *word).map(|(_, n)| n),
            Children::Many(many) => many.get_mut(word),
        }
    }

    /// The node that follows `word`, made if there is none.
    fn get_or_insert(&mut self, word: &[u8]) -> &mut Node<T> {
        if let Children::Few(few) = self
            && few.len() >= FEW_CHILDREN
            && !few.iter().any(|(w, _)| **w == *word)
        {
            let many = std::mem::take(few).into_vec().into_iter().collect();
            *self = Children::Many(Box::new(many));
        }
        match self {
            Children::Few(few) => {
                let at = match few.iter().position(|(w, _)| **w == *word) {
                    Some(at) => at,
                    None => {
                        // Grown by one, to exactly its number: most nodes keep one child.
                        let mut grown = std::mem::take(few).into_vec();
                        grown.push((word.into(), Node::default()));
                        *few = grown.into_boxed_slice();
                        few.len() - 1
                    }
                };
                &mut few[at].1
            }
            Children::Many(many) => many.entry(word.into()).or_default(),
        }
    }

    /// Removes the node that follows `word`.
    fn remove(&mut self, word: &[u8]) {
        match self {
            Children::Few(few) => {
                let mut kept = std::mem::take(few).into_vec();
                kept.retain(|(w, _)| **w != *word);
                *few = kept.into_boxed_slice();
            }
            Children::Many(many) => {
                many.remove(word);
                if many.len() <= FEW_CHILDREN / 2 {
                    let few: Vec<_> = std::mem::take(&mut **many).into_iter().collect();
                    *self = Children::Few(few.into_boxed_slice());
                }
            }
        }
    }
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
        }
    }
}

impl<T: Clone + Eq + Hash> TopicTrie<T> {
    /// Adds `value` under binding key `key`.
    pub fn insert(&mut self, key: &[u8], value: T) {
        let mut node = &mut self.root;
        for word in words(key) {
            node = match word {
                b"*" => node.star.get_or_insert_with(Default::default),
                b"#" => node.hash.get_or_insert_with(|| {
                    Box::new(Node {
                        is_hash: true,
                        ..Node::default()
                    })
                }),
                _ => node.children.get_or_insert(word),
            };
        }
        node.values.insert(value);
    }

    /// Removes one `value` stored under `key`; returns whether it was there. Emptied branches
    /// are pruned so that unbinding gives the memory back.
    pub fn remove(&mut self, key: &[u8], value: &T) -> bool {
        let words: Vec<&[u8]> = words(key).collect();
        Self::remove_at(&mut self.root, &words, value)
    }

    fn remove_at(node: &mut Node<T>, words: &[&[u8]], value: &T) -> bool {
        let Some((first, rest)) = words.split_first() else {
            return node.values.remove(value);
        };
        match *first {
            b"*" | b"#" => {
                let slot = if *first == b"*" {
                    &mut node.star
                } else {
                    &mut node.hash
                };
                let Some(child) = slot.as_mut() else {
                    return false;
                };
                let removed = Self::remove_at(child, rest, value);
                if child.is_empty() {
                    *slot = None;
                }
                removed
            }
            word => {
                let Some(child) = node.children.get_mut(word) else {
                    return false;
                };
                let removed = Self::remove_at(child, rest, value);
                if child.is_empty() {
                    node.children.remove(word);
                }
                removed
            }
        }
    }

    /// Calls `found` for the value of every binding whose key matches `routing_key`. Each
    /// matching binding is reported once. False, with only some found, if the states the
    /// walk passed through used `budget` up.
    pub fn matches<'a>(
        &'a self,
        routing_key: &[u8],
        budget: &mut usize,
        found: &mut impl FnMut(&'a T),
    ) -> bool {
        self.walk(routing_key, budget, &mut |node| {
            node.values.iter().for_each(&mut *found)
        })
    }

    /// Calls `found` for the value of every binding whose key matches any of `routing_keys`,
    /// each once however many of the keys match it: a publish with thousands of CC keys and
    /// a `#` binding costs the keys' words plus the bindings, not their product.
    /// The keys share `budget`, as in [`TopicTrie::matches`].
    pub fn matches_any<'a>(
        &'a self,
        routing_keys: &[&[u8]],
        budget: &mut usize,
        found: &mut impl FnMut(&'a T),
    ) -> bool {
        let mut reported: HashSet<*const Node<T>, BuildHasherDefault<AddressHasher>> =
            HashSet::default();
        for key in routing_keys {
            let walked = self.walk(key, budget, &mut |node| {
                if reported.insert(node) {
                    node.values.iter().for_each(&mut *found);
                }
            });
            if !walked {
                return false;
            }
        }
        true
    }

    /// Calls `end` for every trie node (each once) that `routing_key`'s words lead to. Each
    /// word costs `budget` the states it starts from; false, without calling `end`, if it
    /// runs out.
    fn walk<'a>(
        &'a self,
        routing_key: &[u8],
        budget: &mut usize,
        end: &mut impl FnMut(&'a Node<T>),
    ) -> bool {
        // The two sets trade places after each word by reference: a set is some 200 bytes,
        // and swapping them by value copied that three times per word.
        let (mut a, mut b) = (States::default(), States::default());
        let (mut current, mut next) = (&mut a, &mut b);
        current.enter(&self.root);
        for word in words(routing_key) {
            let Some(left) = budget.checked_sub(current.len()) else {
                *budget = 0;
                return false;
            };
            *budget = left;
            next.clear();
            let mut i = 0;
            while let Some(node) = current.get(i) {
                i += 1;
                if node.is_hash {
                    // `#` absorbs this word and stays.
                    next.enter(node);
                }
                if let Some(child) = node.children.get(word) {
                    next.enter(child);
                }
                if let Some(star) = &node.star {
                    next.enter(star);
                }
            }
            std::mem::swap(&mut current, &mut next);
            if current.is_empty() {
                return true;
            }
        }
        let mut i = 0;
        while let Some(node) = current.get(i) {
            i += 1;
            end(node);
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

/// The trie nodes the words of a key so far can have led to, each once. Small sets (the usual
/// case) live inline, without allocating, and are deduplicated by scanning; large ones spill
/// to the heap with a hash set of node addresses.
struct States<'a, T> {
    inline: [Option<&'a Node<T>>; SCAN_STATES],
    /// How many of `inline` are used; `SCAN_STATES + 1` once spilled.
    len: usize,
    spilled: Vec<&'a Node<T>>,
    seen: HashSet<*const Node<T>, BuildHasherDefault<AddressHasher>>,
}

/// Hashes a node's address: one multiplication, where SipHash would cost several times more
/// for keys no client chooses.
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Up to this many states, they live inline and duplicates are found by scanning.
const SCAN_STATES: usize = 16;

impl<T> Default for States<'_, T> {
    fn default() -> Self {
        States {
            inline: [None; SCAN_STATES],
            len: 0,
            spilled: Vec::new(),
            seen: HashSet::default(),
        }
    }
}

impl<'a, T> States<'a, T> {
    /// Adds `node`, and the `#` nodes below it that match without a word, once each. A node
    /// already in the set came with its `#` nodes, so the walk stops there.
    fn enter(&mut self, node: &'a Node<T>) {
        let mut at = node;
        loop {
            if self.contains(at) {
                return;
            }
            self.insert(at);
            match &at.hash {
                Some(hash) => at = hash,
                None => return,
            }
        }
    }

    fn spilled(&self) -> bool {
        self.len > SCAN_STATES
    }

    fn contains(&self, node: &Node<T>) -> bool {
        if self.spilled() {
            self.seen.contains(&(node as *const Node<T>))
        } else {
            self.inline[..self.len]
                .iter()
                .any(|n| n.is_some_and(|n| std::ptr::eq(n, node)))
        }
    }

    fn insert(&mut self, node: &'a Node<T>) {
        if self.len < SCAN_STATES {
            self.inline[self.len] = Some(node);
            self.len += 1;
            return;
        }
        if !self.spilled() {
            self.spilled.extend(self.inline.iter().flatten());
            self.seen
                .extend(self.spilled.iter().map(|n| *n as *const Node<T>));
            self.len = SCAN_STATES + 1;
        }
        self.spilled.push(node);
        self.seen.insert(node as *const Node<T>);
    }

    fn clear(&mut self) {
        if self.spilled() {
            self.spilled.clear();
            self.seen.clear();
        }
        self.len = 0;
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn len(&self) -> usize {
        if self.spilled() {
            self.spilled.len()
        } else {
            self.len
        }
    }

    /// The states, in the order they were entered.
    fn nodes(&self) -> &[&'a Node<T>] {
        &self.spilled
    }

    fn get(&self, i: usize) -> Option<&'a Node<T>> {
        if self.spilled() {
            self.nodes().get(i).copied()
        } else if i < self.len {
            self.inline[i]
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, key: &str) -> bool {
        let mut trie = TopicTrie::default();
        trie.insert(pattern.as_bytes(), 1u8);
        let mut hit = false;
        trie.matches(key.as_bytes(), &mut { usize::MAX }, &mut |_| hit = true);
        hit
    }

    /// Vectors observed on RabbitMQ 3.10.8: (binding key, routing key, match).
    const VECTORS: &[(&str, &str, bool)] = &[
        ("", "", true),
        ("", "a", false),
        ("", ".", false),
        ("#", "", true),
        ("#", ".", true),
        ("#", "a.b.c", true),
        ("*", "", false),
        ("*", "a", true),
        ("*", ".", false),
        ("*", "a.b", false),
        ("*", "*", true),
        ("*", "#", true),
        ("*.*", ".", true),
        ("*.*", "a.", true),
        ("*.*", ".a", true),
        ("*.*", "a", false),
        ("*.*.*", "..", true),
        ("*.*.*", "a..b", true),
        ("..", "..", true),
        ("..", ".", false),
        (".", "", false),
        ("#.#", "", true),
        ("#.#", "a", true),
        ("#.#.#", "", true),
        ("*.#", "", false),
        ("*.#", "a", true),
        ("*.#", ".", true),
        ("#.*", "", false),
        ("#.*", "a.", true),
        ("*.#.*", "a", false),
        ("*.#.*", "a.b", true),
        ("*.#.*", ".", true),
        ("a", "A", false),
        ("a", "a.", false),
        ("a.b", "a.bb", false),
        ("a.b", "a.b.c", false),
        ("a.*", "a", false),
        ("a.*", "a.", true),
        ("a.*", "a.b.c", false),
        ("a.#", "a", true),
        ("a.#", "a.", true),
        ("a.#", "x.a", false),
        ("#.b", "b", true),
        ("#.b", ".b", true),
        ("#.b", "a.x.y.b", true),
        ("#.b", "b.a", false),
        ("*.b", "b", false),
        ("*.b", ".b", true),
        ("a.*.b", "a..b", true),
        ("a.*.b", "a.b", false),
        ("a.#.b", "a.b", true),
        ("a.#.b", "a.b.b", true),
        ("a.#.#.b", "a.b", true),
        ("#.a.#", "a", true),
        ("#.a.#", "xa", false),
        ("a.#.c.#.e", "a.c.e", true),
        ("a.#.c.#.e", "a.b.c.d.e", true),
        ("a.#.c.#.e", "a.c.b", false),
        ("#.#.a", "a.b.a", true),
        ("a.*.#", "a", false),
        ("a.#.*", "a", false),
        ("a.#.*", "a.b", true),
        ("#.*.#", "", false),
        ("#.*.#", "a", true),
        ("a*.b", "a*.b", true),
        ("a*.b", "ab.b", false),
        ("a#", "a#", true),
        ("a#", "a", false),
        ("*a", "xa", false),
        ("a.", "a", false),
        (".a", "a", false),
        ("a..b", "a.b", false),
        ("*.", ".", true),
        (".*", ".", true),
        ("#.", "", false),
        ("#.", ".", true),
        ("#.", "a", false),
        (".#", "a", false),
        (".#", ".", true),
        (".#", "", false),
        ("*..*", "a..b", true),
        ("*..*", "...", false),
        ("#..#", ".", true),
        ("#..#", "a.b", false),
        ("a.#", "a.#", true),
        ("#.b", "#.b", true),
        ("#.b.#", "a.c.e", false),
    ];

    #[test]
    fn same_as_rabbitmq_on_observed_vectors() {
        for &(pattern, key, expected) in VECTORS {
            assert_eq!(matches(pattern, key), expected, "{pattern:?} vs {key:?}");
        }
    }

    #[test]
    fn removing_prunes_and_keeps_other_bindings() {
        let mut trie = TopicTrie::default();
        trie.insert(b"a.*.c", 1);
        trie.insert(b"a.#", 2);
        assert!(trie.remove(b"a.*.c", &1));
        assert!(!trie.remove(b"a.*.c", &1));
        let mut seen = Vec::new();
        trie.matches(b"a.b.c", &mut { usize::MAX }, &mut |v| seen.push(*v));
        assert_eq!(seen, vec![2]);
        assert!(trie.remove(b"a.#", &2));
        assert!(trie.is_empty());
    }

    /// A node's words move from its list to a hash map past `FEW_CHILDREN` and back as they
    /// go: every binding still matches what it matched, and only that.
    #[test]
    fn a_node_with_many_words_after_it_matches_each() {
        let mut trie = TopicTrie::default();
        let found = |trie: &TopicTrie<usize>, key: &str| {
            let mut seen = Vec::new();
            trie.matches(key.as_bytes(), &mut { usize::MAX }, &mut |v| seen.push(*v));
            seen
        };
        let count = 3 * FEW_CHILDREN;
        for i in 0..count {
            trie.insert(format!("w{i}.x").as_bytes(), i);
            for j in 0..count {
                let expected = if j <= i { vec![j] } else { vec![] };
                assert_eq!(found(&trie, &format!("w{j}.x")), expected, "{j} after {i}");
            }
        }
        assert!(matches!(trie.root.children, Children::Many(_)));
        for i in (0..count).step_by(2).chain((1..count).step_by(2)) {
            assert!(trie.remove(format!("w{i}.x").as_bytes(), &i));
            assert_eq!(found(&trie, &format!("w{i}.x")), Vec::<usize>::new());
            if i + 2 < count {
                assert_eq!(found(&trie, &format!("w{}.x", i + 2)), vec![i + 2]);
            }
        }
        assert!(trie.is_empty());
        assert!(matches!(trie.root.children, Children::Few(_)));
    }

    #[test]
    fn long_keys_spill_to_the_heap() {
        let key = vec!["w"; 40].join(".");
        assert!(matches("#.w", &key));
        assert!(matches(&key, &key));
    }

    #[test]
    fn many_hashes_against_a_long_key_take_linear_time() {
        let mut trie = TopicTrie::default();
        trie.insert(b"#.#.#.#.#.#.#.#.#.#.z", 1u8);
        let key = vec!["w"; 100].join(".");
        let mut hit = false;
        trie.matches(key.as_bytes(), &mut { usize::MAX }, &mut |_| hit = true);
        assert!(!hit);
        trie.matches(
            format!("{key}.z").as_bytes(),
            &mut { usize::MAX },
            &mut |_| hit = true,
        );
        // Backtracking over every split of 100 words between ten `#`s would not finish;
        // this is a few thousand steps.
        assert!(hit);
    }

    #[test]
    fn each_matching_binding_is_reported_once() {
        let mut trie = TopicTrie::default();
        trie.insert(b"#.#", 1u8);
        trie.insert(b"a.#.#.b", 2u8);
        let mut seen = Vec::new();
        trie.matches(b"a.x.b", &mut { usize::MAX }, &mut |v| seen.push(*v));
        seen.sort();
        assert_eq!(seen, vec![1, 2]);
    }

    /// A walk stops once the states it passed through use its budget up, and says so; the
    /// keys of one route share one budget.
    #[test]
    fn a_walk_past_its_budget_stops_and_says_so() {
        let mut trie = TopicTrie::default();
        for (i, key) in ["a.*.c", "*.b.*", "#.c", "a.#"].iter().enumerate() {
            trie.insert(key.as_bytes(), i);
        }
        let mut hits = 0;
        let mut budget = 100;
        assert!(trie.matches(b"a.b.c", &mut budget, &mut |_| hits += 1));
        assert_eq!(hits, 4);
        let used = 100 - budget;
        assert!(used > 0);
        let mut budget = used - 1;
        assert!(!trie.matches(b"a.b.c", &mut budget, &mut |_| {}));
        assert_eq!(budget, 0);
        let mut budget = used * 2;
        let keys: [&[u8]; 3] = [b"a.b.c", b"a.b.c.d", b"x.b.c"];
        assert!(!trie.matches_any(&keys, &mut budget, &mut |_| {}));
    }
}
