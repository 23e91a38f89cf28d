//! Timers for queues: message expiry at the head, queue expiry (`x-expires`).
//!
//! Queues have no task of their own, so something must wake them when a message at the head
//! expires with no client activity. One thread per broker keeps a heap of deadlines and calls
//! [`Timed::on_timer`] when one passes. A queue schedules only its earliest deadline and
//! schedules again from `on_timer`; a stale entry (the queue moved on, or was dropped) costs
//! one wasted call. Stale entries are swept out whenever the heap has doubled since the last
//! sweep: only the earliest entry of each live target is kept, so a client that declares and
//! deletes queues with a ten-year `x-expires` in a loop cannot grow the heap (each entry
//! would keep its dropped queue's memory allocated until the deadline).

use std::cmp::Reverse;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BinaryHeap, HashMap};
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
    /// The size at which the next sweep runs.
    sweep_at: usize,
}

/// The smallest heap that is swept.
const SWEEP_MIN_ENTRIES: usize = 1024;

impl Heap {
    /// Keeps the earliest entry of each target still alive. A queue re-arms after every
    /// wake-up, so its later entries are redundant. Linear in the heap's size (one pass, then
    /// a heapify), under the lock every queue arming a timer takes: sorting the heap to find
    /// each target's earliest entry made every doubling an O(N log N) hold.
    fn sweep(&mut self) {
        let mut earliest: HashMap<usize, Entry> = HashMap::new();
        for Reverse(e) in std::mem::take(&mut self.entries).into_vec() {
            if e.target.strong_count() == 0 {
                continue;
            }
            let key = Weak::as_ptr(&e.target) as *const () as usize;
            match earliest.entry(key) {
                MapEntry::Occupied(mut kept) if e < *kept.get() => {
                    kept.insert(e);
                }
                MapEntry::Occupied(_) => {}
                MapEntry::Vacant(slot) => {
                    slot.insert(e);
                }
            }
        }
        self.entries = earliest.into_values().map(Reverse).collect();
        self.sweep_at = (2 * self.entries.len()).max(SWEEP_MIN_ENTRIES);
    }
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
        if heap.entries.len() >= heap.sweep_at.max(SWEEP_MIN_ENTRIES) {
            heap.sweep();
        }
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Deadlines waiting in the heap, stale ones included.
    pub fn pending(&self) -> usize {
        self.lock().entries.len()
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

    /// Regression: every re-arm to an earlier deadline, and every dropped target, left an
    /// entry until its deadline (years, for `x-expires`), keeping the dropped queue's memory.
    #[test]
    fn stale_entries_are_swept_and_the_earliest_of_each_live_target_kept() {
        let timers = Timers::start().unwrap();
        let far = now_ms() + 10 * 365 * 24 * 3600 * 1000;
        let live = Arc::new(Counter(AtomicU64::new(0)));
        for i in 0..100_000u64 {
            // A live target moving its deadline earlier, and a target dropped at once.
            timers.schedule(far - i, Arc::downgrade(&live) as Weak<dyn Timed>);
            let gone = Arc::new(Counter(AtomicU64::new(0)));
            timers.schedule(far, Arc::downgrade(&gone) as Weak<dyn Timed>);
        }
        assert!(
            timers.pending() < 2 * SWEEP_MIN_ENTRIES,
            "{}",
            timers.pending()
        );
        // The live target's earliest deadline is the one kept.
        let mut heap = timers.lock();
        heap.sweep();
        assert_eq!(heap.entries.len(), 1);
        assert_eq!(heap.entries.peek().map(|e| e.0.at_ms), Some(far - 99_999));
        drop(heap);
        timers.stop();
    }
}
