//! A set of `u64` kept as sorted, disjoint, inclusive ranges. Acks of a queue mostly arrive in
//! order, so a log with millions of acked messages recovers into a handful of ranges.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntervalSet {
    /// Sorted, disjoint, non-adjacent inclusive ranges.
    ranges: Vec<(u64, u64)>,
}

impl IntervalSet {
    pub fn insert(&mut self, v: u64) {
        // The range that starts after `v`.
        let i = self.ranges.partition_point(|&(start, _)| start <= v);
        if i > 0 {
            let (_, end) = self.ranges[i - 1];
            if v <= end {
                return;
            }
            if v == end + 1 {
                self.ranges[i - 1].1 = v;
                // Join with the next range if they now touch.
                if i < self.ranges.len() && self.ranges[i].0 == v + 1 {
                    self.ranges[i - 1].1 = self.ranges[i].1;
                    self.ranges.remove(i);
                }
                return;
            }
        }
        if i < self.ranges.len() && self.ranges[i].0 == v + 1 {
            self.ranges[i].0 = v;
            return;
        }
        self.ranges.insert(i, (v, v));
    }

    pub fn contains(&self, v: u64) -> bool {
        let i = self.ranges.partition_point(|&(start, _)| start <= v);
        i > 0 && v <= self.ranges[i - 1].1
    }

    /// How many members lie in `first..=last`.
    pub fn count_in(&self, first: u64, last: u64) -> u64 {
        if first > last {
            return 0;
        }
        let i = self.ranges.partition_point(|&(_, end)| end < first);
        let mut n = 0;
        for &(start, end) in &self.ranges[i..] {
            if start > last {
                break;
            }
            n += end.min(last) - start.max(first) + 1;
        }
        n
    }

    /// Forgets every member below `v`.
    pub fn remove_below(&mut self, v: u64) {
        let i = self.ranges.partition_point(|&(_, end)| end < v);
        self.ranges.drain(..i);
        if let Some(first) = self.ranges.first_mut()
            && first.0 < v
        {
            first.0 = v;
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

    proptest! {
        #[test]
        fn behaves_like_a_set(values in proptest::collection::vec(0u64..200, 0..300), probe in 0u64..200, a in 0u64..200, b in 0u64..200) {
            let mut set = IntervalSet::default();
            let mut model = std::collections::BTreeSet::new();
            for v in values {
                set.insert(v);
                model.insert(v);
            }
            prop_assert_eq!(set.contains(probe), model.contains(&probe));
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert_eq!(set.count_in(lo, hi), model.range(lo..=hi).count() as u64);
            for w in set.ranges.windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0, "ranges stay disjoint and apart");
            }
            set.remove_below(probe);
            prop_assert_eq!(set.count_in(0, 200), model.range(probe..).count() as u64);
        }
    }
}
