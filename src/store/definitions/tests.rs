//! The definitions store's unit tests: journals, generations, snapshots, crashes.

use super::*;
use amq_protocol::types::{AMQPValue, FieldTable};
use serde_json::Value;

#[test]
fn arguments_keep_their_types_and_read_like_rabbitmq() {
    let mut t = FieldTable::default();
    t.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
    t.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("dlx".into()),
    );
    let (json, typed) = encode_arguments(&t);
    assert_eq!(
        json,
        serde_json::json!({"x-message-ttl": 1000, "x-dead-letter-exchange": "dlx"})
    );
    assert_eq!(decode_arguments(&json, &typed).unwrap(), t);
    // Without the typed copy (a RabbitMQ export), numbers come back as longs.
    let plain = decode_arguments(&json, "").unwrap();
    assert_eq!(
        plain.inner().get("x-message-ttl"),
        Some(&AMQPValue::LongLongInt(1000))
    );
}

#[test]
fn changes_apply_idempotently() {
    let q = QueueDef {
        name: "q".into(),
        vhost: "/".into(),
        durable: true,
        auto_delete: false,
        arguments: Value::Object(Default::default()),
        lepus_arguments: String::new(),
        lepus_id: 4,
    };
    let mut d = Definitions::default();
    d.apply(Change::PutQueue(q.clone()));
    d.apply(Change::PutQueue(q.clone()));
    assert_eq!(d.queues.len(), 1);
    assert_eq!(d.lepus_next_queue_id, 5);
    d.apply(Change::DeleteQueue {
        vhost: "/".into(),
        name: "q".into(),
    });
    assert!(d.queues.is_empty());
    let line = serde_json::to_vec(&Change::PutQueue(q)).unwrap();
    let crc = crc32fast::hash(&line);
    let mut full = format!("{crc:08x} ").into_bytes();
    full.extend_from_slice(&line);
    assert!(parse_line(&full).is_some());
    let last = full.len() - 2;
    full[last] ^= 1;
    assert!(parse_line(&full).is_none());
}

fn queue(name: &str) -> Change {
    Change::PutQueue(QueueDef {
        name: name.into(),
        vhost: "/".into(),
        durable: true,
        auto_delete: false,
        arguments: Value::Object(Default::default()),
        lepus_arguments: String::new(),
        lepus_id: 0,
    })
}

fn names(d: &Definitions) -> Vec<String> {
    let mut n: Vec<String> = d.queues.iter().map(|q| q.name.clone()).collect();
    n.sort();
    n
}

/// A disk that refuses to delete leaves journals the snapshot contains: the snapshot
/// still counts, and a start skips them rather than failing or replaying them.
#[test]
fn journals_that_cannot_be_deleted_do_not_stop_a_start() {
    let sim = crate::store::sim::SimFs::new(21);
    let fs: Arc<dyn Fs> = Arc::new(sim.clone());
    let dir = PathBuf::from("/sim/definitions");
    let store = crate::store::Store::open_manual(fs.clone(), &dir, 64 * 1024).unwrap();
    let (defs, _, _) = DefinitionsStore::open(&dir, store.shared.clone(), false).unwrap();
    defs.record(queue("a"));
    let (copy, generation) = defs.switch_generation().unwrap();
    defs.record(queue("b"));
    Journal::flush(&*defs).unwrap();
    sim.set_faults(crate::store::sim::Faults {
        unlink_error: 1.0,
        ..Default::default()
    });
    defs.write_snapshot_file(&copy, generation).unwrap();
    drop(defs);
    let (_defs, loaded, _) = DefinitionsStore::open(&dir, store.shared.clone(), false).unwrap();
    assert_eq!(names(&loaded), vec!["a", "b"]);
    assert!(sim.injected().unlink_errors >= 2);
    assert_eq!(journal_generations(&*fs, &dir).unwrap().len(), 2);
}

/// A switch of journals syncs the old one before it makes the next: a power loss right
/// after finds every change recorded before the switch, and the ones recorded while
/// the old journal synced land in the next journal. Made first, the next journal could
/// outlive the old one's last lines (their sync came with the next journal's first),
/// and a start replayed later changes without the ones before them.
#[test]
fn a_switch_of_journals_makes_the_old_one_whole_first() {
    let sim = crate::store::sim::SimFs::new(31);
    let fs: Arc<dyn Fs> = Arc::new(sim.clone());
    let dir = PathBuf::from("/sim/definitions-switch");
    let store = crate::store::Store::open_manual(fs.clone(), &dir, 64 * 1024).unwrap();
    let (defs, _, _) = DefinitionsStore::open(&dir, store.shared.clone(), false).unwrap();
    defs.record(queue("a"));
    Journal::flush(&*defs).unwrap();
    defs.record(queue("b"));
    let syncs_before = sim.dir_syncs();
    let (_copy, generation) = defs.switch_generation().unwrap();
    assert_eq!(generation, 1);
    assert_eq!(
        sim.dir_syncs(),
        syncs_before,
        "no directory sync at the switch"
    );
    defs.record(queue("c"));
    drop(defs);
    sim.crash(false);
    let (_defs, loaded, _) = DefinitionsStore::open(&dir, store.shared.clone(), false).unwrap();
    assert_eq!(
        names(&loaded),
        vec!["a", "b"],
        "what came before the switch is whole"
    );
}

