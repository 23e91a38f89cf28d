//! Single active consumer, consumer acknowledgement timeouts, and quorum queues' delivery
//! limit and refusals, as RabbitMQ does them.

mod common;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::{Channel, Consumer};

async fn publish(ch: &Channel, queue: &str, body: &str) {
    within(ch.basic_publish(
        "".into(),
        queue.into(),
        Default::default(),
        body.as_bytes(),
        Default::default(),
    ))
    .await
    .unwrap();
}

async fn consume(ch: &Channel, queue: &str, tag: &str, args: FieldTable) -> Consumer {
    within(ch.basic_consume(queue.into(), tag.into(), Default::default(), args))
        .await
        .expect("consumer")
}

/// The next `n` deliveries, each acked: their bodies, `*` after a redelivered one.
async fn acked_in_turn(consumer: &mut Consumer, n: usize) -> String {
    let mut seen = Vec::new();
    for _ in 0..n {
        let d = within(consumer.next()).await.unwrap().unwrap();
        seen.push(format!(
            "{}{}",
            String::from_utf8_lossy(&d.data),
            if d.redelivered { "*" } else { "" }
        ));
        within(d.ack(Default::default())).await.unwrap();
    }
    seen.join(" ")
}

/// A new channel whose consumers share one credit (`basic.qos` 1, global).
async fn channel_with_one_credit(conn: &lapin::Connection) -> Channel {
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.basic_qos(1, BasicQosOptions { global: true }))
        .await
        .unwrap();
    ch
}

fn sac() -> FieldTable {
    table(&[("x-single-active-consumer", AMQPValue::Boolean(true))])
}

