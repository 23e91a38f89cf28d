//! A segment file the disk refuses to delete (`EIO` on unlink, a failed rename of a spare):
//! the segment stays in the log, with the Ack marks that cover its messages, until its file
//! is gone, so a restart never brings back what was acknowledged.
use super::tests::{append_durable, restart_and_read, sim_store, until_the_spare_is_wanted};
use super::*;
use crate::store::Store;
use crate::store::fs::Fs;
use crate::store::sim::{Faults, SimFs};

/// Segments 0 and 1 full of acknowledged messages (their Ack marks in segments 1 and 2),
/// segment 2 of messages acknowledged but for its last two (so that compacting it is worth
/// it), then a segment of messages nobody acknowledges. Returns the outstanding messages.
fn two_acknowledged_segments(log: &Arc<QueueLog>) -> std::ops::Range<u64> {
    let head = |log: &QueueLog| log.lock().segments.back().map_or(0, |s| s.index);
    let mut seq = 0u64;
    let mut first_of = vec![0];
    for segment in 1..=3 {
        while head(log) < segment {
            append_durable(log, seq);
            seq += 1;
        }
        first_of.push(seq - 1);
        let (from, to) = (first_of[first_of.len() - 2], seq - 1);
        let to = if segment == 3 { to - 2 } else { to };
        log.ack_all(&(from..to).collect::<Vec<_>>()).unwrap();
    }
    let outstanding = first_of[3] - 2;
    while head(log) < 4 {
        append_durable(log, seq);
        seq += 1;
    }
    outstanding..seq
}

/// The acknowledged segments the log still holds, in its list or as its spare.
fn kept(log: &QueueLog) -> Vec<u64> {
    let inner = log.lock();
    let mut kept: Vec<u64> = (inner.spare.iter().chain(&inner.segments))
        .map(|s| s.index)
        .filter(|&i| i < 2)
        .collect();
    kept.sort_unstable();
    kept
}

fn on_disk(fs: &Arc<dyn Fs>, log: &QueueLog, index: u64) -> bool {
    fs.exists(&Segment::path(&log.dir, index))
}

/// The state a disk that stopped deleting leaves: segments 0 and 1 hold only acknowledged
/// messages, and neither file could be deleted. The spare (segment 0, kept for reuse) is
/// still there, so segment 1, which holds the Ack marks of segment 0's messages, stays in
/// the log too, and compaction keeps the marks of both. Returns the simulated disk, its
/// store and log, and the messages still outstanding.
fn a_disk_that_stopped_deleting(
    seed: u64,
    name: &str,
) -> (SimFs, Arc<dyn Fs>, PathBuf, Store, Arc<QueueLog>, Vec<u64>) {
    let (sim, fs, dir, store, log) = sim_store(seed, name);
    let outstanding = two_acknowledged_segments(&log);
    sim.set_faults(Faults {
        unlink_error: 1.0,
        ..Faults::default()
    });
    store.sync_now();
    for _ in 0..2 {
        log.collect_garbage(None);
        assert_eq!(
            kept(&log),
            [0, 1],
            "segment 0 kept (as the spare, or to delete) and segment 1 waits for it"
        );
    }
    for _ in 0..8 {
        if !log.compact_now().unwrap() {
            break;
        }
    }
    store.sync_now();
    assert!(sim.injected().unlink_errors >= 1, "{:?}", sim.injected());
    (sim, fs, dir, store, log, outstanding.collect())
}

/// Same as every other storage fault: a restart never brings back a message whose
/// acknowledgement was synced, here while the files of acknowledged segments stay on disk.
#[test]
fn a_segment_whose_file_cannot_be_deleted_keeps_the_acks_that_cover_it() {
    let (sim, fs, dir, _store, _log, outstanding) = a_disk_that_stopped_deleting(11, "unlink");
    sim.crash(false);
    sim.set_faults(Faults::default());
    let (_, seen) = restart_and_read(fs, &dir);
    assert_eq!(seen, outstanding, "acknowledged messages stay gone");
}

/// Deleting is tried again: once the disk deletes, the spare and the segment after it go.
#[test]
fn a_segment_file_that_could_not_be_deleted_goes_once_the_disk_deletes_again() {
    let (sim, fs, _, _store, log, _) = a_disk_that_stopped_deleting(12, "unlink-again");
    sim.set_faults(Faults::default());
    log.lock().unlink_retry_at = Some(Instant::now() + Duration::from_secs(3600));
    log.collect_garbage(None);
    assert_eq!(kept(&log), [0, 1], "not tried again before the retry time");
    log.lock().unlink_retry_at = Some(Instant::now());
    log.collect_garbage(None);
    assert!(kept(&log).is_empty());
    assert_eq!(log.lock().segments.front().map(|s| s.index), Some(2));
    assert!(!on_disk(&fs, &log, 0) && !on_disk(&fs, &log, 1));
}

