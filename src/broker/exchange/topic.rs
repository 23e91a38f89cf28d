//! Topic matching: a trie of binding-key words, so a publish walks the words of its routing
//! key instead of testing every binding.
//!
//! The rules are RabbitMQ's, checked against RabbitMQ 3.10.8: keys split on `.` keeping empty
//! words, the empty key is zero words, `*` matches exactly one word (which may be empty), `#`
//! matches zero or more words, and `*` or `#` are wildcards only as whole words.

use std::collections::HashMap;

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
    children: HashMap<Box<[u8]>, Node<T>>,
    /// The `*` edge.
    star: Option<Box<Node<T>>>,
    /// The `#` edge.
    hash: Option<Box<Node<T>>>,
    /// Values of bindings whose key ends here.
    values: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            star: None,
            hash: None,
            values: Vec::new(),
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

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
        }
    }
}

impl<T: PartialEq> TopicTrie<T> {
    /// Adds `value` under binding key `key`.
    pub fn insert(&mut self, key: &[u8], value: T) {
        let mut node = &mut self.root;
        for word in words(key) {
            node = match word {
                b"*" => node.star.get_or_insert_with(Default::default),
                b"#" => node.hash.get_or_insert_with(Default::default),
                _ => node.children.entry(word.into()).or_default(),
            };
        }
        node.values.push(value);
    }

    /// Removes one `value` stored under `key`; returns whether it was there. Emptied branches
    /// are pruned so that unbinding gives the memory back.
    pub fn remove(&mut self, key: &[u8], value: &T) -> bool {
        let words: Vec<&[u8]> = words(key).collect();
        Self::remove_at(&mut self.root, &words, value)
    }

    fn remove_at(node: &mut Node<T>, words: &[&[u8]], value: &T) -> bool {
        let Some((first, rest)) = words.split_first() else {
            return match node.values.iter().position(|v| v == value) {
                Some(i) => {
                    node.values.swap_remove(i);
                    true
                }
                None => false,
            };
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

    /// Calls `found` for the value of every binding whose key matches `routing_key`. A value
    /// may be reported more than once; callers deduplicate.
    pub fn matches<'a>(&'a self, routing_key: &[u8], found: &mut impl FnMut(&'a T)) {
        // Routing keys rarely have more than a few words: split them onto the stack.
        let mut stack: [&[u8]; 16] = [&[]; 16];
        let count = words(routing_key).count();
        if count <= stack.len() {
            for (slot, word) in stack.iter_mut().zip(words(routing_key)) {
                *slot = word;
            }
            Self::walk(&self.root, &stack[..count], found);
        } else {
            let heap: Vec<&[u8]> = words(routing_key).collect();
            Self::walk(&self.root, &heap, found);
        }
    }

    fn walk<'a>(node: &'a Node<T>, words: &[&[u8]], found: &mut impl FnMut(&'a T)) {
        if let Some(hash) = &node.hash {
            // `#` swallows zero or more words.
            for skip in 0..=words.len() {
                Self::walk(hash, &words[skip..], found);
            }
        }
        let Some((first, rest)) = words.split_first() else {
            node.values.iter().for_each(&mut *found);
            return;
        };
        if let Some(child) = node.children.get(*first) {
            Self::walk(child, rest, found);
        }
        if let Some(star) = &node.star {
            Self::walk(star, rest, found);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, key: &str) -> bool {
        let mut trie = TopicTrie::default();
        trie.insert(pattern.as_bytes(), 1u8);
        let mut hit = false;
        trie.matches(key.as_bytes(), &mut |_| hit = true);
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
        trie.matches(b"a.b.c", &mut |v| seen.push(*v));
        assert_eq!(seen, vec![2]);
        assert!(trie.remove(b"a.#", &2));
        assert!(trie.is_empty());
    }

    #[test]
    fn long_keys_spill_to_the_heap() {
        let key = vec!["w"; 40].join(".");
        assert!(matches("#.w", &key));
        assert!(matches(&key, &key));
    }
}
