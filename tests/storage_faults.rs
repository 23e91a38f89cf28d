//! The store on a failing disk: a seeded simulation of thousands of crashes under confirmed
//! publishing, acking, requeueing at the back and compaction, with writes that fail (`EIO`, `ENOSPC`, short), fsyncs that fail
//! and drop what they covered, and power losses that tear the last write.
//!
//! After every crash the queue log is recovered and checked against what was promised:
//! every confirmed, unacked message is back exactly once and in order, no message whose ack
//! was on disk comes back, nothing comes back that was never published, and recovery
//! succeeds. `LEPUS_STORAGE_SEED=<n>` replays one run; the store is driven by hand (no sync
//! thread), so a seed replays it exactly.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lepus::store::file_cache::CachedFs;
use lepus::store::fs::Fs;
use lepus::store::record::{FLAG_REDELIVERED, MessageParts, Stamp};
use lepus::store::sim::{Faults, SimFs};
use lepus::store::sync::Outcome;
use lepus::store::{QueueLog, Store};

use common::{Broker as TestBroker, Config, Rng, Server, WAIT, within};
use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

const ROUNDS: usize = 1000;
const SEGMENT_BYTES: u64 = 16 * 1024;

/// What the model knows about one published message.
#[derive(Debug, Clone, Copy, Default)]
struct Msg {
    /// Confirmed: on disk, it must come back until it is acked.
    confirmed: bool,
    /// Its ack is on disk: it must never come back.
    ack_durable: bool,
    /// Acked (in memory) already: it may come back until its ack is on disk.
    acked: bool,
    /// Requeued at the back (a quorum queue's refused message): logged again under this
    /// sequence number, then acked under its own. Until one of the two records is gone for
    /// good, at least one of them must come back.
    moved_to: Option<u64>,
}

fn body(seq: u64) -> Vec<u8> {
    let mut b = seq.to_be_bytes().to_vec();
    b.resize(8 + (seq as usize * 37) % 700, (seq % 251) as u8);
    b
}

/// Reads every message the recovered log holds, in order.
fn read_all(log: &QueueLog, reader: &mut lepus::store::TailReader) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let batch = log
            .read_back(reader, 1 << 20, &lepus::store::uncharged)
            .expect("reading back");
        if batch.is_empty() {
            return out;
        }
        for m in batch {
            assert_eq!(m.message.body, body(m.seq), "message {} intact", m.seq);
            out.push(m.seq);
        }
    }
}

/// The model: every message still in the queue, and the writes whose outcome is pending.
#[derive(Default)]
struct Model {
    msgs: BTreeMap<u64, Msg>,
    pending_confirms: Vec<(u64, u64)>,
    pending_acks: Vec<(u64, u64)>,
    /// Acks no sync cycle has run for yet: acks are lazy, written by the next cycle.
    unsynced_acks: Vec<u64>,
    /// Segments compacted so far.
    compactions: u64,
}

/// Brings the model up to date with what the store says is synced.
fn settle(model: &mut Model, store: &Store) {
    let Model {
        msgs,
        pending_confirms,
        pending_acks,
        ..
    } = model;
    pending_confirms.retain(|&(seq, epoch)| match store.shared.outcome(epoch) {
        Outcome::Pending => true,
        Outcome::Durable => {
            if let Some(m) = msgs.get_mut(&seq) {
                m.confirmed = true;
            }
            false
        }
        Outcome::Failed => false,
    });
    pending_acks.retain(|&(seq, epoch)| match store.shared.outcome(epoch) {
        Outcome::Pending => true,
        Outcome::Durable => {
            if let Some(m) = msgs.get_mut(&seq) {
                m.ack_durable = true;
            }
            false
        }
        Outcome::Failed => false,
    });
}

