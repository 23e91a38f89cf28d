//! Memory accounting: how many bytes of messages the broker holds, against the budget past
//! which queues move the newest part of their backlogs to disk.
//!
//! Queues add what they keep in memory and subtract what leaves; paging decisions read the
//! total. It is one counter shared by every queue of the broker, updated with relaxed
//! atomics: it steers paging, it orders nothing.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Memory {
    /// Bytes of message data queues hold in memory.
    used_bytes: AtomicUsize,
    /// Past this many bytes in memory, queues page their tails out to disk.
    budget_bytes: usize,
}

impl Memory {
    pub fn new(budget_bytes: usize) -> Self {
        Memory {
            used_bytes: AtomicUsize::new(0),
            budget_bytes,
        }
    }

    /// Accounts message bytes held in memory (negative to release).
    pub fn add(&self, bytes: isize) {
        if bytes >= 0 {
            self.used_bytes.fetch_add(bytes as usize, Ordering::Relaxed);
        } else {
            self.used_bytes
                .fetch_sub(bytes.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Bytes of messages held in memory now.
    pub fn used(&self) -> usize {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// Whether queues should move messages out of memory.
    pub fn over_budget(&self) -> bool {
        self.used() > self.budget_bytes
    }
}
