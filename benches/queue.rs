//! Micro-benchmark of a queue's own work per message: enqueue, take for delivery (as
//! basic.get without no-ack), and ack, through the queue's lock, with no consumer attached.
//!
//! `cargo bench --bench queue`

use std::hint::black_box;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lepus::message::Message;
use lepus::protocol::properties::PropertySummary;
use lepus::queue::{Queue, QueueConfig, QueueContext, Settled, Unblock};
use lepus::store::Store;
use lepus::timer::Timers;

const BATCH: usize = 100;

fn enqueue_dequeue_ack(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("lepus-bench-queue-{}", std::process::id()));
    let (Ok(store), Ok(timers)) = (Store::open(&dir, 64 << 20, 256 << 20), Timers::start()) else {
        eprintln!("cannot open a store in {}", dir.display());
        return;
    };
    let queue = Queue::new(
        QueueConfig {
            name: "bench".into(),
            vhost: "/".into(),
            durable: false,
            auto_delete: false,
            exclusive_owner: None,
            arguments: Default::default(),
            id: 0,
        },
        QueueContext {
            store: Arc::new(store),
            timers,
            vhost: Weak::new(),
        },
        None,
        None,
    );
    let message = Arc::new(Message::new(
        Bytes::new(),
        Bytes::from_static(b"bench"),
        Bytes::from_static(&[0x10, 0x00, 1]),
        Bytes::from(vec![b'x'; 16]),
        &PropertySummary::default(),
    ));
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("enqueue_get_ack_x100", |b| {
        let mut settled = Vec::with_capacity(BATCH);
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(queue.publish(message.clone()));
            }
            settled.clear();
            while let Some((entry, _)) = queue.get(false) {
                settled.push(Settled {
                    consumer: None,
                    seq: entry.seq,
                    persisted: false,
                });
            }
            queue.ack(settled.drain(..), Unblock::Nobody);
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, enqueue_dequeue_ack);
criterion_main!(benches);