/// Once a write or sync failed, no snapshot is written: it would hold changes whose
/// clients were told they failed (the shutdown's snapshot wrote one).
#[test]
fn no_snapshot_is_written_once_the_store_is_read_only() {
    let sim = crate::store::sim::SimFs::new(41);
    let fs: Arc<dyn Fs> = Arc::new(sim.clone());
    let dir = PathBuf::from("/sim/definitions-read-only");
    let store = crate::store::Store::open_manual(fs.clone(), &dir, 64 * 1024).unwrap();
    let (defs, _, _) = DefinitionsStore::open(&dir, store.shared.clone(), false).unwrap();
    defs.record(queue("a"));
    sim.set_faults(crate::store::sim::Faults {
        fsync_error: 1.0,
        ..Default::default()
    });
    store.sync_now();
    assert!(!store.shared.writable());
    sim.set_faults(crate::store::sim::Faults::default());
    assert!(defs.write_snapshot().is_err());
    assert!(!fs.exists(&snapshot_path(&dir)), "no snapshot written");
}

/// A crash at each step of a background snapshot finds every change exactly once.
#[test]
fn a_crash_anywhere_in_a_snapshot_loses_no_change() {
    // A directory of its own: the process and the clock's nanoseconds name it.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("lepus-defs-{}-{nanos}", std::process::id()));
    let store = crate::store::Store::open(&dir, 64 * 1024).unwrap();
    let (defs, _, _) = DefinitionsStore::open(&dir, store.shared.clone(), false).unwrap();
    defs.record(queue("a"));
    // Switched to generation 1, snapshot not written yet (crash here).
    let (copy, generation) = defs.switch_generation().unwrap();
    defs.record(queue("b"));
    Journal::flush(&*defs).unwrap();
    drop(defs);
    let (defs, loaded, _) = DefinitionsStore::open(&dir, store.shared.clone(), false).unwrap();
    assert_eq!(names(&loaded), vec!["a", "b"], "both journals replayed");
    // The old copy written late must not replace what is newer; a fresh one does.
    defs.write_snapshot_file(&copy, generation).unwrap();
    defs.record(queue("c"));
    let (copy2, generation2) = defs.switch_generation().unwrap();
    defs.write_snapshot_file(&copy2, generation2).unwrap();
    defs.write_snapshot_file(&copy, generation).unwrap();
    defs.record(queue("d"));
    Journal::flush(&*defs).unwrap();
    drop(defs);
    let (_defs, loaded, _) = DefinitionsStore::open(&dir, store.shared.clone(), false).unwrap();
    assert_eq!(names(&loaded), vec!["a", "b", "c", "d"]);
    let journals = journal_generations(&crate::store::fs::RealFs, &dir).unwrap();
    assert_eq!(journals, vec![generation2], "older journals deleted");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: the sync thread wrote the journal holding the state's lock, which every
/// durable declaration takes on a runtime worker: a device that stopped answering
/// stopped the worker. And a write that fails keeps the lines in order for the next.
#[test]
fn changes_are_recorded_while_the_journal_write_is_held_and_a_failed_write_keeps_order() {
    let sim = crate::store::sim::SimFs::new(22);
    let fs: Arc<dyn Fs> = Arc::new(sim.clone());
    let dir = PathBuf::from("/sim/definitions-held");
    let store = crate::store::Store::open_manual(fs.clone(), &dir, 64 * 1024).unwrap();
    let (defs, _, _) = DefinitionsStore::open(&dir, store.shared.clone(), false).unwrap();
    defs.record(queue("a"));
    sim.hold_writes();
    std::thread::scope(|s| {
        let flushing = s.spawn(|| Journal::flush(&*defs).map(|_| ()));
        assert!(sim.wait_for_held_write(std::time::Duration::from_secs(60)));
        let (done, recorded) = std::sync::mpsc::channel();
        let defs = &defs;
        s.spawn(move || {
            defs.record(queue("b"));
            let _ = done.send(());
        });
        let recorded = recorded.recv_timeout(std::time::Duration::from_secs(60));
        sim.resume_writes();
        assert!(
            recorded.is_ok(),
            "a change is recorded while the write is held"
        );
        assert!(flushing.join().is_ok_and(|r| r.is_ok()));
    });
    // A failed write, then one that succeeds: "b" then "c", each once.
    sim.set_faults(crate::store::sim::Faults {
        write_error: 1.0,
        ..Default::default()
    });
    defs.record(queue("c"));
    assert!(Journal::flush(&*defs).is_err());
    sim.set_faults(crate::store::sim::Faults::default());
    Journal::flush(&*defs).unwrap();
    drop(defs);
    let (_defs, loaded, _) = DefinitionsStore::open(&dir, store.shared.clone(), false).unwrap();
    assert_eq!(names(&loaded), vec!["a", "b", "c"]);
}
