//! How fast a queue's consumers take its messages, for the decision to page.
//!
//! A backlog that its consumers would take within `DRAIN_WITHIN_MS` at the pace they have
//! been taking messages is a stream passing through, not a backlog to keep on disk: a queue
//! with a 64 MiB window of 1 MiB messages in flight between a fast publisher and a fast
//! consumer wrote each message to its paging log and read it back, halving throughput. Such
//! a queue stays in memory until the broker holds half its memory watermark
//! ([`crate::broker::memory::Memory::should_page`]); a backlog with no consumer, or one that
//! grows faster than it drains, pages as soon as the broker is over its budget.
//!
//! The pace is measured over windows of `WINDOW_MS`, only when a queue over the budget asks,
//! so an idle queue and one under budget pay nothing.

/// How long a window of measurement lasts.
pub const WINDOW_MS: u64 = 100;
/// A backlog the consumers would take within this long stays in memory.
pub const DRAIN_WITHIN_MS: u64 = 1000;
/// After this long without a question, the last pace says little: start afresh. (Unless the
/// questions come this far apart anyway: see `keeps_up`.)
const STALE_MS: u64 = 4 * WINDOW_MS;

#[derive(Debug, Default)]
pub struct Pace {
    /// Bytes that have left `ready` (delivered, fetched, dropped) since the queue began.
    taken_bytes: u64,
    /// When the current window began (0: no window yet).
    window_start_ms: u64,
    /// `taken_bytes` when it began.
    taken_at_start: u64,
    /// Bytes a second taken over the last whole window; `None` until one has passed.
    bytes_per_s: Option<u64>,
}

impl Pace {
    /// Accounts for bytes that left the queue's ready messages.
    #[inline]
    pub fn took(&mut self, bytes: usize) {
        self.taken_bytes += bytes as u64;
    }

    /// Whether consumers would take `backlog_bytes` within `DRAIN_WITHIN_MS` at the pace of
    /// the last window. Until one window has passed the answer is yes: the broker's paced
    /// limit bounds what that optimism can cost.
    ///
    /// `asked_every_ms` is how far apart the asker's questions are: publishes ask all the
    /// time (0), the memory monitor once per interval. A window as long as twice that is
    /// still a pace, not stale: started afresh at every question, the monitor's answer was
    /// always yes, and a queue whose consumer took nothing was never relieved.
    pub fn keeps_up(&mut self, backlog_bytes: usize, now_ms: u64, asked_every_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.window_start_ms);
        let stale = elapsed > STALE_MS.max(asked_every_ms.saturating_mul(2));
        if self.window_start_ms == 0 || now_ms < self.window_start_ms || stale {
            self.start_window(now_ms, None);
        } else if elapsed >= WINDOW_MS {
            let taken = self.taken_bytes - self.taken_at_start;
            self.start_window(now_ms, Some(taken.saturating_mul(1000) / elapsed));
        }
        match self.bytes_per_s {
            None => true,
            Some(rate) => {
                (backlog_bytes as u64).saturating_mul(1000) <= rate.saturating_mul(DRAIN_WITHIN_MS)
            }
        }
    }

    fn start_window(&mut self, now_ms: u64, bytes_per_s: Option<u64>) {
        self.window_start_ms = now_ms;
        self.taken_at_start = self.taken_bytes;
        self.bytes_per_s = bytes_per_s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_drained_within_a_second_keeps_up() {
        let mut pace = Pace::default();
        // No window has passed: assumed to keep up.
        assert!(pace.keeps_up(64 << 20, 1_000, 0));
        // 100 MB taken in 100 ms: 1 GB/s drains 64 MiB well within a second.
        pace.took(100_000_000);
        assert!(pace.keeps_up(64 << 20, 1_100, 0));
        // The next window took 1 MB: 10 MB/s would need six seconds.
        pace.took(1_000_000);
        assert!(!pace.keeps_up(64 << 20, 1_200, 0));
        // ... but takes a 5 MB backlog within a second.
        assert!(pace.keeps_up(5_000_000, 1_250, 0));
    }

    #[test]
    fn a_queue_whose_consumers_take_nothing_does_not_keep_up() {
        let mut pace = Pace::default();
        assert!(pace.keeps_up(2 << 20, 5_000, 0));
        assert!(!pace.keeps_up(2 << 20, 5_150, 0));
        // Long silence: the old pace is forgotten, and measured again.
        assert!(pace.keeps_up(2 << 20, 60_000, 0));
        assert!(!pace.keeps_up(2 << 20, 60_100, 0));
    }

    /// Same as the publish path's questions, but a second apart (the memory monitor's): a
    /// consumer that takes nothing does not keep up, one that takes the backlog does.
    #[test]
    fn questions_a_monitor_interval_apart_measure_the_pace() {
        let mut pace = Pace::default();
        assert!(pace.keeps_up(2 << 20, 5_000, 1_000), "nothing measured yet");
        assert!(
            !pace.keeps_up(2 << 20, 6_000, 1_000),
            "took nothing in a second"
        );
        pace.took(4 << 20);
        assert!(
            pace.keeps_up(2 << 20, 7_000, 1_000),
            "took 4 MiB in a second"
        );
        // A question much later than the interval starts afresh.
        assert!(pace.keeps_up(2 << 20, 60_000, 1_000));
    }
}
