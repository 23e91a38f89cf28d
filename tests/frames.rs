//! Malformed and out-of-order input: every protocol violation gets RabbitMQ's reply code and
//! text, and nothing a client sends disturbs the broker or other connections.

mod common;

use amq_protocol::protocol::{AMQPClass, basic, channel, queue};
use amq_protocol::types::FieldTable;
use common::*;

fn publish(exchange: &str, routing_key: &str, immediate: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        mandatory: false,
        immediate,
    }))
}

/// A content header frame payload for class 60 with no properties.
fn header_payload(class_id: u16, body_size: u64) -> Vec<u8> {
    let mut p = class_id.to_be_bytes().to_vec();
    p.extend_from_slice(&0u16.to_be_bytes());
    p.extend_from_slice(&body_size.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    p
}

async fn open(broker: &Broker) -> RawClient {
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    raw
}

/// The broker still serves a fresh client after whatever the test did.
async fn still_serves(broker: &Broker) {
    let (_conn, ch) = broker.channel().await;
    let q = within(ch.queue_declare("".into(), Default::default(), FieldTable::default()))
        .await
        .expect("declare works");
    assert!(q.name().as_str().starts_with("amq.gen-"));
}

#[tokio::test]
async fn same_as_rabbitmq_a_frame_over_frame_max_is_refused_from_its_header() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    // Only the 7-byte header of a 4 GiB body frame: the broker must not wait for the rest.
    raw.send(&[3, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF]).await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            501,
            "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,4294967295,131064}".into(),
            0,
            0
        )
    );
    assert!(raw.closed().await);
    still_serves(&broker).await;
}

#[tokio::test]
async fn same_as_rabbitmq_frames_before_tune_are_limited_to_4096_bytes() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    raw.recv_method().await.expect("start");
    raw.send(&[1, 0, 0, 0, 0, 0x10, 0x01]).await;
    assert_eq!(
        raw.recv().await,
        None,
        "dropped without a frame, as during any handshake error"
    );
}

#[tokio::test]
async fn same_as_rabbitmq_a_bad_frame_end_is_a_frame_error() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    let mut frame = raw_frame(1, 1, &[0, 60, 0, 10, 0, 0, 0, 0, 0, 10, 0]);
    *frame.last_mut().unwrap() = 0;
    raw.send(&frame).await;
    let (code, text, ..) = raw.expect_connection_close().await;
    assert_eq!(code, 501);
    assert!(
        text.starts_with("FRAME_ERROR - type 1, all octets = <<0,60,0,10,0,0,0,0,0,10,0>>: {invalid_frame_end_marker,\n"),
        "{text}"
    );
}

#[tokio::test]
async fn same_as_rabbitmq_an_unknown_frame_type_is_a_frame_error() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    raw.send(&raw_frame(9, 1, b"abc")).await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            501,
            "FRAME_ERROR - type 9, all octets = <<\"abc\">>: unknown_frame".into(),
            0,
            0
        )
    );
}

#[tokio::test]
async fn same_as_rabbitmq_content_on_channel_zero_is_unexpected() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    raw.send(&raw_frame(3, 0, b"hello")).await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            505,
            "UNEXPECTED_FRAME - type 3, all octets = <<\"hello\">>".into(),
            0,
            0
        )
    );
}

#[tokio::test]
async fn same_as_rabbitmq_a_heartbeat_on_a_channel_is_unexpected() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    raw.send(&raw_frame(8, 1, b"")).await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            505,
            "UNEXPECTED_FRAME - type 8, all octets = <<>>".into(),
            0,
            0
        )
    );
}

#[tokio::test]
async fn same_as_rabbitmq_a_content_header_without_publish_is_unexpected() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    raw.send(&raw_frame(2, 1, &header_payload(60, 0))).await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead".into(),
            0,
            0
        )
    );
}

#[tokio::test]
async fn same_as_rabbitmq_a_method_where_a_content_header_belongs_is_unexpected() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    raw.send_method(1, publish("", "q", false)).await;
    raw.send_method(1, publish("", "q", false)).await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead".into(),
            60,
            40
        )
    );
}

