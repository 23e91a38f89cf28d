//! Micro-benchmark of compaction: rewriting a 1 MiB segment of 1 KiB messages of which one
//! in a thousand is still unacknowledged (the cost the sync thread pays to keep disk use
//! bounded when old messages stay unacknowledged).
//!
//! `cargo bench --bench store`

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use lepus::store::fs::RealFs;
use lepus::store::record::{MessageParts, Stamp};
use lepus::store::{Position, QueueLog, Store};

const SEGMENT_BYTES: u64 = 1 << 20;

/// A log whose first segment is full and 99.9% acknowledged, synced.
fn mostly_acked_log(store: &Store, id: u64) -> Arc<QueueLog> {
    let log = store.create_queue_log(id).expect("a log");
    // Hold compaction back while the log is made (the queue has not read past anything).
    log.collect_garbage(Some(Position::default()));
    let body = [bytes::Bytes::from(vec![b'x'; 1000])];
    let parts = MessageParts {
        exchange: b"",
        routing_key: b"q",
        properties: &[0, 0],
        body: &body,
    };
    // Enough to fill two segments and start a third: the newest two are never compacted
    // (`QueueLog::compact_now`).
    for seq in 0..2100 {
        log.append_message(seq, &parts, true, &Stamp::default())
            .expect("append");
        if seq % 1000 != 0 {
            log.ack(seq).expect("ack");
        }
    }
    while store.sync_now() {}
    log.collect_garbage(None);
    log
}

fn compaction(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("lepus-bench-store-{}", std::process::id()));
    let Ok(store) = Store::open_manual(Arc::new(RealFs), &dir, SEGMENT_BYTES) else {
        eprintln!("cannot open a store in {}", dir.display());
        return;
    };
    let mut group = c.benchmark_group("compaction");
    group.throughput(Throughput::Bytes(SEGMENT_BYTES));
    let mut id = 0;
    group.bench_function("1MiB_segment_0.1pct_live", |b| {
        b.iter_batched(
            || {
                id += 1;
                mostly_acked_log(&store, id)
            },
            |log| {
                assert!(log.compact_now().expect("compaction"));
                log
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, compaction);
criterion_main!(benches);
