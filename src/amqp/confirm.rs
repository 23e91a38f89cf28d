//! Publisher confirms: numbering a channel's publishes and telling the publisher, in as few
//! frames as RabbitMQ would, which ones the broker took responsibility for.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::outbox::Outbox;
use super::output::Output;
use crate::broker::message::ConfirmSink;
use crate::protocol::basic::write_confirm;

/// Confirm state of a channel in confirm mode.
#[derive(Debug, Default)]
pub struct Confirms {
    /// Sequence number of the last publish (publishes count from 1 after confirm.select).
    last_tag: u64,
    /// Publishes waiting for their messages to reach the disk, in tag order. Transient
    /// messages are resolved as soon as they are routed. One resolved early (its consumers
    /// acknowledged it) stays until it reaches the front, marked by `queues == 0`, so that
    /// resolving is a binary search and no removal from the middle; the front is always
    /// unresolved.
    unresolved: std::collections::VecDeque<Held>,
    /// Resolved since the last flush.
    acks: Vec<u64>,
    nacks: Vec<u64>,
    /// Where consumers' channels report this channel's messages they acknowledged.
    early: Option<Arc<EarlyConfirms>>,
    /// The buffer reports are taken into, swapped with the sink's to keep both allocations.
    reported: Vec<u64>,
}

impl Drop for Confirms {
    fn drop(&mut self) {
        if let Some(early) = &self.early {
            early.close();
        }
    }
}

/// A publish held for the disk.
#[derive(Debug, Clone, Copy)]
struct Held {
    tag: u64,
    /// The store epoch that makes it durable.
    epoch: u64,
    /// Queues that logged it and that it has not been acknowledged from; 0 once resolved.
    queues: u32,
}

/// Tags of this channel's messages that a consumer acknowledged from one of their queues,
/// since the channel last looked: see
/// [`crate::broker::message::ConfirmSink`]. Shared by the channel and every message it holds
/// a confirm for.
#[derive(Debug)]
pub struct EarlyConfirms {
    tags: Mutex<Vec<u64>>,
    /// Every tag below this one is confirmed already: their reports (a consumer draining a
    /// backlog long after the disk confirmed it) are dropped here, without waking anyone.
    resolved_below: AtomicU64,
    /// The channel closed or left confirm mode: messages still in queues report to no one.
    closed: AtomicBool,
    /// Wakes the connection task to send the confirms.
    outbox: Weak<Outbox>,
}

impl EarlyConfirms {
    pub fn new(outbox: &Arc<Outbox>) -> Arc<EarlyConfirms> {
        Arc::new(EarlyConfirms {
            tags: Mutex::new(Vec::new()),
            resolved_below: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            outbox: Arc::downgrade(outbox),
        })
    }

    /// Stops taking reports (the channel is gone) and lets go of what was reported.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        std::mem::take(&mut *self.tags.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn take(&self, into: &mut Vec<u64>) {
        let mut tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *tags, into);
    }
}

impl ConfirmSink for EarlyConfirms {
    fn settled(&self, tags: &[u64]) {
        let below = self.resolved_below.load(Ordering::Acquire);
        if self.closed.load(Ordering::Acquire) || tags.iter().all(|&t| t < below) {
            return;
        }
        let was_empty = {
            let mut held = self.tags.lock().unwrap_or_else(|e| e.into_inner());
            let was_empty = held.is_empty();
            held.extend(tags.iter().filter(|&&t| t >= below));
            was_empty
        };
        if was_empty && let Some(outbox) = self.outbox.upgrade() {
            outbox.wake();
        }
    }
}

impl Confirms {
    /// Confirm state for a channel whose queues can report acknowledged messages to
    /// `early` (see [`EarlyConfirms`]).
    pub fn with_early(early: Arc<EarlyConfirms>) -> Confirms {
        let mut confirms = Confirms::default();
        confirms.early = Some(early);
        confirms
    }

    /// Numbers a new publish.
    pub fn next_tag(&mut self) -> u64 {
        self.last_tag += 1;
        self.last_tag
    }

    /// The sink a message published now reports to when its consumers acknowledge it.
    pub fn early_sink(&self) -> Option<Arc<dyn ConfirmSink>> {
        self.early.clone().map(|e| e as Arc<dyn ConfirmSink>)
    }

    /// Holds a publish until the store has synced `epoch`, or until it has been
    /// acknowledged from each of the `queues` that logged it.
    pub fn hold(&mut self, tag: u64, epoch: u64, queues: u32) {
        self.unresolved.push_back(Held {
            tag,
            epoch,
            queues: queues.max(1),
        });
    }