#[tokio::test]
async fn same_as_rabbitmq_a_header_of_another_class_is_unexpected() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    raw.send_method(1, publish("", "q", false)).await;
    raw.send(&raw_frame(2, 1, &header_payload(50, 0))).await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead"
                .into(),
            60,
            40
        )
    );
}

#[tokio::test]
async fn same_as_rabbitmq_a_method_where_a_body_belongs_is_unexpected() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    raw.send_method(1, publish("", "q", false)).await;
    raw.send(&raw_frame(2, 1, &header_payload(60, 10))).await;
    raw.send(&raw_frame(3, 1, b"12345")).await;
    raw.send_method(1, publish("", "q", false)).await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            505,
            "UNEXPECTED_FRAME - expected content body, got non content body frame instead".into(),
            60,
            40
        )
    );
}

#[tokio::test]
async fn same_as_rabbitmq_a_method_on_an_unopened_channel_is_a_channel_error() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.send_method(
        5,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    )
    .await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            504,
            "CHANNEL_ERROR - expected 'channel.open'".into(),
            60,
            10
        )
    );
}

#[tokio::test]
async fn same_as_rabbitmq_opening_an_open_channel_is_a_channel_error() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            504,
            "CHANNEL_ERROR - second 'channel.open' seen".into(),
            20,
            10
        )
    );
}

#[tokio::test]
async fn same_as_rabbitmq_channel_ids_are_free_but_their_count_is_limited() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake_tuned(FieldTable::default(), 2, 0).await;
    // channel_max 2 limits how many channels are open, not their numbers.
    raw.open_channel(65535).await;
    raw.open_channel(7).await;
    raw.send_method(
        3,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            530,
            "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)".into(),
            0,
            0
        )
    );
}

#[tokio::test]
async fn same_as_rabbitmq_truncated_method_arguments_cannot_be_decoded() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    // queue.declare with nothing after the ticket.
    raw.send(&raw_frame(1, 1, &[0, 50, 0, 10, 0, 0])).await;
    assert_eq!(
        raw.expect_connection_close().await,
        (501, "FRAME_ERROR - cannot decode <<0,0>>".into(), 50, 10)
    );
}

#[tokio::test]
async fn a_malformed_argument_table_is_a_frame_error_not_a_crash() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    // queue.declare "q" with an argument table holding an unknown type tag 'Z'.
    let mut p = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
    let table = [1, b'k', b'Z', 0];
    p.extend_from_slice(&(table.len() as u32).to_be_bytes());
    p.extend_from_slice(&table);
    raw.send(&raw_frame(1, 1, &p)).await;
    let (code, _, class_id, method_id) = raw.expect_connection_close().await;
    assert_eq!((code, class_id, method_id), (501, 50, 10));
    still_serves(&broker).await;
}

#[tokio::test]
async fn an_unknown_method_closes_the_connection_with_a_reason() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    raw.send(&raw_frame(1, 1, &[0, 60, 0, 99])).await;
    let (code, text, class_id, method_id) = raw.expect_connection_close().await;
    assert_eq!((code, class_id, method_id), (503, 60, 99), "{text}");
}

#[tokio::test]
async fn same_as_rabbitmq_immediate_publishing_is_not_implemented() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    raw.send_method(1, publish("", "q", true)).await;
    raw.send(&raw_frame(2, 1, &header_payload(60, 0))).await;
    assert_eq!(
        raw.expect_connection_close().await,
        (540, "NOT_IMPLEMENTED - immediate=true".into(), 60, 40)
    );
}

#[tokio::test]
async fn same_as_rabbitmq_prefetch_size_is_not_implemented() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    // basic.qos prefetch_size=10, prefetch_count=0, global=false
    raw.send(&raw_frame(1, 1, &[0, 60, 0, 10, 0, 0, 0, 10, 0, 0, 0]))
        .await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            540,
            "NOT_IMPLEMENTED - prefetch_size!=0 (10)".into(),
            60,
            10
        )
    );
}

