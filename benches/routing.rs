//! Micro-benchmarks of topic routing: matching a routing key against 1,000 and 100,000
//! bindings. The trie visits only the branches a key's words lead to, so the cost per
//! message grows with the depth of the keys, not with the number of bindings.
//!
//! `cargo bench --bench routing`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lepus::broker::exchange::topic::TopicTrie;

/// Binding keys shaped like real ones: `region.service.event`, with a share of wildcards.
fn binding_key(i: usize) -> String {
    let region = i % 50;
    let service = (i / 50) % 200;
    let event = i / 10_000;
    match i % 10 {
        0 => format!("r{region}.*.e{event}"),
        1 => format!("r{region}.s{service}.#"),
        _ => format!("r{region}.s{service}.e{event}"),
    }
}

fn topic_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic_match");
    group.throughput(Throughput::Elements(1));
    for bindings in [1_000usize, 100_000] {
        let mut trie = TopicTrie::default();
        for i in 0..bindings {
            trie.insert(binding_key(i).as_bytes(), i as u32);
        }
        let keys: Vec<String> = (0..256)
            .map(|i| binding_key(i * 7919 % bindings))
            .map(|k| k.replace(['*', '#'], "x"))
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(bindings), &trie, |b, trie| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) % keys.len();
                let mut hits = 0u32;
                trie.matches(black_box(keys[i].as_bytes()), &mut |_| hits += 1);
                black_box(hits)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, topic_matching);
criterion_main!(benches);