    /// Resolves the held publishes whose epoch is now synced: acked if their writes are on
    /// disk, nacked if `failed` says their epoch's writes failed.
    pub fn release_synced(&mut self, synced: u64, failed: impl Fn(u64) -> bool) {
        while let Some(&held) = self.unresolved.front() {
            if held.epoch > synced {
                break;
            }
            self.unresolved.pop_front();
            if held.queues == 0 {
                continue;
            }
            if failed(held.epoch) {
                self.nacks.push(held.tag);
            } else {
                self.acks.push(held.tag);
            }
        }
        self.pop_resolved();
    }

    /// Takes what consumers acknowledged: a publish acknowledged from every queue that
    /// logged it is acked now, whether or not its writes are on disk yet.
    pub fn take_early(&mut self) {
        let Some(early) = &self.early else {
            return;
        };
        let mut tags = std::mem::take(&mut self.reported);
        early.take(&mut tags);
        for &tag in &tags {
            // Tags confirmed meanwhile (by a sync) are no longer held.
            if let Ok(i) = self.unresolved.binary_search_by_key(&tag, |h| h.tag)
                && let Some(held) = self.unresolved.get_mut(i)
                && held.queues > 0
            {
                held.queues -= 1;
                if held.queues == 0 {
                    self.acks.push(tag);
                }
            }
        }
        tags.clear();
        self.reported = tags;
        self.pop_resolved();
    }

    /// Keeps the front unresolved, and tells the queues' reports which tags are settled.
    fn pop_resolved(&mut self) {
        while self.unresolved.front().is_some_and(|h| h.queues == 0) {
            self.unresolved.pop_front();
        }
        if let Some(early) = &self.early {
            // Held tags ascend, and tags to come are above the last one given out.
            let below = self.unresolved.front().map_or(self.last_tag + 1, |h| h.tag);
            early.resolved_below.store(below, Ordering::Release);
        }
    }

    /// Whether publishes wait for a sync.
    pub fn waiting_for_sync(&self) -> bool {
        !self.unresolved.is_empty()
    }

    /// Publishes held for a sync.
    pub fn unresolved_len(&self) -> usize {
        self.unresolved.len()
    }

    /// Resolves a tag early. Held tags are in ascending order, so finding one is a binary
    /// search; the tags acked or nacked on routing were mostly never held.
    fn resolve(&mut self, tag: u64) {
        if let Ok(i) = self.unresolved.binary_search_by_key(&tag, |h| h.tag)
            && let Some(held) = self.unresolved.get_mut(i)
        {
            held.queues = 0;
        }
        self.pop_resolved();
    }

    pub fn ack(&mut self, tag: u64) {
        self.resolve(tag);
        self.acks.push(tag);
    }

    pub fn nack(&mut self, tag: u64) {
        self.resolve(tag);
        self.nacks.push(tag);
    }

    /// Acks resolved and not yet written.
    pub fn pending_acks(&self) -> usize {
        self.acks.len()
    }

    pub fn has_pending_output(&self) -> bool {
        !self.acks.is_empty() || !self.nacks.is_empty()
    }

    /// Writes the confirms resolved since the last flush, coalescing them as RabbitMQ does:
    /// one `multiple` ack covers every resolved tag below the oldest still unresolved one
    /// (and below the first nack); the rest go out one by one. Acks go before nacks.
    pub fn flush(&mut self, out: &mut Output, channel: u16) {
        if !self.has_pending_output() {
            return;
        }
        let oldest_unresolved = self.unresolved.front().map(|h| h.tag);
        let mut acks = std::mem::take(&mut self.acks);
        let mut nacks = std::mem::take(&mut self.nacks);
        acks.sort_unstable();
        nacks.sort_unstable();
        let first_nack = nacks.first().copied();
        let first_ack = acks.first().copied();
        send(out, channel, true, &acks, [oldest_unresolved, first_nack]);
        send(out, channel, false, &nacks, [oldest_unresolved, first_ack]);
        acks.clear();
        nacks.clear();
        // Keep the allocations.
        self.acks = acks;
        self.nacks = nacks;
    }
}

