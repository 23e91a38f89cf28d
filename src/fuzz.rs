//! Entry points for the coverage-guided fuzzer (`tests/fuzz`, run with cargo-fuzz) and for
//! `tests/fuzz_corpus.rs`, which replays the fuzzer's corpus on every `cargo test`.
//!
//! Each entry point takes arbitrary bytes and must return, whatever they are: no panic, no
//! unbounded recursion, no allocation of what the bytes merely announce. Between them they
//! cover every parser a client's bytes reach: frame splitting over arbitrary reads, method
//! decoding, content headers and properties (and the dead-letter rewrite of their headers),
//! field tables, and a whole connection to a running broker.

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{FieldTable, LongString};
use bytes::Bytes;

use crate::amqp::input::{ByteSource, Input};
use crate::broker::memory::Memory;
use crate::broker::message::Message;
use crate::broker::queue::dead_letter::{DlxTarget, Reason, is_cycle, make_message};
use crate::protocol::{basic, method, properties, raw_table, table};
use crate::{Config, Server};

/// The frame_max the fuzzed frames are checked against (RabbitMQ's default).
const FRAME_MAX_BYTES: u32 = 131_072;

fn memory() -> &'static Memory {
    static MEMORY: OnceLock<&'static Memory> = OnceLock::new();
    MEMORY.get_or_init(|| Memory::leaked(64 << 20))
}

/// Bytes handed out in reads of varying sizes, as a socket would.
struct Reads<'a> {
    data: &'a [u8],
    seed: u32,
}

impl ByteSource for Reads<'_> {
    fn read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        if self.data.is_empty() {
            return Ok(0);
        }
        self.seed = self.seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let want = 1 + (self.seed >> 16) as usize % 4096;
        let room = buf.capacity() - buf.len();
        let n = want.min(room).min(self.data.len());
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        buf.extend_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// A stream of frames, cut into reads at sizes the first two bytes choose: every complete
/// frame is split off where it should be and decoded as the connection would.
pub fn frames(data: &[u8]) {
    let (seed, data) = match data {
        [a, b, rest @ ..] => (u32::from_le_bytes([*a, *b, 0, 0]), rest),
        _ => return,
    };
    let mut input = Input::new(8192, memory());
    let mut reads = Reads { data, seed };
    let mut consumed = 0usize;
    loop {
        match input.read(&mut reads, FRAME_MAX_BYTES) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match input.next_frame(FRAME_MAX_BYTES) {
                Ok(Some(frame)) => {
                    let header = frame.header;
                    consumed += header.total_len();
                    assert_eq!(
                        frame.payload.len() + frame.rest.as_ref().map_or(0, |r| r.len()),
                        header.size as usize,
                        "a frame's slices add up to its size"
                    );
                    let payload = frame.joined();
                    assert!(consumed <= data.len(), "frames cover more than was read");
                    match header.kind {
                        1 => method(&payload),
                        2 => content_header(&payload),
                        _ => {}
                    }
                }
                // More bytes needed, or the connection would close here.
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// A method frame's payload, decoded by the cold path and by the hot-path decoders.
pub fn method(payload: &[u8]) {
    let _ = method::parse_method(payload);
    if let Some((class, id)) = method::method_ids(payload) {
        let _ = method::is_known(class, id);
        match (class, id) {
            (60, 40) => {
                let _ = basic::parse_publish(Bytes::copy_from_slice(payload));
            }
            (60, 80 | 90 | 120) => {
                let _ = basic::parse_settle(id, payload);
            }
            (60, 10) => {
                let _ = basic::qos_prefetch_size(payload);
            }
            _ => {}
        }
    }
}

fn content_header(payload: &[u8]) {
    if let Ok(header) = basic::parse_content_header(Bytes::copy_from_slice(payload)) {
        let _ = header;
    }
    if let Some(props) = payload.get(12..) {
        self::properties(props);
    }
}

/// A raw property list: scanned as the publish path scans it, decoded when the scan passes,
/// and rewritten as a dead letter (its `x-death` edited in encoded form) twice over.
pub fn properties(raw: &[u8]) {
    let Ok(summary) = properties::scan(raw) else {
        return;
    };
    // The scan checked the headers' depth: decoding them is bounded.
    let _ = properties::decode_all(raw);
    if let Some(range) = &summary.headers {
        let _ = properties::decode_headers(raw, range);
    }
    if summary.reply_to.is_some() {
        let _ = properties::replace_reply_to(raw, &summary, "amq.rabbitmq.reply-to.x");
    }
    let raw = Bytes::copy_from_slice(raw);
    let mut message = Message::new(
        Bytes::from_static(b"x"),
        Bytes::from_static(b"key"),
        raw,
        Bytes::from_static(b"body"),
        &summary,
    );
    for (queue, reason) in [("a", Reason::Expired), ("b", Reason::Rejected)] {
        let target = DlxTarget {
            exchange: "dlx".into(),
            routing_key: None,
        };
        let Some(dead) = make_message(&message, reason, queue, &target, 0) else {
            return;
        };
        let _ = is_cycle("a", &dead.headers);
        assert!(
            properties::scan(&dead.message.properties).is_ok(),
            "a dead letter's properties must scan"
        );
        message = dead.message;
    }
}

/// A field table (length first): depth-checked, then decoded only if the check passed, and
/// walked in encoded form.
pub fn table(data: &[u8]) {
    if table::check_depth(data, table::MAX_TABLE_DEPTH).is_ok() {
        let _ = amq_protocol::types::parsing::parse_field_table(data);
    }
    for (_, value) in raw_table::entries(data) {
        let _ = raw_table::as_bytes(value);
        for item in raw_table::items(value) {
            if let Some(inner) = raw_table::as_table(item) {
                let _ = raw_table::get(inner, b"queue");
            }
        }
    }
}

/// A broker for [`connection`], started once per process on a loopback port.
fn broker() -> Option<&'static (tokio::runtime::Runtime, SocketAddr)> {
    static BROKER: OnceLock<Option<(tokio::runtime::Runtime, SocketAddr)>> = OnceLock::new();
    BROKER
        .get_or_init(|| {
            // A panic anywhere in the broker is a finding, even one a task would survive.
            let report = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                report(info);
                std::process::abort();
            }));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .ok()?;
            let mut config = Config::for_tests();
            config.limits.handshake_timeout_s = 1;
            let server = runtime.block_on(Server::start(config)).ok()?;
            let addr = server.local_addr();
            // The broker lives as long as the process.
            std::mem::forget(server);
            Some((runtime, addr))
        })
        .as_ref()
}

