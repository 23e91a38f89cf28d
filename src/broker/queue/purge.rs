//! queue.purge: every ready message leaves the queue at once, under one hold of its lock;
//! the acks of the durable ones that were paged out are logged afterwards, a batch at a
//! time, with the lock released while each batch is read.
//!
//! A durable message leaves its log only with an Ack record, and a paged one's sequence
//! number is known only by reading its record back. Read in one hold, a tail of gigabytes (a
//! durable queue after a restart is all tail) kept the queue's publishers, consumers and
//! management readers waiting for seconds, and with them the runtime workers they ran on.

use std::sync::Arc;

use super::Queue;
use super::state::{PAGE_IN_BATCH, State};
use crate::store::{Position, QueueLog, TailReader};

/// How much of a purged tail is read per batch: the queue's lock is taken once per batch.
const PURGE_READ_BATCH_BYTES: usize = 4 * PAGE_IN_BATCH;

/// A paged tail a purge took out of the queue, whose durable messages still need their acks
/// logged.
pub struct Purged {
    /// The queue's own log (`Some`, the pin in `State::purging` that keeps compaction and
    /// segment deletion behind the reader), or a priority level's paging log (`None`),
    /// which nothing else reads and which is destroyed once read through.
    pin: Option<u64>,
    log: Arc<QueueLog>,
    reader: TailReader,
    /// The tail's messages not yet read. The reader stops there: with the lock released,
    /// what the queue logs after the purge (a publish, a new page-out) lands after the
    /// tail in the same log, and acknowledging it would lose a message the queue holds.
    left: u64,
}

impl State {
    /// Drops every ready message, in memory or paged out. Returns how many there were, and
    /// the tails whose durable messages need their acks logged ([`PurgeUnderWay`]).
    pub(super) fn purge(&mut self) -> (u32, Vec<Purged>) {
        let n = self.message_count();
        let (mut seqs, mut bytes) = (Vec::new(), 0u64);
        while let Some(e) = self.pop_ready() {
            if e.persisted {
                seqs.push(e.seq);
                bytes += e.message.body.len() as u64;
            }
        }
        self.log_acks(&seqs, bytes);
        // Only a durable log holds records whose acks matter: a transient queue's paging
        // log, and its levels' logs, hold no durable message.
        let durable = self.log.as_ref().is_some_and(|log| log.is_durable());
        let mut purged = Vec::new();
        if let Some(tail) = self.tail.take()
            && durable
            && let Some(log) = self.log.clone()
        {
            let pin = self.next_purge_pin;
            self.next_purge_pin += 1;
            self.purging.push((pin, tail.reader.pos));
            purged.push(Purged {
                pin: Some(pin),
                log,
                reader: tail.reader,
                left: tail.count,
            });
        }
        if durable {
            for level in std::mem::take(&mut self.levels).into_iter().flatten() {
                purged.push(Purged {
                    pin: None,
                    log: level.log,
                    reader: level.tail.reader,
                    left: level.tail.count,
                });
            }
            self.paged_levels = 0;
        } else {
            self.drop_level_tails();
        }
        self.body_bytes = 0;
        self.collect_garbage();
        (n, purged)
    }

    /// Where the reads of purged tails of the queue's own log stand: the earliest is as
    /// far as its log may drop or compact segments.
    pub(super) fn purge_floor(&self) -> Option<Position> {
        self.purging.iter().map(|&(_, pos)| pos).min()
    }
}

/// A purge whose paged tails are still being read through to log their acks, a batch per
/// [`PurgeUnderWay::step`]: a channel takes a step per turn of its connection task and
/// answers once it is done; the management API runs it through off the runtime's workers.
/// Dropped before then (its connection went away), it reads the rest through at once:
/// left unlogged, the acks would bring the purged messages back at the next start, and
/// keep their segments on disk until then.
#[must_use = "dropped, it reads the rest of the purged tails through at once"]
pub struct PurgeUnderWay {
    queue: Arc<Queue>,
    /// Read from the back: the queue's own tail last in the list, so first, since its pin
    /// holds back the log's garbage collection while it is read.
    tails: Vec<Purged>,
    /// How many messages the purge took: what purge-ok reports.
    pub count: u32,
}

impl PurgeUnderWay {
    /// Logs the acks of one more batch; returns whether the purge is done.
    pub fn step(&mut self) -> bool {
        if let Some(tail) = self.tails.last_mut()
            && !self.queue.ack_purged_batch(tail)
            && let Some(done) = self.tails.pop()
            && done.pin.is_none()
        {
            done.log.destroy();
        }
        self.tails.is_empty()
    }

    /// Runs the purge to its end; returns how many messages it took.
    pub fn finish(mut self) -> u32 {
        while !self.step() {}
        self.count
    }
}

impl Drop for PurgeUnderWay {
    fn drop(&mut self) {
        // Not while unwinding from a panic in a step: the same step would panic again.
        if !std::thread::panicking() {
            while !self.step() {}
        }
    }
}

impl Queue {
    /// Drops every ready message, in memory or paged out: they leave the queue at once. The
    /// acks of the paged durable ones are logged by the [`PurgeUnderWay`] returned.
    pub fn purge(self: &Arc<Self>) -> PurgeUnderWay {
        let (count, mut tails) = self.with_state(State::purge);
        tails.reverse();
        PurgeUnderWay {
            queue: self.clone(),
            tails,
            count,
        }
    }

    /// Reads one batch of a purged tail with the queue's lock released, and logs the acks of
    /// its durable messages under it, with one append. Returns whether there is more to
    /// read. A queue deleted meanwhile stops the reading (its log is gone).
    fn ack_purged_batch(&self, purged: &mut Purged) -> bool {
        let read = purged.log.read_back(
            &mut purged.reader,
            PURGE_READ_BATCH_BYTES,
            &crate::store::uncharged,
        );
        let mut state = self.lock();
        let more = match read {
            Ok(batch) if !batch.is_empty() && !state.deleted => {
                let tail = batch.len().min(purged.left as usize);
                purged.left -= tail as u64;
                let durable = batch[..tail].iter().filter(|m| m.persisted);
                let seqs: Vec<u64> = durable.clone().map(|m| m.seq).collect();
                let bytes: u64 = durable.map(|m| m.message.body.len() as u64).sum();
                state.log_acks(&seqs, bytes);
                purged.left > 0
            }
            Ok(_) => false,
            Err(e) => {
                tracing::error!(queue = %self.name, error = %e, "cannot read the queue log");
                false
            }
        };
        if let Some(pin) = purged.pin {
            let at = state.purging.iter().position(|&(p, _)| p == pin);
            match (at, more) {
                (Some(at), true) => state.purging[at].1 = purged.reader.pos,
                (Some(at), false) => {
                    state.purging.swap_remove(at);
                }
                (None, _) => {}
            }
            state.collect_garbage();
        }
        more
    }
}
