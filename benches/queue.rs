//! Micro-benchmarks of a queue's own work per message: enqueue, take for delivery (as
//! basic.get without no-ack), and ack, through the queue's lock, with no consumer attached;
//! and dispatch to 1 or 10,000 consumers, which must cost the same per message.
//!
//! `cargo bench --bench queue`

use std::hint::black_box;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lepus::broker::memory::Memory;
use lepus::broker::message::Message;
use lepus::broker::queue::consumer::Consumer;
use lepus::broker::queue::context::{QueueHost, QueueServices};
use lepus::broker::queue::delivery::{Delivery, DeliverySink, DeliverySource, Settled, Unblock};
use lepus::broker::queue::prefetch::ChannelPrefetch;
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

/// A consumer's connection that takes every delivery and drops it.
struct DropSink;

impl DeliverySink for DropSink {
    fn sink_id(&self) -> u64 {
        1
    }
    fn has_room(&self, _size: usize, _batched: usize) -> bool {
        true
    }
    fn push_deliveries(&self, d: &mut Vec<Delivery>, _bytes: usize) -> Result<(), Vec<Delivery>> {
        d.clear();
        Ok(())
    }
    fn consumer_cancelled(&self, _channel: u16, _consumer: u64, _tag: Bytes) {}
}

/// A queue with a store in a fresh directory (returned, for removal).
fn bench_queue(name: &str) -> Option<(Arc<Queue>, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!("lepus-bench-{name}-{}", std::process::id()));
    let (Ok(store), Ok(timers)) = (Store::open(&dir, 64 << 20), Timers::start()) else {
        eprintln!("cannot open a store in {}", dir.display());
        return None;
    };
    let queue = Queue::new(
        QueueConfig {
            name: name.into(),
            vhost: "/".into(),
            durable: false,
            auto_delete: false,
            exclusive_owner: None,
            arguments: Default::default(),
            id: 0,
            share: None,
        },
        QueueServices {
            store: Arc::new(store),
            memory: Memory::leaked(256 << 20),
            timers,
            host: Weak::<NoHost>::new(),
            dead_letter_retry_ms: 180_000,
        },
        None,
        None,
    );
    Some((queue, dir))
}

fn small_message() -> Arc<Message> {
    Arc::new(Message::new(
        Bytes::new(),
        Bytes::from_static(b"bench"),
        Bytes::from_static(&[0x10, 0x00, 1]),
        Bytes::from(vec![b'x'; 16]),
        &PropertySummary::default(),
    ))
}

fn enqueue_dequeue_ack(c: &mut Criterion) {
    let Some((queue, dir)) = bench_queue("bench") else {
        return;
    };
    let message = small_message();
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
                settled.push(Settled::of(&entry, None));
            }
            queue.ack(std::mem::take(&mut settled), Unblock::Nobody);
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publishing to a queue whose consumers (no-ack, so they never block) take turns: the
/// cost per message with 10,000 consumers is that with one.
fn dispatch_to_consumers(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch_with_consumers");
    group.throughput(Throughput::Elements(BATCH as u64));
    for consumers in [1u64, 10_000] {
        let Some((queue, dir)) = bench_queue(&format!("consumers-{consumers}")) else {
            return;
        };
        let sink: Arc<dyn DeliverySink> = Arc::new(DropSink);
        let prefetch = Arc::new(ChannelPrefetch::new(0));
        for id in 0..consumers {
            let added = queue.add_consumer(Consumer {
                id,
                tag: Bytes::from(format!("c{id}")),
                channel: 1,
                sink: sink.clone(),
                channel_prefetch: prefetch.clone(),
                no_ack: true,
                exclusive: false,
                prefetch_count: 0,
                in_flight: 0,
                priority: 0,
                arguments: Default::default(),
                blocked: None,
                dead: false,
            });
            if added.is_err() {
                eprintln!("cannot add consumer {id}");
                return;
            }
        }
        let message = small_message();
        group.bench_function(BenchmarkId::from_parameter(consumers), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    black_box(queue.publish(message.clone()));
                }
            })
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

criterion_group!(benches, enqueue_dequeue_ack, dispatch_to_consumers);
criterion_main!(benches);
