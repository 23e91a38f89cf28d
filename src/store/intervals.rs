//! A set of `u64` kept as sorted, disjoint, inclusive ranges. Acks of a queue mostly arrive in
//! order, so a log with millions of acked messages recovers into a handful of ranges.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntervalSet {
    /// Disjoint, non-adjacent inclusive ranges: start -> end. A tree, not a sorted vector:
    /// acks in an order a client chooses (every other message, newest first) made each
    /// insert shift every range after it, quadratic in the gaps, under the log's lock.
    ranges: BTreeMap<u64, u64>,
}

impl IntervalSet {
    /// Adds `v`; false if it was there already.
    pub fn insert(&mut self, v: u64) -> bool {
        // Acks mostly come in order: `v` extends the last range, or starts one after it.
        if let Some(mut last) = self.ranges.last_entry() {
            let (start, end) = (*last.key(), *last.get());
            if end.checked_add(1) == Some(v) {
                *last.get_mut() = v;
                return true;
            }
            if v > end {
                self.ranges.insert(v, v);
                return true;
            }
            if v >= start {
                return false;
            }
        }
        // The range starting at or before `v`, if it reaches `v` or ends just before it.
        let before = match self.ranges.range(..=v).next_back() {
            Some((_, &end)) if v <= end => return false,
            Some((&start, &end)) if end + 1 == v => Some(start),
            _ => None,
        };
        // The range starting just after `v`.
        let after = v
            .checked_add(1)
            .and_then(|next| self.ranges.remove(&next).map(|end| (next, end)));
        match (before, after) {
            (Some(start), Some((_, end))) => {
                self.ranges.insert(start, end);
            }
            (Some(start), None) => {
                self.ranges.insert(start, v);
            }
            (None, Some((_, end))) => {
                self.ranges.insert(v, end);
            }
            (None, None) => {
                self.ranges.insert(v, v);
            }
        }
        true
    }

    pub fn contains(&self, v: u64) -> bool {
        self.ranges
            .range(..=v)
            .next_back()
            .is_some_and(|(_, &end)| v <= end)
    }

    /// How many members lie in `first..=last`.
    pub fn count_in(&self, first: u64, last: u64) -> u64 {
        if first > last {
            return 0;
        }
        // The range that starts before `first` and may reach into it, then those inside.
        let straddling = self.ranges.range(..first).next_back();
        let inside = self.ranges.range(first..=last);
        straddling
            .into_iter()
            .chain(inside)
            .filter(|&(_, &end)| end >= first)
            .map(|(&start, &end)| end.min(last) - start.max(first) + 1)
            .sum()
    }

    /// Forgets every member below `v`.
    pub fn remove_below(&mut self, v: u64) {
        let kept = self.ranges.split_off(&v);
        let cut = std::mem::replace(&mut self.ranges, kept);
        // A range that started below `v` and reaches it keeps its part from `v` on.
        if let Some((_, &end)) = cut.iter().next_back()
            && end >= v
        {
            self.ranges.insert(v, end);
        }
    }

    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Regression: a client acking every other message of a million, newest first, made
    /// every insert shift all the ranges after it (a sorted vector): 2.5e11 range moves,
    /// under the log's lock. Each insert is a tree lookup now.
    #[test]
    fn acks_newest_first_with_gaps_between_them_stay_cheap() {
        let mut set = IntervalSet::default();
        let n = 1_000_000u64;
        for v in (0..n).rev().step_by(2) {
            set.insert(v);
        }
        assert_eq!(set.ranges(), (n / 2) as usize);
        assert!(set.contains(n - 1) && !set.contains(n - 2));
        assert_eq!(set.count_in(0, n), n / 2);
        for v in (0..n).step_by(2) {
            set.insert(v);
        }
        assert_eq!(set.ranges(), 1);
        set.remove_below(n / 2);
        assert_eq!(set.count_in(0, n), n / 2);
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(values in proptest::collection::vec(0u64..200, 0..300), probe in 0u64..200, a in 0u64..200, b in 0u64..200) {
            let mut set = IntervalSet::default();
            let mut model = std::collections::BTreeSet::new();
            for v in values {
                prop_assert_eq!(set.insert(v), model.insert(v));
            }
            prop_assert_eq!(set.contains(probe), model.contains(&probe));
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert_eq!(set.count_in(lo, hi), model.range(lo..=hi).count() as u64);
            let ranges: Vec<(u64, u64)> = set.ranges.iter().map(|(&a, &b)| (a, b)).collect();
            for w in ranges.windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0, "ranges stay disjoint and apart");
            }
            for &(a, b) in &ranges {
                prop_assert!(a <= b);
            }
            set.remove_below(probe);
            prop_assert_eq!(set.count_in(0, 200), model.range(probe..).count() as u64);
        }
    }
}
