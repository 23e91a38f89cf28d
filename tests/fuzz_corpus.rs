//! The fuzzer's corpus (`tests/fuzz/corpus/<target>/`), replayed through the same entry
//! points on every `cargo test`: every input the fuzzer ever kept (the seeds below, and
//! what coverage-guided runs found) must still pass, on stable Rust, without cargo-fuzz.
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seeds` rewrites the seeds.

use std::path::{Path, PathBuf};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, channel, confirm, queue, tx};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target)
}

/// Runs every file of a target's corpus through its entry point; returns how many.
fn replay(target: &str, entry: fn(&[u8])) -> usize {
    let dir = corpus(target);
    let Ok(files) = std::fs::read_dir(&dir) else {
        panic!("no corpus in {}", dir.display());
    };
    let mut n = 0;
    for file in files {
        let path = file.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        entry(&data);
        n += 1;
    }
    assert!(n > 0, "empty corpus in {}", dir.display());
    n
}

#[test]
fn the_frames_corpus_passes() {
    replay("frames", lepus::fuzz::frames);
}

#[test]
fn the_method_corpus_passes() {
    replay("method", lepus::fuzz::method);
}

#[test]
fn the_properties_corpus_passes() {
    replay("properties", lepus::fuzz::properties);
}

#[test]
fn the_table_corpus_passes() {
    replay("table", lepus::fuzz::table);
}

#[test]
fn the_connection_corpus_passes() {
    replay("connection", lepus::fuzz::connection);
}

// ---- seeds -------------------------------------------------------------------------------

fn encode(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .expect("encodes")
        .write
}

fn method_frame(ch: u16, m: AMQPClass) -> Vec<u8> {
    encode(&AMQPFrame::Method(ch, m))
}

fn payload(m: AMQPClass) -> Vec<u8> {
    let frame = method_frame(1, m);
    frame[7..frame.len() - 1].to_vec()
}

fn x_death_headers() -> FieldTable {
    let mut death = FieldTable::default();
    death.insert("count".into(), AMQPValue::LongLongInt(2));
    death.insert("queue".into(), AMQPValue::LongString("a".into()));
    death.insert("reason".into(), AMQPValue::LongString("expired".into()));
    death.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString("k".into())])),
    );
    let mut h = FieldTable::default();
    h.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    h.insert(
        "CC".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString("cc".into())])),
    );
    h.insert("n".into(), AMQPValue::LongInt(7));
    h
}

fn props() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_headers(x_death_headers())
        .with_delivery_mode(2)
        .with_priority(3)
        .with_reply_to("amq.rabbitmq.reply-to".into())
        .with_expiration("1000".into())
}

fn header_frame(ch: u16, size: u64, properties: BasicProperties) -> Vec<u8> {
    encode(&AMQPFrame::Header(
        ch,
        AMQPContentHeader {
            class_id: 60,
            body_size: size,
            properties,
        },
    ))
}

/// A session after the handshake: declare, bind, publish, consume, get, ack, tx, confirms.
fn session() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(method_frame(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ));
    out.extend(method_frame(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "q".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: {
                let mut a = FieldTable::default();
                a.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(5));
                a.insert("x-message-ttl".into(), AMQPValue::LongInt(0));
                a.insert(
                    "x-dead-letter-exchange".into(),
                    AMQPValue::LongString("".into()),
                );
                a
            },
        })),
    ));
    out.extend(method_frame(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    ));
    out.extend(method_frame(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: true,
            immediate: false,
        })),
    ));
    out.extend(header_frame(1, 5, props()));
    out.extend(encode(&AMQPFrame::Body(1, b"hello".to_vec())));
    out.extend(method_frame(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "q".into(),
            no_ack: false,
        })),
    ));
    out.extend(method_frame(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "q".into(),
            consumer_tag: "c".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ));
    out.extend(method_frame(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 1,
            multiple: true,
        })),
    ));
    out.extend(method_frame(
        2,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ));
    out.extend(method_frame(
        2,
        AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})),
    ));
    out.extend(method_frame(
        2,
        AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
    ));
    out.extend(encode(&AMQPFrame::Heartbeat));
    out
}

#[test]
#[ignore = "rewrites the seed corpus"]
fn write_seeds() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    let session = session();
    write("connection", "seed-session", &session);
    let mut frames = vec![0x17, 0x2a];
    frames.extend(&session);
    write("frames", "seed-session", &frames);
    write(
        "method",
        "seed-publish",
        &payload(AMQPClass::Basic(basic::AMQPMethod::Publish(
            basic::Publish {
                exchange: "amq.topic".into(),
                routing_key: "a.b.c".into(),
                mandatory: false,
                immediate: false,
            },
        ))),
    );
    write(
        "method",
        "seed-declare",
        &payload(AMQPClass::Queue(queue::AMQPMethod::Declare(
            queue::Declare {
                queue: "q".into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: x_death_headers(),
            },
        ))),
    );
    write(
        "method",
        "seed-nack",
        &payload(AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: 9,
            multiple: false,
            requeue: true,
        }))),
    );
    let raw = lepus::protocol::properties::encode_all(&props()).unwrap();
    write("properties", "seed-full", &raw);
    let bare = lepus::protocol::properties::encode_all(&BasicProperties::default()).unwrap();
    write("properties", "seed-empty", &bare);
    write(
        "table",
        "seed-x-death",
        &lepus::protocol::table::encode(&x_death_headers()),
    );
    let mut nested = FieldTable::default();
    for _ in 0..10 {
        let mut outer = FieldTable::default();
        outer.insert("t".into(), AMQPValue::FieldTable(nested));
        outer.insert("s".into(), AMQPValue::LongString(LongString::from("v")));
        nested = outer;
    }
    write(
        "table",
        "seed-nested",
        &lepus::protocol::table::encode(&nested),
    );
}
