//! A queue's consumers, kept so that every per-message step is O(1) however many there are.
//!
//! RabbitMQ's dispatch order: consumers of a higher priority first; within a priority,
//! round-robin. A consumer that cannot take a message when its turn comes (its own prefetch,
//! its channel's prefetch or its connection's outbox is full) leaves the rotation until that
//! credit comes back, then rejoins at the tail. So the rotation holds only consumers that can
//! probably take a message, and each consumer that cannot is looked at once, not once per
//! message; waiting consumers are indexed by what they wait for, so giving credit back wakes
//! exactly them.
//!
//! A single-active-consumer queue has no rotation: only its active consumer takes messages,
//! and when it goes, the live consumer of the highest priority, registered first, takes
//! over, as in RabbitMQ.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::consumer::{Blocked, Consumer};
use super::delivery::ConsumerId;
use crate::broker::heap::shrink_map;

/// Hashes consumer ids: numbers the broker hands out in sequence, so one multiplication
/// spreads them well, and no client can choose them to collide.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<ConsumerId, V, BuildHasherDefault<IdHasher>>;

/// Whether a consumer gets messages, as RabbitMQ's `activity_status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// A consumer of a queue without a single active consumer.
    Up,
    /// The one consumer a single-active-consumer queue delivers to.
    SingleActive,
    /// A single-active-consumer queue's standby, waiting for the active one to go.
    Waiting,
}

impl Activity {
    pub fn name(self) -> &'static str {
        match self {
            Activity::Up => "up",
            Activity::SingleActive => "single_active",
            Activity::Waiting => "waiting",
        }
    }
}

#[derive(Default)]
pub struct Consumers {
    /// `x-single-active-consumer`: only `active` gets messages.
    single_active: bool,
    /// The single active consumer.
    active: Option<ConsumerId>,
    /// Whether the next single active consumer is the one of the highest priority (classic
    /// queues) or simply the earliest registered (quorum queues, whose `rabbit_fifo` keeps
    /// waiting consumers in registration order; checked on a 3.10.8 node).
    handover_by_priority: bool,
    /// A single-active-consumer queue's live consumers in handover order (the active one
    /// among them): when the active one goes, the next is the first here, found without
    /// looking at the others under the queue's lock.
    handover: BTreeSet<(Reverse<i64>, ConsumerId)>,
    by_id: IdMap<Consumer>,
    /// Consumers in the rotation, by priority (highest first), each level in round-robin
    /// order: the front gets the next message. A level is removed when it empties, so
    /// looking for the next consumer never walks past empty priorities.
    rotation: BTreeMap<Reverse<i64>, VecDeque<ConsumerId>>,
    /// Consumers waiting for their channel's credit, by channel (the prefetch's address).
    wait_channel: HashMap<usize, Vec<ConsumerId>>,
    /// Consumers waiting for room in their sink, by sink id.
    wait_sink: HashMap<u64, Vec<ConsumerId>>,
    /// Consumers marked dead (their connection is gone) and not removed yet.
    dead: usize,
    /// The live consumer that asked to be the queue's only one, if any.
    exclusive: Option<ConsumerId>,
    /// Ids of removed consumers left in the rotation and the waiting lists: a removal does
    /// not search them (with many consumers that cost each removal a scan, under the queue's
    /// lock), dispatch and wake-ups skip ids no longer here, and past as many as there are
    /// consumers the lists are swept.
    stale: usize,
}

fn channel_key(c: &Consumer) -> usize {
    Arc::as_ptr(&c.channel_prefetch) as usize
}

impl Consumers {
    pub fn new(single_active: bool, handover_by_priority: bool) -> Self {
        Consumers {
            single_active,
            handover_by_priority,
            ..Consumers::default()
        }
    }

    /// The single active consumer, if this is such a queue and it has one.
    pub fn active(&self) -> Option<ConsumerId> {
        self.active
    }

