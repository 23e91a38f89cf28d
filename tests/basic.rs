//! The basic class: publishing, consuming, getting, acknowledging, prefetch and dispatch.

mod common;

use amq_protocol::types::AMQPValue;
use common::*;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};

async fn queue(ch: &Channel, name: &str) {
    within(ch.queue_declare(name.into(), Default::default(), FieldTable::default()))
        .await
        .expect("declared");
}

async fn put(ch: &Channel, queue: &str, bodies: impl IntoIterator<Item = String>) {
    for b in bodies {
        within(ch.basic_publish(
            "".into(),
            queue.into(),
            Default::default(),
            b.as_bytes(),
            Default::default(),
        ))
        .await
        .expect("published");
    }
}

fn numbered(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(|i| format!("m{i}"))
}

async fn next(consumer: &mut Consumer) -> Delivery {
    within(consumer.next())
        .await
        .expect("a delivery")
        .expect("not an error")
}

async fn consume(ch: &Channel, queue: &str, tag: &str, no_ack: bool) -> Consumer {
    within(ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("consuming")
}

async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    within(ch.basic_get(queue.into(), Default::default()))
        .await
        .expect("get")
}

fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

/// Drains a queue with basic.get and returns the bodies with their redelivered flags.
async fn drain(ch: &Channel, queue: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue).await {
        out.push((body(&m.delivery), m.delivery.redelivered));
        within(m.delivery.ack(Default::default())).await.unwrap();
    }
    out
}

#[tokio::test]
async fn a_consumer_receives_what_is_published_in_order() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "q").await;
    let mut consumer = consume(&ch, "q", "", true).await;
    assert!(
        consumer.tag().as_str().starts_with("amq.ctag-"),
        "{}",
        consumer.tag()
    );
    put(&ch, "q", numbered(100)).await;
    for i in 0..100 {
        let d = next(&mut consumer).await;
        assert_eq!(body(&d), format!("m{i}"));
        assert_eq!(d.routing_key.as_str(), "q");
        assert!(!d.redelivered);
    }
}

#[tokio::test]
async fn properties_reach_the_consumer_byte_for_byte() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "props").await;
    let headers = table(&[
        ("string", long_str("v")),
        ("int", AMQPValue::LongInt(-7)),
        (
            "nested",
            AMQPValue::FieldTable(table(&[("deep", AMQPValue::Boolean(true))])),
        ),
    ]);
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(3)
        .with_correlation_id("corr".into())
        .with_reply_to("replies".into())
        .with_expiration("60000".into())
        .with_message_id("id-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("kind".into())
        .with_user_id("guest".into())
        .with_app_id("app".into());
    within(ch.basic_publish(
        "".into(),
        "props".into(),
        Default::default(),
        b"{}",
        props.clone(),
    ))
    .await
    .unwrap();
    let got = get(&ch, "props").await.expect("a message");
    assert_eq!(got.delivery.properties, props);
}

#[tokio::test]
async fn large_messages_span_many_frames_both_ways() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "big").await;
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    within(ch.basic_publish(
        "".into(),
        "big".into(),
        Default::default(),
        &payload,
        Default::default(),
    ))
    .await
    .unwrap();
    within(ch.basic_publish(
        "".into(),
        "big".into(),
        Default::default(),
        b"",
        Default::default(),
    ))
    .await
    .unwrap();
    let mut consumer = consume(&ch, "big", "big", true).await;
    assert_eq!(next(&mut consumer).await.data, payload);
    assert!(next(&mut consumer).await.data.is_empty());
}

#[tokio::test]
async fn same_as_rabbitmq_messages_above_the_size_limit_close_the_channel() {
    let mut config = Config::for_tests();
    config.limits.max_message_size_bytes = 1000;
    let broker = Broker::start_with(config).await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    queue(&ch, "limited").await;
    let fits = within(ch.basic_publish(
        "".into(),
        "limited".into(),
        Default::default(),
        &[0u8; 1000],
        Default::default(),
    ))
    .await
    .unwrap();
    assert!(within(fits).await.unwrap().is_ack());
    assert_publish_refused(
        &ch,
        "",
        "limited",
        &[0u8; 1001],
        Default::default(),
        406,
        "PRECONDITION_FAILED - message size 1001 is larger than configured max size 1000",
    )
    .await;
}

