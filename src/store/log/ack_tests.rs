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
