//! When the runtime runs out of work: the moment a sync cycle takes the most with it.
//!
//! The sync thread is woken by the first append of a batch. Started at once, its cycle would
//! take that append and little else, while the runtime's workers go on processing the reads
//! at hand (every publish of every connection) for the next cycle. Under 16 publishers that
//! meant 3,500 fsyncs a second of a few messages each, and each cycle wakes every waiting
//! connection: the broker spent its core on cycles rather than messages. So a cycle waits
//! until no worker runs a task, for at most `IDLE_WAIT_MAX_US`; the runtime tells this module
//! when its workers park and unpark (`lepus`'s runtime does, see `main.rs`). Without those
//! hooks no worker counts as busy and cycles start at once, as before.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

/// A sync thread that may wait for the workers (the store's `Shared`).
pub trait WakeOnIdle: Send + Sync {
    /// The workers have run out of work: start the cycle if waiting for that.
    fn workers_idle(&self);
}

/// At most how long a cycle waits for the workers to run out of work.
pub const IDLE_WAIT_MAX_US: u64 = 500;

/// Worker threads running tasks now (between an unpark and a park).
static BUSY_WORKERS: AtomicUsize = AtomicUsize::new(0);
/// Some sync thread waits for the workers: the last one to park must wake it.
static ANY_WAITING: AtomicBool = AtomicBool::new(false);
/// The stores whose sync threads may wait.
static STORES: Mutex<Vec<Weak<dyn WakeOnIdle>>> = Mutex::new(Vec::new());

thread_local! {
    /// Whether this worker thread counts as busy.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Notes that this runtime worker thread starts (`true`, unparked) or stops (`false`,
/// about to park) running tasks. A thread whose first note is a park never counted.
pub fn note_worker_busy(busy: bool) {
    if BUSY.with(|b| b.replace(busy)) == busy {
        return;
    }
    if busy {
        BUSY_WORKERS.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let was = BUSY_WORKERS.fetch_sub(1, Ordering::SeqCst);
    // Read after the decrement: a sync thread that saw a busy worker has said it waits
    // before looking (see `wait_for_idle`), so one of the two sees the other.
    if was == 1 && ANY_WAITING.swap(false, Ordering::SeqCst) {
        let stores = STORES.lock().unwrap_or_else(|e| e.into_inner());
        for shared in stores.iter().filter_map(Weak::upgrade) {
            shared.workers_idle();
        }
    }
}

/// Lets the sync thread of `shared` be woken when the workers run out of work.
pub(super) fn register(shared: Weak<dyn WakeOnIdle>) {
    let mut stores = STORES.lock().unwrap_or_else(|e| e.into_inner());
    stores.retain(|s| s.strong_count() > 0);
    stores.push(shared);
}

/// Whether a worker runs a task, said after noting that a sync thread waits: the caller
/// holds its dirty lock, which a waking worker takes before notifying, so no wake-up is lost
/// between this answer and the caller's wait.
pub(super) fn workers_busy(waiting: &AtomicBool) -> bool {
    waiting.store(true, Ordering::SeqCst);
    ANY_WAITING.store(true, Ordering::SeqCst);
    BUSY_WORKERS.load(Ordering::SeqCst) > 0
}

/// When a cycle that found the workers busy stops waiting for them.
pub(super) fn give_up_at() -> Instant {
    Instant::now() + Duration::from_micros(IDLE_WAIT_MAX_US)
}
