//! What makes messages leave a queue unasked: length limits (`x-max-length`,
//! `x-max-length-bytes` with drop-head) and expiry (message TTLs at the head, `x-expires` of
//! the queue itself), and the timer that wakes the queue for them.

use super::context::QueueCtx;
use super::dead_letter::Reason;
use super::settings::{Overflow, QueueType};
use super::state::State;
use crate::broker::timer::now_ms;

/// Messages expired or dropped (drop-head) under one hold of a queue's lock. A TTL passing
/// over a backlog of millions paged out, or a policy cutting `max-length` to 0, would
/// otherwise read all of it back and collect every dead letter in memory in one go, with
/// the queue locked and the timer thread (every queue's expiry) waiting.
pub const MAX_DISCARDS_PER_TURN: usize = 4096;

/// Holds of a queue's lock one `basic.get` may take to discard expired heads before the
/// message it returns (65,536 messages): a fetch past a larger expired backlog finds the
/// queue empty, and the timer thread goes on with the rest.
pub const MAX_GET_TURNS: usize = 16;

impl State {
    /// Whether one more message of `size` body bytes would exceed a length limit.
    /// Dead letters held until their queues have them count, as in RabbitMQ
    /// (`rabbit_fifo:is_over_limit`).
    pub fn would_overflow(&self, size: u64) -> bool {
        let count = u64::from(self.message_count()) + self.held.count;
        let bytes = self.body_bytes + self.held.bytes;
        self.settings.max_length.is_some_and(|max| count + 1 > max)
            || self
                .settings
                .max_length_bytes
                .is_some_and(|max| bytes + size > max)
    }

    /// Whether a publish of `size` bytes is refused under `reject-publish(-dlx)`. A classic
    /// queue refuses what would take it over its limit. A quorum queue, as RabbitMQ's
    /// (`rabbit_fifo:evaluate_limit`), takes the message that goes over and refuses from
    /// the next one, until it is down to 80% of the limit.
    pub fn refuses(&mut self, size: u64) -> bool {
        if self.settings.queue_type != QueueType::Quorum {
            return self.would_overflow(size);
        }
        if self.refusing_publishes && self.below_soft_limit() {
            self.refusing_publishes = false;
        }
        if self.refusing_publishes {
            return true;
        }
        self.refusing_publishes = self.would_overflow(size);
        false
    }

    /// Down to 80% of every length limit, as `rabbit_fifo:is_below_soft_limit` (the limit
    /// times 0.8, truncated). In 128 bits: a client's limit can be up to `i64::MAX`, whose
    /// four times wrapped to a soft limit near zero.
    fn below_soft_limit(&self) -> bool {
        let below =
            |max: Option<u64>, n: u64| max.is_none_or(|m| u128::from(n) <= u128::from(m) * 4 / 5);
        below(
            self.settings.max_length,
            u64::from(self.message_count()) + self.held.count,
        ) && below(
            self.settings.max_length_bytes,
            self.body_bytes + self.held.bytes,
        )
    }

    /// Drop-head: while the queue is over a length limit, drops (or dead-letters) the oldest
    /// messages, at most [`MAX_DISCARDS_PER_TURN`] under this lock hold; the timer thread
    /// goes on with the rest at once.
    pub fn enforce_length_limit(&mut self, ctx: &QueueCtx) {
        self.over_limit_pending = false;
        if !self.settings.limited() || self.settings.overflow != Overflow::DropHead {
            return;
        }
        loop {
            let count = u64::from(self.message_count());
            let over = self.settings.max_length.is_some_and(|max| count > max)
                || self
                    .settings
                    .max_length_bytes
                    .is_some_and(|max| self.body_bytes > max);
            if !over {
                break;
            }
            if self.discards_left == 0 {
                self.over_limit_pending = true;
                break;
            }
            self.discards_left -= 1;
            self.page_in_levels(ctx);
            if self.ready.is_empty() && !self.page_in_always(ctx) {
                break;
            }
            let Some(entry) = self.pop_ready() else {
                break;
            };
            self.discard(entry, Reason::Maxlen);
        }
        self.collect_garbage();
    }

    /// Expires messages at the heads of the priority levels, at most
    /// [`MAX_DISCARDS_PER_TURN`] under this lock hold: a head still expired after that arms
    /// the timer for now, so the timer thread goes on with the rest once the lock (and the
    /// dead letters collected) have been let go.
    ///
    /// Returns true if it stopped at that bound with an expired head left: whoever called
    /// it stops too, and leaves the rest to the timer.
    pub fn expire_heads(&mut self, ctx: &QueueCtx) -> bool {
        let Some(first) = self.ready.next_expiry() else {
            return false;
        };
        let now = now_ms();
        if first > now {
            return false;
        }
        let mut expired = 0;
        while self.discards_left > 0
            && let Some(entry) = self.ready.pop_expired(now)
        {
            self.forget_ready(&entry);
            self.discard(entry, Reason::Expired);
            self.discards_left -= 1;
            expired += 1;
            if self.ready.is_empty() {
                // The next head is read back now, so that the timer is armed for it.
                self.page_in(ctx);
            }
        }
        if expired > 0 {
            self.collect_garbage();
        }
        self.discards_left == 0 && self.ready.next_expiry().is_some_and(|at| at <= now)
    }

    /// Schedules the timer thread for the next head expiry, or for `x-expires` while the
    /// queue has no consumers.
    pub fn arm_timer(&mut self, ctx: &QueueCtx) {
        if self.deleted {
            return;
        }
        let queue_expiry = self
            .settings
            .expires_ms
            .filter(|_| self.consumers.is_empty())
            .map(|ttl| self.last_used_ms.saturating_add(ttl));
        let earliest = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut next = earliest(self.ready.next_expiry(), queue_expiry);
        if self.over_limit_pending {
            next = earliest(next, Some(now_ms()));
        }
        if !self.held.is_empty() {
            next = earliest(next, self.held.next_deadline());
        }
        let Some(next) = next else {
            return;
        };
        if self.timer_at.is_some_and(|at| at <= next) {
            return;
        }
        self.timer_at = Some(next);
        ctx.services.timers.schedule(next, ctx.timed.clone());
    }
}
