//! Returned marks: the delivery count of a quorum queue's durable message that came back to
//! its place (a channel closed, a consumer was cancelled), so that a restart brings it back
//! with that count, as RabbitMQ's Raft log does.
//!
//! A consumer may give the same messages back any number of times, and each return is a
//! mark. Only the latest mark of an unacknowledged message counts: the log knows where it is
//! (`Inner::returned_at`), and counts in each segment the marks a later one or an Ack made
//! stale. Compaction keeps only the latest marks, and compacts a segment again once half of
//! its marks went stale, so that the marks on disk follow the messages returned, not the
//! returns.

use std::io;
use std::sync::Arc;

use super::log::{Append, Inner, MARKS_PER_APPEND, QueueLog, Segment};
use super::record;

impl QueueLog {
    /// Logs the delivery counts of durable messages returned to their places, lazily, as
    /// acknowledgements: one append per `MARKS_PER_APPEND` of them.
    pub fn returned(self: &Arc<Self>, counts: &[(u64, u32)]) -> io::Result<()> {
        for chunk in counts.chunks(MARKS_PER_APPEND) {
            let (pos, _) = self.append(
                record::RETURNED_LEN * chunk.len(),
                Append::Mark,
                |out, seal| {
                    for &(seq, count) in chunk {
                        record::encode_returned(out, seal, seq, count);
                    }
                },
            )?;
            let mut inner = self.lock();
            for &(seq, _) in chunk {
                inner.returned_gone(seq);
                inner.returned_at.insert(seq, pos.segment);
            }
            if let Some(seg) = inner.segment_mut(pos.segment) {
                seg.returned_marks += chunk.len() as u64;
            }
        }
        Ok(())
    }
}

impl Inner {
    /// The latest Returned mark of `seq`, if it has one, is stale now: a later one was
    /// written, or the message was acknowledged.
    pub(super) fn returned_gone(&mut self, seq: u64) {
        if let Some(index) = self.returned_at.remove(&seq)
            && let Some(seg) = self.segment_mut(index)
        {
            seg.stale_marks += 1;
        }
    }

    /// The segment numbered `index`, if the log still has it.
    pub(super) fn segment_mut(&mut self, index: u64) -> Option<&mut Segment> {
        let at = self
            .segments
            .binary_search_by_key(&index, |s| s.index)
            .ok()?;
        self.segments.get_mut(at)
    }
}

impl Segment {
    /// Whether this segment's Returned marks went stale enough to compact it again: half of
    /// them, so that each mark is copied a bounded number of times.
    pub(super) fn marks_went_stale(&self) -> bool {
        self.stale_marks > 0 && self.stale_marks * 2 >= self.returned_marks
    }
}
