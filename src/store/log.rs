//! A queue's log: the segment files where a durable queue keeps its persistent messages, and
//! where any queue moves messages out of memory.
//!
//! Appends go into an in-memory buffer under the log's lock (no system call on the publish
//! path); the store's sync thread writes the buffer with one `pwrite`, outside the lock
//! (`store::write_out`), and syncs the files (group commit). Segments are deleted from the front once every durable message in them is
//! acknowledged and the queue has read past them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::fs::{FileIo, OpenMode};
use super::intervals::IntervalSet;
use super::record::{self, Kind, MessageParts, Seal, Stamp, StoredMessage};
use super::sync::{Journal, Shared, ToSync};

/// Where a record starts: segment number and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// A queue log.
pub struct QueueLog {
    pub(super) dir: PathBuf,
    pub(super) shared: Arc<Shared>,
    pub(super) inner: Mutex<Inner>,
    /// A durable queue's log (compacted); otherwise a paging log, deleted as it is read.
    pub(super) durable: bool,
    /// The preparation of its next segment is queued on the background thread.
    pub(super) prepare_queued: AtomicBool,
}

impl std::fmt::Debug for QueueLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueLog").field("dir", &self.dir).finish()
    }
}

pub(super) struct Segment {
    pub(super) index: u64,
    pub(super) file: Arc<dyn FileIo>,
    /// What its records' checksums are sealed with (`store::seal`): keyed, or, in a segment
    /// recovered from before keys, the old way (it then takes no appends).
    pub(super) seal: Seal,
    /// Preallocated size of the file.
    pub(super) capacity: u64,
    /// Where the next record goes (bytes written plus bytes pending).
    pub(super) end: u64,
    /// Durable message records in this segment that are not yet acknowledged.
    pub(super) live: u64,
    /// Sequence numbers of the first and last durable message records here.
    pub(super) first_message: u64,
    pub(super) last_message: u64,
    /// Durable message records here, acknowledged or not (compaction compares `live` to it).
    pub(super) messages: u64,
    /// The highest sequence number of a durable message record logged in this segment or
    /// any before it. Numbers rise in the order records are logged, so it never falls along
    /// the log, and an ack finds the segment of its record by a binary search on it
    /// (`segment_holding`); `first_message` and `last_message` allow none, as a segment of
    /// marks alone has none.
    pub(super) ceiling: u64,
    /// Rewritten by compaction already.
    pub(super) compacted: bool,
    /// Returned marks here, and how many of them a later mark or an Ack made stale
    /// (`store::returned`): a segment whose marks went stale is compacted again.
    pub(super) returned_marks: u64,
    pub(super) stale_marks: u64,
    /// Made by this process at the full segment size: once its messages are all
    /// acknowledged its file may be reused for a later segment (its blocks are allocated, so
    /// an `fdatasync` of an overwrite commits no file-system metadata). Recovered segments
    /// may hold records from before checksums were sealed with the segment number, which a
    /// reuse would not hide: they are deleted, as compacted ones (smaller) are.
    pub(super) reusable: bool,
    /// Past `end` lie bytes of the file's earlier life (a reused file's records, sealed for
    /// another number; a cut tail). When the log moves on, a segment before the last must
    /// end there, as recovery expects: see `Inner::end_head_tail`.
    pub(super) stale_tail: bool,
    /// Takes no more appends: recovery cut a damaged tail off it (see `scan_segment`).
    pub(super) closed: bool,
    /// Compaction found nothing of it to keep but could not delete its file: it is not
    /// picked again while deletes wait (`Inner::unlink_retry_at`), and `collect_garbage`
    /// deletes it once it reaches the front.
    pub(super) undeletable: bool,
}

impl Segment {
    /// A segment with nothing in it yet.
    pub(super) fn empty(index: u64, file: Arc<dyn FileIo>, capacity: u64, seal: Seal) -> Segment {
        Segment {
            index,
            file,
            seal,
            capacity,
            end: 0,
            live: 0,
            first_message: u64::MAX,
            last_message: 0,
            messages: 0,
            ceiling: 0,
            compacted: false,
            returned_marks: 0,
            stale_marks: 0,
            reusable: false,
            stale_tail: false,
            closed: false,
            undeletable: false,
        }
    }

