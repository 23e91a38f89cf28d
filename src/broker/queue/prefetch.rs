//! Channel-wide prefetch: the credit a channel's consumers share.
//!
//! RabbitMQ gives `basic.qos` two meanings: `global=false` limits each consumer created after
//! it (kept on the queue's consumer record, see [`crate::consumer`]), `global=true` limits all
//! consumers of the channel together. The shared count lives here, in atomics, because queues
//! on any thread take credit from it while the channel's own task gives it back on ack.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// A consumer's id (`delivery::ConsumerId`, which names this module's type in turn).
type ConsumerId = u64;

#[derive(Debug)]
pub struct ChannelPrefetch {
    /// `basic.qos(global=true)` prefetch_count; 0 means no channel-wide limit.
    global_limit: AtomicU32,
    /// Unacknowledged deliveries one channel may hold whatever its qos (a safety net).
    hard_limit: u32,
    /// Deliveries on this channel awaiting an ack.
    unacked: AtomicU32,
    /// Set when a queue skipped a consumer for lack of channel credit, or when the channel
    /// still has queues waiting for it (`note_starved`), so the channel knows to ask them
    /// when credit returns.
    starved: AtomicBool,
    /// The consumers skipped for lack of channel credit since the channel last took them
    /// (into `ChannelConsumers::waiting`, from where their queues are asked in turn): only
    /// their queues are asked when it returns, as RabbitMQ's limiter remembers the queues it
    /// blocked (asking every queue of the channel made each ack cost as many queue locks as
    /// the channel had queues, 65,536 at most). One entry per consumer at most.
    starved_consumers: Mutex<HashSet<ConsumerId>>,
}

impl ChannelPrefetch {
    pub fn new(hard_limit: u32) -> Self {
        ChannelPrefetch {
            global_limit: AtomicU32::new(0),
            hard_limit: hard_limit.max(1),
            unacked: AtomicU32::new(0),
            starved: AtomicBool::new(false),
            starved_consumers: Mutex::new(HashSet::new()),
        }
    }

    /// Notes that `consumer` was skipped for lack of credit, before the flag that says so.
    fn starve(&self, consumer: ConsumerId) {
        self.starved_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(consumer);
        self.starved.store(true, Ordering::SeqCst);
    }

    /// Sets the channel-wide limit (`basic.qos` with `global=true`).
    pub fn set_global_limit(&self, limit: u32) {
        // SeqCst, as the credit counts: a queue asked again after a basic.qos widened the
        // limit must see the new one.
        self.global_limit.store(limit, Ordering::SeqCst);
    }

    pub fn global_limit(&self) -> u32 {
        self.global_limit.load(Ordering::SeqCst)
    }

    fn limit(&self) -> u32 {
        match self.global_limit.load(Ordering::SeqCst) {
            0 => self.hard_limit,
            n => n.min(self.hard_limit),
        }
    }

    /// Takes one unit of channel credit for a delivery to `consumer` that needs an ack, if
    /// there is any left.
    #[inline]
    pub fn try_acquire(&self, consumer: ConsumerId) -> bool {
        loop {
            let current = self.unacked.load(Ordering::SeqCst);
            if current >= self.limit() {
                // Announce the shortage, then look again: a release that raced with us either
                // sees the flag (and asks the queue again) or left room that we see here.
                self.starve(consumer);
                if self.unacked.load(Ordering::SeqCst) >= self.limit() {
                    return false;
                }
                continue;
            }
            if self
                .unacked
                .compare_exchange(current, current + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return true;
            }
        }
    }

    /// Whether a no-ack consumer must wait: RabbitMQ holds back no-ack deliveries too once the
    /// channel's acknowledged deliveries reach a `global=true` limit.
    #[inline]
    pub fn blocks_no_ack(&self, consumer: ConsumerId) -> bool {
        let limit = self.global_limit.load(Ordering::SeqCst);
        if limit == 0 || self.unacked.load(Ordering::SeqCst) < limit {
            return false;
        }
        self.starve(consumer);
        // The limit read again: a basic.qos that widened it meanwhile may have found the
        // flag not yet set, and asked no queue.
        let limit = self.global_limit.load(Ordering::SeqCst);
        limit != 0 && self.unacked.load(Ordering::SeqCst) >= limit
    }

    /// Gives back `n` units of credit. Returns true when a queue went without because of this
    /// channel's limit and should now be asked to dispatch again.
    pub fn release(&self, n: u32) -> bool {
        if n == 0 {
            return false;
        }
        let _ = self
            .unacked
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(n))
            });
        self.starved.swap(false, Ordering::SeqCst)
    }

    /// Whether a delivery that needs an ack could take channel credit now.
    pub fn has_credit(&self) -> bool {
        self.unacked.load(Ordering::SeqCst) < self.limit()
    }

    /// The consumers skipped for lack of credit since the last call, which forgets them: the
    /// channel keeps their queues (`ChannelConsumers::note_waiting`) until it asks them.
    pub fn take_starved_consumers(&self) -> Vec<ConsumerId> {
        let mut starved = self
            .starved_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let taken = starved.drain().collect();
        // Up to one entry per consumer of the channel: a set grown by 65,536 consumers
        // gives its room back once emptied.
        if starved.capacity() > 1024 {
            starved.shrink_to(0);
        }
        taken
    }

    /// Marks the channel as having queues waiting for credit (a round of asking them stopped
    /// with some left), so that the next release asks again.
    pub fn note_starved(&self) {
        self.starved.store(true, Ordering::SeqCst);
    }

    /// Forgets consumer `consumer` (cancelled): the set holds only the channel's consumers.
    pub fn forget_starved(&self, consumer: ConsumerId) {
        self.starved_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&consumer);
    }

    /// Whether some queue went without because of this channel's credit; clears the flag.
    pub fn take_starved(&self) -> bool {
        self.starved.swap(false, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_limit_is_shared_and_given_back() {
        let p = ChannelPrefetch::new(1000);
        p.set_global_limit(2);
        assert!(p.try_acquire(1));
        assert!(p.try_acquire(2));
        assert!(!p.try_acquire(3));
        assert!(p.release(1), "a starved queue must be told to try again");
        assert_eq!(
            p.take_starved_consumers(),
            [3],
            "which consumer went without"
        );
        assert!(p.try_acquire(3));
    }

    /// The consumers that went without credit are remembered once each, no-ack ones too,
    /// until taken or cancelled.
    #[test]
    fn consumers_that_went_without_are_remembered_until_taken_or_forgotten() {
        let p = ChannelPrefetch::new(1000);
        p.set_global_limit(1);
        assert!(p.try_acquire(1));
        for _ in 0..3 {
            assert!(!p.try_acquire(2));
            assert!(p.blocks_no_ack(3));
        }
        assert!(!p.try_acquire(4));
        p.forget_starved(4);
        let mut taken = p.take_starved_consumers();
        taken.sort_unstable();
        assert_eq!(taken, [2, 3]);
        assert!(p.take_starved_consumers().is_empty());
        assert!(p.release(1), "they went without: the queues are asked");
        assert!(!p.blocks_no_ack(3));
    }

    #[test]
    fn hard_limit_applies_without_qos() {
        let p = ChannelPrefetch::new(1);
        assert!(p.try_acquire(1));
        assert!(!p.try_acquire(1));
    }
}
