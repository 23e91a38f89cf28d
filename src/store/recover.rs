//! Recovering a durable queue's log after a restart.
//!
//! Every record is length-prefixed and checksummed, so a damaged record is found, and what
//! follows it can be found again: the scan *resynchronises* on the next offset where a
//! complete record with a matching checksum starts. Damage in the middle of a log loses the
//! damaged bytes only; it is reported (queue, segment, offset, bytes) and the reader skips
//! it. Only a torn *tail*, damage with nothing valid after it in the last segment, is cut.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::fs::{Fs, OpenMode};
use super::intervals::IntervalSet;
use super::log::{
    Found, Inner, Position, QueueLog, ReadBack, Recovered, Registered, Segment, TailReader,
};
use super::record::{self, Decoded, Record, Seal, StoredMessage};
use super::sync::Shared;

/// Ack, Delivered, Held and Returned marks found while recovering a log.
#[derive(Default)]
struct Marks {
    acked: IntervalSet,
    delivered: IntervalSet,
    /// The latest delivery count of each message returned to its place, and the segment
    /// of that mark.
    returned: BTreeMap<u64, (u32, u64)>,
    /// Held dead letters and the reason byte of their mark. Few: a letter is held until its
    /// queues have it.
    held: BTreeMap<u64, u8>,
}

/// What walking a segment's bytes found.
#[derive(Debug, Default)]
pub(super) struct Walk {
    /// Where the records end (after the last valid one).
    end: usize,
    /// Damaged stretches between valid records: (start, end).
    damaged: Vec<(usize, usize)>,
    /// Something other than zeros lies after the last valid record.
    dirty_tail: bool,
    /// Bytes checksummed looking for records past damage (see [`resync`]).
    resync_checked: usize,
    /// The highest number of a record of the segment found looking past damage but not
    /// taken (nothing valid followed it): its number must not be used again. An append that
    /// happened to end where it starts would make it read as valid at the next start, and an
    /// old Ack there would acknowledge the new message under its number.
    untaken_seq: Option<u64>,
}

/// The message number a record is about.
fn seq_of(record: &Record) -> u64 {
    match *record {
        Record::Message { seq, .. }
        | Record::Paged { seq, .. }
        | Record::Ack { seq }
        | Record::Delivered { seq }
        | Record::Held { seq, .. }
        | Record::Returned { seq, .. } => seq,
    }
}

/// What looking for records past damage may checksum, per byte of the segment, before the
/// rest of the segment is taken for a damaged tail: enough for any real damage (random bytes
/// rarely pass the cheap checks), and a bound on what bytes made to pass them cost, such as
/// bodies a publisher filled with headers of records a megabyte long, each followed by
/// another (without it, terabytes of checksums at every start).
const RESYNC_CHECKED_PER_BYTE: usize = 8;
/// ...and at least this much, for small segments.
const RESYNC_CHECKED_MIN_BYTES: usize = 64 << 20;

