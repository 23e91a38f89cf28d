//! Timers for queues: message expiry at the head, queue expiry (`x-expires`).
//!
//! Queues have no task of their own, so something must wake them when a message at the head
//! expires with no client activity. One thread per broker keeps a heap of deadlines and calls
//! [`Timed::on_timer`] when one passes. A queue schedules only its earliest deadline and
//! schedules again from `on_timer`; a stale entry (the queue moved on, or was dropped) costs
//! one wasted call.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the clock message expiry is kept in, so that it means
/// the same after a restart.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Something woken at a deadline.
pub trait Timed: Send + Sync {
    fn on_timer(&self, now_ms: u64);
}

struct Entry {
    at_ms: u64,
    /// Breaks ties so entries never compare their targets.
    order: u64,
    target: Weak<dyn Timed>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.order) == (other.at_ms, other.order)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.order).cmp(&(other.at_ms, other.order))
    }
}

#[derive(Default)]
struct Heap {
    entries: BinaryHeap<Reverse<Entry>>,
    next_order: u64,
}

/// The broker's timer thread.
pub struct Timers {
    heap: Mutex<Heap>,
    wake: Condvar,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Timers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timers").finish_non_exhaustive()
    }
}

impl Timers {
    /// Starts the timer thread.
    pub fn start() -> std::io::Result<Arc<Timers>> {
        let timers = Arc::new(Timers {
            heap: Mutex::new(Heap::default()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let worker = Arc::downgrade(&timers);
        let handle = std::thread::Builder::new()
            .name("lepus-timers".into())
            .spawn(move || run(worker))?;
        *timers.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(timers)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Heap> {
        self.heap.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `target.on_timer` once `at_ms` has passed.
    pub fn schedule(&self, at_ms: u64, target: Weak<dyn Timed>) {
        let mut heap = self.lock();
        let order = heap.next_order;
        heap.next_order += 1;
        let earliest = heap.entries.peek().is_none_or(|e| at_ms < e.0.at_ms);
        heap.entries.push(Reverse(Entry {
            at_ms,
            order,
            target,
        }));
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Stops the thread; pending deadlines are dropped.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}

fn run(timers: Weak<Timers>) {
    loop {
        let Some(t) = timers.upgrade() else {
            return;
        };
        let mut due = Vec::new();
        {
            let mut heap = t.lock();
            if t.stop.load(Ordering::SeqCst) {
                return;
            }
            let now = now_ms();
            while heap.entries.peek().is_some_and(|e| e.0.at_ms <= now) {
                if let Some(Reverse(e)) = heap.entries.pop() {
                    due.push(e.target);
                }
            }
            if due.is_empty() {
                // Wake at the next deadline, and at least every second to notice the broker
                // going away.
                let wait = heap
                    .entries
                    .peek()
                    .map_or(MAX_WAIT, |e| Duration::from_millis(e.0.at_ms - now))
                    .min(MAX_WAIT);
                let _ = t.wake.wait_timeout(heap, wait);
                continue;
            }
        }
        // Nothing is locked here: targets take their own locks and may schedule again.
        drop(t);
        let now = now_ms();
        for target in due {
            if let Some(target) = target.upgrade() {
                target.on_timer(now);
            }
        }
    }
}

/// The longest the timer thread sleeps without looking at its heap and its stop flag.
const MAX_WAIT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    struct Counter(AtomicU64);
    impl Timed for Counter {
        fn on_timer(&self, _now: u64) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn deadlines_fire_in_order_and_dropped_targets_are_skipped() {
        let timers = Timers::start().unwrap();
        let a = Arc::new(Counter(AtomicU64::new(0)));
        let gone = Arc::new(Counter(AtomicU64::new(0)));
        let now = now_ms();
        let weak_a: Weak<dyn Timed> = Arc::downgrade(&a) as Weak<dyn Timed>;
        timers.schedule(now + 20, weak_a.clone());
        timers.schedule(now, weak_a);
        timers.schedule(now + 5, Arc::downgrade(&gone) as Weak<dyn Timed>);
        drop(gone);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while a.0.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(a.0.load(Ordering::SeqCst), 2);
        timers.stop();
    }
}
