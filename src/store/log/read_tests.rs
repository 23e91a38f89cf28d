//! Unit tests of reading a queue log back across segments: the segments a read takes, and
//! their order; and what a restart after a torn write reads back.
use super::tests::{append_durable, manual_store, parts, restart_and_read, store, temp_dir};
use super::*;
use crate::store::Store;
use crate::store::fs::Fs;
use bytes::Bytes;

/// The sequence numbers of every message of `log`, read from its start `max_bytes` at a
/// time.
fn read_seqs(log: &QueueLog, max_bytes: usize) -> Vec<u64> {
    let mut reader = TailReader::default();
    let mut seen = Vec::new();
    loop {
        let batch = log
            .read_back(&mut reader, max_bytes, &crate::store::uncharged)
            .unwrap();
        if batch.is_empty() {
            return seen;
        }
        seen.extend(batch.iter().map(|m| m.seq));
    }
}

/// A read takes only the segments it needs (`QueueLog::segments_from`), so segments that
/// hold marks alone do not end it: it reads on past them to the next message, and the log
/// reads as ended only at its end.
#[test]
fn a_read_goes_on_past_segments_of_marks_alone() {
    let (store, dir) = store();
    let log = store.create_queue_log(7).unwrap();
    append_durable(&log, 0);
    // About 10 segments of 64 KiB holding nothing but marks.
    for _ in 0..40_000 {
        log.delivered(0).unwrap();
    }
    append_durable(&log, 1);
    assert!(log.lock().segments.len() > 5, "the marks fill segments");
    assert_eq!(read_seqs(&log, 1000), [0, 1]);
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// A record larger than a segment, logged when the next segment was already prepared, was
/// given a new segment numbered after the prepared one, which then came after it: a read
/// skipped the prepared segment's messages (the read ended there), and a restart put them
/// before the large one. The prepared segment now grows to hold the record.
#[test]
fn a_record_larger_than_a_segment_keeps_the_segments_in_order() {
    let (store, fs, dir, log) = manual_store();
    let mut seq = 0u64;
    while log.lock().prepared.is_none() && seq < 200 {
        append_durable(&log, seq);
        seq += 1;
        store.sync_now();
    }
    assert!(
        log.lock().prepared.is_some(),
        "the next segment is prepared"
    );
    let large = [Bytes::from(vec![b'L'; 100 * 1024])];
    log.append_message(seq, &parts(&large), true, &Stamp::default())
        .unwrap();
    seq += 1;
    // On past the large record, into the segments after it.
    for _ in 0..150 {
        append_durable(&log, seq);
        seq += 1;
    }
    store.sync_now();
    let indexes: Vec<u64> = log.lock().segments.iter().map(|s| s.index).collect();
    assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");
    let all: Vec<u64> = (0..seq).collect();
    assert_eq!(read_seqs(&log, 1 << 20), all);
    store.close();
    drop(log);
    drop(store);
    let (_, seen) = restart_and_read(fs, &dir);
    assert_eq!(seen, all);
    let _ = std::fs::remove_dir_all(dir);
}

/// Regression (from review): a power cut tore message 1, kept its Ack whole, and lost the
/// page holding the next record's header. Recovery cut the tail at message 1 without
/// checking the Ack (nothing plausible follows it), so its number was free again: the next
/// message 1, as long as the torn one, was appended in its place, ended where the Ack
/// starts, and the start after that read the Ack and dropped the confirmed message. Now
/// nothing is appended over a cut tail: the log moves on to a new segment.
#[test]
fn a_message_appended_after_a_cut_tail_is_not_acknowledged_by_it() {
    // The data directory exists first, as the broker's does: its seal key is written, and
    // both starts seal the same way (a recovered segment sealed without it takes no appends).
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let fs: Arc<dyn Fs> = Arc::new(crate::store::fs::RealFs);
    let store = Store::open_manual(fs.clone(), &dir, 64 * 1024).unwrap();
    let log = store.create_queue_log(7).unwrap();
    append_durable(&log, 0);
    append_durable(&log, 1);
    log.ack(1).unwrap();
    append_durable(&log, 2);
    store.sync_now();
    let seal = log.lock().segments[0].seal;
    store.close();
    drop(log);
    drop(store);
    let path = Segment::path(&dir.join("queues/7"), 0);
    let mut data = std::fs::read(&path).unwrap();
    let mut starts = Vec::new();
    let mut at = 0;
    crate::store::recover::walk(&Bytes::from(data.clone()), seal, |_, bytes| {
        starts.push(at);
        at += bytes.len();
    });
    assert_eq!(starts.len(), 4, "message 0, message 1, its Ack, message 2");
    // Message 1 torn (a byte of its body), message 2's header lost (zeros), its body kept.
    data[starts[2] - 10] ^= 0xff;
    data[starts[3]..starts[3] + record::HEADER_LEN].fill(0);
    std::fs::write(&path, &data).unwrap();

    let store = Store::open_manual(fs.clone(), &dir, 64 * 1024).unwrap();
    let (log, recovered) = store.recover_queue_log(7).unwrap();
    assert_eq!(read_seqs(&log, 1 << 20), vec![0]);
    let next = recovered.next_seq;
    append_durable(&log, next);
    // The cut tail is cut off the file too: no segment of zeros written from memory.
    assert_eq!(fs.read(&path).unwrap().len(), starts[1]);
    store.sync_now();
    store.close();
    drop(log);
    drop(store);
    let (_, seen) = restart_and_read(fs, &dir);
    assert_eq!(seen, vec![0, next], "the confirmed message is kept");
    let _ = std::fs::remove_dir_all(dir);
}
