//! Writing a log's appended bytes to its files without holding the log's lock.
//!
//! The sync thread used to write a log's buffer holding the log's lock. Every append to that
//! queue meanwhile (a publish, an acknowledgement, on a runtime worker) waited for the
//! write, and a device that stopped answering stopped the worker, and every connection it
//! served with it. Now the sync thread takes the buffer under the lock
//! ([`Inner::take_pending`]), writes it outside the lock, and takes the lock again only to
//! drop what it wrote. Appends go on into another buffer meanwhile; a roll-over to the next
//! segment takes the old head's last bytes the same way, and no longer writes on the
//! appending thread.
//!
//! The order of writes is kept: taken bytes wait in `Inner::unwritten`, oldest first, and
//! are written in that order, each removed only once written, so a failed write leaves
//! itself and everything after it for the next cycle, and a segment's file always holds a
//! prefix of the segment. Until written, readers copy them from memory
//! ([`Inner::copy_unwritten`]); a segment with bytes not yet written is neither deleted,
//! reused nor compacted.

use std::io;
use std::sync::Arc;

use super::fs::FileIo;
use super::log::{Inner, QueueLog, Unwritten};

/// A written buffer larger than this is freed rather than kept for the next `pending` (a
/// segment's worth). At 1 MiB, buffers of busy cycles were freed and grown again by doubling
/// every cycle, and the broker held a 100 MB persistent backlog in 43 MB of RSS instead of
/// 21 MB; at 8 MiB, 25 MB.
const SPARE_PENDING_MAX_BYTES: usize = 8 << 20;

impl Inner {
    /// Moves the head's `pending` bytes to the back of `unwritten`, for the sync thread;
    /// returns how many. `deferred`: a roll-over left them behind a write in progress,
    /// and they count against `UNWRITTEN_MAX_BYTES` (`Shared::add_unwritten`).
    pub(super) fn take_pending(&mut self, deferred: bool) -> u64 {
        if self.pending.is_empty() {
            return 0;
        }
        let Some(head) = self.segments.back() else {
            return 0;
        };
        let (index, file) = (head.index, head.file.clone());
        let next = std::mem::take(&mut self.spare_pending);
        let bytes = std::mem::replace(&mut self.pending, next);
        let offset = self.pending_offset;
        let taken = bytes.len() as u64;
        self.pending_offset += taken;
        self.unwritten.push_back(Unwritten {
            index,
            file,
            offset,
            bytes: Arc::new(bytes),
            deferred,
        });
        taken
    }

    /// Whether bytes of segment `index` are still to be written to its file.
    pub(super) fn has_unwritten(&self, index: u64) -> bool {
        self.unwritten.iter().any(|u| u.index == index)
    }

    /// The first position (segment, offset) whose byte may not be in its file yet: every
    /// byte before it is.
    pub(super) fn first_unwritten(&self) -> Option<(u64, u64)> {
        match self.unwritten.front() {
            Some(u) => Some((u.index, u.offset)),
            None => self.segments.back().map(|h| (h.index, self.pending_offset)),
        }
    }

    /// Where the bytes of segment `index` stop being in its file (`u64::MAX`: all are).
    pub(super) fn unwritten_from(&self, index: u64) -> u64 {
        if let Some(u) = self.unwritten.iter().find(|u| u.index == index) {
            return u.offset;
        }
        match self.segments.back() {
            Some(head) if head.index == index => self.pending_offset,
            _ => u64::MAX,
        }
    }

