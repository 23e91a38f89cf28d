//! Budgets of bytes for what clients make the broker keep, beyond the messages: consumers
//! (their records, tags and arguments), counted per connection (`connection_consumer_bytes`)
//! and over the whole broker (`broker_consumer_bytes`), and queues, exchanges and bindings,
//! over the whole broker (`broker_topology_bytes`). What each consumer holds is charged to
//! the memory gauge while it lives; topology is not (see `Budget::memory`).
//!
//! A consumer's arguments may be as large as a frame and a channel may hold 65,536
//! consumers, so without a budget one connection could hold many gigabytes of them; and a
//! budget per connection alone let a client with a thousand connections hold a thousand
//! times that. Queues, exchanges and bindings outlive connections: an exchange may hold a
//! million bindings, a vhost a hundred thousand exchanges, and a queue's arguments half a
//! megabyte decoded, so only a budget over the broker bounds them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::memory::{Charge, Memory};

/// Bytes held against a limit. Counting is exact: each consumer, queue, exchange or binding
/// takes its share with a compare-and-swap and gives it back when its [`Share`] drops, so
/// every way one ends frees it.
#[derive(Debug)]
pub struct Budget {
    held_bytes: AtomicUsize,
    limit_bytes: usize,
    /// The broker's budget, which a connection's takes from too.
    whole: Option<Arc<Budget>>,
    /// The gauge each share is charged to; none for the topology budget. The gauge decides
    /// when queues page their backlogs out, which gives none of a queue's, an exchange's or
    /// a binding's own memory back: charged, some 20,000 durable queues (64 MiB, the paging
    /// budget) put every backlog of the broker on disk.
    memory: Option<&'static Memory>,
}

/// Which budget refused a share, and its size: named in the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Connection(usize),
    Broker(usize),
}

/// One consumer's, queue's, exchange's or binding's share of its budget (and of the broker's,
/// for a connection's), held until it drops.
#[derive(Debug)]
pub struct Share {
    budget: Arc<Budget>,
    bytes: usize,
    _charge: Charge,
}

impl Refused {
    /// The size of the budget that refused.
    pub fn limit_bytes(self) -> usize {
        match self {
            Refused::Connection(bytes) | Refused::Broker(bytes) => bytes,
        }
    }
}

impl Budget {
    /// The broker's budget.
    pub fn broker(limit_bytes: usize, memory: Option<&'static Memory>) -> Arc<Self> {
        Arc::new(Budget {
            held_bytes: AtomicUsize::new(0),
            limit_bytes,
            whole: None,
            memory,
        })
    }

    /// A connection's budget, within the broker's.
    pub fn connection(limit_bytes: usize, broker: &Arc<Budget>) -> Arc<Self> {
        Arc::new(Budget {
            held_bytes: AtomicUsize::new(0),
            limit_bytes,
            whole: Some(broker.clone()),
            memory: broker.memory,
        })
    }

    /// What is held now.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes.load(Ordering::Relaxed)
    }

    /// What may be held at most.
    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    /// Takes `bytes` for one consumer, queue, exchange or binding from this budget and the
    /// broker's, unless that would pass either limit.
    pub fn take(self: &Arc<Self>, bytes: usize) -> Result<Share, Refused> {
        if !self.reserve(bytes) {
            return Err(match self.whole {
                Some(_) => Refused::Connection(self.limit_bytes),
                None => Refused::Broker(self.limit_bytes),
            });
        }
        if let Some(whole) = &self.whole
            && !whole.reserve(bytes)
        {
            self.held_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(Refused::Broker(whole.limit_bytes));
        }
        Ok(Share {
            budget: self.clone(),
            bytes,
            _charge: self
                .memory
                .map_or_else(Charge::default, |m| Charge::new(m, bytes)),
        })
    }

    /// Takes `bytes` whatever the limit: for what was accepted once already (recovered at a
    /// start, or the exchanges every vhost has), which must still be counted.
    pub fn take_anyway(self: &Arc<Self>, bytes: usize) -> Share {
        self.held_bytes.fetch_add(bytes, Ordering::AcqRel);
        if let Some(whole) = &self.whole {
            whole.held_bytes.fetch_add(bytes, Ordering::AcqRel);
        }
        Share {
            budget: self.clone(),
            bytes,
            _charge: self
                .memory
                .map_or_else(Charge::default, |m| Charge::new(m, bytes)),
        }
    }

    fn reserve(&self, bytes: usize) -> bool {
        let mut now = self.held_bytes.load(Ordering::Relaxed);
        loop {
            let Some(after) = now.checked_add(bytes).filter(|&a| a <= self.limit_bytes) else {
                return false;
            };
            match self.held_bytes.compare_exchange_weak(
                now,
                after,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => now = actual,
            }
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget
            .held_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
        if let Some(whole) = &self.budget.whole {
            whole.held_bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}
