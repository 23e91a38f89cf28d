//! Message TTL (`x-message-ttl`, the `expiration` property) and queue TTL (`x-expires`), as
//! RabbitMQ 3.10 applies them: expiry is fixed at enqueue, happens at the head of the queue,
//! on a timer, and also on the way out.

mod common;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::{BasicProperties, Channel};

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

async fn count(ch: &Channel, queue: &str) -> u32 {
    within(ch.queue_declare(queue.into(), passive(), FieldTable::default()))
        .await
        .expect("queue exists")
        .message_count()
}

async fn publish(ch: &Channel, queue: &str, body: &[u8], props: BasicProperties) {
    within(ch.basic_publish("".into(), queue.into(), Default::default(), body, props))
        .await
        .expect("published");
}

fn expiring(ms: &str) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.into())
}

/// Waits until `queue` holds `n` messages. TTLs are time-based, so this polls, within the
/// suite-wide bound.
async fn wait_for_count(ch: &Channel, queue: &str, n: u32) {
    within(async {
        while count(ch, queue).await != n {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
}

#[tokio::test]
async fn same_as_rabbitmq_queue_ttl_expires_messages_without_any_client_activity() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "q".into(),
        Default::default(),
        table(&[("x-message-ttl", AMQPValue::LongInt(30))]),
    ))
    .await
    .unwrap();
    publish(&ch, "q", b"a", Default::default()).await;
    publish(&ch, "q", b"b", Default::default()).await;
    wait_for_count(&ch, "q", 0).await;
}

#[tokio::test]
async fn same_as_rabbitmq_only_the_head_expires_so_a_short_ttl_waits_behind_a_long_one() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    publish(&ch, "q", b"long", expiring("60000")).await;
    publish(&ch, "q", b"short", expiring("10")).await;
    // Give the short one time to pass its expiry: it is still counted behind the head.
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    assert_eq!(count(&ch, "q").await, 2);
    let got = within(ch.basic_get("q".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.delivery.data, b"long");
    assert_eq!(
        got.message_count, 0,
        "the expired one went right after the fetch"
    );
    assert_eq!(count(&ch, "q").await, 0);
}

#[tokio::test]
async fn same_as_rabbitmq_the_shorter_of_queue_and_message_ttl_applies() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "q".into(),
        Default::default(),
        table(&[("x-message-ttl", AMQPValue::LongInt(60000))]),
    ))
    .await
    .unwrap();
    publish(&ch, "q", b"x", expiring("10")).await;
    wait_for_count(&ch, "q", 0).await;
}

#[tokio::test]
async fn same_as_rabbitmq_ttl_zero_is_delivered_to_a_waiting_consumer_or_expires_at_once() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    publish(&ch, "q", b"nobody there", expiring("0")).await;
    assert_eq!(count(&ch, "q").await, 0);
    let mut consumer = within(ch.basic_consume(
        "q".into(),
        "c".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish(&ch, "q", b"taken at once", expiring("0")).await;
    let d = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(d.data, b"taken at once");
    assert_eq!(
        d.properties.expiration().as_ref().map(|e| e.as_str()),
        Some("0"),
        "a delivered message keeps its expiration"
    );
}

#[tokio::test]
async fn same_as_rabbitmq_a_requeued_message_past_its_ttl_expires_at_once() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    publish(&ch, "q", b"x", expiring("30")).await;
    let got = within(ch.basic_get("q".into(), Default::default()))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    within(got.delivery.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    wait_for_count(&ch, "q", 0).await;
}

/// RabbitMQ fixes a message's expiry when it is enqueued: a TTL-0 message taken at once by a
/// waiting consumer and then requeued has expired, so it is dead-lettered, not redelivered.
#[tokio::test]
async fn same_as_rabbitmq_a_requeued_message_with_ttl_0_expires() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    dead_letter_target(&ch, "dlx", "dead").await;
    within(ch.queue_declare(
        "q".into(),
        Default::default(),
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(0)),
            ("x-dead-letter-exchange", long_str("dlx")),
        ]),
    ))
    .await
    .unwrap();
    let mut consumer = within(ch.basic_consume(
        "q".into(),
        "c".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish(&ch, "q", b"now or never", BasicProperties::default()).await;
    let d = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(d.data, b"now or never");
    within(d.reject(BasicRejectOptions { requeue: true }))
        .await
        .unwrap();
    wait_for_count(&ch, "dead", 1).await;
    let dead = within(ch.basic_get("dead".into(), Default::default()))
        .await
        .unwrap()
        .expect("dead-lettered");
    let headers = dead.delivery.properties.headers().clone().unwrap();
    assert_eq!(
        headers.inner().get("x-first-death-reason"),
        Some(&long_str("expired"))
    );
    assert_eq!(count(&ch, "q").await, 0, "not requeued");
}

/// Whether a queue named `queue` exists, asked the way that does not count as using it
/// (a declare would restart its `x-expires` timer): a mandatory publish comes back if not.
async fn exists(ch: &Channel, queue: &str) -> bool {
    let confirm = within(ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        b"probe",
        Default::default(),
    ))
    .await
    .unwrap();
    let confirm = within(confirm).await.unwrap();
    confirm.take_message().is_none()
}

