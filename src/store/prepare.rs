//! Making a log's next segment ahead of time, on the store's background thread: a new sparse
//! file, or the file of a front segment whose messages are all acknowledged, renamed.

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::fs::{FileIo, Fs, OpenMode};
use super::log::{Inner, QueueLog, Segment, Unlinked};

/// A new segment file of `capacity` bytes, sparse, synced with its size. Sparse rather than
/// zero-filled: writing 8 MiB of zeros per segment doubled the bytes written under
/// persistent load, and on ext4 the fdatasyncs that then allocate blocks measured no slower
/// (`benches/compare confirm`, the same run: 1 publisher 144-216k msg/s and confirm p99
/// 4.5-6.7 ms sparse, against 134-179k and 8-10 ms zero-filled). Unwritten space reads as
/// zeros, which end the log as they did.
fn sparse_file(
    fs: &dyn Fs,
    path: &Path,
    capacity: u64,
    durable: bool,
) -> io::Result<Arc<dyn FileIo>> {
    let file = fs.open(path, OpenMode::FRESH.scratch_if(!durable))?;
    file.set_len(capacity)?;
    if durable {
        file.sync_all()?;
    }
    Ok(file)
}

impl QueueLog {
    /// Makes the next segment ahead of time when the head is half full. Called on the
    /// store's background thread, outside the publish path and the sync thread's.
    pub(super) fn prepare_next(&self) -> io::Result<()> {
        let index = {
            let mut inner = self.lock();
            if !inner.wants_next_segment() {
                return Ok(());
            }
            let index = inner.next_index;
            inner.next_index += 1;
            // The spare stays the log's until renamed: see `reuse`.
            let spare = inner
                .spare
                .as_ref()
                .map(|s| (s.index, s.file.clone(), s.capacity));
            (index, spare)
        };
        let (index, spare) = index;
        if let Some(spare) = spare {
            match self.reuse(spare, index) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(log = %self.dir.display(), error = %e, "cannot reuse a segment file; making a new one")
                }
            }
        }
        let capacity = self.shared.segment_bytes;
        let file = sparse_file(
            &*self.shared.fs,
            &Segment::path(&self.dir, index),
            capacity,
            self.durable,
        )?;
        let mut inner = self.lock();
        if inner.destroyed {
            return Ok(());
        }
        let head_index = inner.segments.back().map_or(0, |h| h.index);
        let index = if index < head_index {
            // The log rolled over meanwhile: give the prepared file the next number.
            let renumbered = inner.next_index;
            inner.next_index += 1;
            self.shared.fs.rename(
                &Segment::path(&self.dir, index),
                &Segment::path(&self.dir, renumbered),
            )?;
            renumbered
        } else {
            index
        };
        inner.dir_dirty = true;
        let seal = self.shared.seals.for_new_segment(index);
        inner.prepared = Some(Segment::fresh(index, file, capacity, seal));
        Ok(())
    }

    /// Makes the spare segment (its number, file and size) the prepared segment `index`:
    /// renames its file, and (durable logs) syncs the directory, so that the new name is on
    /// disk before anything is written under it. Were the rename lost in a crash, records
    /// sealed for `index` would lie in a file recovered under its old number, where they
    /// read as damage, not as messages.
    ///
    /// Until then the spare is still the log's (`Inner::spare`): its file is on disk under
    /// its old number, so compaction keeps the Ack marks of its messages (a crash would bring
    /// them back otherwise). Once renamed, its records no longer read.
    fn reuse(&self, spare: (u64, Arc<dyn FileIo>, u64), index: u64) -> io::Result<()> {
        let (spare_index, file, capacity) = spare;
        let from = Segment::path(&self.dir, spare_index);
        let to = Segment::path(&self.dir, index);
        let forget_spare = |inner: &mut Inner| {
            if inner.spare.as_ref().is_some_and(|s| s.index == spare_index) {
                inner.spare = None;
            }
        };
        if let Err(e) = self.shared.fs.rename(&from, &to) {
            // Not reused: deleted instead, and forgotten once its file is gone; until
            // then the spare is kept (and its Ack marks with it), and `collect_garbage`
            // tries again.
            let mut inner = self.lock();
            if self.unlink(&mut inner, spare_index) == Unlinked::Gone {
                inner.dir_dirty = true;
                forget_spare(&mut inner);
            }
            return Err(e);
        }
        let synced = if self.durable {
            let turn = self.shared.sync_turn();
            let synced = self.shared.fs.sync_dir(&self.dir);
            if let Err(e) = &synced {
                self.shared
                    .fail_stop(&turn, e, "the directory of a reused segment file");
            }
            synced
        } else {
            Ok(())
        };
        let mut inner = self.lock();
        forget_spare(&mut inner);
        synced?;
        let head_index = inner.segments.back().map_or(0, |h| h.index);
        if inner.destroyed || index < head_index || inner.prepared.is_some() {
            // Rolled over meanwhile onto a segment made in place: not needed.
            drop(inner);
            if let Err(e) = self.shared.fs.remove_file(&to)
                && !matches!(e.kind(), io::ErrorKind::NotFound)
            {
                // Its records are sealed for its old number: a start reports them as
                // damage and skips them.
                tracing::warn!(file = %to.display(), error = %e, "cannot delete a reused segment file no longer needed");
            }
            return Ok(());
        }
        inner.prepared = Some(Segment {
            stale_tail: true,
            ..Segment::fresh(
                index,
                file,
                capacity,
                self.shared.seals.for_new_segment(index),
            )
        });
        Ok(())
    }
}

impl Inner {
    /// Before a roll-over, ends the head segment where its records end, if bytes of its
    /// file's earlier life lie past them (`stale_tail`): a segment before the last must read
    /// as ending there.
    pub(super) fn end_head_tail(&mut self) -> io::Result<()> {
        let Some(head) = self.segments.back_mut().filter(|h| h.stale_tail) else {
            return Ok(());
        };
        if head.closed {
            // Recovery cut its tail, and it took nothing since: the tail is cut off the
            // file, which frees space on a full disk, where zeroing it cost up to a segment
            // of writes, from memory, at the first append after a restart.
            head.file.set_len(head.end)?;
            head.capacity = head.end;
            head.stale_tail = false;
            let file = head.file.clone();
            if !self.unsynced.iter().any(|f| Arc::ptr_eq(f, &file)) {
                self.unsynced.push(file);
            }
        } else {
            // At most one record's length: what did not fit. The padding is the head's
            // now: if the writes that follow fail, it stays pending, and no later record may
            // be placed where it lies (a record is placed by `end` and written after what
            // is pending).
            let rest = head.capacity.saturating_sub(head.end) as usize;
            head.end = head.capacity.max(head.end);
            self.pending.resize(self.pending.len() + rest, 0);
        }
        Ok(())
    }
}
