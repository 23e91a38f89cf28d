//! The messages of a queue waiting for a consumer: one FIFO per priority level (a single one
//! unless the queue was declared with `x-max-priority`), each sorted by sequence number.
//!
//! The head of the queue is the front of the highest non-empty level. A message's level is
//! its `priority` property capped at the queue's maximum, as in RabbitMQ: a priority above
//! the maximum counts as the maximum, and no priority counts as 0.

use std::collections::VecDeque;

use super::entry::QueueEntry;
use crate::broker::message::Compaction;

/// A level holding more slots than this is shrunk once it is less than a quarter full: a
/// drained backlog of a million messages would otherwise keep 40 MB of empty slots, which
/// nothing accounts and nothing frees. Below it, a level keeps what it grew to.
const SHRINK_ABOVE_SLOTS: usize = 4096;

/// Gives a level's spare slots back when it is mostly empty, keeping room to double. Halving
/// at a quarter makes each shrink's copy paid for by the pops before it.
fn shrink_if_sparse(level: &mut VecDeque<QueueEntry>) {
    if level.capacity() > SHRINK_ABOVE_SLOTS && level.len() < level.capacity() / 4 {
        level.shrink_to(level.len() * 2);
    }
}

/// A batch of requeued messages at most this large is placed one message at a time (a
/// binary search and a shift each, no allocation): bounded by this many shifts of half a
/// level, as linear as the merge larger batches take.
const INSERT_ONE_BY_ONE_MAX: usize = 8;

/// Merges `back` (sorted by sequence number) into `level` (sorted too), in time linear in
/// `back` and the part of `level` it reaches into: the entries before the last of `back`
/// are taken off the front, merged with it, and pushed back. Requeued messages usually
/// belong near the front, so a large level is not copied for a few of them.
fn merge_into(level: &mut VecDeque<QueueEntry>, back: Vec<QueueEntry>) {
    let Some(last) = back.last().map(|e| e.seq) else {
        return;
    };
    let reached = level.partition_point(|e| e.seq < last);
    let mut merged = Vec::with_capacity(reached + back.len());
    let mut back = back.into_iter().peekable();
    for entry in level.drain(..reached) {
        while let Some(requeued) = back.next_if(|r| r.seq < entry.seq) {
            merged.push(requeued);
        }
        merged.push(entry);
    }
    merged.extend(back);
    for entry in merged.into_iter().rev() {
        level.push_front(entry);
    }
}

#[derive(Debug)]
pub struct Ready {
    /// Index 0 is priority 0; the last level is the highest.
    levels: Vec<VecDeque<QueueEntry>>,
    len: usize,
    /// How many of the messages are still slices of the read buffers they arrived in
    /// (`Message::in_read_buffers`): what `compact` would copy.
    in_read_buffers: usize,
}

impl Default for Ready {
    fn default() -> Self {
        Ready::new(None)
    }
}

impl Ready {
    pub fn new(max_priority: Option<u8>) -> Ready {
        let count = max_priority.map_or(1, |p| p as usize + 1);
        Ready {
            levels: (0..count).map(|_| VecDeque::new()).collect(),
            len: 0,
            in_read_buffers: 0,
        }
    }

    /// Whether the queue orders by priority.
    pub fn prioritised(&self) -> bool {
        self.levels.len() > 1
    }

    fn level_of(&self, entry: &QueueEntry) -> usize {
        self.level_index(entry.message.priority)
    }

    /// The level a message of this priority goes to.
    pub fn level_index(&self, priority: Option<u8>) -> usize {
        (priority.unwrap_or(0) as usize).min(self.levels.len() - 1)
    }

    /// How many priority levels there are (1 for a FIFO queue).
    pub fn level_count(&self) -> usize {
        self.levels.len()
    }

    /// The messages of one level, oldest first.
    pub fn level(&self, level: usize) -> impl Iterator<Item = &QueueEntry> {
        self.levels.get(level).into_iter().flat_map(|l| l.iter())
    }

