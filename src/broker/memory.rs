//! Memory accounting: how many bytes of messages and buffers the broker holds, against the
//! budget past which queues move the newest part of their backlogs to disk.
//!
//! Two thresholds. Past `budget_bytes` (64 MiB by default) a queue whose backlog grows pages
//! it out; a queue whose consumers keep pace with it (`queue::pace`) stays in memory until
//! the broker holds `paced_limit_bytes`, half the memory high watermark, as RabbitMQ pages
//! at `vm_memory_high_watermark_paging_ratio` (0.5). Writing out and reading back a stream
//! that is consumed as fast as it comes costs two copies and a file for nothing.
//!
//! Everything a client can make the broker hold is charged here while it lives ([`Charge`]):
//! each message, each input chunk, each half-received body, each connection's output, each
//! consumer. Queues, exchanges and bindings are not: paging gives none of their memory back,
//! so charged they put every backlog on disk; their own budget bounds them
//! (`broker::budget`). The
//! counter is updated for every message, by many threads, so it is sharded: each thread adds
//! to a slot of its own (a plain load and store, no locked instruction, no cache line shared
//! with another core), and reading the total sums the slots. Reading happens when a queue
//! considers paging and when the memory monitor looks, not per message.

use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

/// The share of the memory high watermark below which queues whose consumers keep pace are
/// not paged: RabbitMQ's `vm_memory_high_watermark_paging_ratio` default.
pub const PACED_PAGING_RATIO: f64 = 0.5;

/// Threads that get a slot of their own; later ones share one with atomic adds.
const OWN_SLOTS: usize = 64;

/// One thread's share of the count, on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Slot(AtomicIsize);

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot number, the same in every broker of the process.
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn my_slot() -> usize {
    SLOT.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
        }
        s.get()
    })
}

pub struct Memory {
    /// Slots `0..OWN_SLOTS` are each written by one thread only; the last is shared.
    slots: Box<[Slot]>,
    /// Past this many bytes in memory, queues page their tails out to disk.
    budget_bytes: usize,
    /// Past this many bytes, even queues whose consumers keep pace page out; never below
    /// `budget_bytes`. Follows the memory watermark (`set_watermark_bytes`).
    paced_limit_bytes: AtomicUsize,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("used", &self.used())
            .field("budget_bytes", &self.budget_bytes)
            .field("paced_limit_bytes", &self.paced_limit_bytes)
            .finish()
    }
}

impl Memory {
    /// A gauge that lives as long as the process: charges refer to it without counting
    /// references (each message would otherwise pay two more atomic operations). A broker
    /// makes one when it opens; the few kilobytes stay when it closes.
    pub fn leaked(budget_bytes: usize) -> &'static Memory {
        Box::leak(Box::new(Memory {
            slots: (0..=OWN_SLOTS).map(|_| Slot::default()).collect(),
            budget_bytes,
            paced_limit_bytes: AtomicUsize::new(budget_bytes),
        }))
    }

    /// Accounts bytes held in memory (negative to release).
    #[inline]
    pub fn add(&self, bytes: isize) {
        let slot = my_slot();
        if slot < OWN_SLOTS {
            // Only this thread writes this slot: no read-modify-write needed.
            let s = &self.slots[slot].0;
            s.store(s.load(Ordering::Relaxed) + bytes, Ordering::Relaxed);
        } else {
            self.slots[OWN_SLOTS].0.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Bytes held in memory now.
    pub fn used(&self) -> usize {
        let sum: isize = self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum();
        sum.max(0) as usize
    }

    /// Whether queues should move messages out of memory.
    pub fn over_budget(&self) -> bool {
        self.used() > self.budget_bytes
    }

    /// Whether a queue holding a backlog should move it out of memory: past the budget,
    /// unless its consumers keep pace with it (`keeps_pace`, asked only then) and the broker
    /// holds less than the paced limit.
    pub fn should_page(&self, keeps_pace: impl FnOnce() -> bool) -> bool {
        let used = self.used();
        used > self.budget_bytes
            && (used > self.paced_limit_bytes.load(Ordering::Relaxed) || !keeps_pace())
    }

    /// Sets the paced limit from the memory high watermark, in bytes.
    pub fn set_watermark_bytes(&self, watermark_bytes: u64) {
        let paced = (watermark_bytes as f64 * PACED_PAGING_RATIO) as usize;
        self.paced_limit_bytes
            .store(paced.max(self.budget_bytes), Ordering::Relaxed);
    }
}

/// Bytes charged to the broker's memory gauge for as long as this value lives: a message
/// charges what it keeps alive from its creation until its last reference is dropped,
/// wherever it is (ready, unacknowledged, in a transaction, on its way to a consumer, in a
/// dead-letter job), so memory that is accounted is memory that is used.
#[derive(Debug, Default)]
pub struct Charge {
    memory: Option<&'static Memory>,
    bytes: usize,
}

impl Charge {
    /// Charges `bytes` to `memory`.
    #[inline]
    pub fn new(memory: &'static Memory, bytes: usize) -> Self {
        memory.add(bytes as isize);
        Charge {
            memory: Some(memory),
            bytes,
        }
    }

    /// Sets what is charged to `bytes`.
    pub fn set(&mut self, bytes: usize) {
        if let Some(m) = self.memory {
            m.add(bytes as isize - self.bytes as isize);
        }
        self.bytes = bytes;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// `data` as a shared buffer charged to `memory` for its capacity while any slice of it
/// lives. A queue log is read back 256 KiB at a time and its messages are slices of that
/// buffer: one message kept (unacknowledged, say) keeps all of it alive, so the buffer is
/// what is charged, as the connection's read buffers are (`Message::charge_to`).
pub fn charged_buffer(memory: &'static Memory, data: Vec<u8>) -> bytes::Bytes {
    let charge = Charge::new(memory, data.capacity());
    bytes::Bytes::from_owner(ChargedBuffer {
        data,
        _charge: charge,
    })
}

/// The owner of a [`charged_buffer`]: its bytes, and their charge, dropped together.
struct ChargedBuffer {
    data: Vec<u8>,
    _charge: Charge,
}

impl AsRef<[u8]> for ChargedBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Clone for Charge {
    fn clone(&self) -> Self {
        match self.memory {
            Some(m) => Charge::new(m, self.bytes),
            None => Charge::default(),
        }
    }
}

impl Drop for Charge {
    #[inline]
    fn drop(&mut self) {
        if let Some(m) = self.memory {
            m.add(-(self.bytes as isize));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_from_many_threads_add_up_and_drop_away() {
        let memory = Memory::leaked(1000);
        let charges: Vec<Charge> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..100)
                .map(|_| s.spawn(|| Charge::new(memory, 10)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(memory.used(), 1000);
        assert!(!memory.over_budget());
        let more = Charge::new(memory, 1);
        assert!(memory.over_budget());
        drop(charges);
        drop(more);
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn queues_that_keep_pace_page_only_past_half_the_watermark() {
        let memory = Memory::leaked(1000);
        memory.set_watermark_bytes(4000);
        let held = Charge::new(memory, 1500);
        assert!(
            memory.should_page(|| false),
            "over budget, not keeping pace"
        );
        assert!(
            !memory.should_page(|| true),
            "keeping pace, under half the watermark"
        );
        let more = Charge::new(memory, 1000);
        assert!(memory.should_page(|| true), "past half the watermark");
        drop((held, more));
        assert!(!memory.should_page(|| false), "under budget");
        // A watermark below the budget leaves the budget in force.
        memory.set_watermark_bytes(10);
        let held = Charge::new(memory, 1001);
        assert!(memory.should_page(|| true));
        drop(held);
    }
}
