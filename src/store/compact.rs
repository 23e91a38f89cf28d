//! Compaction: a segment kept alive by a few unacknowledged messages is rewritten with only
//! what is still needed, so that disk use follows the live data.
//!
//! Segments are deleted from the front once all their messages are acknowledged; without
//! compaction one old unacknowledged message would pin every segment after it. The sync
//! thread, after a cycle (at most every 100 ms per log, for at most 20 ms), rewrites the
//! segments that the queue has read past and where at most a quarter of the messages written are still
//! unacknowledged (or that holds no messages at all, only marks), or half of whose Returned
//! marks went stale: its unacknowledged messages, the Delivered and Held marks of those still
//! unacknowledged, the latest Returned mark of each (`store::returned`), and the Ack marks of
//! messages whose records may still exist in another segment. The copy is written beside the segment,
//! synced, and renamed over it; a crash at any point leaves the old segment or the new one,
//! both complete. Record order is kept, so the queue's order after a restart is too.
//!
//! The bound: every segment but the two newest and the front is more than a quarter live, or
//! holds only what compaction kept, so a log takes about four times its live messages, plus
//! its marks, plus three segments.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::fs::OpenMode;
use super::log::{QueueLog, Segment, Unlinked};
use super::record::{Record, Seal};
use super::recover::walk;

/// ...for at most this long at a time, so that the sync thread (and the confirms waiting for
/// it) is held up for no longer.
const COMPACTION_BUDGET: Duration = Duration::from_millis(20);
/// Records of a segment being compacted decided under one taking of the log's lock (see
/// `QueueLog::keep`): about a millisecond's work.
const DECIDED_PER_LOCK: usize = 4096;

/// What a compaction decided to keep of a segment.
struct Kept {
    bytes: Vec<u8>,
    seqs: Vec<u64>,
    /// The messages whose Returned marks were kept.
    returned: Vec<u64>,
}

impl QueueLog {
    /// Compacts one segment, if one needs it and the last compaction of this log was long
    /// enough ago. Called by the sync thread after a cycle.
    pub(super) fn compact_paced(self: &Arc<Self>) -> io::Result<()> {
        if !self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .compaction_due()
        {
            return Ok(());
        }
        let started = Instant::now();
        while started.elapsed() < COMPACTION_BUDGET && self.compact_now()? {}
        Ok(())
    }

