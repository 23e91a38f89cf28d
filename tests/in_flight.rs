//! Deliveries in flight (pushed by a queue into a connection's outbox, not yet written) when
//! what they were for goes away: a consumer cancelled, a channel closed and reopened under
//! its number, a consumer tag taken again, a transaction rolled back. Each case is sent in
//! one write, so that the broker reads it all before it writes what the queue pushed.

mod common;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, channel, queue, tx};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;

fn consume(queue: &str, tag: &str, nowait: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: queue.into(),
        consumer_tag: tag.into(),
        no_local: false,
        no_ack: false,
        exclusive: false,
        nowait,
        arguments: FieldTable::default(),
    }))
}

fn cancel(tag: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
        consumer_tag: tag.into(),
        nowait: true,
    }))
}

fn qos(prefetch_count: u16, global: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
        prefetch_count,
        global,
    }))
}

fn method(channel: u16, m: AMQPClass) -> Vec<u8> {
    encode(&AMQPFrame::Method(channel, m))
}

/// A queue `name` holding `count` messages of `size` bytes.
async fn filled(broker: &Broker, name: &str, count: usize, size: usize) {
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(name.into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let body = vec![b'x'; size];
    for _ in 0..count {
        within(ch.basic_publish(
            "".into(),
            name.into(),
            Default::default(),
            &body,
            Default::default(),
        ))
        .await
        .unwrap();
    }
    assert_eq!(message_count(&ch, name).await, count as u32);
}

/// Reads frames until a Basic.Deliver; returns its channel and consumer tag.
async fn next_deliver(raw: &mut RawClient) -> (u16, String) {
    loop {
        match raw.recv().await.expect("the broker closed the connection") {
            AMQPFrame::Method(ch, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => {
                return (ch, d.consumer_tag.to_string());
            }
            _ => continue,
        }
    }
}

/// What a queue pushed for a consumer cancelled before it was written goes back to the queue,
/// and its bytes leave the connection's outbox with it. They used to stay counted: after
/// an outbox's worth, the connection never had room for a delivery again.
#[tokio::test]
async fn deliveries_for_a_consumer_cancelled_in_flight_leave_room_for_the_next() {
    let mut config = Config::for_tests();
    config.limits.connection_outbox_bytes = 64 * 1024;
    let broker = Broker::start_with(config).await;
    filled(&broker, "jobs", 64, 8 * 1024).await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    for round in 0..4 {
        let tag = format!("brief-{round}");
        let mut batch = method(1, consume("jobs", &tag, true));
        batch.extend(method(1, cancel(&tag)));
        raw.send(&batch).await;
    }
    raw.send_method(1, consume("jobs", "lasting", false)).await;
    assert_eq!(next_deliver(&mut raw).await, (1, "lasting".into()));
}

/// A queue deleted while its consumer's tag is cancelled and taken by a new consumer of
/// another queue: the deleted queue's cancel is for the old consumer only. It used to
/// remove the new one from its channel, whose deliveries then went nowhere.
#[tokio::test]
async fn a_deleted_queue_cancels_its_consumer_not_a_later_one_with_the_same_tag() {
    let broker = Broker::start().await;
    filled(&broker, "old", 1, 16).await;
    filled(&broker, "new", 0, 16).await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    raw.open_channel(2).await;
    raw.send_method(1, consume("old", "t", false)).await;
    assert_eq!(next_deliver(&mut raw).await, (1, "t".into()));
    let mut batch = method(
        2,
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: "old".into(),
            if_unused: false,
            if_empty: false,
            nowait: true,
        })),
    );
    batch.extend(method(1, cancel("t")));
    batch.extend(method(1, consume("new", "t", true)));
    // Its answer comes once the broker has handled all of the above, the deleted queue's
    // cancel included.
    batch.extend(method(
        2,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "new".into(),
            passive: true,
            ..Default::default()
        })),
    ));
    raw.send(&batch).await;
    loop {
        match raw.recv().await {
            Some(AMQPFrame::Method(2, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))) => break,
            Some(_) => continue,
            None => panic!("the broker closed the connection"),
        }
    }
    let (_c, ch) = broker.channel().await;
    for _ in 0..3 {
        within(ch.basic_publish(
            "".into(),
            "new".into(),
            Default::default(),
            b"m",
            Default::default(),
        ))
        .await
        .unwrap();
    }
    for _ in 0..3 {
        assert_eq!(next_deliver(&mut raw).await, (1, "t".into()));
    }
}

/// A channel closed and opened again under its number, with a channel-wide prefetch of 1:
/// what the old channel's consumer had in flight gives its credit back to the old channel's
/// account, not the new one's. It used to free the new channel's, which then had more
/// unacknowledged deliveries than its prefetch allows.
#[tokio::test]
async fn deliveries_of_a_closed_channel_do_not_free_credit_on_its_successor() {
    let broker = Broker::start().await;
    filled(&broker, "jobs", 20, 16).await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    // The first consumer takes 5, and leaves the rest for the next channel's.
    raw.send_method(1, qos(5, false)).await;
    raw.recv_method().await.expect("qos-ok");
    let mut batch = method(1, consume("jobs", "before", true));
    batch.extend(method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    ));
    batch.extend(method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ));
    batch.extend(method(1, qos(1, true)));
    batch.extend(method(1, consume("jobs", "after", true)));
    raw.send(&batch).await;
    assert_eq!(next_deliver(&mut raw).await, (1, "after".into()));
    // A second delivery would break the prefetch; nothing can be waited on to show that none
    // comes, so give it time.
    let more = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        next_deliver(&mut raw),
    )
    .await;
    assert!(more.is_err(), "a second unacknowledged delivery: {more:?}");
}

/// Same as RabbitMQ: a delivery acknowledged in a transaction that is rolled back is
/// unacknowledged again, and its consumer timeout still runs. It used to be forgotten when
/// the timeout passed while the transaction held the ack.
#[tokio::test]
async fn a_rolled_back_ack_is_timed_out_like_any_unacknowledged_delivery() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "slow".into(),
        Default::default(),
        table(&[("x-consumer-timeout", AMQPValue::LongInt(100))]),
    ))
    .await
    .unwrap();
    within(ch.basic_publish(
        "".into(),
        "slow".into(),
        Default::default(),
        b"job",
        Default::default(),
    ))
    .await
    .unwrap();
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    raw.send_method(1, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})))
        .await;
    raw.send_method(1, consume("slow", "c", true)).await;
    assert_eq!(next_deliver(&mut raw).await, (1, "c".into()));
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 1,
            multiple: false,
        })),
    )
    .await;
    // Past the timeout (time has to pass here), with the ack held by the transaction.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    raw.send_method(1, AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})))
        .await;
    let (code, text, _, _) = raw.expect_channel_close(1).await;
    assert_eq!(code, 406, "{text}");
    assert!(
        text.contains("delivery acknowledgement on channel 1 timed out"),
        "{text}"
    );
}