/// Whether a record could start at `data[at..]`: a length that fits and a known kind.
fn plausible_at(data: &[u8], at: usize) -> bool {
    let Some(header) = data.get(at..at + record::HEADER_LEN + 1) else {
        return false;
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    len >= 9
        && at + record::HEADER_LEN + len <= data.len()
        && matches!(header[record::HEADER_LEN], 1 | 2 | 3 | 5 | 6 | 7)
}

/// The next offset from `from` where a record of the segment sealed `seal` starts, if any.
/// A candidate must have a plausible header (a length that fits, a known kind) before its
/// checksum is computed, so scanning garbage stays cheap.
///
/// What is scanned may be message bodies, which publishers write: a candidate is taken
/// only when what follows it is a record of the segment too, or the end of its data. A
/// record forged in a body (its seal guessed, 2^-32 per try) must then end exactly where a
/// real record starts or the data ends: one try per body, not one per byte of it. A real
/// record followed by damage is lost with the damage.
///
/// Checksums are the cost: a candidate is checksummed only if what would follow it could be
/// a record too, or is zeros, and all of it within `walk.resync_checked`'s budget; past the
/// budget, `None` (the rest is a damaged tail). `zeros_from` is where the data's trailing
/// zeros start.
fn resync(
    data: &Bytes,
    seal: Seal,
    from: usize,
    zeros_from: usize,
    walk: &mut Walk,
) -> Option<usize> {
    let budget = (RESYNC_CHECKED_PER_BYTE * data.len()).max(RESYNC_CHECKED_MIN_BYTES);
    let mut at = from;
    while at + record::HEADER_LEN + 9 <= data.len() {
        if plausible_at(data, at) {
            let len =
                u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
            let next = at + record::HEADER_LEN + len;
            if next >= zeros_from || plausible_at(data, next) {
                walk.resync_checked += len;
                if walk.resync_checked > budget {
                    return None;
                }
                if let Decoded::Record(r, n) =
                    record::decode_resynchronising(&data.slice(at..), seal)
                {
                    if followed_by_record_or_end(data, at + n, seal, zeros_from) {
                        return Some(at);
                    }
                    walk.untaken_seq = walk.untaken_seq.max(Some(seq_of(&r)));
                }
            }
        }
        at += 1;
    }
    None
}

/// Whether `data[at..]` is empty, all zeros, or starts with a record of the segment.
fn followed_by_record_or_end(data: &Bytes, at: usize, seal: Seal, zeros_from: usize) -> bool {
    at >= zeros_from
        || matches!(
            record::decode_resynchronising(&data.slice(at..), seal),
            Decoded::Record(..)
        )
}

/// Calls `found` for every valid record of the segment sealed `seal`, in order, with its
/// bytes, skipping damage.
pub(super) fn walk(data: &Bytes, seal: Seal, mut found: impl FnMut(Record, &[u8])) -> Walk {
    let mut walk = Walk::default();
    // Where the trailing zeros start: whether the rest is zeros is asked after every damage.
    let zeros_from = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut at = 0usize;
    loop {
        match record::decode(&data.slice(at..), seal) {
            Decoded::Record(r, len) => {
                found(r, &data[at..at + len]);
                at += len;
                walk.end = at;
            }
            Decoded::End | Decoded::Torn => {
                if at >= zeros_from {
                    break;
                }
                match resync(data, seal, at + 1, zeros_from, &mut walk) {
                    Some(next) => {
                        walk.damaged.push((at, next));
                        at = next;
                    }
                    None => {
                        walk.dirty_tail = true;
                        break;
                    }
                }
            }
        }
    }
    walk
}

/// The segment numbers in a log directory, in order.
fn segment_indices(fs: &dyn Fs, dir: &Path) -> io::Result<Vec<u64>> {
    let mut indices: Vec<u64> = fs
        .read_dir(dir)?
        .into_iter()
        .filter_map(|name| name.strip_suffix(".seg")?.parse::<u64>().ok())
        .collect();
    indices.sort_unstable();
    Ok(indices)
}

impl QueueLog {
    /// Opens the log of a durable queue after a restart: checks every record, skips and
    /// reports damage, cuts a torn tail, and works out which messages are still to be
    /// delivered.
    pub fn recover(dir: PathBuf, shared: Arc<Shared>) -> io::Result<(Arc<QueueLog>, Recovered)> {
        let fs = shared.fs.clone();
        for name in fs.read_dir(&dir)? {
            if name.ends_with(".tmp") {
                // A compaction that did not finish: the segment it was rewriting is intact,
                // and the copy is never read (a disk refusing to delete it must not keep
                // the queue from starting).
                let path = dir.join(&name);
                if let Err(e) = fs.remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot delete an unfinished compaction copy");
                }
            }
        }
        let indices = segment_indices(&*fs, &dir)?;
        let mut recovered = Recovered::default();
        let mut marks = Marks::default();
        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut skip: Vec<(Position, Position)> = Vec::new();
        let mut ceiling = 0;
        for (i, &index) in indices.iter().enumerate() {
            let last = i + 1 == indices.len();
            let mut seg = scan_segment(
                &shared,
                &dir,
                index,
                last,
                &mut marks,
                &mut recovered,
                &mut skip,
            )?;
            if seg.messages > 0 {
                ceiling = ceiling.max(seg.last_message);
            }
            seg.ceiling = ceiling;
            segments.push_back(seg);
        }
        count_unacked(&*fs, &dir, &mut segments, &marks, &mut recovered)?;
        let returned_at = marks.latest_returned(&mut segments);
        drop_acknowledged_front(&*fs, &dir, &mut segments);
        if segments.is_empty() {
            let log = QueueLog::create(dir, shared, true)?;
            return Ok((log, recovered));
        }
        let first = segments.front().map_or(0, |s| s.index);
        if let Some(s) = segments.front()
            && s.first_message != u64::MAX
        {
            marks.acked.remove_below(s.first_message);
        }
        skip.retain(|(from, _)| from.segment >= first);
        let head = segments.back().map_or((0, 0), |h| (h.index, h.end));
        let acked = marks.acked.clone();
        recovered.reader = TailReader {
            pos: Position {
                segment: first,
                offset: 0,
            },
            recovery_end: Position {
                segment: head.0,
                offset: head.1,
            },
            found: Arc::new(marks.found(&recovered.held, skip)),
        };
        fs.sync_dir(&dir)?;
        let log = Arc::new(QueueLog {
            dir,
            durable: true,
            prepare_queued: std::sync::atomic::AtomicBool::new(false),
            shared,
            inner: Mutex::new(Inner {
                segments,
                next_index: head.0 + 1,
                pending: Vec::new(),
                pending_offset: head.1,
                unwritten: std::collections::VecDeque::new(),
                spare_pending: Vec::new(),
                collect_after_write: false,
                unsynced: Vec::new(),
                dir_dirty: false,
                created: false,
                registered: Registered::No,
                prepared: None,
                spare: None,
                unlink_retry_at: None,
                destroyed: false,
                acked,
                // The queue reads its recovered messages from the front: compaction waits.
                read_pos: Some(Position {
                    segment: first,
                    offset: 0,
                }),
                last_compaction: None,
                superseded: std::collections::VecDeque::new(),
                returned_at,
            }),
        });
        Ok((log, recovered))
    }
}