    /// How the management API shows a consumer's part: RabbitMQ's `activity_status`.
    pub fn activity(&self, id: ConsumerId) -> Activity {
        match (self.single_active, self.active == Some(id)) {
            (false, _) => Activity::Up,
            (true, true) => Activity::SingleActive,
            (true, false) => Activity::Waiting,
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Consumers whose connection is still there.
    pub fn live(&self) -> usize {
        self.by_id.len() - self.dead
    }

    /// The live consumer that holds the queue exclusively, if one does.
    pub fn exclusive(&self) -> Option<ConsumerId> {
        self.exclusive
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: ConsumerId) -> Option<&Consumer> {
        self.by_id.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Consumer> {
        self.by_id.values()
    }

    pub fn get_mut(&mut self, id: ConsumerId) -> Option<&mut Consumer> {
        self.by_id.get_mut(&id)
    }

    /// The rotation of consumers of `priority`, made if there is none yet.
    fn level(&mut self, priority: i64) -> &mut VecDeque<ConsumerId> {
        self.rotation.entry(Reverse(priority)).or_default()
    }

    /// Adds a consumer at the tail of its priority (or, on a single-active-consumer queue
    /// without an active consumer, as the active one).
    pub fn insert(&mut self, consumer: Consumer) {
        let (id, priority) = (consumer.id, consumer.priority);
        if consumer.exclusive {
            self.exclusive = Some(id);
        }
        self.by_id.insert(id, consumer);
        if self.single_active {
            self.handover.insert(self.handover_key(priority, id));
            self.active.get_or_insert(id);
            return;
        }
        self.level(priority).push_back(id);
    }

    /// Single active consumer: after the active one left, the next is the live consumer of
    /// the highest priority, the earliest registered among equals, as in RabbitMQ (on a
    /// quorum queue priorities play no part).
    fn choose_active(&mut self) {
        self.active = self.handover.first().map(|&(_, id)| id);
    }

    /// Where a consumer stands in the handover order: by priority (classic queues), then
    /// by registration, which the ids follow.
    fn handover_key(&self, priority: i64, id: ConsumerId) -> (Reverse<i64>, ConsumerId) {
        let priority = if self.handover_by_priority {
            priority
        } else {
            0
        };
        (Reverse(priority), id)
    }

    /// Removes a consumer from wherever it is. Returns it, and whether it was the single
    /// active consumer (another one now is).
    pub fn remove(&mut self, id: ConsumerId) -> Option<(Consumer, bool)> {
        let c = self.by_id.remove(&id)?;
        shrink_map(&mut self.by_id);
        self.handover.remove(&self.handover_key(c.priority, id));
        let was_active = self.active == Some(id);
        if was_active {
            self.choose_active();
        }
        if c.dead {
            self.dead -= 1;
        }
        if self.exclusive == Some(id) {
            self.exclusive = None;
        }
        // Its id stays in the rotation or a waiting list (if it was in one) until swept.
        self.stale += 1;
        if self.stale > self.by_id.len() + 64 {
            self.sweep();
        }
        Some((c, was_active))
    }

    /// Drops the ids of removed consumers from the rotation and the waiting lists.
    fn sweep(&mut self) {
        let by_id = &self.by_id;
        self.rotation.retain(|_, level| {
            level.retain(|id| by_id.contains_key(id));
            !level.is_empty()
        });
        for lists in [
            self.wait_channel.values_mut().collect::<Vec<_>>(),
            self.wait_sink.values_mut().collect(),
        ] {
            for list in lists {
                list.retain(|id| by_id.contains_key(id));
            }
        }
        self.wait_channel.retain(|_, list| !list.is_empty());
        self.wait_sink.retain(|_, list| !list.is_empty());
        self.stale = 0;
    }

    /// Takes every consumer out (the queue was deleted).
    pub fn take_all(&mut self) -> Vec<Consumer> {
        self.active = None;
        self.exclusive = None;
        self.dead = 0;
        self.stale = 0;
        self.rotation.clear();
        self.handover.clear();
        self.wait_channel.clear();
        self.wait_sink.clear();
        self.by_id.drain().map(|(_, c)| c).collect()
    }

    /// The first consumer in dispatch order that takes credit for a message of `size` bytes
    /// (with `batched` telling how many bytes are already picked for a consumer's sink); it
    /// moves to the tail of its priority. Consumers that cannot are taken out of the rotation,
    /// noted as waiting for what they lack.
    pub fn pick<R>(
        &mut self,
        size: usize,
        batched: impl Fn(&Consumer) -> usize,
        chosen: impl FnOnce(&Consumer) -> R,
    ) -> Option<R> {
        if self.single_active {
            let id = self.active?;
            let c = self.by_id.get_mut(&id)?;
            if c.blocked.is_some() {
                return None;
            }
            let already = batched(c);
            return match c.try_reserve(size, already) {
                Ok(()) => Some(chosen(c)),
                Err(why) => {
                    Self::wait(&mut self.wait_channel, &mut self.wait_sink, c, why);
                    None
                }
            };
        }
        let Consumers {
            by_id,
            rotation,
            wait_channel,
            wait_sink,
            ..
        } = self;
        let mut emptied: Vec<Reverse<i64>> = Vec::new();
        let mut picked = None;
        'levels: for (key, level) in rotation.iter_mut() {
            while let Some(&id) = level.front() {
                let Some(c) = by_id.get_mut(&id) else {
                    level.pop_front();
                    continue;
                };
                let already = batched(c);
                match c.try_reserve(size, already) {
                    Ok(()) => {
                        level.rotate_left(1);
                        picked = Some(chosen(c));
                        break 'levels;
                    }
                    Err(why) => {
                        level.pop_front();
                        Self::wait(wait_channel, wait_sink, c, why);
                    }
                }
            }
            // Every consumer of this priority is waiting: the level goes.
            emptied.push(*key);
        }
        for key in emptied {
            rotation.remove(&key);
        }
        picked
    }

    /// Notes a consumer out of the rotation as waiting for `why`.
    fn wait(
        wait_channel: &mut HashMap<usize, Vec<ConsumerId>>,
        wait_sink: &mut HashMap<u64, Vec<ConsumerId>>,
        c: &mut Consumer,
        why: Blocked,
    ) {
        c.blocked = Some(why);
        match why {
            Blocked::Channel => wait_channel.entry(channel_key(c)).or_default().push(c.id),
            Blocked::Sink => wait_sink.entry(c.sink.sink_id()).or_default().push(c.id),
            Blocked::Own | Blocked::Dead => {}
        }
    }

    /// A consumer waiting for something gets it back and rejoins at the tail of its priority.
    fn rejoin(&mut self, id: ConsumerId, was: Blocked) {
        if let Some(c) = self.by_id.get_mut(&id)
            && c.blocked == Some(was)
        {
            c.blocked = None;
            if self.single_active {
                return;
            }
            let priority = c.priority;
            self.level(priority).push_back(id);
        }
    }

    /// Gives a consumer back the credit of one settled delivery; it rejoins if it was waiting
    /// for its own prefetch.
    pub fn release(&mut self, id: ConsumerId) {
        if let Some(c) = self.by_id.get_mut(&id) {
            c.release();
            if c.blocked == Some(Blocked::Own) {
                self.rejoin(id, Blocked::Own);
            }
        }
    }

    /// Consumers waiting for the channel whose prefetch lives at `channel` rejoin.
    pub fn wake_channel(&mut self, channel: usize) {
        for id in self.wait_channel.remove(&channel).unwrap_or_default() {
            self.rejoin(id, Blocked::Channel);
        }
    }

    /// Consumers waiting for room in sink `sink_id` rejoin.
    pub fn wake_sink(&mut self, sink_id: u64) {
        for id in self.wait_sink.remove(&sink_id).unwrap_or_default() {
            self.rejoin(id, Blocked::Sink);
        }
    }

    /// Marks a consumer whose connection is gone; it is skipped until its channel removes it,
    /// and gives up being the active consumer.
    pub fn mark_dead(&mut self, id: ConsumerId) {
        if let Some(c) = self.by_id.get_mut(&id)
            && !c.dead
        {
            c.dead = true;
            self.dead += 1;
            let priority = c.priority;
            self.handover.remove(&self.handover_key(priority, id));
            if self.exclusive == Some(id) {
                self.exclusive = None;
            }
        }
        if self.active == Some(id) {
            self.choose_active();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::queue::delivery::{Delivery, DeliverySink};
    use crate::broker::queue::prefetch::ChannelPrefetch;
    use bytes::Bytes;

    struct Sink;

    impl DeliverySink for Sink {
        fn sink_id(&self) -> u64 {
            1
        }
        fn has_room(&self, _size: usize, _batched: usize) -> bool {
            true
        }
        fn push_deliveries(&self, _: &mut Vec<Delivery>, _: usize) -> Result<(), Vec<Delivery>> {
            Ok(())
        }
        fn consumer_cancelled(&self, _channel: u16, _consumer: ConsumerId, _tag: Bytes) {}
    }

    fn consumer(id: ConsumerId, exclusive: bool) -> Consumer {
        Consumer {
            id,
            tag: Bytes::from(format!("c{id}")),
            channel: 1,
            sink: Arc::new(Sink),
            channel_prefetch: Arc::new(ChannelPrefetch::new(1_000)),
            no_ack: true,
            exclusive,
            prefetch_count: 0,
            in_flight: 0,
            priority: 0,
            arguments: Bytes::new(),
            blocked: None,
            dead: false,
        }
    }

    /// A removal leaves its id in the rotation rather than searching for it; consuming and
    /// cancelling over and over on an idle queue must not make the rotation grow.
    #[test]
    fn removed_consumers_are_never_picked_and_do_not_pile_up() {
        let mut consumers = Consumers::new(false, true);
        consumers.insert(consumer(1, false));
        for id in 2..100_000 {
            consumers.insert(consumer(id, false));
            consumers.remove(id);
        }
        let in_rotation: usize = consumers.rotation.values().map(VecDeque::len).sum();
        assert!(
            in_rotation <= 2 * 64 + 2,
            "{in_rotation} ids in the rotation"
        );
        for _ in 0..3 {
            assert_eq!(consumers.pick(1, |_| 0, |c| c.id), Some(1));
        }
    }

    /// Same as RabbitMQ: when a single active consumer goes, the live consumer of the highest
    /// priority takes over, the earliest registered among equals (quorum queues: the
    /// earliest registered), without a search through the others.
    #[test]
    fn the_next_single_active_consumer_is_taken_in_handover_order() {
        let with_priority = |id, priority| Consumer {
            priority,
            ..consumer(id, false)
        };
        let mut classic = Consumers::new(true, true);
        let mut quorum = Consumers::new(true, false);
        for (id, priority) in [(1, 0), (2, 5), (3, 0), (4, 5), (5, 9)] {
            classic.insert(with_priority(id, priority));
            quorum.insert(with_priority(id, priority));
        }
        // The active consumers in turn, each removed as it becomes active.
        let handovers = |consumers: &mut Consumers| {
            std::iter::from_fn(|| {
                let id = consumers.active()?;
                consumers.remove(id);
                Some(id)
            })
            .collect::<Vec<_>>()
        };
        classic.mark_dead(5);
        assert_eq!(handovers(&mut classic), [1, 2, 4, 3]);
        quorum.mark_dead(2);
        assert_eq!(handovers(&mut quorum), [1, 3, 4, 5]);
        assert_eq!((classic.len(), quorum.len()), (1, 1));
    }

    #[test]
    fn live_and_exclusive_consumers_are_counted_not_searched() {
        let mut consumers = Consumers::new(false, true);
        consumers.insert(consumer(1, true));
        assert_eq!((consumers.live(), consumers.exclusive()), (1, Some(1)));
        consumers.mark_dead(1);
        consumers.mark_dead(1);
        assert_eq!((consumers.live(), consumers.exclusive()), (0, None));
        consumers.insert(consumer(2, false));
        assert_eq!(consumers.live(), 1);
        consumers.remove(1);
        consumers.remove(2);
        assert_eq!((consumers.len(), consumers.live()), (0, 0));
    }
}
