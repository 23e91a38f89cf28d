//! Connection establishment, as clients observe it on the wire.

mod common;

use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use common::*;

fn start_ok(mechanism: &str, response: &[u8], client_properties: FieldTable) -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties,
        mechanism: mechanism.into(),
        response: LongString::from(response.to_vec()),
        locale: "en_US".into(),
    }))
}

fn with_auth_failure_close() -> FieldTable {
    table(&[(
        "capabilities",
        AMQPValue::FieldTable(table(&[(
            "authentication_failure_close",
            AMQPValue::Boolean(true),
        )])),
    )])
}

async fn expect_start(raw: &mut RawClient) -> connection::Start {
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    match raw.recv_method().await {
        Some((0, AMQPClass::Connection(connection::AMQPMethod::Start(s)))) => s,
        other => panic!("expected Connection.Start, got {other:?}"),
    }
}

#[tokio::test]
async fn same_as_rabbitmq_a_wrong_protocol_header_gets_ours_back_and_a_closed_socket() {
    let broker = Broker::start().await;
    for header in [
        &b"AMQP\x00\x00\x09\x00"[..],
        b"AMQP\x00\x00\x08\x00",
        b"HTTP/1.1",
        b"AMQP\x00\x01\x00\x00",
    ] {
        let mut raw = broker.raw().await;
        raw.send(header).await;
        assert_eq!(
            raw.read_raw(64).await,
            b"AMQP\x00\x00\x09\x01",
            "for {header:?}"
        );
    }
}

#[tokio::test]
async fn same_as_rabbitmq_the_0_9_draft_header_is_answered_as_0_9_1() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.send(b"AMQP\x01\x01\x00\x09").await;
    let (_, start) = raw.recv_method().await.expect("start");
    let AMQPClass::Connection(connection::AMQPMethod::Start(start)) = start else {
        panic!("expected start");
    };
    assert_eq!((start.version_major, start.version_minor), (0, 9));
}

#[tokio::test]
async fn start_offers_rabbitmq_shaped_properties_and_both_mechanisms() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    let start = expect_start(&mut raw).await;
    assert_eq!(start.mechanisms.as_bytes(), b"AMQPLAIN PLAIN");
    assert_eq!(start.locales.as_bytes(), b"en_US");
    let props = start.server_properties;
    for key in [
        "product",
        "version",
        "platform",
        "copyright",
        "information",
        "cluster_name",
    ] {
        assert!(
            matches!(props.inner().get(key), Some(AMQPValue::LongString(_))),
            "missing {key}"
        );
    }
    let Some(AMQPValue::FieldTable(caps)) = props.inner().get("capabilities") else {
        panic!("no capabilities table");
    };
    for cap in [
        "connection.blocked",
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "{cap}"
        );
    }
}

#[tokio::test]
async fn product_and_version_are_configurable() {
    // By default Lepus reports the RabbitMQ release it behaves like, so that clients which
    // branch on it (kombu) take the RabbitMQ path; platform says what is really running.
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    let props = expect_start(&mut raw).await.server_properties;
    assert_eq!(props.inner().get("product"), Some(&long_str("RabbitMQ")));
    assert_eq!(props.inner().get("version"), Some(&long_str("3.10.8")));
    let Some(AMQPValue::LongString(platform)) = props.inner().get("platform") else {
        panic!("no platform");
    };
    assert!(platform.as_bytes().starts_with(b"Lepus "));
    let mut config = Config::for_tests();
    config.product = "Lepus".into();
    config.version = "0.1.0".into();
    let broker = Broker::start_with(config).await;
    let mut raw = broker.raw().await;
    let props = expect_start(&mut raw).await.server_properties;
    assert_eq!(props.inner().get("product"), Some(&long_str("Lepus")));
    assert_eq!(props.inner().get("version"), Some(&long_str("0.1.0")));
}

#[tokio::test]
async fn same_as_rabbitmq_tune_offers_2047_channels_128k_frames_60s_heartbeat() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    expect_start(&mut raw).await;
    raw.send_method(
        0,
        start_ok("PLAIN", b"\0guest\0guest", FieldTable::default()),
    )
    .await;
    let Some((0, AMQPClass::Connection(connection::AMQPMethod::Tune(t)))) = raw.recv_method().await
    else {
        panic!("expected tune");
    };
    assert_eq!(
        (t.channel_max, t.frame_max, t.heartbeat),
        (2047, 131072, 60)
    );
}