/// After a recovery: checks the promises, and makes the model what the log now holds.
fn check_recovery(seed: u64, round: usize, model: &mut Model, recovered: &[u64]) {
    model.pending_confirms.clear();
    model.pending_acks.clear();
    model.unsynced_acks.clear();
    let model = &mut model.msgs;
    let ctx = || format!("seed {seed} round {round}");
    for pair in recovered.windows(2) {
        assert!(
            pair[0] < pair[1],
            "{}: out of order or twice: {pair:?}",
            ctx()
        );
    }
    for seq in recovered {
        let m = model
            .get(seq)
            .unwrap_or_else(|| panic!("{}: message {seq} was never published", ctx()));
        assert!(
            !m.ack_durable,
            "{}: message {seq} came back after its ack was synced",
            ctx()
        );
    }
    for (seq, m) in model.iter() {
        // Acked, with the ack not known to be on disk: it may come back, or not.
        if m.confirmed && !m.acked {
            assert!(
                recovered.binary_search(seq).is_ok(),
                "{}: confirmed message {seq} was lost",
                ctx()
            );
        }
        // Moved to the back, perhaps more than once: the message comes back under one of
        // its numbers (or two: at least once), unless its last copy was acked.
        if m.confirmed && m.moved_to.is_some() {
            let mut chain = vec![*seq];
            let mut last = m;
            while let Some(next) = last.moved_to {
                chain.push(next);
                match model.get(&next) {
                    Some(n) => last = n,
                    None => break,
                }
            }
            let gone = last.acked && last.moved_to.is_none();
            assert!(
                gone || chain.iter().any(|s| recovered.binary_search(s).is_ok()),
                "{}: confirmed message {seq}, moved to the back as {chain:?}, was lost",
                ctx()
            );
        }
    }
    // What came back is on disk: from now on it must stay until acked. What did not come
    // back is gone for good.
    model.retain(|seq, _| recovered.binary_search(seq).is_ok());
    for m in model.values_mut() {
        *m = Msg {
            confirmed: true,
            ..Msg::default()
        };
    }
}

fn faults_for(rng: &mut Rng, used_guess: u64) -> Faults {
    match rng.below(6) {
        0 => Faults {
            write_error: 0.03,
            ..Faults::default()
        },
        1 => Faults {
            fsync_error: 0.02,
            dir_sync_error: 0.02,
            ..Faults::default()
        },
        2 => Faults {
            capacity_bytes: Some(used_guess + rng.below(32 * 1024)),
            ..Faults::default()
        },
        3 => Faults {
            unlink_error: 0.3,
            rename_error: 0.3,
            open_error: 0.3,
            ..Faults::default()
        },
        _ => Faults::default(),
    }
}

/// Logs the durable message `seq` (its body is `body(seq)`); returns the epoch that makes
/// it durable.
fn log_message(log: &Arc<QueueLog>, seq: u64, flags: u8) -> std::io::Result<u64> {
    let b = [bytes::Bytes::from(body(seq))];
    let parts = MessageParts {
        exchange: b"",
        routing_key: b"q",
        properties: &[0, 0],
        body: &b,
    };
    let stamp = Stamp {
        flags,
        ..Stamp::default()
    };
    log.append_message(seq, &parts, true, &stamp)
}

/// A message not yet acked, picked at random.
fn pick_unacked(rng: &mut Rng, model: &Model, next_seq: u64) -> Option<u64> {
    let from = rng.below(next_seq);
    model
        .msgs
        .range(from..)
        .chain(model.msgs.range(..from))
        .find(|(_, m)| !m.acked)
        .map(|(s, _)| *s)
}

