//! The deliveries a channel's client has not settled, by delivery tag.
//!
//! Clients settle mostly in order, so the list is a deque: a delivery joins at the back,
//! and an ack of the oldest (or a multiple ack) takes from the front. A single ack out of
//! order leaves a gap where its delivery was rather than shifting the others: with a
//! million unacknowledged deliveries, an ack in the middle moved half a million of them,
//! and a client acking from the middle inward held its connection's task for hours. Gaps
//! at either end are dropped at once; the rest are swept once they outnumber the live
//! deliveries, so the list stays at most about twice what it holds.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::broker::queue::delivery::{ConsumerId, DeliverySource};
use crate::broker::queue::entry::QueueEntry;

/// A delivery the client has not settled yet.
pub(super) struct Unacked {
    pub tag: u64,
    /// The queue it came from, where it is settled.
    pub queue: Arc<dyn DeliverySource>,
    /// The consumer it went to; None for basic.get.
    pub consumer: Option<ConsumerId>,
    pub entry: QueueEntry,
    /// When the channel is closed if this is still unacknowledged, and the timeout (ms)
    /// that deadline came from.
    pub deadline: Option<(Instant, u64)>,
}

/// Gaps tolerated beyond the live deliveries before a sweep.
const GAPS_BEFORE_SWEEP: usize = 64;

/// A place in the list: a delivery outstanding, or the tag of one settled out of order.
/// A gap keeps only its tag, which fits beside the delivery's own fields, so a slot is no
/// larger than the delivery it holds.
enum Slot {
    Live(Unacked),
    Gap(u64),
}

impl Slot {
    fn tag(&self) -> u64 {
        match self {
            Slot::Live(u) => u.tag,
            Slot::Gap(tag) => *tag,
        }
    }

    fn live(self) -> Option<Unacked> {
        match self {
            Slot::Live(u) => Some(u),
            Slot::Gap(_) => None,
        }
    }
}

#[derive(Default)]
pub(super) struct UnackedList {
    /// In delivery-tag order, with gaps where deliveries were settled out of order.
    slots: VecDeque<Slot>,
    /// The deliveries in `slots` (the gaps are the rest).
    live: usize,
}

/// Why a settle took nothing: its tag is not outstanding.
pub(super) struct UnknownTag;

impl UnackedList {
    /// Deliveries outstanding.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Adds a delivery; tags only grow.
    pub fn push_back(&mut self, u: Unacked) {
        self.slots.push_back(Slot::Live(u));
        self.live += 1;
    }

    /// The outstanding deliveries, in tag order.
    pub fn iter(&self) -> impl Iterator<Item = &Unacked> {
        self.slots.iter().filter_map(|slot| match slot {
            Slot::Live(u) => Some(u),
            Slot::Gap(_) => None,
        })
    }

    /// Takes them all, in tag order.
    pub fn take_all(&mut self) -> Vec<Unacked> {
        self.live = 0;
        self.slots.drain(..).filter_map(Slot::live).collect()
    }