/// Same at a start: a segment whose messages were all acknowledged is dropped only once its
/// file is gone; kept, the Ack marks covering it survive compaction, and the next start
/// does not bring its messages back.
#[test]
fn a_start_that_cannot_delete_an_acknowledged_segment_keeps_it() {
    let (sim, fs, dir, store, log) = sim_store(14, "unlink-at-start");
    let outstanding: Vec<u64> = two_acknowledged_segments(&log).collect();
    sim.set_faults(Faults {
        unlink_error: 1.0,
        ..Faults::default()
    });
    store.sync_now();
    sim.crash(false);
    drop((log, store));
    let store = Store::open_manual(fs.clone(), &dir, 64 * 1024).unwrap();
    let (log, _) = store.recover_queue_log(7).unwrap();
    assert_eq!(kept(&log), [0, 1], "kept until their files are gone");
    // Nothing delivered is held: compaction may take anything past the head.
    log.collect_garbage(None);
    for _ in 0..8 {
        log.compact_now().unwrap();
    }
    store.sync_now();
    sim.crash(false);
    sim.set_faults(Faults::default());
    let (_, seen) = restart_and_read(fs, &dir);
    assert_eq!(seen, outstanding, "acknowledged messages stay gone");
}

/// A spare whose rename into the next segment fails is deleted instead; if that fails too,
/// it stays the log's spare (and its file with it) rather than being forgotten on disk.
#[test]
fn a_spare_that_can_be_neither_reused_nor_deleted_stays_the_logs() {
    let (sim, fs, _, store, log) = sim_store(13, "rename");
    until_the_spare_is_wanted(&store, &log);
    let spare = log.lock().spare.as_ref().map(|s| s.index);
    sim.set_faults(Faults {
        unlink_error: 1.0,
        rename_error: 1.0,
        ..Faults::default()
    });
    log.prepare_next().unwrap();
    assert!(log.lock().prepared.is_some(), "a new file made instead");
    assert_eq!(log.lock().spare.as_ref().map(|s| s.index), spare);
    assert!(spare.is_some_and(|i| on_disk(&fs, &log, i)));
}

/// Compaction that finds nothing to keep of a segment deletes it; when the disk refuses,
/// the segment stays, is not picked again while deletes wait, and goes at the next try.
#[test]
fn a_segment_compaction_cannot_delete_waits_and_goes_later() {
    let (sim, fs, _, store, log) = sim_store(15, "unlink-compact");
    let head = |log: &QueueLog| log.lock().segments.back().map_or(0, |s| s.index);
    let mut seq = 0u64;
    let mut first_of = Vec::new();
    for segment in 1..=4 {
        first_of.push(seq);
        while head(&log) < segment {
            append_durable(&log, seq);
            seq += 1;
        }
    }
    // Segment 1's messages are all acknowledged; segment 0's are not.
    let in_segment_1: Vec<u64> = (first_of[1] - 1..first_of[2] - 1).collect();
    log.ack_all(&in_segment_1).unwrap();
    let holds_1 = |log: &QueueLog| log.lock().segments.iter().any(|s| s.index == 1);
    sim.set_faults(Faults {
        unlink_error: 1.0,
        ..Faults::default()
    });
    store.sync_now();
    for _ in 0..4 {
        log.compact_now().unwrap();
    }
    assert!(holds_1(&log) && on_disk(&fs, &log, 1));
    assert!(sim.injected().unlink_errors >= 1);
    let segment_1 = |log: &QueueLog| {
        log.lock()
            .segments
            .iter()
            .find(|s| s.index == 1)
            .map(|s| s.undeletable)
    };
    assert_eq!(segment_1(&log), Some(true));
    sim.set_faults(Faults::default());
    log.lock().unlink_retry_at = Some(Instant::now());
    for _ in 0..4 {
        log.compact_now().unwrap();
    }
    assert!(!holds_1(&log) && !on_disk(&fs, &log, 1));
}

/// A paging log lets a segment it has read past go even when its file cannot be deleted:
/// no acknowledgement depends on it, and the next start wipes the paging directory.
#[test]
fn a_paging_log_lets_a_segment_go_that_it_cannot_delete() {
    let (sim, _, _, store, _) = sim_store(16, "unlink-paging");
    let log = store.create_paging_log().unwrap();
    let body = [bytes::Bytes::from(vec![b'p'; 1000])];
    let mut seq = 0u64;
    while log.lock().segments.len() < 3 {
        log.append_message(seq, &super::tests::parts(&body), false, &Stamp::default())
            .unwrap();
        seq += 1;
    }
    store.sync_now();
    let mut reader = TailReader::default();
    while !log
        .read_back(&mut reader, 1 << 20, &crate::store::uncharged)
        .unwrap()
        .is_empty()
    {}
    sim.set_faults(Faults {
        unlink_error: 1.0,
        ..Faults::default()
    });
    log.collect_garbage(Some(reader.pos));
    assert_eq!(log.lock().segments.len(), 1, "read past, and let go");
    assert!(sim.injected().unlink_errors >= 1);
}

/// Regression (from review): moving a left-over queue directory to `lost+found` synced
/// `queues/`, which the sync thread syncs too, outside the sync thread's turn and without
/// stopping the store when that failed: the failure could take the error the sync thread's
/// own fsync should have seen, and its epoch be confirmed. It stops the store now, as any
/// failed fsync does.
#[test]
fn a_failed_sync_when_a_log_is_moved_aside_stops_the_store() {
    let (sim, _fs, _dir, store, _log) = sim_store(11, "move-aside");
    // Queue 7's directory exists: a log created for that id again moves it aside first.
    sim.set_faults(Faults {
        dir_sync_error: 1.0,
        ..Faults::default()
    });
    assert!(store.create_queue_log(7).is_err());
    assert!(
        !store.shared.writable(),
        "the store stops, as for any failed fsync"
    );
}