#[tokio::test]
async fn same_as_rabbitmq_an_unused_queue_is_deleted_after_x_expires() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "temp".into(),
        Default::default(),
        table(&[("x-expires", AMQPValue::LongInt(40))]),
    ))
    .await
    .unwrap();
    let (_c2, probe) = broker.channel().await;
    within(probe.confirm_select(Default::default()))
        .await
        .unwrap();
    // Publishing does not count as use either: the queue goes regardless.
    within(async {
        while exists(&probe, "temp").await {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_amqp_error(
        within(ch.queue_declare("temp".into(), passive(), FieldTable::default())).await,
        404,
        "NOT_FOUND - no queue 'temp' in vhost '/'",
    );
}

/// Regression: a queue whose declaring connection closed without ever consuming was kept
/// forever; RabbitMQ counts `x-expires` from the declaration.
#[tokio::test]
async fn same_as_rabbitmq_x_expires_counts_from_the_declaration() {
    let broker = Broker::start().await;
    let (conn, ch) = broker.channel().await;
    within(ch.queue_declare(
        "declared-then-left".into(),
        Default::default(),
        table(&[("x-expires", AMQPValue::LongInt(300))]),
    ))
    .await
    .unwrap();
    within(conn.close(200, "bye".into())).await.unwrap();
    let (_c2, probe) = broker.channel().await;
    within(probe.confirm_select(Default::default()))
        .await
        .unwrap();
    within(async {
        while exists(&probe, "declared-then-left").await {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Redeclares `queue` with `options` every few milliseconds until it is gone: it must go
/// (the test fails by timing out if these redeclares keep it alive).
async fn redeclared_until_gone(
    broker: &Broker,
    queue: &str,
    options: QueueDeclareOptions,
    arguments: FieldTable,
) {
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        arguments.clone(),
    ))
    .await
    .unwrap();
    let (_c2, probe) = broker.channel().await;
    within(probe.confirm_select(Default::default()))
        .await
        .unwrap();
    within(async {
        while exists(&probe, queue).await {
            // A passive declare can find it gone already: that is the end too.
            if ch
                .queue_declare(queue.into(), options, arguments.clone())
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Same as RabbitMQ 3.10 (checked on a node): a `nowait` redeclare of a classic queue does
/// not count as use (RabbitMQ counts the `stat` behind a Declare-Ok, and sends none), so the
/// queue expires however often it is redeclared so.
#[tokio::test]
async fn same_as_rabbitmq_a_nowait_redeclare_does_not_keep_a_classic_queue() {
    let broker = Broker::start().await;
    let options = QueueDeclareOptions {
        durable: true,
        nowait: true,
        ..Default::default()
    };
    let arguments = table(&[("x-expires", AMQPValue::LongInt(40))]);
    redeclared_until_gone(&broker, "redeclared-nowait", options, arguments).await;
}

/// Same as RabbitMQ 3.10 (checked on a node): a passive declare of a quorum queue only reads
/// its counts, so it does not keep the queue alive (an active redeclare does).
#[tokio::test]
async fn same_as_rabbitmq_a_passive_declare_does_not_keep_a_quorum_queue() {
    let broker = Broker::start().await;
    let arguments = table(&[
        ("x-expires", AMQPValue::LongInt(40)),
        ("x-queue-type", long_str("quorum")),
    ]);
    redeclared_until_gone(&broker, "declared-passively", passive(), arguments).await;
}

#[tokio::test]
async fn same_as_rabbitmq_a_queue_with_consumers_does_not_expire() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "busy".into(),
        Default::default(),
        table(&[("x-expires", AMQPValue::LongInt(30))]),
    ))
    .await
    .unwrap();
    let _consumer = within(ch.basic_consume(
        "busy".into(),
        "c".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (_c2, other) = broker.channel().await;
    within(other.queue_declare("busy".into(), passive(), FieldTable::default()))
        .await
        .expect("still there while consumed");
}

#[tokio::test]
async fn many_short_lived_messages_all_expire_into_the_dead_letter_queue() {
    // Under load the timer keeps expiring on time: every one of them arrives in the
    // dead-letter queue, checked by count.
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    dead_letter_target(&ch, "dlx", "dlq").await;
    within(ch.queue_declare(
        "hot".into(),
        Default::default(),
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(20)),
            ("x-dead-letter-exchange", long_str("dlx")),
        ]),
    ))
    .await
    .unwrap();
    let n = 5000;
    for i in 0..n {
        // Some messages carry their own, shorter TTL.
        let props = if i % 3 == 0 {
            expiring("5")
        } else {
            BasicProperties::default()
        };
        ch.basic_publish("".into(), "hot".into(), Default::default(), b"m", props)
            .await
            .unwrap();
    }
    wait_for_count(&ch, "dlq", n).await;
    assert_eq!(count(&ch, "hot").await, 0);
}

/// Same as RabbitMQ: a message with TTL 0 behind another one is not dropped when no
/// consumer takes it: only the head expires, so it waits to get there, and then expires.
#[tokio::test]
async fn same_as_rabbitmq_ttl_zero_behind_another_message_expires_when_it_reaches_the_head() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    publish(&ch, "q", b"first", BasicProperties::default()).await;
    publish(&ch, "q", b"behind", expiring("0")).await;
    assert_eq!(count(&ch, "q").await, 2);
    let first = within(ch.basic_get("q".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("the first message");
    assert_eq!(first.delivery.data, b"first");
    wait_for_count(&ch, "q", 0).await;
}

/// Same as RabbitMQ, whose priority queue expires messages from the highest priority down
/// and stops at the first head that has not expired: a short-lived message below a
/// higher-priority one waits, counted, until that one has gone.
#[tokio::test]
async fn same_as_rabbitmq_a_priority_queue_expires_only_its_head() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    let args = table(&[("x-max-priority", AMQPValue::ShortShortUInt(5))]);
    within(ch.queue_declare("pq".into(), Default::default(), args))
        .await
        .unwrap();
    publish(
        &ch,
        "pq",
        b"high",
        BasicProperties::default().with_priority(5),
    )
    .await;
    publish(&ch, "pq", b"low", expiring("20")).await;
    // Past the low one's TTL (no timed assertion: the count is read after the wait).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        count(&ch, "pq").await,
        2,
        "the low one waits below the head"
    );
    let high = within(ch.basic_get("pq".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("the head");
    assert_eq!(high.delivery.data, b"high");
    wait_for_count(&ch, "pq", 0).await;
}

/// A backlog larger than a queue expires or drops under one hold of its lock (4,096) goes
/// all the same, in turns: every message of a TTL passing over 20,000 at once reaches the
/// dead-letter queue, and a policy cutting `max-length` to 0 empties a queue of 10,000.
/// (One turn used to take them all: read back from disk, and their dead letters collected
/// in memory, with the queue locked and the timer thread held.)
#[tokio::test]
async fn a_backlog_larger_than_one_turn_expires_and_drops_in_turns() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    dead_letter_target(&ch, "dlx", "dlq").await;
    let dead_lettered = |ttl: Option<i32>| {
        let mut args = vec![("x-dead-letter-exchange", long_str("dlx"))];
        if let Some(ttl) = ttl {
            args.push(("x-message-ttl", AMQPValue::LongInt(ttl)));
        }
        table(&args)
    };
    within(ch.queue_declare("stale".into(), Default::default(), dead_lettered(Some(300))))
        .await
        .unwrap();
    within(ch.queue_declare("cut".into(), Default::default(), dead_lettered(None)))
        .await
        .unwrap();
    for (queue, n) in [("stale", 20_000), ("cut", 10_000)] {
        for _ in 0..n {
            ch.basic_publish(
                "".into(),
                queue.into(),
                Default::default(),
                b"m",
                Default::default(),
            )
            .await
            .unwrap();
        }
    }
    wait_for_count(&ch, "dlq", 20_000).await;
    let admin = broker.server.as_ref().unwrap().broker().clone();
    admin
        .put_policy(
            lepus::store::export::PolicyDef {
                vhost: "/".into(),
                name: "cut".into(),
                pattern: "^cut$".into(),
                apply_to: "queues".into(),
                definition: serde_json::json!({"max-length": 0}),
                priority: 0,
            },
            false,
        )
        .unwrap();
    wait_for_count(&ch, "dlq", 30_000).await;
    assert_eq!(count(&ch, "cut").await, 0);
    assert_eq!(count(&ch, "stale").await, 0);
}

/// Same as RabbitMQ (which stores a message's expiry): a persistent TTL-0 message waiting
/// behind another expires at the head after a restart too. Its record had no expiry, so the
/// restart delivered it, long after its "now or never".
#[tokio::test]
async fn same_as_rabbitmq_a_ttl_zero_message_found_by_a_restart_still_expires() {
    let dir = temp_dir("ttl0-restart");
    let mut config = Config::for_tests();
    config.data_dir = dir.clone();
    let mut broker = Broker::start_with(config.clone()).await;
    let (conn, ch) = broker.channel().await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(ch.queue_declare("kept".into(), durable, FieldTable::default()))
        .await
        .unwrap();
    within(ch.confirm_select(Default::default())).await.unwrap();
    for props in [
        BasicProperties::default().with_delivery_mode(2),
        expiring("0").with_delivery_mode(2),
    ] {
        let confirm =
            within(ch.basic_publish("".into(), "kept".into(), Default::default(), b"m", props))
                .await
                .unwrap();
        assert!(within(confirm).await.unwrap().is_ack());
    }
    assert_eq!(count(&ch, "kept").await, 2, "behind the first, it waits");
    drop(ch);
    let _ = conn.close(200, "bye".into()).await;
    broker.stop().await;
    let broker = Broker::start_with(config).await;
    let (_c, ch) = broker.channel().await;
    let first = within(ch.basic_get("kept".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("the first message");
    assert!(first.properties.expiration().is_none());
    assert!(
        within(ch.basic_get("kept".into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap()
            .is_none(),
        "the TTL-0 message expired at the head"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Same as RabbitMQ: a `basic.get` behind thousands of expired heads discards them and
/// returns the live message behind. Lepus discards at most 4,096 messages per hold of a
/// queue's lock; a fetch that met more (between two turns of the timer thread) answered
/// get-empty until the fetch took more holds. That window is microseconds wide and this
/// test does not reproduce it; it guards what a client sees around a deep expiry.
#[tokio::test(flavor = "multi_thread")]
async fn same_as_rabbitmq_a_get_behind_thousands_of_expired_heads_finds_the_live_message() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("deep".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    // One transaction enqueues them together, so they expire within a few milliseconds.
    within(ch.tx_select()).await.unwrap();
    for _ in 0..20_000 {
        publish(&ch, "deep", b"old", expiring("1000")).await;
    }
    publish(&ch, "deep", b"live", BasicProperties::default()).await;
    within(ch.tx_commit()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    // Every fetch finds a message: an expiring one before they expire, the live one after.
    let body = within(async {
        loop {
            let got = ch
                .basic_get("deep".into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .expect("never get-empty while the live message is queued");
            if got.delivery.data == b"live" {
                return got.delivery.data;
            }
        }
    })
    .await;
    assert_eq!(body, b"live");
}