    /// Copies the bytes of segment `index` from `at` into `out`, from those not yet
    /// written (taken, then pending); an error if they are not all there.
    pub(super) fn copy_unwritten(&self, index: u64, at: u64, out: &mut [u8]) -> io::Result<()> {
        let pending = self
            .segments
            .back()
            .filter(|head| head.index == index)
            .map(|_| (self.pending_offset, self.pending.as_slice()));
        let pieces = self
            .unwritten
            .iter()
            .filter(|u| u.index == index)
            .map(|u| (u.offset, u.bytes.as_slice()))
            .chain(pending);
        let end = at + out.len() as u64;
        // The next position to fill; pieces follow each other in order.
        let mut pos = at;
        for (offset, bytes) in pieces {
            let piece_end = offset + bytes.len() as u64;
            if pos >= end || offset > pos {
                break;
            }
            if piece_end <= pos {
                continue;
            }
            let n = (end.min(piece_end) - pos) as usize;
            let (from, to) = ((pos - offset) as usize, (pos - at) as usize);
            out[to..to + n].copy_from_slice(&bytes[from..from + n]);
            pos += n as u64;
        }
        if pos < end {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

impl QueueLog {
    /// Leaves the head's pending bytes to the sync thread (a roll-over while a write is in
    /// progress), counted against `UNWRITTEN_MAX_BYTES`.
    pub(super) fn defer_pending(&self, inner: &mut Inner) {
        let taken = inner.take_pending(true);
        self.shared.add_unwritten(taken);
    }

    /// Drops what waits to be written (the log was deleted), and its count.
    pub(super) fn forget_unwritten(&self, inner: &mut Inner) {
        let counted = inner.unwritten.drain(..).filter(|u| u.deferred);
        self.shared
            .remove_unwritten(counted.map(|u| u.bytes.len() as u64).sum());
    }

    /// Writes every byte appended so far to the files, in order, outside the log's lock;
    /// the files written wait in `Inner::unsynced` for the sync. On an error, what was not
    /// written stays, to be written first next time. Only the sync thread calls this (and
    /// a store's caller running its cycles itself), one call at a time; even so, only the
    /// chunks this call wrote leave `unwritten`, found by identity.
    pub(super) fn write_out(&self) -> io::Result<()> {
        let batch: Vec<Unwritten> = {
            let mut inner = self.lock();
            if inner.destroyed {
                return Ok(());
            }
            inner.take_pending(false);
            inner.unwritten.iter().cloned().collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        self.shared.note_write_in_flight(true);
        let mut written = 0;
        let mut result = Ok(());
        for u in &batch {
            if let Err(e) = u.file.write_all_at(&u.bytes, u.offset) {
                result = Err(e);
                break;
            }
            written += 1;
        }
        self.shared.note_write_in_flight(false);
        let mut files: Vec<Arc<dyn FileIo>> = Vec::new();
        for u in &batch {
            if !files.iter().any(|f| Arc::ptr_eq(f, &u.file)) {
                files.push(u.file.clone());
            }
        }
        {
            let mut inner = self.lock();
            // A deleted log forgot its bytes (and their count) already.
            let mut done = Vec::new();
            for u in batch.iter().take(written) {
                if inner.destroyed
                    || !inner
                        .unwritten
                        .front()
                        .is_some_and(|f| Arc::ptr_eq(&f.bytes, &u.bytes))
                {
                    break;
                }
                done.extend(inner.unwritten.pop_front());
            }
            drop(batch);
            for u in done {
                if u.deferred {
                    self.shared.remove_unwritten(u.bytes.len() as u64);
                }
                if !inner.unsynced.iter().any(|f| Arc::ptr_eq(f, &u.file)) {
                    inner.unsynced.push(u.file);
                }
                if inner.spare_pending.capacity() == 0
                    && let Ok(mut buffer) = Arc::try_unwrap(u.bytes)
                    && buffer.capacity() <= SPARE_PENDING_MAX_BYTES
                {
                    buffer.clear();
                    inner.spare_pending = buffer;
                }
            }
        }
        // A file of a log deleted meanwhile may have had its last handle here: it is closed
        // on the closer thread (its blocks freed there), not in the middle of this cycle.
        self.shared.close_in_background(files);
        result
    }
}

#[cfg(test)]
mod tests;
