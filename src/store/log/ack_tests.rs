//! Unit tests of acknowledgements that wait for something else to reach the disk first.
use super::tests::{append_durable, manual_store, parts, restart_and_read};
use super::*;
use crate::store::record::{self, Kind};
use bytes::Bytes;

/// Whether `log`'s bytes not yet written hold an Ack of `seq`.
fn ack_pending(log: &QueueLog, seq: u64) -> bool {
    let inner = log.lock();
    let Some(seal) = inner.segments.back().map(|h| h.seal) else {
        return false;
    };
    let mut mark = Vec::new();
    record::encode_mark(&mut mark, seal, Kind::Ack, seq);
    inner.pending.windows(mark.len()).any(|w| w == mark)
}

/// A message requeued at the back is logged again under a new number, and its old record
/// acknowledged. The Ack is written only once the copy is on disk: written in the same
/// cycle, it could reach the disk before the copy (the kernel writes pages back in no set
/// order), and a power cut between the two would lose a confirmed message.
#[test]
fn the_ack_of_a_superseded_record_waits_until_its_copy_is_synced() {
    let (store, fs, dir, log) = manual_store();
    append_durable(&log, 0);
    assert!(store.sync_now());
    let body = [Bytes::from(vec![b'x'; 100])];
    let stamp = record::Stamp {
        flags: record::FLAG_REDELIVERED,
        ..Default::default()
    };
    let epoch = log.append_message(1, &parts(&body), true, &stamp).unwrap();
    log.ack_superseded(0, epoch).unwrap();
    assert!(!ack_pending(&log, 0), "no Ack goes out with the copy");
    // The cycle that makes the copy durable logs the Ack after it; the next writes it.
    assert!(store.sync_now());
    assert!(ack_pending(&log, 0), "the Ack follows the synced copy");
    assert!(store.sync_now());
    drop(log);
    drop(store);
    let (_, seen) = restart_and_read(fs, &dir);
    assert_eq!(seen, vec![1], "only the copy comes back");
}

/// Acks in any order take each message off its own segment's live count, also after a
/// restart (which works out where each segment's numbers reach again) and with segments of
/// marks alone between those of messages.
#[test]
fn acks_in_any_order_count_out_each_message_from_its_own_segment() {
    let (store, fs, dir, log) = manual_store();
    for seq in 0..200 {
        append_durable(&log, seq);
        if seq % 50 == 49 {
            // More than a segment of marks alone (no message numbers) now and then.
            for _ in 0..(2 * 64 * 1024 / record::MARK_LEN) {
                log.delivered(seq).unwrap();
            }
        }
    }
    assert!(store.sync_now());
    drop(log);
    drop(store);
    let store = crate::store::Store::open_manual(fs, &dir, 64 * 1024).unwrap();
    let (log, _) = store.recover_queue_log(7).unwrap();
    // Every third message, from the back, then the rest of the odd ones from the front.
    let mut acked: Vec<u64> = (0..200).rev().filter(|s| s % 3 == 0).collect();
    acked.extend((0..200).filter(|s| s % 3 != 0 && s % 2 == 1));
    for &seq in &acked {
        log.ack(seq).unwrap();
    }
    let inner = log.lock();
    let between = inner.segments.iter().skip(1).rev().skip(3);
    assert!(
        between.clone().any(|s| s.messages == 0) && between.clone().any(|s| s.messages > 0),
        "segments of marks alone lie among the others"
    );
    for s in &inner.segments {
        let unacked = (0..200u64)
            .filter(|seq| s.holds(*seq) && !acked.contains(seq))
            .count() as u64;
        assert_eq!(s.live, unacked, "segment {}", s.index);
    }
}

/// The Ack follows however the copy's epoch was synced: here by a cycle that ran before the
/// requeue noted the record it supersedes, so no cycle of this log is left to settle it.
/// Before, nothing wrote that Ack, and a clean restart brought the message back twice.
#[test]
fn the_ack_of_a_superseded_record_is_written_when_its_copy_was_synced_already() {
    let (store, fs, dir, log) = manual_store();
    append_durable(&log, 0);
    let body = [Bytes::from(vec![b'x'; 100])];
    let epoch = log
        .append_message(1, &parts(&body), true, &Default::default())
        .unwrap();
    assert!(store.sync_now());
    log.ack_superseded(0, epoch).unwrap();
    while store.sync_now() {}
    drop(log);
    drop(store);
    let (_, seen) = restart_and_read(fs, &dir);
    assert_eq!(seen, vec![1], "only the copy comes back");
}

/// A copy whose first write failed (a full disk) is written again, and its old record's
/// Ack follows it then. Before, a failed epoch dropped the Ack for good: the old record
/// came back at every restart beside its copy, and kept its segment.
#[test]
fn the_ack_of_a_superseded_record_follows_a_copy_written_again_after_a_failure() {
    let (sim, fs, dir, store, log) = super::tests::sim_store(7, "superseded-retry");
    append_durable(&log, 0);
    assert!(store.sync_now());
    let body = [Bytes::from(vec![b'x'; 100])];
    let epoch = log
        .append_message(1, &parts(&body), true, &Default::default())
        .unwrap();
    log.ack_superseded(0, epoch).unwrap();
    sim.set_faults(crate::store::sim::Faults {
        write_error: 1.0,
        ..Default::default()
    });
    store.sync_now();
    assert!(store.shared.failed(epoch), "the copy's first write failed");
    sim.set_faults(Default::default());
    for _ in 0..4 {
        store.sync_now();
    }
    drop(log);
    drop(store);
    let (_, seen) = restart_and_read(fs, &dir);
    assert_eq!(seen, vec![1], "only the copy comes back");
}

/// Many superseded records settled in one cycle (a consumer requeueing a whole prefetch
/// window at once) are acknowledged in appends of `MARKS_PER_APPEND`, as `ack_all` logs
/// acks, every one of them: only the copies come back.
#[test]
fn many_superseded_records_are_acknowledged_together_once_their_copies_are_synced() {
    const REQUEUED: u64 = (MARKS_PER_APPEND * 2 + 10) as u64;
    let (store, fs, dir, log) = manual_store();
    for seq in 0..REQUEUED {
        append_durable(&log, seq);
    }
    assert!(store.sync_now());
    let body = [Bytes::from(vec![b'x'; 100])];
    for seq in 0..REQUEUED {
        let epoch = log
            .append_message(REQUEUED + seq, &parts(&body), true, &Default::default())
            .unwrap();
        log.ack_superseded(seq, epoch).unwrap();
    }
    assert!(store.sync_now());
    assert!(log.lock().superseded.is_empty());
    while store.sync_now() {}
    drop(log);
    drop(store);
    let (_, seen) = restart_and_read(fs, &dir);
    assert_eq!(seen, (REQUEUED..2 * REQUEUED).collect::<Vec<_>>());
}