    /// Takes the delivery `tag`, and with `multiple` every earlier one too.
    pub fn take(&mut self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, UnknownTag> {
        let index = self
            .slots
            .binary_search_by_key(&tag, Slot::tag)
            .map_err(|_| UnknownTag)?;
        if matches!(self.slots[index], Slot::Gap(_)) {
            return Err(UnknownTag);
        }
        let taken: Vec<Unacked> = if multiple {
            self.slots.drain(..=index).filter_map(Slot::live).collect()
        } else {
            std::mem::replace(&mut self.slots[index], Slot::Gap(tag))
                .live()
                .into_iter()
                .collect()
        };
        self.live -= taken.len();
        self.drop_gaps();
        Ok(taken)
    }

    /// Puts deliveries back in their places (a transaction rolled back what it settled).
    /// Each fills its gap if it is still there. Those whose gaps were dropped meanwhile
    /// are merged in with one pass, so a rollback costs what it gives back plus at most
    /// one walk of the list, never a shift of the list per delivery.
    pub fn put_back(&mut self, back: Vec<Unacked>) {
        let mut homeless = Vec::new();
        for u in back {
            match self.slots.binary_search_by_key(&u.tag, Slot::tag) {
                // Tags a transaction holds are out of the list until it ends, so the
                // slot is a gap.
                Ok(i) => {
                    if matches!(self.slots[i], Slot::Gap(_)) {
                        self.live += 1;
                    }
                    self.slots[i] = Slot::Live(u);
                }
                Err(_) => homeless.push(u),
            }
        }
        if homeless.is_empty() {
            return;
        }
        self.live += homeless.len();
        homeless.sort_unstable_by_key(|u| u.tag);
        // A multiple ack rolled back goes back ahead of what is left, and deliveries past
        // the last one outstanding go at the back: neither needs a walk of the list.
        let first = self.slots.front().map_or(u64::MAX, Slot::tag);
        let last = self.slots.back().map_or(0, Slot::tag);
        let below = homeless.partition_point(|u| u.tag < first);
        let above = homeless.partition_point(|u| u.tag <= last).max(below);
        if below == above {
            let tail = homeless.split_off(below);
            self.slots.extend(tail.into_iter().map(Slot::Live));
            for u in homeless.into_iter().rev() {
                self.slots.push_front(Slot::Live(u));
            }
            return;
        }
        let old = std::mem::take(&mut self.slots);
        let mut merged = VecDeque::with_capacity(old.len() + homeless.len());
        let mut homeless = homeless.into_iter().peekable();
        for slot in old {
            while let Some(u) = homeless.next_if(|u| u.tag < slot.tag()) {
                merged.push_back(Slot::Live(u));
            }
            merged.push_back(slot);
        }
        merged.extend(homeless.map(Slot::Live));
        self.slots = merged;
    }

    fn drop_gaps(&mut self) {
        while matches!(self.slots.front(), Some(Slot::Gap(_))) {
            self.slots.pop_front();
        }
        while matches!(self.slots.back(), Some(Slot::Gap(_))) {
            self.slots.pop_back();
        }
        if self.slots.len() > 2 * self.live + GAPS_BEFORE_SWEEP {
            self.slots.retain(|slot| matches!(slot, Slot::Live(_)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Message;
    use crate::broker::queue::delivery::{Delivery, Requeue, Settled, Unblock};
    use crate::protocol::properties;
    use amq_protocol::protocol::BasicProperties;
    use bytes::Bytes;

    struct Nowhere;

    impl DeliverySource for Nowhere {
        fn ack(&self, _: Vec<Settled>, _: Unblock) {}
        fn requeue(&self, _: Vec<(Settled, QueueEntry)>, _: Requeue, _: Unblock) {}
        fn reject(&self, _: Vec<(Settled, QueueEntry)>, _: Unblock) {}
        fn return_undelivered(&self, _: Vec<Delivery>) {}
        fn kick(&self, _: Unblock) {}
    }

    fn list(tags: std::ops::RangeInclusive<u64>) -> UnackedList {
        let raw = properties::encode_all(&BasicProperties::default()).unwrap();
        let summary = properties::scan(&raw).unwrap();
        let message = Arc::new(Message::new(
            Bytes::new(),
            Bytes::from_static(b"q"),
            raw,
            Bytes::from_static(b"body"),
            &summary,
        ));
        let queue: Arc<dyn DeliverySource> = Arc::new(Nowhere);
        let mut list = UnackedList::default();
        for tag in tags {
            list.push_back(Unacked {
                tag,
                queue: queue.clone(),
                consumer: None,
                entry: QueueEntry {
                    seq: tag,
                    message: message.clone(),
                    redelivered: false,
                    persisted: false,
                    expires_at: None,
                    delivery_count: 0,
                },
                deadline: None,
            });
        }
        list
    }

    fn tags(taken: &[Unacked]) -> Vec<u64> {
        taken.iter().map(|u| u.tag).collect()
    }

    /// Same as RabbitMQ: any outstanding tag may be settled in any order, a tag settled
    /// already is unknown, and a multiple settle takes what is still outstanding up to it.
    #[test]
    fn settles_out_of_order_take_exactly_what_is_outstanding() {
        let mut list = list(1..=10);
        assert_eq!(tags(&list.take(5, false).ok().unwrap()), [5]);
        assert_eq!(tags(&list.take(7, false).ok().unwrap()), [7]);
        assert!(list.take(5, false).is_err(), "settled already");
        assert!(
            list.take(5, true).is_err(),
            "a multiple settle names an outstanding tag"
        );
        assert!(list.take(11, false).is_err(), "never delivered");
        assert_eq!(tags(&list.take(8, true).ok().unwrap()), [1, 2, 3, 4, 6, 8]);
        assert_eq!(list.len(), 2);
        assert_eq!(list.iter().map(|u| u.tag).collect::<Vec<_>>(), [9, 10]);
        let rolled_back = list.take(10, false).ok().unwrap();
        list.put_back(rolled_back);
        assert_eq!(tags(&list.take_all()), [9, 10]);
        assert_eq!(list.len(), 0);
    }

    /// A transaction rolled back: what it settled goes back in tag order, into its gaps or
    /// ahead of what is left, and can be settled again.
    #[test]
    fn deliveries_put_back_take_their_places_again() {
        let mut list = list(1..=10);
        let mut held = list.take(3, true).ok().unwrap();
        held.extend(list.take(6, false).ok().unwrap());
        held.extend(list.take(10, false).ok().unwrap());
        assert_eq!(list.len(), 5);
        list.put_back(held);
        assert_eq!(list.len(), 10);
        assert_eq!(
            list.iter().map(|u| u.tag).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(tags(&list.take(6, false).ok().unwrap()), [6]);
        assert_eq!(
            tags(&list.take(10, true).ok().unwrap()),
            [1, 2, 3, 4, 5, 7, 8, 9, 10]
        );
        assert_eq!(list.len(), 0);
    }

    /// A gap keeps only its tag, so the list holds no more per slot than a delivery.
    #[test]
    fn a_slot_is_no_larger_than_a_delivery() {
        assert_eq!(std::mem::size_of::<Slot>(), std::mem::size_of::<Unacked>());
    }

    /// A transaction settled more than was left, so the gaps it made were swept; a
    /// rollback still puts every delivery back in tag order, in the middle as well as at
    /// either end.
    #[test]
    fn deliveries_whose_gaps_were_swept_go_back_in_order() {
        let n = 1_000;
        let mut list = list(1..=n);
        let mut held = Vec::new();
        for tag in (2..n).filter(|tag| tag % 3 != 0) {
            held.extend(list.take(tag, false).ok().unwrap());
        }
        held.extend(list.take(1, false).ok().unwrap());
        held.extend(list.take(n, false).ok().unwrap());
        assert!(list.slots.len() <= 2 * list.len() + GAPS_BEFORE_SWEEP);
        assert!(list.slots.len() < n as usize, "the gaps were swept");
        list.put_back(held);
        assert_eq!(list.len(), n as usize);
        assert_eq!(
            list.iter().map(|u| u.tag).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>()
        );
        assert_eq!(tags(&list.take(n, true).ok().unwrap()).len(), n as usize);
    }

    /// A multiple ack rolled back goes back ahead of what is left; tags past the last
    /// one outstanding go at the back.
    #[test]
    fn deliveries_put_back_at_either_end_keep_their_order() {
        let mut list = list(1..=10);
        let mut held = list.take(4, true).ok().unwrap();
        held.extend(list.take(10, false).ok().unwrap());
        held.extend(list.take(9, false).ok().unwrap());
        assert_eq!(list.slots.len(), 4, "no gaps at either end");
        list.put_back(held);
        assert_eq!(
            list.iter().map(|u| u.tag).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(list.len(), 10);
    }

    /// A client acking from the middle outward: each ack leaves a gap rather than moving
    /// half the list, and the gaps never make the list much longer than what it holds.
    #[test]
    fn acks_from_the_middle_outward_leave_a_bounded_number_of_gaps() {
        let n = 100_000;
        let mut list = list(1..=n);
        let (mut low, mut high) = (n / 2, n / 2 + 1);
        while low >= 1 {
            assert_eq!(tags(&list.take(low, false).ok().unwrap()), [low]);
            assert_eq!(tags(&list.take(high, false).ok().unwrap()), [high]);
            assert!(list.slots.len() <= 2 * list.len() + GAPS_BEFORE_SWEEP);
            (low, high) = (low - 1, high + 1);
        }
        assert_eq!((list.len(), list.slots.len()), (0, 0));
    }
}
