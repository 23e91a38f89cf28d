//! A queue's log: the segment files where a durable queue keeps its persistent messages, and
//! where any queue moves messages out of memory.
//!
//! Appends go into an in-memory buffer under the log's lock (no system call on the publish
//! path); the store's sync thread writes the buffer with one `pwrite` and syncs the files
//! (group commit). Segments are deleted from the front once every durable message in them is
//! acknowledged and the queue has read past them.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::intervals::IntervalSet;
use super::record::{self, Decoded, Kind, MessageParts, Record, StoredMessage};
use super::sync::{Journal, Shared, sync_dir};

/// Where a record starts: segment number and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// A queue log.
pub struct QueueLog {
    dir: PathBuf,
    shared: Arc<Shared>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for QueueLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueLog").field("dir", &self.dir).finish()
    }
}

struct Segment {
    index: u64,
    file: Arc<File>,
    /// Preallocated size of the file.
    capacity: u64,
    /// Where the next record goes (bytes written plus bytes pending).
    end: u64,
    /// Durable message records in this segment that are not yet acknowledged.
    live: u64,
    /// Sequence numbers of the first and last durable message records here.
    first_message: u64,
    last_message: u64,
}

impl Segment {
    fn path(dir: &Path, index: u64) -> PathBuf {
        dir.join(format!("{index:016}.seg"))
    }

    fn holds(&self, seq: u64) -> bool {
        self.first_message <= seq && seq <= self.last_message
    }
}

struct Inner {
    /// Oldest first; the last one takes appends.
    segments: VecDeque<Segment>,
    /// Number for the next segment file.
    next_index: u64,
    /// Bytes appended to the head segment and not yet written to its file.
    pending: Vec<u8>,
    /// Offset in the head segment where `pending` starts.
    pending_offset: u64,
    /// Files written since the last sync.
    unsynced: Vec<Arc<File>>,
    /// A directory entry changed (segment created or deleted) since the last sync.
    dir_dirty: bool,
    /// The log's directory itself is new: its entry in the parent directory is synced with
    /// the first sync cycle (by the sync thread, not by whoever declared the queue).
    created: bool,
    /// On the store's list of logs to write and sync.
    registered: bool,
    /// A zero-filled segment made ahead of time by the sync thread.
    prepared: Option<Segment>,
    destroyed: bool,
}

/// What recovering a durable queue's log found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Sequence number for the next message.
    pub next_seq: u64,
    /// Unacknowledged durable messages.
    pub count: u64,
    /// Their body bytes.
    pub bytes: u64,
    /// Where the queue's messages start, and how to read them back.
    pub reader: TailReader,
    /// Damaged bytes cut from the end.
    pub torn: bool,
}