    /// Removes and returns a level's messages after its first `keep`.
    pub fn split_level(&mut self, level: usize, keep: usize) -> Vec<QueueEntry> {
        let Some(level) = self.levels.get_mut(level) else {
            return Vec::new();
        };
        let rest: Vec<QueueEntry> = level.drain(keep.min(level.len())..).collect();
        shrink_if_sparse(level);
        self.len -= rest.len();
        self.in_read_buffers -= rest.iter().filter(|e| e.message.in_read_buffers).count();
        rest
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// How many messages are still slices of their read buffers (what `compact` copies).
    pub fn in_read_buffers(&self) -> usize {
        self.in_read_buffers
    }

    fn added(&mut self, entry: &QueueEntry) {
        self.len += 1;
        self.in_read_buffers += usize::from(entry.message.in_read_buffers);
    }

    fn removed(&mut self, entry: &QueueEntry) {
        self.len -= 1;
        self.in_read_buffers -= usize::from(entry.message.in_read_buffers);
    }

    /// Copies every message that is still a slice of its read buffers out of them
    /// (`Message::compacted`), so that the queue keeps alive only what its messages are.
    /// Looks from the newest end of each level, where new messages are, and stops once it
    /// has found them all: a queue compacted before costs only what arrived since.
    pub fn compact(&mut self, compaction: &mut Compaction) {
        for level in self.levels.iter_mut().rev() {
            for entry in level.iter_mut().rev() {
                if self.in_read_buffers == 0 {
                    return;
                }
                if entry.message.in_read_buffers {
                    entry.message = compaction.copy_of(&entry.message);
                    self.in_read_buffers -= 1;
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a new message (the highest sequence number so far).
    pub fn push_back(&mut self, entry: QueueEntry) {
        let level = self.level_of(&entry);
        self.added(&entry);
        self.levels[level].push_back(entry);
    }

    /// Puts messages back where their sequence numbers go within their levels, in time
    /// linear in the messages and in the part of each level they reach into (`merge_into`).
    /// Placed one by one, each would shift
    /// up to half its level: a channel closing with 100,000 deliveries whose numbers
    /// alternate with 100,000 still ready (two consumers sharing the queue round-robin) moved
    /// billions of entries under the queue's lock. RabbitMQ merges requeued messages into its
    /// queue in one pass too (`rabbit_variable_queue:requeue`).
    pub fn insert_all_in_order(&mut self, entries: Vec<QueueEntry>) {
        if entries.len() <= INSERT_ONE_BY_ONE_MAX {
            // Newest first, so that each usually goes to the front (`insert_in_order`).
            let mut entries = entries;
            entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
            for entry in entries {
                self.insert_in_order(entry);
            }
            return;
        }
        let mut by_level: Vec<Vec<QueueEntry>> =
            (0..self.levels.len()).map(|_| Vec::new()).collect();
        for entry in entries {
            self.added(&entry);
            let level = self.level_of(&entry);
            by_level[level].push(entry);
        }
        for (level, mut back) in self.levels.iter_mut().zip(by_level) {
            if back.is_empty() {
                continue;
            }
            back.sort_unstable_by_key(|e| e.seq);
            merge_into(level, back);
        }
    }

    /// Puts a message back where its sequence number goes within its level.
    pub fn insert_in_order(&mut self, entry: QueueEntry) {
        let index = self.level_of(&entry);
        self.added(&entry);
        let level = &mut self.levels[index];
        // Requeued messages almost always belong before everything still ready.
        match level.front() {
            Some(front) if entry.seq > front.seq => {
                let at = level.partition_point(|e| e.seq < entry.seq);
                level.insert(at, entry);
            }
            _ => level.push_front(entry),
        }
    }

    /// The highest level with a message in memory.
    pub fn head_level(&self) -> Option<usize> {
        self.levels.iter().rposition(|l| !l.is_empty())
    }

    /// The message that goes out next.
    pub fn front(&self) -> Option<&QueueEntry> {
        self.head_level().and_then(|l| self.levels[l].front())
    }

    pub fn pop_front(&mut self) -> Option<QueueEntry> {
        let level = self.head_level()?;
        let entry = self.levels[level].pop_front()?;
        self.removed(&entry);
        Some(entry)
    }

    /// Gives the spare slots of mostly empty levels back: called once per dispatch rather
    /// than per pop, off the per-message path.
    pub fn shrink_sparse_levels(&mut self) {
        for level in &mut self.levels {
            shrink_if_sparse(level);
        }
    }

    /// Removes the message with sequence number `seq` (looking from the newest end, where a
    /// message just published is).
    pub fn take_seq(&mut self, seq: u64) -> Option<QueueEntry> {
        // Each level is sorted by sequence number: a look at its newest end, then a binary
        // search. (A scan of every level below the message's own went through a
        // priority-0 backlog of 100,000 for every TTL-0 publish at a higher priority.)
        for level in self.levels.iter_mut() {
            let at = match level.back() {
                Some(last) if last.seq == seq => level.len() - 1,
                _ => match level.binary_search_by_key(&seq, |e| e.seq) {
                    Ok(at) => at,
                    Err(_) => continue,
                },
            };
            let entry = level.remove(at)?;
            shrink_if_sparse(level);
            self.len -= 1;
            self.in_read_buffers -= usize::from(entry.message.in_read_buffers);
            return Some(entry);
        }
        None
    }

    /// Removes the message at the head if its expiry has passed. Only the head expires, as
    /// in RabbitMQ (whose priority queue stops at the first level whose head has not
    /// expired): a message behind a longer-lived one, or below a higher priority, waits its
    /// turn.
    pub fn pop_expired(&mut self, now_ms: u64) -> Option<QueueEntry> {
        let level = self.head_level()?;
        let expired = self.levels[level]
            .front()
            .is_some_and(|e| e.expires_at.is_some_and(|at| at <= now_ms));
        if !expired {
            return None;
        }
        let entry = self.levels[level].pop_front()?;
        shrink_if_sparse(&mut self.levels[level]);
        self.removed(&entry);
        Some(entry)
    }

    /// When the head expires, if it does.
    pub fn next_expiry(&self) -> Option<u64> {
        self.front().and_then(|e| e.expires_at)
    }

    /// Messages in sequence order, for paging (FIFO queues only).
    pub fn iter(&self) -> impl Iterator<Item = &QueueEntry> {
        self.levels.iter().flat_map(|l| l.iter())
    }

    /// Removes and returns everything after the first `keep` messages (FIFO queues only).
    pub fn split_off(&mut self, keep: usize) -> Vec<QueueEntry> {
        let Some(level) = self.levels.first_mut() else {
            return Vec::new();
        };
        let rest: Vec<QueueEntry> = level.drain(keep.min(level.len())..).collect();
        shrink_if_sparse(level);
        self.len -= rest.len();
        self.in_read_buffers -= rest.iter().filter(|e| e.message.in_read_buffers).count();
        rest
    }

    /// Appends messages that were split off, in order (FIFO queues only).
    pub fn extend_back(&mut self, entries: impl IntoIterator<Item = QueueEntry>) {
        for e in entries {
            self.push_back(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drained backlog gives its slots back (the slots are memory no gauge sees).
    #[test]
    fn a_drained_level_gives_its_slots_back() {
        let mut ready = Ready::new(None);
        for seq in 0..100_000 {
            ready.push_back(entry(seq, 0));
        }
        let grown = ready.levels[0].capacity();
        while ready.len() > 10 {
            ready.pop_front();
            // As a dispatch does after its pops.
            ready.shrink_sparse_levels();
        }
        assert!(ready.levels[0].capacity() <= SHRINK_ABOVE_SLOTS.max(grown / 100));
        let rest = ready.split_off(0);
        assert_eq!(rest.len(), 10);
        assert!(ready.levels[0].capacity() <= SHRINK_ABOVE_SLOTS);
    }
    use crate::broker::body::Body;
    use crate::broker::memory::Memory;
    use crate::broker::message::Message;
    use crate::protocol::properties::PropertySummary;
    use bytes::Bytes;
    use std::sync::Arc;

    fn entry(seq: u64, priority: u8) -> QueueEntry {
        let summary = PropertySummary {
            priority: Some(priority),
            ..PropertySummary::default()
        };
        let message = Message::new(
            Bytes::new(),
            Bytes::new(),
            Bytes::new(),
            Bytes::new(),
            &summary,
        );
        QueueEntry {
            seq,
            message: Arc::new(message),
            redelivered: false,
            persisted: false,
            expires_at: None,
            delivery_count: 0,
        }
    }

    /// Requeued messages go back to their places by sequence number, in each level, however
    /// they interleave with what is still ready: before it, between it, after it.
    #[test]
    fn requeued_messages_merge_into_their_places() {
        for batch in [3usize, 1_000] {
            let mut ready = Ready::new(Some(1));
            let mut back = Vec::new();
            for seq in 0..(2 * batch as u64 + 10) {
                let e = entry(seq + 100, (seq % 3 == 0) as u8);
                // Every other message was delivered, as to one of two round-robin consumers.
                if seq % 2 == 1 || seq < 4 {
                    back.push(e);
                } else {
                    ready.push_back(e);
                }
            }
            back.push(entry(5, 0));
            back.push(entry(1_000_000, 1));
            let total = ready.len() + back.len();
            back.reverse();
            ready.insert_all_in_order(back);
            assert_eq!(ready.len(), total);
            for level in 0..2 {
                let seqs: Vec<u64> = ready.level(level).map(|e| e.seq).collect();
                assert!(
                    seqs.windows(2).all(|w| w[0] < w[1]),
                    "level {level} in order"
                );
                assert!(
                    ready
                        .level(level)
                        .all(|e| e.message.priority == Some(level as u8))
                );
            }
            let all: usize = (0..2).map(|l| ready.level(l).count()).sum();
            assert_eq!(all, total);
        }
    }

    /// A message is found by its sequence number in whichever level holds it: the newest,
    /// one requeued into the middle, one behind a large lower level.
    #[test]
    fn take_seq_finds_a_message_in_any_level() {
        let mut ready = Ready::new(Some(5));
        for seq in (0..10_000).step_by(2) {
            ready.push_back(entry(seq, 0));
        }
        ready.push_back(entry(10_001, 5));
        ready.insert_in_order(entry(5_001, 0));
        assert_eq!(ready.take_seq(10_001).map(|e| e.seq), Some(10_001));
        assert_eq!(ready.take_seq(5_001).map(|e| e.seq), Some(5_001));
        assert_eq!(ready.take_seq(4_000).map(|e| e.seq), Some(4_000));
        assert!(ready.take_seq(4_001).is_none());
        assert_eq!(ready.len(), 4_999);
    }

    /// A message whose parts are slices of `buffer` (as if read into it), with a body in
    /// one or two pieces.
    fn in_buffer(seq: u64, buffer: &Bytes, pieces: usize) -> QueueEntry {
        let mut e = entry(seq, 0);
        let mut message = Message::new(
            buffer.slice(0..3),
            buffer.slice(3..8),
            buffer.slice(8..10),
            Body::from_parts(
                (0..pieces)
                    .map(|i| buffer.slice(10 + i * 5..15 + i * 5))
                    .collect(),
            ),
            &PropertySummary::default(),
        );
        message.charge_to(Memory::leaked(0), 0);
        e.message = Arc::new(message);
        e
    }

    fn inside(part: &Bytes, buffer: &Bytes) -> bool {
        let range = buffer.as_ptr_range();
        range.contains(&part.as_ptr())
    }

    /// Compaction copies a message out of the buffer it arrived in once, however many queues
    /// hold it, keeps its parts as they were, and finds a message requeued into the middle
    /// of a queue compacted before.
    #[test]
    fn compaction_copies_a_message_out_of_its_read_buffer_once() {
        let buffer = Bytes::from(vec![7u8; 64 * 1024]);
        let (mut one, mut two) = (Ready::default(), Ready::default());
        for seq in 0..10 {
            let e = in_buffer(seq, &buffer, 1 + seq as usize % 2);
            two.push_back(e.clone());
            one.push_back(e);
        }
        let size: usize = one.iter().map(QueueEntry::size).sum();
        let mut compaction = Compaction::new(Memory::leaked(0));
        one.compact(&mut compaction);
        two.compact(&mut compaction);
        assert_eq!(compaction.copied, 10);
        for (a, b) in one.iter().zip(two.iter()) {
            assert!(
                Arc::ptr_eq(&a.message, &b.message),
                "one copy for both queues"
            );
            let m = &a.message;
            assert!(!m.in_read_buffers);
            let parts = [&m.exchange, &m.routing_key, &m.properties];
            for p in parts.into_iter().chain(m.body.parts()) {
                assert!(!inside(p, &buffer), "copied out of the read buffer");
            }
            assert_eq!(&m.routing_key[..], &[7u8; 5]);
            assert_eq!(m.body.len(), 5 * m.body.parts().len());
        }
        assert_eq!(one.iter().map(QueueEntry::size).sum::<usize>(), size);
        // A message requeued into the middle of a compacted queue.
        drop(two);
        let requeued = in_buffer(4, &buffer, 1);
        assert!(one.take_seq(4).is_some());
        one.insert_in_order(requeued);
        let mut again = Compaction::new(Memory::leaked(0));
        one.compact(&mut again);
        assert_eq!(again.copied, 1);
        assert!(one.iter().all(|e| !inside(&e.message.exchange, &buffer)));
        drop((one, compaction));
        assert!(buffer.is_unique(), "nothing holds the read buffer");
    }

    /// Regression: an empty part can be a slice of the read buffer too (an empty routing
    /// key cut from the method's payload), and the copy kept it as it was, so the copy held
    /// the whole buffer while it counted as out of the read buffers.
    #[test]
    fn a_compacted_copy_holds_no_empty_slice_of_the_read_buffer() {
        let buffer = Bytes::from(vec![7u8; 64 * 1024]);
        let mut ready = Ready::default();
        let mut e = in_buffer(0, &buffer, 1);
        let mut empty_key = buffer.slice(3..8);
        bytes::Buf::advance(&mut empty_key, 5);
        let mut message = Message::clone(&e.message);
        message.routing_key = empty_key;
        e.message = Arc::new(message);
        ready.push_back(e);
        ready.compact(&mut Compaction::new(Memory::leaked(0)));
        assert!(buffer.is_unique(), "nothing holds the read buffer");
    }

    /// A body sent in small frames is a buffer of the message's own, copied together at
    /// publish and charged to it. A compacted copy keeps such a buffer when it is large,
    /// and is charged for it: once the original is dropped, nothing else is.
    #[test]
    fn a_compacted_copy_is_charged_for_the_large_buffer_it_keeps() {
        let memory = Memory::leaked(0);
        let chunk = Bytes::from(vec![1u8; 64 * 1024]);
        let own_body = Bytes::from(vec![2u8; 200 * 1024]);
        let mut message = Message::new(
            chunk.slice(0..3),
            chunk.slice(3..8),
            chunk.slice(8..10),
            Body::from(own_body.clone()),
            &PropertySummary::default(),
        );
        message.charge_to(memory, own_body.len() + message.body.list_bytes());
        let mut e = entry(0, 0);
        e.message = Arc::new(message);
        let mut ready = Ready::default();
        ready.push_back(e);
        let mut compaction = Compaction::new(memory);
        ready.compact(&mut compaction);
        drop(compaction);
        let copy = &ready.iter().next().unwrap().message;
        assert_eq!(
            copy.body.parts()[0].as_ptr(),
            own_body.as_ptr(),
            "the large body is kept, not copied"
        );
        assert!(
            memory.used() >= own_body.len(),
            "the kept body is charged: {} bytes",
            memory.used()
        );
    }

    /// A compacted copy and its original share one dead-letter copy budget.
    #[test]
    fn a_compacted_copy_shares_the_dead_letter_budget() {
        let buffer = Bytes::from(vec![7u8; 64 * 1024]);
        let e = in_buffer(0, &buffer, 1);
        let original = e.message.clone();
        let mut ready = Ready::default();
        ready.push_back(e);
        ready.compact(&mut Compaction::new(Memory::leaked(0)));
        let copy = &ready.iter().next().unwrap().message;
        let (a, b) = (
            original
                .dead_letter_copies
                .get()
                .expect("made by the compaction"),
            copy.dead_letter_copies.get().expect("shared"),
        );
        assert!(Arc::ptr_eq(a, b));
    }
}