    /// A new segment of this process, in a new file of the full segment size.
    pub(super) fn fresh(index: u64, file: Arc<dyn FileIo>, capacity: u64, seal: Seal) -> Segment {
        Segment {
            reusable: true,
            ..Segment::empty(index, file, capacity, seal)
        }
    }

    pub(super) fn path(dir: &Path, index: u64) -> PathBuf {
        dir.join(format!("{index:016}.seg"))
    }

    pub(super) fn holds(&self, seq: u64) -> bool {
        self.first_message <= seq && seq <= self.last_message
    }
}

/// Which of the store's lists of journals a log is on (see [`Shared::mark_lazy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Registered {
    No,
    /// Only lazy records (marks) are buffered: they go with the next cycle.
    Lazy,
    /// Something waits for what is buffered: the next cycle runs at once.
    Eager,
}

/// What an append writes, which decides what the log accounts and whether it is lazy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Append {
    /// A durable message, with its sequence number: a confirm waits for it.
    Durable(u64),
    /// A transient message's copy, read back by this process.
    Paged,
    /// An acknowledgement or delivery mark: nothing waits for it.
    Mark,
    /// A mark nothing waits for either, but which starts a cycle at once rather than within
    /// `LAZY_WRITE_MS`: a held dead letter's (`QueueLog::held`).
    EagerMark,
}

pub(super) struct Inner {
    /// Oldest first; the last one takes appends.
    pub(super) segments: VecDeque<Segment>,
    /// A segment file could not be deleted: no delete is tried again before this (a
    /// collection comes with every batch of acks, and publishers wait on this lock).
    pub(super) unlink_retry_at: Option<Instant>,
    /// Number for the next segment file.
    pub(super) next_index: u64,
    /// Bytes appended to the head segment since the sync thread last took them to write.
    pub(super) pending: Vec<u8>,
    /// Offset in the head segment where `pending` starts.
    pub(super) pending_offset: u64,
    /// Bytes taken to be written (or left by a roll-over), not yet in their files, oldest
    /// first; all of them come before `pending`. The sync thread writes them in this order,
    /// outside the lock, and removes each from the front once written, so a segment's file
    /// always holds a prefix of it (see `store::write_out`).
    pub(super) unwritten: VecDeque<Unwritten>,
    /// The buffer of an earlier `pending`, written and kept for the next one: taking
    /// `pending` to write must not cost an allocation (and its page faults) every cycle.
    pub(super) spare_pending: Vec<u8>,
    /// A collection stopped at a segment whose bytes were still to be written: the sync
    /// thread collects again after its next cycle, or an idle queue would keep it for good.
    pub(super) collect_after_write: bool,
    /// Files written since the last sync.
    pub(super) unsynced: Vec<Arc<dyn FileIo>>,
    /// A directory entry changed (segment created or deleted) since the last sync.
    pub(super) dir_dirty: bool,
    /// The log's directory itself is new: its entry in the parent directory is synced with
    /// the first sync cycle (by the sync thread, not by whoever declared the queue).
    pub(super) created: bool,
    /// Which of the store's lists of logs to write and sync this log is on.
    pub(super) registered: Registered,
    /// A segment made ahead of time on the store's background thread.
    pub(super) prepared: Option<Segment>,
    /// A segment whose messages were all acknowledged, kept for the background thread to
    /// reuse as the next one.
    pub(super) spare: Option<Segment>,
    pub(super) destroyed: bool,
    /// Durable messages acknowledged (and not yet forgotten with their segments): what
    /// compaction leaves out.
    pub(super) acked: IntervalSet,
    /// Where the queue reads its log from, as it last said: compaction stays behind it.
    pub(super) read_pos: Option<Position>,
    /// When a segment was last compacted: compaction is paced.
    pub(super) last_compaction: Option<std::time::Instant>,
    /// Acked messages still counted live until the copy that superseded them is on disk:
    /// (the copy's epoch, seq), oldest first (see `store::ack`).
    pub(super) superseded: VecDeque<(u64, u64)>,
    /// Unacknowledged messages with a Returned mark: the segment of the latest one.
    pub(super) returned_at: HashMap<u64, u64>,
}