#[tokio::test]
async fn same_as_rabbitmq_single_active_consumer_gets_everything_until_it_goes() {
    let broker = Broker::start().await;
    let (_c1, ch1) = broker.channel().await;
    let (_c2, ch2) = broker.channel().await;
    let (_c3, ch3) = broker.channel().await;
    within(ch1.queue_declare("sac".into(), Default::default(), sac()))
        .await
        .unwrap();
    let mut first = consume(&ch1, "sac", "first", FieldTable::default()).await;
    let mut low = consume(&ch2, "sac", "low", FieldTable::default()).await;
    // A later consumer with a higher priority does not take over...
    let mut high = consume(
        &ch3,
        "sac",
        "high",
        table(&[("x-priority", AMQPValue::LongInt(5))]),
    )
    .await;
    let q = within(ch1.queue_declare(
        "sac".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(q.consumer_count(), 3, "waiting consumers count too");
    for i in 0..3 {
        publish(&ch1, "sac", &format!("m{i}")).await;
    }
    for i in 0..3 {
        let d = within(first.next()).await.unwrap().unwrap();
        assert_eq!(d.data, format!("m{i}").as_bytes());
        within(d.ack(Default::default())).await.unwrap();
    }
    // ...but when the active one goes, the highest priority is next.
    within(ch1.basic_cancel("first".into(), Default::default()))
        .await
        .unwrap();
    publish(&ch2, "sac", "after").await;
    let d = within(high.next()).await.unwrap().unwrap();
    assert_eq!(d.data, b"after");
    within(d.ack(Default::default())).await.unwrap();
    // The low-priority consumer got nothing.
    within(ch3.basic_cancel("high".into(), Default::default()))
        .await
        .unwrap();
    publish(&ch2, "sac", "last").await;
    let d = within(low.next()).await.unwrap().unwrap();
    assert_eq!(d.data, b"last");
}

/// Same as RabbitMQ 3.10 (checked on a node): a quorum queue hands over to the earliest
/// registered waiting consumer, whatever the priorities (`rabbit_fifo` keeps them in
/// registration order); a classic queue picks the highest priority (the test above).
#[tokio::test]
async fn same_as_rabbitmq_a_quorum_queue_hands_over_in_registration_order() {
    let broker = Broker::start().await;
    let (_c1, ch1) = broker.channel().await;
    let (_c2, ch2) = broker.channel().await;
    let (_c3, ch3) = broker.channel().await;
    let mut args = sac();
    args.insert("x-queue-type".into(), long_str("quorum"));
    within(ch1.queue_declare(
        "qsac".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    ))
    .await
    .unwrap();
    let _first = consume(&ch1, "qsac", "first", FieldTable::default()).await;
    let mut low = consume(&ch2, "qsac", "low", FieldTable::default()).await;
    let _high = consume(
        &ch3,
        "qsac",
        "high",
        table(&[("x-priority", AMQPValue::LongInt(5))]),
    )
    .await;
    within(ch1.basic_cancel("first".into(), Default::default()))
        .await
        .unwrap();
    publish(&ch1, "qsac", "after").await;
    let d = within(low.next()).await.unwrap().unwrap();
    assert_eq!(d.data, b"after");
}

#[tokio::test]
async fn same_as_rabbitmq_unacked_messages_of_a_closed_active_consumer_go_to_the_next() {
    let broker = Broker::start().await;
    let (_c1, ch1) = broker.channel().await;
    let (_c2, ch2) = broker.channel().await;
    within(ch1.queue_declare("sac".into(), Default::default(), sac()))
        .await
        .unwrap();
    let mut first = consume(&ch1, "sac", "first", FieldTable::default()).await;
    let mut second = consume(&ch2, "sac", "second", FieldTable::default()).await;
    publish(&ch2, "sac", "job").await;
    let _unacked = within(first.next()).await.unwrap().unwrap();
    within(ch1.close(200, "bye".into())).await.unwrap();
    let d = within(second.next()).await.unwrap().unwrap();
    assert_eq!(d.data, b"job");
    assert!(d.redelivered);
}

/// Same as RabbitMQ (its queue requeues a closed channel's messages, then hands over): the
/// next active consumer gets what the last one held before anything after it, so the
/// queue's order holds across the handover. Before, the successor was picked and fed at
/// once, and got m6..m10 before m1..m5 came back.
#[tokio::test]
async fn same_as_rabbitmq_a_single_active_consumers_successor_gets_what_it_held_first() {
    let broker = Broker::start().await;
    let (_c1, ch1) = broker.channel().await;
    let (_c2, ch2) = broker.channel().await;
    within(ch1.queue_declare("sac".into(), Default::default(), sac()))
        .await
        .unwrap();
    for i in 1..=20 {
        publish(&ch2, "sac", &format!("m{i}")).await;
    }
    within(ch1.basic_qos(5, Default::default())).await.unwrap();
    within(ch2.basic_qos(5, Default::default())).await.unwrap();
    let mut first = consume(&ch1, "sac", "first", FieldTable::default()).await;
    let mut second = consume(&ch2, "sac", "second", FieldTable::default()).await;
    for i in 1..=5 {
        let d = within(first.next()).await.unwrap().unwrap();
        assert_eq!(d.data, format!("m{i}").as_bytes());
    }
    within(ch1.close(200, "bye".into())).await.unwrap();
    assert_eq!(
        acked_in_turn(&mut second, 10).await,
        "m1* m2* m3* m4* m5* m6 m7 m8 m9 m10"
    );
}

/// As above, with a delivery still on its way when the channel closes: the client acks m1
/// and closes in one write, so the ack's credit sends m6 towards it and the close finds m6
/// in the connection's outbox, not yet written. It goes back with m2..m5, before the
/// successor gets anything: RabbitMQ counts what it sent a channel as held by it.
#[tokio::test]
async fn same_as_rabbitmq_a_successor_also_gets_what_was_on_its_way_to_the_last_one_first() {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{AMQPClass, basic, channel};
    let broker = Broker::start().await;
    let (_c2, ch2) = broker.channel().await;
    within(ch2.queue_declare("sac".into(), Default::default(), sac()))
        .await
        .unwrap();
    for i in 1..=20 {
        publish(&ch2, "sac", &format!("m{i}")).await;
    }
    let mut first = broker.raw().await;
    first.handshake().await;
    first.open_channel(1).await;
    let qos = basic::Qos {
        prefetch_count: 5,
        global: false,
    };
    first
        .send_method(1, AMQPClass::Basic(basic::AMQPMethod::Qos(qos)))
        .await;
    let start = basic::Consume {
        queue: "sac".into(),
        consumer_tag: "first".into(),
        no_local: false,
        no_ack: false,
        exclusive: false,
        nowait: false,
        arguments: FieldTable::default(),
    };
    first
        .send_method(1, AMQPClass::Basic(basic::AMQPMethod::Consume(start)))
        .await;
    let mut delivered = 0;
    while delivered < 5 {
        if let Some(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Deliver(_)))) =
            first.recv().await
        {
            delivered += 1;
        }
    }
    within(ch2.basic_qos(10, Default::default())).await.unwrap();
    let mut second = consume(&ch2, "sac", "second", FieldTable::default()).await;
    let ack = basic::Ack {
        delivery_tag: 1,
        multiple: false,
    };
    let close = channel::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    };
    let mut one_write = encode(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(ack)),
    ));
    one_write.extend(encode(&AMQPFrame::Method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(close)),
    )));
    first.send(&one_write).await;
    assert_eq!(
        acked_in_turn(&mut second, 10).await,
        "m2* m3* m4* m5* m6 m7 m8 m9 m10 m11"
    );
}