    /// Compacts the first segment that needs it, now. Returns whether it did. Only the sync
    /// thread calls it in the broker (`compact_paced`, after a cycle), or the caller of a
    /// store whose cycles it runs itself (tests, benchmarks): run beside a cycle, it could
    /// find the Acks it relies on written by the cycle but not yet synced.
    pub fn compact_now(self: &Arc<Self>) -> io::Result<bool> {
        let Some((index, seal, file_bytes)) = self.pick_candidate()? else {
            return Ok(false);
        };
        // Paced from the attempt, not from a success: a compaction that fails (a full disk)
        // is not tried again at every cycle.
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_compaction = Some(Instant::now());
        let kept = self.keep(index, seal, &file_bytes);
        self.make_appended_durable()?;
        let path = Segment::path(&self.dir, index);
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        let fs = self.shared.fs.clone();
        if !kept.bytes.is_empty()
            && let Err(e) = fs.write_synced(&tmp, &kept.bytes)
        {
            // A copy written in part would hold the space a full disk needs to recover.
            let _ = fs.remove_file(&tmp);
            return Err(e);
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.last_compaction = Some(Instant::now());
        let Some(at) = inner.segments.iter().position(|s| s.index == index) else {
            // Deleted meanwhile (all of it was acknowledged): nothing to replace.
            drop(inner);
            let _ = fs.remove_file(&tmp);
            return Ok(false);
        };
        // The file replaced, closed on the closer thread once unlinked: its last close
        // frees its blocks, and the sync thread has confirms waiting on it.
        let replaced;
        if kept.bytes.is_empty() {
            // It leaves the log only once its file is gone (see `collect_garbage`).
            match self.unlink(&mut inner, index) {
                Unlinked::Gone => {}
                Unlinked::Failed => {
                    inner.segments[at].undeletable = true;
                    return Ok(false);
                }
                Unlinked::NotTried => return Ok(false),
            }
            replaced = inner.segments.remove(at).map(|s| s.file);
        } else {
            // Opened before the rename, whose handle then follows the file: nothing may fail
            // between the rename and the segment taking the new file. An open that failed
            // after it left the segment on the replaced file, unlinked, which could then
            // become the log's spare and take confirmed messages no restart would find.
            let file = match fs.open(&tmp, OpenMode::EXISTING) {
                Ok(file) => file,
                Err(e) => {
                    let _ = fs.remove_file(&tmp);
                    return Err(e);
                }
            };
            if let Err(e) = fs.rename(&tmp, &path) {
                drop(file);
                let _ = fs.remove_file(&tmp);
                return Err(e);
            }
            let live = kept
                .seqs
                .iter()
                .filter(|&&s| !inner.acked.contains(s))
                .count() as u64;
            let seg = &mut inner.segments[at];
            replaced = Some(std::mem::replace(&mut seg.file, file));
            seg.end = kept.bytes.len() as u64;
            seg.capacity = seg.end;
            seg.messages = kept.seqs.len() as u64;
            seg.live = live;
            seg.first_message = kept.seqs.first().copied().unwrap_or(u64::MAX);
            seg.last_message = kept.seqs.last().copied().unwrap_or(0);
            seg.compacted = true;
            // Marks kept may have gone stale while the copy was written.
            let stale = kept
                .returned
                .iter()
                .filter(|&seq| inner.returned_at.get(seq) != Some(&index))
                .count() as u64;
            let seg = &mut inner.segments[at];
            seg.returned_marks = kept.returned.len() as u64;
            seg.stale_marks = stale;
        }
        inner.dir_dirty = true;
        drop(inner);
        self.shared
            .close_in_background(replaced.into_iter().collect());
        self.sync_dir_unless_removed(&self.dir, "the directory of a compacted segment")?;
        tracing::debug!(log = %self.dir.display(), segment = index, kept_bytes = kept.bytes.len(), "compacted a segment");
        Ok(true)
    }

    /// Makes what was appended to the log so far durable, before a copy replaces its
    /// segment. What the copy leaves out was decided by acknowledgements (and by later
    /// Returned marks), which are lazy: they may still be buffered. Were the copy in place
    /// before them, a crash would bring back a message without the marks the copy dropped
    /// (not redelivered, no longer held, its delivery count lost). The bookkeeping of the
    /// sync thread is left as it is (its next cycle syncs the same files again, at no cost),
    /// so a confirm never counts on this sync.
    fn make_appended_durable(&self) -> io::Result<()> {
        {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if inner.destroyed {
                return Ok(());
            }
            if !self.shared.writable() {
                // Stopped meanwhile: nothing more is written, and the copy is not put in place.
                return Err(io::Error::other("the store stopped taking writes"));
            }
        }
        // A write that fails leaves the bytes buffered, for the sync thread to write and
        // report: this compaction waits for another turn.
        self.write_out()?;
        let (files, dirs) = {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if inner.destroyed {
                return Ok(());
            }
            let mut dirs = Vec::new();
            if inner.dir_dirty {
                dirs.push(self.dir.clone());
            }
            if inner.created
                && let Some(parent) = self.dir.parent()
            {
                dirs.push(parent.to_owned());
            }
            (inner.unsynced.clone(), dirs)
        };
        let what = "the acknowledgements a compaction relies on";
        let turn = self.shared.sync_turn();
        if let Err(e) = files.iter().try_for_each(|f| f.sync_data()) {
            // As for any failed sync: the pages it covered may be dropped, and a later sync
            // that succeeds would prove nothing.
            self.shared.fail_stop(&turn, &e, what);
            return Err(e);
        }
        drop(turn);
        dirs.iter()
            .try_for_each(|d| self.sync_dir_unless_removed(d, what))
    }

    /// Syncs directory `dir` of this log (or its parent), stopping the store if that fails,
    /// as any failed sync does; but a log deleted meanwhile (its queue was deleted: the
    /// directory is gone) is no failure, as on the sync thread: a client deleting queues
    /// cannot make the store read-only.
    fn sync_dir_unless_removed(&self, dir: &std::path::Path, what: &str) -> io::Result<()> {
        let turn = self.shared.sync_turn();
        match self.shared.fs.sync_dir(dir) {
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && self
                        .inner
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .destroyed =>
            {
                Err(e)
            }
            Err(e) => {
                self.shared.fail_stop(&turn, &e, what);
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    }

    /// The first segment worth compacting, with its bytes. The bytes are read after the
    /// log's lock is let go: a segment is 8 MiB, and publishers and acks need the lock. A
    /// segment before the head takes no more appends, and its file is rewritten only once
    /// it has left the log (reused as the spare), which the replacement notices.
    fn pick_candidate(self: &Arc<Self>) -> io::Result<Option<(u64, Seal, Bytes)>> {
        let (index, seal, file, end) = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            self.settle_superseded(&mut inner);
            // Paging logs hold no durable data: they are deleted from the front as they are
            // read, and never compacted.
            if !self.durable || inner.destroyed || !self.shared.writable() {
                return Ok(None);
            }
            // Not the head, nor the segment just before it: with consumers keeping up, that
            // one is being acknowledged as it goes and will be deleted whole in a moment;
            // rewriting it would only read and copy what is about to be freed (it cost a
            // fifth of the CPU per message under confirmed publishing).
            let settled = inner.segments.len().saturating_sub(2);
            // A segment whose file could not be deleted waits for deletes to be tried again.
            let deletes_wait = inner.unlink_retry_at.is_some_and(|at| Instant::now() < at);
            // Nor a segment whose last bytes are still to be written to its file.
            let waits =
                |s: &Segment| inner.has_unwritten(s.index) || (s.undeletable && deletes_wait);
            let candidate = inner.segments.iter().take(settled).find(|s| {
                !waits(s)
                    && inner.read_pos.is_none_or(|p| p.segment > s.index)
                    && (if s.messages > 0 {
                        s.live * 4 <= s.messages
                    } else {
                        !s.compacted
                    } || s.marks_went_stale())
            });
            let Some(seg) = candidate else {
                return Ok(None);
            };
            (seg.index, seg.seal, seg.file.clone(), seg.end)
        };
        let mut data = vec![0u8; end as usize];
        let read = file.read_exact_at(&mut data, 0);
        // Deleted during the read, this may have been the file's last handle.
        self.shared.close_in_background(vec![file]);
        read?;
        Ok(Some((index, seal, Bytes::from(data))))
    }

    /// What of segment `index` (its bytes: `data`, sealed `seal`) is still needed, in its
    /// order. Records are kept as they are: the copy takes the segment's number, and so its
    /// seal.
    ///
    /// The segment is parsed without the log's lock, and what only the lock can tell
    /// (acknowledged? latest Returned mark?) is asked for `DECIDED_PER_LOCK` records at a
    /// time, so that publishers and acks wait for one batch at most, not for a segment of
    /// 400,000 marks. What changes between batches only makes a record less needed (a
    /// message is acknowledged, a later Returned mark goes to a later segment, segments
    /// leave the log; the acknowledged set forgets only what lies before the log's first
    /// segment): a record kept that is no longer needed is harmless, and the replacement
    /// counts what is live afresh. A message kept whose marks a later batch dropped (it was
    /// acknowledged in between) is safe once that acknowledgement is on disk, which
    /// [`QueueLog::make_appended_durable`] sees to before the copy replaces the segment.
    fn keep(&self, index: u64, seal: Seal, data: &Bytes) -> Kept {
        let elsewhere = self.held_elsewhere(index);
        let mut kept = Kept {
            bytes: Vec::new(),
            seqs: Vec::new(),
            returned: Vec::new(),
        };
        // Delivered and Held marks of messages not acknowledged.
        let mut marks: Vec<(u64, &[u8])> = Vec::new();
        // The latest Returned mark of each such message, if it is in this segment (the last
        // of its marks here): a message a consumer keeps giving back leaves one per return,
        // and only its latest count matters (`store::returned`).
        let mut returned: BTreeMap<u64, &[u8]> = BTreeMap::new();
        let mut batch: Vec<Seen> = Vec::with_capacity(DECIDED_PER_LOCK);
        let mut decide = |batch: &mut Vec<Seen>, kept: &mut Kept| {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            for seen in batch.drain(..) {
                let (seq, raw) = (seen.seq, &data[seen.range()]);
                match seen.what {
                    What::Message if !inner.acked.contains(seq) => {
                        kept.bytes.extend_from_slice(raw);
                        kept.seqs.push(seq);
                    }
                    What::Ack if elsewhere.holds(seq) => kept.bytes.extend_from_slice(raw),
                    // Decided below, once the messages kept here are known.
                    What::Mark if !inner.acked.contains(seq) => marks.push((seq, raw)),
                    What::Returned if inner.returned_at.get(&seq) == Some(&index) => {
                        returned.insert(seq, raw);
                    }
                    // Acknowledged messages, marks of what is gone.
                    _ => {}
                }
            }
        };
        walk(data, seal, |record, raw| {
            let what = match record {
                Record::Message { seq, .. } => (What::Message, seq),
                Record::Ack { seq } => (What::Ack, seq),
                Record::Delivered { seq } | Record::Held { seq, .. } => (What::Mark, seq),
                Record::Returned { seq, .. } => (What::Returned, seq),
                // Paged copies the queue has read past.
                Record::Paged { .. } => return,
            };
            // `raw` is a slice of `data`: where it starts is the distance between the two.
            let at = raw.as_ptr() as usize - data.as_ptr() as usize;
            batch.push(Seen {
                what: what.0,
                seq: what.1,
                at,
                len: raw.len(),
            });
            if batch.len() == DECIDED_PER_LOCK {
                decide(&mut batch, &mut kept);
            }
        });
        decide(&mut batch, &mut kept);
        for (seq, raw) in marks {
            if kept.seqs.binary_search(&seq).is_ok() || elsewhere.holds(seq) {
                kept.bytes.extend_from_slice(raw);
            }
        }
        for (seq, raw) in returned {
            if kept.seqs.binary_search(&seq).is_ok() || elsewhere.holds(seq) {
                kept.bytes.extend_from_slice(raw);
                kept.returned.push(seq);
            }
        }
        kept
    }

    /// The messages whose records may be in a segment other than `index`, now or later in
    /// this compaction: the spare counts, as its file is on disk under its old number until
    /// reused. A message's records never move to another segment, and segments only leave
    /// the log, so what this says of a message can only become too generous (an Ack kept
    /// that was no longer needed), never too strict.
    fn held_elsewhere(&self, index: u64) -> Spans {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Spans::new(
            inner
                .segments
                .iter()
                .chain(inner.spare.as_ref())
                .filter(|s| s.index != index && s.messages > 0)
                .map(|s| (s.first_message, s.last_message)),
        )
    }
}

/// A record of a segment being compacted, seen without the log's lock and decided under it.
struct Seen {
    what: What,
    seq: u64,
    /// Where its bytes are in the segment.
    at: usize,
    len: usize,
}

impl Seen {
    fn range(&self) -> std::ops::Range<usize> {
        self.at..self.at + self.len
    }
}

/// What a record is, as far as compaction cares.
#[derive(Clone, Copy)]
enum What {
    Message,
    Ack,
    /// Delivered or Held: kept while its message is.
    Mark,
    Returned,
}

/// Sequence numbers covered by any of some inclusive ranges, merged and sorted so that a
/// lookup is a binary search rather than a walk over every segment of the log for each
/// record (a log of a thousand segments made that a thousand comparisons per Ack).
struct Spans(Vec<(u64, u64)>);

impl Spans {
    fn new(ranges: impl Iterator<Item = (u64, u64)>) -> Spans {
        let mut ranges: Vec<(u64, u64)> = ranges.filter(|(first, last)| first <= last).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (first, last) in ranges {
            match merged.last_mut() {
                Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
                _ => merged.push((first, last)),
            }
        }
        Spans(merged)
    }

    fn holds(&self, seq: u64) -> bool {
        let after = self.0.partition_point(|&(first, _)| first <= seq);
        after > 0 && seq <= self.0[after - 1].1
    }
}

#[cfg(test)]
mod tests;
