//! Publisher confirms: numbering a channel's publishes and telling the publisher, in as few
//! frames as RabbitMQ would, which ones the broker took responsibility for.

use super::output::Output;
use crate::protocol::basic::write_confirm;

/// Confirm state of a channel in confirm mode.
#[derive(Debug, Default)]
pub struct Confirms {
    /// Sequence number of the last publish (publishes count from 1 after confirm.select).
    last_tag: u64,
    /// Tags waiting for their messages to reach the disk, in order, with the store epoch
    /// that makes them durable. Transient messages are resolved as soon as they are routed.
    unresolved: std::collections::VecDeque<(u64, u64)>,
    /// Resolved since the last flush.
    acks: Vec<u64>,
    nacks: Vec<u64>,
}

impl Confirms {
    /// Numbers a new publish.
    pub fn next_tag(&mut self) -> u64 {
        self.last_tag += 1;
        self.last_tag
    }

    /// Holds a publish until the store has synced `epoch`.
    pub fn hold(&mut self, tag: u64, epoch: u64) {
        self.unresolved.push_back((tag, epoch));
    }

    /// Resolves the held publishes whose epoch is now synced: acked if their writes are on
    /// disk, nacked if `failed` says their epoch's writes failed.
    pub fn release_synced(&mut self, synced: u64, failed: impl Fn(u64) -> bool) {
        while let Some(&(tag, epoch)) = self.unresolved.front() {
            if epoch > synced {
                break;
            }
            self.unresolved.pop_front();
            if failed(epoch) {
                self.nacks.push(tag);
            } else {
                self.acks.push(tag);
            }
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
        if let Ok(i) = self.unresolved.binary_search_by_key(&tag, |&(t, _)| t) {
            self.unresolved.remove(i);
        }
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
        let oldest_unresolved = self.unresolved.front().map(|&(t, _)| t);
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
        c.hold(t1, 5);
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
}