fn send(out: &mut Output, channel: u16, ack: bool, tags: &[u64], bounds: [Option<u64>; 2]) {
    let Some(&last) = tags.last() else {
        return;
    };
    if tags.len() == 1 {
        write_confirm(out.buf(), channel, ack, last, false);
        return;
    }
    let cutoff = bounds.into_iter().flatten().min().unwrap_or(last + 1);
    let below = tags.partition_point(|&t| t < cutoff);
    if below > 0 {
        write_confirm(out.buf(), channel, ack, tags[below - 1], below > 1);
    }
    for &t in &tags[below..] {
        write_confirm(out.buf(), channel, ack, t, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(out: &mut Output) -> Vec<(bool, u64, bool)> {
        let mut bytes = Vec::new();
        let mut iov = crate::amqp::output::iovecs();
        let n = out.slices(&mut iov);
        for s in &iov[..n] {
            bytes.extend_from_slice(s);
        }
        let mut found = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let size =
                u32::from_be_bytes([bytes[at + 3], bytes[at + 4], bytes[at + 5], bytes[at + 6]])
                    as usize;
            let p = &bytes[at + 7..at + 7 + size];
            let ack = p[3] == 80;
            let tag = u64::from_be_bytes(p[4..12].try_into().unwrap());
            found.push((ack, tag, p[12] & 1 != 0));
            at += size + 8;
        }
        found
    }

    #[test]
    fn a_single_confirm_is_not_multiple() {
        let mut c = Confirms::default();
        let t = c.next_tag();
        c.ack(t);
        let mut out = Output::default();
        c.flush(&mut out, 1);
        assert_eq!(frames(&mut out), vec![(true, 1, false)]);
    }

    #[test]
    fn a_run_of_acks_becomes_one_multiple_ack() {
        let mut c = Confirms::default();
        for _ in 0..5 {
            let t = c.next_tag();
            c.ack(t);
        }
        let mut out = Output::default();
        c.flush(&mut out, 1);
        assert_eq!(frames(&mut out), vec![(true, 5, true)]);
    }

    #[test]
    fn held_publishes_wait_for_the_sync_and_bound_the_multiple_ack() {
        let mut c = Confirms::default();
        let t1 = c.next_tag();
        c.hold(t1, 5, 1);
        let t2 = c.next_tag();
        c.ack(t2);
        let t3 = c.next_tag();
        c.ack(t3);
        let mut out = Output::default();
        c.flush(&mut out, 1);
        // Tag 1 is not on disk yet: 2 and 3 cannot be acked with a multiple ack.
        assert_eq!(frames(&mut out), vec![(true, 2, false), (true, 3, false)]);
        c.release_synced(4, |_| false);
        assert!(c.waiting_for_sync());
        c.release_synced(5, |_| false);
        let mut out = Output::default();
        c.flush(&mut out, 1);
        assert_eq!(frames(&mut out), vec![(true, 1, false)]);
    }

    #[test]
    fn a_nack_splits_the_run() {
        let mut c = Confirms::default();
        for i in 1..=4 {
            let t = c.next_tag();
            if i == 3 { c.nack(t) } else { c.ack(t) }
        }
        let mut out = Output::default();
        c.flush(&mut out, 1);
        assert_eq!(
            frames(&mut out),
            vec![(true, 2, true), (true, 4, false), (false, 3, false)]
        );
    }

    fn early() -> Arc<EarlyConfirms> {
        Arc::new(EarlyConfirms {
            tags: Mutex::new(Vec::new()),
            resolved_below: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            outbox: Weak::new(),
        })
    }

    #[test]
    fn a_publish_is_confirmed_early_once_every_queue_that_logged_it_reported_it() {
        let sink = early();
        let mut c = Confirms::with_early(sink.clone());
        let t1 = c.next_tag();
        c.hold(t1, 9, 2);
        let t2 = c.next_tag();
        c.hold(t2, 9, 1);
        // One of tag 1's two queues, and tag 2's only queue, report.
        sink.settled(&[t1, t2]);
        c.take_early();
        let mut out = Output::default();
        c.flush(&mut out, 1);
        // Tag 1 still waits: tag 2 goes alone, not as a multiple ack.
        assert_eq!(frames(&mut out), vec![(true, 2, false)]);
        assert_eq!(c.unresolved_len(), 2, "tag 2 stays, resolved, behind tag 1");
        sink.settled(&[t1]);
        c.take_early();
        let mut out = Output::default();
        c.flush(&mut out, 1);
        assert_eq!(frames(&mut out), vec![(true, 1, false)]);
        assert!(!c.waiting_for_sync());
        // The sync that comes later confirms nothing twice.
        c.release_synced(9, |_| false);
        assert!(!c.has_pending_output());
    }

    #[test]
    fn reports_of_publishes_the_disk_confirmed_already_are_ignored() {
        let sink = early();
        let mut c = Confirms::with_early(sink.clone());
        let t1 = c.next_tag();
        c.hold(t1, 3, 1);
        let t2 = c.next_tag();
        c.hold(t2, 4, 1);
        c.release_synced(3, |_| false);
        // Tag 1 was synced; 7 was never held.
        sink.settled(&[t1, 7, t2]);
        c.take_early();
        let mut out = Output::default();
        c.flush(&mut out, 1);
        assert_eq!(frames(&mut out), vec![(true, 2, true)]);
        assert!(!c.waiting_for_sync());
    }

    #[test]
    fn a_closed_channel_takes_no_more_reports() {
        let sink = early();
        let c = Confirms::with_early(sink.clone());
        drop(c);
        sink.settled(&[1, 2, 3]);
        assert!(sink.tags.lock().unwrap().is_empty());
    }
}
