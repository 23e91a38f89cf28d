//! Memory accounting: how many bytes of messages the broker holds, against the budget past
//! which queues move the newest part of their backlogs to disk.
//!
//! Queues add what they keep in memory and subtract what leaves; paging decisions read the
//! total. It is one counter shared by every queue of the broker, updated with relaxed
//! atomics: it steers paging, it orders nothing.

use std::sync::Arc;
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

/// Bytes charged to the broker's memory gauge for as long as this value lives: a message
/// charges what it keeps alive from its creation until its last reference is dropped,
/// wherever it is (ready, unacknowledged, in a transaction, on its way to a consumer, in a
/// dead-letter job), so memory that is accounted is memory that is used.
#[derive(Debug, Default)]
pub struct Charge {
    memory: Option<Arc<Memory>>,
    bytes: usize,
}

impl Charge {
    /// Charges `bytes` to `memory`.
    pub fn new(memory: &Arc<Memory>, bytes: usize) -> Self {
        memory.add(bytes as isize);
        Charge {
            memory: Some(memory.clone()),
            bytes,
        }
    }

    /// Charges `bytes` more.
    pub fn grow(&mut self, bytes: usize) {
        if let Some(m) = &self.memory {
            m.add(bytes as isize);
        }
        self.bytes += bytes;
    }

    /// Sets what is charged to `bytes`.
    pub fn set(&mut self, bytes: usize) {
        if let Some(m) = &self.memory {
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
        match &self.memory {
            Some(m) => Charge::new(m, self.bytes),
            None => Charge::default(),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(m) = &self.memory {
            m.add(-(self.bytes as isize));
        }
    }
}
