//! Unit tests of the queue log: paging, syncing, reusing segment files.
use super::*;
use crate::store::Store;
use crate::store::fs::Fs;
use crate::store::record::Record;
use bytes::Bytes;

/// A directory of its own for each test, even when tests run at once.
pub(in crate::store) fn temp_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("lepus-log-{}-{n}", std::process::id()))
}

/// Appends durable message `seq` (a 1,000-byte body) to `log`.
pub(in crate::store) fn append_durable(log: &Arc<QueueLog>, seq: u64) {
    append(log, seq, true);
}

/// The parts of a message to queue `q` with `body`.
pub(in crate::store) fn parts(body: &[Bytes]) -> MessageParts<'_> {
    MessageParts {
        exchange: b"",
        routing_key: b"q",
        properties: &[0, 0],
        body,
    }
}

/// Appends message `seq` (a 1,000-byte body) to `log`: a durable one, or a paged copy.
fn append(log: &Arc<QueueLog>, seq: u64, durable: bool) {
    let body = [Bytes::from(body(seq))];
    log.append_message(seq, &parts(&body), durable, &Stamp::default())
        .unwrap();
}

/// The sequence numbers of every message a recovered log gives back, in order.
fn read_all(log: &QueueLog, recovered: &Recovered) -> Vec<u64> {
    let mut reader = recovered.reader.clone();
    let mut seen = Vec::new();
    loop {
        let batch = log
            .read_back(&mut reader, 1 << 20, &crate::store::uncharged)
            .unwrap();
        if batch.is_empty() {
            return seen;
        }
        seen.extend(batch.iter().map(|m| m.seq));
    }
}

fn body(i: u64) -> Vec<u8> {
    let mut body = vec![b'x'; 1000];
    body[..8].copy_from_slice(&i.to_be_bytes());
    body
}

pub(in crate::store) fn store() -> (Store, PathBuf) {
    let dir = temp_dir();
    (Store::open(&dir, 64 * 1024).unwrap(), dir)
}

/// A store whose cycles run when the test says, on the real file system, with queue 7's log.
pub(in crate::store) fn manual_store() -> (Store, Arc<dyn Fs>, PathBuf, Arc<QueueLog>) {
    let dir = temp_dir();
    let fs: Arc<dyn Fs> = Arc::new(crate::store::fs::RealFs);
    let store = Store::open_manual(fs.clone(), &dir, 64 * 1024).unwrap();
    let log = store.create_queue_log(7).unwrap();
    (store, fs, dir, log)
}

/// A store on a simulated disk (seeded with `seed`) in `/sim/<name>`, whose cycles run when
/// the test says, with queue 7's log.
pub(in crate::store) fn sim_store(
    seed: u64,
    name: &str,
) -> (
    crate::store::sim::SimFs,
    Arc<dyn Fs>,
    PathBuf,
    Store,
    Arc<QueueLog>,
) {
    let sim = crate::store::sim::SimFs::new(seed);
    let fs: Arc<dyn Fs> = Arc::new(sim.clone());
    let dir = PathBuf::from(format!("/sim/{name}"));
    let store = Store::open_manual(fs.clone(), &dir, 64 * 1024).unwrap();
    let log = store.create_queue_log(7).unwrap();
    (sim, fs, dir, store, log)
}

/// Opens the store in `dir` again, as a restart does, and reads queue 7's messages back.
pub(in crate::store) fn restart_and_read(fs: Arc<dyn Fs>, dir: &Path) -> (Recovered, Vec<u64>) {
    let store = Store::open_manual(fs, dir, 64 * 1024).unwrap();
    let (log, recovered) = store.recover_queue_log(7).unwrap();
    let seen = read_all(&log, &recovered);
    (recovered, seen)
}