impl Marks {
    /// What the reader of the recovered region needs. It passes over the held letters as
    /// over acknowledged messages (they were read at recovery): only its copy of the marks
    /// says so; the log keeps their records.
    fn found(self, held: &[(ReadBack, u8)], skip: Vec<(Position, Position)>) -> Found {
        let Marks {
            mut acked,
            delivered,
            mut returned,
            ..
        } = self;
        for (m, _) in held {
            acked.insert(m.seq);
        }
        returned.retain(|&seq, _| !acked.contains(seq));
        Found {
            acked,
            delivered,
            returned: returned
                .into_iter()
                .map(|(seq, (count, _))| (seq, count))
                .collect(),
            skip,
        }
    }

    /// Where the latest Returned mark of each unacknowledged message is; counts the other
    /// marks of each segment as stale (`store::returned`).
    fn latest_returned(&self, segments: &mut VecDeque<Segment>) -> HashMap<u64, u64> {
        let latest: HashMap<u64, u64> = self
            .returned
            .iter()
            .filter(|&(&seq, _)| !self.acked.contains(seq))
            .map(|(&seq, &(_, index))| (seq, index))
            .collect();
        let mut current: HashMap<u64, u64> = HashMap::new();
        for index in latest.values() {
            *current.entry(*index).or_default() += 1;
        }
        for seg in segments.iter_mut() {
            let kept = current.get(&seg.index).copied().unwrap_or(0);
            seg.stale_marks = seg.returned_marks.saturating_sub(kept);
        }
        latest
    }
}

