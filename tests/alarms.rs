//! Memory and disk alarms, as RabbitMQ raises them: publishers are blocked (and told, when
//! they announced `connection.blocked`), consumers keep draining, and everything resumes when
//! the alarm clears.

mod common;

use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lepus::config::{DiskFreeLimit, MemoryWatermark};

/// Client properties announcing the `connection.blocked` capability.
fn with_blocked_capability() -> FieldTable {
    let mut caps = FieldTable::default();
    caps.insert("connection.blocked".into(), AMQPValue::Boolean(true));
    table(&[("capabilities", AMQPValue::FieldTable(caps))])
}

async fn ready(ch: &lapin::Channel, queue: &str) -> u32 {
    within(ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap()
    .message_count()
}

/// Waits for connection.blocked or unblocked; returns the reason for blocked.
async fn next_flow_frame(raw: &mut RawClient) -> Option<String> {
    loop {
        match raw.recv_method().await {
            Some((0, AMQPClass::Connection(connection::AMQPMethod::Blocked(b)))) => {
                return Some(b.reason.to_string());
            }
            Some((0, AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)))) => return None,
            Some(_) => continue,
            None => panic!("the broker closed the connection"),
        }
    }
}

/// Same as RabbitMQ: under a memory alarm a publisher is blocked at its next message and
/// told `low on memory`; a consumer drains what is there meanwhile; when the alarm clears
/// the publisher is unblocked and its message arrives.
#[tokio::test]
async fn a_memory_alarm_blocks_publishers_and_lets_consumers_drain() {
    let broker = Broker::start().await;
    let server = broker.server.as_ref().unwrap().broker().clone();
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    for _ in 0..3 {
        within(ch.basic_publish(
            "".into(),
            "q".into(),
            Default::default(),
            b"before",
            Default::default(),
        ))
        .await
        .unwrap();
    }
    assert_eq!(ready(&ch, "q").await, 3);

    let mut publisher = broker.raw().await;
    publisher.handshake_with(with_blocked_capability(), 0).await;
    publisher.open_channel(1).await;
    server
        .alarms
        .set_memory_watermark(MemoryWatermark::Absolute(1));
    publisher.send(&publish_frames("q")).await;
    assert_eq!(
        next_flow_frame(&mut publisher).await.as_deref(),
        Some("low on memory")
    );

    // The consumer drains during the alarm; the blocked message has not arrived.
    let (_c2, consumer_ch) = broker.channel().await;
    let mut consumer = within(consumer_ch.basic_consume(
        "q".into(),
        "drain".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    for _ in 0..3 {
        let d = within(consumer.next()).await.unwrap().unwrap();
        assert_eq!(d.data, b"before");
    }
    within(consumer_ch.basic_cancel("drain".into(), Default::default()))
        .await
        .unwrap();
    assert_eq!(ready(&ch, "q").await, 0, "the blocked publish waits");

    server
        .alarms
        .set_memory_watermark(MemoryWatermark::Relative(0.99));
    assert_eq!(next_flow_frame(&mut publisher).await, None, "unblocked");
    let deadline = tokio::time::Instant::now() + WAIT;
    while ready(&ch, "q").await < 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Same as RabbitMQ: the reason names what is low.
#[tokio::test]
async fn the_block_reason_names_memory_disk_or_both() {
    let mut config = Config::for_tests();
    config.limits.disk_free_limit = DiskFreeLimit::Absolute(u64::MAX);
    let broker = Broker::start_with(config).await;
    let server = broker.server.as_ref().unwrap().broker().clone();
    let mut publisher = broker.raw().await;
    publisher.handshake_with(with_blocked_capability(), 0).await;
    publisher.open_channel(1).await;
    publisher.send(&publish_frames("nowhere")).await;
    assert_eq!(
        next_flow_frame(&mut publisher).await.as_deref(),
        Some("low on disk")
    );
    server
        .alarms
        .set_disk_free_limit(DiskFreeLimit::Absolute(0));
    assert_eq!(next_flow_frame(&mut publisher).await, None);

    server
        .alarms
        .set_memory_watermark(MemoryWatermark::Absolute(1));
    server
        .alarms
        .set_disk_free_limit(DiskFreeLimit::Absolute(u64::MAX));
    publisher.send(&publish_frames("nowhere")).await;
    assert_eq!(
        next_flow_frame(&mut publisher).await.as_deref(),
        Some("low on memory & disk")
    );
}

/// A client that did not announce the capability is blocked all the same, just not told:
/// its confirm waits until the alarm clears.
#[tokio::test]
async fn a_client_without_the_capability_is_blocked_silently() {
    let broker = Broker::start().await;
    let server = broker.server.as_ref().unwrap().broker().clone();
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let mut publisher = broker.raw().await;
    publisher.handshake().await;
    publisher.open_channel(1).await;
    server
        .alarms
        .set_memory_watermark(MemoryWatermark::Absolute(1));
    publisher.send(&publish_frames("q")).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(ready(&ch, "q").await, 0);
    server
        .alarms
        .set_memory_watermark(MemoryWatermark::Relative(0.99));
    let deadline = tokio::time::Instant::now() + WAIT;
    while ready(&ch, "q").await < 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Same as RabbitMQ: a blocked connection's heartbeat monitor pauses (it is not read from, so
/// its heartbeats go unseen). Its deadline passing meanwhile must not matter either. It used
/// to: the connection found the deadline due on every turn and spun without yielding, so it
/// never saw the alarm clear, and held a worker thread of the broker.
#[tokio::test]
async fn a_publisher_blocked_past_two_heartbeats_is_unblocked_when_the_alarm_clears() {
    let isolated = IsolatedBroker::start();
    let broker = &isolated.broker;
    let server = broker.server.as_ref().unwrap().broker().clone();
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let mut publisher = broker.raw().await;
    publisher.handshake_with(with_blocked_capability(), 1).await;
    publisher.open_channel(1).await;
    server
        .alarms
        .set_memory_watermark(MemoryWatermark::Absolute(1));
    publisher.send(&publish_frames("q")).await;
    assert_eq!(
        next_flow_frame(&mut publisher).await.as_deref(),
        Some("low on memory")
    );
    // Two heartbeat intervals pass without a byte from the client (time has to pass here).
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    server
        .alarms
        .set_memory_watermark(MemoryWatermark::Relative(0.99));
    // Within the usual wait: the broker's heartbeats keep arriving meanwhile.
    assert_eq!(
        within(next_flow_frame(&mut publisher)).await,
        None,
        "unblocked"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while ready(&ch, "q").await < 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Same as RabbitMQ (its reader takes the alarm and the socket's data in the order they
/// came): a publish sent after the alarm was raised is blocked, every time. It used to slip
/// through now and then, when the connection saw its input and the alarm in one wake-up and
/// looked at the input first: the message was published under the alarm, and the publisher
/// was never told it was blocked.
#[tokio::test]
async fn a_publish_sent_after_the_alarm_is_raised_is_always_blocked() {
    const ROUNDS: u32 = 200;
    let isolated = IsolatedBroker::start();
    let broker = &isolated.broker;
    let server = broker.server.as_ref().unwrap().broker().clone();
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let mut publisher = broker.raw().await;
    publisher.handshake_with(with_blocked_capability(), 0).await;
    publisher.open_channel(1).await;
    for round in 1..=ROUNDS {
        server
            .alarms
            .set_memory_watermark(MemoryWatermark::Absolute(1));
        publisher.send(&publish_frames("q")).await;
        assert_eq!(
            within(next_flow_frame(&mut publisher)).await.as_deref(),
            Some("low on memory"),
            "round {round}"
        );
        assert_eq!(ready(&ch, "q").await, round - 1, "round {round}");
        server
            .alarms
            .set_memory_watermark(MemoryWatermark::Relative(0.99));
        assert_eq!(within(next_flow_frame(&mut publisher)).await, None);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while ready(&ch, "q").await < ROUNDS {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A watermark set stays in force: the alarm monitor, checking at the same moment with the
/// threshold it read before, used to finish after the change's own check now and then and
/// undo it (clearing the alarm just raised), until its next turn a second later.
#[tokio::test]
async fn the_monitor_never_undoes_a_watermark_just_set() {
    let mut config = lepus::config::Config::for_tests();
    // The monitor checks all the time, so that its checks overlap the changes'.
    config.limits.monitor_interval_ms = 1;
    let broker = Broker::start_with(config).await;
    let alarms = &broker.server.as_ref().unwrap().broker().alarms;
    for round in 0..300 {
        alarms.set_memory_watermark(MemoryWatermark::Absolute(1));
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        assert!(alarms.raised().memory, "round {round}: raised");
        alarms.set_memory_watermark(MemoryWatermark::Relative(0.99));
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        assert!(!alarms.raised().memory, "round {round}: cleared");
    }
}

/// Same as RabbitMQ (its reader blocks on body frames as on headers): a publisher that began
/// a message before the alarm is blocked by its next body frame. It used to be blocked only
/// by a content header, so it could go on sending the bodies of messages begun on every
/// channel, never blocked, until the broker ran out of memory.
#[tokio::test]
async fn a_body_frame_under_an_alarm_blocks_a_publisher_mid_message() {
    let broker = Broker::start().await;
    let server = broker.server.as_ref().unwrap().broker().clone();
    let mut publisher = broker.raw().await;
    publisher.handshake_with(with_blocked_capability(), 0).await;
    publisher.open_channel(1).await;
    let mut method = vec![0, 60, 0, 40, 0, 0, 0, 7];
    method.extend_from_slice(b"nowhere");
    method.push(0);
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&1_000_000u64.to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    let mut begun = raw_frame(1, 1, &method);
    begun.extend(raw_frame(2, 1, &header));
    begun.extend(raw_frame(3, 1, &[7; 1000]));
    publisher.send(&begun).await;
    // The channel has taken the message's start: a method round trip on the same channel
    // would be refused mid-message, so a second channel's open shows the frames were read.
    publisher.open_channel(2).await;
    server
        .alarms
        .set_memory_watermark(MemoryWatermark::Absolute(1));
    publisher.send(&raw_frame(3, 1, &[7; 1000])).await;
    assert_eq!(
        within(next_flow_frame(&mut publisher)).await.as_deref(),
        Some("low on memory")
    );
    server
        .alarms
        .set_memory_watermark(MemoryWatermark::Relative(0.99));
    assert_eq!(within(next_flow_frame(&mut publisher)).await, None);
}
