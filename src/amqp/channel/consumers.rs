//! The consumers of one channel, by tag, and the queues they consume from.
//!
//! Channel-wide credit coming back (an ack under a global prefetch, a basic.qos) asks the
//! queues whose consumers went without it to send again, in turn (`waiting`). A channel may
//! hold 65,536 consumers, so the set of queues consumed from, and each consumer's queue, are
//! kept as consumers come and go rather than worked out from all of them each time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use super::ChannelConsumer;
use crate::broker::heap::shrink_map;
use crate::broker::queue::Queue;
use crate::broker::queue::delivery::ConsumerId;

#[derive(Default)]
pub(super) struct ChannelConsumers {
    by_tag: HashMap<Bytes, ChannelConsumer>,
    /// The queues consumed from, each under the id of the consumer that first consumed from
    /// it here: in that order, so that asking them in turn is fair.
    queues: BTreeMap<ConsumerId, Arc<Queue>>,
    /// Per queue (by its address): its key in `queues`, and how many consumers here use it.
    per_queue: HashMap<usize, (ConsumerId, usize)>,
    /// Each consumer's queue (by its address), to find the queue of a consumer that went
    /// without channel credit.
    queue_of: HashMap<ConsumerId, usize>,
    /// The queues (keys of `queues`) whose consumers went without channel credit and that
    /// have not been asked since: the next rounds ask them, in turn. At most one entry per
    /// queue consumed from.
    waiting: BTreeSet<ConsumerId>,
}

fn queue_key(c: &ChannelConsumer) -> usize {
    Arc::as_ptr(&c.queue) as usize
}

impl ChannelConsumers {
    pub fn len(&self) -> usize {
        self.by_tag.len()
    }

    pub fn get(&self, tag: &Bytes) -> Option<&ChannelConsumer> {
        self.by_tag.get(tag)
    }

    pub fn contains_key(&self, tag: &Bytes) -> bool {
        self.by_tag.contains_key(tag)
    }

    pub fn values(&self) -> impl Iterator<Item = &ChannelConsumer> {
        self.by_tag.values()
    }

    /// The queues consumed from, in the order they were first consumed from here.
    pub fn queues(&self) -> impl ExactSizeIterator<Item = &Arc<Queue>> + Clone {
        self.queues.values()
    }

    /// The key in the queues consumed from (see [`ChannelConsumers::queue`]) of consumer
    /// `id`'s queue, if it is still a consumer here; a key itself stands for its queue while
    /// any consumer of it remains, even once the consumer it was named after has gone.
    pub fn queue_key_of(&self, id: ConsumerId) -> Option<ConsumerId> {
        if self.queues.contains_key(&id) {
            return Some(id);
        }
        let queue = self.queue_of.get(&id)?;
        self.per_queue.get(queue).map(|&(key, _)| key)
    }

    /// A queue consumed from, by its key: the id of the first consumer of it here.
    pub fn queue(&self, key: ConsumerId) -> Option<&Arc<Queue>> {
        self.queues.get(&key)
    }

    /// Notes that the queues of `consumers` wait for channel credit (those still consumed
    /// from here).
    pub fn note_waiting(&mut self, consumers: Vec<ConsumerId>) {
        for id in consumers {
            if let Some(key) = self.queue_key_of(id) {
                self.waiting.insert(key);
            }
        }
    }

    /// Whether some queue waits for channel credit.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Takes the next waiting queue after the one keyed `after` (from the first, coming
    /// round), in time logarithmic in their number.
    pub fn take_next_waiting(&mut self, after: Option<ConsumerId>) -> Option<ConsumerId> {
        use std::ops::Bound::{Excluded, Unbounded};
        let next = after
            .and_then(|k| self.waiting.range((Excluded(k), Unbounded)).next().copied())
            .or_else(|| self.waiting.first().copied())?;
        self.waiting.remove(&next);
        Some(next)
    }

    /// Adds a consumer under a tag not in use (basic.consume refuses one that is).
    pub fn insert(&mut self, tag: Bytes, consumer: ChannelConsumer) {
        debug_assert!(!self.by_tag.contains_key(&tag), "consumer tag in use");
        let (_, count) = self
            .per_queue
            .entry(queue_key(&consumer))
            .or_insert_with(|| {
                self.queues.insert(consumer.id, consumer.queue.clone());
                (consumer.id, 0)
            });
        *count += 1;
        self.queue_of.insert(consumer.id, queue_key(&consumer));
        self.by_tag.insert(tag, consumer);
    }

    pub fn remove(&mut self, tag: &Bytes) -> Option<ChannelConsumer> {
        let consumer = self.by_tag.remove(tag)?;
        self.queue_of.remove(&consumer.id);
        let key = queue_key(&consumer);
        if let Some((first, count)) = self.per_queue.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.queues.remove(first);
                self.waiting.remove(first);
                self.per_queue.remove(&key);
            }
        }
        shrink_map(&mut self.by_tag);
        shrink_map(&mut self.per_queue);
        shrink_map(&mut self.queue_of);
        Some(consumer)
    }

    /// Takes every consumer out (the channel closes).
    pub fn drain(&mut self) -> impl Iterator<Item = ChannelConsumer> + '_ {
        self.queues.clear();
        self.per_queue.clear();
        self.queue_of.clear();
        self.waiting.clear();
        self.by_tag.drain().map(|(_, c)| c)
    }
}