#[tokio::test]
async fn amqplain_logs_in_with_a_table_without_length_prefix() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    expect_start(&mut raw).await;
    let creds = table(&[
        ("LOGIN", long_str("guest")),
        ("PASSWORD", long_str("guest")),
    ]);
    let encoded = amq_protocol::types::generation::gen_field_table(&creds)(Vec::new().into())
        .expect("encodes")
        .write;
    raw.send_method(
        0,
        start_ok("AMQPLAIN", &encoded[4..], FieldTable::default()),
    )
    .await;
    assert!(matches!(
        raw.recv_method().await,
        Some((0, AMQPClass::Connection(connection::AMQPMethod::Tune(_))))
    ));
}

#[tokio::test]
async fn same_as_rabbitmq_bad_credentials_close_with_403_when_the_client_asks() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    expect_start(&mut raw).await;
    raw.send_method(
        0,
        start_ok("PLAIN", b"\0guest\0wrong", with_auth_failure_close()),
    )
    .await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.".into(),
            0,
            0
        )
    );
    assert!(raw.closed().await);
}

#[tokio::test]
async fn same_as_rabbitmq_bad_credentials_without_the_capability_just_close_the_socket() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    expect_start(&mut raw).await;
    raw.send_method(
        0,
        start_ok("PLAIN", b"\0nobody\0guest", FieldTable::default()),
    )
    .await;
    assert_eq!(raw.recv().await, None, "no frame, only a closed socket");
}

#[tokio::test]
async fn lapin_sees_a_refused_login() {
    let broker = Broker::start().await;
    let uri = format!("amqp://guest:nope@{}/%2f", broker.addr);
    let result = within(lapin::Connection::connect(
        &uri,
        lapin::ConnectionProperties::default(),
    ))
    .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn same_as_rabbitmq_an_unknown_vhost_is_530() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    expect_start(&mut raw).await;
    raw.send_method(
        0,
        start_ok("PLAIN", b"\0guest\0guest", FieldTable::default()),
    )
    .await;
    raw.recv_method().await.expect("tune");
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 0,
        })),
    )
    .await;
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "nope".into(),
        })),
    )
    .await;
    assert_eq!(
        raw.expect_connection_close().await,
        (530, "NOT_ALLOWED - vhost nope not found".into(), 10, 40)
    );
}

#[tokio::test]
async fn same_as_rabbitmq_tune_ok_above_the_offer_is_dropped_silently() {
    let broker = Broker::start().await;
    let mut cases = Vec::new();
    for (channel_max, frame_max) in [
        (2047, 1024),
        (2047, 0),
        (2047, 131073),
        (0, 131072),
        (2048, 131072),
    ] {
        let mut raw = broker.raw().await;
        cases.push(tokio::spawn(async move {
            expect_start(&mut raw).await;
            raw.send_method(
                0,
                start_ok("PLAIN", b"\0guest\0guest", FieldTable::default()),
            )
            .await;
            raw.recv_method().await.expect("tune");
            raw.send_method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                    channel_max,
                    frame_max,
                    heartbeat: 0,
                })),
            )
            .await;
            assert_eq!(
                raw.recv().await,
                None,
                "channel_max {channel_max} frame_max {frame_max}"
            );
        }));
    }
    for case in cases {
        case.await.expect("case passes");
    }
}

#[tokio::test]
async fn heartbeats_are_sent_and_a_silent_client_is_dropped() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake_with(FieldTable::default(), 1).await;
    // The broker sends heartbeats while we stay silent...
    assert_eq!(raw.recv().await, Some(AMQPFrame::Heartbeat));
    // ...and drops us once we have been silent for two intervals.
    loop {
        match raw.recv().await {
            Some(AMQPFrame::Heartbeat) => continue,
            None => break,
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn no_heartbeats_when_the_client_negotiates_zero() {
    let mut config = Config::for_tests();
    config.limits.heartbeat_s = 1;
    let broker = Broker::start_with(config).await;
    let mut raw = broker.raw().await;
    raw.handshake_with(FieldTable::default(), 0).await;
    // With heartbeats on, one would arrive every half second.
    let quiet = tokio::time::timeout(Duration::from_millis(2500), raw.recv()).await;
    assert!(quiet.is_err(), "got {quiet:?}");
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_dropped() {
    let mut config = Config::for_tests();
    config.limits.handshake_timeout_s = 1;
    let broker = Broker::start_with(config).await;
    let mut raw = broker.raw().await;
    raw.send(b"AMQP").await;
    assert!(raw.closed().await);
}

#[tokio::test]
async fn connection_close_is_answered_with_close_ok() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    assert!(matches!(
        raw.recv_method().await,
        Some((0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))))
    ));
    assert!(raw.closed().await);
}

