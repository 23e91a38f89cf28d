//! Which changes to a log's files make the sync thread sync its directory: a name added or
//! removed, and nothing else. Each directory sync is an fsync and a device flush inside a
//! confirm's cycle; reusing a segment file changes no name the cycle must make durable.
use super::tests::{append_durable, sim_store, until_the_spare_is_wanted};
use super::*;

/// The head segment's number.
fn head(log: &QueueLog) -> u64 {
    log.lock().segments.back().map_or(0, |s| s.index)
}

/// Regression: every roll-over marked the directory changed, so the cycle after it synced
/// the directory, though a reused segment file was renamed, and the directory synced, by
/// the background thread before anything was written to it (`prepare_next`). Under
/// `benches/compare confirm` that was one directory fsync per segment, and a third of the
/// device's writes were the directory's.
#[test]
fn rolling_over_onto_a_reused_segment_file_syncs_no_directory() {
    let (sim, _, _, store, log) = sim_store(31, "reuse-roll-over");
    let mut seq = until_the_spare_is_wanted(&store, &log);
    log.prepare_next().unwrap();
    assert!(
        log.lock().prepared.as_ref().is_some_and(|p| p.stale_tail),
        "the next segment is the spare's file, renamed"
    );
    store.sync_now();
    let before = sim.dir_syncs();
    let old_head = head(&log);
    while head(&log) == old_head {
        append_durable(&log, seq);
        seq += 1;
    }
    assert!(store.sync_now());
    assert_eq!(
        sim.dir_syncs(),
        before,
        "no directory sync for the roll-over"
    );
}

/// A segment whose messages are all acknowledged, kept under its name as the spare rather
/// than deleted, changes nothing in the directory either.
#[test]
fn keeping_a_segment_file_as_the_spare_syncs_no_directory() {
    let (sim, _, _, store, log) = sim_store(32, "reuse-collect");
    let mut seq = 0;
    while head(&log) < 1 {
        append_durable(&log, seq);
        seq += 1;
    }
    store.sync_now();
    let first_of_1 = log.lock().segments[1].first_message;
    log.ack_all(&(0..first_of_1).collect::<Vec<_>>()).unwrap();
    store.sync_now();
    let before = sim.dir_syncs();
    log.collect_garbage(None);
    assert!(log.lock().spare.is_some(), "segment 0 is the spare");
    append_durable(&log, seq);
    assert!(store.sync_now());
    assert_eq!(sim.dir_syncs(), before, "no directory sync for the spare");
}

/// A segment made new in a roll-over is a change of name: the next cycle
/// syncs the directory, as before.
#[test]
fn a_segment_made_in_a_roll_over_is_synced_in_the_directory() {
    let (sim, _, _, store, log) = sim_store(33, "new-names");
    store.sync_now();
    let before = sim.dir_syncs();
    let mut seq = 0;
    // No prepared segment: the roll-over makes the file itself.
    while head(&log) < 1 {
        append_durable(&log, seq);
        seq += 1;
    }
    assert!(store.sync_now());
    assert_eq!(
        sim.dir_syncs(),
        before + 1,
        "the new segment's name is synced"
    );
}
