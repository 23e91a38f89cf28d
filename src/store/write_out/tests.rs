//! Unit tests of writing a log outside its lock: what goes on while a write takes its time.
use super::super::log::tests::{append_durable, parts, restart_and_read, sim_store};
use super::super::log::{QueueLog, TailReader};
use super::super::record::Stamp;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::Duration;

/// Long enough for anything here to finish; only a hang takes it.
const HANG: Duration = Duration::from_secs(60);

/// Appends paged message `seq`, its sequence number in the first bytes of its body.
fn append_paged(log: &Arc<QueueLog>, seq: u64) {
    let mut body = vec![b'p'; 1000];
    body[..8].copy_from_slice(&seq.to_be_bytes());
    let body = [Bytes::from(body)];
    log.append_message(seq, &parts(&body), false, &Stamp::default())
        .unwrap();
}

/// Regression: the sync thread wrote a log's buffer holding the log's lock. While the device
/// took its time, or stopped answering, every append to the queue waited for it, and with
/// them the runtime worker making them, and every connection that worker served.
#[test]
fn appends_and_roll_overs_go_on_while_the_cycle_write_is_held() {
    let (sim, fs, dir, store, log) = sim_store(11, "write-held");
    append_durable(&log, 0);
    let segments_before = log.lock().segments.len();
    sim.hold_writes();
    std::thread::scope(|s| {
        s.spawn(|| store.sync_now());
        assert!(sim.wait_for_held_write(HANG), "the cycle's write is held");
        // On a thread of its own, so that appends that wait show as a failure, not a hang.
        let (done, appended) = channel();
        let log = &log;
        s.spawn(move || {
            // Three segments' worth (64 KiB each): roll-overs happen while the write waits.
            (1..200).for_each(|seq| append_durable(log, seq));
            let _ = done.send(log.lock().segments.len());
        });
        let segments = appended.recv_timeout(HANG);
        sim.resume_writes();
        assert!(
            segments.is_ok_and(|n| n >= segments_before + 2),
            "appends and roll-overs went on while the write was held: {segments:?}"
        );
    });
    // What waited is written in order by the next cycle, and is there after a crash.
    assert!(store.sync_now());
    sim.crash(false);
    let (_, seen) = restart_and_read(fs, &dir);
    assert_eq!(seen, (0..200).collect::<Vec<u64>>());
}

/// Bytes taken to be written, and those a roll-over left while the write waits, are read
/// back from memory until they are in their files.
#[test]
fn records_not_yet_written_are_read_back_from_memory() {
    let (sim, _fs, _dir, store, _log) = sim_store(12, "read-held");
    let log = store.create_paging_log().unwrap();
    (0..100).for_each(|seq| append_paged(&log, seq));
    sim.hold_writes();
    std::thread::scope(|s| {
        s.spawn(|| store.sync_now());
        assert!(sim.wait_for_held_write(HANG), "the cycle's write is held");
        let (done, read) = channel();
        let log = &log;
        s.spawn(move || {
            // Past two roll-overs: the first 100 are being written, the rest wait behind.
            (100..300).for_each(|seq| append_paged(log, seq));
            let mut reader = TailReader::default();
            let mut seen = Vec::new();
            loop {
                let batch = log
                    .read_back(&mut reader, 100_000, &crate::store::uncharged)
                    .unwrap();
                if batch.is_empty() {
                    break;
                }
                for m in batch {
                    let in_body = u64::from_be_bytes(m.message.body[..8].try_into().unwrap());
                    assert_eq!(in_body, m.seq, "the body read is the message's own");
                    seen.push(m.seq);
                }
            }
            let _ = done.send(seen);
        });
        let seen = read.recv_timeout(HANG);
        sim.resume_writes();
        assert_eq!(seen, Ok((0..300).collect::<Vec<u64>>()));
    });
    assert!(store.sync_now());
}

/// A segment whose last bytes wait to be written is neither deleted nor kept for reuse
/// meanwhile: the write would land on whatever reused its file. It goes after the cycle
/// that writes them.
#[test]
fn a_segment_with_bytes_still_to_write_stays_until_they_are_written() {
    let (sim, _fs, _dir, store, log) = sim_store(13, "collect-held");
    append_durable(&log, 0);
    sim.hold_writes();
    std::thread::scope(|s| {
        s.spawn(|| store.sync_now());
        assert!(sim.wait_for_held_write(HANG), "the cycle's write is held");
        let (done, collected) = channel();
        let log = &log;
        s.spawn(move || {
            let mut seq = 1;
            while log.lock().segments.len() < 2 {
                append_durable(log, seq);
                seq += 1;
            }
            // Every message of segment 0 is acknowledged while its last bytes wait.
            let first_of_1 = log.lock().segments[1].first_message;
            log.ack_all(&(0..first_of_1).collect::<Vec<_>>()).unwrap();
            log.collect_garbage(None);
            let _ = done.send(log.lock().segments.front().map(|s| s.index));
        });
        let front = collected.recv_timeout(HANG);
        sim.resume_writes();
        assert_eq!(front, Ok(Some(0)), "segment 0 stays while its bytes wait");
    });
    // The cycle that writes them collects again: an idle queue makes no collection itself.
    assert!(store.sync_now());
    assert_eq!(
        log.lock().segments.front().map(|s| s.index),
        Some(1),
        "segment 0 goes once its bytes are written"
    );
}

/// What waits behind a write that does not return is bounded: past `UNWRITTEN_MAX_BYTES` a
/// roll-over refuses the append, as a failed write did, and the store says its writes are
/// failing (which raises the disk alarm, holding publishers back) until they catch up.
#[test]
fn bytes_waiting_behind_a_held_write_are_bounded() {
    let (sim, _fs, _dir, store, log) = sim_store(14, "bounded-held");
    // 4 MiB here, not the broker's 256 MiB: the same code, less of the test machine.
    let bound = 4 << 20;
    store.shared.set_unwritten_max_bytes(bound);
    append_durable(&log, 0);
    sim.hold_writes();
    let body = [Bytes::from(vec![b'b'; 1000])];
    std::thread::scope(|s| {
        s.spawn(|| store.sync_now());
        assert!(sim.wait_for_held_write(HANG), "the cycle's write is held");
        let (done, refused) = channel();
        let (log, body) = (&log, &body);
        s.spawn(move || {
            // Twice the bound's worth of messages, at most.
            let most = 2 * bound / 1000;
            let refused = (1..most).find(|&seq| {
                log.append_message(seq, &parts(body), true, &Stamp::default())
                    .is_err()
            });
            let _ = done.send(refused);
        });
        let refused = refused.recv_timeout(HANG);
        let failing = store.shared.write_failing();
        sim.resume_writes();
        assert!(
            refused.is_ok_and(|r| r.is_some_and(|seq| seq > bound / 1100)),
            "an append is refused once about the bound waits: {refused:?}"
        );
        assert!(failing, "the store's writes count as failing meanwhile");
    });
    assert!(store.sync_now());
    assert!(!store.shared.write_failing(), "and no longer once written");
}