#[tokio::test]
async fn same_as_rabbitmq_a_foreign_user_id_is_refused() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    assert_publish_refused(
        &ch,
        "",
        "uid",
        b"x",
        BasicProperties::default().with_user_id("bob".into()),
        406,
        "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'",
    )
    .await;
}

#[tokio::test]
async fn same_as_rabbitmq_mandatory_unroutable_messages_come_back_with_312() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    let confirm = within(async {
        ch.basic_publish(
            "".into(),
            "nobody-home".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap()
    })
    .await;
    assert!(
        confirm.is_ack(),
        "unroutable is still confirmed with an ack"
    );
    let returned = confirm.take_message().expect("returned");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.routing_key.as_str(), "nobody-home");
    assert_eq!(returned.delivery.data, b"lost");
}

#[tokio::test]
async fn basic_get_reports_what_is_left_and_get_empty() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "g").await;
    put(&ch, "g", numbered(3)).await;
    let first = within(async {
        loop {
            if let Some(m) = get(&ch, "g").await {
                return m;
            }
        }
    })
    .await;
    assert_eq!(body(&first.delivery), "m0");
    assert_eq!(first.delivery.delivery_tag, 1);
    let second = get(&ch, "g").await.unwrap();
    assert_eq!(second.message_count, 1);
    let _ = get(&ch, "g").await.unwrap();
    assert!(get(&ch, "g").await.is_none());
}

#[tokio::test]
async fn same_as_rabbitmq_requeued_messages_keep_their_place_and_are_marked_redelivered() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "rq").await;
    put(&ch, "rq", numbered(6)).await;
    let mut taken = Vec::new();
    for _ in 0..4 {
        taken.push(
            within(async {
                loop {
                    if let Some(m) = get(&ch, "rq").await {
                        return m;
                    }
                }
            })
            .await,
        );
    }
    // Reject m2, then m0, with requeue: they go back in front of m4, m5, in their order.
    within(
        taken[2]
            .delivery
            .reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .unwrap();
    within(
        taken[0]
            .delivery
            .reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .unwrap();
    within(taken[1].delivery.ack(Default::default()))
        .await
        .unwrap();
    within(taken[3].delivery.ack(Default::default()))
        .await
        .unwrap();
    assert_eq!(
        drain(&ch, "rq").await,
        vec![
            ("m0".into(), true),
            ("m2".into(), true),
            ("m4".into(), false),
            ("m5".into(), false)
        ]
    );
}

#[tokio::test]
async fn nack_multiple_requeues_everything_up_to_the_tag() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "nm").await;
    put(&ch, "nm", numbered(5)).await;
    within(ch.basic_qos(10, Default::default())).await.unwrap();
    let mut consumer = consume(&ch, "nm", "c", false).await;
    let mut last = 0;
    for _ in 0..3 {
        last = next(&mut consumer).await.delivery_tag;
    }
    within(ch.basic_nack(
        last,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    ))
    .await
    .unwrap();
    // m0..m2 come back redelivered, before m3 and m4 which are still in flight... or next.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let d = next(&mut consumer).await;
        seen.push((body(&d), d.redelivered));
        within(d.ack(Default::default())).await.unwrap();
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("m0".into(), true),
            ("m1".into(), true),
            ("m2".into(), true),
            ("m3".into(), false),
            ("m4".into(), false)
        ]
    );
}

#[tokio::test]
async fn same_as_rabbitmq_ack_of_tag_zero_with_multiple_acks_everything() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "all").await;
    put(&ch, "all", numbered(4)).await;
    let mut consumer = consume(&ch, "all", "c", false).await;
    for _ in 0..4 {
        next(&mut consumer).await;
    }
    within(ch.basic_ack(0, BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    within(ch.basic_cancel("c".into(), Default::default()))
        .await
        .unwrap();
    within(ch.basic_recover(BasicRecoverOptions { requeue: true }))
        .await
        .unwrap();
    assert!(get(&ch, "all").await.is_none(), "nothing left to redeliver");
}

#[tokio::test]
async fn same_as_rabbitmq_an_unknown_delivery_tag_closes_the_channel() {
    use amq_protocol::protocol::{AMQPClass, basic};
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 99,
            multiple: false,
        })),
    )
    .await;
    assert_eq!(
        raw.expect_channel_close(1).await,
        (
            406,
            "PRECONDITION_FAILED - unknown delivery tag 99".into(),
            60,
            80
        )
    );
    // Tag 0 without multiple names no delivery either.
    raw.open_channel(2).await;
    raw.send_method(
        2,
        AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
            delivery_tag: 0,
            requeue: true,
        })),
    )
    .await;
    assert_eq!(
        raw.expect_channel_close(2).await,
        (
            406,
            "PRECONDITION_FAILED - unknown delivery tag 0".into(),
            60,
            90
        )
    );
}

