//! Acknowledgements in a queue log: an Ack record per message that left the queue, and the
//! live count of its segment, which decides when the segment may be compacted or deleted.
//! Also the other marks, written as lazily: delivered and held (returned: `store::returned`).

use std::io;
use std::sync::Arc;

use super::log::{Append, Inner, MARKS_PER_APPEND, QueueLog, Registered};
use super::record::{self, Kind};
use super::sync::Outcome;

impl QueueLog {
    /// Logs that the durable message `seq` left the queue. The record is lazy: it goes to
    /// disk with the next sync, or within `LAZY_WRITE_MS`; a crash before then brings the
    /// message back, redelivered (at least once, as RabbitMQ's queue index does).
    pub fn ack(self: &Arc<Self>, seq: u64) -> io::Result<()> {
        self.ack_all(&[seq])
    }

    /// Logs that the durable messages `seqs` left the queue (see [`QueueLog::ack`]): one
    /// append, and one pass over the segments, per `MARKS_PER_APPEND` of them.
    pub fn ack_all(self: &Arc<Self>, seqs: &[u64]) -> io::Result<()> {
        for chunk in seqs.chunks(MARKS_PER_APPEND) {
            self.append(record::MARK_LEN * chunk.len(), Append::Mark, |out, seal| {
                for &seq in chunk {
                    record::encode_mark(out, seal, Kind::Ack, seq);
                }
            })?;
            let mut inner = self.lock();
            for &seq in chunk {
                Self::count_out(&mut inner, seq);
            }
        }
        Ok(())
    }

    /// Logs that the durable message `seq` was delivered (lazily, as an acknowledgement).
    pub fn delivered(self: &Arc<Self>, seq: u64) -> io::Result<()> {
        self.append(record::MARK_LEN, Append::Mark, |out, seal| {
            record::encode_mark(out, seal, Kind::Delivered, seq)
        })
        .map(|_| ())
    }

    /// Logs that the durable message `seq` is held as a dead letter (see
    /// [`record::Kind::Held`]), for `reason` (the broker's code): a restart brings it back
    /// held. The letter does not wait for the disk, but the mark starts a sync at once, as
    /// RabbitMQ syncs the command that holds a letter: a crash then brings it back ready only
    /// in the moment before that sync, not in the 200 ms a lazy mark may wait.
    pub fn held(self: &Arc<Self>, seq: u64, reason: u8) -> io::Result<()> {
        self.append(record::HELD_LEN, Append::EagerMark, |out, seal| {
            record::encode_held(out, seal, seq, reason)
        })
        .map(|_| ())
    }

    /// Notes that the durable message `seq` left the queue because a copy of it was logged
    /// under a later number, in `epoch` (a quorum queue's message requeued at the back).
    /// Its Ack is logged only once `epoch` is synced (`settle_superseded`): written in the
    /// same cycle as the copy, the Ack could reach the disk without it (the kernel writes
    /// pages back in no set order), and a power cut between the two would lose a confirmed
    /// message. Until then the log counts `seq` live and keeps its record, which compaction
    /// or deleting its segment would otherwise take off the disk before the copy is on it.
    /// A crash meanwhile brings the message back twice (at least once).
    pub fn ack_superseded(self: &Arc<Self>, seq: u64, epoch: u64) -> io::Result<()> {
        let mut inner = self.lock();
        if inner.destroyed {
            return Err(io::Error::other("queue log was deleted"));
        }
        inner.superseded.push_back((epoch, seq));
        self.await_a_cycle(&mut inner);
        Ok(())
    }

    /// Puts the log on the sync thread's list (lazily) if it is on none: a cycle that takes
    /// it settles its superseded records afterwards (`after_sync`). Without it, an Ack
    /// waiting for an epoch a cycle without this log synced was never written, and a
    /// restart brought the message back twice.
    fn await_a_cycle(self: &Arc<Self>, inner: &mut Inner) {
        if inner.registered == Registered::No {
            inner.registered = Registered::Lazy;
            self.shared.mark_lazy(self.clone());
        }
    }

    /// Logs the Acks of the superseded records whose copies are on disk now, and counts
    /// them out. Called after each sync cycle, and before the log decides what it may drop
    /// (compaction, deleting segments).
    pub(super) fn settle_superseded(self: &Arc<Self>, inner: &mut Inner) {
        if inner.destroyed {
            // Its files are gone: there is nothing to acknowledge in them.
            inner.superseded.clear();
            return;
        }
        let mut settled = Vec::new();
        // Each entry once: one whose copy's write failed goes to the back with a later epoch.
        for _ in 0..inner.superseded.len() {
            let Some(&(epoch, seq)) = inner.superseded.front() else {
                break;
            };
            match self.shared.outcome(epoch) {
                Outcome::Pending => break,
                Outcome::Durable => {
                    inner.superseded.pop_front();
                    settled.push(seq);
                }
                // The copy's write failed. Its bytes stay pending and are written again
                // (a full disk that empties), so the epoch current now says when they are on
                // disk: the cycle that writes them is that one or a later one. On a store
                // that went read-only (a failed fsync) nothing more is written: the old
                // record stays (compaction keeps it), and a restart brings the message back
                // from it (at least once). A record kept beats a message lost.
                Outcome::Failed => {
                    inner.superseded.pop_front();
                    if self.shared.writable() {
                        inner.superseded.push_back((self.shared.epoch(), seq));
                    }
                }
            }
        }
        // One append per `MARKS_PER_APPEND` Acks, as `ack_all` logs them.
        for chunk in settled.chunks(MARKS_PER_APPEND) {
            let len = record::MARK_LEN * chunk.len();
            let logged = self.append_locked(inner, len, Append::Mark, |out, seal| {
                for &seq in chunk {
                    record::encode_mark(out, seal, Kind::Ack, seq);
                }
            });
            if let Err(e) = logged {
                // The records stay without their Acks: a restart brings the messages back
                // beside their copies (at least once).
                tracing::error!(log = %self.dir.display(), error = %e, "cannot log acknowledgements");
            }
            for &seq in chunk {
                Self::count_out(inner, seq);
            }
        }
        if !inner.superseded.is_empty() {
            self.await_a_cycle(inner);
        }
    }

    /// Takes the acknowledged message `seq` off its segment's live count, once however
    /// often its Ack is logged: counted twice, it would let the segment go under a live one.
    fn count_out(inner: &mut Inner, seq: u64) {
        if !inner.acked.insert(seq) {
            return;
        }
        if !inner.returned_at.is_empty() {
            inner.returned_gone(seq);
        }
        if let Some(at) = Self::segment_holding(inner, seq) {
            let s = &mut inner.segments[at];
            s.live = s.live.saturating_sub(1);
        }
    }

    /// Where in `segments` the durable message `seq` is: the first segment whose
    /// `ceiling` reaches it, if that one holds it (compaction may have dropped the record).
    /// A binary search, whatever order acks come in: a guess from the last ack's segment,
    /// with a scan of every segment when it missed, made each ack of a consumer lagging a
    /// segment behind another cost a pass over a backlog of thousands of segments, under
    /// the lock its publishers need.
    fn segment_holding(inner: &Inner, seq: u64) -> Option<usize> {
        let at = inner.segments.partition_point(|s| s.ceiling < seq);
        inner.segments.get(at).filter(|s| s.holds(seq)).map(|_| at)
    }
}