/// Reads a queue's messages back from its log, in order.
#[derive(Debug, Clone, Default)]
pub struct TailReader {
    pub pos: Position,
    /// Up to here the log is what a restart found: only unacknowledged durable messages
    /// count, and paged copies from before the restart are ignored.
    pub recovery_end: Position,
    pub acked: IntervalSet,
    pub delivered: IntervalSet,
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

fn zeroed_file(path: &Path, capacity: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    // Writing the zeros (rather than a sparse set_len) means later fdatasyncs of this file
    // do not have to journal block allocations.
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < capacity {
        let n = (capacity - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

impl QueueLog {
    /// Creates an empty log in `dir`. The first segment is sparse, so declaring a queue
    /// costs no large write; the sync thread zero-fills the segments that follow.
    pub fn create(dir: PathBuf, shared: Arc<Shared>) -> io::Result<Arc<QueueLog>> {
        std::fs::create_dir_all(&dir)?;
        let capacity = shared.segment_bytes;
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(Segment::path(&dir, 0))?,
        );
        file.set_len(capacity)?;
        let head = Segment {
            index: 0,
            file: file.clone(),
            capacity,
            end: 0,
            live: 0,
            first_message: u64::MAX,
            last_message: 0,
        };
        // The new file, its directory and the directory's entry in its parent are synced by
        // the next sync cycle, which everything that depends on this log (the declare-ok of
        // its queue, confirms of its messages) waits for anyway. Whoever creates a queue does
        // no fsync, under no lock.
        let log = Arc::new(QueueLog {
            dir,
            shared: shared.clone(),
            inner: Mutex::new(Inner {
                segments: VecDeque::from([head]),
                next_index: 1,
                pending: Vec::new(),
                pending_offset: 0,
                unsynced: vec![file],
                dir_dirty: true,
                created: true,
                registered: true,
                prepared: None,
                destroyed: false,
            }),
        });
        shared.mark_dirty(log.clone());
        Ok(log)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a record of `len` bytes built by `encode`; returns where it starts and the
    /// store epoch after which it is on disk.
    fn append(
        self: &Arc<Self>,
        len: usize,
        durable_seq: Option<u64>,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> io::Result<(Position, u64)> {
        let mut inner = self.lock();
        if inner.destroyed {
            return Err(io::Error::other("queue log was deleted"));
        }
        let fits = inner
            .segments
            .back()
            .is_some_and(|h| h.end == 0 || h.end + len as u64 <= h.capacity);
        if !fits {
            self.roll_over(&mut inner, len as u64)?;
        }
        let Some(head) = inner.segments.back_mut() else {
            return Err(io::Error::other("queue log has no segment"));
        };
        let pos = Position {
            segment: head.index,
            offset: head.end,
        };
        head.end += len as u64;
        if let Some(seq) = durable_seq {
            head.live += 1;
            head.first_message = head.first_message.min(seq);
            head.last_message = head.last_message.max(seq);
        }
        encode(&mut inner.pending);
        if !inner.registered {
            inner.registered = true;
            self.shared.mark_dirty(self.clone());
        }
        // Read inside the lock: see the protocol on `Journal`.
        Ok((pos, self.shared.epoch()))
    }

    /// Starts a new head segment: writes out what is pending for the old one and opens the
    /// prepared segment, or makes one now if the sync thread has not.
    fn roll_over(&self, inner: &mut Inner, need: u64) -> io::Result<()> {
        Self::write_pending(inner)?;
        let capacity = self.shared.segment_bytes.max(need);
        let next = match inner.prepared.take() {
            Some(p) if p.capacity >= need => p,
            other => {
                if let Some(unused) = other {
                    // Too small for this record: keep it for the one after.
                    inner.prepared = Some(unused);
                }
                let index = inner.next_index;
                inner.next_index += 1;
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(Segment::path(&self.dir, index))?;
                file.set_len(capacity)?;
                Segment {
                    index,
                    file: Arc::new(file),
                    capacity,
                    end: 0,
                    live: 0,
                    first_message: u64::MAX,
                    last_message: 0,
                }
            }
        };
        inner.pending_offset = 0;
        inner.dir_dirty = true;
        inner.segments.push_back(next);
        Ok(())
    }

    /// Writes the pending bytes of the head segment to its file (no sync).
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
        flags: u8,
        expires_at: Option<u64>,
    ) -> io::Result<u64> {
        let kind = if durable { Kind::Message } else { Kind::Paged };
        self.append(
            record::message_len(message, expires_at),
            durable.then_some(seq),
            |out| record::encode_message(out, kind, seq, flags, expires_at, message),
        )
        .map(|(_, epoch)| epoch)
    }

    /// Logs that the durable message `seq` left the queue.
    pub fn ack(self: &Arc<Self>, seq: u64) -> io::Result<()> {
        self.append(record::MARK_LEN, None, |out| {
            record::encode_mark(out, Kind::Ack, seq)
        })?;
        let mut inner = self.lock();
        if let Some(s) = inner.segments.iter_mut().rev().find(|s| s.holds(seq)) {
            s.live = s.live.saturating_sub(1);
        }
        Ok(())
    }

    /// Logs that the durable message `seq` was delivered.
    pub fn delivered(self: &Arc<Self>, seq: u64) -> io::Result<()> {
        self.append(record::MARK_LEN, None, |out| {
            record::encode_mark(out, Kind::Delivered, seq)
        })
        .map(|_| ())
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
    pub fn collect_garbage(&self, read_pos: Option<Position>) {
        let mut inner = self.lock();
        while inner.segments.len() > 1 {
            let Some(front) = inner.segments.front() else {
                break;
            };
            if front.live > 0 || read_pos.is_some_and(|p| p.segment <= front.index) {
                break;
            }
            let index = front.index;
            inner.segments.pop_front();
            let _ = std::fs::remove_file(Segment::path(&self.dir, index));
            inner.dir_dirty = true;
        }
    }

    /// Reads records from `reader.pos` and returns up to about `max_bytes` of the queue's
    /// messages, advancing the reader. An empty result means the log is read to its end.
    pub fn read_back(
        &self,
        reader: &mut TailReader,
        max_bytes: usize,
    ) -> io::Result<Vec<ReadBack>> {
        const CHUNK: u64 = 256 * 1024;
        let segments: Vec<(u64, Arc<File>, u64)> = {
            let mut inner = self.lock();
            Self::write_pending(&mut inner)?;
            inner
                .segments
                .iter()
                .filter(|s| s.index >= reader.pos.segment)
                .map(|s| (s.index, s.file.clone(), s.end))
                .collect()
        };
        let mut out = Vec::new();
        let mut got = 0usize;
        for (index, file, end) in segments {
            if index > reader.pos.segment {
                reader.pos = Position {
                    segment: index,
                    offset: 0,
                };
            }
            while reader.pos.offset < end {
                if got >= max_bytes {
                    return Ok(out);
                }
                let len = (end - reader.pos.offset).min(CHUNK) as usize;
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, reader.pos.offset)?;
                let buf = Bytes::from(buf);
                let mut at = 0usize;
                while let Some((_, _, len)) = record::peek(&buf[at..]) {
                    if at + len > buf.len() || got >= max_bytes {
                        break;
                    }
                    if let Some(r) = Self::take(reader, &buf.slice(at..at + len), &mut got) {
                        out.push(r);
                    }
                    at += len;
                    reader.pos.offset += len as u64;
                }
                if at == 0 && got < max_bytes {
                    match record::peek(&buf) {
                        // One record larger than a chunk: read exactly it.
                        Some((_, _, len)) => {
                            let mut big = vec![0u8; len];
                            file.read_exact_at(&mut big, reader.pos.offset)?;
                            if let Some(r) = Self::take(reader, &Bytes::from(big), &mut got) {
                                out.push(r);
                            }
                            reader.pos.offset += len as u64;
                        }
                        // Nothing readable before the recorded end: skip to it.
                        None => reader.pos.offset = end,
                    }
                }
            }
        }
        Ok(out)
    }

    /// Whether the record is one of the queue's messages; decodes it if so.
    fn take(reader: &TailReader, bytes: &Bytes, got: &mut usize) -> Option<ReadBack> {
        let recovered_region = reader.pos < reader.recovery_end;
        let Decoded::Record(record, _) = record::decode(bytes) else {
            return None;
        };
        let (seq, flags, stored, durable) = match record {
            Record::Message {
                seq,
                flags,
                message,
            } => (seq, flags, message, true),
            Record::Paged {
                seq,
                flags,
                message,
            } if !recovered_region => (seq, flags, message, false),
            _ => return None,
        };
        if recovered_region && reader.acked.contains(seq) {
            return None;
        }
        let redelivered = flags & record::FLAG_REDELIVERED != 0 || reader.delivered.contains(seq);
        let expires_at = stored.expires_at;
        *got += stored.body.len() + stored.properties.len() + 64;
        Some(ReadBack {
            seq,
            message: stored,
            persisted: durable || flags & record::FLAG_PERSISTED != 0,
            redelivered,
            expires_at,
        })
    }

    /// Writes pending bytes and returns the files to sync. Called by the sync thread.
    pub(super) fn flush(&self) -> io::Result<(Vec<Arc<File>>, Vec<PathBuf>)> {
        let mut inner = self.lock();
        inner.registered = false;
        if inner.destroyed {
            inner.pending.clear();
            return Ok((Vec::new(), Vec::new()));
        }
        Self::write_pending(&mut inner)?;
        let files = std::mem::take(&mut inner.unsynced);
        let mut dirs = Vec::new();
        if std::mem::take(&mut inner.dir_dirty) {
            dirs.push(self.dir.clone());
        }
        if std::mem::take(&mut inner.created)
            && let Some(parent) = self.dir.parent()
        {
            dirs.push(parent.to_owned());
        }
        Ok((files, dirs))
    }

    /// Makes the next segment ahead of time when the head is half full. Called by the sync
    /// thread, outside the publish path.
    pub(super) fn prepare_next(&self) -> io::Result<()> {
        let index = {
            let mut inner = self.lock();
            let Some(head) = inner.segments.back() else {
                return Ok(());
            };
            if inner.destroyed || inner.prepared.is_some() || head.end < head.capacity / 2 {
                return Ok(());
            }
            let index = inner.next_index;
            inner.next_index += 1;
            index
        };
        let capacity = self.shared.segment_bytes;
        let file = zeroed_file(&Segment::path(&self.dir, index), capacity)?;
        let mut inner = self.lock();
        if inner.destroyed {
            return Ok(());
        }
        let head_index = inner.segments.back().map_or(0, |h| h.index);
        let index = if index < head_index {
            // The log rolled over meanwhile: give the prepared file the next number.
            let renumbered = inner.next_index;
            inner.next_index += 1;
            std::fs::rename(
                Segment::path(&self.dir, index),
                Segment::path(&self.dir, renumbered),
            )?;
            renumbered
        } else {
            index
        };
        inner.dir_dirty = true;
        inner.prepared = Some(Segment {
            index,
            file: Arc::new(file),
            capacity,
            end: 0,
            live: 0,
            first_message: u64::MAX,
            last_message: 0,
        });
        Ok(())
    }

    /// Deletes the log and its directory (the queue was deleted).
    pub fn destroy(&self) {
        let mut inner = self.lock();
        inner.destroyed = true;
        inner.pending.clear();
        inner.segments.clear();
        inner.prepared = None;
        drop(inner);
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Opens the log of a durable queue after a restart: checks every record, cuts a torn
    /// tail, and works out which messages are still to be delivered.
    pub fn recover(dir: PathBuf, shared: Arc<Shared>) -> io::Result<(Arc<QueueLog>, Recovered)> {
        let indices = segment_indices(&dir)?;
        let mut recovered = Recovered::default();
        let mut marks = Marks::default();
        let mut segments: VecDeque<Segment> = VecDeque::new();
        for (i, &index) in indices.iter().enumerate() {
            let (seg, torn) = scan_segment(&dir, index, &mut marks, &mut recovered)?;
            segments.push_back(seg);
            if torn {
                recovered.torn = true;
                // Nothing after a torn record was ever synced: drop later segments.
                for &later in &indices[i + 1..] {
                    let _ = std::fs::remove_file(Segment::path(&dir, later));
                }
                break;
            }
        }
        let Marks {
            mut acked,
            delivered,
        } = marks;
        for seg in segments.iter_mut() {
            if seg.live > 0 {
                seg.live -= acked.count_in(seg.first_message, seg.last_message);
            }
        }
        count_unacked(&segments, &acked, &mut recovered)?;
        // Drop fully acknowledged segments at the front.
        while segments.len() > 1 && segments.front().is_some_and(|s| s.live == 0) {
            if let Some(s) = segments.pop_front() {
                let _ = std::fs::remove_file(Segment::path(&dir, s.index));
            }
        }
        if segments.is_empty() {
            let log = QueueLog::create(dir, shared)?;
            return Ok((log, recovered));
        }
        let first = segments.front().map_or(0, |s| s.index);
        if let Some(s) = segments.front()
            && s.first_message != u64::MAX
        {
            acked.remove_below(s.first_message);
        }
        let head = segments.back().map_or((0, 0), |h| (h.index, h.end));
        recovered.reader = TailReader {
            pos: Position {
                segment: first,
                offset: 0,
            },
            recovery_end: Position {
                segment: head.0,
                offset: head.1,
            },
            acked,
            delivered,
        };
        sync_dir(&dir)?;
        let log = Arc::new(QueueLog {
            dir,
            shared,
            inner: Mutex::new(Inner {
                segments,
                next_index: head.0 + 1,
                pending: Vec::new(),
                pending_offset: head.1,
                unsynced: Vec::new(),
                dir_dirty: false,
                created: false,
                registered: false,
                prepared: None,
                destroyed: false,
            }),
        });
        Ok((log, recovered))
    }
}

/// Ack and Delivered marks found while recovering a log.
#[derive(Default)]
struct Marks {
    acked: IntervalSet,
    delivered: IntervalSet,
}

/// The segment numbers in a log directory, in order.
fn segment_indices(dir: &Path) -> io::Result<Vec<u64>> {
    let mut indices: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse::<u64>().ok()
        })
        .collect();
    indices.sort_unstable();
    Ok(indices)
}

/// Reads one segment's records: counts its messages, collects marks, and finds where its
/// written part ends. Returns the segment and whether it ended in a torn record (which is cut:
/// zeroed, so later appends are not followed by its remains).
fn scan_segment(
    dir: &Path,
    index: u64,
    marks: &mut Marks,
    recovered: &mut Recovered,
) -> io::Result<(Segment, bool)> {
    let path = Segment::path(dir, index);
    let file = OpenOptions::new().read(true).write(true).open(&path)?;
    let capacity = file.metadata()?.len();
    let data = Bytes::from(std::fs::read(&path)?);
    let mut seg = Segment {
        index,
        file: Arc::new(file),
        capacity,
        end: 0,
        live: 0,
        first_message: u64::MAX,
        last_message: 0,
    };
    let mut at = 0usize;
    let mut torn = false;
    loop {
        match record::decode(&data.slice(at..)) {
            Decoded::Record(r, len) => {
                match r {
                    Record::Message { seq, .. } => {
                        seg.live += 1;
                        seg.first_message = seg.first_message.min(seq);
                        seg.last_message = seg.last_message.max(seq);
                        recovered.next_seq = recovered.next_seq.max(seq + 1);
                    }
                    Record::Paged { seq, .. } => {
                        recovered.next_seq = recovered.next_seq.max(seq + 1);
                    }
                    Record::Ack { seq } => marks.acked.insert(seq),
                    Record::Delivered { seq } => marks.delivered.insert(seq),
                }
                at += len;
            }
            Decoded::End => break,
            Decoded::Torn => {
                let zeros = vec![0u8; (capacity as usize).saturating_sub(at)];
                seg.file.write_all_at(&zeros, at as u64)?;
                seg.file.sync_data()?;
                torn = true;
                break;
            }
        }
    }
    seg.end = at as u64;
    Ok((seg, torn))
}

/// Counts the unacknowledged durable messages, and their body bytes, in segments that have
/// any.
fn count_unacked(
    segments: &VecDeque<Segment>,
    acked: &IntervalSet,
    recovered: &mut Recovered,
) -> io::Result<()> {
    for seg in segments {
        if seg.live == 0 {
            continue;
        }
        let mut buf = vec![0u8; seg.end as usize];
        seg.file.read_exact_at(&mut buf, 0)?;
        let buf = Bytes::from(buf);
        let mut at = 0usize;
        while let Decoded::Record(r, len) = record::decode(&buf.slice(at..)) {
            if let Record::Message { seq, message, .. } = r
                && !acked.contains(seq)
            {
                recovered.count += 1;
                recovered.bytes += message.body.len() as u64;
            }
            at += len;
        }
    }
    Ok(())
}

impl Journal for QueueLog {
    fn flush(&self) -> io::Result<(Vec<Arc<File>>, Vec<PathBuf>)> {
        QueueLog::flush(self)
    }

    fn after_sync(self: Arc<Self>) {
        if let Err(e) = self.prepare_next() {
            tracing::warn!(error = %e, "cannot prepare the next segment");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn body(i: u64) -> Vec<u8> {
        let mut body = vec![b'x'; 1000];
        body[..8].copy_from_slice(&i.to_be_bytes());
        body
    }

    fn store() -> (Store, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "lepus-log-{}",
            crate::auth::random::random_suffix()
        ));
        (Store::open(&dir, 64 * 1024).unwrap(), dir)
    }

    #[test]
    fn paged_records_read_back_in_order_across_segments() {
        let (store, dir) = store();
        let log = store.create_paging_log().unwrap();
        let mut reader = TailReader::default();
        for i in 0..500 {
            let body = body(i);
            let parts = MessageParts {
                exchange: b"",
                routing_key: b"q",
                properties: &[0, 0],
                body: &body,
            };
            log.append_message(i, &parts, false, 0, None).unwrap();
        }
        let mut seen = 0u64;
        loop {
            let batch = log.read_back(&mut reader, 100_000).unwrap();
            if batch.is_empty() {
                break;
            }
            for m in batch {
                assert_eq!(m.seq, seen);
                assert_eq!(
                    u64::from_be_bytes(m.message.body[..8].try_into().unwrap()),
                    seen
                );
                seen += 1;
            }
        }
        assert_eq!(seen, 500);
        store.close();
        let _ = std::fs::remove_dir_all(dir);
    }
}
