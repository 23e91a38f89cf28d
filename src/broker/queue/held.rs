//! The dead letters a quorum queue holds under at-least-once dead-lettering, until the
//! queues they were routed to have them (see `at_least_once` for what is done with them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use super::dead_letter::Reason;
use super::entry::QueueEntry;
use crate::broker::timer::now_ms;

/// How often a queue looks whether the epoch its settled letters wait for is on disk.
const SYNC_POLL_MS: u64 = 5;

/// Letters a queue hands over for routing again in one go; the rest follow at once on the
/// timer thread, so one queue holding many cannot hold its lock long or fill the worker.
pub const HELD_SENDS_PER_TICK: usize = 256;

/// Ids of held letters, unique in the broker: a report meant for a deleted queue can never
/// settle a letter of a queue declared since under the same name (and perhaps at the same
/// address).
static NEXT_LETTER_ID: AtomicU64 = AtomicU64::new(0);

/// The dead letters a queue holds.
#[derive(Debug, Default)]
pub struct Held {
    /// By id; ids grow in the order the letters died.
    pub(super) letters: BTreeMap<u64, HeldLetter>,
    /// When letters not settling are due to be routed again: (Unix milliseconds, id).
    pub(super) due: BTreeSet<(u64, u64)>,
    /// Letters every queue has, waiting for the store to sync the epoch that wrote them:
    /// (epoch, id).
    pub(super) syncing: BTreeSet<(u64, u64)>,
    /// How long a letter waits before it is routed again (`dead_letter_retry_ms`).
    pub(super) retry_ms: u64,
    /// The queue's address: the host reports back to this queue, not to a queue declared
    /// under the same name since.
    pub(super) owner: usize,
    /// How many letters are held, and their body bytes (RabbitMQ's `messages_dlx` and
    /// `message_bytes_dlx`).
    pub count: u64,
    pub bytes: u64,
}

#[derive(Debug)]
pub(super) struct HeldLetter {
    pub(super) entry: QueueEntry,
    pub(super) reason: Reason,
    /// The queues that took it, with the store epoch each logged it in (if it did): a
    /// retry goes only to the others, and one whose epoch failed does not have it after all.
    pub(super) have: Vec<(String, Option<u64>)>,
    /// When it is due to be routed again (Unix milliseconds), while it is not settling.
    pub(super) due_ms: u64,
    /// Every queue has it; settled once this epoch is synced.
    pub(super) syncing: Option<u64>,
}

/// What routing a held letter came to, reported back to its queue.
#[derive(Debug)]
pub struct Routed {
    pub id: u64,
    /// Queues that took it on this attempt, with the store epoch each logged it in.
    pub took: Vec<(String, Option<u64>)>,
    /// Every queue it was routed to (this time or before) has it, and it went somewhere; or
    /// it was dropped for good (it cannot be made, or sent, or its line spent its copies),
    /// and is settled as if it went nowhere more.
    pub complete: bool,
}

impl Held {
    pub fn new(retry_ms: u64, owner: usize) -> Held {
        Held {
            retry_ms,
            owner,
            ..Held::default()
        }
    }

    /// A new letter's id.
    pub fn next_id() -> u64 {
        NEXT_LETTER_ID.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.letters.is_empty()
    }

    pub fn retry_ms(&self) -> u64 {
        self.retry_ms
    }

    pub fn owner(&self) -> usize {
        self.owner
    }

    /// When the queue must next look at its held letters, if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        let retry = self.due.first().map(|&(at, _)| at);
        if self.syncing.is_empty() {
            return retry;
        }
        let poll = now_ms() + SYNC_POLL_MS;
        Some(retry.map_or(poll, |r| r.min(poll)))
    }
}
