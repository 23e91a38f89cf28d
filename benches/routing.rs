//! Micro-benchmarks of routing: matching a topic routing key against 1,000 and 100,000
//! bindings (and adversarial patterns), and a direct exchange with 10 or 100,000 bindings. The trie visits only the branches a key's words lead to, so the cost per
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
                trie.matches(
                    black_box(keys[i].as_bytes()),
                    &mut { usize::MAX },
                    &mut |_| hits += 1,
                );
                black_box(hits)
            })
        });
    }
    group.finish();
}

/// The adversarial cases: a binding with ten `#` against 100-word keys (exponential for a
/// backtracking matcher), and 10,000 bindings of `*` and `#` patterns that all stay alive
/// while a key is walked.
fn topic_adversarial(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic_adversarial");
    group.throughput(Throughput::Elements(1));
    let mut hashes = TopicTrie::default();
    hashes.insert(b"#.#.#.#.#.#.#.#.#.#.z", 1u32);
    let long_key = vec!["w"; 100].join(".");
    group.bench_function("ten_hashes_100_words", |b| {
        b.iter(|| {
            let mut hits = 0u32;
            hashes.matches(
                black_box(long_key.as_bytes()),
                &mut { usize::MAX },
                &mut |_| hits += 1,
            );
            black_box(hits)
        })
    });
    let mut wild = TopicTrie::default();
    for i in 0..10_000u32 {
        // Every pattern of `*` and `#` of up to 13 words, ending in a literal.
        let bits = i + 1;
        let len = 32 - bits.leading_zeros();
        let words: Vec<&str> = (0..len)
            .map(|w| if bits >> w & 1 == 1 { "#" } else { "*" })
            .collect();
        wild.insert(format!("{}.end", words.join(".")).as_bytes(), i);
    }
    let key = vec!["w"; 20].join(".") + ".end";
    group.bench_function("10k_wildcard_bindings_21_words", |b| {
        b.iter(|| {
            let mut hits = 0u32;
            wild.matches(black_box(key.as_bytes()), &mut { usize::MAX }, &mut |_| {
                hits += 1
            });
            black_box(hits)
        })
    });
    group.finish();
}

/// A direct exchange with 10 and with 100,000 bindings: routing a key, and binding then
/// unbinding one more, cost the same (hash lookups, no scans).
fn direct_bindings(c: &mut Criterion) {
    use amq_protocol::types::FieldTable;
    use lepus::broker::exchange::bindings::{
        BindLimits, Binding, Bindings, ExchangeKind, LazyHeaders,
    };
    let mut group = c.benchmark_group("direct_bindings");
    group.throughput(Throughput::Elements(1));
    let binding = |i: u32| Binding {
        destination: i,
        routing_key: format!("key-{i}"),
        arguments: FieldTable::default(),
    };
    let refuse = |_| lepus::amqp_error!(InternalError, "unlimited");
    for count in [10u32, 100_000] {
        let mut bindings = Bindings::new(ExchangeKind::Direct);
        for i in 0..count {
            let _ = bindings.bind(binding(i), BindLimits::NONE, refuse);
        }
        let key = format!("key-{}", count / 2);
        group.bench_function(BenchmarkId::new("route", count), |b| {
            b.iter(|| {
                let mut hits = 0u32;
                let mut none = || None;
                let mut headers = LazyHeaders::new(&mut none);
                bindings.route(
                    &[black_box(key.as_bytes())],
                    &mut headers,
                    &mut { usize::MAX },
                    &mut |_| hits += 1,
                );
                black_box(hits)
            })
        });
        let extra = binding(count + 1);
        group.bench_function(BenchmarkId::new("bind_unbind", count), |b| {
            b.iter(|| {
                let _ = bindings.bind(extra.clone(), BindLimits::NONE, refuse);
                black_box(bindings.unbind(&extra))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, topic_matching, topic_adversarial, direct_bindings);
criterion_main!(benches);