/// One round: publish, ack, requeue at the back and sync until a crash. The queue is kept to a few hundred
/// messages: acks outnumber publishes when it is longer.
fn run_round(
    rng: &mut Rng,
    store: &Store,
    log: &Arc<QueueLog>,
    model: &mut Model,
    next_seq: &mut u64,
) {
    let ops = 1 + rng.below(150);
    for _ in 0..ops {
        let publish_share = if model.msgs.len() > 300 { 3 } else { 6 };
        let roll = rng.below(10);
        if roll < publish_share {
            let seq = *next_seq;
            *next_seq += 1;
            // A refused append is a nack: the message was never in the log.
            if let Ok(epoch) = log_message(log, seq, 0) {
                model.msgs.insert(seq, Msg::default());
                model.pending_confirms.push((seq, epoch));
            }
        } else if roll < 7 {
            let Some(seq) = pick_unacked(rng, model, *next_seq) else {
                continue;
            };
            if let Some(m) = model.msgs.get_mut(&seq) {
                m.acked = true;
            }
            if log.ack(seq).is_ok() {
                model.unsynced_acks.push(seq);
            }
        } else if roll < 8 {
            // Requeued at the back: the message is logged again under the next number,
            // and its old record is acked once that is on disk, as `State::requeue_at_back`
            // does.
            let Some(seq) = pick_unacked(rng, model, *next_seq) else {
                continue;
            };
            let moved = *next_seq;
            *next_seq += 1;
            // A refused append leaves the message where it was.
            let Ok(epoch) = log_message(log, moved, FLAG_REDELIVERED) else {
                continue;
            };
            model.msgs.insert(moved, Msg::default());
            model.pending_confirms.push((moved, epoch));
            if let Some(m) = model.msgs.get_mut(&seq) {
                m.acked = true;
                m.moved_to = Some(moved);
            }
            // Its Ack is logged once the copy is synced, and written by a cycle after that:
            // the model lets the old number come back (at least once) rather than follow
            // when that is.
            let _ = log.ack_superseded(seq, epoch);
        } else if roll < 9 {
            // The cycle runs as the current epoch and writes every ack made before it.
            let epoch = store.shared.epoch();
            store.sync_now();
            let covered = model.unsynced_acks.drain(..).map(|seq| (seq, epoch));
            model.pending_acks.extend(covered);
            settle(model, store);
        } else {
            // Compaction rewrites segments under the same faults.
            if let Ok(true) = log.compact_now() {
                model.compactions += 1;
            }
            log.collect_garbage(None);
        }
    }
}

/// `max_open_files`: run the store through its file cache (`store::file_cache`) with that
/// bound, so that segment files are closed and reopened all along, under the same faults.
fn simulate(seed: u64, rounds: usize, max_open_files: Option<usize>) {
    let fs = SimFs::new(seed);
    let mut rng = Rng(seed.max(1));
    let dir: PathBuf = Path::new("/sim/data").to_owned();
    let mut model = Model::default();
    let mut next_seq = 0u64;
    for round in 0..rounds {
        // Recovery itself runs on a healthy disk: the broker must start.
        fs.set_faults(Faults::default());
        let on: Arc<dyn Fs> = match max_open_files {
            Some(bound) => Arc::new(CachedFs::new(Arc::new(fs.clone()), bound)),
            None => Arc::new(fs.clone()),
        };
        let store = Store::open_manual(on, &dir, SEGMENT_BYTES)
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: the store does not open: {e}"));
        let (log, recovered) = store
            .recover_queue_log(1)
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: recovery failed: {e}"));
        next_seq = next_seq.max(recovered.next_seq);
        let mut reader = recovered.reader.clone();
        let seqs = read_all(&log, &mut reader);
        // The queue holds what it read in memory: the log may now be compacted anywhere.
        log.collect_garbage(None);
        check_recovery(seed, round, &mut model, &seqs);
        let faults = faults_for(&mut rng, fs.used_bytes());
        if std::env::var("LEPUS_STORAGE_TRACE").is_ok() {
            eprintln!(
                "round {round}: recovered {} (next {next_seq}), torn {} damaged {}/{}, faults {faults:?}, injected {:?}",
                seqs.len(),
                recovered.torn,
                recovered.damaged_regions,
                recovered.damaged_bytes,
                fs.injected()
            );
        }
        fs.set_faults(faults);
        run_round(&mut rng, &store, &log, &mut model, &mut next_seq);
        fs.crash(rng.chance(70));
        drop(log);
        drop(store);
    }
    assert!(
        model.compactions > 100,
        "seed {seed}: {} compactions",
        model.compactions
    );
    let injected = fs.injected();
    assert!(
        injected.write_errors > 0
            && injected.no_space > 0
            && injected.fsync_errors > 0
            && injected.unlink_errors > 0
            && injected.rename_errors > 0
            && injected.open_errors > 0,
        "seed {seed}: every kind of fault was injected: {injected:?}"
    );
}

