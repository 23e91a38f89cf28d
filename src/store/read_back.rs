//! Reading a queue log back from where its tail reader stands: the messages the queue keeps
//! on disk (its tail, or a paged level), batch by batch, outside the queue's lock.

use std::io;
use std::sync::Arc;

use bytes::Bytes;

use super::fs::FileIo;
use super::log::{Found, Position, QueueLog, ReadBack, TailReader};
use super::record::{self, Decoded, Record, Seal};

/// Both are binary searches of `skip`, which recovery makes in log order: scanned whole for
/// each chunk read, as they were, a log with many damaged stretches cost their number for
/// every chunk of a drain (found by review).
impl Found {
    /// Where the damaged stretch starting at `pos` ends, if one does.
    fn damage_at(&self, pos: Position) -> Option<Position> {
        let at = self.skip.partition_point(|(from, _)| *from < pos);
        self.skip
            .get(at)
            .filter(|(from, _)| *from == pos)
            .map(|&(_, past)| past)
    }

    /// The offset of the next damaged stretch in `pos`'s segment after `pos`, if any.
    fn damage_after(&self, pos: Position) -> Option<u64> {
        let at = self.skip.partition_point(|(from, _)| *from <= pos);
        self.skip
            .get(at)
            .filter(|(from, _)| from.segment == pos.segment)
            .map(|(from, _)| from.offset)
    }
}

/// The first position (segment, offset) not yet in its file, as a read found it
/// (`Inner::first_unwritten`): bytes from there on may be in memory only.
type Written = Option<(u64, u64)>;

/// Whether the bytes of segment `index` up to `end` were all in the file when `written`
/// was found.
fn in_file(written: Written, index: u64, end: u64) -> bool {
    written.is_none_or(|(first, at)| index < first || (index == first && end <= at))
}

/// Segments to read: each one's number, file, length and seal.
type Segments = Vec<(u64, Arc<dyn FileIo>, u64, Seal)>;

impl QueueLog {
    /// Reads `len` bytes of segment `index` at `offset` into a buffer of their own, as
    /// [`QueueLog::read_range`] does; from the file alone without zeroing the buffer first
    /// when they are all in it, which is every read but the last few of a head segment.
    fn read_vec(
        &self,
        index: u64,
        file: &Arc<dyn FileIo>,
        written: Written,
        len: usize,
        offset: u64,
    ) -> io::Result<Vec<u8>> {
        let end = offset + len as u64;
        if in_file(written, index, end) {
            return file.read_exact_vec_at(len, offset);
        }
        let mut buf = vec![0u8; len];
        self.read_range(index, file, written, &mut buf, offset)?;
        Ok(buf)
    }

    /// Reads `buf.len()` bytes of segment `index` at `offset`: from the file up to where it
    /// was written, from memory (the bytes not yet written) after that. Only a read that reaches past
    /// what was written when the read began takes the lock again, and copies only the bytes
    /// it needs: copying the whole pending buffer for every read cost a drain 5-7% of the
    /// broker's time.
    fn read_range(
        &self,
        index: u64,
        file: &Arc<dyn FileIo>,
        written: Written,
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if in_file(written, index, end) {
            return file.read_exact_at(buf, offset);
        }
        // Bytes before `unwritten_from` are in the file; the rest are copied from memory
        // under this lock, which the sync thread takes before it drops what it wrote.
        let inner = self.lock();
        let split = inner.unwritten_from(index).clamp(offset, end);
        let from_file = (split - offset) as usize;
        if from_file < buf.len() {
            inner.copy_unwritten(index, split, &mut buf[from_file..])?;
        }
        drop(inner);
        if from_file > 0 {
            file.read_exact_at(&mut buf[..from_file], offset)?;
        }
        Ok(())
    }
}

/// A buffer read back, shared as it is: for reads whose messages are dropped at once (a
/// purge reading the tail through to log its acks) and for tests.
pub fn uncharged(data: Vec<u8>) -> Bytes {
    Bytes::from(data)
}

impl QueueLog {
    /// Reads records from `reader.pos` and returns up to about `max_bytes` of the queue's
    /// messages, advancing the reader. An empty result means the log is read to its end.
    /// The messages are slices of the buffers the log is read into, each made shared by
    /// `buffer` (which may charge it to the broker's memory gauge).
    pub fn read_back(
        &self,
        reader: &mut TailReader,
        max_bytes: usize,
        buffer: &dyn Fn(Vec<u8>) -> Bytes,
    ) -> io::Result<Vec<ReadBack>> {
        // A read of nothing would find nothing in every window, and never end.
        let max_bytes = max_bytes.max(1);
        loop {
            let (segments, written, more) = self.segments_from(reader.pos, max_bytes);
            let result = self.read_segments(reader, max_bytes, &segments, written, buffer);
            // A segment deleted meanwhile (the queue was, or its tail moved on under the
            // lock) is closed by the closer if this read held it last: not here, on a
            // runtime worker.
            self.shared
                .close_in_background(segments.into_iter().map(|s| s.1).collect());
            // Segments of acks and marks alone hold no messages: read on past them.
            match result {
                Ok(batch) if batch.is_empty() && more => continue,
                result => return result,
            }
        }
    }