/// Reads one segment's records: counts its messages, collects marks, notes damage, and finds
/// where its records end. A torn tail of the last segment is cut when the log moves on (it
/// takes no appends, see below); earlier segments are never changed.
fn scan_segment(
    shared: &Shared,
    dir: &Path,
    index: u64,
    last: bool,
    marks: &mut Marks,
    recovered: &mut Recovered,
    skip: &mut Vec<(Position, Position)>,
) -> io::Result<Segment> {
    let fs = &*shared.fs;
    let path = Segment::path(dir, index);
    let file = fs.open(&path, OpenMode::EXISTING)?;
    let capacity = file.len()?;
    let data = Bytes::from(fs.read(&path)?);
    let seal = shared.seals.recovered(index, |seal| {
        matches!(record::decode(&data, seal), Decoded::Record(..))
    });
    let mut seg = Segment::empty(index, file, capacity, seal);
    let walk = walk(&data, seal, |r, _| match r {
        Record::Message { seq, .. } => {
            seg.live += 1;
            seg.messages += 1;
            seg.first_message = seg.first_message.min(seq);
            seg.last_message = seg.last_message.max(seq);
            recovered.next_seq = recovered.next_seq.max(seq + 1);
        }
        // Marks count too: once the messages they mark are gone from the log, they may be
        // all that says which numbers were used, and a number used again under an old Ack
        // would read as acknowledged at the next start.
        Record::Paged { seq, .. } => recovered.next_seq = recovered.next_seq.max(seq + 1),
        Record::Ack { seq } => {
            marks.acked.insert(seq);
            recovered.next_seq = recovered.next_seq.max(seq + 1);
        }
        Record::Delivered { seq } => {
            marks.delivered.insert(seq);
            recovered.next_seq = recovered.next_seq.max(seq + 1);
        }
        Record::Held { seq, reason } => {
            marks.held.insert(seq, reason);
            recovered.next_seq = recovered.next_seq.max(seq + 1);
        }
        Record::Returned {
            seq,
            delivery_count,
        } => {
            // Counts only grow: the largest is the latest, whatever order compaction left.
            seg.returned_marks += 1;
            let latest = marks.returned.entry(seq).or_default();
            if delivery_count >= latest.0 {
                *latest = (delivery_count, index);
            }
            recovered.next_seq = recovered.next_seq.max(seq + 1);
        }
    });
    for &(from, to) in &walk.damaged {
        tracing::error!(
            log = %dir.display(),
            segment = index,
            offset = from,
            bytes = to - from,
            "skipping damaged records in a queue log; the records after them are kept"
        );
        recovered.damaged_regions += 1;
        recovered.damaged_bytes += (to - from) as u64;
        let at = |offset: usize| Position {
            segment: index,
            offset: offset as u64,
        };
        skip.push((at(from), at(to)));
    }
    if let Some(seq) = walk.untaken_seq {
        recovered.next_seq = recovered.next_seq.max(seq.saturating_add(1));
    }
    seg.end = walk.end as u64;
    if walk.dirty_tail {
        if last {
            // A torn write at the end (nothing after it was ever synced), or a reused
            // file's earlier records: cut. The bytes stay (a broker restarted on a full disk
            // must come up, and a reused segment would cost a segment of zeros), but nothing
            // is appended over them: a record ending where one of the tail starts would make
            // it read, and `untaken_seq` notes only the numbers of records the scan checked
            // (one followed by a lost page is not). The log moves on at its next append,
            // and the file is cut to the records' end then (`Inner::end_head_tail`).
            seg.stale_tail = true;
            seg.closed = true;
            recovered.torn = true;
        } else {
            tracing::error!(
                log = %dir.display(),
                segment = index,
                offset = walk.end,
                "damaged records at the end of a segment, skipped; later segments are kept"
            );
            recovered.damaged_regions += 1;
            recovered.damaged_bytes += capacity.saturating_sub(walk.end as u64);
        }
    }
    Ok(seg)
}