#[test]
fn confirmed_messages_survive_thousands_of_crashes_on_a_failing_disk() {
    match std::env::var("LEPUS_STORAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => simulate(seed, ROUNDS, None),
        None => {
            for seed in [1u64, 0x5eed, 0xfa11_0f5c] {
                simulate(seed, ROUNDS, None);
            }
        }
    }
}

/// The same, with the store's files closed and reopened by its file cache all along (a
/// bound of two open files, a log of several segments): a closed file is reopened by the
/// name it has now, and never closed with writes a sync has not covered.
#[test]
fn confirmed_messages_survive_crashes_on_a_failing_disk_through_the_file_cache() {
    let seed = std::env::var("LEPUS_STORAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xcac4e);
    simulate(seed, ROUNDS, Some(2));
}

// ---- the broker on a failing disk -----------------------------------------------------------

async fn broker_on(fs: &SimFs, name: &str) -> TestBroker {
    let mut config = Config::for_tests();
    config.data_dir = PathBuf::from(format!("/sim/{name}"));
    config.limits.monitor_interval_ms = 20;
    let server = Server::start_on(Arc::new(fs.clone()), config)
        .await
        .expect("starts on the simulated disk");
    let addr = server.local_addr();
    TestBroker {
        server: Some(server),
        addr,
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Publishes one persistent message and waits for its confirm: true for an ack.
async fn confirm(ch: &lapin::Channel, body: &[u8]) -> bool {
    let pending = within(ch.basic_publish(
        "".into(),
        "dq".into(),
        Default::default(),
        body,
        BasicProperties::default().with_delivery_mode(2),
    ))
    .await
    .expect("publish");
    within(pending).await.expect("confirm").is_ack()
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "condition never held");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Regression: a failed write used to be logged and the epoch confirmed anyway (5,000
/// confirms, 2,972 messages on disk). Now the publishes a failed write covered are nacked,
/// the disk alarm goes up, consumers keep going, and once the disk takes writes again the
/// broker confirms again by itself.
#[tokio::test]
async fn a_disk_that_refuses_writes_gets_nacks_and_an_alarm_then_recovers() {
    let fs = SimFs::new(11);
    let broker = broker_on(&fs, "full").await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("dq".into(), durable(), FieldTable::default()))
        .await
        .unwrap();
    within(ch.confirm_select(Default::default())).await.unwrap();
    assert!(confirm(&ch, b"before").await);
    // The disk is full from now on.
    fs.set_faults(Faults {
        capacity_bytes: Some(fs.used_bytes()),
        ..Faults::default()
    });
    let mut nacked = false;
    for i in 0..200 {
        if !confirm(&ch, format!("during-{i}").as_bytes()).await {
            nacked = true;
            break;
        }
    }
    assert!(nacked, "a publish the disk refused is nacked");
    let server = broker.server.as_ref().unwrap().broker().clone();
    wait_until(|| server.alarms.raised().disk).await;
    // Consumers keep going while publishers are held back.
    let (_c2, consumer) = broker.channel().await;
    let got = within(consumer.basic_get("dq".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(got.delivery.data, b"before");
    // Room again: the alarm clears and confirms are acks again.
    fs.set_faults(Faults::default());
    wait_until(|| !server.alarms.raised().disk).await;
    assert!(confirm(&ch, b"after").await);
}

/// An fsync that fails is fatal for the store (fail-stop): what it covered is not confirmed
/// (a nack, or no confirm at all once the disk alarm blocks the publisher), nothing more is
/// written, a durable declare fails with a connection error, and consumers are still served
/// from memory.
#[tokio::test]
async fn a_failed_fsync_stops_the_store_and_nothing_more_is_confirmed() {
    let fs = SimFs::new(12);
    let broker = broker_on(&fs, "fsync").await;
    let server = broker.server.as_ref().unwrap().broker().clone();
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("dq".into(), durable(), FieldTable::default()))
        .await
        .unwrap();
    within(ch.confirm_select(Default::default())).await.unwrap();
    assert!(confirm(&ch, b"kept").await);
    fs.set_faults(Faults {
        fsync_error: 1.0,
        ..Faults::default()
    });
    let lost = within(ch.basic_publish(
        "".into(),
        "dq".into(),
        Default::default(),
        b"lost",
        BasicProperties::default().with_delivery_mode(2),
    ))
    .await
    .unwrap();
    wait_until(|| !server.store.shared.writable()).await;
    fs.set_faults(Faults::default());
    wait_until(|| server.alarms.raised().disk).await;
    if let Ok(confirm) = tokio::time::timeout(std::time::Duration::from_millis(500), lost).await {
        assert!(
            !confirm.unwrap().is_ack(),
            "the fsync that failed covered it"
        );
    }
    let (_c2, other) = broker.channel().await;
    let declared =
        within(other.queue_declare("another".into(), durable(), FieldTable::default())).await;
    let Err(e) = declared else {
        panic!("a durable declare cannot be promised");
    };
    assert!(e.to_string().contains("INTERNAL_ERROR"), "{e}");
    let (_c3, consumer) = broker.channel().await;
    let got = within(consumer.basic_get("dq".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("served from memory");
    assert_eq!(got.delivery.data, b"kept");
}

/// Regression: a transaction's publishes are routed at tx.commit. When the store could not
/// take one (read-only after a failed fsync) and nothing else waited for the disk, commit-ok
/// went out at once for a message no queue held. Now the commit fails with a connection
/// error, as a commit whose write failed does.
#[tokio::test]
async fn a_commit_whose_publish_the_store_refused_is_not_committed() {
    let fs = SimFs::new(13);
    let broker = broker_on(&fs, "tx").await;
    let server = broker.server.as_ref().unwrap().broker().clone();
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("dq".into(), durable(), FieldTable::default()))
        .await
        .unwrap();
    let (_t, tx) = broker.channel().await;
    within(tx.tx_select()).await.unwrap();
    within(tx.basic_publish(
        "".into(),
        "dq".into(),
        Default::default(),
        b"in the transaction",
        BasicProperties::default().with_delivery_mode(2),
    ))
    .await
    .unwrap();
    // The store stops (fail-stop) before the commit.
    within(ch.confirm_select(Default::default())).await.unwrap();
    fs.set_faults(Faults {
        fsync_error: 1.0,
        ..Faults::default()
    });
    let _lost = within(ch.basic_publish(
        "".into(),
        "dq".into(),
        Default::default(),
        b"lost",
        BasicProperties::default().with_delivery_mode(2),
    ))
    .await
    .unwrap();
    wait_until(|| !server.store.shared.writable()).await;
    let committed = within(tx.tx_commit()).await;
    let Err(e) = committed else {
        panic!("commit-ok for a publish no queue took");
    };
    assert!(e.to_string().contains("INTERNAL_ERROR"), "{e}");
}

/// Pages a queue out onto a disk that refuses part way (a priority queue's level, with
/// `priority`), then reads back every message it took: they must come in the order they
/// went in.
async fn page_out_refused_part_way(priority: Option<u8>) {
    let fs = SimFs::new(14);
    let mut config = Config::for_tests();
    config.data_dir = PathBuf::from(format!("/sim/page-out-{}", priority.is_some()));
    config.limits.monitor_interval_ms = 20;
    config.limits.memory_budget_bytes = 256 * 1024;
    config.limits.segment_bytes = 64 * 1024;
    let server = Server::start_on(Arc::new(fs.clone()), config)
        .await
        .expect("starts on the simulated disk");
    let addr = server.local_addr();
    let broker = TestBroker {
        server: Some(server),
        addr,
    };
    let (_c, ch) = broker.channel().await;
    let arguments = match priority {
        Some(_) => common::table(&[("x-max-priority", AMQPValue::ShortShortUInt(5))]),
        None => FieldTable::default(),
    };
    within(ch.queue_declare("held".into(), Default::default(), arguments))
        .await
        .unwrap();
    // Every write fails: the first page-out writes one message (into memory, pending) and is
    // refused at the next segment.
    fs.set_faults(Faults {
        write_error: 1.0,
        ..Faults::default()
    });
    // With confirms: a publish that reaches a queue whose page-out the disk did take, once
    // the disk refuses the next write, cannot be paged behind that tail and is nacked (a
    // race with the sync thread's first failed write decides which page-outs are taken).
    within(ch.confirm_select(Default::default())).await.unwrap();
    let body = |n: u8| vec![n; 200 * 1024];
    let mut confirms = Vec::new();
    for n in 0..8u8 {
        let confirm = within(ch.basic_publish(
            "".into(),
            "held".into(),
            Default::default(),
            &body(n),
            match priority {
                Some(p) => BasicProperties::default().with_priority(p),
                None => BasicProperties::default(),
            },
        ))
        .await
        .unwrap();
        confirms.push((n, confirm));
    }
    let server = broker.server.as_ref().unwrap().broker().clone();
    wait_until(|| server.alarms.raised().disk).await;
    fs.set_faults(Faults::default());
    let mut taken = Vec::new();
    for (n, confirm) in confirms {
        if within(confirm).await.unwrap().is_ack() {
            taken.push(n);
        }
    }
    assert!(
        taken.len() >= 2 && taken[0] == 0,
        "the first publishes were taken: {taken:?}"
    );
    let (_c2, reader) = broker.channel().await;
    let mut got = Vec::new();
    within(async {
        while got.len() < taken.len() {
            match reader
                .basic_get("held".into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                Some(m) => got.push(m.delivery.data[0]),
                None => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    assert_eq!(got, taken, "every message taken comes back, in order");
    let left = within(reader.basic_get("held".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap();
    assert!(left.is_none(), "and nothing refused does");
}

/// Regression: when the disk refused a page-out part way, the messages it had not written
/// stayed in memory but behind the ones it had (the tail is read after what is in memory):
/// consumers got them out of order. Now a page-out that fails keeps every message in memory,
/// in order.
#[tokio::test]
async fn a_page_out_the_disk_refuses_part_way_keeps_the_queue_in_order() {
    page_out_refused_part_way(None).await;
}

/// Regression, as above for a priority queue's level: the messages a level's page-out had
/// not written stayed in memory, ahead of the older ones it had written. Now the level keeps
/// every message in memory, in order.
#[tokio::test]
async fn a_priority_level_the_disk_refuses_to_page_part_way_stays_in_order() {
    page_out_refused_part_way(Some(3)).await;
}

// ---- confirms that need no disk -------------------------------------------------------------

/// Lets held fsyncs go when a test ends, passed or failed, so the broker can stop.
struct SyncsResumeOnDrop(SimFs);

impl Drop for SyncsResumeOnDrop {
    fn drop(&mut self) {
        self.0.resume_syncs();
    }
}

/// A consumer that acknowledges by hand.
async fn consume(ch: &lapin::Channel, queue: &str) -> lapin::Consumer {
    within(ch.basic_consume(
        queue.into(),
        "c".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap()
}

async fn publish_persistent(
    ch: &lapin::Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
) -> lapin::PublisherConfirm {
    within(ch.basic_publish(
        exchange.into(),
        key.into(),
        Default::default(),
        body,
        BasicProperties::default().with_delivery_mode(2),
    ))
    .await
    .expect("publish")
}

/// Same as RabbitMQ, whose message store confirms a message that was removed before it was
/// written: a persistent message its consumer acknowledged is confirmed while the disk has
/// not synced it yet, and a message nobody took still waits for the disk.
#[tokio::test]
async fn a_message_its_consumer_acknowledged_is_confirmed_without_waiting_for_the_disk() {
    let fs = SimFs::new(13);
    let broker = broker_on(&fs, "early").await;
    let (_c, ch) = broker.channel().await;
    for q in ["dq", "nobody"] {
        within(ch.queue_declare(q.into(), durable(), FieldTable::default()))
            .await
            .unwrap();
    }
    within(ch.confirm_select(Default::default())).await.unwrap();
    let (_c2, consumer) = broker.channel().await;
    let mut deliveries = consume(&consumer, "dq").await;
    let _resume = SyncsResumeOnDrop(fs.clone());
    fs.hold_syncs();
    let mut waiting = publish_persistent(&ch, "", "nobody", b"for the disk").await;
    let taken = publish_persistent(&ch, "", "dq", b"taken").await;
    let delivery = within(deliveries.next()).await.unwrap().unwrap();
    assert_eq!(delivery.data, b"taken");
    within(delivery.ack(Default::default())).await.unwrap();
    assert!(
        within(taken).await.unwrap().is_ack(),
        "confirmed once acknowledged"
    );
    assert!(
        futures_lite::future::poll_once(&mut waiting)
            .await
            .is_none(),
        "the message nobody took waits for the disk"
    );
    fs.resume_syncs();
    assert!(within(waiting).await.unwrap().is_ack());
}

/// A message routed to two durable queues is confirmed before the disk has it only once it
/// was acknowledged from both. A delivery without acknowledgement does not count (stricter
/// than RabbitMQ): its bytes may not have reached the consumer when the queue lets it go.
#[tokio::test]
async fn a_message_in_two_queues_is_confirmed_early_only_once_acknowledged_from_both() {
    let fs = SimFs::new(14);
    let broker = broker_on(&fs, "early-two").await;
    let (_c, ch) = broker.channel().await;
    for q in ["q1", "q2", "q3"] {
        within(ch.queue_declare(q.into(), durable(), FieldTable::default()))
            .await
            .unwrap();
    }
    for q in ["q1", "q2"] {
        within(ch.queue_bind(
            q.into(),
            "amq.fanout".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }
    within(ch.confirm_select(Default::default())).await.unwrap();
    let (_c2, consumer) = broker.channel().await;
    let mut deliveries = consume(&consumer, "q1").await;
    let (_c3, getter) = broker.channel().await;
    let _resume = SyncsResumeOnDrop(fs.clone());
    fs.hold_syncs();
    let mut both = publish_persistent(&ch, "amq.fanout", "", b"both").await;
    let mut unacked = publish_persistent(&ch, "", "q3", b"taken without ack").await;
    let delivery = within(deliveries.next()).await.unwrap().unwrap();
    assert_eq!(delivery.data, b"both");
    within(delivery.ack(Default::default())).await.unwrap();
    let got = within(getter.basic_get("q3".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("q3 holds it");
    assert_eq!(got.delivery.data, b"taken without ack");
    // A later message q1 alone holds, acknowledged after the first: once it is confirmed,
    // every acknowledgement before it has been counted.
    let later = publish_persistent(&ch, "", "q1", b"q1 only").await;
    let delivery = within(deliveries.next()).await.unwrap().unwrap();
    assert_eq!(delivery.data, b"q1 only");
    within(delivery.ack(Default::default())).await.unwrap();
    assert!(within(later).await.unwrap().is_ack());
    assert!(
        futures_lite::future::poll_once(&mut both).await.is_none(),
        "q2 still holds it, and the disk has not synced it"
    );
    assert!(
        futures_lite::future::poll_once(&mut unacked)
            .await
            .is_none(),
        "taken without acknowledgement, it waits for the disk"
    );
    let got = within(getter.basic_get("q2".into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .expect("q2 holds it");
    assert_eq!(got.delivery.data, b"both");
    within(got.delivery.ack(Default::default())).await.unwrap();
    assert!(
        within(both).await.unwrap().is_ack(),
        "confirmed once q2 had it acknowledged"
    );
    fs.resume_syncs();
    assert!(within(unacked).await.unwrap().is_ack());
}

// ---- a failed write while a publisher is blocked ---------------------------------------------

/// Regression: a connection blocked by an alarm and then closed by the broker (a durable
/// declare's write failed) parsed nothing more, so its Close-Ok went unseen and the socket
/// stayed open until the 30 s close deadline, keeping what the client sent meanwhile
/// unparsed. Same as RabbitMQ, whose reader leaves `blocked` when it closes: the Close-Ok is
/// read and the socket closes.
#[tokio::test]
async fn a_blocked_connection_the_broker_closes_still_has_its_close_ok_read() {
    use amq_protocol::protocol::{AMQPClass, connection};
    use lepus::config::MemoryWatermark;

    let fs = SimFs::new(14);
    let broker = broker_on(&fs, "blocked").await;
    let server = broker.server.as_ref().unwrap().broker().clone();
    // The alarm is up before the connection opens, so its first publish blocks it.
    server
        .alarms
        .set_memory_watermark(MemoryWatermark::Absolute(1));
    wait_until(|| server.alarms.raised().memory).await;
    let mut raw = common::RawClient::connect(broker.addr).await;
    raw.handshake().await;
    raw.open_channel(1).await;
    let _resume = SyncsResumeOnDrop(fs.clone());
    fs.hold_syncs();
    // A durable declare, whose answer waits for the disk, then a publish, which blocks the
    // connection: both in one write.
    let mut bytes = common::encode(&amq_protocol::frame::AMQPFrame::Method(
        1,
        declare_durable_dq(),
    ));
    bytes.extend(common::publish_frames("dq"));
    raw.send(&bytes).await;
    wait_until(|| {
        server
            .connections
            .list()
            .iter()
            .any(|c| c.info().state() == "blocked")
    })
    .await;
    // The declare's sync fails.
    fs.set_faults(Faults {
        fsync_error: 1.0,
        ..Faults::default()
    });
    fs.resume_syncs();
    let (code, text, _, _) = raw.expect_connection_close().await;
    assert_eq!(code, 541, "{text}");
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    )
    .await;
    assert!(raw.closed().await, "the socket closes after the Close-Ok");
}

// ---- heartbeats while a reply waits for the disk ----------------------------------------------

/// Regression: a reply that waits for the disk (a durable queue's declare-ok) held back the
/// broker's heartbeats with it, so a disk stall longer than two heartbeat intervals made a
/// healthy client give the broker up. Same as RabbitMQ, whose heartbeat sender writes past its
/// writer: the heartbeats go out ahead of the held reply, which follows once the disk has it.
#[tokio::test]
async fn heartbeats_go_on_while_a_reply_waits_for_the_disk() {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{AMQPClass, queue};

    let fs = SimFs::new(15);
    let broker = broker_on(&fs, "heartbeats").await;
    let mut raw = common::RawClient::connect(broker.addr).await;
    raw.handshake_with(FieldTable::default(), 1).await;
    raw.open_channel(1).await;
    let _resume = SyncsResumeOnDrop(fs.clone());
    fs.hold_syncs();
    raw.send_method(1, declare_durable_dq()).await;
    // Two heartbeat intervals: a declare-ok arriving first would mean the disk held nothing.
    for _ in 0..2 {
        match raw.recv().await {
            Some(AMQPFrame::Heartbeat) => {}
            other => panic!("expected a heartbeat while the disk stalls, got {other:?}"),
        }
        raw.send_frame(AMQPFrame::Heartbeat).await;
    }
    fs.resume_syncs();
    match raw.recv_method().await {
        Some((1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)))) => {
            assert_eq!(ok.queue.as_str(), "dq")
        }
        other => panic!("expected declare-ok once the disk has it, got {other:?}"),
    }
}

/// queue.declare of the durable queue `dq`, whose declare-ok waits for the disk.
fn declare_durable_dq() -> amq_protocol::protocol::AMQPClass {
    use amq_protocol::protocol::{AMQPClass, queue};
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: "dq".into(),
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}
