//! Where each item of the definitions' lists is, so that a change finds what it replaces or
//! removes by a lookup, not by scanning the list: recording N durable queues, bindings,
//! users or permissions (an import of a definitions file, a journal replayed at start) used
//! to cost O(N^2) under the definitions lock.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

/// Where each exchange, queue and binding is in the definitions' lists (`export`), and each
/// user, vhost, permission and policy. Built from the lists when they are first changed,
/// and again whenever their lengths show they were replaced (a deserialized snapshot).
#[derive(Debug, Clone, Default)]
pub(super) struct Positions {
    /// The lengths of (exchanges, queues, bindings) these positions describe.
    pub(super) built_for: Option<(usize, usize, usize)>,
    pub(super) exchanges: HashMap<(String, String), usize>,
    pub(super) queues: HashMap<(String, String), usize>,
    pub(super) bindings: HashMap<BindingKey, usize>,
    /// Bindings by (vhost, source exchange).
    pub(super) by_source: HashMap<(String, String), HashSet<BindingKey>>,
    /// Bindings by (vhost, destination type, destination).
    pub(super) by_destination: HashMap<(String, String, String), HashSet<BindingKey>>,
    pub(super) users: Keyed<String>,
    pub(super) vhosts: Keyed<String>,
    pub(super) permissions: Keyed<(String, String)>,
    pub(super) topic_permissions: Keyed<(String, String, String)>,
    pub(super) policies: Keyed<(String, String)>,
    pub(super) operator_policies: Keyed<(String, String)>,
}

/// Derived data: two definitions with the same lists are equal whatever their positions.
impl PartialEq for Positions {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A binding's identity: every field (equal keys, equal definitions). Shared: each binding
/// is indexed three times (by key, by source, by destination).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct BindingKey(Arc<[String; 7]>);

impl BindingKey {
    pub(super) fn new(fields: [String; 7]) -> BindingKey {
        BindingKey(Arc::new(fields))
    }
}

/// Removes `list[at]` by moving the last element into its place, and tells `moved` where
/// that element went.
pub(super) fn swap_out<T>(list: &mut Vec<T>, at: usize, mut moved: impl FnMut(&T, usize)) -> T {
    let gone = list.swap_remove(at);
    if let Some(last) = list.get(at) {
        moved(last, at);
    }
    gone
}

/// What identifies an item of a list: a later item with the same key replaces it.
pub(super) trait ListKey {
    type Key: Hash + Eq + Clone;
    fn key(&self) -> Self::Key;
}

/// Positions of a list's items by key, for [`Keyed::put`]. Removals scan the list (they
/// come one per request, and are rare) and leave the positions to be built again.
#[derive(Debug, Clone)]
pub(super) struct Keyed<K> {
    at: HashMap<K, usize>,
    /// The list's length the positions describe; `None` until built.
    built_for: Option<usize>,
}

impl<K> Default for Keyed<K> {
    fn default() -> Self {
        Keyed {
            at: HashMap::new(),
            built_for: None,
        }
    }
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    /// Replaces the item of `list` with `item`'s key, in its place, or appends `item`.
    pub(super) fn put<T: ListKey<Key = K>>(&mut self, list: &mut Vec<T>, item: T) {
        let key = item.key();
        let found = |at: &HashMap<K, usize>| {
            at.get(&key)
                .copied()
                .filter(|&i| list.get(i).is_some_and(|x| x.key() == key))
        };
        let mut place = found(&self.at);
        if self.built_for != Some(list.len()) || (place.is_none() && self.at.contains_key(&key)) {
            // The list changed without these positions (a removal, a snapshot read): build.
            self.at = list.iter().enumerate().map(|(i, x)| (x.key(), i)).collect();
            place = found(&self.at);
        }
        match place {
            Some(i) => list[i] = item,
            None => {
                self.at.insert(key, list.len());
                list.push(item);
            }
        }
        self.built_for = Some(list.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Item(String, u32);

    impl ListKey for Item {
        type Key = String;
        fn key(&self) -> String {
            self.0.clone()
        }
    }

    /// 100,000 puts of 50,000 keys: each finds its item by a lookup (a scan per put took
    /// minutes here, under the definitions lock).
    #[test]
    fn a_put_replaces_in_place_or_appends_by_lookup() {
        let mut list = Vec::new();
        let mut keyed = Keyed::default();
        for round in 0..2 {
            for i in 0..50_000 {
                keyed.put(&mut list, Item(format!("u{i}"), round));
            }
        }
        assert_eq!(list.len(), 50_000);
        assert!(list.iter().all(|x| x.1 == 1));
        assert_eq!(list[7], Item("u7".into(), 1), "replaced where it was");
    }

    /// The list changed behind the positions (a removal scans and keeps what it keeps; a
    /// snapshot is read whole): the next put still finds what is there, once.
    #[test]
    fn a_put_after_the_list_changed_behind_it_neither_duplicates_nor_loses() {
        let mut list = Vec::new();
        let mut keyed = Keyed::default();
        for k in ["a", "b", "c"] {
            keyed.put(&mut list, Item(k.into(), 0));
        }
        list.retain(|x| x.0 != "a");
        keyed.put(&mut list, Item("c".into(), 1));
        keyed.put(&mut list, Item("a".into(), 2));
        assert_eq!(
            list,
            vec![
                Item("b".into(), 0),
                Item("c".into(), 1),
                Item("a".into(), 2)
            ]
        );
        let mut read = vec![Item("x".into(), 0), Item("y".into(), 0)];
        let mut fresh = Keyed::default();
        fresh.put(&mut read, Item("y".into(), 5));
        assert_eq!(read, vec![Item("x".into(), 0), Item("y".into(), 5)]);
    }
}