/// Bytes of a segment taken to be written to its file.
#[derive(Clone)]
pub(super) struct Unwritten {
    /// The segment's number.
    pub(super) index: u64,
    pub(super) file: Arc<dyn FileIo>,
    /// Where in the file they go.
    pub(super) offset: u64,
    /// Shared with the sync thread while it writes them; readers copy from here until then.
    pub(super) bytes: Arc<Vec<u8>>,
    /// Left by a roll-over behind a write in progress: counted against
    /// `UNWRITTEN_MAX_BYTES` until written.
    pub(super) deferred: bool,
}

/// What recovering a durable queue's log found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Sequence number for the next message.
    pub next_seq: u64,
    /// Unacknowledged durable messages, not counting the held ones.
    pub count: u64,
    /// Their body bytes.
    pub bytes: u64,
    /// Unacknowledged messages held as dead letters, with the reason byte of their
    /// [`record::Kind::Held`] marker, in log order. The reader skips them: they are read
    /// here, at recovery.
    pub held: Vec<(ReadBack, u8)>,
    /// Where the queue's messages start, and how to read them back.
    pub reader: TailReader,
    /// The last segment ended in bytes that are not records, cut: a torn write, or the
    /// earlier records of a reused segment file.
    pub torn: bool,
    /// Damaged stretches in the middle of the log, skipped, and their bytes.
    pub damaged_regions: usize,
    pub damaged_bytes: u64,
}

/// Marks appended at once, at most: small against the smallest segment, so a batch never
/// needs a segment of its own.
pub(super) const MARKS_PER_APPEND: usize = 256;

/// What became of a segment file [`QueueLog::unlink`] was asked to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unlinked {
    /// Deleted (or already gone): the segment may leave the log.
    Gone,
    /// The delete failed: the segment stays.
    Failed,
    /// Not tried, as a delete failed less than `UNLINK_RETRY` ago: the segment stays.
    NotTried,
}

/// How long a durable log waits to try deleting a segment file again after a failure.
const UNLINK_RETRY: Duration = Duration::from_secs(1);

/// Reads a queue's messages back from its log, in order. Cloned for every batch read, so
/// what recovery found is shared, not copied: a log whose acks left a million gaps has a
/// million ranges, and copying them per batch made draining it quadratic.
#[derive(Debug, Clone, Default)]
pub struct TailReader {
    pub pos: Position,
    /// Up to here the log is what a restart found: only unacknowledged durable messages
    /// count, and paged copies from before the restart are ignored.
    pub recovery_end: Position,
    pub found: Arc<Found>,
}

/// What recovery found that the reader of the recovered region needs. Never changed after.
#[derive(Debug, Default)]
pub struct Found {
    /// Messages to pass over: acknowledged, or read at recovery (held dead letters).
    pub acked: IntervalSet,
    /// Messages delivered before: they come back redelivered.
    pub delivered: IntervalSet,
    /// Quorum-queue messages returned to their places, with their latest delivery count
    /// ([`record::Kind::Returned`]).
    pub returned: BTreeMap<u64, u32>,
    /// Damaged stretches found at recovery (start, end), in order: read past, never parsed.
    pub skip: Vec<(Position, Position)>,
}

/// A message read back from a log.
#[derive(Debug)]
pub struct ReadBack {
    pub seq: u64,
    pub message: StoredMessage,
    /// A durable record exists: its ack must be logged.
    pub persisted: bool,
    pub redelivered: bool,
    /// When the message expires in its queue, if it has a TTL.
    pub expires_at: Option<u64>,
}

/// A log is compacted at most this often (`QueueLog::compact_paced`).
pub(super) const COMPACTION_INTERVAL: Duration = Duration::from_millis(100);

impl Inner {
    /// Whether the background thread has a segment to make: the head is half full and no
    /// next one is made yet (see `QueueLog::prepare_next`). The sync thread asks before it
    /// queues the job: waking the background thread after every cycle cost the broker's
    /// core a dozen context switches per cycle, most of them for nothing.
    pub(super) fn wants_next_segment(&self) -> bool {
        self.segments.back().is_some_and(|head| {
            !self.destroyed && self.prepared.is_none() && head.end >= head.capacity / 2
        })
    }

    /// Whether a compaction may run: none ran in the last `COMPACTION_INTERVAL`.
    pub(super) fn compaction_due(&self) -> bool {
        self.last_compaction
            .is_none_or(|at| at.elapsed() >= COMPACTION_INTERVAL)
    }
}