/// Counts the unacknowledged durable messages, and their body bytes, and sets each
/// segment's live count exactly (after compaction a segment's sequence range has gaps, so
/// acks in its range are not all its own).
fn count_unacked(
    fs: &dyn Fs,
    dir: &Path,
    segments: &mut VecDeque<Segment>,
    marks: &Marks,
    recovered: &mut Recovered,
) -> io::Result<()> {
    let acked = &marks.acked;
    for seg in segments.iter_mut() {
        if seg.live == 0 {
            continue;
        }
        let data = Bytes::from(fs.read(&Segment::path(dir, seg.index))?);
        let data = data.slice(..(seg.end as usize).min(data.len()));
        let mut live = 0u64;
        walk(&data, seg.seal, |r, _| {
            let Record::Message {
                seq,
                flags,
                message,
            } = r
            else {
                return;
            };
            if acked.contains(seq) {
                return;
            }
            live += 1;
            if let Some(&reason) = marks.held.get(&seq) {
                let back = ReadBack {
                    seq,
                    redelivered: flags & record::FLAG_REDELIVERED != 0
                        || marks.delivered.contains(seq),
                    persisted: true,
                    expires_at: message.expires_at,
                    message: detached(message),
                };
                recovered.held.push((back, reason));
            } else {
                recovered.count += 1;
                recovered.bytes += message.body.len() as u64;
            }
        });
        seg.live = live;
    }
    Ok(())
}

/// `message` in buffers of its own: its parts are slices of a whole segment read at
/// recovery, which a held letter would otherwise keep in memory for as long as it is held.
fn detached(message: StoredMessage) -> StoredMessage {
    let own = |b: &Bytes| Bytes::copy_from_slice(b);
    StoredMessage {
        exchange: own(&message.exchange),
        routing_key: own(&message.routing_key),
        properties: own(&message.properties),
        body: own(&message.body),
        ..message
    }
}