#[tokio::test]
async fn recover_requeues_every_unacked_delivery() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "rec").await;
    put(&ch, "rec", numbered(3)).await;
    let mut consumer = consume(&ch, "rec", "c", false).await;
    for _ in 0..3 {
        assert!(!next(&mut consumer).await.redelivered);
    }
    within(ch.basic_recover(BasicRecoverOptions { requeue: true }))
        .await
        .unwrap();
    for i in 0..3 {
        let d = next(&mut consumer).await;
        assert_eq!(body(&d), format!("m{i}"));
        assert!(d.redelivered);
    }
}

#[tokio::test]
async fn same_as_rabbitmq_recover_without_requeue_is_not_implemented() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.basic_recover(BasicRecoverOptions { requeue: false })).await,
        540,
        "NOT_IMPLEMENTED - requeue=false",
    );
}

#[tokio::test]
async fn closing_a_channel_requeues_its_unacked_messages() {
    let broker = Broker::start().await;
    let (conn, ch) = broker.channel().await;
    queue(&ch, "cc").await;
    put(&ch, "cc", numbered(3)).await;
    let mut consumer = consume(&ch, "cc", "c", false).await;
    for _ in 0..3 {
        next(&mut consumer).await;
    }
    within(ch.close(200, "bye".into())).await.unwrap();
    let ch = within(conn.create_channel()).await.unwrap();
    assert_eq!(
        drain(&ch, "cc").await,
        vec![
            ("m0".into(), true),
            ("m1".into(), true),
            ("m2".into(), true)
        ]
    );
}

#[tokio::test]
async fn closing_a_connection_requeues_its_unacked_messages() {
    let broker = Broker::start().await;
    let (conn, ch) = broker.channel().await;
    queue(&ch, "conn-close").await;
    put(&ch, "conn-close", numbered(2)).await;
    let mut consumer = consume(&ch, "conn-close", "c", false).await;
    next(&mut consumer).await;
    next(&mut consumer).await;
    within(conn.close(200, "bye".into())).await.unwrap();
    let (_c, ch) = broker.channel().await;
    let left = within(async {
        loop {
            let got = drain(&ch, "conn-close").await;
            if !got.is_empty() {
                return got;
            }
        }
    })
    .await;
    assert_eq!(left, vec![("m0".into(), true), ("m1".into(), true)]);
}

#[tokio::test]
async fn same_as_rabbitmq_consumers_share_a_queue_round_robin() {
    let broker = Broker::start().await;
    let (_c1, ch1) = broker.channel().await;
    let (_c2, ch2) = broker.channel().await;
    queue(&ch1, "rr").await;
    let mut a = consume(&ch1, "rr", "a", true).await;
    let mut b = consume(&ch2, "rr", "b", true).await;
    put(&ch1, "rr", numbered(10)).await;
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for _ in 0..5 {
        got_a.push(body(&next(&mut a).await));
        got_b.push(body(&next(&mut b).await));
    }
    assert_eq!(got_a, ["m0", "m2", "m4", "m6", "m8"]);
    assert_eq!(got_b, ["m1", "m3", "m5", "m7", "m9"]);
}

#[tokio::test]
async fn same_as_rabbitmq_prefetch_per_consumer_sends_the_rest_to_consumers_with_room() {
    let broker = Broker::start().await;
    let (_c1, slow) = broker.channel().await;
    let (_c2, fast) = broker.channel().await;
    queue(&slow, "pf").await;
    within(slow.basic_qos(1, Default::default())).await.unwrap();
    let mut s = consume(&slow, "pf", "slow", false).await;
    let mut f = consume(&fast, "pf", "fast", true).await;
    put(&slow, "pf", numbered(6)).await;
    // The slow consumer holds one unacked message; everything else goes to the fast one.
    assert_eq!(body(&next(&mut s).await), "m0");
    for i in 1..6 {
        assert_eq!(body(&next(&mut f).await), format!("m{i}"));
    }
}

