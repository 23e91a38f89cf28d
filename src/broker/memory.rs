//! Memory accounting: how many bytes of messages and buffers the broker holds, against the
//! budget past which queues move the newest part of their backlogs to disk.
//!
//! Everything a client can make the broker hold is charged here while it lives ([`Charge`]):
//! each message, each input chunk, each half-received body, each connection's output. The
//! counter is updated for every message, by many threads, so it is sharded: each thread adds
//! to a slot of its own (a plain load and store, no locked instruction, no cache line shared
//! with another core), and reading the total sums the slots. Reading happens when a queue
//! considers paging and when the memory monitor looks, not per message.

use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

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
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("used", &self.used())
            .field("budget_bytes", &self.budget_bytes)
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
}