    /// The segments a read from `pos` of up to `max_bytes` needs: the one `pos` is in and
    /// those after it, until they hold `max_bytes` (each one's number, file, length and
    /// seal); where the head's file ends; and whether more segments follow. Taking every
    /// later segment, as reads did, made each batch of a drain cost as much as the backlog
    /// has segments (a 100 GB backlog has 12,800), and a whole drain their square.
    fn segments_from(&self, pos: Position, max_bytes: usize) -> (Segments, Written, bool) {
        // Bytes not yet written are read from the buffer itself: reading never writes, so it
        // works on a disk that refuses writes.
        let inner = self.lock();
        let first = inner.segments.partition_point(|s| s.index < pos.segment);
        let mut segments = Vec::new();
        let mut bytes = 0u64;
        for s in inner.segments.range(first..) {
            segments.push((s.index, s.file.clone(), s.end, s.seal));
            let from = if s.index == pos.segment {
                pos.offset
            } else {
                0
            };
            bytes += s.end.saturating_sub(from);
            if bytes >= max_bytes as u64 {
                break;
            }
        }
        let more = first + segments.len() < inner.segments.len();
        let written = inner.first_unwritten();
        (segments, written, more)
    }

    /// [`QueueLog::read_back`] from `segments`: each one's number, file, length and seal.
    fn read_segments(
        &self,
        reader: &mut TailReader,
        max_bytes: usize,
        segments: &[(u64, Arc<dyn FileIo>, u64, Seal)],
        written: Written,
        buffer: &dyn Fn(Vec<u8>) -> Bytes,
    ) -> io::Result<Vec<ReadBack>> {
        const CHUNK: u64 = 256 * 1024;
        let read_at = |index: u64, file: &Arc<dyn FileIo>, len: usize, offset: u64| {
            self.read_vec(index, file, written, len, offset)
        };
        // Room for a batch of 1 KiB messages: growing the vector from empty moved every
        // message read back seven times over.
        let mut out = Vec::with_capacity((max_bytes / 1024).clamp(16, 1024));
        let mut got = 0usize;
        for &(index, ref file, end, seal) in segments {
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
                if let Some(past) = reader.found.damage_at(reader.pos) {
                    reader.pos = past;
                    continue;
                }
                let len = (end - reader.pos.offset).min(CHUNK) as usize;
                let buf = buffer(read_at(index, file, len, reader.pos.offset)?);
                let mut at = 0usize;
                // Stop this chunk where a damaged stretch starts.
                let stop = reader
                    .found
                    .damage_after(reader.pos)
                    .map_or(buf.len(), |from| (from - reader.pos.offset) as usize);
                let buf = buf.slice(..stop.min(buf.len()));
                while let Some((_, _, len)) = record::peek(&buf[at..]) {
                    if at + len > buf.len() || got >= max_bytes {
                        break;
                    }
                    if let Some(r) = Self::take(reader, &buf, at, seal, &mut got) {
                        out.push(r);
                    }
                    at += len;
                    reader.pos.offset += len as u64;
                }
                if at == 0 && got < max_bytes {
                    match record::peek(&buf) {
                        // One record larger than a chunk: read exactly it. Its length comes
                        // off the disk, so it is allocated only if the segment holds it.
                        Some((_, _, len)) if reader.pos.offset + len as u64 <= end => {
                            let big = read_at(index, file, len, reader.pos.offset)?;
                            if let Some(r) = Self::take(reader, &buffer(big), 0, seal, &mut got) {
                                out.push(r);
                            }
                            reader.pos.offset += len as u64;
                        }
                        // Nothing readable before the recorded end: skip to it.
                        // Zeros are padding (see `roll_over`); anything else is damage.
                        None if buf.iter().take(record::HEADER_LEN).all(|&b| b == 0) => {
                            reader.pos.offset = end;
                        }
                        _ => {
                            tracing::error!(
                                segment = index,
                                offset = reader.pos.offset,
                                bytes = end - reader.pos.offset,
                                "a queue log holds no record where one should start (or one longer than the segment); the rest of the segment is skipped"
                            );
                            reader.pos.offset = end;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Whether the record at `buf[at..]` is one of the queue's messages; decodes it if so.
    fn take(
        reader: &TailReader,
        buf: &Bytes,
        at: usize,
        seal: Seal,
        got: &mut usize,
    ) -> Option<ReadBack> {
        let recovered_region = reader.pos < reader.recovery_end;
        let record = match record::decode_at(buf, at, seal) {
            Decoded::Record(record, _) => record,
            Decoded::Torn => {
                // Written whole (its length is right) but no longer what was written: the
                // disk changed it after it was read at start, or a write of it failed.
                tracing::error!(
                    segment = reader.pos.segment,
                    offset = reader.pos.offset,
                    "a record of a queue log fails its checksum when read back; its message is skipped"
                );
                return None;
            }
            Decoded::End => return None,
        };
        let (seq, flags, mut stored, durable) = match record {
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
        let found = &reader.found;
        if recovered_region {
            if found.acked.contains(seq) {
                return None;
            }
            if let Some(&count) = found.returned.get(&seq) {
                stored.delivery_count = stored.delivery_count.max(count);
            }
        }
        let redelivered = flags & record::FLAG_REDELIVERED != 0 || found.delivered.contains(seq);
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
}