#[tokio::test]
async fn same_as_rabbitmq_global_prefetch_is_shared_by_the_channels_consumers() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "g1").await;
    queue(&ch, "g2").await;
    within(ch.basic_qos(2, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let mut c1 = consume(&ch, "g1", "c1", false).await;
    let mut c2 = consume(&ch, "g2", "c2", false).await;
    put(&ch, "g1", numbered(3)).await;
    put(&ch, "g2", numbered(3)).await;
    let first = next(&mut c1).await;
    let second = next(&mut c1).await;
    // Two unacked on the channel: g2's consumer must wait, g1 has one ready left.
    let (_c3, observer) = broker.channel().await;
    let q2 = within(observer.queue_declare(
        "g2".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(q2.message_count(), 3);
    within(first.ack(Default::default())).await.unwrap();
    within(second.ack(Default::default())).await.unwrap();
    // Credit came back: both queues deliver again.
    let mut bodies = Vec::new();
    for _ in 0..2 {
        tokio::select! {
            d = within(c1.next()) => bodies.push(format!("g1:{}", body(&d.unwrap().unwrap()))),
            d = within(c2.next()) => bodies.push(format!("g2:{}", body(&d.unwrap().unwrap()))),
        }
    }
    assert_eq!(bodies.len(), 2);
}

#[tokio::test]
async fn same_as_rabbitmq_higher_priority_consumers_are_served_first() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "prio").await;
    let mut low = consume(&ch, "prio", "low", true).await;
    let mut high = within(ch.basic_consume(
        "prio".into(),
        "high".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        table(&[("x-priority", AMQPValue::LongInt(10))]),
    ))
    .await
    .unwrap();
    put(&ch, "prio", numbered(5)).await;
    for i in 0..5 {
        assert_eq!(body(&next(&mut high).await), format!("m{i}"));
    }
    put(&ch, "prio", ["last".to_string()]).await;
    assert_eq!(body(&next(&mut high).await), "last");
    within(ch.basic_cancel("high".into(), Default::default()))
        .await
        .unwrap();
    put(&ch, "prio", ["for low".to_string()]).await;
    assert_eq!(body(&next(&mut low).await), "for low");
}

#[tokio::test]
async fn same_as_rabbitmq_exclusive_consumers_exclude_others() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "solo").await;
    let _only = within(ch.basic_consume(
        "solo".into(),
        "only".into(),
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let (_c2, ch2) = broker.channel().await;
    assert_amqp_error(
        within(ch2.basic_consume(
            "solo".into(),
            "other".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        403,
        "ACCESS_REFUSED - queue 'solo' in vhost '/' in exclusive use",
    );
}

#[tokio::test]
async fn same_as_rabbitmq_reusing_a_consumer_tag_is_a_connection_error() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "tags").await;
    let _first = consume(&ch, "tags", "dup", true).await;
    assert_amqp_error(
        within(ch.basic_consume(
            "tags".into(),
            "dup".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        530,
        "NOT_ALLOWED - attempt to reuse consumer tag 'dup'",
    );
}

#[tokio::test]
async fn cancel_stops_deliveries_and_leaves_unacked_messages_with_the_channel() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "cancel").await;
    within(ch.basic_qos(1, Default::default())).await.unwrap();
    let mut consumer = consume(&ch, "cancel", "c", false).await;
    put(&ch, "cancel", numbered(3)).await;
    let held = next(&mut consumer).await;
    within(ch.basic_cancel("c".into(), Default::default()))
        .await
        .unwrap();
    // Still unacked and still ackable after the cancel.
    within(held.ack(Default::default())).await.unwrap();
    assert_eq!(
        drain(&ch, "cancel").await,
        vec![("m1".into(), false), ("m2".into(), false)]
    );
}

#[tokio::test]
async fn same_as_rabbitmq_missing_queues_for_consume_and_get_are_404() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.basic_consume(
            "missing".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        404,
        "NOT_FOUND - no queue 'missing' in vhost '/'",
    );
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.basic_get("missing".into(), Default::default())).await,
        404,
        "NOT_FOUND - no queue 'missing' in vhost '/'",
    );
}

