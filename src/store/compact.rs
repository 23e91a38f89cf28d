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
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::fs::OpenMode;
use super::log::{QueueLog, Segment};
use super::record::{Record, Seal};
use super::recover::walk;

/// A log is compacted at most this often...
const COMPACTION_INTERVAL: Duration = Duration::from_millis(100);
/// ...for at most this long at a time, so that the sync thread (and the confirms waiting for
/// it) is held up for no longer.
const COMPACTION_BUDGET: Duration = Duration::from_millis(20);

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
    pub(super) fn compact_paced(&self) -> io::Result<()> {
        {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if inner
                .last_compaction
                .is_some_and(|at| at.elapsed() < COMPACTION_INTERVAL)
            {
                return Ok(());
            }
        }
        let started = Instant::now();
        while started.elapsed() < COMPACTION_BUDGET && self.compact_now()? {}
        Ok(())
    }

    /// Compacts the first segment that needs it, now. Returns whether it did.
    pub fn compact_now(&self) -> io::Result<bool> {
        let Some((index, seal, file_bytes)) = self.pick_candidate()? else {
            return Ok(false);
        };
        let kept = self.keep(index, seal, &file_bytes);
        let path = Segment::path(&self.dir, index);
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        let fs = self.shared.fs.clone();
        if !kept.bytes.is_empty() {
            fs.write_synced(&tmp, &kept.bytes)?;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.last_compaction = Some(Instant::now());
        let Some(at) = inner.segments.iter().position(|s| s.index == index) else {
            // Deleted meanwhile (all of it was acknowledged): nothing to replace.
            drop(inner);
            let _ = fs.remove_file(&tmp);
            return Ok(false);
        };
        if kept.bytes.is_empty() {
            inner.segments.remove(at);
            fs.remove_file(&path)?;
        } else {
            fs.rename(&tmp, &path)?;
            let file = fs.open(&path, OpenMode::EXISTING)?;
            let live = kept
                .seqs
                .iter()
                .filter(|&&s| !inner.acked.contains(s))
                .count() as u64;
            let seg = &mut inner.segments[at];
            seg.file = file;
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
        if let Err(e) = fs.sync_dir(&self.dir) {
            self.shared
                .fail_stop(&e, "the directory of a compacted segment");
            return Err(e);
        }
        tracing::debug!(log = %self.dir.display(), segment = index, kept_bytes = kept.bytes.len(), "compacted a segment");
        Ok(true)
    }

    /// The first segment worth compacting, with its bytes.
    fn pick_candidate(&self) -> io::Result<Option<(u64, Seal, Bytes)>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.settle_superseded(&mut inner);
        // Paging logs hold no durable data: they are deleted from the front as they are
        // read, and never compacted.
        if !self.durable || inner.destroyed || !self.shared.writable() {
            return Ok(None);
        }
        // Not the head, nor the segment just before it: with consumers keeping up, that one
        // is being acknowledged as it goes and will be deleted whole in a moment; rewriting
        // it would only read and copy what is about to be freed (it cost a fifth of the CPU
        // per message under confirmed publishing).
        let settled = inner.segments.len().saturating_sub(2);
        let candidate = inner.segments.iter().take(settled).find(|s| {
            inner.read_pos.is_none_or(|p| p.segment > s.index)
                && (if s.messages > 0 {
                    s.live * 4 <= s.messages
                } else {
                    !s.compacted
                } || s.marks_went_stale())
        });
        let Some(seg) = candidate else {
            return Ok(None);
        };
        let mut data = vec![0u8; seg.end as usize];
        seg.file.read_exact_at(&mut data, 0)?;
        Ok(Some((seg.index, seg.seal, Bytes::from(data))))
    }

    /// What of segment `index` (its bytes: `data`, sealed `seal`) is still needed, in its
    /// order. Records are kept as they are: the copy takes the segment's number, and so its
    /// seal.
    fn keep(&self, index: u64, seal: Seal, data: &Bytes) -> Kept {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // The spare segment counts: its file is on disk, under its old number, until reused.
        let elsewhere = |seq: u64| {
            inner
                .segments
                .iter()
                .chain(inner.spare.as_ref())
                .any(|s| s.index != index && s.holds(seq))
        };
        let mut kept = Kept {
            bytes: Vec::new(),
            seqs: Vec::new(),
            returned: Vec::new(),
        };
        // Delivered and Held marks of messages not acknowledged.
        let mut marks: Vec<(u64, Vec<u8>)> = Vec::new();
        // The latest Returned mark of each such message, if it is in this segment (the last
        // of its marks here): a message a consumer keeps giving back leaves one per return,
        // and only its latest count matters (`store::returned`).
        let mut returned: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        walk(data, seal, |record, raw| match record {
            Record::Message { seq, .. } if !inner.acked.contains(seq) => {
                kept.bytes.extend_from_slice(raw);
                kept.seqs.push(seq);
            }
            Record::Ack { seq } if elsewhere(seq) => kept.bytes.extend_from_slice(raw),
            // Decided below, once the messages kept here are known.
            Record::Delivered { seq } | Record::Held { seq, .. } if !inner.acked.contains(seq) => {
                marks.push((seq, raw.to_vec()))
            }
            Record::Returned { seq, .. } if inner.returned_at.get(&seq) == Some(&index) => {
                returned.insert(seq, raw.to_vec());
            }
            // Acknowledged messages, paged copies the queue has read past, marks of what
            // is gone.
            _ => {}
        });
        for (seq, raw) in marks {
            if kept.seqs.binary_search(&seq).is_ok() || elsewhere(seq) {
                kept.bytes.extend_from_slice(&raw);
            }
        }
        for (seq, raw) in returned {
            if kept.seqs.binary_search(&seq).is_ok() || elsewhere(seq) {
                kept.bytes.extend_from_slice(&raw);
                kept.returned.push(seq);
            }
        }
        kept
    }
}