#[tokio::test]
async fn lapin_connects_and_closes_cleanly() {
    let broker = Broker::start().await;
    let conn = broker.connect().await;
    assert!(conn.status().connected());
    within(conn.close(200, "bye".into())).await.expect("closes");
}

#[tokio::test]
async fn same_as_rabbitmq_shutdown_sends_320_connection_forced() {
    let mut broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    broker.stop().await;
    assert_eq!(
        raw.expect_connection_close().await,
        (
            320,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'".into(),
            0,
            0
        )
    );
}

/// Same as RabbitMQ, whose reader is closing by the time an operator's close returns: a
/// publish the client sends after that is not routed. It was now and then, when the
/// connection saw the client's input and the close in one wake-up and read the input first.
#[tokio::test]
async fn a_publish_sent_after_an_operator_closed_the_connection_is_not_routed() {
    const ROUNDS: usize = 100;
    let isolated = IsolatedBroker::start();
    let broker = &isolated.broker;
    let server = broker.server.as_ref().unwrap().broker().clone();
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    for round in 0..ROUNDS {
        let mut raw = broker.raw().await;
        raw.handshake().await;
        raw.open_channel(1).await;
        let me = raw.stream.local_addr().unwrap();
        let control = server
            .connections
            .list()
            .into_iter()
            .find(|c| c.info().peer == me)
            .expect("the connection is listed");
        control.close(320, "CONNECTION_FORCED - maintenance".into());
        raw.send(&publish_frames("q")).await;
        assert_eq!(
            within(raw.expect_connection_close()).await.0,
            320,
            "round {round}"
        );
    }
    assert_eq!(message_count(&ch, "q").await, 0);
}

/// Same as RabbitMQ (its reader pauses the heartbeat monitor whenever it stops reading): a
/// client the broker is not reading from, here because a large delivery fills its output,
/// is not dropped for missed heartbeats it sent meanwhile. Before, only an alarm paused the
/// check: a consumer taking a 20 MiB message over a slow link for longer than two heartbeat
/// intervals was disconnected though it read and sent heartbeats all along.
#[tokio::test]
async fn a_client_not_read_while_its_output_is_full_keeps_its_connection() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("big".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    const BODY_BYTES: usize = 20 * 1024 * 1024;
    within(ch.basic_publish(
        "".into(),
        "big".into(),
        Default::default(),
        &vec![7u8; BODY_BYTES],
        Default::default(),
    ))
    .await
    .unwrap();
    let mut raw = broker.raw().await;
    raw.handshake_with(FieldTable::default(), 1).await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Consume(
            amq_protocol::protocol::basic::Consume {
                queue: "big".into(),
                consumer_tag: "slow".into(),
                no_local: false,
                no_ack: true,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            },
        )),
    )
    .await;
    // Three heartbeat intervals pass, the client heartbeating but reading nothing.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        raw.send(&raw_frame(8, 0, &[])).await;
    }
    let mut body = 0;
    while body < BODY_BYTES {
        match raw.recv().await {
            Some(AMQPFrame::Body(_, bytes)) => body += bytes.len(),
            Some(_) => {}
            None => panic!("dropped after {body} bytes of the body"),
        }
    }
    // Still open: a round trip on the channel.
    raw.send_method(
        1,
        AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Qos(
            amq_protocol::protocol::basic::Qos {
                prefetch_count: 1,
                global: false,
            },
        )),
    )
    .await;
    loop {
        match raw.recv_method().await {
            Some((1, AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::QosOk(_)))) => {
                break;
            }
            Some(_) => continue,
            None => panic!("the connection closed"),
        }
    }
}