#[tokio::test]
async fn same_as_rabbitmq_an_exclusive_consumer_is_refused_on_a_single_active_consumer_queue() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("sac".into(), Default::default(), sac()))
        .await
        .unwrap();
    assert_amqp_error(
        within(ch.basic_consume(
            "sac".into(),
            "x".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await,
        403,
        "ACCESS_REFUSED - queue 'sac' in vhost '/' in exclusive use",
    );
}

#[tokio::test]
async fn same_as_rabbitmq_a_delivery_held_past_the_consumer_timeout_closes_the_channel() {
    use amq_protocol::protocol::{AMQPClass, basic};
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "jobs".into(),
        Default::default(),
        table(&[("x-consumer-timeout", AMQPValue::LongInt(50))]),
    ))
    .await
    .unwrap();
    publish(&ch, "jobs", "job").await;
    // A consumer that takes the job and never acks it.
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    raw.open_channel(2).await;
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "jobs".into(),
            consumer_tag: "slow".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
    .await;
    assert_eq!(
        raw.expect_channel_close(1).await,
        (
            406,
            "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: 50 ms. This timeout value can be configured, see consumers doc guide to learn more".into(),
            0,
            0
        )
    );
    // The message went back to the queue; the connection's other channel is unaffected.
    let again = within(ch.basic_get("jobs".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("requeued");
    assert!(again.delivery.redelivered);
}

/// A channel closed by an error while it holds a delivery with a consumer timeout waits for
/// the client's Close-Ok; the timeout's deadline passing meanwhile must not matter. It used
/// to: the connection found the deadline due on every turn and spun without yielding, so it
/// never read again (a worker thread of the broker lost with it).
#[tokio::test]
async fn a_consumer_timeout_passing_while_its_channel_closes_leaves_the_connection_working() {
    use amq_protocol::protocol::{AMQPClass, basic};
    let isolated = IsolatedBroker::start();
    let broker = &isolated.broker;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "jobs".into(),
        Default::default(),
        table(&[("x-consumer-timeout", AMQPValue::LongInt(100))]),
    ))
    .await
    .unwrap();
    publish(&ch, "jobs", "job").await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "jobs".into(),
            consumer_tag: "c".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: true,
            arguments: FieldTable::default(),
        })),
    )
    .await;
    // An acknowledgement of a tag never delivered closes the channel at once, the delivery
    // still held; the client does not answer the close.
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 99,
            multiple: false,
        })),
    )
    .await;
    let (code, text, _, _) = raw.expect_channel_close(1).await;
    assert_eq!(code, 406, "{text}");
    // Past the consumer timeout (time has to pass here: nothing to wait on).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    raw.open_channel(2).await;
    let again = within(ch.basic_get("jobs".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("requeued");
    assert!(again.delivery.redelivered);
}

fn quorum(limit: Option<i32>) -> FieldTable {
    let mut t = table(&[("x-queue-type", long_str("quorum"))]);
    if let Some(l) = limit {
        t.insert("x-delivery-limit".into(), AMQPValue::LongInt(l));
    }
    t
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn delivery_count(d: &lapin::message::Delivery) -> Option<AMQPValue> {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned())
}

#[tokio::test]
async fn same_as_rabbitmq_quorum_queues_count_deliveries_and_dead_letter_past_the_limit() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    dead_letter_target(&ch, "dlx", "dlq").await;
    let mut args = quorum(Some(2));
    args.insert("x-dead-letter-exchange".into(), long_str("dlx"));
    within(ch.queue_declare("qq".into(), durable(), args))
        .await
        .unwrap();
    publish(&ch, "qq", "poison").await;
    let mut consumer = consume(&ch, "qq", "c", FieldTable::default()).await;
    let mut counts = Vec::new();
    for _ in 0..3 {
        let d = within(consumer.next()).await.unwrap().unwrap();
        counts.push((d.redelivered, delivery_count(&d)));
        within(d.nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    assert_eq!(
        counts,
        [
            (false, None),
            (true, Some(AMQPValue::LongLongInt(1))),
            (true, Some(AMQPValue::LongLongInt(2))),
        ]
    );
    // Returned a third time: more than the limit of 2, so it is dead-lettered.
    let dead = within(async {
        loop {
            if let Some(m) = ch
                .basic_get("dlq".into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                return m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let h = dead.delivery.properties.headers().clone().unwrap();
    assert_eq!(
        h.inner().get("x-first-death-reason"),
        Some(&long_str("delivery_limit"))
    );
    // Same as RabbitMQ, which adds the count to what it delivers, not to the message it
    // dead-letters.
    assert_eq!(delivery_count(&dead.delivery), None);
}

#[tokio::test]
async fn same_as_rabbitmq_basic_get_on_a_quorum_queue_always_reports_the_delivery_count() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("qq".into(), durable(), quorum(None)))
        .await
        .unwrap();
    publish(&ch, "qq", "x").await;
    let got = within(ch.basic_get("qq".into(), Default::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned()),
        Some(AMQPValue::LongLongInt(0))
    );
}

#[tokio::test]
async fn same_as_rabbitmq_quorum_queues_must_be_durable_shared_and_permanent() {
    let broker = Broker::start().await;
    let conn = broker.connect().await;
    for (opts, property) in [
        (QueueDeclareOptions::default(), "non-durable"),
        (
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            "auto-delete",
        ),
        (
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            "exclusive-owner",
        ),
    ] {
        let ch = within(conn.create_channel()).await.unwrap();
        assert_amqp_error(
            within(ch.queue_declare("qq".into(), opts, quorum(None))).await,
            406,
            &format!(
                "PRECONDITION_FAILED - invalid property '{property}' for queue 'qq' in vhost '/'"
            ),
        );
    }
    let ch = within(conn.create_channel()).await.unwrap();
    let mut args = quorum(None);
    args.insert("x-max-priority".into(), AMQPValue::LongInt(5));
    assert_amqp_error(
        within(ch.queue_declare("qq".into(), durable(), args)).await,
        406,
        "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'qq' in vhost '/' of queue type rabbit_quorum_queue",
    );
}

/// Same as RabbitMQ 3.10.8: a channel with a channel-wide prefetch cannot consume from a
/// quorum queue (a connection error); with one set after the consume, or with a zero
/// prefetch, it can.
#[tokio::test]
async fn same_as_rabbitmq_quorum_queues_refuse_consumers_under_a_global_prefetch() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("qq".into(), durable(), quorum(None)))
        .await
        .unwrap();
    within(ch.basic_qos(0, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let _first = consume(&ch, "qq", "zero", FieldTable::default()).await;
    within(ch.basic_qos(5, BasicQosOptions { global: true }))
        .await
        .unwrap();
    publish(&ch, "qq", "still flows").await;
    let (_c2, ch2) = broker.channel().await;
    within(ch2.basic_qos(5, BasicQosOptions { global: true }))
        .await
        .unwrap();
    assert_amqp_error(
        within(ch2.basic_consume(
            "qq".into(),
            "global".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        540,
        "NOT_IMPLEMENTED - queue 'qq' in vhost '/' does not support global qos",
    );
}

/// Same as RabbitMQ 3.10.8: `queue.delete` with `if-unused` or `if-empty` on a quorum queue
/// is a connection error, whatever the queue holds; the queue stays.
#[tokio::test]
async fn same_as_rabbitmq_quorum_queues_refuse_conditional_deletes() {
    let broker = Broker::start().await;
    for (options, flag) in [
        (
            QueueDeleteOptions {
                if_unused: true,
                if_empty: true,
                ..Default::default()
            },
            "if-unused",
        ),
        (
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
            "if-empty",
        ),
    ] {
        let (_c, ch) = broker.channel().await;
        within(ch.queue_declare("qq".into(), durable(), quorum(None)))
            .await
            .unwrap();
        assert_amqp_error(
            within(ch.queue_delete("qq".into(), options)).await,
            540,
            &format!(
                "NOT_IMPLEMENTED - cannot delete queue 'qq' in vhost '/'. queue.delete operations with {flag} flag set are not supported by quorum queues"
            ),
        );
    }
    let (_c, ch) = broker.channel().await;
    assert_eq!(message_count(&ch, "qq").await, 0);
}

/// With a channel-wide prefetch (`basic.qos global=true`) shared by consumers of several
/// queues, the credit an ack frees goes to the queues in turn, not always to the queue just
/// acked: RabbitMQ spreads 99 deliveries over three queues about evenly.
#[tokio::test]
async fn same_as_rabbitmq_channel_wide_prefetch_is_shared_fairly_between_queues() {
    let broker = Broker::start().await;
    let (conn, ch) = broker.channel().await;
    for q in ["fair-0", "fair-1", "fair-2"] {
        within(ch.queue_declare(q.into(), Default::default(), FieldTable::default()))
            .await
            .unwrap();
        within(ch.queue_bind(
            q.into(),
            "amq.fanout".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }
    let consuming = channel_with_one_credit(&conn).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, q) in ["fair-0", "fair-1", "fair-2"].into_iter().enumerate() {
        let mut consumer = consume(&consuming, q, &format!("c{i}"), FieldTable::default()).await;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                if tx.send((i, d)).is_err() {
                    break;
                }
            }
        });
    }
    for n in 0..100 {
        within(ch.basic_publish(
            "amq.fanout".into(),
            "".into(),
            Default::default(),
            format!("{n}").as_bytes(),
            Default::default(),
        ))
        .await
        .unwrap();
    }
    let mut per_queue = [0u32; 3];
    for _ in 0..99 {
        let (i, d) = within(rx.recv()).await.expect("a delivery");
        per_queue[i] += 1;
        within(d.ack(Default::default())).await.unwrap();
    }
    for n in per_queue {
        assert!(n >= 25, "each queue gets about a third: {per_queue:?}");
    }
}

/// Credit that an ack on one queue frees goes to the other queues whose consumers wait for
/// it, and the channel knows each consumer's queue as consumers come and go: a queue whose
/// first consumer was cancelled is still asked while another consumer of it remains.
#[tokio::test]
async fn channel_credit_reaches_a_queue_while_any_consumer_of_it_remains() {
    let broker = Broker::start().await;
    let (conn, ch) = broker.channel().await;
    for q in ["kept", "other"] {
        within(ch.queue_declare(q.into(), Default::default(), FieldTable::default()))
            .await
            .unwrap();
    }
    let consuming = channel_with_one_credit(&conn).await;
    let first = consume(&consuming, "kept", "first", FieldTable::default()).await;
    let mut second = consume(&consuming, "kept", "second", FieldTable::default()).await;
    let mut other = consume(&consuming, "other", "o", FieldTable::default()).await;
    within(consuming.basic_cancel("first".into(), Default::default()))
        .await
        .unwrap();
    drop(first);
    // The one credit goes to "other"; "kept" waits for it.
    publish(&ch, "other", "x").await;
    let held = within(other.next()).await.unwrap().unwrap();
    publish(&ch, "kept", "a").await;
    publish(&ch, "kept", "b").await;
    within(held.ack(Default::default())).await.unwrap();
    assert_eq!(acked_in_turn(&mut second, 2).await, "a b");
}

/// Same as RabbitMQ: raising a channel-wide prefetch (or lifting it with a per-consumer
/// `basic.qos`) lets the queues its consumers waited on deliver at once, without an ack.
/// (A `basic.qos` asks the queues again only when it widens the credit and some queue
/// went without: a stream of them no longer asks every queue the channel consumes from.)
#[tokio::test]
async fn a_wider_channel_prefetch_lets_waiting_messages_through() {
    let broker = Broker::start().await;
    let (conn, ch) = broker.channel().await;
    within(ch.queue_declare("widened".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    for n in 0..5 {
        within(ch.basic_publish(
            "".into(),
            "widened".into(),
            Default::default(),
            format!("{n}").as_bytes(),
            Default::default(),
        ))
        .await
        .unwrap();
    }
    let consuming = channel_with_one_credit(&conn).await;
    let mut consumer = consume(&consuming, "widened", "w", FieldTable::default()).await;
    let mut next = async || within(consumer.next()).await.unwrap().unwrap();
    next().await;
    // The same limit again widens nothing; a wider one lets two more through.
    within(consuming.basic_qos(1, BasicQosOptions { global: true }))
        .await
        .unwrap();
    within(consuming.basic_qos(3, BasicQosOptions { global: true }))
        .await
        .unwrap();
    next().await;
    next().await;
    within(consuming.basic_qos(0, BasicQosOptions { global: false }))
        .await
        .unwrap();
    next().await;
    next().await;
}

/// Credit an ack frees under a channel-wide prefetch reaches the queue whose consumer waits
/// for it, beside queues with nothing to send: only the queues that went without credit are
/// asked, as RabbitMQ's limiter asks only those it blocked (asking all of up to 65,536
/// queues at every ack made a run of acks cost acks x queues).
#[tokio::test]
async fn channel_credit_goes_round_empty_queues_to_the_one_with_messages() {
    let broker = Broker::start().await;
    let (conn, ch) = broker.channel().await;
    let names = ["empty-0", "empty-1", "full", "empty-2"];
    for q in names {
        within(ch.queue_declare(q.into(), Default::default(), FieldTable::default()))
            .await
            .unwrap();
    }
    let consuming = channel_with_one_credit(&conn).await;
    let mut full = None;
    for q in names {
        let consumer = consume(&consuming, q, q, FieldTable::default()).await;
        if q == "full" {
            full = Some(consumer);
        }
    }
    let mut full = full.expect("the full queue's consumer");
    for body in ["a", "b", "c", "d"] {
        publish(&ch, "full", body).await;
    }
    assert_eq!(acked_in_turn(&mut full, 4).await, "a b c d");
}