impl QueueLog {
    /// Creates an empty log in `dir`. The first segment is sparse, so declaring a queue
    /// costs no large write; the background thread makes the segments that follow.
    pub fn create(dir: PathBuf, shared: Arc<Shared>, durable: bool) -> io::Result<Arc<QueueLog>> {
        shared.fs.create_dir_all(&dir)?;
        let capacity = shared.segment_bytes;
        let file = shared.fs.open(
            &Segment::path(&dir, 0),
            OpenMode::FRESH.scratch_if(!durable),
        )?;
        file.set_len(capacity)?;
        let head = Segment::fresh(0, file.clone(), capacity, shared.seals.for_new_segment(0));
        // The new file, its directory and the directory's entry in its parent are synced by
        // the next sync cycle, which everything that depends on this log (the declare-ok of
        // its queue, confirms of its messages) waits for anyway. Whoever creates a queue does
        // no fsync, under no lock.
        let log = Arc::new(QueueLog {
            dir,
            durable,
            prepare_queued: AtomicBool::new(false),
            shared: shared.clone(),
            inner: Mutex::new(Inner {
                segments: VecDeque::from([head]),
                next_index: 1,
                pending: Vec::new(),
                pending_offset: 0,
                unwritten: VecDeque::new(),
                spare_pending: Vec::new(),
                collect_after_write: false,
                unsynced: vec![file],
                dir_dirty: true,
                created: true,
                registered: Registered::Eager,
                prepared: None,
                spare: None,
                unlink_retry_at: None,
                destroyed: false,
                acked: IntervalSet::default(),
                read_pos: None,
                last_compaction: None,
                superseded: VecDeque::new(),
                returned_at: HashMap::new(),
            }),
        });
        shared.mark_dirty(log.clone());
        Ok(log)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a record of `len` bytes built by `encode`; returns where it starts and the
    /// store epoch after which it is on disk.
    pub(super) fn append(
        self: &Arc<Self>,
        len: usize,
        record: Append,
        encode: impl FnOnce(&mut Vec<u8>, Seal),
    ) -> io::Result<(Position, u64)> {
        let mut inner = self.lock();
        self.append_locked(&mut inner, len, record, encode)
    }

    /// [`QueueLog::append`] with the log's lock held.
    pub(super) fn append_locked(
        self: &Arc<Self>,
        inner: &mut Inner,
        len: usize,
        record: Append,
        encode: impl FnOnce(&mut Vec<u8>, Seal),
    ) -> io::Result<(Position, u64)> {
        if inner.destroyed {
            return Err(io::Error::other("queue log was deleted"));
        }
        if !self.shared.writable() {
            return Err(io::Error::other(
                "the data directory is read-only after a failed fsync",
            ));
        }
        let fits = inner.segments.back().is_some_and(|h| {
            !h.closed
                && (h.end == 0 || h.end + len as u64 <= h.capacity)
                && self.shared.seals.takes_appends(h.seal)
        });
        if !fits {
            self.roll_over(inner, len as u64)?;
        }
        let Some(head) = inner.segments.back_mut() else {
            return Err(io::Error::other("queue log has no segment"));
        };
        let seal = head.seal;
        let pos = Position {
            segment: head.index,
            offset: head.end,
        };
        head.end += len as u64;
        if let Append::Durable(seq) = record {
            head.live += 1;
            head.messages += 1;
            head.first_message = head.first_message.min(seq);
            head.last_message = head.last_message.max(seq);
            head.ceiling = head.ceiling.max(seq);
        }
        if record == Append::Paged {
            // A copy the queue will read back: compaction stays behind it until the queue
            // says where it reads from.
            inner.read_pos = Some(inner.read_pos.map_or(pos, |p| p.min(pos)));
        }
        encode(&mut inner.pending, seal);
        match (record, inner.registered) {
            (_, Registered::Eager) | (Append::Mark, Registered::Lazy) => {}
            (Append::Mark, Registered::No) => {
                inner.registered = Registered::Lazy;
                self.shared.mark_lazy(self.clone());
            }
            (_, _) => {
                inner.registered = Registered::Eager;
                self.shared.mark_dirty(self.clone());
            }
        }
        // Read inside the lock: see the protocol on `Journal`.
        Ok((pos, self.shared.epoch()))
    }

    /// Starts a new head segment: writes out what is pending for the old one and opens the
    /// prepared segment, or makes one now if the sync thread has not.
    fn roll_over(&self, inner: &mut Inner, need: u64) -> io::Result<()> {
        inner.end_head_tail()?;
        if inner.unwritten.is_empty() && !self.shared.writes_in_flight() {
            // Nothing is being written: the old head's last bytes are written here.
            Self::write_pending(inner)?;
        } else if self.shared.write_failing() {
            // The disk is refusing writes, or the writes in progress are far behind: what
            // waits to be written stays bounded (`UNWRITTEN_MAX_BYTES`), as when a roll-over
            // wrote the old head itself (and failed, or waited).
            return Err(io::Error::other("the data directory is not taking writes"));
        } else {
            // The sync thread is writing outside a log's lock (perhaps to a device that
            // stopped answering): the old head's last bytes are left for it to write, after
            // what waits before them, rather than written here beside it.
            self.defer_pending(inner);
        }
        let capacity = self.shared.segment_bytes.max(need);
        let next = match inner.prepared.take() {
            Some(mut p) => {
                if p.capacity < need {
                    // Too small for this record: grown to hold it (the rest is sparse, and
                    // no longer the size a reused file must be). A new segment made for the
                    // record was numbered after this one, which came after it: reads
                    // skipped this one's messages, and a restart put them before the record.
                    if let Err(e) = p.file.set_len(capacity) {
                        inner.prepared = Some(p);
                        return Err(e);
                    }
                    p.capacity = capacity;
                }
                p
            }
            None => {
                let index = inner.next_index;
                inner.next_index += 1;
                let file = self.shared.fs.open(
                    &Segment::path(&self.dir, index),
                    OpenMode::FRESH.scratch_if(!self.durable),
                )?;
                file.set_len(capacity)?;
                // A new name in the directory, synced with the next cycle. A prepared
                // segment's name is on disk already, or will be with the cycle that writes
                // to it: `prepare_next` syncs the directory after renaming a spare, and
                // marks it changed after making a new file.
                inner.dir_dirty = true;
                Segment::fresh(
                    index,
                    file,
                    capacity,
                    self.shared.seals.for_new_segment(index),
                )
            }
        };
        inner.pending_offset = 0;
        let mut next = next;
        next.ceiling = inner.segments.back().map_or(0, |h| h.ceiling);
        inner.segments.push_back(next);
        Ok(())
    }

    /// Writes the pending bytes of the head segment to its file (no sync), when nothing
    /// else waits to be written before them (`unwritten` is empty).
    fn write_pending(inner: &mut Inner) -> io::Result<()> {
        if inner.pending.is_empty() {
            return Ok(());
        }
        let Some(head) = inner.segments.back() else {
            return Ok(());
        };
        head.file
            .write_all_at(&inner.pending, inner.pending_offset)?;
        inner.pending_offset += inner.pending.len() as u64;
        inner.pending.clear();
        let file = head.file.clone();
        if !inner.unsynced.iter().any(|f| Arc::ptr_eq(f, &file)) {
            inner.unsynced.push(file);
        }
        Ok(())
    }

    /// Appends a message record; `durable` records are recovered after a restart. Returns
    /// the store epoch after which the record is on disk.
    pub fn append_message(
        self: &Arc<Self>,
        seq: u64,
        message: &MessageParts,
        durable: bool,
        stamp: &Stamp,
    ) -> io::Result<u64> {
        let kind = if durable { Kind::Message } else { Kind::Paged };
        let record = if durable {
            Append::Durable(seq)
        } else {
            Append::Paged
        };
        self.append(record::message_len(message, stamp), record, |out, seal| {
            record::encode_message(out, seal, kind, seq, stamp, message)
        })
        .map(|(_, epoch)| epoch)
    }

    /// A durable queue's log, rather than a paging log.
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// The position the next record will take.
    pub fn end(&self) -> Position {
        let inner = self.lock();
        inner
            .segments
            .back()
            .map_or(Position::default(), |h| Position {
                segment: h.index,
                offset: h.end,
            })
    }

    /// Deletes segments from the front whose durable messages are all acknowledged and that
    /// the queue has read past (`read_pos`: where the queue reads its log from, if it does).
    pub fn collect_garbage(self: &Arc<Self>, read_pos: Option<Position>) {
        let mut inner = self.lock();
        self.settle_superseded(&mut inner);
        inner.read_pos = read_pos;
        self.collect_locked(inner);
    }

    /// [`QueueLog::collect_garbage`] from where the queue last said it reads (`read_pos`),
    /// with the lock that read it: a tail paged out meanwhile moves it back.
    fn collect_locked(self: &Arc<Self>, mut inner: MutexGuard<'_, Inner>) {
        let read_pos = inner.read_pos;
        // Closed on the closer thread once unlinked (`Shared::close_in_background`).
        let mut closing = Vec::new();
        while inner.segments.len() > 1 {
            let Some(front) = inner.segments.front() else {
                break;
            };
            if front.live > 0 || read_pos.is_some_and(|p| p.segment <= front.index) {
                break;
            }
            if inner.has_unwritten(front.index) {
                // Bytes of it not yet written would land on whatever reused its file.
                inner.collect_after_write = true;
                break;
            }
            let index = front.index;
            let reuse =
                front.reusable && !front.compacted && front.capacity == self.shared.segment_bytes;
            // A segment leaves the log only once its file is gone: while the file is on
            // disk, compaction must keep the Ack marks of its messages (held elsewhere), or
            // a restart would bring them back. A failed unlink is tried again at the next
            // collection, and nothing after it goes first.
            //
            // A spare's messages were acknowledged by Ack marks in later segments, this one
            // among them: its file goes first, or a restart would find its messages with
            // their acknowledgements deleted (a clean stop brought back a segment of them).
            if let Some(spare_index) = inner.spare.as_ref().map(|s| s.index) {
                if self.unlink(&mut inner, spare_index) != Unlinked::Gone {
                    break;
                }
                inner.dir_dirty = true;
                if let Some(spare) = inner.spare.take() {
                    closing.push(spare.file);
                }
            }
            if !reuse && self.unlink(&mut inner, index) != Unlinked::Gone {
                break;
            }
            let Some(front) = inner.segments.pop_front() else {
                break;
            };
            if reuse {
                // Renamed into the next segment by the background thread; until then it
                // stays where it is (recovery reads it as a segment whose messages were
                // all acknowledged, as it would a deletion that did not reach the disk).
                // The directory is unchanged.
                inner.spare = Some(front);
            } else {
                closing.push(front.file);
                inner.dir_dirty = true;
            }
            // Acks of messages whose records are gone are no longer needed.
            if let Some(first) = inner.segments.iter().map(|s| s.first_message).min() {
                inner.acked.remove_below(first);
            }
        }
        drop(inner);
        self.shared.close_in_background(closing);
    }

    /// Unlinks segment `index`'s file, and says whether the segment may leave the log. A
    /// durable log keeps a segment whose file it cannot delete, and tries no delete again
    /// before `UNLINK_RETRY` has passed; a failure is logged once per run of failures. A
    /// paging log lets the segment go: nothing acknowledges its records, the next start
    /// wipes its directory, and keeping every segment of a backlog would hold a file open
    /// for each.
    pub(super) fn unlink(&self, inner: &mut Inner, index: u64) -> Unlinked {
        let now = Instant::now();
        if self.durable && inner.unlink_retry_at.is_some_and(|at| now < at) {
            return Unlinked::NotTried;
        }
        match self.shared.fs.remove_file(&Segment::path(&self.dir, index)) {
            Ok(()) => {
                inner.unlink_retry_at = None;
                Unlinked::Gone
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Unlinked::Gone,
            Err(e) => {
                if inner.unlink_retry_at.is_none() {
                    let then = if self.durable {
                        "the log keeps it, with the acknowledgements that cover it, and tries again"
                    } else {
                        "the paging log lets it go; the next start wipes it"
                    };
                    tracing::error!(log = %self.dir.display(), segment = index, error = %e, "cannot delete a segment file that is no longer needed; {then}");
                }
                inner.unlink_retry_at = Some(now + UNLINK_RETRY);
                if self.durable {
                    Unlinked::Failed
                } else {
                    Unlinked::Gone
                }
            }
        }
    }

    /// Writes pending bytes and returns the files to sync. Called by the sync thread.
    pub(super) fn flush(&self) -> io::Result<ToSync> {
        {
            let mut inner = self.lock();
            inner.registered = Registered::No;
            if inner.destroyed {
                inner.pending.clear();
                self.forget_unwritten(&mut inner);
                return Ok((Vec::new(), Vec::new()));
            }
        }
        self.write_out()?;
        let mut inner = self.lock();
        let files = std::mem::take(&mut inner.unsynced);
        let dir_dirty = std::mem::take(&mut inner.dir_dirty);
        let created = std::mem::take(&mut inner.created);
        if !self.durable {
            // A paging log is read back by this process only (the page cache has it) and
            // wiped at the next start: syncing it would only make the disk and every
            // confirm of the epoch wait for a backlog's copy. A file deleted since it was
            // written is closed by the closer, not under this lock.
            drop(inner);
            self.shared.close_in_background(files);
            return Ok((Vec::new(), Vec::new()));
        }
        let mut dirs = Vec::new();
        if dir_dirty {
            dirs.push(self.dir.clone());
        }
        if created && let Some(parent) = self.dir.parent() {
            dirs.push(parent.to_owned());
        }
        Ok((files, dirs))
    }

    /// Deletes the log and its directory (the queue was deleted).
    ///
    /// Its files are unlinked while still open and closed on the closer thread
    /// (`Shared::close_in_background`): deleting a queue of a gigabyte closed 125 segments
    /// on the runtime worker, under the queue's lock, each waiting for the device.
    pub fn destroy(&self) {
        let mut inner = self.lock();
        inner.destroyed = true;
        inner.pending.clear();
        self.forget_unwritten(&mut inner);
        let mut closing: Vec<Arc<dyn FileIo>> = std::mem::take(&mut inner.segments)
            .into_iter()
            .chain(inner.prepared.take())
            .chain(inner.spare.take())
            .map(|s| s.file)
            .collect();
        // Held for the next sync as well: that handle may be the last. Listed once each.
        closing.append(&mut inner.unsynced);
        drop(inner);
        closing.sort_unstable_by_key(|f| Arc::as_ptr(f).cast::<()>() as usize);
        closing.dedup_by(|a, b| Arc::ptr_eq(a, b));
        let _ = self.shared.fs.remove_dir_all(&self.dir);
        self.shared.close_in_background(closing);
    }
}

impl Journal for QueueLog {
    fn flush(&self) -> io::Result<ToSync> {
        QueueLog::flush(self)
    }

    fn removed(&self) -> bool {
        self.lock().destroyed
    }

    fn after_sync(self: Arc<Self>) {
        // One look under the lock for all three: the confirms of this cycle have just woken
        // the runtime worker, which appends to this log under the same lock; each time the
        // sync thread held it when the worker wanted it cost two more thread switches.
        let (wants_next, compaction_due) = {
            let mut inner = self.lock();
            self.settle_superseded(&mut inner);
            let wants = (inner.wants_next_segment(), inner.compaction_due());
            if std::mem::take(&mut inner.collect_after_write) {
                // A collection skipped a segment this cycle may have written: collected
                // again here, or an idle queue would keep it for good.
                self.collect_locked(inner);
            }
            wants
        };
        // Making a file and syncing it takes longer than a sync of appends: it happens beside
        // the sync thread, one at a time per log.
        if wants_next && !self.prepare_queued.swap(true, Ordering::AcqRel) {
            let log = self.clone();
            self.shared.in_background(Box::new(move || {
                log.prepare_queued.store(false, Ordering::Release);
                if let Err(e) = log.prepare_next() {
                    tracing::warn!(error = %e, "cannot prepare the next segment");
                }
            }));
        }
        if compaction_due && let Err(e) = self.compact_paced() {
            tracing::warn!(log = %self.dir.display(), error = %e, "cannot compact a segment");
        }
    }
}

#[cfg(test)]
mod ack_tests;
#[cfg(test)]
mod dir_sync_tests;
#[cfg(test)]
mod read_tests;
#[cfg(test)]
pub(super) mod tests;
#[cfg(test)]
mod unlink_tests;