/// The bytes a client sends to get a connection open (PLAIN as guest), before the fuzzed
/// ones: most of a broker's surface is behind Connection.Open.
fn handshake() -> Vec<u8> {
    let mut out = b"AMQP\x00\x00\x09\x01".to_vec();
    let methods = [
        connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: LongString::from(b"\0guest\0guest".to_vec()),
            locale: "en_US".into(),
        }),
        connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 16,
            frame_max: FRAME_MAX_BYTES,
            heartbeat: 0,
        }),
        connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        }),
    ];
    for m in methods {
        method::write_method(&mut out, 0, &AMQPClass::Connection(m));
    }
    out
}

/// A whole connection: the handshake, then the fuzzed bytes, to a running broker over TCP.
/// Whatever they do, the broker must not panic; the connection ends when the broker has
/// handled them and closed it.
pub fn connection(data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some((runtime, addr)) = broker() else {
        return;
    };
    runtime.block_on(async {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            return;
        };
        let mut bytes = handshake();
        bytes.extend_from_slice(data);
        if stream.write_all(&bytes).await.is_err() {
            return;
        }
        // End of input: the broker handles what it was sent, then sees the stream end and
        // closes (after a fatal error it keeps the socket a moment for the client to read
        // the close, so a quiet socket ends the wait too; the broker finishes on its own).
        let _ = stream.shutdown().await;
        let mut sink = vec![0u8; 64 * 1024];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let idle = tokio::time::Instant::now() + Duration::from_millis(20);
            match tokio::time::timeout_at(idle.min(deadline), stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => continue,
                _ => break,
            }
        }
    });
}