#[tokio::test]
async fn a_connection_error_leaves_other_connections_alone() {
    let broker = Broker::start().await;
    let (_conn, ch) = broker.channel().await;
    within(ch.queue_declare("survivor".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let mut raw = open(&broker).await;
    raw.send(&raw_frame(9, 1, b"garbage")).await;
    raw.expect_connection_close().await;
    within(ch.basic_publish(
        "".into(),
        "survivor".into(),
        Default::default(),
        b"still here",
        Default::default(),
    ))
    .await
    .unwrap();
    let got = within(ch.basic_get("survivor".into(), Default::default()))
        .await
        .unwrap();
    assert_eq!(got.expect("message").delivery.data, b"still here");
}

#[tokio::test]
async fn garbage_after_the_handshake_never_stops_the_broker() {
    let broker = Broker::start().await;
    // A deterministic stream of pseudo-random bytes, fed in many shapes.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..50 {
        let mut raw = broker.raw().await;
        raw.handshake().await;
        if round % 2 == 0 {
            raw.open_channel(1).await;
        }
        let len = (next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 3 == 0 && bytes.len() > 7 {
            // A plausible frame header with a random payload.
            bytes[0] = [1, 2, 3, 8][(next() % 4) as usize];
            bytes[1] = 0;
            bytes[2] = 1;
            let size = (bytes.len() - 8) as u32;
            bytes[3..7].copy_from_slice(&size.to_be_bytes());
            let last = bytes.len() - 1;
            bytes[last] = 0xCE;
        }
        raw.send(&bytes).await;
        drop(raw);
    }
    still_serves(&broker).await;
}

#[tokio::test]
async fn frames_on_a_channel_closed_by_the_broker_are_ignored_until_close_ok() {
    let broker = Broker::start().await;
    let mut raw = open(&broker).await;
    raw.send_method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "missing".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
    .await;
    assert_eq!(
        raw.expect_channel_close(1).await,
        (
            404,
            "NOT_FOUND - no queue 'missing' in vhost '/'".into(),
            50,
            10
        )
    );
    // Ignored while closing.
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    )
    .await;
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    // The channel number is free again.
    raw.open_channel(1).await;
}

#[tokio::test]
async fn a_client_that_sends_a_byte_at_a_time_is_read_to_the_end() {
    // Every read after the first byte returns less than it asked for, and so clears the
    // socket's readiness (`net::transport`): each following byte must still wake the
    // connection. The broker runs on this test's thread, so a yield lets it read each byte
    // before the next is written.
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.stream.set_nodelay(true).expect("nodelay");
    raw.handshake().await;
    raw.open_channel(1).await;
    let (_conn, ch) = broker.channel().await;
    within(ch.queue_declare("bytes".into(), Default::default(), FieldTable::default()))
        .await
        .expect("declare");
    let frames: Vec<u8> = (0..3).flat_map(|_| publish_frames("bytes")).collect();
    for byte in frames {
        raw.send(&[byte]).await;
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
    }
    for _ in 0..3 {
        assert_eq!(get_eventually(&ch, "bytes").await.delivery.data, b"x");
    }
    still_serves(&broker).await;
}

/// Same as RabbitMQ 3.10 (checked on a node; conformance `raw` scenarios compare the two):
/// while a message's content is expected, every method is refused as unexpected before it
/// is decoded, whatever it is or however malformed. Before, a truncated method got 501 and
/// a `basic.qos` with a prefetch size 540.
#[tokio::test]
async fn same_as_rabbitmq_any_method_in_place_of_a_content_header_is_unexpected() {
    let broker = Broker::start().await;
    for method in [
        raw_frame(1, 1, &[0, 60, 0, 40, 0, 0]),
        raw_frame(1, 1, &[0, 60, 0, 10, 0, 0, 0, 10, 0, 0, 0]),
        raw_frame(1, 1, &[0, 20, 0, 41]),
    ] {
        let mut raw = open(&broker).await;
        raw.send_method(1, publish("", "q", false)).await;
        raw.send(&method).await;
        assert_eq!(
            raw.expect_connection_close().await,
            (
                505,
                "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead".into(),
                60,
                40
            )
        );
    }
}

/// Same as RabbitMQ 3.10 (checked on a node): a content frame on a channel never opened
/// meets a channel that expects a method (a method there is a channel error, above).
#[tokio::test]
async fn same_as_rabbitmq_content_on_an_unopened_channel_is_an_unexpected_frame() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.send(&raw_frame(2, 5, &header_payload(60, 0))).await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead".into(),
            0,
            0
        )
    );
}