#[tokio::test]
async fn many_channels_on_one_connection_work_independently() {
    let broker = Broker::start().await;
    let conn = broker.connect().await;
    let mut channels = Vec::new();
    for i in 0..100 {
        let ch = within(conn.create_channel()).await.unwrap();
        queue(&ch, &format!("many{i}")).await;
        put(&ch, &format!("many{i}"), [format!("hello {i}")]).await;
        channels.push(ch);
    }
    // An error on one channel closes only that channel.
    assert!(
        within(channels[7].queue_declare(
            "nope".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default()
        ))
        .await
        .is_err()
    );
    for (i, ch) in channels.iter().enumerate() {
        if i == 7 {
            continue;
        }
        let m = within(async {
            loop {
                if let Some(m) = get(ch, &format!("many{i}")).await {
                    return m;
                }
            }
        })
        .await;
        assert_eq!(body(&m.delivery), format!("hello {i}"));
    }
    assert!(conn.status().connected());
}

#[tokio::test]
async fn same_as_rabbitmq_channel_flow_can_only_stay_active() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    assert!(
        within(ch.channel_flow(ChannelFlowOptions { active: true }))
            .await
            .unwrap()
    );
    assert_amqp_error(
        within(ch.channel_flow(ChannelFlowOptions { active: false })).await,
        540,
        "NOT_IMPLEMENTED - active=false",
    );
}

#[tokio::test]
async fn a_slow_consumer_holds_back_its_queue_not_the_broker() {
    let mut config = Config::for_tests();
    config.limits.connection_outbox_bytes = 64 * 1024;
    let broker = Broker::start_with(config).await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "slow").await;
    let mut consumer = consume(&ch, "slow", "c", true).await;
    let payload = vec![7u8; 10_000];
    for _ in 0..500 {
        within(ch.basic_publish(
            "".into(),
            "slow".into(),
            Default::default(),
            &payload,
            Default::default(),
        ))
        .await
        .unwrap();
    }
    // Everything arrives, in order, however the outbox throttled it.
    for _ in 0..500 {
        assert_eq!(next(&mut consumer).await.data.len(), 10_000);
    }
}

/// Messages coming back shared out among more consumers, on more connections, than a
/// dispatch scans its batches for (past eight it looks them up): every message goes to
/// exactly one, and every waiting consumer gets some in the same round.
#[tokio::test]
async fn requeued_messages_are_shared_out_once_among_many_connections_consumers() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("work".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    const CONSUMERS: usize = 20;
    const MESSAGES: usize = 400;
    // One consumer takes the whole backlog...
    let (hog_conn, hog) = broker.channel().await;
    let mut hogged = within(hog.basic_consume(
        "work".into(),
        "hog".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    for i in 0..MESSAGES {
        within(ch.basic_publish(
            "".into(),
            "work".into(),
            Default::default(),
            format!("{i}").as_bytes(),
            Default::default(),
        ))
        .await
        .unwrap();
    }
    for _ in 0..MESSAGES {
        within(hogged.next()).await.unwrap().unwrap();
    }
    // ...while twenty others wait on twenty connections.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut connections = Vec::new();
    for n in 0..CONSUMERS {
        let (conn, ch) = broker.channel().await;
        within(ch.basic_qos(5, Default::default())).await.unwrap();
        let mut consumer = within(ch.basic_consume(
            "work".into(),
            format!("c{n}").as_str().into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let body = String::from_utf8_lossy(&d.data).into_owned();
                let _ = d.ack(Default::default()).await;
                if tx.send((n, body)).is_err() {
                    break;
                }
            }
        });
        connections.push((conn, ch));
    }
    // The hog goes: its 400 come back, and one dispatch shares them out.
    within(hog_conn.close(200, "bye".into())).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut by_consumer = [0usize; CONSUMERS];
    while seen.len() < MESSAGES {
        let (n, body) = within(rx.recv()).await.expect("a delivery");
        assert!(seen.insert(body.clone()), "{body} delivered twice");
        by_consumer[n] += 1;
    }
    assert!(by_consumer.iter().all(|&k| k > 0), "{by_consumer:?}");
}
