//! Micro-benchmark of a queue's own work per message: enqueue, take for delivery (as
//! basic.get without no-ack), and ack, through the queue's lock, with no consumer attached.
//!
//! `cargo bench --bench queue`

use std::hint::black_box;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lepus::broker::memory::Memory;
use lepus::broker::message::Message;
use lepus::broker::queue::context::{QueueHost, QueueServices};
use lepus::broker::queue::delivery::{DeliverySource, Settled, Unblock};
use lepus::broker::queue::{Queue, QueueConfig};
use lepus::broker::timer::Timers;
use lepus::protocol::properties::PropertySummary;
use lepus::store::Store;

const BATCH: usize = 100;

/// The queue's host: this benchmark dead-letters nothing and expires nothing.
struct NoHost;

impl QueueHost for NoHost {
    fn dead_letter(
        &self,
        _: &str,
        _: lepus::broker::queue::dead_letter::DlxTarget,
        _: Vec<lepus::broker::queue::dead_letter::DeadLetter>,
    ) {
    }
    fn queue_expired(&self, _: &str, _: usize) {}
}

fn enqueue_dequeue_ack(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("lepus-bench-queue-{}", std::process::id()));
    let (Ok(store), Ok(timers)) = (Store::open(&dir, 64 << 20), Timers::start()) else {
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
        QueueServices {
            store: Arc::new(store),
            memory: Memory::leaked(256 << 20),
            timers,
            host: Weak::<NoHost>::new(),
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
            queue.ack(std::mem::take(&mut settled), Unblock::Nobody);
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, enqueue_dequeue_ack);
criterion_main!(benches);