#[test]
fn paged_records_read_back_in_order_across_segments() {
    let (store, dir) = store();
    let log = store.create_paging_log().unwrap();
    let mut reader = TailReader::default();
    (0..500).for_each(|i| append(&log, i, false));
    let mut seen = 0u64;
    loop {
        let batch = log
            .read_back(&mut reader, 100_000, &crate::store::uncharged)
            .unwrap();
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

/// A record's length comes off the disk: one that says more than its segment holds (the
/// file changed under the broker) is damage, skipped, not a buffer of that size read into.
/// It used to be allocated as it said, up to 4 GiB, and the read of it failed the batch.
#[test]
fn a_record_longer_than_its_segment_is_skipped_not_allocated() {
    let (store, dir) = store();
    let log = store.create_paging_log().unwrap();
    let start = log.end();
    append(&log, 1, false);
    log.flush().unwrap();
    let path = Segment::path(&log.dir, start.segment);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = start.offset as usize;
    bytes[at..at + 4].copy_from_slice(&0x7fff_0000u32.to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let mut reader = TailReader {
        pos: start,
        ..TailReader::default()
    };
    let back = log
        .read_back(&mut reader, 1 << 10, &crate::store::uncharged)
        .unwrap();
    assert!(back.is_empty(), "nothing readable");
    assert!(reader.pos > start, "the reader moved past the damage");
    store.close();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_paging_log_is_written_but_never_synced_and_a_durable_log_is() {
    let dir = temp_dir();
    let store = Store::open_manual(Arc::new(crate::store::fs::RealFs), &dir, 64 * 1024).unwrap();
    let parts = MessageParts {
        exchange: b"",
        routing_key: b"q",
        properties: &[0, 0],
        body: &[Bytes::from_static(b"paged")],
    };
    let paging = store.create_paging_log().unwrap();
    paging
        .append_message(1, &parts, false, &Stamp::default())
        .unwrap();
    let (files, dirs) = paging.flush().unwrap();
    assert!(
        files.is_empty() && dirs.is_empty(),
        "nothing of a paging log is synced"
    );
    let mut reader = TailReader::default();
    let back = paging
        .read_back(&mut reader, 1 << 20, &crate::store::uncharged)
        .unwrap();
    assert_eq!(&back[0].message.body[..], b"paged", "but it reads back");
    let durable = store.create_queue_log(7).unwrap();
    durable
        .append_message(1, &parts, true, &Stamp::default())
        .unwrap();
    let (files, dirs) = durable.flush().unwrap();
    assert!(!files.is_empty() && !dirs.is_empty());
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_reused_segment_file_gives_back_only_what_was_written_under_its_new_number() {
    let (store, fs, dir, log) = manual_store();
    let append = |seq: u64| append_durable(&log, seq);
    // Fill segments, acknowledge everything, and go on until the log writes into a
    // reused file (the sync cycle prepares the next segment when the head is half full).
    let mut seq = 0u64;
    let mut reused = false;
    while !reused && seq < 2_000 {
        append(seq);
        log.ack(seq).unwrap();
        seq += 1;
        store.sync_now();
        log.collect_garbage(None);
        reused = log.lock().segments.back().is_some_and(|s| s.stale_tail);
    }
    assert!(reused, "a segment file was reused");
    // What must come back: a few messages not acknowledged, written over the reused
    // file's earlier records, which follow them (acknowledged messages, and marks).
    let kept: Vec<u64> = (seq..seq + 10).collect();
    kept.iter().for_each(|&s| append(s));
    store.sync_now();
    store.close();
    drop(log);
    drop(store);
    let (recovered, seen) = restart_and_read(fs, &dir);
    assert_eq!(recovered.damaged_regions, 0);
    assert_eq!(seen, kept);
    let _ = std::fs::remove_dir_all(dir);
}

/// Regression: rolling over from a reused segment pads what is pending to the segment's end
/// (its old records must not follow the new ones). When that write failed, the padding stayed
/// pending but the head's end did not move: the next record was given the offset where it
/// should go and written after the padding, past the segment's end. Read back from its offset
/// (zeros) it was not found: confirmed messages were lost.
#[test]
fn a_roll_over_that_fails_to_write_leaves_later_records_where_they_are_said_to_be() {
    use crate::store::sim::Faults;
    let (sim, fs, dir, store, log) = sim_store(5, "roll-over");
    let mut seq = 0u64;
    let mut reused = false;
    while !reused && seq < 2_000 {
        append_durable(&log, seq);
        log.ack(seq).unwrap();
        seq += 1;
        store.sync_now();
        log.collect_garbage(None);
        reused = log.lock().segments.back().is_some_and(|s| s.stale_tail);
    }
    assert!(reused, "a segment file was reused");
    // Writes fail until an append has to roll over (and fails).
    sim.set_faults(Faults {
        write_error: 1.0,
        ..Faults::default()
    });
    let mut kept = Vec::new();
    let refused = loop {
        let body = [Bytes::from(body(seq))];
        let parts = parts(&body);
        match log.append_message(seq, &parts, true, &Stamp::default()) {
            Ok(_) => kept.push(seq),
            Err(_) => break seq,
        }
        seq += 1;
        assert!(seq < 10_000, "a roll-over was reached");
    };
    seq = refused + 1;
    sim.set_faults(Faults::default());
    // A small message: it fits in what the refused one left of the head.
    let small = [Bytes::from(vec![b's'; 100])];
    let parts = parts(&small);
    let at = log.end();
    log.append_message(seq, &parts, true, &Stamp::default())
        .unwrap();
    assert!(store.sync_now());
    // Read where the log says the message is, as a queue reading its paged tail does.
    let mut reader = TailReader {
        pos: at,
        ..TailReader::default()
    };
    let first = log
        .read_back(&mut reader, 1 << 20, &crate::store::uncharged)
        .unwrap();
    assert_eq!(
        first.first().map(|m| m.seq),
        Some(seq),
        "found where it was put"
    );
    kept.push(seq);
    seq += 1;
    for _ in 0..100 {
        append_durable(&log, seq);
        kept.push(seq);
        seq += 1;
    }
    assert!(store.sync_now());
    store.close();
    drop(log);
    drop(store);
    let (_, seen) = restart_and_read(fs, &dir);
    assert_eq!(seen, kept);
}

/// Appends and acknowledges messages one by one until a segment file is the spare, then
/// appends until the head is half full with nothing prepared, so that the next segment is
/// made from the spare. Returns the next sequence number.
pub(in crate::store) fn until_the_spare_is_wanted(store: &Store, log: &Arc<QueueLog>) -> u64 {
    let mut seq = 0u64;
    while log.lock().spare.is_none() {
        append_durable(log, seq);
        log.ack(seq).unwrap();
        seq += 1;
        store.sync_now();
        log.collect_garbage(None);
        assert!(seq < 2_000, "a segment file became the spare");
    }
    while !log.lock().wants_next_segment() {
        append_durable(log, seq);
        seq += 1;
    }
    seq
}

/// A directory fsync that fails outside the sync thread (after renaming a spare segment file
/// into the next segment) stops the store as a failed fsync on the sync thread does: Linux
/// reports a lost write-back once, so the sync thread's next sync of the directory could
/// succeed over lost entries. (The error was logged, and writing went on.)
#[test]
fn a_failed_directory_sync_after_reusing_a_segment_file_stops_the_store() {
    use crate::store::sim::Faults;
    let (sim, _, _, store, log) = sim_store(6, "dir-sync");
    let seq = until_the_spare_is_wanted(&store, &log);
    sim.set_faults(Faults {
        dir_sync_error: 1.0,
        ..Faults::default()
    });
    let _ = log.prepare_next();
    sim.set_faults(Faults::default());
    assert!(!store.shared.writable(), "the store stopped");
    let body = [Bytes::from(body(seq))];
    let parts = parts(&body);
    assert!(
        log.append_message(seq, &parts, true, &Stamp::default())
            .is_err()
    );
}

#[test]
fn acks_of_a_spare_segment_survive_compaction_until_its_file_is_reused() {
    // Regression: the front segment kept (not deleted) for reuse stays on disk under its old
    // number until the background thread renames it. Compaction of a later segment dropped
    // the Ack marks of its messages meanwhile, so a crash brought them back.
    let (store, fs, dir, log) = manual_store();
    let append = |seq: u64| append_durable(&log, seq);
    let segments = || log.lock().segments.len();
    // Segment 0 full of messages; its acks, and those of most of segment 1's, in segment 1.
    let mut seq = 0u64;
    while segments() < 2 {
        append(seq);
        seq += 1;
    }
    let first_of_1 = seq - 1;
    (0..first_of_1).for_each(|s| log.ack(s).unwrap());
    while segments() < 3 {
        append(seq);
        seq += 1;
    }
    let first_of_2 = seq - 1;
    (first_of_1..first_of_2 - 2).for_each(|s| log.ack(s).unwrap());
    // Two more segments of messages nobody acknowledges: segment 1 may be compacted.
    while segments() < 5 {
        append(seq);
        seq += 1;
    }
    log.collect_garbage(None);
    assert!(log.lock().spare.is_some(), "segment 0 is kept for reuse");
    assert!(log.compact_now().unwrap(), "segment 1 is compacted");
    log.flush().unwrap();
    // A crash before the spare was renamed: segment 0 is still there.
    drop(log);
    drop(store);
    let (_, seen) = restart_and_read(fs, &dir);
    let expected: Vec<u64> = (first_of_2 - 2..seq).collect();
    assert_eq!(seen, expected, "acknowledged messages stay gone");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_read_spanning_written_and_pending_bytes_gives_each_message_once_in_order() {
    let dir = temp_dir();
    let store = Store::open_manual(Arc::new(crate::store::fs::RealFs), &dir, 1 << 20).unwrap();
    let log = store.create_paging_log().unwrap();
    let append = |from: u64, to: u64| (from..to).for_each(|i| append(&log, i, false));
    let bodies = |batch: Vec<ReadBack>| -> Vec<u64> {
        batch
            .iter()
            .map(|m| u64::from_be_bytes(m.message.body[..8].try_into().unwrap()))
            .collect()
    };
    // 0..10 written to the file, 10..20 only in the log's buffer: one read takes both.
    append(0, 10);
    log.flush().unwrap();
    append(10, 20);
    let mut reader = TailReader::default();
    let batch = log
        .read_back(&mut reader, 1 << 20, &crate::store::uncharged)
        .unwrap();
    assert_eq!(bodies(batch), (0..20).collect::<Vec<_>>());
    // The buffer written out after the read, more appended: the reader goes on from there.
    log.flush().unwrap();
    append(20, 25);
    let batch = log
        .read_back(&mut reader, 1 << 20, &crate::store::uncharged)
        .unwrap();
    assert_eq!(bodies(batch), (20..25).collect::<Vec<_>>());
    assert!(
        log.read_back(&mut reader, 1 << 20, &crate::store::uncharged)
            .unwrap()
            .is_empty()
    );
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn acks_in_batches_and_out_of_order_free_exactly_the_segments_they_empty() {
    let (store, fs, dir, log) = manual_store();
    (0..300).for_each(|seq| append_durable(&log, seq));
    let live = |log: &QueueLog| log.lock().segments.iter().map(|s| s.live).sum::<u64>();
    let segments = log.lock().segments.len();
    assert!(segments >= 4, "the messages span several segments");
    // In order, in batches (as a no-ack drain logs them), then backwards one by one: every
    // ack finds its segment, whichever it was guessed to be.
    let in_order: Vec<u64> = (0..200).collect();
    in_order.chunks(70).for_each(|c| log.ack_all(c).unwrap());
    (200..250).rev().for_each(|seq| log.ack(seq).unwrap());
    assert_eq!(live(&log), 50);
    log.collect_garbage(None);
    let left = log.lock().segments.len();
    assert!(left < segments, "segments wholly acknowledged are gone");
    store.sync_now();
    store.close();
    drop(log);
    drop(store);
    let (_, seen) = restart_and_read(fs, &dir);
    assert_eq!(seen, (250..300).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(dir);
}

/// A data directory written before seal keys: its segments read the old way, and the next
/// record starts a keyed segment (a segment sealed the old way takes no appends, so that no
/// new body lies where a forgery sealed the old way would read).
#[test]
fn a_log_from_before_seal_keys_reads_and_goes_on_in_a_keyed_segment() {
    let dir = temp_dir();
    let queue = dir.join("queues/7");
    std::fs::create_dir_all(&queue).unwrap();
    let mut old = Vec::new();
    for seq in 0..3u64 {
        let body = [Bytes::from(body(seq))];
        let parts = parts(&body);
        record::encode_message(
            &mut old,
            Seal::legacy(0),
            Kind::Message,
            seq,
            &Stamp::default(),
            &parts,
        );
    }
    record::encode_mark(&mut old, Seal::legacy(0), Kind::Ack, 1);
    old.resize(64 * 1024, 0);
    std::fs::write(Segment::path(&queue, 0), &old).unwrap();

    let fs: Arc<dyn Fs> = Arc::new(crate::store::fs::RealFs);
    let store = Store::open_manual(fs.clone(), &dir, 64 * 1024).unwrap();
    let (log, recovered) = store.recover_queue_log(7).unwrap();
    assert_eq!(read_all(&log, &recovered), vec![0, 2]);
    append_durable(&log, 3);
    let seals: Vec<Seal> = log.lock().segments.iter().map(|s| s.seal).collect();
    assert_eq!(seals.len(), 2, "a new segment took the append: {seals:?}");
    assert_eq!(seals[0], Seal::legacy(0));
    assert!(matches!(seals[1], Seal::Keyed(_)));
    store.sync_now();
    store.close();
    drop(log);
    drop(store);
    let (_, seen) = restart_and_read(fs, &dir);
    assert_eq!(seen, vec![0, 2, 3]);
    let _ = std::fs::remove_dir_all(dir);
}

/// Regression: a front segment whose messages were all acknowledged was kept as the spare
/// (its file to be reused for a later segment), and the Ack marks of its messages lay in
/// the segments after it. When the next front segment went (deleted, as a spare was kept
/// already), those marks went with it while the spare's file stayed: a clean stop and a
/// start brought back a whole segment of acknowledged messages.
#[test]
fn a_spare_segment_goes_before_the_segments_holding_its_acks() {
    let (store, fs, dir, log) = manual_store();
    let head = |log: &QueueLog| log.lock().segments.back().map_or(0, |s| s.index);
    let mut seq = 0u64;
    while head(&log) < 1 {
        append_durable(&log, seq);
        seq += 1;
    }
    // Segment 0's messages are acknowledged; the marks go to segment 1.
    let first_of_1 = seq - 1;
    log.ack_all(&(0..first_of_1).collect::<Vec<_>>()).unwrap();
    log.collect_garbage(None);
    assert_eq!(log.lock().spare.as_ref().map(|s| s.index), Some(0));
    while head(&log) < 2 {
        append_durable(&log, seq);
        seq += 1;
    }
    // Segment 1's messages too, with marks in segment 2; segment 1 goes, and its marks.
    let first_of_2 = seq - 1;
    log.ack_all(&(first_of_1..first_of_2).collect::<Vec<_>>())
        .unwrap();
    log.collect_garbage(None);
    store.sync_now();
    store.close();
    drop(log);
    drop(store);
    let (_, seen) = restart_and_read(fs, &dir);
    assert_eq!(seen, (first_of_2..seq).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_held_letter_comes_back_held_and_its_mark_survives_compaction() {
    let (store, fs, dir, log) = manual_store();
    let segments = || log.lock().segments.len();
    (0..3).for_each(|s| append_durable(&log, s));
    log.held(1, 2).unwrap();
    let mut seq = 3u64;
    while segments() < 3 {
        append_durable(&log, seq);
        seq += 1;
    }
    let first_of_2 = seq - 1;
    // A letter held, then settled: it is gone, not held.
    log.held(first_of_2, 1).unwrap();
    log.ack(first_of_2).unwrap();
    // Everything else of segments 0 and 1 is acknowledged: segment 0 keeps message 1 and
    // its mark only.
    (0..first_of_2)
        .filter(|&s| s != 1)
        .for_each(|s| log.ack(s).unwrap());
    log.collect_garbage(None);
    assert!(log.compact_now().unwrap(), "segment 0 is compacted");
    log.flush().unwrap();
    drop(log);
    drop(store);
    let (recovered, seen) = restart_and_read(fs, &dir);
    let held: Vec<(u64, u8)> = recovered.held.iter().map(|(m, r)| (m.seq, *r)).collect();
    assert_eq!(
        held,
        [(1, 2)],
        "the held letter comes back held, with its reason"
    );
    assert_eq!(&recovered.held[0].0.message.body[..], &body(1)[..]);
    let expected: Vec<u64> = (first_of_2 + 1..seq).collect();
    assert_eq!(seen, expected, "the reader passes over the held letter");
    assert_eq!(recovered.count, expected.len() as u64);
    let _ = std::fs::remove_dir_all(dir);
}

/// Returned marks on disk in the log's segments, and the segments.
fn returned_marks_on_disk(log: &QueueLog) -> (usize, usize) {
    let segments: Vec<(u64, Seal)> = log
        .lock()
        .segments
        .iter()
        .map(|s| (s.index, s.seal))
        .collect();
    let mut marks = 0;
    for &(index, seal) in &segments {
        let data = Bytes::from(std::fs::read(Segment::path(&log.dir, index)).unwrap());
        crate::store::recover::walk(&data, seal, |r, _| {
            if let Record::Returned { .. } = r {
                marks += 1;
            }
        });
    }
    (marks, segments.len())
}

#[test]
fn returned_marks_on_disk_follow_the_messages_returned_not_the_returns() {
    // Regression (review): compaction kept the latest Returned mark of a message in every
    // segment, and a segment of marks compacted once was never compacted again, so a
    // consumer giving the same messages back again and again grew the log without bound.
    let (store, fs, dir, log) = manual_store();
    let segments = || log.lock().segments.len();
    let returned: Vec<u64> = (0..100).collect();
    returned.iter().for_each(|&s| append_durable(&log, s));
    let mut seq = 100u64;
    let mut filler = |log: &Arc<QueueLog>, more: usize| {
        let until = segments() + more;
        while segments() < until {
            append_durable(log, seq);
            log.ack(seq).unwrap();
            seq += 1;
        }
    };
    for count in 1..=5u32 {
        let counts: Vec<(u64, u32)> = returned.iter().map(|&s| (s, count)).collect();
        log.returned(&counts).unwrap();
        // A single message given back many times, between the others' returns.
        for _ in 0..1000 {
            log.returned(&[(0, count)]).unwrap();
        }
        filler(&log, 3);
        log.flush().unwrap();
        log.collect_garbage(None);
        while log.compact_now().unwrap() {}
    }
    let (marks, files) = returned_marks_on_disk(&log);
    assert_eq!(
        marks, 100,
        "one mark per message returned, in {files} segments"
    );
    drop(log);
    drop(store);
    let store = Store::open_manual(fs, &dir, 64 * 1024).unwrap();
    let (log, recovered) = store.recover_queue_log(7).unwrap();
    let mut reader = recovered.reader.clone();
    let mut counts = Vec::new();
    loop {
        let back = log
            .read_back(&mut reader, 1 << 20, &crate::store::uncharged)
            .unwrap();
        if back.is_empty() {
            break;
        }
        counts.extend(back.iter().map(|m| (m.seq, m.message.delivery_count)));
    }
    let expected: Vec<(u64, u32)> = returned.iter().map(|&s| (s, 5)).collect();
    assert_eq!(counts, expected);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_returned_messages_latest_count_is_read_back_and_compaction_keeps_only_it() {
    let (store, fs, dir, log) = manual_store();
    let segments = || log.lock().segments.len();
    (0..3).for_each(|s| append_durable(&log, s));
    // Message 1 given back 100 times: a mark each time, in segment 0.
    for count in 1..=100 {
        log.returned(&[(1, count)]).unwrap();
    }
    let mut seq = 3u64;
    while segments() < 3 {
        append_durable(&log, seq);
        seq += 1;
    }
    (0..seq)
        .filter(|&s| s != 1)
        .for_each(|s| log.ack(s).unwrap());
    // Message 2's count is written after its ack: not kept.
    log.returned(&[(2, 7)]).unwrap();
    log.collect_garbage(None);
    assert!(log.compact_now().unwrap(), "segment 0 is compacted");
    let (bytes, kept) = {
        let inner = log.lock();
        let front = inner.segments.front().unwrap();
        (front.end as usize, front.messages)
    };
    assert_eq!(kept, 1);
    assert!(
        bytes < 1000 + 200,
        "message 1 and one returned mark are kept, not 100 ({bytes} bytes)"
    );
    log.flush().unwrap();
    drop(log);
    drop(store);
    let store = Store::open_manual(fs, &dir, 64 * 1024).unwrap();
    let (log, recovered) = store.recover_queue_log(7).unwrap();
    let mut reader = recovered.reader.clone();
    let back = log
        .read_back(&mut reader, 1 << 20, &crate::store::uncharged)
        .unwrap();
    let counts: Vec<(u64, u32)> = back
        .iter()
        .map(|m| (m.seq, m.message.delivery_count))
        .collect();
    assert_eq!(counts, [(1, 100)]);
    let _ = std::fs::remove_dir_all(dir);
}

/// A held dead letter's mark starts a sync at once, as RabbitMQ syncs the command that holds
/// a letter before it takes effect; an Ack waits for the next sync, or `LAZY_WRITE_MS`. (A
/// held mark written lazily came back ready after a crash in the 200 ms after it.)
#[test]
fn a_held_mark_starts_a_sync_at_once_and_an_ack_waits_for_one() {
    let (store, _fs, dir, log) = manual_store();
    (0..2).for_each(|s| append_durable(&log, s));
    store.sync_now();
    assert_eq!(log.lock().registered, Registered::No);
    log.ack(0).unwrap();
    assert_eq!(log.lock().registered, Registered::Lazy, "an Ack is lazy");
    log.held(1, 2).unwrap();
    assert_eq!(
        log.lock().registered,
        Registered::Eager,
        "a held mark is not"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The files of this test's segments that are deleted but still open in this process.
fn deleted_but_open(dir: &Path) -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let dir = dir.display().to_string();
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|t| t.starts_with(&dir) && t.ends_with(".seg (deleted)"))
        .count()
}

/// Regression: the last close of a deleted segment frees its blocks, which on a file system
/// mounted with `discard` waits for the device (5 ms per 8 MiB segment). Collecting a
/// drained queue's segments, or deleting a queue, closed them in the caller: on the runtime
/// worker, under the queue's lock. A persistent backlog drained by a no-ack consumer spent
/// 0.7 s of its 1.8 s there. The caller now unlinks them and the closer thread closes them:
/// while that thread is busy they stay open, unlinked.
#[test]
fn deleted_segments_are_closed_on_the_closer_thread_not_by_the_caller() {
    if !Path::new("/proc/self/fd").exists() {
        return;
    }
    // No sync cycle runs unless the test says.
    let (store, _fs, dir, log) = manual_store();
    let _closer = store.shared.start_closer().unwrap();
    // Keeps the closer busy until told.
    let hold = || {
        let (release, held) = std::sync::mpsc::channel::<()>();
        store.shared.on_closer(Box::new(move || {
            let _ = held.recv();
        }));
        release
    };
    // Runs after everything queued before it on the closer.
    let closer_done = || {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        store.shared.on_closer(Box::new(move || {
            let _ = done.send(());
        }));
        wait.recv_timeout(std::time::Duration::from_secs(60))
            .unwrap();
    };
    let release = hold();
    // 64 KiB segments of 1,000-byte messages, all acknowledged: the front ones go.
    for seq in 0..400 {
        append_durable(&log, seq);
        log.ack(seq).unwrap();
    }
    // Synced, so that no handle waits for a sync; a read position at the start keeps
    // compaction (which deletes segments as well) away.
    log.collect_garbage(Some(Position::default()));
    store.sync_now();
    assert_eq!(deleted_but_open(&dir), 0);
    let before = log.lock().segments.len();
    log.collect_garbage(None);
    assert!(
        log.lock().segments.len() < before,
        "segments were collected"
    );
    assert!(
        deleted_but_open(&dir) > 0,
        "the caller left the closing to the closer thread"
    );
    release.send(()).unwrap();
    closer_done();
    assert_eq!(deleted_but_open(&dir), 0, "the closer closed them");
    // The same when the queue is deleted, with files waiting for their sync as well.
    let release = hold();
    (400..500).for_each(|seq| append_durable(&log, seq));
    assert!(!log.lock().unsynced.is_empty());
    log.destroy();
    assert!(!dir.join("queues").join("7").exists());
    assert!(deleted_but_open(&dir) > 0);
    release.send(()).unwrap();
    closer_done();
    assert_eq!(deleted_but_open(&dir), 0);
    store.close();
    let _ = std::fs::remove_dir_all(dir);
}
