//! Unit tests of reading a queue log back across segments: the segments a read takes, and
//! their order.
use super::tests::{append_durable, manual_store, parts, restart_and_read, store};
use super::*;
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
