//! Micro-benchmarks of the hand-written hot path of the wire format: splitting frames out of
//! a read buffer, decoding basic.publish and its content header, and encoding basic.deliver
//! with its content. These are the per-message costs of every publish and delivery; keep
//! each optimisation of them measured here.
//!
//! `cargo bench --bench protocol`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lepus::protocol::basic::{
    CLASS_BASIC, PUBLISH, parse_content_header, parse_publish, write_content, write_deliver,
};
use lepus::protocol::frame::{
    FRAME_HEADER, FRAME_METHOD, FrameWriter, check_frame_end, peek_frame,
};
use lepus::protocol::properties::{self, DELIVERY_MODE};

const FRAME_MAX: u32 = 131_072;
const MESSAGES: usize = 1000;

/// delivery_mode=1, the properties a typical small message carries.
fn properties() -> Vec<u8> {
    let mut p = DELIVERY_MODE.to_be_bytes().to_vec();
    p.push(1);
    p
}

/// The three frames of one basic.publish of `body` to `routing_key` on channel 1.
fn publish_frames(out: &mut Vec<u8>, routing_key: &[u8], body: &[u8]) {
    let start = out.begin_frame(FRAME_METHOD, 1);
    out.extend_from_slice(&CLASS_BASIC.to_be_bytes());
    out.extend_from_slice(&PUBLISH.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.push(0); // exchange ""
    out.push(routing_key.len() as u8);
    out.extend_from_slice(routing_key);
    out.push(0); // mandatory=false, immediate=false
    out.end_frame(start);
    let start = out.begin_frame(FRAME_HEADER, 1);
    out.extend_from_slice(&CLASS_BASIC.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(&properties());
    out.end_frame(start);
    write_content_body(out, body);
}

fn write_content_body(out: &mut Vec<u8>, body: &[u8]) {
    let start = out.begin_frame(lepus::protocol::frame::FRAME_BODY, 1);
    out.extend_from_slice(body);
    out.end_frame(start);
}

fn frame_splitting(c: &mut Criterion) {
    let mut buf = Vec::new();
    for _ in 0..MESSAGES {
        publish_frames(&mut buf, b"work", &[b'x'; 16]);
    }
    let mut group = c.benchmark_group("frame_split");
    group.throughput(Throughput::Elements(3 * MESSAGES as u64));
    group.bench_function("publish_16B_x1000", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut frames = 0u32;
            while let Ok(Some(h)) = peek_frame(&buf[at..], FRAME_MAX) {
                if check_frame_end(&buf[at..], &h).is_err() {
                    break;
                }
                at += h.total_len();
                frames += 1;
            }
            black_box(frames)
        })
    });
    group.finish();
}

fn publish_decoding(c: &mut Criterion) {
    let mut buf = Vec::new();
    publish_frames(&mut buf, b"orders.eu.created", &[b'x'; 16]);
    let buf = Bytes::from(buf);
    let method_len = peek_frame(&buf, FRAME_MAX)
        .ok()
        .flatten()
        .map(|h| h.size as usize)
        .unwrap_or(0);
    let method = buf.slice(7..7 + method_len);
    let header_at = 7 + method_len + 1;
    let header_len = peek_frame(&buf[header_at..], FRAME_MAX)
        .ok()
        .flatten()
        .map(|h| h.size as usize)
        .unwrap_or(0);
    let header = buf.slice(header_at + 7..header_at + 7 + header_len);
    let mut group = c.benchmark_group("publish_decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("method_header_properties", |b| {
        b.iter(|| {
            let publish = parse_publish(black_box(method.clone()));
            let content = parse_content_header(black_box(header.clone()));
            let summary = content
                .as_ref()
                .ok()
                .map(|h| properties::scan(&h.properties));
            black_box((publish, summary))
        })
    });
    group.finish();
}

fn deliver_encoding(c: &mut Criterion) {
    let props = properties();
    let body = [b'x'; 16];
    let mut out = Vec::with_capacity(64 * 1024);
    let mut group = c.benchmark_group("deliver_encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("deliver_16B", |b| {
        let mut tag = 0u64;
        b.iter(|| {
            if out.len() > 60 * 1024 {
                out.clear();
            }
            tag += 1;
            write_deliver(
                &mut out,
                1,
                b"amq.ctag-0123456789abcdef",
                tag,
                false,
                b"",
                b"work",
            );
            write_content(&mut out, 1, black_box(&props), black_box(&body), FRAME_MAX);
        })
    });
    group.finish();
}

criterion_group!(benches, frame_splitting, publish_decoding, deliver_encoding);
criterion_main!(benches);