/// Drops fully acknowledged segments at the front of a recovered log, each once its file is
/// gone: one kept on disk but dropped here would lose the Ack marks covering it (compaction
/// keeps only those of segments the log holds), and a later start would bring its messages
/// back. What cannot be deleted now, `collect_garbage` deletes later.
fn drop_acknowledged_front(fs: &dyn Fs, dir: &Path, segments: &mut VecDeque<Segment>) {
    while segments.len() > 1 && segments.front().is_some_and(|s| s.live == 0) {
        let Some(index) = segments.front().map(|s| s.index) else {
            break;
        };
        match fs.remove_file(&Segment::path(dir, index)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(log = %dir.display(), segment = index, error = %e, "cannot delete a segment whose messages were all acknowledged; it is kept, and deleting it is tried again");
                break;
            }
        }
        segments.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{Kind, MessageParts, Stamp, encode_mark, encode_message};

    /// The segment's keyed seal, and that of the segment a reused file held before.
    const SEAL: Seal = Seal::Keyed(0x1234_5679);
    const OLD_SEAL: Seal = Seal::Keyed(0x0BAD_5EA1);

    fn parts(body: &[Bytes]) -> MessageParts<'_> {
        MessageParts {
            exchange: b"",
            routing_key: b"q",
            properties: &[0, 0],
            body,
        }
    }

    /// Appends a message record of the file's earlier life (sealed `OLD_SEAL`).
    fn old_record(data: &mut Vec<u8>, body: &[Bytes]) {
        encode_message(
            data,
            OLD_SEAL,
            Kind::Message,
            0,
            &Stamp::default(),
            &parts(body),
        );
    }

    fn acks_read(data: Vec<u8>) -> Vec<u64> {
        let mut acked = Vec::new();
        walk(&Bytes::from(data), SEAL, |r, _| {
            if let Record::Ack { seq } = r {
                acked.push(seq);
            }
        });
        acked
    }

    fn log_bytes(n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for seq in 0..n {
            starts.push(out.len());
            let body = [Bytes::copy_from_slice(&seq.to_be_bytes())];
            encode_message(
                &mut out,
                SEAL,
                Kind::Message,
                seq,
                &Stamp::default(),
                &parts(&body),
            );
        }
        starts.push(out.len());
        encode_mark(&mut out, SEAL, Kind::Ack, 0);
        out.extend(vec![0u8; 4096]);
        (out, starts)
    }

    fn seqs(data: &[u8]) -> (Vec<u64>, Walk) {
        let mut seen = Vec::new();
        let walk = walk(&Bytes::copy_from_slice(data), SEAL, |r, _| {
            if let Record::Message { seq, .. } = r {
                seen.push(seq);
            }
        });
        (seen, walk)
    }

    /// Regression: past damage, or past the new records of a reused file, recovery looks for
    /// the next record byte by byte, through old message bodies. It accepted a record with a
    /// plain CRC-32 (the format before seals), which a publisher can write into a body: an
    /// Ack there dropped another publisher's confirmed message at the next start. Then it
    /// accepted one sealed with the segment number alone, which a publisher can work out.
    #[test]
    fn a_record_forged_in_a_message_body_is_not_found_by_resynchronising() {
        for forge in [Seal::Legacy(0), Seal::legacy(5)] {
            // The forgery, as a body: an Ack of message 1, with the checksum a publisher can
            // compute (plain, or sealed with the segment number).
            let mut forged = Vec::new();
            encode_mark(&mut forged, forge, Kind::Ack, 1);
            // A reused file: two new records, then an old one whose body holds the forgery.
            let mut data = Vec::new();
            for seq in [1u64, 2] {
                let body = [Bytes::copy_from_slice(&seq.to_be_bytes())];
                encode_message(
                    &mut data,
                    SEAL,
                    Kind::Message,
                    seq,
                    &Stamp::default(),
                    &parts(&body),
                );
            }
            let old_body = [Bytes::from(forged)];
            old_record(&mut data, &old_body);
            assert_eq!(
                acks_read(data),
                Vec::<u64>::new(),
                "no Ack read out of a body"
            );
        }
    }

    /// Regression: where a reused file's new records end, the scan decoded the next bytes as
    /// the next record, accepting a plain CRC-32 there. A body of the file's earlier life
    /// that starts with a forged record (a publisher can fill a body with them, end to end,
    /// so that one starts wherever the new records end) was read as the queue's.
    #[test]
    fn a_forged_record_where_a_reused_files_new_records_end_is_not_read() {
        for forge in [Seal::Legacy(0), Seal::legacy(5)] {
            let mut data = Vec::new();
            let body = [Bytes::from_static(b"new")];
            encode_message(
                &mut data,
                SEAL,
                Kind::Message,
                9,
                &Stamp::default(),
                &parts(&body),
            );
            encode_mark(&mut data, forge, Kind::Ack, 9);
            assert_eq!(acks_read(data), Vec::<u64>::new());
        }
    }

    /// A forged record that guessed the seal (a chance of 2^-32 per try) is still not taken
    /// by resynchronising unless a record of the segment, or the end, follows it: inside a
    /// body, or among a reused file's old records, it is not.
    #[test]
    fn a_forgery_that_guessed_the_seal_is_not_taken_where_no_record_follows_it() {
        let mut forged = Vec::new();
        encode_mark(&mut forged, SEAL, Kind::Ack, 1);
        forged.extend_from_slice(b"the rest of the body");
        let mut data = Vec::new();
        let body = [Bytes::from_static(b"new")];
        encode_message(
            &mut data,
            SEAL,
            Kind::Message,
            1,
            &Stamp::default(),
            &parts(&body),
        );
        // Old records follow the new one: a body holding the forgery, then another.
        let old_body = [Bytes::from(forged)];
        old_record(&mut data, &old_body);
        old_record(&mut data, &body);
        assert_eq!(acks_read(data.clone()), Vec::<u64>::new());
        // Damage before two real records: resynchronising finds the first of them.
        let mut damaged = data[..data.len() - 4].to_vec();
        damaged.extend_from_slice(&[0xEE; 7]);
        encode_mark(&mut damaged, SEAL, Kind::Ack, 2);
        encode_mark(&mut damaged, SEAL, Kind::Ack, 3);
        assert_eq!(acks_read(damaged), vec![2, 3]);
    }

    #[test]
    fn a_damaged_record_in_the_middle_loses_only_itself() {
        let (mut data, starts) = log_bytes(10);
        // Flip a byte inside record 4's payload, then one in record 7's length.
        data[starts[4] + 12] ^= 0xFF;
        data[starts[7] + 1] ^= 0x40;
        let (seen, walk) = seqs(&data);
        assert_eq!(seen, vec![0, 1, 2, 3, 5, 6, 8, 9]);
        assert_eq!(
            walk.damaged,
            vec![(starts[4], starts[5]), (starts[7], starts[8])]
        );
        assert!(!walk.dirty_tail);
    }

    #[test]
    fn a_torn_tail_is_a_tail_and_zeroed_headers_do_not_hide_what_follows() {
        let (mut data, starts) = log_bytes(6);
        // A header zeroed in the middle (a lost sector) is damage, not the end.
        data[starts[2]..starts[2] + 8].fill(0);
        // The last record torn: half of it missing.
        let tail = starts[6];
        data[tail + 4..tail + 14].fill(0);
        let (seen, walk) = seqs(&data);
        assert_eq!(seen, vec![0, 1, 3, 4, 5]);
        assert_eq!(walk.damaged, vec![(starts[2], starts[3])]);
        assert!(walk.dirty_tail);
        assert_eq!(walk.end, starts[6]);
    }

    /// Bytes made to look like records a megabyte long, each followed by another, as a
    /// publisher can fill bodies with (and a reused segment file keeps them past its new
    /// records): every twelfth offset passed the cheap checks, and looking past damage
    /// checksummed a megabyte at each, half a terabyte for an 8 MiB segment, at every start.
    /// Now the search stops at its budget and takes the rest for a damaged tail; the records
    /// before the damage are kept.
    #[test]
    fn looking_past_damage_checksums_a_bounded_amount_of_look_alike_bytes() {
        const UNIT: usize = 12;
        // A length whose record ends where the next unit starts: 1 MiB + 8 = 87,382 units.
        const LEN: u32 = (87_382 * UNIT - record::HEADER_LEN) as u32;
        let (mut data, _) = log_bytes(3);
        data.truncate(data.len() - 4096);
        data.push(0xff); // The damage.
        let mut unit = [0u8; UNIT];
        unit[..4].copy_from_slice(&LEN.to_be_bytes());
        unit[record::HEADER_LEN] = 1;
        while data.len() < 8 << 20 {
            data.extend_from_slice(&unit);
        }
        let (seen, walk) = seqs(&data);
        assert_eq!(seen, vec![0, 1, 2]);
        assert!(walk.dirty_tail);
        let budget = (RESYNC_CHECKED_PER_BYTE * data.len()).max(RESYNC_CHECKED_MIN_BYTES);
        assert!(
            walk.resync_checked <= budget + LEN as usize,
            "checksummed {} MiB",
            walk.resync_checked >> 20
        );
    }

    /// A power cut kept an Ack whole but tore the message it acknowledged and the record
    /// after it. The Ack is not taken (nothing valid follows it), but its number is not
    /// used again: a new message of the same length, appended where the torn one was, ends
    /// where the Ack starts, and the next start would read the Ack as acknowledging it.
    #[test]
    fn the_number_of_a_record_left_in_a_torn_tail_is_not_used_again() {
        let mut data = Vec::new();
        let mut starts = Vec::new();
        for (seq, ack) in [(0, false), (1, false), (1, true), (2, false)] {
            starts.push(data.len());
            if ack {
                encode_mark(&mut data, SEAL, Kind::Ack, seq);
            } else {
                let body = [Bytes::from(vec![b'x'; 64])];
                encode_message(
                    &mut data,
                    SEAL,
                    Kind::Message,
                    seq,
                    &Stamp::default(),
                    &parts(&body),
                );
            }
        }
        // Messages 1 and 2 torn: a byte of each body changed.
        data[starts[2] - 10] ^= 0xff;
        let last = data.len() - 10;
        data[last] ^= 0xff;
        let (seen, walk) = seqs(&data);
        assert_eq!(seen, vec![0]);
        assert!(walk.dirty_tail);
        assert_eq!(walk.untaken_seq, Some(1), "the Ack's number is noted");
    }
}
