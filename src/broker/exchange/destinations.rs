//! The destinations bound at one place of an exchange's index (one routing key of a direct
//! exchange, one node of a topic trie): each destination once, with how many bindings (they
//! differ in arguments) put it there. A few are found by scanning; past
//! `SCAN_DESTINATIONS` a map finds them, so that unbinding one of 100,000 queues bound with
//! the same key costs a lookup, not a scan under the exchange's write lock.

use std::collections::HashMap;
use std::hash::Hash;

/// Up to this many destinations, a scan finds one (no map to allocate or keep).
const SCAN_DESTINATIONS: usize = 16;

#[derive(Debug)]
pub struct Destinations<T> {
    /// Each destination once, with its number of bindings here.
    list: Vec<(T, u32)>,
    /// Where each destination is in `list`, once the list is too long to scan. Boxed: most
    /// lists never need one, and every topic trie node holds a list.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<T, usize>>>,
}

impl<T> Default for Destinations<T> {
    fn default() -> Self {
        Destinations {
            list: Vec::new(),
            index: None,
        }
    }
}

impl<T> Destinations<T> {
    /// Each destination once.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.list.iter().map(|(v, _)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl<T: Clone + Eq + Hash> Destinations<T> {
    fn position(&self, value: &T) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(value).copied(),
            None => self.list.iter().position(|(v, _)| v == value),
        }
    }

    /// Adds one binding to `value`.
    pub fn insert(&mut self, value: T) {
        if let Some(i) = self.position(&value) {
            self.list[i].1 += 1;
            return;
        }
        self.list.push((value.clone(), 1));
        let last = self.list.len() - 1;
        match &mut self.index {
            Some(index) => {
                index.insert(value, last);
            }
            None if self.list.len() > SCAN_DESTINATIONS => {
                let index = self
                    .list
                    .iter()
                    .enumerate()
                    .map(|(i, (v, _))| (v.clone(), i))
                    .collect();
                self.index = Some(Box::new(index));
            }
            None => {}
        }
    }

    /// Removes one binding to `value`; returns whether there was one.
    pub fn remove(&mut self, value: &T) -> bool {
        let Some(i) = self.position(value) else {
            return false;
        };
        self.list[i].1 -= 1;
        if self.list[i].1 > 0 {
            return true;
        }
        self.list.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(value);
            if let Some((moved, _)) = self.list.get(i) {
                index.insert(moved.clone(), i);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_destination_once_until_its_last_binding_goes() {
        let mut d = Destinations::default();
        for i in 0..100u32 {
            d.insert(i);
        }
        d.insert(7);
        assert_eq!(d.iter().count(), 100);
        assert!(d.remove(&7));
        assert!(d.iter().any(|&v| v == 7), "one binding to 7 is left");
        assert!(d.remove(&7));
        assert!(!d.remove(&7));
        for i in (0..100u32).filter(|&i| i != 7) {
            assert!(d.remove(&i), "{i}");
        }
        assert!(d.is_empty());
    }
}
